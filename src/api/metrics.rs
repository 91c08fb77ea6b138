//! `/metrics`: every node, edge, broker, store and process figure in the Prometheus
//! text format (version 0.0.4), written here without a client library (see
//! docs/decisions/015): the figures already live in atomics, so a scrape only reads and
//! formats them.
//!
//! Adding a node counter is one line in [`NODE_COUNTERS`]; docs/metrics.md lists every
//! series and a test checks the list against what is served.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::engine::{NodeState, NodeStats};
use crate::store::histogram::{BUCKETS, HistogramSnapshot};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The media type Prometheus expects for the text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render(&state))
}

/// A per-node counter: name, help, and how to read it.
type NodeCounter = (&'static str, &'static str, fn(&NodeStats) -> u64);

/// Per-node counters, labelled `flow`, `node`, `kind`. New `NodeStats` fields (sink
/// retries, buffer sizes) go here, one line each.
const NODE_COUNTERS: &[NodeCounter] = &[
    (
        "headwater_node_received_messages_total",
        "Messages the node took from its inputs.",
        |s| s.received.load(Ordering::Relaxed),
    ),
    (
        "headwater_node_emitted_messages_total",
        "Messages the node sent on its output ports (once per port).",
        |s| s.emitted.load(Ordering::Relaxed),
    ),
    (
        "headwater_node_failed_messages_total",
        "Messages that failed in the node (error port or failed verdict).",
        |s| s.failed.load(Ordering::Relaxed),
    ),
    (
        "headwater_node_restarts_total",
        "Times the node was restarted after a crash.",
        |s| s.restarts.load(Ordering::Relaxed),
    ),
];

const NODE_STATES: [(NodeState, &str); 4] = [
    (NodeState::Running, "running"),
    (NodeState::Restarting, "restarting"),
    (NodeState::Stopped, "stopped"),
    (NodeState::Failed, "failed"),
];

/// Splits an edge label `flow/producer.port -> consumer` into its parts.
pub fn edge_parts(label: &str) -> Option<(&str, &str, &str, &str)> {
    let (from, to) = label.split_once(" -> ")?;
    let (flow, producer) = from.split_once('/')?;
    let (node, port) = producer.rsplit_once('.')?;
    Some((flow, node, port, to))
}

/// The text format, family by family.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in BUCKETS.iter().zip(&h.cumulative) {
            let le = format_value(*bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, *count as f64);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn format_value(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Everything `/metrics` serves.
pub fn render(state: &super::ApiContext) -> String {
    let mut x = Exposition {
        out: String::with_capacity(16 * 1024),
    };
    let graph = state.graph();

    x.family(
        "headwater_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    x.sample(
        "headwater_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );

    for (name, help, read) in NODE_COUNTERS {
        x.family(name, "counter", help);
        for node in &graph.nodes {
            let labels = [
                ("flow", &*node.id.flow),
                ("node", &*node.id.node),
                ("kind", node.kind),
            ];
            x.sample(name, &labels, read(&node.stats) as f64);
        }
    }
    x.family(
        "headwater_node_state",
        "gauge",
        "1 for the node's current life-cycle state, 0 for the others.",
    );
    for node in &graph.nodes {
        let current = node.stats.state();
        for (state, name) in NODE_STATES {
            let labels = [
                ("flow", &*node.id.flow),
                ("node", &*node.id.node),
                ("state", name),
            ];
            let value = if current == state { 1.0 } else { 0.0 };
            x.sample("headwater_node_state", &labels, value);
        }
    }
    x.family(
        "headwater_node_processing_seconds",
        "histogram",
        "Processing time per message of transform nodes (measured per batch).",
    );
    for node in &graph.nodes {
        let labels = [("flow", &*node.id.flow), ("node", &*node.id.node)];
        x.histogram(
            "headwater_node_processing_seconds",
            &labels,
            &node.stats.processing.snapshot(),
        );
    }

    type EdgeRead = fn(&crate::engine::Edge) -> u64;
    let edge_families: [(&str, &str, &str, EdgeRead); 4] = [
        (
            "headwater_edge_sent_messages_total",
            "counter",
            "Messages accepted into the edge's queue.",
            |e| e.stats.sent.load(Ordering::Relaxed),
        ),
        (
            "headwater_edge_dropped_messages_total",
            "counter",
            "Messages the edge's overflow policy discarded.",
            |e| e.stats.dropped.load(Ordering::Relaxed),
        ),
        (
            "headwater_edge_queue_messages",
            "gauge",
            "Messages waiting in the edge's queue.",
            |e| e.depth() as u64,
        ),
        (
            "headwater_edge_capacity_messages",
            "gauge",
            "The edge's queue capacity.",
            |e| e.capacity() as u64,
        ),
    ];
    for (name, kind, help, read) in edge_families {
        x.family(name, kind, help);
        for node in &graph.nodes {
            for edge in &node.inputs {
                let Some((flow, from, port, to)) = edge_parts(&edge.label) else {
                    continue;
                };
                let labels = [("flow", flow), ("from", from), ("port", port), ("to", to)];
                x.sample(name, &labels, read(edge) as f64);
            }
        }
    }

    if let Some(broker) = &state.broker {
        let b = broker.snapshot();
        let figures: [(&str, &str, &str, f64); 12] = [
            (
                "headwater_broker_connections",
                "gauge",
                "Client connections open now (network and in-process).",
                b.connected as f64,
            ),
            (
                "headwater_broker_parked_connections",
                "gauge",
                "Idle plain-TCP connections parked without a task (counted in connections).",
                b.parked as f64,
            ),
            (
                "headwater_broker_connections_total",
                "counter",
                "Client connections accepted since start.",
                b.connects_total as f64,
            ),
            (
                "headwater_broker_received_messages_total",
                "counter",
                "PUBLISH packets received.",
                b.messages_received as f64,
            ),
            (
                "headwater_broker_sent_messages_total",
                "counter",
                "PUBLISH packets sent.",
                b.messages_sent as f64,
            ),
            (
                "headwater_broker_received_bytes_total",
                "counter",
                "Bytes received from clients.",
                b.bytes_received as f64,
            ),
            (
                "headwater_broker_sent_bytes_total",
                "counter",
                "Bytes sent to clients.",
                b.bytes_sent as f64,
            ),
            (
                "headwater_broker_sessions",
                "gauge",
                "Sessions, connected or not.",
                b.sessions as f64,
            ),
            (
                "headwater_broker_subscriptions",
                "gauge",
                "Subscriptions.",
                b.subscriptions as f64,
            ),
            (
                "headwater_broker_retained_messages",
                "gauge",
                "Retained messages.",
                b.retained as f64,
            ),
            (
                "headwater_broker_queued_messages",
                "gauge",
                "Messages queued for sessions, not yet sent.",
                b.queued as f64,
            ),
            (
                "headwater_broker_inflight_messages",
                "gauge",
                "QoS 1/2 messages sent and not yet acknowledged.",
                b.inflight as f64,
            ),
        ];
        for (name, kind, help, value) in figures {
            x.one(name, kind, help, value);
        }
        x.family(
            "headwater_broker_bridge_connected",
            "gauge",
            "1 while the bridge is connected to its remote broker.",
        );
        for bridge in &b.bridges {
            let value = if bridge.connected { 1.0 } else { 0.0 };
            x.sample(
                "headwater_broker_bridge_connected",
                &[("bridge", &bridge.name)],
                value,
            );
        }
    }

    if let Some(store) = &state.store {
        let stats = store.stats();
        x.family(
            "headwater_store_commit_duration_seconds",
            "histogram",
            "Time to apply and commit one store transaction (fsync included when durable).",
        );
        x.histogram(
            "headwater_store_commit_duration_seconds",
            &[],
            &store.commit_latency(),
        );
        x.one(
            "headwater_store_transactions_total",
            "counter",
            "Store write transactions committed (one per group commit).",
            stats.transactions as f64,
        );
        x.one(
            "headwater_store_fsyncs_total",
            "counter",
            "Store transactions committed with an fsync.",
            stats.fsyncs as f64,
        );
        x.one(
            "headwater_store_consumed_operations_total",
            "counter",
            "Store operations never written: a key created and deleted again before it was written.",
            stats.consumed as f64,
        );
        x.one(
            "headwater_store_operations_total",
            "counter",
            "Store operations (puts and deletes) committed.",
            stats.ops as f64,
        );
    }

    let process = process_figures();
    if let Some(rss) = process.resident_bytes {
        x.one(
            "headwater_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            rss as f64,
        );
    }
    if let Some(cpu) = process.cpu_seconds {
        x.one(
            "headwater_process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process.",
            cpu,
        );
    }
    if let Some(fds) = process.open_fds {
        x.one(
            "headwater_process_open_fds",
            "gauge",
            "Open file descriptors (sockets included).",
            fds as f64,
        );
    }
    x.out
}

/// The process's own figures from `/proc/self`; `None` where unreadable (not Linux).
#[derive(Debug, Default)]
struct ProcessFigures {
    resident_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    open_fds: Option<usize>,
}

fn process_figures() -> ProcessFigures {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // SAFETY: as above.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .filter(|_| page > 0)
        .map(|pages| pages * page as u64);
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .filter(|_| ticks > 0)
        .map(|t| t as f64 / ticks as f64);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count());
    ProcessFigures {
        resident_bytes,
        cpu_seconds,
        open_fds,
    }
}

/// utime + stime from `/proc/self/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_labels_split_into_parts() {
        assert_eq!(
            edge_parts("energy/meter.gauge -> watts"),
            Some(("energy", "meter", "gauge", "watts"))
        );
        assert_eq!(edge_parts("nonsense"), None);
    }

    #[test]
    fn cpu_ticks_skip_a_command_with_spaces() {
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 100 23 0 0 20";
        assert_eq!(cpu_ticks(stat), Some(123));
    }

    #[test]
    fn labels_are_escaped() {
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.5), "0.5");
    }
}
