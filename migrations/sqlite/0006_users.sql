-- A login for the team (`goodhart user …`): named users with argon2id password hashes, API
-- tokens for their scripts, and browser sessions. Tokens and session ids are stored only as
-- their sha256, so a copy of the database signs nobody in.
create table users (
    id            integer primary key autoincrement,
    name          text    not null unique,
    -- A PHC string: $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>.
    password_hash text    not null,
    created_at    integer not null
);

create table api_tokens (
    id         integer primary key autoincrement,
    user_id    integer not null references users (id) on delete cascade,
    label      text,
    sha256     text    not null unique,
    created_at integer not null
);

create index api_tokens_by_user on api_tokens (user_id);

-- A signed-in browser. `user_id` is null for a session signed in with `--auth-token`, which
-- then holds that token's sha256 in `auth_token_sha256`: another token at the next start ends it.
create table sessions (
    sha256            text    primary key,
    user_id           integer references users (id) on delete cascade,
    auth_token_sha256 text,
    created_at        integer not null,
    expires_at        integer not null
);

create index sessions_by_user on sessions (user_id);

-- Who launched a run: a user's name, null for the `--auth-token` or a server without sign-in.
alter table runs add column launched_by text;

create index runs_by_launcher on runs (launched_by, id);
