//! Sweeps: a base config and a grid. Their runs are inserted by the queue.

use super::Pool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Sweep {
    pub id: i64,
    pub base_config: String,
    pub grid: String,
    pub created_at: i64,
}

pub async fn get(pool: &Pool, id: i64) -> sqlx::Result<Option<Sweep>> {
    sqlx::query_as("select id, base_config, grid, created_at from sweeps where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}
