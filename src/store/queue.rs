//! The writer thread's request queue: FIFO like a channel, except that a producer may
//! queue a request without waking the writer.
//!
//! Why not `std::sync::mpsc`: its `send` wakes a blocked receiver at once. A broker
//! connection queues a QoS 1 message's commit and then hands the message to a subscriber;
//! waking the writer thread there put it on a core in the middle of the delivery (on a
//! 2-core machine, often in place of the worker about to write to the subscriber). With
//! [`RequestQueue::push_quiet`] the request takes its place in the queue at once, so
//! nothing queued later can overtake it, and the writer is woken later: by the next
//! ordinary push, or by [`RequestQueue::ring`] once the producer's linger has passed.
//! Often it is never woken for it at all: the subscriber's acknowledgement takes the
//! message's Put back out ([`RequestQueue::withdraw_put`]) and the request leaves the
//! queue. Measured in docs/benchmarks.md ("QoS 1 latency", "Session 14").
//!
//! A quiet request is never stranded by the queue itself: the writer takes it with
//! whatever it is woken for next. Ringing in time is the producer's duty.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::writer::{Completion, Request};
use super::{Op, Table};

/// How far [`RequestQueue::withdraw_put`] looks, from the newest request back: the Put it
/// looks for was queued moments before, and the writer takes the whole queue whenever
/// it comes back to it, so a longer search would rarely find more. The operations bound
/// keeps a fan-out to many persistent sessions (one request of many Puts, acknowledged
/// once per session) from scanning it whole under the lock for every acknowledgement.
const WITHDRAW_SCAN_REQUESTS: usize = 32;
const WITHDRAW_SCAN_OPS: usize = 256;

/// What [`RequestQueue::withdraw_put`] did.
#[derive(Debug)]
pub(super) enum Withdrawn {
    /// No queued request puts the key as its last operation on it, within the bounds
    /// searched (the writer has taken it, or it was never put).
    NotQueued,
    /// The Put is gone, and with it its request, which had nothing else to write. `Some`
    /// when that request was durable: its waiter is to be answered now, by the caller,
    /// outside the queue's lock.
    Request(Option<Completion>),
    /// The Put is gone; the rest of its request is still queued for the writer.
    Op,
}

/// Requests from every [`Store`](super::Store) handle to the one writer thread.
pub(super) struct RequestQueue {
    state: Mutex<QueueState>,
    /// Signalled when a request the writer must see arrives, or the handles are gone.
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    requests: VecDeque<Request>,
    /// The writer is blocked waiting for requests.
    writer_waiting: bool,
    /// A quiet push is queued that the writer was not woken for.
    unrung: bool,
    /// Every handle is gone: once empty, the writer stops.
    handles_gone: bool,
    /// The writer has stopped: pushes fail.
    writer_gone: bool,
    /// How many times a producer woke the writer (tests count them).
    wakes: u64,
}

/// Why [`RequestQueue::pop_timeout`] returned without a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Empty {
    /// The time ran out.
    Timeout,
    /// Every handle is gone and nothing is queued.
    Disconnected,
}

impl RequestQueue {
    pub(super) fn new() -> RequestQueue {
        RequestQueue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding this lock, but a poisoned queue is still a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `request` and wakes the writer; gives it back once the writer has stopped.
    pub(super) fn push(&self, request: Request) -> Result<(), Request> {
        let mut state = self.lock();
        if state.writer_gone {
            return Err(request);
        }
        state.requests.push_back(request);
        state.unrung = false;
        if state.writer_waiting {
            state.wakes += 1;
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `request` in order without waking the writer. `true` when the writer is
    /// asleep: the caller must then [`ring`](Self::ring) soon. `false` when it is busy
    /// with a batch: it takes the request when it comes back to the queue, as it would
    /// have after a ring.
    pub(super) fn push_quiet(&self, request: Request) -> Result<bool, Request> {
        let mut state = self.lock();
        if state.writer_gone {
            return Err(request);
        }
        state.requests.push_back(request);
        if state.writer_waiting {
            state.unrung = true;
        }
        Ok(state.unrung)
    }

    /// Wakes the writer if a quiet push is still waiting for it.
    pub(super) fn ring(&self) {
        let mut state = self.lock();
        if std::mem::take(&mut state.unrung) && state.writer_waiting {
            state.wakes += 1;
            self.ready.notify_one();
        }
    }

    /// Takes the Put of `key` in `table` out of the request that queued it, if the writer
    /// has not taken that request yet; a request left with nothing to write leaves the
    /// queue. For a key the caller knows did not exist before that Put and was put only
    /// once: Put then Delete of such a key writes nothing, so the caller's Delete is not
    /// queued either. Anything else on the key in the newer requests (a Delete, a prefix
    /// delete of the table) leaves everything as it is.
    pub(super) fn withdraw_put(&self, table: Table, key: &[u8]) -> Withdrawn {
        let on_key = |op: &Op| match op {
            Op::Put {
                table: t, key: k, ..
            }
            | Op::Delete { table: t, key: k } => *t == table && k.as_slice() == key,
            Op::DeletePrefix { table: t, .. } => *t == table,
        };
        let mut state = self.lock();
        let oldest = state.requests.len().saturating_sub(WITHDRAW_SCAN_REQUESTS);
        let mut scanned = 0;
        for index in (oldest..state.requests.len()).rev() {
            let Request::Commit { ops, .. } = &mut state.requests[index] else {
                return Withdrawn::NotQueued;
            };
            scanned += ops.len();
            if scanned > WITHDRAW_SCAN_OPS {
                return Withdrawn::NotQueued;
            }
            let Some(at) = ops.iter().rposition(on_key) else {
                continue;
            };
            if !matches!(ops[at], Op::Put { .. }) {
                return Withdrawn::NotQueued;
            }
            ops.remove(at);
            if !ops.is_empty() {
                return Withdrawn::Op;
            }
            let Some(Request::Commit { done, .. }) = state.requests.remove(index) else {
                unreachable!("a commit at this index");
            };
            if state.requests.is_empty() {
                state.unrung = false;
            }
            return Withdrawn::Request(done);
        }
        Withdrawn::NotQueued
    }

    /// Whether the writer is blocked waiting, with nothing queued that it was woken for
    /// (quiet requests may wait for their ring).
    pub(super) fn writer_idle(&self) -> bool {
        let state = self.lock();
        state.writer_waiting && (state.requests.is_empty() || state.unrung)
    }

    /// How many times a producer woke the writer.
    pub(super) fn wakes(&self) -> u64 {
        self.lock().wakes
    }

    /// The last handle is gone: the writer drains what is queued and stops.
    pub(super) fn handles_gone(&self) {
        let mut state = self.lock();
        state.handles_gone = true;
        self.ready.notify_one();
    }

    /// The writer stopped (closed or panicked): later pushes fail, and what is queued is
    /// dropped, which fails its waiters with a closed store.
    pub(super) fn writer_gone(&self) {
        let dropped = {
            let mut state = self.lock();
            state.writer_gone = true;
            std::mem::take(&mut state.requests)
        };
        // Completions are dropped outside the lock: dropping one wakes its waiter.
        drop(dropped);
    }
}

/// The writer's end of the queue. It takes everything queued at once, so a busy writer
/// takes the lock once per batch rather than once per request.
pub(super) struct Receiver {
    queue: Arc<RequestQueue>,
    /// Taken from the queue, not yet handed to the writer; in order.
    taken: VecDeque<Request>,
}

impl Receiver {
    pub(super) fn new(queue: Arc<RequestQueue>) -> Receiver {
        Receiver {
            queue,
            taken: VecDeque::new(),
        }
    }

    /// The queue, for the writer's stop guard.
    pub(super) fn queue(&self) -> &Arc<RequestQueue> {
        &self.queue
    }

    /// The next request without waiting.
    pub(super) fn try_pop(&mut self) -> Option<Request> {
        if self.taken.is_empty() {
            take_all(&mut self.taken, &mut self.queue.lock());
        }
        self.taken.pop_front()
    }

    /// Blocks for the next request; `None` once every handle is gone and nothing is queued.
    pub(super) fn pop(&mut self) -> Option<Request> {
        self.pop_until(None).ok()
    }

    /// Blocks for the next request for at most `timeout`.
    pub(super) fn pop_timeout(&mut self, timeout: Duration) -> Result<Request, Empty> {
        self.pop_until(Instant::now().checked_add(timeout))
    }

    fn pop_until(&mut self, deadline: Option<Instant>) -> Result<Request, Empty> {
        if let Some(request) = self.taken.pop_front() {
            return Ok(request);
        }
        let queue = &self.queue;
        let mut state = queue.lock();
        loop {
            take_all(&mut self.taken, &mut state);
            if let Some(request) = self.taken.pop_front() {
                return Ok(request);
            }
            if state.handles_gone {
                return Err(Empty::Disconnected);
            }
            state.writer_waiting = true;
            state = match deadline {
                None => queue.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        state.writer_waiting = false;
                        return Err(Empty::Timeout);
                    }
                    queue
                        .ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            state.writer_waiting = false;
        }
    }
}

/// Moves every queued request to `taken` (empty), swapping buffers so both keep their
/// capacity. A request is taken whether or not its producer has rung: only waking the
/// writer is deferred, never the request.
fn take_all(taken: &mut VecDeque<Request>, state: &mut QueueState) {
    if !state.requests.is_empty() {
        std::mem::swap(taken, &mut state.requests);
        state.unrung = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreError;
    use super::*;

    fn lazy(n: u8) -> Request {
        Request::Commit {
            ops: vec![super::super::Op::Delete {
                table: super::super::Table("t"),
                key: vec![n],
            }],
            done: None,
            queued_at: Instant::now(),
        }
    }

    fn key(request: Request) -> u8 {
        match request {
            Request::Commit { ops, .. } => match &ops[0] {
                super::super::Op::Delete { key, .. } => key[0],
                _ => unreachable!("tests queue deletes"),
            },
            Request::Close(_) => unreachable!("tests queue commits"),
        }
    }

    #[test]
    fn quiet_and_rung_pushes_keep_their_order() {
        let queue = Arc::new(RequestQueue::new());
        let mut receiver = Receiver::new(queue.clone());
        queue.push_quiet(lazy(1)).ok().unwrap();
        queue.push(lazy(2)).ok().unwrap();
        assert_eq!(receiver.try_pop().map(key), Some(1));
        queue.push_quiet(lazy(3)).ok().unwrap();
        let order: Vec<u8> = std::iter::from_fn(|| receiver.try_pop()).map(key).collect();
        assert_eq!(order, [2, 3]);
    }

    #[test]
    fn a_waiting_writer_sleeps_through_a_quiet_push_until_it_is_rung() {
        let queue = Arc::new(RequestQueue::new());
        let (taken, taken_rx) = std::sync::mpsc::channel();
        let writer = {
            let mut receiver = Receiver::new(queue.clone());
            std::thread::spawn(move || {
                let request = receiver.pop().expect("a request");
                taken.send(key(request)).unwrap();
            })
        };
        // Wait until the writer is blocked, so the push below finds it waiting.
        while !queue.lock().writer_waiting {
            std::thread::yield_now();
        }
        assert_eq!(queue.push_quiet(lazy(7)).ok(), Some(true), "must be rung");
        assert_eq!(queue.lock().wakes, 0, "a quiet push woke the writer");
        queue.ring();
        assert_eq!(queue.lock().wakes, 1);
        // Rung again with nothing unrung: no second wake-up.
        queue.ring();
        assert_eq!(taken_rx.recv().unwrap(), 7);
        assert_eq!(queue.lock().wakes, 1);
        writer.join().unwrap();
    }

    #[test]
    fn a_linger_timeout_takes_an_unrung_request() {
        let queue = Arc::new(RequestQueue::new());
        let mut receiver = Receiver::new(queue.clone());
        // The writer is not waiting: nothing to ring, it takes the request on its return.
        assert_eq!(queue.push_quiet(lazy(4)).ok(), Some(false));
        assert_eq!(key(receiver.pop_timeout(Duration::ZERO).ok().unwrap()), 4);
        assert_eq!(
            receiver.pop_timeout(Duration::ZERO).err(),
            Some(Empty::Timeout)
        );
    }

    #[test]
    fn the_writer_drains_after_the_handles_are_gone_then_stops() {
        let queue = Arc::new(RequestQueue::new());
        let mut receiver = Receiver::new(queue.clone());
        queue.push(lazy(5)).ok().unwrap();
        queue.handles_gone();
        assert_eq!(key(receiver.pop().unwrap()), 5);
        assert!(receiver.pop().is_none());
        assert_eq!(
            receiver.pop_timeout(Duration::from_secs(60)).err(),
            Some(Empty::Disconnected)
        );
    }

    #[test]
    fn pushes_fail_once_the_writer_is_gone() {
        let queue = RequestQueue::new();
        let (done, mut wait) = tokio::sync::oneshot::channel();
        queue
            .push(Request::Commit {
                ops: Vec::new(),
                done: Some(done),
                queued_at: Instant::now(),
            })
            .ok()
            .unwrap();
        queue.writer_gone();
        // The queued waiter learns the writer is gone.
        assert!(wait.try_recv().is_err());
        assert!(queue.push(lazy(6)).is_err());
        assert!(queue.push_quiet(lazy(6)).is_err());
    }

    fn put(n: u8) -> Op {
        Op::Put {
            table: Table("t"),
            key: vec![n],
            value: b"message".to_vec(),
        }
    }

    fn commit(
        ops: Vec<Op>,
    ) -> (
        Request,
        tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
    ) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let request = Request::Commit {
            ops,
            done: Some(done),
            queued_at: Instant::now(),
        };
        (request, wait)
    }

    fn ops(request: Request) -> Vec<Op> {
        match request {
            Request::Commit { ops, .. } => ops,
            Request::Close(_) => unreachable!("tests queue commits"),
        }
    }

    #[test]
    fn a_withdrawn_put_takes_its_emptied_request_out_of_the_queue_and_answers_it() {
        let queue = Arc::new(RequestQueue::new());
        let mut receiver = Receiver::new(queue.clone());
        let (request, mut wait) = commit(vec![put(1)]);
        queue.push_quiet(request).ok().unwrap();
        queue.push_quiet(lazy(9)).ok().unwrap();
        let Withdrawn::Request(Some(done)) = queue.withdraw_put(Table("t"), &[1]) else {
            panic!("the Put was queued, in a durable request with nothing else");
        };
        // Answered by the caller, not by the queue: nothing is answered under its lock.
        assert!(wait.try_recv().is_err());
        done.send(Ok(())).unwrap();
        assert_eq!(wait.try_recv().unwrap(), Ok(()));
        // Only the request behind it is left.
        let left: Vec<u8> = std::iter::from_fn(|| receiver.try_pop()).map(key).collect();
        assert_eq!(left, [9]);
    }

    #[test]
    fn a_withdrawn_put_leaves_the_rest_of_its_request_queued() {
        let queue = Arc::new(RequestQueue::new());
        let mut receiver = Receiver::new(queue.clone());
        let (request, mut wait) = commit(vec![put(1), put(2)]);
        queue.push(request).ok().unwrap();
        assert!(matches!(
            queue.withdraw_put(Table("t"), &[2]),
            Withdrawn::Op
        ));
        assert!(
            wait.try_recv().is_err(),
            "the Put of 1 is still to be written"
        );
        assert_eq!(ops(receiver.try_pop().unwrap()), [put(1)]);
    }

    #[test]
    fn a_put_is_not_withdrawn_once_taken_or_after_a_newer_operation_on_its_key() {
        let queue = Arc::new(RequestQueue::new());
        let mut receiver = Receiver::new(queue.clone());
        let other_table = Table("other");
        // Taken by the writer: too late.
        queue.push(commit(vec![put(1)]).0).ok().unwrap();
        assert!(receiver.try_pop().is_some());
        assert!(matches!(
            queue.withdraw_put(Table("t"), &[1]),
            Withdrawn::NotQueued
        ));
        // A Delete of the key queued after the Put.
        queue.push(commit(vec![put(2)]).0).ok().unwrap();
        queue.push(lazy(2)).ok().unwrap();
        assert!(matches!(
            queue.withdraw_put(Table("t"), &[2]),
            Withdrawn::NotQueued
        ));
        // A prefix delete of the table queued after the Put (the same key in another
        // table, first, is another key).
        queue.push(commit(vec![put(3)]).0).ok().unwrap();
        assert!(matches!(
            queue.withdraw_put(other_table, &[3]),
            Withdrawn::NotQueued
        ));
        queue
            .push(
                commit(vec![Op::DeletePrefix {
                    table: Table("t"),
                    prefix: Vec::new(),
                }])
                .0,
            )
            .ok()
            .unwrap();
        assert!(matches!(
            queue.withdraw_put(Table("t"), &[3]),
            Withdrawn::NotQueued
        ));
        // Nothing was taken out by the refusals.
        let left: Vec<Vec<Op>> = std::iter::from_fn(|| receiver.try_pop()).map(ops).collect();
        assert_eq!(left.len(), 4);
        // Behind more operations than the search looks through: left to the writer.
        queue.push(commit(vec![put(4)]).0).ok().unwrap();
        let many: Vec<Op> = (0..WITHDRAW_SCAN_OPS)
            .map(|n| Op::Delete {
                table: other_table,
                key: n.to_be_bytes().to_vec(),
            })
            .collect();
        queue.push(commit(many).0).ok().unwrap();
        assert!(matches!(
            queue.withdraw_put(Table("t"), &[4]),
            Withdrawn::NotQueued
        ));
    }
}
