//! The API's one error shape: a status and `{ "error": "..." }` with a message a person
//! can act on. Extractor rejections (bad JSON, too large, bad query) are mapped onto it
//! too, so no endpoint ever answers with plain text.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do, lowercase, no trailing period.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 404 for a flow that is not loaded.
    pub fn no_flow(flow: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no flow named `{flow}` is loaded; GET /api/flows lists them"),
        )
    }

    /// 404 for a node that is not in its flow.
    pub fn no_node(flow: &str, node: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "flow `{flow}` has no node named `{node}`; GET /api/flows/{flow}/nodes lists them"
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is larger than {} bytes; send a smaller message",
                super::BODY_LIMIT
            )
        } else {
            format!("cannot read the request body: {}", rejection.body_text())
        };
        ApiError::new(status, message)
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "bad query string: {}; see /api/openapi.json for the parameters",
                rejection.body_text().to_lowercase()
            ),
        )
    }
}
