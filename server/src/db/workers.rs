//! `workers`: the processes that train, as the web node lists them (`/workers`) and judges
//! whether any live one can take a queued run. Liveness is the queue's heartbeat
//! (`jobs::queue`), which renews `seen_at`.

use std::collections::BTreeMap;

use super::Pool;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Worker {
    pub id: String,
    /// `gpu=h100,zone=eu`, as `--labels` takes them; empty for none.
    pub labels: String,
    /// `worker --device`; `None`: each run trains where its own `device` says.
    pub device: Option<String>,
    pub max_concurrent_runs: i64,
    pub version: String,
    pub started_at: i64,
    pub seen_at: i64,
}

impl Worker {
    pub fn labels(&self) -> BTreeMap<String, String> {
        trainer::config::parse_labels(&self.labels).unwrap_or_default()
    }

    /// Whether its heartbeat is fresher than `stale_after_ms`, at `now` (unix ms).
    pub fn live(&self, now: i64, stale_after_ms: i64) -> bool {
        now - self.seen_at <= stale_after_ms
    }
}

/// Records a worker that starts (or starts again under the same id).
pub async fn register(pool: &Pool, worker: &Worker) -> sqlx::Result<()> {
    sqlx::query(
        "insert into workers (id, labels, device, max_concurrent_runs, version, started_at, seen_at)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (id) do update set labels = excluded.labels, device = excluded.device,
             max_concurrent_runs = excluded.max_concurrent_runs, version = excluded.version,
             started_at = excluded.started_at, seen_at = excluded.seen_at",
    )
    .bind(&worker.id)
    .bind(&worker.labels)
    .bind(&worker.device)
    .bind(worker.max_concurrent_runs)
    .bind(&worker.version)
    .bind(worker.started_at)
    .bind(worker.seen_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// A worker heard from now.
pub async fn seen(pool: &Pool, id: &str) -> sqlx::Result<()> {
    sqlx::query("update workers set seen_at = $1 where id = $2").bind(super::now_ms()).bind(id).execute(pool).await?;
    Ok(())
}

/// A worker that shut down cleanly.
pub async fn leave(pool: &Pool, id: &str) -> sqlx::Result<()> {
    sqlx::query("delete from workers where id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Every worker, the most recently seen first.
pub async fn list(pool: &Pool) -> sqlx::Result<Vec<Worker>> {
    sqlx::query_as(
        "select id, labels, device, max_concurrent_runs, version, started_at, seen_at from workers
         order by seen_at desc, id",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(labels: &str) -> Worker {
        Worker {
            id: "w".into(),
            labels: labels.into(),
            device: None,
            max_concurrent_runs: 1,
            version: "0".into(),
            started_at: 0,
            seen_at: 1_000,
        }
    }

    #[test]
    fn a_worker_is_live_until_its_heartbeat_is_older_than_stale_after() {
        let w = worker("");
        assert!(w.live(1_000 + 60_000, 60_000));
        assert!(!w.live(1_000 + 60_001, 60_000));
    }

    #[tokio::test]
    async fn a_worker_registers_is_seen_and_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::testing::pool(dir.path()).await;
        let mut w = worker("gpu=h100");
        register(&pool, &w).await.unwrap();
        w.labels = "gpu=a100".into();
        register(&pool, &w).await.unwrap();
        let listed = list(&pool).await.unwrap();
        assert_eq!(listed, vec![w.clone()], "starting again under one id replaces the row");
        seen(&pool, "w").await.unwrap();
        assert!(list(&pool).await.unwrap()[0].seen_at > 1_000);
        leave(&pool, "w").await.unwrap();
        assert!(list(&pool).await.unwrap().is_empty());
    }
}
