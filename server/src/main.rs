//! `goodhart`: thin entry point. Parses the command line, sets up tracing, dispatches.

use std::process::ExitCode;

use clap::Parser;

// candle allocates a fresh buffer for every op output; glibc's malloc returns the large ones to
// the OS and page-faults them back in on the next step. mimalloc keeps them (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The trainer parallelises over examples (`num_threads` workers); candle's own threads inside
    // each small op mostly wait on each other. Keep them at one unless the user asks otherwise.
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
    let cli = server::cli::Cli::parse();
    server::cli::init_tracing();
    match server::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
