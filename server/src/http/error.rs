//! The HTTP layer's one error type: every handler returns `Result<_, Error>`, and every error
//! answers JSON `{"error": "...", "fields": [{"field", "message"}]}`.
//!
//! This is also the one place that decides what a client may read of a failure: a 5xx answer
//! carries only a short id, and the log line with that id has the details. [`uniform`] gives
//! the answers that axum, tower and hyper produce on their own (extractor rejections, 404 and
//! 405 of the router, 408, 413, panics) the same shape.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use trainer::error::FieldError;

use super::AppState;
use crate::jobs::queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    /// Invalid input, with every offending field.
    #[error("invalid input: {}", FieldError::join(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// A body over one of the server's limits, named by the flag that sets it.
    #[error("the request body is larger than this server's limit of {limit} bytes ({flag})")]
    TooLarge { limit: usize, flag: &'static str },
    /// No credentials, or ones that are not valid; says what to send.
    #[error("{0}")]
    Unauthorized(String),
    /// Refused whoever asks: a cross-site request, a foreign `Host`, a form without its token.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client was too slow: it sent nothing for too long, or the answer took too long.
    #[error("{0}")]
    Timeout(String),
    /// A failure of the server itself. Its text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(format!("database: {e}"))
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound(id) => Self::NotFound(format!("run {id}")),
            QueueError::Conflict { .. } | QueueError::Lost(_) => Self::Conflict(e.to_string()),
            QueueError::Db(e) => e.into(),
        }
    }
}

/// What a client is told of an error: status, text and the fields at fault.
#[derive(Debug)]
pub struct Public {
    pub status: StatusCode,
    pub message: String,
    pub fields: Vec<FieldError>,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer a client gets. An internal error is logged here, under the id the answer names.
    pub fn public(self) -> Public {
        let status = self.status();
        let (message, fields) = match self {
            Self::Internal(details) => (crate::public::internal(&details), Vec::new()),
            Self::TooLarge { limit, flag } => {
                let message = Self::TooLarge { limit, flag }.to_string();
                (message.clone(), vec![FieldError::new("(body)", message)])
            }
            Self::Invalid(fields) => (format!("invalid input: {}", FieldError::join(&fields)), fields),
            other => (other.to_string(), Vec::new()),
        };
        Public { status, message, fields }
    }
}

/// A JSON error answer.
pub fn json(public: Public) -> Response {
    let Public { status, message, fields } = public;
    let mut response = (status, Json(super::openapi::ErrorBody { error: message, fields })).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        json(self.public())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Gives every error answer the server's shape, whoever produced it: JSON `{"error", "fields"}`
/// under `/api/`, the HTML error page elsewhere. Answers already in that shape pass unchanged;
/// others (axum's extractor rejections in plain text, the router's empty 404 and 405, the
/// timeout's empty 408, the body limit's 413, a caught panic's 500) are rewritten, keeping
/// their status and headers (`Allow`, `Content-Range`, `WWW-Authenticate`).
pub async fn uniform(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let upload = super::datasets::is_upload(request.method(), request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let shaped = if api { content_type.starts_with("application/json") } else { content_type.starts_with("text/html") };
    if shaped {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // These bodies are short texts (or empty); anything longer is not read.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let settings = &state.settings;
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE if upload => {
            Error::TooLarge { limit: settings.max_upload_bytes, flag: "--max-upload-bytes" }
        }
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge { limit: settings.max_body_bytes, flag: "--max-body-bytes" },
        StatusCode::REQUEST_TIMEOUT => Error::Timeout(format!(
            "no answer within this server's --request-timeout-secs ({} s)",
            settings.request_timeout.as_secs()
        )),
        s if s.is_server_error() => Error::Internal(if text.is_empty() { s.to_string() } else { text }),
        _ => {
            let public = Public { status, message: describe(status, text), fields: Vec::new() };
            return reshape(parts, public, api);
        }
    };
    let public = error.public();
    parts.status = public.status;
    reshape(parts, public, api)
}

/// What a 4xx says: the `error` of a JSON answer (a page shows it), the text of another, or,
/// without either, what its status means here.
fn describe(status: StatusCode, text: String) -> String {
    if let Ok(serde_json::Value::Object(answer)) = serde_json::from_str::<serde_json::Value>(&text) {
        if let Some(serde_json::Value::String(error)) = answer.get("error") {
            return error.clone();
        }
    }
    match (status, text.is_empty()) {
        (StatusCode::NOT_FOUND, true) => "no such page or API route".to_string(),
        (StatusCode::METHOD_NOT_ALLOWED, true) => {
            "this route does not take that method (the `Allow` header lists those it takes)".to_string()
        }
        (_, true) => status.canonical_reason().unwrap_or("error").to_string(),
        (_, false) => text,
    }
}

/// `public` as the body of a response with the original's status line and headers.
fn reshape(mut parts: axum::http::response::Parts, public: Public, api: bool) -> Response {
    let fresh = if api { json(public) } else { super::pages::error_page(public) };
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &fresh_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    parts.status = fresh_parts.status;
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_answer_an_id_and_never_their_details() {
        let public = Error::Internal("/home/me/goodhart-data: No such file or directory (os error 2)".into()).public();
        assert_eq!(public.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!public.message.contains("/home") && !public.message.contains("os error"), "{}", public.message);
        let id = public.message.split_whitespace().nth(2).unwrap().trim_end_matches(':');
        assert_eq!(id.len(), 8, "{}", public.message);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{}", public.message);
    }

    #[test]
    fn an_oversized_body_names_the_limit_and_its_flag() {
        let public = Error::TooLarge { limit: 4096, flag: "--max-body-bytes" }.public();
        assert_eq!(public.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(public.message.contains("4096 bytes (--max-body-bytes)"), "{}", public.message);
        assert_eq!(public.fields[0].field, "(body)");
    }
}
