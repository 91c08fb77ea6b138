//! The admin HTTP API (axum): flows and their nodes, message injection, the broker's
//! figures, health and readiness, `/metrics`, the live tap (server-sent events), the
//! OpenAPI description and the status page.
//!
//! Each resource module has its own `fn router() -> Router<AppState>`; this module
//! merges them, adds the bearer-token check, the body limit and the request timeout,
//! and serves the result on a listener until its shutdown token fires.
//!
//! Invariants: the API only reads what the engine and the broker already count
//! (atomics, one short lock for the broker's snapshot) and never waits on a flow,
//! except an injection, which is bounded; a tap is a `try_send` on the flow's side.

pub mod config;
mod error;
mod flows;
mod health;
mod listener;
pub mod metrics;
mod openapi;
mod status;
pub mod tap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ApiConfig;
pub use error::ApiError;

use crate::broker::Broker;
use crate::engine::{Clock, NodeHandle};
use crate::flow::FlowSet;
use crate::store::Store;

/// Largest request body accepted (an injected message with its JSON envelope).
pub const BODY_LIMIT: usize = 1 << 20;

/// Longest a request other than the tap and a reload may take; an injection into a full `block`
/// edge gives up earlier ([`flows::INJECT_WAIT`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The shape of one loaded flow, as `graph` draws it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlowInfo {
    /// The flow's name.
    pub name: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Its nodes in file order.
    pub nodes: Vec<NodeInfo>,
}

/// One node of a [`FlowInfo`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its `type:`.
    pub kind: &'static str,
    /// Its output ports, `error` last.
    pub ports: Vec<String>,
    /// Where it reads from.
    pub inputs: Vec<WireInfo>,
}

/// One wire into a node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WireInfo {
    /// The producing node.
    pub node: String,
    /// Its port.
    pub port: String,
}

impl FlowInfo {
    /// The shapes of every flow of a loaded set.
    pub fn from_set(set: &FlowSet) -> Vec<FlowInfo> {
        set.flows
            .iter()
            .map(|flow| FlowInfo {
                name: flow.name.clone(),
                file: flow.file.path.clone(),
                nodes: flow
                    .nodes
                    .iter()
                    .map(|node| NodeInfo {
                        name: node.name.clone(),
                        kind: node.kind.type_name(),
                        ports: node
                            .ports
                            .iter()
                            .cloned()
                            .chain(std::iter::once("error".to_string()))
                            .collect(),
                        inputs: node
                            .inputs
                            .iter()
                            .map(|input| WireInfo {
                                node: input.node.clone(),
                                port: input.port.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// What runs: the flows' shapes and their running nodes. Replaced as a whole, so a
/// future hot reload swaps one `Arc` and requests in progress keep the old one.
pub struct Graph {
    /// The flows' shapes.
    pub flows: Vec<FlowInfo>,
    /// Their running nodes.
    pub nodes: Vec<NodeHandle>,
}

impl Graph {
    /// The running node `flow/node`.
    pub fn node(&self, flow: &str, node: &str) -> Option<&NodeHandle> {
        self.nodes
            .iter()
            .find(|h| &*h.id.flow == flow && &*h.id.node == node)
    }

    /// The flow named `name`.
    pub fn flow(&self, name: &str) -> Option<&FlowInfo> {
        self.flows.iter().find(|f| f.name == name)
    }
}

/// Everything the handlers read; shared by every request.
pub struct ApiContext {
    /// What runs now.
    graph: RwLock<Arc<Graph>>,
    /// The built-in broker, when it runs.
    pub broker: Option<Broker>,
    /// The process's store, for its commit latency.
    pub store: Option<Store>,
    /// Time for injected messages' timestamps.
    pub clock: Clock,
    /// Required as `Authorization: Bearer ...` on `/api/*` and `/metrics` when set.
    token: Option<String>,
    /// Flows started and listeners bound; false again once shutdown began.
    ready: AtomicBool,
    /// Why the process is not ready, for `/readyz`.
    not_ready_reason: RwLock<&'static str>,
    /// Refused requests, for the log's rate limit.
    refused: AtomicU64,
    refused_logged_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Fires at shutdown: ends every tap stream so the server can stop.
    pub shutdown: CancellationToken,
    /// Permits for broker taps ([`tap::MAX_BROKER_TAPS`]).
    broker_taps: Arc<tokio::sync::Semaphore>,
    /// Where `POST /api/reload` asks for a reload; unset where nothing can reload.
    reloads: std::sync::OnceLock<crate::engine::reload::Reloads>,
}

/// The router's state: one `Arc` per request.
#[derive(Clone)]
pub struct AppState(pub Arc<ApiContext>);

impl std::ops::Deref for AppState {
    type Target = ApiContext;
    fn deref(&self) -> &ApiContext {
        &self.0
    }
}

impl ApiContext {
    /// A context over `graph`; not ready until [`ApiContext::set_ready`].
    pub fn new(
        graph: Graph,
        broker: Option<Broker>,
        store: Option<Store>,
        clock: Clock,
        token: Option<String>,
    ) -> ApiContext {
        ApiContext {
            graph: RwLock::new(Arc::new(graph)),
            broker,
            store,
            clock,
            token,
            ready: AtomicBool::new(false),
            not_ready_reason: RwLock::new("starting"),
            refused: AtomicU64::new(0),
            refused_logged_at: std::sync::Mutex::new(None),
            shutdown: CancellationToken::new(),
            broker_taps: Arc::new(tokio::sync::Semaphore::new(tap::MAX_BROKER_TAPS)),
            reloads: std::sync::OnceLock::new(),
        }
    }

    /// What runs now.
    pub fn graph(&self) -> Arc<Graph> {
        self.graph.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces what runs (the hook for hot reload).
    pub fn set_graph(&self, graph: Graph) {
        *self.graph.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(graph);
    }

    /// Lets `POST /api/reload` ask `run` for reloads (set once; later calls are ignored).
    pub fn set_reloads(&self, reloads: crate::engine::reload::Reloads) {
        let _ = self.reloads.set(reloads);
    }

    /// Where reloads are asked for, if this process can reload.
    pub fn reloads(&self) -> Option<&crate::engine::reload::Reloads> {
        self.reloads.get()
    }

    /// Flips `/readyz`: `None` is ready, `Some(reason)` is not.
    pub fn set_ready(&self, not_ready: Option<&'static str>) {
        *self
            .not_ready_reason
            .write()
            .unwrap_or_else(|p| p.into_inner()) = not_ready.unwrap_or("");
        self.ready.store(not_ready.is_none(), Ordering::Release);
    }

    /// Whether `/readyz` answers 200, and why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(*self
                .not_ready_reason
                .read()
                .unwrap_or_else(|p| p.into_inner()))
        }
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Logs a refused request, at most once per 10 s with a count of the ones in
    /// between, so someone guessing tokens cannot flood the log.
    fn log_refused(&self, path: &str, peer: Option<SocketAddr>, why: &str) {
        let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .refused_logged_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            return;
        }
        *last = Some(now);
        drop(last);
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        tracing::warn!(%peer, path, refused_total = count, "api request refused: {why}");
    }
}

/// The whole API: every resource's router, the token check on what needs it, the body
/// limit, and the timeout on everything but the tap's endless stream.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .merge(flows::router())
        .merge(health::broker_router())
        .merge(metrics::router())
        .merge(openapi::router())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .merge(tap::router())
        // A reload drains the flows it replaces: it has its own, longer bound.
        .merge(flows::reload_router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    // Health, readiness and the status page's files answer without a token: probes
    // carry none, and the page asks for the token before it calls the API.
    let open = Router::new()
        .merge(health::router())
        .merge(status::router());
    Router::new()
        .merge(protected)
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {}; see /api/openapi.json for the list",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; see /api/openapi.json",
            uri.path()
        ),
    )
}

/// Refuses a request without the right `Authorization: Bearer TOKEN` (when a token is
/// configured) with 401 and a log line.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let why = match given {
        Some(token) if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) => {
            return next.run(request).await;
        }
        Some(_) => "wrong bearer token",
        None => "no bearer token",
    };
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<listener::Peer>>()
        .map(|c| c.0.0);
    state.log_refused(request.uri().path(), peer, why);
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("{why}: send `Authorization: Bearer TOKEN` with the token from `api.token_file` or `api.token`"),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"headwater\""),
    );
    response
}

/// Compares without an early exit, so the time taken says nothing about how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds the API's address (port 0 picks a free one).
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the API on `listener` until `state.shutdown` fires; open tap streams end
/// then too, so this returns promptly.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    if let Ok(address) = listener.local_addr() {
        // The address last: tests and scripts read the port from the line's end.
        tracing::info!(token = state.requires_token(), %address, "api listening");
    }
    let app = router(state).into_make_service_with_connect_info::<listener::Peer>();
    let listener = listener::BoundedListener::new(listener, listener::MAX_CONNECTIONS);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests;

/// A running API server ([`start`]).
pub struct RunningApi {
    /// Its state, shared with the handlers.
    pub state: AppState,
    /// The bound address (port 0 resolved).
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Why the API did not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// `api:` is wrong (`check` reports it with its position; this is the same message).
    #[error("api settings: {0}")]
    Settings(String),
    /// The address could not be bound.
    #[error(
        "cannot listen on {address} for the admin API: {source}; free the port or set `api.listen`"
    )]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The API's socket and token, ready to serve ([`bind_configured`], then [`start`]).
pub struct BoundApi {
    listener: TcpListener,
    token: Option<String>,
}

/// Checks `config`, reads the token and binds the address, before anything else starts,
/// so a bad setting or a busy port stops `run` before flows run. `None` when the API is
/// off. With `explicit` false (no `api:` section and no flag), a busy default port is a
/// warning, not an error, so two processes on one machine still run.
pub async fn bind_configured(
    config: &ApiConfig,
    explicit: bool,
) -> Result<Option<BoundApi>, ApiStartError> {
    if !config.enabled {
        return Ok(None);
    }
    if let Some(issue) = config.validate().into_iter().next() {
        return Err(ApiStartError::Settings(format!(
            "`{}`: {}",
            issue.key, issue.message
        )));
    }
    let token = config
        .token()
        .map_err(|issue| ApiStartError::Settings(issue.message))?;
    let address = config.address().map_err(ApiStartError::Settings)?;
    match bind(address).await {
        Ok(listener) => Ok(Some(BoundApi { listener, token })),
        Err(source) if !explicit => {
            tracing::warn!(%address, "admin API not started: cannot listen on the default address ({source}); set `api.listen` to choose another");
            Ok(None)
        }
        Err(source) => Err(ApiStartError::Bind { address, source }),
    }
}

/// Serves the API on `bound` over what runs, ready at once: the caller starts it once
/// the flows run and the broker's listeners are bound.
pub fn start(
    bound: BoundApi,
    graph: Graph,
    broker: Option<Broker>,
    store: Option<Store>,
    clock: Clock,
) -> RunningApi {
    let BoundApi { listener, token } = bound;
    let address = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let state = AppState(Arc::new(ApiContext::new(
        graph, broker, store, clock, token,
    )));
    state.set_ready(None);
    let task = tokio::spawn(serve(listener, state.clone()));
    RunningApi {
        state,
        address,
        task,
    }
}

impl RunningApi {
    /// `/readyz` answers 503 from now on (shutdown began); the API keeps serving.
    pub fn not_ready(&self, reason: &'static str) {
        self.state.set_ready(Some(reason));
    }

    /// Ends tap streams and stops serving, within a few seconds.
    pub async fn stop(self) {
        self.state.set_ready(Some("stopped"));
        self.state.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => tracing::info!("api stopped"),
            Ok(Ok(Err(e))) => tracing::warn!("api server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("api server task failed: {e}"),
            Err(_) => tracing::warn!("api connections did not close within 5 s"),
        }
    }
}
