//! What a running node sees: its context (inbox, output ports, clock, shutdown), the
//! factory trait every node kind implements, and a driver for synchronous transforms.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::edge::{BATCH, Edge, Inbox};
use super::msg::Msg;

/// `flow/node`, the name every log line and metric uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// The flow's name.
    pub flow: Arc<str>,
    /// The node's name inside its flow.
    pub node: Arc<str>,
}

impl NodeId {
    /// A node id from its parts.
    pub fn new(flow: &str, node: &str) -> Self {
        NodeId {
            flow: flow.into(),
            node: node.into(),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.flow, self.node)
    }
}

/// A node's run ended with an error; the supervisor logs it and restarts the node.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(pub String);

impl NodeError {
    /// An error from anything printable.
    pub fn new(message: impl fmt::Display) -> Self {
        NodeError(message.to_string())
    }
}

/// The future of one run of a node.
pub type NodeFuture = Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

/// Starts runs of a node. Built once from the validated config; called again after each
/// crash, so a restarted node begins with fresh in-memory state.
pub trait NodeFactory: Send + Sync + 'static {
    /// Starts one run. It should return `Ok(())` when its inputs are closed and drained
    /// (transforms, sinks) or when `cx.shutdown` fires (sources).
    fn start(&self, cx: NodeContext) -> NodeFuture;
}

impl<F> NodeFactory for F
where
    F: Fn(NodeContext) -> NodeFuture + Send + Sync + 'static,
{
    fn start(&self, cx: NodeContext) -> NodeFuture {
        self(cx)
    }
}

/// Life-cycle state of a node, for the API and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Running normally.
    Running = 0,
    /// Crashed; waiting out its backoff before the next start.
    Restarting = 1,
    /// Finished (inputs drained or shutdown).
    Stopped = 2,
    /// Gave up (shutdown while restarting).
    Failed = 3,
}

/// Counters and state of one node; shared with metrics and the admin API.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Messages taken from the inbox.
    pub received: AtomicU64,
    /// Messages sent on output ports (each fan-out copy counts once per port).
    pub emitted: AtomicU64,
    /// Messages that failed in this node (error port or failed verdict).
    pub failed: AtomicU64,
    /// Times the node was restarted after a crash.
    pub restarts: AtomicU64,
    /// The disk buffer in front of the node (`buffer:`), all zero without one.
    pub buffer: super::buffer::BufferStats,
    /// Processing time per message of transforms driven by [`run_transform`] and
    /// [`run_transform_blocking`] (wall-clock, measured per batch).
    pub processing: crate::store::histogram::Histogram,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
}

impl NodeStats {
    /// The current life-cycle state.
    pub fn state(&self) -> NodeState {
        match self.state.load(Ordering::Relaxed) {
            0 => NodeState::Running,
            1 => NodeState::Restarting,
            2 => NodeState::Stopped,
            _ => NodeState::Failed,
        }
    }

    pub(crate) fn set_state(&self, state: NodeState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The last error or panic message, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

/// Identifies an output port of a node; resolve names once with [`Outputs::port`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortId(pub usize);

impl PortId {
    /// The first declared port (`out` for most kinds).
    pub const OUT: PortId = PortId(0);
}

/// One output port and the edges it feeds.
struct OutputPort {
    name: Arc<str>,
    edges: Vec<Arc<Edge>>,
}

/// A node's output ports. The last one is always `error`.
#[derive(Clone)]
pub struct Outputs {
    ports: Arc<[OutputPort]>,
    id: NodeId,
    stats: Arc<NodeStats>,
    error_log: Arc<RateLimitedLog>,
    /// Watchers of this node's outputs (the live tap); idle unless one is attached.
    tap: Arc<super::tap::TapPoint>,
}

impl Outputs {
    /// Output ports from `(name, edges)` pairs; an `error` port is added when absent.
    pub fn new(id: NodeId, ports: Vec<(String, Vec<Arc<Edge>>)>, stats: Arc<NodeStats>) -> Self {
        let mut ports: Vec<OutputPort> = ports
            .into_iter()
            .map(|(name, edges)| OutputPort {
                name: name.into(),
                edges,
            })
            .collect();
        if let Some(i) = ports.iter().position(|p| &*p.name == "error") {
            let error = ports.remove(i);
            ports.push(error);
        } else {
            ports.push(OutputPort {
                name: "error".into(),
                edges: Vec::new(),
            });
        }
        Outputs {
            ports: ports.into(),
            id,
            stats,
            error_log: Arc::new(RateLimitedLog::default()),
            tap: Arc::default(),
        }
    }

    /// Where live taps attach to these outputs.
    pub fn tap(&self) -> &Arc<super::tap::TapPoint> {
        &self.tap
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<PortId> {
        self.ports.iter().position(|p| &*p.name == name).map(PortId)
    }

    /// The `error` port.
    pub fn error_port(&self) -> PortId {
        PortId(self.ports.len() - 1)
    }

    /// The names of all ports, `error` last.
    pub fn port_names(&self) -> Vec<Arc<str>> {
        self.ports.iter().map(|p| p.name.clone()).collect()
    }

    /// Whether anything consumes `port`.
    pub fn is_wired(&self, port: PortId) -> bool {
        self.ports.get(port.0).is_some_and(|p| !p.edges.is_empty())
    }

    /// Sends `msg` on `port` to every edge it feeds (copies for all but the last),
    /// waiting where an edge applies backpressure. A port that feeds nothing ends the
    /// message as done (nothing downstream wants it), except the error port, where it
    /// fails.
    pub async fn emit(&self, port: PortId, msg: Msg) {
        let Some(output) = self.ports.get(port.0) else {
            msg.fail(format!("{}: no output port #{}", self.id, port.0));
            return;
        };
        if self.tap.is_watched() {
            self.tap.offer(&output.name, &msg);
        }
        if output.edges.is_empty() {
            if port == self.error_port() {
                self.fail_unwired(msg);
            } else {
                msg.done();
            }
            return;
        }
        self.stats.emitted.fetch_add(1, Ordering::Relaxed);
        let last = output.edges.len() - 1;
        for edge in &output.edges[..last] {
            if let Err(closed) = edge.send(msg.clone()).await {
                closed.0.fail(format!("{} stopped", edge.label));
            }
        }
        if let Err(closed) = output.edges[last].send(msg).await {
            closed
                .0
                .fail(format!("{} stopped", output.edges[last].label));
        }
    }

    /// Routes a failed message: to the `error` port when it is wired (with the reason in
    /// the `error` header), else the message fails with the reason, logged with the node.
    pub async fn emit_error(&self, mut msg: Msg, reason: impl fmt::Display) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let reason = reason.to_string();
        self.error_log.warn(&self.id, &reason);
        let error = self.error_port();
        if self.is_wired(error) {
            msg.headers_mut().insert("error".into(), reason);
            msg.headers_mut()
                .insert("error_node".into(), self.id.to_string());
            self.emit(error, msg).await;
        } else {
            if self.tap.is_watched() {
                let mut shown = msg.clone();
                shown.headers_mut().insert("error".into(), reason.clone());
                self.tap.offer(&self.ports[error.0].name, &shown);
                shown.done();
            }
            msg.fail(format!("{}: {reason}", self.id));
        }
    }

    fn fail_unwired(&self, msg: Msg) {
        let reason = msg
            .headers
            .get("error")
            .cloned()
            .unwrap_or_else(|| "error".into());
        msg.fail(reason);
    }

    /// Sends everything collected in `emit`, in order. A run of messages for a port
    /// that feeds one `block` edge is queued under one lock.
    pub async fn flush(&self, emit: &mut Emit) {
        let mut items = emit.items.drain(..).peekable();
        let mut run = std::collections::VecDeque::new();
        while let Some(item) = items.next() {
            match item {
                Emitted::Msg(port, msg) => {
                    let single = self
                        .ports
                        .get(port.0)
                        .filter(|p| p.edges.len() == 1 && port != self.error_port());
                    let Some(output) = single else {
                        self.emit(port, msg).await;
                        continue;
                    };
                    run.push_back(msg);
                    while let Some(Emitted::Msg(next, _)) = items.peek()
                        && *next == port
                    {
                        if let Some(Emitted::Msg(_, msg)) = items.next() {
                            run.push_back(msg);
                        }
                    }
                    if self.tap.is_watched() {
                        for msg in &run {
                            self.tap.offer(&output.name, msg);
                        }
                    }
                    self.stats
                        .emitted
                        .fetch_add(run.len() as u64, Ordering::Relaxed);
                    let edge = &output.edges[0];
                    edge.push_many(&mut run);
                    // What did not fit (a full queue, another policy, a closed edge).
                    for msg in run.drain(..) {
                        if let Err(closed) = edge.send(msg).await {
                            closed.0.fail(format!("{} stopped", edge.label));
                        }
                    }
                }
                Emitted::Error(msg, reason) => self.emit_error(msg, reason).await,
                Emitted::Done(msg) => msg.done(),
            }
        }
    }

    /// Closes every outgoing edge: this node will send nothing more.
    pub fn close(&self) {
        for port in self.ports.iter() {
            for edge in &port.edges {
                edge.close();
            }
        }
    }
}

/// Logs a node's message-level errors at most once per interval, with a count of the
/// ones it held back, so a flood of bad input cannot flood the log.
#[derive(Default)]
struct RateLimitedLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn warn(&self, id: &NodeId, reason: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Self::INTERVAL => state.1 += 1,
            _ => {
                let suppressed = std::mem::take(&mut state.1);
                state.0 = Some(now);
                drop(state);
                if suppressed > 0 {
                    tracing::warn!(node = %id, suppressed, "message failed: {reason}");
                } else {
                    tracing::warn!(node = %id, "message failed: {reason}");
                }
            }
        }
    }
}

/// Output collected by a synchronous transform for one batch.
#[derive(Default)]
pub struct Emit {
    items: Vec<Emitted>,
}

enum Emitted {
    Msg(PortId, Msg),
    Error(Msg, String),
    /// Ended on purpose (filtered out); the verdict waits for the batch like an output.
    Done(Msg),
}

impl Emit {
    /// Sends `msg` on `port` once the batch is done.
    pub fn to(&mut self, port: PortId, msg: Msg) {
        self.items.push(Emitted::Msg(port, msg));
    }

    /// Sends `msg` on the first port (`out`).
    pub fn out(&mut self, msg: Msg) {
        self.to(PortId::OUT, msg);
    }

    /// Sends `msg` to the error port (or fails it) with `reason`.
    pub fn error(&mut self, msg: Msg, reason: impl fmt::Display) {
        self.items.push(Emitted::Error(msg, reason.to_string()));
    }

    /// Ends `msg` as done once the batch is done, not at once: for a transform that
    /// drops a message after changing its state, so the source hears "done" only after
    /// [`Transform::finish_batch`] saved that state.
    pub fn done(&mut self, msg: Msg) {
        self.items.push(Emitted::Done(msg));
    }

    /// Turns everything collected into failures with `reason`: messages to be passed on
    /// or ended go to the error port (or fail) instead. For a batch whose state could not
    /// be saved, so none of its messages is reported done.
    pub fn fail_all(&mut self, reason: &str) {
        self.items = std::mem::take(&mut self.items)
            .into_iter()
            .map(|item| match item {
                Emitted::Msg(_, msg) | Emitted::Done(msg) => Emitted::Error(msg, reason.into()),
                failed @ Emitted::Error(..) => failed,
            })
            .collect();
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Everything a node run gets from the engine.
#[derive(Clone)]
pub struct NodeContext {
    /// `flow/node`.
    pub id: NodeId,
    /// The node's input edges (empty for sources).
    pub inbox: Inbox,
    /// The node's output ports.
    pub outputs: Outputs,
    /// Time, real or virtual.
    pub clock: Clock,
    /// Fires when the engine shuts down; sources stop on it, the rest drain their inputs.
    pub shutdown: CancellationToken,
    /// Where the node may keep files.
    pub data_dir: PathBuf,
    /// This node's counters.
    pub stats: Arc<NodeStats>,
    /// The built-in broker, when it runs (the in-process link of MQTT nodes).
    pub broker: Option<crate::broker::Broker>,
    /// This node's persistent key/value state (`state_key:`); survives restarts of the
    /// node and of the process.
    pub state: super::state::NodeKv,
    /// The engine's simulated GPIO chips, for GPIO nodes with `chip: sim:NAME`.
    pub gpio_sim: crate::nodes::gpio::SimChips,
}

impl NodeContext {
    /// Waits for the next input message, counting it; `None` when inputs are drained.
    pub async fn recv(&mut self) -> Option<Msg> {
        let msg = self.inbox.recv().await?;
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        Some(msg)
    }

    /// Sends on the first port.
    pub async fn emit(&self, msg: Msg) {
        self.outputs.emit(PortId::OUT, msg).await;
    }
}

/// A transform that handles one message at a time without waiting: the engine drives it
/// in batches (see [`run_transform`]). Most built-ins are of this kind.
pub trait Transform: Send + 'static {
    /// Handles one message. Every message must get an outcome: passed on via `out`,
    /// sent to the error port, or ended with [`Msg::done`] (or [`Emit::done`] when the
    /// verdict must wait for [`Transform::finish_batch`]).
    fn process(&mut self, msg: Msg, out: &mut Emit);

    /// Ends a batch: called once after `process` ran for the batch's messages and
    /// *before* anything they collected in `Emit` is sent on or ended. The default does
    /// nothing.
    ///
    /// A transform with durable state (scripts, plugins) holds the batch's writes in
    /// memory ([`super::state::StagedKv`]) and commits them here in one atomic, durable
    /// commit instead of one fsync per message. Why that is safe: a source is told a
    /// message is done only after every message derived from it was committed by a sink,
    /// ended or failed downstream, which can only happen after it left this node, which
    /// happens only after this method returned. So when kill -9 loses a write that was
    /// not committed yet, it also loses every message that write could have been derived
    /// into, and none of them was acknowledged: their sources deliver them again.
    ///
    /// `Err` fails the batch: every message collected in `Emit` goes to the error port
    /// (or fails) with the error as reason instead of being passed on or ended, so no
    /// message whose state change was lost is reported done. The transform must leave
    /// its in-memory view consistent with what is stored (drop what it held).
    ///
    /// Also called after a panic in `process`, for the messages processed before it
    /// (their outputs are sent on): commit only the writes of messages whose `process`
    /// returned, never those of the message that panicked (the node then restarts).
    ///
    /// It runs where `process` runs: on the blocking pool under
    /// [`run_transform_blocking`], where waiting for the disk is fine; on a runtime
    /// worker under [`run_transform`], where it must not block.
    fn finish_batch(&mut self) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Drives a [`Transform`]: takes batches from the inbox, processes them, ends the batch
/// ([`Transform::finish_batch`]), flushes the outputs. A panic in `process` fails that
/// one message, puts the unprocessed rest of the batch back, and ends the run with an
/// error so the supervisor restarts the node with fresh state.
pub async fn run_transform<T: Transform>(
    mut transform: T,
    cx: NodeContext,
) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut emit = Emit::default();
    loop {
        if inbox.recv_many(&mut batch, BATCH).await == 0 {
            return Ok(());
        }
        let count = batch.len() as u64;
        cx.stats.received.fetch_add(count, Ordering::Relaxed);
        // Wall-clock on purpose (like the script deadline): it measures real work.
        let started = std::time::Instant::now();
        let result = process_batch(&mut transform, &mut batch, &mut emit);
        cx.stats.processing.observe_many(started.elapsed(), count);
        send_batch(&cx, &mut inbox, &mut emit, result).await?;
    }
}

/// Like [`run_transform`], for transforms that run user code (Rhai, WASM): each batch
/// (with its [`Transform::finish_batch`]) runs on tokio's blocking pool, never on the
/// runtime's workers, so a slow script or a state commit cannot stall the broker or
/// other flows. At most as many batches run at once, process-wide, as the machine has
/// cores.
pub async fn run_transform_blocking<T: Transform>(
    transform: T,
    cx: NodeContext,
) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut state = (
        transform,
        Vec::with_capacity(BLOCKING_BATCH),
        Emit::default(),
    );
    loop {
        let (mut transform, mut batch, mut emit) = state;
        if inbox.recv_many(&mut batch, BLOCKING_BATCH).await == 0 {
            return Ok(());
        }
        let count = batch.len() as u64;
        cx.stats.received.fetch_add(count, Ordering::Relaxed);
        let permit = blocking_slots()
            .acquire()
            .await
            .map_err(|_| NodeError::new("the blocking pool is closed"))?;
        let stats = cx.stats.clone();
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            // Timed on the blocking thread: the wait for a slot is not processing.
            let started = std::time::Instant::now();
            let result = process_batch(&mut transform, &mut batch, &mut emit);
            stats.processing.observe_many(started.elapsed(), count);
            (transform, batch, emit, result)
        })
        .await;
        drop(permit);
        // `process_batch` catches panics, so the task itself cannot panic; a join error
        // means the runtime is shutting down and took the batch with it.
        let (transform, batch, mut emit, result) =
            joined.map_err(|e| NodeError::new(format!("batch task lost: {e}")))?;
        send_batch(&cx, &mut inbox, &mut emit, result).await?;
        state = (transform, batch, emit);
    }
}

/// Most messages one trip to the blocking pool takes: each trip costs two thread hand-offs,
/// so user code takes bigger batches than built-ins (measured on the engine bench's
/// script case: 64 -> 256 moved it from 173 k to 234 k msg/s).
const BLOCKING_BATCH: usize = 256;

/// The process-wide bound on batches of user code running at once.
fn blocking_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.max(2))
    })
}

/// A panic while processing one message: the unprocessed rest and the reason.
struct Poisoned {
    rest: Vec<Msg>,
    error: NodeError,
}

/// Processes `batch` (emptied) into `emit`, stopping at the first panic, then ends the
/// batch with [`Transform::finish_batch`] (after a panic too, for the messages processed
/// before it). A failed `finish_batch` turns the batch's outputs into failures; one that
/// panics does too, and ends the run like a panic in `process`.
fn process_batch<T: Transform>(
    transform: &mut T,
    batch: &mut Vec<Msg>,
    emit: &mut Emit,
) -> Result<(), Poisoned> {
    let mut result = Ok(());
    let mut pending = batch.drain(..);
    while let Some(msg) = pending.next() {
        let poison = (msg.topic.clone(), msg.id);
        let outcome = catch_unwind(AssertUnwindSafe(|| transform.process(msg, emit)));
        if let Err(panic) = outcome {
            let reason = panic_message(&*panic);
            result = Err(Poisoned {
                rest: pending.collect(),
                error: NodeError(format!(
                    "panicked on message {} (topic {}): {reason}",
                    poison.1, poison.0
                )),
            });
            break;
        }
    }
    match catch_unwind(AssertUnwindSafe(|| transform.finish_batch())) {
        Ok(Ok(())) => result,
        Ok(Err(e)) => {
            emit.fail_all(&e.0);
            result
        }
        Err(panic) => {
            let reason = format!("panicked ending a batch: {}", panic_message(&*panic));
            emit.fail_all(&reason);
            result.and(Err(Poisoned {
                rest: Vec::new(),
                error: NodeError(reason),
            }))
        }
    }
}

/// Sends a batch's outputs; after a panic, puts the unprocessed messages back first.
async fn send_batch(
    cx: &NodeContext,
    inbox: &mut Inbox,
    emit: &mut Emit,
    result: Result<(), Poisoned>,
) -> Result<(), NodeError> {
    match result {
        Ok(()) => {
            cx.outputs.flush(emit).await;
            Ok(())
        }
        Err(poisoned) => {
            inbox.requeue_front(poisoned.rest);
            cx.outputs.flush(emit).await;
            Err(poisoned.error)
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes every message on; panics on payload `boom`; `finish_batch` answers with
    /// `finish` (or panics when it is `Some("panic")`).
    struct Recorder {
        finished: u32,
        finish: Option<&'static str>,
    }

    impl Transform for Recorder {
        fn process(&mut self, msg: Msg, out: &mut Emit) {
            assert!(&*msg.payload != b"boom", "boom payload");
            if &*msg.payload == b"drop" {
                out.done(msg);
            } else {
                out.out(msg);
            }
        }

        fn finish_batch(&mut self) -> Result<(), NodeError> {
            self.finished += 1;
            match self.finish {
                None => Ok(()),
                Some("panic") => panic!("commit bug"),
                Some(reason) => Err(NodeError::new(reason)),
            }
        }
    }

    fn batch(payloads: &[&'static str]) -> Vec<Msg> {
        payloads.iter().map(|p| Msg::new("t", *p, 0)).collect()
    }

    /// What `emit` holds: `out:PAYLOAD`, `done:PAYLOAD` or `error:PAYLOAD:REASON`.
    fn shown(emit: &Emit) -> Vec<String> {
        let text = |m: &Msg| String::from_utf8_lossy(&m.payload).into_owned();
        emit.items
            .iter()
            .map(|item| match item {
                Emitted::Msg(_, m) => format!("out:{}", text(m)),
                Emitted::Done(m) => format!("done:{}", text(m)),
                Emitted::Error(m, reason) => format!("error:{}:{reason}", text(m)),
            })
            .collect()
    }

    #[test]
    fn a_batch_ends_with_finish_batch_before_anything_is_sent() {
        let mut t = Recorder {
            finished: 0,
            finish: None,
        };
        let mut emit = Emit::default();
        let mut msgs = batch(&["a", "drop", "b"]);
        assert!(process_batch(&mut t, &mut msgs, &mut emit).is_ok());
        assert_eq!(t.finished, 1);
        assert_eq!(shown(&emit), ["out:a", "done:drop", "out:b"]);
    }

    #[test]
    fn a_failed_finish_fails_every_message_of_the_batch() {
        let mut t = Recorder {
            finished: 0,
            finish: Some("disk full"),
        };
        let mut emit = Emit::default();
        emit.error(Msg::new("t", "earlier", 0), "script error");
        let mut msgs = batch(&["a", "drop"]);
        assert!(process_batch(&mut t, &mut msgs, &mut emit).is_ok());
        assert_eq!(
            shown(&emit),
            [
                "error:earlier:script error",
                "error:a:disk full",
                "error:drop:disk full"
            ]
        );
    }

    #[test]
    fn after_a_panic_the_batch_still_ends_and_the_rest_goes_back() {
        let mut t = Recorder {
            finished: 0,
            finish: None,
        };
        let mut emit = Emit::default();
        let mut msgs = batch(&["a", "boom", "c"]);
        let Err(poisoned) = process_batch(&mut t, &mut msgs, &mut emit) else {
            panic!("the panic is reported");
        };
        assert_eq!(t.finished, 1, "the runs before the panic are committed");
        assert_eq!(shown(&emit), ["out:a"]);
        assert_eq!(poisoned.rest.len(), 1);
        assert_eq!(poisoned.rest[0].payload, "c");
        assert!(
            poisoned.error.0.contains("boom payload"),
            "{}",
            poisoned.error
        );

        // A panic in `finish_batch` itself fails the batch and ends the run.
        let mut t = Recorder {
            finished: 0,
            finish: Some("panic"),
        };
        let mut emit = Emit::default();
        let mut msgs = batch(&["a"]);
        let Err(poisoned) = process_batch(&mut t, &mut msgs, &mut emit) else {
            panic!("the panic is reported");
        };
        assert!(poisoned.rest.is_empty());
        assert_eq!(
            poisoned.error.0, "panicked ending a batch: commit bug",
            "{}",
            poisoned.error
        );
        assert_eq!(
            shown(&emit),
            ["error:a:panicked ending a batch: commit bug"]
        );
    }
}
