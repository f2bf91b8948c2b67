//! Goodhart's application crate: the `goodhart` command line and the web server.

pub mod accounts;
pub mod bench;
pub mod charts;
pub mod cli;
pub mod db;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod public;
pub mod report;
pub mod store;

/// The whole HTTP API as one router.
pub fn app(state: http::AppState) -> axum::Router {
    http::router(state)
}
