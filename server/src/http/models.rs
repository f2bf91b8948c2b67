//! `/api/models`: the HF checkpoints under `--models-dir`, as the run form lists them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use trainer::model::registry;

use super::error::{Error, Result};
use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/models", get(list))
}

/// Every checkpoint with its architecture, parameter count and dtype; unsupported ones carry
/// an `error` naming their `model_type`. Only headers are read, never weights. Without a
/// `--models-dir` the list is empty, as the datasets' is without a `--datasets-dir`.
async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let dir = state.settings.models_dir.clone();
    let scanned = tokio::task::spawn_blocking(move || registry::scan(&dir))
        .await
        .map_err(|e| Error::Internal(format!("scanning models: {e}")))?;
    let models = match scanned {
        Ok(models) => models,
        Err(trainer::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::Internal(format!("the models directory cannot be read: {e}"))),
    };
    let models: Vec<Value> = models
        .into_iter()
        .map(|m| {
            json!({
                // What a run config's model_name_or_path / reward_model_path takes.
                "name": m.name,
                "model_type": m.model_type,
                "architecture": m.architecture,
                "kind": m.kind,
                "num_parameters": m.num_parameters,
                "dtype": m.dtype,
                "supported": m.error.is_none(),
                "error": m.error.map(|e| state.settings.redact(&e)),
            })
        })
        .collect();
    Ok(Json(json!({ "models": models })))
}
