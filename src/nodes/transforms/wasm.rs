//! `wasm`: runs a WebAssembly plugin per message (ABI in docs/plugin-abi.md). This file
//! holds the options, the run loop on the blocking pool, the verdict each message gets,
//! and rebuilding a plugin that keeps faulting; the host itself is [`crate::plugin`].
//!
//! `kv_set` writes of a call count once the call succeeded; those of a whole batch are
//! committed in one atomic, durable commit at the end of the batch, before any of its
//! output leaves (as `Transform::finish_batch` describes for scripts). If that commit
//! fails, every message of the batch goes to the `error` port.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::edge::BATCH;
use crate::engine::state::StagedKv;
use crate::engine::{Emit, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, PortId};
use crate::flow::values::{ByteSize, HumanDuration};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};
use crate::plugin::{self, Binding, CallOutput, Emitted, Instance, Limits, Plugin, abi};

use super::switch::check_port_name;

/// Options of a `wasm` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The plugin module (`.wasm`), relative to the flow file's directory.
    pub plugin: String,
    /// Any value; passed to the plugin's `hw_init` as JSON (`null` when absent).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Output ports, in order: the plugin emits to port number N, the Nth name here
    /// (default `[out]`). `error` is always there besides these.
    #[serde(default)]
    pub ports: Option<Vec<String>>,
    /// Limits on each call into the plugin.
    #[serde(default)]
    pub limits: WasmLimitsConfig,
}

/// Limits on one call into a plugin; exceeding one fails that message (error port).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmLimitsConfig {
    /// Wall-clock time one message may take (default `100ms`).
    pub timeout: Option<HumanDuration>,
    /// Largest linear memory of the plugin (default `16MiB`).
    pub memory: Option<ByteSize>,
    /// Most WebAssembly stack one call may use (default `512KiB`, at most `1MiB`).
    pub stack: Option<ByteSize>,
    /// Most emits per message (default 1024).
    pub max_emits: Option<u32>,
    /// Most bytes of emitted records per message (default `16MiB`).
    pub max_emit_bytes: Option<ByteSize>,
}

impl WasmLimitsConfig {
    fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            timeout: self.timeout.map_or(d.timeout, |t| t.get()),
            memory: self.memory.map_or(d.memory, |m| m.0),
            stack: self.stack.map_or(d.stack, |s| s.0),
            max_emits: self.max_emits.unwrap_or(d.max_emits),
            max_emit_bytes: self.max_emit_bytes.map_or(d.max_emit_bytes, |b| b.0),
        }
    }
}

impl Config for WasmConfig {
    const TYPE: &'static str = "wasm";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Runs a WebAssembly plugin per message (Rust, C or AssemblyScript), with time and memory limits";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.plugin.trim().is_empty() {
            issues.push(ConfigIssue::new(
                "plugin",
                "name the plugin's .wasm file (relative to the flow file)",
            ));
        }
        if let Some(ports) = &self.ports {
            if ports.is_empty() {
                issues.push(ConfigIssue::new(
                    "ports",
                    "list at least one port (the default is [out])",
                ));
            }
            for (i, port) in ports.iter().enumerate() {
                if let Err(e) = check_port_name(port) {
                    issues.push(ConfigIssue::new(format!("ports[{i}]"), e));
                } else if ports[..i].contains(port) {
                    issues.push(ConfigIssue::new(
                        format!("ports[{i}]"),
                        format!("port `{port}` is listed twice"),
                    ));
                }
            }
        }
        for (field, message) in self.limits.limits().problems() {
            issues.push(ConfigIssue::new(format!("limits.{field}"), message));
        }
        issues
    }

    fn ports(&self) -> Vec<String> {
        self.ports.clone().unwrap_or_else(|| vec!["out".into()])
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let path: PathBuf = cx.base_dir.join(&self.plugin);
        let plugin = Plugin::load(&path, self.limits.limits(), Some(&cx.data_dir))
            .map_err(|e| vec![ConfigIssue::new("plugin", e.to_string())])?;
        let config: Arc<[u8]> = serde_json::to_vec(&self.config.clone().unwrap_or_default())
            .unwrap_or_else(|_| b"null".to_vec())
            .into();
        let shared = Arc::new(Shared {
            plugin,
            config,
            ports: self.ports(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(shared.clone(), cx))
        }))
    }
}

/// What every run of a node shares: the checked module and the options.
struct Shared {
    plugin: Plugin,
    config: Arc<[u8]>,
    ports: Vec<String>,
}

/// Faults in a row after which the instance is thrown away and built again.
const FAULTS_BEFORE_REBUILD: u32 = 5;
/// First wait before a rebuild; doubled for each rebuild in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Most messages one trip to the blocking pool takes (as `run_transform_blocking`).
const PLUGIN_BATCH: usize = 4 * BATCH;

/// One run of a `wasm` node: the instance and its fault bookkeeping.
struct PluginNode {
    shared: Arc<Shared>,
    binding: Binding,
    /// Port number (the plugin's) -> the node's port.
    port_ids: Vec<PortId>,
    /// `None` after too many faults: rebuilt before the next message.
    instance: Option<Instance>,
    faults_in_row: u32,
    rebuilds_in_row: u32,
    /// Why an early commit in this batch failed; the whole batch then fails.
    commit_failed: Option<String>,
}

impl PluginNode {
    /// Instantiates the plugin and runs `hw_init`, committing its kv writes.
    fn start(&mut self) -> Result<(), NodeError> {
        let mut instance = self
            .shared
            .plugin
            .instantiate(self.binding.clone())
            .map_err(|f| NodeError::new(format!("plugin failed to start: {f}")))?;
        let out = instance
            .init(&self.shared.config)
            .map_err(|f| NodeError::new(format!("plugin failed to start: {f}")))?;
        if !out.emits.is_empty() {
            tracing::debug!(node = %self.binding.node, "emits made during hw_init are discarded");
        }
        if let Some(kv) = &self.binding.kv {
            kv.stage(out.kv);
            kv.commit_blocking().map_err(|e| {
                NodeError::new(format!(
                    "plugin state written by hw_init could not be saved: {e}"
                ))
            })?;
        }
        self.instance = Some(instance);
        self.faults_in_row = 0;
        Ok(())
    }

    /// Processes `batch` into `emit`; stops when the instance must be rebuilt, leaving
    /// the unprocessed messages in `batch`.
    fn process_batch(&mut self, batch: &mut Vec<Msg>, emit: &mut Emit) {
        let mut pending = std::mem::take(batch).into_iter();
        while self.instance.is_some() {
            let Some(msg) = pending.next() else {
                break;
            };
            let (topic, id) = (msg.topic.clone(), msg.id);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.process(msg, emit))) {
                // A host bug, not the guest's: the message is failed by its drop; start
                // over with a fresh instance.
                tracing::error!(
                    node = %self.binding.node,
                    "plugin host panicked on message {id} (topic {topic}): {}",
                    crate::engine::node::panic_message(&*panic)
                );
                self.instance = None;
            }
        }
        batch.extend(pending);
    }

    fn process(&mut self, msg: Msg, emit: &mut Emit) {
        let Some(instance) = self.instance.as_mut() else {
            return emit.error(msg, "plugin is not running");
        };
        let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let len = abi::encoded_len(&msg.topic, headers.clone(), &msg.payload);
        let result = instance.on_message(len, |buf| {
            abi::encode_into(buf, msg.timestamp_ms, &msg.topic, headers, &msg.payload);
        });
        match result {
            Ok(out) => {
                self.faults_in_row = 0;
                self.rebuilds_in_row = 0;
                self.deliver(msg, out, emit);
            }
            Err(fault) => {
                if fault.counts {
                    self.faults_in_row += 1;
                    if self.faults_in_row >= FAULTS_BEFORE_REBUILD {
                        self.instance = None;
                    }
                }
                emit.error(msg, fault.reason);
            }
        }
    }

    /// Stages the call's kv writes with the batch's, then hands its emits on as children
    /// of `msg`; they leave only after [`PluginNode::finish_batch`] committed the batch.
    fn deliver(&mut self, msg: Msg, out: CallOutput, emit: &mut Emit) {
        // The outputs are built before the writes are staged: a host panic while building
        // them fails the message and must leave its writes out of the batch.
        let mut emits = out.emits;
        let (outputs, original) = match emits.len() {
            0 => (Vec::new(), Some(msg)),
            1 => {
                let one = emits.remove(0);
                let port = self.port_ids[one.port as usize];
                (vec![(port, apply(msg, one))], None)
            }
            _ => {
                let mut outputs = Vec::with_capacity(emits.len());
                for one in emits {
                    let port = self.port_ids[one.port as usize];
                    let child = msg.derive(msg.topic.clone(), msg.payload.clone());
                    outputs.push((port, apply(child, one)));
                }
                // The children carry the verdict; they wait for the commit.
                msg.done();
                (outputs, None)
            }
        };
        if !out.kv.is_empty()
            && let Some(kv) = &self.binding.kv
            && kv.stage(out.kv)
            && self.commit_failed.is_none()
            && let Err(e) = kv.commit_blocking()
        {
            // The batch grew too large to wait and its early commit failed.
            self.commit_failed = Some(format!("plugin state could not be saved: {e}"));
        }
        for (port, output) in outputs {
            emit.to(port, output);
        }
        if let Some(dropped) = original {
            // Dropped: "done" must still wait for the state commit.
            emit.done(dropped);
        }
    }

    /// Commits the batch's kv writes in one durable commit, before its outputs leave;
    /// `Err` when they could not be saved (the caller then fails the batch's outputs).
    fn finish_batch(&mut self) -> Result<(), String> {
        let Some(kv) = &self.binding.kv else {
            return Ok(());
        };
        if let Some(reason) = self.commit_failed.take() {
            kv.discard();
            return Err(reason);
        }
        kv.commit_blocking()
            .map_err(|e| format!("plugin state could not be saved: {e}"))
    }
}

/// Applies an emitted record to `msg` (a child of the input, or the input itself): an
/// empty topic, a zero timestamp and an empty header list keep the input's.
fn apply(mut msg: Msg, emitted: Emitted) -> Msg {
    if !emitted.topic.is_empty() && *msg.topic != *emitted.topic {
        msg = msg.with_topic(emitted.topic);
    }
    if emitted.timestamp_ms != 0 {
        msg.timestamp_ms = emitted.timestamp_ms;
    }
    if !emitted.headers.is_empty() {
        let headers = msg.headers_mut();
        headers.clear();
        headers.extend(emitted.headers);
    }
    if emitted.payload[..] != msg.payload[..] {
        msg = msg.with_payload(Bytes::from(emitted.payload));
    }
    msg
}

/// The process-wide bound on plugin batches running at once: as many as cores, like
/// the engine's bound on scripts, so plugins cannot take every blocking thread.
fn plugin_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.max(2))
    })
}

/// Runs `f` on `node` on the blocking pool, within the plugin slots.
async fn on_pool<R: Send + 'static>(
    mut node: PluginNode,
    f: impl FnOnce(&mut PluginNode) -> R + Send + 'static,
) -> Result<(PluginNode, R), NodeError> {
    let permit = plugin_slots()
        .acquire()
        .await
        .map_err(|_| NodeError::new("the blocking pool is closed"))?;
    let joined = tokio::task::spawn_blocking(move || {
        let r = f(&mut node);
        (node, r)
    })
    .await;
    drop(permit);
    joined.map_err(|e| NodeError::new(format!("plugin task lost: {e}")))
}

/// One run of the node: start the instance, then take batches from the inbox, run them
/// on the blocking pool, send what they emitted; rebuild the instance with backoff when
/// it keeps faulting.
async fn run(shared: Arc<Shared>, cx: NodeContext) -> Result<(), NodeError> {
    let port_ids = shared
        .ports
        .iter()
        .map(|name| {
            cx.outputs
                .port(name)
                .ok_or_else(|| NodeError::new(format!("no output port `{name}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let node = PluginNode {
        binding: Binding {
            node: cx.id.clone(),
            clock: cx.clock.clone(),
            kv: Some(StagedKv::new(cx.state.clone())),
            ports: shared.ports.clone(),
        },
        shared,
        port_ids,
        instance: None,
        faults_in_row: 0,
        rebuilds_in_row: 0,
        commit_failed: None,
    };
    let (mut node, started) = on_pool(node, PluginNode::start).await?;
    started?;
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(PLUGIN_BATCH);
    let mut emit = Emit::default();
    loop {
        if node.instance.is_none() {
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << node.rebuilds_in_row.min(10))
                .min(MAX_BACKOFF);
            tracing::warn!(
                node = %cx.id,
                "plugin faulted {FAULTS_BEFORE_REBUILD} times in a row; starting a fresh instance in {}",
                plugin::limits::duration_text(backoff)
            );
            cx.clock.sleep(backoff).await;
            node.rebuilds_in_row = node.rebuilds_in_row.saturating_add(1);
            let (back, started) = on_pool(node, PluginNode::start).await?;
            node = back;
            started?;
        }
        if inbox.recv_many(&mut batch, PLUGIN_BATCH).await == 0 {
            return Ok(());
        }
        cx.stats
            .received
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let work = std::mem::take(&mut batch);
        let (back, (rest, mut out)) = on_pool(node, move |node| {
            let mut work = work;
            let mut out = Emit::default();
            node.process_batch(&mut work, &mut out);
            // Before anything of the batch leaves: its state is durable, or it all fails.
            if let Err(reason) = node.finish_batch() {
                out.fail_all(&reason);
            }
            (work, out)
        })
        .await?;
        node = back;
        std::mem::swap(&mut emit, &mut out);
        cx.outputs.flush(&mut emit).await;
        if !rest.is_empty() {
            // The instance is being rebuilt; these wait in the inbox, in order, and are
            // counted as received when they come back.
            cx.stats
                .received
                .fetch_sub(rest.len() as u64, std::sync::atomic::Ordering::Relaxed);
            inbox.requeue_front(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome, StateStore};

    /// Compiles `tests/plugins/NAME.wat` into `dir/NAME.wasm`.
    fn plugin_file(dir: &Path, name: &str) -> PathBuf {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/plugins")
            .join(format!("{name}.wat"));
        let bytes = wat::parse_file(&source).unwrap();
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn tracked(topic: &str, payload: &str) -> (Msg, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let msg = Msg::tracked(topic, payload.to_string(), 7, move |o| {
            let _ = tx.send(o);
        });
        (msg, rx)
    }

    fn start(dir: &Path, name: &str, extra: &str) -> NodeHarness {
        let path = plugin_file(dir, name);
        let options = format!("plugin: {}\n{extra}", path.display());
        NodeHarness::start_in("wasm", &options, Clock::system(), dir.join("data")).unwrap()
    }

    #[tokio::test]
    async fn passes_messages_through_keeping_topic_headers_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = start(dir.path(), "passthrough", "");
        let (mut msg, outcome) = tracked("meters/1", r#"{"w":5}"#);
        msg.headers_mut().insert("unit".into(), "W".into());
        h.send(msg).await;
        let out = h.recv("out").await.unwrap();
        assert_eq!(&*out.topic, "meters/1");
        assert_eq!(out.payload, r#"{"w":5}"#);
        assert_eq!(out.headers["unit"], "W");
        assert_eq!(out.timestamp_ms, 7);
        out.done();
        assert_eq!(outcome.await.unwrap(), Outcome::Done);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn emits_to_two_ports_drops_and_reads_the_engine_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_file(dir.path(), "fanout");
        let clock = Clock::virtual_at(1_767_225_600_000);
        let mut h = NodeHarness::start_in(
            "wasm",
            &format!("plugin: {}\nports: [out, alert]", path.display()),
            clock,
            dir.path().join("data"),
        )
        .unwrap();
        let (drop_me, dropped) = tracked("drop/me", "x");
        h.send(drop_me).await;
        assert_eq!(
            dropped.await.unwrap(),
            Outcome::Done,
            "filtered out is done"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let (msg, outcome) = tracked("meters/1", "7");
        h.send(msg).await;
        let copy = h.recv("out").await.unwrap();
        assert_eq!((&*copy.topic, &copy.payload[..]), ("meters/1", &b"7"[..]));
        let alert = h.recv("alert").await.unwrap();
        assert_eq!((&*alert.topic, &alert.payload[..]), ("alert", &b"hi"[..]));
        assert!(
            alert.timestamp_ms >= 1_767_225_605_000 && alert.timestamp_ms < 1_767_225_606_000,
            "now_ms follows the virtual clock: {}",
            alert.timestamp_ms
        );
        assert_eq!(copy.id, alert.id, "children of one input");
        copy.done();
        let mut outcome = outcome;
        assert!(
            outcome.try_recv().is_err(),
            "acked only when every child is done"
        );
        alert.done();
        assert_eq!(outcome.await.unwrap(), Outcome::Done);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn hostile_plugins_fail_each_message_on_the_error_port() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "trap",
                "",
                "plugin trapped: wasm `unreachable` instruction executed",
            ),
            (
                "grow",
                "",
                "plugin exceeded its memory limit of 1MiB (it asked for 1088KiB)",
            ),
            (
                "oob",
                "",
                "emit out of bounds: record at 2147418112 of 100 bytes, the plugin's memory has 65536 bytes",
            ),
            (
                "flood",
                "",
                "emit limit reached: 16777216 bytes already emitted in this call, 1048576 more exceed 16MiB (limits.max_emit_bytes)",
            ),
        ];
        for (name, _, reason) in cases {
            // The flood gets time enough that the bytes limit, not the clock, stops it.
            let limits = match name {
                "grow" => "limits: { memory: 1MiB }",
                "flood" => "limits: { timeout: 20s }",
                _ => "",
            };
            let mut h = start(dir.path(), name, limits);
            let mut outcomes = Vec::new();
            for i in 0..3 {
                let (msg, outcome) = tracked("t", &format!("{i}"));
                h.send(msg).await;
                outcomes.push(outcome);
            }
            for i in 0..3 {
                let failed = h.recv("error").await.unwrap();
                assert_eq!(failed.payload, format!("{i}"), "{name}");
                assert_eq!(failed.headers["error"], reason, "{name}");
                assert_eq!(failed.headers["error_node"], "test/node");
                failed.done();
            }
            for outcome in outcomes {
                assert_eq!(
                    outcome.await.unwrap(),
                    Outcome::Done,
                    "{name}: accounted for"
                );
            }
            assert!(h.drain("out").is_empty(), "{name}: nothing emitted");
            assert_eq!(
                h.stats().failed.load(std::sync::atomic::Ordering::Relaxed),
                3
            );
            h.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_plugin_that_keeps_timing_out_is_rebuilt_and_the_rest_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = start(dir.path(), "spin", "limits: { timeout: 50ms }");
        for i in 0..6 {
            h.send(Msg::new("spin", format!("{i}"), 0)).await;
        }
        h.send(Msg::new("ok", "after", 0)).await;
        for i in 0..6 {
            let failed = h.recv("error").await.unwrap();
            assert_eq!(failed.payload, format!("{i}"));
            assert_eq!(failed.headers["error"], "plugin timed out after 50ms");
        }
        // The seventh message waited for the fresh instance and passes.
        assert_eq!(h.recv("out").await.unwrap().payload, "after");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn kv_state_is_committed_with_the_message_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_file(dir.path(), "counter");
        let state = StateStore::memory();
        let options = format!("plugin: {}\nconfig: {{ a: 1, b: [x] }}", path.display());
        let mut h = NodeHarness::start_with_state(
            "wasm",
            &options,
            Clock::system(),
            dir.path().join("data"),
            state.clone(),
        )
        .unwrap();
        for topic in ["t", "t", "fail", "t"] {
            h.send(Msg::new(topic, "", 0)).await;
        }
        let counts: Vec<_> = [
            h.recv("out").await.unwrap(),
            h.recv("out").await.unwrap(),
            h.recv("out").await.unwrap(),
        ]
        .into_iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
        assert_eq!(
            counts,
            ["1", "2", "3"],
            "the failed call's write was discarded"
        );
        let failed = h.recv("error").await.unwrap();
        assert_eq!(failed.headers["error"], "plugin returned 1");
        h.shutdown().await;
        let kv = state.node("test/node");
        assert_eq!(kv.get("count").unwrap(), Some(b"3".to_vec()));
        assert_eq!(
            kv.get("config").unwrap(),
            Some(br#"{"a":1,"b":["x"]}"#.to_vec())
        );
        // A new run on the same store goes on counting.
        let mut again = NodeHarness::start_with_state(
            "wasm",
            &options,
            Clock::system(),
            dir.path().join("data"),
            state,
        )
        .unwrap();
        again.send(Msg::new("t", "", 0)).await;
        assert_eq!(again.recv("out").await.unwrap().payload, "4");
        again.shutdown().await;
    }

    #[tokio::test]
    async fn a_batch_of_kv_writes_is_one_commit_and_a_failed_one_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_file(dir.path(), "counter");
        let state = StateStore::memory();
        let kv = state.node("test/node");
        let mut h = NodeHarness::start_with_state(
            "wasm",
            &format!("plugin: {}", path.display()),
            Clock::system(),
            dir.path().join("data"),
            state.clone(),
        )
        .unwrap();
        h.send(Msg::new("t", "", 0)).await;
        assert_eq!(h.recv("out").await.unwrap().payload, "1");
        let before = state.store().stats().requests;
        // Queued before the node runs (one runtime thread): few batches, few commits.
        for _ in 0..40 {
            h.send(Msg::new("t", "", 0)).await;
        }
        for expected in 2..=41 {
            let out = h.recv("out").await.unwrap();
            assert_eq!(out.payload, expected.to_string());
            let stored: u64 = String::from_utf8(kv.get("count").unwrap().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert!(stored >= expected, "sent on before its count was stored");
        }
        let commits = state.store().stats().requests - before;
        assert!(
            commits < 40,
            "{commits} commits for 40 messages: not batched"
        );

        // The disk is gone: the count does not go on, the messages fail.
        state.store().close().await.unwrap();
        h.send(Msg::new("t", "", 0)).await;
        let failed = h.recv("error").await.unwrap();
        assert_eq!(
            failed.headers["error"],
            "plugin state could not be saved: store is closed"
        );
        assert_eq!(kv.get("count").unwrap(), Some(b"41".to_vec()));
        h.shutdown().await;
    }

    #[test]
    fn options_and_bad_modules_are_reported_at_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let err = |options: &str| {
            NodeHarness::start_in("wasm", options, Clock::system(), dir.path().into())
                .err()
                .unwrap()
        };
        assert!(
            err("plugin: nope.wasm").starts_with("plugin: cannot read plugin `./nope.wasm`"),
            "{}",
            err("plugin: nope.wasm")
        );
        let missing = plugin_file(dir.path(), "missing_export");
        assert!(
            err(&format!("plugin: {}", missing.display()))
                .ends_with("missing export `hw_on_message` (fn(i32, i32) -> i32)")
        );
        let ok = plugin_file(dir.path(), "passthrough");
        assert_eq!(
            err(&format!(
                "plugin: {}\nports: [out, out, error]\nlimits: {{ stack: 8MiB, timeout: 0s }}",
                ok.display()
            )),
            "ports[1]: port `out` is listed twice; ports[2]: `error` is the error port every node has; name this port otherwise; limits.timeout: the timeout must be at least 1ms; limits.stack: the stack limit must be between 64KiB and 1MiB (plugins run on the host thread's stack)"
        );
    }

    /// The located errors of loading and building `yaml` in `dir` (as `check` does).
    fn load_error(dir: &Path, yaml: &str) -> Vec<String> {
        let set = crate::flow::load_sources(
            vec![(dir.join("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .expect("the flow file parses");
        set.plan(&dir.join("data"), &Clock::system())
            .err()
            .expect("building fails")
            .headlines()
    }

    #[test]
    fn check_locates_a_bad_plugin_in_the_flow_file() {
        let dir = tempfile::tempdir().unwrap();
        plugin_file(dir.path(), "bad_version");
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      calc:
        type: wasm
        inputs: [tick]
        plugin: bad_version.wasm
";
        let headlines = load_error(dir.path(), yaml);
        assert_eq!(headlines.len(), 1, "{headlines:?}");
        assert!(
            headlines[0].contains("f.yaml:9:17: f/calc: `plugin`: plugin `"),
            "{headlines:?}"
        );
        assert!(
            headlines[0].ends_with(
                "bad_version.wasm`: plugin ABI version 2, this headwater speaks version 1"
            ),
            "{headlines:?}"
        );
    }
}
