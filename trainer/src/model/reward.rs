//! The gold reward model: an HF `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification` or `GPTNeoXForSequenceClassification` checkpoint. That is
//! the causal LM's backbone with a bias-free `score` head in place of the LM head, read at the
//! last non-pad token, as transformers' `GenericForSequenceClassification` does.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::hf_config::ModelConfig;
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

    use super::*;

    #[test]
    fn a_causal_lm_is_not_accepted_as_a_reward_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity/tiny-llama");
        let err = RewardModel::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not a reward model"), "{err}");
    }
}
