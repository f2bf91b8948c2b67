//! The worker threads that split a micro-batch's examples (and a toy task's evaluation): one
//! pool for the whole process, shared by every run, of [`max_threads`] threads. However many
//! runs a server trains, and whatever their `num_threads`, the thread count stays the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::error::{Error, Result};

/// 0 until [`set_max_threads`]: the number of cores.
static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);

/// This machine's cores (as the OS lets this process use them).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Sets the most worker threads a run may use, and the size of the pool they share (0: the
/// number of cores). A server sets it once at start (`--max-threads-per-run`).
pub fn set_max_threads(threads: usize) {
    MAX_THREADS.store(threads, Ordering::Relaxed);
}

/// The most worker threads a run may use: `num_threads` above it is refused.
pub fn max_threads() -> usize {
    match MAX_THREADS.load(Ordering::Relaxed) {
        0 => cores(),
        n => n,
    }
}

/// The workers a run's `num_threads` asks for (0: one per core), at most [`max_threads`].
pub fn worker_threads(configured: usize) -> usize {
    let max = max_threads();
    if configured == 0 {
        cores().min(max)
    } else {
        configured.min(max)
    }
}

/// Runs `f` on every item, in order, on the shared pool. Its workers live as long as the
/// process: a fresh thread per step would start with a cold allocator heap, and the kernel would
/// zero fresh pages for every buffer it allocates.
pub(crate) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync + Send) -> Result<Vec<R>> {
    use rayon::prelude::*;
    match items {
        [] => Ok(Vec::new()),
        [only] => Ok(vec![f(only)?]),
        _ => pool()?.install(|| items.par_iter().map(&f).collect()),
    }
}

/// The pool of [`max_threads`] workers, created on first use. Only a process that changes its
/// limit after that (tests do) gets a second one.
fn pool() -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let threads = max_threads();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = pools.get(&threads) {
        return Ok(Arc::clone(pool));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("goodhart-worker-{i}"))
        .build()
        .map_err(|e| Error::model(format!("cannot start {threads} worker threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert(threads, Arc::clone(&pool));
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_thread_count_does_not_grow_with_the_number_of_workers_asked_for() {
        let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
        let items: Vec<usize> = (0..64).collect();
        in_parallel(&items[..2], |&i| Ok(i)).unwrap();
        let before = threads();
        for n in 2..=64 {
            let squares = in_parallel(&items[..n], |&i| Ok(i * i)).unwrap();
            assert_eq!(squares, items[..n].iter().map(|i| i * i).collect::<Vec<_>>(), "in order");
        }
        // Other tests of this binary run beside this one, each on a thread of its own; a pool per
        // worker count would have added 2 + 3 + … + 64 = 2079.
        assert!(threads() <= before + 32, "{before} threads before, {} after", threads());
    }

    #[test]
    fn a_run_gets_at_most_the_limit() {
        assert!(worker_threads(0) >= 1);
        assert_eq!(worker_threads(1), 1);
        assert_eq!(worker_threads(1_000_000), max_threads());
    }
}
