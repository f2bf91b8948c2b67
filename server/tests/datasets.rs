//! Datasets through the API: uploads are checked row by row, size-limited, never overwrite and
//! show up in the listing with their format and row count; a run or sweep whose dataset has bad
//! rows is refused with every one of them before anything is queued.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::TestServer;
use serde_json::{json, Value};
use trainer::data::synthetic::{self, LlamaShape, CHATML_TEMPLATE};

const GOOD: &str = r#"{"prompt": "Is water wet?", "chosen": " Yes.", "rejected": " No."}"#;

fn hf_data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/trl-chat/data").join(file)
}

fn chat_row(system: bool) -> Value {
    let mut prompt = vec![json!({"role": "user", "content": "Hi?"})];
    if system {
        prompt.insert(0, json!({"role": "system", "content": "Be terse."}));
    }
    json!({"prompt": prompt, "chosen": [{"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "assistant", "content": "Go away."}]})
}

/// A server whose --models-dir holds `chatml` (a tiny random-init Llama with a ChatML template)
/// and `strict` (a template that refuses system turns), and whose --datasets-dir starts empty.
async fn lab(edit: impl FnOnce(&mut server::lifecycle::ServeConfig)) -> (TestServer, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let texts: Vec<String> = ["Is water wet? Yes. No. Hi? Hello. Go away. Be terse.".to_string()]
        .into_iter()
        .chain(synthetic::texts_of(&synthetic::hh_rows(8, 20, 1)))
        .collect();
    let strict =
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
                  {% for m in messages %}{{ m['content'] }}{% endfor %}";
    synthetic::write_model_dir(&models.join("chatml"), &texts, 400, LlamaShape::TINY, Some(CHATML_TEMPLATE)).unwrap();
    synthetic::write_model_dir(&models.join("strict"), &texts, 400, LlamaShape::TINY, Some(strict)).unwrap();
    let datasets = dir.path().join("datasets");
    std::fs::create_dir_all(&datasets).unwrap();
    let mut config = common::serve_config(dir.path()).await;
    config.models_dir = models;
    config.datasets_dir = datasets.clone();
    edit(&mut config);
    let server = server::lifecycle::start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    (TestServer { server, base, client: reqwest::Client::new(), dir }, datasets)
}

/// A multipart/form-data body by hand: (field, file name, bytes).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "goodhart-test-boundary-5c2e9a";
    let mut body = Vec::new();
    for (name, file_name, bytes) in parts {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = file_name {
            body.extend(format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream").as_bytes());
        }
        body.extend(b"\r\n\r\n");
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(t: &TestServer, parts: &[(&str, Option<&str>, &[u8])]) -> (u16, Value) {
    let (content_type, body) = multipart(parts);
    let r = t.client.post(t.url("/api/datasets")).header("content-type", content_type).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn messages(body: &Value, field: &str) -> Vec<String> {
    body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["field"] == field)
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect()
}

/// Files in the datasets directory, hidden ones (unfinished uploads) included.
fn stored(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_stored_listed_with_format_and_rows_and_never_overwritten() {
    let (t, dir) = lab(|_| {}).await;
    let jsonl = format!("{GOOD}\n{GOOD}\n\n{GOOD}\n");
    let (status, body) = upload(&t, &[("file", Some("pairs.jsonl"), jsonl.as_bytes())]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["format"].as_str(), body["rows"].as_u64()),
        (Some("pairs.jsonl"), Some("jsonl"), Some(3))
    );
    assert_eq!(body["kind"], json!({"type": "preference", "conversational": false}));

    let parquet = std::fs::read(hf_data("hh_raw.parquet")).unwrap();
    let (status, body) = upload(&t, &[("file", Some("hh.parquet"), &parquet)]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["kind"], json!({"type": "implicit_prompt_preference", "conversational": false}));

    // The same name again: refused, and the stored file is untouched.
    let (status, body) = upload(&t, &[("file", Some("pairs.jsonl"), GOOD.as_bytes())]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(std::fs::read_to_string(dir.join("pairs.jsonl")).unwrap(), jsonl);
    assert_eq!(stored(&dir), vec!["hh.parquet", "pairs.jsonl"], "no partial uploads are left behind");

    let (status, list) = t.get("/api/datasets").await;
    assert_eq!(status, 200);
    let list = list["datasets"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        (list[0]["name"].as_str(), list[0]["format"].as_str(), list[0]["rows"].as_u64()),
        (Some("hh.parquet"), Some("parquet"), Some(4))
    );
    assert_eq!(list[0]["description"], "standard preference with implicit prompt {chosen, rejected}");
    assert_eq!((list[1]["name"].as_str(), list[1]["rows"].as_u64()), (Some("pairs.jsonl"), Some(3)));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upload_is_refused_with_every_bad_row_and_not_stored() {
    let (t, dir) = lab(|_| {}).await;
    let text = format!("{GOOD}\n{{\"prompt\": \"p\", \"chosen\": \" c\"}}\n{GOOD}\nnot json\n");
    let (status, body) = upload(&t, &[("file", Some("bad.jsonl"), text.as_bytes())]).await;
    assert_eq!(status, 422, "{body}");
    let found = messages(&body, "file");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("line 2: missing `rejected`"), "{found:?}");
    assert!(found[1].starts_with("line 4: malformed JSON"), "{found:?}");
    assert!(stored(&dir).is_empty(), "{:?}", stored(&dir));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_size_limit_or_with_a_bad_name_are_refused() {
    let (t, dir) = lab(|c| c.max_upload_bytes = 2000).await;
    let big = format!("{GOOD}\n").repeat(100);
    let (status, body) = upload(&t, &[("file", Some("big.jsonl"), big.as_bytes())]).await;
    assert_eq!(status, 413, "{body}");
    for name in ["data.csv", ".hidden.jsonl", "a b.jsonl"] {
        let (status, body) = upload(&t, &[("file", Some(name), GOOD.as_bytes())]).await;
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(messages(&body, "file").len(), 1, "{body}");
    }
    let (status, body) = upload(&t, &[("notes", None, b"hello")]).await;
    assert_eq!((status, messages(&body, "notes").len()), (422, 1), "{body}");
    assert!(stored(&dir).is_empty(), "{:?}", stored(&dir));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversational_upload_is_rendered_with_the_named_models_chat_template() {
    let (t, _dir) = lab(|_| {}).await;
    let rows = format!("{}\n{}\n", chat_row(false), chat_row(true));
    let (status, body) =
        upload(&t, &[("model_name_or_path", None, b"strict"), ("file", Some("chat.jsonl"), rows.as_bytes())]).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(messages(&body, "file"), vec!["line 2: the chat template refused it: System role not supported"]);
    let (status, body) =
        upload(&t, &[("model_name_or_path", None, b"chatml"), ("file", Some("chat.jsonl"), rows.as_bytes())]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["description"], "conversational preference {prompt, chosen, rejected}");
    t.server.stop().await.unwrap();
}

fn run_config(model: &str, dataset: &str) -> Value {
    json!({
        "model_name_or_path": model, "random_init": true, "dataset_path": dataset, "learning_rate": 1e-3,
        "per_device_train_batch_size": 2, "max_steps": 2, "save_steps": 0, "num_threads": 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_sweeps_on_a_dataset_with_bad_rows_are_refused_with_each_row_and_nothing_is_queued() {
    let (t, dir) = lab(|_| {}).await;
    let text =
        format!("{GOOD}\n{{\"prompt\": \"p\", \"chosen\": 3, \"rejected\": \" r\"}}\n{GOOD}\n{{\"prompt\": \"p\"}}\n");
    std::fs::write(dir.join("bad.jsonl"), text).unwrap();
    let (status, body) = t.post("/api/runs", &run_config("chatml", "bad.jsonl")).await;
    assert_eq!(status, 422, "{body}");
    let found = messages(&body, "dataset_path");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("line 2: `chosen` must be a string"), "{found:?}");
    assert!(found[1].starts_with("line 4: expected {prompt, chosen, rejected}"), "{found:?}");

    // A held-out file is checked the same way, and a template refusal counts as a bad row.
    std::fs::write(dir.join("chat.jsonl"), format!("{}\n{}\n", chat_row(false), chat_row(true))).unwrap();
    let mut cfg = run_config("strict", "chat.jsonl");
    let (status, body) = t.post("/api/runs", &cfg).await;
    assert_eq!(
        (status, messages(&body, "dataset_path")),
        (422, vec!["line 2: the chat template refused it: System role not supported".to_string()])
    );
    cfg["model_name_or_path"] = json!("chatml");
    cfg["eval_dataset_path"] = json!("bad.jsonl");
    let (status, body) = t.post("/api/runs", &cfg).await;
    assert_eq!((status, messages(&body, "eval_dataset_path").len()), (422, 2), "{body}");

    // Unpaired (KTO) rows need loss_type "kto".
    std::fs::write(dir.join("kto.jsonl"), "{\"prompt\": \"p\", \"completion\": \" c\", \"label\": true}\n").unwrap();
    let (status, body) = t.post("/api/runs", &run_config("chatml", "kto.jsonl")).await;
    assert_eq!((status, messages(&body, "loss_type").len()), (422, 1), "{body}");

    let sweep = json!({"base": run_config("chatml", "bad.jsonl"), "grid": {"beta": [0.1, 0.2]}});
    let (status, body) = t.post("/api/sweeps", &sweep).await;
    assert_eq!((status, messages(&body, "dataset_path").len()), (422, 2), "{body}");
    let (_, runs) = t.get("/api/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_conversational_dataset_trains_with_held_out_prompts() {
    let (t, _dir) = lab(|_| {}).await;
    let rows: String = (0..6)
        .map(|i| {
            let mut r = chat_row(i % 2 == 0);
            let last = r["prompt"].as_array().unwrap().len() - 1;
            r["prompt"][last]["content"] = json!(format!("Question {i}?"));
            format!("{r}\n")
        })
        .collect();
    let (status, body) = upload(&t, &[("file", Some("chat.jsonl"), rows.as_bytes())]).await;
    assert_eq!(status, 201, "{body}");
    let mut cfg = run_config("chatml", "chat.jsonl");
    cfg["eval_split_ratio"] = json!(0.34);
    let id = t.create_run(&cfg).await;
    let run = t.wait_for_status(id, "finished").await;
    assert_eq!(run["step"], 2, "{run}");
    t.server.stop().await.unwrap();
}
