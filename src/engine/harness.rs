//! Runs one node through the real engine with a feed on its input and a collector on
//! each output port: for unit tests of node kinds (and later `headwater test`).
//!
//! Use it on a paused tokio runtime (`#[tokio::test(start_paused = true)]`) with
//! [`Clock::virtual_at`] for time-based nodes: tokio jumps its clock forward whenever
//! every task is idle, and `tokio::time::advance` moves it by hand.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{
    Clock, Engine, EngineOptions, FlowPlan, GraphPlan, InputPlan, Msg, NodeContext, NodeFuture,
    NodePlan, Overflow, StateStore,
};
use crate::flow::tree;
use crate::nodes::registry::{self, BuildContext};

/// One node under test.
pub struct NodeHarness {
    feed: Option<mpsc::Sender<Msg>>,
    outputs: HashMap<String, mpsc::UnboundedReceiver<Msg>>,
    engine: Option<Engine>,
    gpio_sim: crate::nodes::gpio::SimChips,
}

/// Name of the node under test inside the harness flow (`test/node`).
pub const NODE: &str = "node";

impl NodeHarness {
    /// Parses `options` (YAML, without `type`/`inputs`) for `type_name`, builds and
    /// starts the node. Errors are the located-less issue messages.
    pub fn start(type_name: &str, options: &str, clock: Clock) -> Result<NodeHarness, String> {
        Self::start_in(type_name, options, clock, std::env::temp_dir())
    }

    /// Like [`NodeHarness::start`] with a chosen data directory.
    pub fn start_in(
        type_name: &str,
        options: &str,
        clock: Clock,
        data_dir: PathBuf,
    ) -> Result<NodeHarness, String> {
        Self::start_with_state(type_name, options, clock, data_dir, StateStore::memory())
    }

    /// Like [`NodeHarness::start_in`] with the node's persistent state kept in `state`
    /// (its state key is `test/node`): a second harness on the same store sees what the
    /// first one committed, as a restarted process would.
    pub fn start_with_state(
        type_name: &str,
        options: &str,
        clock: Clock,
        data_dir: PathBuf,
        state: StateStore,
    ) -> Result<NodeHarness, String> {
        let kind =
            registry::lookup(type_name).ok_or_else(|| format!("unknown type {type_name}"))?;
        let tree = tree::parse(options).map_err(|e| e.message)?;
        let json = match tree.value {
            tree::Value::Null => serde_json::json!({}),
            _ => tree.to_json(),
        };
        let issues_text = |issues: Vec<registry::ConfigIssue>| {
            issues
                .into_iter()
                .map(|i| {
                    if i.path.is_empty() {
                        i.message
                    } else {
                        format!("{}: {}", i.path, i.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let config = kind.parse(json).map_err(issues_text)?;
        let cx = BuildContext {
            id: super::NodeId::new("test", NODE),
            base_dir: PathBuf::from("."),
            data_dir: data_dir.clone(),
            clock: clock.clone(),
            state_key: format!("test/{NODE}"),
        };
        let factory = config.build(&cx).map_err(issues_text)?;
        let mut ports = config.ports();
        ports.push("error".into());

        let mut nodes = Vec::new();
        let (feed_tx, feed_rx) = mpsc::channel::<Msg>(1024);
        let has_inputs = kind.role() != registry::Role::Source;
        if has_inputs {
            let feed_rx = Arc::new(tokio::sync::Mutex::new(feed_rx));
            nodes.push(NodePlan {
                name: "feed".into(),
                kind: "harness.feed",
                factory: Arc::new(move |cx: NodeContext| -> NodeFuture {
                    let feed_rx = feed_rx.clone();
                    Box::pin(async move {
                        let mut rx = feed_rx.lock().await;
                        while let Some(msg) = rx.recv().await {
                            cx.emit(msg).await;
                        }
                        Ok(())
                    })
                }),
                ports: vec!["out".into()],
                inputs: Vec::new(),
                state_key: "test/feed".into(),
                buffer: None,
            });
        }
        nodes.push(NodePlan {
            name: NODE.into(),
            kind: kind.type_name(),
            factory,
            ports: config.ports(),
            inputs: if has_inputs {
                vec![InputPlan {
                    node: "feed".into(),
                    port: "out".into(),
                    capacity: 1024,
                    overflow: Overflow::Block,
                }]
            } else {
                Vec::new()
            },
            state_key: format!("test/{NODE}"),
            buffer: None,
        });
        let mut outputs = HashMap::new();
        for port in ports {
            let port_name = port.clone();
            let (tx, rx) = mpsc::unbounded_channel();
            outputs.insert(port.clone(), rx);
            let tx = Arc::new(Mutex::new(tx));
            nodes.push(NodePlan {
                name: format!("collect_{port}"),
                kind: "harness.collect",
                factory: Arc::new(move |mut cx: NodeContext| -> NodeFuture {
                    let tx = tx.clone();
                    Box::pin(async move {
                        while let Some(msg) = cx.recv().await {
                            let sender = tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            if let Err(returned) = sender.send(msg) {
                                returned.0.done();
                            }
                        }
                        Ok(())
                    })
                }),
                ports: Vec::new(),
                inputs: vec![InputPlan {
                    node: NODE.into(),
                    port,
                    capacity: 1024,
                    overflow: Overflow::Block,
                }],
                state_key: format!("test/collect_{port_name}"),
                buffer: None,
            });
        }
        let gpio_sim = crate::nodes::gpio::SimChips::default();
        let engine = Engine::start(
            GraphPlan {
                flows: vec![FlowPlan {
                    name: "test".into(),
                    nodes,
                }],
            },
            EngineOptions {
                clock,
                data_dir,
                drain_deadline: std::time::Duration::from_secs(5),
                broker: None,
                state,
                gpio_sim: gpio_sim.clone(),
            },
        );
        Ok(NodeHarness {
            feed: has_inputs.then_some(feed_tx),
            outputs,
            engine: Some(engine),
            gpio_sim,
        })
    }

    /// Sends a message into the node's input.
    pub async fn send(&self, msg: Msg) {
        let feed = self
            .feed
            .as_ref()
            .expect("the node under test is a source and has no input");
        if feed.send(msg).await.is_err() {
            panic!("the harness feed is closed");
        }
    }

    /// Closes the node's input: it should drain and finish.
    pub fn close_input(&mut self) {
        self.feed = None;
    }

    /// Waits for the next message on `port`; `None` once the node has finished.
    pub async fn recv(&mut self, port: &str) -> Option<Msg> {
        self.outputs
            .get_mut(port)
            .unwrap_or_else(|| panic!("no port {port}"))
            .recv()
            .await
    }

    /// Everything that has arrived on `port` so far, without waiting.
    pub fn drain(&mut self, port: &str) -> Vec<Msg> {
        let rx = self
            .outputs
            .get_mut(port)
            .unwrap_or_else(|| panic!("no port {port}"));
        let mut out = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            out.push(msg);
        }
        out
    }

    /// Lets every ready task run until none is left ready. On a single-threaded runtime
    /// this is deterministic: nothing else can make progress meanwhile.
    pub async fn settle(&self) {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    /// The simulated GPIO chips the node sees (`chip: sim:NAME`): drive its lines here.
    pub fn gpio_sim(&self) -> crate::nodes::gpio::SimChips {
        self.gpio_sim.clone()
    }

    /// Node statistics of the node under test.
    pub fn stats(&self) -> Arc<super::NodeStats> {
        self.engine
            .as_ref()
            .and_then(|e| e.node("test", NODE))
            .map(|h| h.stats.clone())
            .expect("engine running")
    }

    /// Closes the input and shuts the engine down.
    pub async fn shutdown(mut self) -> super::ShutdownReport {
        self.feed = None;
        let engine = self.engine.take().expect("engine running");
        engine.shutdown().await
    }
}

/// A JSON message for tests, untracked.
pub fn json_msg(topic: &str, payload: serde_json::Value) -> Msg {
    Msg::new(topic, payload.to_string(), 0)
}
