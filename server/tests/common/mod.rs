//! Shared by the integration tests: a real server on port 0 with a real SQLite file in a
//! temporary directory, training the TRL fixture model for real.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::serve::{start, ServeConfig, Server};

/// `../shared/reference/trl-parity` from the repository root: a tiny Llama and preference pairs.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/trl-parity")
        .canonicalize()
        .expect("fixture dir")
}

/// A run config on the fixture model: a few ms per step.
pub fn config(max_steps: u64, save_steps: u64) -> Value {
    json!({
        "model_name_or_path": "tiny-llama",
        "dataset_path": "pairs.jsonl",
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "max_steps": max_steps,
        "save_steps": save_steps,
    })
}

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub fn serve_config(dir: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig::for_dir(dir);
    config.models_dir = fixtures();
    config.datasets_dir = fixtures();
    config
}

pub async fn spawn() -> TestServer {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(edit: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = serve_config(dir.path());
    edit(&mut config);
    let server = start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    TestServer { server, base, client: reqwest::Client::new(), dir }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().await.expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_run(&self, config: &Value) -> i64 {
        let (status, body) = self.post("/api/runs", config).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().expect("id")
    }

    pub async fn wait_for(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(&self.client, &self.base, id, what, done).await
    }

    pub async fn wait_for_status(&self, id: i64, status: &str) -> Value {
        self.wait_for(id, status, |run| run["status"] == status).await
    }
}

/// Polls `GET /api/runs/{id}` until `done` holds (at most two minutes).
pub async fn wait_for(
    client: &reqwest::Client,
    base: &str,
    id: i64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{base}/api/runs/{id}")).send().await {
            if let Ok(run) = r.json::<Value>().await {
                if done(&run) {
                    return run;
                }
                assert!(
                    run["status"] != "failed" || what == "failed",
                    "run {id} failed while waiting for {what}: {run}"
                );
                assert!(Instant::now() < deadline, "run {id} never reached {what}: {run}");
            }
        }
        assert!(Instant::now() < deadline, "run {id} never reached {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every (step, value) of one metric, at full resolution.
pub async fn full_series(client: &reqwest::Client, base: &str, id: i64, name: &str) -> Vec<(i64, f64)> {
    let csv = client
        .get(format!("{base}/api/runs/{id}/metrics?format=csv&names={name}"))
        .send()
        .await
        .expect("GET metrics")
        .text()
        .await
        .expect("csv");
    csv.lines()
        .skip(1)
        .map(|line| {
            let parts: Vec<&str> = line.split(',').collect();
            assert_eq!(parts[1], name);
            (parts[0].parse().expect("step"), parts[2].parse().expect("value"))
        })
        .collect()
}
