//! The built-in broker against rumqttc (the crate the `mqtt.in`/`mqtt.out` nodes use),
//! in its v3.1.1 and v5 flavours: QoS 0/1/2 round trips, a persistent session resumed
//! with the messages queued while it was away, and retained messages.
//!
//! Each client's event loop runs in a task that turns rumqttc's events into `Seen`
//! values; the tests wait for the one they need, bounded by PATIENCE so that a broker
//! that never answers fails the test instead of hanging it.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::mpsc;

use common::{PATIENCE, headwater_broker};

/// The protocol version a peer speaks.
#[derive(Clone, Copy, Debug)]
enum Version {
    V311,
    V5,
}

/// What a client saw, the same for both flavours.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    ConnAck {
        session_present: bool,
    },
    /// Granted QoS per filter, 0x80 for a failure.
    SubAck(Vec<u8>),
    Publish(Message),
    PubAck,
    PubComp,
    /// The event loop ended (the broker closed the connection, or it broke).
    Closed,
}

/// A received PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Message {
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
    dup: bool,
}

fn message(topic: &str, payload: &str, qos: u8, retain: bool) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.into(),
        qos,
        retain,
        dup: false,
    }
}

enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// One rumqttc connection and what its event loop reported.
struct Peer {
    client: Client,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Messages that arrived before the SUBACK being waited for (v5 lets a broker send
    /// retained messages first).
    early: VecDeque<Message>,
}

fn qos4(qos: u8) -> rumqttc::QoS {
    rumqttc::qos(qos).expect("QoS 0, 1 or 2")
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(qos).expect("QoS 0, 1 or 2")
}

impl Peer {
    /// Connects `id`; `persistent` means clean session 0 (v3.1.1) or clean start 0
    /// with a session expiry of an hour (v5). Returns once the CONNACK is in.
    async fn connect(version: Version, port: u16, id: &str, persistent: bool) -> (Peer, bool) {
        let (tx, seen) = mpsc::unbounded_channel();
        let client = match version {
            Version::V311 => {
                let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                options.set_clean_session(!persistent);
                options.set_keep_alive(Duration::from_secs(60));
                let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
                tokio::spawn(async move {
                    use rumqttc::{Event, Packet};
                    // The first error ends the loop: rumqttc would otherwise reconnect.
                    while let Ok(event) = events.poll().await {
                        let seen = match event {
                            Event::Incoming(Packet::ConnAck(ack)) => Seen::ConnAck {
                                session_present: ack.session_present,
                            },
                            Event::Incoming(Packet::SubAck(ack)) => Seen::SubAck(
                                ack.return_codes
                                    .iter()
                                    .map(|code| match code {
                                        rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                                        rumqttc::SubscribeReasonCode::Failure => 0x80,
                                    })
                                    .collect(),
                            ),
                            Event::Incoming(Packet::Publish(p)) => Seen::Publish(Message {
                                topic: p.topic.clone(),
                                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                                qos: p.qos as u8,
                                retain: p.retain,
                                dup: p.dup,
                            }),
                            Event::Incoming(Packet::PubAck(_)) => Seen::PubAck,
                            Event::Incoming(Packet::PubComp(_)) => Seen::PubComp,
                            _ => continue,
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Seen::Closed);
                });
                Client::V311(client)
            }
            Version::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
                options.set_clean_start(!persistent);
                if persistent {
                    options.set_session_expiry_interval(Some(3600));
                }
                options.set_keep_alive(Duration::from_secs(60));
                let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
                tokio::spawn(async move {
                    use p5::Packet;
                    use rumqttc::v5::Event;
                    while let Ok(event) = events.poll().await {
                        let seen = match event {
                            Event::Incoming(Packet::ConnAck(ack)) => Seen::ConnAck {
                                session_present: ack.session_present,
                            },
                            Event::Incoming(Packet::SubAck(ack)) => Seen::SubAck(
                                ack.return_codes
                                    .iter()
                                    .map(|code| match code {
                                        p5::SubscribeReasonCode::Success(q) => *q as u8,
                                        _ => 0x80,
                                    })
                                    .collect(),
                            ),
                            Event::Incoming(Packet::Publish(p)) => Seen::Publish(Message {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                                qos: p.qos as u8,
                                retain: p.retain,
                                dup: p.dup,
                            }),
                            Event::Incoming(Packet::PubAck(_)) => Seen::PubAck,
                            Event::Incoming(Packet::PubComp(_)) => Seen::PubComp,
                            _ => continue,
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Seen::Closed);
                });
                Client::V5(client)
            }
        };
        let mut peer = Peer {
            client,
            seen,
            early: VecDeque::new(),
        };
        let session_present = match peer.next().await {
            Seen::ConnAck { session_present } => session_present,
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        };
        (peer, session_present)
    }

    /// The next event; fails after PATIENCE without one.
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("no event within PATIENCE")
            .expect("event loop gone")
    }

    /// Subscribes and returns the SUBACK's codes.
    async fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u8> {
        match &self.client {
            Client::V311(c) => c.subscribe(filter, qos4(qos)).await.unwrap(),
            Client::V5(c) => c.subscribe(filter, qos5(qos)).await.unwrap(),
        }
        loop {
            match self.next().await {
                Seen::SubAck(codes) => return codes,
                Seen::Publish(m) => self.early.push_back(m),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes and, for QoS 1/2, waits for the PUBACK/PUBCOMP. Only for peers that
    /// subscribe to nothing, so the next event is the acknowledgement.
    async fn publish(&mut self, topic: &str, payload: &str, qos: u8, retain: bool) {
        let payload = payload.as_bytes().to_vec();
        match &self.client {
            Client::V311(c) => c.publish(topic, qos4(qos), retain, payload).await.unwrap(),
            Client::V5(c) => c.publish(topic, qos5(qos), retain, payload).await.unwrap(),
        }
        let want = match qos {
            0 => return,
            1 => Seen::PubAck,
            _ => Seen::PubComp,
        };
        assert_eq!(self.next().await, want, "acknowledgement of {topic}");
    }

    /// The next PUBLISH.
    async fn message(&mut self) -> Message {
        if let Some(m) = self.early.pop_front() {
            return m;
        }
        match self.next().await {
            Seen::Publish(m) => m,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and waits until the broker closed the connection, so that it is
    /// done with this one before the test goes on.
    async fn disconnect(mut self) {
        match &self.client {
            Client::V311(c) => c.disconnect().await.unwrap(),
            Client::V5(c) => c.disconnect().await.unwrap(),
        }
        while self.next().await != Seen::Closed {}
    }
}

async fn qos_round_trips(version: Version) {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = headwater_broker(data.path());
    let (mut subscriber, _) = Peer::connect(version, port, "rt-sub", false).await;
    assert_eq!(subscriber.subscribe("rt/#", 2).await, vec![2]);
    let (mut publisher, _) = Peer::connect(version, port, "rt-pub", false).await;
    for qos in 0..=2 {
        publisher
            .publish(&format!("rt/q{qos}"), &format!("qos {qos}"), qos, false)
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(subscriber.message().await);
    }
    // Ordering is only promised per topic and QoS [MQTT-4.6.0-6]: compare as a set.
    got.sort();
    assert_eq!(
        got,
        vec![
            message("rt/q0", "qos 0", 0, false),
            message("rt/q1", "qos 1", 1, false),
            message("rt/q2", "qos 2", 2, false),
        ]
    );
    publisher.disconnect().await;
    subscriber.disconnect().await;
}

#[tokio::test]
async fn mqtt_4_3_rumqttc_v311_qos_0_1_2_round_trip_at_the_published_qos() {
    qos_round_trips(Version::V311).await;
}

#[tokio::test]
async fn mqtt_4_3_rumqttc_v5_qos_0_1_2_round_trip_at_the_published_qos() {
    qos_round_trips(Version::V5).await;
}

async fn persistent_session(version: Version) {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = headwater_broker(data.path());
    let (mut away, present) = Peer::connect(version, port, "rq-durable", true).await;
    assert!(!present, "a new session [MQTT-3.2.2-2]");
    assert_eq!(away.subscribe("durable/#", 1).await, vec![1]);
    away.disconnect().await;

    let (mut publisher, _) = Peer::connect(version, port, "rq-pub", false).await;
    for i in 0..3 {
        publisher
            .publish("durable/x", &format!("queued {i}"), 1, false)
            .await;
    }
    let (mut back, present) = Peer::connect(version, port, "rq-durable", true).await;
    assert!(present, "the session was kept [MQTT-3.2.2-3]");
    for i in 0..3 {
        assert_eq!(
            back.message().await,
            message("durable/x", &format!("queued {i}"), 1, false)
        );
    }
    // The subscription came back with the session: live messages arrive too.
    publisher.publish("durable/x", "live", 1, false).await;
    assert_eq!(back.message().await, message("durable/x", "live", 1, false));
    back.disconnect().await;
    publisher.disconnect().await;
}

#[tokio::test]
async fn mqtt_3_1_2_4_rumqttc_v311_clean_session_0_resumes_with_queued_qos_1() {
    persistent_session(Version::V311).await;
}

#[tokio::test]
async fn mqtt_3_1_2_5_rumqttc_v5_session_expiry_resumes_with_queued_qos_1() {
    persistent_session(Version::V5).await;
}

async fn retained(version: Version) {
    let data = tempfile::tempdir().unwrap();
    let (_broker, port) = headwater_broker(data.path());
    let (mut publisher, _) = Peer::connect(version, port, "ret-pub", false).await;
    publisher.publish("ret/a", "kept", 1, true).await;
    let (mut subscriber, _) = Peer::connect(version, port, "ret-sub", false).await;
    assert_eq!(subscriber.subscribe("ret/#", 1).await, vec![1]);
    // Sent on subscribe with RETAIN set [MQTT-3.3.1-8]...
    assert_eq!(
        subscriber.message().await,
        message("ret/a", "kept", 1, true)
    );
    // ...and live without it [MQTT-3.3.1-9].
    publisher.publish("ret/a", "live", 1, true).await;
    assert_eq!(
        subscriber.message().await,
        message("ret/a", "live", 1, false)
    );
    // The retained message is now the live one, at the QoS it was published with.
    let (mut late, _) = Peer::connect(version, port, "ret-late", false).await;
    late.subscribe("ret/a", 2).await;
    assert_eq!(late.message().await, message("ret/a", "live", 1, true));
    for peer in [publisher, subscriber, late] {
        peer.disconnect().await;
    }
}

#[tokio::test]
async fn mqtt_3_3_1_rumqttc_v311_retained_sent_on_subscribe_with_flag_live_without() {
    retained(Version::V311).await;
}

#[tokio::test]
async fn mqtt_3_3_1_rumqttc_v5_retained_sent_on_subscribe_with_flag_live_without() {
    retained(Version::V5).await;
}
