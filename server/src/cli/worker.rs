//! `goodhart worker`: a trainer process without HTTP, for GPU machines. It claims runs from the
//! shared database (Postgres, or a SQLite file on this machine), renews its claims, streams
//! metrics into the database and writes checkpoints, as `serve` does for its own runs.

use super::serve::JobArgs;
use crate::lifecycle::start_worker;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub jobs: JobArgs,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let mut config = args.jobs.config();
    if config.max_concurrent_runs == 0 {
        anyhow::bail!("--max-concurrent-runs must be at least 1 for a worker (0 is for a web-only `serve`)");
    }
    // A worker listens nowhere; its HTTP settings stay the defaults and are not used.
    config.demo_if_empty = false;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let worker = start_worker(config).await?;
        let token = worker.shutdown_token();
        tokio::spawn(async move {
            super::serve::shutdown_signal().await;
            tracing::info!("shutting down: running trainers checkpoint and their runs go back to the queue");
            token.cancel();
        });
        worker.wait().await
    })
}
