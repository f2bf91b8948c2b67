//! One web node and several `goodhart worker`s on one Postgres, as processes: runs spread over
//! the workers, a live stream on the web node follows a run trained elsewhere, a worker killed
//! with SIGKILL is taken over by another that resumes from the last recorded checkpoint, and a
//! worker cut off from the database past `--stale-after` is fenced: nothing it writes afterwards
//! lands.
//!
//! They need a Postgres server: `GOODHART_TEST_POSTGRES` (`.ci/run` starts one and sets it).
//! Without it each test says so and passes. Checkpoints go to a store every process shares: a
//! fresh bucket on the S3-compatible server at `GOODHART_TEST_S3_ENDPOINT` (`.ci/run` starts
//! moto and sets it, with the `AWS_*` variables), otherwise a `file://` directory of the test's
//! own, apart from every process's data dir either way.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::process::Goodhart;
use common::{config, create_run, fixtures, full_series, wait_for};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The test database's URL, or `None` (after saying why) without a Postgres server.
async fn postgres(dir: &Path) -> Option<Shared> {
    if !server::db::testing::on_postgres() {
        eprintln!("skipped: set {} to a Postgres server to run it", server::db::testing::POSTGRES_ENV);
        return None;
    }
    Some(Shared { db: server::db::testing::database_url(dir).await, store: common::test_store(dir).await })
}

/// What every process of a test shares: its database and checkpoint store.
struct Shared {
    db: String,
    store: String,
}

/// Flags every process of a test shares: the database, the store, the fixtures, fast heartbeats.
fn common_flags<'a>(database_url: &'a str, store: &'a str, fixtures: &'a str) -> Vec<&'a str> {
    vec![
        "--database-url",
        database_url,
        "--store",
        store,
        "--models-dir",
        fixtures,
        "--datasets-dir",
        fixtures,
        "--heartbeat-interval",
        "200ms",
        "--stale-after",
        "3s",
    ]
}

/// `serve --max-concurrent-runs 0`: pages and API only.
fn web(shared: &Shared, dir: &Path) -> (Goodhart, String) {
    let fixtures = fixtures().display().to_string();
    let data = dir.join("web").display().to_string();
    let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--max-concurrent-runs", "0", "--data-dir", &data];
    args.extend(common_flags(&shared.db, &shared.store, &fixtures));
    let mut node = Goodhart::spawn("web", &args, &[]);
    let base = node.wait_listening();
    (node, base)
}

/// `goodhart worker --worker-id NAME` with a data dir of its own, on `database_url` (the shared
/// database, or a way to it) and the shared store.
fn worker(name: &str, database_url: &str, shared: &Shared, dir: &Path) -> Goodhart {
    worker_with(name, database_url, shared, dir, &[])
}

/// [`worker`] with more flags (`--labels gpu=h100`).
fn worker_with(name: &str, database_url: &str, shared: &Shared, dir: &Path, extra: &[&str]) -> Goodhart {
    let fixtures = fixtures().display().to_string();
    let data = dir.join(name).display().to_string();
    let mut args = vec!["worker", "--worker-id", name, "--max-concurrent-runs", "1", "--data-dir", &data];
    args.extend(common_flags(database_url, &shared.store, &fixtures));
    args.extend(extra);
    let mut w = Goodhart::spawn(name, &args, &[]);
    w.wait_for_line("worker started", Duration::from_secs(60));
    w
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Every metric of the run has every step in `steps`, once.
async fn assert_each_step_once(client: &reqwest::Client, base: &str, id: i64, steps: std::ops::RangeInclusive<i64>) {
    let all = get(client, format!("{base}/api/runs/{id}/metrics?max_points=100000")).await;
    let names: Vec<String> = all["series"].as_object().unwrap().keys().cloned().collect();
    assert!(names.contains(&"loss".to_string()), "{names:?}");
    for name in names.iter().filter(|n| !n.starts_with("eval/")) {
        let got: Vec<i64> = full_series(client, base, id, name).await.into_iter().map(|p| p.0).collect();
        assert_eq!(got, steps.clone().collect::<Vec<_>>(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_runs_and_the_web_node_streams_a_run_trained_by_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let Some(shared) = postgres(dir.path()).await else { return };
    let client = reqwest::Client::new();
    let (_web, base) = web(&shared, dir.path());
    let (_a, _b) = (worker("a", &shared.db, &shared, dir.path()), worker("b", &shared.db, &shared, dir.path()));
    let total = 150;
    let first = create_run(&client, &base, &config(total, 50)).await;
    // The web node trains nothing: what it streams comes from the worker through NOTIFY.
    let stream = client.get(format!("{base}/api/runs/{first}/events")).send().await.unwrap();
    let second = create_run(&client, &base, &config(total, 50)).await;
    // One run each: every worker takes one run at a time.
    let a = wait_for(&client, &base, first, "running", |r| r["status"] == "running" || r["status"] == "finished").await;
    let b = wait_for(&client, &base, second, "running", |r| r["status"] == "running").await;
    if a["status"] == "running" {
        assert_ne!(a["worker"], b["worker"], "two workers, two runs: {a} {b}");
    }
    let mut body = stream.bytes_stream();
    let mut text = String::new();
    let heard = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("\"status\":\"finished\"") {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the stream on the web node never told the run finished: {text}");
    assert!(text.contains("event: metrics"), "it streamed the worker's metrics live: {text}");
    for id in [first, second] {
        let run = wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
        assert_eq!(run["attempts"].as_i64(), Some(1), "{run}");
    }
    assert_each_step_once(&client, &base, first, 1..=total as i64).await;
    assert_each_step_once(&client, &base, second, 1..=total as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_requires_labels_goes_to_the_worker_that_has_them_and_one_no_worker_can_train_fails_with_its_reason()
{
    let dir = tempfile::tempdir().unwrap();
    let Some(shared) = postgres(dir.path()).await else { return };
    let client = reqwest::Client::new();
    let (_web, base) = web(&shared, dir.path());
    let _cpu = worker("cpu", &shared.db, &shared, dir.path());
    let _gpu = worker_with("gpu", &shared.db, &shared, dir.path(), &["--labels", "gpu=h100,zone=eu"]);
    let with = |extra: Value| {
        let mut c = config(60, 0);
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let nowhere = create_run(&client, &base, &with(serde_json::json!({"requires": {"gpu": "a100"}}))).await;
    let mut h100 = Vec::new();
    for _ in 0..3 {
        h100.push(create_run(&client, &base, &with(serde_json::json!({"requires": {"gpu": "h100"}}))).await);
    }
    // The web node trains nothing, so it cannot judge this machine's cores: the worker does.
    let unfit = create_run(&client, &base, &with(serde_json::json!({"num_threads": 100_000}))).await;
    for id in &h100 {
        let run = wait_for(&client, &base, *id, "finished", |r| r["status"] == "finished").await;
        assert_eq!(run["worker"], "gpu", "the run names the worker that trained it: {run}");
        // The worker that trains a run writes it in its own data dir.
        let trained_in = |w: &str| dir.path().join(w).join("runs").join(id.to_string()).exists();
        assert!(trained_in("gpu") && !trained_in("cpu"), "only the labelled worker takes run {id}");
    }
    let failed = wait_for(&client, &base, unfit, "failed", |r| r["status"] == "failed").await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("this worker cannot train the run") && error.contains("num_threads"), "{failed}");
    let waiting = get(&client, format!("{base}/api/runs/{nowhere}")).await;
    assert_eq!((waiting["status"].as_str(), waiting["attempts"].as_i64()), (Some("queued"), Some(0)), "{waiting}");
    let page = client.get(format!("{base}/runs/{nowhere}")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("waiting for a free worker labelled gpu=a100"), "the page says what it waits for");
    assert!(
        page.contains("No live worker has <code>gpu=a100</code> (the 2 live workers lack them)"),
        "and that none can take it"
    );
    // The web node lists both workers, with their labels.
    let listed = get(&client, format!("{base}/api/workers")).await;
    let mut seen: Vec<(String, Value, bool)> = listed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_str().unwrap().to_string(), w["labels"].clone(), w["live"].as_bool().unwrap()))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = vec![
        ("cpu".to_string(), serde_json::json!({}), true),
        ("gpu".to_string(), serde_json::json!({"gpu": "h100", "zone": "eu"}), true),
    ];
    assert_eq!(seen, expected, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_is_taken_over_by_another_that_resumes_and_stores_every_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(shared) = postgres(dir.path()).await else { return };
    let client = reqwest::Client::new();
    let (_web, base) = web(&shared, dir.path());
    let mut doomed = worker("doomed", &shared.db, &shared, dir.path());
    let (total, save_steps) = (600, 50);
    let id = create_run(&client, &base, &config(total, save_steps)).await;
    let before = wait_for(&client, &base, id, "step 120", |r| r["step"].as_i64().unwrap_or(0) >= 120).await;
    assert_eq!(before["worker"], "doomed");
    let _heir = worker("heir", &shared.db, &shared, dir.path());
    doomed.kill();
    let killed_ms = server::db::now_ms();
    let run = wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
    assert_eq!((run["attempts"].as_i64(), run["step"].as_i64()), (Some(2), Some(total as i64)), "{run}");
    assert_each_step_once(&client, &base, id, 1..=total as i64).await;
    let checkpoints = get(&client, format!("{base}/api/runs/{id}/checkpoints")).await;
    let steps: Vec<i64> =
        checkpoints["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, (1..=total as i64 / save_steps as i64).map(|k| k * save_steps as i64).collect::<Vec<_>>());
    let first_written = checkpoints["checkpoints"][0]["created_at"].as_i64().unwrap();
    assert!(
        first_written < killed_ms,
        "the heir resumed from the dead worker's checkpoint rather than starting over: the first checkpoint was \
         written {} ms after the kill",
        first_written - killed_ms
    );
}

/// A TCP relay to `upstream` that can stop passing bytes (both ways) and start again: a worker
/// behind it loses its database without either side closing a connection.
struct Cable {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Cable {
    async fn to(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let cut_rx = Arc::new(cut.subscribe());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, (*cut_rx).clone()));
                tokio::spawn(pipe(sr, cw, (*cut_rx).clone()));
            }
        });
        Self { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while *cut.borrow_and_update() {
            if cut.changed().await.is_err() {
                return;
            }
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a cut wait for the cable to come back.
        while *cut.borrow_and_update() {
            if cut.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_past_stale_after_is_fenced_and_nothing_it_writes_later_lands() {
    let dir = tempfile::tempdir().unwrap();
    let Some(shared) = postgres(dir.path()).await else { return };
    let client = reqwest::Client::new();
    let (_web, base) = web(&shared, dir.path());
    // `postgres://user@HOST:PORT/name` through the cable.
    let (prefix, rest) = shared.db.split_once('@').unwrap();
    let (host_port, name) = rest.split_once('/').unwrap();
    let cable = Cable::to(host_port.to_string()).await;
    let cut_off_url = format!("{prefix}@127.0.0.1:{}/{name}", cable.port);
    let _cut_off = worker("cut-off", &cut_off_url, &shared, dir.path());
    let id = create_run(&client, &base, &config(100_000, 50)).await;
    wait_for(&client, &base, id, "step 60", |r| r["step"].as_i64().unwrap_or(0) >= 60).await;

    cable.set_cut(true);
    let _other = worker("other", &shared.db, &shared, dir.path());
    // The other worker takes the run over once the cut-off one's heartbeat is 3 s old, and
    // resumes it; cancelling it then fixes how far the run got.
    let taken = wait_for(&client, &base, id, "taken over", |r| r["attempts"] == 2 && r["status"] == "running").await;
    assert_eq!(taken["worker"], "other");
    client.post(format!("{base}/api/runs/{id}/cancel")).send().await.unwrap();
    let cancelled = wait_for(&client, &base, id, "cancelled", |r| r["status"] == "cancelled").await;
    let last = cancelled["step"].as_i64().unwrap();

    // Meanwhile the cut-off worker trained on, far past `last`, with all of it waiting to be
    // written. Reconnected, it must find the run gone and write none of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cable.set_cut(false);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = get(&client, format!("{base}/api/runs/{id}")).await;
    assert_eq!((after["status"].as_str(), after["step"].as_i64()), (Some("cancelled"), Some(last)), "{after}");
    let loss: Vec<i64> = full_series(&client, &base, id, "loss").await.into_iter().map(|p| p.0).collect();
    assert_eq!(loss, (1..=last).collect::<Vec<_>>(), "every step once, and none past the takeover's last");
}
