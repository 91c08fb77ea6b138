//! One MQTT 3.1.1 connection of the load generator, over TCP or TLS, split into a
//! reader and a writer so a publisher can keep sending while its acknowledgements come
//! back.
//!
//! The broker's own `broker::codec::Codec` is the server side of the protocol (it
//! decodes only what clients send and refuses to encode before a CONNECT arrived), so
//! the client speaks through the crate underneath it, `rmqtt-codec`, directly. Writes
//! are batched: callers queue packets into one buffer and flush it with one
//! `write_all`, so the generator spends a syscall per batch, not per message.
//!
//! The plain TCP halves are tokio's owned halves, as before TLS existed: a TLS stream
//! cannot be split that way (reads and writes share one rustls session), so its halves
//! go through `tokio::io::split` and its lock, and only TLS connections pay for that.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet, SubscribeReturnCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// Where clients connect: the broker's address, and how to speak TLS to it when its
/// listener does.
#[derive(Clone)]
pub struct Endpoint {
    /// The listener's address.
    pub address: SocketAddr,
    /// `Some` for a TLS listener: the client configuration (trusted CA) to use.
    pub tls: Option<TlsConnector>,
}

/// The receiving side of the socket.
enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The sending side of the socket.
enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

/// The receiving half: packets from the broker.
pub struct Reader {
    half: ReadHalf,
    codec: Codec,
    buf: BytesMut,
}

/// The sending half: packets queued into one buffer, written on `flush`.
pub struct Writer {
    half: WriteHalf,
    codec: Codec,
    buf: BytesMut,
}

/// A connected client (CONNACK received).
pub struct Client {
    /// Packets from the broker.
    pub reader: Reader,
    /// Packets to the broker.
    pub writer: Writer,
    /// Over TLS: the negotiated version and cipher suite (`TLSv1_3
    /// TLS13_AES_256_GCM_SHA384`).
    pub tls_session: Option<String>,
}

/// How long the steps of one connection took, each from the start of the TCP connect.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Until the TCP connection is up and, over TLS, the handshake finished.
    pub handshake: Duration,
    /// Until the accepting CONNACK arrived.
    pub connack: Duration,
}

impl Client {
    /// Connects to `endpoint` (from `source` when given, else the kernel's choice) with
    /// TCP_NODELAY, completes the TLS handshake when the endpoint has TLS, sends CONNECT
    /// and waits for an accepting CONNACK.
    pub async fn connect(
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        client_id: &str,
        clean_session: bool,
    ) -> anyhow::Result<Client> {
        Ok(
            Client::connect_timed(endpoint, source, client_id, clean_session)
                .await?
                .0,
        )
    }

    /// [`Client::connect`], also saying how long the handshake and the CONNACK took.
    pub async fn connect_timed(
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        client_id: &str,
        clean_session: bool,
    ) -> anyhow::Result<(Client, Timing)> {
        let start = Instant::now();
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind the source address {ip}"))?;
        }
        let stream = socket.connect(endpoint.address).await?;
        stream.set_nodelay(true)?;
        let (read, write, tls_session) = match &endpoint.tls {
            None => {
                let (read, write) = stream.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write), None)
            }
            Some(connector) => {
                // The brokers listen on 127.0.0.1, which the certificate names.
                let name = ServerName::IpAddress(endpoint.address.ip().into());
                let stream = connector
                    .connect(name, stream)
                    .await
                    .context("tls handshake failed")?;
                let (_, session) = stream.get_ref();
                let described = format!(
                    "{} {}",
                    session
                        .protocol_version()
                        .map_or("unknown version".into(), |v| format!("{v:?}")),
                    session
                        .negotiated_cipher_suite()
                        .map_or("unknown suite".into(), |s| format!("{:?}", s.suite()))
                );
                let (read, write) = tokio::io::split(stream);
                (ReadHalf::Tls(read), WriteHalf::Tls(write), Some(described))
            }
        };
        let handshake = start.elapsed();
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
            tls_session,
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
                let connack = start.elapsed();
                Ok((client, Timing { handshake, connack }))
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

    /// Sends DISCONNECT, closes the sending side (over TLS with a close_notify first)
    /// and reads until the broker closed the connection too, at most `patience`.
    pub async fn disconnect(mut self, patience: Duration) -> anyhow::Result<()> {
        self.writer.queue(Packet::Disconnect)?;
        self.writer.flush().await?;
        match &mut self.writer.half {
            WriteHalf::Tcp(half) => half.shutdown().await?,
            WriteHalf::Tls(half) => half.shutdown().await?,
        }
        let closed = async {
            loop {
                match self.reader.next().await {
                    Ok(Some(_)) => {}
                    // A broker may close without a close_notify of its own (Mosquitto
                    // does): the connection is over either way.
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::time::timeout(patience, closed)
            .await
            .context("the broker kept the connection open after DISCONNECT")
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
            let read = match &mut self.half {
                ReadHalf::Tcp(half) => half.read_buf(&mut self.buf).await?,
                ReadHalf::Tls(half) => half.read_buf(&mut self.buf).await?,
            };
            if read == 0 {
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
            match &mut self.half {
                WriteHalf::Tcp(half) => half.write_all(&self.buf).await?,
                WriteHalf::Tls(half) => {
                    // rustls may keep records it could not write yet; flush sends them.
                    half.write_all(&self.buf).await?;
                    half.flush().await?;
                }
            }
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
