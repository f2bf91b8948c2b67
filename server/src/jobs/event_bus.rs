//! What live subscribers hear. Events are sent only after the change they describe is committed,
//! so a subscriber that replays from the database and then listens misses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::db::runs::RunStatus;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunEvent {
    /// Every metric logged at one step, as the JSON `{"step": N, "values": {name: value}}`,
    /// serialized once for all subscribers.
    Metrics {
        run_id: i64,
        step: i64,
        data: Arc<str>,
    },
    Status {
        run_id: i64,
        status: RunStatus,
        error: Option<String>,
    },
    /// A checkpoint was recorded, or (`deleted`) forgotten: its run no longer keeps it.
    Checkpoint {
        run_id: i64,
        step: i64,
        deleted: bool,
    },
    /// One step of π_init's SFT, as the JSON `{"step", "max_steps", "values"}`.
    Sft {
        run_id: i64,
        step: i64,
        data: Arc<str>,
    },
}

impl RunEvent {
    pub fn run_id(&self) -> i64 {
        match self {
            Self::Metrics { run_id, .. }
            | Self::Status { run_id, .. }
            | Self::Checkpoint { run_id, .. }
            | Self::Sft { run_id, .. } => *run_id,
        }
    }
}

/// Fan-out to every subscriber of this process. Slow subscribers lag and then catch up from
/// the database. On Postgres, [`super::relay`] also carries what this process sends to every
/// other process on the same database, and delivers theirs here.
#[derive(Clone)]
pub struct EventBus {
    local: tokio::sync::broadcast::Sender<RunEvent>,
    /// To the relay, when one runs: the events that happened in this process.
    outbox: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RunEvent>>>,
}

pub fn event_bus() -> EventBus {
    EventBus { local: tokio::sync::broadcast::channel(16_384).0, outbox: Arc::default() }
}

impl EventBus {
    /// Announces something that happened in this process (after it was committed).
    pub fn send(&self, event: RunEvent) {
        if let Some(outbox) = self.outbox.get() {
            // The relay stopped only when the process is stopping.
            let _ = outbox.send(event.clone());
        }
        // No subscribers is fine.
        let _ = self.local.send(event);
    }

    /// Delivers an event that happened in another process to this one's subscribers.
    pub fn deliver(&self, event: RunEvent) {
        let _ = self.local.send(event);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RunEvent> {
        self.local.subscribe()
    }

    /// Hands every event sent from now on also to `outbox` (once per bus; later calls are ignored).
    pub fn relay_to(&self, outbox: tokio::sync::mpsc::UnboundedSender<RunEvent>) {
        let _ = self.outbox.set(outbox);
    }
}

/// The `data` of a `metrics` event: every metric logged at one step.
#[derive(Serialize)]
pub struct MetricsData<'a> {
    pub step: i64,
    pub values: BTreeMap<&'a str, Option<f64>>,
}

/// The `data` of an `sft` event: one step of π_init's SFT, on its own step axis.
#[derive(Serialize)]
pub struct SftData<'a> {
    pub step: i64,
    /// Unknown (`null`) when the stream reads the step back from the database.
    pub max_steps: Option<i64>,
    pub values: BTreeMap<&'a str, Option<f64>>,
}

/// The `data` of a `status` event.
#[derive(Serialize)]
pub struct StatusData<'a> {
    pub status: RunStatus,
    pub error: Option<&'a str>,
}

/// The `data` of a `checkpoint` event.
#[derive(Serialize)]
pub struct CheckpointData {
    pub step: i64,
    pub deleted: bool,
}

/// An event's `data` line. The payloads are plain numbers and names, which always serialize.
pub fn data_line(data: &impl Serialize) -> String {
    serde_json::to_string(data).expect("event data serializes")
}

/// The `data` of a metrics event.
pub fn metrics_json<'a>(step: i64, values: impl IntoIterator<Item = (&'a String, &'a Option<f64>)>) -> String {
    data_line(&MetricsData { step, values: values.into_iter().map(|(k, v)| (k.as_str(), *v)).collect() })
}
