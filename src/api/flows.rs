//! `/api/flows`: the loaded flows, their nodes' state and counters, message injection,
//! and `/api/reload` (hot reload: what changed, or the located errors).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::engine::{Injected, Msg, NodeHandle, NodeState};

/// Longest an injection waits for room in a full `block` edge before answering 503.
pub const INJECT_WAIT: Duration = Duration::from_secs(5);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/flows", get(list_flows))
        .route("/api/flows/{flow}/nodes", get(list_nodes))
        .route("/api/flows/{flow}/nodes/{node}/inject", post(inject))
}

/// `POST /api/reload`, outside the common request timeout: a reload drains the flows it
/// replaces, which may take up to the drain deadline.
pub(super) fn reload_router() -> Router<AppState> {
    Router::new().route("/api/reload", post(reload))
}

/// Longest `POST /api/reload` waits for the outcome (loading, draining, starting);
/// past it the answer is 504 and the outcome is in the log.
pub const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// A node state as the API names it.
pub(super) fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Running => "running",
        NodeState::Restarting => "restarting",
        NodeState::Stopped => "stopped",
        NodeState::Failed => "failed",
    }
}

/// A flow's state from its nodes': the worst of them.
fn flow_state<'a>(nodes: impl Iterator<Item = &'a NodeHandle>) -> &'static str {
    let mut all_stopped = true;
    let mut worst = "running";
    for node in nodes {
        match node.stats.state() {
            NodeState::Failed => return "failed",
            NodeState::Restarting => worst = "restarting",
            NodeState::Running => all_stopped = false,
            NodeState::Stopped => {}
        }
    }
    if worst == "running" && all_stopped {
        "stopped"
    } else {
        worst
    }
}

#[derive(Serialize)]
struct FlowView<'a> {
    name: &'a str,
    file: String,
    state: &'static str,
    nodes: &'a [super::NodeInfo],
}

async fn list_flows(State(state): State<AppState>) -> Json<serde_json::Value> {
    let graph = state.graph();
    let flows: Vec<FlowView<'_>> = graph
        .flows
        .iter()
        .map(|flow| FlowView {
            name: &flow.name,
            file: flow.file.display().to_string(),
            state: flow_state(graph.nodes.iter().filter(|n| *n.id.flow == *flow.name)),
            nodes: &flow.nodes,
        })
        .collect();
    Json(serde_json::json!({ "flows": flows }))
}

/// One input edge of a node.
#[derive(Serialize)]
struct InputView {
    /// `node.port` it reads.
    from: String,
    depth: usize,
    capacity: usize,
    overflow: crate::engine::Overflow,
    sent: u64,
    dropped: u64,
}

/// One node with its counters.
#[derive(Serialize)]
struct NodeView {
    name: String,
    kind: &'static str,
    state: &'static str,
    last_error: Option<String>,
    restarts: u64,
    received: u64,
    emitted: u64,
    failed: u64,
    /// Dropped by the overflow policies of its inputs.
    dropped: u64,
    inputs: Vec<InputView>,
    taps: usize,
}

fn node_view(node: &NodeHandle) -> NodeView {
    let stats = &node.stats;
    let inputs: Vec<InputView> = node
        .inputs
        .iter()
        .map(|edge| InputView {
            from: super::metrics::edge_parts(&edge.label)
                .map_or_else(|| edge.label.to_string(), |p| format!("{}.{}", p.1, p.2)),
            depth: edge.depth(),
            capacity: edge.capacity(),
            overflow: edge.overflow(),
            sent: edge.stats.sent.load(Ordering::Relaxed),
            dropped: edge.stats.dropped.load(Ordering::Relaxed),
        })
        .collect();
    NodeView {
        name: node.id.node.to_string(),
        kind: node.kind,
        state: state_name(stats.state()),
        last_error: stats.last_error(),
        restarts: stats.restarts.load(Ordering::Relaxed),
        received: stats.received.load(Ordering::Relaxed),
        emitted: stats.emitted.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        dropped: inputs.iter().map(|i| i.dropped).sum(),
        inputs,
        taps: node.outputs.tap().watchers(),
    }
}

async fn list_nodes(
    State(state): State<AppState>,
    Path(flow): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let graph = state.graph();
    if graph.flow(&flow).is_none() {
        return Err(ApiError::no_flow(&flow));
    }
    let nodes: Vec<NodeView> = graph
        .nodes
        .iter()
        .filter(|n| *n.id.flow == *flow)
        .map(node_view)
        .collect();
    Ok(Json(serde_json::json!({ "flow": flow, "nodes": nodes })))
}

/// The body of an injection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectBody {
    /// The message's topic.
    topic: String,
    /// A JSON value: a string is sent as its text, anything else as JSON.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    /// Binary payloads, base64-encoded (instead of `payload`).
    #[serde(default)]
    payload_base64: Option<String>,
    /// Message headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

async fn inject(
    State(state): State<AppState>,
    Path((flow, node)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    let body: InjectBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be JSON like {{\"topic\": \"t\", \"payload\": {{...}}, \"headers\": {{}}}}: {e}"
            ),
        )
    })?;
    let payload: Bytes = match (body.payload, body.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give `payload` or `payload_base64`, not both",
            ));
        }
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`payload_base64` is not base64: {e}"),
                )
            })?
            .into(),
        (Some(serde_json::Value::String(text)), None) => text.into(),
        (Some(value), None) => serde_json::to_vec(&value)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?
            .into(),
        (None, None) => Bytes::new(),
    };
    let graph = state.graph();
    if graph.flow(&flow).is_none() {
        return Err(ApiError::no_flow(&flow));
    }
    let handle = graph
        .node(&flow, &node)
        .ok_or_else(|| ApiError::no_node(&flow, &node))?;
    let mut msg = Msg::new(body.topic, payload, state.clock.wall_ms());
    if !body.headers.is_empty() {
        msg.headers_mut().extend(body.headers);
    }
    let id = msg.id;
    let into = match tokio::time::timeout(INJECT_WAIT, handle.inject(msg)).await {
        Ok(Ok(Injected::Input)) => "input",
        Ok(Ok(Injected::Output)) => "output",
        Ok(Err(e)) => return Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the input of {flow}/{node} stayed full for {} s (backpressure); retry later",
                    INJECT_WAIT.as_secs()
                ),
            ));
        }
    };
    tracing::debug!(node = %handle.id, flow = %flow, id, "message injected");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "flow": flow, "node": node, "id": id, "into": into })),
    ))
}

/// Reloads the flow files: 200 with what was added, removed, changed and left alone, or
/// 422 with every located error (nothing changed then).
async fn reload(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    use crate::engine::reload::{ReloadError, ReloadOutcome, Trigger};
    let Some(reloads) = state.reloads() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this process cannot reload its flows; restart the process to load changed flow files",
        ));
    };
    let outcome = match tokio::time::timeout(RELOAD_WAIT, reloads.reload(Trigger::Api)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(ReloadError::Busy)) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ReloadError::Busy.to_string(),
            ));
        }
        Ok(Err(ReloadError::Closed)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ReloadError::Closed.to_string(),
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the reload did not finish within {} s (flows still draining); its result will be in the log",
                    RELOAD_WAIT.as_secs()
                ),
            ));
        }
    };
    let status = match &outcome {
        ReloadOutcome::Applied { .. } => StatusCode::OK,
        ReloadOutcome::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let mut body = serde_json::to_value(&outcome)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let ReloadOutcome::Invalid { errors } = &outcome {
        // The API's error shape (`error`), with the located list beside it.
        let first = errors
            .first()
            .map_or_else(String::new, |e| format!(": {e}"));
        body["error"] = format!(
            "the flow files have {} error{}, nothing was changed; fix them and reload again{first}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        )
        .into();
    }
    Ok((status, Json(body)))
}
