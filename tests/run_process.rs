//! `headwater run` as a process: starts, processes messages, logs them as JSON lines,
//! and shuts down cleanly on SIGTERM and SIGINT.

mod common;

use std::process::Command;

use common::Gateway;

fn flow_file(dir: &std::path::Path) -> String {
    let path = dir.join("ticks.yaml");
    std::fs::write(
        &path,
        "version: 1\nflows:\n  ticks:\n    nodes:\n      tick: { type: timer, interval: 50ms, at_start: true, topic: t, payload: { n: 1 } }\n      show: { type: log, inputs: tick }\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn runs_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_file(dir.path());
    let data = dir.path().join("state");
    let gateway = Gateway::start(&[
        "--log-format",
        "json",
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        &flow,
    ]);
    let line = gateway.wait_for("\"node\":\"ticks/show\"");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["topic"], "t");
    assert_eq!(event["message"], "{\"n\":1}");
    assert_eq!(event["level"], "INFO");
    assert!(data.is_dir(), "the data directory was created");
    gateway.signal("TERM");
    gateway.wait_for("shutting down: SIGTERM");
    gateway.wait_for("all queues drained");
    assert!(gateway.wait().success());
}

#[test]
fn stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_file(dir.path());
    let data = dir.path().join("state");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        &flow,
    ]);
    gateway.wait_for("engine started");
    gateway.signal("INT");
    gateway.wait_for("shutting down: SIGINT");
    assert!(gateway.wait().success());
}

#[test]
fn a_bad_flow_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "version: 1\nflows:\n  f:\n    nodes:\n      t: { type: timer }\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args([
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "run",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":5:10: error: f/t: a timer needs `interval` or `cron`"),
        "{stderr}"
    );
    assert!(!stderr.contains("engine started"));
}

#[test]
fn help_exists_for_every_command() {
    for command in ["run", "check", "graph", "schema"] {
        let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{command} --help");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: headwater"));
    }
}
