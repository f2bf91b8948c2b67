//! `checkpoint-<step>/`: an HF model directory (`config.json`, `model.safetensors` in the
//! run's `export_dtype`, the tokenizer files, `generation_config.json`) that `transformers` and
//! vLLM load as is, plus the trainer state needed to resume exactly: optimizer moments,
//! reference weights, float32 weights when the export is narrower, step, data cursor and the
//! open metric window.
//!
//! A checkpoint is written under a temporary name and renamed into place, so a crash never
//! leaves a half-written `checkpoint-<step>`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::config::ExportDtype;
use crate::data::DataCursor;
use crate::error::{Error, Result};
use crate::metrics::MetricWindow;
use crate::model::{ModelConfig, ParamSet};
use crate::optim::{AdamW, AdamWConfig};

pub const MODEL_FILE: &str = "model.safetensors";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const REFERENCE_FILE: &str = "reference.safetensors";
/// The policy's float32 weights, kept only when `model.safetensors` is exported narrower, so a
/// resumed run continues from exactly the trained values.
const POLICY_F32_FILE: &str = "policy.float32.safetensors";

/// Tokenizer and generation files copied from the source model directory when present
/// (`tokenizer.json` is what transformers needs; the rest serve slow tokenizers and vLLM).
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "generation_config.json",
    "chat_template.jinja",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: u64,
    pub data_cursor: DataCursor,
    pub seed: u64,
    pub metric_window: MetricWindow,
    /// Whether `reference.safetensors` is present (only when the reference moves).
    pub has_reference: bool,
    /// float16 runs' loss scale, so a resumed run does not start over from 2^16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::optim::LossScaler>,
    /// float16 steps skipped because their gradients overflowed: AdamW (and the schedule) took
    /// `global_step - skipped_steps` steps.
    #[serde(default)]
    pub skipped_steps: u64,
    /// Which checkpoints the run keeps (the Pareto front or best evaluation so far among them).
    #[serde(default)]
    pub retention: crate::retention::Retention,
    /// The overoptimization detector: the running peak and whether the run is past it.
    #[serde(default)]
    pub overopt: crate::overopt::Detector,
}

/// What to write.
#[derive(Debug)]
pub struct CheckpointContents<'a> {
    pub model_config: &'a ModelConfig,
    pub policy: &'a ParamSet,
    /// Only when it differs from the initial policy.
    pub reference: Option<&'a ParamSet>,
    pub optimizer: &'a AdamW,
    pub state: &'a TrainerState,
    /// Files to copy in beside the weights (tokenizer and friends).
    pub side_files: &'a [PathBuf],
    /// The dtype of `model.safetensors` (and `torch_dtype` in config.json).
    pub export_dtype: ExportDtype,
}

pub fn checkpoint_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

pub fn save(output_dir: &Path, c: &CheckpointContents<'_>) -> Result<PathBuf> {
    let step = c.state.global_step;
    let final_dir = checkpoint_dir(output_dir, step);
    let tmp = output_dir.join(format!(".checkpoint-{step}.tmp-{}", std::process::id()));
    let io = |p: &Path, e| Error::io(p, e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let mut config = c.model_config.to_hf_json();
    // transformers 4 reads `torch_dtype`, 5 reads `dtype`.
    for key in ["torch_dtype", "dtype"] {
        config[key] = serde_json::json!(c.export_dtype.as_str());
    }
    let config_json = serde_json::to_string_pretty(&config).expect("config serializes");
    write(&tmp.join("config.json"), config_json.as_bytes())?;
    c.policy.save_safetensors_as(&tmp.join(MODEL_FILE), c.export_dtype.dtype())?;
    if c.export_dtype != ExportDtype::Float32 {
        c.policy.save_safetensors(&tmp.join(POLICY_F32_FILE))?;
    }
    for src in c.side_files {
        if let Some(name) = src.file_name() {
            std::fs::copy(src, tmp.join(name)).map_err(|e| io(src, e))?;
        }
    }
    let generation = tmp.join("generation_config.json");
    if !generation.exists() {
        let cfg = c.model_config;
        let json = serde_json::json!({
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        });
        write(&generation, serde_json::to_string_pretty(&json).expect("json").as_bytes())?;
    }
    c.optimizer.save(c.policy.names(), &tmp.join(OPTIMIZER_FILE))?;
    if let Some(reference) = c.reference {
        reference.save_safetensors(&tmp.join(REFERENCE_FILE))?;
    }
    let state = serde_json::to_string_pretty(c.state).expect("state serializes");
    write(&tmp.join(STATE_FILE), state.as_bytes())?;
    if final_dir.exists() {
        // A resumed run rewrites a step it already saved: swap, then drop the old copy.
        let old = output_dir.join(format!(".checkpoint-{step}.old-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| io(&final_dir, e))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    } else {
        std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
    }
    Ok(final_dir)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Where `load_best_model_at_end` puts the final model.
pub const FINAL_MODEL_DIR: &str = "final-model";

/// Copies the HF model of `checkpoint-<step>` (config, weights, tokenizer and generation files;
/// not the state a resume needs) to `final-model/`, replacing what was there; answers its path.
pub fn export_model(output_dir: &Path, step: u64) -> Result<PathBuf> {
    let from = checkpoint_dir(output_dir, step);
    let to = output_dir.join(FINAL_MODEL_DIR);
    let tmp = output_dir.join(format!(".{FINAL_MODEL_DIR}.tmp-{}", std::process::id()));
    let io = |p: &Path, e| Error::io(p, e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    for entry in std::fs::read_dir(&from).map_err(|e| io(&from, e))? {
        let entry = entry.map_err(|e| io(&from, e))?;
        let name = entry.file_name();
        if [STATE_FILE, OPTIMIZER_FILE, REFERENCE_FILE, POLICY_F32_FILE].iter().any(|f| name == *f) {
            continue;
        }
        std::fs::copy(entry.path(), tmp.join(&name)).map_err(|e| io(&entry.path(), e))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(|e| io(&to, e))?;
    }
    std::fs::rename(&tmp, &to).map_err(|e| io(&to, e))?;
    Ok(to)
}

/// The highest-step complete checkpoint in `output_dir`, if any.
pub fn latest(output_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(steps(output_dir)?.last().map(|&step| checkpoint_dir(output_dir, step)))
}

/// The steps of the complete checkpoints in `output_dir`, ascending.
pub fn steps(output_dir: &Path) -> Result<Vec<u64>> {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(output_dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(|n| n.strip_prefix("checkpoint-")).and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            out.push(step);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Deletes `checkpoint-<step>`: renamed out of the way first, so no reader ever sees it half gone.
pub fn remove(output_dir: &Path, step: u64) -> Result<()> {
    let dir = checkpoint_dir(output_dir, step);
    if !dir.exists() {
        return Ok(());
    }
    let doomed = output_dir.join(format!(".checkpoint-{step}.deleted-{}", std::process::id()));
    std::fs::rename(&dir, &doomed).map_err(|e| Error::io(&dir, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))
}

/// What a resumed run restores.
#[derive(Debug)]
pub struct Restored {
    pub policy: ParamSet,
    pub reference: Option<ParamSet>,
    pub optimizer: AdamW,
    pub state: TrainerState,
}

pub fn load(dir: &Path, cfg: &ModelConfig, adam: AdamWConfig, device: &Device) -> Result<Restored> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|source| Error::Json { path: state_path.clone(), source })?;
    let f32_policy = dir.join(POLICY_F32_FILE);
    let policy_file = if f32_policy.is_file() { f32_policy } else { dir.join(MODEL_FILE) };
    let policy = ParamSet::load_safetensors(&policy_file, cfg, device)?;
    let reference = if state.has_reference {
        Some(ParamSet::load_safetensors(&dir.join(REFERENCE_FILE), cfg, device)?)
    } else {
        None
    };
    let optimizer = AdamW::load(policy.names(), adam, &dir.join(OPTIMIZER_FILE), device)?;
    let optimizer_steps = state.global_step.checked_sub(state.skipped_steps);
    if optimizer_steps != Some(optimizer.steps_taken()) {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "optimizer is at step {} but the state says {} steps of which {} were skipped",
                optimizer.steps_taken(),
                state.global_step,
                state.skipped_steps
            ),
        });
    }
    Ok(Restored { policy, reference, optimizer, state })
}
