//! The `goodhart` subcommands.

mod serve;
mod sweep;
mod sweep_report;
mod train;
mod user;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "goodhart", version, about = "A self-hosted lab for trust-region preference optimization")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train one run from a TOML or JSON config.
    Train(train::TrainArgs),
    /// Train a grid of runs (`[base]` + `[[grid]]`), then write sweep.csv and the figures.
    Sweep(sweep::SweepArgs),
    /// The web server: a run queue, background trainers and the JSON API.
    Serve(Box<serve::ServeArgs>),
    /// Who may sign in to the server: `goodhart user add NAME`, `list`, `remove`, `token`, `revoke-token`.
    User(user::UserArgs),
    /// A trainer without HTTP, for GPU machines: claims runs from the shared database.
    Worker(Box<worker::WorkerArgs>),
    /// Benchmarks: `goodhart bench trainer`, `device`, `kernels`, `eval`, `scale`, `server`, `data`, `ui`.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Serve(args) => serve::run(*args),
        Command::User(args) => user::run(args),
        Command::Worker(args) => worker::run(*args),
        Command::Bench(cmd) => crate::bench::run(cmd),
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
