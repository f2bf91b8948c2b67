-- What a run asks of the worker that claims it (`requires = {gpu = "h100"}` in its config): one
-- row per label. A worker claims a run only when it has every one of them among its `--labels`.
create table run_requirements (
    run_id integer not null references runs (id) on delete cascade,
    label  text    not null,
    value  text    not null,
    primary key (run_id, label)
);
