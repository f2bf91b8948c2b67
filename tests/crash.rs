//! The `goodhart serve` process killed with SIGKILL or stopped with SIGTERM mid-run: the next
//! start (of the same server, or once the dead one's heartbeat is stale, of another one on the
//! same database) resumes the run from its last checkpoint and its metrics end complete, each once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{config, create_run, fixtures, full_series, wait_for};
use futures_util::StreamExt;
use serde_json::Value;

/// `goodhart serve` on port 0 over `dir` (and the test database, see `server::db::testing`);
/// answers the child and its base URL.
async fn start_server(dir: &Path) -> (Child, String) {
    start_server_with(dir, &[]).await
}

/// [`start_server`] with more environment variables (each flag is also one).
async fn start_server_with(dir: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let database_url = server::db::testing::database_url(dir).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_goodhart"))
        .envs(env.iter().copied())
        .arg("serve")
        .args(["--bind", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(database_url)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--models-dir")
        .arg(fixtures())
        .arg("--datasets-dir")
        .arg(fixtures())
        .args(["--max-concurrent-runs", "1"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("goodhart serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                let _ = tx.send(addr);
            }
            eprintln!("[server] {line}");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server announces its address");
    (child, format!("http://{addr}"))
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_sigkill_resumes_at_the_next_start_with_complete_duplicate_free_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (total, save_steps) = (600, 50);
    let (mut first, base) = start_server(dir.path()).await;
    let id = create_run(&client, &base, &config(total, save_steps)).await;
    let before = wait_for(&client, &base, id, "step 120", |r| r["step"].as_i64().unwrap_or(0) >= 120).await;
    first.kill().unwrap(); // SIGKILL: no chance to checkpoint or flush
    first.wait().unwrap();
    let killed_at = before["step"].as_i64().unwrap();
    assert!(killed_at < total as i64, "killed mid-run");
    let restarted_at = server::db::now_ms();

    let (mut second, base) = start_server(dir.path()).await;
    let run = wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
    assert_eq!(run["attempts"], 2, "claimed once, then again after the crash: {run}");
    assert_eq!(run["step"].as_i64(), Some(total as i64));

    // Each metric: every step exactly once.
    let all: Value = client
        .get(format!("{base}/api/runs/{id}/metrics?max_points=100000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = all["series"].as_object().unwrap().keys().cloned().collect();
    assert!(names.contains(&"loss".to_string()) && names.contains(&"rewards/margins".to_string()), "{names:?}");
    for name in &names {
        let steps: Vec<i64> = full_series(&client, &base, id, name).await.into_iter().map(|p| p.0).collect();
        assert_eq!(steps, (1..=total as i64).collect::<Vec<_>>(), "{name}");
    }

    // It resumed from a checkpoint written before the kill rather than starting over.
    let checkpoints: Value =
        client.get(format!("{base}/api/runs/{id}/checkpoints")).send().await.unwrap().json().await.unwrap();
    let first_checkpoint = &checkpoints["checkpoints"][0];
    assert_eq!(first_checkpoint["step"], save_steps);
    assert!(first_checkpoint["created_at"].as_i64().unwrap() < restarted_at, "{checkpoints}");
    let steps: Vec<i64> =
        checkpoints["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, (1..=total as i64 / save_steps as i64).map(|k| k * save_steps as i64).collect::<Vec<_>>());

    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_running_trainers_ends_live_streams_and_the_run_resumes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut first, base) = start_server(dir.path()).await;
    let id = create_run(&client, &base, &config(100_000, 0)).await;
    wait_for(&client, &base, id, "step 5", |r| r["step"].as_i64().unwrap_or(0) >= 5).await;
    // A live stream is open when the signal arrives; it must not hold the shutdown up.
    let stream = client.get(format!("{base}/api/runs/{id}/events")).send().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut body = stream.bytes_stream();
        while body.next().await.is_some() {}
    });
    let pid = first.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_exit(&mut first, Duration::from_secs(30));
    assert!(status.success(), "a clean exit: {status}");
    tokio::time::timeout(Duration::from_secs(5), reader).await.expect("the stream ended").unwrap();

    let (mut second, base) = start_server(dir.path()).await;
    let checkpoints: Value =
        client.get(format!("{base}/api/runs/{id}/checkpoints")).send().await.unwrap().json().await.unwrap();
    let stopped_at = checkpoints["checkpoints"][0]["step"].as_i64().expect("a checkpoint where it stopped");
    assert!(stopped_at >= 5);
    let run = wait_for(&client, &base, id, "running again", |r| {
        r["status"] == "running" && r["attempts"] == 2 && r["step"].as_i64().unwrap_or(0) > stopped_at
    })
    .await;
    assert!(run["error"].is_null());
    client.post(format!("{base}/api/runs/{id}/cancel")).send().await.unwrap();
    wait_for(&client, &base, id, "cancelled", |r| r["status"] == "cancelled").await;
    let loss: Vec<i64> = full_series(&client, &base, id, "loss").await.into_iter().map(|p| p.0).collect();
    let last = *loss.last().unwrap();
    assert_eq!(loss, (1..=last).collect::<Vec<_>>(), "no gap and no repeat across the restart");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_run_is_left_alone_until_its_heartbeat_is_stale_then_another_server_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (total, save_steps) = (600, 50);
    let stale_after = Duration::from_secs(5);
    let beats = [("GOODHART_HEARTBEAT_INTERVAL", "200ms"), ("GOODHART_STALE_AFTER", "5s")];
    let (mut first, base) =
        start_server_with(dir.path(), &[&beats[..], &[("GOODHART_WORKER_ID", "first")]].concat()).await;
    let id = create_run(&client, &base, &config(total, save_steps)).await;
    wait_for(&client, &base, id, "step 120", |r| r["step"].as_i64().unwrap_or(0) >= 120).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let (killed, killed_ms) = (std::time::Instant::now(), server::db::now_ms());

    // Another worker on the same database and data dir: not its run to take back at start.
    let (mut second, base) =
        start_server_with(dir.path(), &[&beats[..], &[("GOODHART_WORKER_ID", "second")]].concat()).await;
    let at_start: Value = client.get(format!("{base}/api/runs/{id}")).send().await.unwrap().json().await.unwrap();
    assert!(killed.elapsed() < stale_after, "the second server took too long to start to check this");
    assert_eq!((at_start["status"].as_str(), at_start["attempts"].as_i64()), (Some("running"), Some(1)), "{at_start}");

    let resumed = wait_for(&client, &base, id, "claimed again", |r| r["attempts"] == 2).await;
    // Its last heartbeat was at most one interval (200 ms) before the kill.
    let waited = killed.elapsed();
    assert!(waited >= stale_after - Duration::from_millis(300), "taken back {waited:?} after the kill: {resumed}");
    let run = wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
    assert_eq!((run["attempts"].as_i64(), run["step"].as_i64()), (Some(2), Some(total as i64)));
    let loss: Vec<i64> = full_series(&client, &base, id, "loss").await.into_iter().map(|p| p.0).collect();
    assert_eq!(loss, (1..=total as i64).collect::<Vec<_>>(), "every step once");
    // Resumed from a checkpoint the first server wrote, not started over.
    let checkpoints: Value =
        client.get(format!("{base}/api/runs/{id}/checkpoints")).send().await.unwrap().json().await.unwrap();
    assert_eq!(checkpoints["checkpoints"][0]["step"], save_steps);
    assert!(checkpoints["checkpoints"][0]["created_at"].as_i64().unwrap() < killed_ms, "{checkpoints}");
    second.kill().unwrap();
    second.wait().unwrap();
}
