//! Hot reload of a running `headwater run`, against the real binary with real MQTT
//! clients on its built-in broker: a changed flow restarts while an unchanged one keeps
//! its stream without loss; broken files change nothing and are reported located; a
//! reload in the middle of a QoS 1 load loses no acknowledged message; SIGHUP and a
//! watched file trigger reloads.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Gateway, PATIENCE, eventually, subscribe_on};

/// [`eventually`] for a plain condition.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    eventually(what, || condition().then_some(()));
}

/// The process under test with its broker and API ports.
struct Hub {
    gateway: Gateway,
    broker: u16,
    api: u16,
}

/// Writes `settings.yaml` (broker and API on free ports, `reload:` as given) beside the
/// flow files and starts `headwater run` on all of them.
fn start(dir: &Path, reload: &str, flows: &[&Path]) -> Hub {
    let settings = dir.join("settings.yaml");
    std::fs::write(
        &settings,
        format!(
            "version: 1\nbroker:\n  listeners: [{{ host: 127.0.0.1, port: 0 }}]\napi:\n  listen: 127.0.0.1:0\nreload: {reload}\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let mut args = vec![
        "--log-format".to_string(),
        "json".to_string(),
        "--data-dir".to_string(),
        data.display().to_string(),
        "run".to_string(),
        settings.display().to_string(),
    ];
    args.extend(flows.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway = Gateway::start(&args);
    let broker = gateway.listening_port();
    let api = event(&gateway, "api listening")["address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("the api's port");
    Hub {
        gateway,
        broker,
        api,
    }
}

/// The next JSON log line whose message starts with `message`, parsed. The flow lists
/// (`added`, `changed`, ...) are Debug-printed lists: `["a", "b"]`.
fn event(gateway: &Gateway, message: &str) -> serde_json::Value {
    loop {
        let line = gateway.wait_for(&format!("\"message\":\"{message}"));
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        if event["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(message))
        {
            return event;
        }
    }
}

/// Waits until the built-in broker holds `count` subscriptions (`GET /api/broker`): a
/// flow's `mqtt.in` subscribes after the process logged it started, and a message
/// published before that has no subscriber to go to.
fn wait_subscriptions(hub: &Hub, count: u64) {
    wait_until("the flows' subscriptions", || {
        let (status, body) = http(hub.api, "GET", "/api/broker");
        assert_eq!(status, 200, "{body}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["subscriptions"].as_u64().unwrap() >= count
    });
}

/// One HTTP/1.1 request without a token or body; returns status and body.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    common::http(port, method, path, None, "")
}

fn reload(hub: &Hub) -> (u16, serde_json::Value) {
    let (status, body) = http(hub.api, "POST", "/api/reload");
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, value)
}

fn names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A node's counters from `GET /api/flows/{flow}/nodes`.
fn node_counter(hub: &Hub, flow: &str, node: &str, counter: &str) -> u64 {
    let (status, body) = http(hub.api, "GET", &format!("/api/flows/{flow}/nodes"));
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node} in {body}"))[counter]
        .as_u64()
        .unwrap()
}

/// An `mqtt.in` (QoS 1) -> `mqtt.out` (QoS 1) flow on the built-in broker.
fn forward_flow(name: &str, from: &str, to: &str) -> String {
    format!(
        "version: 1\nflows:\n  {name}:\n    nodes:\n      in: {{ type: mqtt.in, topics: \"{from}\", qos: 1 }}\n      out: {{ type: mqtt.out, inputs: in, topic: \"{to}\", qos: 1 }}\n"
    )
}

/// A QoS 1 publisher (rumqttc) that records which of its messages the broker
/// acknowledged: the payload of message `i` is `i`.
struct Publisher {
    client: rumqttc::Client,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    acked_count: Arc<AtomicUsize>,
    events: std::thread::JoinHandle<()>,
    done: Arc<AtomicBool>,
}

impl Publisher {
    fn connect(port: u16, id: &str) -> Publisher {
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(50);
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (connected_tx, connected) = mpsc::channel();
        let events = {
            let acked = acked.clone();
            let acked_count = acked_count.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                // pkid -> message number, filled as publishes leave in order.
                let mut sent: HashMap<u16, u64> = HashMap::new();
                let mut next = 0u64;
                for event in connection.iter() {
                    match event {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            let _ = connected_tx.send(());
                        }
                        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                            sent.insert(pkid, next);
                            next += 1;
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                            if let Some(n) = sent.remove(&ack.pkid) {
                                acked.lock().unwrap().insert(n);
                                acked_count.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            assert!(
                                done.load(Ordering::SeqCst),
                                "the publisher's connection failed: {e}"
                            );
                            break;
                        }
                    }
                }
            })
        };
        connected
            .recv_timeout(PATIENCE)
            .expect("the publisher connected");
        Publisher {
            client,
            acked,
            acked_count,
            events,
            done,
        }
    }

    fn publish(&self, topic: &str, n: u64) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, n.to_string())
            .expect("queue a publish");
    }

    /// Waits until `count` messages are acknowledged, then disconnects; returns the
    /// acknowledged message numbers.
    fn finish(self, count: usize) -> BTreeSet<u64> {
        wait_until("every publish acknowledged", || {
            self.acked_count.load(Ordering::SeqCst) >= count
        });
        self.done.store(true, Ordering::SeqCst);
        self.client.disconnect().unwrap();
        self.events.join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

/// What a `mosquitto_sub -v` received, as `(topic, number)`, read as needed.
struct Seen {
    subscriber: common::Subscriber,
    messages: Vec<(String, u64)>,
}

impl Seen {
    /// Reads messages until `enough` holds for what was received (each read waits at
    /// most the subscriber's patience).
    fn until(&mut self, mut enough: impl FnMut(&[(String, u64)]) -> bool) {
        while !enough(&self.messages) {
            let (topic, payload) = self.subscriber.next();
            if let Ok(n) = payload.trim().parse() {
                self.messages.push((topic, n));
            }
        }
    }
}

fn on(messages: &[(String, u64)], topic: &str) -> Vec<u64> {
    messages
        .iter()
        .filter(|(t, _)| t.starts_with(topic))
        .map(|(_, n)| *n)
        .collect()
}

#[test]
fn a_changed_flow_restarts_while_an_unchanged_one_streams_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let steady = dir.path().join("steady.yaml");
    let edited = dir.path().join("edited.yaml");
    std::fs::write(&steady, forward_flow("steady", "in/steady", "out/steady")).unwrap();
    std::fs::write(
        &edited,
        forward_flow("edited", "in/edited", "out/edited/v1"),
    )
    .unwrap();
    let hub = start(dir.path(), "{ watch: false }", &[&steady, &edited]);
    wait_subscriptions(&hub, 2);
    let mut seen = Seen {
        subscriber: subscribe_on(hub.broker, "out/#", 1),
        messages: Vec::new(),
    };
    let publisher = Publisher::connect(hub.broker, "reload-test-stream");

    // The stream runs before, during and after the reload: the first half is sent,
    // then the reload is asked for while the second half is being sent.
    const N: u64 = 400;
    for n in 0..N / 2 {
        publisher.publish("in/steady", n);
        publisher.publish("in/edited", n);
    }
    seen.until(|m| on(m, "out/steady").len() >= 50);
    let received_before = node_counter(&hub, "edited", "out", "received");
    std::fs::write(
        &edited,
        forward_flow("edited", "in/edited", "out/edited/v2"),
    )
    .unwrap();
    let reloading = {
        let api = hub.api;
        std::thread::spawn(move || {
            let (status, body) = http(api, "POST", "/api/reload");
            (
                status,
                serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            )
        })
    };
    for n in N / 2..N {
        publisher.publish("in/steady", n);
        publisher.publish("in/edited", n);
    }
    let (status, outcome) = reloading.join().unwrap();
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["result"], "applied");
    assert_eq!(names(&outcome["changed"]), ["edited"]);
    assert_eq!(names(&outcome["unchanged"]), ["steady"]);
    assert!(names(&outcome["added"]).is_empty() && names(&outcome["removed"]).is_empty());
    assert!(names(&outcome["restart_needed"]).is_empty(), "{outcome}");
    let logged = event(&hub.gateway, "flows reloaded");
    assert_eq!(logged["trigger"], "api", "{logged}");
    assert_eq!(logged["changed"], "[\"edited\"]", "{logged}");
    assert_eq!(logged["unchanged"], "[\"steady\"]", "{logged}");
    publisher.finish(2 * N as usize);

    seen.until(|m| {
        on(m, "out/steady").len() as u64 >= N
            && on(m, "out/edited/")
                .into_iter()
                .collect::<BTreeSet<_>>()
                .len() as u64
                >= N
    });
    let seen = seen.messages;
    // The unchanged flow was not touched: every number once, in order.
    assert_eq!(
        on(&seen, "out/steady"),
        (0..N).collect::<Vec<_>>(),
        "the unchanged flow's stream"
    );
    // The changed flow lost nothing (a redelivery may repeat one) and runs the new
    // definition.
    let edited: BTreeSet<u64> = on(&seen, "out/edited/").into_iter().collect();
    assert_eq!(edited, (0..N).collect(), "the changed flow's messages");
    assert!(seen.iter().any(|(t, _)| t == "out/edited/v2"));
    let v1_after_v2 = seen
        .iter()
        .skip_while(|(t, _)| t != "out/edited/v2")
        .any(|(t, _)| t == "out/edited/v1");
    assert!(
        !v1_after_v2,
        "the old definition ran after the new one started"
    );
    // Counters of a node that kept its id continue across the restart.
    let received_after = node_counter(&hub, "edited", "out", "received");
    assert!(
        received_after >= N && received_after > received_before,
        "edited/out received {received_before} before and {received_after} after"
    );
    // `GET /api/flows` shows the reloaded set, both running.
    let (_, flows) = http(hub.api, "GET", "/api/flows");
    let flows: serde_json::Value = serde_json::from_str(&flows).unwrap();
    let states: Vec<(String, String)> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&("steady".into(), "running".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("edited".into(), "running".into())),
        "{states:?}"
    );

    // Settings are not reloaded: a changed `api:` is reported, the flows stay as they are.
    let settings = dir.path().join("settings.yaml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1"),
    )
    .unwrap();
    let (status, outcome) = reload(&hub);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        names(&outcome["restart_needed"]),
        ["api settings changed: restart needed"]
    );
    assert_eq!(names(&outcome["unchanged"]), ["edited", "steady"]);
    assert!(names(&outcome["changed"]).is_empty());

    // The unchanged flow's `mqtt.in` never subscribed again: it was not restarted.
    let later: Vec<String> = hub.gateway.lines.try_iter().collect();
    assert!(
        !later
            .iter()
            .any(|l| l.contains("steady/in") && l.contains("subscribed")),
        "{later:#?}"
    );
}

#[test]
fn a_broken_file_changes_nothing_and_reports_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let steady = dir.path().join("steady.yaml");
    std::fs::write(&steady, forward_flow("steady", "in/steady", "out/steady")).unwrap();
    let hub = start(dir.path(), "{ watch: false }", &[&steady]);
    wait_subscriptions(&hub, 1);
    let subscriber = subscribe_on(hub.broker, "out/#", 1);
    let publisher = Publisher::connect(hub.broker, "reload-test-broken");
    publisher.publish("in/steady", 1);
    assert_eq!(
        subscriber.next(),
        ("out/steady".to_string(), "1".to_string())
    );

    // An unknown node type, and a second flow with a YAML syntax error.
    let broken =
        forward_flow("steady", "in/steady", "out/steady/new").replace("mqtt.out", "mqtt.outt");
    std::fs::write(&steady, &broken).unwrap();
    let (line, col) = broken
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("mqtt.outt").map(|c| (i as u64 + 1, c as u64 + 1)))
        .unwrap();
    let (status, outcome) = reload(&hub);
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["result"], "invalid");
    let path = steady.display().to_string();
    let error = &outcome["errors"][0];
    assert_eq!(error["file"], path.as_str());
    assert_eq!(
        (error["line"].as_u64(), error["col"].as_u64()),
        (Some(line), Some(col))
    );
    assert!(
        error["headline"].as_str().unwrap().starts_with(&format!(
            "{path}:{line}:{col}: unknown node type `mqtt.outt`"
        )),
        "{error}"
    );
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{outcome}"
    );
    let logged = event(&hub.gateway, "reload refused");
    assert_eq!(logged["level"], "ERROR");
    assert!(
        logged["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{path}:{line}:{col}: unknown node type")),
        "{logged}"
    );

    let broken_yaml = "version: 1\nflows:\n  steady:\n    nodes: [unclosed\n";
    std::fs::write(&steady, broken_yaml).unwrap();
    let (status, outcome) = reload(&hub);
    assert_eq!(status, 422, "{outcome}");
    let headline = outcome["errors"][0]["headline"].as_str().unwrap();
    assert!(headline.starts_with(&format!("{path}:")), "{headline}");
    assert!(headline.contains("invalid YAML"), "{headline}");
    event(&hub.gateway, "reload refused");

    // The old flow still runs as it did.
    publisher.publish("in/steady", 2);
    assert_eq!(
        subscriber.next(),
        ("out/steady".to_string(), "2".to_string())
    );
    let (_, flows) = http(hub.api, "GET", "/api/flows");
    assert!(
        flows.contains("\"steady\"") && flows.contains("\"running\""),
        "{flows}"
    );
    publisher.finish(2);
}

/// `mqtt.in` (QoS 1) -> `script` -> `file.out` (JSON lines), the script tagging which
/// version of the flow handled each message.
fn load_flow(version: u32) -> String {
    format!(
        r#"version: 1
flows:
  load:
    nodes:
      in: {{ type: mqtt.in, topics: "in/load", qos: 1 }}
      tag: {{ type: script, inputs: in, rhai: 'msg.headers.version = "{version}"; msg' }}
      out: {{ type: file.out, inputs: tag, path: load.jsonl, format: json }}
"#
    )
}

/// The message numbers in the sink's file, by the flow version that wrote them.
fn written(file: &Path) -> Vec<(u64, String)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    text.lines()
        // The last line may be half-written while we read.
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| {
            let n = v["payload"]
                .as_u64()
                .or_else(|| v["payload"].as_str().and_then(|s| s.parse().ok()))
                .expect("a numbered payload");
            (
                n,
                v["headers"]["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_reload_during_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("load.yaml");
    std::fs::write(&flow, load_flow(1)).unwrap();
    let hub = start(dir.path(), "{ watch: false }", &[&flow]);
    wait_subscriptions(&hub, 1);
    let publisher = Arc::new(Publisher::connect(hub.broker, "reload-test-load"));
    const N: u64 = 3000;
    // The sender keeps publishing while the flow is reloaded twice; the last quarter
    // waits for the reloads, so some of the load surely comes after them.
    let (go_on, resume) = mpsc::channel::<()>();
    let sending = {
        let publisher = publisher.clone();
        std::thread::spawn(move || {
            for n in 0..N {
                if n == 3 * N / 4 {
                    resume.recv().expect("the test resumes the sender");
                }
                publisher.publish("in/load", n);
            }
        })
    };
    for (version, after) in [(2, N as usize / 4), (3, N as usize / 2)] {
        wait_until("part of the load acknowledged", || {
            publisher.acked_count.load(Ordering::SeqCst) >= after
        });
        std::fs::write(&flow, load_flow(version)).unwrap();
        let (status, outcome) = reload(&hub);
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(names(&outcome["changed"]), ["load"], "{outcome}");
    }
    go_on.send(()).unwrap();
    sending.join().unwrap();
    let publisher = Arc::into_inner(publisher).expect("the sender is done");
    let acked = publisher.finish(N as usize);
    assert_eq!(acked.len() as u64, N);

    let file = dir.path().join("data").join("load.jsonl");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let numbers: BTreeSet<u64> = written(&file).into_iter().map(|(n, _)| n).collect();
        let missing: Vec<u64> = acked.difference(&numbers).copied().collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let versions: BTreeSet<String> = written(&file).into_iter().map(|(_, v)| v).collect();
            panic!(
                "{} acknowledged messages never reached the sink (of {} written, versions {versions:?}): {:?}...",
                missing.len(),
                numbers.len(),
                &missing[..missing.len().min(20)]
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = written(&file);
    let versions: BTreeSet<&str> = rows.iter().map(|(_, v)| v.as_str()).collect();
    assert!(
        versions.contains("3"),
        "the last definition ran: {versions:?}"
    );
    let last_version = rows.iter().map(|(_, v)| v.as_str()).next_back();
    assert_eq!(last_version, Some("3"));
}

#[test]
fn sighup_reloads_the_flow_files() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("ticks.yaml");
    let ticks = |interval: &str| {
        format!(
            "version: 1\nflows:\n  ticks:\n    nodes:\n      tick: {{ type: timer, interval: {interval} }}\n      show: {{ type: log, level: debug, inputs: tick }}\n"
        )
    };
    std::fs::write(&flow, ticks("1h")).unwrap();
    let hub = start(dir.path(), "{ watch: false }", &[&flow]);

    hub.gateway.signal("HUP");
    let logged = event(&hub.gateway, "flows reloaded");
    assert_eq!(logged["message"], "flows reloaded: nothing changed");
    assert_eq!(logged["trigger"], "SIGHUP");

    std::fs::write(&flow, ticks("2h")).unwrap();
    hub.gateway.signal("HUP");
    let logged = event(&hub.gateway, "flows reloaded");
    assert_eq!(logged["trigger"], "SIGHUP");
    assert_eq!(logged["changed"], "[\"ticks\"]", "{logged}");
    // Still running and answering after the reloads.
    assert_eq!(http(hub.api, "GET", "/healthz").0, 200);
    hub.gateway.signal("TERM");
    hub.gateway.wait_for("all queues drained");
}

#[test]
fn a_watched_file_change_reloads_once_the_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("scripted.yaml");
    let script = dir.path().join("tag.rhai");
    std::fs::write(&script, "msg.headers.v = \"1\"; msg\n").unwrap();
    std::fs::write(
        &flow,
        "version: 1\nflows:\n  scripted:\n    nodes:\n      tick: { type: timer, interval: 1h }\n      tag: { type: script, inputs: tick, file: tag.rhai }\n      show: { type: log, level: debug, inputs: tag }\n",
    )
    .unwrap();
    let hub = start(dir.path(), "{ watch: true, poll_interval: 50ms }", &[&flow]);

    // A file the flow names (its script) changes: the flow restarts.
    std::fs::write(&script, "msg.headers.v = \"2\"; msg\n").unwrap();
    let logged = event(&hub.gateway, "flows reloaded");
    assert_eq!(logged["trigger"], format!("{} changed", script.display()));
    assert_eq!(logged["changed"], "[\"scripted\"]", "{logged}");

    // A broken flow file is reported once, and the mended one is applied.
    std::fs::write(&flow, "version: 1\nflows:\n  scripted: {\n").unwrap();
    let logged = event(&hub.gateway, "reload refused");
    assert!(
        logged["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{}:", flow.display())),
        "{logged}"
    );
    std::fs::write(
        &flow,
        "version: 1\nflows:\n  other:\n    nodes:\n      tick: { type: timer, interval: 1h }\n      show: { type: log, inputs: tick }\n",
    )
    .unwrap();
    let logged = event(&hub.gateway, "flows reloaded");
    assert_eq!(logged["added"], "[\"other\"]", "{logged}");
    assert_eq!(logged["removed"], "[\"scripted\"]", "{logged}");
    let (_, flows) = http(hub.api, "GET", "/api/flows");
    assert!(
        flows.contains("\"other\"") && !flows.contains("\"scripted\""),
        "{flows}"
    );
}
