//! The HTTP layer's one error type: every handler returns `Result<_, Error>`, and every error
//! answers JSON `{"error": "...", "fields": [{"field", "message"}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use trainer::config::FieldError;

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
    /// An upload over `--max-upload-bytes` (an oversized config is `Invalid`, like any bad config).
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("this route needs `Authorization: Bearer <token>`")]
    Unauthorized,
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

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(message) = &self {
            tracing::error!(%message, "request failed");
        }
        let fields = match &self {
            Self::Invalid(fields) => fields.clone(),
            _ => Vec::new(),
        };
        let mut response = (status, Json(json!({ "error": self.to_string(), "fields": fields }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
