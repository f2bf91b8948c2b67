-- The Postgres twin of ../sqlite/0006: users, their API tokens and browser sessions, and who
-- launched each run (see there).
create table users (
    id            bigserial primary key,
    name          text   not null unique,
    password_hash text   not null,
    created_at    bigint not null
);

create table api_tokens (
    id         bigserial primary key,
    user_id    bigint not null references users (id) on delete cascade,
    label      text,
    sha256     text   not null unique,
    created_at bigint not null
);

create index api_tokens_by_user on api_tokens (user_id);

create table sessions (
    sha256            text   primary key,
    user_id           bigint references users (id) on delete cascade,
    auth_token_sha256 text,
    created_at        bigint not null,
    expires_at        bigint not null
);

create index sessions_by_user on sessions (user_id);

alter table runs add column launched_by text;

create index runs_by_launcher on runs (launched_by, id);
