//! Executes claimed runs: at most `max_concurrent` trainers, each on a blocking thread (candle
//! is CPU-bound and would starve the async runtime), each behind `catch_unwind` so a panicking
//! run fails alone.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trainer::config::RunConfig;
use trainer::metrics::MetricSink;
use trainer::train::TrainOutcome;

use super::queue::{Claim, Outcome, QueueError, RunQueue};
use super::sink::{DbSink, MetricWriter, WriteMsg};

/// What a claimed run executes: `trainer::train::train`, except in tests of the failure paths.
pub type TrainFn = fn(&RunConfig, &Path, bool, &mut dyn MetricSink) -> trainer::Result<TrainOutcome>;

pub struct Runner {
    pub queue: Arc<dyn RunQueue>,
    pub train: TrainFn,
    pub writer: MetricWriter,
    pub data_dir: PathBuf,
    pub max_concurrent: usize,
    /// Stops claiming new runs and asks running trainers to checkpoint and stop.
    pub shutdown: CancellationToken,
}

impl Runner {
    /// Claims and runs until shutdown; returns once every trainer has stopped and been recorded.
    pub async fn run(self) {
        let worker = format!("local-{}", std::process::id());
        let slots = Arc::new(Semaphore::new(self.max_concurrent.max(1)));
        let stop_all = Arc::new(AtomicBool::new(false));
        let mut trainers = JoinSet::new();
        'claiming: loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = self.shutdown.cancelled() => break 'claiming,
            };
            let claim = loop {
                if self.shutdown.is_cancelled() {
                    break 'claiming;
                }
                match self.queue.claim(&worker).await {
                    Ok(Some(claim)) => break claim,
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "claiming a run failed"),
                }
                // Woken by an enqueue; the timeout covers runs added by another process.
                tokio::select! {
                    () = self.queue.work_available() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = self.shutdown.cancelled() => break 'claiming,
                }
            };
            let (queue, writer, data_dir, stop_all, train) =
                (self.queue.clone(), self.writer.clone(), self.data_dir.clone(), stop_all.clone(), self.train);
            trainers.spawn(async move {
                run_one(claim, queue.as_ref(), train, writer, &data_dir, stop_all).await;
                drop(permit);
            });
            // Reap finished trainers so the set does not grow forever.
            while trainers.try_join_next().is_some() {}
        }
        stop_all.store(true, Ordering::SeqCst);
        while trainers.try_join_next().is_some() {}
        let running = trainers.len();
        if running > 0 {
            tracing::info!(running, "asking running trainers to checkpoint and stop");
        }
        while trainers.join_next().await.is_some() {}
    }
}

async fn run_one(
    claim: Claim,
    queue: &dyn RunQueue,
    train: TrainFn,
    writer: MetricWriter,
    data_dir: &std::path::Path,
    stop_all: Arc<AtomicBool>,
) {
    let run_id = claim.run_id;
    let output_dir = super::run_dir(data_dir, run_id);
    tracing::info!(run_id, attempt = claim.attempt, dir = %output_dir.display(), "run started");
    let outcome = match train_blocking(&claim, train, writer, output_dir, stop_all).await {
        Ok(outcome) => outcome,
        Err(reason) => Outcome::Failed(reason),
    };
    match &outcome {
        Outcome::Failed(reason) => tracing::warn!(run_id, %reason, "run failed"),
        other => tracing::info!(run_id, outcome = ?other, "run ended"),
    }
    // A run whose end is not recorded would stay `running` until the next start: retry.
    for attempt in 1..=5u32 {
        match queue.finish(run_id, outcome.clone()).await {
            Ok(_) => break,
            Err(e @ QueueError::NotFound(_)) => {
                tracing::error!(run_id, error = %e, "the run was no longer running when it ended");
                break;
            }
            Err(e) => {
                tracing::error!(run_id, attempt, error = %e, "recording the end of a run failed");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
}

async fn train_blocking(
    claim: &Claim,
    train: TrainFn,
    writer: MetricWriter,
    output_dir: PathBuf,
    stop_all: Arc<AtomicBool>,
) -> Result<Outcome, String> {
    let cfg: RunConfig = serde_json::from_str(&claim.config).map_err(|e| format!("stored config: {e}"))?;
    let run_id = claim.run_id;
    // Without a checkpoint the run starts over: forget anything an earlier attempt logged.
    let has_checkpoint = trainer::checkpoint::latest(&output_dir).map_err(|e| e.to_string())?.is_some();
    if !has_checkpoint {
        writer.send(WriteMsg::ResumedAt { run_id, step: -1 }).await?;
    }
    let mut sink = DbSink::new(run_id, writer, claim.cancel.clone(), stop_all, cfg.save_steps);
    let joined = tokio::task::spawn_blocking(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| train(&cfg, &output_dir, true, &mut sink)));
        // Whatever happened, what was logged is committed before the status changes.
        let flushed = sink.flush();
        (result, flushed)
    })
    .await;
    let (result, flushed) = joined.map_err(|e| format!("trainer thread: {e}"))?;
    let outcome = match result {
        Ok(Ok(outcome)) if outcome.stopped_early => Outcome::Stopped,
        Ok(Ok(_)) => Outcome::Finished,
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(panic) => Outcome::Failed(format!("trainer panicked: {}", panic_message(panic.as_ref()))),
    };
    match flushed {
        Err(e) if !matches!(outcome, Outcome::Failed(_)) => Ok(Outcome::Failed(format!("storing metrics: {e}"))),
        _ => Ok(outcome),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::db;
    use crate::db::runs::RunStatus;
    use crate::jobs::events::event_bus;
    use crate::jobs::queue::SqliteQueue;

    /// Panics on seed 13, trains nothing (but logs a step) otherwise.
    fn panics_on_seed_13(
        cfg: &RunConfig,
        _: &Path,
        _: bool,
        sink: &mut dyn MetricSink,
    ) -> trainer::Result<TrainOutcome> {
        assert_ne!(cfg.seed, 13, "a deliberate panic in the trainer");
        sink.log(1, &[("loss".to_string(), 0.5)].into_iter().collect())?;
        Ok(TrainOutcome { global_step: 1, total_steps: 1, stopped_early: false, last_checkpoint: None })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_trainer_fails_its_run_with_the_reason_and_the_other_runs_carry_on() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
        let events = event_bus();
        let queue = Arc::new(SqliteQueue::new(pool.clone(), events.clone()));
        let config = |seed: u64| json!({"task": "toy-tree", "seed": seed, "max_steps": 1});
        let bad = queue.enqueue(config(13), None).await.unwrap();
        let good = queue.enqueue(config(14), None).await.unwrap();
        let (writer, writer_task) = MetricWriter::spawn(pool.clone(), events);
        let shutdown = CancellationToken::new();
        let runner = Runner {
            queue: queue.clone(),
            train: panics_on_seed_13,
            writer,
            data_dir: dir.path().to_path_buf(),
            max_concurrent: 1,
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(runner.run());
        let status = |id: i64| {
            let pool = pool.clone();
            async move { db::runs::get(&pool, id).await.unwrap().unwrap() }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while status(good).await.status != RunStatus::Finished.as_str() {
            assert!(std::time::Instant::now() < deadline, "the good run never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failed = status(bad).await;
        assert_eq!(failed.status, RunStatus::Failed.as_str());
        let error = failed.error.unwrap();
        assert!(error.contains("trainer panicked") && error.contains("a deliberate panic"), "{error}");
        shutdown.cancel();
        task.await.unwrap();
        writer_task.await.unwrap();
    }
}
