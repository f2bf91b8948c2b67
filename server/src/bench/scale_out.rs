//! `goodhart bench scale-out`: the parts of Goodhart that scale out, on Postgres (and SQLite
//! where both apply), with every writer a process of its own:
//!
//! 1. Metric ingestion from `--processes` worker processes at once (`bench scale-out-worker`),
//!    each through the real path (sink → writer task → one transaction per batch), as rows per
//!    second over all of them: rows / (last process's end − first one's start).
//! 2. Claim latency: `--claimers` workers (each on its own connection pool) claiming queued runs
//!    until none are left, each claim timed.
//! 3. SSE fan-out across processes: a web-only node (`--max-concurrent-runs 0`, in this process)
//!    streams a run to `--subscribers` clients while a worker process logs it at a steady pace;
//!    each step carries the time it was logged, so every subscriber measures the delay to it
//!    (NOTIFY, the web node's relay, and the stream's 250 ms batching included).
//! 4. The runs page and `GET /api/runs` with `--runs` finished runs stored, on each backend.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use trainer::metrics::MetricSink;

use super::server::{median, percentile, step_metrics, METRIC_NAMES};
use crate::db::{self, Backend};
use crate::jobs::event_bus::event_bus;
use crate::jobs::queue::{DbQueue, Outcome, RunQueue};
use crate::jobs::sink::{DbSink, MetricWriter};
use crate::lifecycle::{start, ServeConfig};

#[derive(Debug, clap::Args)]
pub struct ScaleOutBenchArgs {
    /// The Postgres server to measure (a database URL; the benchmark creates and drops its own
    /// databases on it).
    #[arg(long, env = "GOODHART_BENCH_POSTGRES")]
    pub postgres: String,
    /// Worker processes writing metrics at once.
    #[arg(long, default_value_t = 8)]
    pub processes: usize,
    /// Steps each ingestion process logs (12 metrics each).
    #[arg(long, default_value_t = 10_000)]
    pub ingest_steps: u64,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Workers claiming at once in the claim part, and the runs they share out.
    #[arg(long, default_value_t = 8)]
    pub claimers: usize,
    #[arg(long, default_value_t = 2_000)]
    pub claim_runs: usize,
    /// SSE clients on the web node.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Steps the streamed run logs, one every `--pace-ms`.
    #[arg(long, default_value_t = 1_000)]
    pub stream_steps: u64,
    #[arg(long, default_value_t = 5)]
    pub pace_ms: u64,
    /// Finished runs stored for the runs-page part.
    #[arg(long, default_value_t = 10_000)]
    pub runs: usize,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<ScaleOutPart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaleOutPart {
    Ingest,
    Claim,
    Sse,
    RunsPage,
}

/// One worker process of the ingestion and SSE parts.
#[derive(Debug, clap::Args)]
pub struct ScaleOutWorkerArgs {
    #[arg(long)]
    pub database_url: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub steps: u64,
    /// Log one step every this many ms, with the time it was logged (`bench/sent_ms`).
    #[arg(long)]
    pub pace_ms: Option<u64>,
}

/// The metric a paced worker logs its send time in (unix ms).
const SENT_MS: &str = "bench/sent_ms";

pub fn run(args: &ScaleOutBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        println!("goodhart bench scale-out on {cores} cores, Postgres at {}", db::redacted(&args.postgres));
        let parts = |p| args.only.is_empty() || args.only.contains(&p);
        let scratch = tempfile::tempdir()?;
        if parts(ScaleOutPart::Ingest) {
            ingestion(args, Backend::Postgres, scratch.path()).await?;
        }
        if parts(ScaleOutPart::Claim) {
            for backend in [Backend::Postgres, Backend::Sqlite] {
                claims(args, backend, scratch.path()).await?;
            }
        }
        if parts(ScaleOutPart::Sse) {
            fan_out(args, scratch.path()).await?;
        }
        if parts(ScaleOutPart::RunsPage) {
            for backend in [Backend::Postgres, Backend::Sqlite] {
                runs_page(args, backend, scratch.path()).await?;
            }
        }
        Ok(())
    })
}

/// A fresh, empty database on `backend` for one part.
async fn fresh(
    args: &ScaleOutBenchArgs,
    backend: Backend,
    dir: &std::path::Path,
    part: &str,
) -> anyhow::Result<String> {
    Ok(match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join(format!("{part}-{}.db", db::now_ms())).display()),
        Backend::Postgres => {
            use sqlx::{Connection, Executor};
            let name = format!("goodhart_bench_{part}_{}", db::now_ms());
            let mut admin = sqlx::PgConnection::connect(&args.postgres).await.context("--postgres")?;
            admin.execute(format!("create database {name}").as_str()).await?;
            let (base, _) = args.postgres.rsplit_once('/').context("--postgres ends in /DATABASE")?;
            format!("{base}/{name}")
        }
    })
}

fn label(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "Postgres",
    }
}

fn worker_process(url: &str, name: &str, steps: u64, pace_ms: Option<u64>) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "scale-out-worker", "--database-url", url, "--name", name, "--steps", &steps.to_string()]);
    if let Some(ms) = pace_ms {
        cmd.args(["--pace-ms", &ms.to_string()]);
    }
    Ok(cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).kill_on_drop(true).spawn()?)
}

async fn ingestion(args: &ScaleOutBenchArgs, backend: Backend, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for _ in 0..args.repeats {
        let url = fresh(args, backend, dir, "ingest").await?;
        let pool = db::connect(&url).await?;
        let queue = DbQueue::new(pool.clone(), event_bus(), "producer");
        for _ in 0..args.processes {
            queue.enqueue(json!({}), None, None).await?;
        }
        pool.close().await;
        let children: Vec<_> = (0..args.processes)
            .map(|i| worker_process(&url, &format!("w{i}"), args.ingest_steps, None))
            .collect::<anyhow::Result<_>>()?;
        let (mut first, mut last) = (i64::MAX, 0i64);
        for child in children {
            let out = child.wait_with_output().await?;
            if !out.status.success() {
                bail!("an ingestion process failed ({}): {}", out.status, String::from_utf8_lossy(&out.stdout));
            }
            let report: Value = serde_json::from_slice(&out.stdout).context("a worker's report")?;
            first = first.min(report["started_ms"].as_i64().unwrap_or(i64::MAX));
            last = last.max(report["ended_ms"].as_i64().unwrap_or(0));
        }
        let pool = db::connect(&url).await?;
        let stored = db::metrics::count(&pool).await?;
        pool.close().await;
        let expected = args.processes as u64 * args.ingest_steps * METRIC_NAMES.len() as u64;
        if u64::try_from(stored)? != expected {
            bail!("stored {stored} rows, expected {expected}");
        }
        rates.push(expected as f64 / ((last - first).max(1) as f64 / 1000.0));
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "ingestion into {}: median {:.0} rows/s (min {:.0}, max {:.0}) from {} processes at once, each {} steps x {} \
         metrics, {} repeats",
        label(backend),
        median(rates),
        sorted[0],
        sorted[sorted.len() - 1],
        args.processes,
        args.ingest_steps,
        METRIC_NAMES.len(),
        args.repeats
    );
    Ok(())
}

/// `bench scale-out-worker`: claims a queued run and logs its steps through the real writer; prints
/// `{"started_ms", "ended_ms", "rows"}`.
pub fn worker(args: &ScaleOutWorkerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let pool = db::connect_with(&args.database_url, 4).await?;
        let events = event_bus();
        let queue = DbQueue::new(pool.clone(), events.clone(), args.name.clone());
        // The parent queued one run per process: this one takes whichever it gets.
        let claim = loop {
            match queue.claim().await? {
                Some(c) => break c,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let run_id = claim.run_id;
        let (writer, task) = MetricWriter::spawn(pool.clone(), events);
        let (lease, steps, pace) = (claim.lease(), args.steps, args.pace_ms);
        let w = writer.clone();
        let (started, ended) = tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, i64)> {
            let mut sink = DbSink::new(lease, w, Arc::default(), Arc::default());
            let started = db::now_ms();
            for step in 1..=steps {
                let mut metrics = step_metrics(step);
                if let Some(ms) = pace {
                    std::thread::sleep(Duration::from_millis(ms));
                    metrics.insert(SENT_MS.to_string(), db::now_ms() as f64);
                }
                sink.log(step, &metrics)?;
            }
            sink.flush()?;
            Ok((started, db::now_ms()))
        })
        .await??;
        queue.finish(run_id, Outcome::Finished).await?;
        drop(writer);
        task.await?;
        let rows = steps * METRIC_NAMES.len() as u64;
        println!("{}", json!({"started_ms": started, "ended_ms": ended, "rows": rows}));
        Ok(())
    })
}

async fn claims(args: &ScaleOutBenchArgs, backend: Backend, dir: &std::path::Path) -> anyhow::Result<()> {
    let url = fresh(args, backend, dir, "claim").await?;
    let pool = db::connect(&url).await?;
    let queue = DbQueue::new(pool.clone(), event_bus(), "producer");
    for chunk in (0..args.claim_runs).collect::<Vec<_>>().chunks(500) {
        queue.enqueue_sweep(json!({}), json!({}), chunk.iter().map(|_| json!({})).collect(), None).await?;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.claimers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let pool = db::connect_with(&url, 2).await?;
            let q = DbQueue::new(pool, event_bus(), format!("claimer{i}"));
            let mut latencies = Vec::new();
            loop {
                let t = Instant::now();
                let Some(claim) = q.claim().await? else { break };
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                let _ = claim;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    if all.len() != args.claim_runs {
        bail!("{} claims for {} runs", all.len(), args.claim_runs);
    }
    let claimed: i64 =
        sqlx::query_scalar("select count(distinct id) from runs where status = 'running'").fetch_one(&pool).await?;
    if usize::try_from(claimed)? != args.claim_runs {
        bail!("{claimed} distinct runs claimed of {}", args.claim_runs);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "claim latency on {}: p50 {:.2} ms, p99 {:.2} ms, {:.0} claims/s ({} workers claiming {} queued runs at once, \
         each run claimed once)",
        label(backend),
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        all.len() as f64 / wall,
        args.claimers,
        args.claim_runs
    );
    pool.close().await;
    Ok(())
}

async fn fan_out(args: &ScaleOutBenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let url = fresh(args, Backend::Postgres, dir, "sse").await?;
    let root = dir.join(format!("sse-{}", db::now_ms()));
    let mut config = ServeConfig::for_dir(&root);
    config.database_url = url.clone();
    config.max_concurrent_runs = 0;
    let web = start(config).await?;
    let base = format!("http://{}", web.addr);
    let run_id = web.state.queue.enqueue(json!({}), None, None).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.subscribers).build()?;
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let response = client.get(format!("{base}/api/runs/{run_id}/events")).send().await?.error_for_status()?;
        let steps = args.stream_steps;
        subscribers.push(tokio::spawn(async move {
            let mut delays = Vec::new();
            let mut body = response.bytes_stream();
            let mut pending = String::new();
            'read: while let Some(Ok(chunk)) = body.next().await {
                let now = db::now_ms();
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                    if let Some(sent) = v["values"][SENT_MS].as_f64() {
                        delays.push((now as f64 - sent).max(0.0));
                        if v["step"].as_u64() == Some(steps) {
                            break 'read;
                        }
                    }
                }
            }
            delays
        }));
    }
    // Every subscriber is connected before the worker starts logging.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let child = worker_process(&url, "streamed", args.stream_steps, Some(args.pace_ms))?;
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("the streamed worker failed: {}", out.status);
    }
    let mut all = Vec::new();
    for s in subscribers {
        all.extend(tokio::time::timeout(Duration::from_secs(60), s).await.context("a subscriber never finished")??);
    }
    all.sort_by(f64::total_cmp);
    let expected = args.stream_steps as usize * args.subscribers;
    println!(
        "SSE fan-out across processes (Postgres NOTIFY): {} subscribers on a web-only node following a run a worker \
         process logs every {} ms: {} of {} step events delivered, delay from logging to receipt p50 {:.0} ms, p99 \
         {:.0} ms (the stream batches events for up to 250 ms)",
        args.subscribers,
        args.pace_ms,
        all.len(),
        expected,
        percentile(&all, 50.0),
        percentile(&all, 99.0)
    );
    web.stop().await
}

async fn runs_page(args: &ScaleOutBenchArgs, backend: Backend, dir: &std::path::Path) -> anyhow::Result<()> {
    let url = fresh(args, backend, dir, "runs").await?;
    {
        let pool = db::connect(&url).await?;
        let queue = DbQueue::new(pool.clone(), event_bus(), "bench");
        let config = json!({"task": "toy-tree", "loss_type": "sigmoid", "beta": 0.1, "max_steps": 100});
        let mut ids = Vec::new();
        for chunk in (0..args.runs).collect::<Vec<_>>().chunks(1000) {
            let (_, mut more) =
                queue.enqueue_sweep(json!({}), json!({}), chunk.iter().map(|_| config.clone()).collect(), None).await?;
            ids.append(&mut more);
        }
        sqlx::query("update runs set status = 'finished', step = 100, total_steps = 100, finished_at = created_at")
            .execute(&pool)
            .await?;
        // Each run's summary, as a finished run has (what the table's metric columns read).
        let mut conn = pool.acquire().await?;
        for chunk in ids.chunks(500) {
            let rows: Vec<db::metrics::MetricRow> = chunk
                .iter()
                .flat_map(|id| {
                    METRIC_NAMES.iter().take(4).map(move |n| db::metrics::MetricRow {
                        run_id: *id,
                        name: (*n).to_string(),
                        step: 100,
                        value: Some(0.5),
                    })
                })
                .collect();
            db::metrics::upsert(&mut conn, &rows).await?;
            for id in chunk {
                db::metrics::summarize(&mut conn, *id).await?;
            }
        }
        drop(conn);
        pool.close().await;
    }
    let mut config = ServeConfig::for_dir(&dir.join(format!("runs-{}", db::now_ms())));
    config.database_url = url;
    config.max_concurrent_runs = 0;
    let server = start(config).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    for (what, path) in [("runs page (/)", "/"), ("GET /api/runs", "/api/runs")] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..6 {
            let t = Instant::now();
            let body = client.get(format!("{base}{path}")).send().await?.error_for_status()?.bytes().await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = body.len();
        }
        let first = times.remove(0);
        println!(
            "{what} with {} finished runs on {}: first {first:.0} ms, then median {:.0} ms over {} requests ({} KiB)",
            args.runs,
            label(backend),
            median(times.clone()),
            times.len(),
            bytes / 1024
        );
    }
    server.stop().await
}
