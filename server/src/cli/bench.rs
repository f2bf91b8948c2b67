//! `goodhart bench trainer`: to come.

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Median ms per TR-DPO step for the peer's `tiny` and `small` configs.
    Trainer,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Trainer => anyhow::bail!("not built yet"),
    }
}
