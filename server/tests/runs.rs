//! A run's life through the API: create, train, finish, metrics, checkpoints; cancel, retry,
//! clone, delete; sweeps.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::io::Read;

use common::{config, full_series, spawn, spawn_with};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_created_trained_and_its_checkpoint_downloads_and_trains_again() {
    let t = spawn().await;
    let id = t.create_run(&config(12, 6)).await;
    let run = t.wait_for_status(id, "finished").await;
    assert_eq!(run["step"], 12);
    assert_eq!(run["total_steps"], 12);
    assert_eq!(run["progress"], 1.0);
    assert_eq!(run["summary"]["loss"]["points"], 12, "{run}");

    // Every step's loss, once, at full resolution.
    let loss = full_series(&t.client, &t.base, id, "loss").await;
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    assert!(loss[11].1 < loss[0].1, "training lowers the loss: {loss:?}");
    let (status, json_metrics) = t.get(&format!("/api/runs/{id}/metrics?names=loss,grad_norm")).await;
    assert_eq!(status, 200);
    assert_eq!(json_metrics["series"]["loss"].as_array().unwrap().len(), 12);
    assert_eq!(json_metrics["series"].as_object().unwrap().len(), 2);

    // Checkpoints at 6 and 12, each with its files and digests.
    let (_, listed) = t.get(&format!("/api/runs/{id}/checkpoints")).await;
    let steps: Vec<i64> =
        listed["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![6, 12]);
    let files = listed["checkpoints"][1]["files"].as_array().unwrap().clone();
    let names: BTreeSet<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.contains("model.safetensors") && names.contains("config.json"), "{names:?}");

    // The archive untars into the HF directory, byte for byte what was recorded.
    let tar_bytes = t
        .client
        .get(t.url(&format!("/api/runs/{id}/checkpoints/12/archive")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let models = tempfile::tempdir().unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    archive.unpack(models.path()).unwrap();
    for f in &files {
        let path = models.path().join("checkpoint-12").join(f["name"].as_str().unwrap());
        let mut bytes = Vec::new();
        std::fs::File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as i64, f["bytes"].as_i64().unwrap());
        let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, f["sha256"].as_str().unwrap(), "{}", path.display());
    }

    // A Range request gets exactly those bytes.
    let r = t
        .client
        .get(t.url(&format!("/api/runs/{id}/checkpoints/12/files/config.json")))
        .header("Range", "bytes=2-11")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let whole = std::fs::read(models.path().join("checkpoint-12/config.json")).unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[2..12]);

    // The untarred checkpoint is a model the trainer loads and trains from.
    let reloaded = common::spawn_with(|c| c.models_dir = models.path().to_path_buf()).await;
    let mut again = config(2, 0);
    again["model_name_or_path"] = json!("checkpoint-12");
    let id2 = reloaded.create_run(&again).await;
    reloaded.wait_for_status(id2, "finished").await;
    reloaded.server.stop().await.unwrap();
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_cancels_within_a_step_and_a_queued_one_never_starts() {
    let t = spawn().await; // one trainer at a time: the second run waits in the queue
    let running = t.create_run(&config(100_000, 0)).await;
    let queued = t.create_run(&config(5, 0)).await;
    t.wait_for(running, "step 3", |r| r["step"].as_i64().unwrap_or(0) >= 3).await;

    let (status, body) = t.post(&format!("/api/runs/{queued}/cancel"), &json!({})).await;
    assert_eq!((status, body["result"].as_str().unwrap()), (200, "cancelled"));
    let (status, _) = t.post(&format!("/api/runs/{running}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let run = t.wait_for_status(running, "cancelled").await;
    let stopped_at = run["step"].as_i64().unwrap();
    assert!(stopped_at < 100_000);
    // It checkpointed where it stopped.
    let (_, listed) = t.get(&format!("/api/runs/{running}/checkpoints")).await;
    assert_eq!(listed["checkpoints"][0]["step"].as_i64(), Some(stopped_at));

    let (_, q) = t.get(&format!("/api/runs/{queued}")).await;
    assert_eq!((q["status"].as_str(), q["attempts"].as_i64()), (Some("cancelled"), Some(0)));
    // Cancelling twice is a conflict, not a change.
    let (status, _) = t.post(&format!("/api/runs/{queued}/cancel"), &json!({})).await;
    assert_eq!(status, 409);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_building_its_pi_init_cancels_without_waiting_for_the_sft_to_end() {
    let t = spawn().await;
    // The default toy-tree π_init takes minutes of SFT on this machine; the cancel must not.
    let id = t.create_run(&json!({"task": "toy-tree", "num_threads": 1})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while full_series(&t.client, &t.base, id, "sft/loss").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no SFT step reported within two minutes");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _) = t.post(&format!("/api/runs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let run = t.wait_for_status(id, "cancelled").await;
    assert_eq!(run["step"].as_i64(), Some(0), "it never trained: {run}");
    let (_, listed) = t.get(&format!("/api/runs/{id}/checkpoints")).await;
    assert_eq!(listed["checkpoints"].as_array().map(Vec::len), Some(0), "π_init unfinished, nothing saved");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resumes_the_run_from_its_checkpoint_start_over_and_clone_make_new_runs_and_delete_removes_it() {
    let t = spawn().await;
    let id = t.create_run(&config(100_000, 0)).await;
    t.wait_for(id, "step 1", |r| r["step"].as_i64().unwrap_or(0) >= 1).await;
    let (status, _) = t.post(&format!("/api/runs/{id}/retry"), &json!({})).await;
    assert_eq!(status, 409, "a running run cannot be retried");
    let r = t.client.delete(t.url(&format!("/api/runs/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 409, "a running run cannot be deleted");
    t.post(&format!("/api/runs/{id}/cancel"), &json!({})).await;
    t.wait_for_status(id, "cancelled").await;

    let (status, body) = t.post(&format!("/api/runs/{id}/clone"), &json!({"max_steps": 3, "beta": 0.2})).await;
    assert_eq!(status, 201, "{body}");
    let clone = body["id"].as_i64().unwrap();
    let run = t.wait_for_status(clone, "finished").await;
    assert_eq!((run["config"]["beta"].as_f64(), run["parent_id"].as_i64()), (Some(0.2), Some(id)));

    let (status, body) = t.post(&format!("/api/runs/{id}/clone"), &json!({"beta": -1})).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("beta")));

    // Retry: the same run, resumed from the checkpoint it wrote when it was cancelled.
    let stopped_at = t.get(&format!("/api/runs/{id}")).await.1["step"].as_i64().unwrap();
    let (status, body) = t.post(&format!("/api/runs/{id}/retry"), &json!({"from": "sideways"})).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("from")));
    let (status, body) = t.post(&format!("/api/runs/{id}/retry"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["id"].as_i64(), body["resumes_from_step"].as_i64()), (Some(id), Some(stopped_at)));
    t.wait_for(id, "steps past the checkpoint", |r| {
        r["status"] == "running" && r["step"].as_i64().unwrap_or(0) > stopped_at
    })
    .await;
    let (_, loss) = t.get(&format!("/api/runs/{id}/metrics?names=loss&max_points=100000")).await;
    let steps: Vec<i64> = loss["series"]["loss"].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert_eq!(steps[0], 1, "the steps before the checkpoint are kept: {steps:?}");
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "and each step is there once: {steps:?}");
    t.post(&format!("/api/runs/{id}/cancel"), &json!({})).await;
    t.wait_for_status(id, "cancelled").await;
    // Start over: a new run with the same config.
    let (status, body) = t.post(&format!("/api/runs/{id}/retry"), &json!({"from": "start"})).await;
    assert_eq!(status, 201);
    let retry = body["id"].as_i64().unwrap();
    assert_ne!(retry, id);
    t.wait_for(retry, "step 1", |r| r["step"].as_i64().unwrap_or(0) >= 1).await;
    t.post(&format!("/api/runs/{retry}/cancel"), &json!({})).await;
    t.wait_for_status(retry, "cancelled").await;

    let dir = t.dir.path().join("data/runs").join(id.to_string());
    assert!(dir.is_dir());
    let r = t.client.delete(t.url(&format!("/api/runs/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(!dir.exists(), "the run's checkpoints are gone");
    assert_eq!(t.get(&format!("/api/runs/{id}")).await.0, 404);
    assert_eq!(t.get(&format!("/api/runs/{id}/metrics")).await.0, 404);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_queues_one_run_per_grid_point_and_all_of_them_finish() {
    let t = common::spawn_with(|c| c.max_concurrent_runs = 2).await;
    let body = json!({
        "base": config(4, 0),
        "grid": {"beta": [0.1, 0.3], "ref_model_mixup_alpha": [0.5, 0.9], "sync_ref_model": [true]},
    });
    let (status, created) = t.post("/api/sweeps", &body).await;
    assert_eq!(status, 201, "{created}");
    let sweep = created["id"].as_i64().unwrap();
    let ids: Vec<i64> = created["run_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        t.wait_for_status(*id, "finished").await;
    }
    let (_, shown) = t.get(&format!("/api/sweeps/{sweep}")).await;
    let points: BTreeSet<(String, String)> = shown["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["config"]["beta"].to_string(), r["config"]["ref_model_mixup_alpha"].to_string()))
        .collect();
    assert_eq!(points.len(), 4, "every grid point once: {points:?}");
    let (_, listed) = t.get(&format!("/api/runs?sweep={sweep}&status=finished&sort=id")).await;
    let listed: Vec<i64> = listed["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(listed, ids);
    assert_eq!(t.get("/api/sweeps/999").await.0, 404);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route() {
    let t = spawn().await;
    let (status, doc) = t.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let paths: Value = doc["paths"].clone();
    for route in [
        "/api/runs",
        "/api/runs/{id}",
        "/api/runs/{id}/cancel",
        "/api/runs/{id}/retry",
        "/api/runs/{id}/clone",
        "/api/sweeps",
        "/api/sweeps/{id}",
        "/api/runs/{id}/metrics",
        "/api/runs/{id}/events",
        "/api/runs/{id}/checkpoints",
        "/api/runs/{id}/checkpoints/{step}/archive",
        "/api/runs/{id}/checkpoints/{step}/files/{name}",
        "/api/models",
        "/api/datasets",
    ] {
        assert!(paths.get(route).is_some(), "{route} missing from the OpenAPI document");
    }
    // The document describes this server: without a token no route asks for one.
    assert!(!doc.to_string().contains("\"security\""), "{doc}");
    t.server.stop().await.unwrap();
    let t = spawn_with(|c| c.auth_token = Some("t".into())).await;
    let (_, doc) = t.get("/api/openapi.json").await;
    assert_eq!(doc["paths"]["/api/runs"]["post"]["security"], json!([{"bearer": []}]));
    assert!(doc["paths"]["/api/runs"]["post"]["responses"]["401"].is_object());
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_diverges_to_nan_fails_with_the_reason_and_the_next_run_still_trains() {
    let t = spawn().await;
    let mut diverging = config(30, 10);
    diverging["learning_rate"] = json!(1e30);
    diverging["max_grad_norm"] = json!(0.0);
    let bad = t.create_run(&diverging).await;
    let good = t.create_run(&config(3, 0)).await;
    let run = t.wait_for(bad, "failed", |r| r["status"] == "failed").await;
    assert!(run["error"].as_str().unwrap().contains("non-finite"), "{run}");
    assert!(run["finished_at"].is_i64());
    t.wait_for_status(good, "finished").await;
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toy_run_records_exactly_the_pareto_checkpoints_it_keeps_and_its_pi_init_sft() {
    let t = spawn().await;
    let id = t
        .create_run(&json!({
            "task": "toy-tree", "toy_num_prompts": 3, "toy_alphabet_size": 3, "toy_response_length": 3,
            "toy_hidden_size": 16, "toy_num_layers": 1, "toy_num_heads": 2, "toy_pairs_per_prompt": 4,
            "learning_rate": 1e-4, "max_steps": 120, "eval_steps": 5, "logging_steps": 5, "save_steps": 50,
            "save_pareto_limit": 3, "num_threads": 1,
        }))
        .await;
    let run = t.wait_for_status(id, "finished").await;
    assert_eq!(run["config"]["save_strategy"], "pareto", "the default with a gold reward");
    let (_, listed) = t.get(&format!("/api/runs/{id}/checkpoints")).await;
    let mut recorded: Vec<i64> =
        listed["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
    recorded.sort_unstable();
    let dir = t.dir.path().join("data/runs").join(id.to_string());
    let on_disk: Vec<i64> = trainer::checkpoint::steps(&dir).unwrap().into_iter().map(|s| s as i64).collect();
    assert_eq!(recorded, on_disk, "a deleted checkpoint's record goes with its directory");
    let gold = common::full_series(&t.client, &t.base, id, "eval/gold_reward").await;
    let peak = gold.iter().copied().fold((0, f64::NEG_INFINITY), |b, p| if p.1 > b.1 { p } else { b });
    assert!(recorded.contains(&peak.0) && recorded.contains(&0), "π_init and the peak are kept: {recorded:?}");
    assert!(recorded.len() < gold.len(), "not every evaluation: {recorded:?}");
    let sft = common::full_series(&t.client, &t.base, id, "sft/loss").await;
    assert!(sft.len() > 10 && sft[0].0 == 0, "π_init's SFT steps are metrics too: {} of them", sft.len());
    assert!(sft.last().unwrap().1 < sft[0].1, "and its loss went down");
    t.server.stop().await.unwrap();
}
