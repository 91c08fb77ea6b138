//! GPIO nodes: `gpio.pulse`, `gpio.in` and `gpio.out` on the simulated chip with the
//! virtual clock (one node in the real engine through `NodeHarness`), the example flows
//! `flukso.yaml` and `consumption-alert.yaml` run by the real binary with a
//! `mosquitto_sub` on its built-in broker, and (feature `gpio-sim-tests`, on a machine
//! whose kernel has the `gpio-sim` module) the character-device backend on a real
//! kernel chip.

mod common;
mod http_peer;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use headwater::engine::harness::NodeHarness;
use headwater::engine::{Clock, Msg, StateStore};
use headwater::store::{Store, StoreOptions};
use serde_json::{Value, json};

use common::{Gateway, line_reader, subscribe_on};

/// The virtual wall clock starts here: 2026-11-15T00:00:00Z.
const EPOCH_MS: i64 = 1_795_132_800_000;
const EPOCH_S: i64 = EPOCH_MS / 1000;
/// The meter's line on the simulated chip.
const LINE: u32 = 17;

fn payload(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("{msg:?}: {e}"))
}

/// The `value` of the next message on `port`.
async fn next_value(h: &mut NodeHarness, port: &str) -> Value {
    let msg = h
        .recv(port)
        .await
        .unwrap_or_else(|| panic!("{port} closed"));
    payload(&msg)["value"].clone()
}

/// A pulse on the meter's line now: up, then down 30 ms later (rising edges count).
async fn pulse(chip: &headwater::nodes::gpio::SimChip) {
    chip.drive(LINE, true).unwrap();
    tokio::time::advance(Duration::from_millis(30)).await;
    chip.drive(LINE, false).unwrap();
}

async fn advance_ms(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

fn file_state(path: &Path) -> StateStore {
    StateStore::new(
        Store::open(StoreOptions {
            path: Some(path.to_path_buf()),
            ..StoreOptions::default()
        })
        .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn pulse_train_gives_exact_gauge_and_counter() {
    let mut h = NodeHarness::start(
        "gpio.pulse",
        "chip: sim:meter\nline: 17\nwh_per_pulse: 1.25\ninterval: 1h\nid: house",
        Clock::virtual_at(EPOCH_MS),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("meter");
    chip.wait_requested(LINE).await;
    assert_eq!(chip.consumer(LINE).unwrap().as_deref(), Some("test/node"));

    // Pulses at 2 s, 11 s (9 s later: 500 W), 14 s (3 s: 1500 W), 14.75 s (6000 W).
    advance_ms(2000).await;
    pulse(&chip).await;
    let first = h.recv("counter").await.unwrap();
    assert_eq!(
        payload(&first),
        json!({"ts": EPOCH_S + 2, "value": 1.25, "unit": "Wh", "id": "house"})
    );
    assert_eq!(&*first.topic, "house");
    assert_eq!(first.timestamp_ms, EPOCH_MS + 2000);
    assert!(h.drain("gauge").is_empty(), "one pulse gives no interval");

    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    for wait_ms in [8970, 2970, 720] {
        advance_ms(wait_ms).await;
        pulse(&chip).await;
        let gauge = h.recv("gauge").await.unwrap();
        assert_eq!(payload(&gauge)["unit"], "W");
        gauges.push(payload(&gauge)["value"].clone());
        counters.push(next_value(&mut h, "counter").await);
    }
    assert_eq!(gauges, [json!(500.0), json!(1500.0), json!(6000.0)]);
    assert_eq!(counters, [json!(2.5), json!(3.75), json!(5.0)]);
    // Falling edges were never counted.
    assert!(h.drain("counter").is_empty());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_gauge_decays_to_zero_without_pulses() {
    let mut h = NodeHarness::start(
        "gpio.pulse",
        "chip: sim:meter\nline: 17\nwh_per_pulse: 0.1\ninterval: 10s\nzero_below: 20",
        Clock::virtual_at(EPOCH_MS),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("meter");
    chip.wait_requested(LINE).await;
    // Pulses at 1 s and 1.36 s: 0.1 Wh in 0.36 s is 1000 W.
    advance_ms(1000).await;
    pulse(&chip).await;
    assert_eq!(next_value(&mut h, "counter").await, json!(0.1));
    advance_ms(330).await;
    pulse(&chip).await;
    assert_eq!(next_value(&mut h, "gauge").await, json!(1000.0));
    assert_eq!(next_value(&mut h, "counter").await, json!(0.2));

    // Tick at 10 s: no pulse for 8.64 s allows at most 360 / 8.64 = 41.667 W.
    advance_ms(10_000 - 1390).await;
    let tick = h.recv("gauge").await.unwrap();
    assert_eq!(
        payload(&tick),
        json!({"ts": EPOCH_S + 10, "value": 41.667, "unit": "W", "id": "node"})
    );
    assert_eq!(next_value(&mut h, "counter").await, json!(0.2));
    // Tick at 20 s: 360 / 18.64 = 19.313 W is below `zero_below`.
    advance_ms(10_000).await;
    assert_eq!(next_value(&mut h, "gauge").await, json!(0.0));
    advance_ms(10_000).await;
    assert_eq!(next_value(&mut h, "gauge").await, json!(0.0));
    // A pulse 40 s after the last one (just after the tick at 40 s) measures 9 W,
    // whatever the ticks said.
    advance_ms(11_360).await;
    assert_eq!(next_value(&mut h, "gauge").await, json!(0.0));
    pulse(&chip).await;
    assert_eq!(next_value(&mut h, "gauge").await, json!(9.0));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_counter_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.redb");
    let options = "chip: sim:meter\nline: 17\nwh_per_pulse: 0.5\ninterval: 1h\ncounter_start: 1000";

    let mut last = Value::Null;
    for (run, expected) in [(0, [1000.5, 1001.0, 1001.5]), (1, [1002.0, 1002.5, 1003.0])] {
        // Each run opens the store file afresh, as a restarted process does.
        let state = file_state(&store_path);
        let mut h = NodeHarness::start_with_state(
            "gpio.pulse",
            options,
            Clock::virtual_at(EPOCH_MS),
            dir.path().to_path_buf(),
            state.clone(),
        )
        .unwrap();
        let chip = h.gpio_sim().chip("meter");
        chip.wait_requested(LINE).await;
        for value in expected {
            advance_ms(1000).await;
            pulse(&chip).await;
            last = next_value(&mut h, "counter").await;
            assert_eq!(last, json!(value), "run {run}");
        }
        h.shutdown().await;
        let stored: Value =
            serde_json::from_slice(&state.node("test/node").get("meter").unwrap().unwrap())
                .unwrap();
        assert_eq!(stored["base_wh"], json!(1000.0));
        assert_eq!(stored["pulses"], json!(3 * (run + 1)));
        state.store().close().await.unwrap();
    }
    assert_eq!(last, json!(1003.0));

    // A new `wh_per_pulse` keeps the Wh counted so far.
    let state = file_state(&store_path);
    let mut h = NodeHarness::start_with_state(
        "gpio.pulse",
        "chip: sim:meter\nline: 17\nwh_per_pulse: 2\ninterval: 1h",
        Clock::virtual_at(EPOCH_MS),
        dir.path().to_path_buf(),
        state.clone(),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("meter");
    chip.wait_requested(LINE).await;
    pulse(&chip).await;
    assert_eq!(next_value(&mut h, "counter").await, json!(1005.0));
    h.shutdown().await;
    state.store().close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn debounce_counts_a_bouncing_contact_once() {
    let mut h = NodeHarness::start(
        "gpio.pulse",
        "chip: sim:meter\nline: 17\ndebounce: 5ms\ninterval: 1h",
        Clock::virtual_at(EPOCH_MS),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("meter");
    chip.wait_requested(LINE).await;
    let bounce = |start: tokio::time::Instant| {
        // Closes at +0, bounces for 3 ms, opens at +50 ms with one bounce.
        for (at, high) in [
            (0, true),
            (1, false),
            (2, true),
            (3, false),
            (4, true),
            (50, false),
            (51, true),
            (52, false),
        ] {
            chip.drive_at(LINE, high, start + Duration::from_millis(at))
                .unwrap();
        }
    };
    // Replayed 100 ms later with their own times, as a busy gateway reads them.
    let start = tokio::time::Instant::now();
    advance_ms(100).await;
    bounce(start);
    let first = h.recv("counter").await.unwrap();
    assert_eq!(payload(&first)["value"], json!(1.0));
    // Stamped when the contact had been closed for 5 ms: 4 + 5 = 9 ms.
    assert_eq!(first.timestamp_ms, EPOCH_MS + 9);
    let second = start + Duration::from_millis(3600);
    advance_ms(3600).await;
    bounce(second);
    assert_eq!(next_value(&mut h, "gauge").await, json!(1000.0));
    assert_eq!(next_value(&mut h, "counter").await, json!(2.0));
    assert!(h.drain("counter").is_empty(), "bounces were not counted");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sequence_gaps_are_counted_as_lost_pulses() {
    let state = StateStore::memory();
    let mut h = NodeHarness::start_with_state(
        "gpio.pulse",
        "chip: sim:meter\nline: 17\ninterval: 1h",
        Clock::virtual_at(EPOCH_MS),
        std::env::temp_dir(),
        state.clone(),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("meter");
    chip.wait_requested(LINE).await;
    pulse(&chip).await;
    assert_eq!(next_value(&mut h, "counter").await, json!(1.0));
    // The kernel's buffer overflowed: 3 pulses were never read.
    chip.lose_events(LINE, 3).unwrap();
    advance_ms(3570).await;
    pulse(&chip).await;
    // 4 pulses in 3.6 s.
    assert_eq!(next_value(&mut h, "gauge").await, json!(4000.0));
    assert_eq!(next_value(&mut h, "counter").await, json!(5.0));
    let stored: Value =
        serde_json::from_slice(&state.node("test/node").get("meter").unwrap().unwrap()).unwrap();
    assert_eq!(stored["lost"], json!(3));
    assert_eq!(stored["pulses"], json!(5));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_simulated_generator_drives_the_meter() {
    let mut h = NodeHarness::start(
        "gpio.pulse",
        "chip: sim:demo\nline: GPIO4\ninterval: 1h\nsimulate: { watts: 1200 }",
        Clock::virtual_at(EPOCH_MS),
    )
    .unwrap();
    // 1 Wh per pulse at 1200 W: one pulse every 3 s, the first at 3 s.
    let first = h.recv("counter").await.unwrap();
    assert_eq!(first.timestamp_ms, EPOCH_MS + 3000);
    let gauge = h.recv("gauge").await.unwrap();
    assert_eq!(payload(&gauge)["value"], json!(1200.0));
    assert_eq!(gauge.timestamp_ms, EPOCH_MS + 6000);
    h.shutdown().await;
}

#[test]
fn pulse_options_are_checked() {
    let check = |options: &str| {
        NodeHarness::start("gpio.pulse", options, Clock::system())
            .err()
            .unwrap_or_default()
    };
    assert_eq!(
        check("chip: sim:meter\nline: 1\nedge: both"),
        "edge: a pulse is counted on one edge: give `rising` or `falling`"
    );
    assert_eq!(
        check("chip: sim:meter\nline: 1\nwh_per_pulse: 0"),
        "wh_per_pulse: must be a positive number of Wh (1000 imp/kWh is 1.0)"
    );
    assert!(check("chip: 'sim:'\nline: 1").starts_with("chip: `sim:`"));
    assert_eq!(
        check("chip: sim:x\nline: 1\nsimulate: { watts: -5 }"),
        "simulate.watts: powers must be numbers of W, 0 or more"
    );
}

#[tokio::test(start_paused = true)]
async fn gpio_in_sends_debounced_levels() {
    let mut h = NodeHarness::start(
        "gpio.in",
        "chip: sim:board\nline: GPIO22\nbias: pull_up\nactive_low: true\ninitial: true\nid: door",
        Clock::virtual_at(EPOCH_MS),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("board");
    // Pulled up and active low: open reads 0.
    let initial = h.recv("out").await.unwrap();
    assert_eq!(
        payload(&initial),
        json!({"ts": EPOCH_S, "value": 0, "id": "door"})
    );
    assert!(chip.level(22).unwrap(), "the pull-up holds the line high");
    // The contact closes (pulls the line low) with bounces; default debounce 20 ms.
    let start = tokio::time::Instant::now() + Duration::from_millis(1000);
    advance_ms(1000).await;
    for (at, high) in [(0, false), (2, true), (3, false)] {
        chip.drive_at(22, high, start + Duration::from_millis(at))
            .unwrap();
    }
    let closed = h.recv("out").await.unwrap();
    assert_eq!(payload(&closed)["value"], json!(1));
    assert_eq!(closed.timestamp_ms, EPOCH_MS + 1023);
    advance_ms(500).await;
    chip.drive(22, true).unwrap();
    let opened = h.recv("out").await.unwrap();
    assert_eq!(payload(&opened)["value"], json!(0));
    assert_eq!(opened.timestamp_ms, EPOCH_MS + 1543);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn gpio_out_sets_the_line() {
    let mut h = NodeHarness::start(
        "gpio.out",
        "chip: sim:board\nline: 5\nactive_low: true\ninitial: on",
        Clock::virtual_at(EPOCH_MS),
    )
    .unwrap();
    let chip = h.gpio_sim().chip("board");
    chip.wait_requested(5).await;
    assert!(
        !chip.level(5).unwrap(),
        "initial on, active low: physically low"
    );
    for (payload, physical) in [
        ("0", true),
        ("true", false),
        ("\"off\"", true),
        ("on", false),
        ("{\"value\": 0}", true),
    ] {
        h.send(Msg::new("relay", payload, 0)).await;
        chip.wait_level(5, physical).await;
    }
    h.send(Msg::new("relay", "\"dim\"", 0)).await;
    let error = h.recv("error").await.unwrap();
    assert_eq!(
        error.headers.get("error").map(String::as_str),
        Some("the payload is not a level: send 0 or 1, true or false, on or off")
    );
    assert!(
        chip.level(5).unwrap(),
        "a bad payload leaves the line alone"
    );
    assert_eq!(chip.consumer(5).unwrap().as_deref(), Some("test/node"));
    h.shutdown().await;
}

// --- the example flows, with the real binary -------------------------------------

fn flow(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("flows")
        .join(name)
}

/// `headwater run FLOW` with `env`, its broker on a free port, its data in `data`.
fn run_flow(flow: &Path, data: &Path, env: &[(&str, &str)]) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["--log-format", "json", "--data-dir"])
        .arg(data)
        .args(["run", "--listen", "127.0.0.1:0"])
        .arg(flow)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start headwater");
    let lines = line_reader(child.stderr.take().expect("stderr"));
    Gateway { child, lines }
}

/// The built-in broker's port, from its JSON "broker listening" log line.
fn broker_port(gateway: &Gateway) -> u16 {
    let line = gateway.wait_for("broker listening");
    let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    event["address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"))
}

/// Fast pulses for the process tests: 0.01 Wh per pulse is one pulse every 72 ms at
/// 500 W, the first power of the flow's generator.
const FAST_METER: &[(&str, &str)] = &[
    ("WH_PER_PULSE", "0.01"),
    ("METER_INTERVAL", "500ms"),
    ("METER_ID", "m1"),
];

/// `[ts, value, unit]` of a Flukso payload.
fn flukso(payload: &str) -> (i64, f64, String) {
    let value: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
    let items = value.as_array().unwrap_or_else(|| panic!("{payload}"));
    assert_eq!(items.len(), 3, "{payload}");
    (
        items[0].as_i64().unwrap(),
        items[1].as_f64().unwrap(),
        items[2].as_str().unwrap().to_string(),
    )
}

#[test]
fn flukso_flow_publishes_and_its_counter_continues_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gateway = run_flow(&flow("flukso.yaml"), &data, FAST_METER);
    let port = broker_port(&gateway);
    let sub = subscribe_on(port, "/sensor/#", 0);
    let (mut gauges, mut last_counter) = (0, 0.0);
    while gauges < 3 || last_counter < 0.2 {
        let (topic, payload) = sub.next();
        let (ts, value, unit) = flukso(&payload);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now_s - 60..=now_s).contains(&ts), "{payload}");
        match topic.as_str() {
            "/sensor/m1/gauge" => {
                assert_eq!(unit, "W");
                gauges += 1;
            }
            "/sensor/m1/counter" => {
                assert_eq!(unit, "Wh");
                assert!(value >= last_counter, "the counter went back: {payload}");
                last_counter = value;
            }
            other => panic!("unexpected topic {other}"),
        }
    }
    gateway.signal("TERM");
    gateway.wait_for("all queues drained");
    assert!(gateway.wait().success());
    drop(sub);

    // Stopped: the last counter sent is what the broker retained.
    let gateway = run_flow(&flow("flukso.yaml"), &data, FAST_METER);
    let port = broker_port(&gateway);
    let restarted = gateway.wait_for("pulse meter started");
    let event: Value = serde_json::from_str(&restarted).unwrap();
    let resumed_at = event["counter_wh"]
        .as_f64()
        .unwrap_or_else(|| panic!("{restarted}"));
    assert!(
        resumed_at >= last_counter,
        "resumed at {resumed_at} after sending {last_counter}"
    );
    let sub = subscribe_on(port, "/sensor/m1/counter", 0);
    let (_, retained) = sub.next();
    assert!(flukso(&retained).1 >= last_counter, "{retained}");
    let mut previous = flukso(&retained).1;
    while previous < resumed_at + 0.1 {
        let (_, payload) = sub.next();
        let value = flukso(&payload).1;
        assert!(value >= previous, "the counter went back: {payload}");
        previous = value;
    }
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_alert_notifies_once_high_and_once_back_to_normal() {
    let webhook = http_peer::Server::start(Vec::new()).await;
    let url = webhook.url("/hook");
    let dir = tempfile::tempdir().unwrap();
    let gateway = run_flow(
        &flow("consumption-alert.yaml"),
        &dir.path().join("data"),
        &[
            ("WEBHOOK_URL", url.as_str()),
            ("WH_PER_PULSE", "0.01"),
            ("METER_INTERVAL", "200ms"),
            ("SIM_LOW_WATTS", "200"),
            ("SIM_HIGH_WATTS", "5000"),
            ("SIM_HOLD", "3s"),
            ("ALERT_WATTS", "3000"),
            ("ALERT_AFTER", "1s"),
        ],
    );
    // 0-3 s at 200 W, 3-6 s at 5 kW (alert about 1 s in), 6-9 s at 200 W again, ...
    webhook
        .wait_until("two notifications", |received| received.len() >= 2)
        .await;
    let received = webhook.received();
    let bodies: Vec<Value> = received
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].target, "/hook");
    assert_eq!(received[0].header("content-type"), Some("application/json"));
    assert_eq!(bodies[0]["state"], "alert", "{bodies:?}");
    assert_eq!(bodies[1]["state"], "normal", "{bodies:?}");
    assert!(bodies[1]["watts"].as_f64().unwrap() < 3000.0, "{bodies:?}");
    let logged = tokio::task::spawn_blocking(move || {
        gateway.wait_for("\"node\":\"alert/show\"");
        gateway
    })
    .await
    .unwrap();
    logged.signal("TERM");
    assert!(logged.wait().success());
}

// --- the character device on the kernel's gpio-sim ---------------------------------

/// Needs root, configfs and the `gpio-sim` module (Linux 5.17+, `CONFIG_GPIO_SIM`): a
/// Raspberry Pi OS or Debian kernel has it. Run with
/// `cargo test --test gpio --features gpio-sim-tests` (see docs/gpio.md).
#[cfg(feature = "gpio-sim-tests")]
mod kernel {
    use super::*;

    /// A gpio-sim chip made through configfs, removed on drop.
    struct KernelSim {
        dir: PathBuf,
        chip: String,
        sysfs: PathBuf,
    }

    impl KernelSim {
        fn new(name: &str, lines: u32) -> KernelSim {
            let _ = Command::new("modprobe").arg("gpio-sim").status();
            let config = Path::new("/sys/kernel/config");
            if !config.join("gpio-sim").exists() {
                let _ = Command::new("mount")
                    .args(["-t", "configfs", "none", "/sys/kernel/config"])
                    .status();
            }
            let dir = config.join("gpio-sim").join(name);
            std::fs::create_dir(&dir).expect("configfs gpio-sim (modprobe gpio-sim, as root)");
            let bank = dir.join("bank0");
            std::fs::create_dir(&bank).unwrap();
            std::fs::write(bank.join("num_lines"), lines.to_string()).unwrap();
            std::fs::create_dir(bank.join("line3")).unwrap();
            std::fs::write(bank.join("line3").join("name"), "S0_METER").unwrap();
            std::fs::write(dir.join("live"), "1").unwrap();
            let chip = std::fs::read_to_string(bank.join("chip_name"))
                .unwrap()
                .trim()
                .to_string();
            let device = std::fs::read_to_string(dir.join("dev_name"))
                .unwrap()
                .trim()
                .to_string();
            let sysfs = Path::new("/sys/devices/platform").join(device).join(&chip);
            KernelSim { dir, chip, sysfs }
        }

        /// Pulls line `offset` up or down: the simulated outside world.
        fn pull(&self, offset: u32, up: bool) {
            std::fs::write(
                self.sysfs.join(format!("sim_gpio{offset}")).join("pull"),
                if up { "pull-up" } else { "pull-down" },
            )
            .unwrap();
        }
    }

    impl Drop for KernelSim {
        fn drop(&mut self) {
            let _ = std::fs::write(self.dir.join("live"), "0");
            let _ = std::fs::remove_dir(self.dir.join("bank0").join("line3"));
            let _ = std::fs::remove_dir(self.dir.join("bank0"));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    #[tokio::test]
    async fn pulse_train_on_a_kernel_chip() {
        let sim = KernelSim::new("headwater-pulse", 8);
        let options = format!(
            "chip: {}\nline: S0_METER\nwh_per_pulse: 1\ninterval: 1h",
            sim.chip
        );
        let mut h = NodeHarness::start("gpio.pulse", &options, Clock::system()).unwrap();
        // The request is visible as the line's consumer once the node holds it.
        let mut pulses = 0;
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while pulses < 5 {
            assert!(std::time::Instant::now() < deadline, "no pulses counted");
            sim.pull(3, true);
            tokio::time::sleep(Duration::from_millis(20)).await;
            sim.pull(3, false);
            tokio::time::sleep(Duration::from_millis(80)).await;
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(1), h.recv("counter")).await
            {
                pulses = payload(&msg)["value"].as_f64().unwrap() as u32;
            }
        }
        // Gauges come from kernel timestamps 100 ms apart: about 36 kW.
        let gauges = h.drain("gauge");
        let last = payload(gauges.last().expect("a gauge"))["value"]
            .as_f64()
            .unwrap();
        assert!((20_000.0..60_000.0).contains(&last), "gauge {last}");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn output_line_on_a_kernel_chip() {
        let sim = KernelSim::new("headwater-out", 8);
        let options = format!("chip: {}\nline: 5\ninitial: 1", sim.chip);
        let h = NodeHarness::start("gpio.out", &options, Clock::system()).unwrap();
        let value = sim.sysfs.join("sim_gpio5").join("value");
        let read = || std::fs::read_to_string(&value).unwrap_or_default();
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while read().trim() != "1" {
            assert!(std::time::Instant::now() < deadline, "line never set");
            tokio::task::yield_now().await;
        }
        h.send(Msg::new("relay", "off", 0)).await;
        while read().trim() != "0" {
            assert!(std::time::Instant::now() < deadline, "line never cleared");
            tokio::task::yield_now().await;
        }
        h.shutdown().await;
    }
}
