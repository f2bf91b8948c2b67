//! What live subscribers hear. Events are sent only after the change they describe is committed,
//! so a subscriber that replays from the database and then listens misses nothing.

use std::sync::Arc;

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

/// The `data` of a metrics event.
pub fn metrics_json<'a>(step: i64, values: impl IntoIterator<Item = (&'a String, &'a Option<f64>)>) -> String {
    let values: serde_json::Map<String, serde_json::Value> =
        values.into_iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
    serde_json::json!({ "step": step, "values": values }).to_string()
}
