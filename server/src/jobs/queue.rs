//! The run queue: the one place that changes a run's status.
//!
//! ```text
//! queued ──claim──▶ running ──▶ finished | failed
//!   │                  │ cancel
//!   └─cancel─▶ cancelled ◀──┘        running ──(shutdown or crash)──▶ queued (resumes from its checkpoint)
//! ```
//!
//! Handlers and the runner talk to [`RunQueue`], not to SQLite, so a Postgres queue serving
//! remote workers (claim with `for update skip locked`, cancel through the heartbeat) can replace
//! [`SqliteQueue`] without touching them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::SqlitePool;
use tokio::sync::{Mutex, Notify};

use super::events::{EventBus, RunEvent};
use crate::db::{self, runs::RunStatus, BEGIN_WRITE};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("run {0} not found")]
    NotFound(i64),
    /// The run is in a status that does not allow the action.
    #[error("run {id} is {status}: {message}")]
    Conflict { id: i64, status: &'static str, message: &'static str },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A run handed to a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run_id: i64,
    /// The validated config JSON.
    pub config: String,
    /// 1 on the first claim; more when the run resumes after a shutdown or crash.
    pub attempt: i64,
    /// Set when the run is cancelled; the trainer polls it before every step.
    pub cancel: Arc<AtomicBool>,
}

/// How a worker's trainer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    Failed(String),
    /// The trainer checkpointed and stopped on request: cancelled if a cancel was asked for,
    /// otherwise (server shutdown) back to `queued` to resume at the next start.
    Stopped,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// A queued run is now `cancelled`.
    Now,
    /// A running run was asked to stop; it becomes `cancelled` after its checkpoint.
    Requested,
}

pub trait RunQueue: Send + Sync {
    /// Adds one run; answers its id.
    fn enqueue(&self, config: Value, parent_id: Option<i64>) -> BoxFuture<'_, Result<i64>>;
    /// Adds a sweep and all its runs in one transaction; answers the sweep id and run ids.
    fn enqueue_sweep(&self, base: Value, grid: Value, configs: Vec<Value>) -> BoxFuture<'_, Result<(i64, Vec<i64>)>>;
    /// Atomically takes the oldest queued run, if any.
    fn claim<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, Result<Option<Claim>>>;
    /// Resolves when work may be available (a hint; claim decides).
    fn work_available(&self) -> BoxFuture<'_, ()>;
    fn finish(&self, run_id: i64, outcome: Outcome) -> BoxFuture<'_, Result<RunStatus>>;
    fn cancel(&self, run_id: i64) -> BoxFuture<'_, Result<Cancelled>>;
    /// The config of a failed or cancelled run, to enqueue again as a new run.
    fn retry(&self, run_id: i64) -> BoxFuture<'_, Result<String>>;
    /// Removes a run that is not running.
    fn delete(&self, run_id: i64) -> BoxFuture<'_, Result<()>>;
    /// At startup: runs left `running` by a crash go back to `queued` and will resume.
    fn requeue_orphans(&self) -> BoxFuture<'_, Result<Vec<i64>>>;
}

pub struct SqliteQueue {
    pool: SqlitePool,
    events: EventBus,
    work: Notify,
    /// Cancel flags of the runs this process is running. Held across the claim and cancel
    /// statements so a cancel can never slip between a claim and its flag.
    running: Mutex<HashMap<i64, Arc<AtomicBool>>>,
}

impl SqliteQueue {
    pub fn new(pool: SqlitePool, events: EventBus) -> Self {
        Self { pool, events, work: Notify::new(), running: Mutex::new(HashMap::new()) }
    }

    fn announce(&self, run_id: i64, status: RunStatus, error: Option<String>) {
        // No subscribers is fine.
        let _ = self.events.send(RunEvent::Status { run_id, status, error });
    }

    async fn status_of(&self, run_id: i64) -> Result<RunStatus> {
        let status: Option<String> =
            sqlx::query_scalar("select status from runs where id = ?").bind(run_id).fetch_optional(&self.pool).await?;
        status.and_then(|s| RunStatus::parse(&s)).ok_or(QueueError::NotFound(run_id))
    }
}

impl RunQueue for SqliteQueue {
    fn enqueue(&self, config: Value, parent_id: Option<i64>) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar(
                "insert into runs (config, status, parent_id, created_at) values (?, 'queued', ?, ?) returning id",
            )
            .bind(config.to_string())
            .bind(parent_id)
            .bind(db::now_ms())
            .fetch_one(&self.pool)
            .await?;
            self.announce(id, RunStatus::Queued, None);
            self.work.notify_one();
            Ok(id)
        })
    }

    fn enqueue_sweep(&self, base: Value, grid: Value, configs: Vec<Value>) -> BoxFuture<'_, Result<(i64, Vec<i64>)>> {
        Box::pin(async move {
            let now = db::now_ms();
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let sweep_id: i64 =
                sqlx::query_scalar("insert into sweeps (base_config, grid, created_at) values (?, ?, ?) returning id")
                    .bind(base.to_string())
                    .bind(grid.to_string())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            let mut ids = Vec::with_capacity(configs.len());
            for config in &configs {
                let id: i64 = sqlx::query_scalar(
                    "insert into runs (sweep_id, config, status, created_at) values (?, ?, 'queued', ?) returning id",
                )
                .bind(sweep_id)
                .bind(config.to_string())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                ids.push(id);
            }
            tx.commit().await?;
            for id in &ids {
                self.announce(*id, RunStatus::Queued, None);
            }
            self.work.notify_one();
            Ok((sweep_id, ids))
        })
    }

    fn claim<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, Result<Option<Claim>>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            let now = db::now_ms();
            // One statement, so two workers can never take the same run.
            let row: Option<(i64, String, i64)> = sqlx::query_as(
                "update runs set status = 'running', worker = ?1, attempts = attempts + 1, error = null,
                        started_at = coalesce(started_at, ?2), heartbeat_at = ?2
                 where id = (select id from runs where status = 'queued' order by id limit 1)
                 returning id, config, attempts",
            )
            .bind(worker)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some((run_id, config, attempt)) = row else { return Ok(None) };
            let cancel = Arc::new(AtomicBool::new(false));
            running.insert(run_id, cancel.clone());
            drop(running);
            self.announce(run_id, RunStatus::Running, None);
            Ok(Some(Claim { run_id, config, attempt, cancel }))
        })
    }

    fn work_available(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.work.notified())
    }

    fn finish(&self, run_id: i64, outcome: Outcome) -> BoxFuture<'_, Result<RunStatus>> {
        Box::pin(async move {
            let now = db::now_ms();
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let cancel_requested: Option<bool> =
                sqlx::query_scalar("select cancel_requested from runs where id = ? and status = 'running'")
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(cancel_requested) = cancel_requested else {
                return Err(QueueError::NotFound(run_id));
            };
            let (status, error) = match outcome {
                Outcome::Finished => (RunStatus::Finished, None),
                Outcome::Failed(reason) => (RunStatus::Failed, Some(reason)),
                Outcome::Stopped if cancel_requested => (RunStatus::Cancelled, None),
                Outcome::Stopped => (RunStatus::Queued, None),
            };
            let finished_at = status.is_terminal().then_some(now);
            sqlx::query(
                "update runs set status = ?, error = ?, finished_at = ?, heartbeat_at = ?, worker = null
                 where id = ? and status = 'running'",
            )
            .bind(status.as_str())
            .bind(&error)
            .bind(finished_at)
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            if status.is_terminal() {
                db::metrics::summarize(&mut tx, run_id).await?;
            }
            tx.commit().await?;
            self.running.lock().await.remove(&run_id);
            self.announce(run_id, status, error);
            Ok(status)
        })
    }

    fn cancel(&self, run_id: i64) -> BoxFuture<'_, Result<Cancelled>> {
        Box::pin(async move {
            let running = self.running.lock().await;
            let now = db::now_ms();
            let queued =
                sqlx::query("update runs set status = 'cancelled', finished_at = ? where id = ? and status = 'queued'")
                    .bind(now)
                    .bind(run_id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            if queued > 0 {
                drop(running);
                self.announce(run_id, RunStatus::Cancelled, None);
                return Ok(Cancelled::Now);
            }
            let requested = sqlx::query("update runs set cancel_requested = 1 where id = ? and status = 'running'")
                .bind(run_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if requested > 0 {
                if let Some(flag) = running.get(&run_id) {
                    flag.store(true, Ordering::SeqCst);
                }
                return Ok(Cancelled::Requested);
            }
            drop(running);
            let status = self.status_of(run_id).await?;
            Err(QueueError::Conflict {
                id: run_id,
                status: status.as_str(),
                message: "only queued or running runs can be cancelled",
            })
        })
    }

    fn retry(&self, run_id: i64) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let status = self.status_of(run_id).await?;
            if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
                return Err(QueueError::Conflict {
                    id: run_id,
                    status: status.as_str(),
                    message: "only failed or cancelled runs can be retried",
                });
            }
            let config: String =
                sqlx::query_scalar("select config from runs where id = ?").bind(run_id).fetch_one(&self.pool).await?;
            Ok(config)
        })
    }

    fn delete(&self, run_id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let deleted = sqlx::query("delete from runs where id = ? and status != 'running'")
                .bind(run_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if deleted > 0 {
                return Ok(());
            }
            let status = self.status_of(run_id).await?;
            Err(QueueError::Conflict { id: run_id, status: status.as_str(), message: "cancel it before deleting it" })
        })
    }

    fn requeue_orphans(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            // A cancel that arrived before the crash still counts.
            let cancelled: Vec<i64> = sqlx::query_scalar(
                "update runs set status = 'cancelled', finished_at = ?, worker = null
                 where status = 'running' and cancel_requested = 1 returning id",
            )
            .bind(db::now_ms())
            .fetch_all(&self.pool)
            .await?;
            for id in cancelled {
                self.announce(id, RunStatus::Cancelled, None);
            }
            let ids: Vec<i64> = sqlx::query_scalar(
                "update runs set status = 'queued', worker = null where status = 'running' returning id",
            )
            .fetch_all(&self.pool)
            .await?;
            for id in &ids {
                self.announce(*id, RunStatus::Queued, None);
            }
            if !ids.is_empty() {
                self.work.notify_one();
            }
            Ok(ids)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::jobs::events::event_bus;

    async fn queue() -> (tempfile::TempDir, Arc<SqliteQueue>) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&format!("sqlite://{}", dir.path().join("q.db").display())).await.unwrap();
        (dir, Arc::new(SqliteQueue::new(pool, event_bus())))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_workers_never_claim_the_same_run() {
        let (_dir, q) = queue().await;
        for _ in 0..40 {
            q.enqueue(json!({}), None).await.unwrap();
        }
        let mut workers = Vec::new();
        for w in 0..8 {
            let q = q.clone();
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(c) = q.claim(&format!("w{w}")).await.unwrap() {
                    mine.push(c.run_id);
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        let distinct: BTreeSet<i64> = all.iter().copied().collect();
        assert_eq!((all.len(), distinct.len()), (40, 40));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_run_is_requeued_unless_it_was_cancelled() {
        let (_dir, q) = queue().await;
        let a = q.enqueue(json!({}), None).await.unwrap();
        let b = q.enqueue(json!({}), None).await.unwrap();
        let ca = q.claim("w").await.unwrap().unwrap();
        let cb = q.claim("w").await.unwrap().unwrap();
        assert_eq!((ca.run_id, cb.run_id), (a, b));
        assert_eq!(q.cancel(b).await.unwrap(), Cancelled::Requested);
        assert!(cb.cancel.load(Ordering::SeqCst), "the trainer sees the cancel");
        assert_eq!(q.finish(a, Outcome::Stopped).await.unwrap(), RunStatus::Queued);
        assert_eq!(q.finish(b, Outcome::Stopped).await.unwrap(), RunStatus::Cancelled);
        let again = q.claim("w").await.unwrap().unwrap();
        assert_eq!((again.run_id, again.attempt), (a, 2));
        assert!(
            matches!(q.finish(b, Outcome::Finished).await, Err(QueueError::NotFound(_))),
            "only running runs finish"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_left_running_by_a_crash_are_requeued_and_a_pending_cancel_still_counts() {
        let (_dir, q) = queue().await;
        let a = q.enqueue(json!({}), None).await.unwrap();
        let b = q.enqueue(json!({}), None).await.unwrap();
        q.claim("w").await.unwrap().unwrap();
        q.claim("w").await.unwrap().unwrap();
        q.cancel(b).await.unwrap();
        assert_eq!(q.requeue_orphans().await.unwrap(), vec![a]);
        assert_eq!(q.status_of(a).await.unwrap(), RunStatus::Queued);
        assert_eq!(q.status_of(b).await.unwrap(), RunStatus::Cancelled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_or_cancelled_runs_retry_and_running_runs_are_not_deleted() {
        let (_dir, q) = queue().await;
        let a = q.enqueue(json!({"beta": 0.2}), None).await.unwrap();
        assert!(matches!(q.retry(a).await, Err(QueueError::Conflict { .. })));
        q.claim("w").await.unwrap().unwrap();
        assert!(matches!(q.delete(a).await, Err(QueueError::Conflict { .. })));
        q.finish(a, Outcome::Failed("boom".into())).await.unwrap();
        assert_eq!(q.retry(a).await.unwrap(), json!({"beta": 0.2}).to_string());
        q.delete(a).await.unwrap();
        assert!(matches!(q.delete(a).await, Err(QueueError::NotFound(_))));
    }
}
