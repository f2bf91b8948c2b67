//! `GET /api/models` lists what is under `--models-dir`, and a run config naming a model the
//! trainer cannot use is refused with the reason.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{config, fixtures, spawn_with};
use serde_json::{json, Value};

/// A models directory with the fixture Llama, a reward model and an unsupported architecture.
fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str, config: Option<Value>| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixtures().join("tiny-llama").join(file), to.join(file)).unwrap();
        }
        if let Some(config) = config {
            std::fs::write(to.join("config.json"), config.to_string()).unwrap();
        }
    };
    copy("tiny-llama", None);
    let mut fixture_config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-llama/config.json")).unwrap()).unwrap();
    fixture_config["model_type"] = json!("mistral");
    fixture_config["architectures"] = json!(["MistralForCausalLM"]);
    copy("org/mistral", Some(fixture_config));
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_directory_is_listed_with_architecture_size_dtype_and_what_is_unsupported() {
    let models = models_dir();
    let root = models.path().to_path_buf();
    let t = spawn_with(move |c| c.models_dir = root).await;
    let (status, body) = t.get("/api/models").await;
    assert_eq!(status, 200, "{body}");
    let list = body["models"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["org/mistral", "tiny-llama"]);

    let llama = &list[1];
    // Counted here from config.json's shapes; the server counts the safetensors header.
    let model_config = trainer::model::ModelConfig::from_file(&fixtures().join("tiny-llama/config.json")).unwrap();
    let expected: usize =
        trainer::model::param_specs(&model_config).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(llama["model_type"], "llama");
    assert_eq!(llama["architecture"], "LlamaForCausalLM");
    assert_eq!(llama["kind"], "causal_lm");
    assert_eq!(llama["num_parameters"], json!(expected));
    assert_eq!(llama["dtype"], "float32");
    assert_eq!((llama["supported"].clone(), llama["error"].clone()), (json!(true), Value::Null));

    let mistral = &list[0];
    assert_eq!(mistral["supported"], false);
    let error = mistral["error"].as_str().unwrap();
    assert!(error.contains("unsupported model_type \"mistral\""), "{error}");

    // A run on it is refused at the door, naming the field and the model_type.
    let mut run = config(2, 0);
    run["model_name_or_path"] = json!("org/mistral");
    let (status, body) = t.post("/api/runs", &run).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["fields"][0]["field"], "model_name_or_path");
    assert!(body["fields"][0]["message"].as_str().unwrap().contains("\"mistral\""), "{body}");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reward_model_must_be_a_sequence_classifier_inside_the_models_directory() {
    let t = spawn_with(|_| {}).await;
    for (path, needle) in
        [("tiny-llama", "not a reward model"), ("/etc", "must be inside"), ("no-such-rm", "does not exist")]
    {
        let mut run = config(2, 0);
        run["reward_model_path"] = json!(path);
        let (status, body) = t.post("/api/runs", &run).await;
        assert_eq!(status, 422, "{path}: {body}");
        let fields = body["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 1, "{path}: only the bad field is reported: {body}");
        assert_eq!(fields[0]["field"], "reward_model_path");
        assert!(fields[0]["message"].as_str().unwrap().contains(needle), "{path}: {body}");
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_a_gold_reward_model_logs_kl_gold_reward_and_length_at_every_evaluation() {
    let models = models_dir();
    trainer::data::synthetic::write_reward_model_dir(
        &models.path().join("rm/tiny-llama-rm"),
        "llama",
        7,
        &fixtures().join("tiny-llama"),
    )
    .unwrap();
    let root = models.path().to_path_buf();
    let t = spawn_with(move |c| c.models_dir = root).await;
    let mut run = config(4, 0);
    run["reward_model_path"] = json!("rm/tiny-llama-rm");
    run["eval_steps"] = json!(2);
    run["max_new_tokens"] = json!(5);
    let id = t.create_run(&run).await;
    let finished = t.wait_for_status(id, "finished").await;
    assert_eq!(finished["error"], Value::Null, "{finished}");

    let names = ["eval/gold_reward", "eval/gold_reward_se", "eval/kl_init", "eval/kl_ref", "eval/length"];
    let (status, body) = t.get(&format!("/api/runs/{id}/metrics?names={}", names.join(","))).await;
    assert_eq!(status, 200, "{body}");
    for name in names {
        let points = body["series"][name].as_array().unwrap_or_else(|| panic!("no {name} in {body}"));
        let steps: Vec<i64> = points.iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert_eq!(steps, vec![0, 2, 4], "{name} at step 0, every eval_steps and the last step");
        assert!(points.iter().all(|p| p[1].as_f64().is_some_and(f64::is_finite)), "{name}: {points:?}");
    }
    // The policy starts as the initial policy: its samples' KL to it is zero there, up to the
    // rounding between scoring the samples and sampling them.
    let kl_at_start = body["series"]["eval/kl_init"][0][1].as_f64().unwrap();
    assert!(kl_at_start.abs() < 1e-5, "{kl_at_start}");
    let lengths: Vec<f64> =
        body["series"]["eval/length"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
    assert!(lengths.iter().all(|&l| (1.0..=5.0).contains(&l)), "1 to max_new_tokens tokens: {lengths:?}");
    // The run's summary carries the gold reward too.
    let (_, run_view) = t.get(&format!("/api/runs/{id}")).await;
    assert!(run_view["summary"].to_string().contains("eval/gold_reward"), "{run_view}");
    t.server.stop().await.unwrap();
}
