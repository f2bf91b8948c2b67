//! `goodhart`: thin entry point. Parses the command line, sets up tracing, dispatches.

use std::process::ExitCode;

use clap::Parser;

// candle allocates a fresh buffer for every op output. glibc's malloc returns the large ones to
// the OS and the kernel zeroes fresh pages for them on the next step; mimalloc, told to commit
// its arenas eagerly and never purge, reuses them (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` and `mi_option_purge_delay` (the same values in its
/// v2 and v3 headers). The environment (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`)
/// still wins when set.
fn keep_freed_memory() {
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    for (option, env, value) in
        [(ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 1), (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1)]
    {
        if std::env::var_os(env).is_none() {
            // SAFETY: plain integer options of the allocator in use, set before any other thread
            // exists; mimalloc reads them on later allocations.
            #[allow(unsafe_code)]
            unsafe {
                libmimalloc_sys::mi_option_set(option, value);
            }
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
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
