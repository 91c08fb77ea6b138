//! The built-in broker as a child process (`headwater broker`), driven by real MQTT
//! clients: `mosquitto_pub`/`mosquitto_sub` in all three protocol versions, raw sockets
//! for malformed input, and SIGKILL for crash durability.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::{Gateway, PATIENCE};

/// `headwater broker` on `port` (0 = a free one); returns it and its port.
fn broker(data: &Path, port: u16) -> (Gateway, u16) {
    let listen = format!("127.0.0.1:{port}");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "broker",
        "--listen",
        &listen,
    ]);
    let port = gateway.listening_port();
    (gateway, port)
}

/// A running `mosquitto_sub -v -d` with extra arguments; lines are collected.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<(String, String)>,
}

impl Sub {
    fn start(port: u16, args: &[&str]) -> Sub {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-v", "-d"])
            .args(["-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = Sub {
            child,
            lines,
            seen: Vec::new(),
        };
        sub.wait_debug("received SUBACK");
        sub
    }

    fn record(&mut self, line: String) -> Option<(String, String)> {
        if line.starts_with("Client ") || line.starts_with("Subscribed (mid") {
            return None;
        }
        let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
        let message = (topic.to_string(), payload.to_string());
        self.seen.push(message.clone());
        Some(message)
    }

    fn wait_debug(&mut self, needle: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("mosquitto_sub: no {needle:?}: {e}"));
            if line.contains(needle) && line.starts_with("Client ") {
                return;
            }
            self.record(line);
        }
    }

    fn next(&mut self) -> (String, String) {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("mosquitto_sub received nothing: {e}"));
            if let Some(message) = self.record(line) {
                return message;
            }
        }
    }

    /// Reads until every payload in `want` was seen at least once.
    fn until_seen(&mut self, want: &HashSet<String>) {
        loop {
            let seen: HashSet<&str> = self.seen.iter().map(|(_, p)| p.as_str()).collect();
            let missing: Vec<&String> =
                want.iter().filter(|w| !seen.contains(w.as_str())).collect();
            if missing.is_empty() {
                return;
            }
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.record(line);
                }
                Err(e) => panic!(
                    "mosquitto_sub: {} of {} never arrived ({e}), e.g. {:?}",
                    missing.len(),
                    want.len(),
                    &missing[..missing.len().min(5)]
                ),
            }
        }
    }

    /// Stops it and keeps what it printed. SIGKILL, not SIGTERM: mosquitto_sub's SIGTERM
    /// handler calls into libmosquitto (not async-signal-safe) and was seen to hang for good
    /// under load, twice in one CI run. Nothing here needs its DISCONNECT: a killed QoS 2
    /// subscriber still prints each message once, because libmosquitto hands a QoS 2
    /// message over on PUBREL, and the broker resends only PUBREL for those after a
    /// reconnect. The pipe reaches end of file when the process is gone.
    fn stop(mut self) -> Vec<(String, String)> {
        let _ = self.child.kill();
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.record(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("mosquitto_sub's output stayed open {PATIENCE:?} after SIGKILL")
                }
            }
        }
        let _ = self.child.wait();
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(port: u16, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {args:?} failed");
}

/// Publishes each line of `payloads` as one message (`mosquitto_pub -l`); returns once
/// every one is acknowledged (mosquitto_pub waits for the last PUBACK/PUBCOMP).
fn publish_lines(port: u16, topic: &str, qos: u8, payloads: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-q", &qos.to_string(), "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    for payload in payloads {
        writeln!(stdin, "{payload}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub -l failed");
}

#[test]
fn mosquitto_clients_in_every_protocol_version_exchange_qos_0_1_2() {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(data.path(), 0);
    for sub_version in ["mqttv31", "mqttv311", "mqttv5"] {
        let mut sub = Sub::start(port, &["-V", sub_version, "-t", "it/#", "-q", "2"]);
        for pub_version in ["mqttv31", "mqttv311", "mqttv5"] {
            for qos in ["0", "1", "2"] {
                let payload = format!("{pub_version}-q{qos}");
                publish(
                    port,
                    &["-V", pub_version, "-t", "it/x", "-q", qos, "-m", &payload],
                );
                assert_eq!(
                    sub.next(),
                    ("it/x".to_string(), payload),
                    "subscriber {sub_version}"
                );
            }
        }
    }
}

#[test]
fn mqtt_3_3_1_retained_messages_are_set_delivered_and_cleared() {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(data.path(), 0);
    publish(port, &["-t", "ret/a", "-m", "kept", "-r", "-q", "1"]);
    let mut sub = Sub::start(port, &["-t", "ret/#", "-q", "1"]);
    assert_eq!(sub.next(), ("ret/a".into(), "kept".into()));
    drop(sub);
    // An empty retained payload clears it [MQTT-3.3.1-10]: a new subscriber's first
    // message is the live one published after its SUBACK.
    publish(port, &["-t", "ret/a", "-n", "-r", "-q", "1"]);
    let mut sub = Sub::start(port, &["-t", "ret/a", "-q", "1"]);
    publish(port, &["-t", "ret/a", "-m", "live", "-q", "1"]);
    assert_eq!(sub.next(), ("ret/a".into(), "live".into()));
}

#[test]
fn mqtt_3_1_2_8_will_is_published_when_a_client_vanishes_but_not_after_disconnect() {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(data.path(), 0);
    let mut watcher = Sub::start(port, &["-t", "wills/#", "-q", "1"]);
    // A clean DISCONNECT discards the will [MQTT-3.1.2-10]: mosquitto_pub connects with a
    // will, publishes, disconnects cleanly and exits by itself (no signal involved).
    let polite = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "x", "-m", "hi"])
        .args(["--will-topic", "wills/polite", "--will-payload", "bye"])
        .status()
        .expect("run mosquitto_pub");
    assert!(polite.success());
    // SIGKILL: the connection just breaks; the will goes out.
    let mut rude = Sub::start(
        port,
        &[
            "-t",
            "x",
            "--will-topic",
            "wills/rude",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ],
    );
    rude.child.kill().unwrap();
    assert_eq!(watcher.next(), ("wills/rude".into(), "gone".into()));
}

#[test]
fn mqtt_4_7_2_1_wildcards_do_not_match_sys_topics_and_sys_is_published() {
    let data = tempfile::tempdir().unwrap();
    let listen = "127.0.0.1:0";
    let settings = data.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "version: 1\nbroker:\n  sys_interval: 1\n  listeners: [{ host: 127.0.0.1, port: 0 }]\nflows: {}\n",
    )
    .unwrap();
    let gateway = Gateway::start(&[
        "--data-dir",
        data.path().to_str().unwrap(),
        "run",
        "--listen",
        listen,
        settings.to_str().unwrap(),
    ]);
    let port = gateway.listening_port();
    let mut sys = Sub::start(port, &["-t", "$SYS/broker/version"]);
    let (topic, payload) = sys.next();
    assert_eq!(topic, "$SYS/broker/version");
    assert!(payload.starts_with("headwater version"), "{payload}");
    // `#` sees ordinary topics, never `$SYS` [MQTT-4.7.2-1]: the first message it gets
    // is the ordinary one, although `$SYS` is republished every second.
    let mut all = Sub::start(port, &["-t", "#"]);
    publish(port, &["-t", "plain", "-m", "p"]);
    assert_eq!(all.next(), ("plain".into(), "p".into()));
}

/// Raw socket helpers for malformed input.
fn raw(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Reads until EOF; returns everything the broker sent.
fn read_to_close(mut stream: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

const CONNECT_V311: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ab";
const CONNECT_V5: &[u8] = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02cd";

#[test]
fn malformed_input_closes_only_that_connection_with_its_reason() {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(data.path(), 0);
    let mut healthy = Sub::start(port, &["-t", "ok", "-q", "1"]);
    // A flood of connections that never send CONNECT.
    let flood: Vec<TcpStream> = (0..200).map(|_| raw(port)).collect();

    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("garbage", b"\xde\xad\xbe\xef garbage".to_vec(), None),
        ("no connect first", b"\xc0\x00".to_vec(), None),
        (
            "remaining length longer than four bytes",
            [CONNECT_V311, b"\x30\xff\xff\xff\xff\x01"].concat(),
            None,
        ),
        (
            "v5 reserved flag bits on PUBACK",
            [CONNECT_V5, b"\x42\x02\x00\x01"].concat(),
            Some(0x81),
        ),
        (
            "v5 invalid UTF-8 in a topic",
            [CONNECT_V5, b"\x30\x06\x00\x02\xc3\x28\x00x"].concat(),
            Some(0x81),
        ),
        (
            "v5 wildcard in a topic name",
            [CONNECT_V5, b"\x30\x04\x00\x01#\x00"].concat(),
            Some(0x90),
        ),
        (
            "v5 oversized packet",
            [CONNECT_V5, b"\x30\xff\xff\x7f"].concat(),
            Some(0x95),
        ),
        (
            "v5 wrong remaining length (PUBACK of 3 bytes)",
            [CONNECT_V5, b"\x40\x01\x00"].concat(),
            Some(0x81),
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut stream = raw(port);
        stream.write_all(&bytes).unwrap();
        let got = read_to_close(stream);
        match reason {
            // v5: CONNACK (0x20 ...), then DISCONNECT (0xE0) with the reason code.
            Some(code) => {
                let at = got
                    .iter()
                    .position(|&b| b == 0xE0)
                    .unwrap_or_else(|| panic!("{what}: no DISCONNECT in {got:02x?}"));
                assert_eq!(got.get(at + 2), Some(&code), "{what}: {got:02x?}");
            }
            // v3 and before CONNECT: the connection is just closed, with at most a
            // CONNACK before it.
            None => assert!(
                got.is_empty() || got[0] == 0x20,
                "{what}: unexpected {got:02x?}"
            ),
        }
    }
    drop(flood);
    // Everyone else is unaffected.
    publish(port, &["-t", "ok", "-m", "still here", "-q", "1"]);
    assert_eq!(healthy.next(), ("ok".into(), "still here".into()));
}

/// A v3.1.1 PUBLISH: `qos` 0 or 1, packet id `id` (ignored at QoS 0).
fn publish_packet(topic: &str, payload: &str, qos: u8, retain: bool, id: u16) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload.as_bytes());
    let mut packet = vec![0x30 | (qos << 1) | u8::from(retain)];
    // Remaining length: 7 bits per byte, least significant first (2.1.4).
    let mut left = body.len();
    loop {
        let byte = (left % 128) as u8;
        left /= 128;
        packet.push(if left > 0 { byte | 0x80 } else { byte });
        if left == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// The packets of one read are handled together (one store request for their
/// publishes, deliveries handed over once): their acknowledgements still go out in
/// order [MQTT-4.6.0-2], and what they change reaches the disk in order. Here a QoS 0
/// retained message replaces a QoS 1 one in the same write: after a restart the
/// second is the one retained.
#[test]
fn mqtt_4_6_0_2_packets_of_one_read_are_acknowledged_and_stored_in_order() {
    let data = tempfile::tempdir().unwrap();
    let (gateway, port) = broker(data.path(), 0);
    let mut stream = raw(port);
    let expect = |stream: &mut TcpStream, want: &[u8], what: &str| {
        let mut got = vec![0u8; want.len()];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(got, want, "{what}");
    };
    stream.write_all(CONNECT_V311).unwrap();
    expect(&mut stream, &[0x20, 2, 0, 0], "CONNACK");
    // A publish longer than a fresh connection's read buffer: the broker reads more at
    // a time from then on, so the next write arrives in one read.
    let long = "x".repeat(200);
    stream
        .write_all(&publish_packet("one-read/other", &long, 1, false, 1))
        .unwrap();
    expect(&mut stream, &[0x40, 2, 0, 1], "PUBACK of the long publish");
    let one_write = [
        publish_packet("one-read/retained", "first", 1, true, 2),
        publish_packet("one-read/other", "x", 1, false, 3),
        publish_packet("one-read/retained", "second", 0, true, 0),
        publish_packet("one-read/other", "y", 1, false, 4),
    ]
    .concat();
    stream.write_all(&one_write).unwrap();
    expect(
        &mut stream,
        &[0x40, 2, 0, 2, 0x40, 2, 0, 3, 0x40, 2, 0, 4],
        "the PUBACKs in the order of the publishes",
    );
    stream.write_all(b"\xe0\x00").unwrap();
    assert!(
        read_to_close(stream).is_empty(),
        "nothing after the PUBACKs"
    );
    // A clean stop makes the QoS 0 retained message durable too.
    gateway.signal("TERM");
    assert!(gateway.wait().success(), "clean stop");

    let (_restarted, port) = broker(data.path(), 0);
    let mut sub = Sub::start(port, &["-t", "one-read/retained", "-q", "1"]);
    assert_eq!(sub.next(), ("one-read/retained".into(), "second".into()));
}

/// A QoS 1 publish that arrives in the same read as its CONNECT and is followed by
/// DISCONNECT still gets its PUBACK: its commit (retained, with a subscriber online, so
/// queued without waking the store) is rung for as the connection finishes.
#[test]
fn a_publish_that_comes_with_connect_and_disconnect_is_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(data.path(), 0);
    let mut sub = Sub::start(port, &["-t", "with-connect"]);
    let mut stream = raw(port);
    let one_write = [
        CONNECT_V311.to_vec(),
        publish_packet("with-connect", "x", 1, true, 1),
        b"\xe0\x00".to_vec(),
    ]
    .concat();
    stream.write_all(&one_write).unwrap();
    assert_eq!(
        read_to_close(stream),
        [0x20, 2, 0, 0, 0x40, 2, 0, 1],
        "CONNACK and PUBACK before the broker closes"
    );
    assert_eq!(sub.next(), ("with-connect".into(), "x".into()));
}

/// The payloads of `wanted` not among `received`.
fn not_yet(wanted: &HashSet<String>, received: &[(String, String)]) -> HashSet<String> {
    let got: HashSet<&str> = received.iter().map(|(_, p)| p.as_str()).collect();
    wanted
        .iter()
        .filter(|w| !got.contains(w.as_str()))
        .cloned()
        .collect()
}

#[test]
fn acknowledged_messages_survive_sigkill_and_qos_2_arrives_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let (mut gateway, port) = broker(data.path(), 0);
    let sub_args = ["-c", "-i", "durable-sub", "-t", "dur/#", "-q", "2"];
    // The persistent session and its subscription exist before anything is published.
    Sub::start(port, &sub_args).stop();

    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut qos2: HashSet<String> = HashSet::new();
    let mut received: Vec<(String, String)> = Vec::new();
    let mut online: Option<Sub> = None;
    // `tests/crash_cycles.sh` runs this with HEADWATER_CRASH_CYCLES=20.
    let cycles: usize = std::env::var("HEADWATER_CRASH_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6)
        .max(5);
    for cycle in 0..cycles {
        // Odd cycles: the subscriber is online while the broker dies.
        if cycle % 2 == 1 {
            online = Some(Sub::start(port, &sub_args));
        }
        let q1: Vec<String> = (0..25).map(|i| format!("c{cycle}-q1-{i}")).collect();
        let q2: Vec<String> = (0..25).map(|i| format!("c{cycle}-q2-{i}")).collect();
        publish_lines(port, "dur/q1", 1, &q1);
        publish_lines(port, "dur/q2", 2, &q2);
        acknowledged.extend(q1);
        acknowledged.extend(q2.iter().cloned());
        qos2.extend(q2);

        gateway.signal("KILL");
        let _ = gateway.child.wait();
        let (restarted, _) = broker(data.path(), port);
        gateway = restarted;

        if let Some(mut sub) = online.take() {
            // It reconnects by itself and gets everything; then it is stopped.
            sub.until_seen(&not_yet(&acknowledged, &received));
            received.extend(sub.stop());
        }
    }
    let mut last = Sub::start(port, &sub_args);
    last.until_seen(&not_yet(&acknowledged, &received));
    received.extend(last.stop());

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, payload) in &received {
        *counts.entry(payload.as_str()).or_default() += 1;
    }
    for payload in &acknowledged {
        assert!(counts.contains_key(payload.as_str()), "lost {payload}");
    }
    for payload in &qos2 {
        assert_eq!(
            counts[payload.as_str()],
            1,
            "qos 2 {payload} not exactly once"
        );
    }
    eprintln!(
        "{cycles} SIGKILL cycles: {} acknowledged messages all delivered, {} QoS 2 exactly once",
        acknowledged.len(),
        qos2.len()
    );
}

/// `headwater run FLOW` with the built-in broker on a free port (or `port`); returns it
/// once the flow's in-process `mqtt.in` subscribed, and the broker's port.
fn run_flow(data: &Path, flow: &str, port: u16) -> (Gateway, u16) {
    let file = data.join("flow.yaml");
    std::fs::write(&file, flow).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        file.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    let port = gateway.listening_port();
    gateway.wait_for("on the built-in broker");
    (gateway, port)
}

#[test]
fn flows_without_url_subscribe_and_publish_on_the_built_in_broker_in_process() {
    let data = tempfile::tempdir().unwrap();
    let flow = "version: 1\nflows:\n  link:\n    nodes:\n      \
        cmd: { type: mqtt.in, topics: \"in/#\", qos: 1 }\n      \
        copy: { type: mqtt.out, inputs: cmd, topic: \"out/{{payload.room}}\", qos: 1 }\n";
    let (_gateway, port) = run_flow(data.path(), flow, 0);
    let mut sub = Sub::start(port, &["-t", "out/#", "-q", "1", "-V", "mqttv5"]);
    publish(
        port,
        &["-t", "in/a", "-q", "1", "-m", r#"{"room":"kitchen"}"#],
    );
    assert_eq!(
        sub.next(),
        (
            "out/kitchen".to_string(),
            r#"{"room":"kitchen"}"#.to_string()
        )
    );
}

#[test]
fn messages_the_broker_acknowledged_into_a_flow_survive_sigkill_of_the_gateway() {
    // The flow forwards to a remote broker that is down at first, so every message
    // the built-in broker PUBACKs stays in the flow's in-process session, unfinished.
    let data = tempfile::tempdir().unwrap();
    let remote_port = common::free_port();
    let flow = format!(
        "version: 1\nflows:\n  fwd:\n    nodes:\n      \
         take: {{ type: mqtt.in, topics: \"meter/#\", qos: 1 }}\n      \
         send: {{ type: mqtt.out, inputs: take, url: \"mqtt://127.0.0.1:{remote_port}\", topic: fwd, qos: 1 }}\n"
    );
    let (mut gateway, port) = run_flow(data.path(), &flow, 0);
    let payloads: Vec<String> = (0..40).map(|i| format!("reading-{i}")).collect();
    publish_lines(port, "meter/1", 1, &payloads);
    gateway.signal("KILL");
    let _ = gateway.child.wait();

    let remote = common::Mosquitto::start_on(data.path(), remote_port);
    let received = remote.subscribe("fwd", 1);
    let (_gateway, _) = run_flow(data.path(), &flow, port);
    let mut missing: HashSet<String> = payloads.into_iter().collect();
    while !missing.is_empty() {
        let (_, payload) = received.next();
        missing.remove(&payload);
    }
}

/// CPU time (user + system, clock ticks) of each thread of process `pid`, by name.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // The fields after the parenthesised name: state is the first, utime the 12th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        threads.push((name.trim().to_string(), ticks));
    }
    threads
}

fn ticks_of(threads: &[(String, u64)], name: &str) -> u64 {
    threads
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, t)| t)
        .sum()
}

#[test]
fn the_broker_serves_its_clients_on_a_runtime_of_its_own_with_one_thread() {
    let data = tempfile::tempdir().unwrap();
    let (broker, port) = broker(data.path(), 0);
    let pid = broker.child.id();
    let before = thread_cpu(pid);
    assert_eq!(
        before.iter().filter(|(name, _)| name == "broker").count(),
        1,
        "one broker worker thread: {before:?}"
    );
    let mut sub = Sub::start(port, &["-t", "load/#", "-q", "1"]);
    let payloads: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    publish_lines(port, "load/x", 1, &payloads);
    for payload in &payloads {
        assert_eq!(sub.next(), ("load/x".to_string(), payload.clone()));
    }
    let after = thread_cpu(pid);
    // Every packet was read, routed and written on the broker's thread; the main
    // runtime's workers ("headwater") only wait for signals.
    let on_broker = ticks_of(&after, "broker") - ticks_of(&before, "broker");
    let on_main = ticks_of(&after, "headwater") - ticks_of(&before, "headwater");
    assert!(
        on_broker > on_main,
        "broker thread {on_broker} ticks, main runtime {on_main}: {after:?}"
    );
}

#[test]
fn a_port_in_use_is_refused_with_the_address_and_the_reason_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["--data-dir", data.path().to_str().unwrap(), "broker"])
        .args(["--listen", &address])
        .output()
        .expect("run headwater broker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on {address}: Address already in use"
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}
