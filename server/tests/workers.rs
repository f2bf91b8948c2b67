//! Two servers on one database, each its own worker (their data dirs differ, so their default
//! worker ids do): a server that starts leaves the other's live runs alone, a cancel sent to
//! either stops a run wherever it trains, and a run's ended metrics answer is kept in memory.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{config, create_run, lab, serve_config, toy_config, wait_for};
use serde_json::{json, Value};
use server::jobs::queue::Outcome;
use server::lifecycle::{default_worker_id, start, ServeConfig};

/// A server over `root/goodhart.db` with its own data dir `root/<name>`.
async fn server_on(root: &std::path::Path, name: &str) -> (server::lifecycle::Server, String) {
    let mut config: ServeConfig = serve_config(root).await;
    config.data_dir = root.join(name);
    config.heartbeat_interval = Duration::from_millis(200);
    config.stale_after = Duration::from_secs(30);
    let server = start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    (server, base)
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_one_server_stops_a_run_that_another_server_is_training() {
    let root = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (a, a_base) = server_on(root.path(), "a").await;
    let id = create_run(&client, &a_base, &config(100_000, 0)).await;
    wait_for(&client, &a_base, id, "step 5", |r| r["step"].as_i64().unwrap_or(0) >= 5).await;

    // Another server starts on the same database: not the same worker, and a's run is alive.
    let (b, b_base) = server_on(root.path(), "b").await;
    assert_ne!(default_worker_id(&root.path().join("a")).unwrap(), default_worker_id(&root.path().join("b")).unwrap());
    let seen_by_b = get(&client, format!("{b_base}/api/runs/{id}")).await;
    assert_eq!((seen_by_b["status"].as_str(), seen_by_b["attempts"].as_i64()), (Some("running"), Some(1)));
    assert_eq!(seen_by_b["worker"], json!(default_worker_id(&root.path().join("a")).unwrap()), "b shows who trains it");

    let sent = Instant::now();
    let r = client.post(format!("{b_base}/api/runs/{id}/cancel")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let run = wait_for(&client, &b_base, id, "cancelled", |r| r["status"] == "cancelled").await;
    let took = sent.elapsed();
    assert_eq!(run["attempts"], 1, "a stopped it; b never ran it: {run}");
    assert!(took < Duration::from_secs(10), "cancelled after {took:?}");
    // a checkpointed where it stopped, as for a cancel sent to it.
    let listed = get(&client, format!("{b_base}/api/runs/{id}/checkpoints")).await;
    assert_eq!(listed["checkpoints"][0]["step"], run["step"], "{listed}");
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn an_ended_runs_metrics_answer_is_kept_in_memory_and_a_running_runs_is_read_afresh() {
    let lab = lab().await;
    let ended = lab.state.queue.enqueue(toy_config(json!({})), None, None).await.unwrap();
    let running = lab.state.queue.enqueue(toy_config(json!({})), None, None).await.unwrap();
    lab.train_next(100, 1000, 1.0, &[]).await;
    lab.finish(ended, Outcome::Finished).await;
    lab.train_next(100, 1000, 1.0, &[]).await;
    let uri = |id: i64, query: &str| format!("/api/runs/{id}/metrics?{query}");
    let (_, _, ended_first) = lab.request("GET", &uri(ended, "names=loss"), None).await;
    let (_, _, running_first) = lab.request("GET", &uri(running, "names=loss"), None).await;
    assert!(ended_first.contains("\"points\":5") && running_first.contains("\"points\":5"), "{ended_first}");

    // Every stored value disappears behind the server's back.
    let mut conn = lab.state.pool.acquire().await.unwrap();
    for id in [ended, running] {
        server::db::metrics::delete_after(&mut conn, id, -1).await.unwrap();
    }
    drop(conn);
    let (status, headers, ended_again) = lab.request("GET", &uri(ended, "names=loss"), None).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "application/json"));
    assert_eq!(ended_again, ended_first, "from memory");
    let (_, _, running_again) = lab.request("GET", &uri(running, "names=loss"), None).await;
    assert!(running_again.contains("\"points\":0"), "read again: {running_again}");
    // The same request spelled differently is the same answer; another request is another.
    let (_, _, respelled) = lab.request("GET", &uri(ended, "names=%20loss,&format=json"), None).await;
    assert_eq!(respelled, ended_first);
    let (_, headers, csv) = lab.request("GET", &uri(ended, "names=loss&format=csv"), None).await;
    assert_eq!((headers["content-type"].to_str().unwrap(), csv.as_str()), ("text/csv", "step,name,value\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_opened_on_one_server_follows_a_run_that_another_server_trains_to_its_end() {
    let root = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (a, a_base) = server_on(root.path(), "a").await;
    let id = create_run(&client, &a_base, &config(1000, 0)).await;
    wait_for(&client, &a_base, id, "step 5", |r| r["step"].as_i64().unwrap_or(0) >= 5).await;
    // b starts once a trains the run, so b never hears of it from its own trainers.
    let (b, b_base) = server_on(root.path(), "b").await;

    let mut stream = client.get(format!("{b_base}/api/runs/{id}/events")).send().await.unwrap().bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match tokio::time::timeout_at(deadline.into(), futures_util::StreamExt::next(&mut stream)).await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            Ok(None) => break,
            Err(_) => {
                let run = get(&client, format!("{a_base}/api/runs/{id}")).await;
                let tail: String = text.chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("the stream on b did not end with a's run ({}, step {}): …{tail}", run["status"], run["step"]);
            }
        }
    }
    let steps: Vec<i64> = text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert_eq!(steps, (1..=1000).collect::<Vec<i64>>(), "every step once, in order");
    let last_status = text.lines().rfind(|l| l.starts_with("data: {\"error\"") || l.contains("\"status\""));
    assert!(last_status.is_some_and(|l| l.contains("\"finished\"")), "ends with the final status: {last_status:?}");
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn a_web_node_that_trains_nothing_queues_a_run_this_machine_could_not_train_and_a_training_server_refuses_it() {
    let elsewhere = json!({"task": "toy-tree", "max_steps": 5, "device": "cuda:1", "num_threads": 100_000});
    let web = common::spawn_with(|c| c.max_concurrent_runs = 0).await;
    let (status, body) = web.post("/api/runs", &elsewhere).await;
    assert_eq!(status, 201, "a worker elsewhere judges its own device, cores and memory: {body}");
    let (status, body) = web.post("/api/runs", &json!({"task": "toy-tree", "device": "tpu"})).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("device")), "a name that is no device");

    let trainer = common::spawn().await;
    let (status, body) = trainer.post("/api/runs", &elsewhere).await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["fields"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    let expected: &[&str] = if cfg!(feature = "cuda") { &["num_threads"] } else { &["device", "num_threads"] };
    assert_eq!(fields, expected, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_server_lists_itself_as_a_labelled_worker_and_a_run_no_live_worker_can_take_says_so() {
    let t = common::spawn_with(|c| c.labels = trainer::config::parse_labels("gpu=h100,zone=eu").unwrap()).await;
    let (status, listed) = t.get("/api/workers").await;
    assert_eq!(status, 200, "{listed}");
    let workers = listed["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{listed}");
    assert_eq!(workers[0]["labels"], json!({"gpu": "h100", "zone": "eu"}));
    assert_eq!((workers[0]["live"].as_bool(), workers[0]["max_concurrent_runs"].as_i64()), (Some(true), Some(1)));
    let page = t.client.get(t.url("/workers")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("gpu=h100") && page.contains(">live<"), "{page}");

    let id = t.create_run(&json!({"task": "toy-tree", "max_steps": 5, "requires": {"gpu": "a100"}})).await;
    let page = t.client.get(t.url(&format!("/runs/{id}"))).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("No live worker has <code>gpu=a100</code> (the 1 live worker lacks them)"),
        "the page says why the run waits and what to start"
    );
    assert!(page.contains("waiting for a free worker labelled gpu=a100"));
    // A finished run names the worker that trained it.
    let done = t.create_run(&config(5, 0)).await;
    let run = t.wait_for_status(done, "finished").await;
    let page = t.client.get(t.url(&format!("/runs/{done}"))).send().await.unwrap().text().await.unwrap();
    let worker = run["worker"].as_str().expect("the worker that trained it");
    assert!(page.contains(&format!("trained on <a href=\"/workers\" id=\"worker\"><code>{worker}</code>")), "{page}");
    // A clean shutdown takes the worker off the list.
    t.server.stop().await.unwrap();
    let pool = server::db::testing::pool(t.dir.path()).await;
    assert!(server::db::workers::list(&pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn labels_on_a_server_that_trains_nothing_are_refused_before_the_database_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = serve_config(dir.path()).await;
    config.max_concurrent_runs = 0;
    config.labels = trainer::config::parse_labels("gpu=h100").unwrap();
    let refused = start(config).await.err().expect("refused").to_string();
    assert!(refused.contains("--labels") && refused.contains("--max-concurrent-runs 0"), "{refused}");
    assert!(!dir.path().join("goodhart.db").exists(), "nothing was created");
}
