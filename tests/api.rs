//! The admin API over a real socket, served by the real binary: flows, nodes, health,
//! the token rule and its log line, injection, `/metrics`, and the live tap read by
//! `headwater tap` in a child process.

mod common;

use std::process::{Command, Stdio};

use common::{Gateway, http, line_reader, wait_line};

const TOKEN: &str = "api-test-token-0123456789";

/// A flow with a steady stream (`tick` -> `pass` -> `sink`) and a quiet branch that only
/// carries what the test injects (`quiet` -> `probe` -> `probe_sink`).
fn files(dir: &std::path::Path) -> (String, String) {
    let flow = dir.join("flow.yaml");
    std::fs::write(
        &flow,
        r#"version: 1
flows:
  demo:
    nodes:
      tick: { type: timer, interval: 20ms, topic: tick }
      pass: { type: script, inputs: tick, rhai: "msg" }
      sink: { type: log, level: debug, inputs: pass }
      quiet: { type: timer, interval: 1h }
      probe: { type: script, inputs: quiet, rhai: "msg" }
      probe_sink: { type: log, level: debug, inputs: probe }
"#,
    )
    .unwrap();
    let token = dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let settings = dir.join("headwater.yaml");
    std::fs::write(
        &settings,
        "version: 1\napi:\n  listen: 127.0.0.1:0\n  token_file: api-token\nbroker:\n  listeners: [{ host: 127.0.0.1, port: 0 }]\n",
    )
    .unwrap();
    (
        flow.to_str().unwrap().to_string(),
        settings.to_str().unwrap().to_string(),
    )
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http(port, "GET", path, Some(TOKEN), "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn api_port(gateway: &Gateway) -> u16 {
    let line = gateway.wait_for("api listening");
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

#[test]
fn the_api_serves_a_running_process_and_headwater_tap_prints_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (flow, settings) = files(dir.path());
    let data = dir.path().join("data");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        &settings,
        &flow,
    ]);
    let port = api_port(&gateway);

    // Probes answer without a token; everything else needs it, and a refusal is logged.
    assert_eq!(http(port, "GET", "/healthz", None, "").0, 200);
    assert_eq!(http(port, "GET", "/readyz", None, "").0, 200);
    let (status, body) = http(port, "GET", "/api/flows", None, "");
    assert_eq!(status, 401);
    assert!(body.contains("\"error\""), "{body}");
    let refused = gateway.wait_for("api request refused: no bearer token");
    assert!(
        refused.contains("127.0.0.1:") && refused.contains("/api/flows"),
        "{refused}"
    );

    let flows = json(port, "/api/flows");
    assert_eq!(flows["flows"][0]["name"], "demo");
    assert!(
        flows["flows"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("flow.yaml")
    );
    assert_eq!(flows["flows"][0]["state"], "running");

    // The stream flows on its own: its counters move.
    let emitted = |port| {
        let nodes = json(port, "/api/flows/demo/nodes");
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "tick")
            .unwrap()["emitted"]
            .as_u64()
            .unwrap()
    };
    let first = emitted(port);
    common::eventually("the timer's counter to move", || {
        (emitted(port) > first).then_some(())
    });

    // `headwater tap` on the quiet branch prints exactly what is injected there.
    let token_file = dir.path().join("api-token");
    let mut tap = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args([
            "tap",
            "--flow",
            "demo",
            "--node",
            "probe",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--token-file",
            token_file.to_str().unwrap(),
            "--json",
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start headwater tap");
    let tap_out = line_reader(tap.stdout.take().unwrap());
    let tap_err = line_reader(tap.stderr.take().unwrap());
    wait_line(&tap_err, "tap: watching demo/probe", "headwater tap");
    for i in 0..3 {
        let body = format!(r#"{{"topic": "probe/{i}", "payload": {{"i": {i}}}}}"#);
        let (status, answer) = http(
            port,
            "POST",
            "/api/flows/demo/nodes/probe/inject",
            Some(TOKEN),
            &body,
        );
        assert_eq!(status, 202, "{answer}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&answer).unwrap()["into"],
            "input"
        );
    }
    for i in 0..3 {
        let line = wait_line(&tap_out, "", "headwater tap's output");
        let message: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(message["topic"], format!("probe/{i}"));
        assert_eq!(message["payload"], serde_json::json!({ "i": i }));
        assert_eq!(message["port"], "out");
    }
    assert!(
        tap.wait().unwrap().success(),
        "tap exits after --count messages"
    );

    let (status, metrics) = http(port, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(status, 200);
    assert!(metrics.contains("headwater_node_received_messages_total{flow=\"demo\",node=\"probe_sink\",kind=\"log\"} 3"), "{metrics}");
    assert!(metrics.contains("# TYPE headwater_broker_connections gauge"));
    let broker = json(port, "/api/broker");
    assert!(broker["sessions"].is_u64());

    gateway.signal("TERM");
    gateway.wait_for("api stopped");
    assert!(gateway.wait().success());
}

#[test]
fn a_wrong_token_is_refused_and_tap_reports_the_api_error() {
    let dir = tempfile::tempdir().unwrap();
    let (flow, settings) = files(dir.path());
    let data = dir.path().join("data");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        &settings,
        &flow,
    ]);
    let port = api_port(&gateway);
    let (status, body) = http(port, "GET", "/metrics", Some("guess"), "");
    assert_eq!(status, 401);
    assert!(body.contains("wrong bearer token"), "{body}");
    gateway.wait_for("api request refused: wrong bearer token");
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "nope\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args([
            "tap",
            "--flow",
            "demo",
            "--node",
            "probe",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--token-file",
            wrong.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused the tap (401 Unauthorized): wrong bearer token"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_an_api_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("headwater.yaml");
    std::fs::write(&settings, "version: 1\napi:\n  listen: 0.0.0.0:9080\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["check", settings.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("headwater.yaml:3:11: error: `api.listen`: the admin API on 0.0.0.0:9080 is reachable beyond this machine without a token"),
        "{stderr}"
    );
}

#[test]
fn json_log_lines_of_a_node_carry_its_flow_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow.yaml");
    // A script that fails every message: its warning is logged from inside the node
    // (on the blocking pool), and the sink logs each tick at info.
    std::fs::write(
        &flow,
        r#"version: 1
flows:
  logs:
    nodes:
      tick: { type: timer, interval: 20ms, topic: t }
      show: { type: log, inputs: tick }
      bad: { type: script, inputs: tick, rhai: "throw \"no\"" }
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let gateway = Gateway::start(&[
        "--log-format",
        "json",
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--no-broker",
        "--no-api",
        flow.to_str().unwrap(),
    ]);
    for needle in ["\"node\":\"logs/show\"", "\"node\":\"logs/bad\""] {
        let line = gateway.wait_for(needle);
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        assert_eq!(event["flow"], "logs", "{line}");
        assert!(
            event["timestamp"].is_string()
                && event["level"].is_string()
                && event["message"].is_string(),
            "{line}"
        );
    }
    // Text lines keep their shape: no span prefix.
    let text = Gateway::start(&[
        "--data-dir",
        dir.path().join("data2").to_str().unwrap(),
        "run",
        "--no-broker",
        "--no-api",
        flow.to_str().unwrap(),
    ]);
    let line = text.wait_for("logs/show");
    assert!(!line.contains("node{"), "{line}");
}

#[test]
fn the_status_page_draws_the_graph_and_updates_rates_in_chromium() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let browser = root.join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "run ./test.sh (it runs `npm ci` in tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (flow, settings) = files(dir.path());
    let data = dir.path().join("data");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        &settings,
        &flow,
    ]);
    let port = api_port(&gateway);
    // The artifact: target/tmp/status-page.png.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut child = Command::new("node")
        .arg(browser.join("status_page.mjs"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&screenshot)
        .arg(TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node (test.sh installs chromium and the npm packages)");
    let lines = line_reader(child.stdout.take().unwrap());
    let line = wait_line(&lines, "{", "the status page driver");
    assert!(child.wait().unwrap().success(), "{line}");
    let summary: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(summary["consoleErrors"], serde_json::json!([]), "{line}");
    assert_eq!(summary["foreignRequests"], serde_json::json!([]), "{line}");
    assert_eq!(summary["nodes"], 6, "{line}");
    assert_eq!(summary["wires"], 4, "{line}");
    assert_eq!(summary["tokenStored"], true);
    assert_eq!(
        summary["tokenFormShown"], false,
        "the token form goes away once the token works"
    );
    let rates = summary["rates"].as_array().unwrap();
    let tick = rates.iter().find(|r| r["node"] == "demo/tick").unwrap();
    assert!(tick["rate"].as_f64().unwrap() > 0.0, "{line}");
    assert!(tick["text"].as_str().unwrap().contains("msg/s"), "{line}");
    assert!(
        tick["state"].as_str().unwrap().contains("state-running"),
        "{line}"
    );
    assert!(
        summary["broker"]
            .as_str()
            .unwrap()
            .contains("clients connected"),
        "{line}"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG file");
}

#[test]
fn a_busy_api_address_stops_run_before_any_flow_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (flow, _) = files(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["run", "--no-broker", "--api-listen", &address, &flow])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address} for the admin API")),
        "{stderr}"
    );
    assert!(!stderr.contains("engine started"), "{stderr}");
}
