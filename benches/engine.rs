//! Engine throughput: an in-process source feeding real node kinds (built from the
//! registry exactly as a flow file would build them) into a counting sink.
//!
//! - `script`: source -> script (reads one JSON field, sets another) -> sink
//! - `builtins3`: source -> filter -> change -> switch -> sink
//! - `passthrough3`: source -> three no-op transforms -> sink, the engine's own cost
//!   per edge (four edges per message)
//! - `state/script_set_per_message`: source -> script that increments a counter with
//!   `state.set` on every message -> sink, with the node's state in a real store file
//!   (fsync on), as `headwater run` keeps it. `STATE_MESSAGES=N` sets the count
//!   (default 20000).
//!
//! Run: `cargo bench --bench engine`. Numbers go to docs/benchmarks.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use headwater::engine::{
    Clock, Emit, Engine, EngineOptions, FlowPlan, GraphPlan, InputPlan, Msg, NodeContext,
    NodeFactory, NodeFuture, NodeId, NodePlan, Overflow, Transform, run_transform,
};
use headwater::flow::tree;
use headwater::nodes::registry::{self, BuildContext};
use tokio::sync::Notify;

const MESSAGES: u64 = 200_000;

fn input(node: &str) -> Vec<InputPlan> {
    vec![InputPlan {
        node: node.into(),
        port: "out".into(),
        capacity: 1024,
        overflow: Overflow::Block,
    }]
}

/// A node of a registered kind, built from YAML options.
fn kind_node(name: &str, type_name: &str, options: &str, from: &str) -> NodePlan {
    let kind = registry::lookup(type_name).expect("registered kind");
    let config = kind
        .parse(tree::parse(options).unwrap().to_json())
        .unwrap_or_else(|issues| panic!("{type_name}: {issues:?}"));
    let factory = config
        .build(&BuildContext {
            id: NodeId::new("bench", name),
            base_dir: PathBuf::from("."),
            data_dir: std::env::temp_dir(),
            clock: Clock::system(),
            state_key: format!("bench/{name}"),
        })
        .unwrap_or_else(|issues| panic!("{type_name}: {issues:?}"));
    NodePlan {
        name: name.into(),
        kind: kind.type_name(),
        factory,
        ports: config.ports(),
        inputs: input(from),
        state_key: format!("bench/{name}"),
        buffer: None,
    }
}

struct Pass;

impl Transform for Pass {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        out.out(msg);
    }
}

fn pass_node(name: &str, from: &str) -> NodePlan {
    NodePlan {
        name: name.into(),
        kind: "bench.pass",
        factory: Arc::new(|cx: NodeContext| -> NodeFuture { Box::pin(run_transform(Pass, cx)) }),
        ports: vec!["out".into()],
        inputs: input(from),
        state_key: format!("bench/{name}"),
        buffer: None,
    }
}

/// Runs `count` messages through `middle` (the last node is named `last`) and waits
/// until the sink has counted all of them.
async fn run(middle: Vec<NodePlan>, count: u64, payloads: Arc<Vec<bytes::Bytes>>) {
    run_with(middle, count, payloads, EngineOptions::default()).await;
}

/// [`run`] with chosen engine options (a durable state store).
async fn run_with(
    middle: Vec<NodePlan>,
    count: u64,
    payloads: Arc<Vec<bytes::Bytes>>,
    options: EngineOptions,
) {
    let done = Arc::new(Notify::new());
    let seen = Arc::new(AtomicU64::new(0));
    let source: Arc<dyn NodeFactory> = Arc::new(move |cx: NodeContext| -> NodeFuture {
        let payloads = payloads.clone();
        Box::pin(async move {
            for i in 0..count {
                let payload = payloads[(i % payloads.len() as u64) as usize].clone();
                cx.emit(Msg::new("meters/1", payload, 0)).await;
            }
            Ok(())
        })
    });
    let sink: Arc<dyn NodeFactory> = {
        let (done, seen) = (done.clone(), seen.clone());
        Arc::new(move |cx: NodeContext| -> NodeFuture {
            let (done, seen) = (done.clone(), seen.clone());
            Box::pin(async move {
                let mut inbox = cx.inbox.clone();
                let mut batch = Vec::with_capacity(64);
                while inbox.recv_many(&mut batch, 64).await > 0 {
                    let n = batch.len() as u64;
                    batch.drain(..).for_each(Msg::done);
                    if seen.fetch_add(n, Ordering::Relaxed) + n >= count {
                        done.notify_one();
                    }
                }
                Ok(())
            })
        })
    };
    let mut nodes = vec![NodePlan {
        name: "source".into(),
        kind: "bench.source",
        factory: source,
        ports: vec!["out".into()],
        inputs: vec![],
        state_key: "bench/source".into(),
        buffer: None,
    }];
    nodes.extend(middle);
    nodes.push(NodePlan {
        name: "sink".into(),
        kind: "bench.sink",
        factory: sink,
        ports: vec![],
        inputs: input("last"),
        state_key: "bench/sink".into(),
        buffer: None,
    });
    let engine = Engine::start(
        GraphPlan {
            flows: vec![FlowPlan {
                name: "bench".into(),
                nodes,
            }],
        },
        options,
    );
    done.notified().await;
    engine.shutdown().await;
}

fn payloads() -> Arc<Vec<bytes::Bytes>> {
    Arc::new(
        (0..64)
            .map(|i| {
                bytes::Bytes::from(format!(
                    r#"{{"id":"meter-1","v":{},"unit":"Wh","ts":1767225600000}}"#,
                    100 + i
                ))
            })
            .collect(),
    )
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(10);

    group.bench_function("passthrough3", |b| {
        b.iter(|| {
            let middle = vec![
                pass_node("a", "source"),
                pass_node("b", "a"),
                pass_node("last", "b"),
            ];
            runtime.block_on(run(middle, MESSAGES, payloads()));
        });
    });

    group.bench_function("builtins3", |b| {
        b.iter(|| {
            let middle = vec![
                kind_node(
                    "a",
                    "filter",
                    "when: [{ field: payload.v, op: ge, value: 0 }]",
                    "source",
                ),
                kind_node(
                    "b",
                    "change",
                    "rules: [{ set: headers.unit, from: payload.unit }]",
                    "a",
                ),
                kind_node(
                    "last",
                    "switch",
                    "rules: [{ port: out, when: [{ field: payload.id, op: eq, value: meter-1 }] }]",
                    "b",
                ),
            ];
            runtime.block_on(run(middle, MESSAGES, payloads()));
        });
    });

    group.bench_function("script", |b| {
        b.iter(|| {
            let middle = vec![kind_node(
                "last",
                "script",
                "rhai: 'msg.payload.w = msg.payload.v * 2; msg'",
                "source",
            )];
            runtime.block_on(run(middle, MESSAGES, payloads()));
        });
    });
    group.finish();

    // State written on every message, on a real store file: each batch's writes are one
    // durable commit before its messages go on.
    let state_messages: u64 = std::env::var("STATE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = headwater::store::Store::open(headwater::store::StoreOptions {
        path: Some(dir.path().join("store.redb")),
        ..Default::default()
    })
    .unwrap();
    let state = headwater::engine::StateStore::new(store);
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(state_messages));
    group.sample_size(10);
    group.bench_function("script_set_per_message", |b| {
        b.iter(|| {
            let middle = vec![kind_node(
                "last",
                "script",
                "rhai: 'state.set(\"n\", state.get(\"n\", 0) + 1); msg'",
                "source",
            )];
            let options = EngineOptions {
                state: state.clone(),
                ..EngineOptions::default()
            };
            runtime.block_on(run_with(middle, state_messages, payloads(), options));
        });
    });
    group.finish();

    // One field read from a typical sensor payload: the cost every filter/switch/change
    // pays per message.
    let mut group = c.benchmark_group("fields");
    let payload = payloads()[0].clone();
    let unit: headwater::engine::fields::FieldPath = "payload.unit".parse().unwrap();
    let headwater::engine::fields::FieldPath::Payload(steps) = unit else {
        unreachable!()
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("extract_payload_unit", |b| {
        b.iter(|| headwater::engine::fields::extract(std::hint::black_box(&payload), &steps))
    });
    group.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
