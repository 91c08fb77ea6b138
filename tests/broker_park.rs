//! Idle connections parked without a task (src/broker/park.rs): every way a parked
//! connection is needed again brings it back, and nothing is lost on the way. The
//! broker runs in this process (its snapshot counts the parked connections); the
//! clients are blocking sockets speaking MQTT byte by byte.
//!
//! A connection parks once its client has been silent for `PARK_AFTER` (1 s) and two
//! keepalive sweeps found it with nothing to do: each test waits for the count to
//! reach what it expects, never for a fixed time.

mod common;
mod raw_client;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use headwater::broker::{Broker, BrokerConfig, ListenerConfig, Persistence};
use raw_client::{Conn, Connect, Packet, Props};

/// A broker on a free loopback port, in memory, on a runtime of its own.
struct Running {
    runtime: tokio::runtime::Runtime,
    broker: Broker,
    port: u16,
}

fn start() -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = BrokerConfig {
        listeners: vec![ListenerConfig::tcp("127.0.0.1", 0)],
        persistence: Persistence::Memory,
        ..BrokerConfig::default()
    };
    let broker = Broker::open(config, std::path::Path::new("unused")).unwrap();
    let port = runtime.block_on(async {
        let listeners = broker.bind().await.unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        broker.start(listeners);
        port
    });
    Running {
        runtime,
        broker,
        port,
    }
}

impl Running {
    /// Waits until exactly `parked` connections are parked (and `connected` counted).
    fn wait_parked(&self, parked: usize, connected: usize) {
        common::eventually(&format!("{parked} parked of {connected}"), || {
            let snapshot = self.broker.snapshot();
            (snapshot.parked == parked && snapshot.connected == connected).then_some(())
        });
    }

    fn shutdown(self) {
        self.runtime.block_on(self.broker.shutdown());
    }
}

/// A v3.1.1 CONNECT with a keepalive and, optionally, a QoS 0 will.
fn connect_bytes(client_id: &str, keep_alive: u16, will: Option<(&str, &str)>) -> Vec<u8> {
    fn string(s: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(4);
    body.push(if will.is_some() { 0x06 } else { 0x02 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(client_id, &mut body);
    if let Some((topic, message)) = will {
        string(topic, &mut body);
        string(message, &mut body);
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// Opens a raw connection and reads its CONNACK.
fn raw_connect(port: u16, connect: &[u8]) -> TcpStream {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(connect).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    stream
}

#[test]
fn parked_connections_are_woken_by_their_client_and_by_deliveries() {
    let broker = start();
    let mut subscriber = Conn::open(broker.port, "sub", Connect::v5("sub"));
    subscriber.subscribe(&[("park/#", 1)], Props::new());
    let mut publisher = Conn::open(broker.port, "pub", Connect::v3("pub"));
    broker.wait_parked(2, 2);

    // The publisher's bytes wake it; the delivery wakes the subscriber.
    publisher.publish("park/a", "one", 1, false, Props::new());
    publisher.publish("park/b", "two", 0, false, Props::new());
    publisher.publish("park/fence", "fence", 1, false, Props::new());
    let seen: Vec<String> = subscriber
        .until("fence")
        .iter()
        .map(raw_client::Message::brief)
        .collect();
    assert_eq!(
        seen,
        ["park/a one q1", "park/b two q0", "park/fence fence q1"]
    );
    assert!(
        publisher
            .log
            .iter()
            .all(|l| !l.contains("PUBACK") || l.ends_with("code=0x00")),
        "{:?}",
        publisher.log
    );

    // Both park again once quiet, and a second round works as the first did.
    broker.wait_parked(2, 2);
    publisher.publish("park/c", "three", 1, false, Props::new());
    let seen = subscriber.until("three");
    assert_eq!(seen.len(), 1, "one delivery, no duplicate");
    assert_eq!(broker.broker.snapshot().connected, 2);
    broker.shutdown();
}

#[test]
fn a_parked_client_that_leaves_is_counted_out_and_its_will_is_sent() {
    let broker = start();
    let mut watcher = Conn::open(broker.port, "watcher", Connect::v5("watcher"));
    watcher.subscribe(&[("wills/#", 0)], Props::new());
    let leaver = raw_connect(
        broker.port,
        &connect_bytes("leaver", 60, Some(("wills/leaver", "gone"))),
    );
    broker.wait_parked(2, 2);

    // Closed without DISCONNECT: the hang-up unparks it, and it ends as any
    // connection closed by its client does.
    drop(leaver);
    let seen = watcher.until("gone");
    assert_eq!(seen[0].topic, "wills/leaver");
    common::eventually("the leaver counted out", || {
        (broker.broker.snapshot().connected == 1).then_some(())
    });
    broker.shutdown();
}

#[test]
fn a_parked_session_is_taken_over() {
    let broker = start();
    let mut first = Conn::open(
        broker.port,
        "first",
        Connect::v5("same")
            .clean(false)
            .props(Props::new().u32(0x11, 600)),
    );
    first.subscribe(&[("takeover/#", 1)], Props::new());
    broker.wait_parked(1, 1);

    let mut second = Conn::open(
        broker.port,
        "second",
        Connect::v5("same")
            .clean(false)
            .props(Props::new().u32(0x11, 600)),
    );
    assert_eq!(
        second.log.last().unwrap(),
        "second: CONNACK session_present=1 code=0x00"
    );
    // The parked connection is woken to be closed with "session taken over".
    first.until_closed();
    assert!(
        first.log.iter().any(|l| l.ends_with("DISCONNECT 0x8e")),
        "{:?}",
        first.log
    );
    // The session and its subscription went to the new connection.
    let mut publisher = Conn::open(broker.port, "pub", Connect::v3("pub"));
    publisher.publish("takeover/x", "moved", 1, false, Props::new());
    assert_eq!(second.until("moved").len(), 1);
    broker.shutdown();
}

#[test]
fn a_silent_parked_client_is_closed_at_its_keepalive() {
    let broker = start();
    let mut watcher = Conn::open(broker.port, "watcher", Connect::v5("watcher"));
    watcher.subscribe(&[("wills/#", 0)], Props::new());
    // Keepalive 3 s: it parks after about a second of silence, and the sweep closes it
    // at 4.5 s.
    let mut silent = raw_connect(
        broker.port,
        &connect_bytes("silent", 3, Some(("wills/silent", "timed out"))),
    );
    broker.wait_parked(2, 2);
    let seen = watcher.until("timed out");
    assert_eq!(seen[0].topic, "wills/silent");
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(rest.is_empty(), "v3.1.1: closed without a packet");
    broker.shutdown();
}

#[test]
fn shutdown_closes_parked_connections() {
    let broker = start();
    let mut v5 = Conn::open(broker.port, "v5", Connect::v5("v5"));
    let mut v3 = raw_connect(broker.port, &connect_bytes("v3", 60, None));
    broker.wait_parked(2, 2);
    let snapshot_before = broker.broker.snapshot();
    assert_eq!(snapshot_before.connected, 2);
    let broker_handle = broker.broker.clone();
    broker.shutdown();
    assert_eq!(
        broker_handle.snapshot().connected,
        0,
        "every connection ended"
    );
    match v5.read() {
        Some(Packet::Disconnect { code }) => assert_eq!(code, 0x8B, "server shutting down"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let mut rest = Vec::new();
    let _ = v3.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn parked_sockets_close_when_the_runtime_goes_without_a_shutdown() {
    let broker = start();
    let mut client = raw_connect(broker.port, &connect_bytes("dropped", 60, None));
    broker.wait_parked(1, 1);
    // An embedding program that drops the runtime without `Broker::shutdown`: the
    // parked connection must not outlive it (it would, held by the cycle broker ->
    // lot -> connection -> broker).
    let Running {
        runtime,
        broker: _broker,
        ..
    } = broker;
    drop(runtime);
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest);
    assert!(read.is_ok() && rest.is_empty(), "closed: {read:?} {rest:?}");
}
