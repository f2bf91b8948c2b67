//! Starting and stopping the whole server: database, queue, metric writer, runner, HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{AppState, Settings};
use crate::jobs::runner::Runner;
use crate::jobs::sink::MetricWriter;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    /// Host names that reach this server besides its address and `localhost` (`--allowed-host`).
    pub allowed_hosts: Vec<String>,
    pub database_url: String,
    pub data_dir: PathBuf,
    /// Where checkpoints are kept (`--store URL`); `None`: the data dir.
    pub store: Option<String>,
    pub models_dir: PathBuf,
    pub datasets_dir: PathBuf,
    pub max_concurrent_runs: usize,
    /// The name this server claims runs under [default: [`default_worker_id`]].
    pub worker_id: Option<String>,
    /// How often this server renews the runs it is running.
    pub heartbeat_interval: Duration,
    /// How old another server's heartbeat must be before its runs are taken back.
    pub stale_after: Duration,
    /// The device every run trains on here, whatever its `device` says (`worker --device`).
    pub device: Option<String>,
    /// This worker's labels (`--labels gpu=h100`): it claims only runs they satisfy.
    pub labels: BTreeMap<String, String>,
    pub max_sweep_runs: usize,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub upload_idle_timeout: Duration,
    pub request_timeout: Duration,
    /// How long a client may take to send a request head, or stay idle between requests.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// The most worker threads a run may use (`num_threads`), and the size of their shared pool.
    pub max_threads_per_run: usize,
    pub auth_token: Option<String>,
    /// Allow a non-loopback bind without a token.
    pub insecure: bool,
    /// The session cookie is `Secure` on every sign-in (`--secure-cookies`).
    pub secure_cookies: bool,
    pub static_dir: PathBuf,
    /// What "Launch demo sweep" queues (see [`crate::http::pages::demo::sweep`]).
    pub demo_sweep: serde_json::Value,
    /// Queue the demo sweep at start when the database has no runs (`serve --demo`).
    pub demo_if_empty: bool,
}

impl ServeConfig {
    /// What handlers see of this configuration.
    pub fn settings(&self) -> Settings {
        Settings {
            bind: self.bind,
            allowed_hosts: self.allowed_hosts.clone(),
            data_dir: self.data_dir.clone(),
            models_dir: self.models_dir.clone(),
            datasets_dir: self.datasets_dir.clone(),
            auth_token: self.auth_token.clone().filter(|t| !t.is_empty()),
            max_sweep_runs: self.max_sweep_runs,
            max_body_bytes: self.max_body_bytes,
            max_upload_bytes: self.max_upload_bytes,
            upload_idle_timeout: self.upload_idle_timeout,
            request_timeout: self.request_timeout,
            static_dir: self.static_dir.clone(),
            demo_sweep: self.demo_sweep.clone(),
            max_concurrent_runs: self.max_concurrent_runs,
            stale_after: self.stale_after,
            secure_cookies: self.secure_cookies,
        }
    }
}

pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The worker id of a server not given `--worker-id`: this host, the data dir's name and a
/// digest of its canonical path (`lab1:goodhart-data-3f2a9c1b`).
///
/// It must survive a restart, unlike a process id: at startup a server takes back at once the
/// runs still `running` under its own id (its previous process died holding them) and leaves
/// other workers' runs until their heartbeat is stale. And it must differ between servers that
/// share a database: two on one host differ in their data dir, which holds each one's
/// checkpoints (so it cannot be shared by two live servers anyway). The id is shown to anyone
/// who reads a run, so it names the directory without its absolute path.
pub fn default_worker_id(data_dir: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let dir = data_dir.canonicalize()?;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let name = dir.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    Ok(format!("{}:{name}-{short}", hostname()))
}

/// The kernel's host name, without a dependency or `unsafe` for `gethostname(2)`.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `static/` in the source tree, where `cargo run` finds it.
pub fn default_static_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../static"))
}

impl ServeConfig {
    /// Defaults for tests and benchmarks: port 0 on loopback, everything under `root`.
    pub fn for_dir(root: &std::path::Path) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            allowed_hosts: Vec::new(),
            database_url: format!("sqlite://{}", root.join("goodhart.db").display()),
            data_dir: root.join("data"),
            store: None,
            models_dir: root.to_path_buf(),
            datasets_dir: root.to_path_buf(),
            max_concurrent_runs: 1,
            worker_id: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            stale_after: DEFAULT_STALE_AFTER,
            device: None,
            labels: BTreeMap::new(),
            max_sweep_runs: 512,
            max_body_bytes: 1 << 20,
            max_upload_bytes: 1 << 30,
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_threads_per_run: trainer::workers::cores(),
            auth_token: None,
            insecure: false,
            secure_cookies: false,
            static_dir: default_static_dir(),
            demo_sweep: crate::http::pages::demo::sweep(),
            demo_if_empty: false,
        }
    }
}

/// A started server; [`Server::stop`] shuts it down gracefully.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Stops accepting requests, ends live streams, asks trainers to checkpoint (their runs go
    /// back to `queued` and resume at the next start), commits the last metrics, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task")?
    }

    /// Waits until the server ends (after [`Server::shutdown_token`] is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

pub async fn start(config: ServeConfig) -> anyhow::Result<Server> {
    let store = crate::store::open(config.store.as_deref(), &config.data_dir)?;
    start_with_store(config, store).await
}

/// [`start`] with its checkpoint store already open (`config.store` is not read).
pub async fn start_with_store(config: ServeConfig, store: crate::store::CheckpointStore) -> anyhow::Result<Server> {
    let token = config.auth_token.clone().filter(|t| !t.is_empty());
    if !config.bind.ip().is_loopback() && token.is_none() && !config.insecure && !has_users(&config).await? {
        bail!(
            "refusing to listen on {} without --auth-token (or GOODHART_TOKEN) or a user (`goodhart user add`): \
             anyone who can reach it could start runs and download checkpoints. Pass --insecure to do it anyway.",
            config.bind
        );
    }
    if config.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if config.header_read_timeout.is_zero() {
        bail!("--header-read-timeout must be longer than 0");
    }
    if config.upload_idle_timeout.is_zero() {
        bail!("--upload-idle-timeout must be longer than 0");
    }
    let jobs = start_jobs(&config, store).await?;
    let state = jobs.state.clone();
    let shutdown = state.shutdown.clone();
    if config.demo_if_empty && !crate::db::runs::any(&state.pool).await? {
        let sweep = crate::http::pages::demo::queue(&state, &crate::http::auth::Identity::Open)
            .await
            .map_err(|e| anyhow::anyhow!("queueing the demo sweep: {e}"))?;
        tracing::info!(sweep, "the database had no runs: queued the demo sweep");
    }
    let listener =
        tokio::net::TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    let app = crate::app(state.clone());
    let limits = crate::http::listen::Limits {
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections,
    };
    let http = tokio::spawn(crate::http::listen::serve(listener, app, limits, shutdown.clone()));
    let task = tokio::spawn(async move {
        let served = http.await;
        jobs.finish().await?;
        tracing::info!("stopped");
        served.context("http server")
    });
    tracing::info!(
        max_concurrent_runs = config.max_concurrent_runs,
        worker = %state.queue.worker(),
        store = state.store.description(),
        "listening on http://{addr}{}",
        if config.max_concurrent_runs == 0 { " (web and API only: runs train on `goodhart worker`s)" } else { "" }
    );
    Ok(Server { addr, state, shutdown, task })
}

/// Whether the database has users (`goodhart user add`), who sign in as a token does.
async fn has_users(config: &ServeConfig) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let pool = crate::db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening database {}", crate::db::redacted(&config.database_url)))?;
    let any = crate::db::users::any(&pool).await;
    pool.close().await;
    Ok(any?)
}

/// A `goodhart worker`: claims and trains runs from the database, without HTTP.
pub struct Worker {
    pub state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Asks trainers to checkpoint (their runs go back to `queued` for any worker to resume),
    /// commits the last metrics, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("worker task")?
    }

    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("worker task")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts a worker: `config`'s database, data dir (scratch space for checkpoints), store and
/// run limits; its HTTP settings are not used.
pub async fn start_worker(config: ServeConfig) -> anyhow::Result<Worker> {
    if config.max_concurrent_runs == 0 {
        bail!("--max-concurrent-runs must be at least 1 for a worker (0 is for a web-only `serve`)");
    }
    let store = crate::store::open(config.store.as_deref(), &config.data_dir)?;
    let jobs = start_jobs(&config, store).await?;
    let state = jobs.state.clone();
    let shutdown = state.shutdown.clone();
    tracing::info!(
        max_concurrent_runs = config.max_concurrent_runs,
        worker = %state.queue.worker(),
        store = state.store.description(),
        "worker started"
    );
    let task = tokio::spawn(async move {
        jobs.state.shutdown.cancelled().await;
        jobs.finish().await?;
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Worker { state, shutdown, task })
}

/// What every process on the database runs besides HTTP: the queue (orphans and stale runs
/// taken back at start), the metric writer, the runner (unless `--max-concurrent-runs 0`) and,
/// on Postgres, the relay of live events between processes.
struct Jobs {
    state: AppState,
    runner: Option<JoinHandle<()>>,
    writer: JoinHandle<()>,
    relay: Vec<JoinHandle<()>>,
}

impl Jobs {
    /// After shutdown: trainers checkpoint and their runs are requeued; then the writer drains
    /// and stops, and the relay sends what is left.
    async fn finish(self) -> anyhow::Result<()> {
        if let Some(runner) = self.runner {
            runner.await.context("runner task")?;
        }
        self.writer.await.context("metrics writer task")?;
        for task in self.relay {
            task.await.context("live-event relay task")?;
        }
        self.state.pool.close().await;
        Ok(())
    }
}

async fn start_jobs(config: &ServeConfig, store: crate::store::CheckpointStore) -> anyhow::Result<Jobs> {
    if config.heartbeat_interval.is_zero() {
        bail!("--heartbeat-interval must be longer than 0");
    }
    // Renewals land at most one interval apart (plus the time one takes): at or under that a
    // live server's runs would be taken from it between two of its own beats.
    if config.stale_after <= config.heartbeat_interval {
        bail!(
            "--stale-after ({:?}) must be longer than --heartbeat-interval ({:?}), or live servers' runs would be \
             taken from them between two heartbeats",
            config.stale_after,
            config.heartbeat_interval
        );
    }
    if config.worker_id.as_deref().is_some_and(|w| w.trim().is_empty()) {
        bail!("--worker-id must not be empty (leave it out for the default: this host and the data dir)");
    }
    if config.max_threads_per_run == 0 {
        bail!("--max-threads-per-run must be at least 1");
    }
    if !config.labels.is_empty() && config.max_concurrent_runs == 0 {
        bail!("--labels is for a process that trains: this one has --max-concurrent-runs 0");
    }
    trainer::workers::set_max_threads(config.max_threads_per_run);
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let pool = crate::db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening database {}", crate::db::redacted(&config.database_url)))?;
    let worker = match &config.worker_id {
        Some(id) => id.trim().to_string(),
        None => default_worker_id(&config.data_dir)
            .with_context(|| format!("naming this worker after {}", config.data_dir.display()))?,
    };
    if !config.labels.is_empty() {
        tracing::info!(labels = %trainer::config::labels_text(&config.labels), "claiming runs these labels satisfy");
    }
    let mut state = AppState::with_labels(pool.clone(), config.settings(), worker.clone(), config.labels.clone());
    state.store = store.clone();
    let orphans = state.queue.requeue_orphans().await?;
    if !orphans.is_empty() {
        tracing::info!(
            requeued = ?orphans.requeued,
            cancelled = ?orphans.cancelled,
            "runs left running by this worker's previous process (a crash) are queued again and will resume from \
             their checkpoints"
        );
    }
    let stale = state.queue.reclaim_stale(config.stale_after).await?;
    if !stale.is_empty() {
        tracing::warn!(
            requeued = ?stale.requeued,
            cancelled = ?stale.cancelled,
            "took back runs whose worker stopped renewing them more than --stale-after ago"
        );
    }
    let shutdown = state.shutdown.clone();
    let relay = if crate::db::Backend::of_url(&config.database_url) == crate::db::Backend::Postgres {
        crate::jobs::relay::start(
            &config.database_url,
            pool.clone(),
            state.events.clone(),
            state.queue.clone(),
            shutdown.clone(),
        )
        .await
        .context("listening for other processes' live events (LISTEN goodhart_events)")?
    } else {
        Vec::new()
    };
    let (writer, writer_task) = MetricWriter::spawn_with_store(pool.clone(), state.events.clone(), Some(store));
    let runner = (config.max_concurrent_runs > 0).then(|| Runner {
        queue: state.queue.clone(),
        pool: pool.clone(),
        train: trainer::train::train_with,
        writer,
        data_dir: config.data_dir.clone(),
        public_dirs: vec![config.data_dir.clone(), config.models_dir.clone(), config.datasets_dir.clone()],
        max_concurrent: config.max_concurrent_runs,
        heartbeat_interval: config.heartbeat_interval,
        stale_after: config.stale_after,
        device: config.device.clone(),
        shutdown: shutdown.clone(),
    });
    if runner.is_some() {
        let now = crate::db::now_ms();
        let me = crate::db::workers::Worker {
            id: worker.clone(),
            labels: trainer::config::labels_text(&config.labels),
            device: config.device.clone(),
            max_concurrent_runs: i64::try_from(config.max_concurrent_runs).unwrap_or(i64::MAX),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now,
            seen_at: now,
        };
        crate::db::workers::register(&pool, &me).await.context("registering this worker")?;
    }
    let runner = runner.map(|r| tokio::spawn(r.run()));
    Ok(Jobs { state, runner, writer: writer_task, relay })
}
