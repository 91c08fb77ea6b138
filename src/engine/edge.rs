//! Bounded edges between nodes, each with its overflow policy, and the inbox through
//! which a node reads all of its input edges.
//!
//! An edge is a `Mutex<VecDeque>` with two wake-up signals: the consumer's inbox signal
//! (shared by all edges into one node, so a node waits on one thing) and the edge's own
//! "space" signal for a producer blocked by the `block` policy. The lock is never held
//! across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::msg::Msg;

/// What an edge does when its queue is full.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The producer waits: backpressure travels to the source (default, lossless).
    #[default]
    Block,
    /// The oldest queued message is discarded to make room.
    DropOldest,
    /// The new message is discarded.
    DropNewest,
    /// A newer message replaces a queued one with the same topic; with no such message
    /// queued the producer waits, so every topic's latest value still arrives.
    LatestPerTopic,
}

impl Overflow {
    /// Whether the policy can discard messages.
    pub fn is_lossy(self) -> bool {
        !matches!(self, Overflow::Block)
    }
}

/// Counters of one edge, read by metrics and the admin API.
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Messages accepted into the queue.
    pub sent: AtomicU64,
    /// Messages discarded by the overflow policy (including replaced ones).
    pub dropped: AtomicU64,
}

struct EdgeState {
    queue: VecDeque<Msg>,
    closed: bool,
}

/// One bounded queue from a producer port to a consumer.
pub struct Edge {
    state: Mutex<EdgeState>,
    capacity: usize,
    overflow: Overflow,
    /// Wakes the consumer; shared by every edge into the same node.
    consumer: Arc<Notify>,
    /// Wakes producers waiting for space (`block`, `latest_per_topic`).
    space: Notify,
    /// Counters for this edge.
    pub stats: EdgeStats,
    /// `producer.port -> consumer`, for logs and metrics.
    pub label: Arc<str>,
}

/// Returned when the consumer side is gone; the message comes back for a verdict.
#[derive(Debug)]
pub struct Closed(pub Msg);

impl Edge {
    /// A new edge feeding the consumer whose inbox signal is `consumer`.
    pub fn new(
        label: impl Into<Arc<str>>,
        capacity: usize,
        overflow: Overflow,
        consumer: Arc<Notify>,
    ) -> Arc<Edge> {
        Arc::new(Edge {
            state: Mutex::new(EdgeState {
                queue: VecDeque::with_capacity(capacity.min(64)),
                closed: false,
            }),
            capacity: capacity.max(1),
            overflow,
            consumer,
            space: Notify::new(),
            stats: EdgeStats::default(),
            label: label.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EdgeState> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // operation is a single push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages waiting in the queue.
    pub fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The configured policy.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Sends a message, applying the overflow policy. Waits only under `block` and
    /// `latest_per_topic`. Fails only when the consumer has closed the edge.
    pub async fn send(&self, msg: Msg) -> Result<(), Closed> {
        // Fast path: room in the queue, no waiter registered on `space`.
        let mut msg = match self.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySend::Closed(m)) => return Err(Closed(m)),
            Err(TrySend::Full(m)) => m,
        };
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySend::Closed(m)) => return Err(Closed(m)),
                Err(TrySend::Full(m)) => msg = m,
            }
            space.await;
        }
    }

    /// Queues as many of `msgs` (from the front) as fit, under one lock, for a `block`
    /// edge; what did not fit stays in `msgs`. Other policies, or a closed edge, take
    /// nothing here: send those one by one.
    pub fn push_many(&self, msgs: &mut std::collections::VecDeque<Msg>) {
        if self.overflow != Overflow::Block {
            return;
        }
        let (pushed, was_empty) = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            let was_empty = state.queue.is_empty();
            let room = self.capacity.saturating_sub(state.queue.len());
            let n = room.min(msgs.len());
            state.queue.extend(msgs.drain(..n));
            (n, was_empty)
        };
        if pushed > 0 {
            self.stats.sent.fetch_add(pushed as u64, Ordering::Relaxed);
            if was_empty {
                self.consumer.notify_one();
            }
        }
    }

    /// Sends without waiting; a full `block` edge hands the message back.
    pub fn try_send(&self, msg: Msg) -> Result<(), TrySend> {
        let discarded;
        let was_empty;
        {
            let mut state = self.lock();
            if state.closed {
                return Err(TrySend::Closed(msg));
            }
            if state.queue.len() < self.capacity {
                was_empty = state.queue.is_empty();
                state.queue.push_back(msg);
                discarded = None;
            } else {
                was_empty = false;
                match self.overflow {
                    Overflow::Block => return Err(TrySend::Full(msg)),
                    Overflow::DropNewest => discarded = Some(msg),
                    Overflow::DropOldest => {
                        discarded = state.queue.pop_front();
                        state.queue.push_back(msg);
                    }
                    Overflow::LatestPerTopic => {
                        match state
                            .queue
                            .iter_mut()
                            .find(|queued| queued.topic == msg.topic)
                        {
                            Some(slot) => discarded = Some(std::mem::replace(slot, msg)),
                            None => return Err(TrySend::Full(msg)),
                        }
                    }
                }
            }
        }
        match discarded {
            Some(old) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                // A message that replaced another, or pushed out the oldest, was accepted.
                if !matches!(self.overflow, Overflow::DropNewest) {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    self.consumer.notify_one();
                }
                old.dropped();
            }
            None => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                // Only the first message into an empty queue wakes the consumer: it takes
                // everything queued and looks again before it waits, so later ones are
                // seen without a wake-up of their own.
                if was_empty {
                    self.consumer.notify_one();
                }
            }
        }
        Ok(())
    }

    /// Moves up to `max` messages into `out`; returns how many.
    fn pop_into(&self, out: &mut Vec<Msg>, max: usize) -> usize {
        let taken = {
            let mut state = self.lock();
            let n = state.queue.len().min(max);
            out.extend(state.queue.drain(..n));
            n
        };
        if taken > 0 {
            self.space.notify_waiters();
        }
        taken
    }

    fn is_finished(&self) -> bool {
        let state = self.lock();
        state.closed && state.queue.is_empty()
    }

    /// Closes the edge: the producer is finished. Queued messages are still delivered.
    pub fn close(&self) {
        self.lock().closed = true;
        self.consumer.notify_one();
        self.space.notify_waiters();
    }

    /// Closes the edge from the consumer side and fails what is still queued (a node
    /// that stopped for good cannot take them).
    pub fn abandon(&self, reason: &str) {
        let queued: Vec<Msg> = {
            let mut state = self.lock();
            state.closed = true;
            state.queue.drain(..).collect()
        };
        self.space.notify_waiters();
        for msg in queued {
            msg.fail(reason);
        }
    }
}

/// Why [`Edge::try_send`] did not enqueue.
#[derive(Debug)]
pub enum TrySend {
    /// Full under `block` (or `latest_per_topic` with no same-topic message).
    Full(Msg),
    /// The consumer is gone.
    Closed(Msg),
}

/// All input edges of one node, read in turn. Clones share the edges; only one clone
/// may read at a time (the supervisor hands a clone to each run of the node).
#[derive(Clone)]
pub struct Inbox {
    edges: Vec<Arc<Edge>>,
    signal: Arc<Notify>,
    /// Round-robin start, so that one busy input cannot starve the others.
    next: usize,
}

/// Messages taken from the inbox per lock, at most.
pub const BATCH: usize = 64;

impl Inbox {
    /// An inbox over `edges`, all created with `signal` as their consumer signal.
    pub fn new(edges: Vec<Arc<Edge>>, signal: Arc<Notify>) -> Self {
        Inbox {
            edges,
            signal,
            next: 0,
        }
    }

    /// An inbox with no inputs: `recv` returns `None` at once.
    pub fn empty() -> Self {
        Inbox::new(Vec::new(), Arc::new(Notify::new()))
    }

    /// The input edges.
    pub fn edges(&self) -> &[Arc<Edge>] {
        &self.edges
    }

    /// Waits for at least one message and appends up to `max` to `out`. Returns 0 once
    /// every input is closed and drained (the node should then finish).
    pub async fn recv_many(&mut self, out: &mut Vec<Msg>, max: usize) -> usize {
        loop {
            let n = self.try_recv_many(out, max);
            if n > 0 {
                return n;
            }
            if self.edges.iter().all(|edge| edge.is_finished()) {
                return 0;
            }
            // The inbox has a single reader, and `notify_one` stores a permit when no
            // one waits, so a message sent between the check above and this await
            // still wakes us.
            self.signal.notified().await;
        }
    }

    /// Takes what is queued now, without waiting.
    pub fn try_recv_many(&mut self, out: &mut Vec<Msg>, max: usize) -> usize {
        let count = self.edges.len();
        let mut taken = 0;
        for i in 0..count {
            if taken >= max {
                break;
            }
            let edge = &self.edges[(self.next + i) % count];
            taken += edge.pop_into(out, max - taken);
        }
        if count > 0 {
            self.next = (self.next + 1) % count;
        }
        taken
    }

    /// Waits for one message; `None` once every input is closed and drained.
    pub async fn recv(&mut self) -> Option<Msg> {
        let mut one = Vec::with_capacity(1);
        match self.recv_many(&mut one, 1).await {
            0 => None,
            _ => one.pop(),
        }
    }

    /// Puts messages taken but not processed back at the front, in order (a node that
    /// crashed mid-batch must not lose the rest of its batch).
    pub fn requeue_front(&self, msgs: Vec<Msg>) {
        if msgs.is_empty() {
            return;
        }
        match self.edges.first() {
            Some(edge) => {
                let mut state = edge.lock();
                for msg in msgs.into_iter().rev() {
                    state.queue.push_front(msg);
                }
            }
            None => msgs
                .into_iter()
                .for_each(|m| m.fail("no input to requeue on")),
        }
        self.signal.notify_one();
    }

    /// Closes every input and fails what is queued: used when a node stops for good.
    pub fn abandon(&self, reason: &str) {
        for edge in &self.edges {
            edge.abandon(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::msg::Outcome;
    use std::sync::mpsc;

    fn edge(capacity: usize, overflow: Overflow) -> (Arc<Edge>, Inbox) {
        let signal = Arc::new(Notify::new());
        let edge = Edge::new("a -> b", capacity, overflow, signal.clone());
        let inbox = Inbox::new(vec![edge.clone()], signal);
        (edge, inbox)
    }

    fn tracked(topic: &str, payload: &str) -> (Msg, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let msg = Msg::tracked(topic, payload.to_string(), 0, move |o| tx.send(o).unwrap());
        (msg, rx)
    }

    fn payloads(inbox: &mut Inbox) -> Vec<String> {
        let mut out = Vec::new();
        inbox.try_recv_many(&mut out, 100);
        out.into_iter()
            .map(|m| {
                let p = m.payload_str().unwrap().to_string();
                m.done();
                p
            })
            .collect()
    }

    #[test]
    fn block_refuses_when_full() {
        let (edge, mut inbox) = edge(2, Overflow::Block);
        edge.try_send(Msg::new("t", "1", 0)).unwrap();
        edge.try_send(Msg::new("t", "2", 0)).unwrap();
        assert!(matches!(
            edge.try_send(Msg::new("t", "3", 0)),
            Err(TrySend::Full(_))
        ));
        assert_eq!(payloads(&mut inbox), ["1", "2"]);
    }

    #[tokio::test]
    async fn block_waits_for_space() {
        let (edge, mut inbox) = edge(1, Overflow::Block);
        edge.send(Msg::new("t", "1", 0)).await.unwrap();
        let producer = {
            let edge = edge.clone();
            tokio::spawn(async move { edge.send(Msg::new("t", "2", 0)).await })
        };
        let first = inbox.recv().await.unwrap();
        assert_eq!(first.payload_str(), Some("1"));
        first.done();
        producer.await.unwrap().unwrap();
        assert_eq!(inbox.recv().await.unwrap().payload_str(), Some("2"));
    }

    #[test]
    fn drop_oldest_keeps_newest() {
        let (edge, mut inbox) = edge(2, Overflow::DropOldest);
        let (first, outcome) = tracked("t", "1");
        edge.try_send(first).unwrap();
        edge.try_send(Msg::new("t", "2", 0)).unwrap();
        edge.try_send(Msg::new("t", "3", 0)).unwrap();
        assert_eq!(outcome.try_recv().unwrap(), Outcome::Dropped);
        assert_eq!(edge.stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(payloads(&mut inbox), ["2", "3"]);
    }

    #[test]
    fn drop_newest_keeps_oldest() {
        let (edge, mut inbox) = edge(2, Overflow::DropNewest);
        edge.try_send(Msg::new("t", "1", 0)).unwrap();
        edge.try_send(Msg::new("t", "2", 0)).unwrap();
        let (third, outcome) = tracked("t", "3");
        edge.try_send(third).unwrap();
        assert_eq!(outcome.try_recv().unwrap(), Outcome::Dropped);
        assert_eq!(payloads(&mut inbox), ["1", "2"]);
    }

    #[test]
    fn latest_per_topic_replaces_in_place() {
        let (edge, mut inbox) = edge(2, Overflow::LatestPerTopic);
        edge.try_send(Msg::new("a", "a1", 0)).unwrap();
        edge.try_send(Msg::new("b", "b1", 0)).unwrap();
        edge.try_send(Msg::new("a", "a2", 0)).unwrap();
        // No queued message for topic c: the producer must wait instead of losing one.
        assert!(matches!(
            edge.try_send(Msg::new("c", "c1", 0)),
            Err(TrySend::Full(_))
        ));
        assert_eq!(payloads(&mut inbox), ["a2", "b1"]);
    }

    #[tokio::test]
    async fn closed_and_drained_ends_recv() {
        let (edge, mut inbox) = edge(4, Overflow::Block);
        edge.try_send(Msg::new("t", "1", 0)).unwrap();
        edge.close();
        assert_eq!(inbox.recv().await.unwrap().payload_str(), Some("1"));
        assert!(inbox.recv().await.is_none());
    }

    #[test]
    fn abandon_fails_queued_messages() {
        let (edge, inbox) = edge(4, Overflow::Block);
        let (msg, outcome) = tracked("t", "1");
        edge.try_send(msg).unwrap();
        inbox.abandon("node stopped");
        assert_eq!(
            outcome.try_recv().unwrap(),
            Outcome::Failed("node stopped".into())
        );
        assert!(matches!(
            edge.try_send(Msg::new("t", "2", 0)),
            Err(TrySend::Closed(_))
        ));
    }

    #[test]
    fn round_robin_over_inputs() {
        let signal = Arc::new(Notify::new());
        let a = Edge::new("a", 8, Overflow::Block, signal.clone());
        let b = Edge::new("b", 8, Overflow::Block, signal.clone());
        let mut inbox = Inbox::new(vec![a.clone(), b.clone()], signal);
        for i in 0..3 {
            a.try_send(Msg::new("a", format!("a{i}"), 0)).unwrap();
            b.try_send(Msg::new("b", format!("b{i}"), 0)).unwrap();
        }
        let mut out = Vec::new();
        inbox.try_recv_many(&mut out, 2);
        inbox.try_recv_many(&mut out, 2);
        let topics: Vec<_> = out.iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(topics, ["a", "a", "b", "b"]);
        out.into_iter().for_each(Msg::done);
    }
}
