//! `GET /api/runs/{id}/events`: server-sent events of a run's new metrics and status changes,
//! its checkpoints kept and deleted, and π_init's SFT steps before training (`sft`).
//!
//! `metrics` events carry the step as their id, so a client reconnecting with `Last-Event-ID`
//! gets every step after it from the database and then the live ones, each step once. The
//! stream ends when the run reaches a final status or the server shuts down. Live events come
//! from this process's trainers; when none arrive for a while the stream reads the database, so
//! it also follows a run that another server sharing the database trains.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::error::Result;
use super::runs::find;
use super::AppState;
use crate::db::metrics::{self, MetricRow};
use crate::db::runs::RunStatus;
use crate::db::Pool;
use crate::jobs::event_bus::{data_line, metrics_json, CheckpointData, RunEvent, SftData, StatusData};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/runs/{id}/events", get(events))
}

/// How long a live stream lets events gather before sending them in one write: a subscriber
/// then costs the server a few wake-ups per second, not one per training step.
const LIVE_BATCH: Duration = Duration::from_millis(250);

/// After this long without an event, the stream reads the database: the run may be training on
/// another server sharing it, whose events this process never hears.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// A comment line after this much silence keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A replay is sent in chunks of about this size rather than one event per write.
const REPLAY_CHUNK: usize = 64 * 1024;

/// The stream's text, written straight into one buffer per write. Each subscriber encodes its
/// whole batch into one chunk: 200 subscribers at 500 steps/s then cost a memcpy and a socket
/// write each per batch, not an allocation and a body frame per event.
#[derive(Default)]
struct Frames(String);

impl Frames {
    fn metrics(&mut self, step: i64, data: &str) {
        // `data` is one line of JSON, so it needs no splitting into several `data:` lines.
        let _ = write!(self.0, "event: metrics\nid: {step}\ndata: {data}\n\n");
    }

    fn status(&mut self, status: RunStatus, error: Option<&str>) {
        let data = data_line(&StatusData { status, error });
        let _ = write!(self.0, "event: status\ndata: {data}\n\n");
    }

    fn checkpoint(&mut self, step: i64, deleted: bool) {
        let _ = write!(self.0, "event: checkpoint\ndata: {}\n\n", data_line(&CheckpointData { step, deleted }));
    }

    /// π_init's SFT progress; not an id'd metrics event, as it has its own step axis.
    fn sft(&mut self, data: &str) {
        let _ = write!(self.0, "event: sft\ndata: {data}\n\n");
    }

    fn keep_alive(&mut self) {
        self.0.push_str(":\n\n");
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text so far as one chunk, or nothing when there is none.
    fn take(&mut self) -> Option<Result<Bytes, Infallible>> {
        (!self.0.is_empty()).then(|| Ok(Bytes::from(std::mem::take(&mut self.0))))
    }
}

/// Writes what the database holds that the stream has not sent (the steps after `last_sent`,
/// and the final status if the run has ended); answers whether the stream is over (the run
/// ended or is gone). For a stream that missed live events, or never hears them because
/// another server trains the run.
async fn catch_up(pool: &Pool, run_id: i64, last_sent: &mut i64, out: &mut Frames) -> bool {
    // The status is read first: if it is final, every step was stored before it.
    let now = crate::db::runs::get(pool, run_id).await.ok().flatten();
    if let Ok(rows) = metrics::after_step(pool, run_id, *last_sent).await {
        for (step, values) in group_by_step(rows) {
            *last_sent = step;
            out.metrics(step, &metrics_json(step, &values));
        }
    }
    match now {
        Some(run) if run.status().is_terminal() => {
            out.status(run.status(), run.error.as_deref());
            true
        }
        Some(_) => false,
        None => true,
    }
}

/// Stored points after `step`, one map per step, in step order.
fn group_by_step(rows: Vec<MetricRow>) -> BTreeMap<i64, BTreeMap<String, Option<f64>>> {
    let mut out: BTreeMap<i64, BTreeMap<String, Option<f64>>> = BTreeMap::new();
    for r in rows {
        out.entry(r.step).or_default().insert(r.name, r.value);
    }
    out
}

async fn events(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
    // Subscribe before reading anything, so nothing committed from here on is missed.
    let mut rx = state.events.subscribe();
    let run = find(&state, &id).await?;
    let run_id = run.id;
    let last_event_id: i64 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(-1);
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        let mut out = Frames::default();
        out.status(run.status(), run.error.as_deref());
        let mut last_sent = last_event_id;
        match metrics::after_step(&pool, run_id, last_sent).await {
            Ok(rows) => for (step, values) in group_by_step(rows) {
                last_sent = step;
                out.metrics(step, &metrics_json(step, &values));
                if out.len() >= REPLAY_CHUNK {
                    yield out.take().expect("a full chunk");
                }
            },
            Err(e) => tracing::warn!(run_id, error = %e, "replaying metrics failed"),
        }
        // A run still building its π_init: where its SFT is.
        if run.total_steps.is_none() && !run.status().is_terminal() {
            if let Ok(Some((step, values))) = metrics::latest_sft(&pool, &[run_id]).await.map(|mut m| m.remove(&run_id)) {
                let values = values.iter().map(|(k, v)| (k.as_str(), Some(*v))).collect();
                out.sft(&data_line(&SftData { step, max_steps: None, values }));
            }
        }
        if let Some(chunk) = out.take() {
            yield chunk;
        }
        // The status was read before the replay: if it was final then, the replay was complete.
        if run.status().is_terminal() {
            return;
        }
        let mut silent_since = tokio::time::Instant::now();
        loop {
            let Ok(first) = tokio::time::timeout(IDLE_POLL, rx.recv()).await else {
                let ended = catch_up(&pool, run_id, &mut last_sent, &mut out).await;
                if !out.is_empty() {
                    silent_since = tokio::time::Instant::now();
                } else if silent_since.elapsed() >= KEEP_ALIVE {
                    out.keep_alive();
                    silent_since = tokio::time::Instant::now();
                }
                if let Some(chunk) = out.take() {
                    yield chunk;
                }
                if ended {
                    return;
                }
                continue;
            };
            silent_since = tokio::time::Instant::now();
            let mut batch = vec![first];
            tokio::time::sleep(LIVE_BATCH).await;
            loop {
                match rx.try_recv() {
                    Ok(event) => batch.push(Ok(event)),
                    Err(TryRecvError::Lagged(n)) => batch.push(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => batch.push(Err(RecvError::Closed)),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let mut ended = false;
            for received in batch {
                match received {
                    Ok(event) if event.run_id() != run_id => {}
                    Ok(RunEvent::Metrics { step, data, .. }) => {
                        if step > last_sent {
                            last_sent = step;
                            out.metrics(step, &data);
                        }
                    }
                    Ok(RunEvent::Status { status, error, .. }) => {
                        out.status(status, error.as_deref());
                        if status.is_terminal() {
                            ended = true;
                            break;
                        }
                    }
                    Ok(RunEvent::Checkpoint { step, deleted, .. }) => out.checkpoint(step, deleted),
                    Ok(RunEvent::Sft { data, .. }) => out.sft(&data),
                    // Too slow to keep up: catch up from the database instead, final status
                    // included (a missed one would leave the stream open forever).
                    Err(RecvError::Lagged(_)) => {
                        if catch_up(&pool, run_id, &mut last_sent, &mut out).await {
                            ended = true;
                            break;
                        }
                    }
                    Err(RecvError::Closed) => {
                        ended = true;
                        break;
                    }
                }
            }
            if let Some(chunk) = out.take() {
                yield chunk;
            }
            if ended {
                return;
            }
        }
    };
    let stream = stream.take_until(state.shutdown.clone().cancelled_owned());
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("a valid SSE response"))
}
