//! The writer thread: owns every redb write transaction and turns queued requests into
//! group commits.
//!
//! Group commit: the thread blocks for the first request, then takes whatever else is
//! already queued (up to `max_batch_ops` operations), applies it all in one write
//! transaction and commits once, fsyncing if anyone in the batch waits for durability.
//! While that fsync runs (milliseconds on an SD card), new requests pile up in the
//! channel and become the next batch, so batches grow with the load.
//!
//! `linger` adds a short wait for company once a batch has a durable waiter. Without it,
//! a moderate steady load (a publisher at 1000 msg/s) gets one transaction and one fsync
//! per message, and on a 2-core Pi that CPU and journal work is taken from the
//! connections: measured with `headwater bench broker --workload latency`, the QoS 1
//! delivery p50/p99 went from 236-300/526-641 us to 82-92/214-237 us with a 1 ms linger.
//! Idle stores pay the linger once per acknowledgement; lazy-only batches never wait,
//! and neither do batches that already hold `LINGER_BELOW` requests (a 1 ms wait on
//! every batch cost the QoS 1 durable workload 15-25 % of its throughput).
//!
//! With a file, "fsyncing" means the commit log's fdatasync (`log.rs`): the batch is
//! written there, applied to redb without an fsync, and redb is made durable at
//! checkpoints ([`CHECKPOINT_TRANSACTIONS`], [`CHECKPOINT_LOG_BYTES`], a clean close).
//!
//! A key that one batch both creates and deletes is not written at all (`consumed`): a
//! QoS 1 message queued for a persistent session whose subscriber acknowledged it while
//! the publisher's commit was still gathering company never reaches the disk, and when
//! nothing else is left, neither does the batch (no transaction, no fsync). RabbitMQ's
//! queues skip the disk the same way for messages consumed before they are persisted.
//! A linger ends early once every key its durable waiters put has been deleted again:
//! at 1000 msg/s the next publish would otherwise join the batch and need its fsync.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use super::log::{self, CommitLog, LoggedOp};
use super::queue::{Empty, Receiver, RequestQueue};
use super::{Counters, Op, StoreError, StoreOptions, Table, db_error, prefix_end};

/// Where the writer sends a request's outcome.
pub(super) type Completion = oneshot::Sender<Result<(), StoreError>>;

/// What a handle sends to the writer thread.
pub(super) enum Request {
    /// Operations to apply atomically; `done` is `None` for a lazy commit.
    Commit {
        ops: Vec<Op>,
        done: Option<Completion>,
        /// When it was queued: a batch lingers for company until `linger` after its first
        /// durable request was queued, which for a quiet one can be well before the
        /// writer took it.
        queued_at: Instant,
    },
    /// Make everything durable, answer, and stop.
    Close(Completion),
}

/// Lazy operations are made durable at the latest this long after the first of them was
/// committed without an fsync (DESIGN.md: "flushed about every second"). Also how often,
/// at most, the space allocated in a file over its quota is measured.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

/// Marks the queue as having no writer when the writer thread ends, panics included.
struct WriterGone(Arc<RequestQueue>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0.writer_gone();
    }
}

/// One request taken from the queue, waiting for its batch to commit.
struct Pending {
    ops: Vec<Op>,
    done: Option<Completion>,
}

/// A batch of this many requests or more commits without lingering.
const LINGER_BELOW: usize = 8;

/// With a commit log, redb is made durable (a checkpoint) after this many transactions
/// since the last one: each non-durable commit costs redb some bookkeeping until then,
/// and the log replays them all at the next open.
const CHECKPOINT_TRANSACTIONS: u32 = 4096;

/// ... or once this many bytes of records are in the log, which bounds the log's file and
/// the replay at the next open (about 80 000 queued 64-byte messages).
const CHECKPOINT_LOG_BYTES: u64 = 8 << 20;

/// The writer thread's state; lives on that thread only.
pub(super) struct Writer {
    db: Arc<Database>,
    /// Requests from every handle, in submission order.
    queue: Receiver,
    counters: Arc<Counters>,
    max_batch_ops: usize,
    /// How long a batch with a durable waiter waits for more requests.
    linger: Duration,
    /// The file whose size the quota limits; `None` in memory mode.
    path: Option<PathBuf>,
    quota: Option<u64>,
    /// Whether the store was over `quota` after the last commit; Puts are refused while so.
    over_quota: bool,
    /// When the allocated space was last measured; `None` while the file is within quota.
    quota_measured_at: Option<Instant>,
    /// When the oldest commit that is applied but not yet fsynced happened; `None` while
    /// everything committed is durable.
    unsynced_since: Option<Instant>,
    /// [`INTERVAL`], shorter in tests.
    interval: Duration,
    /// Where batches are made durable when the store has a file (see `log.rs`); `None` in
    /// memory mode, where every commit goes to redb alone.
    log: Option<CommitLog>,
    /// redb transactions committed since the last durable one.
    since_checkpoint: u32,
    /// The log may hold a record of a batch redb does not have (a refused batch's record
    /// could not be taken back), or be incomplete (its sync failed), or a checkpoint's
    /// reset did not finish: before anything else is logged, redb must be made durable
    /// and the log started afresh ([`Writer::checkpoint`]).
    log_stale: bool,
    /// Test instrumentation; always `None` outside the unit tests.
    probe: Option<Probe>,
}

impl Writer {
    pub(super) fn new(
        db: Arc<Database>,
        queue: Arc<RequestQueue>,
        counters: Arc<Counters>,
        options: &StoreOptions,
        log: Option<CommitLog>,
        probe: Option<Probe>,
    ) -> Writer {
        let mut writer = Writer {
            db,
            queue: Receiver::new(queue),
            counters,
            max_batch_ops: options.max_batch_ops.max(1),
            linger: options.linger,
            path: options.path.clone(),
            quota: options.quota_bytes.filter(|_| options.path.is_some()),
            over_quota: false,
            quota_measured_at: None,
            unsynced_since: None,
            interval: probe.as_ref().map_or(INTERVAL, |probe| probe.interval),
            log,
            since_checkpoint: 0,
            log_stale: false,
            probe,
        };
        // A file reopened over its quota refuses Puts from the first batch on.
        writer.over_quota = writer.measure_over_quota();
        writer
    }

    /// The thread's body: one batch per loop until closed or every handle is gone.
    pub(super) fn run(mut self) {
        // However the thread ends (a close, the handles gone, a panic), later commits
        // must fail instead of waiting for a writer that is not there.
        let _gone = WriterGone(self.queue.queue().clone());
        if let Some(probe) = &self.probe {
            // Returns when the test releases or drops its `Hold`.
            let _ = probe.hold.recv();
        }
        while let Some(first) = self.next_request() {
            let (pending, close) = self.gather(first);
            let result = self.write(pending, close.is_some());
            if let Some(done) = close {
                self.finish();
                self.counters.closed.store(true, Ordering::Release);
                let _ = done.send(result);
                return;
            }
        }
        // Every handle is gone without `close`: make lazy data durable before the database
        // is dropped, as `close` would have.
        if self.unsynced_since.is_some() {
            let _ = self.transact(Vec::new(), true);
        }
        self.finish();
    }

    /// On the way out, everything logged is already durable; a checkpoint leaves redb
    /// complete on its own, so the next open has nothing to replay.
    fn finish(&mut self) {
        if self.log.is_some()
            && (self.since_checkpoint > 0 || self.log_stale)
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!(
                "store: final checkpoint failed (the log replays at the next open): {e}"
            );
        }
    }

    /// Blocks for the next request; while lazy data is unsynced, wakes in time to fsync
    /// it. `None` once every handle is gone.
    fn next_request(&mut self) -> Option<Request> {
        loop {
            let Some(since) = self.unsynced_since else {
                return self.queue.pop();
            };
            let left = self.interval.saturating_sub(since.elapsed());
            match self.queue.pop_timeout(left) {
                Ok(request) => return Some(request),
                Err(Empty::Timeout) => {
                    if self.transact(Vec::new(), true).is_err() {
                        // Retry a failing flush one interval later, not in a busy loop.
                        self.unsynced_since = Some(Instant::now());
                    }
                }
                Err(Empty::Disconnected) => return None,
            }
        }
    }

    /// `first` and whatever else is already queued, up to `max_batch_ops` operations (a
    /// request is never split), stopping after a `Close`.
    fn gather(&mut self, first: Request) -> (Vec<Pending>, Option<Completion>) {
        let mut pending = Vec::new();
        let mut count = 0;
        let mut next = Some(first);
        // Set by the first durable waiter: the batch may wait for company until then.
        let mut linger_until = None;
        // Keys (hashed) that durable requests of this batch put and no later Delete in it
        // removed. Once a Delete has taken the last of them, the batch will write nothing
        // those waiters need (see `without_consumed`), so waiting longer only delays their
        // answers. A hash collision merely ends a linger early.
        let mut awaited = HashSet::new();
        let mut consumed_any = false;
        while let Some(request) = next {
            match request {
                Request::Commit {
                    ops,
                    done,
                    queued_at,
                } => {
                    // An empty commit still costs a waiter; count it so batches stay bounded.
                    count += ops.len().max(1);
                    if done.is_some() && linger_until.is_none() {
                        linger_until = Some(queued_at + self.linger);
                    }
                    for op in &ops {
                        match op {
                            Op::Put { table, key, .. } if done.is_some() => {
                                awaited.insert(key_hash(*table, key));
                            }
                            Op::Delete { table, key } => {
                                consumed_any |= awaited.remove(&key_hash(*table, key));
                            }
                            _ => {}
                        }
                    }
                    pending.push(Pending { ops, done });
                }
                Request::Close(done) => return (pending, Some(done)),
            }
            if count >= self.max_batch_ops {
                break;
            }
            next = self.queue.try_pop();
            // Only a small batch lingers: under load the previous fsync already gathered
            // company, and waiting would only stretch every cycle.
            if next.is_none()
                && pending.len() < LINGER_BELOW
                && !(consumed_any && awaited.is_empty())
                && let Some(until) = linger_until
            {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    next = self.queue.pop_timeout(left).ok();
                }
            }
        }
        (pending, None)
    }

    /// Commits one batch and completes its waiters; returns the transaction's result.
    fn write(&mut self, pending: Vec<Pending>, closing: bool) -> Result<(), StoreError> {
        if self.over_quota {
            // Deletes may have freed space since the last measurement, and a batch of
            // refused Puts commits nothing that would measure again (rate-limited).
            self.over_quota = self.measure_over_quota();
        }
        let mut ops = Vec::new();
        let mut waiters = Vec::new();
        for Pending { ops: request, done } in pending {
            if self.over_quota && request.iter().any(|op| matches!(op, Op::Put { .. })) {
                // Refused on its own: the rest of the batch, including Deletes that free
                // space, still commits.
                match done {
                    Some(done) => {
                        let _ = done.send(Err(StoreError::QuotaExceeded));
                    }
                    None => tracing::warn!("lazy store commit dropped: store quota exceeded"),
                }
                continue;
            }
            ops.extend(request);
            waiters.extend(done);
        }
        let ops = self.without_consumed(ops);
        let overdue = self
            .unsynced_since
            .is_some_and(|since| since.elapsed() >= self.interval);
        // A steady stream of lazy commits never leaves the queue empty long enough for the
        // timeout in `next_request`, hence `overdue`.
        let durable = !waiters.is_empty() || closing || overdue;
        let result = if ops.is_empty() && !(durable && self.unsynced_since.is_some()) {
            // Nothing to write and nothing pending to make durable (e.g. a barrier commit
            // on an idle store): no transaction, no fsync.
            Ok(())
        } else {
            self.transact(ops, durable)
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        result
    }

    /// `ops` without those on keys the batch creates and deletes again: a key that did
    /// not exist before the batch, whose first operation in it is a Put and whose last is
    /// a Delete, ends up absent whether the batch writes it or not. (For a key that did
    /// exist, Put…Delete is a Delete, so those are kept; so is every key of a table the
    /// batch also deletes a prefix from.) On a failed existence check nothing is dropped.
    fn without_consumed(&self, ops: Vec<Op>) -> Vec<Op> {
        // (first operation is a Put, last is a Delete) per key, in batch order.
        let mut keys: HashMap<(Table, &[u8]), (bool, bool)> = HashMap::new();
        let mut prefixed = HashSet::new();
        for op in &ops {
            match op {
                Op::Put { table, key, .. } => {
                    keys.entry((*table, key.as_slice()))
                        .and_modify(|(_, deleted)| *deleted = false)
                        .or_insert((true, false));
                }
                Op::Delete { table, key } => {
                    keys.entry((*table, key.as_slice()))
                        .and_modify(|(_, deleted)| *deleted = true)
                        .or_insert((false, true));
                }
                Op::DeletePrefix { table, .. } => {
                    prefixed.insert(*table);
                }
            }
        }
        let candidates: Vec<(Table, &[u8])> = keys
            .into_iter()
            .filter(|((table, _), (put_first, deleted_last))| {
                *put_first && *deleted_last && !prefixed.contains(table)
            })
            .map(|(key, _)| key)
            .collect();
        if candidates.is_empty() {
            return ops;
        }
        let consumed: HashSet<(Table, &[u8])> = match self.absent(&candidates) {
            Ok(absent) => absent.into_iter().collect(),
            Err(e) => {
                tracing::debug!("store: existence check failed, writing the batch whole: {e}");
                return ops;
            }
        };
        if consumed.is_empty() {
            return ops;
        }
        let drop: Vec<bool> = ops
            .iter()
            .map(|op| match op {
                Op::Put { table, key, .. } | Op::Delete { table, key } => {
                    consumed.contains(&(*table, key.as_slice()))
                }
                Op::DeletePrefix { .. } => false,
            })
            .collect();
        let dropped = drop.iter().filter(|drop| **drop).count() as u64;
        self.counters.consumed.fetch_add(dropped, Ordering::Relaxed);
        ops.into_iter()
            .zip(drop)
            .filter_map(|(op, drop)| (!drop).then_some(op))
            .collect()
    }

    /// Which of `keys` are absent from the store as committed so far (lazy commits
    /// included: readers see them at once).
    fn absent<'k>(&self, keys: &[(Table, &'k [u8])]) -> Result<Vec<(Table, &'k [u8])>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let mut tables = HashMap::new();
        let mut absent = Vec::new();
        for &(table, key) in keys {
            let opened = match tables.entry(table) {
                MapEntry::Occupied(open) => open.into_mut(),
                MapEntry::Vacant(slot) => slot.insert(match txn.open_table(table.definition()) {
                    Ok(opened) => Some(opened),
                    Err(redb::TableError::TableDoesNotExist(_)) => None,
                    Err(e) => return Err(StoreError::Database(format!("table {}: {e}", table.0))),
                }),
            };
            let exists = match opened {
                Some(opened) => opened.get(key).map_err(db_error)?.is_some(),
                None => false,
            };
            if !exists {
                absent.push((table, key));
            }
        }
        Ok(absent)
    }

    /// One batch: applies `ops` and, if `durable`, makes them (and everything before them)
    /// durable before returning.
    fn transact(&mut self, ops: Vec<Op>, durable: bool) -> Result<(), StoreError> {
        let count = ops.len() as u64;
        let started = Instant::now();
        let result = if self.log.is_some() {
            self.commit_logged(&ops, durable)
        } else {
            self.apply(ops.iter().map(LoggedOp::from), durable)
        };
        self.counters.commit_latency.observe(started.elapsed());
        match &result {
            Ok(()) => {
                self.counters.ops.fetch_add(count, Ordering::Relaxed);
                if durable {
                    // A durable commit or log sync covers every earlier non-durable one.
                    self.unsynced_since = None;
                } else {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                self.over_quota = self.measure_over_quota();
            }
            // Every waiter of the batch gets the error; the writer goes on with the next.
            Err(e) => tracing::warn!("store commit failed: {e}"),
        }
        if let Some(probe) = &self.probe {
            let _ = probe.events.send(BatchEvent {
                ops: count,
                durable,
                ok: result.is_ok(),
            });
        }
        result
    }

    /// A batch with the commit log: the record is written, then redb applies the batch
    /// without an fsync (readers see it at once), then, if `durable`, the log is synced.
    /// redb itself is fsynced only at checkpoints.
    fn commit_logged(&mut self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        if self.log_stale {
            self.checkpoint()?;
        }
        if !ops.is_empty() {
            // A failed write leaves the log's end where it was: the next record overwrites
            // whatever part of this one reached the file.
            self.log().append(ops.iter().map(LoggedOp::from))?;
            if let Err(e) = self.apply(ops.iter().map(LoggedOp::from), false) {
                // Its waiters are told it failed: its record must never be replayed.
                if let Err(retract) = self.log().retract() {
                    tracing::warn!("store: {retract}");
                    self.log_stale = true;
                }
                return Err(e);
            }
            self.since_checkpoint += 1;
        }
        if durable {
            match self.log().sync() {
                Ok(()) => {
                    self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // The batch is in redb; a checkpoint makes it durable there instead.
                    tracing::warn!("store: {e}; making the database durable instead");
                    self.log_stale = true;
                    self.checkpoint()?;
                }
            }
        }
        if self.since_checkpoint >= CHECKPOINT_TRANSACTIONS
            || self.log().len() >= CHECKPOINT_LOG_BYTES
        {
            // The batch is durable (or lazy) whatever happens here, and the log keeps
            // everything. (A failed redb commit leaves redb refusing writes until it is
            // reopened, so every later batch fails too: nothing is acknowledged that
            // is not in the log.)
            if let Err(e) = self.checkpoint() {
                tracing::warn!("store: checkpoint failed: {e}");
            }
        }
        Ok(())
    }

    /// The commit log; only for a store with a file, which always has one.
    fn log(&mut self) -> &mut CommitLog {
        self.log
            .as_mut()
            .expect("a store with a file has a commit log")
    }

    /// Makes redb durable (it then holds every batch applied so far) and starts a new log
    /// epoch, so no record older than that state (or of a batch redb refused) can be
    /// replayed over it.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        // The log first: after a power cut between redb's commit and the reset, the log is
        // replayed onto a redb that holds every record, which only works if the log holds
        // every record redb does (lazy ones may be unsynced). After a failed sync this
        // fails again, and the checkpoint goes on without it: redb's fsync is then the
        // only durability left.
        if let Some(log) = &self.log
            && let Err(e) = log.sync()
        {
            tracing::warn!("store: checkpoint without a log sync: {e}");
        }
        self.apply(std::iter::empty(), true)?;
        self.since_checkpoint = 0;
        // Until the reset is durable, the old records must not be followed by new ones.
        self.log_stale = true;
        if let Some(log) = &mut self.log {
            log.reset()?;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.log_stale = false;
        Ok(())
    }

    /// One redb write transaction: applies `ops` and commits, with an fsync if `durable`.
    fn apply<'a>(
        &self,
        ops: impl IntoIterator<Item = LoggedOp<'a>>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        // `None` keeps the commit in redb's memory until the next `Immediate` one; readers
        // see it at once either way.
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_error)?;
        match apply_ops(&txn, ops) {
            Ok(()) => {
                txn.commit().map_err(db_error)?;
                self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                if durable {
                    self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                // Atomic per batch: nothing of a failed batch is written.
                if let Err(abort) = txn.abort() {
                    tracing::warn!("store transaction abort failed: {abort}");
                }
                Err(e)
            }
        }
    }

    /// Whether the store is over its quota: its file is larger than the quota and so is the
    /// space redb has allocated in it.
    ///
    /// The file alone is not enough: redb reuses freed pages inside the file but rarely
    /// shrinks it, so after a full store is drained its file stays over the quota and
    /// Puts would be refused for good. Measuring the allocation walks every tree, so it
    /// happens only while the file is over the quota, at most once per interval (a refusal
    /// can outlast the Deletes that ended it by that long).
    fn measure_over_quota(&mut self) -> bool {
        let (Some(quota), Some(path)) = (self.quota, &self.path) else {
            return false;
        };
        let file_bytes = match std::fs::metadata(path) {
            Ok(metadata) => metadata.len(),
            Err(e) => {
                // Refusing every Put on a transient stat error would be worse.
                tracing::warn!("cannot measure store file {}: {e}", path.display());
                return false;
            }
        };
        if file_bytes <= quota {
            self.quota_measured_at = None;
            return false;
        }
        if let Some(at) = self.quota_measured_at
            && at.elapsed() < self.interval
        {
            return self.over_quota;
        }
        self.quota_measured_at = Some(Instant::now());
        // Pages that non-durable commits freed are only released by a durable one: a
        // checkpoint first, or Deletes would free nothing measurable until the next.
        if self.log.is_some()
            && self.since_checkpoint > 0
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!("store: checkpoint before measuring the quota failed: {e}");
        }
        match self.allocated_bytes() {
            Ok(allocated) => allocated > quota,
            Err(e) => {
                // The file is over the quota; without a better measure, that decides.
                tracing::warn!("cannot measure store allocation: {e}");
                true
            }
        }
    }

    /// Bytes of the pages redb has allocated (live data, tree nodes, metadata).
    fn allocated_bytes(&self) -> Result<u64, StoreError> {
        // Only this thread writes, so this transaction never waits for another.
        let txn = self.db.begin_write().map_err(db_error)?;
        let stats = txn.stats().map_err(db_error);
        txn.abort().map_err(db_error)?;
        let stats = stats?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }
}

/// A hash of one key of one table, for `gather`'s bookkeeping.
fn key_hash(table: Table, key: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    table.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

/// Opens the commit log of the database at `path` and replays what it holds into `db`
/// (one durable transaction), then starts a new epoch. Runs before the writer thread and
/// before any reader, so nobody sees the database without its logged batches.
pub(super) fn open_log(db: &Database, path: &Path) -> Result<CommitLog, StoreError> {
    let log_path = CommitLog::path_for(path);
    let log::Opened { mut log, records } = CommitLog::open(&log_path)?;
    // The file may have just been created: its directory entry must survive a power cut
    // before anything is acknowledged through it.
    log::sync_parent(&log_path)?;
    if !records.is_empty() {
        let mut txn = db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        let mut ops = 0;
        for body in &records {
            let batch = log::decode(body)
                .map_err(|e| StoreError::Database(format!("{}: {e}", log_path.display())))?;
            ops += batch.len();
            apply_ops(&txn, batch)?;
        }
        txn.commit().map_err(db_error)?;
        tracing::info!(
            "store: replayed {} batches ({ops} operations) from {}",
            records.len(),
            log_path.display()
        );
    }
    log.reset()?;
    Ok(log)
}

/// Applies `ops` in order inside `txn`, opening each table once per transaction.
fn apply_ops<'a>(
    txn: &WriteTransaction,
    ops: impl IntoIterator<Item = LoggedOp<'a>>,
) -> Result<(), StoreError> {
    let mut tables = HashMap::new();
    for op in ops {
        let name = match op {
            LoggedOp::Put { table, .. }
            | LoggedOp::Delete { table, .. }
            | LoggedOp::DeletePrefix { table, .. } => table,
        };
        let table = match tables.entry(name) {
            MapEntry::Occupied(open) => open.into_mut(),
            MapEntry::Vacant(slot) => slot.insert(
                txn.open_table(TableDefinition::<&[u8], &[u8]>::new(name))
                    .map_err(|e| StoreError::Database(format!("table {name}: {e}")))?,
            ),
        };
        match op {
            LoggedOp::Put { key, value, .. } => {
                table.insert(key, value).map_err(db_error)?;
            }
            LoggedOp::Delete { key, .. } => {
                table.remove(key).map_err(db_error)?;
            }
            LoggedOp::DeletePrefix { prefix, .. } => {
                let end = prefix_end(prefix);
                let upper = match &end {
                    Some(end) => Bound::Excluded(end.as_slice()),
                    None => Bound::Unbounded,
                };
                table
                    .retain_in::<&[u8], _>((Bound::Included(prefix), upper), |_, _| false)
                    .map_err(db_error)?;
            }
        }
    }
    Ok(())
}

/// Test instrumentation: holds the writer before its first batch and reports every
/// transaction, so tests can assert how requests were batched without timing.
#[cfg_attr(not(test), allow(dead_code))] // only the unit tests construct one
pub(super) struct Probe {
    /// The writer waits here once, before its first batch.
    hold: mpsc::Receiver<()>,
    /// One event per transaction attempted.
    events: mpsc::Sender<BatchEvent>,
    /// Replaces [`INTERVAL`].
    interval: Duration,
}

#[cfg(test)]
impl Probe {
    /// A probe, the hold that releases the writer, and the receiver of its events.
    pub(super) fn new(interval: Duration) -> (Hold, Probe, mpsc::Receiver<BatchEvent>) {
        let (release, hold) = mpsc::channel();
        let (events, receiver) = mpsc::channel();
        let probe = Probe {
            hold,
            events,
            interval,
        };
        (Hold(release), probe, receiver)
    }
}

/// Keeps a probed writer from starting; dropping it lets the writer go.
#[cfg(test)]
pub(crate) struct Hold(#[allow(dead_code)] mpsc::Sender<()>);

/// One write transaction as the probe saw it.
#[cfg_attr(not(test), allow(dead_code))] // read by the unit tests only
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchEvent {
    /// Operations in the transaction.
    pub ops: u64,
    /// Committed with an fsync.
    pub durable: bool,
    /// The transaction committed.
    pub ok: bool,
}
