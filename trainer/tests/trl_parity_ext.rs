//! The trainer computes what TRL 1.16 computes past the happy path: weight-decay groups,
//! schedules with warmup, gradient accumulation's short last group, shuffled multi-epoch order
//! (`data_seed`, `dataloader_drop_last`), KTO's sequential order and unbalanced data,
//! `label_smoothing`, `max_length` truncation and precomputed reference log-probs; each vanilla
//! and with `sync_ref_model` at α = 0.5, τ = 2. The fixtures in `tests/fixtures/trl-parity-ext/`
//! were made by TRL itself (`make_fixtures.py` there), which also records TRL's own drift
//! between 1 and 2 torch threads and the `adam_epsilon` chosen to keep it under a tenth of the
//! tolerances checked here.

mod common;

use std::path::PathBuf;

use candle_core::Device;
use common::{assert_metric_close, assert_weights_close, checkpoint_weights, read_json, WEIGHT_ABS_TOL};
use serde_json::{json, Value};
use trainer::config::RunConfig;
use trainer::data::{BatchSampler, DataCursor};
use trainer::metrics::MemorySink;
use trainer::setup::Setup;
use trainer::train::{total_steps, train_with};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl-parity-ext")
}

/// Every metric both trainers log.
const METRICS: [&str; 11] = [
    "loss",
    "grad_norm",
    "learning_rate",
    "epoch",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "kl",
];

/// The case's config (TRL's keys, Goodhart's names) with its paths resolved.
fn run_config(expected: &Value) -> RunConfig {
    let mut cfg = expected["config"].as_object().expect("a config object").clone();
    for key in ["model_name_or_path", "dataset_path"] {
        let relative = cfg[key].as_str().expect("a relative path").to_string();
        cfg.insert(key.into(), json!(fixtures().join(relative)));
    }
    cfg.insert("save_steps".into(), json!(0));
    cfg.entry("logging_steps").or_insert(json!(1));
    // Pinned so the summation order (and so the last bits) does not depend on the machine.
    cfg.insert("num_threads".into(), json!(2));
    RunConfig::from_json_value(Value::Object(cfg)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// TRL's own drift under the generator's probes (2 threads, rows reversed, gradients and weights
/// nudged by rounding-sized noise), as recorded, is at most a tenth of the tolerances checked here at
/// the learning rate and epsilon the case runs at.
fn assert_trl_drift_is_small(case: &str, expected: &Value) {
    let drift = &expected["drift"];
    let chosen = drift["tried"].as_array().unwrap().last().unwrap();
    assert_eq!(chosen["within_a_tenth"], json!(true), "{case}: {chosen}");
    for probe in ["threads_1_vs_2", "rows_reversed", "gradients_nudged", "weights_nudged", "activations_nudged"] {
        let p = &chosen[probe];
        assert!(p["max_metric_rel_diff"].as_f64().unwrap() <= common::METRIC_REL_TOL / 10.0, "{case} {probe}: {p}");
        assert!(p["max_weight_abs_diff"].as_f64().unwrap() <= f64::from(WEIGHT_ABS_TOL) / 10.0, "{case} {probe}: {p}");
    }
    for key in ["learning_rate", "adam_epsilon"] {
        assert_eq!(expected["config"][key], chosen[key], "{case}: runs at the chosen {key}");
    }
}

fn case_matches_trl(case: &str) {
    let expected = read_json(&fixtures().join(case).join("expected.json"));
    assert_trl_drift_is_small(case, &expected);
    let cfg = run_config(&expected);
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    assert_eq!(setup.data.len() as u64, expected["prepared_rows"].as_u64().unwrap(), "{case}: rows after filtering");

    // The data order: every micro-batch, as TRL's loader gave it.
    let total = total_steps(&cfg, setup.data.len());
    let mut sampler = BatchSampler::for_run(&cfg, setup.data.len(), DataCursor::default());
    let ours: Vec<Vec<usize>> = (0..total).flat_map(|_| sampler.next_step(cfg.gradient_accumulation_steps)).collect();
    let theirs: Vec<Vec<usize>> = serde_json::from_value(expected["batches"].clone()).unwrap();
    assert_eq!(ours, theirs, "{case}: the micro-batches, in order");

    let out = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    let outcome = train_with(&cfg, out.path(), false, &mut sink).unwrap();
    let logs = expected["per_step_logs"].as_array().unwrap();
    assert_eq!(outcome.global_step, logs.last().unwrap()["step"].as_u64().unwrap(), "{case}: TRL's optimizer steps");
    assert_eq!(sink.steps.len(), logs.len(), "{case}: one logged step per TRL log");
    for ((step, ours), theirs) in sink.steps.iter().zip(logs) {
        assert_eq!(*step, theirs["step"].as_u64().unwrap());
        for name in METRICS {
            match (ours.get(name), theirs[name].as_f64()) {
                (Some(&got), Some(want)) => assert_metric_close(got, want, &format!("{case} step {step} {name}")),
                (None, None) => {}
                (got, want) => panic!("{case} step {step} {name}: we logged {got:?}, TRL logged {want:?}"),
            }
        }
    }

    let ckpt = out.path().join(format!("checkpoint-{}", outcome.global_step));
    let (policy, reference) = checkpoint_weights(&ckpt, &cfg, &setup);
    assert_weights_close(&policy, &fixtures().join(case).join("policy_after.safetensors"), &format!("{case} policy"));
    // Vanilla runs too: their reference is TRL's saved one, not just "our initial weights".
    let trl_reference = fixtures().join(case).join("reference_after.safetensors");
    assert_weights_close(&reference, &trl_reference, &format!("{case} reference"));

    // TRL's KTO warns about unbalanced data with recommended weight ranges: so do we, same ranges.
    for theirs in expected["trl_warnings"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let theirs = theirs.as_str().unwrap();
        let ranges: Vec<&str> = theirs
            .match_indices('[')
            .filter_map(|(i, _)| theirs[i..].find(']').map(|j| &theirs[i..=i + j]))
            .filter(|r| r.contains(", "))
            .collect();
        assert_eq!(ranges.len(), 2, "{case}: TRL's warning names two ranges: {theirs}");
        assert!(
            sink.warnings.iter().any(|w| ranges.iter().all(|r| w.contains(r))),
            "{case}: no warning recommends {ranges:?}: {:?}",
            sink.warnings
        );
    }
    for key in expected_warnings(case) {
        assert!(
            sink.warnings.iter().any(|w| w.contains(&format!("`{key}` is ignored"))),
            "{case}: a warning names `{key}`: {:?}",
            sink.warnings
        );
    }
    if expected_warnings(case).is_empty() {
        let unexpected: Vec<&String> = sink.warnings.iter().filter(|w| w.contains("is ignored")).collect();
        assert!(unexpected.is_empty(), "{case}: {unexpected:?}");
    }
}

/// Keys TRL ignores in a case, which the run must name in a warning.
fn expected_warnings(case: &str) -> Vec<&'static str> {
    if case.starts_with("label-smoothing") {
        vec!["label_smoothing"]
    } else if case.starts_with("constant-ignores-warmup") {
        vec!["warmup_steps"]
    } else {
        Vec::new()
    }
}

macro_rules! parity_cases {
    ($($test:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $test() {
                case_matches_trl($case);
            }
        )*

        /// Every case the generator wrote has a test above.
        #[test]
        fn every_fixture_case_is_tested() {
            let tested = [$($case),*];
            for entry in std::fs::read_dir(fixtures()).unwrap() {
                let path = entry.unwrap().path();
                if path.join("expected.json").is_file() {
                    let name = path.file_name().unwrap().to_str().unwrap().to_string();
                    assert!(tested.contains(&name.as_str()), "fixture case {name} has no test");
                }
            }
        }
    };
}

parity_cases! {
    weight_decay_spares_llama_norm_gains => "weight-decay",
    weight_decay_spares_llama_norm_gains_with_tr => "weight-decay-tr",
    weight_decay_spares_qwen2_biases => "weight-decay-qwen2",
    weight_decay_spares_qwen2_biases_with_tr => "weight-decay-qwen2-tr",
    weight_decay_spares_gpt_neox_layer_norms_and_biases => "weight-decay-gpt-neox",
    weight_decay_spares_gpt_neox_layer_norms_and_biases_with_tr => "weight-decay-gpt-neox-tr",
    linear_schedule_warms_up_and_logs_the_rate_it_used => "linear-warmup",
    linear_schedule_warms_up_and_logs_the_rate_it_used_with_tr => "linear-warmup-tr",
    cosine_schedule_warms_up => "cosine-warmup",
    cosine_schedule_warms_up_with_tr => "cosine-warmup-tr",
    constant_with_warmup_warms_up => "constant-with-warmup",
    constant_with_warmup_warms_up_with_tr => "constant-with-warmup-tr",
    constant_ignores_warmup_and_says_so => "constant-ignores-warmup",
    constant_ignores_warmup_and_says_so_with_tr => "constant-ignores-warmup-tr",
    a_warmup_ratio_below_one_is_a_share_of_the_steps => "linear-warmup-ratio",
    a_warmup_ratio_below_one_is_a_share_of_the_steps_with_tr => "linear-warmup-ratio-tr",
    accumulation_takes_the_short_last_group_of_each_epoch => "grad-accum",
    accumulation_takes_the_short_last_group_of_each_epoch_with_tr => "grad-accum-tr",
    epochs_are_shuffled_as_accelerate_shuffles_them => "shuffle-epochs",
    epochs_are_shuffled_as_accelerate_shuffles_them_with_tr => "shuffle-epochs-tr",
    data_seed_and_drop_last_shape_the_order => "drop-last-data-seed",
    data_seed_and_drop_last_shape_the_order_with_tr => "drop-last-data-seed-tr",
    sequential_order_reads_the_file_in_order_every_epoch => "sequential-order",
    kto_reads_epochs_in_file_order => "kto-epochs",
    kto_reads_epochs_in_file_order_with_tr => "kto-epochs-tr",
    kto_weighs_an_unbalanced_dataset_and_averages_only_batches_with_each_label => "kto-unbalanced-weights",
    kto_weighs_an_unbalanced_dataset_and_averages_only_batches_with_each_label_with_tr => "kto-unbalanced-weights-tr",
    a_logging_window_averages_only_the_micro_batches_that_had_each_label => "kto-logging-window",
    a_logging_window_averages_only_the_micro_batches_that_had_each_label_with_tr => "kto-logging-window-tr",
    sigmoid_ignores_label_smoothing => "label-smoothing-sigmoid",
    sigmoid_ignores_label_smoothing_with_tr => "label-smoothing-sigmoid-tr",
    ipo_ignores_label_smoothing => "label-smoothing-ipo",
    ipo_ignores_label_smoothing_with_tr => "label-smoothing-ipo-tr",
    max_length_truncates_and_drops_a_prompt_that_fills_it => "max-length",
    max_length_truncates_and_drops_a_prompt_that_fills_it_with_tr => "max-length-tr",
    kto_max_length_truncates_both_rows_and_drops_a_prompt_that_fills_it => "max-length-kto",
    kto_max_length_truncates_both_rows_and_drops_a_prompt_that_fills_it_with_tr => "max-length-kto-tr",
    precomputed_reference_log_probs_follow_the_shuffled_order => "precompute-ref",
    kto_precomputed_reference_log_probs => "precompute-ref-kto",
}
