//! One client connection: a task that reads packets, applies them to the shared state,
//! and writes what the session has for the client. Acknowledgements that promise
//! durability (PUBACK, PUBREC, SUBACK, UNSUBACK, CONNACK of a persistent session) are
//! written only after the store says the change is on disk; they queue up in order
//! (`pending`) so one client's packets are answered in the order they came.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::AsyncWrite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::auth::acl::Access;
use super::auth::realm::Refusal;
use super::codec::{
    Codec, ConnAck, Connect, Packet, ProtocolViolation, Publish, Qos, Version, Will, reason,
};
use super::listener::{Listener, Stream};
use super::session::{
    self, Attached, INCOMING, Identity, Message, Queued, Session, Subscription, encode_queued,
    incoming_key, queue_key,
};
use super::signal::{Ring, Signal};
use super::state::State;
use super::{Broker, now_ms, topic};
use crate::store::{Op, StoreError};

/// Sweeps in a row (250 ms apart) that must find a connection with nothing happening
/// before it parks: about a second without a packet in either direction.
const QUIET_SWEEPS_TO_PARK: u8 = 4;
/// How long a new connection may take to send CONNECT (after any TLS or WebSocket
/// handshake, which have their own deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write buffers above this are released when the connection is idle, so an
/// idle connection costs little memory.
const IDLE_BUFFER: usize = 4096;
/// Room made in the read buffer after a read that filled it. The buffer starts small
/// (an idle connection's costs little) and the decoder asks only for the rest of the
/// packet it is in, so without this a busy client is read one packet per system call;
/// with it, a read takes what a publisher wrote in one go (about 25 packets of a
/// 64-byte message), and they are handled as one batch (`settle`).
const READ_ROOM: usize = 2048;
/// Topics and payloads up to this size are copied out of the read buffer
/// ([`unshare_from_read_buffer`]).
const COPIED_BELOW: usize = 1024;

/// Gives a small publish's topic and payload their own allocations. The codec hands out
/// slices of the read buffer, and a slice keeps its whole buffer alive: a retained
/// message, a filter or a message queued for an offline session would otherwise pin a
/// [`READ_ROOM`]-sized block for as long as it lives. A large payload is most of its
/// buffer anyway and is not copied.
fn unshare_from_read_buffer(publish: &mut Publish) {
    if publish.payload.len() < COPIED_BELOW {
        publish.payload = bytes::Bytes::copy_from_slice(&publish.payload);
    }
    publish.topic = ByteString::from(&*publish.topic);
}

/// A commit in flight with what to do when it lands.
type Pending = Pin<Box<dyn Future<Output = (Result<(), StoreError>, After)> + Send>>;

/// Commits in flight, answered in order. The queue is made on first use, boxed, and
/// released when empty: most connections are idle, and an empty queue inline would
/// still cost its 64 bytes in every connection's task.
#[derive(Default)]
struct Commits(Option<Box<FuturesOrdered<Pending>>>);

impl Commits {
    fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(FuturesOrdered::is_empty)
    }

    fn push_back(&mut self, commit: Pending) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(commit);
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Result<(), StoreError>, After)>> {
        let Some(queue) = &mut self.0 else {
            return Poll::Ready(None);
        };
        let next = queue.poll_next_unpin(cx);
        if queue.is_empty() {
            self.0 = None;
        }
        next
    }
}

/// What to do once a commit is durable.
struct After {
    /// Packets to write, in order.
    replies: Vec<Packet>,
    /// Deliveries to push into session queues.
    deliveries: Vec<(ByteString, Queued)>,
    /// What to write instead when the commit failed (v5 reason 0x97); `None` closes
    /// the connection.
    on_error: Option<Vec<Packet>>,
    /// Inbound QoS 1 publishes finished (for the receive maximum).
    inbound_done: u32,
}

impl After {
    /// Only replies: nothing to deliver, a failed commit closes the connection.
    fn replies(replies: Vec<Packet>) -> Self {
        After {
            replies,
            deliveries: Vec::new(),
            on_error: None,
            inbound_done: 0,
        }
    }

    /// `next` after this, as one: its replies and deliveries follow these; a failure
    /// closes the connection if either would have.
    fn merge(&mut self, next: After) {
        self.replies.extend(next.replies);
        self.deliveries.extend(next.deliveries);
        self.on_error = match (self.on_error.take(), next.on_error) {
            (Some(mut these), Some(those)) => {
                these.extend(those);
                Some(these)
            }
            _ => None,
        };
        self.inbound_done += next.inbound_done;
    }
}

/// Why a connection ended.
pub(crate) enum End {
    /// The client sent DISCONNECT: no will (unless v5 reason 0x04).
    Normal { send_will: bool },
    /// Anything else: the will is sent.
    Abnormal(String),
}

/// Who is on the other end: a TCP peer, or a flow in this process.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    /// A client over TCP.
    Tcp(std::net::SocketAddr),
    /// An in-process client (a flow's `mqtt.in`/`mqtt.out` without `url`).
    Local,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(address) => address.fmt(f),
            Peer::Local => f.write_str("in-process"),
        }
    }
}

/// Where packets for the client go.
pub(crate) enum Output {
    /// Encoded into `out`, written to the stream on flush.
    Tcp { stream: Stream, out: BytesMut },
    /// Handed over as values on flush; a full channel holds this connection back as
    /// a full socket would. Boxed: network connections are the many, and each would
    /// pay for this variant's size.
    Local(Box<LocalOutput>),
}

impl Output {
    /// A network output with an empty write buffer.
    fn tcp(stream: Stream) -> Self {
        Output::Tcp {
            stream,
            out: BytesMut::new(),
        }
    }
}

/// The output of an in-process connection.
pub(crate) struct LocalOutput {
    tx: PollSender<Packet>,
    out: VecDeque<Packet>,
}

/// Where packets from the client come from.
pub(crate) enum Input {
    /// Bytes from the stream (held by `Output::Tcp`: the one task reads and writes
    /// it), decoded by the connection's codec.
    Tcp { rbuf: BytesMut },
    /// Packets as values.
    Local(mpsc::Receiver<Packet>),
}

/// What woke the connection's loop.
enum Event {
    /// The doorbell: deliveries, or close.
    Ring(Ring),
    /// A commit landed.
    Committed(Result<(), StoreError>, After),
    /// The client sent something (or left).
    Read(std::io::Result<Arrived>),
}

/// What one read brought.
enum Arrived {
    /// Bytes are in the read buffer.
    Bytes,
    /// One packet from an in-process client.
    Packet(Packet),
    /// The client is gone.
    Closed,
}

/// Serves one network connection until it ends.
pub(crate) fn serve(
    broker: Broker,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    listener: Arc<Listener>,
) -> ConnectionTask {
    ConnectionTask::Starting(Box::pin(start(broker, stream, peer, listener)))
}

/// Serves one in-process connection: `rx` carries the client's packets (CONNECT
/// first), `tx` the broker's. Everything after CONNECT is what a TCP client gets,
/// minus the codec and the keepalive.
pub(crate) fn serve_local(
    broker: Broker,
    rx: mpsc::Receiver<Packet>,
    tx: mpsc::Sender<Packet>,
) -> ConnectionTask {
    ConnectionTask::Starting(Box::pin(start_local(broker, rx, tx)))
}

/// A connection's task, written out by hand so that an idle connection costs the
/// `Connection` and its input and little else: an `async fn` keeps its arguments and
/// every await point's locals side by side, which more than tripled it.
// The running variant is large on purpose: it is the connection's state, kept inline
// so an idle connection is one allocation; the short-lived phases are boxed.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ConnectionTask {
    /// Handshakes, CONNECT and CONNACK.
    Starting(Pin<Box<dyn Future<Output = Started> + Send>>),
    /// Serving packets.
    Running(Running),
    /// Will, session expiry, shared-subscription hand-over.
    Finishing(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Handed to the parking lot (`park.rs`): the task ends, the connection does not.
    Parked,
    /// Over.
    Done,
}

impl ConnectionTask {
    /// Who is on the other end, once known to the running connection.
    pub(crate) fn peer(&self) -> Option<Peer> {
        match self {
            ConnectionTask::Running(running) => Some(*running.conn.peer),
            _ => None,
        }
    }

    /// Whether the task ended by parking its connection (which is still connected).
    pub(crate) fn parked(&self) -> bool {
        matches!(self, ConnectionTask::Parked)
    }

    /// Parks the running connection if it asked to and has nothing in progress.
    /// `Some(true)`: parked, this task is over; `Some(false)`: the attempt failed and
    /// changed the socket, so the connection must be polled again (its socket's waker
    /// went with the old registration); `None`: nothing was tried.
    fn try_park(&mut self) -> Option<bool> {
        let ConnectionTask::Running(running) = self else {
            return None;
        };
        if !std::mem::take(&mut running.conn.park) || !running.parkable() {
            return None;
        }
        let lot = running.conn.broker.parking_lot().cloned()?;
        if !lot.is_open() {
            return None;
        }
        let ConnectionTask::Running(Running {
            conn,
            input,
            closing,
        }) = std::mem::replace(self, ConnectionTask::Parked)
        else {
            unreachable!("matched above");
        };
        // Only the connection and its socket are kept: the input is an empty read buffer
        // and the output an empty write buffer, both made again on resuming, and nothing
        // is closing (`parkable`).
        let (conn, output) = conn.split_output();
        let tcp = match output {
            Output::Tcp {
                stream: Stream::Tcp(tcp),
                ..
            } => tcp,
            // `parkable` saw a plain TCP stream; should that ever change, the connection
            // runs on exactly as it was.
            output => {
                *self = ConnectionTask::Running(Running {
                    conn: conn.with_output(output),
                    input,
                    closing,
                });
                return None;
            }
        };
        let std = match tcp.into_std() {
            Ok(std) => std,
            Err(e) => {
                // The socket is gone with the failed hand-over: end as a failed read would.
                let mut running = Running::new(conn.with_output(Output::tcp(Stream::Closed)));
                running.close_with(format!("cannot park the connection: {e}"));
                *self = ConnectionTask::Running(running);
                return Some(false);
            }
        };
        match lot.park(Box::new(Parked(conn.with_output(std)))) {
            Ok(()) => Some(true),
            Err(parked) => {
                *self = (*parked).resume();
                Some(false)
            }
        }
    }
}

/// How the start of a connection ended.
pub(crate) enum Started {
    /// Accepted: serve it.
    Run(Connection, Input),
    /// Refused after the session was looked at: finish it.
    Finish(Connection, End),
    /// Nothing to finish (no CONNECT, a failed handshake).
    Gone,
}

/// A connection being served.
pub(crate) struct Running {
    conn: Connection,
    input: Input,
    /// Set when the connection must end once what is buffered is written (boxed: it
    /// is rare, and the task of every idle connection would carry it inline).
    closing: Option<Box<End>>,
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let task = self.get_mut();
        loop {
            match task {
                ConnectionTask::Starting(start) => match std::task::ready!(start.as_mut().poll(cx))
                {
                    Started::Run(conn, input) => {
                        *task = ConnectionTask::Running(Running {
                            conn,
                            input,
                            closing: None,
                        });
                    }
                    Started::Finish(conn, end) => {
                        *task = ConnectionTask::Finishing(Box::pin(conn.finish(end)));
                    }
                    Started::Gone => *task = ConnectionTask::Done,
                },
                ConnectionTask::Running(running) => {
                    let end = match running.poll_run(cx) {
                        Poll::Ready(end) => end,
                        Poll::Pending => match task.try_park() {
                            Some(true) => return Poll::Ready(()),
                            Some(false) => continue,
                            None => return Poll::Pending,
                        },
                    };
                    let ConnectionTask::Running(running) =
                        std::mem::replace(task, ConnectionTask::Done)
                    else {
                        unreachable!("matched above");
                    };
                    *task = ConnectionTask::Finishing(Box::pin(running.conn.finish(end)));
                }
                ConnectionTask::Finishing(finish) => {
                    std::task::ready!(finish.as_mut().poll(cx));
                    *task = ConnectionTask::Done;
                }
                ConnectionTask::Parked | ConnectionTask::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A parked connection (`park.rs`): its state without a task, its socket out of tokio's
/// reactor. Only what outlives idleness: the input and output (empty buffers) are made
/// again on resuming, which keeps a parked connection in a smaller allocation size
/// class.
pub(crate) struct Parked(Connection<std::net::TcpStream>);

impl Parked {
    /// The connection's id, unique in this broker's run.
    pub(crate) fn id(&self) -> u64 {
        self.0.conn_id
    }

    /// The connection's doorbell.
    pub(crate) fn signal(&self) -> &Arc<Signal> {
        &self.0.signal
    }

    /// The descriptor of the parked socket.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.output.as_raw_fd()
    }

    /// The connection's task again, its socket back in tokio's reactor. If the socket
    /// cannot go back, the task ends the connection (will, session expiry) the way a
    /// failed read would.
    pub(crate) fn resume(self) -> ConnectionTask {
        let (conn, std) = self.0.split_output();
        let running = match TcpStream::from_std(std) {
            Ok(tcp) => Running::new(conn.with_output(Output::tcp(Stream::Tcp(tcp)))),
            Err(e) => {
                let mut running = Running::new(conn.with_output(Output::tcp(Stream::Closed)));
                running.close_with(format!("cannot resume the connection: {e}"));
                running
            }
        };
        ConnectionTask::Running(running)
    }
}

impl Running {
    /// A network connection resumed, or put back after a park that did not happen: its
    /// read buffer is made when something arrives.
    fn new(conn: Connection) -> Self {
        Running {
            conn,
            input: Input::Tcp {
                rbuf: BytesMut::new(),
            },
            closing: None,
        }
    }

    /// Whether nothing is in progress: no commit or timer waiting, nothing buffered
    /// either way, no close under way, and a plain TCP socket to hand over.
    fn parkable(&self) -> bool {
        let output_idle = matches!(
            &self.conn.output,
            Output::Tcp { stream: Stream::Tcp(_), out } if out.is_empty()
        );
        let input_idle = matches!(&self.input, Input::Tcp { rbuf } if rbuf.is_empty());
        self.closing.is_none()
            && self.conn.pending.is_empty()
            && self.conn.store_ring.is_none()
            && output_idle
            && input_idle
    }

    /// Ends the connection at its next poll, as if a read had failed with `why`.
    fn close_with(&mut self, why: String) {
        self.closing = Some(Box::new(End::Abnormal(why)));
    }

    /// Serves the connection until it ends, ringing the store for quiet commits.
    ///
    /// A publish handed to subscribers now queues its commit without waking the store's
    /// writer (`on_publish`), so the writer thread does not take a core in the middle of
    /// the delivery. What answers it instead: usually the subscriber's acknowledgement,
    /// which withdraws the message's Put from the queue (`settle`), or wakes the writer
    /// when the writer already has it; failing that, the store's linger later, the
    /// timer armed here. It is disarmed once every commit of this connection is
    /// answered.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let polled = self.poll_events(cx);
        let stepped_aside = std::mem::take(&mut self.conn.stepped_aside);
        if self.conn.store_ring.is_some() {
            let ring = match &polled {
                Poll::Ready(_) => true,
                Poll::Pending if self.conn.pending.is_empty() => {
                    self.conn.store_ring = None;
                    false
                }
                // A turn that stepped aside is polled again soon whatever happens, and a
                // client publishing without pause may step aside on every turn: look at
                // the clock only, and register the timer (which wakes tokio's I/O
                // driver) on a turn after the deliveries are written.
                Poll::Pending if stepped_aside => self
                    .conn
                    .store_ring
                    .as_ref()
                    .is_some_and(|timer| timer.deadline() <= tokio::time::Instant::now()),
                Poll::Pending => self
                    .conn
                    .store_ring
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready()),
            };
            if ring {
                self.conn.store_ring = None;
                self.conn.broker.shared.store.ring();
            }
        }
        polled
    }

    /// Writes what is buffered, then waits for the next event and handles it, until
    /// the connection ends.
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            match self.conn.poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(
                        self.closing.take().map_or_else(
                            || End::Abnormal(format!("write failed: {e}")),
                            |end| *end,
                        ),
                    );
                }
                Poll::Pending => {
                    // A client that does not read holds its own connection back, never
                    // a takeover or a shutdown.
                    if self.closing.is_none()
                        && let Some(code) = self.conn.signal.kicked(cx)
                    {
                        return Poll::Ready(End::Abnormal(format!(
                            "closed by the broker (reason {code:#04x}) while writing"
                        )));
                    }
                    return Poll::Pending;
                }
            }
            if let Some(end) = self.closing.take() {
                return Poll::Ready(*end);
            }
            let event = std::task::ready!(self.conn.poll_event(cx, &mut self.input));
            if let Err(end) = self.conn.on_event(event, &mut self.input) {
                // Write what the ending queued (a DISCONNECT) before going.
                self.closing = Some(Box::new(end));
            } else if std::mem::take(&mut self.conn.handed_over) && self.conn.has_own_work() {
                // The connections just rung wait in this worker's LIFO slot until this
                // task returns; what it would do first (write its PUBACK, arm the store's
                // timer) would be latency on their deliveries. tokio's deferred yield
                // brings it back on this worker once the worker has run out of other work
                // (or at its periodic maintenance). Measured in docs/benchmarks.md.
                self.conn.stepped_aside = true;
                let mut step_aside = std::pin::pin!(tokio::task::yield_now());
                let _ = step_aside.as_mut().poll(cx);
                return Poll::Pending;
            }
        }
    }
}

/// Handshakes, CONNECT and CONNACK of a network connection.
async fn start(
    broker: Broker,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    listener: Arc<Listener>,
) -> Started {
    let max_packet = broker.shared.config.max_packet_size as usize;
    let transport = match listener.open(stream, max_packet).await {
        Ok(transport) => transport,
        Err(e) => {
            tracing::debug!(%peer, "handshake failed: {e}");
            return Started::Gone;
        }
    };
    let (mut stream, cert_name) = (transport.stream, transport.cert_name);
    let mut codec = Codec::new(broker.shared.config.max_packet_size);
    let mut rbuf = BytesMut::new();
    // CONNECT first, within a deadline.
    let connect = Box::pin(tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match codec.decode(&mut rbuf) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => unreachable!("the codec refuses anything before connect"),
                Ok(None) => {}
                Err(violation) => return Err(Some(violation)),
            }
            match stream.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
    }))
    .await;
    let connect = match connect {
        Ok(Ok(connect)) => connect,
        Ok(Err(None)) => {
            tracing::debug!(%peer, "closed before connect");
            return Started::Gone;
        }
        Ok(Err(Some(violation))) => {
            // An unsupported version and a rejected client id get a CONNACK that says
            // so; anything else is closed without one [MQTT-4.8.0-1].
            tracing::info!(%peer, "connection refused: {violation}");
            if let Some(refusal) = codec.connect_refusal(&violation) {
                let _ = stream.write_all(&refusal).await;
                let _ = stream.shutdown().await;
            }
            return Started::Gone;
        }
        Err(_) => {
            tracing::debug!(%peer, "no connect within {CONNECT_TIMEOUT:?}; closing");
            return Started::Gone;
        }
    };
    let output = Output::tcp(stream);
    // Nor a read buffer, when the CONNECT came alone.
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    let login = Login {
        realm: listener.index,
        anonymous: listener.anonymous.clone(),
        cert_name,
        identity_is_username: listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.identity_is_username()),
    };
    let plain = matches!(
        output,
        Output::Tcp {
            stream: Stream::Tcp(_),
            ..
        }
    );
    let conn = Connection::new(broker, codec, output, Peer::Tcp(peer));
    if plain {
        conn.signal.set_parkable();
    }
    conn.start(connect, Input::Tcp { rbuf }, Some(login)).await
}

/// What a network connection brings to authentication besides its CONNECT.
struct Login {
    /// The listener's realm.
    realm: usize,
    /// The listener's identity for clients without a username, shared by all of them.
    anonymous: Arc<Identity>,
    /// The Common Name of a verified client certificate.
    cert_name: Option<String>,
    /// `use_identity_as_username`: the certificate name is the username.
    identity_is_username: bool,
}

/// CONNECT and CONNACK of an in-process connection.
async fn start_local(
    broker: Broker,
    mut rx: mpsc::Receiver<Packet>,
    tx: mpsc::Sender<Packet>,
) -> Started {
    let connect = match rx.recv().await {
        Some(Packet::Connect(connect)) => connect,
        Some(other) => {
            tracing::warn!("in-process client sent {other:?} before CONNECT; closing");
            return Started::Gone;
        }
        None => return Started::Gone,
    };
    let codec = Codec::new(broker.shared.config.max_packet_size);
    let output = Output::Local(Box::new(LocalOutput {
        tx: PollSender::new(tx),
        out: VecDeque::new(),
    }));
    let conn = Connection::new(broker, codec, output, Peer::Local);
    conn.start(connect, Input::Local(rx), None).await
}

/// The v5 topic aliases of one connection.
#[derive(Default)]
struct Aliases {
    /// Set up by the client (alias -> topic).
    inbound: HashMap<u16, ByteString>,
    /// Set up by us towards the client (topic -> alias).
    outbound: HashMap<ByteString, NonZeroU16>,
}

/// Whether `ops` write anything new (a request the store refuses over its quota).
fn puts(ops: &[Op]) -> bool {
    ops.iter().any(|op| matches!(op, Op::Put { .. }))
}

/// Packets of one read handled before their batch is settled: a read that took a
/// large buffer of small packets settles in bounded pieces (store requests, session
/// queue overshoot).
const BATCH_PACKETS: usize = 256;

/// What the packets of one read leave to do together once the read is handled
/// ([`Connection::settle`]): under load a read holds many publishes or acknowledgements,
/// and one store request, one pass over the shared state and one wake-up per subscriber
/// for all of them cost the connection less than one each.
#[derive(Default)]
struct Batch {
    /// Lazy deletes of the acknowledged deliveries' queue entries, in order.
    deletes: Vec<Op>,
    /// Queue keys of acknowledged QoS 1 deliveries to a persistent session: each was
    /// created by one Put, which the store may still withdraw instead of deleting.
    consumed: Vec<Vec<u8>>,
    /// A delivery left flight: the window has room for queued messages.
    pump: bool,
    /// The publishes' durable operations, committed as one request.
    ops: Vec<Op>,
    /// What to do once `ops` are durable (the publishes' replies, in order).
    after: Option<After>,
    /// Deliveries handed to their sessions now, once `ops` are queued in the store.
    now: Vec<(ByteString, Queued)>,
    /// Publishes and acknowledgements in it (settled at [`BATCH_PACKETS`]).
    packets: usize,
}

impl Batch {
    /// Adds a publish's commit: `ops` join the batch's, `after` runs after all of them.
    fn commit(&mut self, ops: Vec<Op>, after: After) {
        self.ops.extend(ops);
        match &mut self.after {
            Some(merged) => merged.merge(after),
            None => self.after = Some(after),
        }
    }
}

/// One client's connection. `O` is where its packets go: an [`Output`] while it runs, the
/// bare socket while it is parked (`Parked`), which keeps a parked connection in a
/// smaller allocation size class and makes writing to a parked socket a type error.
pub(crate) struct Connection<O = Output> {
    broker: Broker,
    /// Decodes the client's bytes and encodes ours (TCP only).
    codec: Codec,
    output: O,
    /// Boxed: only logs read it, and 32 bytes inline would push every idle
    /// connection's task into the next size class.
    peer: Box<Peer>,
    client_id: ByteString,
    version: Version,
    conn_id: u64,
    /// Rung by routing (deliveries) and by takeover, shutdown and the keepalive sweep.
    signal: Arc<Signal>,
    /// Who a network client logged in as (for the ACL); `None` in-process.
    identity: Option<Arc<Identity>>,
    /// Boxed: most connections have none, and every byte here is paid per connection.
    will: Option<Box<Will>>,
    /// v5 topic aliases, made on first use: two empty maps inline would cost every
    /// connection 96 bytes.
    aliases: Option<Box<Aliases>>,
    client_alias_max: u16,
    /// Outbound inflight window.
    window: u16,
    /// Commits in flight, answered in order.
    pending: Commits,
    /// Inbound QoS 1/2 publishes not yet acknowledged (receive maximum).
    inbound_unacked: u32,
    /// Closed because a new connection took the session over.
    taken_over: bool,
    /// A DISCONNECT went out: nothing may follow it [MQTT-3.14.4-1].
    disconnect_sent: bool,
    /// Something happened since the keepalive sweep last asked the connection to park.
    busy: bool,
    /// Sweeps in a row that asked the connection to park and found nothing had happened
    /// since the one before (saturating).
    quiet_sweeps: u8,
    /// Idle for `QUIET_SWEEPS_TO_PARK` sweeps: parks once nothing is in progress.
    park: bool,
    /// Set while a commit queued without waking the store's writer is unanswered: when
    /// it fires, the writer is rung (see `Running::poll_run`). Boxed and made on use: a
    /// timer is large, and only publishing connections ever arm one.
    store_ring: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Deliveries were just handed to other connections: this one steps aside before
    /// writing its own replies, so theirs go out first (see `Running::poll_events`).
    handed_over: bool,
    /// This turn stepped aside for the deliveries it handed over: the store's timer is
    /// only compared with the clock, and registered on a later turn (`Running::poll_run`).
    stepped_aside: bool,
}

impl<O> Connection<O> {
    /// The connection with `output` in place of its own, and its own.
    fn replace_output<N>(self, output: N) -> (Connection<N>, O) {
        let Connection {
            output: old,
            broker,
            codec,
            peer,
            client_id,
            version,
            conn_id,
            signal,
            identity,
            will,
            aliases,
            client_alias_max,
            window,
            pending,
            inbound_unacked,
            taken_over,
            disconnect_sent,
            busy,
            quiet_sweeps,
            park,
            store_ring,
            handed_over,
            stepped_aside,
        } = self;
        let conn = Connection {
            output,
            broker,
            codec,
            peer,
            client_id,
            version,
            conn_id,
            signal,
            identity,
            will,
            aliases,
            client_alias_max,
            window,
            pending,
            inbound_unacked,
            taken_over,
            disconnect_sent,
            busy,
            quiet_sweeps,
            park,
            store_ring,
            handed_over,
            stepped_aside,
        };
        (conn, old)
    }

    /// The connection with its output taken out, and that output.
    fn split_output(self) -> (Connection<()>, O) {
        self.replace_output(())
    }
}

impl Connection<()> {
    /// The connection with `output` put in.
    fn with_output<O>(self, output: O) -> Connection<O> {
        self.replace_output(output).0
    }
}

impl Connection {
    fn new(broker: Broker, codec: Codec, output: Output, peer: Peer) -> Self {
        let conn_id = broker.next_connection_id();
        let signal = Arc::new(Signal::new(broker.clock_ms()));
        Connection {
            broker,
            codec,
            output,
            peer: Box::new(peer),
            client_id: ByteString::new(),
            version: Version::V311,
            conn_id,
            signal,
            identity: None,
            will: None,
            aliases: None,
            client_alias_max: 0,
            window: 1,
            pending: Commits::default(),
            inbound_unacked: 0,
            taken_over: false,
            disconnect_sent: false,
            busy: true,
            quiet_sweeps: 0,
            park: false,
            store_ring: None,
            handed_over: false,
            stepped_aside: false,
        }
    }

    /// CONNECT: accepted, or refused and to be finished.
    async fn start(mut self, connect: Box<Connect>, input: Input, login: Option<Login>) -> Started {
        let mut input = input;
        let accepted = match self.accept(connect, login).await {
            // Packets that arrived with the CONNECT.
            Ok(()) => match &mut input {
                Input::Tcp { rbuf, .. } => self.decode_all(rbuf),
                Input::Local(_) => Ok(()),
            },
            Err(end) => Err(end),
        };
        match accepted {
            Ok(()) => Started::Run(self, input),
            Err(end) => Started::Finish(self, end),
        }
    }

    fn send(&mut self, packet: Packet) {
        if self.disconnect_sent {
            return;
        }
        self.disconnect_sent = matches!(packet, Packet::Disconnect(..));
        match &mut self.output {
            Output::Tcp { out, .. } => {
                let delivery = match &packet {
                    Packet::Publish(publish) => publish.packet_id,
                    _ => None,
                };
                if let Err(e) = self.codec.encode(packet, out) {
                    tracing::debug!(client = %self.client_id, "{e}");
                    if let Some(id) = delivery {
                        self.discard_inflight(id);
                    }
                }
            }
            Output::Local(local) => local.out.push_back(packet),
        }
    }

    /// A QoS 1/2 delivery that cannot be sent (larger than the client accepts) is
    /// over, as if it had been acknowledged [MQTT-3.1.2-25].
    fn discard_inflight(&mut self, id: NonZeroU16) {
        let durable = self.broker.shared.durable();
        let mut state = self.broker.state();
        let Some(session) = state.sessions.get_mut(&self.client_id) else {
            return;
        };
        // After a takeover the id may already name another message, sent by the new
        // connection; this one's copy is in that connection's resend, which meets the
        // same limit and discards it there.
        if !session.attached_to(self.conn_id) {
            return;
        }
        let persistent = session.persistent();
        if let Some(queued) = session.inflight.remove(&id.get())
            && durable
            && persistent
        {
            self.broker.shared.store.commit_lazy(vec![Op::Delete {
                table: session::QUEUE,
                key: queue_key(&self.client_id, queued.seq),
            }]);
        }
        drop(state);
        self.signal.wake();
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Writes what is buffered for the client; `Pending` while the client (or its
    /// channel) does not take more.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.output {
            Output::Tcp { stream, out } => {
                while !out.is_empty() {
                    let n = std::task::ready!(Pin::new(&mut *stream).poll_write(cx, out))?;
                    if n == 0 {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    bytes::Buf::advance(out, n);
                }
                if out.capacity() > IDLE_BUFFER {
                    *out = BytesMut::new();
                }
                // TLS and WebSocket streams send on flush (a frame per flush).
                Pin::new(stream).poll_flush(cx)
            }
            Output::Local(local) => {
                let LocalOutput { tx, out } = &mut **local;
                while !out.is_empty() {
                    if std::task::ready!(tx.poll_reserve(cx)).is_err() {
                        return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
                    }
                    let packet = out.pop_front().expect("not empty");
                    if tx.send_item(packet).is_err() {
                        return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// CONNECT: sets up or resumes the session and answers CONNACK.
    async fn accept(&mut self, connect: Box<Connect>, login: Option<Login>) -> Result<(), End> {
        let config = &self.broker.shared.config;
        self.version = connect.version;
        let mut ack = ConnAck {
            receive_max: config.receive_maximum,
            retain_available: true,
            max_packet_size: Some(config.max_packet_size),
            topic_alias_max: config.topic_alias_maximum,
            ..ConnAck::default()
        };
        // Client id: assigned when empty (v3.1.1 only with clean session, which the
        // codec enforces; v5 always) [MQTT-3.1.3-6].
        // A copy: the decoded id is a slice of the read buffer, and the session would
        // keep that whole buffer alive for as long as it lives.
        let mut client_id = ByteString::from(&*connect.client_id);
        if client_id.is_empty() {
            if connect.version == Version::V31 {
                ack.reason = reason::CLIENT_ID_NOT_VALID;
                self.send(Packet::ConnAck(ack));
                let _ = self.flush().await;
                return Err(End::Abnormal("empty client id on mqtt 3.1".into()));
            }
            client_id = format!("hw-{:016x}", rand_id(self.conn_id)).into();
            if connect.version == Version::V5 {
                ack.assigned_client_id = Some(client_id.clone());
            }
        }
        if self.broker.shared.connections() > config.max_connections {
            ack.reason = reason::SERVER_BUSY;
            self.send(Packet::ConnAck(ack));
            let _ = self.flush().await;
            return Err(End::Abnormal("max_connections reached".into()));
        }
        // Who the client is, before anything of its session is touched.
        if let Some(login) = login {
            let broker = self.broker.clone();
            match Self::authenticate(&broker, &connect, login, &client_id).await {
                Ok(identity) => self.identity = Some(identity),
                Err((code, why)) => {
                    tracing::info!(peer = %self.peer, client = %client_id, "connection refused: {why}");
                    ack.reason = code;
                    self.send(Packet::ConnAck(ack));
                    let _ = self.flush().await;
                    return Err(End::Abnormal(why));
                }
            }
        }
        // Keepalive: never more than max_keepalive; v5 clients are told [MQTT-3.2.2-21].
        let mut keep_alive = connect.keep_alive;
        if keep_alive == 0 || keep_alive > config.max_keepalive {
            if connect.version == Version::V5 && config.max_keepalive < 65535 {
                keep_alive = config.max_keepalive;
                ack.server_keep_alive = Some(keep_alive);
            } else if keep_alive > config.max_keepalive {
                keep_alive = config.max_keepalive;
            }
        }
        // The client must be heard from within 1.5 x keepalive [MQTT-3.1.2-24].
        // An in-process client cannot go silent the way a network peer can.
        if keep_alive > 0 && self.watched() {
            self.signal.heard(self.broker.clock_ms());
            self.signal.set_patience(u64::from(keep_alive) * 1500);
        }
        self.client_alias_max = connect.topic_alias_max;
        // `max_inflight_messages` bounds network clients; a flow sets its own window.
        let window = match *self.peer {
            // 0 is no limit, as in Mosquitto.
            Peer::Tcp(_) if config.max_inflight_messages > 0 => {
                connect.receive_max.min(config.max_inflight_messages)
            }
            Peer::Tcp(_) => connect.receive_max,
            Peer::Local => connect.receive_max,
        };
        self.window = window.max(1);
        self.codec.set_max_outgoing(connect.max_packet_size);
        self.will = connect.will.clone().map(Box::new);
        self.client_id = client_id.clone();

        let durable = self.broker.shared.durable();
        let mut ops = Vec::new();
        let session_present;
        {
            let mut state = self.broker.state();
            // Takeover: the old connection is closed [MQTT-3.1.4-3].
            if let Some(old) = state
                .sessions
                .get_mut(&client_id)
                .and_then(|s| s.attached.take())
            {
                old.signal.kick(reason::SESSION_TAKEN_OVER);
                tracing::info!(client = %client_id, "session taken over by a new connection");
            }
            let resume = !connect.clean_start && state.sessions.contains_key(&client_id);
            if !resume {
                // A clean start erases what an earlier session left [MQTT-3.1.2-4].
                // Only a session that was ever stored has anything on disk to erase;
                // a clean client's CONNACK then needs no fsync.
                let earlier = state.remove_session(&client_id);
                if durable && earlier.is_some_and(|s| s.stored) {
                    ops.extend(Session::erase_ops(&client_id));
                }
                state.sessions.insert(
                    client_id.clone(),
                    Box::new(Session::new(connect.session_expiry, connect.version)),
                );
            }
            let session = state.sessions.get_mut(&client_id).expect("inserted above");
            session.expiry = connect.session_expiry;
            session.version = connect.version;
            session.identity = self.identity.clone();
            session.generation = session.generation.wrapping_add(1);
            session.attached = Some(Attached {
                id: self.conn_id,
                signal: self.signal.clone(),
            });
            session_present = resume;
            if durable && session.persistent() {
                ops.push(session.record_op(&client_id));
                session.stored = true;
            }
        }
        // A persistent session's CONNACK waits until the session is on disk.
        if !ops.is_empty()
            && let Err(e) = self.broker.shared.store.commit(ops).await
        {
            ack.reason = if matches!(e, StoreError::QuotaExceeded) {
                reason::QUOTA_EXCEEDED
            } else {
                reason::SERVER_UNAVAILABLE
            };
            self.send(Packet::ConnAck(ack));
            let _ = self.flush().await;
            return Err(End::Abnormal(format!("session could not be stored: {e}")));
        }
        ack.session_present = session_present;
        if connect.version == Version::V5 && connect.session_expiry != u32::MAX {
            ack.session_expiry = None;
        }
        self.send(Packet::ConnAck(ack));
        self.broker.shared.stats.clients_total_connects();
        tracing::info!(
            client = %self.client_id,
            peer = %self.peer,
            version = ?self.version,
            session_present,
            "client connected"
        );
        // Resend what was in flight, with DUP [MQTT-4.4.0-1], then the queue.
        let resend: Vec<Queued> = {
            let state = self.broker.state();
            state
                .sessions
                .get(&self.client_id)
                .map(|s| s.inflight.values().cloned().collect())
                .unwrap_or_default()
        };
        for queued in resend {
            let packet_id = queued.packet_id.expect("inflight has a packet id");
            if queued.released {
                self.send(Packet::PubRel(packet_id, 0));
            } else {
                let publish = self.outgoing_publish(&queued, Some(packet_id), true);
                self.send(Packet::Publish(Box::new(publish)));
            }
        }
        self.pump();
        self.flush()
            .await
            .map_err(|e| End::Abnormal(e.to_string()))?;
        // Many clients connect and then idle for hours: they keep no write buffer.
        if let Output::Tcp { out, .. } = &mut self.output
            && out.is_empty()
        {
            *out = BytesMut::new();
        }
        Ok(())
    }

    /// Checks a network client's credentials against its listener's realm, and that
    /// its will may be published; the identity the session keeps, or the CONNACK code
    /// and reason of a refusal.
    async fn authenticate(
        broker: &Broker,
        connect: &Connect,
        login: Login,
        client_id: &ByteString,
    ) -> Result<Arc<Identity>, (u8, String)> {
        let realm = broker.state().realms.get(login.realm).cloned();
        let Some(realm) = realm else {
            return Err((reason::NOT_AUTHORIZED, "the listener has no realm".into()));
        };
        let username = if login.identity_is_username {
            // The verified certificate is the credential; a password is not asked.
            match login.cert_name {
                Some(name) => Some(ByteString::from(name)),
                None => {
                    return Err((
                        reason::NOT_AUTHORIZED,
                        "no client certificate name to use as the username".into(),
                    ));
                }
            }
        } else {
            let (username, password) = (connect.username.clone(), connect.password.clone());
            let verdict = if realm.checks_passwords() && username.is_some() {
                // PBKDF2 is slow on purpose: off the runtime's workers.
                let checking = realm.clone();
                tokio::task::spawn_blocking(move || {
                    checking.authenticate(username.as_deref(), password.as_deref())
                })
                .await
                .unwrap_or(Err(Refusal::BadCredentials))
            } else {
                // Nothing to hash: no blocking thread (a pool thread per CONNECT
                // would cost more memory than the connection).
                realm.authenticate(username.as_deref(), password.as_deref())
            };
            match verdict {
                // A copy, as for the client id: the decoded name is a slice of the
                // read buffer.
                Ok(()) => connect.username.as_deref().map(ByteString::from),
                Err(Refusal::BadCredentials) => {
                    return Err((reason::BAD_CREDENTIALS, "bad username or password".into()));
                }
                Err(Refusal::NotAuthorized) => {
                    return Err((
                        reason::NOT_AUTHORIZED,
                        "anonymous clients are not allowed".into(),
                    ));
                }
            }
        };
        let identity = match username {
            None => login.anonymous,
            username => Arc::new(Identity {
                realm: u16::try_from(login.realm).unwrap_or(u16::MAX),
                username,
            }),
        };
        if let Some(will) = &connect.will
            && !broker
                .state()
                .realms
                .identity_may(client_id, &identity, &will.topic, Access::Write)
        {
            return Err((
                reason::NOT_AUTHORIZED,
                format!("the will's topic `{}` may not be written", will.topic),
            ));
        }
        Ok(identity)
    }

    /// Handles one event of the running connection.
    fn on_event(&mut self, event: Event, input: &mut Input) -> Result<(), End> {
        if matches!(event, Event::Ring(Ring::Park)) {
            // Nothing in either direction for `QUIET_SWEEPS_TO_PARK` sweeps (a subscriber
            // that only receives is busy while deliveries come): park, in
            // `ConnectionTask::poll`, once nothing is in progress.
            self.quiet_sweeps = if std::mem::take(&mut self.busy) {
                0
            } else {
                self.quiet_sweeps.saturating_add(1)
            };
            self.park = self.quiet_sweeps >= QUIET_SWEEPS_TO_PARK;
            // A quiet connection that cannot park (TLS, WebSocket) keeps no read room.
            if let Input::Tcp { rbuf } = input
                && rbuf.is_empty()
                && rbuf.capacity() > 0
            {
                *rbuf = BytesMut::new();
            }
            return Ok(());
        }
        self.busy = true;
        self.park = false;
        match event {
            Event::Ring(Ring::Park) => Ok(()),
            Event::Ring(Ring::Kick(code)) => {
                if self.version == Version::V5 {
                    self.send(Packet::Disconnect(code, None));
                }
                if code == reason::KEEP_ALIVE_TIMEOUT {
                    return Err(End::Abnormal("keepalive timeout".into()));
                }
                self.taken_over = code == reason::SESSION_TAKEN_OVER;
                Err(End::Abnormal(format!(
                    "closed by the broker (reason {code:#04x})"
                )))
            }
            Event::Committed(result, after) => self.complete(result, after),
            Event::Ring(Ring::Wake) => {
                self.pump();
                Ok(())
            }
            Event::Read(read) => {
                if self.watched() {
                    self.signal.heard(self.broker.clock_ms());
                }
                match (read, input) {
                    (Ok(Arrived::Closed), _) => {
                        Err(End::Abnormal("connection closed by the client".into()))
                    }
                    (Ok(Arrived::Bytes), Input::Tcp { rbuf, .. }) => {
                        // The read took all the room there was: more is probably waiting.
                        let filled = rbuf.len() == rbuf.capacity();
                        let handled = self.decode_all(rbuf);
                        if rbuf.is_empty() && rbuf.capacity() > IDLE_BUFFER {
                            *rbuf = BytesMut::new();
                        } else if filled {
                            rbuf.reserve(READ_ROOM);
                            // An empty buffer's reserve takes back its whole allocation,
                            // which one large packet may have made large.
                            if rbuf.is_empty() && rbuf.capacity() > IDLE_BUFFER {
                                *rbuf = BytesMut::with_capacity(READ_ROOM);
                            }
                        }
                        handled
                    }
                    (Ok(Arrived::Packet(packet)), _) => {
                        let mut batch = Batch::default();
                        let handled = self.handle(packet, &mut batch);
                        self.settle(batch);
                        handled
                    }
                    (Ok(Arrived::Bytes), Input::Local(_)) => Ok(()),
                    (Err(e), _) => Err(End::Abnormal(format!("read failed: {e}"))),
                }
            }
        }
    }

    /// Whether the keepalive sweep watches this connection: an in-process client
    /// cannot go silent the way a network peer can.
    fn watched(&self) -> bool {
        !matches!(*self.peer, Peer::Local)
    }

    /// The next thing to do, in priority order: close when told to, answer what the
    /// store made durable, send what the session has, read what the client sent.
    fn poll_event(&mut self, cx: &mut Context<'_>, input: &mut Input) -> Poll<Event> {
        let ring = self.signal.poll(cx);
        if let Poll::Ready(Ring::Kick(code)) = ring {
            return Poll::Ready(Event::Ring(Ring::Kick(code)));
        }
        if !self.pending.is_empty()
            && let Poll::Ready(Some((result, after))) = self.pending.poll_next(cx)
        {
            if ring.is_ready() {
                // The wake was taken from the doorbell: ring it again for the next turn.
                self.signal.wake();
            }
            return Poll::Ready(Event::Committed(result, after));
        }
        if let Poll::Ready(ring) = ring {
            return Poll::Ready(Event::Ring(ring));
        }
        match input {
            Input::Tcp { rbuf } => {
                let Output::Tcp { stream, .. } = &mut self.output else {
                    // Network input comes with network output; anything else is a
                    // connection with nothing to read from.
                    return Poll::Ready(Event::Read(Ok(Arrived::Closed)));
                };
                tokio_util::io::poll_read_buf(Pin::new(stream), cx, rbuf).map(|read| {
                    Event::Read(read.map(|n| match n {
                        0 => Arrived::Closed,
                        _ => Arrived::Bytes,
                    }))
                })
            }
            Input::Local(rx) => rx
                .poll_recv(cx)
                .map(|packet| Event::Read(Ok(packet.map_or(Arrived::Closed, Arrived::Packet)))),
        }
    }

    /// Handles every whole packet in `rbuf` as one batch, settled before returning (on
    /// a protocol error too: what came before it stands).
    fn decode_all(&mut self, rbuf: &mut BytesMut) -> Result<(), End> {
        let mut batch = Batch::default();
        let decoded = loop {
            match self.codec.decode(rbuf) {
                Ok(Some(packet)) => {
                    if let Err(end) = self.handle(packet, &mut batch) {
                        break Err(end);
                    }
                    if batch.packets >= BATCH_PACKETS {
                        self.settle(std::mem::take(&mut batch));
                    }
                }
                Ok(None) => break Ok(()),
                Err(violation) => break Err(self.violation(violation)),
            }
        };
        self.settle(batch);
        decoded
    }

    /// Closes for a protocol violation, with its reason code on v5 [MQTT-4.13.1-1].
    fn violation(&mut self, violation: ProtocolViolation) -> End {
        tracing::info!(client = %self.client_id, peer = %self.peer, "closing: {violation}");
        if self.version == Version::V5 {
            self.send(Packet::Disconnect(violation.reason_code(), None));
        }
        End::Abnormal(violation.to_string())
    }

    fn protocol_error(&mut self, code: u8, what: &str) -> End {
        tracing::info!(client = %self.client_id, peer = %self.peer, "closing: {what}");
        if self.version == Version::V5 {
            self.send(Packet::Disconnect(code, None));
        }
        End::Abnormal(what.to_string())
    }

    /// Handles one packet. Publishes and acknowledgements of deliveries leave their
    /// store requests and deliveries in `batch`; any other packet settles it first, so
    /// its replies and commits keep their order behind those of the packets before it.
    fn handle(&mut self, packet: Packet, batch: &mut Batch) -> Result<(), End> {
        if matches!(
            packet,
            Packet::Publish(_) | Packet::PubAck(..) | Packet::PubComp(..)
        ) {
            batch.packets += 1;
        } else {
            self.settle(std::mem::take(batch));
        }
        match packet {
            Packet::Publish(publish) => self.on_publish(*publish, batch),
            Packet::PubAck(id, _) => {
                self.on_ack(id, Qos::AtLeastOnce, batch);
                Ok(())
            }
            Packet::PubRec(id, code) => {
                self.on_pubrec(id, code);
                Ok(())
            }
            Packet::PubRel(id, _) => {
                self.on_pubrel(id);
                Ok(())
            }
            Packet::PubComp(id, _) => {
                self.on_ack(id, Qos::ExactlyOnce, batch);
                Ok(())
            }
            Packet::Subscribe {
                packet_id,
                subscription_id,
                filters,
            } => self.on_subscribe(packet_id, subscription_id, filters),
            Packet::Unsubscribe(packet_id, filters) => {
                self.on_unsubscribe(packet_id, filters);
                Ok(())
            }
            Packet::PingReq => {
                self.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(code, expiry) => {
                if let Some(expiry) = expiry {
                    let mut state = self.broker.state();
                    if let Some(session) = state.sessions.get_mut(&self.client_id) {
                        if session.expiry == 0 && expiry > 0 {
                            drop(state);
                            return Err(self.protocol_error(
                                reason::PROTOCOL_ERROR,
                                "session expiry set at disconnect after 0 at connect [MQTT-3.14.2-2]",
                            ));
                        }
                        session.expiry = expiry;
                    }
                }
                Err(End::Normal {
                    send_will: code == reason::DISCONNECT_WITH_WILL,
                })
            }
            Packet::Auth => Err(self.protocol_error(
                reason::PROTOCOL_ERROR,
                "enhanced authentication is not supported",
            )),
            other => Err(self.protocol_error(
                reason::PROTOCOL_ERROR,
                &format!("unexpected packet from a client: {other:?}"),
            )),
        }
    }

    fn on_publish(&mut self, mut publish: Publish, batch: &mut Batch) -> Result<(), End> {
        let shared = self.broker.shared.clone();
        shared.stats.received(publish.payload.len());
        unshare_from_read_buffer(&mut publish);
        // v5 topic aliases [MQTT-3.3.2-7..12].
        if let Some(alias) = publish.topic_alias {
            if alias.get() > shared.config.topic_alias_maximum {
                return Err(self
                    .protocol_error(reason::TOPIC_ALIAS_INVALID, "topic alias above the maximum"));
            }
            if publish.topic.is_empty() {
                let known = self
                    .aliases
                    .as_ref()
                    .and_then(|aliases| aliases.inbound.get(&alias.get()));
                match known {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return Err(self.protocol_error(
                            reason::PROTOCOL_ERROR,
                            "unknown topic alias [MQTT-3.3.4-7]",
                        ));
                    }
                }
            } else {
                self.aliases
                    .get_or_insert_default()
                    .inbound
                    .insert(alias.get(), publish.topic.clone());
            }
            publish.topic_alias = None;
        }
        let packet_id = publish.packet_id;
        let qos = publish.qos;
        if qos != Qos::AtMostOnce {
            self.inbound_unacked = self.inbound_unacked.saturating_add(1);
            if self.version == Version::V5
                && self.inbound_unacked > u32::from(shared.config.receive_maximum)
            {
                return Err(self.protocol_error(
                    reason::RECEIVE_MAX_EXCEEDED,
                    "more unacknowledged publishes than the receive maximum [MQTT-3.3.4-9]",
                ));
            }
        }
        let limit = shared.config.message_size_limit;
        let too_big = limit > 0 && publish.payload.len() > limit as usize;
        let durable = shared.durable();
        let mut ops = Vec::new();
        let mut deliveries = Vec::new();
        let mut matched = true;
        let mut duplicate = false;
        let mut denied = false;
        {
            let mut state = self.broker.state();
            if let Some(identity) = &self.identity
                && !state.realms.identity_may(
                    &self.client_id,
                    identity,
                    &publish.topic,
                    Access::Write,
                )
            {
                denied = true;
                tracing::debug!(client = %self.client_id, topic = %publish.topic, "publish refused by the ACL");
            }
            let persistent = state
                .sessions
                .get(&self.client_id)
                .is_some_and(|s| s.persistent());
            if qos == Qos::ExactlyOnce {
                let id = packet_id.expect("qos 2 has a packet id").get();
                let session = state
                    .sessions
                    .get_mut(&self.client_id)
                    .expect("attached session exists");
                // A PUBLISH whose id is still waiting for PUBREL is a resend: answer
                // PUBREC again, deliver nothing [MQTT-4.3.3-9].
                if !session.receive_qos2(id) {
                    duplicate = true;
                } else if durable && persistent {
                    ops.push(Op::Put {
                        table: INCOMING,
                        key: incoming_key(&self.client_id, id),
                        value: Vec::new(),
                    });
                }
            }
            if !duplicate && !too_big && !denied {
                publish.dup = false;
                publish.packet_id = None;
                let msg = Arc::new(Message {
                    publish,
                    received_ms: now_ms(),
                    from: self.client_id.clone(),
                });
                if msg.publish.retain
                    && let Some(op) = state.retain(&msg)
                {
                    ops.push(op);
                }
                let plan = state.route(&msg);
                matched = plan.matched;
                ops.extend(plan.ops);
                deliveries = plan.deliveries;
            }
        }
        if duplicate {
            // The original is still counted until its PUBCOMP.
            self.inbound_unacked = self.inbound_unacked.saturating_sub(1);
        }
        if too_big {
            tracing::debug!(client = %self.client_id, "publish over message_size_limit dropped");
        }
        // A refused publish is answered 0x87 on v5; v3 has no way to say it, and
        // Mosquitto acknowledges and drops it, as this does.
        let code = if too_big {
            reason::QUOTA_EXCEEDED
        } else if denied && self.version == Version::V5 {
            reason::NOT_AUTHORIZED
        } else if denied {
            reason::SUCCESS
        } else if !matched && self.version == Version::V5 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        };
        let reply = match (qos, packet_id) {
            (Qos::AtLeastOnce, Some(id)) => vec![Packet::PubAck(id, code)],
            (Qos::ExactlyOnce, Some(id)) => vec![Packet::PubRec(id, code)],
            _ => Vec::new(),
        };
        let on_error = match (self.version, qos, packet_id) {
            (Version::V5, Qos::AtLeastOnce, Some(id)) => {
                Some(vec![Packet::PubAck(id, reason::QUOTA_EXCEEDED)])
            }
            (Version::V5, Qos::ExactlyOnce, Some(id)) => {
                Some(vec![Packet::PubRec(id, reason::QUOTA_EXCEEDED)])
            }
            _ => None,
        };
        // QoS 0 needs nothing durable; QoS 1/2 acks wait for the store.
        if qos == Qos::AtMostOnce && !ops.is_empty() {
            // Behind the commits of the publishes read before it: a retained message
            // replaced twice in one read must end up as the second.
            self.settle(std::mem::take(batch));
            shared.store.commit_lazy(std::mem::take(&mut ops));
        }
        // Deliveries at QoS 0 and 1 go out now, before the commit: at worst a crash
        // before it makes the publisher resend (no PUBACK yet) and a QoS 1 subscriber
        // see a duplicate, which QoS 1 allows; the fsync stays out of their latency.
        // A QoS 2 delivery waits, or that resend would be a second copy of a message
        // delivered exactly once.
        let (later, now): (Vec<_>, Vec<_>) = deliveries
            .into_iter()
            .partition(|(_, queued)| queued.qos == Qos::ExactlyOnce);
        let after = After {
            replies: reply,
            deliveries: later,
            on_error,
            // A QoS 2 publish counts against the receive maximum until PUBCOMP
            // [MQTT-4.9.0-2]; see `on_pubrel`.
            inbound_done: u32::from(qos == Qos::AtLeastOnce),
        };
        if !(ops.is_empty() && after.replies.is_empty() && after.deliveries.is_empty()) {
            // The store refuses a whole request over its quota if it puts anything: a
            // publish that puts nothing (no subscriber, a retained clear) must not share
            // a verdict with one that does.
            if batch.after.is_some() && puts(&batch.ops) != puts(&ops) {
                self.settle(std::mem::take(batch));
            }
            batch.commit(ops, after);
        }
        batch.now.extend(now);
        Ok(())
    }

    /// Queues `after` behind a durable commit of `ops` (none when empty), in order
    /// with everything queued before.
    fn after_commit(&mut self, ops: Vec<Op>, after: After) {
        self.queue_after_commit(ops, after, false);
    }

    /// [`Connection::after_commit`]; `quiet` leaves the store's writer asleep until
    /// something else wakes it or the store's linger has passed (`Running::poll_run`).
    fn queue_after_commit(&mut self, ops: Vec<Op>, after: After, quiet: bool) {
        // Queued in the store now, so a delivery handed over before the commit lands
        // (see `on_publish`) cannot have its acknowledgement's delete overtake it.
        let commit = (!ops.is_empty()).then(|| {
            let store = &self.broker.shared.store;
            if quiet && !store.linger().is_zero() {
                let (commit, must_ring) = store.commit_quiet(ops);
                // A busy writer comes back for it by itself: no timer under load.
                if must_ring && self.store_ring.is_none() {
                    let at = tokio::time::Instant::now() + store.linger();
                    self.store_ring = Some(Box::pin(tokio::time::sleep_until(at)));
                }
                futures::future::Either::Left(commit)
            } else {
                futures::future::Either::Right(store.commit_queued(ops))
            }
        });
        self.pending.push_back(Box::pin(async move {
            let result = match commit {
                Some(commit) => commit.await,
                None => Ok(()),
            };
            (result, after)
        }));
    }

    /// A commit finished: write its replies and hand over its deliveries.
    fn complete(&mut self, result: Result<(), StoreError>, after: After) -> Result<(), End> {
        self.inbound_unacked = self.inbound_unacked.saturating_sub(after.inbound_done);
        match result {
            Ok(()) => {
                for reply in after.replies {
                    self.send(reply);
                }
                self.hand_over(after.deliveries);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, "store commit failed: {e}");
                self.release_refused_qos2(&after.replies);
                match after.on_error {
                    Some(packets) => {
                        for packet in packets {
                            self.send(packet);
                        }
                        Ok(())
                    }
                    // No way to say it in v3: close, the client resends after reconnecting.
                    None => Err(End::Abnormal(format!("store commit failed: {e}"))),
                }
            }
        }
    }

    /// The QoS 2 publishes whose PUBREC a failed commit replaces (v5 0x97, or the
    /// connection closes on v3) are over: the client sends no PUBREL for them, so their
    /// packet ids and receive-maximum slots are freed, and a resend after a reconnect
    /// is a new publish, not a duplicate to drop.
    fn release_refused_qos2(&mut self, replies: &[Packet]) {
        let ids: Vec<u16> = replies
            .iter()
            .filter_map(|reply| match reply {
                Packet::PubRec(id, _) => Some(id.get()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut state = self.broker.state();
        if let Some(session) = state.sessions.get_mut(&self.client_id) {
            for id in ids {
                if session.release_qos2(id) {
                    self.inbound_unacked = self.inbound_unacked.saturating_sub(1);
                }
            }
        }
    }

    fn on_pubrel(&mut self, id: NonZeroU16) {
        let durable = self.broker.shared.durable();
        let ops = {
            let mut state = self.broker.state();
            let Some(session) = state.sessions.get_mut(&self.client_id) else {
                return;
            };
            let known = session.release_qos2(id.get());
            if known {
                self.inbound_unacked = self.inbound_unacked.saturating_sub(1);
            }
            if known && durable && session.persistent() {
                vec![Op::Delete {
                    table: INCOMING,
                    key: incoming_key(&self.client_id, id.get()),
                }]
            } else {
                Vec::new()
            }
        };
        // PUBCOMP once the id is forgotten on disk too; else a crash would make the
        // client's next message with this id look like a resend.
        self.after_commit(
            ops,
            After::replies(vec![Packet::PubComp(id, reason::SUCCESS)]),
        );
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the client: the delivery is over and out of
    /// flight now; its queue entry's delete and the next deliveries wait in `batch` for
    /// the end of what was read ([`Connection::settle`]).
    fn on_ack(&mut self, id: NonZeroU16, qos: Qos, batch: &mut Batch) {
        let durable = self.broker.shared.durable();
        {
            let mut state = self.broker.state();
            let Some(session) = state.sessions.get_mut(&self.client_id) else {
                return;
            };
            let Some(queued) = session.inflight.get(&id.get()) else {
                return;
            };
            if queued.qos != qos || (qos == Qos::ExactlyOnce && !queued.released) {
                return;
            }
            let queued = session.inflight.remove(&id.get()).expect("checked");
            if durable && session.persistent() {
                // Losing this delete in a crash only means one more redelivery.
                let key = queue_key(&self.client_id, queued.seq);
                if qos == Qos::AtLeastOnce {
                    batch.consumed.push(key);
                } else {
                    // A QoS 2 entry is put again with its packet id (`pump`): not one Put.
                    batch.deletes.push(Op::Delete {
                        table: session::QUEUE,
                        key,
                    });
                }
            }
        }
        batch.pump = true;
    }

    /// Does what the packets of one read left in `batch`: the acknowledged deliveries'
    /// queue entries (withdrawn from the store's queue where still there, else deleted
    /// lazily), the publishes' commit (one request, answered in order with
    /// everything queued before), then their deliveries, then refills the window.
    fn settle(&mut self, mut batch: Batch) {
        let store = &self.broker.shared.store;
        for key in batch.consumed {
            // A message acknowledged before the store's writer took its Put: the
            // publisher's commit may now be answered without writing anything.
            if !store.withdraw_created(session::QUEUE, &key) {
                batch.deletes.push(Op::Delete {
                    table: session::QUEUE,
                    key,
                });
            }
        }
        if !batch.deletes.is_empty() {
            store.commit_lazy(batch.deletes);
        }
        if let Some(after) = batch.after {
            // Queues the commit first: see `after_commit`. Quietly when messages go out
            // now: the writer is woken after they are written (`Running::poll_run`).
            self.queue_after_commit(batch.ops, after, !batch.now.is_empty());
        }
        self.hand_over(batch.now);
        if batch.pump {
            self.pump();
        }
    }

    /// Whether anything of this connection's own is waiting: bytes or packets to write,
    /// or commits to answer.
    fn has_own_work(&self) -> bool {
        let unwritten = match &self.output {
            Output::Tcp { out, .. } => !out.is_empty(),
            Output::Local(local) => !local.out.is_empty(),
        };
        unwritten || !self.pending.is_empty()
    }

    /// Queues `deliveries` in their sessions and rings the connections they are for.
    fn hand_over(&mut self, deliveries: Vec<(ByteString, Queued)>) {
        if deliveries.is_empty() {
            return;
        }
        let wake = self.broker.state().apply(deliveries);
        for signal in wake {
            self.handed_over |= !Arc::ptr_eq(&signal, &self.signal);
            signal.wake();
        }
    }

    fn on_pubrec(&mut self, id: NonZeroU16, code: u8) {
        let durable = self.broker.shared.durable();
        let release = {
            let mut state = self.broker.state();
            let Some(session) = state.sessions.get_mut(&self.client_id) else {
                return;
            };
            let persistent = session.persistent();
            let Some(queued) = session.inflight.get_mut(&id.get()) else {
                // Unknown id: still release it so the client can free it.
                drop(state);
                self.send(Packet::PubRel(id, reason::PACKET_ID_NOT_FOUND));
                return;
            };
            if code >= 0x80 {
                // v5: the receiver refused it; the delivery ends here [MQTT-4.3.3-4].
                let seq = queued.seq;
                session.inflight.remove(&id.get());
                if durable && persistent {
                    self.broker.shared.store.commit_lazy(vec![Op::Delete {
                        table: session::QUEUE,
                        key: queue_key(&self.client_id, seq),
                    }]);
                }
                None
            } else {
                queued.released = true;
                // Durable before PUBREL: after a crash the broker must resend PUBREL,
                // not the PUBLISH, or a client that already completed it would get
                // the message twice.
                Some((durable && persistent).then(|| Op::Put {
                    table: session::QUEUE,
                    key: queue_key(&self.client_id, queued.seq),
                    value: encode_queued(queued),
                }))
            }
        };
        match release {
            None => self.pump(),
            Some(op) => self.after_commit(
                op.into_iter().collect(),
                After::replies(vec![Packet::PubRel(id, 0)]),
            ),
        }
    }

    fn on_subscribe(
        &mut self,
        packet_id: NonZeroU16,
        subscription_id: Option<std::num::NonZeroU32>,
        filters: Vec<(ByteString, super::codec::SubscriptionOptions)>,
    ) -> Result<(), End> {
        let mut codes = Vec::with_capacity(filters.len());
        let mut deliveries = Vec::new();
        let mut ops = Vec::new();
        {
            let mut state = self.broker.state();
            for (raw, options) in filters {
                // Kept for the session's life: not a slice of the read buffer.
                let raw = ByteString::from(&*raw);
                let filter = match topic::parse_filter(&raw) {
                    Ok(filter) => filter,
                    Err(why) => {
                        tracing::debug!(client = %self.client_id, "subscribe refused: {why}");
                        codes.push(if self.version == Version::V5 {
                            reason::TOPIC_FILTER_INVALID
                        } else {
                            0x80
                        });
                        continue;
                    }
                };
                if let Some(identity) = &self.identity
                    && !state.realms.identity_may(
                        &self.client_id,
                        identity,
                        &filter.filter,
                        Access::Subscribe,
                    )
                {
                    tracing::debug!(client = %self.client_id, filter = %raw, "subscribe refused by the ACL");
                    codes.push(if self.version == Version::V5 {
                        reason::NOT_AUTHORIZED
                    } else {
                        0x80
                    });
                    continue;
                }
                if filter.share_group.is_some() && options.no_local {
                    drop(state);
                    return Err(self.protocol_error(
                        reason::PROTOCOL_ERROR,
                        "no local on a shared subscription [MQTT-3.8.3-4]",
                    ));
                }
                let new = state.subscribe(
                    &self.client_id,
                    raw.clone(),
                    Subscription {
                        filter: filter.clone(),
                        options,
                        id: subscription_id,
                    },
                );
                codes.push(options.qos as u8);
                // Retained messages: at subscribe (0), only when new (1), never (2)
                // [MQTT-3.3.1-9..11].
                let send_retained = match options.retain_handling {
                    0 => true,
                    1 => new,
                    _ => false,
                };
                if send_retained {
                    for msg in state.retained_for(&filter) {
                        if let Some(identity) = &self.identity
                            && !state.realms.identity_may(
                                &self.client_id,
                                identity,
                                &msg.publish.topic,
                                Access::Read,
                            )
                        {
                            continue;
                        }
                        let seq = state.next_seq;
                        state.next_seq += 1;
                        deliveries.push((
                            self.client_id.clone(),
                            Queued {
                                seq,
                                qos: msg.publish.qos.min(options.qos),
                                retain: true,
                                subscription_ids: subscription_id.into_iter().collect(),
                                share: None,
                                packet_id: None,
                                released: false,
                                msg,
                            },
                        ));
                    }
                }
            }
            ops.extend(self.session_record(&state));
        }
        self.after_commit(
            ops,
            After {
                deliveries,
                ..After::replies(vec![Packet::SubAck(packet_id, codes)])
            },
        );
        Ok(())
    }

    /// The store write of this client's session record (its subscriptions), when the
    /// session is persistent and the broker durable.
    fn session_record(&self, state: &State) -> Option<Op> {
        let session = state.sessions.get(&self.client_id)?;
        (self.broker.shared.durable() && session.persistent())
            .then(|| session.record_op(&self.client_id))
    }

    fn on_unsubscribe(&mut self, packet_id: NonZeroU16, filters: Vec<ByteString>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut ops = Vec::new();
        {
            let mut state = self.broker.state();
            for raw in filters {
                codes.push(if state.unsubscribe(&self.client_id, &raw) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                });
            }
            ops.extend(self.session_record(&state));
        }
        self.after_commit(
            ops,
            After::replies(vec![Packet::UnsubAck(packet_id, codes)]),
        );
    }

    /// The PUBLISH for one delivery, with v5 extras (expiry left, subscription ids,
    /// an outbound topic alias).
    fn outgoing_publish(
        &mut self,
        queued: &Queued,
        packet_id: Option<NonZeroU16>,
        dup: bool,
    ) -> Publish {
        let mut publish = queued.msg.publish.clone();
        publish.qos = queued.qos;
        publish.retain = queued.retain;
        publish.dup = dup;
        publish.packet_id = packet_id;
        if self.version == Version::V5 {
            publish.subscription_ids = queued.subscription_ids.clone();
            if let Some(left) = queued.msg.expiry_left(now_ms()) {
                publish.properties.message_expiry = Some(left.max(1));
            }
            if self.client_alias_max > 0 {
                let outbound = &mut self.aliases.get_or_insert_default().outbound;
                if let Some(alias) = outbound.get(&publish.topic) {
                    publish.topic_alias = Some(*alias);
                    publish.topic = ByteString::new();
                } else if outbound.len() < usize::from(self.client_alias_max) {
                    let alias = NonZeroU16::new(outbound.len() as u16 + 1).expect("starts at 1");
                    outbound.insert(publish.topic.clone(), alias);
                    publish.topic_alias = Some(alias);
                }
            }
        } else {
            publish.properties = Default::default();
        }
        publish
    }

    /// Moves queued messages into flight while the window has room, and writes them.
    fn pump(&mut self) {
        let durable = self.broker.shared.durable();
        let now = now_ms();
        let mut sends = Vec::new();
        let mut durable_ops = Vec::new();
        {
            let mut state = self.broker.state();
            let Some(session) = state.sessions.get_mut(&self.client_id) else {
                return;
            };
            // A connection taken over may still be handling what it read before its
            // kick (a PUBACK that frees a slot). What it moved into flight now would go
            // to a socket on its way out, after the new connection resent the flight,
            // and would wait there for the client's next reconnect. The slot it freed
            // is the new connection's to fill: ring it.
            match &session.attached {
                Some(attached) if attached.id == self.conn_id => {}
                Some(attached) => {
                    let successor = attached.signal.clone();
                    drop(state);
                    successor.wake();
                    return;
                }
                None => return,
            }
            let persistent = session.persistent();
            while let Some(front) = session.queue.front() {
                if front.qos != Qos::AtMostOnce
                    && session.inflight.len() >= usize::from(self.window)
                {
                    break;
                }
                let mut queued = session.queue.pop_front().expect("front exists");
                if queued.msg.expiry_left(now) == Some(0) {
                    // Expired while queued [MQTT-3.3.2-5].
                    if durable && persistent && queued.qos != Qos::AtMostOnce {
                        durable_ops.push(Op::Delete {
                            table: session::QUEUE,
                            key: queue_key(&self.client_id, queued.seq),
                        });
                    }
                    continue;
                }
                if queued.qos == Qos::AtMostOnce {
                    sends.push((queued, None));
                    continue;
                }
                let Some(id) = session.next_packet_id() else {
                    session.queue.push_front(queued);
                    break;
                };
                queued.packet_id = Some(id);
                if durable && persistent && queued.qos == Qos::ExactlyOnce {
                    // The packet id of a QoS 2 delivery is on disk before the PUBLISH
                    // leaves, so a restart resends it with the same id and the client
                    // can recognise the duplicate.
                    durable_ops.push(Op::Put {
                        table: session::QUEUE,
                        key: queue_key(&self.client_id, queued.seq),
                        value: encode_queued(&queued),
                    });
                }
                session.inflight.insert(id.get(), queued.clone());
                sends.push((queued, Some(id)));
            }
        }
        if sends.is_empty() && durable_ops.is_empty() {
            return;
        }
        let mut packets = Vec::with_capacity(sends.len());
        for (queued, id) in &sends {
            let publish = self.outgoing_publish(queued, *id, false);
            self.broker.shared.stats.sent(publish.payload.len());
            packets.push(Packet::Publish(Box::new(publish)));
        }
        let needs_wait = sends
            .iter()
            .any(|(q, _)| q.qos == Qos::ExactlyOnce && durable);
        if needs_wait {
            self.after_commit(durable_ops, After::replies(packets));
        } else {
            if !durable_ops.is_empty() {
                self.broker.shared.store.commit_lazy(durable_ops);
            }
            for packet in packets {
                self.send(packet);
            }
        }
    }

    /// The connection ended: will, shared-subscription hand-over, session expiry.
    async fn finish(mut self, end: End) {
        // A quiet commit queued just before the end (packets that came with CONNECT,
        // say) has nobody left to ring for it.
        if self.store_ring.take().is_some() {
            self.broker.shared.store.ring();
        }
        // Answer what is already durable before going.
        while let Some((result, after)) =
            std::future::poll_fn(|cx| self.pending.poll_next(cx)).await
        {
            if self.complete(result, after).is_err() {
                break;
            }
        }
        let _ = self.flush().await;
        if self.client_id.is_empty() {
            return;
        }
        let (send_will, why) = match &end {
            End::Normal { send_will } => (*send_will, "disconnected".to_string()),
            End::Abnormal(why) => (true, why.clone()),
        };
        tracing::info!(client = %self.client_id, peer = %self.peer, reason = %why, "client disconnected");
        let broker = self.broker.clone();
        let mut expiry = None;
        let mut reroute = None;
        let mut generation = 0;
        let mut erase = None;
        {
            let mut state = broker.state();
            if let Some(session) = state.sessions.get_mut(&self.client_id)
                && session.attached_to(self.conn_id)
            {
                session.attached = None;
                session.generation = session.generation.wrapping_add(1);
                generation = session.generation;
                expiry = Some(session.expiry);
                let taken = state.take_shared(&self.client_id);
                if !taken.is_empty() {
                    reroute = Some(state.reroute_shared(&self.client_id, taken));
                }
                if expiry == Some(0)
                    && let Some(ended) = state.remove_session(&self.client_id)
                    && ended.stored
                    && broker.shared.durable()
                {
                    // It was persistent once (resumed with expiry 0 since): its record
                    // and messages go with it, or a restart would bring it back. Queued
                    // under the lock, so a new session of the same id is written after.
                    erase = Some(
                        broker
                            .shared
                            .store
                            .commit_queued(Session::erase_ops(&self.client_id)),
                    );
                }
            } else if state
                .sessions
                .get(&self.client_id)
                .is_some_and(|s| s.attached.is_some())
            {
                // Another connection has the session already, whether this one saw
                // the takeover or its own end first.
                self.taken_over = true;
            }
        }
        if let Some(erased) = erase {
            let _ = erased.await;
        }
        if let Some(plan) = reroute {
            let _ = broker.shared.store.commit(plan.ops).await;
            for notify in broker.state().apply(plan.deliveries) {
                notify.wake();
            }
        }
        // A will with a delay is dropped when a new connection for the client id came
        // before the delay ran out, which a takeover is [MQTT-3.1.2-8]; without a
        // delay it goes out at once.
        let will = self
            .will
            .take()
            .filter(|w| !(self.taken_over && w.delay > 0));
        if send_will && let Some(will) = will {
            broker.send_will(
                self.client_id.clone(),
                *will,
                generation,
                expiry.unwrap_or(0),
            );
        }
        if let Some(expiry) = expiry
            && expiry > 0
            && expiry != u32::MAX
        {
            broker.expire_later(self.client_id.clone(), generation, expiry);
        }
    }
}

/// A per-connection pseudo-random id for assigned client ids (no global RNG state).
fn rand_id(conn_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(conn_id);
    hasher.write_u64(now_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytestring::ByteString;

    use super::{Connection, Login};
    use crate::broker::codec::{Connect, Version};

    /// A broker that keeps everything in memory.
    fn memory_broker() -> super::Broker {
        let config = crate::broker::BrokerConfig {
            persistence: crate::broker::Persistence::Memory,
            ..Default::default()
        };
        super::Broker::open(config, std::path::Path::new("unused")).unwrap()
    }

    /// Both ends of a TCP connection on loopback: the client's, and the server's with
    /// its peer address.
    async fn connected() -> (
        tokio::net::TcpStream,
        tokio::net::TcpStream,
        std::net::SocketAddr,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        (client, stream, peer)
    }

    fn connect(client_id: &str, username: Option<&str>) -> Connect {
        Connect {
            version: Version::V311,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 60,
            session_expiry: 0,
            receive_max: 65535,
            max_packet_size: None,
            topic_alias_max: 0,
            will: None,
            username: username.map(ByteString::from),
            password: None,
            request_problem_info: false,
        }
    }

    /// Every anonymous client of a listener shares its one identity (an allocation per
    /// idle connection otherwise); a named client gets its own, in the same realm.
    #[tokio::test]
    async fn anonymous_clients_share_the_listeners_identity() {
        let broker = memory_broker();
        let listener = super::Listener::new(0, crate::broker::ListenerConfig::default()).unwrap();
        let login = || Login {
            realm: listener.index,
            anonymous: listener.anonymous.clone(),
            cert_name: None,
            identity_is_username: false,
        };
        let mut identities = Vec::new();
        for (client, username) in [("a", None), ("b", None), ("c", Some("carol"))] {
            let identity = Connection::authenticate(
                &broker,
                &connect(client, username),
                login(),
                &client.into(),
            )
            .await
            .unwrap_or_else(|(code, why)| panic!("refused ({code:#x}): {why}"));
            identities.push(identity);
        }
        assert!(Arc::ptr_eq(&identities[0], &identities[1]));
        assert!(Arc::ptr_eq(&identities[0], &listener.anonymous));
        assert!(!Arc::ptr_eq(&identities[0], &identities[2]));
        assert_eq!(identities[2].username.as_deref(), Some("carol"));
        assert_eq!(identities[2].realm, identities[0].realm);
    }

    /// A connection taken over that still handles what it read before its kick (say a
    /// PUBACK, which frees a slot in flight) must leave the session's queue to the new
    /// connection: what it moved into flight would go out on the old socket only.
    #[tokio::test]
    async fn a_connection_no_longer_attached_to_its_session_moves_nothing_into_flight() {
        use crate::broker::codec::Qos;
        use crate::broker::session::{Attached, Queued, Session, test_message};
        use crate::broker::signal::Signal;

        let broker = memory_broker();
        let (_client, stream, peer) = connected().await;
        // The codec encodes once it has read a CONNECT (it learns the version from it).
        let mut codec = super::Codec::new(broker.shared.config.max_packet_size);
        let mut connect =
            bytes::BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"[..]);
        assert!(matches!(
            codec.decode(&mut connect),
            Ok(Some(super::Packet::Connect(_)))
        ));
        let mut conn = Connection::new(
            broker.clone(),
            codec,
            super::Output::tcp(super::Stream::Tcp(stream)),
            super::Peer::Tcp(peer),
        );
        let client_id = ByteString::from("taken-over");
        conn.client_id = client_id.clone();
        let queued = Queued {
            seq: 1,
            msg: test_message("one"),
            qos: Qos::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            share: None,
            packet_id: None,
            released: false,
        };
        let attach = |id: u64| {
            let mut state = broker.state();
            let session = state
                .sessions
                .entry(client_id.clone())
                .or_insert_with(|| Box::new(Session::new(u32::MAX, Version::V311)));
            session.attached = Some(Attached {
                id,
                signal: Arc::new(Signal::new(0)),
            });
            if session.queue.is_empty() {
                session.queue.push_back(queued.clone());
            }
        };
        let in_flight = || broker.state().sessions[&client_id].inflight.len();

        // The new connection holds the session: the old one pumps nothing, and rings
        // the new one to fill the slot it may have freed.
        attach(conn.conn_id + 1);
        conn.pump();
        assert_eq!(in_flight(), 0);
        assert_eq!(broker.state().sessions[&client_id].queue.len(), 1);
        let successor = broker.state().sessions[&client_id]
            .attached
            .as_ref()
            .unwrap()
            .signal
            .clone();
        assert!(successor.rung(), "the new connection was not rung");

        // Attached to this connection, the same pump sends it.
        attach(conn.conn_id);
        conn.pump();
        assert_eq!(in_flight(), 1);
        assert!(broker.state().sessions[&client_id].queue.is_empty());
    }

    /// An idle connection costs its task's future for as long as it lives; this keeps
    /// that future from growing back unnoticed (docs/benchmarks.md has the RSS figure).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let broker = memory_broker();
        let (_client, stream, peer) = connected().await;
        let listener = std::sync::Arc::new(
            super::Listener::new(0, crate::broker::ListenerConfig::default()).unwrap(),
        );
        let task = super::serve(broker, stream, peer, listener);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task future: {size} bytes");
        eprintln!(
            "running {} = connection {} + input {}; session {}; signal {}",
            std::mem::size_of::<super::Running>(),
            std::mem::size_of::<super::Connection>(),
            std::mem::size_of::<super::Input>(),
            std::mem::size_of::<crate::broker::session::Session>(),
            std::mem::size_of::<crate::broker::signal::Signal>(),
        );
        // tokio adds 96 bytes of header and trailer, the spawn wrappers (`Guarded`, the
        // tracker) 16: up to 272 the task fits tokio's 128-byte-aligned 384, one more
        // byte costs 128.
        assert!(size <= 272, "the connection future grew to {size} bytes");
        // A parked connection is one allocation of this size: up to 160 it is in
        // mimalloc's 160-byte class, one more byte costs 32.
        let parked = std::mem::size_of::<super::Parked>();
        assert!(parked <= 160, "a parked connection grew to {parked} bytes");
        // Every client's session is one allocation of this size (mimalloc's 128-byte
        // class; one more byte costs 32).
        let session = std::mem::size_of::<crate::broker::session::Session>();
        assert!(session <= 128, "a session grew to {session} bytes");
    }
}
