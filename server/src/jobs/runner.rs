//! Executes claimed runs: at most `max_concurrent` trainers, each on a blocking thread (candle
//! is CPU-bound and would starve the async runtime), each behind `catch_unwind` so a panicking
//! run fails alone. Beside them a ticker renews this worker's claims and takes back the runs of
//! workers that stopped renewing theirs (see the queue's module doc).

use std::any::Any;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use trainer::config::RunConfig;
use trainer::metrics::MetricSink;
use trainer::train::TrainOutcome;

use super::queue::{Claim, Outcome, QueueError, RunQueue};
use super::sink::{DbSink, MetricWriter, WriteMsg};
use crate::db::{self, Pool};
use crate::store::{CheckpointStore, Location};

/// What a claimed run executes: `trainer::train::train_with`, except in tests of the failure paths.
pub type TrainFn = fn(&RunConfig, &Path, bool, &mut dyn MetricSink) -> trainer::Result<TrainOutcome>;

pub struct Runner {
    pub queue: Arc<dyn RunQueue>,
    /// For the checkpoints a resumed run may start from.
    pub pool: Pool,
    pub train: TrainFn,
    pub writer: MetricWriter,
    pub data_dir: PathBuf,
    /// The directories whose paths a failed run's public `error` shows relative to them (data,
    /// models, datasets).
    pub public_dirs: Vec<PathBuf>,
    pub max_concurrent: usize,
    /// How often this worker renews its claims (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// When another worker's claims count as abandoned (`--stale-after`).
    pub stale_after: Duration,
    /// The device every run this worker claims trains on, whatever its `device` says
    /// (`goodhart worker --device cuda:N`); `None` keeps each run's own.
    pub device: Option<String>,
    /// Stops claiming new runs and asks running trainers to checkpoint and stop.
    pub shutdown: CancellationToken,
}

impl Runner {
    /// Claims and runs until shutdown; returns once every trainer has stopped and been recorded.
    pub async fn run(self) {
        // Claims are renewed until the last trainer has stopped, shutdown included: a slow
        // final checkpoint must not look like a dead worker.
        let trainers_done = CancellationToken::new();
        let ticker = tokio::spawn(keep_alive(
            self.queue.clone(),
            self.heartbeat_interval,
            self.stale_after,
            self.shutdown.clone(),
            trainers_done.clone(),
        ));
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
                match self.queue.claim().await {
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
            let (queue, pool, writer, stop_all, train) =
                (self.queue.clone(), self.pool.clone(), self.writer.clone(), stop_all.clone(), self.train);
            let dirs =
                Dirs { data: self.data_dir.clone(), public: self.public_dirs.clone(), device: self.device.clone() };
            trainers.spawn(async move {
                run_one(claim, queue.as_ref(), &pool, train, writer, &dirs, stop_all).await;
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
        trainers_done.cancel();
        if let Err(e) = ticker.await {
            tracing::error!(error = %e, "the heartbeat ticker failed");
        }
        if let Err(e) = crate::db::workers::leave(&self.pool, self.queue.worker()).await {
            tracing::warn!(error = %e, "removing this worker from the list of workers failed");
        }
    }
}

/// Every `interval` until `done`: renews this worker's claims (which also delivers cancels sent
/// to other servers, and stops trainers of runs this worker lost) and, until `shutdown`, takes
/// back runs whose heartbeat is older than `stale_after`. A failed round is retried at the next
/// tick: missing a few is what `stale_after` allows for.
async fn keep_alive(
    queue: Arc<dyn RunQueue>,
    interval: Duration,
    stale_after: Duration,
    shutdown: CancellationToken,
    done: CancellationToken,
) {
    // The server took back stale runs as it started: the first round is one interval later.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = done.cancelled() => return,
        }
        match queue.heartbeat().await {
            Ok(beat) if !beat.cancelled.is_empty() => {
                tracing::debug!(runs = ?beat.cancelled, "cancel requested for running runs");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "renewing this worker's claims failed"),
        }
        if shutdown.is_cancelled() {
            continue;
        }
        match queue.reclaim_stale(stale_after).await {
            Ok(taken) if !taken.is_empty() => tracing::warn!(
                requeued = ?taken.requeued,
                cancelled = ?taken.cancelled,
                stale_after = ?stale_after,
                "took back runs whose worker stopped renewing them"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reclaiming stale runs failed"),
        }
    }
}

/// Where a run's files go, and which directories its public error names paths relative to.
struct Dirs {
    data: PathBuf,
    public: Vec<PathBuf>,
    /// [`Runner::device`].
    device: Option<String>,
}

async fn run_one(
    claim: Claim,
    queue: &dyn RunQueue,
    pool: &Pool,
    train: TrainFn,
    writer: MetricWriter,
    dirs: &Dirs,
    stop_all: Arc<AtomicBool>,
) {
    let run_id = claim.run_id;
    let output_dir = super::run_dir(&dirs.data, run_id);
    tracing::info!(run_id, attempt = claim.attempt, dir = %output_dir.display(), "run started");
    let outcome = match train_blocking(&claim, pool, train, writer, output_dir, dirs, stop_all).await {
        Ok(outcome) => outcome,
        Err(details) => {
            tracing::error!(run_id, %details, "the server could not run it");
            Outcome::Failed(format!("the server could not run it: {}", crate::public::internal(&details)))
        }
    };
    match &outcome {
        Outcome::Failed(reason) => tracing::warn!(run_id, %reason, "run failed"),
        other => tracing::info!(run_id, outcome = ?other, "run ended"),
    }
    // A run whose end is not recorded would stay `running` until it is reclaimed: retry, as
    // long as the metric writer does (a database restart takes seconds).
    let started = tokio::time::Instant::now();
    for attempt in 0.. {
        match queue.finish(run_id, outcome.clone()).await {
            Ok(_) => break,
            Err(e @ QueueError::Lost(_)) => {
                tracing::warn!(run_id, error = %e, "this worker's outcome of the run is discarded");
                break;
            }
            Err(e) if started.elapsed() < super::sink::RETRY_FOR => {
                tracing::warn!(run_id, attempt, error = %e, "recording the end of a run failed; retrying");
                tokio::time::sleep(super::sink::retry_delay(attempt)).await;
            }
            Err(e) => {
                tracing::error!(run_id, error = %e, "recording the end of a run failed; it stays running until reclaimed");
                break;
            }
        }
    }
}

/// Trains the claimed run. `Err` holds the details of a failure of the server itself (for the
/// log); a failure of the run is an [`Outcome::Failed`] with its public error.
async fn train_blocking(
    claim: &Claim,
    pool: &Pool,
    train: TrainFn,
    writer: MetricWriter,
    output_dir: PathBuf,
    dirs: &Dirs,
    stop_all: Arc<AtomicBool>,
) -> Result<Outcome, String> {
    let mut cfg: RunConfig = serde_json::from_str(&claim.config).map_err(|e| format!("stored config: {e}"))?;
    if cfg.task.is_toy() {
        // Stored relative to the data directory: each server keeps the cache in its own.
        cfg.toy_cache_dir = Some(super::toy_cache_dir(&cfg, &dirs.data));
    }
    if let Some(device) = &dirs.device {
        cfg.device.clone_from(device);
    }
    // Queued by a web node that trains nothing, the run was not checked against this machine.
    let unfit = cfg.check_machine();
    if !unfit.is_empty() {
        let problems: Vec<String> = unfit.iter().map(ToString::to_string).collect();
        return Ok(Outcome::Failed(format!("this worker cannot train the run: {}", problems.join("; "))));
    }
    match writer.store() {
        None => discard_unrecorded_checkpoints(pool, claim.run_id, &output_dir).await?,
        Some(store) => fetch_recorded_checkpoints(store, pool, claim.run_id, &output_dir).await?,
    }
    // Without a checkpoint the run starts over: forget anything an earlier attempt logged.
    let has_checkpoint = trainer::checkpoint::latest(&output_dir).map_err(|e| e.to_string())?.is_some();
    if !has_checkpoint {
        writer.send(WriteMsg::ResumedAt { lease: claim.lease(), step: -1 }).await?;
    }
    let mut sink = DbSink::new(claim.lease(), writer, claim.stop.clone(), stop_all);
    let joined = tokio::task::spawn_blocking(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| train(&cfg, &output_dir, true, &mut sink)));
        // Whatever happened, what was logged is committed before the status changes.
        let flushed = sink.flush();
        (result, flushed)
    })
    .await;
    let (result, flushed) = joined.map_err(|e| format!("trainer thread: {e}"))?;
    let public: Vec<&Path> = dirs.public.iter().map(PathBuf::as_path).collect();
    let outcome = match result {
        Ok(Ok(outcome)) if outcome.stopped_early => Outcome::Stopped,
        Ok(Ok(TrainOutcome { finish_reason: Some(reason), .. })) => Outcome::FinishedEarly(reason),
        Ok(Ok(_)) => Outcome::Finished,
        Ok(Err(e)) => {
            tracing::warn!(run_id = claim.run_id, error = %e, "the trainer failed");
            Outcome::Failed(public_error(&e, &public))
        }
        Err(panic) => {
            let details = format!("trainer panicked: {}", panic_message(panic.as_ref()));
            Outcome::Failed(format!("the trainer crashed: {}", crate::public::internal(&details)))
        }
    };
    match flushed {
        Err(e) if !matches!(outcome, Outcome::Failed(_)) => Err(format!("storing metrics: {e}")),
        _ => Ok(outcome),
    }
}

/// A trainer error in the user's terms: what failed, with paths relative to the server's
/// directories; the OS's and the tensor library's own texts only in the log.
fn public_error(error: &trainer::Error, dirs: &[&Path]) -> String {
    let text = match error {
        trainer::Error::Io { path, source } => format!("{}: {}", path.display(), crate::public::io_problem(source)),
        trainer::Error::Tensor(e) => format!("a tensor operation failed: {}", crate::public::internal(&e.to_string())),
        other => other.to_string(),
    };
    crate::public::redact(&text, dirs)
}

/// Removes the run's checkpoints in this worker's run directory that the database does not list
/// (same step, same directory). Either another worker has run the run since this one wrote them
/// (its metrics, and its own checkpoints, replaced theirs), or this worker stopped between
/// writing one and recording it. Resuming from one would splice these old weights onto metrics
/// that another attempt logged; resuming from the latest recorded one, or starting over, is
/// what the stored metrics match.
async fn discard_unrecorded_checkpoints(pool: &Pool, run_id: i64, output_dir: &Path) -> Result<(), String> {
    let recorded: HashSet<PathBuf> = db::checkpoints::list(pool, run_id)
        .await
        .map_err(|e| format!("listing the run's checkpoints: {e}"))?
        .into_iter()
        .filter_map(|c| Path::new(&c.path).canonicalize().ok())
        .collect();
    remove_unlisted_checkpoints(run_id, output_dir, |path, _| path.canonicalize().is_ok_and(|p| recorded.contains(&p)))
}

/// Removes each `checkpoint-*` directory in `output_dir` that `listed` (given its path and
/// name) says the database does not list.
fn remove_unlisted_checkpoints(
    run_id: i64,
    output_dir: &Path,
    listed: impl Fn(&Path, &str) -> bool,
) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        if !name.starts_with("checkpoint-") || listed(&path, &name) {
            continue;
        }
        tracing::warn!(run_id, dir = %path.display(), "removing a checkpoint that the database does not list");
        std::fs::remove_dir_all(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// With a checkpoint store: makes this worker's run directory (its scratch) hold the run's
/// recorded checkpoints, each as recorded. A local copy that is missing (another machine wrote
/// it, or this one lost its disk) or whose digest differs (another claim recorded that step
/// since) is downloaded from the store; one the database does not list is removed, for the
/// reasons [`discard_unrecorded_checkpoints`] gives. The trainer then resumes from the latest.
async fn fetch_recorded_checkpoints(
    store: &CheckpointStore,
    pool: &Pool,
    run_id: i64,
    output_dir: &Path,
) -> Result<(), String> {
    let recorded =
        db::checkpoints::list(pool, run_id).await.map_err(|e| format!("listing the run's checkpoints: {e}"))?;
    let steps: HashSet<String> = recorded.iter().map(|c| format!("checkpoint-{}", c.step)).collect();
    remove_unlisted_checkpoints(run_id, output_dir, |_, name| steps.contains(name))?;
    for c in &recorded {
        let local = output_dir.join(format!("checkpoint-{}", c.step));
        if local.is_dir() && digest(local.clone()).await.is_ok_and(|d| d == c.sha256) {
            continue;
        }
        let location = Location::of(&c.path);
        if let Location::Dir(dir) = &location {
            if !dir.is_dir() {
                // Recorded in another machine's data dir (before this store was configured).
                tracing::warn!(run_id, step = c.step, dir = %dir.display(), "a recorded checkpoint is not on this machine");
                continue;
            }
        }
        tracing::info!(run_id, step = c.step, from = %c.path, store = store.description(), "downloading a checkpoint");
        let files = db::checkpoints::files(pool, run_id, c.step)
            .await
            .map_err(|e| format!("listing checkpoint {}'s files: {e}", c.step))?;
        store
            .download(&location, &files, &local)
            .await
            .map_err(|e| format!("downloading checkpoint {} of run {run_id}: {e}", c.step))?;
        let got = digest(local.clone()).await?;
        if got != c.sha256 {
            return Err(format!(
                "checkpoint {} of run {run_id} in {} does not match its recorded digest ({got} != {})",
                c.step,
                store.description(),
                c.sha256
            ));
        }
    }
    Ok(())
}

/// The digest [`super::sink::hash_dir`] records for a checkpoint directory, off the runtime.
async fn digest(dir: PathBuf) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        super::sink::hash_dir(&dir).map(|(sha256, _)| sha256).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
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
    use std::sync::atomic::AtomicU64;

    use serde_json::json;

    use super::*;
    use crate::db;
    use crate::db::runs::RunStatus;
    use crate::jobs::event_bus::event_bus;
    use crate::jobs::queue::{DbQueue, Reclaimed};

    /// Panics on seed 13, trains nothing (but logs a step) otherwise.
    fn panics_on_seed_13(
        cfg: &RunConfig,
        _: &Path,
        _: bool,
        sink: &mut dyn MetricSink,
    ) -> trainer::Result<TrainOutcome> {
        assert_ne!(cfg.seed, 13, "a deliberate panic in the trainer");
        sink.log(1, &[("loss".to_string(), 0.5)].into_iter().collect())?;
        Ok(TrainOutcome { global_step: 1, total_steps: 1, ..TrainOutcome::default() })
    }

    /// The step at which [`steps_until_stopped`] was told to stop (0 until then).
    static STOPPED_AT: AtomicU64 = AtomicU64::new(0);

    /// Logs a step every 2 ms until told to stop.
    fn steps_until_stopped(
        _: &RunConfig,
        _: &Path,
        _: bool,
        sink: &mut dyn MetricSink,
    ) -> trainer::Result<TrainOutcome> {
        for step in 1..=100_000 {
            if sink.should_stop() {
                STOPPED_AT.store(step, Ordering::SeqCst);
                return Ok(TrainOutcome {
                    global_step: step,
                    total_steps: 0,
                    stopped_early: true,
                    ..TrainOutcome::default()
                });
            }
            sink.progress(step, 100_000);
            sink.log(step, &[("loss".to_string(), 0.5)].into_iter().collect())?;
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("never told to stop");
    }

    struct Started {
        _dir: tempfile::TempDir,
        pool: db::Pool,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        writer_task: tokio::task::JoinHandle<()>,
    }

    async fn database() -> (tempfile::TempDir, db::Pool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::testing::pool(dir.path()).await;
        (dir, pool)
    }

    /// A runner (worker "runner", data dir `dir`) on a fresh database with `configs` queued.
    async fn start(train: TrainFn, heartbeat_interval: Duration, configs: &[serde_json::Value]) -> Started {
        let (dir, pool) = database().await;
        let queue = DbQueue::new(pool.clone(), event_bus(), "runner");
        for config in configs {
            queue.enqueue(config.clone(), None, None).await.unwrap();
        }
        start_on(dir, pool, train, heartbeat_interval)
    }

    fn start_on(dir: tempfile::TempDir, pool: db::Pool, train: TrainFn, heartbeat_interval: Duration) -> Started {
        let events = event_bus();
        let (writer, writer_task) = MetricWriter::spawn(pool.clone(), events.clone());
        let shutdown = CancellationToken::new();
        let runner = Runner {
            queue: Arc::new(DbQueue::new(pool.clone(), events, "runner")),
            pool: pool.clone(),
            train,
            writer,
            data_dir: dir.path().to_path_buf(),
            public_dirs: vec![dir.path().to_path_buf()],
            max_concurrent: 1,
            heartbeat_interval,
            stale_after: Duration::from_secs(60),
            device: None,
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(runner.run());
        Started { _dir: dir, pool, shutdown, task, writer_task }
    }

    impl Started {
        async fn run(&self, id: i64) -> db::runs::Run {
            db::runs::get(&self.pool, id).await.unwrap().unwrap()
        }

        async fn wait(&self, id: i64, what: &str, done: impl Fn(&db::runs::Run) -> bool) -> db::runs::Run {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let run = self.run(id).await;
                if done(&run) {
                    return run;
                }
                assert!(std::time::Instant::now() < deadline, "never {what}: {run:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap();
            self.writer_task.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_trainer_fails_its_run_with_an_error_id_and_the_other_runs_carry_on() {
        let config = |seed: u64| json!({"task": "toy-tree", "seed": seed, "max_steps": 1});
        let r = start(panics_on_seed_13, Duration::from_secs(5), &[config(13), config(14)]).await;
        let (bad, good) = (1, 2);
        r.wait(good, "finished", |run| run.status == RunStatus::Finished.as_str()).await;
        let failed = r.run(bad).await;
        assert_eq!(failed.status, RunStatus::Failed.as_str());
        let error = failed.error.unwrap();
        // The panic's text is the server's business: the log has it, under the id the error names.
        assert!(error.starts_with("the trainer crashed: internal error "), "{error}");
        assert!(!error.contains("a deliberate panic"), "{error}");
        r.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runner_that_lost_its_run_stops_the_trainer_at_its_next_heartbeat_and_records_nothing_more() {
        let config = json!({"task": "toy-tree", "max_steps": 100_000});
        let r = start(steps_until_stopped, Duration::from_millis(300), &[config]).await;
        r.wait(1, "trained a few steps", |run| run.step >= 5).await;
        // Another worker finds the heartbeat stale (as if this one had been paused) and takes
        // over; "stale" is "older than now", so only a beat in the very same millisecond misses.
        let other = DbQueue::new(r.pool.clone(), event_bus(), "other");
        let mut taken = Reclaimed::default();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            taken = other.reclaim_stale(Duration::ZERO).await.unwrap();
            if !taken.is_empty() {
                break;
            }
        }
        assert_eq!(taken.requeued, vec![1]);
        let new = other.claim().await.unwrap().unwrap();
        let at_takeover = r.run(1).await;
        let stopped = r.wait(1, "stopped", |_| STOPPED_AT.load(Ordering::SeqCst) > 0).await;
        assert!(!new.stop.load(Ordering::SeqCst));
        // Give the runner time to try to record the end, then check that it recorded nothing.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = r.run(1).await;
        assert_eq!((after.status.as_str(), after.attempts), ("running", 2), "still the other worker's");
        assert_eq!(after.step, at_takeover.step, "no progress recorded after the takeover: {stopped:?}");
        let series = db::metrics::series(&r.pool, 1, &["loss".into()]).await.unwrap();
        let last_logged = series[0].1.last().unwrap().0;
        assert!(
            last_logged <= at_takeover.step,
            "step {last_logged} logged after the takeover at {}",
            at_takeover.step
        );
        assert!(STOPPED_AT.load(Ordering::SeqCst) > at_takeover.step as u64, "the trainer ran on until the beat");
        other.finish(1, Outcome::Finished).await.unwrap();
        r.stop().await;
    }

    /// Where each run [`notes_where_it_resumes`] trained would have resumed from.
    static RESUMES_FROM: std::sync::Mutex<Vec<Option<PathBuf>>> = std::sync::Mutex::new(Vec::new());

    fn notes_where_it_resumes(
        _: &RunConfig,
        dir: &Path,
        _: bool,
        _: &mut dyn MetricSink,
    ) -> trainer::Result<TrainOutcome> {
        RESUMES_FROM.lock().unwrap().push(trainer::checkpoint::latest(dir)?);
        Ok(TrainOutcome { global_step: 1, total_steps: 1, ..TrainOutcome::default() })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_resumes_from_its_latest_recorded_checkpoint_and_unrecorded_ones_are_removed() {
        let (dir, pool) = database().await;
        // An earlier attempt recorded its checkpoint at step 5. The one at step 9 was written
        // but never recorded: its worker stopped first, or another worker has run the run since.
        let earlier = DbQueue::new(pool.clone(), event_bus(), "earlier");
        let id = earlier.enqueue(json!({"task": "toy-tree", "max_steps": 1}), None, None).await.unwrap();
        let lease = earlier.claim().await.unwrap().unwrap().lease();
        let run_dir = super::super::run_dir(dir.path(), id);
        for step in [5, 9] {
            let checkpoint = run_dir.join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(&checkpoint).unwrap();
            std::fs::write(checkpoint.join("trainer_state.json"), "{}").unwrap();
        }
        let checkpoint = run_dir.join("checkpoint-5");
        let (sha256, files) = super::super::sink::hash_dir(&checkpoint).unwrap();
        let (writer, writer_task) = MetricWriter::spawn(pool.clone(), event_bus());
        let path = checkpoint.to_string_lossy().into_owned();
        writer.send(WriteMsg::Checkpoint { lease, step: 5, path, sha256, files }).await.unwrap();
        writer.flush().await.unwrap();
        drop(writer);
        writer_task.await.unwrap();
        assert_eq!(earlier.finish(id, Outcome::Stopped).await.unwrap(), RunStatus::Queued);

        let r = start_on(dir, pool, notes_where_it_resumes, Duration::from_secs(5));
        r.wait(id, "finished", |run| run.status == RunStatus::Finished.as_str()).await;
        assert_eq!(*RESUMES_FROM.lock().unwrap(), vec![Some(checkpoint)]);
        assert!(!run_dir.join("checkpoint-9").exists(), "the unrecorded checkpoint is gone");
        r.stop().await;
    }
}
