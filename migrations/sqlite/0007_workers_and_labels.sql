-- What a run asks of the worker that claims it (`requires = {gpu = "h100"}` in its config): one
-- row per label. A worker claims a run only when it has every one of them among its `--labels`.
create table run_requirements (
    run_id integer not null references runs (id) on delete cascade,
    label  text    not null,
    value  text    not null,
    primary key (run_id, label)
);

-- The processes that train (`goodhart worker`, and `serve` unless --max-concurrent-runs 0): each
-- registers at start, renews `seen_at` with every heartbeat, and leaves at a clean shutdown. A
-- row whose `seen_at` is older than --stale-after is a worker that died or was cut off.
create table workers (
    id                  text    primary key,
    -- `gpu=h100,zone=eu`; '' for none.
    labels              text    not null,
    -- `worker --device`; null: each run trains where its own `device` says.
    device              text,
    max_concurrent_runs integer not null,
    version             text    not null,
    started_at          integer not null,
    seen_at             integer not null
);
