//! The gold reward model: an HF `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification` or `GPTNeoXForSequenceClassification` checkpoint. That is
//! the causal LM's backbone with a bias-free `score` head in place of the LM head, read at the
//! last non-pad token, as transformers' `GenericForSequenceClassification` does.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::config::ModelConfig;
use super::params::{param_specs, ParamSet};
use super::registry::{self, ModelKind};
use super::{linear, CausalLm, ForwardInput};
use crate::data::TextTokenizer;
use crate::error::{Error, Result};

const SCORE: &str = "score.weight";

#[derive(Debug)]
pub struct RewardModel {
    backbone: CausalLm,
    /// The backbone's weights and `score.weight` `(num_labels, hidden)`.
    params: ParamSet,
    tokenizer: tokenizers::Tokenizer,
    /// Pads batches and marks where a sequence ends: the tokenizer's pad token, else its EOS
    /// (TRL sets the reward model's `pad_token_id` the same way).
    pad_token_id: u32,
}

impl RewardModel {
    /// Reads `config.json`, the weights and `tokenizer.json` of a sequence-classification checkpoint.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        registry::inspect(dir)
            .require(ModelKind::SequenceClassification)
            .map_err(|e| Error::model(format!("reward model: {e}")))?;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
        let config = ModelConfig::from_hf_json(&json)?;
        let mut specs: Vec<(String, Vec<usize>)> =
            param_specs(&config).into_iter().filter(|(name, _)| !registry::is_lm_head(name)).collect();
        specs.push((SCORE.into(), vec![registry::num_labels(&json), config.hidden_size]));
        let params = ParamSet::load_hf_dir_with(dir, specs, device)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        let pad_token_id = TextTokenizer::from_dir(dir, config.eos_token_id, config.pad_token_id)?.pad_token_id;
        Ok(Self { backbone: CausalLm::new(config, device), params, tokenizer, pad_token_id })
    }

    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    pub fn num_bytes(&self) -> usize {
        self.params.num_bytes()
    }

    /// The first logit of each text, tokenized by the reward model's own tokenizer without
    /// special tokens, as TRL feeds a reward model `prompt + completion` texts.
    pub fn score_texts(&self, texts: &[String]) -> Result<Vec<f32>> {
        let rows = texts
            .iter()
            .map(|t| {
                let enc = self.tokenizer.encode(t.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            })
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&rows)
    }

    /// The first logit of each row of token ids, in one right-padded batch.
    pub fn score_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        Ok(self.logits(rows)?.narrow(1, 0, 1)?.squeeze(1)?.to_vec1()?)
    }

    /// `(rows, num_labels)`: the score head at each row's last non-pad token.
    pub fn logits(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        if rows.iter().any(Vec::is_empty) {
            return Err(Error::model("reward model: cannot score an empty sequence"));
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len());
        let mut read_at = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            ids.extend(row.iter().copied().chain(std::iter::repeat_n(self.pad_token_id, width - row.len())));
            mask.push([vec![1u8; row.len()], vec![0u8; width - row.len()]].concat());
            // transformers' rule: the rightmost token that is not the pad token (position 0 if
            // there is none), whatever the attention mask says.
            let last = row.iter().rposition(|&t| t != self.pad_token_id).unwrap_or(0);
            read_at.push((r * width + last) as u32);
        }
        let device = self.backbone.device();
        let input_ids = Tensor::from_vec(ids, (rows.len(), width), device)?;
        let w = self.params.frozen();
        let input = ForwardInput { input_ids: &input_ids, attention_mask: Some(&mask), position_ids: None };
        let hidden = self.backbone.hidden_states(&w, input, None)?;
        let hidden = hidden.reshape((rows.len() * width, hidden.dim(2)?))?;
        let picked = hidden.index_select(&Tensor::new(read_at, device)?, 0)?;
        linear(&picked, w.get(SCORE)?, None)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use serde_json::json;

    use super::*;
    use crate::model::ModelConfig;

    /// A tiny random reward model of each family, written as transformers lays it out, with the
    /// TRL fixtures' tokenizer (pad token id 0).
    pub(crate) fn write_tiny_reward_model(dir: &Path, model_type: &str, seed: u64) {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity/tiny-llama");
        let class = match model_type {
            "llama" => "LlamaForSequenceClassification",
            "qwen2" => "Qwen2ForSequenceClassification",
            _ => "GPTNeoXForSequenceClassification",
        };
        let config = json!({
            "model_type": model_type, "architectures": [class], "vocab_size": 64, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 128, "tie_word_embeddings": false, "num_labels": 1,
            "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1,
        });
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixtures.join(file), dir.join(file)).unwrap();
        }
        let cfg = ModelConfig::from_hf_json(&config).unwrap();
        let backbone = ParamSet::random(&cfg, seed, 0.3, &Device::Cpu).unwrap();
        let mut tensors: std::collections::HashMap<String, Tensor> = backbone
            .iter()
            .filter(|(n, _)| !registry::is_lm_head(n))
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        tensors.insert(SCORE.into(), Tensor::randn(0f32, 1.0, (1, 16), &Device::Cpu).unwrap());
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    }

    #[test]
    fn the_score_is_read_at_the_last_non_pad_token_whatever_the_padding() {
        for model_type in ["llama", "qwen2", "gpt_neox"] {
            let dir = tempfile::tempdir().unwrap();
            write_tiny_reward_model(dir.path(), model_type, 3);
            let rm = RewardModel::from_hf_dir(dir.path(), &Device::Cpu).unwrap();
            assert_eq!(rm.pad_token_id(), 0);
            let rows = vec![vec![5, 9, 14, 3], vec![7, 8], vec![11, 12, 13, 14, 15, 16, 17]];
            let batched = rm.score_ids(&rows).unwrap();
            for (row, in_batch) in rows.iter().zip(&batched) {
                let alone = rm.score_ids(std::slice::from_ref(row)).unwrap()[0];
                assert!((alone - in_batch).abs() <= 1e-5, "{model_type}: alone {alone} vs padded {in_batch}");
                // By hand: the head applied to the backbone's final hidden state of the last token.
                let ids = Tensor::new(row.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                let w = rm.params.frozen();
                let hidden = rm.backbone.hidden_states(&w, ForwardInput::ids(&ids), None).unwrap();
                let last = hidden.narrow(1, row.len() - 1, 1).unwrap().squeeze(1).unwrap();
                let by_hand: f32 =
                    linear(&last, w.get(SCORE).unwrap(), None).unwrap().flatten_all().unwrap().to_vec1().unwrap()[0];
                assert!((by_hand - in_batch).abs() <= 1e-5, "{model_type}: {by_hand} vs {in_batch}");
            }
            assert!((batched[0] - batched[1]).abs() > 1e-4, "{model_type}: different inputs score differently");
            // Trailing pad-id tokens are skipped even when attended (transformers reads the input
            // ids, not the mask): causal attention makes that the score of the sequence without them.
            let trailing = rm.score_ids(&[vec![7, 8, 0, 0]]).unwrap()[0];
            assert!((trailing - batched[1]).abs() <= 1e-5, "{model_type}: {trailing} vs {}", batched[1]);
            let attended_last = rm.score_ids(&[vec![7, 8, 0, 5]]).unwrap()[0];
            assert!((attended_last - batched[1]).abs() > 1e-4, "{model_type}: a real last token is read");
        }
    }

    #[test]
    fn a_causal_lm_is_not_accepted_as_a_reward_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity/tiny-llama");
        let err = RewardModel::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not a reward model"), "{err}");
    }
}
