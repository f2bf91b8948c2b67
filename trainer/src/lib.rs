//! Goodhart's trainer: turns a run config into metrics and checkpoints.
//!
//! A pure library: no async runtime, database or web framework. It reports through
//! [`metrics::MetricSink`], so the CLI and the server share every line of training code.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod logps;
pub mod loss;
pub mod memory;
pub mod metric_names;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod overopt;
pub mod retention;
pub mod sft;
pub mod summary;
pub mod sweep;
pub mod tasks;
pub mod train;
pub mod trust_region;
pub mod workers;

pub use error::{Error, Result};
