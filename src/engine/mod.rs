//! The running graph: messages, bounded edges, acknowledgements, supervised node tasks
//! and shutdown. It knows nothing of YAML: it runs a [`GraphPlan`] built by `flow/`.

pub mod buffer;
pub mod clock;
pub mod edge;
pub mod fields;
pub mod harness;
pub mod msg;
pub mod node;
mod scan;
pub mod state;
mod supervisor;
pub mod tap;
pub mod template;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::broker::Broker;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use buffer::{BufferOptions, WhenFull};
pub use clock::Clock;
pub use edge::{Edge, Inbox, Overflow};
pub use msg::{Msg, Outcome};
pub use node::{
    Emit, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId, NodeState, NodeStats, Outputs,
    PortId, Transform, run_transform, run_transform_blocking,
};
pub use state::{NodeKv, StateStore};

/// Default capacity of an edge.
pub const DEFAULT_CAPACITY: usize = 1024;

/// One input of a node: which node and port it reads, and how the edge behaves.
#[derive(Clone, Debug)]
pub struct InputPlan {
    /// The producing node's name (same flow).
    pub node: String,
    /// The producing node's port.
    pub port: String,
    /// Queue capacity of the edge.
    pub capacity: usize,
    /// What the edge does when full.
    pub overflow: Overflow,
}

/// A node ready to run.
pub struct NodePlan {
    /// The node's name in its flow.
    pub name: String,
    /// Its `type:`.
    pub kind: &'static str,
    /// Starts runs of the node.
    pub factory: Arc<dyn NodeFactory>,
    /// Output port names (without `error`, which every node has).
    pub ports: Vec<String>,
    /// The node's inputs.
    pub inputs: Vec<InputPlan>,
    /// The key of its persistent state (`state_key:`, default `flow/node`).
    pub state_key: String,
    /// A disk buffer between its inputs and the node (`buffer:`), keyed by `state_key`.
    pub buffer: Option<BufferOptions>,
}

/// A flow ready to run.
pub struct FlowPlan {
    /// The flow's name.
    pub name: String,
    /// Its nodes.
    pub nodes: Vec<NodePlan>,
}

/// Everything the engine runs.
#[derive(Default)]
pub struct GraphPlan {
    /// The flows.
    pub flows: Vec<FlowPlan>,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Real or virtual time.
    pub clock: Clock,
    /// Where nodes keep files.
    pub data_dir: PathBuf,
    /// How long shutdown waits for queues to drain before aborting what is left.
    pub drain_deadline: Duration,
    /// The built-in broker, for `mqtt.in`/`mqtt.out` nodes without `url`; `None` when
    /// it is off.
    pub broker: Option<Broker>,
    /// Every node's persistent key/value state; in memory by default.
    pub state: StateStore,
    /// The simulated GPIO chips (`chip: sim:NAME`) of this engine's nodes.
    pub gpio_sim: crate::nodes::gpio::SimChips,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            clock: Clock::system(),
            data_dir: PathBuf::from("data"),
            drain_deadline: Duration::from_secs(10),
            broker: None,
            state: StateStore::memory(),
            gpio_sim: crate::nodes::gpio::SimChips::default(),
        }
    }
}

/// A running node as seen from outside: its kind, counters and inputs.
#[derive(Clone)]
pub struct NodeHandle {
    /// `flow/node`.
    pub id: NodeId,
    /// Its `type:`.
    pub kind: &'static str,
    /// Its counters and state.
    pub stats: Arc<NodeStats>,
    /// Its input edges.
    pub inputs: Vec<Arc<Edge>>,
    /// Its output ports: the live tap attaches here, and a source's injected messages
    /// leave from here.
    pub outputs: Outputs,
}

/// Where an injected message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Into the node's first input edge, as if its producer had sent it.
    Input,
    /// Out of the source's first port, as if the source had made it.
    Output,
}

/// Why a message could not be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The node's input is closed: its producer stopped, or the node did.
    #[error("node {0} no longer takes input (it or its producer stopped)")]
    Closed(String),
}

impl NodeHandle {
    /// Injects `msg` into the node: a node with inputs gets it on its first input edge
    /// (counted there like any message, subject to its overflow policy); a source sends
    /// it from its first output port, so it travels the flow as the source's own
    /// messages do. Waits while an edge applies backpressure: callers bound the wait.
    pub async fn inject(&self, msg: Msg) -> Result<Injected, InjectError> {
        match self.inputs.first() {
            Some(edge) => match edge.send(msg).await {
                Ok(()) => Ok(Injected::Input),
                Err(closed) => {
                    closed.0.done();
                    Err(InjectError::Closed(self.id.to_string()))
                }
            },
            None => {
                // A finished source has closed its outputs: say so rather than accept a
                // message that would fail at once.
                if matches!(self.stats.state(), NodeState::Stopped | NodeState::Failed) {
                    msg.done();
                    return Err(InjectError::Closed(self.id.to_string()));
                }
                self.outputs.emit(PortId::OUT, msg).await;
                Ok(Injected::Output)
            }
        }
    }
}

/// The running graph.
pub struct Engine {
    nodes: Vec<NodeHandle>,
    tracker: TaskTracker,
    /// Stops sources; everything downstream drains as its inputs close.
    stop_sources: CancellationToken,
    /// Aborts whatever is still running after the drain deadline.
    abort: CancellationToken,
    drain_deadline: Duration,
}

/// How a shutdown ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ShutdownReport {
    /// Every node finished and every queue drained.
    Drained,
    /// The deadline passed; the remaining nodes were aborted and their messages failed.
    Aborted,
}

impl Engine {
    /// Wires the edges and starts a supervised task per node.
    pub fn start(plan: GraphPlan, options: EngineOptions) -> Engine {
        let tracker = TaskTracker::new();
        let stop_sources = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut handles = Vec::new();

        for flow in plan.flows {
            // Create every edge first: producers need them before their consumers run.
            let signals: HashMap<&str, Arc<Notify>> = flow
                .nodes
                .iter()
                .map(|n| (n.name.as_str(), Arc::new(Notify::new())))
                .collect();
            let mut port_edges: HashMap<(String, String), Vec<Arc<Edge>>> = HashMap::new();
            let mut inboxes: HashMap<&str, Vec<Arc<Edge>>> = HashMap::new();
            for node in &flow.nodes {
                for input in &node.inputs {
                    let label = format!(
                        "{}/{}.{} -> {}",
                        flow.name, input.node, input.port, node.name
                    );
                    let edge = Edge::new(
                        label,
                        input.capacity,
                        input.overflow,
                        signals[node.name.as_str()].clone(),
                    );
                    port_edges
                        .entry((input.node.clone(), input.port.clone()))
                        .or_default()
                        .push(edge.clone());
                    inboxes.entry(node.name.as_str()).or_default().push(edge);
                }
            }

            let mut contexts = Vec::new();
            for node in &flow.nodes {
                let id = NodeId::new(&flow.name, &node.name);
                let stats = Arc::new(NodeStats::default());
                let ports = node
                    .ports
                    .iter()
                    .chain(std::iter::once(&"error".to_string()))
                    .map(|port| {
                        let edges = port_edges
                            .remove(&(node.name.clone(), port.clone()))
                            .unwrap_or_default();
                        (port.clone(), edges)
                    })
                    .collect();
                let inputs = inboxes.remove(node.name.as_str()).unwrap_or_default();
                let mut inbox = Inbox::new(inputs.clone(), signals[node.name.as_str()].clone());
                if let Some(buffer_options) = node.buffer {
                    // The buffer task reads the real inputs; the node reads the buffer.
                    let signal = Arc::new(Notify::new());
                    let feed = Edge::new(
                        format!("{}/{} buffer -> {}", flow.name, node.name, node.name),
                        buffer::WINDOW,
                        Overflow::Block,
                        signal.clone(),
                    );
                    tracker.spawn(buffer::run(buffer::BufferTask {
                        id: id.clone(),
                        inputs: inbox,
                        feed: feed.clone(),
                        store: options.state.store().clone(),
                        state_key: node.state_key.clone(),
                        options: buffer_options,
                        stats: stats.clone(),
                        clock: options.clock.clone(),
                        abort: abort.clone(),
                    }));
                    inbox = Inbox::new(vec![feed], signal);
                }
                let outputs = Outputs::new(id.clone(), ports, stats.clone());
                let cx = NodeContext {
                    id: id.clone(),
                    inbox,
                    outputs: outputs.clone(),
                    clock: options.clock.clone(),
                    shutdown: stop_sources.child_token(),
                    data_dir: options.data_dir.clone(),
                    stats: stats.clone(),
                    broker: options.broker.clone(),
                    state: options.state.node(&node.state_key),
                    gpio_sim: options.gpio_sim.clone(),
                };
                handles.push(NodeHandle {
                    id,
                    kind: node.kind,
                    stats,
                    inputs,
                    outputs,
                });
                contexts.push((node.factory.clone(), cx));
            }
            // Anything left references a port that validation should have refused.
            for ((producer, port), edges) in port_edges {
                tracing::error!(flow = %flow.name, "input names unknown port {producer}.{port}");
                for edge in edges {
                    edge.close();
                }
            }
            for (factory, cx) in contexts {
                // Every line a node logs carries its flow and node (`--log-format json`).
                let span = tracing::info_span!("node", flow = %cx.id.flow, node = %cx.id);
                let supervised = supervisor::supervise(factory, cx, abort.clone());
                tracker.spawn(tracing::Instrument::instrument(supervised, span));
            }
        }
        tracker.close();
        tracing::info!(nodes = handles.len(), "engine started");
        Engine {
            nodes: handles,
            tracker,
            stop_sources,
            abort,
            drain_deadline: options.drain_deadline,
        }
    }

    /// Every running node.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// The node `flow/node`.
    pub fn node(&self, flow: &str, node: &str) -> Option<&NodeHandle> {
        self.nodes
            .iter()
            .find(|h| &*h.id.flow == flow && &*h.id.node == node)
    }

    /// Stops the sources, lets every queue drain, and aborts what is left after the
    /// drain deadline (their messages fail, so tracked sources never see them as done).
    pub async fn shutdown(self) -> ShutdownReport {
        self.stop_sources.cancel();
        let drained = tokio::time::timeout(self.drain_deadline, self.tracker.wait()).await;
        match drained {
            Ok(()) => {
                tracing::info!("engine stopped, all queues drained");
                ShutdownReport::Drained
            }
            Err(_) => {
                tracing::warn!(
                    deadline_ms = self.drain_deadline.as_millis() as u64,
                    "drain deadline passed, aborting the remaining nodes"
                );
                self.abort.cancel();
                self.tracker.wait().await;
                ShutdownReport::Aborted
            }
        }
    }

    /// Waits until every node has finished on its own (all sources ended).
    pub async fn finished(&self) {
        self.tracker.wait().await;
    }
}
