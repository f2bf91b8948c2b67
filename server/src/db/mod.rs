//! All SQL, one file per table. SQLite in WAL mode: readers never block the single writer.

pub mod api_tokens;
pub mod checkpoints;
pub mod metrics;
pub mod runs;
pub mod sessions;
pub mod sweeps;
pub mod users;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// The database handle everything outside `db/` and the queue holds. It names the backend only
/// here, so a Postgres backend changes this alias, the SQL in `db/` and `jobs/queue.rs`, and no
/// handler. (An alias rather than a wrapper: callers only pass it back into `db::` functions.)
pub type Pool = sqlx::SqlitePool;

/// Opens (creating if missing) the database and runs the migrations in `migrations/`.
pub async fn connect(database_url: &str) -> Result<Pool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(database_url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL + NORMAL is durable across process crashes (only an OS crash can lose the last commits).
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(16).connect_with(options).await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    Ok(pool)
}

/// Starts every transaction that writes. A deferred transaction that reads first and then
/// writes fails with `SQLITE_BUSY` (not waiting out the busy timeout) when another connection
/// committed in between; `IMMEDIATE` takes the write lock up front and waits for it.
pub const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Unix milliseconds, the timestamp format of every table.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
