//! The run queue: the one place that changes a run's status, and the one that decides which
//! worker holds a running run.
//!
//! ```text
//!             claim (attempts + 1)
//!   queued ──────────────────────────▶ running ──finish──▶ finished | failed
//!    │  ▲ ▲                               │                               │
//!    │  │ └──────────── retry (resume) ◀──┼───────────────────────────────┘ (and cancelled)
//!    │  ▲                                 │
//!    │  └── stopped at shutdown, ◀────────┤   cancel: sets cancel_requested; the holder stops
//!    │      orphaned by a restart,        │   before its next step and finishes the run as
//!    │      or reclaimed when stale       │   cancelled (a reclaim also honours a pending cancel)
//!    └──cancel──▶ cancelled ◀─────────────┘
//! ```
//!
//! Who holds a running run: the claim that took it, named by the worker id and the attempt.
//! `attempts` grows by one with every claim, so no two claims of a run share a number: it is the
//! fencing token. Every write made for a claim (its heartbeat, its finish, the metric writer's
//! batches) applies only while the run is still `running` under that attempt:
//! - **Heartbeat.** Every `--heartbeat-interval` a worker renews `heartbeat_at` of the claims it
//!   holds, in one statement that also answers their `cancel_requested`; a cancel sent to any
//!   server reaches the holder that way, and stops its trainer within a step of the next beat.
//! - **Reclaim.** A run `running` under a worker goes back to `queued` (to `cancelled` if a cancel
//!   was pending; `attempts` keeps counting): at once when that worker id starts again (its last
//!   process died holding it), otherwise once its heartbeat is older than `--stale-after`. A
//!   worker never reclaims the claims it holds itself.
//! - **Lost.** A held claim missing from its heartbeat's answer was reclaimed while its worker was
//!   unreachable (paused, cut off from the database). The worker stops that trainer as for a
//!   cancel and forgets the claim. It records nothing more for it: its finish is refused with
//!   [`QueueError::Lost`], and the metric writer drops what the trainer logged in the meantime,
//!   the final checkpoint included (a later claim by this worker removes that unrecorded
//!   checkpoint rather than resume from it). The run's status is the queue's or its new holder's.
//!
//! One live server per data dir: two would share checkpoint directories, and with the default
//! worker id (derived from the data dir) the second one's start would take the first one's runs.
//!
//! Handlers and the runner talk to [`RunQueue`], not to SQLite, so a Postgres queue serving
//! remote workers (claim with `for update skip locked`, the same heartbeat and fencing) can
//! replace [`DbQueue`] without touching them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Mutex, Notify};

use super::event_bus::{EventBus, RunEvent};
use crate::db::{self, runs::RunStatus, Backend, Conn, Pool, Sql};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("run {0} not found")]
    NotFound(i64),
    /// The run is in a status that does not allow the action.
    #[error("run {id} is {status}: {message}")]
    Conflict { id: i64, status: &'static str, message: &'static str },
    /// This worker does not hold the run (any more): see "Lost" in the module doc.
    #[error("run {0} is not held by this worker: it was reclaimed after a stale heartbeat, or has already ended")]
    Lost(i64),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// One claim of one run; what a write on its behalf is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub run_id: i64,
    pub attempt: i64,
}

/// A run handed to a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run_id: i64,
    /// The validated config JSON.
    pub config: String,
    /// 1 on the first claim; more when the run resumes after a shutdown, crash or reclaim.
    pub attempt: i64,
    /// Set when the trainer must checkpoint and stop: the run was cancelled, or this worker lost
    /// it. The trainer polls it before every step; `finish` then decides what the run becomes.
    pub stop: Arc<AtomicBool>,
}

impl Claim {
    pub fn lease(&self) -> Lease {
        Lease { run_id: self.run_id, attempt: self.attempt }
    }
}

/// How a worker's trainer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Finished before its last step on its own (`early_stopping`), for the reason given.
    FinishedEarly(String),
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

/// What one heartbeat found among this worker's claims (their trainers were told to stop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Beat {
    /// Claims renewed.
    pub renewed: usize,
    /// Held runs with a cancel pending, sent to another server or before this beat.
    pub cancelled: Vec<i64>,
    /// Runs this worker no longer holds.
    pub lost: Vec<i64>,
}

/// Runs a reclaim took back from a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Back to `queued`; they resume from their last checkpoint.
    pub requeued: Vec<i64>,
    /// A cancel was pending: now `cancelled`.
    pub cancelled: Vec<i64>,
}

impl Reclaimed {
    pub fn is_empty(&self) -> bool {
        self.requeued.is_empty() && self.cancelled.is_empty()
    }
}

pub trait RunQueue: Send + Sync {
    /// The worker id this queue claims runs as.
    fn worker(&self) -> &str;
    /// Adds one run (`parent_id`: the run it retries or clones; `launched_by`: a user's name);
    /// answers its id. The labels its config `requires` decide which workers may claim it.
    fn enqueue(&self, config: Value, parent_id: Option<i64>, launched_by: Option<String>)
        -> BoxFuture<'_, Result<i64>>;
    /// Adds a sweep and all its runs in one transaction; answers the sweep id and run ids.
    fn enqueue_sweep(
        &self,
        base: Value,
        grid: Value,
        configs: Vec<Value>,
        launched_by: Option<String>,
    ) -> BoxFuture<'_, Result<(i64, Vec<i64>)>>;
    /// Atomically takes the oldest queued run this worker's labels satisfy, if any.
    fn claim(&self) -> BoxFuture<'_, Result<Option<Claim>>>;
    /// Resolves when work may be available (a hint; claim decides).
    fn work_available(&self) -> BoxFuture<'_, ()>;
    /// Says that work may be available: another process queued a run (see `jobs::relay`).
    fn wake(&self);
    /// Records how the trainer of a run this worker claimed ended; [`QueueError::Lost`] if this
    /// worker no longer holds it.
    fn finish(&self, run_id: i64, outcome: Outcome) -> BoxFuture<'_, Result<RunStatus>>;
    fn cancel(&self, run_id: i64) -> BoxFuture<'_, Result<Cancelled>>;
    /// The config of a failed or cancelled run, to enqueue again as a new run (start over).
    fn retry(&self, run_id: i64) -> BoxFuture<'_, Result<String>>;
    /// A failed or cancelled run goes back to `queued`, to resume from its last recorded
    /// checkpoint (or start over, without one) as any reclaimed run does.
    fn resume(&self, run_id: i64) -> BoxFuture<'_, Result<()>>;
    /// Removes a run that is not running.
    fn delete(&self, run_id: i64) -> BoxFuture<'_, Result<()>>;
    /// Renews this worker's claims and its `workers` row, and stops the trainers of those
    /// cancelled or lost since.
    fn heartbeat(&self) -> BoxFuture<'_, Result<Beat>>;
    /// At startup: runs left `running` under this worker id by its previous process (a crash)
    /// go back to `queued` and will resume.
    fn requeue_orphans(&self) -> BoxFuture<'_, Result<Reclaimed>>;
    /// Runs of any worker whose heartbeat is older than `stale_after` go back to `queued`.
    fn reclaim_stale(&self, stale_after: Duration) -> BoxFuture<'_, Result<Reclaimed>>;
}

/// A claim this process holds.
struct Held {
    attempt: i64,
    stop: Arc<AtomicBool>,
}

/// Which running runs a reclaim takes back.
#[derive(Clone, Copy)]
enum Reclaim<'a> {
    /// This worker's: its previous process died holding them.
    Orphans(&'a str),
    /// Anyone's whose last heartbeat is older than this (unix ms).
    StaleBefore(i64),
}

pub struct DbQueue {
    pool: Pool,
    events: EventBus,
    worker: String,
    /// This worker's `--labels`: it claims only runs whose `requires` they all satisfy.
    labels: BTreeMap<String, String>,
    work: Notify,
    /// The claims this process holds. Locked across every statement that claims, cancels,
    /// renews, reclaims or finishes, so none of them can slip between another and its effect
    /// on these flags.
    running: Mutex<HashMap<i64, Held>>,
}

impl DbQueue {
    /// The queue as seen by worker `worker` (see `goodhart serve --worker-id`).
    pub fn new(pool: Pool, events: EventBus, worker: impl Into<String>) -> Self {
        Self {
            pool,
            events,
            worker: worker.into(),
            labels: BTreeMap::new(),
            work: Notify::new(),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// This queue with worker labels (`goodhart worker --labels gpu=h100`).
    pub fn with_labels(self, labels: BTreeMap<String, String>) -> Self {
        Self { labels, ..self }
    }

    /// Stores one queued run and the labels its config requires, inside the caller's transaction:
    /// no claim can see the run without its requirements and go to a worker that lacks them.
    async fn insert_run(
        tx: &mut Conn,
        sweep_id: Option<i64>,
        config: &Value,
        parent_id: Option<i64>,
        launched_by: Option<&str>,
        now: i64,
    ) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "insert into runs (sweep_id, config, status, parent_id, launched_by, created_at)
             values ($1, $2, 'queued', $3, $4, $5) returning id",
        )
        .bind(sweep_id)
        .bind(config.to_string())
        .bind(parent_id)
        .bind(launched_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        // The config was validated: `requires` is a map of strings, or absent.
        let requires = config.get("requires").and_then(Value::as_object).into_iter().flatten();
        for (label, value) in requires {
            sqlx::query("insert into run_requirements (run_id, label, value) values ($1, $2, $3)")
                .bind(id)
                .bind(label)
                .bind(value.as_str().unwrap_or_default())
                .execute(&mut *tx)
                .await?;
        }
        Ok(id)
    }

    fn announce(&self, run_id: i64, status: RunStatus, error: Option<String>) {
        self.events.send(RunEvent::Status { run_id, status, error });
    }

    async fn status_of(&self, run_id: i64) -> Result<RunStatus> {
        let status: Option<String> =
            sqlx::query_scalar("select status from runs where id = $1").bind(run_id).fetch_optional(&self.pool).await?;
        status.and_then(|s| RunStatus::parse(&s)).ok_or(QueueError::NotFound(run_id))
    }

    async fn reclaim(&self, which: Reclaim<'_>) -> Result<Reclaimed> {
        let held = self.running.lock().await;
        let now = db::now_ms();
        let mut tx = db::begin_write(&self.pool).await?;
        // A cancel that arrived before the worker went away still counts.
        let mut q = Sql::new(
            "update runs set status = case when cancel_requested != 0 then 'cancelled' else 'queued' end,
                    finished_at = case when cancel_requested != 0 then ",
        );
        q.bind(now).push(" else finished_at end, worker = null where status = 'running' and ");
        match which {
            Reclaim::Orphans(worker) => q.push("worker = ").bind(worker.to_string()),
            Reclaim::StaleBefore(cutoff) => q.push("coalesce(heartbeat_at, 0) < ").bind(cutoff),
        };
        // What this process holds is alive, whatever its timestamps say.
        if !held.is_empty() {
            q.push(" and id not in (").bind_list(held.keys().copied()).push(")");
        }
        q.push(" returning id, status");
        let rows: Vec<(i64, String)> = q.fetch_all(&mut *tx).await?;
        let mut reclaimed = Reclaimed::default();
        for (id, status) in rows {
            if status == RunStatus::Cancelled.as_str() {
                db::metrics::summarize(&mut tx, id).await?;
                reclaimed.cancelled.push(id);
            } else {
                reclaimed.requeued.push(id);
            }
        }
        tx.commit().await?;
        drop(held);
        reclaimed.requeued.sort_unstable();
        reclaimed.cancelled.sort_unstable();
        for id in &reclaimed.cancelled {
            self.announce(*id, RunStatus::Cancelled, None);
        }
        for id in &reclaimed.requeued {
            self.announce(*id, RunStatus::Queued, None);
        }
        if !reclaimed.requeued.is_empty() {
            self.work.notify_one();
        }
        Ok(reclaimed)
    }
}

/// Which of `leases` are still held, that is their run is `running` under that attempt: the
/// metric writer's check, inside its own transaction, before it stores anything for a claim.
/// The attempt alone decides (only a claim changes it), so the writer needs no worker id.
///
/// On Postgres the rows it finds stay share-locked until the writer's transaction ends, so a
/// reclaim (which updates them) waits for the writer and the writer never writes after one.
/// SQLite's writer holds the database's write lock already.
pub async fn still_held(conn: &mut Conn, leases: &[Lease]) -> sqlx::Result<HashSet<Lease>> {
    if leases.is_empty() {
        return Ok(HashSet::new());
    }
    let mut q = Sql::new("select id, attempts from runs where status = 'running' and (id, attempts) in (values ");
    push_leases(&mut q, leases.iter().copied());
    q.push(")");
    if Backend::of_conn(conn) == Backend::Postgres {
        q.push(" for share");
    }
    let rows: Vec<(i64, i64)> = q.fetch_all(conn).await?;
    Ok(rows.into_iter().map(|(run_id, attempt)| Lease { run_id, attempt }).collect())
}

/// `(id, attempt), ...` as bound row values.
fn push_leases(q: &mut Sql, leases: impl Iterator<Item = Lease>) {
    for (i, lease) in leases.enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push("(").bind(lease.run_id).push(", ").bind(lease.attempt).push(")");
    }
}

impl RunQueue for DbQueue {
    fn worker(&self) -> &str {
        &self.worker
    }

    fn enqueue(
        &self,
        config: Value,
        parent_id: Option<i64>,
        launched_by: Option<String>,
    ) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            let mut tx = db::begin_write(&self.pool).await?;
            let id = Self::insert_run(&mut tx, None, &config, parent_id, launched_by.as_deref(), db::now_ms()).await?;
            tx.commit().await?;
            self.announce(id, RunStatus::Queued, None);
            self.work.notify_one();
            Ok(id)
        })
    }

    fn enqueue_sweep(
        &self,
        base: Value,
        grid: Value,
        configs: Vec<Value>,
        launched_by: Option<String>,
    ) -> BoxFuture<'_, Result<(i64, Vec<i64>)>> {
        Box::pin(async move {
            let now = db::now_ms();
            let mut tx = db::begin_write(&self.pool).await?;
            let sweep_id: i64 = sqlx::query_scalar(
                "insert into sweeps (base_config, grid, created_at) values ($1, $2, $3) returning id",
            )
            .bind(base.to_string())
            .bind(grid.to_string())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let mut ids = Vec::with_capacity(configs.len());
            for config in &configs {
                ids.push(Self::insert_run(&mut tx, Some(sweep_id), config, None, launched_by.as_deref(), now).await?);
            }
            tx.commit().await?;
            for id in &ids {
                self.announce(*id, RunStatus::Queued, None);
            }
            self.work.notify_one();
            Ok((sweep_id, ids))
        })
    }

    fn claim(&self) -> BoxFuture<'_, Result<Option<Claim>>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            let now = db::now_ms();
            // One statement, so two workers can never take the same run. On Postgres, `skip
            // locked` lets workers claiming at once each take a different run without waiting.
            // A run is this worker's to take when none of its requirements is missing from the
            // worker's labels (what `trainer::config::labels_satisfy` says for the pages).
            let mut q = Sql::new("update runs set status = 'running', worker = ");
            q.bind(self.worker.clone())
                .push(", attempts = attempts + 1, error = null, started_at = coalesce(started_at, ")
                .bind(now)
                .push("), heartbeat_at = ")
                .bind(now)
                .push(
                    " where status = 'queued' and id = (select id from runs where status = 'queued' and not exists \
                     (select 1 from run_requirements r where r.run_id = runs.id and not (",
                );
            if self.labels.is_empty() {
                q.push("false");
            }
            for (i, (label, value)) in self.labels.iter().enumerate() {
                q.push(if i == 0 { "(r.label = " } else { " or (r.label = " });
                q.bind(label.clone()).push(" and r.value = ").bind(value.clone()).push(")");
            }
            q.push(")) order by id limit 1");
            if Backend::of_pool(&self.pool) == Backend::Postgres {
                q.push(" for update skip locked");
            }
            q.push(") returning id, config, attempts");
            let row: Option<(i64, String, i64)> = q.fetch_optional(&self.pool).await?;
            let Some((run_id, config, attempt)) = row else { return Ok(None) };
            let stop = Arc::new(AtomicBool::new(false));
            running.insert(run_id, Held { attempt, stop: stop.clone() });
            drop(running);
            self.announce(run_id, RunStatus::Running, None);
            Ok(Some(Claim { run_id, config, attempt, stop }))
        })
    }

    fn work_available(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.work.notified())
    }

    fn wake(&self) {
        self.work.notify_one();
    }

    fn finish(&self, run_id: i64, outcome: Outcome) -> BoxFuture<'_, Result<RunStatus>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            let Some(attempt) = running.get(&run_id).map(|h| h.attempt) else {
                return Err(QueueError::Lost(run_id));
            };
            let now = db::now_ms();
            let mut tx = db::begin_write(&self.pool).await?;
            // `for update` on Postgres: a cancel arriving now waits until this run has ended.
            let lock = if Backend::of_pool(&self.pool) == Backend::Postgres { " for update" } else { "" };
            let cancel_requested: Option<i64> = sqlx::query_scalar(&format!(
                "select cancel_requested from runs where id = $1 and status = 'running' and worker = $2 and attempts = $3{lock}",
            ))
            .bind(run_id)
            .bind(&self.worker)
            .bind(attempt)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(cancel_requested) = cancel_requested.map(|c| c != 0) else {
                running.remove(&run_id);
                return Err(QueueError::Lost(run_id));
            };
            let (status, error, reason) = match outcome {
                Outcome::Finished => (RunStatus::Finished, None, None),
                Outcome::FinishedEarly(reason) => (RunStatus::Finished, None, Some(reason)),
                Outcome::Failed(reason) => (RunStatus::Failed, Some(reason), None),
                Outcome::Stopped if cancel_requested => (RunStatus::Cancelled, None, None),
                Outcome::Stopped => (RunStatus::Queued, None, None),
            };
            let finished_at = status.is_terminal().then_some(now);
            // The write lock (SQLite) or the row lock (Postgres) is ours since the check above: it still holds.
            // An ended run keeps the worker that trained it; one back in the queue has none.
            let worker = if status.is_terminal() { "" } else { ", worker = null" };
            sqlx::query(&format!(
                "update runs set status = $1, error = $2, status_reason = $3, finished_at = $4{worker} where id = $5",
            ))
            .bind(status.as_str())
            .bind(&error)
            .bind(&reason)
            .bind(finished_at)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            if status.is_terminal() {
                db::metrics::summarize(&mut tx, run_id).await?;
            }
            tx.commit().await?;
            running.remove(&run_id);
            drop(running);
            self.announce(run_id, status, error);
            Ok(status)
        })
    }

    fn cancel(&self, run_id: i64) -> BoxFuture<'_, Result<Cancelled>> {
        Box::pin(async move {
            let running = self.running.lock().await;
            let now = db::now_ms();
            let queued = sqlx::query(
                "update runs set status = 'cancelled', finished_at = $1 where id = $2 and status = 'queued'",
            )
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
            let requested = sqlx::query("update runs set cancel_requested = 1 where id = $1 and status = 'running'")
                .bind(run_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if requested > 0 {
                // Held elsewhere, the holder's next heartbeat passes it on.
                if let Some(held) = running.get(&run_id) {
                    held.stop.store(true, Ordering::SeqCst);
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
                sqlx::query_scalar("select config from runs where id = $1").bind(run_id).fetch_one(&self.pool).await?;
            Ok(config)
        })
    }

    fn resume(&self, run_id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = db::begin_write(&self.pool).await?;
            let requeued = sqlx::query(
                "update runs set status = 'queued', error = null, finished_at = null, cancel_requested = 0,
                        worker = null
                 where id = $1 and status in ('failed', 'cancelled')",
            )
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if requeued == 0 {
                drop(tx);
                let status = self.status_of(run_id).await?;
                return Err(QueueError::Conflict {
                    id: run_id,
                    status: status.as_str(),
                    message: "only failed or cancelled runs can be retried",
                });
            }
            // Written again when the run ends.
            sqlx::query("delete from run_summaries where run_id = $1").bind(run_id).execute(&mut *tx).await?;
            tx.commit().await?;
            self.announce(run_id, RunStatus::Queued, None);
            self.work.notify_one();
            Ok(())
        })
    }

    fn delete(&self, run_id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let deleted = sqlx::query("delete from runs where id = $1 and status != 'running'")
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

    fn heartbeat(&self) -> BoxFuture<'_, Result<Beat>> {
        Box::pin(async move {
            // The web node's list of workers, and its "no live worker has these labels", read it.
            // Outside the claims' lock: it touches none of them.
            db::workers::seen(&self.pool, &self.worker).await?;
            let mut running = self.running.lock().await;
            if running.is_empty() {
                return Ok(Beat::default());
            }
            let mut q = Sql::new("update runs set heartbeat_at = ");
            q.bind(db::now_ms())
                .push(" where status = 'running' and worker = ")
                .bind(self.worker.clone())
                .push(" and (id, attempts) in (values ");
            push_leases(&mut q, running.iter().map(|(id, h)| Lease { run_id: *id, attempt: h.attempt }));
            q.push(") returning id, cancel_requested");
            let rows: HashMap<i64, bool> =
                q.fetch_all::<(i64, i64), _>(&self.pool).await?.into_iter().map(|(id, c)| (id, c != 0)).collect();
            let mut beat = Beat { renewed: rows.len(), ..Beat::default() };
            for (id, held) in running.iter() {
                match rows.get(id) {
                    Some(false) => {}
                    Some(true) => {
                        held.stop.store(true, Ordering::SeqCst);
                        beat.cancelled.push(*id);
                    }
                    None => {
                        held.stop.store(true, Ordering::SeqCst);
                        beat.lost.push(*id);
                    }
                }
            }
            for id in &beat.lost {
                running.remove(id);
                tracing::warn!(
                    run_id = id,
                    worker = %self.worker,
                    "this worker no longer holds the run (it was reclaimed after a stale heartbeat): stopping its trainer"
                );
            }
            beat.cancelled.sort_unstable();
            beat.lost.sort_unstable();
            Ok(beat)
        })
    }

    fn requeue_orphans(&self) -> BoxFuture<'_, Result<Reclaimed>> {
        Box::pin(self.reclaim(Reclaim::Orphans(&self.worker)))
    }

    fn reclaim_stale(&self, stale_after: Duration) -> BoxFuture<'_, Result<Reclaimed>> {
        let stale_after = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        Box::pin(self.reclaim(Reclaim::StaleBefore(db::now_ms().saturating_sub(stale_after))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::jobs::event_bus::event_bus;

    /// A database file and one worker's queue on it.
    async fn queue() -> (tempfile::TempDir, Arc<DbQueue>) {
        let dir = tempfile::tempdir().unwrap();
        let q = worker(&dir, "w").await;
        (dir, q)
    }

    /// Another worker (or a later process of the same one) on the database in `dir`.
    async fn worker(dir: &tempfile::TempDir, id: &str) -> Arc<DbQueue> {
        let pool = db::testing::pool(dir.path()).await;
        Arc::new(DbQueue::new(pool, event_bus(), id))
    }

    async fn run(q: &DbQueue, id: i64) -> db::runs::Run {
        db::runs::get(&q.pool, id).await.unwrap().unwrap()
    }

    /// Lets the heartbeats written so far age past a `stale_after` of 20 ms.
    async fn age() {
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    const STALE: Duration = Duration::from_millis(20);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_workers_never_claim_the_same_run() {
        let (dir, q) = queue().await;
        for _ in 0..40 {
            q.enqueue(json!({}), None, None).await.unwrap();
        }
        let mut workers = Vec::new();
        for w in 0..8 {
            let q = worker(&dir, &format!("w{w}")).await;
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(c) = q.claim().await.unwrap() {
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
    async fn a_worker_claims_the_runs_whose_required_labels_it_has_and_those_that_require_none() {
        let dir = tempfile::tempdir().unwrap();
        let labelled = |id: &'static str, labels: &'static str| {
            let dir = &dir;
            async move {
                let labels = trainer::config::parse_labels(labels).unwrap();
                Arc::new(DbQueue::new(db::testing::pool(dir.path()).await, event_bus(), id).with_labels(labels))
            }
        };
        let (plain, h100, a100) =
            (worker(&dir, "cpu").await, labelled("h100", "gpu=h100,zone=eu").await, labelled("a100", "gpu=a100").await);
        let needs = |requires: Value| json!({ "requires": requires });
        let h100_any = plain.enqueue(needs(json!({"gpu": "h100"})), None, None).await.unwrap();
        let h100_eu = plain.enqueue(needs(json!({"gpu": "h100", "zone": "eu"})), None, None).await.unwrap();
        let h100_us = plain.enqueue(needs(json!({"gpu": "h100", "zone": "us"})), None, None).await.unwrap();
        let anywhere = plain.enqueue(json!({}), None, None).await.unwrap();

        assert_eq!(plain.claim().await.unwrap().map(|c| c.run_id), Some(anywhere), "older runs require labels");
        assert!(plain.claim().await.unwrap().is_none());
        assert!(a100.claim().await.unwrap().is_none(), "a100 is not h100");
        assert_eq!(h100.claim().await.unwrap().map(|c| c.run_id), Some(h100_any));
        assert_eq!(h100.claim().await.unwrap().map(|c| c.run_id), Some(h100_eu));
        assert!(h100.claim().await.unwrap().is_none(), "zone us is not among its labels");
        assert_eq!(run(&plain, h100_us).await.status.as_str(), "queued");

        // Requeued, the run keeps its requirements.
        assert_eq!(h100.finish(h100_any, Outcome::Stopped).await.unwrap(), RunStatus::Queued);
        assert!(plain.claim().await.unwrap().is_none());
        let again = h100.claim().await.unwrap().unwrap();
        assert_eq!((again.run_id, again.attempt), (h100_any, 2));

        // Deleting a run deletes its requirements.
        plain.cancel(h100_us).await.unwrap();
        plain.delete(h100_us).await.unwrap();
        let left: i64 = sqlx::query_scalar("select count(*) from run_requirements where run_id = $1")
            .bind(h100_us)
            .fetch_one(&plain.pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ended_run_keeps_the_worker_that_trained_it_and_a_run_back_in_the_queue_has_none() {
        let (_dir, q) = queue().await;
        let (a, b) = (q.enqueue(json!({}), None, None).await.unwrap(), q.enqueue(json!({}), None, None).await.unwrap());
        q.claim().await.unwrap().unwrap();
        q.claim().await.unwrap().unwrap();
        assert_eq!(q.finish(a, Outcome::Failed("boom".into())).await.unwrap(), RunStatus::Failed);
        assert_eq!(q.finish(b, Outcome::Stopped).await.unwrap(), RunStatus::Queued);
        assert_eq!(run(&q, a).await.worker.as_deref(), Some("w"), "who trained the failed run");
        assert_eq!(run(&q, b).await.worker, None, "queued again: nobody holds it");
        q.resume(a).await.unwrap();
        assert_eq!(run(&q, a).await.worker, None, "resumed: queued, nobody holds it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_and_a_sweep_record_who_launched_them_as_they_are_stored() {
        let (_dir, q) = queue().await;
        let id = q.enqueue(json!({}), None, Some("alice".into())).await.unwrap();
        let (_, ids) =
            q.enqueue_sweep(json!({}), json!({}), vec![json!({}), json!({})], Some("bob".into())).await.unwrap();
        let anonymous = q.enqueue(json!({}), None, None).await.unwrap();
        assert_eq!(run(&q, id).await.launched_by.as_deref(), Some("alice"));
        for id in ids {
            assert_eq!(run(&q, id).await.launched_by.as_deref(), Some("bob"));
        }
        assert_eq!(run(&q, anonymous).await.launched_by, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_run_is_requeued_unless_it_was_cancelled() {
        let (_dir, q) = queue().await;
        let a = q.enqueue(json!({}), None, None).await.unwrap();
        let b = q.enqueue(json!({}), None, None).await.unwrap();
        let ca = q.claim().await.unwrap().unwrap();
        let cb = q.claim().await.unwrap().unwrap();
        assert_eq!((ca.run_id, cb.run_id), (a, b));
        assert_eq!(q.cancel(b).await.unwrap(), Cancelled::Requested);
        assert!(cb.stop.load(Ordering::SeqCst), "the trainer sees the cancel");
        assert_eq!(q.finish(a, Outcome::Stopped).await.unwrap(), RunStatus::Queued);
        assert_eq!(q.finish(b, Outcome::Stopped).await.unwrap(), RunStatus::Cancelled);
        let again = q.claim().await.unwrap().unwrap();
        assert_eq!((again.run_id, again.attempt), (a, 2));
        assert!(matches!(q.finish(b, Outcome::Finished).await, Err(QueueError::Lost(_))), "only held runs finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_worker_requeues_its_runs_at_once_and_a_pending_cancel_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let before = worker(&dir, "w").await;
        let a = before.enqueue(json!({}), None, None).await.unwrap();
        let b = before.enqueue(json!({}), None, None).await.unwrap();
        before.claim().await.unwrap().unwrap();
        before.claim().await.unwrap().unwrap();
        before.cancel(b).await.unwrap();
        // The process died; the same worker id starts again, long before the heartbeat is stale.
        let after = worker(&dir, "w").await;
        let reclaimed = after.requeue_orphans().await.unwrap();
        assert_eq!(reclaimed, Reclaimed { requeued: vec![a], cancelled: vec![b] });
        assert_eq!(after.status_of(a).await.unwrap(), RunStatus::Queued);
        assert_eq!(after.status_of(b).await.unwrap(), RunStatus::Cancelled);
        let resumed = after.claim().await.unwrap().unwrap();
        assert_eq!((resumed.run_id, resumed.attempt), (a, 2), "attempts keep counting");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_workers_runs_are_left_alone_when_another_worker_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (worker(&dir, "a").await, worker(&dir, "b").await);
        let id = a.enqueue(json!({}), None, None).await.unwrap();
        a.claim().await.unwrap().unwrap();
        assert!(b.requeue_orphans().await.unwrap().is_empty(), "not b's run");
        assert!(b.reclaim_stale(Duration::from_secs(60)).await.unwrap().is_empty(), "a's heartbeat is fresh");
        age().await;
        assert_eq!(a.heartbeat().await.unwrap(), Beat { renewed: 1, ..Beat::default() });
        assert!(b.reclaim_stale(STALE).await.unwrap().is_empty(), "the beat renewed it");
        let held = run(&a, id).await;
        assert_eq!((held.status.as_str(), held.attempts), ("running", 1));
        assert_eq!(a.finish(id, Outcome::Finished).await.unwrap(), RunStatus::Finished);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_run_of_a_dead_worker_is_reclaimed_and_resumes_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (dead, live) = (worker(&dir, "dead").await, worker(&dir, "live").await);
        let id = dead.enqueue(json!({}), None, None).await.unwrap();
        dead.claim().await.unwrap().unwrap();
        age().await;
        // The live worker's own claims are renewed, never reclaimed by itself.
        let other = live.enqueue(json!({}), None, None).await.unwrap();
        live.claim().await.unwrap().unwrap();
        assert_eq!(live.reclaim_stale(STALE).await.unwrap(), Reclaimed { requeued: vec![id], cancelled: vec![] });
        let again = live.claim().await.unwrap().unwrap();
        assert_eq!((again.run_id, again.attempt), (id, 2), "attempts keep counting");
        assert_eq!(run(&live, id).await.status, "running");
        assert_eq!(run(&live, other).await.status, "running");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_sent_through_another_worker_stops_the_run_at_its_holders_next_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let (holder, other) = (worker(&dir, "holder").await, worker(&dir, "other").await);
        let id = holder.enqueue(json!({}), None, None).await.unwrap();
        let claim = holder.claim().await.unwrap().unwrap();
        assert_eq!(other.cancel(id).await.unwrap(), Cancelled::Requested);
        assert!(!claim.stop.load(Ordering::SeqCst), "nothing reached the holder yet");
        let beat = holder.heartbeat().await.unwrap();
        assert_eq!(beat, Beat { renewed: 1, cancelled: vec![id], lost: vec![] });
        assert!(claim.stop.load(Ordering::SeqCst), "the trainer sees the cancel");
        assert_eq!(holder.finish(id, Outcome::Stopped).await.unwrap(), RunStatus::Cancelled);
    }

    /// `slow` claims a run, goes quiet past `STALE`, and `fast` reclaims and claims it.
    async fn taken_over(dir: &tempfile::TempDir) -> (Arc<DbQueue>, Claim, Arc<DbQueue>, Claim) {
        let (slow, fast) = (worker(dir, "slow").await, worker(dir, "fast").await);
        slow.enqueue(json!({}), None, None).await.unwrap();
        let old = slow.claim().await.unwrap().unwrap();
        age().await;
        fast.reclaim_stale(STALE).await.unwrap();
        let new = fast.claim().await.unwrap().unwrap();
        assert_eq!((new.run_id, new.attempt), (old.run_id, 2));
        (slow, old, fast, new)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_lost_its_run_cannot_finish_it() {
        let dir = tempfile::tempdir().unwrap();
        let (slow, old, fast, new) = taken_over(&dir).await;
        // Back from a pause, its trainer done: it must not end the run the other worker runs.
        assert!(
            matches!(slow.finish(old.run_id, Outcome::Finished).await, Err(QueueError::Lost(id)) if id == old.run_id)
        );
        let now = run(&fast, new.run_id).await;
        assert_eq!((now.status.as_str(), now.attempts, now.finished_at), ("running", 2, None));
        assert_eq!(fast.finish(new.run_id, Outcome::Finished).await.unwrap(), RunStatus::Finished);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_run_is_stopped_by_its_old_holders_next_heartbeat_which_renews_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (slow, old, fast, new) = taken_over(&dir).await;
        let renewed_by_fast = run(&fast, new.run_id).await.heartbeat_at;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let beat = slow.heartbeat().await.unwrap();
        assert_eq!(beat, Beat { renewed: 0, cancelled: vec![], lost: vec![old.run_id] });
        assert!(old.stop.load(Ordering::SeqCst), "the old trainer stops");
        assert!(!new.stop.load(Ordering::SeqCst), "the new one carries on");
        assert_eq!(run(&fast, new.run_id).await.heartbeat_at, renewed_by_fast, "not renewed by the old holder");
        assert!(matches!(slow.finish(old.run_id, Outcome::Stopped).await, Err(QueueError::Lost(_))));
        assert_eq!(run(&fast, new.run_id).await.status, "running", "a stop does not requeue it either");
        assert_eq!(slow.heartbeat().await.unwrap(), Beat::default(), "the lost claim is forgotten");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_or_cancelled_runs_retry_and_running_runs_are_not_deleted() {
        let (_dir, q) = queue().await;
        let a = q.enqueue(json!({"beta": 0.2}), None, None).await.unwrap();
        assert!(matches!(q.retry(a).await, Err(QueueError::Conflict { .. })));
        q.claim().await.unwrap().unwrap();
        assert!(matches!(q.delete(a).await, Err(QueueError::Conflict { .. })));
        q.finish(a, Outcome::Failed("boom".into())).await.unwrap();
        assert_eq!(q.retry(a).await.unwrap(), json!({"beta": 0.2}).to_string());
        q.delete(a).await.unwrap();
        assert!(matches!(q.delete(a).await, Err(QueueError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_resumed_run_is_queued_again_under_its_own_id_and_claimed_with_the_next_attempt() {
        let (_dir, q) = queue().await;
        let a = q.enqueue(json!({}), None, None).await.unwrap();
        assert!(matches!(q.resume(a).await, Err(QueueError::Conflict { .. })), "a queued run");
        let first = q.claim().await.unwrap().unwrap();
        q.finish(a, Outcome::Failed("boom".into())).await.unwrap();
        q.resume(a).await.unwrap();
        let r = run(&q, a).await;
        assert_eq!((r.status.as_str(), r.error, r.finished_at), ("queued", None, None));
        let second = q.claim().await.unwrap().unwrap();
        assert_eq!((second.run_id, second.attempt), (a, first.attempt + 1));
        q.finish(a, Outcome::Finished).await.unwrap();
        assert!(matches!(q.resume(a).await, Err(QueueError::Conflict { status: "finished", .. })));
        assert!(matches!(q.resume(99).await, Err(QueueError::NotFound(99))));
    }
}
