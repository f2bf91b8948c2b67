//! Turning a posted config into a stored one: JSON parsing, path containment, and the trainer's
//! own validation, with every problem reported by field.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde_json::Value;
use trainer::config::{FieldError, RunConfig};

use super::error::Error;
use super::Settings;

/// The body as JSON, or the error a client can act on.
pub fn parse_body(body: Result<Bytes, BytesRejection>, max_bytes: usize) -> Result<Value, Error> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            // An invalid config like any other (422), naming the limit that refused it.
            Error::field("(body)", format!("is larger than the server's limit of {max_bytes} bytes (--max-body-bytes)"))
        } else {
            Error::BadRequest(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| Error::field("(body)", format!("malformed JSON: {e}")))
}

/// Validates a config and answers the JSON to store: every key with its value (defaults filled
/// in) and the model, reward model and dataset paths canonical and inside the server's directories.
pub fn prepare(mut value: Value, settings: &Settings) -> Result<(RunConfig, Value), Vec<FieldError>> {
    let Some(object) = value.as_object_mut() else {
        return Err(vec![FieldError::new("(config)", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let contained = [
        ("model_name_or_path", &settings.models_dir),
        ("reward_model_path", &settings.models_dir),
        ("dataset_path", &settings.datasets_dir),
        ("eval_dataset_path", &settings.datasets_dir),
    ];
    for (field, root) in contained {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(raw)) => match contain(raw, root) {
                Ok(path) => {
                    object.insert(field.to_string(), Value::String(path.to_string_lossy().into_owned()));
                }
                Err(message) => errors.push(FieldError::new(field, message)),
            },
            Some(_) => errors.push(FieldError::new(field, "must be a string (a path)")),
        }
    }
    // The trainer would only repeat these fields with a less useful message.
    for error in &errors {
        object.remove(&error.field);
    }
    match RunConfig::from_json_value(value) {
        Ok(config) if errors.is_empty() => {
            let stored = serde_json::to_value(&config).map_err(|e| vec![FieldError::new("(config)", e.to_string())])?;
            Ok((config, stored))
        }
        Ok(_) => Err(errors),
        Err(more) => {
            let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
            errors.extend(more.into_iter().filter(|e| !reported.contains(&e.field)));
            Err(errors)
        }
    }
}

/// `raw` resolved against `root` (when relative) and canonicalised; it must stay inside `root`.
pub fn contain(raw: &str, root: &Path) -> Result<PathBuf, String> {
    let root = root
        .canonicalize()
        .map_err(|_| format!("the server's directory for this field ({}) does not exist", root.display()))?;
    let candidate = root.join(raw); // an absolute `raw` replaces `root`; containment is checked below
    let path = candidate.canonicalize().map_err(|_| format!("{raw:?} does not exist"))?;
    if path.starts_with(&root) {
        Ok(path)
    } else {
        Err(format!("{raw:?} is outside the directory the server allows for this field"))
    }
}
