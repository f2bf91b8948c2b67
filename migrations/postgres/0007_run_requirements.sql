-- The Postgres twin of ../sqlite/0007: the worker labels a run requires (see there).
create table run_requirements (
    run_id bigint not null references runs (id) on delete cascade,
    label  text   not null,
    value  text   not null,
    primary key (run_id, label)
);
