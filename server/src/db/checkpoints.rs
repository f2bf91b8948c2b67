//! Checkpoint directories and their files, as recorded when the trainer finished writing them.

use std::collections::HashMap;

use super::{Conn, Pool, Sql};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Checkpoint {
    pub step: i64,
    #[serde(skip)]
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct CheckpointFile {
    pub name: String,
    pub bytes: i64,
    pub sha256: String,
}

/// Records (or re-records) a checkpoint and its files inside the caller's transaction.
pub async fn upsert(
    conn: &mut Conn,
    run_id: i64,
    step: i64,
    path: &str,
    sha256: &str,
    files: &[CheckpointFile],
    now: i64,
) -> sqlx::Result<()> {
    let bytes: i64 = files.iter().map(|f| f.bytes).sum();
    sqlx::query("delete from checkpoints where run_id = $1 and step = $2")
        .bind(run_id)
        .bind(step)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into checkpoints (run_id, step, path, bytes, sha256, created_at) values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(run_id)
    .bind(step)
    .bind(path)
    .bind(bytes)
    .bind(sha256)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    for f in files {
        sqlx::query("insert into checkpoint_files (run_id, step, name, bytes, sha256) values ($1, $2, $3, $4, $5)")
            .bind(run_id)
            .bind(step)
            .bind(&f.name)
            .bind(f.bytes)
            .bind(&f.sha256)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Forgets one checkpoint (its run no longer keeps it); its files go with it.
pub async fn delete(conn: &mut Conn, run_id: i64, step: i64) -> sqlx::Result<()> {
    sqlx::query("delete from checkpoints where run_id = $1 and step = $2")
        .bind(run_id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets checkpoints after `step` (the run resumed from an earlier one).
pub async fn delete_after(conn: &mut Conn, run_id: i64, step: i64) -> sqlx::Result<()> {
    sqlx::query("delete from checkpoints where run_id = $1 and step > $2")
        .bind(run_id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn list(pool: &Pool, run_id: i64) -> sqlx::Result<Vec<Checkpoint>> {
    sqlx::query_as("select step, path, bytes, sha256, created_at from checkpoints where run_id = $1 order by step")
        .bind(run_id)
        .fetch_all(pool)
        .await
}

pub async fn get(pool: &Pool, run_id: i64, step: i64) -> sqlx::Result<Option<Checkpoint>> {
    sqlx::query_as("select step, path, bytes, sha256, created_at from checkpoints where run_id = $1 and step = $2")
        .bind(run_id)
        .bind(step)
        .fetch_optional(pool)
        .await
}

pub async fn files(pool: &Pool, run_id: i64, step: i64) -> sqlx::Result<Vec<CheckpointFile>> {
    sqlx::query_as("select name, bytes, sha256 from checkpoint_files where run_id = $1 and step = $2 order by name")
        .bind(run_id)
        .bind(step)
        .fetch_all(pool)
        .await
}

/// The checkpoint steps of several runs: run id -> steps, ascending.
pub async fn steps_of_runs(pool: &Pool, run_ids: &[i64]) -> sqlx::Result<HashMap<i64, Vec<i64>>> {
    let mut out: HashMap<i64, Vec<i64>> = HashMap::new();
    for ids in run_ids.chunks(500) {
        let mut q = Sql::new("select run_id, step from checkpoints where run_id in (");
        q.bind_list(ids.iter().copied()).push(") order by run_id, step");
        let rows: Vec<(i64, i64)> = q.fetch_all(pool).await?;
        for (run_id, step) in rows {
            out.entry(run_id).or_default().push(step);
        }
    }
    Ok(out)
}
