//! `mqtt.in` and `mqtt.out` against a real Mosquitto broker started on a free port, with
//! `mosquitto_pub` and `mosquitto_sub` as the peers; the gateway runs as a process.

mod common;

use std::path::Path;

use common::{Gateway, Mosquitto, free_port};

fn write_flow(dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_string()
}

fn run(dir: &Path, flow: &str) -> Gateway {
    let data = dir.join("data");
    Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        flow,
    ])
}

#[test]
fn subscribes_transforms_and_publishes_with_templates_and_retain() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let flow = write_flow(
        dir.path(),
        "bridge.yaml",
        &format!(
            r#"version: 1
flows:
  bridge:
    nodes:
      sensors: {{ type: mqtt.in, url: "{url}", topics: ["sensors/+/power"], qos: 1 }}
      kw:
        type: script
        inputs: sensors
        rhai: |
          msg.payload.kw = msg.payload.w / 1000.0;
          msg
      publish:
        type: mqtt.out
        inputs: kw
        url: "{url}"
        topic: "out/{{{{payload.room}}}}/kw"
        qos: 1
        retain: true
      failures: {{ type: log, inputs: publish.error, level: warn }}
"#,
            url = broker.url()
        ),
    );
    let sub = broker.subscribe("out/#", 1);
    let gateway = run(dir.path(), &flow);
    gateway.wait_for("subscribed to 1 of 1 topic filters");

    broker.publish(
        "sensors/m1/power",
        r#"{"room":"kitchen","w":1500}"#,
        1,
        false,
    );
    assert_eq!(
        sub.next(),
        // Script maps keep their keys in alphabetical order.
        (
            "out/kitchen/kw".into(),
            r#"{"kw":1.5,"room":"kitchen","w":1500}"#.into()
        )
    );
    // A value that would change the topic's levels goes to the error port.
    broker.publish("sensors/m2/power", r#"{"room":"a/b","w":1}"#, 1, false);
    let line = gateway.wait_for("bridge/failures");
    assert!(line.contains("cannot be a topic level"), "{line}");
    // Retained: a late subscriber still gets the reading.
    let late = broker.subscribe("out/kitchen/kw", 0);
    assert_eq!(late.next().0, "out/kitchen/kw");
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}

#[test]
fn a_qos1_message_is_acknowledged_only_after_its_sink_finished() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Mosquitto::start(dir.path());
    // The sink's broker is down at first: nothing listens on this port yet.
    let downstream_port = free_port();
    let flow = write_flow(
        dir.path(),
        "held.yaml",
        &format!(
            r#"version: 1
flows:
  held:
    nodes:
      in: {{ type: mqtt.in, url: "{up}", topics: "jobs/#", qos: 1, client_id: held-test }}
      seen: {{ type: log, inputs: in }}
      out: {{ type: mqtt.out, inputs: in, url: "mqtt://127.0.0.1:{down}", qos: 1 }}
"#,
            up = upstream.url(),
            down = downstream_port
        ),
    );
    let gateway = run(dir.path(), &flow);
    gateway.wait_for("subscribed to 1 of 1 topic filters");
    upstream.publish("jobs/1", "payload-1", 1, false);
    // The log sink finished its copy; the MQTT sink cannot: the PUBACK is held.
    gateway.wait_for("payload-1");
    gateway.signal("KILL");
    let _ = gateway.wait();

    // The downstream broker comes up, the gateway restarts with the same session: the
    // upstream broker delivers the unacknowledged message again, and now it goes out.
    let downstream = Mosquitto::start_on(dir.path(), downstream_port);
    let sub = downstream.subscribe("jobs/#", 1);
    let gateway = run(dir.path(), &flow);
    assert_eq!(sub.next(), ("jobs/1".into(), "payload-1".into()));
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}

#[test]
fn the_will_is_published_when_the_gateway_dies_and_reconnects_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let flow = write_flow(
        dir.path(),
        "will.yaml",
        &format!(
            r#"version: 1
flows:
  status:
    nodes:
      tick: {{ type: timer, interval: 1h, at_start: true, topic: hub/hello, payload: up }}
      out:
        type: mqtt.out
        inputs: tick
        url: "mqtt://127.0.0.1:{port}"
        qos: 1
        will: {{ topic: hub/status, payload: offline, qos: 1, retain: true }}
"#
        ),
    );
    // The gateway starts first; its broker is not there yet.
    let gateway = run(dir.path(), &flow);
    gateway.wait_for("broker connection failed");
    let broker = Mosquitto::start_on(dir.path(), port);
    let status = broker.subscribe("hub/#", 1);
    // The tick queued while the broker was away goes out once connected.
    assert_eq!(status.next(), ("hub/hello".into(), "up".into()));
    gateway.signal("KILL");
    let _ = gateway.wait();
    assert_eq!(status.next(), ("hub/status".into(), "offline".into()));
}
