//! Datasets in TRL's formats, tokenized and collated exactly as TRL does.
//!
//! - Paired `{prompt, chosen, rejected}` for DPO/IPO; unpaired `{prompt, completion, label}` for
//!   KTO. Paired data can feed KTO: each pair becomes one desirable and one undesirable example.
//! - Prompt and prompt+completion are tokenized; the completion starts where the two token
//!   sequences stop agreeing, and EOS is appended when missing.
//! - Batches are right-padded; chosen rows come first, then rejected rows.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::error::{Error, Result};

/// A tokenizer from a model directory's `tokenizer.json`, with the ids the collator needs.
#[derive(Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
}

impl TextTokenizer {
    /// `eos`/`pad` fall back to the model config's ids when `tokenizer_config.json` names none.
    pub fn from_dir(dir: &Path, config_eos: Option<u32>, config_pad: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let special = read_special_tokens(dir);
        let id_of = |name: &str| special.get(name).and_then(|t| inner.token_to_id(t));
        let eos_token_id = id_of("eos_token").or(config_eos).ok_or_else(|| {
            Error::Tokenizer(format!("{}: no EOS token in tokenizer_config.json or config.json", dir.display()))
        })?;
        let pad_token_id = id_of("pad_token").or(config_pad).unwrap_or(eos_token_id);
        Ok(Self { inner, eos_token_id, pad_token_id })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Tokenizes `prompt` and `prompt + completion`; the completion is whatever follows their
    /// common prefix, with EOS appended when it does not already end with it.
    pub fn tokenize_pair(&self, prompt: &str, completion: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let prompt_ids = self.encode(prompt)?;
        let full = self.encode(&format!("{prompt}{completion}"))?;
        let common = prompt_ids.iter().zip(&full).take_while(|(a, b)| a == b).count();
        let mut completion_ids = full[common..].to_vec();
        if completion_ids.last() != Some(&self.eos_token_id) {
            completion_ids.push(self.eos_token_id);
        }
        Ok((full[..common].to_vec(), completion_ids))
    }
}

/// `eos_token`/`pad_token` from `tokenizer_config.json`, as plain strings or `{content}` objects.
fn read_special_tokens(dir: &Path) -> std::collections::HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) else {
        return Default::default();
    };
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
        return Default::default();
    };
    map.into_iter()
        .filter_map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            Some((k, s))
        })
        .collect()
}

/// One tokenized example: prompt ids and completion ids (EOS included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
}

impl Sequence {
    /// Prompt (its end kept at `max_prompt_length`) then completion, the whole cut to
    /// `max_length` keeping the start (TRL's `keep_start`).
    fn truncated(mut self, max_length: Option<usize>, max_prompt_length: Option<usize>) -> Self {
        if let Some(m) = max_prompt_length {
            if self.prompt.len() > m {
                self.prompt.drain(..self.prompt.len() - m);
            }
        }
        if let Some(m) = max_length {
            if self.prompt.len() >= m {
                self.prompt.truncate(m);
                self.completion.clear();
            } else {
                self.completion.truncate(m - self.prompt.len());
            }
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedExample {
    pub chosen: Sequence,
    pub rejected: Sequence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedExample {
    pub sequence: Sequence,
    /// Desirable (`true`) or undesirable.
    pub label: bool,
    /// Another example's completion, for KTO's mismatched-pair KL estimate z₀ (see
    /// [`assign_mismatched_completions`]).
    pub kl_completion: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dataset {
    Paired(Vec<PairedExample>),
    Unpaired(Vec<UnpairedExample>),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match self {
            Self::Paired(v) => v.len(),
            Self::Unpaired(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// KTO's view: each pair becomes a desirable and an undesirable example, in that order.
    pub fn into_unpaired(self) -> Vec<UnpairedExample> {
        match self {
            Self::Unpaired(v) => v,
            Self::Paired(pairs) => pairs
                .into_iter()
                .flat_map(|p| {
                    [
                        UnpairedExample { sequence: p.chosen, label: true, kl_completion: Vec::new() },
                        UnpairedExample { sequence: p.rejected, label: false, kl_completion: Vec::new() },
                    ]
                })
                .collect(),
        }
    }
}

/// Reads a JSONL file in TRL's standard (paired) or unpaired format. Every line must be the
/// same format; a bad line is reported with its number.
pub fn load_jsonl(
    path: &Path,
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
    max_prompt_length: Option<usize>,
) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, message: String| Error::Data { path: PathBuf::from(path), line, message };
    let mut paired = Vec::new();
    let mut unpaired = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(raw).map_err(|e| bad(line, format!("malformed JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| bad(line, "expected a JSON object".into()))?;
        let text_field = |name: &str| -> Result<&str> {
            match obj.get(name) {
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(bad(line, format!("`{name}` must be a string"))),
                None => Err(bad(line, format!("missing `{name}`"))),
            }
        };
        let prompt = text_field("prompt")?;
        let seq = |completion: &str| -> Result<Sequence> {
            let (prompt, completion) = tokenizer.tokenize_pair(prompt, completion)?;
            Ok(Sequence { prompt, completion }.truncated(max_length, max_prompt_length))
        };
        if obj.contains_key("chosen") || obj.contains_key("rejected") {
            if !unpaired.is_empty() {
                return Err(bad(line, "a paired row in an unpaired (KTO) dataset".into()));
            }
            paired.push(PairedExample { chosen: seq(text_field("chosen")?)?, rejected: seq(text_field("rejected")?)? });
        } else if obj.contains_key("completion") {
            if !paired.is_empty() {
                return Err(bad(line, "an unpaired row in a paired dataset".into()));
            }
            let label = match obj.get("label") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad(line, "`label` must be true or false".into())),
                None => return Err(bad(line, "KTO data needs a boolean `label` on every row".into())),
            };
            unpaired.push(UnpairedExample {
                sequence: seq(text_field("completion")?)?,
                label,
                kl_completion: Vec::new(),
            });
        } else {
            return Err(bad(line, "expected {prompt, chosen, rejected} or {prompt, completion, label}".into()));
        }
    }
    if paired.is_empty() && unpaired.is_empty() {
        return Err(bad(0, "the dataset has no examples".into()));
    }
    Ok(if paired.is_empty() { Dataset::Unpaired(unpaired) } else { Dataset::Paired(paired) })
}

/// Right-padded rows with their masks, as TRL's collator lays them out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collated {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u8>>,
    pub completion_mask: Vec<Vec<u8>>,
}

impl Collated {
    pub fn from_sequences<'a>(seqs: impl IntoIterator<Item = &'a Sequence>, pad: u32) -> Self {
        let seqs: Vec<&Sequence> = seqs.into_iter().collect();
        let width = seqs.iter().map(|s| s.prompt.len() + s.completion.len()).max().unwrap_or(0);
        let mut out = Self::default();
        for s in seqs {
            let len = s.prompt.len() + s.completion.len();
            let mut ids: Vec<u32> = s.prompt.iter().chain(&s.completion).copied().collect();
            ids.resize(width, pad);
            let mut attn = vec![1u8; len];
            attn.resize(width, 0);
            let mut comp = vec![0u8; s.prompt.len()];
            comp.resize(len, 1);
            comp.resize(width, 0);
            out.input_ids.push(ids);
            out.attention_mask.push(attn);
            out.completion_mask.push(comp);
        }
        out
    }

    pub fn rows(&self) -> usize {
        self.input_ids.len()
    }

    /// Completion tokens scored per row (at least 1, so averages stay finite).
    pub fn completion_token_counts(&self) -> Vec<f32> {
        self.completion_mask.iter().map(|m| m.iter().skip(1).map(|&v| f32::from(v)).sum::<f32>().max(1.0)).collect()
    }

    pub fn width(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }
}

/// One optimizer micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// `B` chosen rows, then `B` rejected rows.
    Paired(Collated),
    /// Rows in order with their labels, plus the KL rows: each prompt with its example's
    /// mismatched completion, for KTO's z₀.
    Unpaired { rows: Collated, labels: Vec<bool>, kl_rows: Collated },
}

pub fn collate_paired(examples: &[&PairedExample], pad: u32) -> Batch {
    let seqs = examples.iter().map(|e| &e.chosen).chain(examples.iter().map(|e| &e.rejected));
    Batch::Paired(Collated::from_sequences(seqs, pad))
}

/// TRL pairs each example with the completion of the previous one, in dataset order, within
/// chunks of `chunk` examples (its dataset-preparation batches), rotating at chunk ends. The
/// pairing is fixed before training, so shuffling never changes it.
pub fn assign_mismatched_completions(examples: &mut [UnpairedExample], chunk: usize) {
    for group in examples.chunks_mut(chunk.max(1)) {
        let n = group.len();
        let completions: Vec<Vec<u32>> = group.iter().map(|e| e.sequence.completion.clone()).collect();
        for (i, e) in group.iter_mut().enumerate() {
            e.kl_completion = completions[(i + n - 1) % n].clone();
        }
    }
}

pub fn collate_unpaired(examples: &[&UnpairedExample], pad: u32) -> Batch {
    let mismatched: Vec<Sequence> = examples
        .iter()
        .map(|e| Sequence { prompt: e.sequence.prompt.clone(), completion: e.kl_completion.clone() })
        .collect();
    Batch::Unpaired {
        rows: Collated::from_sequences(examples.iter().map(|e| &e.sequence), pad),
        labels: examples.iter().map(|e| e.label).collect(),
        kl_rows: Collated::from_sequences(&mismatched, pad),
    }
}

/// Where the data loader stands: which epoch, and how many examples of it were consumed.
/// Together with the seed this fully determines every later batch, so it is all a
/// checkpoint needs to resume the data stream exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DataCursor {
    pub epoch: u64,
    pub offset: usize,
}

/// Yields index batches over `len` examples, reshuffled each epoch from `(seed, epoch)`.
/// A batch never straddles an epoch; the last one of an epoch may be short, as in PyTorch.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    len: usize,
    batch_size: usize,
    seed: u64,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl BatchSampler {
    pub fn new(len: usize, batch_size: usize, seed: u64, cursor: DataCursor) -> Self {
        let mut s = Self { len, batch_size, seed, cursor, order: Vec::new() };
        s.order = s.epoch_order(cursor.epoch);
        s
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        order
    }

    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.len.div_ceil(self.batch_size)
    }

    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.cursor.offset >= self.len {
            self.cursor = DataCursor { epoch: self.cursor.epoch + 1, offset: 0 };
            self.order = self.epoch_order(self.cursor.epoch);
        }
        let end = (self.cursor.offset + self.batch_size).min(self.len);
        let batch = self.order[self.cursor.offset..end].to_vec();
        self.cursor.offset = end;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_prompt_end_and_the_sequence_start() {
        let s = Sequence { prompt: vec![1, 2, 3, 4], completion: vec![5, 6, 7] };
        let t = s.clone().truncated(Some(5), Some(3));
        assert_eq!(t.prompt, vec![2, 3, 4]);
        assert_eq!(t.completion, vec![5, 6]);
        let t = s.truncated(Some(3), None);
        assert_eq!(t.prompt, vec![1, 2, 3]);
        assert!(t.completion.is_empty());
    }

    #[test]
    fn the_sampler_covers_every_example_once_per_epoch_and_resumes_exactly() {
        let mut a = BatchSampler::new(10, 3, 7, DataCursor::default());
        let epoch: Vec<Vec<usize>> = (0..4).map(|_| a.next_batch()).collect();
        let mut seen: Vec<usize> = epoch.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(epoch[3].len(), 1);
        let cursor = a.cursor();
        let next: Vec<Vec<usize>> = (0..3).map(|_| a.next_batch()).collect();
        let mut resumed = BatchSampler::new(10, 3, 7, cursor);
        let again: Vec<Vec<usize>> = (0..3).map(|_| resumed.next_batch()).collect();
        assert_eq!(next, again);
        assert_ne!(epoch[0], next[0], "a new epoch is reshuffled");
    }
}
