//! Turning a posted config into a stored one: JSON parsing, path containment, and the trainer's
//! own validation, with every problem reported by field.
//!
//! Every path a config names stays inside one of the server's directories: models under
//! `--models-dir`, datasets under `--datasets-dir`, the toy tasks' cache under `--data-dir`. A
//! path outside gets one answer whether or not it exists, and answers name paths relative to
//! those directories, never the server's absolute ones.

use std::path::{Component, Path, PathBuf};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde_json::Value;
use trainer::config::{Machine, RunConfig};
use trainer::error::FieldError;

use super::error::Error;
use super::Settings;

/// The body as JSON, or the error a client can act on. Only a body sent as `application/json`
/// is read (see [`super::security`]).
pub fn parse_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>, max_bytes: usize) -> Result<Value, Error> {
    if let Some(problem) = super::security::json_problem(headers) {
        return Err(Error::UnsupportedMediaType(problem));
    }
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge { limit: max_bytes, flag: "--max-body-bytes" }
        } else {
            Error::BadRequest(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| Error::field("(body)", format!("malformed JSON: {e}")))
}

/// One of the server's directories, as config paths are resolved against it.
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    pub dir: &'a Path,
    /// What it holds, for messages (`models`).
    pub holds: &'static str,
    /// The flag that sets it (`--models-dir`).
    pub flag: &'static str,
    /// Whether the path must exist already (a cache directory is created by the run).
    pub must_exist: bool,
}

impl Settings {
    pub fn models_root(&self) -> Root<'_> {
        Root { dir: &self.models_dir, holds: "models", flag: "--models-dir", must_exist: true }
    }

    pub fn datasets_root(&self) -> Root<'_> {
        Root { dir: &self.datasets_dir, holds: "datasets", flag: "--datasets-dir", must_exist: true }
    }

    pub fn data_root(&self) -> Root<'_> {
        Root { dir: &self.data_dir, holds: "data", flag: "--data-dir", must_exist: false }
    }

    /// The config keys that name paths, and the directory each must stay in. The test below
    /// fails when the trainer gains a `*_path` or `*_dir` key missing here.
    fn path_fields(&self) -> [(&'static str, Root<'_>); 5] {
        [
            ("model_name_or_path", self.models_root()),
            ("reward_model_path", self.models_root()),
            ("dataset_path", self.datasets_root()),
            ("eval_dataset_path", self.datasets_root()),
            ("toy_cache_dir", self.data_root()),
        ]
    }

    /// `text` with the server's directories left out of every path in it: what a client may read.
    pub fn redact(&self, text: &str) -> String {
        crate::public::redact(text, &[&self.models_dir, &self.datasets_dir, &self.data_dir])
    }
}

/// Validates a config (for this machine, unless it trains nothing) and answers the JSON to
/// store: every key with its value (defaults filled in), the model, reward model and dataset
/// paths canonical and inside the server's directories, and `toy_cache_dir` relative to
/// `--data-dir` (each server that trains the run puts the cache in its own, see
/// [`crate::jobs::toy_cache_dir`]).
pub fn prepare(mut value: Value, settings: &Settings) -> Result<(RunConfig, Value), Vec<FieldError>> {
    let Some(object) = value.as_object_mut() else {
        return Err(vec![FieldError::new("(config)", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let mut cache_dir = None;
    for (field, root) in settings.path_fields() {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(raw)) => match contain(raw, root) {
                Ok(path) if field == "toy_cache_dir" => {
                    // Checked in the trainer's view too: the run resolves it under `--data-dir`.
                    object.insert(field.to_string(), Value::String(path.to_string_lossy().into_owned()));
                    cache_dir = Some(relative(&path, root).unwrap_or_else(|| ".".into()));
                }
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
    let redact = |errors: Vec<FieldError>| -> Vec<FieldError> {
        errors.into_iter().map(|e| FieldError::new(e.field, settings.redact(&e.message))).collect()
    };
    // A web node that trains nothing cannot say what its workers' machines can train: they check
    // the device, cores and memory when they claim the run.
    let machine = if settings.max_concurrent_runs == 0 { Machine::Any } else { Machine::This };
    match RunConfig::from_json_value_on(value, machine) {
        Ok(config) if errors.is_empty() => {
            let mut stored =
                serde_json::to_value(&config).map_err(|e| vec![FieldError::new("(config)", e.to_string())])?;
            if let Some(dir) = cache_dir {
                stored["toy_cache_dir"] = Value::String(dir);
            }
            Ok((config, stored))
        }
        Ok(_) => Err(errors),
        Err(more) => {
            let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
            errors.extend(more.into_iter().filter(|e| !reported.contains(&e.field)));
            Err(redact(errors))
        }
    }
}

/// `raw` resolved inside `root` (a relative path is relative to it) and canonical; or why not.
///
/// Every path outside the root gets the same answer, existing or not, through `..` or through a
/// symbolic link: the closest existing ancestor is resolved first and must be inside. Messages
/// name paths relative to the root.
pub fn contain(raw: &str, root: Root<'_>) -> Result<PathBuf, String> {
    let Root { holds, flag, .. } = root;
    let base = root
        .dir
        .canonicalize()
        .map_err(|_| format!("this server has no {holds} directory: its {flag} does not exist"))?;
    let outside = || format!("must be inside the server's {holds} directory ({flag})");
    if raw.trim().is_empty() {
        return Err(format!("must name a path inside the server's {holds} directory ({flag})"));
    }
    let lexical = normalize(&base.join(raw)); // an absolute `raw` replaces `base`
    if !lexical.starts_with(&base) {
        return Err(outside());
    }
    // The closest existing ancestor, with its links resolved, decides; the rest does not exist.
    let mut existing = lexical.as_path();
    let mut missing = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(path) => break path,
            Err(_) => {
                let Some(parent) = existing.parent() else { return Err(outside()) };
                missing.push(existing.file_name().unwrap_or_default().to_owned());
                existing = parent;
            }
        }
    };
    if !resolved.starts_with(&base) {
        return Err(outside());
    }
    let path = missing.iter().rev().fold(resolved, |path, part| path.join(part));
    if !missing.is_empty() && root.must_exist {
        let shown = relative(&path, root).unwrap_or_else(|| raw.to_string());
        return Err(format!("{shown:?} does not exist in the server's {holds} directory ({flag})"));
    }
    Ok(path)
}

/// `path` (inside `root`) relative to it, `/`-separated; `None` for the root itself.
fn relative(path: &Path, root: Root<'_>) -> Option<String> {
    let base = root.dir.canonicalize().ok()?;
    let rel = path.strip_prefix(base).ok()?;
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `path` with `.` and `..` resolved as text (`..` at the root stays at the root).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path, must_exist: bool) -> Root<'_> {
        Root { dir, holds: "datasets", flag: "--datasets-dir", must_exist }
    }

    #[test]
    fn paths_outside_get_one_answer_whether_or_not_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("root");
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        std::fs::write(inside.join("sub/pairs.jsonl"), "{}").unwrap();
        std::fs::write(dir.path().join("secret.jsonl"), "{}").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path(), inside.join("escape")).unwrap();
        let r = root(&inside, true);

        let found = contain("sub/pairs.jsonl", r).unwrap();
        assert_eq!(found, inside.canonicalize().unwrap().join("sub/pairs.jsonl"));
        assert_eq!(contain(found.to_str().unwrap(), r).unwrap(), found, "an absolute path inside");
        assert_eq!(contain("sub/../sub/pairs.jsonl", r).unwrap(), found);

        let outside = contain("/etc/passwd", r).unwrap_err();
        assert!(outside.contains("must be inside") && outside.contains("--datasets-dir"), "{outside}");
        for raw in [
            "/etc/nonexistent",
            "../secret.jsonl",
            "../nonexistent.jsonl",
            "../../../../etc/passwd",
            dir.path().join("secret.jsonl").to_str().unwrap(),
            #[cfg(unix)]
            "escape/secret.jsonl",
            #[cfg(unix)]
            "escape/nonexistent.jsonl",
        ] {
            assert_eq!(contain(raw, r).unwrap_err(), outside, "{raw}");
        }

        let missing = contain("sub/nope.jsonl", r).unwrap_err();
        assert!(missing.starts_with("\"sub/nope.jsonl\" does not exist"), "{missing}");
        assert!(!missing.contains(dir.path().to_str().unwrap()), "{missing}");
    }

    #[test]
    fn a_directory_the_run_creates_may_not_exist_yet_but_must_be_inside() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path(), false);
        let base = dir.path().canonicalize().unwrap();
        assert_eq!(contain("cache/toy", r).unwrap(), base.join("cache/toy"));
        assert!(contain("/tmp/elsewhere/x", r).unwrap_err().contains("must be inside"));
        assert!(contain("../x", r).unwrap_err().contains("must be inside"));
    }

    #[test]
    fn every_path_key_of_the_trainer_is_contained() {
        let settings = crate::lifecycle::ServeConfig::for_dir(Path::new("/nonexistent")).settings();
        let contained: Vec<&str> = settings.path_fields().iter().map(|(k, _)| *k).collect();
        let keys = serde_json::to_value(RunConfig::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            if key.ends_with("_path") || key.ends_with("_dir") || key.ends_with("_or_path") {
                assert!(contained.contains(&key.as_str()), "{key} names a path but is not contained");
            }
        }
    }

    #[test]
    fn answers_name_paths_relative_to_the_servers_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::lifecycle::ServeConfig::for_dir(dir.path()).settings();
        settings.models_dir = dir.path().join("models");
        std::fs::create_dir_all(&settings.models_dir).unwrap();
        let models = settings.models_dir.canonicalize().unwrap();
        let text = format!("{}/tiny: no config.json; {}", models.display(), models.display());
        assert_eq!(settings.redact(&text), "tiny: no config.json; .");
    }
}
