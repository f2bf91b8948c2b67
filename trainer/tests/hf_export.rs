//! A checkpoint written by the trainer loads in HF `transformers` without a warning, in the
//! exported dtype, with its tokenizer and generation config, and gives the same logits.
//!
//! Needs a Python with torch and transformers, named by `GOODHART_PYTHON` (for example the
//! venv that `../shared/bench/peer/run_all.sh` creates). Without one the test is reported as
//! ignored, with the reason, rather than passing silently; `.ci/run` runs it when the variable
//! is set.

mod common;

use candle_core::{Device, Tensor};
use common::{fixtures, run_in_transformers};
use serde_json::json;
use trainer::config::RunConfig;
use trainer::metrics::MemorySink;
use trainer::model::{CausalLm, ForwardInput};

/// Run by `common::run_in_transformers`, which captures the warnings.
const LOAD_AND_RUN: &str = r#"
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast
ckpt, ids = sys.argv[1], json.loads(sys.argv[2])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="eager").eval()
    generation = GenerationConfig.from_pretrained(ckpt)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(ckpt)
loaded_dtype = str(model.dtype).removeprefix("torch.")
with torch.no_grad():
    logits = model.float()(input_ids=torch.tensor(ids)).logits
print(json.dumps({
    "logits": logits.tolist(),
    "dtype": loaded_dtype,
    "eos_token_id": generation.eos_token_id,
    "tokenized": tokenizer("t39 t57 t54")["input_ids"],
    "warnings": [str(w.message) for w in caught] + logged,
}))
"#;

#[test]
#[ignore = "needs GOODHART_PYTHON: a Python with torch + transformers (see ../shared/bench/peer)"]
fn trained_checkpoints_load_in_transformers_with_the_same_logits() {
    for arch in ["tiny-llama", "tiny-qwen2", "tiny-gpt-neox"] {
        for export_dtype in ["float32", "bfloat16"] {
            check_export(arch, export_dtype);
        }
    }
}

fn check_export(arch: &str, export_dtype: &str) {
    let what = format!("{arch} exported as {export_dtype}");
    let cfg = RunConfig::from_json_value(json!({
        "model_name_or_path": fixtures().join(arch),
        "dataset_path": fixtures().join("pairs.jsonl"),
        "learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 8,
        "sync_ref_model": true, "ref_model_sync_steps": 1, "export_dtype": export_dtype,
    }))
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    trainer::train::train_with(&cfg, out.path(), false, &mut MemorySink::default()).unwrap();
    let ckpt = out.path().join("checkpoint-2");
    for file in
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    {
        assert!(ckpt.join(file).is_file(), "{what}: {file} is missing");
    }
    let ids: Vec<Vec<u32>> = vec![vec![39, 57, 54, 7, 19, 10, 34, 2], vec![8, 31, 45, 35, 52, 2, 4, 5]];

    let theirs =
        run_in_transformers(LOAD_AND_RUN, &[ckpt.to_str().unwrap(), &serde_json::to_string(&ids).unwrap()], &what);
    assert_eq!(theirs["dtype"], json!(export_dtype), "{what}: loads in the exported dtype");
    assert_eq!(theirs["eos_token_id"], json!(2), "{what}: generation_config.json");
    assert_eq!(theirs["tokenized"], json!([39, 57, 54]), "{what}: the tokenizer came along");

    let (model, params) = CausalLm::from_hf_dir(&ckpt, &Device::Cpu).unwrap();
    let t = Tensor::new(ids, &Device::Cpu).unwrap();
    let ours: Vec<Vec<Vec<f32>>> =
        model.forward(&params.frozen(), ForwardInput::ids(&t), None).unwrap().to_vec3().unwrap();
    let original = CausalLm::from_hf_dir(&fixtures().join(arch), &Device::Cpu).unwrap().1;
    assert!(params.max_abs_diff(&original).unwrap() > 1e-4, "{what}: training changed the weights");
    for (b, rows) in ours.iter().enumerate() {
        for (p, row) in rows.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let y = theirs["logits"][b][p][v].as_f64().unwrap();
                assert!(
                    (f64::from(*x) - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{what} logit [{b}][{p}][{v}]: {x} vs {y}"
                );
            }
        }
    }
}
