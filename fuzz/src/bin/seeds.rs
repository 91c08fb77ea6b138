//! Writes the seed corpora:
//! - `corpus/decode_stream/`: for MQTT 3.1, 3.1.1 and 5, a CONNECT followed by one
//!   packet of every type (plus CONNECT variants and one whole session), each file
//!   prefixed by the two control bytes `decode_stream` reads first;
//! - `corpus/decode_record/`: stored message records from `encode_record`.
//!
//! Run from `fuzz/`: `cargo +nightly fuzz build seeds`, then
//! `./target/x86_64-unknown-linux-gnu/release/seeds`. Files are named `seed-*` so
//! they can be told apart from what libFuzzer adds.

use std::fs;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use headwater::broker::codec::{Codec, MessageProperties, Publish, Qos, encode_record};
use rmqtt_codec::types::{Protocol, Publish as WirePublish, QoS};
use rmqtt_codec::v5::PublishProperties;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Encoder;

/// Byte 0: maximum packet size 1 MiB (the broker's default). Byte 1: all at once.
const WHOLE: [u8; 2] = [0x80, 0x00];
/// Byte 1 = 7: chunks of 1..=7 bytes, for partial frames.
const CHUNKED: [u8; 2] = [0x80, 0x07];

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("non-zero packet id")
}

fn s(text: &str) -> ByteString {
    ByteString::from(text.to_owned())
}

fn v3_bytes(packet: v3::Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    v3::Codec::new(0)
        .encode(packet, &mut buf)
        .expect("seed packet encodes");
    buf.to_vec()
}

fn v5_bytes(packet: v5::Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    v5::Codec::new(0, 0)
        .encode(packet, &mut buf)
        .expect("seed packet encodes");
    buf.to_vec()
}

fn v3_connect(level: u8, full: bool) -> Vec<u8> {
    let mut connect = v3::Connect {
        protocol: Protocol(level),
        clean_session: true,
        keep_alive: 60,
        client_id: s("seed-client"),
        ..v3::Connect::default()
    };
    if full {
        connect.clean_session = false;
        connect.last_will = Some(v3::LastWill {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: s("clients/seed/status"),
            message: Bytes::from_static(b"offline"),
        });
        connect.username = Some(s("user"));
        connect.password = Some(Bytes::from_static(b"secret"));
    }
    let mut bytes = v3_bytes(v3::Packet::Connect(Box::new(connect)));
    // rmqtt-codec 0.3.1 writes level 4 after the name even for "MQIsdp"; a 3.1
    // CONNECT needs level 3.
    if level == 3 {
        let name = bytes
            .windows(6)
            .position(|w| w == b"MQIsdp")
            .expect("3.1 connect names MQIsdp");
        bytes[name + 6] = 3;
    }
    bytes
}

fn wire_publish(qos: QoS, properties: Option<PublishProperties>) -> WirePublish {
    WirePublish {
        dup: false,
        retain: qos == QoS::AtLeastOnce,
        qos,
        topic: s("sensors/room1/temp"),
        packet_id: (qos != QoS::AtMostOnce).then(|| id(10)),
        payload: Bytes::from_static(b"21.5"),
        properties,
    }
}

/// One packet of every type in MQTT 3.1 / 3.1.1, named.
fn v3_packets() -> Vec<(&'static str, Vec<u8>)> {
    let p = |packet| v3_bytes(packet);
    vec![
        (
            "connack",
            p(v3::Packet::ConnectAck(v3::ConnectAck {
                return_code: v3::ConnectAckReason::ConnectionAccepted,
                session_present: false,
            })),
        ),
        (
            "publish-qos0",
            p(v3::Packet::Publish(Box::new(wire_publish(
                QoS::AtMostOnce,
                None,
            )))),
        ),
        (
            "publish-qos1",
            p(v3::Packet::Publish(Box::new(wire_publish(
                QoS::AtLeastOnce,
                None,
            )))),
        ),
        (
            "publish-qos2",
            p(v3::Packet::Publish(Box::new(wire_publish(
                QoS::ExactlyOnce,
                None,
            )))),
        ),
        ("puback", p(v3::Packet::PublishAck { packet_id: id(1) })),
        (
            "pubrec",
            p(v3::Packet::PublishReceived { packet_id: id(2) }),
        ),
        ("pubrel", p(v3::Packet::PublishRelease { packet_id: id(2) })),
        (
            "pubcomp",
            p(v3::Packet::PublishComplete { packet_id: id(2) }),
        ),
        (
            "subscribe",
            p(v3::Packet::Subscribe {
                packet_id: id(3),
                topic_filters: vec![
                    (s("sensors/+/temp"), QoS::AtLeastOnce),
                    (s("alerts/#"), QoS::ExactlyOnce),
                ],
            }),
        ),
        (
            "suback",
            p(v3::Packet::SubscribeAck {
                packet_id: id(3),
                status: vec![
                    v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    v3::SubscribeReturnCode::Failure,
                ],
            }),
        ),
        (
            "unsubscribe",
            p(v3::Packet::Unsubscribe {
                packet_id: id(4),
                topic_filters: vec![s("sensors/+/temp")],
            }),
        ),
        (
            "unsuback",
            p(v3::Packet::UnsubscribeAck { packet_id: id(4) }),
        ),
        ("pingreq", p(v3::Packet::PingRequest)),
        ("pingresp", p(v3::Packet::PingResponse)),
        ("disconnect", p(v3::Packet::Disconnect)),
    ]
}

fn user_properties() -> Vec<(ByteString, ByteString)> {
    vec![(s("site"), s("north")), (s("unit"), s("celsius"))]
}

fn v5_connect(full: bool) -> Vec<u8> {
    let mut connect = v5::Connect {
        clean_start: true,
        keep_alive: 60,
        client_id: s("seed-client"),
        ..v5::Connect::default()
    };
    if full {
        connect.clean_start = false;
        connect.session_expiry_interval_secs = 3600;
        connect.receive_max = NonZeroU16::new(20);
        connect.max_packet_size = NonZeroU32::new(65536);
        connect.topic_alias_max = 10;
        connect.request_problem_info = false;
        connect.request_response_info = true;
        connect.user_properties = user_properties();
        connect.last_will = Some(v5::LastWill {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: s("clients/seed/status"),
            message: Bytes::from_static(b"offline"),
            will_delay_interval_sec: Some(5),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            message_expiry_interval: NonZeroU32::new(300),
            content_type: Some(s("text/plain")),
            user_properties: user_properties(),
            is_utf8_payload: Some(true),
            response_topic: Some(s("clients/seed/reply")),
        });
        connect.username = Some(s("user"));
        connect.password = Some(Bytes::from_static(b"secret"));
    }
    v5_bytes(v5::Packet::Connect(Box::new(connect)))
}

fn v5_publish_properties(alias: Option<u16>) -> PublishProperties {
    PublishProperties {
        topic_alias: alias.and_then(NonZeroU16::new),
        correlation_data: Some(Bytes::from_static(b"req-7")),
        message_expiry_interval: NonZeroU32::new(60),
        content_type: Some(s("text/plain")),
        user_properties: user_properties(),
        is_utf8_payload: true,
        response_topic: Some(s("replies/seed")),
        subscription_ids: Vec::new(),
    }
}

/// One packet of every type in MQTT 5 (several PUBLISH forms), named.
fn v5_packets() -> Vec<(&'static str, Vec<u8>)> {
    let p = |packet| v5_bytes(packet);
    let publish = |qos, properties| p(v5::Packet::Publish(Box::new(wire_publish(qos, properties))));
    let mut alias_only = wire_publish(QoS::AtLeastOnce, Some(v5_publish_properties(Some(3))));
    alias_only.topic = s("");
    let ack = |n, reason| v5::PublishAck {
        packet_id: id(n),
        reason_code: reason,
        ..v5::PublishAck::default()
    };
    let ack2 = |n, reason| v5::PublishAck2 {
        packet_id: id(n),
        reason_code: reason,
        ..v5::PublishAck2::default()
    };
    vec![
        (
            "connack",
            p(v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                session_present: true,
                assigned_client_id: Some(s("assigned")),
                topic_alias_max: 10,
                ..v5::ConnectAck::default()
            }))),
        ),
        ("publish-qos0", publish(QoS::AtMostOnce, None)),
        (
            "publish-qos1-props",
            publish(QoS::AtLeastOnce, Some(v5_publish_properties(None))),
        ),
        (
            "publish-qos2-props-alias",
            publish(QoS::ExactlyOnce, Some(v5_publish_properties(Some(3)))),
        ),
        (
            "publish-alias-only",
            p(v5::Packet::Publish(Box::new(alias_only))),
        ),
        (
            "puback",
            p(v5::Packet::PublishAck(ack(
                1,
                v5::PublishAckReason::Success,
            ))),
        ),
        (
            "puback-reason",
            p(v5::Packet::PublishAck(v5::PublishAck {
                reason_string: Some(s("no one listening")),
                properties: user_properties(),
                ..ack(1, v5::PublishAckReason::NoMatchingSubscribers)
            })),
        ),
        (
            "pubrec",
            p(v5::Packet::PublishReceived(ack(
                2,
                v5::PublishAckReason::Success,
            ))),
        ),
        (
            "pubrel",
            p(v5::Packet::PublishRelease(ack2(
                2,
                v5::PublishAck2Reason::Success,
            ))),
        ),
        (
            "pubcomp",
            p(v5::Packet::PublishComplete(ack2(
                2,
                v5::PublishAck2Reason::PacketIdNotFound,
            ))),
        ),
        (
            "subscribe",
            p(v5::Packet::Subscribe(v5::Subscribe {
                packet_id: id(3),
                id: NonZeroU32::new(42),
                user_properties: user_properties(),
                topic_filters: vec![
                    (
                        s("sensors/+/temp"),
                        v5::SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: v5::RetainHandling::AtSubscribeNew,
                        },
                    ),
                    (
                        s("$share/group/alerts/#"),
                        v5::SubscriptionOptions::default(),
                    ),
                ],
            })),
        ),
        (
            "suback",
            p(v5::Packet::SubscribeAck(v5::SubscribeAck {
                packet_id: id(3),
                properties: Vec::new(),
                reason_string: None,
                status: vec![
                    v5::SubscribeAckReason::GrantedQos1,
                    v5::SubscribeAckReason::NotAuthorized,
                ],
            })),
        ),
        (
            "unsubscribe",
            p(v5::Packet::Unsubscribe(v5::Unsubscribe {
                packet_id: id(4),
                user_properties: user_properties(),
                topic_filters: vec![s("sensors/+/temp"), s("alerts/#")],
            })),
        ),
        (
            "unsuback",
            p(v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                packet_id: id(4),
                properties: Vec::new(),
                reason_string: None,
                status: vec![
                    v5::UnsubscribeAckReason::Success,
                    v5::UnsubscribeAckReason::NoSubscriptionExisted,
                ],
            })),
        ),
        ("pingreq", p(v5::Packet::PingRequest)),
        ("pingresp", p(v5::Packet::PingResponse)),
        (
            "disconnect",
            p(v5::Packet::Disconnect(v5::Disconnect::default())),
        ),
        (
            "disconnect-expiry",
            p(v5::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::DisconnectWithWillMessage,
                session_expiry_interval_secs: Some(120),
                reason_string: Some(s("bye")),
                ..v5::Disconnect::default()
            })),
        ),
        (
            "auth",
            p(v5::Packet::Auth(v5::Auth {
                reason_code: v5::AuthReasonCode::ContinueAuth,
                auth_method: Some(s("SCRAM-SHA-1")),
                auth_data: Some(Bytes::from_static(b"client-first")),
                ..v5::Auth::default()
            })),
        ),
    ]
}

fn write(dir: &Path, name: &str, parts: &[&[u8]]) {
    fs::write(dir.join(format!("seed-{name}")), parts.concat()).expect("write seed");
}

/// What the broker's codec makes of a stream seed (after its two control bytes), as
/// one line: the packets it decodes and how it stops.
fn describe(seed: &[u8]) -> String {
    let mut codec = Codec::new(1 << 20);
    let mut buf = BytesMut::from(&seed[2..]);
    let mut out = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(packet)) => out.push(format!("{packet:?}").chars().take(24).collect()),
            Ok(None) if buf.is_empty() => break,
            Ok(None) => {
                out.push(format!("<{} bytes left>", buf.len()));
                break;
            }
            Err(error) => {
                out.push(format!("<{error}>"));
                break;
            }
        }
    }
    out.join(" | ")
}

fn stream_seeds(dir: &Path) {
    let versions = [
        (
            "v31",
            v3_connect(3, false),
            v3_connect(3, true),
            v3_packets(),
        ),
        (
            "v311",
            v3_connect(4, false),
            v3_connect(4, true),
            v3_packets(),
        ),
        ("v5", v5_connect(false), v5_connect(true), v5_packets()),
    ];
    for (version, plain, full, packets) in versions {
        write(dir, &format!("{version}-connect"), &[&WHOLE, &plain]);
        write(dir, &format!("{version}-connect-full"), &[&WHOLE, &full]);
        for (name, bytes) in &packets {
            write(dir, &format!("{version}-{name}"), &[&WHOLE, &full, bytes]);
        }
        // A whole session of the packets a client sends, cut into small chunks.
        let mut session = vec![CHUNKED.to_vec(), plain];
        session.extend(
            packets
                .into_iter()
                .filter(|(name, _)| {
                    !matches!(*name, "connack" | "suback" | "unsuback" | "pingresp")
                })
                .map(|(_, bytes)| bytes),
        );
        write(
            dir,
            &format!("{version}-session-chunked"),
            &[&session.concat()],
        );
    }
}

fn record_seeds(dir: &Path) {
    let plain = Publish {
        topic: s("sensors/room1/temp"),
        payload: Bytes::from_static(b"21.5"),
        qos: Qos::AtMostOnce,
        retain: false,
        dup: false,
        packet_id: None,
        topic_alias: None,
        subscription_ids: Vec::new(),
        properties: MessageProperties::default(),
    };
    let full = Publish {
        qos: Qos::ExactlyOnce,
        retain: true,
        subscription_ids: vec![NonZeroU32::new(7).expect("non-zero")],
        properties: MessageProperties {
            utf8_payload: true,
            message_expiry: Some(60),
            content_type: Some(s("text/plain")),
            response_topic: Some(s("replies/seed")),
            correlation_data: Some(Bytes::from_static(b"req-7")),
            user_properties: user_properties(),
        },
        ..plain.clone()
    };
    write(dir, "qos0", &[&encode_record(&plain)]);
    write(dir, "qos2-props", &[&encode_record(&full)]);
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let stream = root.join("decode_stream");
    let record = root.join("decode_record");
    fs::create_dir_all(&stream).expect("create corpus dir");
    fs::create_dir_all(&record).expect("create corpus dir");
    stream_seeds(&stream);
    record_seeds(&record);
    let mut names: Vec<_> = fs::read_dir(&stream)
        .expect("read corpus dir")
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    names.sort();
    for path in names {
        let seed = fs::read(&path).expect("read seed");
        let name = path.file_name().expect("file name").to_string_lossy();
        println!("{name}: {}", describe(&seed));
    }
    let count = |dir: &Path| fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    println!(
        "{} files in {}, {} in {}",
        count(&stream),
        stream.display(),
        count(&record),
        record.display()
    );
}
