//! A connection's doorbell: how other tasks tell it that its session has deliveries,
//! or that it must close (takeover, shutdown, keepalive), and when its client was last
//! heard from.
//!
//! One small allocation per connection, polled by hand from the connection's loop: a
//! `Notify`, a `CancellationToken` and a timer per connection cost several times more
//! memory, and an idle connection is mostly what it holds (docs/benchmarks.md).

use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures::task::AtomicWaker;

/// Set when the session has something new to send.
const WAKE: u32 = 1;
/// Set when the connection must close; the reason code is in bits 8..16.
const KICK: u32 = 2;
/// Set by the keepalive sweep: the client has been silent a while, park if idle.
const PARK: u32 = 4;
/// Set while the connection is parked (`park.rs`): its waker is the lot's.
const PARKED: u32 = 8;
/// Set when the connection could park (plain TCP): only those are asked to.
const PARKABLE: u32 = 16;

/// What a connection is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Ring {
    /// Close with this v5 reason code.
    Kick(u8),
    /// Look at the session's queue.
    Wake,
    /// Nothing came from the client for a while: park if there is nothing to do.
    Park,
}

/// The doorbell of one connection.
#[derive(Debug)]
pub struct Signal {
    waker: AtomicWaker,
    flags: AtomicU32,
    /// Milliseconds since `epoch` when the client was last heard from, modulo 2^32
    /// (about 49 days): compared by wrapping difference, which is right for any
    /// silence shorter than that, and the longest patience is about 27 hours. 32 bits
    /// keep the doorbell in a smaller allocation size class.
    last_heard_ms: AtomicU32,
    /// 1.5 x the client's keepalive in milliseconds (at most 65535 x 1500, which fits
    /// 32 bits); 0 = no keepalive.
    patience_ms: AtomicU32,
}

impl Signal {
    /// A signal whose client was heard from at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Signal {
            waker: AtomicWaker::new(),
            flags: AtomicU32::new(0),
            last_heard_ms: AtomicU32::new(now_ms as u32),
            patience_ms: AtomicU32::new(0),
        }
    }

    /// The session has deliveries.
    pub fn wake(&self) {
        self.flags.fetch_or(WAKE, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The connection must close with `reason`; the first reason given stays.
    pub fn kick(&self, reason: u8) {
        let _ = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |flags| {
                (flags & KICK == 0).then_some(flags | KICK | (u32::from(reason) << 8))
            });
        self.waker.wake();
    }

    /// Kick first, then wake; `Pending` registers the task to be woken.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Ring> {
        if let Some(ring) = self.take() {
            return Poll::Ready(ring);
        }
        self.waker.register(cx.waker());
        // A ring between the first look and the registration would be lost otherwise.
        match self.take() {
            Some(ring) => Poll::Ready(ring),
            None => Poll::Pending,
        }
    }

    /// The kick's reason, if kicked, without taking a wake; registers the task.
    pub fn kicked(&self, cx: &mut Context<'_>) -> Option<u8> {
        self.waker.register(cx.waker());
        let flags = self.flags.load(Ordering::Acquire);
        (flags & KICK != 0).then_some((flags >> 8) as u8)
    }

    fn take(&self) -> Option<Ring> {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & KICK != 0 {
            return Some(Ring::Kick((flags >> 8) as u8));
        }
        if flags & WAKE != 0 {
            self.flags.fetch_and(!WAKE, Ordering::AcqRel);
            return Some(Ring::Wake);
        }
        if flags & PARK != 0 {
            self.flags.fetch_and(!PARK, Ordering::AcqRel);
            return Some(Ring::Park);
        }
        None
    }

    /// The connection can park (plain TCP); the sweep asks only those.
    pub fn set_parkable(&self) {
        self.flags.fetch_or(PARKABLE, Ordering::AcqRel);
    }

    /// Asks a parkable connection that is not parked to park, if it has nothing to do.
    /// Returns whether it was asked.
    pub fn ask_park(&self) -> bool {
        // One atomic step: a connection parking or kicked meanwhile is not asked.
        let asked = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |flags| {
                let askable = flags & PARKABLE != 0 && flags & (PARKED | PARK | KICK) == 0;
                askable.then_some(flags | PARK)
            })
            .is_ok();
        if asked {
            self.waker.wake();
        }
        asked
    }

    /// The connection parks: rings go to `waker` (the parking lot's) from now on. A
    /// request to park still pending is answered by this.
    pub fn park(&self, waker: Waker) {
        let _ = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |flags| {
                Some((flags | PARKED) & !PARK)
            });
        self.waker.register(&waker);
    }

    /// The connection has a task again (which registers its own waker when it polls).
    pub fn unpark(&self) {
        self.flags.fetch_and(!PARKED, Ordering::AcqRel);
    }

    /// Whether the connection is parked.
    pub fn parked(&self) -> bool {
        self.flags.load(Ordering::Acquire) & PARKED != 0
    }

    /// Whether a kick or a wake is waiting to be taken.
    pub fn rung(&self) -> bool {
        self.flags.load(Ordering::Acquire) & (KICK | WAKE) != 0
    }

    /// The client must be heard from within `patience_ms` (0: never checked).
    pub fn set_patience(&self, patience_ms: u64) {
        let patience = u32::try_from(patience_ms).unwrap_or(u32::MAX);
        self.patience_ms.store(patience, Ordering::Relaxed);
    }

    /// The client sent something at `now_ms`.
    pub fn heard(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms as u32, Ordering::Relaxed);
    }

    /// Milliseconds since the client was last heard from (0 when heard after `now_ms`
    /// was read).
    pub fn silent_for(&self, now_ms: u64) -> u64 {
        let silent = (now_ms as u32).wrapping_sub(self.last_heard_ms.load(Ordering::Relaxed));
        if silent < 1 << 31 {
            u64::from(silent)
        } else {
            0
        }
    }

    /// Whether the client has been silent longer than its keepalive allows.
    pub fn overdue(&self, now_ms: u64) -> bool {
        let patience = self.patience_ms.load(Ordering::Relaxed);
        let silent = (now_ms as u32).wrapping_sub(self.last_heard_ms.load(Ordering::Relaxed));
        // A difference past 2^31 is a client heard after `now_ms` was read (the sweep
        // racing a read): not silent at all.
        patience > 0 && silent > patience && silent < 1 << 31
    }
}

/// Milliseconds on the broker's monotonic clock.
pub fn elapsed_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_wake_reaches_a_waiting_task_once() {
        let signal = Arc::new(Signal::new(0));
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { std::future::poll_fn(|cx| signal.poll(cx)).await }
        });
        signal.wake();
        assert_eq!(waiting.await.unwrap(), Ring::Wake);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(signal.poll(&mut cx), Poll::Pending, "a wake is consumed");
    }

    #[test]
    fn a_kick_wins_over_a_wake_and_keeps_its_first_reason() {
        let signal = Signal::new(0);
        signal.wake();
        signal.kick(0x8E);
        signal.kick(0x8B);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(signal.poll(&mut cx), Poll::Ready(Ring::Kick(0x8E)));
        assert_eq!(
            signal.poll(&mut cx),
            Poll::Ready(Ring::Kick(0x8E)),
            "a kick stays"
        );
    }

    #[test]
    fn only_a_parkable_unparked_connection_is_asked_to_park_and_a_wake_comes_first() {
        let signal = Signal::new(0);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            !signal.ask_park(),
            "not parkable (TLS, WebSocket, in-process)"
        );
        signal.set_parkable();
        signal.wake();
        assert!(signal.ask_park());
        assert!(!signal.ask_park(), "asked once until it answers");
        assert_eq!(signal.poll(&mut cx), Poll::Ready(Ring::Wake));
        assert_eq!(signal.poll(&mut cx), Poll::Ready(Ring::Park));
        assert_eq!(signal.poll(&mut cx), Poll::Pending);
        signal.park(futures::task::noop_waker());
        assert!(signal.parked());
        assert!(!signal.ask_park(), "a parked connection is not asked again");
        assert!(!signal.rung());
        signal.kick(0x8B);
        assert!(signal.rung(), "the lot looks at this after parking");
        signal.unpark();
        assert!(!signal.parked());
        assert!(!signal.ask_park(), "a kicked connection is not asked");
    }

    #[test]
    fn parking_answers_a_pending_request_to_park() {
        let signal = Signal::new(0);
        signal.set_parkable();
        assert!(signal.ask_park());
        signal.park(futures::task::noop_waker());
        signal.unpark();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            signal.poll(&mut cx),
            Poll::Pending,
            "a resumed connection is not asked to park again at once"
        );
    }

    #[test]
    fn silence_is_measured_from_the_last_packet() {
        let signal = Signal::new(1000);
        assert_eq!(signal.silent_for(1000), 0);
        assert_eq!(signal.silent_for(2500), 1500);
        signal.heard(2400);
        assert_eq!(signal.silent_for(2500), 100);
        assert_eq!(signal.silent_for(2300), 0, "heard after now was read");
    }

    #[test]
    fn overdue_only_past_patience_and_never_without_keepalive() {
        let signal = Signal::new(1000);
        assert!(!signal.overdue(1_000_000), "no keepalive, never overdue");
        signal.set_patience(1500);
        assert!(!signal.overdue(2500));
        assert!(signal.overdue(2501));
        signal.heard(2400);
        assert!(!signal.overdue(3900));
    }

    #[test]
    fn overdue_across_the_32_bit_wrap() {
        let before_wrap = u64::from(u32::MAX) - 500;
        let signal = Signal::new(before_wrap);
        signal.set_patience(1500);
        assert!(
            !signal.overdue(before_wrap + 1500),
            "1500 ms across the wrap"
        );
        assert!(signal.overdue(before_wrap + 1501));
        signal.heard(before_wrap + 1000);
        assert!(!signal.overdue(before_wrap + 2000));
        assert!(
            !signal.overdue(before_wrap + 999),
            "heard after now was read"
        );
    }
}
