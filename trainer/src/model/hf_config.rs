//! The architecture-independent description of a decoder-only LM, read from HF `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Llama,
    Qwen2,
    GptNeox,
}

impl Architecture {
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::GptNeox => "gpt_neox",
        }
    }

    fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::GptNeox => "GPTNeoXForCausalLM",
        }
    }

    pub fn parse(model_type: &str) -> Result<Self> {
        match model_type {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gpt_neox" => Ok(Self::GptNeox),
            other => Err(Error::model(format!(
                "unsupported model_type {other:?}: supported are \"llama\", \"qwen2\" and \"gpt_neox\""
            ))),
        }
    }
}

/// Llama-3 style frequency-dependent rope scaling (`rope_type = "llama3"`), or plain linear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    /// RMSNorm eps for Llama/Qwen2, LayerNorm eps for GPT-NeoX.
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Share of each head's dimensions that get rotary embeddings (GPT-NeoX's `partial_rotary_factor`).
    pub partial_rotary_factor: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projection biases (Qwen2: always; Llama: `attention_bias`).
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// GPT-NeoX only: `x + attn(ln1(x)) + mlp(ln2(x))`.
    pub use_parallel_residual: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn get_usize(map: &Map<String, Value>, key: &str) -> Result<usize> {
    map.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::model(format!("config.json: `{key}` is missing or not a non-negative integer")))
}

fn opt_f64(map: &Map<String, Value>, key: &str) -> Option<f64> {
    map.get(key).and_then(Value::as_f64)
}

fn opt_bool(map: &Map<String, Value>, key: &str) -> Option<bool> {
    map.get(key).and_then(Value::as_bool)
}

/// `eos_token_id` may be a list in HF configs; the first entry is the one we stop and append with.
fn opt_token(map: &Map<String, Value>, key: &str) -> Option<u32> {
    match map.get(key)? {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(items) => items.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// The toy tasks' small Llama (SPEC §4): `vocab_size` tokens, `hidden_size` wide, with an
    /// MLP three times as wide, untied embeddings.
    pub fn toy_llama(
        vocab_size: usize,
        max_positions: usize,
        hidden_size: usize,
        num_layers: usize,
        num_heads: usize,
    ) -> Result<Self> {
        Self::from_hf_json(&serde_json::json!({
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": 3 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "max_position_embeddings": max_positions,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": false,
        }))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
        Self::from_hf_json(&value)
    }

    /// Reads a HF `config.json`, accepting both the transformers 4 layout (`rope_theta`,
    /// `rope_scaling`, `rotary_pct` at the top level) and the transformers 5 one (`rope_parameters`).
    pub fn from_hf_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| Error::model("config.json is not a JSON object"))?;
        let model_type = map
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::model("config.json has no `model_type`"))?;
        let architecture = Architecture::parse(model_type)?;
        let empty = Map::new();
        let rope_params = map.get("rope_parameters").and_then(Value::as_object).unwrap_or(&empty);
        let hidden_size = get_usize(map, "hidden_size")?;
        let num_attention_heads = get_usize(map, "num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 && map.get("head_dim").is_none() {
            return Err(Error::model("config.json: hidden_size must be a multiple of num_attention_heads"));
        }
        let head_dim =
            map.get("head_dim").and_then(Value::as_u64).map_or(hidden_size / num_attention_heads, |v| v as usize);
        let is_neox = architecture == Architecture::GptNeox;
        let rope_theta = opt_f64(rope_params, "rope_theta")
            .or_else(|| opt_f64(map, "rope_theta"))
            .or_else(|| opt_f64(map, "rotary_emb_base"))
            .unwrap_or(10_000.0);
        let partial_rotary_factor = opt_f64(rope_params, "partial_rotary_factor")
            .or_else(|| opt_f64(map, "partial_rotary_factor"))
            .or_else(|| opt_f64(map, "rotary_pct"))
            .unwrap_or(if is_neox { 0.25 } else { 1.0 });
        let scaling_map = map.get("rope_scaling").and_then(Value::as_object).unwrap_or(rope_params);
        let rope_scaling = parse_rope_scaling(scaling_map)?;
        let num_key_value_heads = if is_neox {
            num_attention_heads
        } else {
            map.get("num_key_value_heads").and_then(Value::as_u64).map_or(num_attention_heads, |v| v as usize)
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::model("config.json: num_attention_heads must be a multiple of num_key_value_heads"));
        }
        let norm_key = if is_neox { "layer_norm_eps" } else { "rms_norm_eps" };
        let cfg = Self {
            architecture,
            vocab_size: get_usize(map, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(map, "intermediate_size")?,
            num_hidden_layers: get_usize(map, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: map
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .map_or(2048, |v| v as usize),
            norm_eps: opt_f64(map, norm_key).unwrap_or(if is_neox { 1e-5 } else { 1e-6 }),
            rope_theta,
            partial_rotary_factor,
            rope_scaling,
            tie_word_embeddings: opt_bool(map, "tie_word_embeddings").unwrap_or(architecture == Architecture::Qwen2),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => opt_bool(map, "attention_bias").unwrap_or(false),
                Architecture::GptNeox => opt_bool(map, "attention_bias").unwrap_or(true),
            },
            mlp_bias: match architecture {
                Architecture::GptNeox => true,
                _ => opt_bool(map, "mlp_bias").unwrap_or(false),
            },
            use_parallel_residual: is_neox && opt_bool(map, "use_parallel_residual").unwrap_or(true),
            bos_token_id: opt_token(map, "bos_token_id"),
            eos_token_id: opt_token(map, "eos_token_id"),
            pad_token_id: opt_token(map, "pad_token_id"),
        };
        if let Some(act) = map.get("hidden_act").and_then(Value::as_str) {
            let expected = if is_neox { "gelu" } else { "silu" };
            if act != expected {
                return Err(Error::model(format!(
                    "config.json: hidden_act {act:?} is not supported for {model_type} (expected {expected:?})"
                )));
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::model(format!("model config: {name} must be > 0")));
            }
        }
        if !self.rotary_dim().is_multiple_of(2) {
            return Err(Error::model("model config: the rotary dimension must be even"));
        }
        Ok(())
    }

    pub fn model_type_name(&self) -> &'static str {
        self.architecture.model_type()
    }

    /// Dimensions of each head that get rotary position embeddings.
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// `config.json` as transformers writes it, so a saved checkpoint loads with `from_pretrained`.
    pub fn to_hf_json(&self) -> Value {
        let mut rope_parameters = json!({"rope_theta": self.rope_theta, "rope_type": "default"});
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                rope_parameters["rope_type"] = json!("linear");
                rope_parameters["factor"] = json!(factor);
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                rope_parameters["rope_type"] = json!("llama3");
                rope_parameters["factor"] = json!(factor);
                rope_parameters["low_freq_factor"] = json!(low_freq_factor);
                rope_parameters["high_freq_factor"] = json!(high_freq_factor);
                rope_parameters["original_max_position_embeddings"] = json!(original_max_position_embeddings);
            }
        }
        let mut v = json!({
            "architectures": [self.architecture.class_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
            "torch_dtype": "float32",
            "use_cache": true,
        });
        let obj = v.as_object_mut().expect("object literal");
        match self.architecture {
            Architecture::GptNeox => {
                rope_parameters["partial_rotary_factor"] = json!(self.partial_rotary_factor);
                obj.insert("hidden_act".into(), json!("gelu"));
                obj.insert("layer_norm_eps".into(), json!(self.norm_eps));
                obj.insert("use_parallel_residual".into(), json!(self.use_parallel_residual));
                obj.insert("attention_bias".into(), json!(self.attention_bias));
                // transformers 4 reads these top-level names; 5 reads rope_parameters.
                obj.insert("rotary_pct".into(), json!(self.partial_rotary_factor));
                obj.insert("rotary_emb_base".into(), json!(self.rope_theta));
            }
            Architecture::Llama | Architecture::Qwen2 => {
                obj.insert("hidden_act".into(), json!("silu"));
                obj.insert("num_key_value_heads".into(), json!(self.num_key_value_heads));
                obj.insert("head_dim".into(), json!(self.head_dim));
                obj.insert("rms_norm_eps".into(), json!(self.norm_eps));
                if self.architecture == Architecture::Llama {
                    obj.insert("attention_bias".into(), json!(self.attention_bias));
                    obj.insert("mlp_bias".into(), json!(self.mlp_bias));
                }
            }
        }
        obj.insert("rope_theta".into(), json!(self.rope_theta));
        obj.insert("rope_parameters".into(), rope_parameters);
        v
    }
}

fn parse_rope_scaling(map: &Map<String, Value>) -> Result<Option<RopeScaling>> {
    let kind = map.get("rope_type").or_else(|| map.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor =
        || opt_f64(map, "factor").ok_or_else(|| Error::model(format!("rope scaling {kind:?} needs a `factor`")));
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: opt_f64(map, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: opt_f64(map, "high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: map
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .map_or(8192, |v| v as usize),
        })),
        other => Err(Error::model(format!(
            "unsupported rope_type {other:?}: supported are \"default\", \"linear\" and \"llama3\""
        ))),
    }
}
