//! `GET /api/runs/{id}/events`: server-sent events of a run's new metrics and status changes.
//!
//! `metrics` events carry the step as their id, so a client reconnecting with `Last-Event-ID`
//! gets every step after it from the database and then the live ones, each step once. The
//! stream ends when the run reaches a final status or the server shuts down.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::error::Result;
use super::runs::find;
use super::AppState;
use crate::db::metrics::{self, MetricRow};
use crate::db::runs::RunStatus;
use crate::jobs::events::{metrics_json, RunEvent};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/runs/{id}/events", get(events))
}

/// How long a live stream lets events gather before sending them in one write: a subscriber
/// then costs the server a few wake-ups per second, not one per training step.
const LIVE_BATCH: Duration = Duration::from_millis(250);

fn metrics_event(step: i64, data: &str) -> Event {
    Event::default().event("metrics").id(step.to_string()).data(data)
}

fn status_event(status: RunStatus, error: Option<&str>) -> Event {
    Event::default().event("status").data(json!({ "status": status, "error": error }).to_string())
}

/// Stored points after `step`, one map per step, in step order.
fn group_by_step(rows: Vec<MetricRow>) -> BTreeMap<i64, BTreeMap<String, Option<f64>>> {
    let mut out: BTreeMap<i64, BTreeMap<String, Option<f64>>> = BTreeMap::new();
    for r in rows {
        out.entry(r.step).or_default().insert(r.name, r.value);
    }
    out
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Subscribe before reading anything, so nothing committed from here on is missed.
    let mut rx = state.events.subscribe();
    let run = find(&state, &id).await?;
    let run_id = run.id;
    let last_event_id: i64 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(-1);
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        yield Ok(status_event(run.status(), run.error.as_deref()));
        let mut last_sent = last_event_id;
        match metrics::after_step(&pool, run_id, last_sent).await {
            Ok(rows) => for (step, values) in group_by_step(rows) {
                last_sent = step;
                yield Ok(metrics_event(step, &metrics_json(step, &values)));
            },
            Err(e) => tracing::warn!(run_id, error = %e, "replaying metrics failed"),
        }
        // The status was read before the replay: if it was final then, the replay was complete.
        if run.status().is_terminal() {
            return;
        }
        loop {
            let mut batch = vec![rx.recv().await];
            tokio::time::sleep(LIVE_BATCH).await;
            loop {
                match rx.try_recv() {
                    Ok(event) => batch.push(Ok(event)),
                    Err(TryRecvError::Lagged(n)) => batch.push(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => batch.push(Err(RecvError::Closed)),
                    Err(TryRecvError::Empty) => break,
                }
            }
            for received in batch {
                match received {
                    Ok(event) if event.run_id() != run_id => {}
                    Ok(RunEvent::Metrics { step, data, .. }) => {
                        if step > last_sent {
                            last_sent = step;
                            yield Ok(metrics_event(step, &data));
                        }
                    }
                    Ok(RunEvent::Status { status, error, .. }) => {
                        yield Ok(status_event(status, error.as_deref()));
                        if status.is_terminal() {
                            return;
                        }
                    }
                    Ok(RunEvent::Checkpoint { step, .. }) => {
                        yield Ok(Event::default().event("checkpoint").data(json!({ "step": step }).to_string()));
                    }
                    // Too slow to keep up: catch up from the database instead.
                    Err(RecvError::Lagged(_)) => {
                        let now = crate::db::runs::get(&pool, run_id).await.ok().flatten();
                        if let Ok(rows) = metrics::after_step(&pool, run_id, last_sent).await {
                            for (step, values) in group_by_step(rows) {
                                last_sent = step;
                                yield Ok(metrics_event(step, &metrics_json(step, &values)));
                            }
                        }
                        // A missed final status would leave the stream open forever.
                        match now {
                            Some(run) if run.status().is_terminal() => {
                                yield Ok(status_event(run.status(), run.error.as_deref()));
                                return;
                            }
                            None => return,
                            Some(_) => {}
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    };
    let stream = stream.take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
