//! `/api/datasets`: the files under `--datasets-dir` with their format and row counts, uploads
//! (multipart, size-limited, checked row by row, never overwriting), and the row-by-row check
//! every run's dataset passes before the run is queued.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use trainer::config::{LossType, RunConfig};
use trainer::data::{self, DatasetReport, FileFormat, RowProblem, RowType};
use trainer::error::FieldError;

use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::error::{Error, Result};
use super::{AppState, Settings};

/// Bad rows listed in one answer; a last entry counts the rest.
pub const LISTED_PROBLEMS: usize = 1000;
/// How deep the listing looks into subdirectories of `--datasets-dir`.
const LIST_DEPTH: usize = 4;
const LIST_LIMIT: usize = 10_000;

/// `GET /api/datasets`, bounded by the server's request timeout like every other route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/datasets", get(list))
}

/// `POST /api/datasets`: kept out of the request timeout (a large upload over a slow link takes
/// longer than any response-head limit), with its own body limit, refused at once when the
/// declared length is over it, and refused when the client sends nothing for
/// `--upload-idle-timeout`.
pub fn upload_router(settings: &Settings) -> Router<AppState> {
    Router::new()
        .route("/api/datasets", post(upload))
        .layer(DefaultBodyLimit::max(settings.max_upload_bytes))
        .layer(RequestBodyTimeoutLayer::new(settings.upload_idle_timeout))
        .layer(RequestBodyLimitLayer::new(settings.max_upload_bytes))
}

/// Whether a request is a dataset upload (which has its own limits and content type).
pub fn is_upload(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST && path.trim_end_matches('/') == "/api/datasets"
}

/// Every bad row of the datasets `configs` name, checked against their models' chat templates,
/// as field errors on `dataset_path` / `eval_dataset_path` ("line 3: missing `rejected`").
/// Each (dataset, model) pair is read once.
pub async fn check_datasets(configs: &[RunConfig], settings: &Settings) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for cfg in configs.iter().filter(|c| !c.task.is_toy()) {
        for (field, path) in [("dataset_path", &cfg.dataset_path), ("eval_dataset_path", &cfg.eval_dataset_path)] {
            let Some(path) = path.clone() else { continue };
            let model = cfg.model_name_or_path.clone();
            if !seen.insert((field, path.clone(), model.clone())) {
                continue;
            }
            let report = tokio::task::spawn_blocking(move || data::inspect(&path, model.as_deref()))
                .await
                .map_err(|e| Error::Internal(format!("dataset check: {e}")))?;
            errors.extend(field_errors(field, &report.problems, settings));
            let unpaired = report.kind.is_some_and(|k| k.row_type == RowType::UnpairedPreference);
            if unpaired && cfg.loss_type != LossType::Kto {
                errors.push(FieldError::new(
                    "loss_type",
                    format!(
                        "{:?} needs paired data; {field} holds unpaired {{prompt, completion, label}} rows (use \"kto\")",
                        cfg.loss_type.as_str()
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errors))
    }
}

/// Each problem as an error on `field`, its paths relative to the server's directories.
fn field_errors(field: &str, problems: &[RowProblem], settings: &Settings) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = problems
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|p| FieldError::new(field, settings.redact(&p.to_string())))
        .collect();
    if problems.len() > LISTED_PROBLEMS {
        errors.push(FieldError::new(field, format!("... and {} more bad rows", problems.len() - LISTED_PROBLEMS)));
    }
    errors
}

/// A dataset as the API shows it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Dataset")]
pub struct DatasetView {
    /// Path relative to --datasets-dir: what dataset_path takes.
    pub name: String,
    #[schemars(schema_with = "super::openapi::dataset_format")]
    pub format: Option<&'static str>,
    /// TRL's dataset type, from the first row.
    #[schemars(schema_with = "super::openapi::dataset_kind")]
    pub kind: Option<Value>,
    /// In words, e.g. "conversational preference {prompt, chosen, rejected}".
    pub description: Option<String>,
    pub rows: usize,
    pub size_bytes: Option<u64>,
    /// The first problem seen without a full check (uploads were checked in full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The datasets under `--datasets-dir` (`GET /api/datasets`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetView>,
}

fn view(name: &str, path: &Path, report: &DatasetReport) -> DatasetView {
    let size_bytes = std::fs::metadata(path).map(|m| m.len()).ok();
    DatasetView {
        name: name.to_string(),
        format: report.format.map(FileFormat::as_str),
        kind: report.kind.map(|k| serde_json::to_value(k).unwrap_or(Value::Null)),
        description: report.kind.map(|k| k.to_string()),
        rows: report.rows,
        size_bytes,
        problem: None,
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<DatasetList>> {
    let root = state.settings.datasets_dir.clone();
    let settings = state.settings.clone();
    let datasets = tokio::task::spawn_blocking(move || -> Vec<DatasetView> {
        let mut files = Vec::new();
        collect_files(&root, &root, 0, &mut files);
        files.sort();
        files
            .iter()
            .map(|(name, path)| {
                let rows = data::count_rows(path);
                let kind = data::first_row_kind(path);
                let report = DatasetReport {
                    format: FileFormat::of(path),
                    kind: kind.as_ref().ok().copied(),
                    rows: rows.as_ref().copied().unwrap_or(0),
                    problems: Vec::new(),
                };
                let mut v = view(name, path, &report);
                // The first problem seen without a full check (uploads were checked in full).
                if let Some(problem) = kind.err().or(rows.err()) {
                    v.problem = Some(settings.redact(&problem.to_string()));
                }
                v
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Internal(format!("listing datasets: {e}")))?;
    Ok(Json(DatasetList { datasets }))
}

/// Dataset files under `dir` (relative names), skipping hidden entries and unfinished uploads.
fn collect_files(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if out.len() >= LIST_LIMIT {
            return;
        }
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() && depth + 1 < LIST_DEPTH {
            collect_files(root, &path, depth + 1, out);
        } else if kind.is_file() && FileFormat::of(&path).is_some() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push((rel.to_string_lossy().into_owned(), path.clone()));
            }
        }
    }
}

/// A client's file name, made safe: its last path component, ASCII letters, digits, `.`, `_`
/// and `-` only, not hidden, with a dataset extension.
fn safe_file_name(raw: &str) -> std::result::Result<String, String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    if base.is_empty() || base.starts_with('.') || base.len() > 200 {
        return Err(format!("{raw:?} is not a usable file name"));
    }
    if let Some(c) = base.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("{raw:?}: file names may use letters, digits, `.`, `_` and `-`, not {c:?}"));
    }
    if FileFormat::of(Path::new(base)).is_none() {
        return Err(format!("{raw:?}: the extension must be one of .{}", FileFormat::EXTENSIONS.join(", .")));
    }
    Ok(base.to_string())
}

/// Removes the partial upload however the handler ends.
struct PartialFile(PathBuf);

impl Drop for PartialFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Multipart fields: `file` (the dataset, with its file name) and optionally
/// `model_name_or_path` (a model under `--models-dir` whose chat template conversational rows
/// must render with). Answers 201 with the stored dataset, 409 if the name is taken, 413 past
/// `--max-upload-bytes`, 422 with every bad row.
async fn upload(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<DatasetView>)> {
    if let Some(problem) = super::security::multipart_problem(&headers) {
        return Err(Error::UnsupportedMediaType(problem));
    }
    let settings = state.settings.clone();
    let limit = settings.max_upload_bytes;
    let mut multipart = multipart.map_err(|e| Error::BadRequest(format!("multipart body: {}", e.body_text())))?;
    let idle = settings.upload_idle_timeout;
    let multipart_error = |e: MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge { limit, flag: "--max-upload-bytes" }
        } else if caused_by::<tower_http::timeout::TimeoutError>(&e) {
            Error::Timeout(format!("the upload sent nothing for {} s (--upload-idle-timeout)", idle.as_secs()))
        } else {
            Error::BadRequest(format!("multipart body: {}", e.body_text()))
        }
    };
    let _ = std::fs::create_dir_all(&settings.datasets_dir);
    let root = settings
        .datasets_dir
        .canonicalize()
        .map_err(|_| Error::Internal(format!("--datasets-dir {} does not exist", settings.datasets_dir.display())))?;
    let mut stored: Option<(String, PartialFile)> = None;
    let mut model: Option<PathBuf> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                if stored.is_some() {
                    return Err(Error::field("file", "send one file per upload"));
                }
                let name =
                    safe_file_name(field.file_name().unwrap_or_default()).map_err(|m| Error::field("file", m))?;
                let partial = PartialFile(root.join(format!(".upload-{}.partial", unique_suffix())));
                let mut out = tokio::fs::File::create(&partial.0)
                    .await
                    .map_err(|e| Error::Internal(format!("creating {}: {e}", partial.0.display())))?;
                let mut written = 0usize;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    written += chunk.len();
                    if written > limit {
                        return Err(Error::TooLarge { limit, flag: "--max-upload-bytes" });
                    }
                    out.write_all(&chunk).await.map_err(|e| Error::Internal(format!("writing the upload: {e}")))?;
                }
                out.flush().await.map_err(|e| Error::Internal(format!("writing the upload: {e}")))?;
                stored = Some((name, partial));
            }
            Some("model_name_or_path") => {
                let raw = field.text().await.map_err(multipart_error)?;
                let path = super::posted_config::contain(&raw, settings.models_root())
                    .map_err(|m| Error::field("model_name_or_path", m))?;
                model = Some(path);
            }
            Some(other) => {
                return Err(Error::field(other, "unknown field: send `file` and optionally `model_name_or_path`"))
            }
            None => return Err(Error::field("(body)", "a multipart field without a name")),
        }
    }
    let Some((name, partial)) = stored else { return Err(Error::field("file", "is required")) };

    // Checked under its final extension (the format follows it), then linked into place: a link
    // fails if the name exists, so nothing is ever overwritten, even by a concurrent upload.
    let checked = root.join(format!(".upload-{}.{name}", unique_suffix()));
    let checked_guard = PartialFile(checked.clone());
    std::fs::rename(&partial.0, &checked).map_err(|e| Error::Internal(format!("storing the upload: {e}")))?;
    let report = {
        let (path, model) = (checked.clone(), model.clone());
        tokio::task::spawn_blocking(move || data::inspect(&path, model.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("dataset check: {e}")))?
    };
    if !report.problems.is_empty() {
        return Err(Error::Invalid(field_errors("file", &report.problems, &settings)));
    }
    let target = root.join(&name);
    match std::fs::hard_link(&checked, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Conflict(format!("a dataset named {name:?} already exists; upload under another name")))
        }
        Err(e) => return Err(Error::Internal(format!("storing {}: {e}", target.display()))),
    }
    drop(checked_guard);
    Ok((StatusCode::CREATED, Json(view(&name, &target, &report))))
}

/// Whether `error` or anything it was caused by is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Unique enough for temporary names in one directory: time and a process-wide counter.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_file_names_are_reduced_to_a_safe_base_name() {
        assert_eq!(safe_file_name("hh-train_v2.jsonl").unwrap(), "hh-train_v2.jsonl");
        assert_eq!(safe_file_name("../../etc/uf.parquet").unwrap(), "uf.parquet");
        assert_eq!(safe_file_name("C:\\data\\x.json").unwrap(), "x.json");
        for bad in ["", ".hidden.jsonl", "a b.jsonl", "data.csv", "noext", "ü.jsonl", "dir/"] {
            assert!(safe_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn past_the_listing_limit_the_rest_are_counted() {
        let problems: Vec<RowProblem> =
            (1..=LISTED_PROBLEMS + 5).map(|i| RowProblem::new(data::Location::Line(i), "bad")).collect();
        let settings = crate::lifecycle::ServeConfig::for_dir(Path::new("/nonexistent")).settings();
        let errors = field_errors("dataset_path", &problems, &settings);
        assert_eq!(errors.len(), LISTED_PROBLEMS + 1);
        assert_eq!(errors[0].message, "line 1: bad");
        assert_eq!(errors.last().unwrap().message, "... and 5 more bad rows");
    }
}
