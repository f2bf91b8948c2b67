//! Shared helpers for the trainer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::{json, Value};
use trainer::config::RunConfig;
use trainer::model::ParamSet;
use trainer::setup::Setup;

/// Final weights against TRL's: a float32 max |diff| bound on every parameter.
pub const WEIGHT_ABS_TOL: f32 = 1e-5;

/// `../shared/reference/trl-parity/` beside the repository (as CI lays it out).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity")
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn as_u32_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

pub fn as_u8_rows(v: &Value) -> Vec<Vec<u8>> {
    as_u32_rows(v).into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect()
}

pub fn as_f64_rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

/// `|a − b| ≤ max(rel · |b|, abs_floor)`: relative, with an absolute floor for values at or near 0.
pub fn assert_close(actual: f64, expected: f64, rel: f64, abs_floor: f64, what: &str) {
    let tol = (rel * expected.abs()).max(abs_floor);
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, TRL has {expected} (|diff| {:e} > {tol:e})",
        (actual - expected).abs()
    );
}

/// Every logged metric against TRL's: within 1e-4 relative, with an absolute floor of 1e-7
/// (so an exact 0 in TRL's log must be within 1e-7 of 0 here).
pub const METRIC_REL_TOL: f64 = 1e-4;
pub const METRIC_ABS_FLOOR: f64 = 1e-7;

pub fn assert_metric_close(actual: f64, expected: f64, what: &str) {
    assert_close(actual, expected, METRIC_REL_TOL, METRIC_ABS_FLOOR, what);
}

/// A tiny random reward model of one family (`llama`, `qwen2` or `gpt_neox`) with the TRL
/// fixtures' tokenizer.
pub fn write_tiny_reward_model(dir: &Path, model_type: &str, seed: u64) {
    trainer::data::synthetic::write_reward_model_dir(dir, model_type, seed, &fixtures().join("tiny-llama")).unwrap();
}

/// Prepended to every script [`run_in_transformers`] runs: collects what transformers warns or
/// logs at WARNING and above into `caught` (warnings) and `logged` (its logger).
const CAPTURE_WARNINGS: &str = r#"
import json, logging, sys, warnings
import torch
import transformers
logged = []
class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            logged.append(record.getMessage())
transformers.utils.logging.add_handler(Collect())
"#;

/// Runs `script` (after [`CAPTURE_WARNINGS`]) with `args` in the Python that `GOODHART_PYTHON`
/// names, offline, and answers the JSON it prints, which must carry an empty `warnings` list.
pub fn run_in_transformers(script: &str, args: &[&str], what: &str) -> Value {
    let python = std::env::var("GOODHART_PYTHON").expect("GOODHART_PYTHON names a Python with torch + transformers");
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(format!("{CAPTURE_WARNINGS}{script}"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{what}: transformers failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let theirs: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(theirs["warnings"], json!([]), "{what}: transformers warned while loading");
    theirs
}

/// Every parameter of `ours` within [`WEIGHT_ABS_TOL`] of the same name in a safetensors file.
pub fn assert_weights_close(ours: &ParamSet, file: &Path, what: &str) {
    let theirs = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    assert_eq!(theirs.len(), ours.names().len(), "{what}: same parameter count");
    for (name, var) in ours.iter() {
        let t = theirs.get(name).unwrap_or_else(|| {
            let mut names: Vec<&String> = theirs.keys().collect();
            names.sort();
            panic!("{what}: TRL saved no `{name}`; it saved {names:?}")
        });
        let diff = (var.as_tensor() - t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= WEIGHT_ABS_TOL, "{what} `{name}`: max |diff| {diff:e} > {WEIGHT_ABS_TOL:e}");
    }
}

/// The policy and reference a run's checkpoint holds. Without trust-region updates the
/// reference is the initial policy, which the checkpoint does not store.
pub fn checkpoint_weights(ckpt: &Path, cfg: &RunConfig, setup: &Setup) -> (ParamSet, ParamSet) {
    let load = |file: &str| ParamSet::load_safetensors(&ckpt.join(file), &setup.model.config, &Device::Cpu).unwrap();
    let reference =
        if cfg.sync_ref_model { load("reference.safetensors") } else { setup.initial.deep_clone().unwrap() };
    (load("model.safetensors"), reference)
}
