//! A WebAssembly plugin's key/value state survives kill -9 of the real binary, like a
//! script's (`tests/script_state.rs`): the example plugin `moving_average` (built from
//! source by `plugins/build.sh`) keeps its window per topic in the node's state; the
//! gateway is killed with SIGKILL right after a result left it, restarted on the same
//! data directory, and the next result still averages over the readings from before.
//!
//! Readings are published with QoS 0, so nothing is delivered again after the restart:
//! the window after it is exactly what the plugin had committed, which must include
//! every reading whose result was seen.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Gateway, build_plugins, subscribe_on};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `headwater run flows/plugin-moving-average.yaml` with the broker on a free port;
/// returns once its `mqtt.in` subscribed.
fn start(data: &Path) -> (Gateway, u16) {
    let flow = root().join("flows/plugin-moving-average.yaml");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        flow.to_str().unwrap(),
    ]);
    let port = gateway.listening_port();
    gateway.wait_for("topic filters on the built-in broker");
    (gateway, port)
}

/// Publishes `payload` on `humidity/raw` with QoS 0.
fn publish(port: u16, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "0"])
        .args(["-t", "humidity/raw", "-m", payload])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}

fn avg(port: u16, sub: &common::Subscriber, value: u32) -> String {
    publish(port, &format!(r#"{{"value": {value}}}"#));
    let (topic, payload) = sub.next();
    assert_eq!(topic, "humidity/avg");
    payload
}

#[test]
fn a_plugins_state_survives_kill_9() {
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = start(dir.path());
    let sub = subscribe_on(port, "humidity/avg", 1);
    assert_eq!(avg(port, &sub, 40), r#"{"avg":40,"n":1,"value":40}"#);
    assert_eq!(avg(port, &sub, 50), r#"{"avg":45,"n":2,"value":50}"#);
    // Killed right after the second result arrived: its window was committed before the
    // result left the plugin, so kill -9 cannot take it back.
    gateway.signal("KILL");
    let _ = gateway.wait();
    drop(sub);

    let (gateway, port) = start(dir.path());
    let sub = subscribe_on(port, "humidity/avg", 1);
    assert_eq!(avg(port, &sub, 60), r#"{"avg":50,"n":3,"value":60}"#);
    assert_eq!(avg(port, &sub, 70), r#"{"avg":60,"n":3,"value":70}"#);
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}
