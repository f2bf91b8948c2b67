//! `/api/runs/{id}/checkpoints`: the list, a streamed tar of one checkpoint, and single files
//! with HTTP Range support, read from the checkpoint store (`--store`, or the directory the
//! checkpoint was recorded in) as they are sent. File names and locations come from the
//! database, never from the URL: the URL's name only selects one of the recorded files.

use std::io::{self, Read, Write};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::error::{Error, Result};
use super::runs::{find, parse_id};
use super::AppState;
use crate::db::checkpoints::{self, Checkpoint};
use crate::store::Location;

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
    /// Unix milliseconds.
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

/// Reads exactly `left` bytes, failing rather than ending early (a tar entry's size is in its
/// header before its bytes).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stored file ended early"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A checkpoint's file that the store could not give, as an internal error (the log names why).
fn store_error(run_id: i64, step: i64) -> impl Fn(String) -> Error + Copy {
    move |e| Error::Internal(format!("checkpoint {step} of run {run_id}: {e}"))
}

/// The mtime `tar::HeaderMode::Deterministic` writes.
const DETERMINISTIC_MTIME: u64 = 1_153_704_088;

/// The checkpoint as a tar stream (`checkpoint-<step>/<file>`), built on a blocking thread from
/// the store's streams while it is sent, so no archive is ever held whole in memory or on disk.
async fn archive(State(state): State<AppState>, Path((id, step)): Path<(String, String)>) -> Result<Response> {
    let (run_id, checkpoint) = find_checkpoint(&state, &id, &step).await?;
    let files = checkpoints::files(&state.pool, run_id, checkpoint.step).await?;
    let location = Location::of(&checkpoint.path);
    // Every file is found before the answer starts: a store this server cannot reach (or one
    // without the files) is an error answer, not a 200 whose tar breaks off.
    let mut sized = Vec::with_capacity(files.len());
    for f in files {
        let size = state.store.size(&location, &f.name).await.map_err(store_error(run_id, checkpoint.step))?;
        sized.push((f, size));
    }
    let prefix = format!("checkpoint-{}", checkpoint.step);
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let (store, runtime) = (state.store.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        let errors = tx.clone();
        let result = (|| -> io::Result<()> {
            let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 16, ChannelWriter(tx)));
            for (f, size) in &sized {
                let size = *size;
                let stream = runtime.block_on(store.read(&location, &f.name, None)).map_err(io::Error::other)?;
                let mut header = tar::Header::new_gnu();
                header.set_size(size);
                header.set_mode(0o644);
                header.set_mtime(DETERMINISTIC_MTIME);
                header.set_uid(0);
                header.set_gid(0);
                header.set_entry_type(tar::EntryType::Regular);
                let reader = Exact {
                    inner: SyncIoBridge::new_with_handle(StreamReader::new(stream), runtime.clone()),
                    left: size,
                };
                tar.append_data(&mut header, format!("{prefix}/{}", f.name), reader)?;
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
    let location = Location::of(&checkpoint.path);
    let store = &state.store;
    let internal = store_error(run_id, checkpoint.step);
    let len = store.size(&location, &entry.name).await.map_err(internal)?;
    let disposition = format!("attachment; filename=\"{}\"", entry.name);
    let mut response = match parse_range(headers.get(header::RANGE), len) {
        None => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(store.read(&location, &entry.name, None).await.map_err(internal)?)),
        Some(Err(())) => Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .body(Body::empty()),
        Some(Ok((start, end))) => {
            let part = store.read(&location, &entry.name, Some((start, end))).await.map_err(internal)?;
            Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(header::CONTENT_LENGTH, end - start + 1)
                .body(Body::from_stream(part))
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
