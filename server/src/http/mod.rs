//! The JSON API (one router per resource) and the web pages ([`pages`]), one [`error::Error`],
//! sign-in and bearer tokens ([`auth`]), cross-site protection ([`security`]), and the HTTP/1
//! server with its connection limits ([`listen`]).

pub mod auth;
pub mod cache;
pub mod checkpoints;
pub mod datasets;
pub mod error;
pub mod events;
pub mod listen;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod pages;
pub mod posted_config;
pub mod runs;
pub mod security;
pub mod sweeps;
pub mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::db::Pool;
use crate::jobs::event_bus::EventBus;
use crate::jobs::queue::RunQueue;

/// What the server was started with, as handlers need it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address the server listens on: a `Host` naming it is this server's own.
    pub bind: SocketAddr,
    /// Host names other than `localhost` and IP addresses that name this server (`--allowed-host`).
    pub allowed_hosts: Vec<String>,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub datasets_dir: PathBuf,
    pub auth_token: Option<String>,
    pub max_sweep_runs: usize,
    pub max_body_bytes: usize,
    /// The largest dataset `POST /api/datasets` accepts, in bytes.
    pub max_upload_bytes: usize,
    /// How long an upload may send nothing before it is refused (408).
    pub upload_idle_timeout: Duration,
    pub request_timeout: Duration,
    /// CSS and JavaScript for the pages (`static/`).
    pub static_dir: PathBuf,
    /// `{"base", "grid"}` of the sweep the "Launch demo sweep" button queues.
    pub demo_sweep: serde_json::Value,
    /// Trainers this server runs at once: what queue positions and ETAs are estimated with.
    pub max_concurrent_runs: usize,
    /// When a worker whose heartbeat is older counts as gone (`--stale-after`).
    pub stale_after: Duration,
    /// The session cookie is `Secure` on every sign-in, not only behind a proxy that says TLS.
    pub secure_cookies: bool,
}

#[derive(Clone)]
pub struct AppState {
    /// For `db::` reads; every change goes through `queue`.
    pub pool: Pool,
    pub queue: Arc<dyn RunQueue>,
    pub events: EventBus,
    pub settings: Arc<Settings>,
    /// Cancelled at shutdown; live streams end with it.
    pub shutdown: CancellationToken,
    /// What ended runs serve (their series for the pages, their metrics API answers).
    pub ended_runs: Arc<cache::EndedRunCache>,
    /// Where checkpoint downloads are read from (`--store`; set by [`crate::lifecycle::start`]).
    pub store: crate::store::CheckpointStore,
}

impl AppState {
    /// State over `pool` with the SQLite queue, claiming as `worker`, and a fresh event bus;
    /// nothing runs the queue until a [`crate::jobs::runner::Runner`] is started on it.
    pub fn new(pool: Pool, settings: Settings, worker: String) -> Self {
        Self::with_labels(pool, settings, worker, std::collections::BTreeMap::new())
    }

    /// [`AppState::new`], its queue claiming only runs whose `requires` these worker `labels`
    /// satisfy (`--labels`).
    pub fn with_labels(
        pool: Pool,
        settings: Settings,
        worker: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Self {
        let events = crate::jobs::event_bus::event_bus();
        let queue = crate::jobs::queue::DbQueue::new(pool.clone(), events.clone(), worker).with_labels(labels);
        let queue: Arc<dyn RunQueue> = Arc::new(queue);
        Self {
            pool,
            queue,
            events,
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            ended_runs: Arc::default(),
            store: crate::store::CheckpointStore::directories(),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    Router::new()
        .merge(runs::router())
        .merge(sweeps::router())
        .merge(metrics::router())
        .merge(events::router())
        .merge(checkpoints::router())
        .merge(models::router())
        .merge(datasets::router())
        .merge(workers::router())
        .merge(pages::router(&state))
        .merge(auth::router())
        .route("/api/openapi.json", get(openapi))
        // Bounds the time to the response head; streamed bodies (SSE, downloads) may run longer.
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        // A declared length over the limit is refused before any of the body is read.
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        // Uploads have their own limits (see `datasets::upload_router`).
        .merge(datasets::upload_router(&settings))
        .layer(middleware::from_fn_with_state(state.clone(), security::csrf))
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), security::same_origin))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), error::uniform))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The API's OpenAPI document, as this server answers: on a server that signs nobody in (no
/// `--auth-token`, no users), no route asks for credentials, so none lists them or a 401.
async fn openapi(State(state): State<AppState>) -> Response {
    match auth::required(&state).await {
        Ok(required) => axum::Json(openapi::document(required)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme's case does not matter (RFC 9110).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let headers = |v: &'static str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, axum::http::HeaderValue::from_static(v));
            h
        };
        assert_eq!(bearer(&headers("Bearer s3cret")), Some("s3cret"));
        assert_eq!(bearer(&headers("bearer s3cret")), Some("s3cret"));
        assert_eq!(bearer(&headers("BEARER  s3cret ")), Some("s3cret"));
        assert_eq!(bearer(&headers("Basic czNjcmV0")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
    }
}
