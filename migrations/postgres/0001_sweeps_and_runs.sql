-- The Postgres twin of ../sqlite/0001: the same tables, columns and meanings (see there).
-- Integers are bigint (the code reads every integer as i64) and flags are 0/1 integers, as in
-- SQLite, so one set of queries serves both backends.
create table sweeps (
    id          bigserial primary key,
    base_config text   not null,
    grid        text   not null,
    created_at  bigint not null
);

create table runs (
    id               bigserial primary key,
    sweep_id         bigint references sweeps (id) on delete set null,
    config           text   not null,
    status           text   not null default 'queued'
                     check (status in ('queued', 'running', 'finished', 'failed', 'cancelled')),
    cancel_requested bigint not null default 0,
    step             bigint not null default 0,
    total_steps      bigint,
    error            text,
    attempts         bigint not null default 0,
    worker           text,
    parent_id        bigint references runs (id) on delete set null,
    created_at       bigint not null,
    started_at       bigint,
    finished_at      bigint,
    heartbeat_at     bigint
);

create index runs_by_status on runs (status, id);
create index runs_by_sweep on runs (sweep_id, id);
