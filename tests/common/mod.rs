//! Shared by the integration tests: a real server on port 0 with a real SQLite file in a
//! temporary directory, training the TRL fixture model for real.
#![allow(dead_code)]

pub mod process;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::lifecycle::{start, ServeConfig, Server};

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

/// A server's settings for a test over `dir`, on the test database's backend (see
/// `server::db::testing`).
pub async fn serve_config(dir: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig::for_dir(dir);
    config.database_url = server::db::testing::database_url(dir).await;
    config.models_dir = fixtures();
    config.datasets_dir = fixtures();
    config
}

pub async fn spawn() -> TestServer {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(edit: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = serve_config(dir.path()).await;
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
        create_run(&self.client, &self.base, config).await
    }

    pub async fn wait_for(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(&self.client, &self.base, id, what, done).await
    }

    pub async fn wait_for_status(&self, id: i64, status: &str) -> Value {
        self.wait_for(id, status, |run| run["status"] == status).await
    }
}

/// `POST /api/runs` on the server at `base`, which must answer 201; the new run's id.
pub async fn create_run(client: &reqwest::Client, base: &str, config: &Value) -> i64 {
    let r = client.post(format!("{base}/api/runs")).json(config).send().await.expect("POST");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().expect("id")
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

/// The CSRF token [`Lab::request`] sends with forms, in the cookie and in the form.
pub const FORM_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Application state on a fresh database with no runner: tests drive the queue and the metric
/// writer themselves, so runs can be put in any state at once.
pub struct Lab {
    pub state: server::http::AppState,
    pub writer: server::jobs::sink::MetricWriter,
    pub dir: tempfile::TempDir,
}

pub async fn lab() -> Lab {
    lab_with(|_| {}).await
}

pub async fn lab_with(edit: impl FnOnce(&mut server::http::Settings)) -> Lab {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = server::db::testing::pool(dir.path()).await;
    let mut settings = serve_config(dir.path()).await.settings();
    edit(&mut settings);
    let state = server::http::AppState::new(pool.clone(), settings, "test".into());
    let (writer, _task) = server::jobs::sink::MetricWriter::spawn(pool, state.events.clone());
    Lab { state, writer, dir }
}

/// A `--store` for a test: a fresh bucket on the S3-compatible server at
/// `GOODHART_TEST_S3_ENDPOINT` (`.ci/run` starts moto and sets it, with the `AWS_*` variables
/// the store reads), otherwise `file://DIR/store`. Either way apart from any data dir.
pub async fn test_store(dir: &std::path::Path) -> String {
    let Ok(endpoint) = std::env::var("GOODHART_TEST_S3_ENDPOINT") else {
        return format!("file://{}", dir.join("store").display());
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bucket = format!("test-{}-{}-{n}", std::process::id(), server::db::now_ms());
    // object_store does not create buckets; S3's CreateBucket is a PUT of the bucket's path.
    let created = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.expect("create bucket");
    assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
    format!("s3://{bucket}/goodhart")
}

/// A stored toy-tree config (as the API would store it) with `edits`.
pub fn toy_config(edits: Value) -> Value {
    let mut v = json!({"task": "toy-tree", "max_steps": 1000, "eval_steps": 25, "save_steps": 500});
    if let (Some(obj), Value::Object(e)) = (v.as_object_mut(), edits) {
        obj.extend(e);
    }
    let config = trainer::config::RunConfig::from_json_value(v).expect("valid toy config");
    serde_json::to_value(config).expect("serializes")
}

/// What a run logged: a gold reward that rises and falls along sqrt(KL), as overoptimizing
/// runs do; `k` scales its KL growth.
pub fn toy_metrics(step: i64, k: f64) -> Vec<(String, Option<f64>)> {
    let kl = step as f64 / 200.0 * k;
    let d = kl.sqrt();
    let gold = 1.5 + d * (0.5 - 0.45 * (d + 1e-12).ln());
    vec![
        ("loss".to_string(), Some(0.69 - step as f64 * 1e-4)),
        ("rewards/margins".to_string(), Some(step as f64 * 1e-3)),
        ("rewards/accuracies".to_string(), Some(0.5 + step as f64 * 1e-4)),
        ("eval/kl_init".to_string(), Some(kl)),
        ("eval/kl_ref".to_string(), Some(kl / 2.0)),
        ("eval/gold_reward".to_string(), Some(gold)),
        ("eval/ood_mass".to_string(), Some(0.2 + kl * 0.01)),
    ]
}

impl Lab {
    /// Claims the oldest queued run and logs evaluations every 25 steps up to `to_step` (with
    /// checkpoints at `checkpoints`), then leaves it `running`.
    pub async fn train_next(&self, to_step: i64, total: i64, k: f64, checkpoints: &[i64]) -> i64 {
        use server::jobs::sink::WriteMsg;
        let claim = self.state.queue.claim().await.expect("claim").expect("a queued run");
        let (run_id, lease) = (claim.run_id, claim.lease());
        for step in (0..=to_step).step_by(25) {
            self.writer.send(WriteMsg::Metrics { lease, step, values: toy_metrics(step, k) }).await.unwrap();
            self.writer.send(WriteMsg::Progress { lease, step, total }).await.unwrap();
            if checkpoints.contains(&step) {
                let dir = self.state.settings.data_dir.join(format!("runs/{run_id}/checkpoint-{step}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("config.json"), b"{}").unwrap();
                std::fs::write(dir.join("model.safetensors"), vec![7u8; 1000]).unwrap();
                let (sha256, files) = server::jobs::sink::hash_dir(&dir).unwrap();
                self.writer
                    .send(WriteMsg::Checkpoint { lease, step, path: dir.to_string_lossy().into_owned(), sha256, files })
                    .await
                    .unwrap();
            }
        }
        self.writer.flush().await.unwrap();
        run_id
    }

    pub async fn finish(&self, run_id: i64, outcome: server::jobs::queue::Outcome) {
        self.state.queue.finish(run_id, outcome).await.expect("finish");
    }

    /// Answers (status, headers, body) of a request to the whole router. A form (`body`) is
    /// sent as a browser sends it from the page: with its CSRF token, the cookie's value.
    pub async fn request(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, axum::http::HeaderMap, String) {
        use tower::ServiceExt;
        let mut request = axum::http::Request::builder().method(method).uri(uri).header("host", "127.0.0.1");
        let mut body = body.map(str::to_string);
        if let Some(form) = &mut body {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", format!("goodhart_csrf={FORM_TOKEN}"));
            form.push_str(&format!("{}csrf_token={FORM_TOKEN}", if form.is_empty() { "" } else { "&" }));
        }
        let request = request.body(axum::body::Body::from(body.unwrap_or_default())).unwrap();
        let response = server::app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn get(&self, uri: &str) -> (u16, String) {
        let (status, _, body) = self.request("GET", uri, None).await;
        (status, body)
    }
}

/// A toy-tree run small enough to train in a few seconds in a test build, with `edits`.
pub fn tiny_toy(edits: Value) -> Value {
    let mut config = json!({
        "task": "toy-tree", "max_steps": 2, "eval_steps": 1, "save_steps": 0,
        "toy_num_prompts": 2, "toy_alphabet_size": 3, "toy_response_length": 2, "toy_pairs_per_prompt": 4,
        "toy_hidden_size": 8, "toy_num_layers": 1, "toy_num_heads": 2, "num_threads": 1,
    });
    if let (Some(c), Value::Object(e)) = (config.as_object_mut(), edits) {
        c.extend(e);
    }
    config
}

/// The demo sweep's grid on a toy tree small enough to train in seconds in a test build (π_init
/// cached in the server's data directory, as every toy run's).
pub fn fast_demo() -> Value {
    let mut demo = server::http::pages::demo::sweep();
    demo["base"] = json!({
        "task": "toy-tree", "loss_type": "sigmoid",
        "max_steps": 300, "eval_steps": 10, "logging_steps": 10, "save_steps": 150,
        "toy_num_prompts": 4, "toy_alphabet_size": 4, "toy_response_length": 3, "toy_pairs_per_prompt": 16,
        "toy_hidden_size": 16, "toy_num_layers": 1, "toy_num_heads": 2, "num_threads": 1,
    });
    demo
}
