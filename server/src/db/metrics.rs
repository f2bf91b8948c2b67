//! Per-step metric values: batched upserts, series reads, and run summaries.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

/// One value of one metric at one step.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MetricRow {
    pub run_id: i64,
    pub name: String,
    pub step: i64,
    pub value: Option<f64>,
}

/// SQLite allows 32766 bound variables per statement; 4 per row.
const ROWS_PER_STATEMENT: usize = 4000;

/// Upserts rows inside the caller's transaction: a step logged again after a resume replaces
/// the old value, so each (run, step, name) exists once.
pub async fn upsert(conn: &mut SqliteConnection, rows: &[MetricRow]) -> sqlx::Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("insert into metrics (run_id, name, step, value) ");
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.run_id).push_bind(&r.name).push_bind(r.step).push_bind(r.value);
        });
        q.push(" on conflict (run_id, name, step) do update set value = excluded.value");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets everything logged after `step` (the run resumed from the checkpoint at `step`).
pub async fn delete_after(conn: &mut SqliteConnection, run_id: i64, step: i64) -> sqlx::Result<()> {
    sqlx::query("delete from metrics where run_id = ? and step > ?").bind(run_id).bind(step).execute(conn).await?;
    Ok(())
}

/// Every point of the named metrics (all metrics when `names` is empty), by name then step.
pub async fn series(pool: &SqlitePool, run_id: i64, names: &[String]) -> sqlx::Result<Vec<MetricRow>> {
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new("select run_id, name, step, value from metrics where run_id = ");
    q.push_bind(run_id);
    if !names.is_empty() {
        q.push(" and name in (");
        let mut sep = q.separated(", ");
        for n in names {
            sep.push_bind(n);
        }
        q.push(")");
    }
    q.push(" order by name, step");
    q.build_query_as().fetch_all(pool).await
}

/// Points after `step`, in step order: what a reconnecting live stream missed.
pub async fn after_step(pool: &SqlitePool, run_id: i64, step: i64) -> sqlx::Result<Vec<MetricRow>> {
    sqlx::query_as("select run_id, name, step, value from metrics where run_id = ? and step > ? order by step, name")
        .bind(run_id)
        .bind(step)
        .fetch_all(pool)
        .await
}

/// Recomputes the run's summary rows from its metrics.
pub async fn summarize(conn: &mut SqliteConnection, run_id: i64) -> sqlx::Result<()> {
    sqlx::query("delete from run_summaries where run_id = ?").bind(run_id).execute(&mut *conn).await?;
    sqlx::query(
        "insert into run_summaries (run_id, name, first_value, last_value, min_value, max_value, last_step, points)
         select ?1, m.name,
                (select value from metrics f where f.run_id = ?1 and f.name = m.name order by step asc limit 1),
                (select value from metrics l where l.run_id = ?1 and l.name = m.name order by step desc limit 1),
                min(m.value), max(m.value), max(m.step), count(*)
         from metrics m where m.run_id = ?1 group by m.name",
    )
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
