//! What live subscribers hear. Events are sent only after the change they describe is committed,
//! so a subscriber that replays from the database and then listens misses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::db::runs::RunStatus;

#[derive(Debug, Clone)]
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

/// Fan-out to every subscriber. Slow subscribers lag and then catch up from the database.
pub type EventBus = tokio::sync::broadcast::Sender<RunEvent>;

pub fn event_bus() -> EventBus {
    tokio::sync::broadcast::channel(16_384).0
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
