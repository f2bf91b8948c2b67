-- The Postgres twin of ../sqlite/0003.
create table checkpoints (
    run_id     bigint not null references runs (id) on delete cascade,
    step       bigint not null,
    path       text   not null,
    bytes      bigint not null,
    sha256     text   not null,
    created_at bigint not null,
    primary key (run_id, step)
);

create table checkpoint_files (
    run_id bigint not null,
    step   bigint not null,
    name   text   not null,
    bytes  bigint not null,
    sha256 text   not null,
    primary key (run_id, step, name),
    foreign key (run_id, step) references checkpoints (run_id, step) on delete cascade
);
