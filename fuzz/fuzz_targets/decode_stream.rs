//! Feeds one connection's bytes to the broker's codec the way the connection loop
//! does: bytes arrive in chunks, and after each chunk the codec decodes packets until
//! it asks for more or reports a violation.
//!
//! Input layout:
//! - byte 0 picks the codec's maximum packet size (see `max_packet_size`);
//! - byte 1 picks how the rest is cut into chunks (0: all at once, n: pseudo-random
//!   chunks of 1..=n bytes);
//! - the rest is the byte stream from the client.
//!
//! Checked for every decoded packet: decoding consumed bytes, a CONNECT fixes the
//! codec's version, the packet goes through `Codec::encode` without a panic, and a
//! packet both directions share (PUBLISH, the four acks, v5 DISCONNECT) decodes back
//! from its encoding to an equal packet.

#![no_main]

use bytes::BytesMut;
use headwater::broker::codec::{Codec, Packet, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [size_byte, chunk_byte, stream @ ..] = data else {
        return;
    };
    let mut codec = Codec::new(max_packet_size(*size_byte));
    let mut buf = BytesMut::new();
    let mut chunks = Chunks::new(*chunk_byte, stream);
    while let Some(chunk) = chunks.next() {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a packet decoded from no bytes");
                    check_packet(&mut codec, packet);
                }
                Ok(None) => break,
                // The connection closes here; nothing after a violation is read.
                Err(_) => return,
            }
        }
    }
});

/// 0x00..=0x3f: tiny limits (2..=254 bytes) to reach the size checks; 0x40..=0x7f:
/// 256 B << 0..=15; 0x80..=0xff: the broker's default of 1 MiB.
fn max_packet_size(byte: u8) -> u32 {
    match byte {
        0x00..=0x3f => 2 + u32::from(byte) * 4,
        0x40..=0x7f => 256 << (byte & 0x0f),
        _ => 1 << 20,
    }
}

/// Cuts the stream into chunks whose sizes come from a small xorshift generator
/// seeded by the chunk byte, so the same input always cuts the same way.
struct Chunks<'a> {
    rest: &'a [u8],
    limit: u8,
    state: u32,
}

impl<'a> Chunks<'a> {
    fn new(limit: u8, rest: &'a [u8]) -> Self {
        Chunks {
            rest,
            limit,
            state: 0x9e37_79b9 ^ u32::from(limit),
        }
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = if self.limit == 0 {
            self.rest.len()
        } else {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 17;
            self.state ^= self.state << 5;
            1 + (self.state % u32::from(self.limit)) as usize
        };
        let (chunk, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }
}

fn check_packet(codec: &mut Codec, packet: Packet) {
    if let Packet::Connect(connect) = &packet {
        assert_eq!(codec.version(), Some(connect.version));
        // What the connection does right after CONNECT. A limit under 12 bytes used
        // to underflow inside rmqtt-codec (docs/fuzzing.md); the codec now checks the
        // limit itself, and seed-crash-v5-ack-max-packet-size-1 keeps it honest.
        codec.set_max_outgoing(connect.max_packet_size);
    }
    let version = codec.version().expect("a packet decoded before connect");
    let mut out = BytesMut::new();
    if codec.encode(packet.clone(), &mut out).is_err() {
        return;
    }
    let comparable = match &packet {
        Packet::Publish(_)
        | Packet::PubAck(..)
        | Packet::PubRec(..)
        | Packet::PubRel(..)
        | Packet::PubComp(..) => true,
        // v3 has no server DISCONNECT; the v5 one carries only the reason code.
        Packet::Disconnect(..) => version == Version::V5,
        // CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and AUTH only travel client to
        // server, so the server's encoder has no form for them.
        _ => false,
    };
    if !comparable {
        return;
    }
    let mut reader = connected(version);
    let back = match reader.decode(&mut out) {
        Ok(Some(back)) => back,
        other => panic!("{packet:?} encoded as {out:02x?}, which decodes as {other:?}"),
    };
    assert!(out.is_empty(), "bytes left after the re-encoded packet");
    match (&packet, &back) {
        (Packet::Disconnect(code, _), Packet::Disconnect(back_code, _)) => {
            assert_eq!(code, back_code)
        }
        _ => assert_eq!(packet, back),
    }
}

/// A fresh codec that has seen a minimal CONNECT of `version` (client id "m").
fn connected(version: Version) -> Codec {
    let connect: &[u8] = match version {
        Version::V31 => b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x00\x00\x01m",
        Version::V311 => b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01m",
        Version::V5 => b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x01m",
    };
    let mut codec = Codec::new(u32::MAX);
    let mut buf = BytesMut::from(connect);
    match codec.decode(&mut buf) {
        Ok(Some(Packet::Connect(_))) => codec,
        other => panic!("the reference connect does not decode: {other:?}"),
    }
}
