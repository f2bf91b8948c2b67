//! The demo sweep: DPO against TR-DPO on `toy-tree`, with soft updates at three α and hard
//! updates at three τ (as `examples/toy-tree-sweep.toml`). It needs no download. The runs table
//! has a button for it, and `goodhart serve --demo` queues it into an empty database.

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::{see_other, PageResult};
use crate::http::auth::Identity;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/sweeps/demo", post(launch))
}

/// `{"base", "grid"}` of the demo sweep, 7 runs.
pub fn sweep() -> Value {
    json!({
        "base": {"task": "toy-tree", "loss_type": "sigmoid"},
        "grid": [
            {"sync_ref_model": [false]},
            {"sync_ref_model": [true], "ref_model_sync_steps": [1], "ref_model_mixup_alpha": [0.01, 0.1, 0.6]},
            {"sync_ref_model": [true], "ref_model_mixup_alpha": [1.0], "ref_model_sync_steps": [10, 100, 1000]},
        ],
    })
}

/// Queues the demo sweep this server was configured with; answers the sweep id.
pub async fn queue(state: &AppState, who: &Identity) -> crate::http::error::Result<i64> {
    let spec = &state.settings.demo_sweep;
    let id = crate::http::sweeps::launch(state, spec["base"].clone(), spec["grid"].clone(), who).await?.id;
    Ok(id)
}

async fn launch(State(state): State<AppState>, who: Identity) -> PageResult {
    let id = queue(&state, &who).await?;
    Ok(see_other(&format!("/sweeps/{id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_sweep_is_the_example_sweep() {
        let example =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/toy-tree-sweep.toml")).unwrap();
        let from_file = trainer::sweep::parse(&example, "toml").unwrap();
        let demo = trainer::sweep::expand(&sweep()).unwrap();
        let configs = |runs: &[trainer::sweep::SweepRun]| runs.iter().map(|r| r.config.clone()).collect::<Vec<_>>();
        assert_eq!(configs(&demo), configs(&from_file));
        assert_eq!(demo.len(), 7);
    }
}
