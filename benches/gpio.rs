//! Edge-to-publish latency of the pulse meter: an edge injected on a simulated chip, to
//! the Flukso counter message arriving at a subscriber of the built-in broker.
//!
//! The graph is `flows/flukso.yaml`'s (gpio.pulse -> Rhai script -> mqtt.out on the
//! built-in broker, in process) without the demo generator; the subscriber is an
//! in-process client of the same broker. Each edge waits for the previous message, so
//! the numbers are the latency of one pulse, not of a queue. Two cases: the meter's
//! state in the store file (the counter is fsynced before the message leaves, as in
//! production) and the store in memory (what the pipeline costs without the disk).
//!
//! Run: `cargo bench --bench gpio` (PULSES=N to change the count). Numbers go to
//! docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use headwater::broker::codec::{Packet, Qos, SubscriptionOptions};
use headwater::broker::{Broker, BrokerConfig, LocalConnect};
use headwater::engine::{Clock, Engine, EngineOptions, StateStore};
use headwater::flow::interpolate::Env;
use headwater::nodes::gpio::SimChips;
use headwater::store::{Store, StoreOptions};

const FLOW: &str = r#"
version: 1
flows:
  flukso:
    nodes:
      meter:
        type: gpio.pulse
        chip: sim:bench
        line: 17
        interval: 1h
        id: bench
      flukso:
        type: script
        inputs: [meter.gauge, meter.counter]
        rhai: |
          msg.headers.sensor = msg.payload.id;
          msg.headers.kind = if msg.payload.unit == "W" { "gauge" } else { "counter" };
          msg.payload = [msg.payload.ts, msg.payload.value, msg.payload.unit];
          msg
      publish:
        type: mqtt.out
        inputs: flukso
        topic: "/sensor/{{headers.sensor}}/{{headers.kind}}"
        retain: true
"#;

/// No variables: the flow above has none.
struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

async fn measure(durable: bool, pulses: usize, dir: &Path) -> Vec<Duration> {
    let store = if durable {
        headwater::broker::open_store(dir).expect("store file")
    } else {
        Store::open(StoreOptions::default()).expect("memory store")
    };
    let broker = Broker::open_on(
        BrokerConfig {
            listeners: Vec::new(),
            ..BrokerConfig::default()
        },
        store.clone(),
    )
    .expect("broker");
    broker.start(Vec::new());
    let set =
        headwater::flow::load_sources(vec![(PathBuf::from("bench.yaml"), FLOW.into())], &NoEnv)
            .unwrap_or_else(|d| panic!("{d:?}"));
    let clock = Clock::system();
    let plan = set.plan(dir, &clock).unwrap_or_else(|d| panic!("{d:?}"));
    let sims = SimChips::default();
    let chip = sims.chip("bench");
    let engine = Engine::start(
        plan,
        EngineOptions {
            clock,
            data_dir: dir.to_path_buf(),
            broker: Some(broker.clone()),
            state: StateStore::new(store.clone()),
            gpio_sim: sims,
            ..EngineOptions::default()
        },
    );
    let (mut subscriber, _) = broker
        .connect_local(LocalConnect {
            client_id: "bench-subscriber".into(),
            clean_start: true,
            session_expiry: 0,
            receive_max: 100,
            will: None,
        })
        .await
        .expect("subscriber");
    subscriber
        .subscribe(vec![(
            "/sensor/bench/counter".into(),
            SubscriptionOptions::qos(Qos::AtMostOnce),
        )])
        .await
        .expect("subscribe");
    chip.wait_requested(17).await;

    let warmup = 50;
    let mut latencies = Vec::with_capacity(pulses);
    for i in 0..warmup + pulses {
        let edge = Instant::now();
        chip.drive(17, true).expect("drive");
        loop {
            match subscriber.recv().await {
                Some(Packet::Publish(publish)) if !publish.payload.is_empty() => break,
                Some(_) => continue,
                None => panic!("the broker closed the subscriber"),
            }
        }
        if i >= warmup {
            latencies.push(edge.elapsed());
        }
        chip.drive(17, false).expect("drive");
    }
    subscriber.disconnect().await;
    engine.shutdown().await;
    broker.shutdown().await;
    store.close().await.expect("close");
    latencies
}

fn report(label: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "{label:<34} n={:<5} mean {:>8.3} ms  p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  max {:>8.3}",
        latencies.len(),
        mean.as_secs_f64() * 1e3,
        at(0.50).as_secs_f64() * 1e3,
        at(0.90).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let pulses = std::env::var("PULSES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 20 } else { 2000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (label, durable) in [
            ("edge-to-publish, state on disk", true),
            ("edge-to-publish, state in memory", false),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let latencies = measure(durable, pulses, dir.path()).await;
            report(label, latencies);
        }
    });
}
