//! What is in a models directory: every HF checkpoint under it, with its architecture, parameter
//! count and dtype read from `config.json` and the safetensors headers (no weights are loaded),
//! and a clear reason for each one Goodhart cannot train or score with.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::hf_config::ModelConfig;
use super::params::param_specs;
use crate::error::{Error, Result};

/// How deep below the models directory checkpoints are looked for (`org/name/` is two levels).
const MAX_DEPTH: usize = 3;

/// What a checkpoint's head makes it: a policy, or a reward model that scores sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    CausalLm,
    SequenceClassification,
}

/// One checkpoint as the registry reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The directory relative to the models directory (`/`-separated).
    pub name: String,
    pub path: PathBuf,
    /// `config.json`'s `model_type` (`llama`, `qwen2`, `gpt_neox`, …).
    pub model_type: Option<String>,
    /// `config.json`'s first `architectures` entry, e.g. `LlamaForCausalLM`.
    pub architecture: Option<String>,
    pub kind: Option<ModelKind>,
    /// Counted from the safetensors headers, or from `config.json` when there are no weights.
    pub num_parameters: Option<u64>,
    /// `config.json`'s `torch_dtype`/`dtype`, else the weights' own dtype (`float32`, `bfloat16`, …).
    pub dtype: Option<String>,
    /// Why Goodhart cannot use this checkpoint; `None` when it can.
    pub error: Option<String>,
    /// Whether `error` is only about the weights (missing or unreadable), with a usable config.
    #[serde(skip)]
    pub only_weights_missing: bool,
}

impl ModelInfo {
    pub fn is_supported(&self) -> bool {
        self.error.is_none()
    }

    /// An error unless this is a supported checkpoint of `kind`.
    pub fn require(&self, kind: ModelKind) -> std::result::Result<(), String> {
        self.require_config(kind)?;
        self.error.clone().map_or(Ok(()), Err)
    }

    /// [`ModelInfo::require`] without the weights: for a seeded random init of the config.
    pub fn require_config(&self, kind: ModelKind) -> std::result::Result<(), String> {
        match &self.error {
            Some(e) if !self.only_weights_missing => return Err(e.clone()),
            _ => {}
        }
        match (self.kind, kind) {
            (Some(k), want) if k == want => Ok(()),
            (_, ModelKind::CausalLm) => Err(format!(
                "{} is a {} checkpoint, not a causal LM (expected e.g. LlamaForCausalLM)",
                self.path.display(),
                self.architecture.as_deref().unwrap_or("non-causal-LM")
            )),
            (_, ModelKind::SequenceClassification) => Err(format!(
                "{} is a {} checkpoint, not a reward model: expected LlamaForSequenceClassification, \
                 Qwen2ForSequenceClassification or GPTNeoXForSequenceClassification",
                self.path.display(),
                self.architecture.as_deref().unwrap_or("causal LM")
            )),
        }
    }
}

/// Every checkpoint (a directory with a `config.json`) under `models_dir`, sorted by name.
/// Unreadable or unsupported checkpoints are listed with their `error`.
pub fn scan(models_dir: &Path) -> Result<Vec<ModelInfo>> {
    let root = models_dir.canonicalize().map_err(|e| Error::io(models_dir, e))?;
    let mut found = Vec::new();
    walk(&root, &root, 0, &mut found);
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

fn walk(root: &Path, dir: &Path, depth: usize, found: &mut Vec<ModelInfo>) {
    if dir.join("config.json").is_file() {
        let mut info = inspect(dir);
        let relative = dir.strip_prefix(root).unwrap_or(dir);
        info.name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        found.push(info);
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_dir() {
            walk(root, &entry.path(), depth + 1, found);
        }
    }
}

/// Why `dir` cannot serve as a model of `kind` (`None`: it can). With `config_only` its config
/// is all that must be usable (a random init reads no weights).
pub fn unusable(dir: &Path, kind: ModelKind, config_only: bool) -> Option<String> {
    if !dir.join("config.json").is_file() {
        return Some(format!("{} is not a model directory with a config.json", dir.display()));
    }
    let info = inspect(dir);
    let usable = if config_only { info.require_config(kind) } else { info.require(kind) };
    usable.err()
}

/// One checkpoint directory. Never fails: what cannot be read becomes the entry's `error`.
pub fn inspect(dir: &Path) -> ModelInfo {
    let mut info = ModelInfo {
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        path: dir.to_path_buf(),
        model_type: None,
        architecture: None,
        kind: None,
        num_parameters: None,
        dtype: None,
        error: None,
        only_weights_missing: false,
    };
    let config_path = dir.join("config.json");
    let config: Value = match std::fs::read_to_string(&config_path) {
        Err(e) => {
            info.error = Some(format!("{}: {e}", config_path.display()));
            return info;
        }
        Ok(text) => match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                info.error = Some(format!("{}: malformed JSON: {e}", config_path.display()));
                return info;
            }
        },
    };
    info.model_type = config.get("model_type").and_then(Value::as_str).map(String::from);
    info.architecture = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .map(String::from);
    info.dtype = ["torch_dtype", "dtype"].iter().find_map(|k| config.get(*k).and_then(Value::as_str)).map(String::from);
    info.kind = match info.architecture.as_deref() {
        None => Some(ModelKind::CausalLm),
        Some(a) if a.ends_with("ForCausalLM") => Some(ModelKind::CausalLm),
        Some(a) if a.ends_with("ForSequenceClassification") => Some(ModelKind::SequenceClassification),
        Some(_) => None,
    };
    let weights = safetensors_summary(dir);
    if let Ok(Some(w)) = &weights {
        info.num_parameters = Some(w.num_parameters);
        info.dtype = info.dtype.take().or_else(|| w.dtype.clone());
    }
    let parsed = ModelConfig::from_hf_json(&config);
    if info.num_parameters.is_none() {
        if let Ok(cfg) = &parsed {
            info.num_parameters = Some(num_parameters(cfg, info.kind, num_labels(&config)));
        }
    }
    info.error = match (&parsed, info.kind, &weights) {
        (Err(e), _, _) => Some(e.to_string().trim_start_matches("model: ").to_string()),
        (Ok(_), None, _) => Some(format!(
            "architecture {:?} is neither a causal LM (…ForCausalLM) nor a reward model (…ForSequenceClassification)",
            info.architecture.as_deref().unwrap_or_default()
        )),
        (Ok(_), Some(_), Err(e)) => Some(e.to_string()),
        (Ok(_), Some(_), Ok(None)) => {
            Some(format!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display()))
        }
        (Ok(_), Some(_), Ok(Some(_))) => None,
    };
    info.only_weights_missing = parsed.is_ok() && info.kind.is_some() && info.error.is_some();
    info
}

/// Parameters of a model with this config, counted from its tensor shapes.
pub fn num_parameters(cfg: &ModelConfig, kind: Option<ModelKind>, num_labels: usize) -> u64 {
    let specs = param_specs(cfg);
    let mut n: u64 = specs.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
    if let Some(ModelKind::SequenceClassification) = kind {
        // The LM head is replaced by a `score` head.
        let head = specs.iter().find(|(name, _)| is_lm_head(name)).map_or(0, |(_, s)| s.iter().product::<usize>());
        n = n - head as u64 + (cfg.hidden_size * num_labels) as u64;
    }
    n
}

/// Outputs of a sequence-classification head, as transformers reads config.json: the length
/// of `id2label`, else `num_labels`, else 2.
pub fn num_labels(config: &Value) -> usize {
    config
        .get("id2label")
        .and_then(Value::as_object)
        .map(serde_json::Map::len)
        .or_else(|| config.get("num_labels").and_then(Value::as_u64).map(|n| n as usize))
        .unwrap_or(2)
}

/// The output projection's parameter name in any supported architecture.
pub fn is_lm_head(name: &str) -> bool {
    name == "lm_head.weight" || name == "embed_out.weight"
}

/// Totals over a checkpoint's safetensors headers.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsSummary {
    pub num_parameters: u64,
    pub num_bytes: u64,
    /// The dtype holding the most parameters, as transformers names it.
    pub dtype: Option<String>,
}

/// Reads only the headers of `model.safetensors` or of every shard named by
/// `model.safetensors.index.json`. `Ok(None)`: the directory holds neither.
pub fn safetensors_summary(dir: &Path) -> Result<Option<WeightsSummary>> {
    let Some(files) = super::params::weight_files(dir)? else { return Ok(None) };
    let mut per_dtype: BTreeMap<String, u64> = BTreeMap::new();
    let mut num_bytes = 0;
    for file in &files {
        for (dtype, elements, bytes) in read_header(file)? {
            *per_dtype.entry(dtype).or_default() += elements;
            num_bytes += bytes;
        }
    }
    let dtype = per_dtype.iter().max_by_key(|(_, n)| **n).map(|(d, _)| torch_dtype_name(d));
    Ok(Some(WeightsSummary { num_parameters: per_dtype.values().sum(), num_bytes, dtype }))
}

/// `(dtype, elements, bytes)` of every tensor in a safetensors file: an 8-byte little-endian
/// header length, then the JSON header; the data after it is never read.
fn read_header(path: &Path) -> Result<Vec<(String, u64, u64)>> {
    let bad = |message: &str| Error::model(format!("{}: {message}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("not a safetensors file (shorter than its header length)"))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB.
    if len > 100_000_000 {
        return Err(bad("not a safetensors file (implausible header length)"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|_| bad("truncated safetensors header"))?;
    let header: Value = serde_json::from_slice(&header).map_err(|_| bad("malformed safetensors header"))?;
    let tensors = header.as_object().ok_or_else(|| bad("malformed safetensors header"))?;
    let mut out = Vec::new();
    for (name, t) in tensors.iter().filter(|(name, _)| name.as_str() != "__metadata__") {
        let dtype = t.get("dtype").and_then(Value::as_str).ok_or_else(|| bad(&format!("`{name}` has no dtype")))?;
        let shape = t.get("shape").and_then(Value::as_array).ok_or_else(|| bad(&format!("`{name}` has no shape")))?;
        let elements = shape.iter().map(|d| d.as_u64().unwrap_or(0)).product();
        let offsets = t.get("data_offsets").and_then(Value::as_array);
        let bytes = offsets.and_then(|o| Some(o.get(1)?.as_u64()? - o.first()?.as_u64()?)).unwrap_or(0);
        out.push((dtype.to_string(), elements, bytes));
    }
    Ok(out)
}

/// safetensors' dtype names (`BF16`) as transformers writes them in config.json (`bfloat16`).
fn torch_dtype_name(safetensors_dtype: &str) -> String {
    match safetensors_dtype {
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "F64" => "float64",
        "F8_E4M3" => "float8_e4m3fn",
        "F8_E5M2" => "float8_e5m2",
        other => return other.to_lowercase(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use serde_json::json;

    use super::*;
    use crate::model::ParamSet;

    fn llama_config() -> Value {
        json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
               "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "tie_word_embeddings": false})
    }

    fn write_model(dir: &Path, config: &Value, dtype: DType) -> u64 {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let cfg = ModelConfig::from_hf_json(config).unwrap();
        let params = ParamSet::random(&cfg, 1, 0.02, &Device::Cpu).unwrap();
        params.save_safetensors_as(&dir.join("model.safetensors"), dtype).unwrap();
        params.num_parameters() as u64
    }

    #[test]
    fn the_registry_reports_architecture_parameter_count_and_dtype_of_every_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let n = write_model(&root.path().join("org/tiny-llama"), &llama_config(), DType::BF16);
        let mut unsupported = llama_config();
        unsupported["model_type"] = json!("mistral");
        unsupported["architectures"] = json!(["MistralForCausalLM"]);
        std::fs::create_dir_all(root.path().join("mistral")).unwrap();
        std::fs::write(root.path().join("mistral/config.json"), unsupported.to_string()).unwrap();
        std::fs::create_dir_all(root.path().join("broken")).unwrap();
        std::fs::write(root.path().join("broken/config.json"), "{not json").unwrap();
        std::fs::create_dir_all(root.path().join("not-a-model")).unwrap();

        let models = scan(root.path()).unwrap();
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["broken", "mistral", "org/tiny-llama"]);
        let llama = &models[2];
        assert_eq!(llama.error, None);
        assert_eq!(llama.model_type.as_deref(), Some("llama"));
        assert_eq!(llama.architecture.as_deref(), Some("LlamaForCausalLM"));
        assert_eq!(llama.kind, Some(ModelKind::CausalLm));
        assert_eq!(llama.num_parameters, Some(n));
        assert_eq!(llama.dtype.as_deref(), Some("bfloat16"), "no dtype in config.json: the weights' own");
        let mistral = &models[1];
        let error = mistral.error.as_deref().unwrap();
        assert!(error.contains("unsupported model_type \"mistral\""), "{error}");
        assert_eq!(mistral.num_parameters, None);
        assert!(models[0].error.as_deref().unwrap().contains("malformed JSON"));
    }

    #[test]
    fn a_parameter_count_without_weights_comes_from_the_config_shapes() {
        let root = tempfile::tempdir().unwrap();
        let n = write_model(&root.path().join("m"), &llama_config(), DType::F32);
        std::fs::remove_file(root.path().join("m/model.safetensors")).unwrap();
        let info = inspect(&root.path().join("m"));
        assert_eq!(info.num_parameters, Some(n));
        assert!(info.error.as_deref().unwrap().contains("neither model.safetensors"));
        assert!(info.require(ModelKind::CausalLm).is_err());
        assert!(info.require_config(ModelKind::CausalLm).is_ok(), "enough for random_init");
        assert!(info.require_config(ModelKind::SequenceClassification).is_err());
    }

    #[test]
    fn a_reward_model_is_told_apart_from_a_policy() {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = llama_config();
        cfg["architectures"] = json!(["LlamaForSequenceClassification"]);
        write_model(&root.path().join("rm"), &cfg, DType::F32);
        let info = inspect(&root.path().join("rm"));
        assert_eq!(info.kind, Some(ModelKind::SequenceClassification));
        assert!(info.require(ModelKind::SequenceClassification).is_ok());
        assert!(info.require(ModelKind::CausalLm).unwrap_err().contains("not a causal LM"));
        cfg["architectures"] = json!(["LlamaForTokenClassification"]);
        write_model(&root.path().join("tok"), &cfg, DType::F32);
        let info = inspect(&root.path().join("tok"));
        assert!(info.error.unwrap().contains("LlamaForTokenClassification"));
    }
}
