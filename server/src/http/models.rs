//! `/api/models`: the HF checkpoints under `--models-dir`, as the run form lists them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use trainer::model::registry;

use super::error::{Error, Result};
use super::AppState;

/// The model directories under `--models-dir` (`GET /api/models`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Model")]
pub struct ModelView {
    /// The directory relative to --models-dir: what model_name_or_path / reward_model_path take.
    pub name: String,
    pub model_type: Option<String>,
    /// config.json's first `architectures` entry, e.g. LlamaForCausalLM.
    pub architecture: Option<String>,
    #[schemars(schema_with = "super::openapi::model_kind")]
    pub kind: Option<Value>,
    /// From the safetensors headers (or config.json's shapes when there are no weights).
    pub num_parameters: Option<u64>,
    pub dtype: Option<String>,
    /// Whether a run can use it; `error` says why not.
    pub supported: bool,
    pub error: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/models", get(list))
}

/// Every checkpoint with its architecture, parameter count and dtype; unsupported ones carry
/// an `error` naming their `model_type`. Only headers are read, never weights. Without a
/// `--models-dir` the list is empty, as the datasets' is without a `--datasets-dir`.
async fn list(State(state): State<AppState>) -> Result<Json<ModelList>> {
    let dir = state.settings.models_dir.clone();
    let scanned = tokio::task::spawn_blocking(move || registry::scan(&dir))
        .await
        .map_err(|e| Error::Internal(format!("scanning models: {e}")))?;
    let models = match scanned {
        Ok(models) => models,
        Err(trainer::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::Internal(format!("the models directory cannot be read: {e}"))),
    };
    let models = models
        .into_iter()
        .map(|m| ModelView {
            name: m.name,
            model_type: m.model_type,
            architecture: m.architecture,
            kind: m.kind.map(|k| serde_json::to_value(k).unwrap_or(Value::Null)),
            num_parameters: m.num_parameters,
            dtype: m.dtype,
            supported: m.error.is_none(),
            error: m.error.map(|e| state.settings.redact(&e)),
        })
        .collect();
    Ok(Json(ModelList { models }))
}
