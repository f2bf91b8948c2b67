//! Every kind of bad input answers a 4xx naming the problem, and stores nothing.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{config, spawn, spawn_with, TestServer};
use serde_json::{json, Value};

async fn assert_nothing_stored(t: &TestServer) {
    let (_, runs) = t.get("/api/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");
}

/// Posts `body` and answers (status, the offending field names).
async fn post_raw(t: &TestServer, path: &str, body: Vec<u8>) -> (u16, Vec<String>) {
    let r = t.client.post(t.url(path)).header("content-type", "application/json").body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    let fields = body["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap().to_string()).collect();
    (status, fields)
}

fn with(key: &str, value: Value) -> Value {
    let mut c = config(5, 0);
    c[key] = value;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_config_is_refused_with_its_field_and_nothing_is_stored() {
    let t = spawn().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("a wrong type", with("beta", json!("high")), "beta"),
        ("a wrong type for steps", with("max_steps", json!(1.5)), "max_steps"),
        ("alpha out of range", with("ref_model_mixup_alpha", json!(1.5)), "ref_model_mixup_alpha"),
        ("tau out of range", with("ref_model_sync_steps", json!(0)), "ref_model_sync_steps"),
        ("beta out of range", with("beta", json!(0.0)), "beta"),
        ("lr out of range", with("learning_rate", json!(-1e-3)), "learning_rate"),
        ("steps out of range", with("max_steps", json!(0)), "max_steps"),
        ("batch size out of range", with("per_device_train_batch_size", json!(0)), "per_device_train_batch_size"),
        ("a length out of range", with("max_length", json!(1)), "max_length"),
        ("an unknown key", with("learning_rat", json!(1e-3)), "learning_rat"),
        ("a model outside --models-dir", with("model_name_or_path", json!("/etc")), "model_name_or_path"),
        ("a relative escape", with("dataset_path", json!("../../../../etc/passwd")), "dataset_path"),
        ("a missing model", with("model_name_or_path", json!("no-such-model")), "model_name_or_path"),
        ("not an object", json!([1, 2]), "(config)"),
    ];
    for (what, body, field) in cases {
        let (status, fields) = post_raw(&t, "/api/runs", serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, 422, "{what}");
        assert!(fields.iter().any(|f| f == field), "{what}: expected `{field}` in {fields:?}");
    }
    // Several problems at once are all reported.
    let mut two = with("beta", json!(-1));
    two["learning_rate"] = json!(0);
    let (_, fields) = post_raw(&t, "/api/runs", serde_json::to_vec(&two).unwrap()).await;
    assert!(fields.contains(&"beta".into()) && fields.contains(&"learning_rate".into()), "{fields:?}");
    assert_nothing_stored(&t).await;
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_oversized_bodies_are_refused() {
    let t = spawn_with(|c| c.max_body_bytes = 4096).await;
    let (status, fields) = post_raw(&t, "/api/runs", b"{\"beta\": 0.1,".to_vec()).await;
    assert_eq!((status, fields), (422, vec!["(body)".to_string()]));
    let (status, _) = post_raw(&t, "/api/sweeps", b"not json".to_vec()).await;
    assert_eq!(status, 422);

    let mut big = config(5, 0);
    big["padding"] = json!("x".repeat(10_000));
    let r = t.client.post(t.url("/api/runs")).json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["fields"][0]["field"], "(body)");
    assert!(body["error"].as_str().unwrap().contains("4096 bytes (--max-body-bytes)"), "{body}");
    assert_nothing_stored(&t).await;
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_too_large_or_with_an_invalid_point_stores_nothing() {
    let t = spawn_with(|c| c.max_sweep_runs = 10).await;
    let (status, body) = t
        .post("/api/sweeps", &json!({"base": config(5, 0), "grid": {"beta": [0.1, 0.2, 0.3, 0.4], "seed": [1, 2, 3]}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["fields"][0]["field"], "grid");
    assert!(body["fields"][0]["message"].as_str().unwrap().contains("12 runs"), "{body}");

    let (status, body) = t.post("/api/sweeps", &json!({"base": config(5, 0), "grid": {"beta": [0.1, -0.2]}})).await;
    assert_eq!(status, 422);
    assert_eq!(body["fields"][0]["field"], "grid.beta=-0.2", "{body}");

    let (status, body) = t.post("/api/sweeps", &json!({"base": config(5, 0), "grid": {"beta": []}})).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("grid.beta")));
    let (status, body) = t.post("/api/sweeps", &json!({"base": config(5, 0), "grid": {}, "extra": 1})).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("extra")));
    assert_nothing_stored(&t).await;
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_names_answer_404() {
    let t = spawn().await;
    for path in [
        "/api/runs/42",
        "/api/runs/not-a-number",
        "/api/runs/42/metrics",
        "/api/runs/42/events",
        "/api/runs/42/checkpoints",
        "/api/runs/42/checkpoints/1/archive",
        "/api/sweeps/42",
    ] {
        assert_eq!(t.get(path).await.0, 404, "{path}");
    }
    for path in ["/api/runs/42/cancel", "/api/runs/42/retry", "/api/runs/42/clone"] {
        assert_eq!(t.post(path, &json!({})).await.0, 404, "{path}");
    }
    assert_eq!(t.client.delete(t.url("/api/runs/42")).send().await.unwrap().status(), 404);

    // A real checkpoint, and names that are not among its recorded files.
    let id = t.create_run(&config(2, 0)).await;
    t.wait_for_status(id, "finished").await;
    assert_eq!(t.get(&format!("/api/runs/{id}/checkpoints/1/archive")).await.0, 404);
    for name in ["nope.bin", "..%2F..%2Fgoodhart.db", "..%2Fcheckpoint-2%2Fconfig.json"] {
        let (status, _) = t.get(&format!("/api/runs/{id}/checkpoints/2/files/{name}")).await;
        assert_eq!(status, 404, "{name}");
    }
    let r = t
        .client
        .get(t.url(&format!("/api/runs/{id}/checkpoints/2/files/config.json")))
        .header("Range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let (status, body) = t.get(&format!("/api/runs/{id}/metrics?format=xml")).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("format")));
    let (status, _) = t.get("/api/runs?status=sleeping").await;
    assert_eq!(status, 422);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_api_route_needs_it() {
    let mut t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    let anonymous = std::mem::replace(
        &mut t.client,
        reqwest::Client::builder()
            .default_headers(
                [("authorization".parse().unwrap(), "Bearer s3cret".parse().unwrap())].into_iter().collect(),
            )
            .build()
            .unwrap(),
    );
    let body = config(2, 0);
    let r = anonymous.post(t.url("/api/runs")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = anonymous.post(t.url("/api/runs")).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_nothing_stored(&t).await;

    let r = anonymous.post(t.url("/api/runs")).bearer_auth("s3cret").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    t.wait_for_status(id, "finished").await;
    for read in [format!("/api/runs/{id}/checkpoints"), format!("/api/runs/{id}"), "/api/runs".into()] {
        assert_eq!(anonymous.get(t.url(&read)).send().await.unwrap().status(), 401, "{read}");
    }
    assert_eq!(t.get(&format!("/api/runs/{id}/checkpoints")).await.0, 200);
    let archive = t.url(&format!("/api/runs/{id}/checkpoints/2/archive"));
    assert_eq!(anonymous.get(&archive).send().await.unwrap().status(), 401);
    assert_eq!(anonymous.get(&archive).bearer_auth("s3cret").send().await.unwrap().status(), 200);
    let file = t.url(&format!("/api/runs/{id}/checkpoints/2/files/config.json"));
    assert_eq!(anonymous.get(&file).send().await.unwrap().status(), 401);
    let delete = t.url(&format!("/api/runs/{id}"));
    assert_eq!(anonymous.delete(&delete).send().await.unwrap().status(), 401);
    assert_eq!(anonymous.delete(&delete).bearer_auth("s3cret").send().await.unwrap().status(), 204);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_everything_is_open_on_loopback() {
    let t = spawn().await;
    let id = t.create_run(&config(2, 0)).await;
    t.wait_for_status(id, "finished").await;
    let archive = t.url(&format!("/api/runs/{id}/checkpoints/2/archive"));
    assert_eq!(t.client.get(&archive).send().await.unwrap().status(), 200);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_bind_without_a_token_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::serve_config(dir.path()).await;
    c.bind = "0.0.0.0:0".parse().unwrap();
    let refused = server::lifecycle::start(c.clone()).await.err().expect("refused");
    assert!(refused.to_string().contains("--auth-token"), "{refused}");

    c.auth_token = Some("t".into());
    server::lifecycle::start(c.clone()).await.expect("with a token").stop().await.unwrap();
    c.auth_token = None;
    c.insecure = true;
    server::lifecycle::start(c).await.expect("with --insecure").stop().await.unwrap();
}
