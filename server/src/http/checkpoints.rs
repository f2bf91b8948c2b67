//! `/api/runs/{id}/checkpoints`: the list, a streamed tar of one checkpoint, and single files
//! with HTTP Range support. File names and directories come from the database, never from the
//! URL: the URL's name only selects one of the recorded files.

use std::io::{self, SeekFrom, Write};
use std::path::PathBuf;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::ReaderStream;

use super::error::{Error, Result};
use super::runs::{find, parse_id};
use super::AppState;
use crate::db::checkpoints::{self, Checkpoint};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/runs/{id}/checkpoints", get(list))
        .route("/api/runs/{id}/checkpoints/{step}/archive", get(archive))
        .route("/api/runs/{id}/checkpoints/{step}/files/{name}", get(file))
}

/// A run's checkpoints (`GET /api/runs/{id}/checkpoints`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckpointList {
    pub run_id: i64,
    pub checkpoints: Vec<CheckpointView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckpointView {
    pub step: i64,
    pub bytes: i64,
    pub sha256: String,
    /// Unix seconds.
    pub created_at: i64,
    pub files: Vec<checkpoints::CheckpointFile>,
    /// Where the whole checkpoint downloads as one archive.
    pub archive: String,
}

async fn list(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<CheckpointList>> {
    let run = find(&state, &id).await?;
    let mut out = Vec::new();
    for c in checkpoints::list(&state.pool, run.id).await? {
        let files = checkpoints::files(&state.pool, run.id, c.step).await?;
        out.push(CheckpointView {
            step: c.step,
            bytes: c.bytes,
            sha256: c.sha256,
            created_at: c.created_at,
            files,
            archive: format!("/api/runs/{}/checkpoints/{}/archive", run.id, c.step),
        });
    }
    Ok(Json(CheckpointList { run_id: run.id, checkpoints: out }))
}

async fn find_checkpoint(state: &AppState, id: &str, step: &str) -> Result<(i64, Checkpoint)> {
    let run = find(state, id).await?;
    let step = parse_id(step, "checkpoint")?;
    let checkpoint = checkpoints::get(&state.pool, run.id, step)
        .await?
        .ok_or_else(|| Error::NotFound(format!("checkpoint {step} of run {}", run.id)))?;
    Ok((run.id, checkpoint))
}

/// Sends what tar writes to the response body, chunk by chunk.
struct ChannelWriter(mpsc::Sender<io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The checkpoint's directory as a tar stream (`checkpoint-<step>/<file>`), built on a blocking
/// thread while it is sent, so no archive is ever held whole in memory or on disk.
async fn archive(State(state): State<AppState>, Path((id, step)): Path<(String, String)>) -> Result<Response> {
    let (run_id, checkpoint) = find_checkpoint(&state, &id, &step).await?;
    let files = checkpoints::files(&state.pool, run_id, checkpoint.step).await?;
    let dir = PathBuf::from(&checkpoint.path);
    let prefix = format!("checkpoint-{}", checkpoint.step);
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let errors = tx.clone();
        let result = (|| -> io::Result<()> {
            let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 16, ChannelWriter(tx)));
            tar.mode(tar::HeaderMode::Deterministic);
            for f in &files {
                tar.append_path_with_name(dir.join(&f.name), format!("{prefix}/{}", f.name))?;
            }
            tar.into_inner()?.flush()
        })();
        if let Err(e) = result {
            // Ends the body with an error, so the client sees a broken download, not a short one.
            let _ = errors.blocking_send(Err(e));
        }
    });
    let name = format!("run-{run_id}-checkpoint-{}.tar", checkpoint.step);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `len` bytes. `None`: serve it whole
/// (no header, or a form we do not support, such as several ranges); `Err`: unsatisfiable.
fn parse_range(header: Option<&HeaderValue>, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (start, "") => (start.parse().ok()?, len.saturating_sub(1)),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(len.saturating_sub(1))),
    };
    if len == 0 || start > end || start >= len {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

async fn file(
    State(state): State<AppState>,
    Path((id, step, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let (run_id, checkpoint) = find_checkpoint(&state, &id, &step).await?;
    let recorded = checkpoints::files(&state.pool, run_id, checkpoint.step).await?;
    let entry = recorded
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| Error::NotFound(format!("file {name:?} in checkpoint {}", checkpoint.step)))?;
    let path = PathBuf::from(&checkpoint.path).join(&entry.name);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::Internal(format!("checkpoint file {}: {e}", path.display())))?;
    let len = file.metadata().await.map_err(|e| Error::Internal(e.to_string()))?.len();
    let disposition = format!("attachment; filename=\"{}\"", entry.name);
    let mut response = match parse_range(headers.get(header::RANGE), len) {
        None => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(ReaderStream::new(file))),
        Some(Err(())) => Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .body(Body::empty()),
        Some(Ok((start, end))) => {
            file.seek(SeekFrom::Start(start)).await.map_err(|e| Error::Internal(e.to_string()))?;
            Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(header::CONTENT_LENGTH, end - start + 1)
                .body(Body::from_stream(ReaderStream::new(file.take(end - start + 1))))
        }
    }
    .map_err(|e| Error::Internal(e.to_string()))?;
    let headers = response.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
        parse_range(Some(&HeaderValue::from_str(s).unwrap()), len)
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(range("bytes=50-500", 100), Some(Ok((50, 99))), "an end past the file is clamped");
        assert_eq!(range("bytes=100-", 100), Some(Err(())), "a start past the end is unsatisfiable");
        assert_eq!(range("bytes=0-1,5-6", 100), None, "several ranges: the whole file");
        assert_eq!(range("items=0-1", 100), None);
    }
}
