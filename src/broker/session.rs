//! Sessions: what the broker remembers about a client between and during connections
//! (subscriptions, queued and inflight messages, QoS 2 packet ids), and how each piece
//! is written to the store.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use super::codec::{self, Publish, Qos, SubscriptionOptions, Version};
use super::signal::Signal;
use super::topic::Filter;
use crate::store::{Op, Table};

/// Session records by client id.
pub const SESSIONS: Table = Table("broker.sessions");
/// Messages waiting for or in flight to a client, by client id, NUL, sequence number.
pub const QUEUE: Table = Table("broker.queue");
/// QoS 2 packet ids received and not yet released, by client id, NUL, packet id.
pub const INCOMING: Table = Table("broker.incoming_qos2");
/// Retained messages by topic.
pub const RETAINED: Table = Table("broker.retained");

/// Who a network client is, as far as authorisation goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    /// The listener realm it connected through.
    pub realm: u16,
    /// Its username (or certificate name), if any.
    pub username: Option<ByteString>,
}

/// An application message as the broker routes it.
#[derive(Debug)]
pub struct Message {
    /// The publish, without packet id or DUP.
    pub publish: Publish,
    /// When the broker received it (ms since the epoch), for message expiry.
    pub received_ms: u64,
    /// The client that sent it (for v5 no-local); empty for the broker's own.
    pub from: ByteString,
}

impl Message {
    /// Seconds left before it expires: `None` without expiry, `Some(0)` when expired.
    pub fn expiry_left(&self, now_ms: u64) -> Option<u32> {
        let expiry = self.publish.properties.message_expiry?;
        let elapsed = (now_ms.saturating_sub(self.received_ms) / 1000) as u32;
        Some(expiry.saturating_sub(elapsed))
    }
}

/// A message on its way to one session.
#[derive(Clone, Debug)]
pub struct Queued {
    /// Store key order; unique per broker run and across restarts.
    pub seq: u64,
    /// The message.
    pub msg: Arc<Message>,
    /// QoS of this delivery (the lower of the publish and the subscription).
    pub qos: Qos,
    /// Retain flag of this delivery.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (v5).
    pub subscription_ids: Vec<NonZeroU32>,
    /// The shared subscription (`$share/g/f`) it came through, if any.
    pub share: Option<ByteString>,
    /// The packet id once sent.
    pub packet_id: Option<NonZeroU16>,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
}

/// A subscription as a session holds it.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The parsed filter.
    pub filter: Filter,
    /// Options.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<NonZeroU32>,
}

/// What the tree stores per subscriber.
#[derive(Clone, Debug)]
pub struct TreeEntry {
    /// Options.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<NonZeroU32>,
}

/// The connection currently attached to a session.
#[derive(Clone)]
pub struct Attached {
    /// Connection number, unique per broker run.
    pub id: u64,
    /// Rung when the session has something to send, or to close the connection
    /// (takeover, shutdown, keepalive).
    pub signal: Arc<Signal>,
}

/// One client's session; its client id is its key in the broker's map. Every byte
/// here is paid by every connected client, so the collections are B-trees (no hasher
/// state, nothing allocated while empty) and nothing is kept twice.
pub struct Session {
    /// Session expiry after disconnect in seconds (`u32::MAX` = never; 0 = ends with
    /// the connection).
    pub expiry: u32,
    /// Protocol version of the last connection.
    pub version: Version,
    /// Whether the store may hold a record or messages of it (it was persistent at some
    /// point, or recovered from disk): only then does ending it cost a store write.
    pub stored: bool,
    /// Subscriptions by their raw filter (with any `$share/` prefix).
    pub subscriptions: BTreeMap<ByteString, Subscription>,
    /// Messages not yet sent.
    pub queue: VecDeque<Queued>,
    /// Messages sent and not yet acknowledged, by packet id.
    pub inflight: BTreeMap<u16, Queued>,
    /// QoS 2 packet ids received, waiting for PUBREL; made on first use and dropped when
    /// empty again (`receive_qos2`, `release_qos2`): most sessions never see QoS 2.
    // Boxed on purpose: the extra allocation is paid only while a QoS 2 exchange is open,
    // the 16 bytes it saves are paid by every session.
    #[allow(clippy::box_collection)]
    incoming: Option<Box<BTreeSet<u16>>>,
    /// The live connection, if any.
    pub attached: Option<Attached>,
    /// Who the client logged in as, for the ACL; `None` for in-process clients
    /// (flows, bridges), which no ACL applies to.
    pub identity: Option<Arc<Identity>>,
    /// Bumped (wrapping) on every connect and disconnect; timers for will delay and
    /// session expiry act only if it has not moved. 32 bits: a timer outliving four
    /// billion reconnects of its client is not a concern, four bytes per session are.
    pub generation: u32,
    /// Last packet id handed out.
    pub last_packet_id: u16,
    /// Messages dropped because the queue was full (reported at powers of two;
    /// saturating).
    pub dropped: u32,
}

impl Session {
    /// A new empty session.
    pub fn new(expiry: u32, version: Version) -> Self {
        Session {
            expiry,
            version,
            stored: false,
            subscriptions: BTreeMap::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            incoming: None,
            attached: None,
            identity: None,
            generation: 0,
            last_packet_id: 0,
            dropped: 0,
        }
    }

    /// Notes a QoS 2 publish `id` as received and waiting for PUBREL; false when it
    /// already was (a resend).
    pub fn receive_qos2(&mut self, id: u16) -> bool {
        self.incoming.get_or_insert_default().insert(id)
    }

    /// Forgets a QoS 2 publish `id` on PUBREL; false when it was not waiting.
    pub fn release_qos2(&mut self, id: u16) -> bool {
        let Some(incoming) = &mut self.incoming else {
            return false;
        };
        let known = incoming.remove(&id);
        if incoming.is_empty() {
            self.incoming = None;
        }
        known
    }

    /// Whether connection `conn_id` is the one attached (not taken over, not ended).
    pub fn attached_to(&self, conn_id: u64) -> bool {
        self.attached.as_ref().is_some_and(|a| a.id == conn_id)
    }

    /// Whether it outlives its connection (and so is written to the store).
    pub fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// A free packet id, or `None` when all 65535 are in flight.
    pub fn next_packet_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if self.last_packet_id == 0 {
                self.last_packet_id = 1;
            }
            if !self.inflight.contains_key(&self.last_packet_id) {
                return NonZeroU16::new(self.last_packet_id);
            }
        }
        None
    }

    /// The store operation that records this session of `client_id` (expiry and
    /// subscriptions).
    pub fn record_op(&self, client_id: &str) -> Op {
        let record = SessionRecord {
            expiry: self.expiry,
            version: self.version.level(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(raw, sub)| SubscriptionRecord {
                    filter: raw.to_string(),
                    qos: sub.options.qos as u8,
                    no_local: sub.options.no_local,
                    retain_as_published: sub.options.retain_as_published,
                    retain_handling: sub.options.retain_handling,
                    id: sub.id.map(NonZeroU32::get),
                })
                .collect(),
            realm: self.identity.as_ref().map(|i| i.realm),
            username: self
                .identity
                .as_ref()
                .and_then(|i| i.username.as_ref().map(ToString::to_string)),
        };
        Op::Put {
            table: SESSIONS,
            key: client_id.as_bytes().to_vec(),
            value: serde_json::to_vec(&record).expect("session record serializes"),
        }
    }

    /// Operations that erase every trace of this session from the store.
    pub fn erase_ops(client_id: &ByteString) -> Vec<Op> {
        vec![
            Op::Delete {
                table: SESSIONS,
                key: client_id.as_bytes().to_vec(),
            },
            Op::DeletePrefix {
                table: QUEUE,
                prefix: client_prefix(client_id),
            },
            Op::DeletePrefix {
                table: INCOMING,
                prefix: client_prefix(client_id),
            },
        ]
    }
}

/// How a session is stored.
#[derive(Serialize, Deserialize)]
pub struct SessionRecord {
    /// Expiry in seconds.
    pub expiry: u32,
    /// Protocol level.
    pub version: u8,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// The realm of the listener a network client came through (absent for
    /// in-process clients and for records written before there were realms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<u16>,
    /// The username it logged in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// How a subscription is stored.
#[derive(Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Raw filter, with any `$share/` prefix.
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// No local.
    pub no_local: bool,
    /// Retain as published.
    pub retain_as_published: bool,
    /// Retain handling.
    pub retain_handling: u8,
    /// Subscription identifier.
    pub id: Option<u32>,
}

/// `client_id` NUL: the prefix of a client's keys (client ids never hold NUL).
pub fn client_prefix(client_id: &ByteString) -> Vec<u8> {
    let mut key = client_id.as_bytes().to_vec();
    key.push(0);
    key
}

/// The queue key of one message.
pub fn queue_key(client_id: &ByteString, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key of an incoming QoS 2 packet id.
pub fn incoming_key(client_id: &ByteString, packet_id: u16) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Queue record layout (format 1): format, qos, flags (1 = retain, 2 = released),
/// packet id (u16 BE, 0 = not sent), received ms (u64 BE), share filter length (u16 BE)
/// and bytes, subscription id count (u8) and ids (u32 BE), then the message record.
pub fn encode_queued(queued: &Queued) -> Vec<u8> {
    let mut out = vec![1, queued.qos as u8];
    out.push(u8::from(queued.retain) | (u8::from(queued.released) << 1));
    out.extend_from_slice(&queued.packet_id.map_or(0, NonZeroU16::get).to_be_bytes());
    out.extend_from_slice(&queued.msg.received_ms.to_be_bytes());
    let share = queued.share.as_deref().unwrap_or("").as_bytes();
    out.extend_from_slice(&(share.len() as u16).to_be_bytes());
    out.extend_from_slice(share);
    let ids = &queued.subscription_ids[..queued.subscription_ids.len().min(255)];
    out.push(ids.len() as u8);
    for id in ids {
        out.extend_from_slice(&id.get().to_be_bytes());
    }
    out.extend_from_slice(&codec::encode_record(&queued.msg.publish));
    out
}

/// Reads a queue record; `None` when it is not one this version wrote.
pub fn decode_queued(seq: u64, bytes: &[u8]) -> Option<Queued> {
    let mut at = 0;
    let mut take = |n: usize| {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    if take(1)? != [1] {
        return None;
    }
    let qos = Qos::from_u8(take(1)?[0])?;
    let flags = take(1)?[0];
    let packet_id = NonZeroU16::new(u16::from_be_bytes(take(2)?.try_into().ok()?));
    let received_ms = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let share_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
    let share = std::str::from_utf8(take(share_len)?).ok()?;
    let share = (!share.is_empty()).then(|| ByteString::from(share));
    let count = take(1)?[0] as usize;
    let mut subscription_ids = Vec::with_capacity(count);
    for _ in 0..count {
        subscription_ids.push(NonZeroU32::new(u32::from_be_bytes(
            take(4)?.try_into().ok()?,
        ))?);
    }
    let publish = codec::decode_record(bytes.get(at..)?)?;
    Some(Queued {
        seq,
        msg: Arc::new(Message {
            publish,
            received_ms,
            from: ByteString::new(),
        }),
        qos,
        retain: flags & 1 != 0,
        subscription_ids,
        share,
        packet_id,
        released: flags & 2 != 0,
    })
}

/// Retained record: received ms (u64 BE), then the message record.
pub fn encode_retained(msg: &Message) -> Vec<u8> {
    let mut out = msg.received_ms.to_be_bytes().to_vec();
    out.extend_from_slice(&codec::encode_record(&msg.publish));
    out
}

/// Reads a retained record.
pub fn decode_retained(bytes: &[u8]) -> Option<Message> {
    let received_ms = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Some(Message {
        publish: codec::decode_record(&bytes[8..])?,
        received_ms,
        from: ByteString::new(),
    })
}

/// A QoS 1 message on topic `t` from `publisher`, as routing holds it, for tests.
#[cfg(test)]
pub(crate) fn test_message(payload: &'static str) -> Arc<Message> {
    Arc::new(Message {
        publish: Publish {
            topic: "t".into(),
            payload: payload.into(),
            qos: Qos::AtLeastOnce,
            retain: false,
            dup: false,
            packet_id: None,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: Default::default(),
        },
        received_ms: 0,
        from: "publisher".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn queue_records_round_trip() {
        let queued = Queued {
            seq: 9,
            msg: Arc::new(Message {
                publish: Publish {
                    topic: "t/1".into(),
                    payload: Bytes::from_static(b"p"),
                    qos: Qos::ExactlyOnce,
                    retain: false,
                    dup: false,
                    packet_id: None,
                    topic_alias: None,
                    subscription_ids: Vec::new(),
                    properties: Default::default(),
                },
                received_ms: 1234,
                from: "x".into(),
            }),
            qos: Qos::AtLeastOnce,
            retain: true,
            subscription_ids: vec![NonZeroU32::new(5).unwrap()],
            share: Some("$share/g/t/+".into()),
            packet_id: NonZeroU16::new(77),
            released: true,
        };
        let back = decode_queued(9, &encode_queued(&queued)).unwrap();
        assert_eq!(back.qos, Qos::AtLeastOnce);
        assert!(back.retain && back.released);
        assert_eq!(back.packet_id, NonZeroU16::new(77));
        assert_eq!(back.share.as_deref(), Some("$share/g/t/+"));
        assert_eq!(back.subscription_ids, queued.subscription_ids);
        assert_eq!(back.msg.received_ms, 1234);
        assert_eq!(back.msg.publish.topic, queued.msg.publish.topic);
        assert!(decode_queued(1, b"\x02").is_none());
    }
}
