-- The Postgres twin of ../sqlite/0002.
create table metrics (
    run_id bigint not null references runs (id) on delete cascade,
    name   text   not null,
    step   bigint not null,
    value  double precision, -- null for a non-finite value
    primary key (run_id, name, step)
);

create index metrics_by_step on metrics (run_id, step);

create table run_summaries (
    run_id      bigint not null references runs (id) on delete cascade,
    name        text   not null,
    first_value double precision,
    last_value  double precision,
    min_value   double precision,
    max_value   double precision,
    last_step   bigint not null,
    points      bigint not null,
    primary key (run_id, name)
);
