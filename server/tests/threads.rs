//! However many runs a server trains, and whatever their `num_threads`, its thread count stays
//! flat: one worker pool, shared, of `--max-threads-per-run` threads. Alone in its test binary,
//! because it counts the threads of the whole process.

mod common;

use serde_json::json;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("Linux lists a process's threads").count()
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
    // A pool per distinct `num_threads` would add 2 + 3 + … + 16 = 135 threads.
    assert!(after <= before + 12, "{before} threads after the first run, {after} after 100 more");
    t.server.stop().await.unwrap();
}
