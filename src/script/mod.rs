//! Rhai for flows: the engine set-up with its limits, the `msg` map a script sees, and
//! how what a script returns becomes messages again.
//!
//! A script is compiled once, at load (so `check` reports its syntax errors with a
//! flow-file position), with every `import` resolved then and embedded. It runs once per
//! message with two variables in scope: `msg` (a fresh map per message) and `state` (the
//! node's persistent key/value state, like Node-RED's `context`, kept in the store and
//! surviving restarts: see [`state`]).

pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rhai::module_resolvers::FileModuleResolver;
use rhai::{AST, Dynamic, Engine, EvalAltResult, Map, Position, Scope};

use crate::engine::{Msg, NodeId};

pub use state::ScriptState;

/// What bounds one run of a script; each limit ends that run with an error, and the
/// message goes to the node's `error` port.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most Rhai operations per message (0: unlimited).
    pub max_operations: u64,
    /// Longest string, in bytes (0: unlimited).
    pub max_string_size: usize,
    /// Most elements in an array (0: unlimited).
    pub max_array_size: usize,
    /// Most entries in a map (0: unlimited).
    pub max_map_size: usize,
    /// Deepest function call nesting.
    pub max_call_depth: usize,
    /// Wall-clock time one message may take.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            max_call_depth: 64,
            timeout: Duration::from_millis(100),
        }
    }
}

/// Where a script's text came from, which decides where `import` looks and how its
/// errors are located.
#[derive(Clone, Debug)]
pub enum Origin {
    /// Inline in the flow file (`rhai:`); imports are relative to the flow file's
    /// directory.
    Inline {
        /// The flow file's directory.
        base_dir: PathBuf,
    },
    /// A `.rhai` file (`file:`); imports are relative to its directory.
    File {
        /// The script file.
        path: PathBuf,
    },
}

/// A script that did not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// 1-based line and column in the script text, when Rhai gave one.
    pub position: Option<(u32, u32)>,
    /// What is wrong.
    pub message: String,
}

/// The wall-clock deadline of the current run, checked from Rhai's progress callback.
#[derive(Debug)]
struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`; `u64::MAX` when no run is in progress.
    at_ns: AtomicU64,
}

impl Deadline {
    fn arm(&self, timeout: Duration) {
        let at = self.base.elapsed().saturating_add(timeout).as_nanos();
        self.at_ns
            .store(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn passed(&self) -> bool {
        let at = self.at_ns.load(Ordering::Relaxed);
        at != u64::MAX && self.base.elapsed().as_nanos() > u128::from(at)
    }
}

/// How often (in operations) the progress callback reads the clock: often enough to
/// stop a runaway loop within microseconds of its deadline, rare enough to cost nothing.
const CLOCK_EVERY_OPS: u64 = 256;

/// A compiled script with its engine.
pub struct Script {
    engine: Engine,
    ast: AST,
    deadline: Arc<Deadline>,
    timeout: Duration,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What went wrong in one run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

impl Script {
    /// Compiles `source` with `limits`; `node` names `print`/`debug` output in the log.
    pub fn compile(
        source: &str,
        origin: &Origin,
        limits: &Limits,
        node: &NodeId,
    ) -> Result<Script, CompileError> {
        let deadline = Arc::new(Deadline {
            base: Instant::now(),
            at_ns: AtomicU64::new(u64::MAX),
        });
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_call_levels(limits.max_call_depth)
            .set_max_expr_depths(256, 256)
            .set_max_modules(64)
            // A misspelt variable is a load-time error with a position, not a `()` at
            // run time.
            .set_strict_variables(true);
        let progress = deadline.clone();
        engine.on_progress(move |ops| {
            (ops % CLOCK_EVERY_OPS == 0 && progress.passed()).then(|| Dynamic::from("timeout"))
        });
        let (print_node, debug_node) = (node.to_string(), node.to_string());
        engine.on_print(move |text| tracing::info!(node = %print_node, "script: {text}"));
        engine.on_debug(move |text, _, pos| {
            tracing::debug!(node = %debug_node, "script debug at {pos}: {text}");
        });
        let base_dir = match origin {
            Origin::Inline { base_dir } => base_dir.clone(),
            Origin::File { path } => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        engine.set_module_resolver(FileModuleResolver::new_with_path(base_dir));
        state::register(&mut engine);
        // Unit tests need a panic inside a script run (a host bug) to test the node's
        // poison handling; no script outside the tests can call this.
        #[cfg(test)]
        engine.register_fn("test_panic", |reason: &str| -> bool { panic!("{reason}") });

        let ast = engine
            .compile_into_self_contained(&Script::scope_template(), source)
            .map_err(|e| compile_error(&e))?;
        Ok(Script {
            engine,
            ast,
            deadline,
            timeout: limits.timeout,
        })
    }

    /// The variables a script finds: `msg` and `state`, for strict-variable checking.
    fn scope_template() -> Scope<'static> {
        let mut scope = Scope::new();
        scope.push("state", ScriptState::detached());
        scope.push("msg", Map::new());
        scope
    }

    /// The scope a node keeps between messages, holding `state`.
    pub fn new_state(state: ScriptState) -> Scope<'static> {
        let mut scope = Scope::new();
        scope.push("state", state);
        scope
    }

    /// Runs the script for `msg`; `scope` is the node's from [`Script::new_state`]. The
    /// run's `state` writes stay pending in its [`ScriptState`] for the caller to commit
    /// or discard.
    pub fn run(&self, scope: &mut Scope<'static>, msg: &Msg) -> Result<Dynamic, RunError> {
        let keep = scope.len();
        scope.push("msg", msg_to_map(msg));
        self.deadline.arm(self.timeout);
        let result = self.engine.eval_ast_with_scope::<Dynamic>(scope, &self.ast);
        self.deadline.at_ns.store(u64::MAX, Ordering::Relaxed);
        scope.rewind(keep);
        result.map_err(|e| RunError(self.describe(&e)))
    }

    fn describe(&self, error: &EvalAltResult) -> String {
        match error {
            EvalAltResult::ErrorTerminated(_, pos) => format!(
                "script ran longer than its timeout of {:?}{}",
                self.timeout,
                at(*pos)
            ),
            EvalAltResult::ErrorTooManyOperations(pos) => format!(
                "script exceeded its operation limit (`max_operations`){}",
                at(*pos)
            ),
            other => format!("script error: {other}"),
        }
    }
}

fn at(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!(" at line {line}, column {col}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}

fn compile_error(error: &EvalAltResult) -> CompileError {
    let pos = error.position();
    let position = pos
        .line()
        .map(|line| (line as u32, pos.position().unwrap_or(1) as u32));
    // Rhai appends "(line L, position C)"; the caller shows the position itself.
    let mut message = match error {
        EvalAltResult::ErrorParsing(kind, _) => kind.to_string(),
        other => other.to_string(),
    };
    if let Some(cut) = message.find(" (line ") {
        message.truncate(cut);
    }
    let mut chars = message.chars();
    let message = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "the script does not compile".to_string(),
    };
    CompileError { position, message }
}

/// The `msg` map a script sees: `topic`, `payload` (JSON decoded when the payload is
/// JSON, else the text, else a blob of bytes), `headers` (a map of strings),
/// `timestamp` (ms since the epoch) and `id`.
pub fn msg_to_map(msg: &Msg) -> Map {
    let mut map = Map::new();
    map.insert("topic".into(), Dynamic::from(msg.topic.to_string()));
    map.insert("payload".into(), payload_to_dynamic(msg));
    let headers: Map = msg
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
        .collect();
    map.insert("headers".into(), Dynamic::from_map(headers));
    map.insert("timestamp".into(), Dynamic::from_int(msg.timestamp_ms));
    map.insert(
        "id".into(),
        Dynamic::from_int(i64::try_from(msg.id).unwrap_or(i64::MAX)),
    );
    map
}

fn payload_to_dynamic(msg: &Msg) -> Dynamic {
    // Straight from the bytes into Rhai values: no intermediate `serde_json::Value`.
    if looks_like_json(&msg.payload)
        && let Ok(value) = serde_json::from_slice::<Dynamic>(&msg.payload)
    {
        return value;
    }
    match msg.payload_str() {
        Some(text) => Dynamic::from(text.to_string()),
        None => Dynamic::from_blob(msg.payload.to_vec()),
    }
}

/// Whether a payload may be JSON at all (skips a failing parse of plain text).
fn looks_like_json(payload: &[u8]) -> bool {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    matches!(
        first,
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    )
}

/// One message a script returned.
#[derive(Debug, Default)]
pub struct Returned {
    /// The new topic, when the script set one.
    pub topic: Option<String>,
    /// The new payload.
    pub payload: ReturnedPayload,
    /// The headers, when the map had a `headers` map.
    pub headers: Option<Vec<(String, String)>>,
    /// The output port named by `port`, when set.
    pub port: Option<String>,
}

/// A returned payload, ready to become bytes.
#[derive(Debug, Default)]
pub enum ReturnedPayload {
    /// No `payload` key: an empty payload.
    #[default]
    Empty,
    /// A string or blob: written as it is.
    Raw(Bytes),
    /// A map, array, number or boolean, already written as JSON.
    Json(Bytes),
}

/// Turns what a script returned into messages: a map is one message, an array of maps
/// several, `()` none (the input is dropped on purpose).
pub fn returned(value: Dynamic) -> Result<Vec<Returned>, RunError> {
    if value.is_unit() {
        return Ok(Vec::new());
    }
    if value.is_map() {
        return Ok(vec![returned_one(value, None)?]);
    }
    if value.is_array() {
        let items = value.into_array().unwrap_or_default();
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| returned_one(item, Some(i)))
            .collect();
    }
    Err(RunError(format!(
        "the script returned {}; return the message (`msg`), an array of messages, or () to drop it",
        describe_type(&value)
    )))
}

fn describe_type(value: &Dynamic) -> String {
    format!("a value of type {}", value.type_name())
}

fn returned_one(value: Dynamic, index: Option<usize>) -> Result<Returned, RunError> {
    let which = || index.map_or(String::new(), |i| format!(" (item {i})"));
    let Some(map) = value.try_cast::<Map>() else {
        return Err(RunError(format!(
            "the script returned an array with something other than a message{}; every item must be a map like `msg`",
            which()
        )));
    };
    let mut out = Returned::default();
    for (key, value) in map {
        match key.as_str() {
            "topic" => {
                if !value.is_string() {
                    return Err(RunError(format!(
                        "`topic` must be a string, not {}{}",
                        value.type_name(),
                        which()
                    )));
                }
                out.topic = Some(value.to_string());
            }
            "payload" => out.payload = payload_from_dynamic(value)?,
            "headers" => {
                let Some(headers) = value.try_cast::<Map>() else {
                    return Err(RunError(format!(
                        "`headers` must be a map of strings{}",
                        which()
                    )));
                };
                out.headers = Some(
                    headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
            "port" if !value.is_unit() => {
                if !value.is_string() {
                    return Err(RunError(format!(
                        "`port` must be the name of an output port{}",
                        which()
                    )));
                }
                out.port = Some(value.to_string());
            }
            _ => {}
        }
    }
    Ok(out)
}

fn payload_from_dynamic(value: Dynamic) -> Result<ReturnedPayload, RunError> {
    if value.is_unit() {
        return Ok(ReturnedPayload::Empty);
    }
    if value.is_string() {
        return Ok(ReturnedPayload::Raw(Bytes::from(value.to_string())));
    }
    if value.is_blob() {
        return Ok(ReturnedPayload::Raw(Bytes::from(
            value.into_blob().unwrap_or_default(),
        )));
    }
    serde_json::to_vec(&value)
        .map(|json| ReturnedPayload::Json(Bytes::from(json)))
        .map_err(|e| RunError(format!("the payload cannot be written as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(source: &str) -> Result<Script, CompileError> {
        Script::compile(
            source,
            &Origin::Inline {
                base_dir: PathBuf::from("."),
            },
            &Limits::default(),
            &NodeId::new("f", "s"),
        )
    }

    fn json(payload: &ReturnedPayload) -> serde_json::Value {
        match payload {
            ReturnedPayload::Json(bytes) => serde_json::from_slice(bytes).expect("valid JSON"),
            other => panic!("a JSON payload expected, got {other:?}"),
        }
    }

    fn run(source: &str, msg: &Msg) -> Result<Vec<Returned>, RunError> {
        let script = compile(source).expect("compiles");
        let mut scope = Script::new_state(ScriptState::detached());
        returned(script.run(&mut scope, msg)?)
    }

    #[test]
    fn json_payload_is_a_map_and_comes_back_as_json() {
        let msg = Msg::new("t", r#"{"v": 21.5, "n": 2}"#, 0);
        let out = run("msg.payload.w = msg.payload.v * msg.payload.n; msg", &msg).unwrap();
        assert_eq!(
            json(&out[0].payload),
            serde_json::json!({"v": 21.5, "n": 2, "w": 43.0})
        );
    }

    #[test]
    fn text_and_binary_payloads() {
        let msg = Msg::new("t", "hello", 0);
        let out = run("msg.payload = msg.payload.to_upper(); msg", &msg).unwrap();
        assert!(matches!(&out[0].payload, ReturnedPayload::Raw(b) if b == "HELLO"));
        let msg = Msg::new("t", vec![0xff, 0x00, 0x10], 0);
        let out = run("msg.payload = msg.payload.len(); msg", &msg).unwrap();
        assert_eq!(json(&out[0].payload), serde_json::json!(3));
    }

    #[test]
    fn unit_drops_and_arrays_split() {
        let msg = Msg::new("t", "[1,2,3]", 0);
        assert!(run("()", &msg).unwrap().is_empty());
        let out = run(
            "msg.payload.map(|v| #{ topic: `n/${v}`, payload: v * 10 })",
            &msg,
        )
        .unwrap();
        let topics: Vec<_> = out.iter().map(|r| r.topic.clone().unwrap()).collect();
        assert_eq!(topics, ["n/1", "n/2", "n/3"]);
    }

    #[test]
    fn wrong_return_types_are_explained() {
        let msg = Msg::new("t", "1", 0);
        let err = run("42", &msg).unwrap_err();
        assert_eq!(
            err.0,
            "the script returned a value of type i64; return the message (`msg`), an array of messages, or () to drop it"
        );
        let err = run("[msg, 1]", &msg).unwrap_err();
        assert!(err.0.contains("(item 1)"), "{err}");
        let err = run("msg.topic = 5; msg", &msg).unwrap_err();
        assert_eq!(err.0, "`topic` must be a string, not i64");
    }

    #[test]
    fn state_survives_between_messages() {
        let script = compile("state.n = (state.n ?? 0) + 1; msg.payload = state.n; msg").unwrap();
        let mut scope = Script::new_state(ScriptState::detached());
        let msg = Msg::new("t", "x", 0);
        for expected in 1..=3 {
            let out = returned(script.run(&mut scope, &msg).unwrap()).unwrap();
            assert_eq!(json(&out[0].payload), serde_json::json!(expected));
        }
        assert_eq!(scope.len(), 1, "per-message variables are gone");
    }

    #[test]
    fn state_is_json_in_the_node_store_once_committed() {
        let states = crate::engine::StateStore::memory();
        let kv = states.node("f/s");
        let state = ScriptState::new(kv.clone());
        let script = compile(
            r#"
            state.set("x", 1);
            state.set("x", state.get("x") + 1);
            state.m = #{ a: [1, 2.5, "s", true, ()] };
            state["gone"] = 5;
            state.remove("gone");
            msg.payload = #{
                x: state.x, m: state.get("m"), gone: state.get("gone", "default"),
                missing: state.missing
            };
            msg"#,
        )
        .unwrap();
        let mut scope = Script::new_state(state.clone());
        let out = returned(script.run(&mut scope, &Msg::new("t", "x", 0)).unwrap()).unwrap();
        assert_eq!(
            json(&out[0].payload),
            serde_json::json!({"x": 2, "m": {"a": [1, 2.5, "s", true, null]}, "gone": "default", "missing": null})
        );
        assert_eq!(
            kv.get("x").unwrap(),
            None,
            "nothing is stored before the commit"
        );
        assert!(!state.end_run(), "a small batch waits for its end");
        assert_eq!(kv.get("x").unwrap(), None, "staged, not stored");
        state.commit_batch().unwrap();
        assert_eq!(kv.get("x").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get("gone").unwrap(), None);

        // A later run (or a restarted node) reads what was committed.
        let fresh = ScriptState::new(kv.clone());
        let script = compile("msg.payload = state.m.a[1] + state.get(\"x\"); msg").unwrap();
        let out = returned(
            script
                .run(&mut Script::new_state(fresh), &Msg::new("t", "x", 0))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json(&out[0].payload), serde_json::json!(4.5));

        let bad = compile("state.set(\"\", 1); msg").unwrap();
        let err = bad
            .run(
                &mut Script::new_state(ScriptState::new(kv)),
                &Msg::new("t", "x", 0),
            )
            .unwrap_err();
        assert!(
            err.0.contains("a state key must be 1 to 256 bytes long"),
            "{err}"
        );
    }

    #[test]
    fn compile_errors_have_positions() {
        let err = compile("let x = 1;\nmsg.payload = y;\nmsg").unwrap_err();
        assert_eq!(err.position, Some((2, 15)));
        assert_eq!(err.message, "undefined variable: y");
        let err = compile("msg.payload = (1 + ;").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(1));
    }

    #[test]
    fn limits_stop_runaway_scripts() {
        let msg = Msg::new("t", "1", 0);
        let origin = Origin::Inline {
            base_dir: PathBuf::from("."),
        };
        // The default operation limit, with a deadline no busy machine reaches first.
        let limits = Limits {
            timeout: Duration::from_secs(600),
            ..Limits::default()
        };
        let script = Script::compile("loop {}", &origin, &limits, &NodeId::new("f", "s")).unwrap();
        let err = script
            .run(&mut Script::new_state(ScriptState::detached()), &msg)
            .unwrap_err();
        assert!(
            err.0.starts_with("script exceeded its operation limit"),
            "{err}"
        );

        let limits = Limits {
            max_operations: 0,
            timeout: Duration::from_millis(20),
            ..Limits::default()
        };
        let script = Script::compile("loop {}", &origin, &limits, &NodeId::new("f", "s")).unwrap();
        let err = script
            .run(&mut Script::new_state(ScriptState::detached()), &msg)
            .unwrap_err();
        assert!(
            err.0
                .starts_with("script ran longer than its timeout of 20ms"),
            "{err}"
        );

        // Size and depth limits, with a generous deadline so only they can stop the runs.
        let limits = Limits {
            max_operations: 0,
            max_array_size: 1000,
            max_string_size: 4096,
            max_map_size: 1000,
            timeout: Duration::from_secs(600),
            ..Limits::default()
        };
        let run_limited = |source: &str| {
            let script = Script::compile(source, &origin, &limits, &NodeId::new("f", "s")).unwrap();
            script
                .run(&mut Script::new_state(ScriptState::detached()), &msg)
                .unwrap_err()
                .0
        };
        let err = run_limited("let s = \"x\"; loop { s += s; }");
        assert!(err.contains("Length of string too large"), "{err}");
        let err = run_limited("let a = []; loop { a.push(1); }");
        assert!(err.contains("Size of array/BLOB too large"), "{err}");
        // Rhai checks map sizes in functions such as `set`, not on `m[key] = v`; there the
        // operation limit and the deadline are what stop a runaway script.
        let err = run_limited("let m = #{}; let i = 0; loop { m.set(`k${i}`, i); i += 1; }");
        assert!(err.contains("Size of object map too large"), "{err}");
        let err = run_limited("fn f(n) { f(n + 1) } f(0)");
        assert!(err.to_lowercase().contains("stack overflow"), "{err}");
    }

    #[test]
    fn imports_resolve_next_to_the_script_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("units.rhai"),
            "fn kw(w) { w / 1000.0 }\nexport const NAME = \"kW\";",
        )
        .unwrap();
        let path = dir.path().join("main.rhai");
        let source =
            "import \"units\" as u;\nmsg.payload = #{ v: u::kw(msg.payload), unit: u::NAME };\nmsg";
        let script = Script::compile(
            source,
            &Origin::File { path },
            &Limits::default(),
            &NodeId::new("f", "s"),
        )
        .unwrap();
        // Resolved at compile time: removing the module file changes nothing.
        std::fs::remove_file(dir.path().join("units.rhai")).unwrap();
        let out = returned(
            script
                .run(
                    &mut Script::new_state(ScriptState::detached()),
                    &Msg::new("t", "1500", 0),
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            json(&out[0].payload),
            serde_json::json!({"v": 1.5, "unit": "kW"})
        );

        let err = Script::compile(
            "import \"missing\" as m;\nmsg",
            &Origin::Inline {
                base_dir: dir.path().to_path_buf(),
            },
            &Limits::default(),
            &NodeId::new("f", "s"),
        )
        .unwrap_err();
        assert!(err.message.contains("module not found"), "{err:?}");
    }
}
