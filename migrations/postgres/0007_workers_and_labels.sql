-- The Postgres twin of ../sqlite/0007: the worker labels a run requires, and the workers (see
-- there).
create table run_requirements (
    run_id bigint not null references runs (id) on delete cascade,
    label  text   not null,
    value  text   not null,
    primary key (run_id, label)
);

create table workers (
    id                  text   primary key,
    labels              text   not null,
    device              text,
    max_concurrent_runs bigint not null,
    version             text   not null,
    started_at          bigint not null,
    seen_at             bigint not null
);
