//! A scripted MQTT client over a plain TCP socket, for tests that must send exactly the
//! bytes they mean (a wildcard in a topic name, topic alias 0, an invalid filter) and
//! see every packet the broker answers with, flags and reason codes included.
//!
//! It writes packets it builds itself and reads whole packets back; QoS 1/2 deliveries
//! are acknowledged as they arrive. What a connection saw is kept as normalised text
//! lines (`Conn::log`) that two brokers' runs can be compared on: packet ids, which a
//! broker picks freely, never appear in them.
//!
//! Every read is bounded by PATIENCE: a broker that stays silent fails the test.

#![allow(dead_code)]

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;

use crate::common::PATIENCE;

// Packet types (high nibble of the first byte).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const DISCONNECT: u8 = 14;

/// v5 property identifiers used here.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
}

/// Subscription options byte (v5 3.8.3.1; v3.1.1 uses only the QoS bits).
pub fn options(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(retain_as_published) << 3) | (retain_handling << 4)
}

fn var_int(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// v5 properties, built one by one.
#[derive(Default, Clone)]
pub struct Props(Vec<u8>);

impl Props {
    pub fn new() -> Props {
        Props::default()
    }
    pub fn u32(mut self, id: u8, value: u32) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn u16(mut self, id: u8, value: u16) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn u8(mut self, id: u8, value: u8) -> Props {
        self.0.push(id);
        self.0.push(value);
        self
    }
    /// A UTF-8 string or binary data property.
    pub fn str(mut self, id: u8, value: &str) -> Props {
        self.0.push(id);
        string(value, &mut self.0);
        self
    }
    /// A user property.
    pub fn pair(mut self, key: &str, value: &str) -> Props {
        self.0.push(prop::USER_PROPERTY);
        string(key, &mut self.0);
        string(value, &mut self.0);
        self
    }
    pub fn var(mut self, id: u8, value: usize) -> Props {
        self.0.push(id);
        var_int(value, &mut self.0);
        self
    }
    fn encode(&self, out: &mut Vec<u8>) {
        var_int(self.0.len(), out);
        out.extend_from_slice(&self.0);
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    var_int(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Properties of a received PUBLISH that the comparisons look at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PublishProps {
    pub message_expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_ids: Vec<usize>,
    pub payload_format: Option<u8>,
    /// Content type, response topic, correlation data and user properties, in the
    /// order received, as `name=value`.
    pub forwarded: Vec<String>,
}

/// A received PUBLISH.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub props: PublishProps,
}

impl Message {
    /// `topic payload qN`: what most assertions compare.
    pub fn brief(&self) -> String {
        format!("{} {} q{}", self.topic, self.payload, self.qos)
    }

    /// `PUBLISH topic "payload" q1 retain dup`, plus the v5 properties that matter.
    pub fn line(&self) -> String {
        let mut line = format!(
            "PUBLISH {} {:?} q{}{}{}",
            self.topic,
            self.payload,
            self.qos,
            if self.retain { " retain" } else { "" },
            if self.dup { " dup" } else { "" },
        );
        if let Some(alias) = self.props.topic_alias {
            line += &format!(" alias={alias}");
        }
        if !self.props.subscription_ids.is_empty() {
            line += &format!(" sub_ids={:?}", self.props.subscription_ids);
        }
        if let Some(format) = self.props.payload_format {
            line += &format!(" format={format}");
        }
        // A broker may write properties in any order, but must keep the order of the
        // user properties [MQTT-3.3.2-18]: sort by kind only (a stable sort).
        let mut forwarded: Vec<&String> = self.props.forwarded.iter().collect();
        forwarded.sort_by_key(|p| p.split(['=', '[']).next().unwrap_or(""));
        for property in forwarded {
            line += &format!(" {property}");
        }
        // The remaining expiry depends on when the broker sends it: the log says only
        // that it is there; scenarios check its value against what was published.
        if self.props.message_expiry.is_some() {
            line += " expiry";
        }
        line
    }
}

/// One packet from the broker, decoded as far as the tests need.
#[derive(Clone, Debug)]
pub enum Packet {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        packet_id: Option<u16>,
        message: Message,
    },
    /// PUBACK, PUBREC, PUBREL, PUBCOMP: type, packet id, reason (0 when omitted).
    Ack {
        kind: u8,
        packet_id: u16,
        code: u8,
    },
    SubAck {
        codes: Vec<u8>,
    },
    UnsubAck {
        codes: Vec<u8>,
    },
    Disconnect {
        code: u8,
    },
    Other(u8),
}

/// A connection: the socket, the protocol level (4 = 3.1.1, 5), what it saw.
pub struct Conn {
    pub name: String,
    stream: TcpStream,
    pub version: u8,
    next_id: u16,
    /// Deliveries that arrived while the script waited for something else.
    pending: VecDeque<Message>,
    /// Normalised observations, in the order the script made them.
    pub log: Vec<String>,
}

/// How a connection starts.
pub struct Connect<'a> {
    pub version: u8,
    pub client_id: &'a str,
    pub clean: bool,
    pub props: Props,
}

impl<'a> Connect<'a> {
    pub fn v3(client_id: &'a str) -> Connect<'a> {
        Connect {
            version: 4,
            client_id,
            clean: true,
            props: Props::new(),
        }
    }
    pub fn v5(client_id: &'a str) -> Connect<'a> {
        Connect {
            version: 5,
            client_id,
            clean: true,
            props: Props::new(),
        }
    }
    pub fn version(version: u8, client_id: &'a str) -> Connect<'a> {
        if version == 5 {
            Connect::v5(client_id)
        } else {
            Connect::v3(client_id)
        }
    }
    pub fn clean(mut self, clean: bool) -> Connect<'a> {
        self.clean = clean;
        self
    }
    pub fn props(mut self, props: Props) -> Connect<'a> {
        self.props = props;
        self
    }
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        string("MQTT", &mut body);
        body.push(self.version);
        body.push(if self.clean { 0x02 } else { 0x00 });
        body.extend_from_slice(&60u16.to_be_bytes());
        if self.version == 5 {
            self.props.encode(&mut body);
        }
        string(self.client_id, &mut body);
        packet(CONNECT << 4, &body)
    }
}

impl Conn {
    /// Connects, sends CONNECT and logs the CONNACK.
    pub fn open(port: u16, name: &str, connect: Connect) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = Conn {
            name: name.to_string(),
            stream,
            version: connect.version,
            next_id: 1,
            pending: VecDeque::new(),
            log: Vec::new(),
        };
        conn.send(&connect.encode());
        match conn.read() {
            Some(Packet::ConnAck {
                session_present,
                code,
            }) => conn.note(format!(
                "CONNACK session_present={} code={code:#04x}",
                u8::from(session_present)
            )),
            // Refused without a CONNACK: the scenario sees it in the log.
            None => conn.note("closed without CONNACK".to_string()),
            other => panic!("{name}: expected CONNACK, got {other:?}"),
        }
        conn
    }

    pub fn note(&mut self, line: String) {
        let line = format!("{}: {line}", self.name);
        // Shown with a failing test: how far the scenario got.
        eprintln!("  {line}");
        self.log.push(line);
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // A write to a connection the broker already closed is the broker's answer,
        // which the following read reports.
        let _ = self.stream.write_all(bytes);
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> bool {
        match self.stream.read_exact(buf) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("{}: read failed (nothing within PATIENCE?): {e}", self.name),
        }
    }

    /// The next packet, or None when the broker closed the connection.
    pub fn read(&mut self) -> Option<Packet> {
        let mut first = [0u8];
        if !self.read_exact_or_eof(&mut first) {
            return None;
        }
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let mut byte = [0u8];
            if !self.read_exact_or_eof(&mut byte) {
                return None;
            }
            len |= usize::from(byte[0] & 0x7f) << shift;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if !self.read_exact_or_eof(&mut body) {
            return None;
        }
        Some(self.decode(first[0], &body))
    }

    fn decode(&self, first: u8, body: &[u8]) -> Packet {
        let v5 = self.version == 5;
        let u16_at = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
        match first >> 4 {
            CONNACK => Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            },
            PUBLISH => {
                let qos = (first >> 1) & 3;
                let topic_len = usize::from(u16_at(0));
                let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                let mut at = 2 + topic_len;
                let packet_id = if qos > 0 {
                    at += 2;
                    Some(u16_at(at - 2))
                } else {
                    None
                };
                let mut props = PublishProps::default();
                if v5 {
                    let (len, used) = read_var(&body[at..]);
                    at += used;
                    props = publish_props(&body[at..at + len]);
                    at += len;
                }
                Packet::Publish {
                    packet_id,
                    message: Message {
                        topic,
                        payload: String::from_utf8_lossy(&body[at..]).into_owned(),
                        qos,
                        retain: first & 1 == 1,
                        dup: first & 8 == 8,
                        props,
                    },
                }
            }
            kind @ (PUBACK | PUBREC | PUBREL | PUBCOMP) => Packet::Ack {
                kind,
                packet_id: u16_at(0),
                code: body.get(2).copied().unwrap_or(0),
            },
            SUBACK => {
                let mut at = 2;
                if v5 {
                    let (len, used) = read_var(&body[at..]);
                    at += used + len;
                }
                Packet::SubAck {
                    codes: body[at..].to_vec(),
                }
            }
            UNSUBACK => {
                let mut at = 2;
                if v5 {
                    let (len, used) = read_var(&body[at..]);
                    at += used + len;
                }
                Packet::UnsubAck {
                    codes: body[at..].to_vec(),
                }
            }
            DISCONNECT => Packet::Disconnect {
                code: body.first().copied().unwrap_or(0),
            },
            other => Packet::Other(other),
        }
    }

    /// Reads one packet, answering a delivery (PUBACK; PUBREC, then PUBCOMP on PUBREL)
    /// and keeping it in `pending`. Returns the packet when it is not a delivery, and
    /// None when the broker closed the connection.
    fn pump_one(&mut self) -> Option<Option<Packet>> {
        match self.read()? {
            Packet::Publish { packet_id, message } => {
                match (message.qos, packet_id) {
                    (1, Some(id)) => self.send(&ack(PUBACK, id)),
                    (2, Some(id)) => self.send(&ack(PUBREC, id)),
                    _ => {}
                }
                self.pending.push_back(message);
                Some(None)
            }
            Packet::Ack {
                kind: PUBREL,
                packet_id,
                ..
            } => {
                self.send(&ack(PUBCOMP, packet_id));
                Some(None)
            }
            other => Some(Some(other)),
        }
    }

    /// The next packet that is not a delivery (deliveries go to `pending`), or None
    /// when the broker closed the connection.
    fn pump(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self.pump_one()? {
                return Some(packet);
            }
        }
    }

    /// Waits for the next packet that is not a delivery; panics if the connection ends.
    fn expect(&mut self, what: &str) -> Packet {
        self.pump()
            .unwrap_or_else(|| panic!("{}: closed while waiting for {what}", self.name))
    }

    /// The bytes of a SUBSCRIBE with (filter, options) pairs (none: a protocol error).
    pub fn subscribe_bytes(&mut self, filters: &[(&str, u8)], props: &Props) -> Vec<u8> {
        let id = self.packet_id();
        let mut body = id.to_be_bytes().to_vec();
        if self.version == 5 {
            props.encode(&mut body);
        }
        for (filter, options) in filters {
            string(filter, &mut body);
            body.push(*options);
        }
        packet((SUBSCRIBE << 4) | 2, &body)
    }

    /// SUBSCRIBE with (filter, options) pairs; logs the SUBACK's codes. Retained
    /// messages the broker sends before its SUBACK (v5 allows that) are logged after it,
    /// with the deliveries, by `until`.
    pub fn subscribe(&mut self, filters: &[(&str, u8)], props: Props) -> Vec<u8> {
        let bytes = self.subscribe_bytes(filters, &props);
        self.send(&bytes);
        match self.expect("SUBACK") {
            Packet::SubAck { codes } => {
                let shown: Vec<String> = codes.iter().map(|c| format!("{c:#04x}")).collect();
                self.note(format!("SUBACK [{}]", shown.join(", ")));
                codes
            }
            other => panic!("{}: expected SUBACK, got {other:?}", self.name),
        }
    }

    /// SUBSCRIBE where the broker may answer with a SUBACK or by closing the
    /// connection (after a DISCONNECT in v5); logs whichever it does.
    pub fn subscribe_or_close(&mut self, filters: &[(&str, u8)]) {
        let bytes = self.subscribe_bytes(filters, &Props::new());
        self.send(&bytes);
        match self.pump() {
            Some(Packet::SubAck { codes }) => {
                let shown: Vec<String> = codes.iter().map(|c| format!("{c:#04x}")).collect();
                self.note(format!("SUBACK [{}]", shown.join(", ")));
            }
            Some(Packet::Disconnect { code }) => {
                self.note(format!("DISCONNECT {code:#04x}"));
                self.until_closed();
            }
            Some(other) => panic!("{}: expected SUBACK, got {other:?}", self.name),
            None => self.note("closed".to_string()),
        }
    }

    /// Logs the broker's answer to something the script sent: the next packet that is
    /// not a delivery, or, when it closes the connection, its DISCONNECT and the close.
    pub fn answer(&mut self) {
        match self.pump() {
            Some(Packet::SubAck { codes }) => {
                let shown: Vec<String> = codes.iter().map(|c| format!("{c:#04x}")).collect();
                self.note(format!("SUBACK [{}]", shown.join(", ")));
            }
            Some(Packet::Disconnect { code }) => {
                self.note(format!("DISCONNECT {code:#04x}"));
                self.until_closed();
            }
            Some(other) => self.note(format!("{other:?}")),
            None => self.note("closed".to_string()),
        }
    }

    /// UNSUBSCRIBE; logs the UNSUBACK (its codes in v5).
    pub fn unsubscribe(&mut self, filters: &[&str]) {
        let id = self.packet_id();
        let mut body = id.to_be_bytes().to_vec();
        if self.version == 5 {
            Props::new().encode(&mut body);
        }
        for filter in filters {
            string(filter, &mut body);
        }
        self.send(&packet((UNSUBSCRIBE << 4) | 2, &body));
        match self.expect("UNSUBACK") {
            Packet::UnsubAck { codes } => {
                let shown: Vec<String> = codes.iter().map(|c| format!("{c:#04x}")).collect();
                self.note(format!("UNSUBACK [{}]", shown.join(", ")));
            }
            other => panic!("{}: expected UNSUBACK, got {other:?}", self.name),
        }
    }

    /// The bytes of a PUBLISH (QoS > 0 takes the next packet id).
    pub fn publish_bytes(
        &mut self,
        topic: &str,
        payload: &str,
        qos: u8,
        retain: bool,
        props: &Props,
    ) -> Vec<u8> {
        let packet_id = if qos > 0 { self.packet_id() } else { 0 };
        self.publish_raw(topic, payload, qos, retain, false, packet_id, props)
    }

    /// The bytes of a PUBLISH with the given DUP flag and packet id (unused at QoS 0).
    #[allow(clippy::too_many_arguments)]
    pub fn publish_raw(
        &self,
        topic: &str,
        payload: &str,
        qos: u8,
        retain: bool,
        dup: bool,
        packet_id: u16,
        props: &Props,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic, &mut body);
        if qos > 0 {
            body.extend_from_slice(&packet_id.to_be_bytes());
        }
        if self.version == 5 {
            props.encode(&mut body);
        }
        body.extend_from_slice(payload.as_bytes());
        let flags = (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
        packet((PUBLISH << 4) | flags, &body)
    }

    /// Publishes and completes the QoS flow, logging the acknowledgement's reason.
    pub fn publish(&mut self, topic: &str, payload: &str, qos: u8, retain: bool, props: Props) {
        let bytes = self.publish_bytes(topic, payload, qos, retain, &props);
        self.send(&bytes);
        if qos == 0 {
            return;
        }
        let want = if qos == 1 { PUBACK } else { PUBREC };
        let (packet_id, code) = match self.expect("PUBACK/PUBREC") {
            Packet::Ack {
                kind,
                packet_id,
                code,
            } if kind == want => (packet_id, code),
            other => panic!("{}: expected ack of {topic}, got {other:?}", self.name),
        };
        // 0x10 "no matching subscribers" is a success the broker MAY report instead of
        // 0x00 (v5 3.4.2.1); Mosquitto does, so both read as success here.
        let code = if code == 0x10 { 0 } else { code };
        let name = if qos == 1 { "PUBACK" } else { "PUBREC" };
        self.note(format!("{name} {topic} code={code:#04x}"));
        if qos == 2 && code < 0x80 {
            self.send(&ack(PUBREL, packet_id));
            match self.expect("PUBCOMP") {
                Packet::Ack {
                    kind: PUBCOMP,
                    code,
                    ..
                } => self.note(format!("PUBCOMP {topic} code={code:#04x}")),
                other => panic!("{}: expected PUBCOMP, got {other:?}", self.name),
            }
        }
    }

    /// Logs every delivery up to and including the one with payload `fence`.
    ///
    /// A fence is published after the messages under test by the same client, so a
    /// broker delivers it after them (ordered topics, 4.6): when it is in, anything
    /// that was going to arrive has.
    pub fn until(&mut self, fence: &str) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            while let Some(message) = self.pending.pop_front() {
                self.note(message.line());
                let done = message.payload == fence;
                seen.push(message);
                if done {
                    return seen;
                }
            }
            match self.pump_one() {
                Some(None) => {}
                Some(Some(other)) => {
                    panic!("{}: waiting for {fence:?}, got {other:?}", self.name)
                }
                None => panic!("{}: closed while waiting for {fence:?}", self.name),
            }
        }
    }

    /// Like `until`, but for a client with overlapping subscriptions, where a broker
    /// may send one copy or one per subscription (v3.1.1 3.3.5, v5 3.3.4): logs each
    /// distinct (topic, payload) once, with the highest QoS and all subscription
    /// identifiers among its copies.
    pub fn until_merged(&mut self, fence: &str) {
        let mut merged: Vec<(String, String, u8, BTreeSet<usize>)> = Vec::new();
        let name = self.name.clone();
        let log_len = self.log.len();
        for message in self.until(fence) {
            match merged
                .iter_mut()
                .find(|(t, p, ..)| *t == message.topic && *p == message.payload)
            {
                Some(entry) => {
                    entry.2 = entry.2.max(message.qos);
                    entry.3.extend(message.props.subscription_ids);
                }
                None => merged.push((
                    message.topic,
                    message.payload,
                    message.qos,
                    message.props.subscription_ids.into_iter().collect(),
                )),
            }
        }
        self.log.truncate(log_len);
        for (topic, payload, qos, ids) in merged {
            self.log.push(format!(
                "{name}: PUBLISH {topic} {payload:?} max q{qos} sub_ids={ids:?}"
            ));
        }
    }

    /// Reads until the broker closes the connection, logging a DISCONNECT's reason and
    /// deliveries on the way.
    pub fn until_closed(&mut self) {
        loop {
            match self.pump() {
                Some(Packet::Disconnect { code }) => self.note(format!("DISCONNECT {code:#04x}")),
                Some(other) => self.note(format!("unexpected {other:?}")),
                None => break,
            }
        }
        while let Some(message) = self.pending.pop_front() {
            self.note(message.line());
        }
        self.note("closed".to_string());
    }

    /// Sends DISCONNECT (v5 with the given session expiry) and waits for the close.
    pub fn disconnect(mut self, session_expiry: Option<u32>) -> Vec<String> {
        let mut body = Vec::new();
        if self.version == 5 {
            body.push(0);
            let mut props = Props::new();
            if let Some(expiry) = session_expiry {
                props = props.u32(prop::SESSION_EXPIRY, expiry);
            }
            props.encode(&mut body);
        }
        self.send(&packet(DISCONNECT << 4, &body));
        // The broker closes the connection on DISCONNECT; reading to the end makes sure
        // it has processed it before the script goes on.
        while self.pump().is_some() {}
        std::mem::take(&mut self.log)
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (packet type 4..=7) for `packet_id`.
pub fn ack(kind: u8, packet_id: u16) -> Vec<u8> {
    let flags = if kind == PUBREL { 2 } else { 0 };
    packet((kind << 4) | flags, &packet_id.to_be_bytes())
}

fn read_var(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("malformed variable byte integer {bytes:02x?}")
}

fn publish_props(mut bytes: &[u8]) -> PublishProps {
    let mut props = PublishProps::default();
    while let Some((&id, rest)) = bytes.split_first() {
        bytes = rest;
        // A length-prefixed string or binary: (its text, the bytes it takes).
        let take_string = |b: &[u8]| {
            let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
            (
                String::from_utf8_lossy(&b[2..2 + len]).into_owned(),
                2 + len,
            )
        };
        match id {
            prop::PAYLOAD_FORMAT => {
                props.payload_format = Some(bytes[0]);
                bytes = &bytes[1..];
            }
            prop::MESSAGE_EXPIRY => {
                props.message_expiry = Some(u32::from_be_bytes(bytes[..4].try_into().unwrap()));
                bytes = &bytes[4..];
            }
            prop::TOPIC_ALIAS => {
                props.topic_alias = Some(u16::from_be_bytes([bytes[0], bytes[1]]));
                bytes = &bytes[2..];
            }
            prop::SUBSCRIPTION_ID => {
                let (value, used) = read_var(bytes);
                props.subscription_ids.push(value);
                bytes = &bytes[used..];
            }
            prop::CONTENT_TYPE | prop::RESPONSE_TOPIC | prop::CORRELATION_DATA => {
                let (text, used) = take_string(bytes);
                let name = match id {
                    prop::CONTENT_TYPE => "content_type",
                    prop::RESPONSE_TOPIC => "response_topic",
                    _ => "correlation_data",
                };
                props.forwarded.push(format!("{name}={text:?}"));
                bytes = &bytes[used..];
            }
            prop::USER_PROPERTY => {
                let (key, used) = take_string(bytes);
                bytes = &bytes[used..];
                let (value, used) = take_string(bytes);
                bytes = &bytes[used..];
                props.forwarded.push(format!("user[{key:?}]={value:?}"));
            }
            other => panic!("unexpected PUBLISH property {other:#04x}"),
        }
    }
    props
}
