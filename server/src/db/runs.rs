//! Reading runs and recording their progress. Every status change lives in `jobs::queue`.

use super::{Conn, Pool, Sql};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [Self::Queued, Self::Running, Self::Finished, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// No further status change will happen without a user action.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub id: i64,
    pub sweep_id: Option<i64>,
    pub config: String,
    pub status: String,
    /// 1 once a cancel arrived for the running run (see `jobs::queue`), else 0.
    pub cancel_requested: i64,
    pub step: i64,
    pub total_steps: Option<i64>,
    pub error: Option<String>,
    /// Why a finished run ended before its last step (`early_stopping`).
    pub status_reason: Option<String>,
    pub attempts: i64,
    pub parent_id: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub heartbeat_at: Option<i64>,
    /// The worker (server) holding the run while it runs.
    pub worker: Option<String>,
    /// The user who launched it; `None` for the `--auth-token` or a server without sign-in.
    pub launched_by: Option<String>,
}

#[cfg(test)]
impl Run {
    /// A stored run for unit tests: its id and status, the rest empty (`..Run::example(…)`
    /// sets what a test needs).
    pub fn example(id: i64, status: &str) -> Self {
        Self {
            id,
            sweep_id: None,
            config: "{}".into(),
            status: status.into(),
            cancel_requested: 0,
            step: 0,
            total_steps: None,
            error: None,
            status_reason: None,
            attempts: 1,
            parent_id: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            worker: None,
            launched_by: None,
        }
    }
}

impl Run {
    /// A cancel arrived while it ran; the trainer stops before its next step.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested != 0
    }

    pub fn status(&self) -> RunStatus {
        RunStatus::parse(&self.status).unwrap_or(RunStatus::Failed)
    }

    pub fn config_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

const COLUMNS: &str =
    "id, sweep_id, config, status, cancel_requested, step, total_steps, error, status_reason, attempts, \
                       parent_id, created_at, started_at, finished_at, heartbeat_at, worker, launched_by";

pub async fn get(pool: &Pool, id: i64) -> sqlx::Result<Option<Run>> {
    sqlx::query_as(&format!("select {COLUMNS} from runs where id = $1")).bind(id).fetch_optional(pool).await
}

/// How `GET /api/runs` may order its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Newest,
    Oldest,
    Status,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "-id" | "newest" | "-created_at" => Some(Self::Newest),
            "id" | "oldest" | "created_at" => Some(Self::Oldest),
            "status" => Some(Self::Status),
            _ => None,
        }
    }

    fn order_by(self) -> &'static str {
        match self {
            Self::Newest => "id desc",
            Self::Oldest => "id asc",
            Self::Status => "status asc, id desc",
        }
    }
}

pub async fn list(pool: &Pool, status: Option<RunStatus>, sweep_id: Option<i64>, sort: Sort) -> sqlx::Result<Vec<Run>> {
    list_launched_by(pool, status, sweep_id, None, sort, None).await
}

/// The filters of [`list_launched_by`] and [`count_launched_by`]: `$1` status, `$2` sweep,
/// `$3` launcher, each ignored when null.
const FILTERS: &str =
    "($1 is null or status = $1) and ($2 is null or sweep_id = $2) and ($3 is null or launched_by = $3)";

/// [`list`], and of those only the runs this user launched (`?launched_by=NAME`); `page`: at most
/// `limit` of them from the `offset`-th on (`GET /api/runs?limit=&offset=`).
pub async fn list_launched_by(
    pool: &Pool,
    status: Option<RunStatus>,
    sweep_id: Option<i64>,
    launched_by: Option<&str>,
    sort: Sort,
    page: Option<(i64, i64)>,
) -> sqlx::Result<Vec<Run>> {
    let limit = if page.is_some() { " limit $4 offset $5" } else { "" };
    let sql = format!("select {COLUMNS} from runs where {FILTERS} order by {}{limit}", sort.order_by());
    let q = sqlx::query_as(&sql).bind(status.map(RunStatus::as_str)).bind(sweep_id).bind(launched_by);
    match page {
        Some((limit, offset)) => q.bind(limit).bind(offset).fetch_all(pool).await,
        None => q.fetch_all(pool).await,
    }
}

/// How many runs [`list_launched_by`] would answer without a page.
pub async fn count_launched_by(
    pool: &Pool,
    status: Option<RunStatus>,
    sweep_id: Option<i64>,
    launched_by: Option<&str>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!("select count(*) from runs where {FILTERS}"))
        .bind(status.map(RunStatus::as_str))
        .bind(sweep_id)
        .bind(launched_by)
        .fetch_one(pool)
        .await
}

/// (worker, run id) of every running run.
pub async fn running_by_worker(pool: &Pool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select worker, id from runs where status = 'running' and worker is not null order by id")
        .fetch_all(pool)
        .await
}

/// The runs with these ids that exist, in the order of `ids`.
pub async fn by_ids(pool: &Pool, ids: &[i64]) -> sqlx::Result<Vec<Run>> {
    let mut found: Vec<Run> = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let mut q = Sql::new(format!("select {COLUMNS} from runs where id in ("));
        q.bind_list(chunk.iter().copied()).push(")");
        found.extend(q.fetch_all::<Run, _>(pool).await?);
    }
    let mut ordered = Vec::with_capacity(found.len());
    for id in ids {
        if let Some(i) = found.iter().position(|r| r.id == *id) {
            ordered.push(found.swap_remove(i));
        }
    }
    Ok(ordered)
}

/// Whether any run exists (`serve --demo` queues the demo sweep into an empty database).
pub async fn any(pool: &Pool) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("select id from runs limit 1").fetch_optional(pool).await?;
    Ok(found.is_some())
}

/// Records how far a run has trained, inside the metric writer's transaction (which has
/// checked that the writing worker still holds the run).
pub async fn set_progress(conn: &mut Conn, id: i64, step: i64, total: i64) -> sqlx::Result<()> {
    sqlx::query("update runs set step = $1, total_steps = $2 where id = $3")
        .bind(step)
        .bind(total)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets how far a run has trained (a resumed run starts again from its checkpoint's step),
/// inside the metric writer's transaction.
pub async fn set_step(conn: &mut Conn, id: i64, step: i64) -> sqlx::Result<()> {
    sqlx::query("update runs set step = $1 where id = $2").bind(step).bind(id).execute(conn).await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct SummaryRow {
    pub name: String,
    pub first_value: Option<f64>,
    pub last_value: Option<f64>,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
    pub last_step: i64,
    pub points: i64,
}

pub async fn summary(pool: &Pool, id: i64) -> sqlx::Result<Vec<SummaryRow>> {
    sqlx::query_as(
        "select name, first_value, last_value, min_value, max_value, last_step, points \
         from run_summaries where run_id = $1 order by name",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}
