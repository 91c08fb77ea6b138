//! The built-in broker against the Python paho-mqtt 2.x client, in MQTT 3.1.1 and 5.0:
//! QoS 2, wills, retained messages, shared subscriptions and persistent sessions.
//!
//! Each scenario is a script under `tests/peers/` that drives real paho clients over
//! real sockets, waits on paho's callbacks (never on sleeps) and prints what it observed
//! as JSON lines; the assertions live here. python3 and paho-mqtt are required (test.sh
//! installs paho): a missing one fails the test, it is not skipped.

mod common;

use std::collections::HashSet;
use std::process::Command;

use serde_json::Value;

use common::headwater_broker;

/// Runs `tests/peers/SCRIPT --port PORT --version VERSION` against a fresh broker and
/// returns the JSON lines it printed. Every wait inside the script is bounded, so a
/// broker that never answers makes the script fail rather than hang.
fn scenario(script: &str, version: &str) -> Vec<Value> {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = headwater_broker(data.path());
    let path = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(&path)
        .args(["--port", &port.to_string(), "--version", version])
        // No __pycache__ left in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 (CI installs it; test.sh installs paho-mqtt)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} v{version} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// The observations whose `event` is `event`.
fn events<'a>(observed: &'a [Value], event: &str) -> Vec<&'a Value> {
    observed.iter().filter(|o| o["event"] == event).collect()
}

/// A message as `(topic, payload, qos, retain, dup)`.
fn message(o: &Value) -> (String, String, u64, bool, bool) {
    (
        o["topic"].as_str().unwrap().to_string(),
        o["payload"].as_str().unwrap().to_string(),
        o["qos"].as_u64().unwrap(),
        o["retain"].as_bool().unwrap(),
        o["dup"].as_bool().unwrap(),
    )
}

fn m(topic: &str, payload: &str, qos: u64, retain: bool) -> (String, String, u64, bool, bool) {
    (topic.into(), payload.into(), qos, retain, false)
}

fn check_qos_2_exactly_once(version: &str) {
    let observed = scenario("paho_qos2.py", version);
    assert_eq!(
        events(&observed, "suback")[0]["codes"],
        serde_json::json!([2])
    );
    let got: Vec<_> = events(&observed, "message")
        .into_iter()
        .map(message)
        .collect();
    let mut want: Vec<_> = (0..20)
        .map(|i| m("qos2/x", &format!("m{i}"), 2, false))
        .collect();
    want.push(m("qos2/x", "fence", 2, false));
    // In order, each once, at QoS 2, with neither DUP nor RETAIN set.
    assert_eq!(got, want);
}

#[test]
fn mqtt_4_3_3_paho_v311_qos_2_arrives_exactly_once_in_order() {
    check_qos_2_exactly_once("3");
}

#[test]
fn mqtt_4_3_3_paho_v5_qos_2_arrives_exactly_once_in_order() {
    check_qos_2_exactly_once("5");
}

fn check_retained(version: &str) {
    let observed = scenario("paho_retained.py", version);
    let phase = |p: &str| -> Vec<_> {
        events(&observed, "message")
            .into_iter()
            .filter(|o| o["phase"] == p)
            .map(message)
            .collect()
    };
    // A new subscription gets the retained message with RETAIN set [MQTT-3.3.1-8].
    assert_eq!(phase("on subscribe"), vec![m("ret/a", "kept", 1, true)]);
    // To an existing subscription RETAIN is 0 (v3.1.1 [MQTT-3.3.1-9]; v5 without
    // retain-as-published [MQTT-3.3.1-12]), the clearing empty messages included.
    assert_eq!(
        phase("live"),
        vec![
            m("ret/b", "live retained", 1, false),
            m("ret/a", "", 1, false),
            m("ret/b", "", 1, false),
            m("ret/fence", "fence", 1, false),
        ]
    );
    // An empty retained payload removes the retained message [MQTT-3.3.1-10/11].
    assert_eq!(
        phase("after clear"),
        vec![m("ret/fence", "fence", 1, false)]
    );
}

#[test]
fn mqtt_3_3_1_paho_v311_retained_is_set_delivered_with_flag_and_cleared() {
    check_retained("3");
}

#[test]
fn mqtt_3_3_1_paho_v5_retained_is_set_delivered_with_flag_and_cleared() {
    check_retained("5");
}

fn check_wills(version: &str) {
    let observed = scenario("paho_will.py", version);
    let will = |case: &str| -> (String, String, u64, bool, bool) {
        let found = events(&observed, "will")
            .into_iter()
            .find(|o| o["case"] == case)
            .unwrap_or_else(|| panic!("no will for {case:?} in {observed:?}"));
        message(found)
    };
    // The first will to arrive is the dropped socket's: the politely disconnected
    // client's will was discarded [MQTT-3.1.2-10], and would have come first.
    assert_eq!(will("socket dropped"), m("wills/rude", "rude", 1, false));
    assert_eq!(
        will("process killed"),
        m("wills/killed", "killed", 1, false)
    );
    if version == "5" {
        // Back within the will delay, after a drop or by taking over a connection that
        // is still open: the session is there, and the will is not sent [MQTT-3.1.2-8]
        // (checked with the stray messages below).
        let reconnected = events(&observed, "reconnected");
        assert_eq!(reconnected.len(), 2);
        for case in &reconnected {
            assert_eq!(case["session_present"], true, "{case}");
        }
        // The connection taken over is closed with DISCONNECT 0x8E [MQTT-3.1.4-3].
        assert_eq!(reconnected[1]["old_connection_closed_with"], 0x8E);
        assert_eq!(will("delay 1 s"), m("wills/delayed", "delayed", 1, false));
        // The broker notices the drop after the script does; a will sent before the
        // delay is over would show less than a second here.
        let delayed = events(&observed, "will")
            .into_iter()
            .find(|o| o["case"] == "delay 1 s")
            .unwrap();
        let after = delayed["after"].as_f64().unwrap();
        assert!(
            after >= 1.0,
            "will sent {after} s after the drop, delay 1 s"
        );
        // The session ends before the will delay: the will goes out then (3.1.3.2.2).
        assert_eq!(
            will("session ends first"),
            m("wills/expiring", "expiring", 1, false)
        );
    }
    // Nothing more: no will from the polite client, nor (v5) from the ones that came
    // back within their will delay.
    let after: Vec<_> = events(&observed, "after")
        .into_iter()
        .map(message)
        .collect();
    assert_eq!(after, vec![m("wills/fence", "fence", 1, false)]);
}

#[test]
fn mqtt_3_1_2_8_paho_v311_will_on_dropped_socket_and_sigkill_not_after_disconnect() {
    check_wills("3");
}

#[test]
fn mqtt_3_1_2_8_paho_v5_will_on_drop_not_after_disconnect_and_will_delay_rules() {
    check_wills("5");
}

fn check_shared(version: &str) {
    let observed = scenario("paho_shared.py", version);
    for suback in events(&observed, "suback") {
        assert_eq!(suback["codes"], serde_json::json!([1]), "{suback}");
    }
    let members = events(&observed, "member");
    assert_eq!(members.len(), 2);
    let mut all: Vec<String> = Vec::new();
    for member in &members {
        assert!(
            member["qos"] == serde_json::json!([1]) || member["qos"] == serde_json::json!([]),
            "{member}"
        );
        all.extend(
            member["payloads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string()),
        );
    }
    // Each message to exactly one member of the group [MQTT-4.8.2]: together they
    // have every one, and no payload twice.
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a message went to both: {all:?}");
    let want: HashSet<String> = (0..40).map(|i| format!("job-{i}")).collect();
    assert_eq!(unique, want.iter().collect());
}

#[test]
fn mqtt_4_8_2_paho_v311_shared_subscription_gives_each_message_to_one_member() {
    check_shared("3");
}

#[test]
fn mqtt_4_8_2_paho_v5_shared_subscription_gives_each_message_to_one_member() {
    check_shared("5");
}

fn check_sessions(version: &str) {
    let observed = scenario("paho_session.py", version);
    let connack = |case: &str| -> bool {
        events(&observed, "connack")
            .into_iter()
            .find(|o| o["case"] == case)
            .unwrap_or_else(|| panic!("no CONNACK for {case:?}"))["session_present"]
            .as_bool()
            .unwrap()
    };
    let messages = |case: &str| -> Vec<_> {
        events(&observed, "message")
            .into_iter()
            .filter(|o| o["case"] == case)
            .map(message)
            .collect()
    };
    // [MQTT-3.2.2-2] a new session: session present 0; [MQTT-3.2.2-3] resumed: 1.
    assert!(!connack("first"));
    assert!(connack("resumed"));
    // The QoS 1 messages queued while it was away, in order, then the live fence.
    // DUP is left out: paho reports its DISCONNECT done once it has sent it, so the
    // first publish can reach the broker while that connection is still attached; it
    // is then sent there, unacknowledged, and resent with DUP 1 on the resume, which
    // is what [MQTT-4.4.0-1] asks for.
    let without_dup = |messages: Vec<(String, String, u64, bool, bool)>| -> Vec<_> {
        messages
            .into_iter()
            .map(|(topic, payload, qos, retain, _)| (topic, payload, qos, retain, false))
            .collect()
    };
    assert_eq!(
        without_dup(messages("resumed")),
        vec![
            m("sess/x", "queued-0", 1, false),
            m("sess/x", "queued-1", 1, false),
            m("sess/x", "queued-2", 1, false),
            m("sess/x", "fence", 1, false),
        ]
    );
    // An ended session is gone: no session present, nothing queued for it.
    assert!(!connack("after end"));
    assert_eq!(messages("after end"), vec![m("sess/x", "fence", 1, false)]);
}

#[test]
fn mqtt_3_1_2_4_paho_v311_clean_session_0_keeps_subscriptions_and_queues_qos_1() {
    check_sessions("3");
}

#[test]
fn mqtt_3_1_2_5_paho_v5_session_expiry_keeps_session_and_disconnect_expiry_0_ends_it() {
    check_sessions("5");
}
