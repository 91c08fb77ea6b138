//! The example plugins of `plugins/`, built from source by `plugins/build.sh`, running
//! in their example flows (`flows/plugin-*.yaml`) in the real gateway with its built-in
//! broker on a free port: messages in with `mosquitto_pub`, out with `mosquitto_sub` or
//! a `file.out` file, exactly as the flows' and `plugins/README.md`'s examples say.
//! And `headwater plugin new` / `build` / `check` for each language, run in a flow.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Gateway, Subscriber, build_plugins, subscribe_on};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts `headwater run flows/FLOW` with the broker on a free port, data in `data`;
/// waits until its `mqtt_inputs` in-process subscriptions are in place.
fn run_flow(flow: &str, data: &Path, mqtt_inputs: usize) -> (Gateway, u16) {
    build_plugins();
    let flow = root().join("flows").join(flow);
    let gateway = Gateway::start(&[
        "--log-format",
        "json",
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        flow.to_str().unwrap(),
    ]);
    let port = gateway.listening_port();
    for _ in 0..mqtt_inputs {
        gateway.wait_for("topic filters on the built-in broker");
    }
    (gateway, port)
}

fn publish(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}

fn expect(sub: &Subscriber, topic: &str, payload: &str) {
    assert_eq!(sub.next(), (topic.to_string(), payload.to_string()));
}

/// A JSON log line of `node` (as `flow/node`).
fn log_of(gateway: &Gateway, node: &str) -> serde_json::Value {
    let line = gateway.wait_for(&format!("\"node\":\"{node}\""));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
}

fn stop(gateway: Gateway) {
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}

#[test]
fn energy_pulse_turns_pulse_counts_into_kwh_and_watts() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = run_flow("plugin-energy-pulse.yaml", dir.path(), 1);
    let power = subscribe_on(port, "meter/power", 1);
    publish(port, "meter/pulses", r#"{"pulses": 1000, "ts": 0}"#);
    expect(&power, "meter/power", r#"{"pulses":1000,"kwh":1}"#);
    // 100 pulses of 1 Wh in one minute: 100 Wh per minute is 6000 W.
    publish(port, "meter/pulses", r#"{"pulses": 1100, "ts": 60000}"#);
    expect(
        &power,
        "meter/power",
        r#"{"pulses":1100,"kwh":1.1,"w":6000}"#,
    );
    // No count: the message fails with the plugin's code 3, to the error port.
    publish(port, "meter/pulses", r#"{"watts": 5}"#);
    let failure = log_of(&gateway, "energy_pulse/failures");
    assert_eq!(failure["message"], r#"{"watts": 5}"#);
    assert!(
        failure.to_string().contains("plugin returned 3"),
        "{failure}"
    );
    stop(gateway);
}

#[test]
fn threshold_alert_forks_alerts_to_a_second_port_and_drops_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = run_flow("plugin-threshold-alert.yaml", dir.path(), 1);
    let alerts = subscribe_on(port, "sensors/+/temperature/alert", 1);
    let topic = "sensors/attic/temperature";
    let readings = [
        r#"{"value": 20}"#,
        r#"{"value": 31.5}"#,
        r#"{"humidity": 80}"#,
        r#"{"value": 4}"#,
    ];
    for reading in readings {
        publish(port, topic, reading);
    }
    expect(
        &alerts,
        "sensors/attic/temperature/alert",
        r#"{"alert":"above","value":31.5,"limit":30,"topic":"sensors/attic/temperature"}"#,
    );
    expect(
        &alerts,
        "sensors/attic/temperature/alert",
        r#"{"alert":"below","value":4,"limit":5,"topic":"sensors/attic/temperature"}"#,
    );
    // Every reading with a value reached `out` (the file), in order; the one without
    // was dropped, not failed.
    let file = dir.path().join("temperatures.jsonl");
    let expected = [readings[0], readings[1], readings[3]]
        .map(|r| format!("{r}\n"))
        .concat();
    assert_eq!(common::file_with_lines(&file, 3), expected);
    stop(gateway);
}

#[test]
fn unit_convert_rewrites_fahrenheit_in_place_and_fails_unreadable_readings() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = run_flow("plugin-unit-convert.yaml", dir.path(), 1);
    let celsius = subscribe_on(port, "weather/+/celsius", 1);
    publish(
        port,
        "weather/fahrenheit",
        r#"{"station":"roof","temp":71.6}"#,
    );
    expect(
        &celsius,
        "weather/roof/celsius",
        r#"{"station":"roof","temp":22}"#,
    );
    publish(
        port,
        "weather/fahrenheit",
        r#"{"station":"roof","temp":"warm"}"#,
    );
    let failure = log_of(&gateway, "unit_convert/failures");
    assert_eq!(failure["message"], r#"{"station":"roof","temp":"warm"}"#);
    assert!(
        failure.to_string().contains("plugin returned 3"),
        "{failure}"
    );
    publish(
        port,
        "weather/fahrenheit",
        r#"{"temp": -40, "station":"cellar"}"#,
    );
    expect(
        &celsius,
        "weather/cellar/celsius",
        r#"{"temp": -40, "station":"cellar"}"#,
    );
    stop(gateway);
}

#[test]
fn moving_average_keeps_its_window_across_a_restart_of_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = run_flow("plugin-moving-average.yaml", dir.path(), 1);
    let avg = subscribe_on(port, "humidity/avg", 1);
    publish(port, "humidity/raw", r#"{"value": 40}"#);
    expect(&avg, "humidity/avg", r#"{"avg":40,"n":1,"value":40}"#);
    publish(port, "humidity/raw", r#"{"value": 50}"#);
    expect(&avg, "humidity/avg", r#"{"avg":45,"n":2,"value":50}"#);
    drop(avg);
    stop(gateway);

    // Same data directory: the window (40, 50) is in the node's state.
    let (gateway, port) = run_flow("plugin-moving-average.yaml", dir.path(), 1);
    let avg = subscribe_on(port, "humidity/avg", 1);
    publish(port, "humidity/raw", r#"{"value": 60}"#);
    expect(&avg, "humidity/avg", r#"{"avg":50,"n":3,"value":60}"#);
    publish(port, "humidity/raw", r#"{"value": 70}"#);
    expect(&avg, "humidity/avg", r#"{"avg":60,"n":3,"value":70}"#);
    stop(gateway);
}

#[test]
fn c_range_filter_passes_readings_in_range_unchanged_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = run_flow("plugin-range-filter.yaml", dir.path(), 1);
    let valid = subscribe_on(port, "soil/valid", 1);
    for reading in [
        r#"{"value": 42}"#,
        r#"{"value": 180}"#,
        r#"{"value": -0.5}"#,
        "not json",
        r#"{"value": 100, "probe": "b"}"#,
    ] {
        publish(port, "soil/raw", reading);
    }
    expect(&valid, "soil/valid", r#"{"value": 42}"#);
    // The next message out is the last one published: the three between were dropped.
    expect(&valid, "soil/valid", r#"{"value": 100, "probe": "b"}"#);
    stop(gateway);
}

#[test]
fn assemblyscript_threshold_alerts_on_a_timer_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = run_flow("plugin-as-threshold.yaml", dir.path(), 0);
    // out: the reading, unchanged, to the log.
    let shown = log_of(&gateway, "as_threshold/show");
    assert_eq!(shown["message"], r#"{"value":42}"#);
    // alert: retained, so a late subscriber gets it.
    let alert = subscribe_on(port, "boiler/alert", 1);
    expect(
        &alert,
        "boiler/alert",
        r#"{"alert":"above","value":42,"limit":30,"topic":"boiler"}"#,
    );
    stop(gateway);
}

/// `headwater ARGS` to completion: (success, stdout, stderr).
fn headwater(args: &[&str], envs: &[(&str, &Path)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_headwater"));
    command.args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().expect("run headwater");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn plugin_new_gives_a_project_that_builds_passes_check_and_runs_in_its_flow() {
    let tmp = tempfile::tempdir().unwrap();
    // The Rust project builds in its own target dir, not the gateway's.
    let target = tmp.path().join("cargo-target");
    for lang in ["rust", "c", "assemblyscript"] {
        let project = tmp.path().join(format!("hello-{lang}"));
        let name = format!("hello-{lang}");
        let (ok, _, err) = headwater(
            &[
                "plugin",
                "new",
                &name,
                "--lang",
                lang,
                "--dir",
                project.to_str().unwrap(),
            ],
            &[],
        );
        assert!(ok, "plugin new --lang {lang}: {err}");

        let (ok, out, err) = headwater(
            &["plugin", "build", project.to_str().unwrap()],
            &[("CARGO_TARGET_DIR", &target)],
        );
        assert!(ok, "plugin build ({lang}): {err}");
        let wasm = PathBuf::from(out.trim());
        assert!(wasm.is_file(), "plugin build printed {out:?}");
        assert!(wasm.starts_with(project.canonicalize().unwrap().join("build")));

        let (ok, out, err) = headwater(&["plugin", "check", wasm.to_str().unwrap()], &[]);
        assert!(ok, "plugin check ({lang}): {out}{err}");

        // The project's own flow: a timer's {"value": 21} through the plugin (factor 2).
        let flow = project.join("flow.yaml");
        let data = tmp.path().join(format!("data-{lang}"));
        let gateway = Gateway::start(&[
            "--log-format",
            "json",
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            "--listen",
            "127.0.0.1:0",
            flow.to_str().unwrap(),
        ]);
        let shown = log_of(&gateway, "try_plugin/show");
        assert_eq!(shown["message"], r#"{"value":42}"#, "{lang}");
        stop(gateway);
    }
}
