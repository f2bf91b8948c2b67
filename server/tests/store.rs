//! Checkpoints in an object store (`--store`): uploaded, then recorded; downloaded through the
//! web node with Range support; fetched back by a worker whose data dir is empty; and a failed
//! upload records nothing.
//!
//! Each test runs on a `file://` directory store, and on a real S3-compatible server when
//! `GOODHART_TEST_S3_ENDPOINT` is set (`.ci/run` starts `moto_server` and sets it, with the
//! `AWS_*` variables the store reads). Without it the S3 half prints a note and is skipped.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{config, full_series, serve_config};
use futures_util::stream::BoxStream;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};
use serde_json::{json, Value};
use server::lifecycle::{start, start_with_store, ServeConfig, Server};
use server::store::{self, CheckpointStore};
use sha2::{Digest, Sha256};

/// One kind of store under test: its `--store` URL, and the same store opened for the test's
/// own checks.
struct Backend {
    url: String,
    raw: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh bucket on the S3-compatible server at `GOODHART_TEST_S3_ENDPOINT`, or `None` after
/// printing why the S3 half of a test is skipped.
async fn s3(test: &str) -> Option<Backend> {
    let Ok(endpoint) = std::env::var("GOODHART_TEST_S3_ENDPOINT") else {
        eprintln!(
            "NOTE: {test}: skipped on S3 (set GOODHART_TEST_S3_ENDPOINT to an S3-compatible server, with \
             AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ALLOW_HTTP as .ci/run does)"
        );
        return None;
    };
    assert_eq!(
        std::env::var("AWS_ENDPOINT_URL").ok().as_deref(),
        Some(endpoint.as_str()),
        "GOODHART_TEST_S3_ENDPOINT is set: the store reads its endpoint from AWS_ENDPOINT_URL, which must name the same server"
    );
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let bucket = format!("goodhart-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    // object_store does not create buckets; S3's CreateBucket is a PUT of the bucket's path.
    let created = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.expect("create bucket");
    assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
    let raw = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket).build().expect("S3 store");
    Some(Backend { url: format!("s3://{bucket}/checkpoints"), raw: Arc::new(raw), _dir: None })
}

/// A directory store (`file:///…`), outside the data dir.
fn directory() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let raw = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let url = url::Url::from_directory_path(dir.path()).unwrap().to_string();
    Backend { url, raw: Arc::new(raw), _dir: Some(dir) }
}

/// The directory store, and S3 when the test has one.
async fn backends(test: &str) -> Vec<Backend> {
    let mut out = vec![directory()];
    out.extend(s3(test).await);
    out
}

impl Backend {
    /// The keys under `prefix` (relative to the bucket or directory).
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = Key::from(prefix);
        let mut keys: Vec<String> =
            self.raw.list(Some(&prefix)).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        keys.sort();
        keys
    }

    /// Where the S3 URL's prefix puts keys (`checkpoints/`), or nothing for a directory.
    fn prefix(&self) -> &'static str {
        if self.url.starts_with("s3://") {
            "checkpoints/"
        } else {
            ""
        }
    }
}

async fn serve(dir: &std::path::Path, edit: impl FnOnce(&mut ServeConfig)) -> (Server, String) {
    let mut config = serve_config(dir).await;
    edit(&mut config);
    let server = start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    (server, base)
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_checkpoint_is_uploaded_then_recorded_and_downloads_byte_identical_from_the_store_with_ranges() {
    for backend in backends("a_runs_checkpoint_is_uploaded_then_recorded_and_downloads…").await {
        let dir = tempfile::tempdir().unwrap();
        let (server, base) = serve(dir.path(), |c| c.store = Some(backend.url.clone())).await;
        let client = reqwest::Client::new();
        let id = common::create_run(&client, &base, &config(12, 6)).await;
        common::wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
        let listed = get_json(&client, format!("{base}/api/runs/{id}/checkpoints")).await;
        let steps: Vec<i64> =
            listed["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
        assert_eq!(steps, vec![6, 12], "{}: {listed}", backend.url);

        // Every recorded file is in the store, under the run, its claim and its step.
        let files = listed["checkpoints"][1]["files"].as_array().unwrap().clone();
        let prefix = format!("{}runs/{id}/attempt-1/checkpoint-12/", backend.prefix());
        let expected: Vec<String> = files.iter().map(|f| format!("{prefix}{}", f["name"].as_str().unwrap())).collect();
        assert_eq!(backend.keys(&prefix).await, expected, "{}", backend.url);

        // The scratch copy is gone: every byte below comes from the store.
        std::fs::remove_dir_all(dir.path().join("data/runs")).unwrap();
        let tar_bytes = client
            .get(format!("{base}/api/runs/{id}/checkpoints/12/archive"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let untarred = tempfile::tempdir().unwrap();
        tar::Archive::new(&tar_bytes[..]).unpack(untarred.path()).unwrap();
        for f in &files {
            let bytes = std::fs::read(untarred.path().join("checkpoint-12").join(f["name"].as_str().unwrap())).unwrap();
            assert_eq!(bytes.len() as i64, f["bytes"].as_i64().unwrap());
            assert_eq!(sha256(&bytes), f["sha256"].as_str().unwrap(), "{}: {f}", backend.url);
        }
        let whole = std::fs::read(untarred.path().join("checkpoint-12/model.safetensors")).unwrap();
        let file = format!("{base}/api/runs/{id}/checkpoints/12/files/model.safetensors");
        let r = client.get(&file).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["accept-ranges"], "bytes");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[..]);
        let len = whole.len();
        for (range, from, to) in [("bytes=100-199", 100, 199), ("bytes=-7", len - 7, len - 1), ("bytes=9-", 9, len - 1)]
        {
            let r = client.get(&file).header("Range", range).send().await.unwrap();
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(r.headers()["content-range"], format!("bytes {from}-{to}/{len}").as_str());
            assert_eq!(r.headers()["accept-ranges"], "bytes");
            assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[from..=to], "{range} from {}", backend.url);
        }
        let r = client.get(&file).header("Range", format!("bytes={len}-")).send().await.unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], format!("bytes */{len}").as_str());
        server.stop().await.unwrap();

        // A web node started without the store answers an error before any byte of the tar,
        // not a 200 that breaks off.
        let (web, web_base) = serve(dir.path(), |c| c.data_dir = dir.path().join("web")).await;
        for path in ["archive", "files/model.safetensors"] {
            let r = client.get(format!("{web_base}/api/runs/{id}/checkpoints/12/{path}")).send().await.unwrap();
            assert_eq!(r.status(), 500, "{path} on a node without {}", backend.url);
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("the server's log has the details"), "{body}");
        }
        web.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_local_data_dir_is_wiped_resumes_from_the_stores_checkpoint_on_another_worker() {
    for backend in backends("a_run_whose_local_data_dir_is_wiped_resumes…").await {
        let dir = tempfile::tempdir().unwrap();
        let client = reqwest::Client::new();
        let database_url = server::db::testing::database_url(dir.path()).await;
        let on = |data: &str, worker: &str| {
            let (store, database_url, data, worker) =
                (backend.url.clone(), database_url.clone(), dir.path().join(data), worker.to_string());
            move |c: &mut ServeConfig| {
                c.store = Some(store);
                c.database_url = database_url;
                c.data_dir = data;
                c.worker_id = Some(worker);
            }
        };
        let (first, base) = serve(dir.path(), on("first-data", "first")).await;
        let id = common::create_run(&client, &base, &config(100_000, 40)).await;
        common::wait_for(&client, &base, id, "past its first checkpoint", |r| r["step"].as_i64().unwrap_or(0) > 50)
            .await;
        // Stopping checkpoints the run where it is, uploads it, and puts the run back in the queue.
        first.stop().await.unwrap();
        let restarted_at = server::db::now_ms();
        // This machine's disk is gone; another one, with an empty data dir, takes the run.
        std::fs::remove_dir_all(dir.path().join("first-data")).unwrap();
        let (second, base) = serve(dir.path(), on("second-data", "second")).await;
        let checkpoints = |listed: &Value| -> Vec<(i64, i64)> {
            let all = listed["checkpoints"].as_array().unwrap().iter();
            all.map(|c| (c["step"].as_i64().unwrap(), c["created_at"].as_i64().unwrap())).collect()
        };
        let listed = get_json(&client, format!("{base}/api/runs/{id}/checkpoints")).await;
        let stopped: Vec<(i64, i64)> = checkpoints(&listed).into_iter().filter(|&(_, at)| at < restarted_at).collect();
        let &(last_step, _) = stopped.last().expect("a checkpoint where it stopped");
        assert!(last_step > 50, "{listed}");
        let run = common::wait_for(&client, &base, id, "running again past its checkpoint", |r| {
            r["attempts"] == 2 && r["step"].as_i64().unwrap_or(0) > last_step + 5
        })
        .await;
        assert_eq!(run["status"], "running", "{run}");
        client.post(format!("{base}/api/runs/{id}/cancel")).send().await.unwrap();
        common::wait_for(&client, &base, id, "cancelled", |r| r["status"] == "cancelled").await;
        // It resumed from the store's copies: the periodic checkpoint from before the restart is
        // still listed as it was (starting over forgets them all; the one written at the stop
        // gives way to the one written at the cancel), and the new worker downloaded it.
        let listed = get_json(&client, format!("{base}/api/runs/{id}/checkpoints")).await;
        let now = checkpoints(&listed);
        assert_eq!(now[0], stopped[0], "{}: {listed}", backend.url);
        assert!(now.last().unwrap().0 > last_step, "{listed}");
        let first_step = stopped[0].0;
        assert!(dir.path().join(format!("second-data/runs/{id}/checkpoint-{first_step}/model.safetensors")).is_file());
        let loss: Vec<i64> = full_series(&client, &base, id, "loss").await.into_iter().map(|p| p.0).collect();
        let last = *loss.last().unwrap();
        assert!(last > last_step);
        assert_eq!(loss, (1..=last).collect::<Vec<_>>(), "{}: no gap and no repeat across machines", backend.url);
        second.stop().await.unwrap();
    }
}

/// The real store, except that once one file of the checkpoint under `doomed` has been
/// uploaded, every further write under it fails: an upload that breaks midway.
#[derive(Debug)]
struct FailsMidway {
    inner: Arc<dyn ObjectStore>,
    doomed: String,
    written: AtomicU64,
}

impl fmt::Display for FailsMidway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailsMidway({})", self.inner)
    }
}

impl FailsMidway {
    fn check(&self, location: &Key) -> object_store::Result<()> {
        if location.as_ref().contains(&self.doomed) && self.written.fetch_add(1, Ordering::SeqCst) >= 1 {
            return Err(object_store::Error::Generic {
                store: "FailsMidway",
                source: format!("the connection dropped while uploading {location}").into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailsMidway {
    async fn put_opts(&self, location: &Key, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Key,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Key, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Key) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Key, to: &Key) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Key, to: &Key) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_fails_midway_leaves_no_recorded_checkpoint_and_the_run_resumes_from_the_last_recorded_one() {
    for backend in backends("an_upload_that_fails_midway_leaves_no_recorded_checkpoint…").await {
        let dir = tempfile::tempdir().unwrap();
        let mut config_ = serve_config(dir.path()).await;
        config_.store = Some(backend.url.clone());
        // The run's first claim uploads checkpoint 4 whole, then breaks off in checkpoint 8.
        let opened = store::open(Some(&backend.url), &config_.data_dir).unwrap();
        let real: Arc<dyn ObjectStore> = opened.object_store().unwrap().clone();
        let wrapped =
            FailsMidway { inner: real, doomed: "runs/1/attempt-1/checkpoint-8/".into(), written: AtomicU64::new(0) };
        let store = CheckpointStore::new(Arc::new(wrapped), backend.url.clone());
        let server = start_with_store(config_, store).await.expect("server starts");
        let (base, client) = (format!("http://{}", server.addr), reqwest::Client::new());
        let id = common::create_run(&client, &base, &config(12, 4)).await;
        assert_eq!(id, 1);
        let failed = common::wait_for(&client, &base, id, "failed", |r| r["status"] == "failed").await;
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains("uploading it to the checkpoint store failed, so it was not recorded"), "{error}");
        let listed = get_json(&client, format!("{base}/api/runs/{id}/checkpoints")).await;
        let steps: Vec<i64> =
            listed["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
        assert_eq!(steps, vec![4], "{}: only the checkpoint uploaded whole is recorded", backend.url);
        let prefix = backend.prefix();
        assert_eq!(backend.keys(&format!("{prefix}runs/1/attempt-1/checkpoint-8/")).await, Vec::<String>::new());
        assert!(!backend.keys(&format!("{prefix}runs/1/attempt-1/checkpoint-4/")).await.is_empty());

        // Retried from its checkpoint (on a worker with a fresh disk), it resumes at step 4.
        std::fs::remove_dir_all(dir.path().join("data/runs")).unwrap();
        let r = client.post(format!("{base}/api/runs/{id}/retry")).json(&json!({"from": "checkpoint"})).send().await;
        let answer: Value = r.unwrap().json().await.unwrap();
        assert_eq!(answer["resumes_from_step"], 4, "{answer}");
        let run = common::wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
        assert_eq!(run["attempts"], 2, "{run}");
        let listed = get_json(&client, format!("{base}/api/runs/{id}/checkpoints")).await;
        let steps: Vec<i64> =
            listed["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
        assert_eq!(steps, vec![4, 8, 12], "{listed}");
        let loss: Vec<i64> = full_series(&client, &base, id, "loss").await.into_iter().map(|p| p.0).collect();
        assert_eq!(loss, (1..=12).collect::<Vec<_>>(), "{}: each step once", backend.url);
        assert!(!backend.keys(&format!("{prefix}runs/1/attempt-2/checkpoint-8/")).await.is_empty());
        server.stop().await.unwrap();
    }
}
