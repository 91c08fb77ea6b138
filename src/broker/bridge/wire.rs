//! The client side of the MQTT wire, for a bridge talking to a remote broker: encodes
//! what a client sends (CONNECT, PUBLISH, acknowledgements, SUBSCRIBE, PINGREQ,
//! DISCONNECT) and decodes what a server sends, in MQTT 3.1, 3.1.1 and 5.0.
//!
//! `broker::codec` is the server side and refuses to encode a CONNECT or decode a
//! CONNACK, and rmqtt-codec's v3 CONNECT cannot carry the bridge bit (protocol level
//! | 0x80, Mosquitto's `try_private`) nor the 3.1 protocol name: a bridge needs little
//! of the protocol, so it is written out here (docs/decisions/007-bridges.md).

use std::num::NonZeroU16;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::broker::codec::{MessageProperties, Publish, Qos, Version, Will};

/// A packet from the remote broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Box<Publish>),
    /// PUBACK with its reason code (v3: 0).
    PubAck(NonZeroU16, u8),
    /// PUBREC with its reason code (v3: 0).
    PubRec(NonZeroU16, u8),
    /// PUBREL.
    PubRel(NonZeroU16),
    /// PUBCOMP.
    PubComp(NonZeroU16),
    /// SUBACK: granted QoS or a failure code (v3 0x80, v5 >= 0x80) per filter.
    SubAck(NonZeroU16, Vec<u8>),
    /// UNSUBACK.
    UnsubAck,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (v5) with its reason code.
    Disconnect(u8),
}

/// What a CONNACK says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// The remote still had our session.
    pub session_present: bool,
    /// v3 return code (0 accepted, 1 protocol version refused, ...) or v5 reason code.
    pub code: u8,
    /// v5: most QoS 1/2 messages the remote takes from us at once.
    pub receive_max: Option<u16>,
    /// v5: highest QoS the remote accepts.
    pub max_qos: Option<Qos>,
    /// v5: whether the remote keeps retained messages (default yes).
    pub retain_available: bool,
    /// v5: largest packet the remote accepts.
    pub max_packet_size: Option<u32>,
    /// v5: keepalive the remote wants us to use instead of ours.
    pub server_keep_alive: Option<u16>,
}

impl ConnAck {
    /// Whether the connection was accepted.
    pub fn accepted(&self) -> bool {
        self.code == 0
    }
}

/// Bytes from the remote that are not a packet a server may send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes break the protocol.
    #[error("malformed packet from the remote broker: {0}")]
    Malformed(String),
    /// A packet larger than the bridge accepts.
    #[error("the remote broker sent a packet of {size} bytes, more than the {max} we accept")]
    TooLarge {
        /// Its size.
        size: usize,
        /// Our limit.
        max: usize,
    },
}

/// What the bridge puts in its CONNECT.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Protocol version.
    pub version: Version,
    /// Set the bridge bit (protocol level | 0x80) of MQTT 3.1/3.1.1, which tells a
    /// Mosquitto remote not to echo our own messages back (Mosquitto's `try_private`).
    pub bridge_bit: bool,
    /// Client id on the remote.
    pub client_id: String,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// Keepalive in seconds.
    pub keep_alive: u16,
    /// v5: session expiry interval (0 ends the session with the connection).
    pub session_expiry: u32,
    /// v5: most QoS 1/2 messages the remote may send us at once.
    pub receive_max: u16,
    /// v5: largest packet we accept.
    pub max_packet_size: u32,
    /// Will.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
}

/// One filter of a SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter.
    pub filter: String,
    /// Maximum QoS.
    pub qos: Qos,
    /// v5: do not send us our own messages.
    pub no_local: bool,
    /// v5: keep the retain flag on live messages.
    pub retain_as_published: bool,
    /// v5: 0 send retained at subscribe, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

// Packet types, shifted into the first byte.
const CONNECT: u8 = 0x10;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBREL: u8 = 0x62;
const PUBCOMP: u8 = 0x70;
const SUBSCRIBE: u8 = 0x82;
const UNSUBSCRIBE: u8 = 0xA2;
const PINGREQ: u8 = 0xC0;
const DISCONNECT: u8 = 0xE0;

// v5 property identifiers used here.
const PAYLOAD_FORMAT: u8 = 0x01;
const MESSAGE_EXPIRY: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SESSION_EXPIRY: u8 = 0x11;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

fn put_varint(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

fn put_binary(out: &mut BytesMut, bytes: &[u8]) {
    // Lengths above 65535 were refused by validation or cannot come from the broker
    // (topics and properties are bounded by its packet size checks on the way in).
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

/// Writes one packet: first byte, remaining length, body.
fn frame(out: &mut BytesMut, first: u8, body: &[u8]) {
    out.reserve(body.len() + 5);
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(body);
}

fn put_message_properties(props: &mut BytesMut, properties: &MessageProperties) {
    if properties.utf8_payload {
        props.put_u8(PAYLOAD_FORMAT);
        props.put_u8(1);
    }
    if let Some(expiry) = properties.message_expiry {
        props.put_u8(MESSAGE_EXPIRY);
        props.put_u32(expiry);
    }
    if let Some(content_type) = &properties.content_type {
        props.put_u8(CONTENT_TYPE);
        put_str(props, content_type);
    }
    if let Some(topic) = &properties.response_topic {
        props.put_u8(RESPONSE_TOPIC);
        put_str(props, topic);
    }
    if let Some(data) = &properties.correlation_data {
        props.put_u8(CORRELATION_DATA);
        put_binary(props, data);
    }
    for (key, value) in &properties.user_properties {
        props.put_u8(USER_PROPERTY);
        put_str(props, key);
        put_str(props, value);
    }
}

/// Appends a v5 property block (its length, then the properties) to `body`.
fn put_properties(body: &mut BytesMut, props: &[u8]) {
    put_varint(body, props.len());
    body.put_slice(props);
}

/// Encodes a CONNECT onto `out`.
pub fn encode_connect(options: &ConnectOptions, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let (name, level) = match options.version {
        Version::V31 => ("MQIsdp", 3),
        Version::V311 => ("MQTT", 4),
        Version::V5 => ("MQTT", 5),
    };
    put_str(&mut body, name);
    let bridge = options.bridge_bit && options.version != Version::V5;
    body.put_u8(if bridge { level | 0x80 } else { level });
    let mut flags = 0u8;
    if options.username.is_some() {
        flags |= 0x80;
    }
    if options.password.is_some() {
        flags |= 0x40;
    }
    if let Some(will) = &options.will {
        flags |= 0x04 | ((will.qos as u8) << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if options.clean_start {
        flags |= 0x02;
    }
    body.put_u8(flags);
    body.put_u16(options.keep_alive);
    if options.version == Version::V5 {
        let mut props = BytesMut::new();
        if options.session_expiry > 0 {
            props.put_u8(SESSION_EXPIRY);
            props.put_u32(options.session_expiry);
        }
        props.put_u8(RECEIVE_MAXIMUM);
        props.put_u16(options.receive_max.max(1));
        props.put_u8(MAXIMUM_PACKET_SIZE);
        props.put_u32(options.max_packet_size);
        put_properties(&mut body, &props);
    }
    put_str(&mut body, &options.client_id);
    if let Some(will) = &options.will {
        if options.version == Version::V5 {
            let mut props = BytesMut::new();
            put_message_properties(&mut props, &will.properties);
            put_properties(&mut body, &props);
        }
        put_str(&mut body, &will.topic);
        put_binary(&mut body, &will.payload);
    }
    if let Some(username) = &options.username {
        put_str(&mut body, username);
    }
    if let Some(password) = &options.password {
        put_str(&mut body, password);
    }
    frame(out, CONNECT, &body);
}

/// Encodes a PUBLISH onto `out`; returns its size in bytes.
pub fn encode_publish(version: Version, publish: &Publish, out: &mut BytesMut) -> usize {
    let mut body = BytesMut::with_capacity(publish.topic.len() + publish.payload.len() + 8);
    put_str(&mut body, &publish.topic);
    if let Some(id) = publish.packet_id {
        body.put_u16(id.get());
    }
    if version == Version::V5 {
        let mut props = BytesMut::new();
        put_message_properties(&mut props, &publish.properties);
        put_properties(&mut body, &props);
    }
    body.put_slice(&publish.payload);
    let mut first = PUBLISH | ((publish.qos as u8) << 1);
    if publish.dup {
        first |= 0x08;
    }
    if publish.retain {
        first |= 0x01;
    }
    let before = out.len();
    frame(out, first, &body);
    out.len() - before
}

/// The acknowledgements a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// PUBACK (QoS 1 received).
    Acknowledge,
    /// PUBREC (QoS 2 received).
    Received,
    /// PUBREL (QoS 2 release).
    Release,
    /// PUBCOMP (QoS 2 complete).
    Complete,
}

/// Encodes an acknowledgement with reason "success" (the same bytes in every version:
/// v5 omits a success reason code).
pub fn encode_ack(ack: Ack, id: NonZeroU16, out: &mut BytesMut) {
    let first = match ack {
        Ack::Acknowledge => PUBACK,
        Ack::Received => PUBREC,
        Ack::Release => PUBREL,
        Ack::Complete => PUBCOMP,
    };
    frame(out, first, &id.get().to_be_bytes());
}

/// Encodes a SUBSCRIBE onto `out`.
pub fn encode_subscribe(
    version: Version,
    id: NonZeroU16,
    filters: &[SubscribeFilter],
    out: &mut BytesMut,
) {
    let mut body = BytesMut::new();
    body.put_u16(id.get());
    if version == Version::V5 {
        put_properties(&mut body, &[]);
    }
    for filter in filters {
        put_str(&mut body, &filter.filter);
        let mut options = filter.qos as u8;
        if version == Version::V5 {
            options |= u8::from(filter.no_local) << 2
                | u8::from(filter.retain_as_published) << 3
                | (filter.retain_handling.min(2) << 4);
        }
        body.put_u8(options);
    }
    frame(out, SUBSCRIBE, &body);
}

/// Encodes an UNSUBSCRIBE onto `out`.
pub fn encode_unsubscribe(
    version: Version,
    id: NonZeroU16,
    filters: &[String],
    out: &mut BytesMut,
) {
    let mut body = BytesMut::new();
    body.put_u16(id.get());
    if version == Version::V5 {
        put_properties(&mut body, &[]);
    }
    for filter in filters {
        put_str(&mut body, filter);
    }
    frame(out, UNSUBSCRIBE, &body);
}

/// Encodes a PINGREQ onto `out`.
pub fn encode_pingreq(out: &mut BytesMut) {
    frame(out, PINGREQ, &[]);
}

/// Encodes a normal DISCONNECT (no will) onto `out`.
pub fn encode_disconnect(out: &mut BytesMut) {
    frame(out, DISCONNECT, &[]);
}

/// Reads the fields of one packet body.
struct Body {
    bytes: Bytes,
}

fn truncated() -> WireError {
    WireError::Malformed("packet shorter than its fields".into())
}

impl Body {
    fn u8(&mut self) -> Result<u8, WireError> {
        if self.bytes.remaining() < 1 {
            return Err(truncated());
        }
        Ok(self.bytes.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        if self.bytes.remaining() < 2 {
            return Err(truncated());
        }
        Ok(self.bytes.get_u16())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        if self.bytes.remaining() < 4 {
            return Err(truncated());
        }
        Ok(self.bytes.get_u32())
    }

    fn packet_id(&mut self) -> Result<NonZeroU16, WireError> {
        NonZeroU16::new(self.u16()?)
            .ok_or_else(|| WireError::Malformed("packet identifier 0".into()))
    }

    fn varint(&mut self) -> Result<usize, WireError> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed(
            "variable byte integer longer than four bytes".into(),
        ))
    }

    fn binary(&mut self) -> Result<Bytes, WireError> {
        let len = usize::from(self.u16()?);
        if self.bytes.remaining() < len {
            return Err(truncated());
        }
        Ok(self.bytes.split_to(len))
    }

    fn string(&mut self) -> Result<ByteString, WireError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(WireError::Malformed("string holds U+0000".into()));
        }
        ByteString::try_from(bytes).map_err(|_| WireError::Malformed("string is not UTF-8".into()))
    }

    /// A v5 property block, as (identifier, value) pairs.
    fn properties(&mut self) -> Result<Vec<(u8, Property)>, WireError> {
        let len = self.varint()?;
        if self.bytes.remaining() < len {
            return Err(truncated());
        }
        let mut block = Body {
            bytes: self.bytes.split_to(len),
        };
        let mut properties = Vec::new();
        while block.bytes.has_remaining() {
            let id = block.u8()?;
            let value = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    Property::Int(u32::from(block.u8()?))
                }
                0x13 | 0x21 | 0x22 | 0x23 => Property::Int(u32::from(block.u16()?)),
                0x02 | 0x11 | 0x18 | 0x27 => Property::Int(block.u32()?),
                0x0B => Property::Int(block.varint()? as u32),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Property::Str(block.string()?),
                0x09 | 0x16 => Property::Bin(block.binary()?),
                0x26 => Property::Pair(block.string()?, block.string()?),
                other => {
                    return Err(WireError::Malformed(format!(
                        "unknown property {other:#04x}"
                    )));
                }
            };
            properties.push((id, value));
        }
        Ok(properties)
    }
}

/// One v5 property value.
enum Property {
    Int(u32),
    Str(ByteString),
    Bin(Bytes),
    Pair(ByteString, ByteString),
}

/// Decodes the next whole packet at the start of `buf`; `Ok(None)` when more bytes are
/// needed. Packets larger than `max_size` bytes are refused.
pub fn decode(
    version: Version,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<Incoming>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return Err(WireError::Malformed(
                "remaining length longer than four bytes".into(),
            ));
        }
    }
    let size = header + remaining;
    if size > max_size {
        return Err(WireError::TooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(size).freeze();
    packet.advance(header);
    let mut body = Body { bytes: packet };
    let v5 = version == Version::V5;
    let incoming = match first >> 4 {
        2 => {
            let flags = body.u8()?;
            let code = body.u8()?;
            let mut ack = ConnAck {
                session_present: flags & 0x01 != 0,
                code,
                retain_available: true,
                ..ConnAck::default()
            };
            if v5 && body.bytes.has_remaining() {
                for (id, value) in body.properties()? {
                    match (id, value) {
                        (RECEIVE_MAXIMUM, Property::Int(n)) => ack.receive_max = Some(n as u16),
                        (MAXIMUM_QOS, Property::Int(n)) => ack.max_qos = Qos::from_u8(n as u8),
                        (RETAIN_AVAILABLE, Property::Int(n)) => ack.retain_available = n != 0,
                        (MAXIMUM_PACKET_SIZE, Property::Int(n)) => ack.max_packet_size = Some(n),
                        (SERVER_KEEP_ALIVE, Property::Int(n)) => {
                            ack.server_keep_alive = Some(n as u16);
                        }
                        _ => {}
                    }
                }
            }
            Incoming::ConnAck(ack)
        }
        3 => Incoming::Publish(Box::new(decode_publish(first, &mut body, v5)?)),
        4 => {
            let id = body.packet_id()?;
            Incoming::PubAck(id, reason_code(&mut body, v5)?)
        }
        5 => {
            let id = body.packet_id()?;
            Incoming::PubRec(id, reason_code(&mut body, v5)?)
        }
        6 => Incoming::PubRel(body.packet_id()?),
        7 => Incoming::PubComp(body.packet_id()?),
        9 => {
            let id = body.packet_id()?;
            if v5 {
                body.properties()?;
            }
            Incoming::SubAck(id, body.bytes.to_vec())
        }
        11 => Incoming::UnsubAck,
        13 => Incoming::PingResp,
        14 => Incoming::Disconnect(if body.bytes.has_remaining() {
            body.u8()?
        } else {
            0
        }),
        other => {
            return Err(WireError::Malformed(format!(
                "packet type {other} is not one a server sends"
            )));
        }
    };
    Ok(Some(incoming))
}

/// A v5 acknowledgement's reason code (absent means success); v3 has none.
fn reason_code(body: &mut Body, v5: bool) -> Result<u8, WireError> {
    if v5 && body.bytes.has_remaining() {
        body.u8()
    } else {
        Ok(0)
    }
}

fn decode_publish(first: u8, body: &mut Body, v5: bool) -> Result<Publish, WireError> {
    let qos = Qos::from_u8((first >> 1) & 0x03)
        .ok_or_else(|| WireError::Malformed("publish with qos 3".into()))?;
    let topic = body.string()?;
    let packet_id = match qos {
        Qos::AtMostOnce => None,
        _ => Some(body.packet_id()?),
    };
    let mut properties = MessageProperties::default();
    if v5 {
        for (id, value) in body.properties()? {
            match (id, value) {
                (PAYLOAD_FORMAT, Property::Int(n)) => properties.utf8_payload = n == 1,
                (MESSAGE_EXPIRY, Property::Int(n)) => properties.message_expiry = Some(n),
                (CONTENT_TYPE, Property::Str(s)) => properties.content_type = Some(s),
                (RESPONSE_TOPIC, Property::Str(s)) => properties.response_topic = Some(s),
                (CORRELATION_DATA, Property::Bin(b)) => properties.correlation_data = Some(b),
                (USER_PROPERTY, Property::Pair(k, v)) => properties.user_properties.push((k, v)),
                (TOPIC_ALIAS, _) => {
                    // We announce a topic alias maximum of 0 [MQTT-3.3.2-9].
                    return Err(WireError::Malformed(
                        "topic alias sent though we allow none".into(),
                    ));
                }
                _ => {}
            }
        }
    }
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(WireError::Malformed(format!(
            "publish to the invalid topic `{topic}`"
        )));
    }
    Ok(Publish {
        topic,
        payload: std::mem::take(&mut body.bytes),
        qos,
        retain: first & 0x01 != 0,
        dup: first & 0x08 != 0,
        packet_id,
        topic_alias: None,
        subscription_ids: Vec::new(),
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{Codec, ConnAck as ServerConnAck, Packet, SubscriptionOptions};

    fn options(version: Version, bridge_bit: bool) -> ConnectOptions {
        ConnectOptions {
            version,
            bridge_bit,
            client_id: "hub.cloud".into(),
            clean_start: false,
            keep_alive: 60,
            session_expiry: u32::MAX,
            receive_max: 64,
            max_packet_size: 1 << 20,
            will: Some(Will {
                topic: "status".into(),
                payload: Bytes::from_static(b"0"),
                qos: Qos::AtLeastOnce,
                retain: true,
                delay: 0,
                properties: MessageProperties::default(),
            }),
            username: Some("user".into()),
            password: Some("secret".into()),
        }
    }

    /// The broker's own (server) codec decodes what we encode, for every version.
    #[test]
    fn the_server_codec_reads_our_connect_in_every_version() {
        for version in [Version::V31, Version::V311, Version::V5] {
            let mut buf = BytesMut::new();
            encode_connect(&options(version, false), &mut buf);
            let mut server = Codec::new(1 << 20);
            let Some(Packet::Connect(connect)) = server.decode(&mut buf).expect("valid") else {
                panic!("{version:?}: not a connect");
            };
            assert_eq!(connect.version, version);
            assert_eq!(&*connect.client_id, "hub.cloud");
            assert!(!connect.clean_start);
            assert_eq!(connect.keep_alive, 60);
            assert_eq!(connect.username.as_deref(), Some("user"));
            assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
            let will = connect.will.expect("will");
            assert_eq!((&*will.topic, &will.payload[..]), ("status", &b"0"[..]));
            assert!(will.retain);
            assert_eq!(will.qos, Qos::AtLeastOnce);
            if version == Version::V5 {
                assert_eq!(connect.receive_max, 64);
                assert_eq!(connect.session_expiry, u32::MAX);
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn the_bridge_bit_is_set_on_v3_only() {
        for (version, level) in [
            (Version::V31, 0x83),
            (Version::V311, 0x84),
            (Version::V5, 5),
        ] {
            let mut buf = BytesMut::new();
            encode_connect(&options(version, true), &mut buf);
            let name_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            assert_eq!(buf[4 + name_len], level, "{version:?}");
        }
        // Our broker refuses a level it does not know, as a non-Mosquitto remote would.
        let mut buf = BytesMut::new();
        encode_connect(&options(Version::V311, true), &mut buf);
        assert!(Codec::new(1 << 20).decode(&mut buf).is_err());
    }

    /// Encodes `packet` the way the broker sends it to a client of `version`.
    fn from_server(version: Version, packet: Packet) -> BytesMut {
        let mut server = Codec::new(1 << 20);
        let mut connect = BytesMut::new();
        encode_connect(&options(version, false), &mut connect);
        server
            .decode(&mut connect)
            .expect("connect")
            .expect("whole");
        let mut out = BytesMut::new();
        server.encode(packet, &mut out).expect("encodable");
        out
    }

    #[test]
    fn server_packets_decode_in_every_version() {
        let id = NonZeroU16::new(7).unwrap();
        for version in [Version::V31, Version::V311, Version::V5] {
            let publish = Publish {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"hello"),
                qos: Qos::ExactlyOnce,
                retain: true,
                dup: true,
                packet_id: Some(id),
                topic_alias: None,
                subscription_ids: Vec::new(),
                properties: if version == Version::V5 {
                    MessageProperties {
                        utf8_payload: true,
                        message_expiry: Some(30),
                        content_type: Some("text/plain".into()),
                        response_topic: Some("r".into()),
                        correlation_data: Some(Bytes::from_static(b"c")),
                        user_properties: vec![("k".into(), "v".into())],
                    }
                } else {
                    MessageProperties::default()
                },
            };
            let cases = [
                (
                    Packet::ConnAck(ServerConnAck {
                        session_present: true,
                        receive_max: 10,
                        ..ServerConnAck::default()
                    }),
                    None,
                ),
                (
                    Packet::Publish(Box::new(publish.clone())),
                    Some(Incoming::Publish(Box::new(publish.clone()))),
                ),
                (Packet::PubAck(id, 0), Some(Incoming::PubAck(id, 0))),
                (Packet::PubRec(id, 0), Some(Incoming::PubRec(id, 0))),
                (Packet::PubRel(id, 0), Some(Incoming::PubRel(id))),
                (Packet::PubComp(id, 0), Some(Incoming::PubComp(id))),
                (
                    Packet::SubAck(id, vec![1, 0x80]),
                    Some(Incoming::SubAck(id, vec![1, 0x80])),
                ),
                (Packet::PingResp, Some(Incoming::PingResp)),
            ];
            for (packet, expected) in cases {
                let mut buf = from_server(version, packet.clone());
                let decoded = decode(version, &mut buf, 1 << 20)
                    .unwrap_or_else(|e| panic!("{version:?} {packet:?}: {e}"))
                    .expect("whole");
                match expected {
                    Some(expected) => assert_eq!(decoded, expected, "{version:?}"),
                    None => match decoded {
                        Incoming::ConnAck(ack) => {
                            // MQTT 3.1 has no session present flag.
                            assert!(ack.accepted());
                            assert_eq!(ack.session_present, version != Version::V31);
                            if version == Version::V5 {
                                assert_eq!(ack.receive_max, Some(10));
                            }
                        }
                        other => panic!("{other:?}"),
                    },
                }
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn what_we_send_is_what_the_server_reads() {
        let id = NonZeroU16::new(3).unwrap();
        for version in [Version::V311, Version::V5] {
            let mut server = Codec::new(1 << 20);
            let mut buf = BytesMut::new();
            encode_connect(&options(version, false), &mut buf);
            let publish = Publish {
                topic: "x/y".into(),
                payload: Bytes::from_static(b"p"),
                qos: Qos::AtLeastOnce,
                retain: true,
                dup: false,
                packet_id: Some(id),
                topic_alias: None,
                subscription_ids: Vec::new(),
                properties: MessageProperties::default(),
            };
            encode_publish(version, &publish, &mut buf);
            encode_ack(Ack::Release, id, &mut buf);
            encode_subscribe(
                version,
                id,
                &[SubscribeFilter {
                    filter: "in/#".into(),
                    qos: Qos::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 1,
                }],
                &mut buf,
            );
            encode_pingreq(&mut buf);
            encode_disconnect(&mut buf);
            let mut packets = Vec::new();
            while let Some(packet) = server.decode(&mut buf).expect("valid") {
                packets.push(packet);
            }
            assert!(matches!(packets[0], Packet::Connect(_)));
            assert_eq!(packets[1], Packet::Publish(Box::new(publish)));
            assert_eq!(packets[2], Packet::PubRel(id, 0));
            let v5 = version == Version::V5;
            let expected = SubscriptionOptions {
                qos: Qos::ExactlyOnce,
                no_local: v5,
                retain_as_published: v5,
                retain_handling: if v5 { 1 } else { 0 },
            };
            assert_eq!(
                packets[3],
                Packet::Subscribe {
                    packet_id: id,
                    subscription_id: None,
                    filters: vec![("in/#".into(), expected)],
                }
            );
            assert_eq!(packets[4], Packet::PingReq);
            assert!(matches!(packets[5], Packet::Disconnect(0, _)));
        }
    }

    #[test]
    fn partial_and_oversized_packets() {
        let mut buf = from_server(Version::V311, Packet::PubAck(NonZeroU16::MIN, 0));
        let mut half = buf.split_to(2);
        assert_eq!(decode(Version::V311, &mut half, 100), Ok(None));
        half.unsplit(buf);
        assert!(decode(Version::V311, &mut half, 100).unwrap().is_some());
        let mut big = BytesMut::from(&[0x30u8, 0x80, 0x01][..]);
        assert!(matches!(
            decode(Version::V311, &mut big, 100),
            Err(WireError::TooLarge { size: 131, .. })
        ));
        let mut bad = BytesMut::from(&[0x10u8, 0x00][..]);
        assert!(decode(Version::V311, &mut bad, 100).is_err());
    }
}
