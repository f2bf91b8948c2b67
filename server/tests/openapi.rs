//! The served `/api/openapi.json` describes what the server does: every route it serves and no
//! other, and the answers of the main routes validate against their schemas.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{lab, tiny_toy, Lab};
use serde_json::{json, Value};

/// Answers (status, body as JSON) of a JSON request to the whole router.
async fn call(lab: &Lab, method: &str, uri: &str, body: Option<&Value>) -> (u16, Value) {
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder().method(method).uri(uri).header("host", "127.0.0.1");
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    let response = server::app(lab.state.clone()).oneshot(request.body(axum::body::Body::from(body)).unwrap()).await;
    let response = response.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `value` against an OpenAPI 3.0 schema (the keywords the document uses), `$ref`s resolved in
/// `doc`; every problem with its JSON path.
fn check(doc: &Value, schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = r.trim_start_matches('#');
        let target = doc.pointer(pointer).unwrap_or_else(|| panic!("unresolved {r}"));
        return check(doc, target, value, path, problems);
    }
    if value.is_null() {
        if schema.get("nullable") != Some(&json!(true)) && schema.get("type").is_some() {
            problems.push(format!("{path}: null, and the schema is not nullable"));
        }
        return;
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = options
            .iter()
            .filter(|o| {
                let mut p = Vec::new();
                check(doc, o, value, path, &mut p);
                p.is_empty()
            })
            .count();
        if fits != 1 {
            problems.push(format!("{path}: fits {fits} of oneOf's schemas"));
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, value, path, problems);
        }
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let ok = match ty {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some(other) => panic!("type {other} is not checked here"),
    };
    if !ok {
        problems.push(format!("{path}: {value} is not a {}", ty.unwrap_or("?")));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            problems.push(format!("{path}: {value} is not one of {options:?}"));
        }
    }
    if let Some(v) = value.as_f64() {
        // OpenAPI 3.0: `exclusiveMinimum: true` makes `minimum` itself out of range.
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        let exclusive = |k: &str| schema.get(k) == Some(&json!(true));
        let broken = bound("minimum").is_some_and(|m| v < m || (v == m && exclusive("exclusiveMinimum")))
            || bound("maximum").is_some_and(|m| v > m || (v == m && exclusive("exclusiveMaximum")));
        if broken {
            problems.push(format!("{path}: {v} is out of range"));
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            check(doc, items, v, &format!("{path}[{i}]"), problems);
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for key in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !object.contains_key(key.as_str().unwrap()) {
                problems.push(format!("{path}: {key} is required"));
            }
        }
        for (key, v) in object {
            let sub = format!("{path}.{key}");
            match (properties.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                (Some(s), _) => check(doc, s, v, &sub, problems),
                (None, Some(Value::Bool(false))) => problems.push(format!("{sub}: not in the schema")),
                (None, Some(s)) if s.is_object() => check(doc, s, v, &sub, problems),
                (None, _) => {}
            }
        }
    }
}

/// Checks an answer against the document's schema for (method, path template, status).
fn assert_valid(doc: &Value, method: &str, template: &str, status: u16, body: &Value) {
    let schema =
        &doc["paths"][template][method]["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "{method} {template} {status} has no JSON schema");
    let mut problems = Vec::new();
    check(doc, schema, body, "$", &mut problems);
    assert!(problems.is_empty(), "{method} {template} {status}: {problems:#?}\n{body:#}");
}

/// Every `.route("/api/…", method(handler)…)` in the API's routers, as (METHOD, path).
fn served_routes() -> std::collections::BTreeSet<(String, String)> {
    let sources = [
        include_str!("../src/http/mod.rs"),
        include_str!("../src/http/runs.rs"),
        include_str!("../src/http/sweeps.rs"),
        include_str!("../src/http/metrics.rs"),
        include_str!("../src/http/events.rs"),
        include_str!("../src/http/checkpoints.rs"),
        include_str!("../src/http/models.rs"),
        include_str!("../src/http/datasets.rs"),
        include_str!("../src/http/workers.rs"),
    ];
    let mut out = std::collections::BTreeSet::new();
    for source in sources {
        for piece in source.split(".route(\"").skip(1) {
            let (path, rest) = piece.split_once('"').unwrap();
            if !path.starts_with("/api/") {
                continue;
            }
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let handlers = &rest[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                if [" ", "."].iter().any(|before| handlers.contains(&format!("{before}{method}("))) {
                    out.insert((method.to_uppercase(), path.to_string()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let lab = lab().await;
    let (status, doc) = call(&lab, "GET", "/api/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut documented = std::collections::BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served = served_routes();
    assert!(served.len() >= 18, "the route scan found {served:?}");
    assert_eq!(documented, served);
    // Every documented operation reaches a handler: the router answers 405 for a method it
    // does not serve on a path and an empty 404 for a path it does not know.
    for (method, path) in &documented {
        let uri = path.replace("{id}", "999999").replace("{step}", "1").replace("{name}", "config.json");
        let (status, body) = call(&lab, method, &uri, None).await;
        assert_ne!(status, 405, "{method} {path}");
        assert!(status != 404 || body.get("error").is_some(), "{method} {path}: the router's 404");
    }
}

#[tokio::test]
async fn the_run_config_schema_has_every_key_and_refuses_others() {
    let lab = lab().await;
    let (_, doc) = call(&lab, "GET", "/api/openapi.json", None).await;
    let schema = &doc["components"]["schemas"]["RunConfig"];
    assert_eq!(schema["additionalProperties"], json!(false));
    let keys = serde_json::to_value(trainer::config::RunConfig::default()).unwrap();
    let keys: Vec<&String> = keys.as_object().unwrap().keys().collect();
    let properties = schema["properties"].as_object().unwrap();
    assert_eq!(properties.len(), keys.len());
    for key in keys {
        let p = &properties[key.as_str()];
        assert!(p["description"].as_str().is_some_and(|d| !d.is_empty()), "{key} has no help");
        assert!(p.get("default").is_some(), "{key} has no default");
    }
    assert_eq!(properties["ref_model_mixup_alpha"]["maximum"], json!(1.0));
    assert_eq!((&properties["beta"]["minimum"], &properties["beta"]["exclusiveMinimum"]), (&json!(0.0), &json!(true)));
    assert_eq!(doc["components"]["schemas"]["Sweep"]["additionalProperties"], json!(false));
}

#[tokio::test]
async fn answers_of_the_main_routes_validate_against_their_schemas() {
    let lab = lab().await;
    let (_, doc) = call(&lab, "GET", "/api/openapi.json", None).await;

    let (status, created) = call(&lab, "POST", "/api/runs", Some(&tiny_toy(json!({})))).await;
    assert_eq!(status, 201, "{created}");
    assert_valid(&doc, "post", "/api/runs", status, &created);
    let id = created["id"].as_i64().unwrap();
    lab.train_next(50, 100, 1.0, &[25]).await;
    let me = server::db::workers::Worker {
        id: "test".into(),
        labels: "gpu=h100".into(),
        device: Some("cuda:0".into()),
        max_concurrent_runs: 2,
        version: "0.1.0".into(),
        started_at: server::db::now_ms(),
        seen_at: server::db::now_ms(),
    };
    server::db::workers::register(&lab.state.pool, &me).await.unwrap();

    for (template, uri) in [
        ("/api/runs", "/api/runs".to_string()),
        ("/api/runs/{id}", format!("/api/runs/{id}")),
        ("/api/runs/{id}/metrics", format!("/api/runs/{id}/metrics")),
        ("/api/runs/{id}/checkpoints", format!("/api/runs/{id}/checkpoints")),
        ("/api/models", "/api/models".to_string()),
        ("/api/datasets", "/api/datasets".to_string()),
        ("/api/workers", "/api/workers".to_string()),
    ] {
        let (status, body) = call(&lab, "GET", &uri, None).await;
        assert_eq!(status, 200, "{uri}: {body}");
        assert_valid(&doc, "get", template, status, &body);
    }

    let (status, body) = call(&lab, "POST", &format!("/api/runs/{id}/cancel"), None).await;
    assert_valid(&doc, "post", "/api/runs/{id}/cancel", status, &body);
    lab.finish(id, server::jobs::queue::Outcome::Stopped).await;
    let (status, body) = call(&lab, "POST", &format!("/api/runs/{id}/clone"), Some(&json!({"beta": 0.2}))).await;
    assert_valid(&doc, "post", "/api/runs/{id}/clone", status, &body);
    let (status, body) = call(&lab, "POST", &format!("/api/runs/{id}/retry"), Some(&json!({"from": "start"}))).await;
    assert_valid(&doc, "post", "/api/runs/{id}/retry", status, &body);

    let sweep = json!({"base": tiny_toy(json!({})), "grid": [{"beta": 0.1}, {"beta": [0.1, 0.2]}]});
    let (status, body) = call(&lab, "POST", "/api/sweeps", Some(&sweep)).await;
    assert_eq!(status, 201, "{body}");
    assert_valid(&doc, "post", "/api/sweeps", status, &body);
    assert_eq!(body["duplicates_dropped"], json!(1), "beta = 0.1 twice runs once: {body}");
    assert_eq!(body["run_ids"].as_array().map(Vec::len), Some(2));
    let (status, body) = call(&lab, "GET", &format!("/api/sweeps/{}", body["id"]), None).await;
    assert_valid(&doc, "get", "/api/sweeps/{id}", status, &body);

    // Errors answer the Error shape.
    let (status, body) = call(&lab, "POST", "/api/runs", Some(&json!({"betaa": 1}))).await;
    assert_eq!(status, 422);
    assert_valid(&doc, "post", "/api/runs", status, &body);
    let (status, body) = call(&lab, "GET", "/api/runs/999999", None).await;
    assert_valid(&doc, "get", "/api/runs/{id}", status, &body);
}
