//! A model directory's tokenizer: `tokenizer.json`, its special tokens and its chat template.

use std::path::Path;

use serde_json::Value;

use super::chat_template::{no_template, read_special_tokens, ChatTemplate};
use crate::error::{Error, Result};

/// A tokenizer from a model directory's `tokenizer.json`, with the ids the collator needs and
/// the chat template conversational data is rendered with.
#[derive(Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    /// The EOS token's text, appended to plain-text completions as TRL does.
    pub eos_token: String,
    /// The model's chat template, or why there is none usable.
    chat_template: std::result::Result<ChatTemplate, String>,
}

impl TextTokenizer {
    /// `eos`/`pad` fall back to the model config's ids when `tokenizer_config.json` names none.
    pub fn from_dir(dir: &Path, config_eos: Option<u32>, config_pad: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let special = read_special_tokens(dir);
        let text_of = |name: &str| special.get(name).and_then(Value::as_str);
        let id_of = |name: &str| text_of(name).and_then(|t| inner.token_to_id(t));
        let eos_token_id = id_of("eos_token").or(config_eos).ok_or_else(|| {
            Error::Tokenizer(format!("{}: no EOS token in tokenizer_config.json or config.json", dir.display()))
        })?;
        let eos_token = match text_of("eos_token") {
            Some(t) => t.to_string(),
            None => inner.id_to_token(eos_token_id).ok_or_else(|| {
                Error::Tokenizer(format!("{}: EOS id {eos_token_id} is not in the vocabulary", dir.display()))
            })?,
        };
        let pad_token_id = id_of("pad_token").or(config_pad).unwrap_or(eos_token_id);
        let chat_template = ChatTemplate::from_dir(dir, special).and_then(|t| t.ok_or_else(|| no_template(dir)));
        Ok(Self { inner, eos_token_id, pad_token_id, eos_token, chat_template })
    }

    /// Tokenizes as `tokenizer(text)` does: with the post-processor's special tokens (BOS…).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// `add_special_tokens = false` is how transformers tokenizes a rendered chat template, whose
    /// text already holds its special tokens.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The chat template, or a message saying why conversational data cannot be rendered.
    pub fn chat_template(&self) -> std::result::Result<&ChatTemplate, &str> {
        self.chat_template.as_ref().map_err(String::as_str)
    }
}
