//! The codec boundary: bytes on the wire <-> the broker's own packet types.
//!
//! Framing and field decoding come from `rmqtt-codec` (see docs/decisions/002-mqtt-codec.md);
//! this file adds the checks the specification demands that the crate leaves out (NUL
//! characters in strings, topic name and filter rules, reserved subscription option bits,
//! an empty SUBSCRIBE) and turns v3.1/v3.1.1 and v5 packets into one set of types, so no
//! other part of the broker knows which protocol version a client speaks except where
//! the specification makes them behave differently.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::QoS as CodecQos;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

use super::topic;

/// The protocol version a client connected with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Version {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl Qos {
    /// From the two QoS bits; 3 is not a QoS.
    pub fn from_u8(bits: u8) -> Option<Qos> {
        match bits {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    fn from_codec(qos: CodecQos) -> Qos {
        match qos {
            CodecQos::AtMostOnce => Qos::AtMostOnce,
            CodecQos::AtLeastOnce => Qos::AtLeastOnce,
            CodecQos::ExactlyOnce => Qos::ExactlyOnce,
        }
    }

    fn to_codec(self) -> CodecQos {
        match self {
            Qos::AtMostOnce => CodecQos::AtMostOnce,
            Qos::AtLeastOnce => CodecQos::AtLeastOnce,
            Qos::ExactlyOnce => CodecQos::ExactlyOnce,
        }
    }
}

/// The v5 properties that travel with an application message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload format indicator: the payload is UTF-8.
    pub utf8_payload: bool,
    /// Seconds the message lives, counted from when the broker received it.
    pub message_expiry: Option<u32>,
    /// Content type.
    pub content_type: Option<ByteString>,
    /// Response topic (request/response).
    pub response_topic: Option<ByteString>,
    /// Correlation data (request/response).
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(ByteString, ByteString)>,
}

/// A PUBLISH packet, either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The topic name (after topic-alias resolution on the way in; empty on the way
    /// out when only an alias is sent).
    pub topic: ByteString,
    /// The payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: Qos,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Packet identifier (QoS 1 and 2).
    pub packet_id: Option<NonZeroU16>,
    /// Topic alias (v5).
    pub topic_alias: Option<NonZeroU16>,
    /// Subscription identifiers (v5, server to client).
    pub subscription_ids: Vec<NonZeroU32>,
    /// Message properties (v5).
    pub properties: MessageProperties,
}

/// A will message from CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: ByteString,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: Qos,
    /// Retain.
    pub retain: bool,
    /// v5 will delay interval in seconds.
    pub delay: u32,
    /// Message properties (v5).
    pub properties: MessageProperties,
}

/// A CONNECT packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version.
    pub version: Version,
    /// Client identifier; empty asks the server to assign one.
    pub client_id: ByteString,
    /// Clean session (v3) / clean start (v5).
    pub clean_start: bool,
    /// Keep alive in seconds, 0 = none.
    pub keep_alive: u16,
    /// v5 session expiry interval; v3 maps clean_session=false to `u32::MAX` (never).
    pub session_expiry: u32,
    /// How many QoS 1/2 publishes the client accepts at once (v5 receive maximum).
    pub receive_max: u16,
    /// Largest packet the client accepts (v5).
    pub max_packet_size: Option<u32>,
    /// Highest topic alias the client accepts from us (v5).
    pub topic_alias_max: u16,
    /// The will.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<ByteString>,
    /// Password.
    pub password: Option<Bytes>,
    /// v5: send reason strings and user properties on errors.
    pub request_problem_info: bool,
}

/// Subscription options of one filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: Qos,
    /// v5: do not send messages this client published itself.
    pub no_local: bool,
    /// v5: keep the retain flag on normal deliveries.
    pub retain_as_published: bool,
    /// v5: 0 = send retained at subscribe, 1 = only if the subscription is new, 2 = never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    /// Plain options at `qos`.
    pub fn qos(qos: Qos) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// The broker's packet types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Box<Publish>),
    /// PUBACK.
    PubAck(NonZeroU16, u8),
    /// PUBREC.
    PubRec(NonZeroU16, u8),
    /// PUBREL.
    PubRel(NonZeroU16, u8),
    /// PUBCOMP.
    PubComp(NonZeroU16, u8),
    /// SUBSCRIBE.
    Subscribe {
        /// Packet identifier.
        packet_id: NonZeroU16,
        /// v5 subscription identifier.
        subscription_id: Option<NonZeroU32>,
        /// Filters and options.
        filters: Vec<(ByteString, SubscriptionOptions)>,
    },
    /// SUBACK: one reason code per filter (granted QoS or a failure code).
    SubAck(NonZeroU16, Vec<u8>),
    /// UNSUBSCRIBE.
    Unsubscribe(NonZeroU16, Vec<ByteString>),
    /// UNSUBACK: one reason code per filter (v5; v3 has none).
    UnsubAck(NonZeroU16, Vec<u8>),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT with a reason code (v3: always 0) and a v5 session expiry update.
    Disconnect(u8, Option<u32>),
    /// v5 AUTH (not supported beyond refusing it).
    Auth,
}

/// CONNACK contents; v5 capability properties are filled by the session layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present.
    pub session_present: bool,
    /// v5 reason code; v3 return codes are mapped from it.
    pub reason: u8,
    /// v5: the client id we assigned.
    pub assigned_client_id: Option<ByteString>,
    /// v5: our receive maximum.
    pub receive_max: u16,
    /// v5: the highest QoS we accept.
    pub max_qos: Option<Qos>,
    /// v5: retain available.
    pub retain_available: bool,
    /// v5: largest packet we accept.
    pub max_packet_size: Option<u32>,
    /// v5: highest topic alias the client may use.
    pub topic_alias_max: u16,
    /// v5: the keepalive the client must use instead of its own.
    pub server_keep_alive: Option<u16>,
    /// v5: session expiry the server chose.
    pub session_expiry: Option<u32>,
    /// v5: a reason string.
    pub reason_string: Option<ByteString>,
}

/// v5 reason codes the broker uses (also used to pick v3 return codes).
pub mod reason {
    /// Success / granted QoS 0 / normal disconnection.
    pub const SUCCESS: u8 = 0x00;
    /// Disconnect with will message.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// No matching subscribers (PUBACK/PUBREC, informational).
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED: u8 = 0x80;
    /// Malformed packet.
    pub const MALFORMED: u8 = 0x81;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    /// Unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Client identifier not valid.
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// Bad user name or password.
    pub const BAD_CREDENTIALS: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// Server shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Keep alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet identifier in use.
    pub const PACKET_ID_IN_USE: u8 = 0x91;
    /// Packet identifier not found.
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    /// Receive maximum exceeded.
    pub const RECEIVE_MAX_EXCEEDED: u8 = 0x93;
    /// Topic alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Shared subscriptions not supported.
    pub const SHARED_NOT_SUPPORTED: u8 = 0x9E;
}

/// Why a connection's bytes could not be turned into packets. Each maps to the v5
/// reason code the connection is closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A valid packet that the protocol forbids here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The packet is larger than the maximum packet size.
    #[error("packet of {size} bytes is larger than the maximum {max}")]
    TooLarge {
        /// Its size.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// CONNECT names a protocol version we do not speak.
    #[error("unsupported protocol version")]
    UnsupportedVersion,
    /// A topic name breaks the topic rules.
    #[error("invalid topic name: {0}")]
    TopicName(String),
    /// CONNECT has an empty client id the server may not assign one for (v3.1.1
    /// without clean session [MQTT-3.1.3-8]; v5 without clean start, which we refuse
    /// too, as [MQTT-3.1.3-6] lets a server).
    #[error("empty client id without clean session")]
    ClientIdRejected,
    /// The payload format indicator says UTF-8 and the payload is not.
    #[error("payload format invalid: {0}")]
    PayloadFormat(String),
}

impl ProtocolViolation {
    /// The v5 reason code for a DISCONNECT (or CONNACK) that reports this violation.
    pub fn reason_code(&self) -> u8 {
        match self {
            ProtocolViolation::Malformed(_) => reason::MALFORMED,
            ProtocolViolation::Protocol(_) => reason::PROTOCOL_ERROR,
            ProtocolViolation::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            ProtocolViolation::UnsupportedVersion => reason::UNSUPPORTED_PROTOCOL_VERSION,
            ProtocolViolation::TopicName(_) => reason::TOPIC_NAME_INVALID,
            ProtocolViolation::ClientIdRejected => reason::CLIENT_ID_NOT_VALID,
            ProtocolViolation::PayloadFormat(_) => reason::PAYLOAD_FORMAT_INVALID,
        }
    }
}

fn malformed(error: DecodeError) -> ProtocolViolation {
    match error {
        DecodeError::MaxSizeExceeded { size, max } => ProtocolViolation::TooLarge { size, max },
        DecodeError::InvalidProtocol | DecodeError::UnsupportedProtocolLevel => {
            ProtocolViolation::UnsupportedVersion
        }
        DecodeError::InvalidClientId => ProtocolViolation::ClientIdRejected,
        other => ProtocolViolation::Malformed(other.to_string().to_lowercase()),
    }
}

/// One connection's codec: detects the protocol from the first CONNECT, then frames
/// and decodes with the matching version. Bounded by `max_packet_size`.
pub struct Codec {
    state: State,
    max_packet_size: u32,
    /// What the client accepts from us (v5 maximum packet size); 0 = no limit.
    max_outgoing: u32,
}

enum State {
    /// Before CONNECT: only the version is known after it.
    Handshake,
    V3(v3::Codec, Version),
    V5(v5::Codec),
}

impl Codec {
    /// A codec for a new connection refusing packets larger than `max_packet_size`
    /// (whole packet, fixed header included).
    pub fn new(max_packet_size: u32) -> Self {
        Codec {
            state: State::Handshake,
            max_packet_size,
            max_outgoing: 0,
        }
    }

    /// The version, once CONNECT was decoded.
    pub fn version(&self) -> Option<Version> {
        match &self.state {
            State::Handshake => None,
            State::V3(_, version) => Some(*version),
            State::V5(_) => Some(Version::V5),
        }
    }

    /// Limits what we send to what the client said it accepts (v5). The limit is
    /// checked here on the encoded bytes, not handed to the crate: rmqtt-codec 0.3
    /// underflows sizing an acknowledgement for a limit under 12 bytes (found by
    /// fuzzing, docs/fuzzing.md).
    pub fn set_max_outgoing(&mut self, size: Option<u32>) {
        self.max_outgoing = size.unwrap_or(0);
    }

    /// Checks the fixed header's first byte: the packet type and its reserved flags.
    fn check_first_byte(&self, byte: u8) -> Result<(), ProtocolViolation> {
        let kind = byte >> 4;
        let flags = byte & 0x0F;
        let expected = match kind {
            3 => {
                // PUBLISH: any DUP/retain, QoS 0..2.
                if (flags >> 1) & 0b11 == 3 {
                    return Err(ProtocolViolation::Malformed(
                        "publish with qos 3 [MQTT-3.3.1-4]".into(),
                    ));
                }
                return Ok(());
            }
            6 | 8 | 10 => 0b0010,
            15 if self.version() == Some(Version::V5) => 0,
            1 | 2 | 4 | 5 | 7 | 9 | 11 | 12 | 13 | 14 => 0,
            _ => {
                return Err(ProtocolViolation::Malformed(format!(
                    "unknown packet type {kind}"
                )));
            }
        };
        if flags != expected {
            return Err(ProtocolViolation::Malformed(format!(
                "reserved flags {flags:#06b} on packet type {kind} [MQTT-2.2.2-2]"
            )));
        }
        if self.version().is_none() && kind != 1 {
            return Err(ProtocolViolation::Protocol(
                "the first packet must be connect [MQTT-3.1.0-1]".into(),
            ));
        }
        if self.version().is_some() && kind == 1 {
            return Err(ProtocolViolation::Protocol(
                "a second connect [MQTT-3.1.0-2]".into(),
            ));
        }
        Ok(())
    }

    /// Decodes one packet from `buf`; `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, ProtocolViolation> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        self.check_first_byte(first)?;
        // The whole packet's size, for the maximum packet size (the crate checks only
        // the remaining length).
        let Some((remaining, header)) = remaining_length(&buf[1..])? else {
            return Ok(None);
        };
        let size = remaining.saturating_add(1 + header as u32);
        if size > self.max_packet_size {
            return Err(ProtocolViolation::TooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        // Only whole packets go to the crate's codec, so it never holds a half-read
        // frame and the first byte checked above is always a packet's first byte.
        if buf.len() < size as usize {
            buf.reserve(size as usize - buf.len());
            return Ok(None);
        }
        // Set when a v5 CONNECT had an empty client id without clean start, which the
        // crate refuses and the specification lets a server accept [MQTT-3.1.3-6];
        // Mosquitto assigns an id then, and so do we.
        let mut empty_id_for_the_crate = false;
        if let State::Handshake = self.state {
            let version = detect_version(&buf[..size as usize])?;
            self.state = match version {
                Version::V5 => {
                    empty_id_for_the_crate = allow_v5_empty_client_id(buf);
                    State::V5(v5::Codec::new(self.max_packet_size, 0))
                }
                v3_version => State::V3(v3::Codec::new(self.max_packet_size), v3_version),
            };
        }
        if matches!(self.state, State::V3(..))
            && buf[0] == 0x82
            && v3_subscribe_reserved_bits(&buf[..size as usize])
        {
            return Err(ProtocolViolation::Malformed(
                "reserved bits set in a requested qos [MQTT-3.8.3-4]".into(),
            ));
        }
        let packet = match &mut self.state {
            State::Handshake => unreachable!("set above"),
            State::V3(codec, version) => match codec.decode(buf).map_err(malformed)? {
                Some((packet, _)) => from_v3(packet, *version)?,
                None => return Ok(None),
            },
            State::V5(codec) => match codec.decode(buf).map_err(malformed)? {
                Some((packet, _)) => match from_v5(packet)? {
                    Packet::Connect(mut connect) if empty_id_for_the_crate => {
                        connect.clean_start = false;
                        Packet::Connect(connect)
                    }
                    packet => packet,
                },
                None => return Ok(None),
            },
        };
        Ok(Some(packet))
    }

    /// The CONNACK that refuses a CONNECT which failed to decode with `violation`, for
    /// the refusals the specification answers before closing: an unsupported protocol
    /// level (v3 return code 0x01 [MQTT-3.1.2-2], which v5 clients of another level
    /// understand too) and a rejected client id (0x02 in v3 [MQTT-3.1.3-9], 0x85 in
    /// v5). `None`: close without a word.
    pub fn connect_refusal(&mut self, violation: &ProtocolViolation) -> Option<BytesMut> {
        let mut buf = BytesMut::new();
        match violation {
            ProtocolViolation::UnsupportedVersion => {
                buf.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
            }
            ProtocolViolation::ClientIdRejected => {
                let refusal = ConnAck {
                    reason: reason::CLIENT_ID_NOT_VALID,
                    ..ConnAck::default()
                };
                self.encode(Packet::ConnAck(refusal), &mut buf).ok()?;
            }
            _ => return None,
        }
        Some(buf)
    }

    /// Encodes `packet` for this connection's version onto `buf`. A packet larger than
    /// what the client accepts is an error (the caller drops it, [MQTT-3.1.2-25]).
    pub fn encode(&mut self, packet: Packet, buf: &mut BytesMut) -> Result<(), EncodeFailed> {
        match &mut self.state {
            State::Handshake => Err(EncodeFailed("no connect yet".into())),
            State::V3(codec, version) => {
                let packet = to_v3(packet, *version)
                    .ok_or_else(|| EncodeFailed("packet has no v3 form".into()))?;
                let start = buf.len();
                codec
                    .encode(packet, buf)
                    .map_err(|e| EncodeFailed(e.to_string()))?;
                if self.max_outgoing > 0 && (buf.len() - start) as u32 > self.max_outgoing {
                    buf.truncate(start);
                    return Err(EncodeFailed("larger than the client accepts".into()));
                }
                Ok(())
            }
            State::V5(codec) => {
                let start = buf.len();
                codec
                    .encode(to_v5(packet), buf)
                    .map_err(|e| EncodeFailed(e.to_string()))?;
                if self.max_outgoing > 0 && (buf.len() - start) as u32 > self.max_outgoing {
                    buf.truncate(start);
                    return Err(EncodeFailed("larger than the client accepts".into()));
                }
                Ok(())
            }
        }
    }
}

/// A packet could not be encoded (too large for the client, or no form in its version).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode packet: {0}")]
pub struct EncodeFailed(String);

/// The remaining length and the bytes it took, `None` when incomplete.
fn remaining_length(bytes: &[u8]) -> Result<Option<(u32, usize)>, ProtocolViolation> {
    let mut value: u32 = 0;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(ProtocolViolation::Malformed(
            "remaining length longer than four bytes [MQTT-2.2.3]".into(),
        ));
    }
    Ok(None)
}

/// The protocol version from a (possibly partial) CONNECT at the start of `buf`.
fn detect_version(frame: &[u8]) -> Result<Version, ProtocolViolation> {
    // `frame` is the whole CONNECT: what does not fit in it is malformed, not "more
    // bytes needed" (found by fuzzing: a short CONNECT used to wait for its timeout).
    let short = || ProtocolViolation::Malformed("connect too short for its protocol name".into());
    let (_, header) = remaining_length(&frame[1..])?.ok_or_else(short)?;
    let at = 1 + header;
    let name_len = frame.get(at..at + 2).ok_or_else(short)?;
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let name = frame.get(at + 2..at + 2 + name_len).ok_or_else(short)?;
    let level = *frame.get(at + 2 + name_len).ok_or_else(short)?;
    match (name, level) {
        (b"MQIsdp", 3) => Ok(Version::V31),
        (b"MQTT", 4) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        (b"MQTT" | b"MQIsdp", _) => Err(ProtocolViolation::UnsupportedVersion),
        _ => Err(ProtocolViolation::Malformed(
            "protocol name is not mqtt [MQTT-3.1.2-1]".into(),
        )),
    }
}

/// A v5 variable byte integer at the start of `bytes`: its value and length.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Where a whole v5 CONNECT's client id starts and its connect flags byte sits:
/// `(flags offset, client id length)`.
fn v5_connect_layout(frame: &[u8]) -> Option<(usize, usize)> {
    let (_, header) = varint(frame.get(1..)?)?;
    let name_len = usize::from(u16::from_be_bytes([
        *frame.get(1 + header)?,
        *frame.get(2 + header)?,
    ]));
    let flags_at = 1 + header + 2 + name_len + 1;
    let props_at = flags_at + 1 + 2;
    let (props_len, props_header) = varint(frame.get(props_at..)?)?;
    let id_at = props_at + props_header + props_len;
    let id_len = usize::from(u16::from_be_bytes([
        *frame.get(id_at)?,
        *frame.get(id_at + 1)?,
    ]));
    Some((flags_at, id_len))
}

/// For a v5 CONNECT with an empty client id and clean start 0, sets the clean start
/// bit so rmqtt-codec accepts it; returns whether it did (the caller puts the flag
/// back on the decoded packet).
fn allow_v5_empty_client_id(frame: &mut [u8]) -> bool {
    match v5_connect_layout(frame) {
        Some((flags_at, 0)) if frame[flags_at] & 0x02 == 0 => {
            frame[flags_at] |= 0x02;
            true
        }
        _ => false,
    }
}

/// Whether a whole v3 SUBSCRIBE sets a reserved bit in a requested QoS byte, which
/// makes it malformed [MQTT-3.8.3-4 in 3.1.1]; the crate masks those bits away.
fn v3_subscribe_reserved_bits(frame: &[u8]) -> bool {
    let scan = || -> Option<bool> {
        let (_, header) = varint(frame.get(1..)?)?;
        let mut at = 1 + header + 2; // fixed header, packet id
        while at < frame.len() {
            let len = usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
            at += 2 + len;
            if frame.get(at)? & 0b1111_1100 != 0 {
                return Some(true);
            }
            at += 1;
        }
        Some(false)
    };
    scan().unwrap_or(false)
}

/// UTF-8 rules the crate does not check: no U+0000 [MQTT-1.5.4-2].
fn check_string(value: &ByteString, what: &str) -> Result<(), ProtocolViolation> {
    if value.contains('\0') {
        return Err(ProtocolViolation::Malformed(format!(
            "{what} contains U+0000 [MQTT-1.5.4-2]"
        )));
    }
    Ok(())
}

fn check_topic_name(topic: &ByteString) -> Result<(), ProtocolViolation> {
    check_string(topic, "topic name")?;
    topic::validate_name(topic).map_err(ProtocolViolation::TopicName)
}

fn check_filters<'a>(
    filters: impl Iterator<Item = &'a ByteString>,
    empty: bool,
) -> Result<(), ProtocolViolation> {
    if empty {
        return Err(ProtocolViolation::Protocol(
            "subscribe or unsubscribe without topic filters [MQTT-3.8.3-3]".into(),
        ));
    }
    for filter in filters {
        check_string(filter, "topic filter")?;
    }
    Ok(())
}

fn from_v3(packet: v3::Packet, version: Version) -> Result<Packet, ProtocolViolation> {
    Ok(match packet {
        v3::Packet::Connect(connect) => {
            let connect = *connect;
            check_string(&connect.client_id, "client id")?;
            let will = match connect.last_will {
                Some(will) => {
                    check_topic_name(&will.topic)?;
                    Some(Will {
                        topic: will.topic,
                        payload: will.message,
                        qos: Qos::from_codec(will.qos),
                        retain: will.retain,
                        delay: 0,
                        properties: MessageProperties::default(),
                    })
                }
                None => None,
            };
            if let Some(username) = &connect.username {
                check_string(username, "user name")?;
            }
            Packet::Connect(Box::new(Connect {
                version,
                client_id: connect.client_id,
                clean_start: connect.clean_session,
                keep_alive: connect.keep_alive,
                session_expiry: if connect.clean_session { 0 } else { u32::MAX },
                receive_max: u16::MAX,
                max_packet_size: None,
                topic_alias_max: 0,
                will,
                username: connect.username,
                password: connect.password,
                request_problem_info: false,
            }))
        }
        v3::Packet::Publish(publish) => {
            let publish = *publish;
            check_topic_name(&publish.topic)?;
            Packet::Publish(Box::new(Publish {
                topic: publish.topic,
                payload: publish.payload,
                qos: Qos::from_codec(publish.qos),
                retain: publish.retain,
                dup: publish.dup,
                packet_id: publish.packet_id,
                topic_alias: None,
                subscription_ids: Vec::new(),
                properties: MessageProperties::default(),
            }))
        }
        v3::Packet::PublishAck { packet_id } => Packet::PubAck(packet_id, 0),
        v3::Packet::PublishReceived { packet_id } => Packet::PubRec(packet_id, 0),
        v3::Packet::PublishRelease { packet_id } => Packet::PubRel(packet_id, 0),
        v3::Packet::PublishComplete { packet_id } => Packet::PubComp(packet_id, 0),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => {
            check_filters(
                topic_filters.iter().map(|(f, _)| f),
                topic_filters.is_empty(),
            )?;
            Packet::Subscribe {
                packet_id,
                subscription_id: None,
                filters: topic_filters
                    .into_iter()
                    .map(|(filter, qos)| (filter, SubscriptionOptions::qos(Qos::from_codec(qos))))
                    .collect(),
            }
        }
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => {
            check_filters(topic_filters.iter(), topic_filters.is_empty())?;
            Packet::Unsubscribe(packet_id, topic_filters)
        }
        v3::Packet::PingRequest => Packet::PingReq,
        v3::Packet::Disconnect => Packet::Disconnect(0, None),
        other => {
            return Err(ProtocolViolation::Protocol(format!(
                "a client may not send packet type {}",
                other.packet_type() >> 4
            )));
        }
    })
}

fn properties_from_v5(props: v5::PublishProperties) -> MessageProperties {
    MessageProperties {
        utf8_payload: props.is_utf8_payload,
        message_expiry: props.message_expiry_interval.map(NonZeroU32::get),
        content_type: props.content_type,
        response_topic: props.response_topic,
        correlation_data: props.correlation_data,
        user_properties: props.user_properties,
    }
}

fn check_properties(props: &MessageProperties, payload: &Bytes) -> Result<(), ProtocolViolation> {
    if let Some(topic) = &props.response_topic {
        check_topic_name(topic)?;
    }
    for (key, value) in &props.user_properties {
        check_string(key, "user property")?;
        check_string(value, "user property")?;
    }
    if props.utf8_payload && std::str::from_utf8(payload).is_err() {
        return Err(ProtocolViolation::PayloadFormat(
            "the payload format indicator says utf-8 and the payload is not [MQTT-3.3.2-4]".into(),
        ));
    }
    Ok(())
}

fn from_v5(packet: v5::Packet) -> Result<Packet, ProtocolViolation> {
    Ok(match packet {
        v5::Packet::Connect(connect) => {
            let connect = *connect;
            check_string(&connect.client_id, "client id")?;
            let will = match connect.last_will {
                Some(will) => {
                    check_topic_name(&will.topic)?;
                    let properties = MessageProperties {
                        utf8_payload: will.is_utf8_payload.unwrap_or(false),
                        message_expiry: will.message_expiry_interval.map(NonZeroU32::get),
                        content_type: will.content_type,
                        response_topic: will.response_topic,
                        correlation_data: will.correlation_data,
                        user_properties: will.user_properties,
                    };
                    check_properties(&properties, &will.message)?;
                    Some(Will {
                        topic: will.topic,
                        payload: will.message,
                        qos: Qos::from_codec(will.qos),
                        retain: will.retain,
                        delay: will.will_delay_interval_sec.unwrap_or(0),
                        properties,
                    })
                }
                None => None,
            };
            if connect.auth_method.is_some() {
                return Err(ProtocolViolation::Protocol(
                    "enhanced authentication is not supported".into(),
                ));
            }
            Packet::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: connect.client_id,
                clean_start: connect.clean_start,
                keep_alive: connect.keep_alive,
                session_expiry: connect.session_expiry_interval_secs,
                receive_max: connect.receive_max.map_or(u16::MAX, NonZeroU16::get),
                max_packet_size: connect.max_packet_size.map(NonZeroU32::get),
                topic_alias_max: connect.topic_alias_max,
                will,
                username: connect.username,
                password: connect.password,
                request_problem_info: connect.request_problem_info,
            }))
        }
        v5::Packet::Publish(publish) => {
            let publish = *publish;
            let properties = publish.properties.unwrap_or_default();
            let topic_alias = properties.topic_alias;
            if !publish.topic.is_empty() || topic_alias.is_none() {
                check_topic_name(&publish.topic)?;
            }
            if !properties.subscription_ids.is_empty() {
                return Err(ProtocolViolation::Protocol(
                    "a client may not send subscription identifiers [MQTT-3.3.4-6]".into(),
                ));
            }
            let properties = properties_from_v5(properties);
            check_properties(&properties, &publish.payload)?;
            Packet::Publish(Box::new(Publish {
                topic: publish.topic,
                payload: publish.payload,
                qos: Qos::from_codec(publish.qos),
                retain: publish.retain,
                dup: publish.dup,
                packet_id: publish.packet_id,
                topic_alias,
                subscription_ids: Vec::new(),
                properties,
            }))
        }
        v5::Packet::PublishAck(ack) => Packet::PubAck(ack.packet_id, u8::from(ack.reason_code)),
        v5::Packet::PublishReceived(ack) => {
            Packet::PubRec(ack.packet_id, u8::from(ack.reason_code))
        }
        v5::Packet::PublishRelease(ack) => Packet::PubRel(ack.packet_id, u8::from(ack.reason_code)),
        v5::Packet::PublishComplete(ack) => {
            Packet::PubComp(ack.packet_id, u8::from(ack.reason_code))
        }
        v5::Packet::Subscribe(subscribe) => {
            check_filters(
                subscribe.topic_filters.iter().map(|(f, _)| f),
                subscribe.topic_filters.is_empty(),
            )?;
            Packet::Subscribe {
                packet_id: subscribe.packet_id,
                subscription_id: subscribe.id,
                filters: subscribe
                    .topic_filters
                    .into_iter()
                    .map(|(filter, options)| {
                        (
                            filter,
                            SubscriptionOptions {
                                qos: Qos::from_codec(options.qos),
                                no_local: options.no_local,
                                retain_as_published: options.retain_as_published,
                                retain_handling: u8::from(options.retain_handling),
                            },
                        )
                    })
                    .collect(),
            }
        }
        v5::Packet::Unsubscribe(unsubscribe) => {
            check_filters(
                unsubscribe.topic_filters.iter(),
                unsubscribe.topic_filters.is_empty(),
            )?;
            Packet::Unsubscribe(unsubscribe.packet_id, unsubscribe.topic_filters)
        }
        v5::Packet::PingRequest => Packet::PingReq,
        v5::Packet::Disconnect(disconnect) => Packet::Disconnect(
            u8::from(disconnect.reason_code),
            disconnect.session_expiry_interval_secs,
        ),
        v5::Packet::Auth(_) => Packet::Auth,
        other => {
            return Err(ProtocolViolation::Protocol(format!(
                "a client may not send packet type {}",
                other.packet_type() >> 4
            )));
        }
    })
}

fn v3_return_code(reason: u8) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as R;
    match reason {
        reason::SUCCESS => R::ConnectionAccepted,
        reason::UNSUPPORTED_PROTOCOL_VERSION => R::UnacceptableProtocolVersion,
        reason::CLIENT_ID_NOT_VALID => R::IdentifierRejected,
        reason::BAD_CREDENTIALS => R::BadUserNameOrPassword,
        reason::NOT_AUTHORIZED => R::NotAuthorized,
        _ => R::ServiceUnavailable,
    }
}

fn to_v3(packet: Packet, version: Version) -> Option<v3::Packet> {
    Some(match packet {
        Packet::ConnAck(ack) => v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: v3_return_code(ack.reason),
            // MQTT 3.1 has no session present flag.
            session_present: ack.session_present && version == Version::V311,
        }),
        Packet::Publish(publish) => v3::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
            dup: publish.dup,
            retain: publish.retain,
            qos: publish.qos.to_codec(),
            topic: publish.topic,
            packet_id: publish.packet_id,
            payload: publish.payload,
            properties: None,
        })),
        Packet::PubAck(id, _) => v3::Packet::PublishAck { packet_id: id },
        Packet::PubRec(id, _) => v3::Packet::PublishReceived { packet_id: id },
        Packet::PubRel(id, _) => v3::Packet::PublishRelease { packet_id: id },
        Packet::PubComp(id, _) => v3::Packet::PublishComplete { packet_id: id },
        Packet::SubAck(id, codes) => v3::Packet::SubscribeAck {
            packet_id: id,
            status: codes
                .into_iter()
                .map(|code| match Qos::from_u8(code) {
                    Some(qos) => v3::SubscribeReturnCode::Success(qos.to_codec()),
                    None => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Packet::UnsubAck(id, _) => v3::Packet::UnsubscribeAck { packet_id: id },
        Packet::PingResp => v3::Packet::PingResponse,
        // v3 has no server DISCONNECT: the connection is just closed.
        _ => return None,
    })
}

fn properties_to_v5(
    props: MessageProperties,
    topic_alias: Option<NonZeroU16>,
    subscription_ids: Vec<NonZeroU32>,
) -> v5::PublishProperties {
    v5::PublishProperties {
        topic_alias,
        correlation_data: props.correlation_data,
        message_expiry_interval: props.message_expiry.and_then(NonZeroU32::new),
        content_type: props.content_type,
        user_properties: props.user_properties,
        is_utf8_payload: props.utf8_payload,
        response_topic: props.response_topic,
        subscription_ids,
    }
}

fn to_v5(packet: Packet) -> v5::Packet {
    use rmqtt_codec::v5::{PublishAck, PublishAck2};
    let ack = |packet_id, code: u8| PublishAck {
        packet_id,
        reason_code: code
            .try_into()
            .unwrap_or(v5::PublishAckReason::UnspecifiedError),
        ..PublishAck::default()
    };
    let ack2 = |packet_id, code: u8| PublishAck2 {
        packet_id,
        reason_code: code
            .try_into()
            .unwrap_or(v5::PublishAck2Reason::PacketIdNotFound),
        ..PublishAck2::default()
    };
    match packet {
        Packet::ConnAck(ack) => v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
            session_present: ack.session_present,
            reason_code: ack
                .reason
                .try_into()
                .unwrap_or(v5::ConnectAckReason::UnspecifiedError),
            session_expiry_interval_secs: ack.session_expiry,
            receive_max: NonZeroU16::new(ack.receive_max).unwrap_or(NonZeroU16::MAX),
            max_qos: ack.max_qos.unwrap_or(Qos::ExactlyOnce).to_codec(),
            max_packet_size: ack.max_packet_size,
            assigned_client_id: ack.assigned_client_id,
            topic_alias_max: ack.topic_alias_max,
            retain_available: ack.retain_available,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keepalive_sec: ack.server_keep_alive,
            reason_string: ack.reason_string,
            ..v5::ConnectAck::default()
        })),
        Packet::Publish(publish) => {
            let publish = *publish;
            v5::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: publish.dup,
                retain: publish.retain,
                qos: publish.qos.to_codec(),
                topic: publish.topic,
                packet_id: publish.packet_id,
                payload: publish.payload,
                properties: Some(properties_to_v5(
                    publish.properties,
                    publish.topic_alias,
                    publish.subscription_ids,
                )),
            }))
        }
        Packet::PubAck(id, code) => v5::Packet::PublishAck(ack(id, code)),
        Packet::PubRec(id, code) => v5::Packet::PublishReceived(ack(id, code)),
        Packet::PubRel(id, code) => v5::Packet::PublishRelease(ack2(id, code)),
        Packet::PubComp(id, code) => v5::Packet::PublishComplete(ack2(id, code)),
        Packet::SubAck(id, codes) => v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id: id,
            properties: Vec::new(),
            reason_string: None,
            status: codes
                .into_iter()
                .map(|c| {
                    c.try_into()
                        .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                })
                .collect(),
        }),
        Packet::UnsubAck(id, codes) => v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: id,
            properties: Vec::new(),
            reason_string: None,
            status: codes
                .into_iter()
                .map(|c| {
                    c.try_into()
                        .unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                })
                .collect(),
        }),
        Packet::PingResp => v5::Packet::PingResponse,
        Packet::Disconnect(code, _) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: code
                .try_into()
                .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
            ..v5::Disconnect::default()
        }),
        // Only a client sends these; a server never does.
        Packet::Connect(_) | Packet::Subscribe { .. } | Packet::Unsubscribe(..) => {
            v5::Packet::PingResponse
        }
        Packet::PingReq | Packet::Auth => v5::Packet::PingResponse,
    }
}

/// Encodes an application message as a versioned record for the store: a format byte,
/// then the message as an MQTT v5 PUBLISH (the codec already knows how to carry every
/// property, so the store needs no second format).
pub fn encode_record(publish: &Publish) -> Vec<u8> {
    let mut codec = v5::Codec::new(0, 0);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[RECORD_FORMAT]);
    let mut copy = publish.clone();
    copy.dup = false;
    copy.topic_alias = None;
    // The packet id is the sender's; the store keeps its own.
    copy.packet_id = (copy.qos != Qos::AtMostOnce).then_some(NonZeroU16::MIN);
    codec
        .encode(to_v5(Packet::Publish(Box::new(copy))), &mut buf)
        .expect("a message the broker accepted encodes");
    buf.to_vec()
}

/// Decodes a record written by [`encode_record`].
pub fn decode_record(record: &[u8]) -> Option<Publish> {
    let (&format, rest) = record.split_first()?;
    if format != RECORD_FORMAT {
        return None;
    }
    let mut codec = v5::Codec::new(0, 0);
    let mut buf = BytesMut::from(rest);
    match codec.decode(&mut buf).ok()?? {
        (v5::Packet::Publish(publish), _) => {
            let publish = *publish;
            let properties = publish.properties.unwrap_or_default();
            Some(Publish {
                topic: publish.topic,
                payload: publish.payload,
                qos: Qos::from_codec(publish.qos),
                retain: publish.retain,
                dup: false,
                packet_id: None,
                topic_alias: None,
                subscription_ids: properties.subscription_ids.clone(),
                properties: properties_from_v5(properties),
            })
        }
        _ => None,
    }
}

/// Version of the stored message format.
const RECORD_FORMAT: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Packet>, ProtocolViolation> {
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(packet) = codec.decode(&mut buf)? {
            out.push(packet);
        }
        Ok(out)
    }

    /// A v3.1.1 CONNECT followed by `packet`.
    fn after_connect(packet: &[u8]) -> Vec<u8> {
        [CONNECT_311, packet].concat()
    }

    const CONNECT_311: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ab";
    const CONNECT_31: &[u8] = b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02ab";
    const CONNECT_5: &[u8] = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02ab";

    #[test]
    fn detects_each_version() {
        for (bytes, version) in [
            (CONNECT_31, Version::V31),
            (CONNECT_311, Version::V311),
            (CONNECT_5, Version::V5),
        ] {
            match &decode_all(bytes).unwrap()[..] {
                [Packet::Connect(connect)] => {
                    assert_eq!(connect.version, version);
                    assert_eq!(&*connect.client_id, "ab");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn mqtt_2_2_2_2_reserved_flags_are_malformed() {
        // PUBACK with flags 0b0010.
        let bytes = after_connect(b"\x42\x02\x00\x01");
        assert!(matches!(
            decode_all(&bytes),
            Err(ProtocolViolation::Malformed(_))
        ));
        // SUBSCRIBE without its required 0b0010.
        let bytes = after_connect(b"\x80\x06\x00\x01\x00\x01a\x00");
        assert!(matches!(
            decode_all(&bytes),
            Err(ProtocolViolation::Malformed(_))
        ));
    }

    #[test]
    fn mqtt_3_3_1_4_publish_qos_3_is_malformed() {
        let bytes = after_connect(b"\x36\x05\x00\x01a\x00\x01");
        assert_eq!(
            decode_all(&bytes).unwrap_err().reason_code(),
            reason::MALFORMED
        );
    }

    #[test]
    fn mqtt_3_1_0_1_first_packet_must_be_connect() {
        assert_eq!(
            decode_all(b"\xc0\x00").unwrap_err().reason_code(),
            reason::PROTOCOL_ERROR
        );
        let mut twice = CONNECT_311.to_vec();
        twice.extend_from_slice(CONNECT_311);
        assert!(matches!(
            decode_all(&twice),
            Err(ProtocolViolation::Protocol(_))
        ));
    }

    #[test]
    fn mqtt_1_5_4_2_nul_in_a_topic_is_malformed() {
        let bytes = after_connect(b"\x30\x05\x00\x03a\x00b");
        assert!(matches!(
            decode_all(&bytes),
            Err(ProtocolViolation::Malformed(_))
        ));
    }

    #[test]
    fn mqtt_3_3_2_2_wildcards_in_a_topic_name_are_refused() {
        let bytes = after_connect(b"\x30\x03\x00\x01#");
        assert_eq!(
            decode_all(&bytes).unwrap_err().reason_code(),
            reason::TOPIC_NAME_INVALID
        );
    }

    #[test]
    fn oversized_packets_and_long_lengths_are_refused() {
        let bytes = after_connect(b"\x30\xff\x7f");
        assert!(matches!(
            decode_all(&bytes),
            Err(ProtocolViolation::TooLarge { .. })
        ));
        let bytes = after_connect(b"\x30\xff\xff\xff\xff\x01");
        assert!(matches!(
            decode_all(&bytes),
            Err(ProtocolViolation::Malformed(_))
        ));
    }

    #[test]
    fn unsupported_versions_and_names() {
        assert_eq!(
            decode_all(b"\x10\x0e\x00\x04MQTT\x06\x02\x00\x3c\x00\x02ab").unwrap_err(),
            ProtocolViolation::UnsupportedVersion
        );
        assert!(matches!(
            decode_all(b"\x10\x0e\x00\x04HTTP\x04\x02\x00\x3c\x00\x02ab"),
            Err(ProtocolViolation::Malformed(_))
        ));
    }

    /// What the codec answers to a CONNECT it refuses: `(violation, CONNACK bytes)`.
    fn refusal(connect: &[u8]) -> (ProtocolViolation, Option<Vec<u8>>) {
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::from(connect);
        let violation = codec.decode(&mut buf).expect_err("refused");
        let reply = codec.connect_refusal(&violation).map(|b| b.to_vec());
        (violation, reply)
    }

    #[test]
    fn refused_connects_get_the_connack_their_version_defines() {
        // mqtt_3_1_2_2: an unsupported level gets return code 0x01, then the close.
        assert_eq!(
            refusal(b"\x10\x0e\x00\x04MQTT\x06\x02\x00\x3c\x00\x02ab"),
            (
                ProtocolViolation::UnsupportedVersion,
                Some(vec![0x20, 0x02, 0x00, 0x01])
            )
        );
        // mqtt311_3_1_3_8: an empty client id without clean session: 0x02 (v5 has no
        // such rule, below).
        assert_eq!(
            refusal(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00"),
            (
                ProtocolViolation::ClientIdRejected,
                Some(vec![0x20, 0x02, 0x00, 0x02])
            )
        );
        // v5 lets a server assign an id whatever clean start says [MQTT-3.1.3-6];
        // the crate refuses that, the codec lets it through with the flag as sent.
        match &decode_all(b"\x10\x0d\x00\x04MQTT\x05\x00\x00\x3c\x00\x00\x00").unwrap()[..] {
            [Packet::Connect(connect)] => {
                assert!(connect.client_id.is_empty());
                assert!(!connect.clean_start);
            }
            other => panic!("{other:?}"),
        }
        // A malformed CONNECT is closed without a word.
        let (_, reply) = refusal(b"\x10\x0e\x00\x04HTTP\x04\x02\x00\x3c\x00\x02ab");
        assert_eq!(reply, None);
    }

    #[test]
    fn alias_0_reserved_subscribe_bits_and_a_false_utf8_claim() {
        // v5 PUBLISH "a", QoS 0, properties: topic alias (0x23) 0 is malformed, as
        // Mosquitto has it (the specification names no code for it).
        let alias_zero = [CONNECT_5, b"\x30\x07\x00\x01a\x03\x23\x00\x00"].concat();
        let violation = decode_all(&alias_zero).unwrap_err();
        assert_eq!(violation.reason_code(), reason::MALFORMED, "{violation}");
        // v3.1.1 SUBSCRIBE "a" asking for 0x05: reserved bits, malformed.
        let reserved = after_connect(b"\x82\x06\x00\x01\x00\x01a\x05");
        assert!(matches!(
            decode_all(&reserved),
            Err(ProtocolViolation::Malformed(_))
        ));
        let fine = after_connect(b"\x82\x06\x00\x01\x00\x01a\x01");
        assert_eq!(decode_all(&fine).unwrap().len(), 2);
        // Alias 1 is fine.
        let alias_one = [CONNECT_5, b"\x30\x07\x00\x01a\x03\x23\x00\x01"].concat();
        assert_eq!(decode_all(&alias_one).unwrap().len(), 2);
        // Payload format indicator (0x01) 1 with a payload that is not UTF-8.
        let not_utf8 = [CONNECT_5, b"\x30\x08\x00\x01a\x02\x01\x01\xc3\x28"].concat();
        let violation = decode_all(&not_utf8).unwrap_err();
        assert_eq!(
            violation.reason_code(),
            reason::PAYLOAD_FORMAT_INVALID,
            "{violation}"
        );
    }

    #[test]
    fn a_tiny_client_maximum_packet_size_refuses_what_does_not_fit_without_panicking() {
        // Found by fuzzing: rmqtt-codec 0.3 underflowed sizing acks under 12 bytes.
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::from(CONNECT_5);
        codec.decode(&mut buf).unwrap().expect("connect");
        let id = NonZeroU16::new(1).unwrap();
        let mut out = BytesMut::new();
        codec.set_max_outgoing(Some(11));
        codec
            .encode(Packet::PubAck(id, 0), &mut out)
            .expect("a puback fits");
        assert_eq!(out[0], 0x40);
        let sent = out.len();
        codec.set_max_outgoing(Some(1));
        assert!(codec.encode(Packet::PubAck(id, 0), &mut out).is_err());
        assert_eq!(out.len(), sent, "nothing of the refused packet is left");
    }

    #[test]
    fn a_connect_too_short_for_its_protocol_name_is_malformed_at_once() {
        // Found by fuzzing: a whole 4-byte CONNECT whose name length says 16 used to
        // wait for more bytes until the CONNECT timeout.
        assert!(matches!(
            decode_all(b"\x10\x02\x00\x10"),
            Err(ProtocolViolation::Malformed(_))
        ));
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::new();
        for &byte in CONNECT_5 {
            buf.extend_from_slice(&[byte]);
            if let Some(packet) = codec.decode(&mut buf).unwrap() {
                assert!(matches!(packet, Packet::Connect(_)));
                assert!(buf.is_empty());
                return;
            }
        }
        panic!("never decoded");
    }

    #[test]
    fn records_round_trip_with_properties() {
        let publish = Publish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            qos: Qos::ExactlyOnce,
            retain: true,
            dup: true,
            packet_id: NonZeroU16::new(7),
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: MessageProperties {
                utf8_payload: true,
                message_expiry: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![("k".into(), "v".into())],
            },
        };
        let back = decode_record(&encode_record(&publish)).unwrap();
        assert_eq!(back.topic, publish.topic);
        assert_eq!(back.payload, publish.payload);
        assert_eq!(back.qos, publish.qos);
        assert!(back.retain);
        assert_eq!(back.properties, publish.properties);
        assert_eq!(decode_record(b"\x09junk"), None);
    }
}
