//! The trainer's one error type. Every fallible trainer function returns [`Result`].

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::RowProblem;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One invalid field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    pub fn join(errors: &[FieldError]) -> String {
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run config is invalid; every offending field is listed.
    #[error("invalid config: {}", FieldError::join(.0))]
    Config(Vec<FieldError>),

    /// A dataset with bad rows: every one of them, in file order.
    #[error("{}", describe_dataset_problems(.path, .problems))]
    Dataset { path: PathBuf, problems: Vec<RowProblem> },

    /// A model directory or config.json that we cannot build a model from.
    #[error("model: {0}")]
    Model(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Training produced a NaN or infinite value; the last good checkpoint is left intact.
    #[error("non-finite {what} at step {step}: training stopped; the last good checkpoint is intact")]
    NonFinite { step: u64, what: String },

    /// The sink asked to stop (a cancel, a shutdown) before the first training step, while π_init
    /// was being built; nothing was saved. [`crate::train::train_with`] answers it as a stopped run.
    #[error("stopped on request while building π_init, before the first training step")]
    StoppedBeforeTraining,

    /// The run's estimated memory exceeds what the machine has available.
    #[error("not enough memory: {0}")]
    OutOfMemory(String),

    /// A checkpoint or trainer state that cannot be resumed from.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

/// Problems listed one per line; past [`LISTED_PROBLEMS`] only their number.
fn describe_dataset_problems(path: &std::path::Path, problems: &[RowProblem]) -> String {
    let mut text = format!("dataset {}: {} bad row(s)", path.display(), problems.len());
    for p in problems.iter().take(LISTED_PROBLEMS) {
        text.push_str(&format!("\n  {p}"));
    }
    if problems.len() > LISTED_PROBLEMS {
        text.push_str(&format!("\n  ... and {} more", problems.len() - LISTED_PROBLEMS));
    }
    text
}

/// How many dataset problems an error message lists.
pub const LISTED_PROBLEMS: usize = 50;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub fn model(message: impl Into<String>) -> Self {
        Self::Model(message.into())
    }
}
