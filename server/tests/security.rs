//! A researcher's browser also visits other sites: none of them may launch, cancel or read
//! anything on a server started on the same machine, with or without a token.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{config, spawn, spawn_with, tiny_toy, TestServer};
use serde_json::{json, Value};

async fn runs_stored(t: &TestServer) -> usize {
    t.get("/api/runs").await.1["runs"].as_array().map_or(0, Vec::len)
}

/// The JSON error shape every 4xx of the API has.
async fn error_body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(content_type.starts_with("application/json"), "{status}: {content_type} {body}");
    assert!(body["error"].is_string() && body["fields"].is_array(), "{status}: {body}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_text_plain_post_cannot_launch_a_run() {
    let t = spawn().await;
    let body = serde_json::to_string(&tiny_toy(json!({}))).unwrap();
    // What a page on evil.example can send without asking first: a "simple" request.
    let r = t
        .client
        .post(t.url("/api/runs"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, refused) = error_body(r).await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("cross-site"), "{refused}");

    // Without the browser's headers, the content type alone refuses it.
    let r = t.client.post(t.url("/api/runs")).header("content-type", "text/plain").body(body.clone()).send().await;
    let (status, refused) = error_body(r.unwrap()).await;
    assert_eq!(status, 415, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("application/json"), "{refused}");
    for content_type in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let r = t.client.post(t.url("/api/sweeps")).header("content-type", content_type).body("a=1").send().await;
        assert_eq!(error_body(r.unwrap()).await.0, 415, "{content_type}");
    }
    // A same-site page on another port is another origin too.
    for (name, value) in [("origin", "http://127.0.0.1:1"), ("origin", "null"), ("sec-fetch-site", "same-site")] {
        let r = t.client.post(t.url("/api/runs")).header(name, value).json(&json!({})).send().await.unwrap();
        assert_eq!(error_body(r).await.0, 403, "{name}: {value}");
    }
    let id = t.create_run(&tiny_toy(json!({"max_steps": 100_000}))).await;
    let r = t.client.post(t.url(&format!("/api/runs/{id}/cancel"))).header("origin", "http://evil.example").send();
    assert_eq!(error_body(r.await.unwrap()).await.0, 403, "cancel");
    let r = t.client.delete(t.url(&format!("/api/runs/{id}"))).header("sec-fetch-site", "cross-site").send();
    assert_eq!(error_body(r.await.unwrap()).await.0, 403, "delete");
    assert_eq!(runs_stored(&t).await, 1, "only the run posted by a script");

    // The server's own pages are same-origin: their scripts and forms work.
    let origin = t.base.clone();
    let r = t.client.post(t.url(&format!("/api/runs/{id}/cancel"))).header("origin", origin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_refused_even_for_reads() {
    let t = spawn_with(|c| c.allowed_hosts = vec!["lab.example.org".into()]).await;
    let port = t.server.addr.port();
    // The attacker's name, re-pointed at 127.0.0.1 after the page loaded: the browser sends it.
    let r = t.client.get(t.url("/api/runs")).header("host", format!("rebind.evil.example:{port}")).send();
    let (status, body) = error_body(r.await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("--allowed-host"), "{body}");
    let page = t.client.get(t.url("/")).header("host", "rebind.evil.example").send().await.unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("is not a name of this server") && !html.contains("\"fields\""), "{html}");

    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("lab.example.org:{port}")] {
        let r = t.client.get(t.url("/api/runs")).header("host", host.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    t.server.stop().await.unwrap();
}

/// A form post as the browser sends it: `cookie` and the form's `csrf_token` field.
async fn post_form(t: &TestServer, path: &str, cookie: Option<&str>, field: Option<&str>) -> reqwest::Response {
    // As a browser sees it: the 303 itself, not the page it leads to.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut request = client.post(t.url(path)).header("content-type", "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("goodhart_csrf={cookie}"));
    }
    let body = field.map(|f| format!("csrf_token={f}")).unwrap_or_default();
    request.body(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_forms_need_the_token_their_page_carries() {
    let t = spawn_with(|c| c.demo_sweep = common::fast_demo()).await;
    let page = t.client.get(t.url("/")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("SameSite=Lax") && cookie.contains("HttpOnly"), "{cookie}");
    let token = cookie.trim_start_matches("goodhart_csrf=").split(';').next().unwrap().to_string();
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("name=\"csrf_token\" value=\"{token}\"")), "the demo form carries the token");

    let other = "0123456789abcdef0123456789abcdef";
    for (cookie, field) in
        [(None, None), (Some(token.as_str()), None), (None, Some(token.as_str())), (Some(other), Some(token.as_str()))]
    {
        let r = post_form(&t, "/sweeps/demo", cookie, field).await;
        assert_eq!(r.status(), 403, "cookie {cookie:?}, field {field:?}");
        assert!(r.text().await.unwrap().contains("reload the page"));
    }
    assert_eq!(runs_stored(&t).await, 0);
    let r = post_form(&t, "/sweeps/demo", Some(&token), Some(&token)).await;
    assert_eq!(r.status(), 303);
    assert_eq!(runs_stored(&t).await, 7);
    // The browser keeps its cookie: the next page carries the same token.
    let again = t.client.get(t.url("/runs/new")).header("cookie", format!("goodhart_csrf={token}")).send().await;
    let again = again.unwrap();
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again.text().await.unwrap().contains(&format!("value=\"{token}\"")));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = t
            .client
            .post(t.url("/api/runs"))
            .header("authorization", format!("{scheme} s3cret"))
            .json(&tiny_toy(json!({"learning_rate": -1})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{scheme}: past the token check, to the config's own error");
    }
    let r = t.client.post(t.url("/api/runs")).header("authorization", "Basic s3cret").json(&json!({})).send();
    let (status, _) = error_body(r.await.unwrap()).await;
    assert_eq!(status, 401);
    t.server.stop().await.unwrap();
}

/// `(status, message)` of a config posted to `/api/runs`, which must be refused.
async fn refused(t: &TestServer, body: &Value, field: &str) -> String {
    let (status, answer) = t.post("/api/runs", body).await;
    assert_eq!(status, 422, "{answer}");
    let fields = answer["fields"].as_array().unwrap();
    let found = fields.iter().find(|f| f["field"] == field).unwrap_or_else(|| panic!("no {field} in {answer}"));
    found["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_paths_stay_in_the_servers_directories_and_answers_reveal_nothing_outside() {
    let t = spawn().await;
    let elsewhere = t.dir.path().join("elsewhere");
    let toy = |dir: &str| tiny_toy(json!({"toy_cache_dir": dir}));
    let message = refused(&t, &toy(elsewhere.join("x").to_str().unwrap()), "toy_cache_dir").await;
    assert!(message.contains("--data-dir"), "{message}");
    refused(&t, &toy("../../x"), "toy_cache_dir").await;
    assert!(!elsewhere.exists());

    // Whether a path outside exists is nobody's business.
    let with = |key: &str, value: &str| {
        let mut c = config(2, 0);
        c[key] = json!(value);
        c
    };
    let existing = refused(&t, &with("dataset_path", "/etc/passwd"), "dataset_path").await;
    for missing in ["/etc/nonexistent", "/nonexistent/x.jsonl", "../../../../etc/nonexistent"] {
        assert_eq!(refused(&t, &with("dataset_path", missing), "dataset_path").await, existing, "{missing}");
    }
    // Inside, answers name paths relative to the directory, never the server's absolute paths.
    let fixtures = common::fixtures();
    for (key, value) in
        [("dataset_path", "nope.jsonl"), ("model_name_or_path", "."), ("model_name_or_path", "pairs.jsonl")]
    {
        let message = refused(&t, &with(key, value), key).await;
        assert!(!message.contains(fixtures.to_str().unwrap()), "{key}={value}: {message}");
        assert!(!message.contains(t.dir.path().to_str().unwrap()), "{key}={value}: {message}");
    }

    // A cache directory inside is created there, and stored relative to it.
    let id = t.create_run(&toy("my-cache")).await;
    let run = t.wait_for_status(id, "finished").await;
    assert_eq!(run["config"]["toy_cache_dir"], "my-cache");
    let cache = t.dir.path().join("data/my-cache");
    assert!(std::fs::read_dir(&cache).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("pi_init")));
    // A running run names its worker, but not by the server's absolute data directory.
    let mut long = toy("my-cache");
    long["max_steps"] = json!(1_000_000);
    let id = t.create_run(&long).await;
    let run = t.wait_for(id, "a worker", |r| r["worker"].is_string()).await;
    let worker = run["worker"].as_str().unwrap();
    assert!(worker.contains(":data-") && !worker.contains(t.dir.path().to_str().unwrap()), "{worker}");
    t.post(&format!("/api/runs/{id}/cancel"), &json!({})).await;
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_models_directory_lists_nothing_as_datasets_do() {
    let t = spawn_with(|c| {
        c.models_dir = c.data_dir.join("no-models");
        c.datasets_dir = c.data_dir.join("no-datasets");
    })
    .await;
    assert_eq!(t.get("/api/models").await, (200, json!({"models": []})));
    assert_eq!(t.get("/api/datasets").await, (200, json!({"datasets": []})));
    let (_, answer) = t.post("/api/runs", &config(2, 0)).await;
    let text = answer.to_string();
    assert!(text.contains("--models-dir") && !text.contains(t.dir.path().to_str().unwrap()), "{text}");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_a_run_asks_for_has_an_upper_bound_named_in_the_answer() {
    let t = spawn_with(|c| c.max_threads_per_run = 2).await;
    let toy = |key: &str, value: Value| {
        let mut c = tiny_toy(json!({}));
        c[key] = value;
        c
    };
    let message = refused(&t, &toy("num_threads", json!(1_000_000)), "num_threads").await;
    assert!(message.contains("<= 2") && message.contains("--max-threads-per-run"), "{message}");
    let batch = toy("per_device_train_batch_size", json!(1_000_000_000u64));
    let message = refused(&t, &batch, "per_device_train_batch_size").await;
    assert!(message.starts_with("must be <= ") && message.contains("memory"), "{message}");
    let message = refused(&t, &toy("max_steps", json!(u64::MAX)), "max_steps").await;
    assert!(message.contains("2^53"), "{message}");
    let mut long = config(2, 0);
    long["max_length"] = json!(1_000_000_000u64);
    let message = refused(&t, &long, "max_length").await;
    assert!(message.starts_with("must be <= "), "{message}");

    // The largest step count is kept exactly as sent.
    let id = t.create_run(&toy("max_steps", json!(1u64 << 53))).await;
    let (_, run) = t.get(&format!("/api/runs/{id}")).await;
    assert_eq!(run["config"]["max_steps"], json!(1u64 << 53));
    t.post(&format!("/api/runs/{id}/cancel"), &json!({})).await;
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_4xx_has_the_json_error_shape_whoever_refused_it() {
    let t = spawn().await;
    let get = |path: &str| t.client.get(t.url(path)).send();
    for path in [
        "/api/runs?sweep=1&sweep=1",
        "/api/runs?status=sleeping",
        "/api/runs/%FF",
        "/api/runs/1/metrics?max_points=-1",
        "/api/nothing-here",
        "/api/runs/1/checkpoints/%FF/archive",
    ] {
        let (status, body) = error_body(get(path).await.unwrap()).await;
        assert!((400..500).contains(&status), "{path}: {status} {body}");
    }
    let r = t.client.put(t.url("/api/runs")).json(&json!({})).send().await.unwrap();
    assert!(r.headers().contains_key("allow"), "405 keeps its Allow header");
    assert_eq!(error_body(r).await.0, 405);
    let r = t.client.post(t.url("/api/runs")).header("content-type", "application/json").body("{\"beta\":").send();
    let (status, body) = error_body(r.await.unwrap()).await;
    assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some("(body)")));
    let r = t.client.post(t.url("/api/datasets")).header("content-type", "multipart/form-data").body("x").send();
    assert_eq!(error_body(r.await.unwrap()).await.0, 400, "multipart without a boundary");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_of_grids_runs_each_distinct_point_once() {
    let t = spawn().await;
    let base = tiny_toy(json!({}));
    let grid = json!([{"beta": [0.1]}, {"beta": [0.1, 0.2]}, {"beta": [0.2], "seed": [42]}]);
    let (status, body) = t.post("/api/sweeps", &json!({"base": base, "grid": grid})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["run_ids"].as_array().unwrap().len(), 2, "{body}");
    t.server.stop().await.unwrap();
}
