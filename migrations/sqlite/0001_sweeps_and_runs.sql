-- Sweeps group runs that share a base config and differ along a grid.
create table sweeps (
    id          integer primary key autoincrement,
    base_config text    not null, -- JSON object, as posted
    grid        text    not null, -- JSON object: key -> [values]
    created_at  integer not null  -- unix milliseconds
);

-- One training run. `status` is written only by the queue (server/src/jobs/queue.rs).
create table runs (
    id               integer primary key autoincrement,
    sweep_id         integer references sweeps (id) on delete set null,
    -- The full validated RunConfig as JSON, defaults filled in, paths canonical.
    config           text    not null,
    status           text    not null default 'queued'
                     check (status in ('queued', 'running', 'finished', 'failed', 'cancelled')),
    -- Set when a cancel arrives for a running run; the trainer sees it before its next step.
    cancel_requested integer not null default 0,
    step             integer not null default 0,
    total_steps      integer,
    error            text,
    -- How many times a worker has claimed this run (a crash-resume claims it again).
    attempts         integer not null default 0,
    worker           text,
    -- Provenance: the run this one retries or was cloned from.
    parent_id        integer references runs (id) on delete set null,
    created_at       integer not null,
    started_at       integer,
    finished_at      integer,
    heartbeat_at     integer
);

create index runs_by_status on runs (status, id);
create index runs_by_sweep on runs (sweep_id, id);
