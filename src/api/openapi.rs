//! `/api/openapi.json`: the API's OpenAPI 3.1 description, written by hand next to
//! this file and compiled into the binary; docs/api/openapi.json is a copy that a test
//! keeps identical.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

/// The description as served.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(openapi))
}

async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
