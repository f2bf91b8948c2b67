//! What live subscribers hear. Events are sent only after the change they describe is committed,
//! so a subscriber that replays from the database and then listens misses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::db::runs::RunStatus;

#[derive(Debug, Clone)]
pub enum RunEvent {
    /// Every metric logged at one step.
    Metrics {
        run_id: i64,
        step: i64,
        values: Arc<BTreeMap<String, Option<f64>>>,
    },
    Status {
        run_id: i64,
        status: RunStatus,
        error: Option<String>,
    },
    Checkpoint {
        run_id: i64,
        step: i64,
    },
}

impl RunEvent {
    pub fn run_id(&self) -> i64 {
        match self {
            Self::Metrics { run_id, .. } | Self::Status { run_id, .. } | Self::Checkpoint { run_id, .. } => *run_id,
        }
    }
}

/// Fan-out to every subscriber. Slow subscribers lag and then catch up from the database.
pub type EventBus = tokio::sync::broadcast::Sender<RunEvent>;

pub fn event_bus() -> EventBus {
    tokio::sync::broadcast::channel(16_384).0
}
