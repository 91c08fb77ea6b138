//! `script`: runs a Rhai script per message (Node-RED's function node). The engine
//! set-up, limits and the `msg` map live in [`crate::script`]; this file holds the
//! options, the ports and the verdict each message gets.
//!
//! `state` writes of a message count once its script succeeded (a failed run changes
//! nothing); the writes of a whole batch are committed to the node's store in one
//! atomic, durable commit at the end of the batch ([`Transform::finish_batch`]), before
//! any of the batch's output leaves: a crash never loses a change whose message went on.
//! If that commit fails, every message of the batch goes to the `error` port.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rhai::Scope;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::{
    Emit, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, PortId, Transform,
    run_transform_blocking,
};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};
use crate::script::{Limits, Origin, Returned, ReturnedPayload, Script, ScriptState, returned};

use super::switch::check_port_name;

/// Options of a `script` node. Give exactly one of `rhai` and `file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// The script, inline. It sees `msg` (`topic`, `payload`, `headers`, `timestamp`,
    /// `id`) and `state` (persistent: `state.get(key)`, `state.set(key, value)`,
    /// `state.remove(key)`), and returns `msg`, an array of messages, or `()` to drop it.
    pub rhai: Option<String>,
    /// A `.rhai` file holding the script, relative to the flow file.
    pub file: Option<String>,
    /// Extra output ports besides `out`; a returned message with `port: "name"` goes
    /// there.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Limits on one run of the script.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Limits on one run of a script; exceeding one sends that message to the `error` port.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most Rhai operations per message (default 1000000; 0: unlimited).
    pub max_operations: Option<u64>,
    /// Longest string in bytes (default 1048576; 0: unlimited).
    pub max_string_size: Option<usize>,
    /// Most elements of an array (default 100000; 0: unlimited).
    pub max_array_size: Option<usize>,
    /// Most entries of a map (default 10000; 0: unlimited).
    pub max_map_size: Option<usize>,
    /// Deepest function call nesting (default 64).
    #[schemars(range(min = 1))]
    pub max_call_depth: Option<usize>,
    /// Wall-clock time one message may take (default `100ms`).
    pub timeout: Option<HumanDuration>,
}

impl LimitsConfig {
    fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_operations: self.max_operations.unwrap_or(d.max_operations),
            max_string_size: self.max_string_size.unwrap_or(d.max_string_size),
            max_array_size: self.max_array_size.unwrap_or(d.max_array_size),
            max_map_size: self.max_map_size.unwrap_or(d.max_map_size),
            max_call_depth: self.max_call_depth.unwrap_or(d.max_call_depth),
            timeout: self.timeout.map_or(d.timeout, |t| t.get()),
        }
    }
}

impl ScriptConfig {
    fn source(&self, base_dir: &std::path::Path) -> Result<(String, Origin), ConfigIssue> {
        match (&self.rhai, &self.file) {
            (Some(text), None) => Ok((
                text.clone(),
                Origin::Inline {
                    base_dir: base_dir.to_path_buf(),
                },
            )),
            (None, Some(file)) => {
                let path = base_dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigIssue::new("file", format!("cannot read `{}`: {e}", path.display()))
                })?;
                Ok((text, Origin::File { path }))
            }
            (Some(_), Some(_)) => Err(ConfigIssue::new(
                "file",
                "give the script either inline (`rhai`) or as a file (`file`), not both",
            )),
            (None, None) => Err(ConfigIssue::new(
                "",
                "a script needs `rhai` (the script inline) or `file` (a .rhai file)",
            )),
        }
    }
}

impl Config for ScriptConfig {
    const TYPE: &'static str = "script";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Runs a Rhai script per message: reshape, compute, route or drop";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        for (i, port) in self.outputs.iter().enumerate() {
            if let Err(e) = check_port_name(port) {
                issues.push(ConfigIssue::new(format!("outputs[{i}]"), e));
            } else if port == "out" || self.outputs[..i].contains(port) {
                issues.push(ConfigIssue::new(
                    format!("outputs[{i}]"),
                    format!("port `{port}` is listed twice (`out` is always there)"),
                ));
            }
        }
        if self
            .limits
            .timeout
            .is_some_and(|t| t.get() < Duration::from_millis(1))
        {
            issues.push(ConfigIssue::new(
                "limits.timeout",
                "the timeout must be at least 1ms",
            ));
        }
        if self.limits.max_call_depth == Some(0) {
            issues.push(ConfigIssue::new(
                "limits.max_call_depth",
                "the call depth must be at least 1",
            ));
        }
        issues
    }

    fn ports(&self) -> Vec<String> {
        let mut ports = vec!["out".to_string()];
        ports.extend(self.outputs.iter().cloned());
        ports
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let (source, origin) = self.source(&cx.base_dir).map_err(|e| vec![e])?;
        let script =
            Script::compile(&source, &origin, &self.limits.limits(), &cx.id).map_err(|e| {
                let issue = match (&origin, e.position) {
                    (Origin::Inline { .. }, Some((line, col))) => {
                        ConfigIssue::inside("rhai", line, col, e.message)
                    }
                    (Origin::Inline { .. }, None) => ConfigIssue::new("rhai", e.message),
                    (Origin::File { path }, position) => {
                        let at = position.map_or(String::new(), |(l, c)| format!(":{l}:{c}"));
                        ConfigIssue::new("file", format!("{}{at}: {}", path.display(), e.message))
                    }
                };
                vec![issue]
            })?;
        let script = Arc::new(script);
        let ports = self.ports();
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            let node = ScriptNode::new(script.clone(), &ports, &cx);
            Box::pin(run_transform_blocking(node, cx))
        }))
    }
}

/// One run of a script node: the compiled script, its state, its ports.
struct ScriptNode {
    script: Arc<Script>,
    scope: Scope<'static>,
    /// The `state` in `scope`: holds a run's and the batch's writes until they are
    /// committed.
    state: ScriptState,
    ports: Vec<(String, PortId)>,
    /// Why an early commit in this batch failed (the batch held too much to wait); the
    /// whole batch then fails in `finish_batch`.
    commit_failed: Option<String>,
}

impl ScriptNode {
    fn new(script: Arc<Script>, names: &[String], cx: &NodeContext) -> Self {
        let ports = names
            .iter()
            .filter_map(|name| Some((name.clone(), cx.outputs.port(name)?)))
            .collect();
        let state = ScriptState::new(cx.state.clone());
        ScriptNode {
            script,
            scope: Script::new_state(state.clone()),
            state,
            ports,
            commit_failed: None,
        }
    }

    fn port(&self, name: Option<&str>) -> Result<PortId, String> {
        let name = name.unwrap_or("out");
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                format!(
                    "the script sent to port `{name}`, which this node does not list in `outputs`"
                )
            })
    }
}

/// Applies what the script returned to `msg`.
fn apply(mut msg: Msg, out: Returned) -> Msg {
    if let Some(topic) = out.topic
        && *msg.topic != *topic
    {
        msg = msg.with_topic(topic);
    }
    if let Some(headers) = out.headers {
        let map = msg.headers_mut();
        map.clear();
        map.extend(headers);
    }
    match out.payload {
        ReturnedPayload::Empty => msg.with_payload(Bytes::new()),
        ReturnedPayload::Raw(bytes) => msg.with_payload(bytes),
        ReturnedPayload::Json(bytes) => msg.with_payload(bytes),
    }
}

impl Transform for ScriptNode {
    fn process(&mut self, msg: Msg, emit: &mut Emit) {
        // Writes left over from a run that panicked belong to no message.
        self.state.discard();
        let result = self
            .script
            .run(&mut self.scope, &msg)
            .and_then(returned)
            .map_err(|e| e.0)
            .and_then(|outs| {
                let ports = outs
                    .iter()
                    .map(|o| self.port(o.port.as_deref()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((outs, ports))
            });
        let (mut outs, ports) = match result {
            Ok(ok) => ok,
            Err(reason) => {
                self.state.discard();
                return emit.error(msg, reason);
            }
        };
        // The run's writes join the batch's, committed in `finish_batch` before any output
        // leaves. A batch that grew too large is committed now (this runs on the blocking
        // pool, where waiting for the fsync is fine); committing early is always safe,
        // the outputs still wait for the end of the batch.
        if self.state.end_run()
            && self.commit_failed.is_none()
            && let Err(e) = self.state.commit_batch()
        {
            self.commit_failed = Some(format!("cannot save the script's state: {e}"));
        }
        match outs.len() {
            // Dropped: "done" must still wait for the state commit.
            0 => emit.done(msg),
            1 => {
                let out = outs.pop().unwrap_or_default();
                emit.to(ports[0], apply(msg, out));
            }
            _ => {
                for (out, port) in outs.into_iter().zip(ports) {
                    let copy = msg.derive(msg.topic.clone(), msg.payload.clone());
                    emit.to(port, apply(copy, out));
                }
                // The children carry the verdict; they wait for the commit.
                msg.done();
            }
        }
    }

    /// Commits the batch's `state` writes in one durable commit; see the module docs.
    fn finish_batch(&mut self) -> Result<(), NodeError> {
        // Writes of a run that panicked belong to no message that goes on.
        self.state.discard();
        if let Some(reason) = self.commit_failed.take() {
            // Later runs of the batch read state without the lost writes: drop theirs too,
            // so what is stored stays what the delivered messages saw.
            self.state.discard_batch();
            return Err(NodeError(reason));
        }
        self.state
            .commit_batch()
            .map_err(|e| NodeError::new(format!("cannot save the script's state: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use std::path::PathBuf;

    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome};

    /// A tracked message and the receiver of its outcome. Scripts run on the blocking
    /// pool, so tests wait for outcomes instead of settling the runtime.
    fn tracked(topic: &str, payload: &str) -> (Msg, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let msg = Msg::tracked(topic, payload.to_string(), 0, move |o| {
            let _ = tx.send(o);
        });
        (msg, rx)
    }

    #[tokio::test]
    async fn reads_one_field_and_sets_another() {
        let mut h = NodeHarness::start(
            "script",
            "rhai: 'msg.payload.w = msg.payload.v * 2; msg.topic = \"out/\" + msg.topic; msg'",
            Clock::system(),
        )
        .unwrap();
        h.send(Msg::new("a", r#"{"v": 21}"#, 0)).await;
        let out = h.recv("out").await.unwrap();
        assert_eq!(&*out.topic, "out/a");
        assert_eq!(out.payload, r#"{"v":21,"w":42}"#);
        assert_eq!(out.payload_json().unwrap()["w"], 42);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn drops_splits_and_routes_with_acks() {
        let script = "\
rhai: |
  if msg.payload.kind == \"skip\" { return (); }
  if msg.payload.kind == \"many\" {
    let topic = msg.topic;
    return msg.payload.items.map(|v| #{ topic: topic, payload: v, port: if v > 1 { \"high\" } else { () } });
  }
  msg
outputs: [high]
";
        let mut h = NodeHarness::start("script", script, Clock::system()).unwrap();
        let (skip, skip_outcome) = tracked("t", r#"{"kind": "skip"}"#);
        h.send(skip).await;
        let (many, mut many_outcome) = tracked("t", r#"{"kind": "many", "items": [1, 2, 3]}"#);
        h.send(many).await;
        assert_eq!(skip_outcome.await.unwrap(), Outcome::Done);
        let low = h.recv("out").await.unwrap();
        assert_eq!(low.payload, "1");
        let high = [h.recv("high").await.unwrap(), h.recv("high").await.unwrap()];
        assert_eq!(high[0].payload, "2");
        assert_eq!(high[1].payload, "3");
        // The derived messages are held here: the source waits for them all.
        low.done();
        let [a, b] = high;
        a.done();
        assert!(many_outcome.try_recv().is_err());
        b.done();
        assert_eq!(many_outcome.await.unwrap(), Outcome::Done);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn an_endless_loop_is_stopped_and_the_flow_goes_on() {
        let mut h = NodeHarness::start(
            "script",
            "rhai: 'if msg.payload == \"spin\" { loop {} } msg'\nlimits: { timeout: 50ms, max_operations: 0 }",
            Clock::system(),
        )
        .unwrap();
        h.send(Msg::new("t", "spin", 0)).await;
        h.send(Msg::new("t", "after", 0)).await;
        let failed = h.recv("error").await.unwrap();
        assert_eq!(failed.payload, "spin");
        assert!(
            failed.headers["error"].starts_with("script ran longer than its timeout of 50ms"),
            "{:?}",
            failed.headers
        );
        assert_eq!(h.recv("out").await.unwrap().payload, "after");

        // The operation limit (on by default) stops it too; the timeout is set far away so
        // the limit, not the clock, ends the loop however slow the machine (or qemu) is.
        let mut h2 = NodeHarness::start(
            "script",
            "rhai: 'loop {}'\nlimits: { timeout: 1h }",
            Clock::system(),
        )
        .unwrap();
        h2.send(Msg::new("t", "x", 0)).await;
        let failed = h2.recv("error").await.unwrap();
        assert!(failed.headers["error"].starts_with("script exceeded its operation limit"));
        h.shutdown().await;
        h2.shutdown().await;
    }

    #[tokio::test]
    async fn runtime_errors_go_to_the_error_port_with_their_position() {
        let mut h = NodeHarness::start(
            "script",
            "rhai: |\n  let x = 1;\n  msg.payload = x / msg.payload.n;\n  msg",
            Clock::system(),
        )
        .unwrap();
        h.send(Msg::new("t", r#"{"n": 0}"#, 0)).await;
        h.send(Msg::new("t", r#"{"n": 1}"#, 0)).await;
        let failed = h.recv("error").await.unwrap();
        assert!(
            failed.headers["error"].contains("Division by zero")
                && failed.headers["error"].contains("line 2"),
            "{:?}",
            failed.headers
        );
        assert_eq!(h.recv("out").await.unwrap().payload, "1");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn an_unlisted_port_is_an_error() {
        let mut h = NodeHarness::start(
            "script",
            "rhai: 'msg.port = \"nope\"; msg'",
            Clock::system(),
        )
        .unwrap();
        h.send(Msg::new("t", "x", 0)).await;
        let failed = h.recv("error").await.unwrap();
        assert_eq!(
            failed.headers["error"],
            "the script sent to port `nope`, which this node does not list in `outputs`"
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("script", options, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(
            err("outputs: [a]"),
            "a script needs `rhai` (the script inline) or `file` (a .rhai file)"
        );
        assert_eq!(
            err("rhai: msg\nfile: x.rhai"),
            "file: give the script either inline (`rhai`) or as a file (`file`), not both"
        );
        assert_eq!(
            err("rhai: msg\noutputs: [out, error, a, a]"),
            "outputs[0]: port `out` is listed twice (`out` is always there); outputs[1]: `error` is the error port every node has; name this port otherwise; outputs[3]: port `a` is listed twice (`out` is always there)"
        );
        assert!(
            err("file: does-not-exist.rhai")
                .starts_with("file: cannot read `./does-not-exist.rhai`")
        );
    }

    #[tokio::test]
    async fn state_is_committed_per_message_and_survives_a_restart() {
        let script = "\
rhai: |
  let n = state.get(\"n\", 0) + 1;
  state.set(\"n\", n);
  state.last = msg.payload;
  if msg.payload == \"fail\" { throw \"refused\"; }
  msg.payload = #{ n: n, before: state.get(\"before\") };
  state.set(\"before\", msg.payload);
  msg
";
        let store = crate::engine::StateStore::memory();
        let kv = store.node("test/node");
        let start = || start_on_state(script, &store);
        let mut h = start();
        for payload in ["a", "fail", "b"] {
            h.send(Msg::new("t", payload, 0)).await;
        }
        let first = h.recv("out").await.unwrap();
        let json = |m: &Msg| (*m.payload_json().unwrap()).clone();
        assert_eq!(json(&first), serde_json::json!({"n": 1, "before": null}));
        // The failed run's writes were dropped: `n` goes on from 1, `last` is "a".
        let failed = h.recv("error").await.unwrap();
        assert_eq!(failed.payload, "fail");
        let second = h.recv("out").await.unwrap();
        assert_eq!(
            json(&second),
            serde_json::json!({"n": 2, "before": {"n": 1, "before": null}})
        );
        // Committed before the message left the node.
        assert_eq!(kv.get("n").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get("last").unwrap(), Some(b"\"b\"".to_vec()));
        h.shutdown().await;

        let mut h = start();
        h.send(Msg::new("t", "c", 0)).await;
        let third = h.recv("out").await.unwrap();
        assert_eq!(third.payload_json().unwrap()["n"], 3);
        h.shutdown().await;
    }

    /// A script node whose persistent state lives in `store` (in memory, node `test/node`).
    fn start_on_state(script: &str, store: &crate::engine::StateStore) -> NodeHarness {
        NodeHarness::start_with_state(
            "script",
            script,
            Clock::system(),
            std::env::temp_dir(),
            store.clone(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_batch_shares_one_commit_and_nothing_leaves_before_it() {
        let script = "\
rhai: |
  let n = state.get(\"n\", 0) + 1;
  state.n = n;
  if msg.payload == \"drop\" { return (); }
  msg.payload = n;
  msg
";
        let store = crate::engine::StateStore::memory();
        let kv = store.node("test/node");
        let mut h = start_on_state(script, &store);
        let before = store.store().stats().requests;
        // Queued before the node runs (this runtime has one thread), so they come in few
        // batches; each run reads the writes of the runs before it in its batch.
        let mut outcomes = Vec::new();
        for i in 0..50 {
            let (msg, outcome) = tracked("t", if i == 49 { "drop" } else { "x" });
            h.send(msg).await;
            outcomes.push(outcome);
        }
        for expected in 1..=49 {
            let out = h.recv("out").await.unwrap();
            assert_eq!(out.payload, expected.to_string());
            // Whatever left the node was committed before it left.
            let stored: i64 = serde_json::from_slice(&kv.get("n").unwrap().unwrap()).unwrap();
            assert!(stored >= expected, "{stored} < {expected}");
            out.done();
        }
        // The dropped message is done only once its write is durable.
        let last = outcomes.pop().unwrap();
        assert_eq!(last.await.unwrap(), Outcome::Done);
        assert_eq!(kv.get("n").unwrap(), Some(b"50".to_vec()));
        for outcome in outcomes {
            assert_eq!(outcome.await.unwrap(), Outcome::Done);
        }
        let commits = store.store().stats().requests - before;
        assert!(
            commits < 50,
            "{commits} commits for 50 messages: not batched"
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn a_failed_state_commit_fails_the_batch_instead_of_passing_it_on() {
        let script = "rhai: 'state.n = state.get(\"n\", 0) + 1; if msg.payload == \"drop\" { return (); } msg'";
        let store = crate::engine::StateStore::memory();
        let kv = store.node("test/node");
        let mut h = start_on_state(script, &store);
        h.send(Msg::new("t", "x", 0)).await;
        assert_eq!(h.recv("out").await.unwrap().payload, "x");
        assert_eq!(kv.get("n").unwrap(), Some(b"1".to_vec()));
        // The disk is gone: no message whose state was lost is passed on or ended done.
        store.store().close().await.unwrap();
        h.send(Msg::new("t", "y", 0)).await;
        h.send(Msg::new("t", "drop", 0)).await;
        for payload in ["y", "drop"] {
            let failed = h.recv("error").await.unwrap();
            assert_eq!(failed.payload, payload);
            assert_eq!(
                failed.headers["error"],
                "cannot save the script's state: store is closed"
            );
        }
        // The node's view went back to what is stored: the lost writes are not read.
        h.send(Msg::new("t", "z", 0)).await;
        assert_eq!(h.recv("error").await.unwrap().payload, "z");
        assert_eq!(kv.get("n").unwrap(), Some(b"1".to_vec()));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn a_panic_mid_batch_commits_the_runs_before_it_and_nothing_of_its_own() {
        let script = "\
rhai: |
  state.n = state.get(\"n\", 0) + 1;
  state.last = msg.payload;
  if msg.payload == \"boom\" { state.boom = true; test_panic(\"host bug\"); }
  msg.payload = state.n;
  msg
";
        let store = crate::engine::StateStore::memory();
        let kv = store.node("test/node");
        let mut h = start_on_state(script, &store);
        let mut outcomes = Vec::new();
        for payload in ["a", "b", "boom", "c"] {
            let (msg, outcome) = tracked("t", payload);
            h.send(msg).await;
            outcomes.push(outcome);
        }
        let (a, b) = (h.recv("out").await.unwrap(), h.recv("out").await.unwrap());
        assert_eq!((&a.payload[..], &b.payload[..]), (&b"1"[..], &b"2"[..]));
        a.done();
        b.done();
        // The node restarts; "c" waited in the inbox and continues from the state of "b".
        let c = h.recv("out").await.unwrap();
        assert_eq!(c.payload, "3", "boom's increment was not committed");
        c.done();
        let results: Vec<Outcome> = futures_outcomes(outcomes).await;
        assert_eq!(results[0], Outcome::Done);
        assert_eq!(results[1], Outcome::Done);
        assert!(matches!(results[2], Outcome::Failed(_)), "{:?}", results[2]);
        assert_eq!(results[3], Outcome::Done);
        assert_eq!(
            kv.get("boom").unwrap(),
            None,
            "half a run is never committed"
        );
        assert_eq!(kv.get("last").unwrap(), Some(b"\"c\"".to_vec()));
        assert_eq!(kv.get("n").unwrap(), Some(b"3".to_vec()));
        h.shutdown().await;
    }

    async fn futures_outcomes(outcomes: Vec<oneshot::Receiver<Outcome>>) -> Vec<Outcome> {
        let mut results = Vec::new();
        for outcome in outcomes {
            results.push(outcome.await.unwrap());
        }
        results
    }

    /// The located errors of loading and building `yaml` (as `check` does).
    fn load_error(yaml: &str) -> Vec<String> {
        let set = crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .expect("the flow file parses");
        set.plan(std::path::Path::new("data"), &Clock::system())
            .err()
            .expect("building fails")
            .headlines()
    }

    #[test]
    fn compile_errors_point_into_the_flow_file() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      calc:
        type: script
        inputs: [tick]
        rhai: |
          let w = msg.payload;
          msg.payload = wat * 2;
          msg
";
        assert_eq!(
            load_error(yaml),
            ["f.yaml:11:25: f/calc: undefined variable: wat"]
        );
        let inline = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      calc: { type: script, inputs: [tick], rhai: \"msg.payload = (1 +; msg\" }
";
        let headlines = load_error(inline);
        assert_eq!(headlines.len(), 1);
        assert!(headlines[0].starts_with("f.yaml:6:"), "{headlines:?}");
    }
}
