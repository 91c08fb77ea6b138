//! The API against its real router (`oneshot`, no socket) over a real engine running a
//! small flow and an in-memory broker: every endpoint, the token rule, error bodies,
//! the body limit, the OpenAPI copy, `/metrics` through a strict text-format parser,
//! and the tap (exact delivery; a tap that never reads does not hold the flow back).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::broker::{BrokerConfig, Persistence};
use crate::engine::{Engine, EngineOptions};

const FLOW: &str = r#"
version: 1
flows:
  demo:
    nodes:
      tick: { type: timer, interval: 1h }
      pass: { type: script, inputs: tick, rhai: "msg" }
      sink: { type: log, level: debug, inputs: pass }
"#;

/// A running engine with the API's state over it.
struct Fixture {
    engine: Engine,
    state: AppState,
}

impl Fixture {
    async fn start(token: Option<&str>) -> Fixture {
        let set = crate::flow::load_sources(
            vec![(PathBuf::from("flows/demo.yaml"), FLOW.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .unwrap_or_else(|d| panic!("flow does not load: {d:?}"));
        let clock = Clock::system();
        let data = tempfile::tempdir().unwrap();
        let plan = set
            .plan(data.path(), &clock)
            .unwrap_or_else(|d| panic!("flow does not build: {d:?}"));
        let broker = crate::broker::Broker::open(
            BrokerConfig {
                persistence: Persistence::Memory,
                listeners: Vec::new(),
                sys_interval: 0,
                ..BrokerConfig::default()
            },
            Path::new("unused"),
        )
        .unwrap();
        let engine = Engine::start(
            plan,
            EngineOptions {
                clock: clock.clone(),
                broker: Some(broker.clone()),
                ..EngineOptions::default()
            },
        );
        let graph = Graph {
            flows: FlowInfo::from_set(&set),
            nodes: engine.nodes().to_vec(),
        };
        let store = crate::store::Store::open(crate::store::StoreOptions::default()).unwrap();
        let context = ApiContext::new(
            graph,
            Some(broker),
            Some(store),
            clock,
            token.map(str::to_string),
        );
        context.set_ready(None);
        Fixture {
            engine,
            state: AppState(Arc::new(context)),
        }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body.to_vec())
    }

    async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let (status, _, body) = self.call(get(path)).await;
        (status, body)
    }

    async fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    async fn inject(&self, node: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let request = Request::post(format!("/api/flows/demo/nodes/{node}/inject"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, body) = self.call(request).await;
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn stats(&self, node: &str) -> Arc<crate::engine::NodeStats> {
        self.engine.node("demo", node).unwrap().stats.clone()
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// An error body: JSON with exactly one non-empty `error` string.
fn assert_error(body: &[u8], containing: &str) {
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    let message = value["error"].as_str().expect("an `error` string");
    assert!(
        message.contains(containing),
        "{message:?} does not mention {containing:?}"
    );
    assert_eq!(value.as_object().unwrap().len(), 1);
}

/// Bounded wait for a condition the flow reaches on its own.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test]
async fn health_and_readiness() {
    let f = Fixture::start(None).await;
    assert_eq!(f.json("/healthz").await["status"], "ok");
    assert_eq!(f.json("/readyz").await["status"], "ready");
    f.state.set_ready(Some("shutting down"));
    let (status, body) = f.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&body, "not ready: shutting down");
}

#[tokio::test]
async fn flows_list_their_file_state_and_wiring() {
    let f = Fixture::start(None).await;
    let flows = f.json("/api/flows").await;
    let flow = &flows["flows"][0];
    assert_eq!(flow["name"], "demo");
    assert_eq!(flow["file"], "flows/demo.yaml");
    assert_eq!(flow["state"], "running");
    let pass = &flow["nodes"][1];
    assert_eq!(pass["name"], "pass");
    assert_eq!(pass["kind"], "script");
    assert_eq!(
        pass["inputs"][0],
        serde_json::json!({"node": "tick", "port": "out"})
    );
    assert_eq!(pass["ports"], serde_json::json!(["out", "error"]));
}

#[tokio::test]
async fn nodes_show_state_and_counters_and_unknown_names_are_404() {
    let f = Fixture::start(None).await;
    let (status, body) = f
        .inject("pass", r#"{"topic": "t", "payload": {"a": 1}}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually("the sink received it", || {
        f.stats("sink").received.load(Ordering::Relaxed) == 1
    })
    .await;
    let nodes = f.json("/api/flows/demo/nodes").await;
    let by_name: BTreeMap<String, serde_json::Value> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_string(), n.clone()))
        .collect();
    assert_eq!(by_name["pass"]["state"], "running");
    assert_eq!(by_name["pass"]["received"], 1);
    assert_eq!(by_name["pass"]["emitted"], 1);
    assert_eq!(by_name["pass"]["inputs"][0]["from"], "tick.out");
    assert_eq!(by_name["pass"]["inputs"][0]["capacity"], 1024);
    assert_eq!(by_name["pass"]["inputs"][0]["overflow"], "block");
    assert_eq!(by_name["sink"]["received"], 1);
    assert_eq!(by_name["sink"]["kind"], "log");
    assert!(by_name["sink"]["last_error"].is_null());

    let (status, body) = f.get("/api/flows/nope/nodes").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "no flow named `nope`");
    let (status, body) = f.inject("ghost", r#"{"topic": "t"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        "flow `demo` has no node named `ghost`; GET /api/flows/demo/nodes lists them"
    );
}

#[tokio::test]
async fn injection_into_a_source_leaves_from_its_port_and_bodies_are_checked() {
    let f = Fixture::start(None).await;
    let (status, body) = f
        .inject(
            "tick",
            r#"{"topic": "t", "payload": "text", "headers": {"h": "v"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["into"], "output");
    eventually("the source's message reached the sink", || {
        f.stats("sink").received.load(Ordering::Relaxed) == 1
    })
    .await;
    let (_, body) = f
        .inject("pass", r#"{"topic": "t", "payload_base64": "AAEC"}"#)
        .await;
    assert_eq!(body["into"], "input");

    for (bad, expected) in [
        ("not json", "the body must be JSON"),
        (r#"{"payload": 1}"#, "missing field `topic`"),
        (r#"{"topic": "t", "extra": 1}"#, "unknown field `extra`"),
        (
            r#"{"topic": "t", "payload": 1, "payload_base64": "AA=="}"#,
            "not both",
        ),
        (r#"{"topic": "t", "payload_base64": "!!"}"#, "not base64"),
    ] {
        let request = Request::post("/api/flows/demo/nodes/pass/inject")
            .body(Body::from(bad))
            .unwrap();
        let (status, _, body) = f.call(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_error(&body, expected);
    }
    // The body limit: 1 MiB and a byte more is refused before any of it is parsed.
    let big = format!(
        r#"{{"topic": "t", "payload": "{}"}}"#,
        "x".repeat(BODY_LIMIT)
    );
    let request = Request::post("/api/flows/demo/nodes/pass/inject")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = f.call(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body, "larger than 1048576 bytes");
}

#[tokio::test]
async fn a_token_is_required_when_configured_except_for_probes_and_the_page() {
    let f = Fixture::start(Some("s3cret-token")).await;
    for path in [
        "/api/flows",
        "/api/broker",
        "/metrics",
        "/api/tap?flow=demo&node=pass",
        "/api/openapi.json",
    ] {
        let (status, headers, body) = f.call(get(path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"headwater\"");
        assert_error(&body, "no bearer token");
    }
    let wrong = Request::get("/api/flows")
        .header("authorization", "Bearer s3cret-tokeN")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = f.call(wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "wrong bearer token");
    let right = Request::get("/api/flows")
        .header("authorization", "Bearer s3cret-token")
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.call(right).await.0, StatusCode::OK);
    for path in ["/healthz", "/readyz", "/", "/status.js", "/status.css"] {
        assert_eq!(f.get(path).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn unknown_paths_methods_and_reload_answer_json() {
    let f = Fixture::start(None).await;
    let (status, body) = f.get("/api/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "no such endpoint: /api/nothing");
    let delete = Request::builder()
        .method(Method::DELETE)
        .uri("/api/flows")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = f.call(delete).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&body, "DELETE is not allowed on /api/flows");
    let reload = Request::post("/api/reload").body(Body::empty()).unwrap();
    let (status, _, body) = f.call(reload).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_error(&body, "restart the process");
}

#[tokio::test]
async fn broker_figures_are_served() {
    let f = Fixture::start(None).await;
    let broker = f.json("/api/broker").await;
    for key in [
        "connected",
        "sessions",
        "subscriptions",
        "retained",
        "queued",
        "inflight",
        "messages_received",
        "bytes_sent",
    ] {
        assert!(broker[key].is_u64(), "{key} in {broker}");
    }
    assert_eq!(broker["bridges"], serde_json::json!([]));
}

#[tokio::test]
async fn openapi_is_served_and_docs_hold_the_same_copy() {
    let f = Fixture::start(None).await;
    let (status, body) = f.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let docs = include_str!("../../docs/api/openapi.json");
    assert_eq!(
        String::from_utf8(body.clone()).unwrap(),
        docs,
        "docs/api/openapi.json differs from src/api/openapi.json: copy it over"
    );
    // Every documented path is routed (a path parameter filled with a real name).
    let spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        let concrete = path.replace("{flow}", "demo").replace("{node}", "pass");
        for method in methods.as_object().unwrap().keys() {
            if concrete == "/api/tap" {
                continue; // a stream: covered by its own tests
            }
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .body(Body::from(r#"{"topic": "t"}"#))
                .unwrap();
            let (status, _, body) = f.call(request).await;
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("no such endpoint") && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed: {status} {text}"
            );
        }
    }
}

/// One sample: labels, the sample's name, its value.
type Sample = (BTreeMap<String, String>, String, f64);
/// Families by name: type and samples.
type Families = BTreeMap<String, (String, Vec<Sample>)>;

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs to the
/// family whose `# TYPE` came last, families are contiguous and declared once, names and
/// labels are well formed, no series repeats, counters end in `_total`, and histogram
/// buckets are cumulative up to `+Inf`, which equals `_count`.
fn parse_exposition(text: &str) -> Families {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut families: Families = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut seen = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(is_name(name), "{at}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(&at);
            assert!(is_name(name), "{at}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(!families.contains_key(name), "family declared twice: {at}");
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "a counter's name ends in _total: {at}"
                );
            }
            families.insert(name.to_string(), (kind.to_string(), Vec::new()));
            current = Some(name.to_string());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected {at}"
        );
        let (series, value) = line.rsplit_once(' ').expect(&at);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {at}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect(&at);
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(is_name(&key), "bad label name {key:?}: {at}");
                    assert_eq!(chars.next(), Some('"'), "{at}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect(&at) {
                            '\\' => match chars.next().expect(&at) {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c}: {at}"),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    assert!(labels.insert(key, value).is_none(), "repeated label: {at}");
                    match chars.next() {
                        Some(',') | None => {}
                        Some(c) => panic!("unexpected {c:?}: {at}"),
                    }
                }
                (name, labels)
            }
        };
        let family_name = current.clone().expect("a sample before any # TYPE");
        let (kind, samples) = families.get_mut(&family_name).unwrap();
        let belongs = name == family_name
            || (kind == "histogram"
                && [
                    &format!("{family_name}_bucket"),
                    &format!("{family_name}_sum"),
                    &format!("{family_name}_count"),
                ]
                .contains(&&name.to_string()));
        assert!(belongs, "sample outside its family {family_name}: {at}");
        assert!(
            seen.insert(format!("{name}{labels:?}")),
            "repeated series: {at}"
        );
        samples.push((labels, name.to_string(), value));
    }
    for (name, (kind, samples)) in &families {
        if kind != "histogram" {
            continue;
        }
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for (labels, sample, value) in samples {
            let mut key = labels.clone();
            let le = key.remove("le");
            let key = format!("{key:?}");
            if sample.ends_with("_bucket") {
                let le = le.expect("a bucket has `le`");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                groups.entry(key).or_default().push((bound, *value));
            } else if sample.ends_with("_count") {
                counts.insert(key, *value);
            }
        }
        for (key, buckets) in groups {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}{key}: buckets not cumulative"
            );
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{name}{key}: no +Inf bucket");
            assert_eq!(
                Some(&last.1),
                counts.get(&key),
                "{name}{key}: +Inf differs from _count"
            );
        }
    }
    families
}

#[tokio::test]
async fn metrics_parse_strictly_and_carry_every_documented_series() {
    let f = Fixture::start(None).await;
    f.inject("pass", r#"{"topic": "t", "payload": 1}"#).await;
    eventually("the sink received it", || {
        f.stats("sink").received.load(Ordering::Relaxed) == 1
    })
    .await;
    // A store commit, so its latency histogram has an observation.
    f.state
        .store
        .as_ref()
        .unwrap()
        .commit(Vec::new())
        .await
        .unwrap();
    let (status, headers, body) = f.call(get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], metrics::CONTENT_TYPE_TEXT);
    let families = parse_exposition(std::str::from_utf8(&body).unwrap());

    let documented: Vec<String> = include_str!("../../docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `headwater_"))
        .map(|l| format!("headwater_{}", l.split('`').next().unwrap()))
        .collect();
    assert!(
        documented.len() >= 25,
        "docs/metrics.md lists {} series",
        documented.len()
    );
    for name in &documented {
        assert!(
            families.contains_key(name),
            "{name} is documented but not served"
        );
    }
    for name in families.keys() {
        assert!(
            documented.contains(name),
            "{name} is served but not in docs/metrics.md"
        );
    }
    let received = &families["headwater_node_received_messages_total"].1;
    let sink = received
        .iter()
        .find(|(labels, _, _)| labels["node"] == "sink")
        .unwrap();
    assert_eq!(sink.0["kind"], "log");
    assert_eq!(sink.2, 1.0);
    let processed = &families["headwater_node_processing_seconds"].1;
    let pass_count = processed
        .iter()
        .find(|(labels, name, _)| labels["node"] == "pass" && name.ends_with("_count"))
        .unwrap();
    assert_eq!(pass_count.2, 1.0, "the script's batch was timed");
    let sent = &families["headwater_edge_sent_messages_total"].1;
    assert!(sent.iter().any(|(l, _, v)| l["from"] == "pass"
        && l["port"] == "out"
        && l["to"] == "sink"
        && *v == 1.0));
    assert!(families["headwater_process_resident_memory_bytes"].1[0].2 > 0.0);
    let commits = &families["headwater_store_commit_duration_seconds"].1;
    assert!(
        commits
            .iter()
            .any(|(_, name, v)| name.ends_with("_count") && *v >= 0.0)
    );
}

/// Server-sent events read from a response body, one `(event, data)` at a time.
struct Events {
    body: Body,
    buffer: String,
}

impl Events {
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line
                        .strip_prefix("event: ")
                        .or_else(|| line.strip_prefix("event:"))
                    {
                        event = v.to_string();
                    } else if let Some(v) = line
                        .strip_prefix("data: ")
                        .or_else(|| line.strip_prefix("data:"))
                    {
                        data.push_str(v);
                    }
                }
                if data.is_empty() && !block.contains("event") {
                    continue; // a keep-alive comment
                }
                return (event, data);
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("an event within 30 s")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

async fn open_tap(f: &Fixture, query: &str) -> Events {
    let response = router(f.state.clone())
        .oneshot(get(&format!("/api/tap?{query}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Events {
        body: response.into_body(),
        buffer: String::new(),
    }
}

#[tokio::test]
async fn a_tap_receives_exactly_the_messages_leaving_its_node() {
    let f = Fixture::start(None).await;
    let mut tap = open_tap(&f, "flow=demo&node=pass").await;
    let (event, data) = tap.next().await;
    assert_eq!(event, "ready");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data).unwrap()["node"],
        "pass"
    );
    let sent: Vec<String> = (0..20).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    for (i, payload) in sent.iter().enumerate() {
        let body =
            format!(r#"{{"topic": "t/{i}", "payload": {payload}, "headers": {{"k": "v{i}"}}}}"#);
        assert_eq!(f.inject("pass", &body).await.0, StatusCode::ACCEPTED);
    }
    // One marker on another branch (straight into the sink): not tapped on `pass`.
    f.inject("sink", r#"{"topic": "other"}"#).await;
    for (i, payload) in sent.iter().enumerate() {
        let (event, data) = tap.next().await;
        assert_eq!(event, "message");
        let message: tap::TapMessage = serde_json::from_str(&data).unwrap();
        assert_eq!(message.topic, format!("t/{i}"));
        assert_eq!(message.port, "out");
        assert_eq!(message.encoding, "json");
        assert_eq!(
            message.payload,
            serde_json::from_str::<serde_json::Value>(payload).unwrap()
        );
        assert_eq!(message.headers["k"], format!("v{i}"));
    }
    eventually("the sink got all 21", || {
        f.stats("sink").received.load(Ordering::Relaxed) == 21
    })
    .await;
    assert_eq!(
        f.engine
            .node("demo", "pass")
            .unwrap()
            .outputs
            .tap()
            .watchers(),
        1
    );
    drop(tap);
    assert_eq!(
        f.engine
            .node("demo", "pass")
            .unwrap()
            .outputs
            .tap()
            .watchers(),
        0
    );
}

#[tokio::test]
async fn a_tap_that_never_reads_drops_its_copies_and_the_flow_delivers_everything() {
    let f = Fixture::start(None).await;
    let mut tap = open_tap(&f, "flow=demo&node=pass&format=text&rate=5").await;
    assert_eq!(tap.next().await.0, "ready");
    // The tap's reader stalls now; the flow goes on at its own pace.
    const N: u64 = 3000;
    let pass = f.engine.node("demo", "pass").unwrap().clone();
    for i in 0..N {
        let msg = crate::engine::Msg::new("load", format!("{i}"), 0);
        pass.inject(msg).await.unwrap();
    }
    eventually("the sink got the whole stream", || {
        f.stats("sink").received.load(Ordering::Relaxed) == N
    })
    .await;
    assert_eq!(f.stats("pass").emitted.load(Ordering::Relaxed), N);
    // What the tap holds is bounded by its channel; the rest is reported as dropped.
    let mut delivered = 0;
    loop {
        let (event, data) = tap.next().await;
        if event == "dropped" {
            let dropped = serde_json::from_str::<serde_json::Value>(&data).unwrap()["dropped"]
                .as_u64()
                .unwrap();
            assert_eq!(dropped, N - crate::engine::tap::TAP_DEPTH as u64);
            break;
        }
        assert_eq!(event, "message");
        let message: tap::TapMessage = serde_json::from_str(&data).unwrap();
        assert_eq!(message.encoding, "text");
        assert_eq!(
            message.payload,
            serde_json::Value::String(format!("{delivered}"))
        );
        delivered += 1;
    }
}

#[tokio::test]
async fn a_broker_tap_streams_what_is_published_on_a_topic() {
    use crate::broker::codec::{Publish, Qos};
    let f = Fixture::start(None).await;
    let mut tap = open_tap(&f, "topic=home/%23").await;
    assert_eq!(tap.next().await.0, "ready");
    let broker = f.state.broker.clone().unwrap();
    for (topic, payload) in [("home/a", "1"), ("away/b", "2"), ("home/c/d", "bin\u{0}")] {
        let publish = Publish {
            topic: topic.into(),
            payload: bytes::Bytes::from(payload.to_string()),
            qos: Qos::AtMostOnce,
            retain: false,
            dup: false,
            packet_id: None,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: Default::default(),
        };
        broker.publish(publish, Default::default()).await.unwrap();
    }
    let first: tap::TapMessage = serde_json::from_str(&tap.next().await.1).unwrap();
    assert_eq!(
        (first.topic.as_str(), first.port.as_str(), &first.payload),
        ("home/a", "broker", &serde_json::json!(1))
    );
    let second: tap::TapMessage = serde_json::from_str(&tap.next().await.1).unwrap();
    assert_eq!(second.topic, "home/c/d");
    assert_eq!(second.encoding, "text");
}

#[tokio::test]
async fn tap_queries_are_checked() {
    let f = Fixture::start(None).await;
    for (query, status, expected) in [
        (
            "flow=demo",
            StatusCode::BAD_REQUEST,
            "give `flow` and `node`",
        ),
        (
            "flow=demo&node=ghost",
            StatusCode::NOT_FOUND,
            "no node named `ghost`",
        ),
        (
            "flow=demo&node=pass&rate=0",
            StatusCode::BAD_REQUEST,
            "`rate`",
        ),
        (
            "flow=demo&node=pass&format=xml",
            StatusCode::BAD_REQUEST,
            "bad query string",
        ),
        (
            "topic=a/%23/b",
            StatusCode::BAD_REQUEST,
            "not a valid MQTT topic filter",
        ),
    ] {
        let (got, body) = f.get(&format!("/api/tap?{query}")).await;
        assert_eq!(got, status, "{query}");
        assert_error(&body, expected);
    }
}

#[tokio::test]
async fn injecting_into_a_stopped_flow_is_a_conflict() {
    let Fixture { engine, state } = Fixture::start(None).await;
    engine.shutdown().await;
    for node in ["tick", "pass"] {
        let request = Request::post(format!("/api/flows/demo/nodes/{node}/inject"))
            .body(Body::from(r#"{"topic": "late"}"#))
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT, "{node}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_error(&body, &format!("node demo/{node} no longer takes input"));
    }
    let flows: serde_json::Value = {
        let response = router(state.clone())
            .oneshot(get("/api/flows"))
            .await
            .unwrap();
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
    };
    assert_eq!(flows["flows"][0]["state"], "stopped");
}

#[tokio::test]
async fn a_node_tap_with_a_topic_filter_shows_only_matching_messages() {
    let f = Fixture::start(None).await;
    let mut tap = open_tap(&f, "flow=demo&node=pass&topic=keep/%2B").await;
    assert_eq!(tap.next().await.0, "ready");
    for topic in ["drop/a", "keep/a", "keep/a/b", "keep/b"] {
        let body = format!(r#"{{"topic": "{topic}", "payload": "x"}}"#);
        assert_eq!(f.inject("pass", &body).await.0, StatusCode::ACCEPTED);
    }
    for expected in ["keep/a", "keep/b"] {
        let message: tap::TapMessage = serde_json::from_str(&tap.next().await.1).unwrap();
        assert_eq!(message.topic, expected);
    }
    eventually("all four passed", || {
        f.stats("sink").received.load(Ordering::Relaxed) == 4
    })
    .await;
}

/// `POST /api/reload` hands the request to whoever reloads (here a stand-in for `run`)
/// and answers with its outcome: 200 with the changes, 422 with located errors in the
/// API's error shape, 503 once nothing takes reloads any more.
#[tokio::test]
async fn reload_answers_with_the_outcome_of_the_reloading_task() {
    use crate::engine::reload::{FlowChanges, LocatedError, ReloadOutcome, Reloads, Trigger};
    let f = Fixture::start(None).await;
    let (reloads, mut requests) = Reloads::channel();
    f.state.set_reloads(reloads);
    let answers = tokio::spawn(async move {
        let mut outcomes = vec![
            ReloadOutcome::Applied {
                changes: FlowChanges {
                    changed: vec!["demo".into()],
                    unchanged: vec!["other".into()],
                    ..FlowChanges::default()
                },
                drain_timed_out: vec![],
                restart_needed: vec!["broker settings changed: restart needed".into()],
            },
            ReloadOutcome::Invalid {
                errors: vec![LocatedError {
                    file: "f.yaml".into(),
                    line: Some(4),
                    col: Some(13),
                    message: "unknown node type `fliter`".into(),
                    headline: "f.yaml:4:13: unknown node type `fliter`".into(),
                }],
            },
        ]
        .into_iter();
        // Two requests answered, then the reloading side goes away.
        for _ in 0..2 {
            let request = requests.recv().await.unwrap();
            assert_eq!(request.trigger, Trigger::Api);
            let _ = request.reply.unwrap().send(outcomes.next().unwrap());
        }
    });
    let post = || Request::post("/api/reload").body(Body::empty()).unwrap();

    let (status, _, body) = f.call(post()).await;
    assert_eq!(status, StatusCode::OK);
    let applied: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(applied["result"], "applied");
    assert_eq!(applied["changed"], serde_json::json!(["demo"]));
    assert_eq!(applied["unchanged"], serde_json::json!(["other"]));
    assert_eq!(applied["added"], serde_json::json!([]));
    assert_eq!(
        applied["restart_needed"],
        serde_json::json!(["broker settings changed: restart needed"])
    );

    let (status, _, body) = f.call(post()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The API's error shape, with the located list beside the message.
    let invalid: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = invalid["error"].as_str().expect("an `error` string");
    assert!(
        message.contains("1 error, nothing was changed")
            && message.contains("f.yaml:4:13: unknown node type `fliter`"),
        "{message}"
    );
    assert_eq!(invalid["result"], "invalid");
    assert_eq!(invalid["errors"][0]["line"], 4);
    assert_eq!(invalid["errors"][0]["col"], 13);

    answers.await.unwrap();
    let (status, _, body) = f.call(post()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&body, "shutting down");
}
