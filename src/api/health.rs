//! `/healthz` (the process answers), `/readyz` (flows started and listeners bound) and
//! `/api/broker` (the built-in broker's figures).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub(super) fn broker_router() -> Router<AppState> {
    Router::new().route("/api/broker", get(broker))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.readiness() {
        Ok(()) => Ok(Json(serde_json::json!({ "status": "ready" }))),
        Err(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )),
    }
}

async fn broker(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(broker) = &state.broker else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the built-in broker is not running (started with --no-broker or `broker: { enabled: false }`)",
        ));
    };
    Ok(Json(
        serde_json::to_value(broker.snapshot()).unwrap_or_default(),
    ))
}
