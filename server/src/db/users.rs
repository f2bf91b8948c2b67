//! `users`: who may sign in, with an argon2id hash of each one's password.

use super::Pool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub password_hash: String,
    pub created_at: i64,
}

/// Whether anyone may sign in by name: with a user, every page and route asks who is asking.
pub async fn any(pool: &Pool) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("select id from users limit 1").fetch_optional(pool).await?;
    Ok(found.is_some())
}

pub async fn by_name(pool: &Pool, name: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as("select id, name, password_hash, created_at from users where name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

pub async fn list(pool: &Pool) -> sqlx::Result<Vec<User>> {
    sqlx::query_as("select id, name, password_hash, created_at from users order by name").fetch_all(pool).await
}

/// Adds a user; `None` when the name is taken.
pub async fn add(pool: &Pool, name: &str, password_hash: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "insert into users (name, password_hash, created_at) values ($1, $2, $3) \
         on conflict (name) do nothing returning id",
    )
    .bind(name)
    .bind(password_hash)
    .bind(super::now_ms())
    .fetch_optional(pool)
    .await
}

/// Replaces a user's password hash and ends their sessions; whether there is such a user.
pub async fn set_password(pool: &Pool, name: &str, password_hash: &str) -> sqlx::Result<bool> {
    let mut tx = super::begin_append(pool).await?;
    let updated = sqlx::query("update users set password_hash = $1 where name = $2")
        .bind(password_hash)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from sessions where user_id in (select id from users where name = $1)")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(updated.rows_affected() > 0)
}

/// Removes a user with their API tokens and sessions; whether there was one.
pub async fn remove(pool: &Pool, name: &str) -> sqlx::Result<bool> {
    let mut tx = super::begin_append(pool).await?;
    // Spelled out rather than left to `on delete cascade`, which a connection may not enforce;
    // writes only, so the transaction takes the write lock at its first statement.
    let of_user = "user_id in (select id from users where name = $1)";
    sqlx::query(&format!("delete from api_tokens where {of_user}")).bind(name).execute(&mut *tx).await?;
    sqlx::query(&format!("delete from sessions where {of_user}")).bind(name).execute(&mut *tx).await?;
    let removed = sqlx::query("delete from users where name = $1").bind(name).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(removed.rows_affected() > 0)
}
