//! `goodhart bench server`: the server's load benchmark, printed as medians.
//!
//! 1. Metric ingestion: rows per second through the real path (trainer sink → writer task →
//!    one upsert transaction per batch) into a SQLite file.
//! 2. `GET /api/runs/{id}/metrics` latency for a run with 20,000 logged steps: the first
//!    request of each query alone (cold: nothing kept in the server yet), then p50 and p99 under
//!    concurrent clients (warm: the run has ended, so its answers are kept in memory).
//! 3. Training step time of a real run with and without 200 SSE subscribers, alternated.
//! 4. `GET /api/runs` latency of a normal client (a fresh connection per request) while 64
//!    slow-header clients dribble one header line a second, against the same without them.
//!
//! Everything runs in this one process (server, trainer and clients share the cores), which
//! makes the numbers pessimistic rather than flattering.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use trainer::metric_names as names;
use trainer::metrics::{MetricSink, Metrics};

use crate::db;
use crate::jobs::event_bus::event_bus;
use crate::jobs::queue::{DbQueue, Outcome, RunQueue};
use crate::jobs::sink::{DbSink, MetricWriter};
use crate::lifecycle::{start, ServeConfig};

#[derive(Debug, clap::Args)]
pub struct ServerBenchArgs {
    /// Steps logged per ingestion repeat (12 metrics each, like a DPO run with evaluation).
    #[arg(long, default_value_t = 20_000)]
    pub ingest_steps: u64,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Concurrent clients for the metrics GET.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Requests each client makes.
    #[arg(long, default_value_t = 20)]
    pub requests_per_client: usize,
    #[arg(long, default_value_t = 200)]
    pub subscribers: usize,
    /// Training steps per run in the SSE comparison. Live events arrive in 250 ms batches, so
    /// the timed window must be long: 6,000 steps of ~2 ms put the batching's ±250 ms at each
    /// end under 5% of it (at 600 steps it was ±40%, a whole 0.42 ms quantum per step).
    #[arg(long, default_value_t = 6000)]
    pub train_steps: u64,
    /// Runs with and without subscribers each (alternated).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Slow-header clients in the slow-headers part.
    #[arg(long, default_value_t = 64)]
    pub slow_connections: usize,
    /// Requests the normal client makes in each half of the slow-headers part.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// Run only these parts (default: all four).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<ServerBenchPart>,
    /// The TRL fixture directory with `tiny-llama/` and `pairs.jsonl`.
    #[arg(long, default_value = "../shared/reference/trl-parity")]
    pub fixtures: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerBenchPart {
    Ingest,
    Metrics,
    Sse,
    SlowHeaders,
}

pub(super) const METRIC_NAMES: [&str; 12] = [
    names::LOSS,
    names::GRAD_NORM,
    names::LEARNING_RATE,
    names::EPOCH,
    names::REWARDS_CHOSEN,
    names::REWARDS_REJECTED,
    names::REWARDS_MARGINS,
    names::REWARDS_ACCURACIES,
    names::LOGPS_CHOSEN,
    names::LOGPS_REJECTED,
    names::KL,
    names::EVAL_GOLD_REWARD,
];

pub(super) fn step_metrics(step: u64) -> Metrics {
    let s = step as f64;
    METRIC_NAMES.iter().enumerate().map(|(i, n)| ((*n).to_string(), (s * 0.001 + i as f64).sin())).collect()
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

pub fn run(args: &ServerBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        println!("goodhart bench server on {cores} cores (server, trainer and clients in one process)");
        let runs = |part| args.only.is_empty() || args.only.contains(&part);
        if runs(ServerBenchPart::Ingest) {
            ingestion(args).await?;
        }
        if runs(ServerBenchPart::Metrics) {
            metrics_latency(args).await?;
        }
        if runs(ServerBenchPart::Sse) {
            sse_overhead(args).await?;
        }
        if runs(ServerBenchPart::SlowHeaders) {
            slow_headers(args).await?;
        }
        Ok(())
    })
}

/// Logs `steps` steps into a fresh run through the trainer's sink, as the worker that claimed
/// it; answers the run (then cancelled: it has ended) and rows per second.
async fn ingest_once(queue: &DbQueue, writer: &MetricWriter, steps: u64) -> anyhow::Result<(i64, f64)> {
    let run_id = queue.enqueue(json!({}), None, None).await?;
    let claim = queue.claim().await?.context("the run just queued")?;
    anyhow::ensure!(claim.run_id == run_id, "claimed run {} instead of {run_id}", claim.run_id);
    let (writer, lease) = (writer.clone(), claim.lease());
    let elapsed = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let mut sink = DbSink::new(lease, writer, Arc::default(), Arc::default());
        let started = Instant::now();
        for step in 1..=steps {
            sink.log(step, &step_metrics(step))?;
        }
        sink.flush()?;
        Ok(started.elapsed())
    })
    .await??;
    queue.cancel(run_id).await?;
    queue.finish(run_id, Outcome::Stopped).await?;
    let rows = steps * METRIC_NAMES.len() as u64;
    Ok((run_id, rows as f64 / elapsed.as_secs_f64()))
}

async fn ingestion(args: &ServerBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pool = db::connect(&format!("sqlite://{}", dir.path().join("bench.db").display())).await?;
    let events = event_bus();
    let queue = DbQueue::new(pool.clone(), events.clone(), "bench");
    let (writer, task) = MetricWriter::spawn(pool.clone(), events);
    let mut rates = Vec::new();
    for _ in 0..args.repeats {
        rates.push(ingest_once(&queue, &writer, args.ingest_steps).await?.1);
    }
    drop(writer);
    task.await?;
    let stored = db::metrics::count(&pool).await?;
    let expected = args.repeats as u64 * args.ingest_steps * METRIC_NAMES.len() as u64;
    if u64::try_from(stored)? != expected {
        bail!("stored {stored} rows, expected {expected}");
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "ingestion: median {:.0} rows/s (min {:.0}, max {:.0}) over {} repeats of {} steps x {} metrics",
        median(rates),
        sorted[0],
        sorted[sorted.len() - 1],
        args.repeats,
        args.ingest_steps,
        METRIC_NAMES.len()
    );
    Ok(())
}

async fn metrics_latency(args: &ServerBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = ServeConfig::for_dir(dir.path());
    // The run and its 20,000 steps are written before the server starts.
    let run_id = {
        let pool = db::connect(&config.database_url).await?;
        let events = event_bus();
        let queue = DbQueue::new(pool.clone(), events.clone(), "bench");
        let (writer, task) = MetricWriter::spawn(pool.clone(), events);
        let (run_id, _) = ingest_once(&queue, &writer, 20_000).await?;
        drop(writer);
        task.await?;
        pool.close().await;
        run_id
    };
    let server = start(config).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients).build()?;
    for (label, query) in [
        ("2 series (loss, rewards/margins), downsampled to 2000 points", "names=loss,rewards/margins"),
        ("1 series at full resolution (20,000 points)", "names=loss&max_points=20000"),
        ("all 12 series, downsampled to 2000 points each", ""),
    ] {
        let url = format!("{base}/api/runs/{run_id}/metrics?{query}");
        // Cold: the first request of this query, alone (and a check of the answer).
        let t = Instant::now();
        let body: Value = client.get(&url).send().await?.error_for_status()?.json().await?;
        let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
        if body["points"].as_i64() < Some(20_000) {
            bail!("expected at least 20,000 points, got {}", body["points"]);
        }
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..args.clients {
            let (client, url, n) = (client.clone(), url.clone(), args.requests_per_client);
            clients.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    let r = client.get(&url).send().await?.error_for_status()?;
                    r.bytes().await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, reqwest::Error>(latencies)
            }));
        }
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        all.sort_by(f64::total_cmp);
        println!(
            "GET metrics, {label}: cold {cold_ms:.1} ms (first request, alone); warm p50 {:.1} ms, p99 {:.1} ms, \
             {:.0} req/s ({} clients x {} requests)",
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            all.len() as f64 / wall,
            args.clients,
            args.requests_per_client
        );
    }
    server.stop().await
}

/// Trains one run while `subscribers` SSE clients follow it; answers ms per step, measured by
/// a probe subscriber between the first step it sees after every subscriber is connected and
/// the last step.
async fn timed_run(
    base: &str,
    client: &reqwest::Client,
    args: &ServerBenchArgs,
    subscribers: usize,
) -> anyhow::Result<f64> {
    let fixtures = args.fixtures.canonicalize().with_context(|| format!("fixtures {}", args.fixtures.display()))?;
    let config = json!({
        "model_name_or_path": fixtures.join("tiny-llama"),
        "dataset_path": fixtures.join("pairs.jsonl"),
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "max_steps": args.train_steps,
        "save_steps": 0,
    });
    let r = client.post(format!("{base}/api/runs")).json(&config).send().await?;
    if !r.status().is_success() {
        bail!("creating the run: {}", r.text().await?);
    }
    let id = r.json::<Value>().await?["id"].as_i64().context("id")?;
    let url = format!("{base}/api/runs/{id}/events");
    let mut followers = Vec::new();
    for _ in 0..subscribers {
        let response = client.get(&url).send().await?;
        followers.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut bytes = 0usize;
            while let Some(Ok(chunk)) = body.next().await {
                bytes += chunk.len();
            }
            bytes
        }));
    }
    // The probe: arrival time of each step from now on.
    let mut probe = client.get(&url).send().await?.bytes_stream();
    let mut first: Option<(i64, Instant)> = None;
    let mut last: Option<(i64, Instant)> = None;
    let mut buffer = String::new();
    while let Some(chunk) = probe.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(step) = block.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|s| s.parse::<i64>().ok()) {
                let now = Instant::now();
                first.get_or_insert((step, now));
                last = Some((step, now));
            }
        }
    }
    for f in followers {
        f.await?;
    }
    match (first, last) {
        (Some((s0, t0)), Some((s1, t1))) if s1 > s0 + 50 => Ok((t1 - t0).as_secs_f64() * 1000.0 / (s1 - s0) as f64),
        _ => bail!("the probe saw too few steps to time (run {id})"),
    }
}

async fn sse_overhead(args: &ServerBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServeConfig::for_dir(dir.path());
    config.models_dir = args.fixtures.clone();
    config.datasets_dir = args.fixtures.clone();
    let server = start(config).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.subscribers + 8).build()?;
    let (mut alone, mut watched) = (Vec::new(), Vec::new());
    // A B, then B A: the machine's slow and fast phases hit both alike.
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, args.subscribers] } else { [args.subscribers, 0] };
        for subscribers in order {
            let ms = timed_run(&base, &client, args, subscribers).await?;
            if subscribers == 0 { &mut alone } else { &mut watched }.push(ms);
        }
    }
    let (a, w) = (median(alone.clone()), median(watched.clone()));
    println!(
        "training step with {} SSE subscribers: median {w:.2} ms vs {a:.2} ms alone ({:+.1}%) over {} runs each of {} steps; \
         alone {alone:.2?}, watched {watched:.2?}",
        args.subscribers,
        (w / a - 1.0) * 100.0,
        args.rounds,
        args.train_steps
    );
    server.stop().await
}

/// Keeps one slow-header client connected until `stop`: it sends a request head one line a
/// second, and connects again whenever the server closes it (the header-read timeout).
async fn dribble(addr: std::net::SocketAddr, stop: tokio_util::sync::CancellationToken) {
    use tokio::io::AsyncWriteExt;
    while !stop.is_cancelled() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut line: &[u8] = b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        loop {
            if stream.write_all(line).await.is_err() {
                break;
            }
            line = b"X-Slow: 1\r\n";
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// `probes` requests of a normal client, each on a fresh connection: latencies in ms.
async fn probe_latencies(base: &str, probes: usize) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut latencies = Vec::with_capacity(probes);
    for _ in 0..probes {
        let t = Instant::now();
        client.get(format!("{base}/api/runs")).send().await?.error_for_status()?.bytes().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

async fn slow_headers(args: &ServerBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(ServeConfig::for_dir(dir.path())).await?;
    let base = format!("http://{}", server.addr);
    let alone = probe_latencies(&base, args.probes).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let slow: Vec<_> = (0..args.slow_connections).map(|_| tokio::spawn(dribble(server.addr, stop.clone()))).collect();
    // Every slow client connected and past its first line.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let crowded = probe_latencies(&base, args.probes).await?;
    stop.cancel();
    for s in slow {
        s.await?;
    }
    println!(
        "GET /api/runs on a fresh connection while {} slow-header clients dribble a header line a second: median \
         {:.2} ms, p99 {:.2} ms; without them: median {:.2} ms, p99 {:.2} ms ({} requests each)",
        args.slow_connections,
        percentile(&crowded, 50.0),
        percentile(&crowded, 99.0),
        percentile(&alone, 50.0),
        percentile(&alone, 99.0),
        args.probes
    );
    server.stop().await
}
