//! Taps on a node's outputs: copies of the messages a node emits, offered to watchers
//! (the admin API's live tap) without ever waiting for them.
//!
//! Invariants: a tap never slows the flow. With no watcher attached, the cost on the
//! emit path is one relaxed atomic load. With watchers, each message is offered with
//! `try_send` into the watcher's small bounded channel; a full channel drops the copy
//! for that watcher and counts it. The message itself is never held back, and the copy
//! is a few reference-count increments (topic, payload and headers are shared).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::msg::{Headers, Msg};

/// Copies a watcher can hold before further ones are dropped for it.
pub const TAP_DEPTH: usize = 64;

/// Most watchers on one node at once; more are refused, so a script polling the API
/// cannot pile up copies on a hot node.
pub const MAX_WATCHERS: usize = 16;

/// One message seen passing a node.
#[derive(Clone, Debug)]
pub struct TapEvent {
    /// The output port it left on (`out`, `error`, ...).
    pub port: Arc<str>,
    /// The message's topic.
    pub topic: Arc<str>,
    /// Its payload.
    pub payload: Bytes,
    /// Its headers.
    pub headers: Arc<Headers>,
    /// Its timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// Its id.
    pub id: u64,
}

impl TapEvent {
    /// A copy of `msg` as it leaves on `port`.
    pub fn of(port: &Arc<str>, msg: &Msg) -> TapEvent {
        TapEvent {
            port: port.clone(),
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            headers: msg.headers.clone(),
            timestamp_ms: msg.timestamp_ms,
            id: msg.id,
        }
    }
}

struct Watcher {
    /// Copies for this watcher; `try_send` only.
    events: mpsc::Sender<TapEvent>,
    /// Copies that did not fit, shared with the watcher's [`Tap`].
    dropped: Arc<AtomicU64>,
    /// An MQTT topic filter the message's topic must match, if any.
    filter: Option<String>,
}

/// Where watchers attach to one node's outputs; one per node, shared by its
/// [`super::Outputs`] clones.
#[derive(Default)]
pub struct TapPoint {
    /// How many watchers are attached: the emit path reads only this when it is 0.
    watchers: AtomicUsize,
    list: Mutex<Vec<Watcher>>,
}

/// Why a tap could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// The node already has [`MAX_WATCHERS`] watchers.
    #[error("this node already has {MAX_WATCHERS} taps attached; close one and retry")]
    TooMany,
}

impl TapPoint {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        // Every operation under the lock is one push, retain or loop of try_sends.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether anyone watches: the one atomic load on the emit path.
    #[inline]
    pub fn is_watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) != 0
    }

    /// Attaches a watcher; `filter` (an MQTT topic filter) keeps only matching topics.
    pub fn attach(self: &Arc<Self>, filter: Option<String>) -> Result<Tap, TapError> {
        let (events, receiver) = mpsc::channel(TAP_DEPTH);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut list = self.lock();
        list.retain(|w| !w.events.is_closed());
        if list.len() >= MAX_WATCHERS {
            self.watchers.store(list.len(), Ordering::Relaxed);
            return Err(TapError::TooMany);
        }
        list.push(Watcher {
            events,
            dropped: dropped.clone(),
            filter,
        });
        self.watchers.store(list.len(), Ordering::Relaxed);
        Ok(Tap {
            events: receiver,
            dropped,
            point: self.clone(),
        })
    }

    /// Moves the watchers of `old` here (a hot reload replaced the node): their taps go
    /// on showing the node's messages. Beyond [`MAX_WATCHERS`] the rest end.
    pub fn adopt_watchers(&self, old: &TapPoint) {
        let moved: Vec<Watcher> = std::mem::take(&mut *old.lock());
        old.watchers.store(0, Ordering::Relaxed);
        let mut list = self.lock();
        list.extend(moved.into_iter().filter(|w| !w.events.is_closed()));
        list.truncate(MAX_WATCHERS);
        self.watchers.store(list.len(), Ordering::Relaxed);
    }

    /// Offers a copy of `msg` leaving on `port` to every watcher, never waiting.
    pub fn offer(&self, port: &Arc<str>, msg: &Msg) {
        let mut list = self.lock();
        let mut closed = false;
        for watcher in list.iter() {
            if let Some(filter) = &watcher.filter
                && !crate::broker::topic::matches(filter, &msg.topic)
            {
                continue;
            }
            match watcher.events.try_send(TapEvent::of(port, msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    watcher.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            list.retain(|w| !w.events.is_closed());
            self.watchers.store(list.len(), Ordering::Relaxed);
        }
    }

    fn detach_closed(&self) {
        let mut list = self.lock();
        list.retain(|w| !w.events.is_closed());
        self.watchers.store(list.len(), Ordering::Relaxed);
    }

    /// How many watchers are attached now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }
}

/// One attached watcher: its copies, and how many did not fit. Dropping it detaches.
pub struct Tap {
    events: mpsc::Receiver<TapEvent>,
    dropped: Arc<AtomicU64>,
    point: Arc<TapPoint>,
}

impl Tap {
    /// The next copy; `None` never happens while the node exists (the point holds the
    /// sender), so callers race this against their own end.
    pub async fn recv(&mut self) -> Option<TapEvent> {
        self.events.recv().await
    }

    /// Copies dropped for this watcher so far (its channel was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A counter the caller may add its own drops to (rate limiting), so one number
    /// reports every copy the watcher did not get.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.events.close();
        self.point.detach_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_get_copies_and_a_full_one_counts_drops() {
        let point = Arc::new(TapPoint::default());
        assert!(!point.is_watched());
        let port: Arc<str> = "out".into();
        let mut fast = point.attach(None).unwrap();
        let slow = point.attach(Some("a/+".into())).unwrap();
        assert!(point.is_watched());
        for i in 0..(TAP_DEPTH + 10) {
            point.offer(&port, &Msg::new("a/b", format!("{i}"), 0));
            assert_eq!(
                &*fast.recv().await.unwrap().payload,
                format!("{i}").as_bytes()
            );
        }
        point.offer(&port, &Msg::new("other", "x", 0));
        assert_eq!(fast.recv().await.unwrap().topic.as_ref(), "other");
        // `slow` never read: it holds TAP_DEPTH copies, the rest were dropped for it
        // only; the filtered-out topic is neither delivered nor counted.
        assert_eq!(slow.dropped(), 10);
        assert_eq!(fast.dropped(), 0);
        drop(slow);
        drop(fast);
        assert!(!point.is_watched());
    }

    #[tokio::test]
    async fn watchers_are_bounded() {
        let point = Arc::new(TapPoint::default());
        let taps: Vec<Tap> = (0..MAX_WATCHERS)
            .map(|_| point.attach(None).unwrap())
            .collect();
        assert_eq!(point.attach(None).err(), Some(TapError::TooMany));
        drop(taps);
        assert!(point.attach(None).is_ok());
    }
}
