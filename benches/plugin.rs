//! Plugin costs: per message through the engine (source -> one node -> counting sink)
//! for a no-op WebAssembly plugin, a no-op Rhai script and a native pass-through, at
//! 64 B and 4 KiB payloads; the bare call into the plugin without the engine; and the
//! start of a plugin whose machine code is cached (load from the cache, check,
//! instantiate, `hw_init`); and `plugin_state/wasm_counter`: a plugin that counts
//! every message in its key/value state (`tests/plugins/counter.wat`), on a real store
//! file (fsync on). `STATE_MESSAGES=N` sets that count (default 20000).
//!
//! Run: `cargo bench --bench plugin`. Numbers go to docs/benchmarks.md (## Plugins).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headwater::engine::{
    Clock, Emit, Engine, EngineOptions, FlowPlan, GraphPlan, InputPlan, Msg, NodeContext,
    NodeFactory, NodeFuture, NodeId, NodePlan, Overflow, Transform, run_transform,
};
use headwater::flow::tree;
use headwater::nodes::registry::{self, BuildContext};
use headwater::plugin::{Binding, Limits, Plugin, abi};
use tokio::sync::Notify;

const MESSAGES: u64 = 100_000;

fn input(node: &str) -> Vec<InputPlan> {
    vec![InputPlan {
        node: node.into(),
        port: "out".into(),
        capacity: 1024,
        overflow: Overflow::Block,
    }]
}

fn kind_node(type_name: &str, options: &str, data_dir: &Path) -> NodePlan {
    let kind = registry::lookup(type_name).expect("registered kind");
    let config = kind
        .parse(tree::parse(options).unwrap().to_json())
        .unwrap_or_else(|issues| panic!("{type_name}: {issues:?}"));
    let factory = config
        .build(&BuildContext {
            id: NodeId::new("bench", "last"),
            base_dir: PathBuf::from("."),
            data_dir: data_dir.to_path_buf(),
            clock: Clock::system(),
            state_key: "bench/last".into(),
        })
        .unwrap_or_else(|issues| panic!("{type_name}: {issues:?}"));
    NodePlan {
        name: "last".into(),
        kind: kind.type_name(),
        factory,
        ports: config.ports(),
        inputs: input("source"),
        state_key: "bench/last".into(),
        buffer: None,
    }
}

struct Pass;

impl Transform for Pass {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        out.out(msg);
    }
}

fn native_node() -> NodePlan {
    NodePlan {
        name: "last".into(),
        kind: "bench.pass",
        factory: Arc::new(|cx: NodeContext| -> NodeFuture { Box::pin(run_transform(Pass, cx)) }),
        ports: vec!["out".into()],
        inputs: input("source"),
        state_key: "bench/last".into(),
        buffer: None,
    }
}

/// Runs `count` messages of `payload` through `middle` into a counting sink.
async fn run(middle: NodePlan, count: u64, payload: Bytes) {
    run_with(middle, count, payload, EngineOptions::default()).await;
}

/// [`run`] with chosen engine options (a durable state store).
async fn run_with(middle: NodePlan, count: u64, payload: Bytes, options: EngineOptions) {
    let done = Arc::new(Notify::new());
    let seen = Arc::new(AtomicU64::new(0));
    let source: Arc<dyn NodeFactory> = Arc::new(move |cx: NodeContext| -> NodeFuture {
        let payload = payload.clone();
        Box::pin(async move {
            for _ in 0..count {
                cx.emit(Msg::new("meters/1", payload.clone(), 0)).await;
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
    let nodes = vec![
        NodePlan {
            name: "source".into(),
            kind: "bench.source",
            factory: source,
            ports: vec!["out".into()],
            inputs: vec![],
            state_key: "bench/source".into(),
            buffer: None,
        },
        middle,
        NodePlan {
            name: "sink".into(),
            kind: "bench.sink",
            factory: sink,
            ports: vec![],
            inputs: input("last"),
            state_key: "bench/sink".into(),
            buffer: None,
        },
    ];
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

/// A JSON payload of exactly `size` bytes.
fn payload(size: usize) -> Bytes {
    let head = r#"{"id":"meter-1","v":101,"unit":"Wh","pad":""#;
    let tail = r#""}"#;
    let pad = "x".repeat(size - head.len() - tail.len());
    let text = format!("{head}{pad}{tail}");
    assert_eq!(text.len(), size);
    Bytes::from(text)
}

fn passthrough_module(dir: &Path) -> PathBuf {
    test_module(dir, "passthrough")
}

/// `tests/plugins/NAME.wat` compiled into `dir/NAME.wasm`.
fn test_module(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/plugins/{name}.wat"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_file(source).unwrap()).unwrap();
    path
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let module = passthrough_module(dir.path());
    let data = dir.path().join("data");

    let mut group = c.benchmark_group("plugin_engine");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(10);
    for size in [64, 4096] {
        let bytes = payload(size);
        group.bench_with_input(BenchmarkId::new("wasm_noop", size), &bytes, |b, bytes| {
            b.iter(|| {
                let node = kind_node("wasm", &format!("plugin: {}", module.display()), &data);
                runtime.block_on(run(node, MESSAGES, bytes.clone()));
            });
        });
        group.bench_with_input(BenchmarkId::new("script_noop", size), &bytes, |b, bytes| {
            b.iter(|| {
                let node = kind_node("script", "rhai: msg", &data);
                runtime.block_on(run(node, MESSAGES, bytes.clone()));
            });
        });
        group.bench_with_input(BenchmarkId::new("native_pass", size), &bytes, |b, bytes| {
            b.iter(|| runtime.block_on(run(native_node(), MESSAGES, bytes.clone())));
        });
    }
    group.finish();

    // A plugin writing its state on every message, on a real store file: each batch's
    // writes are one durable commit before its messages go on.
    let state_messages: u64 = std::env::var("STATE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let counter = test_module(dir.path(), "counter");
    let store = headwater::store::Store::open(headwater::store::StoreOptions {
        path: Some(dir.path().join("store.redb")),
        ..Default::default()
    })
    .unwrap();
    let state = headwater::engine::StateStore::new(store);
    let mut group = c.benchmark_group("plugin_state");
    group.throughput(Throughput::Elements(state_messages));
    group.sample_size(10);
    group.bench_function("wasm_counter", |b| {
        b.iter(|| {
            let node = kind_node("wasm", &format!("plugin: {}", counter.display()), &data);
            let options = EngineOptions {
                state: state.clone(),
                ..EngineOptions::default()
            };
            runtime.block_on(run_with(node, state_messages, payload(64), options));
        });
    });
    group.finish();

    // The bare call: write the record, hw_alloc, hw_on_message (one emit copied out),
    // hw_dealloc; no queues, no threads.
    let mut group = c.benchmark_group("plugin_call");
    group.throughput(Throughput::Elements(1));
    let plugin = Plugin::load(&module, Limits::default(), Some(&data)).unwrap();
    let binding = Binding {
        node: NodeId::new("bench", "call"),
        clock: Clock::system(),
        kv: None,
        ports: vec!["out".into()],
    };
    let mut instance = plugin.instantiate(binding.clone()).unwrap();
    for size in [64, 4096] {
        let bytes = payload(size);
        let record = abi::encode(0, "meters/1", &[], &bytes);
        group.bench_with_input(
            BenchmarkId::new("on_message", size),
            &record,
            |b, record| {
                b.iter(|| {
                    let out = instance
                        .on_message(record.len(), |buf| buf.copy_from_slice(record))
                        .unwrap();
                    std::hint::black_box(out);
                })
            },
        );
    }
    group.finish();

    // Start of a cached plugin: what a node start (or a restart) costs once compiled.
    let mut group = c.benchmark_group("plugin_start");
    group.bench_function("cached_load_instantiate_init", |b| {
        b.iter(|| {
            let plugin = Plugin::load(&module, Limits::default(), Some(&data)).unwrap();
            assert_eq!(plugin.loaded, headwater::plugin::Loaded::FromCache);
            let mut instance = plugin.instantiate(binding.clone()).unwrap();
            instance.init(b"null").unwrap();
            std::hint::black_box(instance);
        })
    });
    group.bench_function("instantiate_init", |b| {
        b.iter(|| {
            let mut instance = plugin.instantiate(binding.clone()).unwrap();
            instance.init(b"null").unwrap();
            std::hint::black_box(instance);
        })
    });
    group.finish();
}

criterion_group!(plugin, benches);
criterion_main!(plugin);
