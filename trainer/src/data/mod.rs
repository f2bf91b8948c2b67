//! Datasets in TRL's formats, tokenized and collated exactly as TRL does.
//!
//! - Files: JSON Lines or Parquet ([`files`]), rows of TRL's dataset types, standard or
//!   conversational ([`rows`]), rendered with the model's chat template ([`chat_template`]) and
//!   tokenized as TRL 1.16 does ([`prepare`]). Every bad row is reported at once.
//! - Paired `{prompt, chosen, rejected}` for DPO/IPO; unpaired `{prompt, completion, label}` for
//!   KTO. Paired data can feed KTO: each pair becomes one desirable and one undesirable example.
//! - An optional held-out split by prompt, for evaluation ([`EvalSet`]).
//! - Batches are right-padded; chosen rows come first, then rejected rows.

mod chat_template;
mod files;
mod prepare;
mod rows;
mod sampler;
pub mod synthetic;
mod tokenizer;

pub use chat_template::ChatTemplate;
pub use files::{count_rows, FileFormat, Location, RowProblem};
pub use prepare::{first_row_kind, inspect, load, DatasetReport, EvalPrompt, EvalSet, LoadOptions, LoadedData};
pub use rows::{extract_prompt, parse_row, Content, DatasetKind, Row, RowType};
pub use sampler::{batches_per_epoch, updates_per_epoch, BatchSampler, DataCursor, TorchGenerator, TORCH_RANDPERM_MAX};
pub use tokenizer::TextTokenizer;

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
    /// This example's completion before `max_length` cut it, when it did: another example's KL
    /// row borrows the whole of it (TRL cuts a KL row only once it is joined to its own prompt).
    pub full_completion: Option<Vec<u32>>,
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

    /// Every example's prompt, in dataset order.
    pub fn prompts(&self) -> Vec<Vec<u32>> {
        match self {
            Self::Paired(v) => v.iter().map(|e| e.chosen.prompt.clone()).collect(),
            Self::Unpaired(v) => v.iter().map(|e| e.sequence.prompt.clone()).collect(),
        }
    }

    /// The longest prompt + completion and the longest completion, in tokens.
    pub fn longest_sequences(&self) -> (usize, usize) {
        let seqs: Vec<&Sequence> = match self {
            Self::Paired(v) => v.iter().flat_map(|e| [&e.chosen, &e.rejected]).collect(),
            Self::Unpaired(v) => v.iter().map(|e| &e.sequence).collect(),
        };
        let total = seqs.iter().map(|s| s.prompt.len() + s.completion.len()).max().unwrap_or(0);
        let completion = seqs.iter().map(|s| s.completion.len()).max().unwrap_or(0);
        (total, completion)
    }

    /// KTO's view, in the order TRL's `unpair_preference_dataset` gives it: per 1000 pairs
    /// (`datasets.map`'s batch), every chosen completion (desirable), then every rejected one.
    pub fn into_unpaired(self) -> Vec<UnpairedExample> {
        let unpaired =
            |sequence, label| UnpairedExample { sequence, label, kl_completion: Vec::new(), full_completion: None };
        match self {
            Self::Unpaired(v) => v,
            Self::Paired(pairs) => pairs
                .chunks(prepare::UNPAIR_CHUNK)
                .flat_map(|chunk| {
                    let chosen = chunk.iter().map(|p| unpaired(p.chosen.clone(), true));
                    chosen.chain(chunk.iter().map(|p| unpaired(p.rejected.clone(), false))).collect::<Vec<_>>()
                })
                .collect(),
        }
    }
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
/// chunks of `chunk` examples (its dataset-preparation batches), rotating at chunk ends, and cuts
/// each prompt + borrowed completion to `max_length`. The pairing is fixed before training, so
/// no sampler changes it.
pub fn assign_mismatched_completions(examples: &mut [UnpairedExample], chunk: usize, max_length: Option<usize>) {
    let completions: Vec<Vec<u32>> =
        examples.iter().map(|e| e.full_completion.clone().unwrap_or_else(|| e.sequence.completion.clone())).collect();
    for (i, e) in examples.iter_mut().enumerate() {
        let mut borrowed = completions[mismatched_neighbour(i, completions.len(), chunk)].clone();
        if let Some(m) = max_length {
            borrowed.truncate(m.saturating_sub(e.sequence.prompt.len()));
        }
        e.kl_completion = borrowed;
    }
}

/// The example whose completion example `i` of `len` gets for KTO's KL estimate: the previous
/// one within its chunk of `chunk`, the chunk's last for its first.
pub fn mismatched_neighbour(i: usize, len: usize, chunk: usize) -> usize {
    let chunk = chunk.max(1);
    let start = i - i % chunk;
    let n = chunk.min(len - start);
    start + (i - start + n - 1) % n
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_example_is_mismatched_with_its_predecessor_within_its_chunk() {
        let neighbours: Vec<usize> = (0..7).map(|i| mismatched_neighbour(i, 7, 3)).collect();
        assert_eq!(neighbours, vec![2, 0, 1, 5, 3, 4, 6]);
    }

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
}
