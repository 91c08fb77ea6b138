//! MQTT over WebSockets: the HTTP upgrade (subprotocol `mqtt`) and the MQTT byte stream
//! inside binary frames, as an `AsyncRead + AsyncWrite` the connection code treats like a
//! socket.
//!
//! The framing is ours (docs/decisions/006). MQTT over WebSockets is a byte stream whose
//! packets may be cut across frames anywhere, so nothing needs whole messages: a read
//! unmasks frame payloads in place, in the caller's buffer, and a write gathers bytes
//! until the flush and sends them as one binary frame. The only buffer a stream owns is
//! that frame, released after the flush unless it is small, so an idle stream costs its
//! struct (176 bytes beside the transport on 64-bit targets) and at most
//! [`IDLE_WRITE_BUFFER`] bytes of heap.
//!
//! Read and write a stream from one task, as the broker's connection does: a read
//! answers a ping (and a close) by writing the reply itself when no data frame is on its
//! way out, so a client's ping is answered even while the broker has nothing to say.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The subprotocols that mean MQTT: `mqtt` (the MQTT 3.1.1 and 5.0 name) and `mqttv3.1`
/// (sent by clients written for 3.1); Mosquitto accepts both.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Longest upgrade request accepted (request line and headers). Browsers send cookies
/// and a dozen headers; Mosquitto's libwebsockets allows 4 KiB by default. The buffer
/// lives only during the handshake.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// A gathered frame buffer at most this large is kept after its flush for the next one;
/// a larger one is freed, so a burst does not stay allocated on an idle connection.
pub const IDLE_WRITE_BUFFER: usize = 512;

/// Most unsent control bytes (pongs) kept for a peer that pings without reading our
/// answers; further pongs are not queued (RFC 6455 5.5.3 allows answering only the
/// latest ping).
const MAX_CONTROL_BACKLOG: usize = 256;

/// Most bytes one read asks of the transport.
const READ_CHUNK: usize = 64 * 1024;

/// Most headers an upgrade request may carry.
const MAX_HEADERS: usize = 64;

/// RFC 6455 1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Room in front of a gathered payload for its header: server frames are unmasked, so a
/// header is at most 2 + 8 bytes.
const HEADER_ROOM: usize = 10;

/// A client frame header is at most 2 + 8 + 4 (mask) bytes.
const MAX_CLIENT_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;

/// Why a WebSocket connection could not be opened, or ended in error.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The transport failed during the handshake.
    #[error("websocket handshake: {0}")]
    Io(#[from] io::Error),
    /// The client did not finish its upgrade request in time.
    #[error("websocket handshake not finished within {0:?}; closing")]
    Timeout(Duration),
    /// The client closed the connection before its upgrade request was complete.
    #[error("connection closed during the websocket handshake")]
    Closed,
    /// The upgrade request is longer than [`MAX_REQUEST_HEAD`]; answered with 431.
    #[error("websocket upgrade request longer than {0} bytes; send fewer or shorter headers")]
    RequestTooLarge(usize),
    /// A plain HTTP request, not a WebSocket upgrade; answered with 426.
    #[error(
        "plain http request on a websocket listener; connect with an MQTT client over \
         websockets (ws://host:port)"
    )]
    NotWebSocket,
    /// The request is not a valid upgrade request; answered with 400 (or 405).
    #[error("bad websocket upgrade request: {0}")]
    BadRequest(&'static str),
    /// The client speaks a WebSocket version other than 13; answered with 426.
    #[error("websocket version {0:?} is not supported; use version 13")]
    UnsupportedVersion(String),
    /// The client offered no MQTT subprotocol; answered with 400.
    #[error(
        "websocket client offered no mqtt subprotocol (offered: {offered}); connect with \
         the subprotocol `mqtt` (Sec-WebSocket-Protocol: mqtt)"
    )]
    NoMqttSubprotocol {
        /// What the client offered, or `none`.
        offered: String,
    },
    /// The client broke the WebSocket protocol after the handshake. Reads return it
    /// inside an [`io::Error`] of kind `InvalidData`.
    #[error("websocket protocol error: {0}")]
    Protocol(#[from] Violation),
}

/// A frame the client must not send; the stream ends with a close frame and an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A text frame: MQTT travels in binary frames only (MQTT 6.0, [MQTT-6.0.0-1]).
    #[error("text frame received; MQTT travels in binary frames only")]
    TextFrame,
    /// A data frame longer than the stream's `max_frame`.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's payload length.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// An unmasked frame (RFC 6455 5.1: a server must close the connection).
    #[error("unmasked frame from the client")]
    Unmasked,
    /// Reserved bits set although no extension was negotiated.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame without its FIN bit.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    /// A continuation frame with no message to continue.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new message before the previous one's final frame.
    #[error("new message before the final frame of the previous one")]
    InterruptedMessage,
    /// A close frame with a one-byte payload (a status code takes two).
    #[error("close frame with a one-byte payload")]
    BadClose,
}

impl Violation {
    /// The status code of the close frame that answers it.
    fn close_code(self) -> u16 {
        match self {
            Violation::TextFrame => CLOSE_UNSUPPORTED_DATA,
            Violation::FrameTooLarge { .. } => CLOSE_TOO_BIG,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, WsError::Protocol(self))
    }
}

/// Runs the HTTP upgrade within `timeout` on any byte stream (TCP, or TLS for wss).
/// Accepts only requests offering the subprotocol `mqtt` (or `mqttv3.1`, which clients
/// written for MQTT 3.1 send) and answers with it; anything else gets an HTTP error
/// status whose body says what to do, and the error. `max_frame` bounds the payload of
/// one incoming frame; it is also the largest frame written.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    timeout: Duration,
    max_frame: usize,
) -> Result<WsStream<S>, WsError> {
    match tokio::time::timeout(timeout, handshake(&mut stream)).await {
        Ok(Ok((protocol, early))) => Ok(WsStream {
            inner: stream,
            max_frame: max_frame.max(1),
            protocol,
            reader: Reader {
                early,
                phase: Phase::header(),
                in_message: false,
            },
            writer: Writer::default(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(WsError::Timeout(timeout)),
    }
}

/// Reads the upgrade request and answers it. Returns the chosen subprotocol and the
/// bytes that followed the request (frames a client sent without waiting).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<(&'static str, Vec<u8>), WsError> {
    let (mut head, end) = match read_request_head(stream).await {
        Ok(read) => read,
        Err(error @ WsError::RequestTooLarge(_)) => {
            refuse(stream, "431 Request Header Fields Too Large", "", &error).await;
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    let early = head.split_off(end);
    match check_request(&head) {
        Ok(upgrade) => {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\
                 Sec-WebSocket-Protocol: {}\r\n\r\n",
                upgrade.accept, upgrade.protocol
            );
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            Ok((upgrade.protocol, early))
        }
        Err(refusal) => {
            refuse(stream, refusal.status, refusal.headers, &refusal.error).await;
            Err(refusal.error)
        }
    }
}

/// Answers a refused upgrade with an HTTP error whose body is the error message, and
/// closes. Failures are ignored: the client may be gone already.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    headers: &str,
    error: &WsError,
) {
    let body = format!("{error}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads until the blank line that ends the request head. Returns what was read and
/// where the head ends. The end is searched in the new bytes only, so a slow client
/// sending a long head byte by byte costs linear time.
async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Vec<u8>, usize), WsError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = MAX_REQUEST_HEAD - head.len();
        if room == 0 {
            return Err(WsError::RequestTooLarge(MAX_REQUEST_HEAD));
        }
        let n = stream.read(&mut chunk[..room.min(1024)]).await?;
        if n == 0 {
            return Err(WsError::Closed);
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((head, from + at + 4));
        }
    }
}

/// An acceptable upgrade request.
#[derive(Debug, PartialEq)]
struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    accept: String,
    /// The subprotocol chosen from the client's offer.
    protocol: &'static str,
}

/// A request to refuse: the HTTP status line, extra response headers, and the error.
#[derive(Debug)]
struct Refusal {
    status: &'static str,
    headers: &'static str,
    error: WsError,
}

impl Refusal {
    fn bad(error: WsError) -> Refusal {
        Refusal {
            status: "400 Bad Request",
            headers: "",
            error,
        }
    }
}

/// Checks an upgrade request head (RFC 6455 4.2.1) and picks the subprotocol: the
/// first MQTT one in the client's order of preference.
fn check_request(head: &[u8]) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Refusal::bad(WsError::BadRequest("incomplete request head")));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal {
                status: "431 Request Header Fields Too Large",
                headers: "",
                error: WsError::BadRequest("more than 64 headers"),
            });
        }
        Err(_) => return Err(Refusal::bad(WsError::BadRequest("malformed http request"))),
    }
    if request.method != Some("GET") {
        return Err(Refusal {
            status: "405 Method Not Allowed",
            headers: "Allow: GET\r\n",
            error: WsError::BadRequest("the method must be GET"),
        });
    }
    if request.version != Some(1) {
        return Err(Refusal::bad(WsError::BadRequest("http/1.1 is required")));
    }
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut key = None;
    let mut version = None;
    let mut offered: Vec<&str> = Vec::new();
    for header in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            continue;
        };
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(value.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            offered.extend(value.split(',').map(str::trim).filter(|p| !p.is_empty()));
        }
    }
    if !upgrade {
        return Err(Refusal {
            status: "426 Upgrade Required",
            headers: "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            error: WsError::NotWebSocket,
        });
    }
    if !connection_upgrade {
        return Err(Refusal::bad(WsError::BadRequest(
            "the Connection header must include `Upgrade`",
        )));
    }
    if version != Some("13") {
        return Err(Refusal {
            status: "426 Upgrade Required",
            headers: "Sec-WebSocket-Version: 13\r\n",
            error: WsError::UnsupportedVersion(version.unwrap_or("none").to_string()),
        });
    }
    let key = key.ok_or(Refusal::bad(WsError::BadRequest(
        "Sec-WebSocket-Key is missing",
    )))?;
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(Refusal::bad(WsError::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        )));
    }
    let protocol = offered
        .iter()
        .find_map(|p| SUBPROTOCOLS.iter().find(|s| *s == p).copied())
        .ok_or_else(|| {
            Refusal::bad(WsError::NoMqttSubprotocol {
                offered: if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                },
            })
        })?;
    Ok(Upgrade {
        accept: accept_key(key),
        protocol,
    })
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key + GUID)).
fn accept_key(key: &str) -> String {
    let mut hash = Sha1::new();
    hash.update(key.as_bytes());
    hash.update(ACCEPT_GUID);
    BASE64.encode(hash.finalize())
}

/// The MQTT byte stream inside binary frames: implements tokio's `AsyncRead` and
/// `AsyncWrite`.
///
/// Reads yield the payloads of binary frames (and their continuations) as one stream;
/// a ping is answered with a pong; a close frame is answered and ends the stream (EOF);
/// a text frame or any other violation sends a close frame and fails the read with an
/// `InvalidData` error carrying [`WsError::Protocol`]. Writes gather bytes until
/// `flush`, which sends them as one binary frame (split only beyond `max_frame`);
/// `shutdown` flushes, sends a close frame and shuts the transport down.
pub struct WsStream<S> {
    /// The transport: TCP, or TLS for wss.
    inner: S,
    /// Largest frame payload read or written.
    max_frame: usize,
    /// The subprotocol agreed in the handshake.
    protocol: &'static str,
    /// Where the reader is in the incoming frames.
    reader: Reader,
    /// The frame being gathered or written, and control frames to send.
    writer: Writer,
}

impl<S> WsStream<S> {
    /// The transport underneath (for a TLS stream: its peer certificates).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The subprotocol agreed in the handshake (`mqtt` or `mqttv3.1`).
    pub fn subprotocol(&self) -> &'static str {
        self.protocol
    }
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("protocol", &self.protocol)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

/// The incoming side: a state machine over frame headers and payloads.
struct Reader {
    /// Bytes that followed the upgrade request, read before the transport; empty (and
    /// unallocated) once consumed.
    early: Vec<u8>,
    /// Where we are in the current frame.
    phase: Phase,
    /// A binary message has started and its final frame has not come: continuation
    /// frames are expected, new messages are not.
    in_message: bool,
}

/// Where the reader is.
enum Phase {
    /// Gathering a frame header.
    Header {
        /// The header bytes so far.
        bytes: [u8; MAX_CLIENT_HEADER],
        /// How many.
        len: u8,
    },
    /// Inside a binary (or continuation) frame's payload.
    Data {
        /// Payload bytes still to come.
        remaining: u64,
        /// The frame's masking key.
        mask: [u8; 4],
        /// Index into the mask of the next byte.
        offset: usize,
    },
    /// Inside a control frame (at most 125 bytes, gathered to answer it).
    Control {
        /// Ping, pong or close.
        opcode: u8,
        /// Payload bytes still to come.
        remaining: usize,
        /// The frame's masking key.
        mask: [u8; 4],
        /// The unmasked payload so far.
        payload: Vec<u8>,
    },
    /// The client closed (a close frame, or the transport's EOF): reads return EOF.
    Closed,
    /// The client broke the protocol: reads return this.
    Failed(Violation),
}

impl Phase {
    fn header() -> Phase {
        Phase::Header {
            bytes: [0; MAX_CLIENT_HEADER],
            len: 0,
        }
    }
}

/// The header length implied by its first bytes (2 until the second byte is known).
fn header_len(start: &[u8]) -> usize {
    if start.len() < 2 {
        return 2;
    }
    let extended = match start[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if start[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

impl Reader {
    /// Consumes `data`, bytes just read: headers and control frames are taken out,
    /// binary payload is unmasked and moved to the front. Returns how many payload bytes
    /// are at the front. Payload never overtakes the read position, so moving it in
    /// place is safe.
    fn process(&mut self, data: &mut [u8], max_frame: usize, writer: &mut Writer) -> usize {
        let mut at = 0;
        let mut out = 0;
        while at < data.len() {
            match &mut self.phase {
                Phase::Header { bytes, len } => {
                    let have = usize::from(*len);
                    let take = (header_len(&bytes[..have]) - have).min(data.len() - at);
                    bytes[have..have + take].copy_from_slice(&data[at..at + take]);
                    at += take;
                    let have = have + take;
                    *len = have as u8;
                    if have == header_len(&bytes[..have]) {
                        let header = *bytes;
                        match self.start_frame(&header[..have], max_frame) {
                            Ok(()) => self.finish_if_empty(writer),
                            Err(violation) => self.fail(violation, writer),
                        }
                    }
                }
                Phase::Data {
                    remaining,
                    mask,
                    offset,
                } => {
                    let take = (*remaining).min((data.len() - at) as u64) as usize;
                    for k in 0..take {
                        data[out + k] = data[at + k] ^ mask[(*offset + k) & 3];
                    }
                    *offset = (*offset + take) & 3;
                    *remaining -= take as u64;
                    at += take;
                    out += take;
                    self.finish_if_empty(writer);
                }
                Phase::Control {
                    remaining,
                    mask,
                    payload,
                    ..
                } => {
                    let take = (*remaining).min(data.len() - at);
                    for &byte in &data[at..at + take] {
                        payload.push(byte ^ mask[payload.len() & 3]);
                    }
                    *remaining -= take;
                    at += take;
                    self.finish_if_empty(writer);
                }
                // Whatever follows a close or an error is not read.
                Phase::Closed | Phase::Failed(_) => break,
            }
        }
        out
    }

    /// Checks a complete header and enters its payload.
    fn start_frame(&mut self, header: &[u8], max_frame: usize) -> Result<(), Violation> {
        let fin = header[0] & 0x80 != 0;
        let opcode = header[0] & 0x0F;
        if header[0] & 0x70 != 0 {
            return Err(Violation::ReservedBits);
        }
        if header[1] & 0x80 == 0 {
            return Err(Violation::Unmasked);
        }
        let (size, rest) = match header[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
            127 => {
                let mut long = [0; 8];
                long.copy_from_slice(&header[2..10]);
                (u64::from_be_bytes(long), 10)
            }
            short => (u64::from(short), 2),
        };
        let mut mask = [0; 4];
        mask.copy_from_slice(&header[rest..rest + 4]);
        match opcode {
            OP_TEXT => Err(Violation::TextFrame),
            OP_CONTINUATION | OP_BINARY => {
                if opcode == OP_CONTINUATION && !self.in_message {
                    return Err(Violation::UnexpectedContinuation);
                }
                if opcode == OP_BINARY && self.in_message {
                    return Err(Violation::InterruptedMessage);
                }
                if size > max_frame as u64 {
                    return Err(Violation::FrameTooLarge {
                        size,
                        limit: max_frame,
                    });
                }
                self.in_message = !fin;
                self.phase = Phase::Data {
                    remaining: size,
                    mask,
                    offset: 0,
                };
                Ok(())
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(Violation::FragmentedControl);
                }
                if size > 125 {
                    return Err(Violation::ControlTooLong);
                }
                self.phase = Phase::Control {
                    opcode,
                    remaining: size as usize,
                    mask,
                    payload: Vec::new(),
                };
                Ok(())
            }
            other => Err(Violation::ReservedOpcode(other)),
        }
    }

    /// Ends the current frame once its payload is all in: back to reading a header, and
    /// for a control frame, its answer.
    fn finish_if_empty(&mut self, writer: &mut Writer) {
        match &self.phase {
            Phase::Data { remaining: 0, .. } => self.phase = Phase::header(),
            Phase::Control { remaining: 0, .. } => {
                let Phase::Control {
                    opcode, payload, ..
                } = std::mem::replace(&mut self.phase, Phase::header())
                else {
                    return;
                };
                match opcode {
                    OP_PING => writer.queue_pong(&payload),
                    OP_CLOSE if payload.len() == 1 => self.fail(Violation::BadClose, writer),
                    OP_CLOSE => {
                        // Answer with a close of our own (RFC 6455 5.5.1), with a normal
                        // status when the client gave one.
                        writer.queue_close((payload.len() >= 2).then_some(CLOSE_NORMAL));
                        self.phase = Phase::Closed;
                    }
                    // An unsolicited pong needs no answer (RFC 6455 5.5.3).
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, violation: Violation, writer: &mut Writer) {
        writer.queue_close(Some(violation.close_code()));
        self.phase = Phase::Failed(violation);
    }
}

/// The outgoing side: the binary frame being gathered or written, and control frames.
#[derive(Default)]
struct Writer {
    /// [`HEADER_ROOM`] bytes, then the payload gathered since the last flush; once
    /// sealed, the encoded frame starts inside the room.
    frame: Vec<u8>,
    /// Set while the sealed frame goes out: the index of its next byte to write.
    sending: Option<usize>,
    /// Encoded control frames (pongs, a close), written between data frames.
    control: Vec<u8>,
    /// How much of `control` is written.
    control_sent: usize,
    /// A close frame is queued or sent: nothing may follow it.
    closing: bool,
}

impl Writer {
    /// Turns the gathered payload into a frame ready to write.
    fn seal(&mut self) {
        if self.sending.is_some() || self.frame.len() <= HEADER_ROOM {
            return;
        }
        let size = self.frame.len() - HEADER_ROOM;
        let mut header = [0u8; HEADER_ROOM];
        let len = encode_header(&mut header, OP_BINARY, size);
        let start = HEADER_ROOM - len;
        self.frame[start..HEADER_ROOM].copy_from_slice(&header[..len]);
        self.sending = Some(start);
    }

    /// Whether control frames wait to be written.
    fn has_control(&self) -> bool {
        self.control_sent < self.control.len()
    }

    /// Writes the sealed frame, then pending control frames.
    fn poll_drive<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        inner: &mut S,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(next) = self.sending {
                let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.frame[next..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                if next + n < self.frame.len() {
                    self.sending = Some(next + n);
                    continue;
                }
                self.sending = None;
                self.frame.clear();
                if self.frame.capacity() > IDLE_WRITE_BUFFER {
                    self.frame = Vec::new();
                }
            } else if self.has_control() {
                let n = ready!(
                    Pin::new(&mut *inner).poll_write(cx, &self.control[self.control_sent..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.control_sent += n;
                if !self.has_control() {
                    self.control = Vec::new();
                    self.control_sent = 0;
                }
            } else {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn push_control(&mut self, opcode: u8, payload: &[u8]) {
        let mut header = [0u8; HEADER_ROOM];
        let len = encode_header(&mut header, opcode, payload.len());
        self.control.extend_from_slice(&header[..len]);
        self.control.extend_from_slice(payload);
    }

    fn queue_pong(&mut self, payload: &[u8]) {
        if self.closing || self.control.len() - self.control_sent > MAX_CONTROL_BACKLOG {
            return;
        }
        self.push_control(OP_PONG, payload);
    }

    /// Queues the close frame, once; data gathered and not yet on its way is dropped,
    /// since no data frame may follow a close.
    fn queue_close(&mut self, code: Option<u16>) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.sending.is_none() {
            self.frame = Vec::new();
        }
        match code {
            Some(code) => self.push_control(OP_CLOSE, &code.to_be_bytes()),
            None => self.push_control(OP_CLOSE, &[]),
        }
    }
}

/// Encodes an unmasked, final frame header into `out`; returns its length.
fn encode_header(out: &mut [u8; HEADER_ROOM], opcode: u8, size: usize) -> usize {
    out[0] = 0x80 | opcode;
    if size < 126 {
        out[1] = size as u8;
        2
    } else if let Ok(short) = u16::try_from(size) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(size as u64).to_be_bytes());
        10
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.reader.phase {
                Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Failed(violation) => return Poll::Ready(Err(violation.into_io())),
                _ => {}
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Frames are read straight into the caller's buffer and decoded there. The
            // room is zeroed first (tokio's rule for safe code), at most READ_CHUNK of it
            // per read, so a large buffer is not cleared again and again.
            let room = buf.initialize_unfilled_to(buf.remaining().min(READ_CHUNK));
            let n = if this.reader.early.is_empty() {
                let mut into = ReadBuf::new(&mut *room);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut into))?;
                into.filled().len()
            } else {
                let n = this.reader.early.len().min(room.len());
                room[..n].copy_from_slice(&this.reader.early[..n]);
                this.reader.early.drain(..n);
                if this.reader.early.is_empty() {
                    this.reader.early = Vec::new();
                }
                n
            };
            if n == 0 {
                // The transport ended without a close frame: a vanished client.
                this.reader.phase = Phase::Closed;
                return Poll::Ready(Ok(()));
            }
            let out = this
                .reader
                .process(&mut room[..n], this.max_frame, &mut this.writer);
            if this.writer.has_control() && this.writer.sending.is_none() {
                // Answer a ping or a close now: the broker may have nothing to write
                // for a long time. A full socket leaves it for the next flush; a failed
                // one shows on the next write.
                let _ = this.writer.poll_drive(cx, &mut this.inner);
            }
            if out > 0 {
                buf.advance(out);
                return Poll::Ready(Ok(()));
            }
            // Only headers or control frames so far: read on.
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.writer.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "websocket closed",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.writer.sending.is_some() {
                ready!(this.writer.poll_drive(cx, &mut this.inner))?;
            }
            let gathered = this.writer.frame.len().saturating_sub(HEADER_ROOM);
            let room = this.max_frame.saturating_sub(gathered);
            if room == 0 {
                // A full frame: send it and gather the rest into the next.
                this.writer.seal();
                continue;
            }
            if this.writer.frame.is_empty() {
                this.writer.frame.resize(HEADER_ROOM, 0);
            }
            let n = room.min(data.len());
            this.writer.frame.extend_from_slice(&data[..n]);
            return Poll::Ready(Ok(n));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer.seal();
        ready!(this.writer.poll_drive(cx, &mut this.inner))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.writer.closing {
            this.writer.seal();
            ready!(this.writer.poll_drive(cx, &mut this.inner))?;
            this.writer.queue_close(Some(CLOSE_NORMAL));
        }
        ready!(this.writer.poll_drive(cx, &mut this.inner))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::{SinkExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::{Bytes, Message};

    const PATIENCE: Duration = Duration::from_secs(10);

    /// CONNECT (v3.1.1, client id "test"), PUBLISH QoS 1 `a/b` "hi", PINGREQ.
    fn mqtt_bytes() -> Vec<u8> {
        let mut bytes = vec![0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4];
        bytes.extend_from_slice(b"test");
        bytes.extend_from_slice(&[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 1, b'h', b'i']);
        bytes.extend_from_slice(&[0xC0, 0]);
        bytes
    }

    /// Our server and a tokio-tungstenite client over an in-memory pipe, the client
    /// offering `protocol`.
    async fn pair_with(
        protocol: Option<&str>,
        max_frame: usize,
    ) -> (
        Result<WsStream<DuplexStream>, WsError>,
        Result<WebSocketStream<DuplexStream>, tokio_tungstenite::tungstenite::Error>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(accept(server_io, PATIENCE, max_frame));
        let mut request = "ws://127.0.0.1/mqtt".into_client_request().unwrap();
        if let Some(protocol) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        }
        let client = tokio_tungstenite::client_async(request, client_io)
            .await
            .map(|(ws, _)| ws);
        (server.await.unwrap(), client)
    }

    async fn pair(max_frame: usize) -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = pair_with(Some("mqtt"), max_frame).await;
        (server.unwrap(), client.unwrap())
    }

    /// The server side's read error, as the `Violation` it carries.
    fn violation(error: io::Error) -> Violation {
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        match error.get_ref().and_then(|e| e.downcast_ref::<WsError>()) {
            Some(WsError::Protocol(violation)) => *violation,
            other => panic!("not a protocol error: {other:?}"),
        }
    }

    /// The next frame the client gets that is not a data frame we did not expect.
    async fn next_message(client: &mut WebSocketStream<DuplexStream>) -> Message {
        tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("a frame in time")
            .expect("the stream goes on")
            .expect("a valid frame")
    }

    async fn close_code(client: &mut WebSocketStream<DuplexStream>) -> CloseCode {
        match next_message(client).await {
            Message::Close(Some(CloseFrame { code, .. })) => code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn request(protocol_lines: &str) -> Vec<u8> {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol_lines}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn subprotocol_is_the_first_mqtt_one_the_client_offers() {
        let cases: [(&str, Result<&str, &str>); 7] = [
            ("Sec-WebSocket-Protocol: mqtt\r\n", Ok("mqtt")),
            ("Sec-WebSocket-Protocol: mqttv3.1\r\n", Ok("mqttv3.1")),
            (
                "Sec-WebSocket-Protocol: foo, mqttv3.1, mqtt\r\n",
                Ok("mqttv3.1"),
            ),
            (
                "Sec-WebSocket-Protocol: foo\r\nSec-WebSocket-Protocol: mqtt\r\n",
                Ok("mqtt"),
            ),
            ("", Err("offered: none")),
            (
                "Sec-WebSocket-Protocol: foo, MQTT\r\n",
                Err("offered: foo, MQTT"),
            ),
            ("Sec-WebSocket-Protocol: mqtt5\r\n", Err("offered: mqtt5")),
        ];
        for (lines, want) in cases {
            let got = check_request(&request(lines));
            match (got, want) {
                (Ok(upgrade), Ok(protocol)) => {
                    assert_eq!(upgrade.protocol, protocol, "{lines:?}");
                    assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                }
                (Err(refusal), Err(text)) => {
                    assert_eq!(refusal.status, "400 Bad Request");
                    let message = refusal.error.to_string();
                    assert!(message.contains(text), "{lines:?}: {message}");
                    assert!(message.contains("subprotocol `mqtt`"), "{message}");
                }
                (got, want) => panic!("{lines:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bad_upgrade_requests_are_refused_with_their_status() {
        let cases: [(&[u8], &str); 6] = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "426 Upgrade Required"),
            (
                b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                "405 Method Not Allowed",
            ),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Protocol: mqtt\r\n\r\n",
                "426 Upgrade Required",
            ),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Protocol: mqtt\r\n\r\n",
                "400 Bad Request",
            ),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\
                  Sec-WebSocket-Protocol: mqtt\r\n\r\n",
                "400 Bad Request",
            ),
            (b"\x16\x03\x01\x00\xa5\x01\r\n\r\n", "400 Bad Request"),
        ];
        for (head, status) in cases {
            let refusal = check_request(head).expect_err("refused");
            assert_eq!(refusal.status, status, "{}", String::from_utf8_lossy(head));
        }
    }

    #[tokio::test]
    async fn handshake_with_mqtt_agrees_on_it() {
        for offered in ["mqtt", "mqttv3.1"] {
            let (server, client) = pair_with(Some(offered), 1024).await;
            let server = server.unwrap();
            assert_eq!(server.subprotocol(), offered);
            // tungstenite checks the answer's Sec-WebSocket-Accept and subprotocol.
            client.unwrap();
        }
    }

    #[tokio::test]
    async fn handshake_without_mqtt_is_refused_with_a_reason() {
        let (server, client) = pair_with(None, 1024).await;
        assert!(
            matches!(&server, Err(WsError::NoMqttSubprotocol { offered }) if offered == "none"),
            "{server:?}"
        );
        match client {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400);
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[]));
                assert!(body.contains("subprotocol `mqtt`"), "{body}");
            }
            other => panic!("client was not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn plain_http_gets_426_and_the_reason() {
        let (mut client, server_io) = tokio::io::duplex(4096);
        let server = tokio::spawn(accept(server_io, PATIENCE, 1024));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{answer}"
        );
        assert!(answer.contains("MQTT client over websockets"), "{answer}");
        assert!(matches!(server.await.unwrap(), Err(WsError::NotWebSocket)));
    }

    #[tokio::test]
    async fn an_oversized_request_head_gets_431() {
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(accept(server_io, PATIENCE, 1024));
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        while head.len() <= MAX_REQUEST_HEAD {
            head.extend_from_slice(b"Cookie: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        client.write_all(&head).await.unwrap();
        let mut answer = Vec::new();
        // The server closes once it answered, whatever of the head it did not read.
        let _ = client.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(matches!(
            server.await.unwrap(),
            Err(WsError::RequestTooLarge(MAX_REQUEST_HEAD))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (mut client, server_io) = tokio::io::duplex(4096);
        // Half a request, then nothing.
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        let result = accept(server_io, Duration::from_secs(3), 1024).await;
        assert!(
            matches!(result, Err(WsError::Timeout(t)) if t == Duration::from_secs(3)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn mqtt_split_one_byte_per_frame_arrives_whole() {
        let (mut server, mut client) = pair(1024).await;
        let bytes = mqtt_bytes();
        for &byte in &bytes {
            client
                .send(Message::Binary(vec![byte].into()))
                .await
                .unwrap();
        }
        let mut got = vec![0; bytes.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes);
    }

    #[tokio::test]
    async fn several_packets_in_one_frame_and_fragmented_messages_arrive_whole() {
        let (mut server, mut client) = pair(1024).await;
        let bytes = mqtt_bytes();
        client
            .send(Message::Binary(bytes.clone().into()))
            .await
            .unwrap();
        // The same bytes again as one message in three fragments.
        let parts = [&bytes[..5], &bytes[5..20], &bytes[20..]];
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 { Data::Binary } else { Data::Continue };
            let frame = Frame::message(Bytes::copy_from_slice(part), OpCode::Data(opcode), i == 2);
            client.send(Message::Frame(frame)).await.unwrap();
        }
        let mut got = vec![0; 2 * bytes.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..bytes.len()], &bytes[..]);
        assert_eq!(&got[bytes.len()..], &bytes[..]);
    }

    #[tokio::test]
    async fn a_tiny_read_buffer_still_gets_every_byte() {
        // The connection may read into a nearly full buffer: frames are decoded in
        // whatever room it gives, down to one byte.
        let (mut server, mut client) = pair(1024).await;
        let bytes = mqtt_bytes();
        client
            .send(Message::Binary(bytes.clone().into()))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < bytes.len() {
            let mut one = [0u8; 1];
            assert_eq!(server.read(&mut one).await.unwrap(), 1);
            got.push(one[0]);
        }
        assert_eq!(got, bytes);
    }

    #[tokio::test]
    async fn frames_that_follow_the_request_at_once_are_read() {
        // A client may send its CONNECT without waiting for the 101.
        let (mut client, server_io) = tokio::io::duplex(4096);
        let bytes = mqtt_bytes();
        let mut sent = request("Sec-WebSocket-Protocol: mqtt\r\n");
        let mask = [1, 2, 3, 4];
        sent.extend_from_slice(&[0x82, 0x80 | bytes.len() as u8]);
        sent.extend_from_slice(&mask);
        sent.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        client.write_all(&sent).await.unwrap();
        let mut server = accept(server_io, PATIENCE, 1024).await.unwrap();
        let mut got = vec![0; bytes.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes);
    }

    #[tokio::test]
    async fn one_flush_sends_one_frame_however_many_writes() {
        let (mut server, mut client) = pair(1024).await;
        let connack = [0x20, 2, 0, 0];
        let puback = [0x40, 2, 0, 1];
        let publish = [0x30, 5, 0, 3, b'a', b'/', b'b'];
        server.write_all(&connack).await.unwrap();
        server.write_all(&puback).await.unwrap();
        server.write_all(&publish).await.unwrap();
        server.flush().await.unwrap();
        let want: Vec<u8> = [&connack[..], &puback[..], &publish[..]].concat();
        assert_eq!(
            next_message(&mut client).await,
            Message::Binary(want.into())
        );
        // And the next flush is the next frame.
        server.write_all(&[0xD0, 0]).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            next_message(&mut client).await,
            Message::Binary(vec![0xD0, 0].into())
        );
        // Nothing is kept beyond a small buffer once flushed.
        assert!(server.writer.frame.capacity() <= IDLE_WRITE_BUFFER);
    }

    #[tokio::test]
    async fn a_write_larger_than_max_frame_goes_out_in_several_frames() {
        let (mut server, mut client) = pair(100).await;
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        server.write_all(&payload).await.unwrap();
        server.flush().await.unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while got.len() < payload.len() {
            match next_message(&mut client).await {
                Message::Binary(part) => {
                    sizes.push(part.len());
                    got.extend_from_slice(&part);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, payload);
        assert_eq!(sizes, [100, 100, 50]);
        assert!(server.writer.frame.capacity() <= IDLE_WRITE_BUFFER);
    }

    #[tokio::test]
    async fn a_large_burst_does_not_stay_allocated() {
        let (mut server, mut client) = pair(1 << 20).await;
        let payload = vec![7u8; 8 * 1024];
        server.write_all(&payload).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            next_message(&mut client).await,
            Message::Binary(payload.into())
        );
        assert_eq!(server.writer.frame.capacity(), 0);
    }

    #[tokio::test]
    async fn a_text_frame_ends_the_stream_with_an_error_and_a_close() {
        let (mut server, mut client) = pair(1024).await;
        client
            .send(Message::Binary(vec![0xC0, 0].into()))
            .await
            .unwrap();
        client.send(Message::Text("hello".into())).await.unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0xC0, 0]);
        let mut rest = [0u8; 16];
        let error = server.read(&mut rest).await.unwrap_err();
        assert_eq!(violation(error), Violation::TextFrame);
        // It stays ended.
        let error = server.read(&mut rest).await.unwrap_err();
        assert_eq!(violation(error), Violation::TextFrame);
        assert_eq!(close_code(&mut client).await, CloseCode::Unsupported);
        // Nothing more may be written after the close.
        assert!(server.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_ping_gets_its_pong_while_the_server_only_reads() {
        let (mut server, mut client) = pair(1024).await;
        let reading = tokio::spawn(async move {
            let mut got = [0u8; 2];
            server.read_exact(&mut got).await.map(|_| got)
        });
        client
            .send(Message::Ping(Bytes::from_static(b"hb")))
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut client).await,
            Message::Pong(Bytes::from_static(b"hb"))
        );
        // An unsolicited pong is ignored; the stream goes on.
        client.send(Message::Pong(Bytes::new())).await.unwrap();
        client
            .send(Message::Binary(vec![0xC0, 0].into()))
            .await
            .unwrap();
        assert_eq!(reading.await.unwrap().unwrap(), [0xC0, 0]);
    }

    #[tokio::test]
    async fn a_close_frame_is_answered_and_ends_the_stream() {
        let (mut server, mut client) = pair(1024).await;
        client
            .send(Message::Binary(vec![0xE0, 0].into()))
            .await
            .unwrap();
        client.close(None).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0xE0, 0]);
        // tungstenite's close completes only once our close frame arrived.
        assert!(matches!(
            tokio::time::timeout(PATIENCE, client.next()).await.unwrap(),
            None | Some(Ok(Message::Close(_)))
        ));
    }

    #[tokio::test]
    async fn shutdown_flushes_then_sends_a_close_frame() {
        let (mut server, mut client) = pair(1024).await;
        server.write_all(&[0xD0, 0]).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(
            next_message(&mut client).await,
            Message::Binary(vec![0xD0, 0].into())
        );
        assert_eq!(close_code(&mut client).await, CloseCode::Normal);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused() {
        let (mut server, mut client) = pair(64).await;
        client
            .send(Message::Binary(vec![0u8; 64].into()))
            .await
            .unwrap();
        let mut got = [1u8; 64];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0u8; 64]);
        client
            .send(Message::Binary(vec![0u8; 65].into()))
            .await
            .unwrap();
        let error = server.read(&mut got).await.unwrap_err();
        assert_eq!(
            violation(error),
            Violation::FrameTooLarge {
                size: 65,
                limit: 64
            }
        );
        assert_eq!(close_code(&mut client).await, CloseCode::Size);
    }

    /// Feeds raw frames (as a client would put them on the wire) to a fresh stream.
    async fn raw(frames: &[u8]) -> (Vec<u8>, io::Result<usize>) {
        let (mut client, server_io) = tokio::io::duplex(4096);
        let mut sent = request("Sec-WebSocket-Protocol: mqtt\r\n");
        sent.extend_from_slice(frames);
        client.write_all(&sent).await.unwrap();
        let mut server = accept(server_io, PATIENCE, 1024).await.unwrap();
        let mut got = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 64];
            match server.read(&mut chunk).await {
                Ok(0) => break Ok(0),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(e),
            }
        };
        (got, end)
    }

    #[tokio::test]
    async fn protocol_violations_end_the_stream() {
        let m = [0u8; 4]; // a zero mask keeps the bytes readable
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (vec![0x82, 0x01, 0xC0], Violation::Unmasked),
            ([&[0xC2, 0x80][..], &m].concat(), Violation::ReservedBits),
            (
                [&[0x83, 0x80][..], &m].concat(),
                Violation::ReservedOpcode(3),
            ),
            (
                [&[0x09, 0x80][..], &m].concat(),
                Violation::FragmentedControl,
            ),
            (
                [&[0x89, 0xFE, 0, 126][..], &m, &[0; 126]].concat(),
                Violation::ControlTooLong,
            ),
            (
                [&[0x80, 0x81][..], &m, &[1]].concat(),
                Violation::UnexpectedContinuation,
            ),
            (
                [&[0x02, 0x81][..], &m, &[1], &[0x82, 0x81], &m, &[2]].concat(),
                Violation::InterruptedMessage,
            ),
            ([&[0x88, 0x81][..], &m, &[3]].concat(), Violation::BadClose),
            (
                [&[0x82, 0xFF][..], &[0, 0, 0, 1, 0, 0, 0, 0], &m].concat(),
                Violation::FrameTooLarge {
                    size: 1 << 32,
                    limit: 1024,
                },
            ),
        ];
        for (frames, want) in cases {
            let (_, end) = raw(&frames).await;
            assert_eq!(violation(end.unwrap_err()), want, "{frames:02x?}");
        }
    }

    #[tokio::test]
    async fn empty_frames_and_extended_lengths_are_read() {
        let m = [9, 8, 7, 6];
        let masked = |bytes: &[u8]| -> Vec<u8> {
            bytes
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ m[i % 4])
                .collect()
        };
        let long: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let frames = [
            &[0x82, 0x80][..], // an empty binary frame
            &m,
            &[0x89, 0x80], // an empty ping
            &m,
            &[0x82, 0xFE, 0x01, 0x2C], // 300 bytes, 16-bit length
            &m,
            &masked(&long),
            &[0x88, 0x80], // an empty close
            &m,
            &[0x82, 0x81, 0, 0, 0, 0, 0xFF], // after the close: not read
        ]
        .concat();
        let (got, end) = raw(&frames).await;
        assert_eq!(got, long);
        assert_eq!(end.unwrap(), 0);
    }

    #[test]
    fn an_idle_stream_is_small() {
        // What an idle stream holds beside its transport: the struct (176 bytes on
        // 64-bit targets), no read buffer, and a write buffer of at most
        // IDLE_WRITE_BUFFER bytes (freed when larger).
        let overhead = std::mem::size_of::<WsStream<()>>();
        assert!(overhead <= 192, "WsStream costs {overhead} bytes");
    }
}
