//! Databases for tests, on the backend the environment picks: a fresh Postgres database on the
//! server `GOODHART_TEST_POSTGRES` names (`.ci/run` starts one and runs the server's tests a
//! second time with it set), otherwise a SQLite file in the test's own directory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, Executor};

/// The variable that points the tests at a Postgres server (a URL such as
/// `postgres://goodhart@127.0.0.1:54329/postgres`; its database is only used to create others).
pub const POSTGRES_ENV: &str = "GOODHART_TEST_POSTGRES";

/// The `--database-url` of a test's directory `dir`: a new, empty database on the first call,
/// the same one afterwards (so several workers of one test share it). `dir` holds the SQLite
/// file, or remembers which Postgres database it got.
pub async fn database_url(dir: &Path) -> String {
    let Ok(admin) = std::env::var(POSTGRES_ENV).map(|v| v.trim().to_string()) else {
        return format!("sqlite://{}", dir.join("goodhart.db").display());
    };
    if admin.is_empty() {
        return format!("sqlite://{}", dir.join("goodhart.db").display());
    }
    let remembered = dir.join("postgres-database-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return url;
    }
    let url = fresh_postgres(&admin).await;
    std::fs::write(&remembered, &url).expect("remember the test database");
    url
}

/// A pool on [`database_url`].
pub async fn pool(dir: &Path) -> super::Pool {
    super::connect(&database_url(dir).await).await.expect("test database")
}

/// Whether the tests run on Postgres (for the few that check a backend's own behaviour).
pub fn on_postgres() -> bool {
    std::env::var(POSTGRES_ENV).is_ok_and(|v| !v.trim().is_empty())
}

async fn fresh_postgres(admin: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name =
        format!("goodhart_test_{}_{}_{}", std::process::id(), super::now_ms(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("GOODHART_TEST_POSTGRES answers");
    conn.execute(format!("create database {name}").as_str()).await.expect("create the test database");
    conn.close().await.ok();
    let (base, _) = admin.rsplit_once('/').expect("a postgres URL ends in /DATABASE");
    format!("{base}/{name}")
}
