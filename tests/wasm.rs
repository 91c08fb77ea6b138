//! WebAssembly plugins in the real `headwater` binary: `plugin check` on good and bad
//! modules, hostile plugins contained while a healthy flow delivers its whole stream,
//! and plugin state surviving a restart of the process. The plugins are the WAT files
//! of `tests/plugins/`, compiled here with the `wat` crate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Gateway;

/// Compiles `tests/plugins/NAME.wat` into `dir/NAME.wasm`.
fn plugin(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plugins")
        .join(format!("{name}.wat"));
    let bytes = wat::parse_file(&source).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `headwater plugin check FILE`: (exit code, stdout, stderr).
fn plugin_check(file: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .expect("run headwater");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_check_reports_good_and_bad_modules() {
    let dir = tempfile::tempdir().unwrap();

    let (code, stdout, stderr) = plugin_check(&plugin(dir.path(), "fanout"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ABI version: 1"), "{stdout}");
    assert!(
        stdout.contains("  hw_on_message: fn(i32, i32) -> i32"),
        "{stdout}"
    );
    assert!(stdout.contains("  memory: memory"), "{stdout}");
    assert!(stdout.contains("  hw.now_ms: fn() -> i64"), "{stdout}");
    assert!(stdout.contains("ok: the plugin follows the headwater plugin ABI"));

    let (code, stdout, stderr) = plugin_check(&plugin(dir.path(), "bad_version"));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("ABI version: 2"), "{stdout}");
    assert_eq!(
        stderr.trim(),
        "error: plugin ABI version 2, this headwater speaks version 1"
    );

    let (code, stdout, stderr) = plugin_check(&plugin(dir.path(), "missing_export"));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("  hw_abi_version: fn() -> i32"), "{stdout}");
    assert_eq!(
        stderr.trim(),
        "error: missing export `hw_on_message` (fn(i32, i32) -> i32)"
    );

    let (code, _, stderr) = plugin_check(&plugin(dir.path(), "unknown_import"));
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: unknown import `wasi_snapshot_preview1.fd_write`"),
        "{stderr}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["plugin", "check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Check a plugin module against the plugin ABI"),
        "{help}"
    );
}

/// Lines of `path`, waiting (bounded) until there are `n` of them.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    common::file_with_lines(path, n)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts `headwater run` on `flow` with `data`, without the broker.
fn run(flow: &Path, data: &Path) -> Gateway {
    Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--no-broker",
        flow.to_str().unwrap(),
    ])
}

#[test]
fn hostile_plugins_are_contained_while_a_healthy_flow_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["passthrough", "spin", "trap", "grow", "oob", "flood"] {
        plugin(dir.path(), name);
    }
    // Each hostile flow: a timer feeding a plugin whose error port goes to a JSON file.
    let hostile = |name: &str, count: u32, limits: &str| {
        format!(
            "  {name}:
    nodes:
      tick: {{ type: timer, interval: 5ms, count: {count}, topic: spin, payload: x }}
      plugin: {{ type: wasm, inputs: [tick], plugin: {name}.wasm{limits} }}
      errors: {{ type: file.out, inputs: [plugin.error], path: {name}-errors.jsonl, format: json }}
"
        )
    };
    let mut flow = String::from(
        "version: 1
flows:
  healthy:
    nodes:
      tick: { type: timer, interval: 10ms, count: 200, topic: ok, payload: x }
      pass: { type: wasm, inputs: [tick], plugin: passthrough.wasm }
      out: { type: file.out, inputs: [pass], path: healthy.txt }
",
    );
    flow.push_str(&hostile("spin", 20, ", limits: { timeout: 50ms }"));
    flow.push_str(&hostile("trap", 20, ""));
    flow.push_str(&hostile("grow", 20, ", limits: { memory: 1MiB }"));
    flow.push_str(&hostile("oob", 20, ""));
    // Time enough that the bytes limit, not the clock, stops the flood (debug builds).
    flow.push_str(&hostile("flood", 20, ", limits: { timeout: 20s }"));
    let flow_path = dir.path().join("hostile.yaml");
    std::fs::write(&flow_path, &flow).unwrap();
    let data = dir.path().join("data");

    let gateway = run(&flow_path, &data);
    // The healthy flow delivers its whole stream while the others fault.
    let healthy = wait_lines(&data.join("healthy.txt"), 200);
    assert_eq!(healthy.len(), 200);
    assert!(healthy.iter().all(|l| l == "x"));
    let expected = [
        ("spin", "plugin timed out after 50ms"),
        (
            "trap",
            "plugin trapped: wasm `unreachable` instruction executed",
        ),
        (
            "grow",
            "plugin exceeded its memory limit of 1MiB (it asked for 1088KiB)",
        ),
        (
            "oob",
            "emit out of bounds: record at 2147418112 of 100 bytes, the plugin's memory has 65536 bytes",
        ),
        (
            "flood",
            "emit limit reached: 16777216 bytes already emitted in this call, 1048576 more exceed 16MiB (limits.max_emit_bytes)",
        ),
    ];
    for (name, reason) in expected {
        // Every message ends on the error port with its reason: none lost.
        let lines = wait_lines(&data.join(format!("{name}-errors.jsonl")), 20);
        assert_eq!(lines.len(), 20, "{name}");
        for line in lines {
            let record: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(record["headers"]["error"], reason, "{name}");
            assert_eq!(record["headers"]["error_node"], format!("{name}/plugin"));
            assert_eq!(record["payload"], "x");
        }
    }
    // The spinning plugin was rebuilt, and said so once.
    gateway.wait_for("plugin faulted 5 times in a row; starting a fresh instance");
    // The process is alive and well: it stops cleanly on SIGTERM.
    gateway.signal("TERM");
    gateway.wait_for("all queues drained");
    assert!(gateway.wait().success());
}

#[test]
fn plugin_state_survives_a_restart_of_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    plugin(dir.path(), "counter");
    let flow = dir.path().join("count.yaml");
    std::fs::write(
        &flow,
        "version: 1
flows:
  meter:
    nodes:
      tick: { type: timer, interval: 10ms, count: 3, topic: t, payload: x }
      count: { type: wasm, inputs: [tick], plugin: counter.wasm, config: { site: home } }
      out: { type: file.out, inputs: [count], path: counts.txt }
",
    )
    .unwrap();
    let data = dir.path().join("data");
    for round in 1..=2 {
        let gateway = run(&flow, &data);
        // Each round's timer sends three messages; the counter goes on where it was.
        let counts = wait_lines(&data.join("counts.txt"), 3 * round);
        gateway.signal("TERM");
        gateway.wait_for("all queues drained");
        assert!(gateway.wait().success(), "round {round}");
        let expected: Vec<String> = (1..=3 * round).map(|n| n.to_string()).collect();
        assert_eq!(counts, expected, "round {round}");
    }
}
