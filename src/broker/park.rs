//! The parking lot: idle plain-TCP connections kept without a task.
//!
//! A connection's task and its socket's registration with tokio's reactor cost about
//! 640 bytes before the connection holds a byte of MQTT state (decision 016). An idle
//! connection does not need either: when a plain-TCP connection has had nothing to do
//! for a while (the keepalive sweep asks it, `Ring::Park`), its task hands its state
//! here, takes its socket out of tokio's reactor and ends. The socket goes into one
//! epoll set for every parked connection, watched by one task, and the doorbell
//! (`signal.rs`) gets a waker that names the connection. Whatever would have woken the
//! task (bytes or a hang-up from the client, a delivery, a takeover, a keepalive
//! expiry, shutdown) unparks it: its socket goes back to tokio and a new task picks up
//! the state where the old one left it.
//!
//! Order matters in two places, and both are decided under the lot's lock. Parking
//! registers the doorbell's waker before the connection is findable here, and looks at
//! the doorbell once more afterwards: a ring in between is not lost. Unparking removes
//! the connection before its new task can register its own waker, so a late park
//! waker finds nothing and is ignored (the ring it carried is still in the doorbell's
//! flags, where the new task reads it).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::connection::Parked;
use super::{Broker, listener};

/// How long a client must have been silent before its connection is asked to park;
/// the connection parks once several asks in a row found it with nothing else to do
/// (`QUIET_SWEEPS_TO_PARK` in `connection.rs`).
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// Epoll events taken per `epoll_wait` call.
const EVENTS_PER_WAIT: usize = 64;
/// Connections unparked in one go before the lot's task yields to other tasks (a
/// delivery to thousands of parked subscribers must not hold a worker for all of them).
const UNPARKS_PER_TURN: usize = 256;

/// Idle connections without a task, and the epoll set watching their sockets.
pub(crate) struct ParkingLot {
    /// An epoll instance holding the parked sockets, itself watched by tokio: readable
    /// when one of them is.
    epoll: AsyncFd<OwnedFd>,
    /// The parked connections by connection id.
    lot: Mutex<Lot>,
    /// Connections whose doorbell rang while parked, for the lot's task.
    woken: Mutex<Vec<u64>>,
    /// Tells the lot's task that `woken` has entries.
    notify: Notify,
    /// False once the lot is closed (shutdown, or its epoll instance failed): nothing
    /// parks, and the keepalive sweep stops asking. Cleared under the lot's lock.
    open: AtomicBool,
}

struct Lot {
    /// Boxed: a parked connection is its state and the socket in it, nothing more.
    parked: HashMap<u64, Box<Parked>>,
}

/// The waker a parked connection's doorbell holds: it names the connection.
struct ParkWaker {
    lot: Weak<ParkingLot>,
    id: u64,
}

impl Wake for ParkWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(lot) = self.lot.upgrade() {
            lot.wake(self.id);
        }
    }
}

impl ParkingLot {
    /// A new, empty lot; must be called inside the broker's runtime.
    pub(crate) fn new() -> io::Result<Arc<ParkingLot>> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned here alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` keeps its descriptor open, and always the same one, until
        // the `AsyncFd` holding it is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Arc::new(ParkingLot {
            epoll,
            lot: Mutex::new(Lot {
                parked: HashMap::new(),
            }),
            woken: Mutex::new(Vec::new()),
            notify: Notify::new(),
            open: AtomicBool::new(true),
        }))
    }

    fn lot(&self) -> MutexGuard<'_, Lot> {
        // Every change under this lock is complete before it is released.
        self.lot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether connections may park.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// How many connections are parked.
    pub(crate) fn len(&self) -> usize {
        self.lot().parked.len()
    }

    /// Parks a connection whose socket was taken out of tokio's reactor. Gives it back
    /// when it cannot be parked (the broker is shutting down, the socket cannot be
    /// watched), to be resumed at once.
    pub(crate) fn park(self: &Arc<Self>, connection: Box<Parked>) -> Result<(), Box<Parked>> {
        let id = connection.id();
        let fd = connection.raw_fd();
        let signal = connection.signal().clone();
        let mut lot = self.lot();
        // Read under the lock, where closing clears it: a park either lands before the
        // close collects what is parked, or sees the lot closed.
        if !self.is_open() {
            return Err(connection);
        }
        signal.park(Waker::from(Arc::new(ParkWaker {
            lot: Arc::downgrade(self),
            id,
        })));
        if let Err(e) = self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, id) {
            tracing::debug!(%e, "cannot park a connection");
            signal.unpark();
            return Err(connection);
        }
        lot.parked.insert(id, connection);
        drop(lot);
        // A ring that came before the park waker was in place went to the old task.
        if signal.rung() {
            self.wake(id);
        }
        Ok(())
    }

    /// The doorbell of parked connection `id` rang.
    fn wake(&self, id: u64) {
        self.woken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        self.notify.notify_one();
    }

    /// Gives connection `id` a task again, if it is parked.
    fn unpark(&self, broker: &Broker, id: u64) {
        let mut lot = self.lot();
        let Some(connection) = lot.parked.remove(&id) else {
            return;
        };
        // Before the lock is released: a later epoll event for this id finds nothing.
        if let Err(e) = self.epoll_ctl(libc::EPOLL_CTL_DEL, connection.raw_fd(), id) {
            tracing::debug!(%e, "cannot unwatch a parked connection");
        }
        drop(lot);
        connection.signal().unpark();
        listener::spawn_resumed(broker, (*connection).resume());
    }

    fn epoll_ctl(&self, op: libc::c_int, fd: RawFd, id: u64) -> io::Result<()> {
        // One-shot: a socket reports once, however long its unparking takes, and never
        // again should its removal fail.
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: id,
        };
        // SAFETY: both descriptors are open (the epoll instance is owned by `self`, the
        // socket by the connection being parked or unparked); `event` outlives the call.
        let done = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes the events of the parked sockets that are ready, without waiting.
    fn ready(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is valid for `capacity` entries; timeout 0 never blocks.
        let n =
            unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), capacity, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Unparks connections as their sockets or doorbells call for it, until shutdown;
    /// then unparks every one of them, so each closes in its own task.
    pub(crate) async fn run(self: Arc<Self>, broker: Broker) {
        // Should this task be dropped without finishing (its runtime dropped without a
        // shutdown), the parked connections are dropped with it, closing their sockets,
        // rather than kept alive by the cycle broker -> lot -> connection -> broker.
        let _guard = CloseOnDrop(self.clone());
        let shutdown = broker.shared.shutdown.clone();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                readable = self.epoll.readable() => {
                    let mut guard = match readable {
                        Ok(guard) => guard,
                        Err(e) => {
                            tracing::error!("the parking lot cannot watch its sockets: {e}");
                            break;
                        }
                    };
                    let mut unparked = 0;
                    let failed = loop {
                        match self.ready(&mut events) {
                            Ok(0) => {
                                guard.clear_ready();
                                break false;
                            }
                            Ok(n) => {
                                for event in &events[..n] {
                                    let id = event.u64;
                                    self.unpark(&broker, id);
                                }
                                unparked += n;
                                // The rest stays ready for the next turn.
                                if unparked >= UNPARKS_PER_TURN {
                                    break false;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                tracing::error!("the parking lot cannot read its sockets: {e}");
                                break true;
                            }
                        }
                    };
                    if failed {
                        break;
                    }
                }
                () = self.notify.notified() => {
                    let woken = std::mem::take(
                        &mut *self.woken.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    for (i, id) in woken.into_iter().enumerate() {
                        if i > 0 && i % UNPARKS_PER_TURN == 0 {
                            tokio::task::yield_now().await;
                        }
                        self.unpark(&broker, id);
                    }
                }
            }
            tokio::task::yield_now().await;
        }
        // Shutting down (or the lot failed): nothing parks any more, and no connection
        // stays without a task.
        let ids: Vec<u64> = {
            let lot = self.lot();
            self.open.store(false, Ordering::Release);
            lot.parked.keys().copied().collect()
        };
        for id in ids {
            self.unpark(&broker, id);
        }
    }
}

/// Closes the lot and drops what is parked in it, if the lot's task is dropped early.
struct CloseOnDrop(Arc<ParkingLot>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let parked = {
            let mut lot = self.0.lot();
            self.0.open.store(false, Ordering::Release);
            std::mem::take(&mut lot.parked)
        };
        // Outside the lock: dropping a connection drops its broker handle.
        drop(parked);
    }
}
