//! Background work: the run queue (the only writer of run status), the runner that executes
//! claimed runs on blocking threads, and the sink that carries metrics into SQLite and out to
//! live subscribers.

pub mod event_bus;
pub mod queue;
pub mod relay;
pub mod runner;
pub mod sink;

use std::path::{Path, PathBuf};

/// Where a run's checkpoints live: `<data-dir>/runs/<id>`.
pub fn run_dir(data_dir: &Path, run_id: i64) -> PathBuf {
    data_dir.join("runs").join(run_id.to_string())
}

/// Where the toy tasks' π_init cache goes, under `--data-dir`, when a config names none.
pub const DEFAULT_TOY_CACHE: &str = "toy-cache";

/// The π_init cache a toy run uses on a server whose data directory is `data_dir`: its
/// `toy_cache_dir`, stored relative to the data directory, or [`DEFAULT_TOY_CACHE`]. An absolute
/// one (stored before configs' paths were contained) is left as it is.
pub fn toy_cache_dir(config: &trainer::config::RunConfig, data_dir: &Path) -> PathBuf {
    match &config.toy_cache_dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => data_dir.join(dir),
        None => data_dir.join(DEFAULT_TOY_CACHE),
    }
}
