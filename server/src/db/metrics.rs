//! Per-step metric values: batched upserts, series reads, and run summaries.

use std::collections::{BTreeMap, HashMap};

use super::{Backend, Conn, Pool, Sql};

/// One value of one metric at one step.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MetricRow {
    pub run_id: i64,
    pub name: String,
    pub step: i64,
    pub value: Option<f64>,
}

/// SQLite allows 32766 bound variables per statement and Postgres 65535; 4 per row.
const ROWS_PER_STATEMENT: usize = 4000;

/// Upserts rows inside the caller's transaction: a step logged again after a resume replaces
/// the old value, so each (run, step, name) exists once.
///
/// Multi-row inserts: one statement (and one round trip) per 4000 rows.
pub async fn upsert(conn: &mut Conn, rows: &[MetricRow]) -> sqlx::Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = Sql::new("insert into metrics (run_id, name, step, value) values ");
        for (i, r) in chunk.iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" });
            q.bind(r.run_id).push(", ").bind(r.name.clone()).push(", ").bind(r.step).push(", ").bind(r.value).push(")");
        }
        q.push(" on conflict (run_id, name, step) do update set value = excluded.value");
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets everything logged after `step` (the run resumed from the checkpoint at `step`). The
/// SFT steps before training stay, unless the run starts over (`step < 0`). (`'sft/'` in the
/// query is `trainer::metric_names::SFT_PREFIX`, the prefix of metrics on π_init's SFT step axis.)
pub async fn delete_after(conn: &mut Conn, run_id: i64, step: i64) -> sqlx::Result<()> {
    sqlx::query("delete from metrics where run_id = $1 and step > $2 and ($2 < 0 or substr(name, 1, 4) != 'sft/')")
        .bind(run_id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

/// One metric's points, in step order; `None` for a non-finite value.
pub type Series = Vec<(i64, Option<f64>)>;

/// Every point of the named metrics (all metrics when `names` is empty): (name, [(step, value)])
/// in name then step order.
pub async fn series(pool: &Pool, run_id: i64, names: &[String]) -> sqlx::Result<Vec<(String, Series)>> {
    let mut by_run = series_of_runs(pool, &[run_id], names).await?;
    Ok(by_run.remove(&run_id).map(|m| m.into_iter().collect()).unwrap_or_default())
}

/// [`series`] for several runs in one query: run id -> name -> points. Runs without any of the
/// metrics are absent.
///
/// The database packs each series into one string (`step value,step value,...`, values printed
/// so that they round-trip an f64 exactly: SQLite's `%!.17g`, Postgres's shortest exact text):
/// decoding one row per point through the driver costs ~20x more than parsing the packed text.
pub async fn series_of_runs(
    pool: &Pool,
    run_ids: &[i64],
    names: &[String],
) -> sqlx::Result<HashMap<i64, BTreeMap<String, Series>>> {
    // SQLite prints every value as text here, which is most of the cost: readers run side by
    // side on their own connections (WAL), so a few queries over parts of the runs share it
    // between the cores. Each part also stays under the bound-variable limit.
    let parts = run_ids.len().div_ceil(READ_PARALLELISM).clamp(1, 500);
    let reads = run_ids.chunks(parts).map(|ids| series_of_some_runs(pool, ids, names));
    let mut out: HashMap<i64, BTreeMap<String, Series>> = HashMap::new();
    for part in futures_util::future::try_join_all(reads).await? {
        out.extend(part);
    }
    Ok(out)
}

/// How many queries [`series_of_runs`] splits its runs into.
const READ_PARALLELISM: usize = 4;

async fn series_of_some_runs(
    pool: &Pool,
    ids: &[i64],
    names: &[String],
) -> sqlx::Result<HashMap<i64, BTreeMap<String, Series>>> {
    let packed_series = match Backend::of_pool(pool) {
        Backend::Sqlite => {
            "group_concat(step || ' ' || iif(value is null, '', printf('%!.17g', value)), ',' order by step)"
        }
        Backend::Postgres => "string_agg(step || ' ' || coalesce(value::text, ''), ',' order by step)",
    };
    let mut q = Sql::new(format!("select run_id, name, {packed_series} from metrics where run_id in ("));
    q.bind_list(ids.iter().copied()).push(")");
    if !names.is_empty() {
        q.push(" and name in (").bind_list(names.iter().cloned()).push(")");
    }
    q.push(" group by run_id, name order by run_id, name");
    let packed: Vec<(i64, String, String)> = q.fetch_all(pool).await?;
    let mut out: HashMap<i64, BTreeMap<String, Series>> = HashMap::new();
    for (run_id, name, text) in packed {
        out.entry(run_id).or_default().insert(name, unpack(&text)?);
    }
    Ok(out)
}

fn unpack(text: &str) -> sqlx::Result<Series> {
    text.split(',')
        .map(|point| {
            let (step, value) = point.split_once(' ').unwrap_or((point, ""));
            let step = step.parse().map_err(|e| sqlx::Error::Decode(format!("step {step:?}: {e}").into()))?;
            let value = if value.is_empty() {
                None
            } else {
                Some(value.parse().map_err(|e| sqlx::Error::Decode(format!("value {value:?}: {e}").into()))?)
            };
            Ok((step, value))
        })
        .collect()
}

/// Points after `step`, in step order: what a reconnecting live stream missed (training steps;
/// the SFT steps have their own axis, see [`latest_sft`]).
pub async fn after_step(pool: &Pool, run_id: i64, step: i64) -> sqlx::Result<Vec<MetricRow>> {
    sqlx::query_as(
        "select run_id, name, step, value from metrics where run_id = $1 and step > $2 \
         and substr(name, 1, 4) != 'sft/' order by step, name",
    )
    .bind(run_id)
    .bind(step)
    .fetch_all(pool)
    .await
}

/// Each run's last SFT step with its values: run id -> (step, name -> value).
pub async fn latest_sft(pool: &Pool, run_ids: &[i64]) -> sqlx::Result<HashMap<i64, (i64, BTreeMap<String, f64>)>> {
    let mut out: HashMap<i64, (i64, BTreeMap<String, f64>)> = HashMap::new();
    for ids in run_ids.chunks(500) {
        let mut q = Sql::new(
            "select m.run_id, m.name, m.step, m.value from metrics m join (select run_id, max(step) as step \
             from metrics where substr(name, 1, 4) = 'sft/' and run_id in (",
        );
        q.bind_list(ids.iter().copied());
        q.push(") group by run_id) last on m.run_id = last.run_id and m.step = last.step where substr(m.name, 1, 4) = 'sft/'");
        let rows: Vec<MetricRow> = q.fetch_all(pool).await?;
        for r in rows {
            let entry = out.entry(r.run_id).or_insert_with(|| (r.step, BTreeMap::new()));
            if let Some(v) = r.value {
                entry.1.insert(r.name, v);
            }
        }
    }
    Ok(out)
}

/// How many values are stored, over all runs (the ingestion benchmark checks it).
pub async fn count(pool: &Pool) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from metrics").fetch_one(pool).await
}

/// Recomputes the run's summary rows from its metrics.
pub async fn summarize(conn: &mut Conn, run_id: i64) -> sqlx::Result<()> {
    sqlx::query("delete from run_summaries where run_id = $1").bind(run_id).execute(&mut *conn).await?;
    sqlx::query(
        "insert into run_summaries (run_id, name, first_value, last_value, min_value, max_value, last_step, points)
         select $1, m.name,
                (select value from metrics f where f.run_id = $1 and f.name = m.name order by step asc limit 1),
                (select value from metrics l where l.run_id = $1 and l.name = m.name order by step desc limit 1),
                min(m.value), max(m.value), max(m.step), count(*)
         from metrics m where m.run_id = $1 group by m.name",
    )
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packed_series_round_trip_every_value_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::testing::pool(dir.path()).await;
        sqlx::query("insert into runs (config, created_at) values ('{}', 0)").execute(&pool).await.unwrap();
        let values = [0.1 + 0.2, 1.0 / 3.0, -1e-300, 6.02214076e23, f64::MIN_POSITIVE, 1e-7, 123_456_789.123_456_78];
        let mut rows: Vec<MetricRow> = values
            .iter()
            .enumerate()
            .map(|(i, v)| MetricRow { run_id: 1, name: "x".into(), step: i as i64 * 10, value: Some(*v) })
            .collect();
        rows.push(MetricRow { run_id: 1, name: "x".into(), step: 5, value: None });
        rows.push(MetricRow { run_id: 1, name: "a".into(), step: 1, value: Some(2.5) });
        let mut conn = pool.acquire().await.unwrap();
        upsert(&mut conn, &rows).await.unwrap();
        drop(conn);
        let all = series(&pool, 1, &[]).await.unwrap();
        assert_eq!(all[0], ("a".to_string(), vec![(1, Some(2.5))]));
        let (name, points) = &all[1];
        assert_eq!(name, "x");
        assert_eq!(points[1], (5, None), "in step order, nulls kept");
        let got: Vec<f64> = points.iter().filter_map(|p| p.1).collect();
        for (g, v) in got.iter().zip(values) {
            assert_eq!(g.to_bits(), v.to_bits(), "{v:e} came back as {g:e}");
        }
        assert_eq!(series(&pool, 1, &["a".to_string()]).await.unwrap().len(), 1);
        assert!(series(&pool, 2, &[]).await.unwrap().is_empty(), "a run without metrics has no series");
    }
}
