//! Background work: the run queue (the only writer of run status), the runner that executes
//! claimed runs on blocking threads, and the sink that carries metrics into SQLite and out to
//! live subscribers.

pub mod events;
pub mod queue;
pub mod runner;
pub mod sink;

use std::path::{Path, PathBuf};

/// Where a run's checkpoints live: `<data-dir>/runs/<id>`.
pub fn run_dir(data_dir: &Path, run_id: i64) -> PathBuf {
    data_dir.join("runs").join(run_id.to_string())
}
