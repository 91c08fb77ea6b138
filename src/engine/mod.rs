//! The running graph: messages, bounded edges, acknowledgements, supervised node tasks
//! and shutdown. It knows nothing of YAML: it runs a [`GraphPlan`] built by `flow/`.

pub mod buffer;
pub mod clock;
pub mod edge;
pub mod fields;
pub mod harness;
pub mod msg;
pub mod node;
pub mod reload;
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

/// The running graph: each flow runs on its own (own tasks, stop token and abort token),
/// so a hot reload can stop and start one flow while the others keep flowing.
pub struct Engine {
    flows: Vec<RunningFlow>,
    /// Every flow's nodes, in flow order; rebuilt when the set of flows changes.
    nodes: Vec<NodeHandle>,
    /// What new flows (hot reload) are started with.
    options: EngineOptions,
    drain_deadline: Duration,
}

/// One running flow.
struct RunningFlow {
    name: String,
    nodes: Vec<NodeHandle>,
    tracker: TaskTracker,
    /// Stops the flow's sources; everything downstream drains as its inputs close.
    stop_sources: CancellationToken,
    /// Aborts whatever of the flow is still running after the drain deadline.
    abort: CancellationToken,
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
        let kept = HashMap::new();
        let flows: Vec<RunningFlow> = plan
            .flows
            .into_iter()
            .map(|flow| start_flow(flow, &options, &kept))
            .collect();
        let nodes: Vec<NodeHandle> = flows.iter().flat_map(|f| f.nodes.clone()).collect();
        tracing::info!(nodes = nodes.len(), "engine started");
        Engine {
            flows,
            nodes,
            drain_deadline: options.drain_deadline,
            options,
        }
    }

    /// The names of the running flows, in start order.
    pub fn flow_names(&self) -> Vec<String> {
        self.flows.iter().map(|f| f.name.clone()).collect()
    }

    /// Hot reload: stops the flows named in `stop` (sources first, queues drain, what is
    /// left at the drain deadline is failed so its source does not acknowledge it), then
    /// starts the flows of `start`. Flows in neither are not touched. A node that keeps
    /// its `flow/node` id across a restart keeps its counters. Returns the flows whose
    /// drain ran out of time.
    pub async fn replace(&mut self, stop: &[String], start: Vec<FlowPlan>) -> Vec<String> {
        let (stopping, running): (Vec<RunningFlow>, Vec<RunningFlow>) =
            std::mem::take(&mut self.flows)
                .into_iter()
                .partition(|f| stop.contains(&f.name));
        self.flows = running;
        let aborted = stop_flows(&stopping, self.drain_deadline).await;
        let old_nodes: HashMap<NodeId, &NodeHandle> = stopping
            .iter()
            .flat_map(|f| f.nodes.iter().map(|n| (n.id.clone(), n)))
            .collect();
        let kept: HashMap<NodeId, Arc<NodeStats>> = old_nodes
            .iter()
            .map(|(id, n)| (id.clone(), n.stats.clone()))
            .collect();
        for flow in start {
            let running = start_flow(flow, &self.options, &kept);
            // A live tap on a replaced node goes on with the node of the same name.
            for node in &running.nodes {
                if let Some(old) = old_nodes.get(&node.id) {
                    node.outputs.tap().adopt_watchers(old.outputs.tap());
                }
            }
            self.flows.push(running);
        }
        drop(old_nodes);
        // Taps on nodes that are gone (a removed flow or node) end: their watchers are
        // moved out and dropped, which closes the streams.
        for flow in &stopping {
            for node in &flow.nodes {
                tap::TapPoint::default().adopt_watchers(node.outputs.tap());
            }
        }
        drop(stopping);
        self.nodes = self.flows.iter().flat_map(|f| f.nodes.clone()).collect();
        aborted
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
        let aborted = stop_flows(&self.flows, self.drain_deadline).await;
        if aborted.is_empty() {
            tracing::info!("engine stopped, all queues drained");
            ShutdownReport::Drained
        } else {
            ShutdownReport::Aborted
        }
    }

    /// Waits until every node has finished on its own (all sources ended).
    pub async fn finished(&self) {
        for flow in &self.flows {
            flow.tracker.wait().await;
        }
    }
}

/// Stops `flows` together: their sources stop at once, their queues drain, and whatever
/// still runs at the common deadline is aborted (its messages fail). Returns the names
/// of the flows that had to be aborted.
async fn stop_flows(flows: &[RunningFlow], drain_deadline: Duration) -> Vec<String> {
    for flow in flows {
        flow.stop_sources.cancel();
    }
    let deadline = tokio::time::Instant::now() + drain_deadline;
    let mut aborted = Vec::new();
    for flow in flows {
        if tokio::time::timeout_at(deadline, flow.tracker.wait())
            .await
            .is_err()
        {
            aborted.push(flow.name.clone());
        }
    }
    if !aborted.is_empty() {
        tracing::warn!(
            deadline_ms = drain_deadline.as_millis() as u64,
            flows = ?aborted,
            "drain deadline passed, aborting the remaining nodes"
        );
        for flow in flows {
            flow.abort.cancel();
        }
        for flow in flows {
            flow.tracker.wait().await;
        }
    }
    aborted
}

/// Starts one flow: wires its edges and spawns a supervised task per node. A node whose
/// id is in `kept` continues those counters (a flow restarted by a hot reload).
fn start_flow(
    flow: FlowPlan,
    options: &EngineOptions,
    kept: &HashMap<NodeId, Arc<NodeStats>>,
) -> RunningFlow {
    let tracker = TaskTracker::new();
    let stop_sources = CancellationToken::new();
    let abort = CancellationToken::new();
    let mut handles = Vec::new();

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
        let stats = kept.get(&id).cloned().unwrap_or_default();
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
    tracker.close();
    RunningFlow {
        name: flow.name,
        nodes: handles,
        tracker,
        stop_sources,
        abort,
    }
}
