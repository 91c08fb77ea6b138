//! Listeners: the accept loops, and each connection's transport (TCP, TLS, WebSocket,
//! WebSocket over TLS), which is set up inside the connection's own task so a slow
//! handshake never holds up the accept loop or other clients.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::config::{ListenerConfig, ListenerProtocol};
use super::session::Identity;
use super::tls::{TlsAcceptor, TlsError};
use super::ws;

/// How long a TLS handshake or a WebSocket upgrade may take; a slow one ends only its
/// own connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
use super::{Broker, connection};

/// A byte stream a client speaks MQTT over, once any handshake is done.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A configured listener as the accept loop and its connections see it.
pub(crate) struct Listener {
    /// Position in `broker.listeners`: selects the listener's authentication realm
    /// under `per_listener_settings`.
    pub index: usize,
    /// Its settings.
    pub config: ListenerConfig,
    /// TLS, when configured; reloaded in place.
    pub tls: Option<TlsAcceptor>,
    /// The identity of every client without a username on this listener: one shared
    /// value rather than an allocation per connection.
    pub anonymous: Arc<Identity>,
}

/// A client's stream, once any handshake is done.
pub(crate) struct Transport {
    /// Bytes from and to the client.
    pub stream: Stream,
    /// The Common Name of a verified client certificate.
    pub cert_name: Option<String>,
}

impl Listener {
    /// Makes the listener of `config` (reads its TLS files).
    pub fn new(index: usize, config: ListenerConfig) -> Result<Listener, TlsError> {
        let tls = config
            .tls
            .enabled()
            .then(|| TlsAcceptor::new(&config.tls))
            .transpose()?;
        let anonymous = Arc::new(Identity {
            realm: u16::try_from(index).unwrap_or(u16::MAX),
            username: None,
        });
        Ok(Listener {
            index,
            config,
            tls,
            anonymous,
        })
    }

    /// Runs the handshakes this listener demands on a new TCP connection, each within
    /// `HANDSHAKE_TIMEOUT`: TLS first, then the WebSocket upgrade (for `wss`).
    pub async fn open(&self, stream: TcpStream, max_packet: usize) -> io::Result<Transport> {
        let _ = stream.set_nodelay(true);
        let websockets = self.config.protocol == ListenerProtocol::Websockets;
        // A frame holds at least one whole packet, plus room for its header.
        let max_frame = max_packet.saturating_add(1024);
        match &self.tls {
            None if !websockets => Ok(Transport {
                stream: Stream::Tcp(stream),
                cert_name: None,
            }),
            None => {
                let ws = ws::accept(stream, HANDSHAKE_TIMEOUT, max_frame)
                    .await
                    .map_err(io::Error::other)?;
                Ok(wrapped(Box::new(ws), None))
            }
            Some(tls) => {
                let (stream, cert_name) = tls
                    .accept(stream, HANDSHAKE_TIMEOUT)
                    .await
                    .map_err(io::Error::other)?;
                if !websockets {
                    return Ok(wrapped(Box::new(stream), cert_name));
                }
                let ws = ws::accept(stream, HANDSHAKE_TIMEOUT, max_frame)
                    .await
                    .map_err(io::Error::other)?;
                Ok(wrapped(Box::new(ws), cert_name))
            }
        }
    }
}

/// A handshaken stream.
fn wrapped(stream: Box<dyn ByteStream>, cert_name: Option<String>) -> Transport {
    Transport {
        stream: Stream::Wrapped(stream),
        cert_name,
    }
}

/// A client's stream. Not split into halves: the connection's one task both reads and
/// writes it, and split halves would share it through an extra allocation (plus a lock
/// for the wrapped streams) on every connection.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS and/or WebSocket.
    Wrapped(Box<dyn ByteStream>),
    /// Given up (a park or resume that failed half-way): reads and writes fail.
    Closed,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Wrapped(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Wrapped(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Wrapped(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Wrapped(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// A connection's task as spawned: counts the connection out when it ends, and turns a
/// panic into the end of that connection. A struct rather than an `async` block, which
/// would keep a second copy of the connection's state.
struct Guarded {
    task: connection::ConnectionTask,
    shared: Arc<super::Shared>,
}

impl Future for Guarded {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let guarded = self.get_mut();
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut guarded.task).poll(cx)));
        match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            // Still connected, in the parking lot: it is counted out when it ends.
            Ok(Poll::Ready(())) if guarded.task.parked() => return Poll::Ready(()),
            Ok(Poll::Ready(())) => {}
            Err(_) => {
                // The peer is read from the task rather than kept twice per connection.
                match guarded.task.peer() {
                    Some(peer) => tracing::error!(%peer, "connection task panicked"),
                    None => tracing::error!("connection task panicked"),
                }
                // Its state may be half-changed: never poll it again.
                guarded.task = connection::ConnectionTask::Done;
            }
        }
        guarded
            .shared
            .stats
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        Poll::Ready(())
    }
}

/// Accepts connections on `socket` until shutdown; one task per connection.
pub(crate) async fn accept_loop(broker: Broker, socket: TcpListener, listener: Arc<Listener>) {
    loop {
        let accepted = tokio::select! {
            _ = broker.shared.shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                broker
                    .shared
                    .stats
                    .connected
                    .fetch_add(1, Ordering::Relaxed);
                // One task per connection (its size is most of an idle connection's
                // memory); a panic in it ends that connection only.
                let shared = broker.shared.clone();
                let task = connection::serve(broker, stream, peer, listener.clone());
                spawn(shared, task);
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Spawns a connection's task on the broker's tracker.
fn spawn(shared: Arc<super::Shared>, task: connection::ConnectionTask) {
    shared.clone().spawn(Guarded { task, shared });
}

/// Gives an unparked connection its task again (`park.rs`).
pub(crate) fn spawn_resumed(broker: &Broker, task: connection::ConnectionTask) {
    spawn(broker.shared.clone(), task);
}
