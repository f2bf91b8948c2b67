//! `api_tokens`: a user's tokens for scripts (`Authorization: Bearer …`), stored as sha256.

use super::Pool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiToken {
    pub id: i64,
    pub user_name: String,
    pub label: Option<String>,
    pub created_at: i64,
}

/// Records a token (by its sha256) for a user; its id.
pub async fn add(pool: &Pool, user_id: i64, label: Option<&str>, sha256: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "insert into api_tokens (user_id, label, sha256, created_at) values ($1, $2, $3, $4) returning id",
    )
    .bind(user_id)
    .bind(label)
    .bind(sha256)
    .bind(super::now_ms())
    .fetch_one(pool)
    .await
}

/// The user a token (by its sha256) belongs to, if it is a live one.
pub async fn user_of(pool: &Pool, sha256: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("select u.name from api_tokens t join users u on u.id = t.user_id where t.sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await
}

/// Every token, or one user's, oldest first.
pub async fn list(pool: &Pool, user: Option<&str>) -> sqlx::Result<Vec<ApiToken>> {
    sqlx::query_as(
        "select t.id, u.name as user_name, t.label, t.created_at from api_tokens t join users u on u.id = t.user_id \
         where ($1 is null or u.name = $1) order by t.id",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// Which of a user's tokens to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Id(i64),
    Label(String),
    All,
}

/// Revokes a user's tokens; how many there were.
pub async fn revoke(pool: &Pool, user: &str, which: &Which) -> sqlx::Result<u64> {
    let owner = "delete from api_tokens where user_id = (select id from users where name = $1)";
    let done = match which {
        Which::Id(id) => sqlx::query(&format!("{owner} and id = $2")).bind(user).bind(*id).execute(pool).await?,
        Which::Label(label) => {
            sqlx::query(&format!("{owner} and label = $2")).bind(user).bind(label).execute(pool).await?
        }
        Which::All => sqlx::query(owner).bind(user).execute(pool).await?,
    };
    Ok(done.rows_affected())
}
