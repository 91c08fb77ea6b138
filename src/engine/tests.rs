//! Engine behaviour through whole graphs of test nodes: acknowledgements across fan-out
//! and filtering, supervision of panicking nodes, draining shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::*;

fn input(node: &str, port: &str) -> InputPlan {
    InputPlan {
        node: node.into(),
        port: port.into(),
        capacity: 16,
        overflow: Overflow::Block,
    }
}

fn factory(f: impl Fn(NodeContext) -> NodeFuture + Send + Sync + 'static) -> Arc<dyn NodeFactory> {
    Arc::new(f)
}

/// A source that emits the messages it is fed through a channel, then waits for shutdown.
fn feed_source(rx: mpsc::Receiver<Msg>) -> Arc<dyn NodeFactory> {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    factory(move |cx| {
        let rx = rx.clone();
        Box::pin(async move {
            let mut rx = rx.lock().await;
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(msg) => cx.emit(msg).await,
                        None => return Ok(()),
                    },
                    () = cx.shutdown.cancelled() => return Ok(()),
                }
            }
        })
    })
}

/// A sink that records payloads and commits (done) each message.
fn recording_sink(log: Arc<Mutex<Vec<String>>>) -> Arc<dyn NodeFactory> {
    factory(move |mut cx| {
        let log = log.clone();
        Box::pin(async move {
            while let Some(msg) = cx.recv().await {
                log.lock().unwrap().push(format!(
                    "{}={}",
                    cx.id.node,
                    msg.payload_str().unwrap_or("?")
                ));
                msg.done();
            }
            Ok(())
        })
    })
}

/// A pass-through transform that drops payloads starting with `drop`.
struct DropPrefix;

impl Transform for DropPrefix {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        if msg.payload.starts_with(b"drop") {
            msg.done();
        } else {
            out.out(msg);
        }
    }
}

fn plan(nodes: Vec<NodePlan>) -> GraphPlan {
    GraphPlan {
        flows: vec![FlowPlan {
            name: "f".into(),
            nodes,
        }],
    }
}

fn node(
    name: &str,
    factory: Arc<dyn NodeFactory>,
    ports: &[&str],
    inputs: Vec<InputPlan>,
) -> NodePlan {
    NodePlan {
        name: name.into(),
        kind: "test",
        factory,
        ports: ports.iter().map(|p| p.to_string()).collect(),
        inputs,
        state_key: format!("test/{name}"),
        buffer: None,
    }
}

fn tracked(payload: &str) -> (Msg, tokio::sync::oneshot::Receiver<Outcome>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let msg = Msg::tracked("t", payload.to_string(), 0, move |o| {
        let _ = tx.send(o);
    });
    (msg, rx)
}

#[tokio::test]
async fn ack_waits_for_every_branch_of_a_fan_out() {
    let (feed_tx, feed_rx) = mpsc::channel(16);
    let log = Arc::new(Mutex::new(Vec::new()));
    // The slow sink commits only when the test says so.
    let release = Arc::new(Notify::new());
    let slow = {
        let release = release.clone();
        factory(move |mut cx| {
            let release = release.clone();
            Box::pin(async move {
                while let Some(msg) = cx.recv().await {
                    release.notified().await;
                    msg.done();
                }
                Ok(())
            })
        })
    };
    let filter = factory(|cx| Box::pin(run_transform(DropPrefix, cx)));
    let engine = Engine::start(
        plan(vec![
            node("src", feed_source(feed_rx), &["out"], vec![]),
            node("filter", filter, &["out"], vec![input("src", "out")]),
            node(
                "fast",
                recording_sink(log.clone()),
                &[],
                vec![input("filter", "out")],
            ),
            node("slow", slow, &[], vec![input("src", "out")]),
        ]),
        EngineOptions::default(),
    );

    let (msg, mut outcome) = tracked("keep");
    feed_tx.send(msg).await.unwrap();
    // The fast branch finishes, but the slow branch still holds its copy.
    wait_until(|| log.lock().unwrap().len() == 1).await;
    assert!(
        outcome.try_recv().is_err(),
        "acknowledged before the slow sink committed"
    );
    release.notify_one();
    assert_eq!(outcome.await.unwrap(), Outcome::Done);

    // Filtered on one branch, committed on the other: still done.
    let (msg, outcome) = tracked("drop me");
    feed_tx.send(msg).await.unwrap();
    release.notify_one();
    assert_eq!(outcome.await.unwrap(), Outcome::Done);
    assert_eq!(*log.lock().unwrap(), ["fast=keep"]);
    drop(feed_tx);
    assert_eq!(engine.shutdown().await, ShutdownReport::Drained);
}

#[tokio::test]
async fn a_failed_branch_fails_the_source_message() {
    let (feed_tx, feed_rx) = mpsc::channel(16);
    let failing = factory(|mut cx| {
        Box::pin(async move {
            while let Some(msg) = cx.recv().await {
                cx.outputs.emit_error(msg, "database refused the row").await;
            }
            Ok(())
        })
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine::start(
        plan(vec![
            node("src", feed_source(feed_rx), &["out"], vec![]),
            node("db", failing, &[], vec![input("src", "out")]),
            node("ok", recording_sink(log), &[], vec![input("src", "out")]),
        ]),
        EngineOptions::default(),
    );
    let (msg, outcome) = tracked("row");
    feed_tx.send(msg).await.unwrap();
    assert_eq!(
        outcome.await.unwrap(),
        Outcome::Failed("f/db: database refused the row".into())
    );
    let stats = engine.node("f", "db").unwrap().stats.clone();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    drop(feed_tx);
    engine.shutdown().await;
}

#[tokio::test]
async fn error_port_routes_failures_to_a_dead_letter_sink() {
    let (feed_tx, feed_rx) = mpsc::channel(16);
    let failing = factory(|mut cx| {
        Box::pin(async move {
            while let Some(msg) = cx.recv().await {
                cx.outputs.emit_error(msg, "bad row").await;
            }
            Ok(())
        })
    });
    let dead = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine::start(
        plan(vec![
            node("src", feed_source(feed_rx), &["out"], vec![]),
            node("db", failing, &[], vec![input("src", "out")]),
            node(
                "dead",
                recording_sink(dead.clone()),
                &[],
                vec![input("db", "error")],
            ),
        ]),
        EngineOptions::default(),
    );
    let (msg, outcome) = tracked("row");
    feed_tx.send(msg).await.unwrap();
    // Written to the dead-letter sink: a terminal state, committed.
    assert_eq!(outcome.await.unwrap(), Outcome::Done);
    assert_eq!(*dead.lock().unwrap(), ["dead=row"]);
    drop(feed_tx);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_panicking_node_restarts_while_other_nodes_keep_flowing() {
    let (feed_tx, feed_rx) = mpsc::channel(64);
    let starts = Arc::new(AtomicUsize::new(0));
    let crashy = {
        let starts = starts.clone();
        factory(move |cx| {
            starts.fetch_add(1, Ordering::SeqCst);
            struct PanicOnBoom;
            impl Transform for PanicOnBoom {
                fn process(&mut self, msg: Msg, out: &mut Emit) {
                    assert!(&*msg.payload != b"boom", "boom payload");
                    out.out(msg);
                }
            }
            Box::pin(run_transform(PanicOnBoom, cx))
        })
    };
    let crashy_log = Arc::new(Mutex::new(Vec::new()));
    let steady_log = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine::start(
        plan(vec![
            node("src", feed_source(feed_rx), &["out"], vec![]),
            node("crashy", crashy, &["out"], vec![input("src", "out")]),
            node(
                "after_crashy",
                recording_sink(crashy_log.clone()),
                &[],
                vec![input("crashy", "out")],
            ),
            node(
                "steady",
                recording_sink(steady_log.clone()),
                &[],
                vec![input("src", "out")],
            ),
        ]),
        EngineOptions::default(),
    );
    let mut outcomes = Vec::new();
    for payload in ["a", "boom", "b", "c"] {
        let (msg, outcome) = tracked(payload);
        feed_tx.send(msg).await.unwrap();
        outcomes.push(outcome);
    }
    let mut results = Vec::new();
    for outcome in outcomes {
        results.push(outcome.await.unwrap());
    }
    assert_eq!(results[0], Outcome::Done);
    assert!(
        matches!(&results[1], Outcome::Failed(_)),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2], Outcome::Done);
    assert_eq!(results[3], Outcome::Done);
    // The rest of the batch the panic interrupted was not lost: it arrived after restart.
    assert_eq!(
        *crashy_log.lock().unwrap(),
        ["after_crashy=a", "after_crashy=b", "after_crashy=c"]
    );
    assert_eq!(steady_log.lock().unwrap().len(), 4);
    let stats = engine.node("f", "crashy").unwrap().stats.clone();
    assert_eq!(stats.restarts.load(Ordering::Relaxed), 1);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    assert!(stats.last_error().unwrap().contains("boom payload"));
    drop(feed_tx);
    assert_eq!(engine.shutdown().await, ShutdownReport::Drained);
}

#[tokio::test(start_paused = true)]
async fn restart_backoff_grows() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let always_fails = {
        let starts = starts.clone();
        factory(move |cx| {
            let starts = starts.clone();
            Box::pin(async move {
                starts.lock().unwrap().push(cx.clock.now());
                Err(NodeError::new("cannot open device"))
            })
        })
    };
    let engine = Engine::start(
        plan(vec![node("dev", always_fails, &["out"], vec![])]),
        EngineOptions::default(),
    );
    // Paused time auto-advances through the backoff sleeps.
    wait_until(|| starts.lock().unwrap().len() >= 5).await;
    let times = starts.lock().unwrap().clone();
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps[..4], [100, 200, 400, 800]);
    let stats = engine.node("f", "dev").unwrap().stats.clone();
    assert_eq!(stats.last_error().as_deref(), Some("cannot open device"));
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_sources_and_drains_every_queue() {
    let (feed_tx, feed_rx) = mpsc::channel(128);
    let log = Arc::new(Mutex::new(Vec::new()));
    // The sink starts consuming only when released, so messages are provably queued
    // inside the graph when shutdown begins.
    let gate = Arc::new(Notify::new());
    let gated_sink = {
        let (gate, log) = (gate.clone(), log.clone());
        factory(move |cx| {
            let (gate, log) = (gate.clone(), log.clone());
            Box::pin(async move {
                gate.notified().await;
                recording_sink(log).start(cx).await
            })
        })
    };
    let wide = |node: &str| InputPlan {
        capacity: 128,
        ..input(node, "out")
    };
    let engine = Engine::start(
        plan(vec![
            node("src", feed_source(feed_rx), &["out"], vec![]),
            node(
                "pass",
                factory(|cx| Box::pin(run_transform(DropPrefix, cx))),
                &["out"],
                vec![wide("src")],
            ),
            node("sink", gated_sink, &[], vec![wide("pass")]),
        ]),
        EngineOptions::default(),
    );
    let mut outcomes = Vec::new();
    for i in 0..100 {
        let (msg, outcome) = tracked(&i.to_string());
        feed_tx.send(msg).await.unwrap();
        outcomes.push(outcome);
    }
    // The source has taken everything (messages a source never took are not the
    // engine's: a real source's peer keeps them).
    wait_until(|| feed_tx.capacity() == 128).await;
    assert!(log.lock().unwrap().is_empty());
    let shutdown = tokio::spawn(engine.shutdown());
    gate.notify_one();
    assert_eq!(shutdown.await.unwrap(), ShutdownReport::Drained);
    for outcome in outcomes {
        assert_eq!(outcome.await.unwrap(), Outcome::Done);
    }
    assert_eq!(log.lock().unwrap().len(), 100);
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_aborts_a_stuck_sink_and_fails_its_messages() {
    let (feed_tx, feed_rx) = mpsc::channel(16);
    let stuck = factory(|mut cx| {
        Box::pin(async move {
            let _held = cx.recv().await;
            std::future::pending::<()>().await;
            Ok(())
        })
    });
    let engine = Engine::start(
        plan(vec![
            node("src", feed_source(feed_rx), &["out"], vec![]),
            node("stuck", stuck, &[], vec![input("src", "out")]),
        ]),
        EngineOptions {
            drain_deadline: Duration::from_secs(2),
            ..EngineOptions::default()
        },
    );
    let (held, held_outcome) = tracked("held");
    let (queued, queued_outcome) = tracked("queued");
    feed_tx.send(held).await.unwrap();
    feed_tx.send(queued).await.unwrap();
    assert_eq!(engine.shutdown().await, ShutdownReport::Aborted);
    assert!(matches!(held_outcome.await.unwrap(), Outcome::Failed(_)));
    assert!(matches!(queued_outcome.await.unwrap(), Outcome::Failed(_)));
}

#[tokio::test]
async fn a_blocked_edge_applies_backpressure_to_the_source() {
    let release = Arc::new(Notify::new());
    let produced = Arc::new(AtomicUsize::new(0));
    let source = {
        let produced = produced.clone();
        factory(move |cx| {
            let produced = produced.clone();
            Box::pin(async move {
                for i in 0..10 {
                    cx.emit(Msg::new("t", i.to_string(), 0)).await;
                    produced.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
        })
    };
    let gated = {
        let release = release.clone();
        factory(move |mut cx| {
            let release = release.clone();
            Box::pin(async move {
                release.notified().await;
                while let Some(msg) = cx.recv().await {
                    msg.done();
                }
                Ok(())
            })
        })
    };
    let mut edge = input("src", "out");
    edge.capacity = 3;
    let engine = Engine::start(
        plan(vec![
            node("src", source, &["out"], vec![]),
            node("gated", gated, &[], vec![edge]),
        ]),
        EngineOptions::default(),
    );
    wait_until(|| produced.load(Ordering::SeqCst) == 3).await;
    // The fourth send waits for space: give the runtime every chance to get past it.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(produced.load(Ordering::SeqCst), 3);
    assert_eq!(engine.node("f", "gated").unwrap().inputs[0].depth(), 3);
    release.notify_one();
    engine.finished().await;
    assert_eq!(produced.load(Ordering::SeqCst), 10);
}

/// Polls a condition between scheduler turns; bounded so a broken engine fails the test
/// instead of hanging it.
async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

/// A flow `name`: a fed source and a recording sink.
fn fed_flow(name: &str, feed: mpsc::Receiver<Msg>, log: Arc<Mutex<Vec<String>>>) -> FlowPlan {
    FlowPlan {
        name: name.into(),
        nodes: vec![
            node("src", feed_source(feed), &["out"], vec![]),
            node("sink", recording_sink(log), &[], vec![input("src", "out")]),
        ],
    }
}

async fn wait_for_len(log: &Mutex<Vec<String>>, len: usize) {
    while log.lock().unwrap().len() < len {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn replace_restarts_only_the_named_flows_and_keeps_counters_by_node_id() {
    let (a_tx, a_rx) = mpsc::channel(16);
    let (b_tx, b_rx) = mpsc::channel(16);
    let a_log = Arc::new(Mutex::new(Vec::new()));
    let b_log = Arc::new(Mutex::new(Vec::new()));
    let mut engine = Engine::start(
        GraphPlan {
            flows: vec![
                fed_flow("a", a_rx, a_log.clone()),
                fed_flow("b", b_rx, b_log.clone()),
            ],
        },
        EngineOptions::default(),
    );
    a_tx.send(Msg::new("t", "1", 0)).await.unwrap();
    b_tx.send(Msg::new("t", "1", 0)).await.unwrap();
    wait_for_len(&a_log, 1).await;
    wait_for_len(&b_log, 1).await;
    let a_stats = engine.node("a", "sink").unwrap().stats.clone();
    let b_stats = engine.node("b", "sink").unwrap().stats.clone();

    let (b2_tx, b2_rx) = mpsc::channel(16);
    let b2_log = Arc::new(Mutex::new(Vec::new()));
    let timed_out = engine
        .replace(
            &["b".to_string()],
            vec![fed_flow("b", b2_rx, b2_log.clone())],
        )
        .await;
    assert!(timed_out.is_empty());
    assert_eq!(engine.flow_names(), ["a", "b"]);
    assert_eq!(engine.nodes().len(), 4);

    // Flow a was not touched: the same node, still reading the same feed.
    assert!(Arc::ptr_eq(
        &engine.node("a", "sink").unwrap().stats,
        &a_stats
    ));
    a_tx.send(Msg::new("t", "2", 0)).await.unwrap();
    wait_for_len(&a_log, 2).await;
    // Flow b runs the new definition, and its sink kept its counters.
    let b_sink = engine.node("b", "sink").unwrap();
    assert!(Arc::ptr_eq(&b_sink.stats, &b_stats));
    assert_eq!(b_sink.stats.received.load(Ordering::Relaxed), 1);
    b2_tx.send(Msg::new("t", "2", 0)).await.unwrap();
    wait_for_len(&b2_log, 1).await;
    assert_eq!(b_sink.stats.received.load(Ordering::Relaxed), 2);
    assert_eq!(b_sink.stats.state(), NodeState::Running);
    // The old b's source stopped: its feed is closed.
    assert!(b_tx.send(Msg::new("t", "x", 0)).await.is_err());

    // Removing a flow stops it; nothing else changes.
    let timed_out = engine.replace(&["a".to_string()], vec![]).await;
    assert!(timed_out.is_empty());
    assert_eq!(engine.flow_names(), ["b"]);
    assert!(engine.node("a", "sink").is_none());
    assert_eq!(engine.shutdown().await, ShutdownReport::Drained);
}

#[tokio::test(start_paused = true)]
async fn a_replaced_flow_that_does_not_drain_fails_its_in_flight_messages() {
    let (feed_tx, feed_rx) = mpsc::channel(16);
    // A sink that takes a message and never finishes it.
    let stuck = factory(|mut cx| {
        Box::pin(async move {
            let held = cx.recv().await;
            std::future::pending::<()>().await;
            drop(held);
            Ok(())
        })
    });
    let mut engine = Engine::start(
        GraphPlan {
            flows: vec![FlowPlan {
                name: "slow".into(),
                nodes: vec![
                    node("src", feed_source(feed_rx), &["out"], vec![]),
                    node("sink", stuck, &[], vec![input("src", "out")]),
                ],
            }],
        },
        EngineOptions {
            drain_deadline: Duration::from_secs(2),
            ..EngineOptions::default()
        },
    );
    let (held, held_outcome) = tracked("held");
    let (queued, queued_outcome) = tracked("queued");
    feed_tx.send(held).await.unwrap();
    feed_tx.send(queued).await.unwrap();
    while engine
        .node("slow", "sink")
        .unwrap()
        .stats
        .received
        .load(Ordering::Relaxed)
        < 1
    {
        tokio::task::yield_now().await;
    }
    let timed_out = engine.replace(&["slow".to_string()], vec![]).await;
    assert_eq!(timed_out, ["slow"]);
    // Neither message is done: a tracking source would not acknowledge them.
    assert!(matches!(held_outcome.await.unwrap(), Outcome::Failed(_)));
    assert!(matches!(queued_outcome.await.unwrap(), Outcome::Failed(_)));
    assert!(engine.nodes().is_empty());
}
