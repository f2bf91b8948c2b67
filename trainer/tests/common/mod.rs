//! Shared helpers for the trainer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

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

/// `|a − b| ≤ rel · |b|`, with a floor of `rel · 1e-2` on |b| so that exact zeros compare sanely.
pub fn assert_close_rel(actual: f64, expected: f64, rel: f64, what: &str) {
    let tol = rel * expected.abs().max(1e-2);
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, TRL has {expected} (|diff| {:e} > {tol:e})",
        (actual - expected).abs()
    );
}
