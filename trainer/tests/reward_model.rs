//! The gold reward model: scores read where transformers reads them, identical to transformers'
//! (with GOODHART_PYTHON), and a dataset run that logs the policy samples' KL, gold reward and
//! length at every evaluation.

mod common;

use candle_core::Device;
use common::{fixtures, run_in_transformers, write_tiny_reward_model};
use serde_json::{json, Value};
use trainer::config::RunConfig;
use trainer::metrics::MemorySink;
use trainer::model::reward::RewardModel;

const FAMILIES: [&str; 3] = ["llama", "qwen2", "gpt_neox"];

#[test]
fn the_score_is_read_at_the_last_non_pad_token_and_padding_changes_nothing() {
    for family in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_reward_model(dir.path(), family, 3);
        let rm = RewardModel::from_hf_dir(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(rm.pad_token_id(), 0);
        let rows = vec![vec![5, 9, 14, 3], vec![7, 8], vec![11, 12, 13, 14, 15, 16, 17]];
        let batched = rm.score_ids(&rows).unwrap();
        for (row, in_batch) in rows.iter().zip(&batched) {
            let alone = rm.score_ids(std::slice::from_ref(row)).unwrap()[0];
            assert!((alone - in_batch).abs() <= 1e-5, "{family}: alone {alone} vs right-padded {in_batch}");
        }
        assert!((batched[0] - batched[1]).abs() > 1e-3, "{family}: different inputs score differently");
        // Trailing pad-id tokens are skipped even when attended (transformers reads the input ids,
        // not the mask); causal attention makes that the score of the row without them.
        let trailing = rm.score_ids(&[vec![7, 8, 0, 0]]).unwrap()[0];
        assert!((trailing - batched[1]).abs() <= 1e-5, "{family}: {trailing} vs {}", batched[1]);
        let real_last: Vec<f32> = rm.score_ids(&[vec![7, 8, 0, 5], vec![7, 8, 0, 33], vec![7, 8, 0, 60]]).unwrap();
        let moved = real_last.iter().map(|s| (s - batched[1]).abs()).fold(0f32, f32::max);
        assert!(moved > 1e-2, "{family}: a real last token is the one read: {real_last:?} vs {}", batched[1]);
        // Text goes through the reward model's own tokenizer, without added special tokens.
        let by_text = rm.score_texts(&["t7 t8".to_string()]).unwrap()[0];
        assert!((by_text - batched[1]).abs() <= 1e-5, "{family}: \"t7 t8\" is [7, 8]");
    }
}

/// Run by `common::run_in_transformers`, which captures the warnings.
const SCORE_IN_TRANSFORMERS: &str = r#"
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast
path, rows, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").float().eval()
    # The fixtures' WordLevel tokenizer as it is: AutoTokenizer would swap in Qwen2's BPE class.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=path + "/tokenizer.json", pad_token="<pad>")
pad = model.config.pad_token_id
width = max(len(r) for r in rows)
ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
with torch.no_grad():
    by_ids = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    by_text = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0].tolist()
print(json.dumps({"ids": by_ids, "texts": by_text, "warnings": [str(w.message) for w in caught] + logged}))
"#;

#[test]
#[ignore = "needs GOODHART_PYTHON: a Python with torch + transformers (see ../shared/bench/peer)"]
fn reward_model_scores_match_transformers_for_every_family() {
    let rows: Vec<Vec<u32>> = vec![vec![1, 39, 57, 54, 7, 19], vec![8, 31], vec![4, 4, 4, 44, 3, 63, 59, 0, 0]];
    let texts: Vec<String> =
        ["<s> t39 t57 t54 t7", "t30 t41", "t4 t4 t4 t44 t3 t63 t59 t27"].map(String::from).to_vec();
    for family in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_reward_model(dir.path(), family, 11);
        let args = [
            dir.path().to_str().unwrap(),
            &serde_json::to_string(&rows).unwrap(),
            &serde_json::to_string(&texts).unwrap(),
        ];
        let theirs = run_in_transformers(SCORE_IN_TRANSFORMERS, &args, family);
        let rm = RewardModel::from_hf_dir(dir.path(), &Device::Cpu).unwrap();
        for (what, ours) in [("ids", rm.score_ids(&rows).unwrap()), ("texts", rm.score_texts(&texts).unwrap())] {
            for (i, x) in ours.iter().enumerate() {
                let y = theirs[what][i].as_f64().unwrap();
                assert!((f64::from(*x) - y).abs() <= 1e-5 * y.abs().max(1.0), "{family} {what} [{i}]: {x} vs {y}");
            }
        }
    }
}

fn dataset_run(overrides: &Value) -> MemorySink {
    let rm = tempfile::tempdir().unwrap();
    write_tiny_reward_model(rm.path(), "llama", 5);
    let mut v = json!({
        "model_name_or_path": fixtures().join("tiny-llama"),
        "dataset_path": fixtures().join("pairs.jsonl"),
        "reward_model_path": rm.path(),
        "learning_rate": 5e-2, "per_device_train_batch_size": 4, "max_steps": 4, "eval_steps": 2,
        "max_new_tokens": 6, "save_steps": 0,
    });
    for (k, val) in overrides.as_object().unwrap() {
        v[k] = val.clone();
    }
    let cfg = RunConfig::from_json_value(v).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    trainer::train::train_with(&cfg, out.path(), false, &mut sink).unwrap();
    sink
}

#[test]
fn a_dataset_run_logs_kl_gold_reward_and_length_of_policy_samples_at_every_evaluation() {
    let sink = dataset_run(&json!({"sync_ref_model": true, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5}));
    for name in [
        "eval/gold_reward",
        "eval/gold_reward_se",
        "eval/kl_init",
        "eval/kl_init_se",
        "eval/kl_ref",
        "eval/kl_ref_se",
        "eval/length",
    ] {
        let steps: Vec<u64> = sink.series(name).iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![0, 2, 4], "{name} at step 0 and every eval_steps");
        assert!(sink.series(name).iter().all(|(_, v)| v.is_finite()), "{name}");
    }
    let kl_init = sink.series("eval/kl_init");
    let kl_ref = sink.series("eval/kl_ref");
    assert!(kl_init[0].1.abs() < 1e-4, "the policy is the initial policy at step 0: {}", kl_init[0].1);
    let se = sink.series("eval/kl_init_se");
    assert!(kl_init[1].1 > 3.0 * se[1].1, "training moved the policy: {kl_init:?} ± {se:?}");
    assert!(kl_ref[1].1 < kl_init[1].1, "the moving reference is closer than the initial policy: {kl_ref:?}");
    assert!(sink.series("eval/gold_reward_se").iter().all(|(_, se)| *se > 0.0));
    let gold = sink.series("eval/gold_reward");
    assert_ne!(gold[0].1, gold[1].1, "the gold reward follows the policy");
    assert!(sink.series("eval/length").iter().all(|(_, l)| (0.0..=6.0).contains(l)));
    // The same run again draws the same samples.
    let again = dataset_run(&json!({"sync_ref_model": true, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5}));
    assert_eq!(again.series("eval/gold_reward"), gold);
}

#[test]
fn held_out_pairs_give_the_implicit_reward_proxies_at_every_evaluation() {
    let sink = dataset_run(&json!({"eval_split_ratio": 0.25}));
    let accuracy = sink.series("eval/rewards/accuracies");
    let margin = sink.series("eval/rewards/margins");
    assert_eq!(accuracy.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_eq!((accuracy[0].1, margin[0].1), (0.0, 0.0), "the policy is its reference at step 0");
    assert!(margin[2].1 != 0.0 && margin[2].1.is_finite(), "training moved the implicit reward: {margin:?}");
    assert!(accuracy.iter().all(|(_, a)| (0.0..=1.0).contains(a)));
    for name in ["eval/rewards/margins_se", "eval/logps/chosen", "eval/logps/rejected"] {
        assert_eq!(sink.series(name).len(), 3, "{name}");
    }
    assert!(sink.series("eval/logps/chosen").iter().all(|(_, l)| *l < 0.0));
    let no_split = dataset_run(&json!({}));
    assert!(no_split.series("eval/rewards/margins").is_empty(), "nothing held out, nothing scored");
}

#[test]
fn without_a_reward_model_the_evaluation_still_measures_kl_and_length() {
    let sink = dataset_run(&json!({"reward_model_path": null}));
    assert_eq!(sink.series("eval/kl_init").len(), 3);
    assert_eq!(sink.series("eval/kl_ref"), sink.series("eval/kl_init"), "vanilla: the reference is π_init");
    assert!(sink.series("eval/gold_reward").is_empty());
}
