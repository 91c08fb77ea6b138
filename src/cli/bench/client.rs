//! One MQTT 3.1.1 connection of the load generator, split into a reader and a writer
//! so a publisher can keep sending while its acknowledgements come back.
//!
//! The broker's own `broker::codec::Codec` is the server side of the protocol (it
//! decodes only what clients send and refuses to encode before a CONNECT arrived), so
//! the client speaks through the crate underneath it, `rmqtt-codec`, directly. Writes
//! are batched: callers queue packets into one buffer and flush it with one
//! `write_all`, so the generator spends a syscall per batch, not per message.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet, SubscribeReturnCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// The receiving half: packets from the broker.
pub struct Reader {
    half: OwnedReadHalf,
    codec: Codec,
    buf: BytesMut,
}

/// The sending half: packets queued into one buffer, written on `flush`.
pub struct Writer {
    half: OwnedWriteHalf,
    codec: Codec,
    buf: BytesMut,
}

/// A connected client (CONNACK received).
pub struct Client {
    /// Packets from the broker.
    pub reader: Reader,
    /// Packets to the broker.
    pub writer: Writer,
}

impl Client {
    /// Connects to `address` (from `source` when given, else the kernel's choice) with
    /// TCP_NODELAY, sends CONNECT and waits for an accepting CONNACK.
    pub async fn connect(
        address: SocketAddr,
        source: Option<IpAddr>,
        client_id: &str,
        clean_session: bool,
    ) -> anyhow::Result<Client> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind the source address {ip}"))?;
        }
        let stream = socket.connect(address).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut client = Client {
            reader: Reader {
                half: read,
                codec: Codec::new(0),
                buf: BytesMut::with_capacity(READ_CHUNK),
            },
            writer: Writer {
                half: write,
                codec: Codec::new(0),
                buf: BytesMut::new(),
            },
        };
        client.writer.queue(Packet::Connect(Box::new(Connect {
            protocol: Protocol(4),
            clean_session,
            // Long enough that no PINGREQ is due during a workload.
            keep_alive: 600,
            client_id: ByteString::from(client_id),
            ..Connect::default()
        })))?;
        client.writer.flush().await?;
        match client.reader.next().await? {
            Some(Packet::ConnectAck(ack))
                if ack.return_code == ConnectAckReason::ConnectionAccepted =>
            {
                Ok(client)
            }
            Some(Packet::ConnectAck(ack)) => bail!("connect refused: {}", ack.return_code.reason()),
            Some(other) => bail!(
                "expected connack, got packet type {}",
                other.packet_type() >> 4
            ),
            None => bail!("the broker closed the connection before connack"),
        }
    }

    /// Subscribes to `filter` at `qos` and waits for a granting SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let packet_id = NonZeroU16::MIN;
        self.writer.queue(Packet::Subscribe {
            packet_id,
            topic_filters: vec![(ByteString::from(filter), qos)],
        })?;
        self.writer.flush().await?;
        loop {
            match self.reader.next().await? {
                Some(Packet::SubscribeAck { status, .. }) => {
                    return match status.first() {
                        Some(SubscribeReturnCode::Success(_)) => Ok(()),
                        _ => bail!("subscription to {filter} refused"),
                    };
                }
                // A persistent session may already hold messages; none are expected here.
                Some(_) => {}
                None => bail!("the broker closed the connection before suback"),
            }
        }
    }

    /// The two halves, for tasks that read and write concurrently.
    pub fn split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }
}

impl Reader {
    /// The next packet, reading from the socket when none is buffered; `None` when the
    /// broker closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(Some(packet));
            }
            self.buf.reserve(READ_CHUNK);
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next packet among the bytes already read, without waiting.
    pub fn buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(self
            .codec
            .decode(&mut self.buf)
            .context("undecodable packet from the broker")?
            .map(|(packet, _)| packet))
    }
}

impl Writer {
    /// Adds `packet` to the batch.
    pub fn queue(&mut self, packet: Packet) -> anyhow::Result<()> {
        self.codec
            .encode(packet, &mut self.buf)
            .context("cannot encode a packet")
    }

    /// Writes the batch, if any.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// A PUBLISH of `payload` to `topic`.
pub fn publish(
    topic: &ByteString,
    payload: Bytes,
    qos: QoS,
    packet_id: Option<NonZeroU16>,
) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos,
        topic: topic.clone(),
        packet_id,
        payload,
        properties: None,
    }))
}
