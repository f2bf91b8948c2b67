//! Live events between processes on one Postgres database: a web node's SSE stream follows a
//! run that a worker on another machine trains, and an idle worker wakes as soon as a run is
//! queued anywhere, without polling.
//!
//! Each process sends what happened in it (see [`EventBus::send`]) as `NOTIFY goodhart_events`
//! payloads, JSON arrays of events packed up to Postgres's 8000-byte limit, and listens on the
//! same channel for the others'. A notification is delivered only after the transaction that
//! sent it commits, and events are sent only after what they describe was committed, so a
//! listener that reads the database on hearing one finds it there. A metrics event too large
//! for a payload travels without its values, and the listener reads them back from the
//! database. SQLite needs none of this: every process that shares a SQLite file also shares
//! its machine, and the queue's timeout-driven claims cover the rest.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event_bus::{metrics_json, EventBus, RunEvent};
use super::queue::RunQueue;
use crate::db::{self, runs::RunStatus, Pool};

/// The channel every process sends and listens on.
pub const CHANNEL: &str = "goodhart_events";

/// Postgres refuses payloads of 8000 bytes or more; the rest is the envelope's margin.
const MAX_PAYLOAD: usize = 7900;

/// One `NOTIFY` payload: the sender (so it skips its own) and its events in order.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    events: Vec<RunEvent>,
}

/// Starts relaying `bus` through the Postgres database at `database_url`; `work` is woken when
/// another process queues a run. Stops at `shutdown`.
pub async fn start(
    database_url: &str,
    pool: Pool,
    bus: EventBus,
    queue: Arc<dyn RunQueue>,
    shutdown: CancellationToken,
) -> sqlx::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut listener = PgListener::connect(database_url).await?;
    listener.listen(CHANNEL).await?;
    // Its own connection: `pg_notify` answers `void`, which the Any driver cannot read.
    let notifier = PgPoolOptions::new().max_connections(1).connect(database_url).await?;
    let me = format!("{}-{}", std::process::id(), db::now_ms());
    let (outbox, rx) = mpsc::unbounded_channel();
    bus.relay_to(outbox);
    let sender = tokio::spawn(send_loop(notifier, me.clone(), rx, shutdown.clone()));
    let receiver = tokio::spawn(listen_loop(listener, pool, bus, me, queue, shutdown));
    Ok(vec![sender, receiver])
}

async fn send_loop(pool: PgPool, me: String, mut rx: mpsc::UnboundedReceiver<RunEvent>, shutdown: CancellationToken) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            got = rx.recv_many(&mut batch, 4096) => if got == 0 { return },
            () = shutdown.cancelled() => {
                // What was sent before the shutdown still goes out.
                while let Ok(event) = rx.try_recv() {
                    batch.push(event);
                }
                if !batch.is_empty() {
                    notify(&pool, &me, std::mem::take(&mut batch)).await;
                }
                return;
            }
        }
        notify(&pool, &me, std::mem::take(&mut batch)).await;
    }
}

/// Sends `events` in as few payloads as fit, in one statement.
async fn notify(pool: &PgPool, me: &str, events: Vec<RunEvent>) {
    let payloads = pack(me, events);
    let sent = sqlx::query(
        "select pg_notify($1, payload) from unnest($2::text[]) with ordinality as p(payload, n) order by n",
    )
    .bind(CHANNEL)
    .bind(payloads)
    .execute(pool)
    .await;
    if let Err(e) = sent {
        // Live pages miss these events; they still read everything from the database.
        tracing::warn!(error = %e, "relaying live events to other processes failed");
    }
}

/// Packs events into payloads under [`MAX_PAYLOAD`] bytes, in order.
fn pack(me: &str, events: Vec<RunEvent>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current: Vec<RunEvent> = Vec::new();
    let envelope = |events: Vec<RunEvent>| {
        serde_json::to_string(&Envelope { from: me.to_string(), events }).expect("events serialize")
    };
    for event in events {
        let event = slim(event);
        current.push(event);
        if envelope(current.clone()).len() > MAX_PAYLOAD {
            let last = current.pop().expect("just pushed");
            if !current.is_empty() {
                payloads.push(envelope(std::mem::take(&mut current)));
            }
            current.push(last);
        }
    }
    if !current.is_empty() {
        payloads.push(envelope(current));
    }
    payloads
}

/// A metrics or SFT event whose values alone would overflow a payload travels without them
/// (an empty `data`); the listener reads them back from the database.
fn slim(event: RunEvent) -> RunEvent {
    match event {
        RunEvent::Metrics { run_id, step, data } if data.len() > MAX_PAYLOAD / 2 => {
            RunEvent::Metrics { run_id, step, data: "".into() }
        }
        RunEvent::Sft { run_id, step, data } if data.len() > MAX_PAYLOAD / 2 => {
            RunEvent::Sft { run_id, step, data: "".into() }
        }
        other => other,
    }
}

async fn listen_loop(
    mut listener: PgListener,
    pool: Pool,
    bus: EventBus,
    me: String,
    queue: Arc<dyn RunQueue>,
    shutdown: CancellationToken,
) {
    loop {
        let notification = tokio::select! {
            n = listener.try_recv() => n,
            () = shutdown.cancelled() => return,
        };
        let notification = match notification {
            Ok(Some(n)) => n,
            Ok(None) => {
                // The connection dropped and sqlx reconnected (and listens again): events sent
                // meanwhile are lost, so wake the claimer in case a run was queued then.
                tracing::warn!("the live-event connection to Postgres was lost and restored");
                queue.wake();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for other processes' live events failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        let Ok(envelope) = serde_json::from_str::<Envelope>(notification.payload()) else {
            tracing::warn!("ignored a live event this version cannot read");
            continue;
        };
        if envelope.from == me {
            continue;
        }
        for event in envelope.events {
            if matches!(event, RunEvent::Status { status: RunStatus::Queued, .. }) {
                queue.wake();
            }
            match event {
                RunEvent::Metrics { run_id, step, data } if data.is_empty() => {
                    if let Some(data) = metrics_at(&pool, run_id, step).await {
                        bus.deliver(RunEvent::Metrics { run_id, step, data: data.into() });
                    }
                }
                // Too large to carry: the streams read it from the database when they next
                // catch up (after 2 s without events, or the next event after it).
                RunEvent::Sft { data, .. } if data.is_empty() => {}
                other => bus.deliver(other),
            }
        }
    }
}

/// A step's metrics as a metrics event's `data`, read back from the database.
async fn metrics_at(pool: &Pool, run_id: i64, step: i64) -> Option<String> {
    let rows = db::metrics::after_step(pool, run_id, step - 1).await.ok()?;
    let values: Vec<(String, Option<f64>)> =
        rows.into_iter().filter(|r| r.step == step).map(|r| (r.name, r.value)).collect();
    (!values.is_empty()).then(|| metrics_json(step, values.iter().map(|(n, v)| (n, v))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::event_bus::event_bus;
    use crate::jobs::queue::DbQueue;

    /// One process's bus, queue and relay on the database at `url`.
    async fn process(url: &str, shutdown: &CancellationToken) -> (EventBus, Arc<DbQueue>) {
        let pool = db::connect(url).await.unwrap();
        let bus = event_bus();
        let queue = Arc::new(DbQueue::new(pool.clone(), bus.clone(), "w"));
        start(url, pool, bus.clone(), queue.clone(), shutdown.clone()).await.unwrap();
        (bus, queue)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_sent_in_one_process_reaches_anothers_subscribers_and_a_queued_run_wakes_its_claimer() {
        if !db::testing::on_postgres() {
            eprintln!("skipped: the relay runs on Postgres only (set {})", db::testing::POSTGRES_ENV);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let url = db::testing::database_url(dir.path()).await;
        let shutdown = CancellationToken::new();
        let (sender, _) = process(&url, &shutdown).await;
        let (receiver, receiver_queue) = process(&url, &shutdown).await;
        let mut heard = receiver.subscribe();
        let mut own = sender.subscribe();
        let woken = receiver_queue.work_available();
        let big = format!("{{\"step\":3,\"values\":{{\"x\":\"{}\"}}}}", "9".repeat(6000));
        sender.send(RunEvent::Status { run_id: 1, status: RunStatus::Queued, error: None });
        sender.send(RunEvent::Checkpoint { run_id: 1, step: 2, deleted: false });
        sender.send(RunEvent::Sft { run_id: 1, step: 3, data: big.into() });
        let within = std::time::Duration::from_secs(10);
        let first = tokio::time::timeout(within, heard.recv()).await.expect("relayed").unwrap();
        assert!(matches!(first, RunEvent::Status { run_id: 1, status: RunStatus::Queued, .. }), "{first:?}");
        let second = tokio::time::timeout(within, heard.recv()).await.expect("relayed").unwrap();
        assert!(matches!(second, RunEvent::Checkpoint { run_id: 1, step: 2, deleted: false }), "{second:?}");
        tokio::time::timeout(within, woken).await.expect("the other process's claimer woke up");
        // The sender hears its own events once, locally: its relay skips its own notifications.
        for _ in 0..3 {
            own.recv().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(own.try_recv().is_err(), "no echo of its own events");
        shutdown.cancel();
    }

    #[test]
    fn events_pack_into_payloads_under_the_postgres_limit_in_order() {
        let big = format!("{{\"step\":1,\"values\":{{\"x\":\"{}\"}}}}", "9".repeat(5000));
        let mut events = Vec::new();
        for step in 0..200 {
            let data = if step == 7 { big.clone() } else { format!("{{\"step\":{step},\"values\":{{\"loss\":0.5}}}}") };
            events.push(RunEvent::Metrics { run_id: 3, step, data: data.into() });
        }
        let payloads = pack("me", events);
        assert!(payloads.len() > 1, "200 events need several payloads");
        let mut steps = Vec::new();
        for p in &payloads {
            assert!(p.len() < 8000, "{} bytes", p.len());
            let envelope: Envelope = serde_json::from_str(p).unwrap();
            assert_eq!(envelope.from, "me");
            for e in envelope.events {
                let RunEvent::Metrics { step, data, .. } = e else { panic!("a metrics event") };
                assert_eq!(data.is_empty(), step == 7, "only the oversized one travels without its values");
                steps.push(step);
            }
        }
        assert_eq!(steps, (0..200).collect::<Vec<_>>());
    }
}
