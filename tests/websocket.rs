//! MQTT over WebSockets with real clients: MQTT.js in Debian's headless Chromium
//! (`tests/browser/`, driven by playwright-core) and paho-mqtt's websockets transport
//! (`tests/peers/ws_roundtrip.py`), against the broker's WebSocket listener, with
//! Mosquitto's TCP clients on the same broker for the cross-checks. The paho scenario
//! also runs against Debian's Mosquitto, which shows the harness itself is sound.
//!
//! Every wait reads a line a peer prints; nothing sleeps.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;

use common::{Gateway, line_reader, wait_line};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Headwater with a TCP listener and a WebSocket listener; (gateway, tcp, ws).
fn headwater_with_websockets(dir: &Path) -> (Gateway, u16, u16) {
    let settings = dir.join("headwater.yaml");
    std::fs::write(
        &settings,
        "version: 1\nbroker:\n  listeners:\n    - { host: 127.0.0.1, port: 0 }\n    - { host: 127.0.0.1, port: 0, protocol: websockets }\nflows: {}\n",
    )
    .unwrap();
    let gateway = Gateway::start(&[
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "run",
        settings.to_str().unwrap(),
    ]);
    // Listeners are logged in the order they are configured.
    let tcp = gateway.listening_port();
    let ws = gateway.listening_port();
    (gateway, tcp, ws)
}

/// Mosquitto with a TCP and a WebSocket listener (2.0.11 refuses WebSockets alone).
fn mosquitto_with_websockets(dir: &Path) -> (common::Mosquitto, u16) {
    let ws = common::free_port();
    let mosquitto = common::Mosquitto::with_conf(
        dir,
        common::free_port(),
        &format!(
            "allow_anonymous true\nlistener {ws} 127.0.0.1\nprotocol websockets\nallow_anonymous true"
        ),
    );
    (mosquitto, ws)
}

fn publish_tcp(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
}

/// Runs the paho websockets script (`version` "3" or "5") against `ws_port`, publishing
/// `TOPIC/tcp` over TCP once it subscribed; asserts it saw both messages.
fn paho_roundtrip(tcp_port: u16, ws_port: u16, version: &str) {
    let topic = format!("ws/paho{version}");
    let mut child = Command::new("python3")
        .arg(root().join("tests/peers/ws_roundtrip.py"))
        .args(["--url", &format!("ws://127.0.0.1:{ws_port}/mqtt")])
        .args(["--version", version, "--topic", &topic])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 (test.sh installs paho-mqtt)");
    let lines = line_reader(child.stdout.take().unwrap());
    wait_line(&lines, "subscribed 1", "paho over websockets");
    publish_tcp(tcp_port, &format!("{topic}/tcp"), "from-tcp");
    let mut got = Vec::new();
    loop {
        let line = wait_line(&lines, "", "paho over websockets");
        assert!(!line.starts_with("error"), "{line}");
        if line == "closed" {
            break;
        }
        if let Some(message) = line.strip_prefix("received ") {
            got.push(message.to_string());
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            format!("{topic}/paho from-paho 1"),
            format!("{topic}/tcp from-tcp 1")
        ]
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn paho_over_websockets_in_3_1_1_and_5() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, tcp, ws) = headwater_with_websockets(dir.path());
    paho_roundtrip(tcp, ws, "3");
    paho_roundtrip(tcp, ws, "5");
}

#[test]
fn the_paho_scenario_passes_against_mosquitto_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mosquitto, ws) = mosquitto_with_websockets(dir.path());
    paho_roundtrip(mosquitto.port, ws, "5");
}

/// MQTT.js in headless Chromium, driven by `tests/browser/drive.mjs`.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Browser {
    fn open(ws_port: u16, topic: &str, version: u8) -> Browser {
        let browser = root().join("tests/browser");
        assert!(
            browser.join("node_modules/mqtt").is_dir(),
            "run ./test.sh (it runs `npm ci` in tests/browser)"
        );
        let mut child = Command::new("node")
            .arg(browser.join("drive.mjs"))
            .arg(format!("ws://127.0.0.1:{ws_port}/mqtt"))
            .args([topic, &version.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run node (test.sh installs chromium and the npm packages)");
        let stdin = child.stdin.take().unwrap();
        let lines = line_reader(child.stdout.take().unwrap());
        Browser {
            child,
            stdin,
            lines,
        }
    }

    /// The next line that is not noise; fails on an `error` line.
    fn expect(&self, prefix: &str) -> String {
        let line = wait_line(&self.lines, "", "the browser");
        assert!(
            line.starts_with(prefix),
            "expected {prefix:?} from the browser, got {line:?}"
        );
        line
    }

    fn publish(&mut self, topic: &str, qos: u8, payload: &str) {
        writeln!(self.stdin, "publish {topic} {qos} {payload}").unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "end");
        let _ = self.child.wait();
    }
}

#[test]
fn mqtt_js_in_chromium_publishes_and_subscribes_through_a_websocket_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, tcp, ws) = headwater_with_websockets(dir.path());
    for version in [4, 5] {
        let topic = format!("browser{version}");
        let mut browser = Browser::open(ws, &topic, version);
        browser.expect("connected");
        assert_eq!(browser.expect("subscribed"), "subscribed 1");
        // Its own messages at QoS 0 and 1 come back through its subscription.
        browser.publish(&format!("{topic}/zero"), 0, "q0");
        browser.expect(&format!("published {topic}/zero"));
        browser.expect(&format!("received {topic}/zero q0 0"));
        browser.publish(&format!("{topic}/one"), 1, "q1");
        let mut lines = [browser.expect(""), browser.expect("")];
        lines.sort();
        assert_eq!(
            lines,
            [
                format!("published {topic}/one"),
                format!("received {topic}/one q1 1")
            ]
        );
        // A TCP publisher reaches the browser, and the browser a TCP subscriber.
        publish_tcp(tcp, &format!("{topic}/tcp"), "from-tcp");
        browser.expect(&format!("received {topic}/tcp from-tcp 1"));
        let sub = common::subscribe_on(tcp, &format!("{topic}/to-tcp"), 1);
        browser.publish(&format!("{topic}/to-tcp"), 1, "from-browser");
        assert_eq!(
            sub.next(),
            (format!("{topic}/to-tcp"), "from-browser".to_string())
        );
    }
}
