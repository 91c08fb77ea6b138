//! The disk buffer in front of a sink (`buffer:` on a node): messages are written to the
//! store and acknowledged to their source at once, then fed to the sink in order; an
//! entry is deleted once the sink finished its message. An outage of the sink's target
//! therefore fills the buffer instead of stalling the sources, and what the buffer holds
//! survives restarts and kill -9 (it is fed again at start).
//!
//! Layout: table [`SINK_BUFFER`], key `STATE_KEY \0 SEQ` (SEQ a big-endian `u64`, so keys
//! sort in arrival order), value [`encode`]d: a version byte, the time it was buffered,
//! the message's timestamp, id, topic, headers and payload.
//!
//! Invariants:
//! - A source message is `done()` only after the store commit holding its entry returned
//!   (fsynced). Many messages share one commit (the intake takes up to [`INTAKE`]).
//! - An entry is deleted only after the sink's verdict on it was `Done` (or `Dropped` by a
//!   lossy edge behind the sink). A failed or lost verdict (the sink crashed, an unwired
//!   `error` port) feeds the entry again after a capped backoff. Deletes are lazy
//!   (durable within about a second): a crash can only make an entry come back, so the
//!   sink sees it twice (at-least-once), never lose one.
//! - Memory is bounded: at most [`WINDOW`] entries are with the sink, and entry bodies
//!   are kept in memory up to [`MEMORY_BYTES`]; the rest are read back from the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::edge::{Edge, Inbox, TrySend};
use super::msg::{Headers, Msg, Outcome};
use super::node::{NodeId, NodeStats};
use crate::store::{Op, Store, Table};

/// The table every sink buffer lives in.
pub const SINK_BUFFER: Table = Table("sink.buffer");

/// Most messages taken from the inputs per store commit.
pub const INTAKE: usize = 512;
/// Most entries handed to the sink and not yet finished; also the capacity of the edge
/// from the buffer to the sink, so feeding never waits on that edge.
pub const WINDOW: usize = 1024;
/// Entry bodies kept in memory (beyond this, entries are read back from the store when
/// their turn comes), so a 64 MiB buffer does not mean 64 MiB of RAM on a Pi.
pub const MEMORY_BYTES: u64 = 4 << 20;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// At most one warning about failed entries per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What the buffer does when `max_size` is reached.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop taking messages: backpressure to the inputs (lossless, default).
    #[default]
    Block,
    /// Delete the oldest entries not yet with the sink to make room (counted in
    /// `dropped`); needs `delivery: at_most_once` after an acknowledging source.
    DropOldest,
}

/// A node's buffer settings, as the engine takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferOptions {
    /// Most bytes of entries (keys and values) the buffer holds.
    pub max_bytes: u64,
    /// What happens at `max_bytes`.
    pub when_full: WhenFull,
}

/// Counters of a node's buffer, on its [`super::NodeStats`]; all zero without a buffer.
#[derive(Debug, Default)]
pub struct BufferStats {
    /// Bytes held (keys and values of the stored entries).
    pub bytes: AtomicU64,
    /// Entries held (waiting, with the sink, or waiting for a retry).
    pub entries: AtomicU64,
    /// When the oldest entry held was buffered, in ms since the epoch; 0 when empty.
    pub oldest_ms: AtomicU64,
    /// Entries written since start.
    pub written: AtomicU64,
    /// Entries deleted by `when_full: drop_oldest` since start.
    pub dropped: AtomicU64,
    /// Times an entry was fed again after its message failed in the sink.
    pub retried: AtomicU64,
}

/// A message as stored in the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// When it was buffered (ms since the epoch).
    pub written_ms: i64,
    /// The message's timestamp.
    pub timestamp_ms: i64,
    /// The message's id, kept so a sink can upsert on it across restarts.
    pub id: u64,
    /// Topic.
    pub topic: Arc<str>,
    /// Headers.
    pub headers: Arc<Headers>,
    /// Payload.
    pub payload: Bytes,
}

const FORMAT: u8 = 1;

/// The stored form of a message (see the module docs).
pub fn encode(stored: &Stored) -> Vec<u8> {
    let headers_len: usize = stored
        .headers
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(33 + stored.topic.len() + headers_len + stored.payload.len());
    out.push(FORMAT);
    out.extend_from_slice(&stored.written_ms.to_le_bytes());
    out.extend_from_slice(&stored.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&stored.id.to_le_bytes());
    let text = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    text(&mut out, &stored.topic);
    out.extend_from_slice(&(stored.headers.len() as u32).to_le_bytes());
    for (key, value) in stored.headers.iter() {
        text(&mut out, key);
        text(&mut out, value);
    }
    out.extend_from_slice(&stored.payload);
    out
}

/// Reads what [`encode`] wrote; `None` for a damaged or unknown entry.
pub fn decode(bytes: &[u8]) -> Option<Stored> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn text(&mut self) -> Option<String> {
            let len = self.u32()? as usize;
            String::from_utf8(self.take(len)?.to_vec()).ok()
        }
    }
    let mut r = Reader(bytes);
    if r.take(1)? != [FORMAT] {
        return None;
    }
    let written_ms = r.u64()? as i64;
    let timestamp_ms = r.u64()? as i64;
    let id = r.u64()?;
    let topic = r.text()?;
    let count = r.u32()?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let key = r.text()?;
        let value = r.text()?;
        headers.insert(key, value);
    }
    Some(Stored {
        written_ms,
        timestamp_ms,
        id,
        topic: topic.into(),
        headers: Arc::new(headers),
        payload: Bytes::copy_from_slice(r.0),
    })
}

/// One entry the buffer holds.
struct Entry {
    seq: u64,
    /// Key + value bytes.
    size: u64,
    /// The body, unless it was left in the store to bound memory.
    body: Option<Stored>,
    /// Failed verdicts so far, for the retry backoff.
    attempts: u32,
}

/// Everything one buffer task needs.
pub(crate) struct BufferTask {
    /// `flow/node` of the sink.
    pub id: NodeId,
    /// The sink's real inputs.
    pub inputs: Inbox,
    /// The edge from the buffer to the sink.
    pub feed: Arc<Edge>,
    /// The process's store.
    pub store: Store,
    /// The sink's state key.
    pub state_key: String,
    /// Size bound and policy.
    pub options: BufferOptions,
    /// The sink's counters (`buffer` is this task's).
    pub stats: Arc<NodeStats>,
    /// Time.
    pub clock: Clock,
    /// The engine's abort (drain deadline passed): stop at once, entries stay stored.
    pub abort: CancellationToken,
}

/// Runs the buffer of one sink until its inputs are closed and everything it holds was
/// finished by the sink (then the sink's input is closed), or until the engine aborts.
pub(crate) async fn run(task: BufferTask) {
    let mut buffer = match Buffer::open(&task) {
        Ok(buffer) => buffer,
        Err(e) => {
            // Without its store the buffer cannot promise anything: refuse the inputs
            // (their messages fail and stay with their sources) rather than pass them on.
            tracing::error!(node = %task.id, "cannot read the disk buffer: {e}");
            task.inputs
                .abandon(&format!("{}: disk buffer unreadable: {e}", task.id));
            task.feed.close();
            return;
        }
    };
    if !buffer.live.is_empty() {
        tracing::info!(node = %task.id, entries = buffer.live.len(), bytes = buffer.bytes, "disk buffer holds entries from before, feeding them first");
    }
    let mut inputs = task.inputs.clone();
    let mut batch = Vec::with_capacity(INTAKE);
    let mut input_done = false;
    loop {
        if !buffer.feed(&task) {
            // The sink stopped for good (engine shutting down): what is left stays stored.
            return;
        }
        buffer.publish_stats(&task);
        if input_done && buffer.live.is_empty() {
            task.feed.close();
            return;
        }
        let can_take = !input_done
            && !buffer.blocked
            && (buffer.bytes < task.options.max_bytes
                || (task.options.when_full == WhenFull::DropOldest && !buffer.pending.is_empty()));
        let next_retry = buffer.retry.keys().next().copied();
        tokio::select! {
            biased;
            () = task.abort.cancelled() => return,
            Some(verdict) = buffer.verdicts.recv() => {
                buffer.judge(&task, verdict);
                while let Ok(verdict) = buffer.verdicts.try_recv() {
                    buffer.judge(&task, verdict);
                }
                buffer.flush_deletes(&task);
            }
            () = sleep_until_opt(&task.clock, next_retry), if next_retry.is_some() => {
                buffer.due_retries(&task);
            }
            n = inputs.recv_many(&mut batch, INTAKE), if can_take => {
                if n == 0 {
                    input_done = true;
                } else {
                    buffer.intake(&task, &mut inputs, &mut batch).await;
                }
            }
        }
    }
}

async fn sleep_until_opt(clock: &Clock, at: Option<(Instant, u64)>) {
    if let Some((at, _)) = at {
        clock.sleep_until(at).await;
    }
}

/// The buffer's state, owned by its task.
struct Buffer {
    prefix: Vec<u8>,
    next_seq: u64,
    /// Every entry in the store: seq -> (size, written_ms).
    live: BTreeMap<u64, (u64, i64)>,
    /// Entries waiting for the sink, oldest first.
    pending: VecDeque<Entry>,
    /// Entries with the sink.
    in_flight: BTreeMap<u64, Entry>,
    /// Failed entries waiting for their retry: (due, seq) -> entry.
    retry: BTreeMap<(Instant, u64), Entry>,
    bytes: u64,
    /// Bytes of bodies held in `pending`.
    memory: u64,
    deletes: Vec<Op>,
    verdicts: mpsc::UnboundedReceiver<(u64, Outcome)>,
    verdict_tx: mpsc::UnboundedSender<(u64, Outcome)>,
    last_warning: Option<Instant>,
    failures_since_warning: u64,
    /// Full under `block`: take nothing until an entry is deleted.
    blocked: bool,
}

impl Buffer {
    fn open(task: &BufferTask) -> Result<Buffer, crate::store::StoreError> {
        let mut prefix = task.state_key.as_bytes().to_vec();
        prefix.push(0);
        let (verdict_tx, verdicts) = mpsc::unbounded_channel();
        let mut buffer = Buffer {
            prefix,
            next_seq: 0,
            live: BTreeMap::new(),
            pending: VecDeque::new(),
            in_flight: BTreeMap::new(),
            retry: BTreeMap::new(),
            bytes: 0,
            memory: 0,
            deletes: Vec::new(),
            verdicts,
            verdict_tx,
            last_warning: None,
            failures_since_warning: 0,
            blocked: false,
        };
        // Entries left by an earlier run (a crash, a shutdown with the sink down).
        let mut damaged = Vec::new();
        for (key, value) in task.store.scan(SINK_BUFFER, &buffer.prefix)? {
            let seq = key[buffer.prefix.len()..]
                .try_into()
                .ok()
                .map(u64::from_be_bytes);
            let body = decode(&value);
            let (Some(seq), Some(body)) = (seq, body) else {
                damaged.push(Op::Delete {
                    table: SINK_BUFFER,
                    key,
                });
                continue;
            };
            let size = (key.len() + value.len()) as u64;
            buffer.next_seq = seq + 1;
            buffer.bytes += size;
            buffer.live.insert(seq, (size, body.written_ms));
            let keep = buffer.memory + size <= MEMORY_BYTES;
            if keep {
                buffer.memory += size;
            }
            buffer.pending.push_back(Entry {
                seq,
                size,
                body: keep.then_some(body),
                attempts: 0,
            });
        }
        if !damaged.is_empty() {
            tracing::warn!(node = %task.id, count = damaged.len(), "deleting unreadable disk buffer entries");
            task.store.commit_lazy(damaged);
        }
        Ok(buffer)
    }

    fn key(&self, seq: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 8);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    /// Writes a batch from the inputs, then acknowledges it to the sources.
    async fn intake(&mut self, task: &BufferTask, inputs: &mut Inbox, batch: &mut Vec<Msg>) {
        let now = task.clock.wall_ms();
        let mut ops = Vec::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        let mut added = 0u64;
        let mut msgs = batch.drain(..);
        for msg in msgs.by_ref() {
            let stored = Stored {
                written_ms: now,
                timestamp_ms: msg.timestamp_ms,
                id: msg.id,
                topic: msg.topic.clone(),
                headers: msg.headers.clone(),
                payload: msg.payload.clone(),
            };
            let key = self.key(self.next_seq);
            let value = encode(&stored);
            let size = (key.len() + value.len()) as u64;
            let over = self.bytes + added + size > task.options.max_bytes;
            // Always take one message into an empty buffer, however large, or it could
            // never move.
            let empty = self.live.is_empty() && accepted.is_empty();
            if over && !empty {
                match task.options.when_full {
                    WhenFull::Block => {
                        // Put it and the rest back, in order, for when there is room.
                        let mut rest = vec![msg];
                        rest.extend(msgs.by_ref());
                        inputs.requeue_front(rest);
                        self.blocked = true;
                        break;
                    }
                    WhenFull::DropOldest => {
                        let needed = self.bytes + added + size - task.options.max_bytes;
                        self.evict(task, needed, &mut ops);
                    }
                }
            }
            ops.push(Op::Put {
                table: SINK_BUFFER,
                key,
                value,
            });
            added += size;
            accepted.push((self.next_seq, size, stored, msg));
            self.next_seq += 1;
        }
        drop(msgs);
        if accepted.is_empty() {
            return;
        }
        match task.store.commit(ops).await {
            Ok(()) => {
                task.stats
                    .buffer
                    .written
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                for (seq, size, stored, msg) in accepted {
                    self.bytes += size;
                    self.live.insert(seq, (size, stored.written_ms));
                    let keep = self.memory + size <= MEMORY_BYTES;
                    if keep {
                        self.memory += size;
                    }
                    self.pending.push_back(Entry {
                        seq,
                        size,
                        body: keep.then_some(stored),
                        attempts: 0,
                    });
                    // Durable now: the source may acknowledge it (an MQTT PUBACK).
                    msg.done();
                }
            }
            Err(e) => {
                // Nothing was written (a commit is atomic); the sources keep their
                // messages (an MQTT source redelivers them).
                tracing::warn!(node = %task.id, "cannot write to the disk buffer: {e}");
                let reason = format!("{}: disk buffer: {e}", task.id);
                for (_, _, _, msg) in accepted {
                    msg.fail(&reason);
                }
            }
        }
    }

    /// Deletes the oldest waiting entries until `needed` bytes are free (or none waits).
    fn evict(&mut self, task: &BufferTask, needed: u64, ops: &mut Vec<Op>) {
        let mut freed = 0;
        while freed < needed {
            let Some(entry) = self.pending.pop_front() else {
                break;
            };
            freed += entry.size;
            self.forget(&entry);
            ops.push(Op::Delete {
                table: SINK_BUFFER,
                key: self.key(entry.seq),
            });
            task.stats.buffer.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets an entry that is deleted (its delete op is the caller's).
    fn forget(&mut self, entry: &Entry) {
        self.live.remove(&entry.seq);
        self.bytes -= entry.size.min(self.bytes);
        if entry.body.is_some() {
            self.memory -= entry.size.min(self.memory);
        }
    }

    /// Hands waiting entries to the sink up to the window. Returns `false` when the
    /// sink's input is closed (it stopped for good).
    fn feed(&mut self, task: &BufferTask) -> bool {
        while self.in_flight.len() < WINDOW {
            let Some(mut entry) = self.pending.pop_front() else {
                break;
            };
            let body = match entry.body.take() {
                Some(body) => {
                    self.memory -= entry.size.min(self.memory);
                    body
                }
                None => match task.store.get(SINK_BUFFER, &self.key(entry.seq)) {
                    Ok(Some(value)) => match decode(&value) {
                        Some(body) => body,
                        None => {
                            tracing::warn!(node = %task.id, seq = entry.seq, "dropping an unreadable disk buffer entry");
                            self.forget(&entry);
                            self.deletes.push(Op::Delete {
                                table: SINK_BUFFER,
                                key: self.key(entry.seq),
                            });
                            continue;
                        }
                    },
                    Ok(None) => {
                        self.forget(&entry);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(node = %task.id, "cannot read the disk buffer: {e}");
                        self.pending.push_front(entry);
                        break;
                    }
                },
            };
            let seq = entry.seq;
            let tx = self.verdict_tx.clone();
            let mut msg = Msg::tracked(
                body.topic.clone(),
                body.payload.clone(),
                body.timestamp_ms,
                move |outcome| {
                    // A closed channel: the buffer task ended; the entry stays stored.
                    let _ = tx.send((seq, outcome));
                },
            );
            msg.id = body.id;
            msg.headers = body.headers.clone();
            self.in_flight.insert(seq, entry);
            match task.feed.try_send(msg) {
                Ok(()) => {}
                Err(TrySend::Full(msg)) => {
                    // Cannot happen while the window equals the edge's capacity; if it
                    // does, the failed verdict brings the entry back for a retry.
                    msg.fail("disk buffer feed full");
                }
                Err(TrySend::Closed(msg)) => {
                    msg.fail("the sink stopped");
                    return false;
                }
            }
        }
        self.flush_deletes(task);
        true
    }

    /// The sink's verdict on an entry.
    fn judge(&mut self, task: &BufferTask, (seq, outcome): (u64, Outcome)) {
        let Some(mut entry) = self.in_flight.remove(&seq) else {
            return;
        };
        match outcome {
            Outcome::Done | Outcome::Dropped => {
                self.blocked = false;
                self.forget(&entry);
                self.deletes.push(Op::Delete {
                    table: SINK_BUFFER,
                    key: self.key(seq),
                });
            }
            Outcome::Failed(reason) => {
                entry.attempts += 1;
                let delay = FIRST_RETRY
                    .saturating_mul(1 << entry.attempts.min(16).saturating_sub(1))
                    .min(MAX_RETRY);
                self.failures_since_warning += 1;
                let now = task.clock.now();
                if self
                    .last_warning
                    .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL)
                {
                    tracing::warn!(node = %task.id, failures = self.failures_since_warning, "buffered message failed in the sink, feeding it again in {} ms: {reason}", delay.as_millis());
                    self.last_warning = Some(now);
                    self.failures_since_warning = 0;
                }
                task.stats.buffer.retried.fetch_add(1, Ordering::Relaxed);
                self.retry.insert((now + delay, seq), entry);
            }
        }
    }

    /// Moves retries that are due to the front of the waiting entries, oldest first.
    fn due_retries(&mut self, task: &BufferTask) {
        let now = task.clock.now();
        let mut due: Vec<Entry> = Vec::new();
        while let Some(entry) = self.retry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due.sort_by_key(|e| std::cmp::Reverse(e.seq));
        for entry in due {
            self.pending.push_front(entry);
        }
    }

    /// Deletes of finished entries, lazily: losing one to a crash only repeats a message.
    fn flush_deletes(&mut self, task: &BufferTask) {
        if !self.deletes.is_empty() {
            task.store.commit_lazy(std::mem::take(&mut self.deletes));
        }
    }

    fn publish_stats(&self, task: &BufferTask) {
        let stats = &task.stats.buffer;
        stats.bytes.store(self.bytes, Ordering::Relaxed);
        stats
            .entries
            .store(self.live.len() as u64, Ordering::Relaxed);
        let oldest = self
            .live
            .first_key_value()
            .map_or(0, |(_, (_, written))| (*written).max(0) as u64);
        stats.oldest_ms.store(oldest, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mut headers = Headers::new();
        headers.insert("qos".into(), "1".into());
        headers.insert("".into(), "ünïcode".into());
        let stored = Stored {
            written_ms: 1_700_000_000_123,
            timestamp_ms: -5,
            id: u64::MAX,
            topic: "a/b".into(),
            headers: Arc::new(headers),
            payload: Bytes::from_static(b"{\"w\":1}\0binary"),
        };
        let bytes = encode(&stored);
        assert_eq!(decode(&bytes), Some(stored));
        for cut in 0..30 {
            assert_eq!(decode(&bytes[..cut]), None, "a truncated entry is refused");
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(decode(&other), None, "an unknown format is refused");
    }

    use crate::engine::{
        Engine, EngineOptions, FlowPlan, GraphPlan, InputPlan, NodeContext, NodeFuture, NodePlan,
        Overflow, StateStore,
    };
    use crate::store::StoreOptions;
    use std::sync::Mutex;

    /// A graph `feed -> sink` with a buffer on the sink: the test feeds messages and
    /// receives what the sink got, deciding each verdict itself.
    struct Rig {
        feed: Option<mpsc::Sender<Msg>>,
        got: mpsc::UnboundedReceiver<Msg>,
        engine: Engine,
    }

    fn start_rig(store: &Store, options: BufferOptions) -> Rig {
        let (feed_tx, feed_rx) = mpsc::channel::<Msg>(4096);
        let feed_rx = Arc::new(tokio::sync::Mutex::new(feed_rx));
        let (got_tx, got) = mpsc::unbounded_channel::<Msg>();
        let got_tx = Arc::new(Mutex::new(got_tx));
        let nodes = vec![
            NodePlan {
                name: "feed".into(),
                kind: "test.feed",
                factory: Arc::new(move |cx: NodeContext| -> NodeFuture {
                    let feed_rx = feed_rx.clone();
                    Box::pin(async move {
                        let mut rx = feed_rx.lock().await;
                        while let Some(msg) = rx.recv().await {
                            cx.emit(msg).await;
                        }
                        Ok(())
                    })
                }),
                ports: vec!["out".into()],
                inputs: Vec::new(),
                state_key: "test/feed".into(),
                buffer: None,
            },
            NodePlan {
                name: "sink".into(),
                kind: "test.sink",
                factory: Arc::new(move |mut cx: NodeContext| -> NodeFuture {
                    let got_tx = got_tx.clone();
                    Box::pin(async move {
                        while let Some(msg) = cx.recv().await {
                            let tx = got_tx.lock().unwrap().clone();
                            let _ = tx.send(msg);
                        }
                        Ok(())
                    })
                }),
                ports: Vec::new(),
                inputs: vec![InputPlan {
                    node: "feed".into(),
                    port: "out".into(),
                    capacity: 64,
                    overflow: Overflow::Block,
                }],
                state_key: "test/sink".into(),
                buffer: Some(options),
            },
        ];
        let engine = Engine::start(
            GraphPlan {
                flows: vec![FlowPlan {
                    name: "test".into(),
                    nodes,
                }],
            },
            EngineOptions {
                drain_deadline: Duration::from_millis(300),
                state: StateStore::new(store.clone()),
                ..EngineOptions::default()
            },
        );
        Rig {
            feed: Some(feed_tx),
            got,
            engine,
        }
    }

    fn open(path: &std::path::Path) -> Store {
        Store::open(StoreOptions {
            path: Some(path.to_path_buf()),
            ..StoreOptions::default()
        })
        .unwrap()
    }

    fn tracked(n: usize, outcomes: &mpsc::UnboundedSender<(usize, Outcome)>) -> Msg {
        let tx = outcomes.clone();
        let mut msg = Msg::tracked(format!("t/{n}"), format!("{n}"), n as i64, move |o| {
            let _ = tx.send((n, o));
        });
        msg.headers_mut().insert("n".into(), n.to_string());
        msg
    }

    const ROOMY: BufferOptions = BufferOptions {
        max_bytes: 1 << 20,
        when_full: WhenFull::Block,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_once_buffered_and_fed_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = open(&path);
        let mut rig = start_rig(&store, ROOMY);
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        let feed = rig.feed.as_ref().unwrap();
        let mut ids = Vec::new();
        for n in 0..10 {
            let msg = tracked(n, &tx);
            ids.push(msg.id);
            feed.send(msg).await.unwrap();
        }
        // Every source is acknowledged although the sink has finished nothing.
        for _ in 0..10 {
            assert_eq!(outcomes.recv().await.unwrap().1, Outcome::Done);
        }
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(rig.got.recv().await.unwrap());
        }
        let stats = rig.engine.node("test", "sink").unwrap().stats.clone();
        assert_eq!(stats.buffer.entries.load(Ordering::Relaxed), 10);
        assert!(stats.buffer.bytes.load(Ordering::Relaxed) > 10 * 30);
        assert!(stats.buffer.oldest_ms.load(Ordering::Relaxed) > 0);
        // The sink never finished them: the deadline aborts, the entries stay stored.
        rig.feed = None;
        rig.engine.shutdown().await;
        drop(held);
        store.close().await.unwrap();
        drop(store);

        let store = open(&path);
        let mut rig = start_rig(&store, ROOMY);
        let mut again = Vec::new();
        for _ in 0..10 {
            let msg = rig.got.recv().await.unwrap();
            again.push((msg.id, msg.topic.to_string(), msg.headers["n"].clone()));
            msg.done();
        }
        let expected: Vec<_> = (0..10)
            .map(|n| (ids[n], format!("t/{n}"), n.to_string()))
            .collect();
        assert_eq!(again, expected, "fed again in order, ids and headers kept");
        rig.feed = None;
        assert_eq!(
            rig.engine.shutdown().await,
            crate::engine::ShutdownReport::Drained
        );
        store.close().await.unwrap();
        drop((store, rig.got));
        assert!(
            open(&path).scan(SINK_BUFFER, b"").unwrap().is_empty(),
            "finished entries are deleted"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_the_sink_failed_is_fed_again() {
        let store = Store::open(StoreOptions::default()).unwrap();
        let mut rig = start_rig(&store, ROOMY);
        let (tx, _outcomes) = mpsc::unbounded_channel();
        for n in 0..3 {
            rig.feed
                .as_ref()
                .unwrap()
                .send(tracked(n, &tx))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let msg = rig.got.recv().await.unwrap();
            let n = msg.headers["n"].clone();
            if n == "1" && !seen.contains(&n) {
                msg.fail("the database refused it");
            } else {
                msg.done();
            }
            seen.push(n);
        }
        assert_eq!(seen, ["0", "1", "2", "1"]);
        let stats = rig.engine.node("test", "sink").unwrap().stats.clone();
        assert_eq!(stats.buffer.retried.load(Ordering::Relaxed), 1);
        rig.feed = None;
        rig.engine.shutdown().await;
        assert_eq!(stats.buffer.entries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_buffer_blocks_its_inputs() {
        let store = Store::open(StoreOptions::default()).unwrap();
        let entry = (b"test/sink\0".len() + 8) as u64
            + encode(&Stored {
                written_ms: 0,
                timestamp_ms: 0,
                id: 0,
                topic: "t/0".into(),
                headers: Arc::new(Headers::from([("n".to_string(), "0".to_string())])),
                payload: Bytes::from_static(b"0"),
            })
            .len() as u64;
        let mut rig = start_rig(
            &store,
            BufferOptions {
                max_bytes: entry * 3,
                when_full: WhenFull::Block,
            },
        );
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        for n in 0..8 {
            rig.feed
                .as_ref()
                .unwrap()
                .send(tracked(n, &tx))
                .await
                .unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(rig.got.recv().await.unwrap());
        }
        for _ in 0..3 {
            outcomes.recv().await.unwrap();
        }
        // Full: nothing more is taken, so nothing more is acknowledged, until the sink
        // finishes something. (A bounded wait; a fourth acknowledgement fails the test.)
        let more = tokio::time::timeout(Duration::from_millis(200), outcomes.recv()).await;
        assert!(more.is_err(), "acknowledged beyond max_size: {more:?}");
        let stats = rig.engine.node("test", "sink").unwrap().stats.clone();
        assert_eq!(stats.buffer.bytes.load(Ordering::Relaxed), entry * 3);
        for msg in held.drain(..) {
            msg.done();
        }
        let mut order = Vec::new();
        while order.len() < 5 {
            let msg = rig.got.recv().await.unwrap();
            order.push(msg.headers["n"].clone());
            msg.done();
        }
        assert_eq!(order, ["3", "4", "5", "6", "7"]);
        rig.feed = None;
        rig.engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_oldest_evicts_waiting_entries_and_counts_them() {
        let store = Store::open(StoreOptions::default()).unwrap();
        // Room for WINDOW + 20 entries of the largest size; the sink holds everything.
        let largest = (b"test/sink\0".len() + 8) as u64
            + encode(&Stored {
                written_ms: 0,
                timestamp_ms: 0,
                id: 0,
                topic: "t/1223".into(),
                headers: Arc::new(Headers::from([("n".to_string(), "1223".to_string())])),
                payload: Bytes::from_static(b"1223"),
            })
            .len() as u64;
        let max_bytes = largest * (WINDOW as u64 + 20);
        let mut rig = start_rig(
            &store,
            BufferOptions {
                max_bytes,
                when_full: WhenFull::DropOldest,
            },
        );
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        let total = WINDOW + 200;
        let feeder = {
            let feed = rig.feed.take().unwrap();
            tokio::spawn(async move {
                for n in 0..total {
                    feed.send(tracked(n, &tx)).await.unwrap();
                }
            })
        };
        for _ in 0..total {
            assert_eq!(outcomes.recv().await.unwrap().1, Outcome::Done);
        }
        feeder.await.unwrap();
        let stats = rig.engine.node("test", "sink").unwrap().stats.clone();
        let dropped = stats.buffer.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "nothing was dropped");
        assert!(stats.buffer.bytes.load(Ordering::Relaxed) <= max_bytes);
        let mut held = Vec::new();
        while held.len() < WINDOW {
            held.push(rig.got.recv().await.unwrap());
        }
        for msg in held {
            msg.done();
        }
        let mut rest = 0;
        while let Some(msg) = rig.got.recv().await {
            rest += 1;
            msg.done();
            if WINDOW + rest + dropped as usize == total {
                break;
            }
        }
        assert_eq!(WINDOW + rest + dropped as usize, total);
        rig.engine.shutdown().await;
    }
}
