//! The loop's guarantees: determinism, exact resume, gradient accumulation, and clear errors
//! for bad data and for a diverging run.

mod common;

use std::path::Path;

use candle_core::Device;
use common::fixtures;
use serde_json::{json, Value};
use trainer::config::RunConfig;
use trainer::metrics::{JsonlSink, MemorySink, MetricSink, Metrics};
use trainer::model::ParamSet;
use trainer::setup::Setup;
use trainer::train::train_with;
use trainer::Error;

fn config(overrides: Value) -> RunConfig {
    let mut v = json!({
        "model_name_or_path": fixtures().join("tiny-llama"),
        "dataset_path": fixtures().join("pairs.jsonl"),
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "max_steps": 6,
        "save_steps": 0,
        "seed": 3,
    });
    let Value::Object(overrides) = overrides else { panic!("overrides are a JSON object") };
    for (k, val) in overrides {
        v[k] = val;
    }
    RunConfig::from_json_value(v).unwrap()
}

/// Records like [`MemorySink`] and asks to stop once `stop_at` steps are done.
struct StopAfter {
    inner: MemorySink,
    stop_at: u64,
    done: u64,
}

impl MetricSink for StopAfter {
    fn log(&mut self, step: u64, metrics: &Metrics) -> trainer::Result<()> {
        self.inner.log(step, metrics)
    }
    fn progress(&mut self, step: u64, _total: u64) {
        self.done = step;
    }
    fn should_stop(&mut self) -> bool {
        self.done >= self.stop_at
    }
}

fn weights(dir: &Path, file: &str, setup: &Setup) -> ParamSet {
    ParamSet::load_safetensors(&dir.join(file), &setup.model.config, &Device::Cpu).unwrap()
}

#[test]
fn the_same_config_and_seed_give_an_identical_metrics_file() {
    let cfg = config(json!({"sync_ref_model": true, "ref_model_sync_steps": 2, "gradient_accumulation_steps": 2}));
    let files: Vec<String> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let mut sink = JsonlSink::create(&dir.path().join("metrics.jsonl")).unwrap();
            train_with(&cfg, dir.path(), false, &mut sink).unwrap();
            std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap()
        })
        .collect();
    assert_eq!(files[0].lines().count(), 6);
    assert_eq!(files[0], files[1]);
    let losses = |seed: u64| {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = MemorySink::default();
        train_with(&config(json!({"seed": seed})), dir.path(), false, &mut sink).unwrap();
        sink.series("loss")
    };
    assert_ne!(losses(3), losses(4), "another seed shuffles the data differently");
}

#[test]
fn a_run_stopped_at_step_k_and_resumed_matches_an_uninterrupted_run() {
    // Shuffled batches, accumulation, warmup + linear decay, a reference moving every 2 steps.
    let cfg = config(json!({
        "gradient_accumulation_steps": 2, "per_device_train_batch_size": 2, "max_steps": 7,
        "warmup_steps": 2, "lr_scheduler_type": "linear", "sync_ref_model": true,
        "ref_model_mixup_alpha": 0.5, "ref_model_sync_steps": 2, "logging_steps": 2,
    }));
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();

    let whole = tempfile::tempdir().unwrap();
    let mut uninterrupted = MemorySink::default();
    train_with(&cfg, whole.path(), false, &mut uninterrupted).unwrap();

    let split = tempfile::tempdir().unwrap();
    let mut first = StopAfter { inner: MemorySink::default(), stop_at: 3, done: 0 };
    let stopped = train_with(&cfg, split.path(), false, &mut first).unwrap();
    assert!(stopped.stopped_early);
    assert_eq!(stopped.global_step, 3);
    let mut second = first.inner.clone();
    let resumed = train_with(&cfg, split.path(), true, &mut second).unwrap();
    assert_eq!(resumed.global_step, 7);

    assert_eq!(second.steps, uninterrupted.steps, "metrics, including the window open at step 3");
    let (a, b) = (whole.path().join("checkpoint-7"), split.path().join("checkpoint-7"));
    for file in ["model.safetensors", "reference.safetensors"] {
        assert_eq!(weights(&a, file, &setup).max_abs_diff(&weights(&b, file, &setup)).unwrap(), 0.0, "{file}");
    }
}

#[test]
fn gradient_accumulation_of_two_halves_equals_one_full_batch() {
    let full = config(json!({"per_device_train_batch_size": 8, "max_steps": 3, "max_grad_norm": 0.0}));
    let halves = config(
        json!({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": 3, "max_grad_norm": 0.0}),
    );
    let setup = Setup::from_dataset(&full, &Device::Cpu).unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut s1, mut s2) = (MemorySink::default(), MemorySink::default());
    train_with(&full, d1.path(), false, &mut s1).unwrap();
    train_with(&halves, d2.path(), false, &mut s2).unwrap();
    for ((_, a), (_, b)) in s1.series("loss").iter().zip(s2.series("loss")) {
        assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
    }
    let ck = |d: &Path| weights(&d.join("checkpoint-3"), "model.safetensors", &setup);
    assert!(ck(d1.path()).max_abs_diff(&ck(d2.path())).unwrap() < 1e-5);
}

#[test]
fn splitting_the_batch_over_worker_threads_changes_nothing_but_rounding() {
    // Three workers split a batch of 8 unevenly, on any machine (two cores included).
    trainer::workers::set_max_threads(3);
    for loss_type in ["sigmoid", "ipo", "kto"] {
        let runs: Vec<MemorySink> = [1, 3]
            .iter()
            .map(|threads| {
                let cfg = config(json!({"num_threads": threads, "per_device_train_batch_size": 8, "max_steps": 3,
                                        "loss_type": loss_type, "sync_ref_model": true, "ref_model_sync_steps": 1}));
                let dir = tempfile::tempdir().unwrap();
                let mut sink = MemorySink::default();
                train_with(&cfg, dir.path(), false, &mut sink).unwrap();
                sink
            })
            .collect();
        for ((_, a), (_, b)) in runs[0].steps.iter().zip(&runs[1].steps) {
            for (name, x) in a {
                let y = b[name];
                assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{loss_type} {name}: 1 thread {x} vs 3 threads {y}");
            }
        }
    }
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let cfg = config(json!({"learning_rate": 1e30, "max_steps": 6, "save_steps": 1, "max_grad_norm": 0.0}));
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    let err = train_with(&cfg, dir.path(), false, &mut sink).unwrap_err();
    let Error::NonFinite { step, .. } = err else { panic!("expected a non-finite error, got {err}") };
    assert!(step >= 2, "step {step}");
    assert!(err.to_string().contains(&format!("step {step}")), "{err}");
    let last_good = dir.path().join(format!("checkpoint-{}", step - 1));
    assert!(last_good.join("model.safetensors").is_file(), "checkpoint of step {} is kept", step - 1);
    assert!(!dir.path().join(format!("checkpoint-{step}")).exists());
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    weights(&last_good, "model.safetensors", &setup); // loads
}

fn dataset_error(contents: &str, loss_type: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    std::fs::write(&path, contents).unwrap();
    let cfg = config(json!({"dataset_path": path, "loss_type": loss_type}));
    let err = train_with(&cfg, dir.path(), false, &mut MemorySink::default()).unwrap_err();
    err.to_string()
}

#[test]
fn a_malformed_jsonl_line_is_reported_with_its_line_number() {
    let good = r#"{"prompt": "t3", "chosen": " t4", "rejected": " t5"}"#;
    let msg = dataset_error(&format!("{good}\n{good}\n{{\"prompt\": \"t3\", \"chosen\": \n"), "sigmoid");
    assert!(msg.contains("data.jsonl") && msg.contains("line 3: malformed JSON"), "{msg}");
    let msg = dataset_error(&format!("{good}\n{{\"prompt\": \"t3\", \"chosen\": \" t4\"}}\n"), "sigmoid");
    assert!(msg.contains("data.jsonl") && msg.contains("line 2: missing `rejected`"), "{msg}");
}

#[test]
fn kto_data_without_labels_is_rejected_with_its_line_number() {
    let msg = dataset_error("{\"prompt\": \"t3\", \"completion\": \" t4\", \"label\": true}\n{\"prompt\": \"t3\", \"completion\": \" t5\"}\n", "kto");
    assert!(msg.contains("data.jsonl") && msg.contains("line 2: missing `label`"), "{msg}");
}

#[test]
fn dpo_refuses_unpaired_data_naming_loss_type() {
    let msg = dataset_error("{\"prompt\": \"t3\", \"completion\": \" t4\", \"label\": true}\n", "sigmoid");
    assert!(msg.contains("`loss_type`") && msg.contains("paired"), "{msg}");
}

#[test]
fn precomputed_reference_log_probs_give_exactly_the_losses_of_a_reference_forward_per_step() {
    for loss_type in ["sigmoid", "ipo", "kto"] {
        let run = |precompute: bool| {
            let cfg = config(json!({"loss_type": loss_type, "precompute_ref_log_probs": precompute,
                                    "per_device_train_batch_size": 4, "max_steps": 5}));
            let dir = tempfile::tempdir().unwrap();
            let mut sink = MemorySink::default();
            train_with(&cfg, dir.path(), false, &mut sink).unwrap();
            let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
            (sink, weights(&dir.path().join("checkpoint-5"), "model.safetensors", &setup))
        };
        let ((every_step, a), (precomputed, b)) = (run(false), run(true));
        assert_eq!(every_step.series("loss").len(), 5);
        assert_eq!(precomputed.steps, every_step.steps, "{loss_type}: every logged metric of every step");
        assert_eq!(a.max_abs_diff(&b).unwrap(), 0.0, "{loss_type}: the trained weights");
    }
}

#[test]
fn a_trust_region_reference_shares_the_initial_weights_until_its_first_update() {
    let cfg = config(json!({"sync_ref_model": true, "ref_model_sync_steps": 3, "ref_model_mixup_alpha": 0.5,
                            "max_steps": 5, "save_steps": 1}));
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    let whole = tempfile::tempdir().unwrap();
    let mut uninterrupted = MemorySink::default();
    train_with(&cfg, whole.path(), false, &mut uninterrupted).unwrap();
    for step in 1..=5 {
        let has_copy = whole.path().join(format!("checkpoint-{step}/reference.safetensors")).is_file();
        assert_eq!(has_copy, step >= 3, "step {step}: a reference copy exists only once it has moved");
    }
    // Resuming before the first update (no copy in the checkpoint) continues exactly.
    let split = tempfile::tempdir().unwrap();
    let mut first = StopAfter { inner: MemorySink::default(), stop_at: 2, done: 0 };
    train_with(&cfg, split.path(), false, &mut first).unwrap();
    let mut second = first.inner.clone();
    train_with(&cfg, split.path(), true, &mut second).unwrap();
    assert_eq!(second.steps, uninterrupted.steps);
    let (a, b) = (whole.path().join("checkpoint-5"), split.path().join("checkpoint-5"));
    for file in ["model.safetensors", "reference.safetensors"] {
        assert_eq!(weights(&a, file, &setup).max_abs_diff(&weights(&b, file, &setup)).unwrap(), 0.0, "{file}");
    }
    // A vanilla run cannot resume a checkpoint whose reference has moved.
    let vanilla = config(json!({"max_steps": 5, "save_steps": 1}));
    let err = train_with(&vanilla, whole.path(), true, &mut MemorySink::default()).unwrap_err();
    assert!(err.to_string().contains("sync_ref_model"), "{err}");
}

#[test]
fn a_narrower_export_keeps_float32_weights_for_an_exact_resume() {
    let cfg = config(json!({"export_dtype": "bfloat16", "max_steps": 4, "save_steps": 2}));
    let whole = tempfile::tempdir().unwrap();
    let mut uninterrupted = MemorySink::default();
    train_with(&cfg, whole.path(), false, &mut uninterrupted).unwrap();
    let ckpt = whole.path().join("checkpoint-2");
    let exported = candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(exported.values().all(|t| t.dtype() == candle_core::DType::BF16));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["torch_dtype"].as_str(), config["dtype"].as_str()), (Some("bfloat16"), Some("bfloat16")));
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(ckpt.join(file).is_file(), "{file}");
    }
    let split = tempfile::tempdir().unwrap();
    let mut first = StopAfter { inner: MemorySink::default(), stop_at: 2, done: 0 };
    train_with(&cfg, split.path(), false, &mut first).unwrap();
    let mut second = first.inner.clone();
    train_with(&cfg, split.path(), true, &mut second).unwrap();
    assert_eq!(second.steps, uninterrupted.steps, "resumed from the float32 weights, not the bfloat16 export");
}

#[test]
fn bf16_and_fp16_runs_follow_the_float32_run_within_their_precision() {
    let base = json!({"sync_ref_model": true, "ref_model_sync_steps": 2, "max_steps": 6});
    let run = |overrides: Value| {
        let mut cfg = base.clone();
        for (k, v) in overrides.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let cfg = config(cfg);
        let dir = tempfile::tempdir().unwrap();
        let mut sink = MemorySink::default();
        train_with(&cfg, dir.path(), false, &mut sink).unwrap();
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("checkpoint-6").join("trainer_state.json")).unwrap(),
        )
        .unwrap();
        (sink, state)
    };
    let (exact, exact_state) = run(json!({}));
    assert!(exact_state.get("loss_scaler").is_none(), "only float16 runs keep a loss scale");
    for (key, tolerance) in [("bf16", 5e-2), ("fp16", 1e-2)] {
        let (mixed, state) = run(json!({ key: true }));
        for name in ["loss", "rewards/margins", "logps/chosen"] {
            let (a, b) = (exact.series(name), mixed.series(name));
            assert_eq!(a.len(), 6, "{key}: {name} logged every step");
            for ((step, x), (_, y)) in a.iter().zip(&b) {
                let scale = x.abs().max(0.1);
                assert!((x - y).abs() <= tolerance * scale, "{key} step {step} {name}: float32 {x} vs {y}");
            }
        }
        // The policy moved away from the float32 trajectory by rounding only, not by skipping steps.
        assert_eq!(mixed.series("grad_norm").len(), 6, "{key}: every step updated the policy");
        if key == "fp16" {
            assert_eq!(mixed.series("loss_scale").last().unwrap().1, 65_536.0);
            assert_eq!(state["loss_scaler"]["scale"], json!(65_536.0), "the checkpoint keeps the loss scale");
        } else {
            assert!(mixed.series("loss_scale").is_empty());
        }
    }
}

#[test]
fn bf16_and_fp16_together_are_refused_naming_fp16() {
    let mut v =
        json!({"model_name_or_path": fixtures().join("tiny-llama"), "dataset_path": fixtures().join("pairs.jsonl")});
    v["bf16"] = json!(true);
    v["fp16"] = json!(true);
    let errors = RunConfig::from_json_value(v).unwrap_err();
    assert!(errors.iter().any(|e| e.field == "fp16"), "{errors:?}");
}

#[test]
fn gradient_checkpointing_changes_nothing_but_rounding_for_every_loss() {
    for loss_type in ["sigmoid", "ipo", "kto"] {
        let runs: Vec<(MemorySink, ParamSet)> = [false, true]
            .iter()
            .map(|&checkpointing| {
                let cfg = config(json!({"gradient_checkpointing": checkpointing, "loss_type": loss_type,
                                        "num_threads": 2, "max_steps": 3, "sync_ref_model": true,
                                        "ref_model_sync_steps": 1}));
                let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let mut sink = MemorySink::default();
                train_with(&cfg, dir.path(), false, &mut sink).unwrap();
                (sink, weights(&dir.path().join("checkpoint-3"), "model.safetensors", &setup))
            })
            .collect();
        let ((plain, plain_weights), (checkpointed, checkpointed_weights)) = (&runs[0], &runs[1]);
        assert_eq!(plain.steps.len(), checkpointed.steps.len());
        for ((_, a), (_, b)) in plain.steps.iter().zip(&checkpointed.steps) {
            for (name, x) in a {
                let y = b[name];
                assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{loss_type} {name}: {x} vs {y} checkpointed");
            }
        }
        let moved = plain_weights.max_abs_diff(checkpointed_weights).unwrap();
        assert!(moved <= 1e-5, "{loss_type}: the weights differ by {moved} after 3 steps");
    }
}

#[test]
fn an_fp16_step_whose_gradients_overflow_is_skipped_and_the_loss_scale_halves() {
    let cfg = config(json!({"fp16": true, "max_steps": 4, "save_steps": 2}));
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first = StopAfter { inner: MemorySink::default(), stop_at: 2, done: 0 };
    train_with(&cfg, dir.path(), false, &mut first).unwrap();
    // A scale no float16 gradient survives: the next steps must be skipped, not trained on.
    let state_file = dir.path().join("checkpoint-2").join("trainer_state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state["loss_scaler"]["scale"], json!(65_536.0));
    state["loss_scaler"]["scale"] = json!(1e30);
    std::fs::write(&state_file, state.to_string()).unwrap();

    let mut sink = MemorySink::default();
    let outcome = train_with(&cfg, dir.path(), true, &mut sink).unwrap();
    assert_eq!(outcome.global_step, 4, "skipped steps still count");
    let before = weights(&dir.path().join("checkpoint-2"), "model.safetensors", &setup);
    let after = weights(&dir.path().join("checkpoint-4"), "model.safetensors", &setup);
    assert_eq!(before.max_abs_diff(&after).unwrap(), 0.0, "no update from overflowed gradients");
    assert!(sink.series("grad_norm").is_empty(), "an overflowed step logs no gradient norm");
    let scales: Vec<f64> = sink.series("loss_scale").iter().map(|(_, s)| *s).collect();
    assert_eq!(scales, vec![5e29, 2.5e29], "halved at each skipped step");
    assert!(sink.series("loss").iter().all(|(_, l)| l.is_finite()), "the forward pass did not overflow");
}

#[test]
fn an_fp16_run_resumes_bit_exactly_from_a_checkpoint_written_after_a_skipped_step() {
    let cfg = config(json!({
        "fp16": true, "max_steps": 10, "save_steps": 1, "lr_scheduler_type": "linear", "per_device_train_batch_size": 2,
    }));
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first = StopAfter { inner: MemorySink::default(), stop_at: 2, done: 0 };
    train_with(&cfg, dir.path(), false, &mut first).unwrap();
    // A loss scale that float16 gradients overflow at: steps are skipped, halving it, until it
    // is small enough again, as happens at the start of real fp16 runs.
    let state_file = dir.path().join("checkpoint-2").join("trainer_state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    state["loss_scaler"]["scale"] = json!(f64::from(1u32 << 24));
    std::fs::write(&state_file, state.to_string()).unwrap();

    let mut whole = first.inner.clone();
    train_with(&cfg, dir.path(), true, &mut whole).unwrap();
    let skipped: Vec<u64> = whole.steps.iter().filter(|(_, m)| !m.contains_key("grad_norm")).map(|(s, _)| *s).collect();
    let last_skipped = *skipped.last().expect("some steps overflowed");
    assert_eq!(skipped[0], 3);
    assert!(last_skipped < 10, "training went on after the skips: {skipped:?}");
    // The schedule does not advance on a skipped step: it logs the rate the next good step uses.
    let lr = |step: u64| whole.steps.iter().find(|(s, _)| *s == step).unwrap().1["learning_rate"];
    for &s in &skipped {
        assert_eq!(lr(s), lr(last_skipped + 1), "step {s}");
    }
    assert!(lr(last_skipped + 1) < lr(2), "it did advance on the good steps before");
    let uninterrupted = weights(&dir.path().join("checkpoint-10"), "model.safetensors", &setup);
    let optimizer = std::fs::read(dir.path().join("checkpoint-10").join("optimizer.safetensors")).unwrap();

    // Crash right after the last skipped step: resume from its checkpoint.
    for step in last_skipped + 1..=10 {
        std::fs::remove_dir_all(dir.path().join(format!("checkpoint-{step}"))).unwrap();
    }
    let mut resumed = whole.clone();
    let outcome = train_with(&cfg, dir.path(), true, &mut resumed).unwrap();
    assert_eq!(outcome.global_step, 10);
    assert_eq!(resumed.steps, whole.steps, "every metric, bit for bit");
    let again = weights(&dir.path().join("checkpoint-10"), "model.safetensors", &setup);
    assert_eq!(again.max_abs_diff(&uninterrupted).unwrap(), 0.0, "the weights, bit for bit");
    let optimizer_again = std::fs::read(dir.path().join("checkpoint-10").join("optimizer.safetensors")).unwrap();
    assert!(optimizer_again == optimizer, "AdamW's moments and step, bit for bit");
}

/// Records like [`MemorySink`] and asks to stop once it has heard `after` of π_init's SFT steps.
struct StopDuringSft {
    inner: MemorySink,
    after: usize,
}

impl MetricSink for StopDuringSft {
    fn log(&mut self, step: u64, metrics: &Metrics) -> trainer::Result<()> {
        self.inner.log(step, metrics)
    }
    fn sft(&mut self, step: u64, max_steps: u64, metrics: &Metrics) -> trainer::Result<()> {
        self.inner.sft(step, max_steps, metrics)
    }
    fn should_stop(&mut self) -> bool {
        self.inner.sft.len() >= self.after
    }
}

#[test]
fn a_stop_while_pi_init_trains_ends_the_run_within_one_sft_step_and_caches_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_json_value(json!({
        "task": "toy-tree",
        "toy_num_prompts": 3, "toy_alphabet_size": 3, "toy_response_length": 3,
        "toy_hidden_size": 16, "toy_num_layers": 1, "toy_num_heads": 2, "toy_pairs_per_prompt": 4,
        "max_steps": 10, "eval_steps": 5, "num_threads": 1, "toy_cache_dir": cache.path(),
    }))
    .unwrap();
    let mut stopped = StopDuringSft { inner: MemorySink::default(), after: 3 };
    let outcome = train_with(&cfg, out.path(), false, &mut stopped).unwrap();
    assert!(outcome.stopped_early, "a stop during SFT is a stopped run, not a failed one: {outcome:?}");
    assert_eq!((outcome.global_step, outcome.last_checkpoint), (0, None));
    assert_eq!(stopped.inner.sft.len(), 3, "SFT stopped at the step after the request");
    assert!(stopped.inner.steps.is_empty(), "no evaluation and no training step");
    assert!(trainer::checkpoint::steps(out.path()).unwrap().is_empty());
    let cached = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors"))
        .count();
    assert_eq!(cached, 0, "half-trained weights are not cached as π_init");

    // The run resumed (a requeued run after a shutdown) builds π_init in full and trains.
    let mut again = MemorySink::default();
    let outcome = train_with(&cfg, out.path(), true, &mut again).unwrap();
    assert!(!outcome.stopped_early && outcome.global_step == 10, "{outcome:?}");
    assert!(again.sft.len() > 3, "SFT ran to its end: {} steps", again.sft.len());
}
