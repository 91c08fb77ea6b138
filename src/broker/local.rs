//! The in-process link: a flow's `mqtt.in`/`mqtt.out` without `url` is a client of the
//! built-in broker whose packets travel as values on two bounded channels instead of
//! bytes on a socket. The broker serves it with the same connection code as a TCP
//! client (sessions, QoS flows, durable acks, redelivery), minus the codec and the
//! keepalive, so a flow's session behaves exactly like a network client's.

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use bytestring::ByteString;
use tokio::sync::mpsc;

use super::Broker;
use super::codec::{ConnAck, Connect, Packet, SubscriptionOptions, Version, Will};
use super::connection;

/// Packets buffered each way before the sender waits: enough to keep a busy flow fed,
/// small enough that a stalled flow holds back its own session only.
const LINK_DEPTH: usize = 256;

/// Why an in-process client could not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The broker closed the link (shutdown, takeover, a protocol error).
    #[error("the built-in broker closed the in-process connection")]
    Closed,
    /// The broker refused the CONNECT with this reason code.
    #[error("the built-in broker refused the connection (reason {0:#04x})")]
    Refused(u8),
    /// The broker answered something that makes no sense at this point.
    #[error("unexpected answer from the built-in broker: {0}")]
    Unexpected(String),
}

/// What an in-process client asks for when it connects.
#[derive(Clone, Debug)]
pub struct LocalConnect {
    /// Client id; a stable one keeps the session across restarts.
    pub client_id: String,
    /// Start with an empty session.
    pub clean_start: bool,
    /// Seconds the session outlives the link (`u32::MAX`: for ever).
    pub session_expiry: u32,
    /// Most QoS 1/2 messages the broker sends before the client acknowledges some.
    pub receive_max: u16,
    /// Published by the broker if the link ends without a DISCONNECT.
    pub will: Option<Will>,
}

/// One in-process MQTT connection, seen from the client side.
pub struct LocalClient {
    tx: mpsc::Sender<Packet>,
    rx: mpsc::Receiver<Packet>,
    /// Packets that arrived while [`LocalClient::subscribe`] waited for its SUBACK.
    early: VecDeque<Packet>,
    last_packet_id: u16,
}

impl Broker {
    /// Connects an in-process client; returns it with the broker's CONNACK (whose
    /// `session_present` says whether the subscriptions are still there).
    pub async fn connect_local(
        &self,
        connect: LocalConnect,
    ) -> Result<(LocalClient, ConnAck), LinkError> {
        let (to_broker, from_client) = mpsc::channel(LINK_DEPTH);
        let (to_client, from_broker) = mpsc::channel(LINK_DEPTH);
        let broker = self.clone();
        self.shared.spawn(async move {
            // A panic in one connection ends that connection only.
            let served = AssertUnwindSafe(connection::serve_local(broker, from_client, to_client))
                .catch_unwind()
                .await;
            if served.is_err() {
                tracing::error!("in-process connection task panicked");
            }
        });
        let mut client = LocalClient {
            tx: to_broker,
            rx: from_broker,
            early: VecDeque::new(),
            last_packet_id: 0,
        };
        client
            .send(Packet::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: ByteString::from(connect.client_id),
                clean_start: connect.clean_start,
                keep_alive: 0,
                session_expiry: connect.session_expiry,
                receive_max: connect.receive_max.max(1),
                max_packet_size: None,
                topic_alias_max: 0,
                will: connect.will,
                username: None,
                password: None,
                request_problem_info: true,
            })))
            .await?;
        match client.rx.recv().await {
            Some(Packet::ConnAck(ack)) if ack.reason < 0x80 => Ok((client, ack)),
            Some(Packet::ConnAck(ack)) => Err(LinkError::Refused(ack.reason)),
            Some(other) => Err(LinkError::Unexpected(format!("{other:?}"))),
            None => Err(LinkError::Closed),
        }
    }
}

impl Broker {
    /// The raw filters (with any `$share/` prefix) the session of `client_id` holds.
    pub fn subscriptions_of(&self, client_id: &str) -> Vec<String> {
        self.state()
            .sessions
            .get(client_id)
            .map(|s| s.subscriptions.keys().map(|f| f.to_string()).collect())
            .unwrap_or_default()
    }
}

impl LocalClient {
    /// Sends one packet; waits while the broker is behind.
    pub async fn send(&self, packet: Packet) -> Result<(), LinkError> {
        self.tx.send(packet).await.map_err(|_| LinkError::Closed)
    }

    /// The next packet from the broker; `None` once the broker closed the link.
    pub async fn recv(&mut self) -> Option<Packet> {
        if let Some(packet) = self.early.pop_front() {
            return Some(packet);
        }
        self.rx.recv().await
    }

    /// A packet id for the next QoS 1/2 publish or subscription. The caller keeps at
    /// most `u16::MAX - 1` of them in flight, so a wrapped id is free again.
    pub fn next_packet_id(&mut self) -> NonZeroU16 {
        self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
        NonZeroU16::new(self.last_packet_id).expect("never 0")
    }

    /// Subscribes and waits for the SUBACK; returns its reason codes (granted QoS, or
    /// 0x80 and above for a refusal), one per filter. Messages that arrive meanwhile
    /// are kept for [`LocalClient::recv`].
    pub async fn subscribe(
        &mut self,
        filters: Vec<(String, SubscriptionOptions)>,
    ) -> Result<Vec<u8>, LinkError> {
        let packet_id = self.next_packet_id();
        self.send(Packet::Subscribe {
            packet_id,
            subscription_id: None,
            filters: filters
                .into_iter()
                .map(|(filter, options)| (ByteString::from(filter), options))
                .collect(),
        })
        .await?;
        loop {
            match self.rx.recv().await {
                Some(Packet::SubAck(id, codes)) if id == packet_id => return Ok(codes),
                Some(Packet::Disconnect(..)) | None => return Err(LinkError::Closed),
                Some(other) => self.early.push_back(other),
            }
        }
    }

    /// Unsubscribes and waits for the UNSUBACK. Messages that arrive meanwhile are kept
    /// for [`LocalClient::recv`].
    pub async fn unsubscribe(&mut self, filters: Vec<String>) -> Result<(), LinkError> {
        let packet_id = self.next_packet_id();
        self.send(Packet::Unsubscribe(
            packet_id,
            filters.into_iter().map(ByteString::from).collect(),
        ))
        .await?;
        loop {
            match self.rx.recv().await {
                Some(Packet::UnsubAck(id, _)) if id == packet_id => return Ok(()),
                Some(Packet::Disconnect(..)) | None => return Err(LinkError::Closed),
                Some(other) => self.early.push_back(other),
            }
        }
    }

    /// Ends the link with a normal DISCONNECT (no will).
    pub async fn disconnect(self) {
        let _ = self.tx.send(Packet::Disconnect(0, None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{Publish, Qos};
    use crate::broker::{BrokerConfig, Persistence};

    fn memory_broker() -> Broker {
        let config = BrokerConfig {
            persistence: Persistence::Memory,
            sys_interval: 0,
            ..BrokerConfig::default()
        };
        Broker::open(config, std::path::Path::new("unused")).expect("broker")
    }

    fn connect(client_id: &str, clean_start: bool) -> LocalConnect {
        LocalConnect {
            client_id: client_id.into(),
            clean_start,
            session_expiry: u32::MAX,
            receive_max: 10,
            will: None,
        }
    }

    fn publish(topic: &str, payload: &'static str, qos: Qos, id: Option<u16>) -> Packet {
        Packet::Publish(Box::new(Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            dup: false,
            packet_id: id.and_then(NonZeroU16::new),
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: Default::default(),
        }))
    }

    #[tokio::test]
    async fn a_local_publish_reaches_a_local_subscriber_and_its_ack_ends_the_delivery() {
        let broker = memory_broker();
        let (mut sub, ack) = broker
            .connect_local(connect("sub", true))
            .await
            .expect("connect");
        assert!(!ack.session_present);
        let codes = sub
            .subscribe(vec![(
                "a/+".into(),
                SubscriptionOptions::qos(Qos::AtLeastOnce),
            )])
            .await
            .expect("suback");
        assert_eq!(codes, [1]);

        let (mut publisher, _) = broker
            .connect_local(connect("pub", true))
            .await
            .expect("connect");
        publisher
            .send(publish("a/b", "hello", Qos::AtLeastOnce, Some(7)))
            .await
            .expect("send");
        match publisher.recv().await {
            Some(Packet::PubAck(id, 0)) => assert_eq!(id.get(), 7),
            other => panic!("expected PUBACK 7, got {other:?}"),
        }
        let id = match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!((&*p.topic, &p.payload[..]), ("a/b", &b"hello"[..]));
                p.packet_id.expect("qos 1 has an id")
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        // Unacknowledged, it is in flight; acknowledged, it is gone.
        assert_eq!(broker.state().sessions["sub"].inflight.len(), 1);
        sub.send(Packet::PubAck(id, 0)).await.expect("ack");
        // The broker handles the link's packets in order: a PINGREQ answered means the
        // PUBACK before it was handled.
        sub.send(Packet::PingReq).await.expect("ping");
        assert_eq!(sub.recv().await, Some(Packet::PingResp));
        assert!(broker.state().sessions["sub"].inflight.is_empty());
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn only_a_session_that_was_stored_costs_store_writes() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let config = BrokerConfig {
                sys_interval: 0,
                ..BrokerConfig::default()
            };
            Broker::open(config, dir.path()).expect("durable broker")
        };
        // A clean client's CONNACK waits for no write, and its end writes nothing.
        let broker = open();
        let clean = LocalConnect {
            session_expiry: 0,
            ..connect("clean", true)
        };
        let (client, _) = broker.connect_local(clean.clone()).await.unwrap();
        client.disconnect().await;
        let (client, _) = broker.connect_local(clean).await.unwrap();
        client.disconnect().await;
        broker.shutdown().await;
        assert_eq!(broker.shared.store.stats().ops, 0);
        drop(broker);

        // A persistent session resumed with expiry 0 ends with its connection, and its
        // stored record goes too: a restart must not bring it back.
        let broker = open();
        let persistent = LocalConnect {
            session_expiry: 60,
            ..connect("once-persistent", true)
        };
        let (client, _) = broker.connect_local(persistent).await.unwrap();
        client.disconnect().await;
        let resumed = LocalConnect {
            session_expiry: 0,
            ..connect("once-persistent", false)
        };
        let (client, ack) = broker.connect_local(resumed).await.unwrap();
        assert!(ack.session_present);
        client.disconnect().await;
        broker.shutdown().await;
        drop(broker);

        let broker = open();
        assert!(!broker.state().sessions.contains_key("once-persistent"));
        broker.shutdown().await;
    }

    fn will(delay: u32) -> Option<Will> {
        Some(Will {
            topic: "status".into(),
            payload: format!("gone after {delay}").into(),
            qos: Qos::AtMostOnce,
            retain: false,
            delay,
            properties: Default::default(),
        })
    }

    /// What arrives on `status` up to and including the next "marker".
    async fn status_until_marker(watcher: &mut LocalClient, broker: &Broker) -> Vec<String> {
        let (marker, _) = broker
            .connect_local(connect("marker", true))
            .await
            .expect("connect");
        marker
            .send(publish("status", "marker", Qos::AtMostOnce, None))
            .await
            .expect("send");
        let mut seen = Vec::new();
        while seen.last().is_none_or(|s| s != "marker") {
            match watcher.recv().await {
                Some(Packet::Publish(p)) => {
                    seen.push(String::from_utf8_lossy(&p.payload).into_owned())
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        seen
    }

    #[tokio::test]
    async fn mqtt_3_1_2_8_a_takeover_sends_a_will_without_delay_and_drops_a_delayed_one() {
        let broker = memory_broker();
        let (mut watcher, _) = broker
            .connect_local(connect("watcher", true))
            .await
            .expect("connect");
        watcher
            .subscribe(vec![(
                "status".into(),
                SubscriptionOptions::qos(Qos::AtMostOnce),
            )])
            .await
            .expect("suback");
        for delay in [0, 60] {
            let (mut old, _) = broker
                .connect_local(LocalConnect {
                    will: will(delay),
                    ..connect("device", false)
                })
                .await
                .expect("connect");
            let (_new, ack) = broker
                .connect_local(connect("device", false))
                .await
                .expect("takeover");
            assert!(ack.session_present);
            // The old connection is told why, and closed [MQTT-3.1.4-3].
            assert_eq!(old.recv().await, Some(Packet::Disconnect(0x8E, None)));
            assert_eq!(old.recv().await, None);
            if delay == 0 {
                match watcher.recv().await {
                    Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"gone after 0"),
                    other => panic!("expected the will, got {other:?}"),
                }
            } else {
                // Nothing on `status` before a message published after the takeover.
                assert_eq!(status_until_marker(&mut watcher, &broker).await, ["marker"]);
            }
        }
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn an_unacknowledged_message_is_sent_again_with_dup_when_the_flow_reconnects() {
        let broker = memory_broker();
        let (mut sub, _) = broker
            .connect_local(connect("flow", false))
            .await
            .expect("connect");
        sub.subscribe(vec![(
            "t".into(),
            SubscriptionOptions::qos(Qos::AtLeastOnce),
        )])
        .await
        .expect("suback");
        broker
            .publish(
                match publish("t", "x", Qos::AtLeastOnce, None) {
                    Packet::Publish(p) => *p,
                    _ => unreachable!(),
                },
                "test".into(),
            )
            .await
            .expect("stored");
        let first = match sub.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        assert!(!first.dup);
        drop(sub); // the flow crashed before acknowledging

        // Whether or not the broker noticed the old link's end yet, the new connection
        // gets the session (a takeover otherwise), as a restarted node does.
        let (mut again, ack) = broker
            .connect_local(connect("flow", false))
            .await
            .expect("reconnect");
        assert!(ack.session_present);
        match again.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(p.dup, "a resend carries DUP");
                assert_eq!(p.packet_id, first.packet_id);
                assert_eq!(&p.payload[..], b"x");
            }
            other => panic!("expected the resent PUBLISH, got {other:?}"),
        }
        broker.shutdown().await;
    }
}
