//! `goodhart serve`: the web server, its run queue and background trainers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::lifecycle::{start, ServeConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --auth-token or a user (or --insecure).
    #[arg(long, env = "GOODHART_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// A host name this server is reached by, besides its address and `localhost` (repeat it, or
    /// separate names with commas; `.example.org` allows its subdomains, `*` any name). Requests
    /// naming another host are refused, as a guard against DNS rebinding.
    #[arg(long = "allowed-host", env = "GOODHART_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    #[command(flatten)]
    pub jobs: JobArgs,
    /// The largest grid `POST /api/sweeps` accepts, in runs.
    #[arg(long, env = "GOODHART_MAX_SWEEP_RUNS", default_value_t = 512)]
    pub max_sweep_runs: usize,
    /// The largest request body, in bytes.
    #[arg(long, env = "GOODHART_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// The largest dataset upload (`POST /api/datasets`, the whole request body), in bytes.
    #[arg(long, env = "GOODHART_MAX_UPLOAD_BYTES", default_value_t = 4 << 30)]
    pub max_upload_bytes: usize,
    /// How long an upload may send nothing before it is refused (`30s`, `1m`, …).
    #[arg(long, env = "GOODHART_UPLOAD_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upload_idle_timeout: Duration,
    /// Seconds a request may take until its response starts (streams may then run longer).
    #[arg(long, env = "GOODHART_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// How long a client may take to send a request's headers, and may stay idle between two
    /// requests, before its connection is closed.
    #[arg(long, env = "GOODHART_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Connections open at once; more wait until one closes.
    #[arg(long, env = "GOODHART_MAX_CONNECTIONS", default_value_t = crate::lifecycle::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Require sign-in: the API takes `Authorization: Bearer <token>`, the pages this token as the
    /// password of user `admin` (users from `goodhart user add` sign in too).
    #[arg(long, env = "GOODHART_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Listen on a non-loopback address without a token.
    #[arg(long, env = "GOODHART_INSECURE")]
    pub insecure: bool,
    /// Mark the session cookie `Secure` on every sign-in, for a server reached only over HTTPS
    /// whose proxy does not send `X-Forwarded-Proto: https` (which marks it `Secure` without this).
    #[arg(long, env = "GOODHART_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// The pages' CSS and JavaScript [default: static/ in the source tree].
    #[arg(long, env = "GOODHART_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Queue the demo sweep (DPO vs TR-DPO on toy-tree, no download) if the database has no runs.
    #[arg(long)]
    pub demo: bool,
}

/// What every process that claims runs from the database takes: `serve` and `worker`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The database: a SQLite file (`sqlite://PATH` or a path; created if missing), or
    /// Postgres (`postgres://USER:PASSWORD@HOST:PORT/DB`) shared by a web node and its workers.
    /// Migrated at start.
    #[arg(long, env = "GOODHART_DATABASE_URL", default_value = "sqlite://goodhart.db", value_parser = parse_database_url)]
    pub database_url: String,
    /// Checkpoints and caches (`runs/<id>/checkpoint-<step>/`).
    #[arg(long, env = "GOODHART_DATA_DIR", default_value = "./goodhart-data")]
    pub data_dir: PathBuf,
    /// Where checkpoints are kept: `s3://BUCKET/PREFIX` (S3 or an S3-compatible server),
    /// `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` or `file:///DIR`, with credentials,
    /// endpoint and region from the environment as each cloud's SDK reads them
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, …) [default: the data dir]. Every server and worker sharing a database
    /// must be given the same store.
    #[arg(long, env = "GOODHART_STORE")]
    pub store: Option<String>,
    /// Run configs may only name models inside this directory.
    #[arg(long, env = "GOODHART_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Run configs may only name datasets inside this directory.
    #[arg(long, env = "GOODHART_DATASETS_DIR", default_value = "./datasets")]
    pub datasets_dir: PathBuf,
    /// Trainers running at once [default: half the cores, at least 1]. `serve
    /// --max-concurrent-runs 0` is a web and API node that trains nothing (its runs train on
    /// `goodhart worker`s); a worker needs at least 1.
    #[arg(long, env = "GOODHART_MAX_CONCURRENT_RUNS")]
    pub max_concurrent_runs: Option<usize>,
    /// The name this server claims runs under, unique among the servers sharing the database
    /// [default: <host>:<canonical data dir>, the same across restarts]. At start, runs still
    /// `running` under this id are queued again at once (its previous process died holding them).
    #[arg(long, env = "GOODHART_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How often this server renews the runs it is running and hears of cancels sent to other
    /// servers (`500ms`, `5s`, `1m`; a bare number is seconds).
    #[arg(long, env = "GOODHART_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Another server's running runs are queued again once its heartbeat is older than this (it
    /// is taken to be dead); longer than --heartbeat-interval, best several times it. Servers
    /// sharing a database should agree on both: each judges the others by its own value.
    #[arg(long, env = "GOODHART_STALE_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// The most worker threads one run may use (its `num_threads`), and the size of the one
    /// worker pool all runs share [default: the number of cores].
    #[arg(long, env = "GOODHART_MAX_THREADS_PER_RUN")]
    pub max_threads_per_run: Option<usize>,
    /// What this machine offers, as `gpu=h100,zone=eu`: it claims a run only when every label
    /// the run `requires` is among these (with the same value). Runs that require nothing go
    /// to any worker, labelled or not.
    #[arg(long, env = "GOODHART_LABELS", value_parser = trainer::config::parse_labels)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl JobArgs {
    /// These settings over the defaults of the HTTP ones.
    pub fn config(self) -> ServeConfig {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut config = ServeConfig::for_dir(&self.data_dir);
        config.database_url = self.database_url;
        config.data_dir = self.data_dir;
        config.store = self.store;
        config.models_dir = self.models_dir;
        config.datasets_dir = self.datasets_dir;
        config.max_concurrent_runs = self.max_concurrent_runs.unwrap_or((cores / 2).max(1));
        config.worker_id = self.worker_id;
        config.heartbeat_interval = self.heartbeat_interval;
        config.stale_after = self.stale_after;
        config.max_threads_per_run = self.max_threads_per_run.unwrap_or_else(trainer::workers::cores);
        config.labels = self.labels.unwrap_or_default();
        config
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        bind: args.bind,
        allowed_hosts: args.allowed_hosts.into_iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect(),
        max_sweep_runs: args.max_sweep_runs,
        max_body_bytes: args.max_body_bytes,
        max_upload_bytes: args.max_upload_bytes,
        upload_idle_timeout: args.upload_idle_timeout,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections,
        auth_token: args.auth_token,
        insecure: args.insecure,
        secure_cookies: args.secure_cookies,
        static_dir: args.static_dir.unwrap_or_else(crate::lifecycle::default_static_dir),
        demo_sweep: crate::http::pages::demo::sweep(),
        demo_if_empty: args.demo,
        ..args.jobs.config()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let server = start(config).await?;
        let token = server.shutdown_token();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: running trainers checkpoint and will resume at the next start");
            token.cancel();
        });
        server.wait().await
    })
}

/// SQLite and Postgres are built in: another engine's URL would otherwise be read as a SQLite
/// file name and fail later with "unable to open database file".
pub(super) fn parse_database_url(raw: &str) -> Result<String, String> {
    match raw.split_once("://") {
        Some(("sqlite" | "postgres" | "postgresql", _)) | None => Ok(raw.to_string()),
        Some((scheme, _)) => Err(format!(
            "{scheme}:// is not supported: Goodhart stores runs in SQLite (sqlite://PATH or a file path) or \
             Postgres (postgres://USER:PASSWORD@HOST:PORT/DB)"
        )),
    }
}

/// `500ms`, `5s`, `2m`, or a bare number of seconds.
pub(super) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{raw:?} is not a duration such as 500ms, 5s or 1m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        other => Err(format!("unknown unit {other:?} in {raw:?}: use ms, s or m")),
    }
}

/// Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_or_m_and_a_bare_number_is_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-1s").is_err());
    }

    fn serve_error(args: &[&str]) -> String {
        use clap::Parser;
        let argv = ["goodhart", "serve"].iter().chain(args);
        crate::cli::Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn another_engines_database_url_is_refused_naming_the_flag_and_sqlite_and_postgres_pass() {
        let refused = serve_error(&["--database-url", "mysql://u@db/goodhart"]);
        assert!(refused.contains("--database-url") && refused.contains("mysql:// is not supported"), "{refused}");
        for ok in ["sqlite://goodhart.db", "runs.db", "sqlite::memory:", "postgres://u:p@db:5432/goodhart"] {
            assert_eq!(parse_database_url(ok).as_deref(), Ok(ok));
        }
    }
}
