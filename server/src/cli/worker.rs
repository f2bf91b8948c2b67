//! `goodhart worker`: a trainer process without HTTP, for GPU machines. It claims runs from the
//! shared database (Postgres, or a SQLite file on this machine), renews its claims, streams
//! metrics into the database and writes checkpoints, as `serve` does for its own runs.

use super::serve::JobArgs;
use crate::lifecycle::start_worker;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub jobs: JobArgs,
    /// The device every run this worker claims trains on (`cpu`, `cuda`, `cuda:N`), whatever
    /// the run's own `device` says: one worker per GPU, each with its `cuda:N`. Without it, each
    /// run trains where its `device` says.
    #[arg(long, env = "GOODHART_DEVICE", value_parser = parse_device)]
    pub device: Option<String>,
}

fn parse_device(raw: &str) -> Result<String, String> {
    trainer::config::check_device(raw.trim()).map(|()| raw.trim().to_string())
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let mut config = args.jobs.config();
    config.device = args.device;
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

#[cfg(test)]
mod tests {
    fn worker_error(args: &[&str]) -> String {
        use clap::Parser;
        let argv = ["goodhart", "worker"].iter().chain(args);
        crate::cli::Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn a_device_that_is_not_one_is_refused_naming_the_flag() {
        let refused = worker_error(&["--device", "tpu"]);
        assert!(refused.contains("--device") && refused.contains("is not a device"), "{refused}");
        if !cfg!(feature = "cuda") {
            let refused = worker_error(&["--device", "cuda:1"]);
            assert!(refused.contains("built without CUDA"), "{refused}");
        }
    }

    #[test]
    fn labels_that_are_not_name_value_pairs_are_refused_naming_the_flag() {
        let refused = worker_error(&["--labels", "gpu"]);
        assert!(refused.contains("--labels") && refused.contains("name=value"), "{refused}");
        let refused = worker_error(&["--labels", "gpu=h100 sxm"]);
        assert!(refused.contains("--labels") && refused.contains("\"h100 sxm\""), "{refused}");
    }
}
