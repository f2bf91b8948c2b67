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
pub mod synthetic;
mod tokenizer;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use chat_template::ChatTemplate;
pub use files::{count_rows, FileFormat, Location, RowProblem};
pub use prepare::{first_row_kind, inspect, load, DatasetReport, EvalPrompt, EvalSet, LoadOptions, LoadedData};
pub use rows::{extract_prompt, parse_row, Content, DatasetKind, Row, RowType};
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
