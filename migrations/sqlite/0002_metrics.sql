-- Every logged value. The primary key makes each (run, step, name) exist once, so a run that
-- resumes after a crash overwrites (upserts) rather than duplicates.
create table metrics (
    run_id integer not null references runs (id) on delete cascade,
    name   text    not null,
    step   integer not null,
    value  real, -- null for a non-finite value
    primary key (run_id, name, step)
) without rowid;

-- Live streams replay "everything after step N" across names.
create index metrics_by_step on metrics (run_id, step);

-- Written when a run ends: one row per metric name.
create table run_summaries (
    run_id      integer not null references runs (id) on delete cascade,
    name        text    not null,
    first_value real,
    last_value  real,
    min_value   real,
    max_value   real,
    last_step   integer not null,
    points      integer not null,
    primary key (run_id, name)
) without rowid;
