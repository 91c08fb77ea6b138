//! `/api/tap`: the live tap. Streams, as server-sent events, the messages leaving a
//! node's outputs (`flow` and `node`, optionally filtered by `topic`), or the messages
//! published on the built-in broker that match `topic` (a QoS 0 in-process
//! subscription).
//!
//! A tap can never slow a flow: the flow side only `try_send`s into a small channel
//! per tap (engine/tap.rs); this side paces itself to `rate` messages per second, and
//! whatever does not fit meanwhile is dropped for this tap only, counted, and reported
//! in the stream as a `dropped` event.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{ApiError, AppState};
use crate::engine::tap::{TAP_DEPTH, Tap, TapEvent};

/// The default pace of a tap, messages per second.
pub const DEFAULT_RATE: u32 = 50;
/// Most broker taps open at once, process-wide (each is an in-process session).
pub const MAX_BROKER_TAPS: usize = 16;

/// The fastest pace a client may ask for.
pub const MAX_RATE: u32 = 10_000;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/tap", get(tap))
}

/// How payloads are shown.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// JSON when the payload parses as JSON, else text when it is UTF-8, else base64.
    #[default]
    Auto,
    /// Parsed JSON (base64 when it is not JSON).
    Json,
    /// UTF-8 text (base64 when it is not UTF-8).
    Text,
    /// Always base64.
    Base64,
}

/// The query of `/api/tap`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TapQuery {
    flow: Option<String>,
    node: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    format: PayloadFormat,
    rate: Option<u32>,
}

/// One message as a tap shows it (the `data` of a `message` event).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TapMessage {
    /// The port it left on (`out`, `error`, ...); `broker` for broker taps.
    pub port: String,
    /// Its topic.
    pub topic: String,
    /// `json`, `text` or `base64`: how `payload` is written.
    pub encoding: String,
    /// The payload.
    pub payload: serde_json::Value,
    /// Its headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Its timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Its id (0 for broker taps).
    pub id: u64,
}

/// Renders `payload` in `format`; returns (encoding, value).
pub fn show_payload(payload: &[u8], format: PayloadFormat) -> (&'static str, serde_json::Value) {
    let base64 = || {
        (
            "base64",
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
        )
    };
    let json = || serde_json::from_slice::<serde_json::Value>(payload).ok();
    let text = || std::str::from_utf8(payload).ok();
    match format {
        PayloadFormat::Base64 => base64(),
        PayloadFormat::Json => json().map(|v| ("json", v)).unwrap_or_else(base64),
        PayloadFormat::Text => text()
            .map(|t| ("text", serde_json::Value::String(t.into())))
            .unwrap_or_else(base64),
        PayloadFormat::Auto => json()
            .map(|v| ("json", v))
            .or_else(|| text().map(|t| ("text", serde_json::Value::String(t.into()))))
            .unwrap_or_else(base64),
    }
}

fn message_of(event: &TapEvent, format: PayloadFormat) -> TapMessage {
    let (encoding, payload) = show_payload(&event.payload, format);
    TapMessage {
        port: event.port.to_string(),
        topic: event.topic.to_string(),
        encoding: encoding.into(),
        payload,
        headers: (*event.headers).clone(),
        timestamp_ms: event.timestamp_ms,
        id: event.id,
    }
}

/// Where a tap's copies come from.
enum Source {
    /// A node's outputs.
    Node(Tap),
    /// A relay task reading an in-process broker subscription; stops when the guard
    /// drops with the stream.
    Broker {
        events: mpsc::Receiver<TapEvent>,
        _stop: DropGuard,
    },
}

impl Source {
    async fn recv(&mut self) -> Option<TapEvent> {
        match self {
            Source::Node(tap) => tap.recv().await,
            Source::Broker { events, .. } => events.recv().await,
        }
    }
}

/// One client's stream: its source, pace and drop count.
struct TapStream {
    source: Source,
    dropped: Arc<AtomicU64>,
    reported: u64,
    format: PayloadFormat,
    /// Token bucket: up to `rate` messages at once, refilled at `rate` per second.
    tokens: f64,
    rate: f64,
    refilled: Instant,
    shutdown: CancellationToken,
    /// The first event (`ready`) is still to be sent.
    hello: Option<Event>,
    seq: u64,
}

impl TapStream {
    /// Waits until the bucket holds a token, then takes it. While it waits the flow's
    /// copies pile up in the small channel and then are dropped there, counted.
    async fn pace(&mut self) {
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
            self.refilled = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }

    fn dropped_event(&mut self) -> Option<Event> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == self.reported {
            return None;
        }
        self.reported = dropped;
        Some(
            Event::default()
                .event("dropped")
                .data(serde_json::json!({ "dropped": dropped }).to_string()),
        )
    }

    /// The next event, or `None` when the stream ends (shutdown, source gone).
    async fn next(&mut self) -> Option<Event> {
        if let Some(hello) = self.hello.take() {
            return Some(hello);
        }
        if let Some(event) = self.dropped_event() {
            return Some(event);
        }
        self.pace().await;
        let mut report = tokio::time::interval(Duration::from_secs(1));
        report.tick().await;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                event = self.source.recv() => {
                    let event = event?;
                    self.seq += 1;
                    let message = message_of(&event, self.format);
                    let data = serde_json::to_string(&message).unwrap_or_default();
                    return Some(Event::default().event("message").id(self.seq.to_string()).data(data));
                }
                _ = report.tick() => {
                    // Nothing arrived for a second: say what was dropped so far. The
                    // token taken by `pace` is kept for the next message.
                    if let Some(event) = self.dropped_event() {
                        self.tokens += 1.0;
                        return Some(event);
                    }
                }
            }
        }
    }
}

async fn tap(
    State(state): State<AppState>,
    query: Result<Query<TapQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
    let rate = query.rate.unwrap_or(DEFAULT_RATE);
    if rate == 0 || rate > MAX_RATE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`rate` is messages per second, from 1 to {MAX_RATE}"),
        ));
    }
    if let Some(filter) = &query.topic {
        crate::broker::topic::parse_filter(&bytestring::ByteString::from(filter.as_str()))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`topic` is not a valid MQTT topic filter: {e}"),
                )
            })?;
    }
    let (source, dropped, what) = match (&query.flow, &query.node, &query.topic) {
        (Some(flow), Some(node), topic) => {
            let graph = state.graph();
            if graph.flow(flow).is_none() {
                return Err(ApiError::no_flow(flow));
            }
            let handle = graph
                .node(flow, node)
                .ok_or_else(|| ApiError::no_node(flow, node))?;
            let tap = handle
                .outputs
                .tap()
                .attach(topic.clone())
                .map_err(|e| ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
            let dropped = tap.dropped_counter();
            tracing::info!(node = %handle.id, flow = %flow, "tap attached");
            (
                Source::Node(tap),
                dropped,
                serde_json::json!({ "flow": flow, "node": node, "topic": topic }),
            )
        }
        (None, None, Some(topic)) => {
            let (source, dropped) = broker_source(&state, topic).await?;
            (source, dropped, serde_json::json!({ "topic": topic }))
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give `flow` and `node` (a node's outputs, optionally with `topic`), or `topic` alone (the broker)",
            ));
        }
    };
    let mut hello = what;
    hello["rate"] = rate.into();
    let stream = TapStream {
        source,
        dropped,
        reported: 0,
        format: query.format,
        tokens: rate as f64,
        rate: rate as f64,
        refilled: Instant::now(),
        shutdown: state.shutdown.clone(),
        hello: Some(Event::default().event("ready").data(hello.to_string())),
        seq: 0,
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<Event, Infallible>(event), stream))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Subscribes to `topic` on the built-in broker with QoS 0 (a clean, non-persistent
/// in-process session) and relays what arrives into a bounded channel.
async fn broker_source(
    state: &AppState,
    topic: &str,
) -> Result<(Source, Arc<AtomicU64>), ApiError> {
    use crate::broker::codec::{Packet, Qos, SubscriptionOptions};
    // Each broker tap is a broker session; bound them process-wide.
    let slot = state.broker_taps.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_BROKER_TAPS} broker taps are open already; close one and retry"),
        )
    })?;
    let Some(broker) = &state.broker else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the built-in broker is not running, so there is nothing to tap by topic; give `flow` and `node`",
        ));
    };
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let client_id = format!(
        "headwater-tap-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (mut client, _) = broker
        .connect_local(crate::broker::LocalConnect {
            client_id,
            clean_start: true,
            session_expiry: 0,
            receive_max: 16,
            will: None,
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let options = SubscriptionOptions {
        qos: Qos::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    let codes = client
        .subscribe(vec![(topic.to_string(), options)])
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if codes.first().is_some_and(|c| *c >= 0x80) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the broker refused the subscription to `{topic}`"),
        ));
    }
    let (sender, events) = mpsc::channel(TAP_DEPTH);
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let relay_dropped = dropped.clone();
    let relay_stop = stop.clone();
    let port: Arc<str> = "broker".into();
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let packet = tokio::select! {
                () = relay_stop.cancelled() => break,
                packet = client.recv() => packet,
            };
            match packet {
                Some(Packet::Publish(publish)) => {
                    let event = TapEvent {
                        port: port.clone(),
                        topic: Arc::from(&*publish.topic),
                        payload: publish.payload.clone(),
                        headers: Arc::default(),
                        timestamp_ms: crate::broker::now_ms() as i64,
                        id: 0,
                    };
                    match sender.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            relay_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        client.disconnect().await;
    });
    Ok((
        Source::Broker {
            events,
            _stop: stop.drop_guard(),
        },
        dropped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_shown_as_asked() {
        assert_eq!(show_payload(b"{\"a\":1}", PayloadFormat::Auto).0, "json");
        assert_eq!(show_payload(b"hello", PayloadFormat::Auto).0, "text");
        assert_eq!(show_payload(&[0xff, 0], PayloadFormat::Auto).0, "base64");
        assert_eq!(
            show_payload(b"{\"a\":1}", PayloadFormat::Text),
            ("text", serde_json::Value::String("{\"a\":1}".into()))
        );
        assert_eq!(
            show_payload(b"hi", PayloadFormat::Base64),
            ("base64", serde_json::Value::String("aGk=".into()))
        );
        assert_eq!(show_payload(b"nope", PayloadFormat::Json).0, "base64");
    }
}
