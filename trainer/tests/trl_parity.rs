//! The trainer computes what TRL 1.16 computes: forward log-probs, collation, every logged
//! metric of every step (within 1e-4 relative, absolute floor 1e-7), and the weights after 4
//! steps (within 1e-5), for all five reference cases in `../shared/reference/trl-parity/`
//! (produced by TRL itself; see its README). `trl_parity_ext.rs` covers the paths past these.

mod common;

use candle_core::Device;
use common::{
    as_f64_rows, as_u32_rows, as_u8_rows, assert_close, assert_metric_close, assert_weights_close, checkpoint_weights,
    fixtures, read_json,
};
use serde_json::{json, Value};
use trainer::config::RunConfig;
use trainer::data::{self, Batch, Collated, TextTokenizer};
use trainer::logps::token_logps;
use trainer::metrics::MemorySink;
use trainer::model::CausalLm;
use trainer::setup::Setup;
use trainer::train::train_with;

fn forward_matches_transformers(model_dir: &str) {
    let dir = fixtures().join(model_dir);
    let (model, params) = CausalLm::from_hf_dir(&dir, &Device::Cpu).unwrap();
    let expected = read_json(&dir.join("forward.json"));
    let batch = Collated {
        input_ids: as_u32_rows(&expected["input_ids"]),
        attention_mask: as_u8_rows(&expected["attention_mask"]),
        completion_mask: as_u8_rows(&expected["completion_mask"]),
    };
    let ours: Vec<Vec<f32>> = token_logps(&model, &params.frozen(), &batch).unwrap().to_vec2().unwrap();
    let theirs = as_f64_rows(&expected["token_logps"]);
    for (r, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for (t, (x, y)) in a.iter().zip(b).enumerate() {
            assert_close(f64::from(*x), *y, 1e-5, 1e-7, &format!("{model_dir} token log-prob [{r}][{t}]"));
        }
        let sum: f64 = a.iter().map(|&v| f64::from(v)).sum();
        assert_close(
            sum,
            expected["completion_logps"][r].as_f64().unwrap(),
            1e-5,
            1e-7,
            &format!("{model_dir} sum [{r}]"),
        );
    }
    // Raw logits of the first sequence, every position (padding included).
    let ids = candle_core::Tensor::new(batch.input_ids[0].as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = vec![batch.attention_mask[0].clone()];
    let input = trainer::model::ForwardInput { input_ids: &ids, attention_mask: Some(&mask), position_ids: None };
    let logits: Vec<Vec<f32>> =
        model.forward(&params.frozen(), input, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    let theirs = as_f64_rows(&expected["logits_first_sequence"]);
    assert_eq!(theirs.len(), logits.len() - 1, "fixture holds logits[:, :-1]");
    for (t, row) in theirs.iter().enumerate() {
        for (v, y) in row.iter().enumerate() {
            let x = f64::from(logits[t][v]);
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{model_dir} logit [{t}][{v}]: {x} vs {y}");
        }
    }
}

#[test]
fn llama_forward_log_probs_match_transformers() {
    forward_matches_transformers("tiny-llama");
}

#[test]
fn qwen2_forward_log_probs_match_transformers() {
    forward_matches_transformers("tiny-qwen2");
}

#[test]
fn gpt_neox_forward_log_probs_match_transformers() {
    forward_matches_transformers("tiny-gpt-neox");
}

const CASES: [&str; 5] = ["dpo", "tr-dpo-soft", "tr-dpo-hard", "tr-ipo-soft", "tr-kto-soft"];

/// The case's TRL config as a Goodhart run config: the same keys, plus our paths.
fn run_config(case: &str) -> RunConfig {
    let expected = read_json(&fixtures().join(case).join("expected.json"));
    let mut cfg = expected["config"].as_object().unwrap().clone();
    if let Some(Value::Array(types)) = cfg.get("loss_type") {
        let first = types[0].clone();
        cfg.insert("loss_type".into(), first);
    }
    let kto = expected["trainer"] == "KTOTrainer";
    if kto {
        cfg.insert("loss_type".into(), json!("kto"));
    }
    cfg.insert("model_name_or_path".into(), json!(fixtures().join("tiny-llama")));
    cfg.insert("dataset_path".into(), json!(fixtures().join(if kto { "kto.jsonl" } else { "pairs.jsonl" })));
    cfg.insert("max_length".into(), Value::Null); // TRL ran with max_length=None
    cfg.insert("save_steps".into(), json!(0));
    // Pinned so the summation order (and so the last bits) does not depend on the machine.
    cfg.insert("num_threads".into(), json!(2));
    RunConfig::from_json_value(Value::Object(cfg)).unwrap_or_else(|e| panic!("{case}: {e:?}"))
}

#[test]
fn the_collated_batch_is_identical_to_trls_for_every_case() {
    let tokenizer = TextTokenizer::from_dir(&fixtures().join("tiny-llama"), None, None).unwrap();
    for case in CASES {
        let cfg = run_config(case);
        let expected = read_json(&fixtures().join(case).join("expected.json"))["collated_batch"].clone();
        let options = data::LoadOptions {
            max_length: None,
            max_prompt_length: None,
            unpaired: cfg.loss_type == trainer::config::LossType::Kto,
            eval_split_ratio: 0.0,
            seed: cfg.seed,
        };
        let loaded = data::load(cfg.dataset_path.as_deref().unwrap(), None, &tokenizer, &options).unwrap();
        let train_data = trainer::setup::dataset_for_loss(loaded.train, &cfg).unwrap();
        let batch = match &train_data {
            trainer::data::Dataset::Paired(p) => {
                data::collate_paired(&p.iter().collect::<Vec<_>>(), tokenizer.pad_token_id)
            }
            trainer::data::Dataset::Unpaired(u) => {
                data::collate_unpaired(&u.iter().collect::<Vec<_>>(), tokenizer.pad_token_id)
            }
        };
        let check = |ours: &Collated, prefix: &str| {
            assert_eq!(
                ours.input_ids,
                as_u32_rows(&expected[format!("{prefix}input_ids")]),
                "{case} {prefix}input_ids"
            );
            assert_eq!(
                ours.attention_mask,
                as_u8_rows(&expected[format!("{prefix}attention_mask")]),
                "{case} {prefix}attention_mask"
            );
            assert_eq!(
                ours.completion_mask,
                as_u8_rows(&expected[format!("{prefix}completion_mask")]),
                "{case} {prefix}completion_mask"
            );
        };
        match &batch {
            Batch::Paired(rows) => check(rows, ""),
            Batch::Unpaired { rows, kl_rows, labels } => {
                check(rows, "");
                check(kl_rows, "KL_");
                assert_eq!(labels.iter().filter(|l| **l).count(), 8);
            }
        }
    }
}

fn every_step_matches_trl(case: &str) {
    let cfg = run_config(case);
    let expected = read_json(&fixtures().join(case).join("expected.json"));
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    let outcome = train_with(&cfg, out.path(), false, &mut sink).unwrap();
    assert_eq!(outcome.global_step, 4);
    let logs = expected["per_step_logs"].as_array().unwrap();
    assert_eq!(sink.steps.len(), logs.len(), "{case}: one logged step per TRL log");
    let mut names = vec![
        "loss",
        "grad_norm",
        "learning_rate",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ];
    if cfg.loss_type == trainer::config::LossType::Kto {
        names.push("kl");
    } else {
        names.push("rewards/accuracies");
    }
    for ((step, ours), theirs) in sink.steps.iter().zip(logs) {
        assert_eq!(*step, theirs["step"].as_u64().unwrap());
        for name in &names {
            let expected = theirs[*name].as_f64().unwrap_or_else(|| panic!("{case}: TRL logged no {name}"));
            let got = *ours.get(*name).unwrap_or_else(|| panic!("{case}: we logged no {name}"));
            assert_metric_close(got, expected, &format!("{case} step {step} {name}"));
        }
    }
    let ckpt = out.path().join("checkpoint-4");
    let (policy, reference) = checkpoint_weights(&ckpt, &cfg, &setup);
    assert_weights_close(&policy, &fixtures().join(case).join("policy_after.safetensors"), &format!("{case} policy"));
    assert_weights_close(
        &reference,
        &fixtures().join(case).join("reference_after.safetensors"),
        &format!("{case} reference"),
    );
}

#[test]
fn dpo_matches_trl_step_by_step() {
    every_step_matches_trl("dpo");
}

#[test]
fn tr_dpo_soft_matches_trl_step_by_step() {
    every_step_matches_trl("tr-dpo-soft");
}

#[test]
fn tr_dpo_hard_matches_trl_step_by_step() {
    every_step_matches_trl("tr-dpo-hard");
}

#[test]
fn tr_ipo_soft_matches_trl_step_by_step() {
    every_step_matches_trl("tr-ipo-soft");
}

#[test]
fn tr_kto_soft_matches_trl_step_by_step() {
    every_step_matches_trl("tr-kto-soft");
}
