//! All SQL, one file per table, for both backends: SQLite (the embedded default, WAL mode:
//! readers never block the single writer) and Postgres (`--database-url postgres://…`, for a
//! web node and workers on several machines).
//!
//! One set of queries serves both. They use `$N` placeholders (SQLite reads them too), integers
//! are 64-bit and flags are 0/1 integers in both schemas, and the few statements a backend
//! spells its own way ask [`Backend`] (the claim's `skip locked`, the packed series, how a
//! writing transaction starts).

pub mod api_tokens;
pub mod checkpoints;
pub mod metrics;
pub mod runs;
pub mod sessions;
pub mod sweeps;
pub mod testing;
pub mod users;
pub mod workers;

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, Arguments, ConnectOptions, Encode, Executor, FromRow, Type};

/// The database handle everything outside `db/` and the queue holds: one pool type for both
/// backends. (An alias rather than a wrapper: callers only pass it back into `db::` functions.)
pub type Pool = sqlx::AnyPool;

/// A connection, or a transaction's, that the `db::` functions writing inside a caller's
/// transaction take.
pub type Conn = AnyConnection;

/// Which engine a pool or connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a `--database-url` names: `postgres://` / `postgresql://`, otherwise SQLite
    /// (`sqlite://PATH`, `sqlite::memory:` or a bare file path).
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    pub fn of_pool(pool: &Pool) -> Self {
        Self::of_url(pool.connect_options().database_url.as_str())
    }

    pub fn of_conn(conn: &Conn) -> Self {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }
}

/// The URL sqlx opens: a bare path becomes `sqlite://PATH`, and a SQLite file is created when
/// missing (`mode=rwc`).
fn normalized_url(database_url: &str) -> String {
    if Backend::of_url(database_url) == Backend::Postgres || database_url.starts_with("sqlite::memory:") {
        return database_url.to_string();
    }
    let url =
        if database_url.starts_with("sqlite:") { database_url.to_string() } else { format!("sqlite://{database_url}") };
    if url.contains("mode=") {
        url
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The URL as logs and errors may show it: without its password.
pub fn redacted(database_url: &str) -> String {
    match (database_url.split_once("://"), database_url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if rest.contains(':') && at > scheme.len() => {
            let userinfo = &database_url[scheme.len() + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{}", &database_url[at..]),
                None => database_url.to_string(),
            }
        }
        _ => database_url.to_string(),
    }
}

/// Opens (creating a SQLite file if missing) the database and runs its backend's migrations
/// (`migrations/sqlite/` or `migrations/postgres/`).
pub async fn connect(database_url: &str) -> Result<Pool, sqlx::Error> {
    connect_with(database_url, 16).await
}

/// [`connect`] with at most `max_connections` open at once.
pub async fn connect_with(database_url: &str, max_connections: u32) -> Result<Pool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(database_url);
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                match backend {
                    // WAL + NORMAL is durable across process crashes (only an OS crash can
                    // lose the last commits).
                    Backend::Sqlite => conn.execute(
                        "pragma journal_mode = wal; pragma synchronous = normal; \
                         pragma busy_timeout = 10000; pragma foreign_keys = on;",
                    ),
                    // A worker cut off from the database inside a transaction would otherwise
                    // keep its row locks (the metric writer's share lock on its runs) until
                    // TCP gives up, hours later, and no reclaim could take its runs back.
                    Backend::Postgres => conn.execute("set idle_in_transaction_session_timeout = '10s'"),
                }
                .await?;
                Ok(())
            })
        })
        .connect_with(
            normalized_url(database_url)
                .parse::<AnyConnectOptions>()?
                // sqlx logs a slow statement whole: a 4000-row metrics insert is 100 KB of text.
                .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(60)),
        )
        .await?;
    match backend {
        Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
        Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
    }
    Ok(pool)
}

/// A transaction that writes.
pub type Tx = sqlx::Transaction<'static, Any>;

/// Starts every transaction that reads and then writes what it read.
///
/// - SQLite: a deferred transaction that reads first and then writes fails with `SQLITE_BUSY`
///   (not waiting out the busy timeout) when another connection committed in between;
///   `BEGIN IMMEDIATE` takes the write lock up front and waits for it.
/// - Postgres: the queue's transactions take one transaction-scoped advisory lock, so they run
///   one after another as they do on SQLite; claims (`skip locked`) and the metric writer
///   (row locks, see `jobs::queue::still_held`) do not take it and run side by side.
pub async fn begin_write(pool: &Pool) -> sqlx::Result<Tx> {
    match Backend::of_pool(pool) {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("select pg_advisory_xact_lock($1)").bind(QUEUE_LOCK).execute(&mut *tx).await?;
            Ok(tx)
        }
    }
}

/// The advisory lock key of [`begin_write`] on Postgres ("goodhart" in ASCII, truncated).
const QUEUE_LOCK: i64 = 0x676f_6f64_6861;

/// Starts a transaction that writes without reading first (the metric writer's): SQLite still
/// needs `BEGIN IMMEDIATE`; Postgres's row locks are enough.
pub async fn begin_append(pool: &Pool) -> sqlx::Result<Tx> {
    match Backend::of_pool(pool) {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => pool.begin().await,
    }
}

/// A statement built in pieces with bound values, written with `$N` placeholders that both
/// backends read (sqlx's `QueryBuilder<Any>` writes `?`, which Postgres does not).
#[derive(Default)]
pub struct Sql {
    text: String,
    args: AnyArguments<'static>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), args: AnyArguments::default() }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: Encode<'static, Any> + Type<Any> + 'static,
    {
        // Only a value that fails to encode errs; ours are integers, floats and strings.
        self.args.add(value).expect("a bound value encodes");
        let _ = write!(self.text, "${}", self.args.len());
        self
    }

    /// Appends `v1, v2, …` as placeholders.
    pub fn bind_list<T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self
    where
        T: Encode<'static, Any> + Type<Any> + 'static,
    {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self
    }

    pub async fn execute<'c, E: Executor<'c, Database = Any>>(self, executor: E) -> sqlx::Result<u64> {
        Ok(sqlx::query_with(&self.text, self.args).execute(executor).await?.rows_affected())
    }

    pub async fn fetch_optional<'c, T, E>(self, executor: E) -> sqlx::Result<Option<T>>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
        E: Executor<'c, Database = Any>,
    {
        sqlx::query_as_with(&self.text, self.args).fetch_optional(executor).await
    }

    pub async fn fetch_all<'c, T, E>(self, executor: E) -> sqlx::Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
        E: Executor<'c, Database = Any>,
    {
        sqlx::query_as_with(&self.text, self.args).fetch_all(executor).await
    }
}

/// Unix milliseconds, the timestamp format of every table.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(redacted("postgres://lab:s3cret@db:5432/goodhart"), "postgres://lab:***@db:5432/goodhart");
        assert_eq!(redacted("postgres://lab@db/goodhart"), "postgres://lab@db/goodhart");
        assert_eq!(redacted("sqlite://goodhart.db"), "sqlite://goodhart.db");
    }

    #[test]
    fn a_bare_path_opens_as_a_sqlite_file_created_when_missing() {
        assert_eq!(normalized_url("runs.db"), "sqlite://runs.db?mode=rwc");
        assert_eq!(normalized_url("sqlite://a.db"), "sqlite://a.db?mode=rwc");
        assert_eq!(normalized_url("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
        assert_eq!(normalized_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(Backend::of_url("postgresql://h/db"), Backend::Postgres);
    }
}
