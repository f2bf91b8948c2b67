//! `sessions`: signed-in browsers, by the sha256 of their cookie's id.

use super::Pool;

/// Who a live session signed in as.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    /// `None`: signed in with `--auth-token`.
    pub user_name: Option<String>,
    /// For a `--auth-token` session: that token's sha256.
    pub auth_token_sha256: Option<String>,
}

/// Records a session until `expires_at` (unix ms), and drops every expired one.
pub async fn add(
    pool: &Pool,
    sha256: &str,
    user_id: Option<i64>,
    auth_token_sha256: Option<&str>,
    expires_at: i64,
) -> sqlx::Result<()> {
    let now = super::now_ms();
    let mut tx = super::begin_append(pool).await?;
    sqlx::query("delete from sessions where expires_at <= $1").bind(now).execute(&mut *tx).await?;
    sqlx::query(
        "insert into sessions (sha256, user_id, auth_token_sha256, created_at, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(sha256)
    .bind(user_id)
    .bind(auth_token_sha256)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The live session with this id's sha256: not expired, and its user still exists.
pub async fn get(pool: &Pool, sha256: &str) -> sqlx::Result<Option<Session>> {
    sqlx::query_as(
        "select u.name as user_name, s.auth_token_sha256 from sessions s left join users u on u.id = s.user_id \
         where s.sha256 = $1 and s.expires_at > $2 and (s.user_id is null or u.id is not null)",
    )
    .bind(sha256)
    .bind(super::now_ms())
    .fetch_optional(pool)
    .await
}

/// Ends a session (signing out).
pub async fn remove(pool: &Pool, sha256: &str) -> sqlx::Result<()> {
    sqlx::query("delete from sessions where sha256 = $1").bind(sha256).execute(pool).await?;
    Ok(())
}
