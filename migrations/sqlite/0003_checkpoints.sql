-- A completely written checkpoint directory (HF layout plus trainer state).
create table checkpoints (
    run_id     integer not null references runs (id) on delete cascade,
    step       integer not null,
    path       text    not null,
    bytes      integer not null,
    -- sha256 over the sorted list of "name sha256-of-file" lines.
    sha256     text    not null,
    created_at integer not null,
    primary key (run_id, step)
) without rowid;

-- The files of a checkpoint. Downloads look names up here, never trust the URL.
create table checkpoint_files (
    run_id integer not null,
    step   integer not null,
    name   text    not null,
    bytes  integer not null,
    sha256 text    not null,
    primary key (run_id, step, name),
    foreign key (run_id, step) references checkpoints (run_id, step) on delete cascade
) without rowid;
