//! The web pages: askama templates (`templates/`) filled from [`crate::report`], one file per
//! page, plus `static/` (CSS and a little JavaScript) served from disk. Every page works
//! without JavaScript: forms post and redirect, options are query parameters, charts are SVG
//! drawn here. The script only adds live updates, legend toggling and tooltips.

pub mod compare;
pub mod demo;
pub mod fields;
pub mod new_run;
pub mod new_sweep;
pub mod run;
pub mod runs;
pub mod workers;

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Router;
use tower_http::services::ServeDir;

use super::error::Error;
use super::AppState;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(runs::router())
        .merge(new_run::router())
        .merge(new_sweep::router())
        .merge(run::router())
        .merge(compare::router())
        .merge(demo::router())
        .merge(workers::router())
        .nest_service("/static", ServeDir::new(&state.settings.static_dir))
}

/// A page handler's error: the API's [`Error`], shown as a page with the same status.
#[derive(Debug)]
pub struct PageError(pub Error);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

impl From<crate::jobs::queue::QueueError> for PageError {
    fn from(e: crate::jobs::queue::QueueError) -> Self {
        Self(e.into())
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        Self(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0.public())
    }
}

/// An error as a page, with its status.
pub fn error_page(public: super::error::Public) -> Response {
    let status = public.status;
    let page =
        ErrorPage { status: status.as_u16(), reason: status.canonical_reason().unwrap_or(""), message: public.message };
    match page.render_with_values(&super::auth::chrome()) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, page.message).into_response(),
    }
}

impl From<askama::Error> for Error {
    fn from(e: askama::Error) -> Self {
        Self::Internal(format!("rendering a page: {e}"))
    }
}

pub type PageResult<T = Response> = Result<T, PageError>;

/// A rendered page with `status`.
pub fn page(status: StatusCode, template: &impl Template) -> PageResult {
    // Every page's header shows who is signed in, and a sign-out button.
    let html = template.render_with_values(&super::auth::chrome()).map_err(Error::from)?;
    Ok((status, Html(html)).into_response())
}

/// After a form's action: go to the page that shows its result (303, so a reload does not post again).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A figure as a download or a live-update fragment.
pub fn figure_file(figure: &crate::charts::Figure, name: &str, ext: &str) -> PageResult {
    let disposition = |n: &str| format!("inline; filename=\"{n}.{ext}\"");
    match ext {
        "svg" => Ok((
            [(header::CONTENT_TYPE, "image/svg+xml".to_string()), (header::CONTENT_DISPOSITION, disposition(name))],
            figure.to_svg(),
        )
            .into_response()),
        "png" => {
            let png = figure.to_png().map_err(|e| Error::Internal(format!("drawing {name}.png: {e:#}")))?;
            Ok((
                [(header::CONTENT_TYPE, "image/png".to_string()), (header::CONTENT_DISPOSITION, disposition(name))],
                png,
            )
                .into_response())
        }
        other => Err(Error::NotFound(format!("chart format {other:?} (svg or png)")).into()),
    }
}

/// A CSV download.
pub fn csv_file(name: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response()
}

/// `key=value` pairs of a query string or form body, repeated keys kept (checkbox lists).
pub fn pairs(raw: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(raw).unwrap_or_default()
}

/// The last value of `key`, if any.
pub fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every value of `key`, each split on commas (`runs=1,2&runs=3`).
pub fn values(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>())
        .collect()
}

/// `1`, `true` or `on` (a checked checkbox).
pub fn flag(pairs: &[(String, String)], key: &str) -> bool {
    matches!(value(pairs, key), Some("1" | "true" | "on"))
}

/// Text for a value that may be missing.
pub fn num(v: Option<f64>) -> String {
    v.map(crate::charts::number).unwrap_or_default()
}

/// A timestamp (unix ms) as UTC `YYYY-MM-DD HH:MM`.
pub fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rest / 3600, (rest % 3600) / 60)
}

/// Bytes as "1.2 MB".
pub fn bytes(n: i64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_comma_separated_values_are_both_read() {
        let p = pairs("runs=1,2&runs=3&x=kl&log_x=on");
        assert_eq!(values(&p, "runs"), vec!["1", "2", "3"]);
        assert_eq!(value(&p, "x"), Some("kl"));
        assert!(flag(&p, "log_x") && !flag(&p, "smooth"));
    }

    #[test]
    fn timestamps_and_sizes_read_well() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(bytes(1_234_567), "1.2 MB");
    }
}
