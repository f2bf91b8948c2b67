//! `goodhart train` as a user runs it: a TOML or JSON config in, metrics.jsonl and HF-layout
//! checkpoints out; a bad config exits non-zero naming the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity")
}

fn goodhart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_goodhart")).args(args).output().unwrap()
}

fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let f = fixtures();
    let text = format!(
        "model_name_or_path = {:?}\ndataset_path = {:?}\nlearning_rate = 1e-3\nmax_steps = 4\n\
         per_device_train_batch_size = 4\nsave_steps = 2\nsync_ref_model = true\nref_model_sync_steps = 2\n{extra}",
        f.join("tiny-llama"),
        f.join("pairs.jsonl")
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn metric_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn train_writes_one_metrics_line_per_step_and_hf_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", "");
    let out = dir.path().join("out");
    let res = goodhart(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let lines = metric_lines(&out);
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    for name in [
        "loss",
        "grad_norm",
        "learning_rate",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(lines[0][name].is_number(), "metrics.jsonl lacks {name}");
    }
    for step in [2, 4] {
        let ck = out.join(format!("checkpoint-{step}"));
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "generation_config.json",
            "trainer_state.json",
            "optimizer.safetensors",
            "reference.safetensors",
        ] {
            assert!(ck.join(file).is_file(), "checkpoint-{step} lacks {file}");
        }
    }
}

#[test]
fn a_json_config_works_like_a_toml_one_and_resume_continues_after_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let json = serde_json::json!({
        "model_name_or_path": f.join("tiny-llama"), "dataset_path": f.join("pairs.jsonl"),
        "learning_rate": 1e-3, "max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 2,
        "sync_ref_model": true, "ref_model_sync_steps": 2,
    });
    let cfg = dir.path().join("run.json");
    std::fs::write(&cfg, json.to_string()).unwrap();
    let toml_cfg = write_config(dir.path(), "run.toml", "");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(goodhart(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", a.to_str().unwrap()])
        .status
        .success());
    assert!(goodhart(&["train", "--config", toml_cfg.to_str().unwrap(), "--output-dir", b.to_str().unwrap()])
        .status
        .success());
    assert_eq!(std::fs::read(a.join("metrics.jsonl")).unwrap(), std::fs::read(b.join("metrics.jsonl")).unwrap());

    // Simulate a crash after step 3: the newest checkpoint is step 2 and the log has a stray line.
    std::fs::remove_dir_all(a.join("checkpoint-4")).unwrap();
    let mut partial: Vec<String> =
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().take(3).map(String::from).collect();
    partial.push(String::new());
    std::fs::write(a.join("metrics.jsonl"), partial.join("\n")).unwrap();
    let res = goodhart(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", a.to_str().unwrap(), "--resume"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(
        std::fs::read(a.join("metrics.jsonl")).unwrap(),
        std::fs::read(b.join("metrics.jsonl")).unwrap(),
        "each step exactly once, same values"
    );
}

#[test]
fn a_bad_config_exits_non_zero_naming_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "bad.toml", "beta = -1.0\nref_model_mixup_alpha = 2.0\n");
    let res =
        goodhart(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", dir.path().join("o").to_str().unwrap()]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("`beta`: must be > 0") && err.contains("`ref_model_mixup_alpha`: must be in [0, 1]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let cfg = write_config(dir.path(), "unknown.toml", "betta = 0.1\n");
    let err = String::from_utf8_lossy(&goodhart(&["train", "--config", cfg.to_str().unwrap()]).stderr).to_string();
    assert!(err.contains("`betta`") && err.contains("unknown field"), "{err}");

    let missing = goodhart(&["train", "--config", "/nonexistent/run.toml"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/run.toml"));
}

#[test]
fn export_dtype_on_the_command_line_writes_bfloat16_checkpoints_and_the_memory_estimate_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", "");
    let out = dir.path().join("out");
    let res = goodhart(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--export-dtype",
        "bfloat16",
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("memory estimate:") && stderr.contains("Adam moments"), "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint-4/config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let bad = goodhart(&["train", "--config", cfg.to_str().unwrap(), "--export-dtype", "fp8"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bfloat16"), "the allowed values are named");
}

#[test]
fn a_run_too_large_for_this_machine_is_refused_before_loading_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("huge");
    std::fs::create_dir_all(&model).unwrap();
    // A config for ~400 billion parameters; the weights file is a stand-in that is never read.
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 16384,
        "intermediate_size": 65536, "num_hidden_layers": 100, "num_attention_heads": 128, "eos_token_id": 2,
    });
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-llama").join(file), model.join(file)).unwrap();
    }
    let cfg = dir.path().join("run.toml");
    let text =
        format!("model_name_or_path = {model:?}\ndataset_path = {:?}\nmax_steps = 1\n", fixtures().join("pairs.jsonl"));
    std::fs::write(&cfg, text).unwrap();
    let res =
        goodhart(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", dir.path().join("o").to_str().unwrap()]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    // More than all of this machine's memory: refused with the config, naming the model and the plan.
    assert!(err.contains("`model_name_or_path`: the model needs at least"), "{err}");
    assert!(err.contains("Adam moments") && err.contains("of memory"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_dataset_with_bad_rows_exits_non_zero_listing_every_one_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    let good = r#"{"prompt": "t3", "chosen": " t4", "rejected": " t5"}"#;
    std::fs::write(&data, format!("{good}\n{{\"prompt\": \"t3\"}}\n{good}\nnot json\n")).unwrap();
    let cfg = dir.path().join("run.toml");
    let text = format!(
        "model_name_or_path = {:?}\ndataset_path = {data:?}\nmax_steps = 2\nsave_steps = 1\n",
        fixtures().join("tiny-llama")
    );
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("o");
    let res = goodhart(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("bad.jsonl: 2 bad row(s)"), "{err}");
    assert!(err.contains("line 2: expected {prompt, chosen, rejected}"), "{err}");
    assert!(err.contains("line 4: malformed JSON"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.join("checkpoint-1").exists(), "nothing was trained");
}
