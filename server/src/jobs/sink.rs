//! The metrics path: [`DbSink`] is the trainer's [`MetricSink`] on its blocking thread; it hands
//! every message to the one [`MetricWriter`] task, which commits whatever has queued up in a
//! single transaction and then tells live subscribers.
//!
//! Fencing rule: every message names the claim ([`Lease`]) it is written for, and a batch
//! stores only what belongs to claims still held (`queue::still_held`, in the same
//! transaction): a trainer whose run was reclaimed cannot overwrite what the run's new holder
//! logs, nor delete it with a resume, in the step or two before it notices and stops.
//!
//! Durability rule: before a checkpoint is written the metrics it covers are committed (the
//! trainer says when it is about to write one, and the sink flushes), so a run resumed from that
//! checkpoint after a crash has every earlier step stored, and its later steps are deleted and
//! logged again. A checkpoint the trainer no longer keeps is forgotten here before its directory
//! is removed.
//!
//! Checkpoint rule: with a [`CheckpointStore`] other than the data dir, a checkpoint is recorded
//! only after every file of it is uploaded (by the trainer's thread, which waits), and the
//! objects of checkpoints the database forgets (or never took, the claim being lost) are
//! deleted from the store after the commit that forgot them.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use trainer::metrics::{MetricSink, Metrics};

use super::event_bus::{data_line, metrics_json, EventBus, RunEvent, SftData};
use super::queue::{self, Lease};
use crate::db::{self, checkpoints::CheckpointFile, metrics::MetricRow, Pool};
use crate::store::{checkpoint_key, CheckpointStore, Location};

/// The most messages one transaction takes.
const MAX_BATCH: usize = 4096;

#[derive(Debug)]
pub enum WriteMsg {
    Metrics {
        lease: Lease,
        step: i64,
        values: Vec<(String, Option<f64>)>,
    },
    Progress {
        lease: Lease,
        step: i64,
        total: i64,
    },
    /// Forget everything after `step` (metrics and checkpoints).
    ResumedAt {
        lease: Lease,
        step: i64,
    },
    Checkpoint {
        lease: Lease,
        step: i64,
        path: String,
        sha256: String,
        files: Vec<CheckpointFile>,
    },
    /// The trainer no longer keeps this checkpoint and removes its directory next.
    CheckpointDeleted {
        lease: Lease,
        step: i64,
    },
    /// One step of π_init's SFT: stored as `sft/*` metrics on their own step axis.
    Sft {
        lease: Lease,
        step: i64,
        max_steps: i64,
        values: Vec<(String, Option<f64>)>,
    },
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Cloneable handle to the writer task.
#[derive(Debug, Clone)]
pub struct MetricWriter {
    tx: mpsc::Sender<WriteMsg>,
    /// Set when a batch could not be committed after retries; every sink then fails its run
    /// rather than train on while losing metrics.
    failure: Arc<Mutex<Option<String>>>,
    /// Where checkpoints are uploaded; `None`: recorded where the trainer wrote them.
    store: Option<CheckpointStore>,
    /// The runtime the trainers' threads upload on.
    runtime: tokio::runtime::Handle,
}

impl MetricWriter {
    /// Starts the writer task; it ends when every handle is dropped and the queue is drained.
    /// Checkpoints are recorded where the trainer wrote them.
    pub fn spawn(pool: Pool, events: EventBus) -> (Self, tokio::task::JoinHandle<()>) {
        Self::spawn_with_store(pool, events, None)
    }

    /// [`MetricWriter::spawn`], with checkpoints uploaded to `store` before they are recorded.
    pub fn spawn_with_store(
        pool: Pool,
        events: EventBus,
        store: Option<CheckpointStore>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let store = store.filter(|s| !s.in_place());
        let (tx, rx) = mpsc::channel(65_536);
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(write_loop(pool, events, rx, failure.clone(), store.clone()));
        (Self { tx, failure, store, runtime: tokio::runtime::Handle::current() }, task)
    }

    /// From a blocking thread; waits when the writer is behind (backpressure).
    pub fn send_blocking(&self, msg: WriteMsg) -> Result<(), String> {
        self.tx.blocking_send(msg).map_err(|_| "the metrics writer has stopped".to_string())
    }

    pub async fn send(&self, msg: WriteMsg) -> Result<(), String> {
        self.tx.send(msg).await.map_err(|_| "the metrics writer has stopped".to_string())
    }

    /// From a blocking thread: returns once everything sent so far is committed.
    pub fn flush_blocking(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send_blocking(WriteMsg::Flush(tx))?;
        rx.blocking_recv().map_err(|_| "the metrics writer has stopped".to_string())?
    }

    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(WriteMsg::Flush(tx)).await?;
        rx.await.map_err(|_| "the metrics writer has stopped".to_string())?
    }

    /// Where checkpoints are uploaded; `None` when they stay where the trainer writes them.
    pub fn store(&self) -> Option<&CheckpointStore> {
        self.store.as_ref()
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }
}

/// How long the writer retries a batch that fails, before it gives up on it.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// The pause before retry `attempt` (from 0): 100 ms, doubling, at most 2 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

async fn write_loop(
    pool: Pool,
    events: EventBus,
    mut rx: mpsc::Receiver<WriteMsg>,
    failure: Arc<Mutex<Option<String>>>,
    store: Option<CheckpointStore>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A database restarting (or a network blip) loses nothing: the batch's transaction is
        // retried whole for up to `RETRY_FOR`, and its upserts make a repeat harmless.
        let started = tokio::time::Instant::now();
        let mut result;
        let mut attempt = 0u32;
        loop {
            result = commit(&pool, &batch).await.map_err(|e| e.to_string());
            let Err(e) = &result else { break };
            if started.elapsed() >= RETRY_FOR {
                break;
            }
            tracing::warn!(attempt, error = %e, "metrics batch failed; retrying");
            tokio::time::sleep(retry_delay(attempt)).await;
            attempt += 1;
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "metrics batch lost");
            *failure.lock().expect("failure lock") = Some(e.clone());
        }
        let held = result.as_ref().ok().map(|(held, _)| held);
        // Subscribers hear only what was stored.
        let stored = |lease: &Lease| held.is_some_and(|h| h.contains(lease));
        if let Some(store) = &store {
            // Uploaded but never recorded (the claim was lost), or recorded and now forgotten.
            let mut doomed: Vec<String> = result.as_ref().map(|(_, forgotten)| forgotten.clone()).unwrap_or_default();
            doomed.extend(batch.iter().filter_map(|msg| match msg {
                WriteMsg::Checkpoint { lease, path, .. } if held.is_some() && !stored(lease) => Some(path.clone()),
                _ => None,
            }));
            remove_objects(store, doomed);
        }
        for msg in batch.drain(..) {
            match msg {
                WriteMsg::Flush(ack) => {
                    let _ = ack.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
                }
                WriteMsg::Metrics { lease, step, values } if stored(&lease) => {
                    let data = metrics_json(step, values.iter().map(|(k, v)| (k, v)));
                    events.send(RunEvent::Metrics { run_id: lease.run_id, step, data: data.into() });
                }
                WriteMsg::Checkpoint { lease, step, .. } if stored(&lease) => {
                    events.send(RunEvent::Checkpoint { run_id: lease.run_id, step, deleted: false });
                }
                WriteMsg::CheckpointDeleted { lease, step } if stored(&lease) => {
                    events.send(RunEvent::Checkpoint { run_id: lease.run_id, step, deleted: true });
                }
                WriteMsg::Sft { lease, step, max_steps, values } if stored(&lease) => {
                    let data = sft_json(step, max_steps, &values);
                    events.send(RunEvent::Sft { run_id: lease.run_id, step, data: data.into() });
                }
                _ => {}
            }
        }
    }
}

impl WriteMsg {
    fn lease(&self) -> Option<Lease> {
        match self {
            Self::Metrics { lease, .. }
            | Self::Progress { lease, .. }
            | Self::ResumedAt { lease, .. }
            | Self::Checkpoint { lease, .. }
            | Self::CheckpointDeleted { lease, .. }
            | Self::Sft { lease, .. } => Some(*lease),
            Self::Flush(_) => None,
        }
    }
}

/// Deletes, in the background and best effort, the objects of checkpoints no record lists.
fn remove_objects(store: &CheckpointStore, recorded_paths: Vec<String>) {
    for path in recorded_paths {
        let location = Location::of(&path);
        if !matches!(location, Location::Key(_)) {
            continue;
        }
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.remove(&location).await {
                tracing::warn!(key = path, error = %e, "deleting a forgotten checkpoint from the store failed");
            }
        });
    }
}

/// One transaction for the whole batch, applied in order, of the messages whose claims are
/// still held; answers those claims, and the recorded paths of the checkpoints it forgot.
async fn commit(pool: &Pool, batch: &[WriteMsg]) -> sqlx::Result<(HashSet<Lease>, Vec<String>)> {
    let mut tx = db::begin_append(pool).await?;
    let leases: Vec<Lease> = batch.iter().filter_map(WriteMsg::lease).collect::<HashSet<_>>().into_iter().collect();
    let held = queue::still_held(&mut tx, &leases).await?;
    if held.len() < leases.len() {
        let lost: Vec<i64> = leases.iter().filter(|l| !held.contains(l)).map(|l| l.run_id).collect();
        tracing::warn!(?lost, "dropped metrics of runs whose claim is no longer held");
    }
    let mut rows: Vec<MetricRow> = Vec::new();
    let mut progress: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut forgotten: Vec<String> = Vec::new();
    for msg in batch.iter().filter(|m| m.lease().is_some_and(|l| held.contains(&l))) {
        match msg {
            WriteMsg::Metrics { lease, step, values } => rows.extend(values.iter().map(|(name, value)| MetricRow {
                run_id: lease.run_id,
                name: name.clone(),
                step: *step,
                value: *value,
            })),
            WriteMsg::Progress { lease, step, total } => {
                progress.insert(lease.run_id, (*step, *total));
            }
            WriteMsg::ResumedAt { lease, step } => {
                db::metrics::upsert(&mut tx, &std::mem::take(&mut rows)).await?;
                db::metrics::delete_after(&mut tx, lease.run_id, *step).await?;
                forgotten.extend(db::checkpoints::paths_after(&mut tx, lease.run_id, *step).await?);
                db::checkpoints::delete_after(&mut tx, lease.run_id, *step).await?;
                // Its progress is where it resumes, not where an earlier attempt got to.
                db::runs::set_step(&mut tx, lease.run_id, (*step).max(0)).await?;
                progress.remove(&lease.run_id);
            }
            WriteMsg::Checkpoint { lease, step, path, sha256, files } => {
                // Re-recorded by another claim: the earlier upload is no longer listed.
                forgotten.extend(db::checkpoints::path_of(&mut tx, lease.run_id, *step).await?.filter(|p| p != path));
                db::checkpoints::upsert(&mut tx, lease.run_id, *step, path, sha256, files, db::now_ms()).await?;
            }
            WriteMsg::CheckpointDeleted { lease, step } => {
                forgotten.extend(db::checkpoints::path_of(&mut tx, lease.run_id, *step).await?);
                db::checkpoints::delete(&mut tx, lease.run_id, *step).await?;
            }
            WriteMsg::Sft { lease, step, values, .. } => rows.extend(values.iter().map(|(name, value)| MetricRow {
                run_id: lease.run_id,
                name: name.clone(),
                step: *step,
                value: *value,
            })),
            WriteMsg::Flush(_) => {}
        }
    }
    db::metrics::upsert(&mut tx, &rows).await?;
    for (run_id, (step, total)) in progress {
        db::runs::set_progress(&mut tx, run_id, step, total).await?;
    }
    tx.commit().await?;
    Ok((held, forgotten))
}

/// The trainer's sink for a queued run.
pub struct DbSink {
    lease: Lease,
    writer: MetricWriter,
    /// This run was cancelled, or this worker lost it ([`super::queue::Claim::stop`]).
    stop: Arc<AtomicBool>,
    /// The server is shutting down: every run checkpoints and stops.
    shutdown: Arc<AtomicBool>,
}

impl DbSink {
    pub fn new(lease: Lease, writer: MetricWriter, stop: Arc<AtomicBool>, shutdown: Arc<AtomicBool>) -> Self {
        Self { lease, writer, stop, shutdown }
    }

    pub fn flush(&self) -> trainer::Result<()> {
        self.writer.flush_blocking().map_err(writer_error)
    }

    fn send(&self, msg: WriteMsg) -> trainer::Result<()> {
        if let Some(e) = self.writer.failure() {
            return Err(writer_error(e));
        }
        self.writer.send_blocking(msg).map_err(writer_error)
    }
}

fn writer_error(message: String) -> trainer::Error {
    trainer::Error::io("metrics database", std::io::Error::other(message))
}

fn values(metrics: &Metrics) -> Vec<(String, Option<f64>)> {
    metrics.iter().map(|(k, v)| (k.clone(), v.is_finite().then_some(*v))).collect()
}

/// The `data` of an `sft` event: `{"step", "max_steps", "values": {name: value}}`.
fn sft_json(step: i64, max_steps: i64, values: &[(String, Option<f64>)]) -> String {
    let values = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    data_line(&SftData { step, max_steps: Some(max_steps), values })
}

fn step_i64(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

impl MetricSink for DbSink {
    fn log(&mut self, step: u64, metrics: &Metrics) -> trainer::Result<()> {
        self.send(WriteMsg::Metrics { lease: self.lease, step: step_i64(step), values: values(metrics) })
    }

    /// The durability rule: the steps a checkpoint covers are committed before it exists.
    fn saving_checkpoint(&mut self, _step: u64) -> trainer::Result<()> {
        self.flush()
    }

    fn deleting_checkpoint(&mut self, step: u64) -> trainer::Result<()> {
        // Committed before the directory goes: the database never lists a missing checkpoint.
        // A crash in between leaves a directory no record lists, which the next claim removes.
        self.send(WriteMsg::CheckpointDeleted { lease: self.lease, step: step_i64(step) })?;
        self.flush()
    }

    fn sft(&mut self, step: u64, max_steps: u64, metrics: &Metrics) -> trainer::Result<()> {
        self.send(WriteMsg::Sft {
            lease: self.lease,
            step: step_i64(step),
            max_steps: step_i64(max_steps),
            values: values(metrics),
        })
    }

    fn resumed_at(&mut self, step: u64) -> trainer::Result<()> {
        self.send(WriteMsg::ResumedAt { lease: self.lease, step: step_i64(step) })?;
        self.flush()
    }

    /// Recorded once it is durable: with a store, after every file is uploaded.
    fn checkpoint_saved(&mut self, step: u64, dir: &Path) -> trainer::Result<()> {
        let (sha256, files) = hash_dir(dir)?;
        let step = step_i64(step);
        let path = match &self.writer.store {
            None => dir.to_string_lossy().into_owned(),
            Some(store) => {
                let key = checkpoint_key(self.lease.run_id, self.lease.attempt, step);
                let uploaded = self.writer.runtime.block_on(store.upload(dir, &key, &files));
                uploaded.map_err(|e| {
                    tracing::error!(run_id = self.lease.run_id, step, error = %e, "uploading a checkpoint failed");
                    trainer::Error::Checkpoint {
                        path: dir.to_path_buf(),
                        message: format!(
                            "uploading it to the checkpoint store failed, so it was not recorded: {}",
                            crate::public::internal(&e)
                        ),
                    }
                })?
            }
        };
        self.send(WriteMsg::Checkpoint { lease: self.lease, step, path, sha256, files })?;
        self.flush()
    }

    fn progress(&mut self, step: u64, total: u64) {
        // A lost progress tick is harmless; the next one or the metrics carry on.
        let _ = self.send(WriteMsg::Progress { lease: self.lease, step: step_i64(step), total: step_i64(total) });
    }

    fn memory_plan(&mut self, plan: &trainer::memory::MemoryPlan) {
        tracing::info!(run_id = self.lease.run_id, total_bytes = plan.total(), "memory estimate: {plan}");
    }

    fn warning(&mut self, message: &str) {
        tracing::warn!(run_id = self.lease.run_id, "{message}");
    }

    fn should_stop(&mut self) -> bool {
        let stop = self.stop.load(Ordering::SeqCst) || self.shutdown.load(Ordering::SeqCst);
        if stop {
            // The trainer checkpoints next; the metrics before it must be committed first.
            let _ = self.flush();
        }
        stop
    }
}

/// The files of a checkpoint directory with their sizes and sha256, and one digest over all.
pub fn hash_dir(dir: &Path) -> trainer::Result<(String, Vec<CheckpointFile>)> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| trainer::Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| trainer::Error::io(dir, e))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let mut hasher = Sha256::new();
        let mut file = std::fs::File::open(&path).map_err(|e| trainer::Error::io(&path, e))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0i64;
        loop {
            let n = file.read(&mut buf).map_err(|e| trainer::Error::io(&path, e))?;
            if n == 0 {
                break;
            }
            bytes += i64::try_from(n).unwrap_or(i64::MAX);
            hasher.update(&buf[..n]);
        }
        files.push(CheckpointFile {
            name: entry.file_name().to_string_lossy().into_owned(),
            bytes,
            sha256: hex(&hasher.finalize()),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let mut all = Sha256::new();
    for f in &files {
        all.update(format!("{}  {}\n", f.sha256, f.name).as_bytes());
    }
    Ok((hex(&all.finalize()), files))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::jobs::event_bus::event_bus;
    use crate::jobs::queue::{DbQueue, RunQueue};

    fn loss(value: f64) -> Metrics {
        [("loss".to_string(), value)].into_iter().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_replaces_later_steps_so_each_step_is_stored_once_and_subscribers_hear_commits() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::testing::pool(dir.path()).await;
        let events = event_bus();
        let mut rx = events.subscribe();
        let queue = DbQueue::new(pool.clone(), events.clone(), "w");
        let run_id = queue.enqueue(json!({}), None, None).await.unwrap();
        let lease = queue.claim().await.unwrap().unwrap().lease();
        let (writer, task) = MetricWriter::spawn(pool.clone(), events);
        let w = writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = DbSink::new(lease, w, Arc::default(), Arc::default());
            for step in 1..=10 {
                sink.log(step, &loss(1.0 / step as f64)).unwrap();
            }
            // Crashed after step 10, resumed from a checkpoint at step 6, and logged 7..=10 again.
            sink.resumed_at(6).unwrap();
            for step in 7..=10 {
                sink.log(step, &loss(-(step as f64))).unwrap();
            }
            sink.flush().unwrap();
        })
        .await
        .unwrap();
        let series = db::metrics::series(&pool, run_id, &["loss".into()]).await.unwrap();
        let points = &series[0].1;
        let steps: Vec<i64> = points.iter().map(|p| p.0).collect();
        assert_eq!(steps, (1..=10).collect::<Vec<_>>());
        assert_eq!(points[9].1, Some(-10.0), "the resumed value replaced the old one");
        assert_eq!(points[5].1, Some(1.0 / 6.0), "steps up to the checkpoint are kept");
        // Subscribers heard every logged step, after its commit.
        let mut heard = 0;
        while let Ok(event) = rx.try_recv() {
            heard += usize::from(matches!(event, RunEvent::Metrics { .. }));
        }
        assert_eq!(heard, 14);
        drop(writer);
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trainer_whose_run_was_reclaimed_can_neither_log_nor_resume_over_the_new_holder() {
        let dir = tempfile::tempdir().unwrap();
        let url = db::testing::database_url(dir.path()).await;
        let pool = db::connect(&url).await.unwrap();
        let events = event_bus();
        let mut rx = events.subscribe();
        let slow = DbQueue::new(pool.clone(), events.clone(), "slow");
        let fast = DbQueue::new(db::connect(&url).await.unwrap(), event_bus(), "fast");
        let run_id = slow.enqueue(json!({}), None, None).await.unwrap();
        let old = slow.claim().await.unwrap().unwrap().lease();
        tokio::time::sleep(Duration::from_millis(60)).await;
        fast.reclaim_stale(Duration::from_millis(20)).await.unwrap();
        let new = fast.claim().await.unwrap().unwrap().lease();
        let (writer, task) = MetricWriter::spawn(pool.clone(), events);
        let w = writer.clone();
        tokio::task::spawn_blocking(move || {
            let (mut old, mut new) = (
                DbSink::new(old, w.clone(), Arc::default(), Arc::default()),
                DbSink::new(new, w, Arc::default(), Arc::default()),
            );
            for step in 1..=3 {
                new.log(step, &loss(1.0)).unwrap();
                new.progress(step, 10);
            }
            // The old trainer, back from a pause at step 50, before its heartbeat tells it.
            old.log(2, &loss(-1.0)).unwrap();
            old.log(51, &loss(-1.0)).unwrap();
            old.progress(51, 100);
            old.resumed_at(0).unwrap();
            old.flush().unwrap();
        })
        .await
        .unwrap();
        let series = db::metrics::series(&pool, run_id, &[]).await.unwrap();
        assert_eq!(series, vec![("loss".to_string(), vec![(1, Some(1.0)), (2, Some(1.0)), (3, Some(1.0))])]);
        let run = db::runs::get(&pool, run_id).await.unwrap().unwrap();
        assert_eq!((run.step, run.total_steps), (3, Some(10)), "progress is the new holder's");
        let mut heard = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let RunEvent::Metrics { step, .. } = event {
                heard.push(step);
            }
        }
        assert_eq!(heard, vec![1, 2, 3], "subscribers hear only what was stored");
        drop(writer);
        task.await.unwrap();
    }
}
