//! Starting and stopping the whole server: database, queue, metric writer, runner, HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    pub database_url: String,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub datasets_dir: PathBuf,
    pub max_concurrent_runs: usize,
    pub max_sweep_runs: usize,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub request_timeout: Duration,
    pub auth_token: Option<String>,
    /// Allow a non-loopback bind without a token.
    pub insecure: bool,
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
            data_dir: self.data_dir.clone(),
            models_dir: self.models_dir.clone(),
            datasets_dir: self.datasets_dir.clone(),
            auth_token: self.auth_token.clone().filter(|t| !t.is_empty()),
            max_sweep_runs: self.max_sweep_runs,
            max_body_bytes: self.max_body_bytes,
            max_upload_bytes: self.max_upload_bytes,
            request_timeout: self.request_timeout,
            static_dir: self.static_dir.clone(),
            demo_sweep: self.demo_sweep.clone(),
        }
    }
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
            database_url: format!("sqlite://{}", root.join("goodhart.db").display()),
            data_dir: root.join("data"),
            models_dir: root.to_path_buf(),
            datasets_dir: root.to_path_buf(),
            max_concurrent_runs: 1,
            max_sweep_runs: 512,
            max_body_bytes: 1 << 20,
            max_upload_bytes: 1 << 30,
            request_timeout: Duration::from_secs(30),
            auth_token: None,
            insecure: false,
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
    let token = config.auth_token.clone().filter(|t| !t.is_empty());
    if !config.bind.ip().is_loopback() && token.is_none() && !config.insecure {
        bail!(
            "refusing to listen on {} without --auth-token (or GOODHART_TOKEN): anyone who can reach it could \
             start runs and download checkpoints. Pass --insecure to do it anyway.",
            config.bind
        );
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let pool = crate::db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening database {}", config.database_url))?;
    let state = AppState::new(pool.clone(), config.settings());
    let orphans = state.queue.requeue_orphans().await?;
    if !orphans.is_empty() {
        tracing::info!(?orphans, "runs interrupted by a crash are queued again and will resume from their checkpoints");
    }
    let shutdown = state.shutdown.clone();
    let (writer, writer_task) = MetricWriter::spawn(pool.clone(), state.events.clone());
    let runner = Runner {
        queue: state.queue.clone(),
        train: trainer::train::train,
        writer,
        data_dir: config.data_dir.clone(),
        max_concurrent: config.max_concurrent_runs,
        shutdown: shutdown.clone(),
    };
    if config.demo_if_empty && !crate::db::runs::any(&pool).await? {
        let sweep = crate::http::pages::demo::queue(&state)
            .await
            .map_err(|e| anyhow::anyhow!("queueing the demo sweep: {e}"))?;
        tracing::info!(sweep, "the database had no runs: queued the demo sweep");
    }
    let listener =
        tokio::net::TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    let app = crate::app(state.clone());
    let runner_task = tokio::spawn(runner.run());
    let http_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await;
        // Trainers checkpoint and their runs are requeued; then the writer drains and stops.
        runner_task.await.context("runner task")?;
        writer_task.await.context("metrics writer task")?;
        pool.close().await;
        tracing::info!("stopped");
        served.context("http server")
    });
    tracing::info!(max_concurrent_runs = config.max_concurrent_runs, "listening on http://{addr}");
    Ok(Server { addr, state, shutdown, task })
}
