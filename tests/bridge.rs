//! Bridges from the built-in broker (in process) to a real Mosquitto (and to a second
//! built-in broker): topic remapping both ways, no loops or echo duplicates on `both`
//! topics, nothing lost across a remote outage, failover between addresses, and the
//! `$SYS` state. Peers are `mosquitto`, `mosquitto_pub` and `mosquitto_sub`; every wait
//! is on a line a peer prints, a SUBACK or a state message, never on a sleep.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use common::{PATIENCE, free_port};
use headwater::broker::codec::{Packet, Qos, SubscriptionOptions};
use headwater::broker::{
    BridgeConfig, BridgeDirection, BridgeTopic, Broker, BrokerConfig, ListenerConfig, LocalClient,
    LocalConnect, bridge,
};
use tokio_util::sync::CancellationToken;

/// The bridge's client id on the remote in these tests; names its state topic.
const REMOTE_ID: &str = "hub.test";
const STATE_TOPIC: &str = "$SYS/broker/connection/hub.test/state";

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(log: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match log.recv_timeout(PATIENCE) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("mosquitto: no log line containing {needle:?}: {e}"),
        }
    }
}

/// A Mosquitto remote that can be stopped (SIGTERM) and started again on its port.
struct Remote {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    log: mpsc::Receiver<String>,
}

impl Remote {
    /// Starts Mosquitto on a free port; with `persistent`, its sessions survive a
    /// restart (saved in `dir` on SIGTERM).
    fn start(dir: &Path, persistent: bool) -> Remote {
        Self::start_with(dir, persistent, "")
    }

    /// As [`Remote::start`], with `listener_options` added to the main listener (TLS).
    fn start_with(dir: &Path, persistent: bool, listener_options: &str) -> Remote {
        let port = free_port();
        let conf = dir.join(format!("remote-{port}.conf"));
        let persistence = if persistent {
            let store = dir.join(format!("remote-{port}-store"));
            std::fs::create_dir_all(&store).unwrap();
            // `user root`: started as root, Mosquitto would otherwise switch to its own
            // user, which cannot write the test's directory.
            format!(
                "persistence true\npersistence_location {}/\nuser root\n",
                store.display()
            )
        } else {
            "persistence false\n".into()
        };
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous true\n{persistence}log_dest stderr\nlog_type all\nlistener {port} 127.0.0.1\n{listener_options}"
            ),
        )
        .unwrap();
        let (child, log) = Self::spawn(&conf, port);
        Remote {
            child: Some(child),
            port,
            conf,
            log,
        }
    }

    fn spawn(conf: &Path, port: u16) -> (Child, mpsc::Receiver<String>) {
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        let log = lines_of(child.stderr.take().unwrap());
        wait_line(&log, &format!("listen socket on port {port}"));
        // Listening only once "running" is printed.
        wait_line(&log, " running");
        (child, log)
    }

    /// Waits for a line of Mosquitto's log containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        wait_line(&self.log, needle)
    }

    /// SIGTERM, then waits until the process is gone (its sessions saved if persistent).
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap();
    }

    /// Starts Mosquitto again on the same port with the same configuration.
    fn restart(&mut self) {
        let (child, log) = Self::spawn(&self.conf, self.port);
        self.child = Some(child);
        self.log = log;
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `mosquitto_sub -v -d`; messages are collected as (topic, payload).
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<(String, String)>,
}

impl Sub {
    /// Subscribes on `port` and waits for the SUBACK.
    fn start(port: u16, args: &[&str]) -> Sub {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-v", "-d"])
            .args(["-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub");
        let lines = lines_of(child.stdout.take().unwrap());
        let mut sub = Sub {
            child,
            lines,
            seen: Vec::new(),
        };
        loop {
            let line = sub
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("mosquitto_sub: no SUBACK: {e}"));
            if line.starts_with("Client ") && line.contains("received SUBACK") {
                break;
            }
            sub.record(line);
        }
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

    /// The next message.
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

    /// Kills it and returns what it printed.
    fn stop(mut self) -> Vec<(String, String)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.record(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub` once; returns when it exited (after its PUBACK for QoS 1).
fn publish(port: u16, topic: &str, payload: &str, qos: u8) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-m", payload, "-q", &qos.to_string()])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub to {topic} failed");
}

/// A long-running `mosquitto_pub -l`: each line written is one message.
struct LinePublisher {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl LinePublisher {
    fn start(port: u16, topic: &str, qos: u8) -> LinePublisher {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", topic, "-q", &qos.to_string(), "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub");
        let stdin = child.stdin.take();
        LinePublisher { child, stdin }
    }

    fn send(&mut self, payloads: impl IntoIterator<Item = u32>) {
        let stdin = self.stdin.as_mut().expect("open");
        for payload in payloads {
            writeln!(stdin, "{payload}").unwrap();
        }
        stdin.flush().unwrap();
    }

    /// Closes its input; returns once every message was acknowledged by the broker
    /// (mosquitto_pub waits for the last PUBACK before it exits).
    fn finish(mut self) {
        drop(self.stdin.take());
        assert!(
            self.child.wait().unwrap().success(),
            "mosquitto_pub -l failed"
        );
    }
}

/// The built-in broker on a free port of 127.0.0.1, durable in `dir`.
async fn local_broker(dir: &Path) -> (Broker, u16) {
    let config = BrokerConfig {
        listeners: vec![ListenerConfig::tcp("127.0.0.1", 0)],
        sys_interval: 0,
        ..BrokerConfig::default()
    };
    let broker = Broker::open(config, dir).expect("open broker");
    let listeners = broker.bind().await.expect("bind");
    let port = listeners[0].local_addr().unwrap().port();
    broker.start(listeners);
    (broker, port)
}

fn topic(
    pattern: &str,
    direction: BridgeDirection,
    qos: u8,
    local: &str,
    remote: &str,
) -> BridgeTopic {
    BridgeTopic {
        pattern: pattern.into(),
        direction,
        qos,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    }
}

fn bridge_config(ports: &[u16], topics: Vec<BridgeTopic>) -> BridgeConfig {
    BridgeConfig {
        remote_clientid: Some(REMOTE_ID.into()),
        // A constant 1 s between attempts keeps the outage test short.
        restart_timeout: Some(1),
        ..BridgeConfig::new(
            "cloud",
            ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            topics,
        )
    }
}

/// Subscribed, in process, to the bridge's `$SYS` state.
struct StateWatch {
    client: LocalClient,
}

impl StateWatch {
    async fn new(broker: &Broker) -> StateWatch {
        let (mut client, _) = broker
            .connect_local(LocalConnect {
                client_id: "state-watch".into(),
                clean_start: true,
                session_expiry: 0,
                receive_max: 10,
                will: None,
            })
            .await
            .expect("connect");
        let codes = client
            .subscribe(vec![(
                STATE_TOPIC.into(),
                SubscriptionOptions::qos(Qos::AtMostOnce),
            )])
            .await
            .expect("suback");
        assert_eq!(codes, [0]);
        StateWatch { client }
    }

    /// The next state published.
    async fn next(&mut self) -> String {
        loop {
            let packet = tokio::time::timeout(PATIENCE, self.client.recv())
                .await
                .expect("a bridge state within PATIENCE");
            match packet {
                Some(Packet::Publish(p)) => {
                    return String::from_utf8_lossy(&p.payload).into_owned();
                }
                Some(_) => {}
                None => panic!("state watcher disconnected"),
            }
        }
    }

    /// Waits until the state is `want` (earlier ones skipped).
    async fn until(&mut self, want: &str) {
        while self.next().await != want {}
    }
}

/// The bridge running in the background until the guard drops.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(broker: &Broker, config: BridgeConfig) -> Running {
        let shutdown = CancellationToken::new();
        // The tests watch the bridge's state topic instead of the attach signal.
        let (attached, _) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(bridge::run(
            broker.clone(),
            config,
            shutdown.clone(),
            attached,
        ));
        Running { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the bridge stops on shutdown")
            .expect("the bridge task did not panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_topics_reach_the_remote_with_the_local_prefix_swapped_for_the_remote_one() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(dir.path(), false);
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut state = StateWatch::new(&broker).await;
    let bridge = Running::start(
        &broker,
        bridge_config(
            &[remote.port],
            vec![topic(
                "sensors/#",
                BridgeDirection::Out,
                1,
                "home/",
                "hubs/pi/",
            )],
        ),
    );
    state.until("1").await;
    let mut far = Sub::start(remote.port, &["-t", "#", "-q", "1"]);
    publish(port, "home/other/x", "not bridged", 1);
    publish(port, "home/sensors/kitchen/t", "21.5", 1);
    publish(port, "home/sensors/hall/t", "19", 0);
    assert_eq!(
        far.next(),
        ("hubs/pi/sensors/kitchen/t".into(), "21.5".into())
    );
    assert_eq!(far.next(), ("hubs/pi/sensors/hall/t".into(), "19".into()));
    bridge.stop().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_topics_reach_the_built_in_broker_with_the_remote_prefix_swapped_for_the_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(dir.path(), false);
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut near = Sub::start(port, &["-t", "#", "-q", "1"]);
    let bridge = Running::start(
        &broker,
        bridge_config(
            &[remote.port],
            vec![topic("cmd/#", BridgeDirection::In, 1, "home/", "hubs/pi/")],
        ),
    );
    remote.wait_for(&format!("Sending SUBACK to {REMOTE_ID}"));
    publish(remote.port, "hubs/other/cmd/x", "not bridged", 1);
    publish(remote.port, "hubs/pi/cmd/light", "on", 1);
    publish(remote.port, "hubs/pi/cmd/heat", "21", 2);
    assert_eq!(near.next(), ("home/cmd/light".into(), "on".into()));
    assert_eq!(near.next(), ("home/cmd/heat".into(), "21".into()));
    bridge.stop().await;
    broker.shutdown().await;
}

/// A `both` topic that exists on both sides: a message published on either side
/// arrives exactly once on each. Each side's subscriber must see exactly A, B and two
/// markers; a marker travels the path an echo or a loop would take after it, so a
/// duplicate would show up before the marker.
async fn each_message_once_on_each_side(
    near_port: u16,
    far_port: u16,
    local_sub_first: &mut Sub,
    remote_sub: &mut Sub,
) {
    let near = local_sub_first;
    let far = remote_sub;
    publish(near_port, "shared/a", "A from the hub", 1);
    assert_eq!(far.next(), ("shared/a".into(), "A from the hub".into()));
    assert_eq!(near.next(), ("shared/a".into(), "A from the hub".into()));
    publish(far_port, "shared/b", "B from the cloud", 1);
    assert_eq!(near.next(), ("shared/b".into(), "B from the cloud".into()));
    assert_eq!(far.next(), ("shared/b".into(), "B from the cloud".into()));
    // Published on the remote: reaches the hub after any echo of A the remote sent.
    publish(far_port, "shared/m", "marker 1", 1);
    assert_eq!(near.next(), ("shared/m".into(), "marker 1".into()));
    assert_eq!(far.next(), ("shared/m".into(), "marker 1".into()));
    // Published on the hub: reaches the remote after any copy of B the hub sent back.
    publish(near_port, "shared/n", "marker 2", 1);
    assert_eq!(far.next(), ("shared/n".into(), "marker 2".into()));
    assert_eq!(near.next(), ("shared/n".into(), "marker 2".into()));
}

async fn both_ways_with_mosquitto(protocol: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(dir.path(), false);
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut config = bridge_config(
        &[remote.port],
        vec![topic("shared/#", BridgeDirection::Both, 1, "", "")],
    );
    config.bridge_protocol_version = protocol.map(String::from);
    let bridge = Running::start(&broker, config);
    // Mosquitto took the CONNECT's bridge bit (v3) or saw a v5 client: it logs which.
    let connected = remote.wait_for(&format!("as {REMOTE_ID}"));
    let expected = match protocol {
        Some("mqttv50") => "New client connected",
        _ => "New bridge connected",
    };
    assert!(connected.contains(expected), "{connected}");
    remote.wait_for(&format!("Sending SUBACK to {REMOTE_ID}"));
    let mut near = Sub::start(port, &["-t", "shared/#", "-q", "1"]);
    let mut far = Sub::start(remote.port, &["-t", "shared/#", "-q", "1"]);
    each_message_once_on_each_side(port, remote.port, &mut near, &mut far).await;
    bridge.stop().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_both_topic_neither_loops_nor_echoes_with_mosquitto_over_mqtt_3_1_1_and_the_bridge_bit() {
    both_ways_with_mosquitto(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_both_topic_neither_loops_nor_echoes_with_mosquitto_over_mqtt_3_1_and_the_bridge_bit() {
    both_ways_with_mosquitto(Some("mqttv31")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_both_topic_neither_loops_nor_echoes_with_mosquitto_over_mqtt_5_no_local() {
    both_ways_with_mosquitto(Some("mqttv50")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_refusing_the_bridge_bit_gets_a_plain_connect_and_its_echoes_are_dropped() {
    // The built-in broker as the remote: it refuses protocol level 0x84 as most
    // non-Mosquitto brokers do, and then sends the bridge its own messages back.
    let dir = tempfile::tempdir().unwrap();
    let (cloud, cloud_port) = local_broker(&dir.path().join("cloud")).await;
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut state = StateWatch::new(&broker).await;
    let bridge = Running::start(
        &broker,
        bridge_config(
            &[cloud_port],
            vec![topic("shared/#", BridgeDirection::Both, 1, "", "")],
        ),
    );
    state.until("1").await;
    let mut near = Sub::start(port, &["-t", "shared/#", "-q", "1"]);
    let mut far = Sub::start(cloud_port, &["-t", "shared/#", "-q", "1"]);
    each_message_once_on_each_side(port, cloud_port, &mut near, &mut far).await;
    bridge.stop().await;
    broker.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_second_address_is_used_when_the_first_refuses_connections() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(dir.path(), false);
    // Nothing listens there: the connection is refused at once.
    let dead = free_port();
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut state = StateWatch::new(&broker).await;
    let bridge = Running::start(
        &broker,
        bridge_config(
            &[dead, remote.port],
            vec![topic("t/#", BridgeDirection::Out, 1, "", "")],
        ),
    );
    state.until("1").await;
    remote.wait_for(&format!("as {REMOTE_ID}"));
    let mut far = Sub::start(remote.port, &["-t", "t/#", "-q", "1"]);
    publish(port, "t/1", "via the second address", 1);
    assert_eq!(far.next(), ("t/1".into(), "via the second address".into()));
    bridge.stop().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qos_1_messages_published_while_the_remote_is_down_all_arrive_after_it_returns() {
    const TOTAL: u32 = 300;
    let dir = tempfile::tempdir().unwrap();
    let mut remote = Remote::start(dir.path(), true);
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut state = StateWatch::new(&broker).await;
    let bridge = Running::start(
        &broker,
        bridge_config(
            &[remote.port],
            vec![topic("meter/#", BridgeDirection::Out, 1, "", "")],
        ),
    );
    state.until("1").await;
    // A persistent QoS 1 session on the remote: what the bridge delivers while it is
    // away (between the restart and its return) waits there.
    let collector = ["-t", "meter/#", "-q", "1", "-c", "-i", "collector"];
    let mut first = Sub::start(remote.port, &collector);
    let mut publisher = LinePublisher::start(port, "meter/energy", 1);
    publisher.send(1..=100);
    first.until_seen(&HashSet::from(["50".to_string()]));
    // Mid-stream: 51..100 may be anywhere between the hub and the remote.
    remote.stop();
    assert_eq!(state.next().await, "0", "the bridge notices the outage");
    publisher.send(101..=250);
    let first_seen = first.stop();
    remote.restart();
    assert_eq!(state.next().await, "1", "the bridge comes back");
    publisher.send(251..=TOTAL);
    publisher.finish();
    let mut second = Sub::start(remote.port, &collector);
    let all: HashSet<String> = (1..=TOTAL).map(|n| n.to_string()).collect();
    second.seen.extend(first_seen);
    second.until_seen(&all);
    bridge.stop().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_queued_for_a_down_remote_survive_a_restart_of_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let mut remote = Remote::start(dir.path(), true);
    let collector = ["-t", "meter/#", "-q", "1", "-c", "-i", "collector"];
    // Creates the collector's persistent session on the remote.
    drop(Sub::start(remote.port, &collector));
    let config = bridge_config(
        &[remote.port],
        vec![topic("meter/#", BridgeDirection::Out, 1, "", "")],
    );
    let (broker, port) = local_broker(&hub_dir).await;
    let mut state = StateWatch::new(&broker).await;
    let bridge = Running::start(&broker, config.clone());
    state.until("1").await;
    remote.stop();
    assert_eq!(state.next().await, "0");
    let mut publisher = LinePublisher::start(port, "meter/energy", 1);
    publisher.send(1..=100);
    // Every message is acknowledged by the hub, so queued durably for the bridge.
    publisher.finish();
    drop(state);
    bridge.stop().await;
    broker.shutdown().await;
    drop(broker); // releases the store's file lock

    let (broker, _) = local_broker(&hub_dir).await;
    let mut state = StateWatch::new(&broker).await;
    let bridge = Running::start(&broker, config);
    remote.restart();
    state.until("1").await;
    let mut collected = Sub::start(remote.port, &collector);
    collected.until_seen(&(1..=100).map(|n| n.to_string()).collect());
    bridge.stop().await;
    broker.shutdown().await;
}

/// Runs `openssl ARGS...` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test CA in `dir` (`ca.crt`, `ca.key`) and certificates it signs: `NAME.crt` and
/// `NAME.key` for each (name, subjectAltName, extendedKeyUsage). Everything is made
/// world-readable: Mosquitto reads its files after dropping root.
fn certificates(dir: &Path, leaves: &[(&str, &str, &str)]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=bridge test ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    for (name, san, usage) in leaves {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        let subject = format!("/CN={name}");
        let mut request = vec!["req", "-subj", subject.as_str()];
        request.extend(ec);
        request.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
        openssl(dir, &request);
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A Mosquitto remote whose main listener speaks TLS with `server.crt` and demands a
/// client certificate; `plain` is a second, plain listener for the test's own clients.
fn tls_remote(dir: &Path, plain: u16) -> Remote {
    let options = format!(
        "cafile {dir}/ca.crt\ncertfile {dir}/server.crt\nkeyfile {dir}/server.key\nrequire_certificate true\nlistener {plain} 127.0.0.1\n",
        dir = dir.display()
    );
    Remote::start_with(dir, false, &options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_over_tls_with_a_client_certificate_reaches_the_remote() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(
        &certs,
        &[
            ("server", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
            ("hub", "DNS:hub.test", "clientAuth"),
        ],
    );
    let plain = free_port();
    let remote = tls_remote(&certs, plain);
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut state = StateWatch::new(&broker).await;
    let mut config = bridge_config(
        &[remote.port],
        vec![topic("t/#", BridgeDirection::Out, 1, "", "secure/")],
    );
    config.bridge_cafile = Some(certs.join("ca.crt"));
    config.bridge_certfile = Some(certs.join("hub.crt"));
    config.bridge_keyfile = Some(certs.join("hub.key"));
    let bridge = Running::start(&broker, config);
    state.until("1").await;
    let mut far = Sub::start(plain, &["-t", "secure/#", "-q", "1"]);
    publish(port, "t/1", "over tls", 1);
    assert_eq!(far.next(), ("secure/t/1".into(), "over tls".into()));
    bridge.stop().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_insecure_skips_only_the_host_name_check() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // The remote's certificate names another host than the one the bridge dials.
    certificates(
        &certs,
        &[
            ("server", "DNS:elsewhere.example", "serverAuth"),
            ("hub", "DNS:hub.test", "clientAuth"),
        ],
    );
    let plain = free_port();
    let remote = tls_remote(&certs, plain);
    let (broker, port) = local_broker(&dir.path().join("hub")).await;
    let mut config = bridge_config(
        &[remote.port],
        vec![topic("t/#", BridgeDirection::Out, 1, "", "")],
    );
    config.bridge_cafile = Some(certs.join("ca.crt"));
    config.bridge_certfile = Some(certs.join("hub.crt"));
    config.bridge_keyfile = Some(certs.join("hub.key"));

    // Checked, the name does not match: the bridge ends the handshake itself.
    let checked = Running::start(&broker, config.clone());
    let refusal = remote.wait_for("OpenSSL Error");
    assert!(refusal.contains("certificate"), "{refusal}");
    checked.stop().await;

    let mut state = StateWatch::new(&broker).await;
    config.bridge_insecure = true;
    let insecure = Running::start(&broker, config);
    state.until("1").await;
    let mut far = Sub::start(plain, &["-t", "t/#", "-q", "1"]);
    publish(port, "t/1", "name not checked", 1);
    assert_eq!(far.next(), ("t/1".into(), "name not checked".into()));
    insecure.stop().await;
    broker.shutdown().await;
}

/// Reads one MQTT packet from a raw socket: (first byte, body).
async fn read_packet(stream: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let first = stream.read_u8().await.expect("a packet");
    let mut remaining = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = stream.read_u8().await.expect("remaining length");
        remaining |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; remaining];
    stream.read_exact(&mut body).await.expect("body");
    (first, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_that_stops_answering_is_pinged_dropped_and_reconnected() {
    use tokio::io::AsyncWriteExt;
    // A remote that accepts the bridge, then never answers its PINGREQ.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote_port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = local_broker(&dir.path().join("hub")).await;
    let mut state = StateWatch::new(&broker).await;
    let mut config = bridge_config(
        &[remote_port],
        vec![topic("t/#", BridgeDirection::Out, 1, "", "")],
    );
    config.keepalive_interval = Some(5);
    let bridge = Running::start(&broker, config);

    let (mut stream, _) = silent.accept().await.unwrap();
    let (connect, body) = read_packet(&mut stream).await;
    assert_eq!(connect, 0x10);
    assert_eq!(
        &body[..7],
        b"\0\x04MQTT\x84",
        "MQTT 3.1.1 with the bridge bit"
    );
    assert_eq!(&body[8..10], &[0, 5], "keepalive 5 s");
    stream.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    state.until("1").await;
    // Whatever else comes first (the UNSUBSCRIBE of an `out` line), a PINGREQ follows
    // within the keepalive; it is left unanswered.
    loop {
        let (first, _) = read_packet(&mut stream).await;
        if first == 0xC0 {
            break;
        }
    }
    assert_eq!(
        state.next().await,
        "0",
        "no PINGRESP: the link is declared dead"
    );
    // The bridge comes back on its own.
    let (mut again, _) = silent.accept().await.unwrap();
    let (connect, _) = read_packet(&mut again).await;
    assert_eq!(connect, 0x10);
    again.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    assert_eq!(state.next().await, "1");
    drop(stream);
    bridge.stop().await;
    broker.shutdown().await;
}

/// The real process: QoS 1 messages a hub acknowledged while its bridge's remote was
/// down survive a SIGKILL of the hub and reach the remote once both are back.
#[test]
fn messages_queued_for_a_down_remote_survive_sigkill_of_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let remote_port = free_port();
    let settings = dir.path().join("hub.yaml");
    std::fs::write(
        &settings,
        format!(
            "version: 1\n\
             broker:\n  \
               listeners: [{{ host: 127.0.0.1, port: 0 }}]\n  \
               bridges:\n    \
                 - connection: cloud\n      \
                   addresses: [\"127.0.0.1:{remote_port}\"]\n      \
                   restart_timeout: 1\n      \
                   topics: [{{ pattern: \"meter/#\", direction: out, qos: 1, remote_prefix: \"hub/\" }}]\n\
             flows: {{}}\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let start_hub = || {
        common::Gateway::start(&[
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            settings.to_str().unwrap(),
        ])
    };
    // The remote is down: the hub acknowledges into the bridge's durable session.
    let hub = start_hub();
    let port = hub.listening_port();
    const COUNT: usize = 40;
    for i in 0..COUNT {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &format!("meter/{i}"), "-m", &format!("m{i}")])
            .status()
            .unwrap();
        assert!(status.success(), "publish {i} was not acknowledged");
    }
    hub.signal("KILL");
    hub.wait();

    // The remote comes up with a subscriber; the hub comes back and forwards.
    let remote = common::Mosquitto::start_on(dir.path(), remote_port);
    let sub = remote.subscribe("hub/meter/#", 1);
    let hub = start_hub();
    let mut seen = HashSet::new();
    while seen.len() < COUNT {
        let (topic, payload) = sub.next();
        let i: usize = topic.trim_start_matches("hub/meter/").parse().unwrap();
        assert_eq!(payload, format!("m{i}"));
        seen.insert(i);
    }
    drop(hub);
}
