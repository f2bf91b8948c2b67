//! Postgres restarted while a worker trains: the worker reconnects, and the run ends with every
//! step of every metric stored once. Its own test binary, since the restart drops every
//! connection of the server (cargo runs test binaries one after another).
//!
//! Needs `GOODHART_TEST_POSTGRES` and `GOODHART_TEST_POSTGRES_DIR` (the cluster `.ci/postgres
//! start DIR` made; `.ci/run` sets both). Without them it says so and passes.

mod common;

use std::process::Command;

use common::process::Goodhart;
use common::{config, create_run, fixtures, full_series, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_loses_and_repeats_nothing() {
    let Ok(cluster) = std::env::var("GOODHART_TEST_POSTGRES_DIR") else {
        eprintln!("skipped: set GOODHART_TEST_POSTGRES and GOODHART_TEST_POSTGRES_DIR (see .ci/postgres)");
        return;
    };
    if !server::db::testing::on_postgres() {
        eprintln!("skipped: set GOODHART_TEST_POSTGRES");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = server::db::testing::database_url(dir.path()).await;
    let fixtures = fixtures().display().to_string();
    let data = dir.path().join("data").display().to_string();
    let args = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--max-concurrent-runs",
        "1",
        "--database-url",
        &db,
        "--data-dir",
        &data,
        "--models-dir",
        &fixtures,
        "--datasets-dir",
        &fixtures,
    ];
    let mut node = Goodhart::spawn("serve", &args, &[]);
    let base = node.wait_listening();
    let client = reqwest::Client::new();
    let total = 600;
    let id = create_run(&client, &base, &config(total, 100)).await;
    wait_for(&client, &base, id, "step 100", |r| r["step"].as_i64().unwrap_or(0) >= 100).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/postgres");
    let restarted = Command::new(script).args(["restart", &cluster]).status().expect(".ci/postgres runs");
    assert!(restarted.success(), "Postgres restarted");

    let run = wait_for(&client, &base, id, "finished", |r| r["status"] == "finished").await;
    assert_eq!((run["attempts"].as_i64(), run["step"].as_i64()), (Some(1), Some(total as i64)), "{run}");
    for name in ["loss", "rewards/margins", "learning_rate"] {
        let steps: Vec<i64> = full_series(&client, &base, id, name).await.into_iter().map(|p| p.0).collect();
        assert_eq!(steps, (1..=total as i64).collect::<Vec<_>>(), "{name}: every step once");
    }
    node.kill();
}
