//! Unit tests of the host against the WAT plugins in `tests/plugins/`: loading, the
//! cache, ABI checks and each hostile plugin's exact fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::engine::{Clock, NodeId};

/// The compiled bytes of `tests/plugins/NAME.wat`.
pub(crate) fn wat(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plugins")
        .join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(name: &str, limits: Limits) -> Result<Plugin, PluginError> {
    Plugin::from_bytes(
        &PathBuf::from(format!("{name}.wasm")),
        &wat(name),
        limits,
        None,
    )
}

fn binding() -> Binding {
    Binding {
        node: NodeId::new("test", "plugin"),
        clock: Clock::system(),
        kv: None,
        ports: vec!["out".into(), "alert".into()],
    }
}

/// Runs one message through a fresh instance of `name`.
fn call(name: &str, limits: Limits, topic: &str) -> Result<CallOutput, Fault> {
    let plugin = load(name, limits).unwrap();
    let mut instance = plugin.instantiate(binding()).unwrap();
    instance.init(b"null").unwrap();
    send(&mut instance, topic, b"payload")
}

fn send(instance: &mut Instance, topic: &str, payload: &[u8]) -> Result<CallOutput, Fault> {
    let record = abi::encode(1000, topic, &[("h", "v")], payload);
    instance.on_message(record.len(), |buf| buf.copy_from_slice(&record))
}

#[test]
fn a_passthrough_plugin_emits_its_input() {
    let out = call("passthrough", Limits::default(), "meters/1").unwrap();
    assert_eq!(
        out.emits,
        vec![Emitted {
            port: 0,
            timestamp_ms: 1000,
            topic: "meters/1".into(),
            headers: vec![("h".into(), "v".into())],
            payload: b"payload".to_vec(),
        }]
    );
    assert!(out.kv.is_empty());
}

#[test]
fn the_second_load_comes_from_the_cache_and_a_damaged_file_is_recompiled() {
    let data = tempfile::tempdir().unwrap();
    let bytes = wat("passthrough");
    let path = PathBuf::from("passthrough.wasm");
    let first = Plugin::from_bytes(&path, &bytes, Limits::default(), Some(data.path())).unwrap();
    assert_eq!(first.loaded, Loaded::Compiled);
    let cache_dir = data.path().join(cache::CACHE_DIR);
    let files: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one cache file, no temporary left: {files:?}"
    );
    assert_eq!(
        files[0],
        cache::cache_path(&cache_dir, &first.engine, &bytes)
    );

    let second = Plugin::from_bytes(&path, &bytes, Limits::default(), Some(data.path())).unwrap();
    assert_eq!(second.loaded, Loaded::FromCache);
    // What came from the cache runs.
    let mut instance = second.instantiate(binding()).unwrap();
    assert_eq!(send(&mut instance, "t", b"x").unwrap().emits.len(), 1);

    // A flipped bit in the machine code: the digest catches it, the module is compiled
    // again and the file rewritten.
    let mut damaged = std::fs::read(&files[0]).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&files[0], &damaged).unwrap();
    let third = Plugin::from_bytes(&path, &bytes, Limits::default(), Some(data.path())).unwrap();
    assert_eq!(third.loaded, Loaded::Compiled);
    // A truncated file, and a stale one that is intact but not a wasmtime artifact.
    std::fs::write(&files[0], b"short").unwrap();
    let fourth = Plugin::from_bytes(&path, &bytes, Limits::default(), Some(data.path())).unwrap();
    assert_eq!(fourth.loaded, Loaded::Compiled);
    let garbage = b"not an artifact".to_vec();
    let mut stale = ring::digest::digest(&ring::digest::SHA256, &garbage)
        .as_ref()
        .to_vec();
    stale.extend_from_slice(&garbage);
    std::fs::write(&files[0], &stale).unwrap();
    let fifth = Plugin::from_bytes(&path, &bytes, Limits::default(), Some(data.path())).unwrap();
    assert_eq!(fifth.loaded, Loaded::Compiled);
    let sixth = Plugin::from_bytes(&path, &bytes, Limits::default(), Some(data.path())).unwrap();
    assert_eq!(sixth.loaded, Loaded::FromCache);

    // Another module misses: the key includes the module's bytes.
    let other = Plugin::from_bytes(
        &PathBuf::from("trap.wasm"),
        &wat("trap"),
        Limits::default(),
        Some(data.path()),
    )
    .unwrap();
    assert_eq!(other.loaded, Loaded::Compiled);
}

#[test]
fn modules_that_break_the_abi_are_refused_with_the_reason() {
    let problems = |name: &str| match load(name, Limits::default()) {
        Err(PluginError::Abi { problems, .. }) => problems,
        Err(PluginError::WrongVersion { version, .. }) => vec![version_problem(version)],
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        problems("missing_export"),
        ["missing export `hw_on_message` (fn(i32, i32) -> i32)"]
    );
    assert_eq!(
        problems("bad_version"),
        ["plugin ABI version 2, this headwater speaks version 1"]
    );
    assert_eq!(
        problems("unknown_import"),
        [
            "unknown import `wasi_snapshot_preview1.fd_write` (fn(i32, i32, i32, i32) -> i32); a plugin may import only hw.emit, hw.log, hw.kv_get, hw.kv_set, hw.now_ms and env.abort"
        ]
    );
    let not_wasm = Plugin::from_bytes(
        Path::new("x.wasm"),
        b"\0asm garbage",
        Limits::default(),
        None,
    )
    .unwrap_err();
    assert!(
        not_wasm
            .to_string()
            .starts_with("plugin `x.wasm` is not a valid WebAssembly module"),
        "{not_wasm}"
    );
    // A wrong signature names both types.
    let wrong = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "hw_abi_version") (result i32) (i32.const 1))
             (func (export "hw_alloc") (param i32 i32) (result i32) (i32.const 0))
             (func (export "hw_dealloc") (param i32 i32))
             (func (export "hw_on_message") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let err = Plugin::from_bytes(Path::new("w.wasm"), &wrong, Limits::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("export `hw_alloc` has type fn(i32, i32) -> i32, expected fn(i32) -> i32"),
        "{err}"
    );
}

#[test]
fn each_hostile_plugin_fails_its_call_with_a_clear_reason() {
    let quick = Limits {
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    assert_eq!(
        call("spin", quick, "spin").unwrap_err().reason,
        "plugin timed out after 50ms"
    );
    assert_eq!(
        call("grow", Limits::default(), "t").unwrap_err().reason,
        "plugin exceeded its memory limit of 16MiB (it asked for 16448KiB)"
    );
    assert_eq!(
        call("trap", Limits::default(), "t").unwrap_err().reason,
        "plugin trapped: wasm `unreachable` instruction executed"
    );
    assert_eq!(
        call("oob", Limits::default(), "t").unwrap_err().reason,
        "emit out of bounds: record at 2147418112 of 100 bytes, the plugin's memory has 65536 bytes"
    );
    assert_eq!(
        call("flood", Limits::default(), "t").unwrap_err().reason,
        "emit limit reached: 16777216 bytes already emitted in this call, 1048576 more exceed 16MiB (limits.max_emit_bytes)"
    );
    let few = Limits {
        max_emits: 3,
        ..Limits::default()
    };
    assert_eq!(
        call("flood", few, "t").unwrap_err().reason,
        "emit limit reached: more than 3 emits in one call (limits.max_emits)"
    );
    assert_eq!(
        call("abort", Limits::default(), "t").unwrap_err().reason,
        "plugin aborted: boom at a.ts:3:7"
    );
    let one_port = Binding {
        ports: vec!["out".into()],
        ..binding()
    };
    let plugin = load("fanout", Limits::default()).unwrap();
    let mut instance = plugin.instantiate(one_port).unwrap();
    assert_eq!(
        send(&mut instance, "t", b"x").unwrap_err().reason,
        "emit to unknown port 1 (this node's ports are 0..0: out)"
    );
}

#[test]
fn an_instance_goes_on_after_a_timeout() {
    let limits = Limits {
        timeout: Duration::from_millis(30),
        ..Limits::default()
    };
    let plugin = load("spin", limits).unwrap();
    let mut instance = plugin.instantiate(binding()).unwrap();
    for _ in 0..2 {
        let fault = send(&mut instance, "spin", b"").unwrap_err();
        assert_eq!(fault.reason, "plugin timed out after 30ms");
        assert!(fault.counts);
        let out = send(&mut instance, "ok", b"fine").unwrap();
        assert_eq!(out.emits[0].payload, b"fine");
    }
}

#[test]
fn kv_writes_are_returned_and_a_failed_call_discards_them() {
    let plugin = load("counter", Limits::default()).unwrap();
    let mut instance = plugin.instantiate(binding()).unwrap();
    let init = instance.init(br#"{"a":1}"#).unwrap();
    assert_eq!(
        init.kv,
        vec![("config".to_string(), Some(br#"{"a":1}"#.to_vec()))]
    );
    // Without a store behind it, each call starts from an absent count.
    let out = send(&mut instance, "t", b"").unwrap();
    assert_eq!(out.kv, vec![("count".to_string(), Some(b"1".to_vec()))]);
    assert_eq!(out.emits[0].payload, b"1");
    let failed = send(&mut instance, "fail", b"").unwrap_err();
    assert_eq!(failed.reason, "plugin returned 1");
    assert!(!failed.counts, "a deliberate failure is not a fault");
}

#[test]
fn memory_limit_below_the_module_minimum_refuses_to_start() {
    let tiny = Limits {
        memory: 1 << 20,
        ..Limits::default()
    };
    // flood declares 18 pages (1.125 MiB) of initial memory.
    let err = load("flood", tiny).unwrap_err().to_string();
    assert!(
        err.contains("plugin exceeded its memory limit of 1MiB"),
        "{err}"
    );
}
