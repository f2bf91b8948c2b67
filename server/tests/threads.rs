//! However many runs a server trains, and whatever their `num_threads`, its thread count stays
//! flat: one worker pool, shared, of `--max-threads-per-run` threads. Alone in its test binary,
//! because it counts the threads of the whole process.

#[path = "../../tests/common/mod.rs"]
mod common;

use serde_json::json;

/// This process's threads, and how many of them are the trainer's workers (`goodhart-worker-N`,
/// which the kernel keeps as `goodhart-worker`, cut to 15 bytes).
fn threads() -> (usize, usize) {
    let tasks: Vec<_> =
        std::fs::read_dir("/proc/self/task").expect("Linux lists a process's threads").flatten().collect();
    let workers = tasks
        .iter()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.starts_with("goodhart-worker"))
        })
        .count();
    (tasks.len(), workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(target_os = "linux")]
async fn the_thread_count_stays_flat_over_a_hundred_runs_with_different_num_threads() {
    const MAX: usize = 16;
    let t = common::spawn_with(|c| c.max_threads_per_run = MAX).await;
    // Enough examples that a batch splits over every worker it asks for.
    let run = |num_threads: usize| {
        common::tiny_toy(json!({
            "max_steps": 1, "eval_steps": null, "num_threads": num_threads,
            "toy_pairs_per_prompt": 16, "per_device_train_batch_size": MAX,
        }))
    };
    let first = t.create_run(&run(MAX)).await;
    t.wait_for_status(first, "finished").await;
    let before = threads();
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for i in 0..100 {
            ids.push(t.create_run(&run(1 + i % MAX)).await);
        }
        ids
    };
    for id in ids {
        t.wait_for_status(id, "finished").await;
    }
    let after = threads();
    // A pool per distinct `num_threads` would add 2 + 3 + … + 16 = 135 threads. The rest of the
    // process may add a few: SQLite connections (up to 16, each with its thread) and tokio's
    // blocking threads.
    assert!(
        after.0 <= before.0 + 24,
        "{before:?} threads (all, workers) after the first run, {after:?} after 100 more"
    );
    assert_eq!(after.1, MAX, "one pool of --max-threads-per-run workers");
    t.server.stop().await.unwrap();
}
