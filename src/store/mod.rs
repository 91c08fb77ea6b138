//! The durable store: one redb database shared by the broker (sessions, queues, QoS 2
//! state, retained messages) and later flow state, written by one thread with group
//! commit.
//!
//! Invariants:
//! - Only the writer thread (`writer.rs`) opens write transactions; callers hand it
//!   operations through a FIFO queue (`queue.rs`) and never touch redb's writer
//!   themselves.
//! - [`Store::commit`] returns only after its operations are fsynced (or failed), and the
//!   operations of one call are applied atomically, in the order calls were submitted.
//!   [`Store::withdraw_created`] may take a Put out of a request still queued; a request
//!   left empty is answered at once, as it has nothing to make durable.
//!   With a file, the fsync is the commit log's (`log.rs`); redb's own file is fsynced
//!   at checkpoints, and the log is replayed into it when the store opens, before any
//!   reader.
//! - Readers ([`Store::get`], [`Store::scan`]) use redb read transactions (MVCC
//!   snapshots): they never wait for the writer and never see half a batch.
//! - Nothing here is global: every [`Store`] is its own database and writer thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(test)]
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::oneshot;

pub mod histogram;
mod log;
mod queue;
mod writer;

#[cfg(test)]
mod tests;

use queue::RequestQueue;
use writer::{Request, Writer};

/// Names a table; each subsystem declares its own constants, e.g.
/// `pub const SESSIONS: Table = Table("broker.sessions");`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table(pub &'static str);

impl Table {
    /// Every table maps bytes to bytes: callers own their encodings, so the file format
    /// does not change when a subsystem changes its value types.
    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.0)
    }
}

/// A stored `(key, value)` pair.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One change, applied by the writer thread inside a write transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`, replacing any previous value.
    Put {
        /// The table written; created on first use.
        table: Table,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key`; removing a missing key is not an error.
    Delete {
        /// The table written.
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
    /// Deletes every key starting with `prefix`.
    DeletePrefix {
        /// The table written.
        table: Table,
        /// Keys starting with these bytes are removed; an empty prefix empties the table.
        prefix: Vec<u8>,
    },
}

/// How to open a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The database file; `None` keeps everything in memory (redb's in-memory backend),
    /// for `persistence: memory`. Missing parent directories are created.
    pub path: Option<PathBuf>,
    /// redb's page cache in bytes, default 16 MiB (a Pi Zero 2 W has 512 MB).
    pub cache_bytes: usize,
    /// Most operations in one group commit (default 4096). One call is never split, so a
    /// single larger call still commits as one transaction.
    pub max_batch_ops: usize,
    /// Once a batch holds a commit someone waits for, how long it waits for more before
    /// committing (default 0: commit at once). The broker uses 1 ms: fewer fsyncs and
    /// transactions under a steady load, see the writer module.
    pub linger: std::time::Duration,
    /// Database file size beyond which Puts are refused with
    /// [`StoreError::QuotaExceeded`] (Deletes still work), unless redb has freed enough of
    /// the file for reuse. `None` = no quota. Ignored in memory mode, which has no file.
    pub quota_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            path: None,
            cache_bytes: 16 << 20,
            max_batch_ops: 4096,
            linger: std::time::Duration::ZERO,
            quota_bytes: None,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// redb or the file system failed; the message names the cause.
    #[error("store database error: {0}")]
    Database(String),
    /// The database file is over its quota, so nothing new is accepted (MQTT reason code
    /// 0x97); deleting data still works.
    #[error("store quota exceeded: delete data or raise the store quota")]
    QuotaExceeded,
    /// The store was closed, or its writer thread is gone.
    #[error("store is closed")]
    Closed,
}

/// Wraps any redb or io error; redb has one error type per call, and callers only need
/// the message (the broker logs it and answers "unspecified error").
fn db_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commit calls, durable and lazy (including refused ones).
    pub requests: u64,
    /// Write transactions committed (one per group commit).
    pub transactions: u64,
    /// Operations applied by committed transactions.
    pub ops: u64,
    /// Transactions committed with an fsync (`Durability::Immediate`).
    pub fsyncs: u64,
    /// Operations never written because a key was created and deleted again before it
    /// was: in one batch, or by a Delete that withdrew its Put from the queue (a message
    /// acknowledged before its commit ran).
    pub consumed: u64,
}

/// Shared between the handles and the writer thread.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    transactions: AtomicU64,
    ops: AtomicU64,
    fsyncs: AtomicU64,
    consumed: AtomicU64,
    /// Set by the writer when it stops because of a `close`, as opposed to a panic.
    closed: AtomicBool,
    /// How long each write transaction took to apply and commit (fsync included).
    commit_latency: histogram::Histogram,
}

/// What every clone of a [`Store`] shares.
struct Inner {
    /// Requests to the writer thread. Unbounded on purpose: a durable caller waits for its
    /// own completion, so the queue is bounded by the callers' own in-flight limits (the
    /// broker's receive maximum per connection), and a lazy caller must never block.
    queue: Arc<RequestQueue>,
    /// Read transactions are opened here, beside the writer, never through it.
    db: Arc<Database>,
    counters: Arc<Counters>,
    /// [`StoreOptions::linger`]: how long a quiet commit may wait for its ring.
    linger: std::time::Duration,
    /// Held only for its `Drop`, which joins the writer thread.
    _writer: JoinOnDrop,
}

impl Drop for Inner {
    /// Tells the writer no more requests come, which ends its loop after a final flush;
    /// `_writer` then joins the thread (fields drop after this runs).
    fn drop(&mut self) {
        self.queue.handles_gone();
    }
}

/// Joins the writer thread when the last handle goes, so the final flush has happened
/// once the last `Store` is dropped. It cannot hang: the queue already says the handles
/// are gone, so
/// the writer ends after at most the batch it is writing and one flush.
struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            // A writer that panicked has already failed its waiters (their completions
            // were dropped); re-raising here would turn a failed store into an abort.
            if thread.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

/// The store; cheap to clone, every clone is the same database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) and starts the writer thread.
    pub fn open(options: StoreOptions) -> Result<Store, StoreError> {
        Store::start(options, None)
    }

    /// Opens a store whose writer waits until the returned `Hold` is dropped before it
    /// takes its first batch, so a test can queue requests and know they share one batch;
    /// the receiver reports every transaction. `interval` replaces the one-second interval
    /// of lazy flushes and quota measurements.
    #[cfg(test)]
    pub(crate) fn open_held(
        options: StoreOptions,
        interval: std::time::Duration,
    ) -> Result<(Store, writer::Hold, mpsc::Receiver<writer::BatchEvent>), StoreError> {
        let (hold, probe, events) = writer::Probe::new(interval);
        let store = Store::start(options, Some(probe))?;
        Ok((store, hold, events))
    }

    fn start(options: StoreOptions, probe: Option<writer::Probe>) -> Result<Store, StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(options.cache_bytes);
        let db = match &options.path {
            Some(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::Database(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                builder
                    .create(path)
                    .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?
            }
            None => builder
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(db_error)?,
        };
        // With a file, batches are made durable in the commit log beside it (log.rs);
        // whatever the log holds goes into redb before anyone reads.
        let log = match &options.path {
            Some(path) => Some(writer::open_log(&db, path)?),
            None => None,
        };
        let db = Arc::new(db);
        let linger = options.linger;
        let queue = Arc::new(RequestQueue::new());
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(
            db.clone(),
            queue.clone(),
            counters.clone(),
            &options,
            log,
            probe,
        );
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                queue,
                db,
                counters,
                linger,
                _writer: JoinOnDrop(Some(thread)),
            }),
        })
    }

    /// Queues `request`, waking the writer unless `quiet`; `true` when a quiet request
    /// found the writer asleep and must be rung.
    fn submit(&self, request: Request, quiet: bool) -> Result<bool, StoreError> {
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let queue = &self.inner.queue;
        let pushed = if quiet {
            queue.push_quiet(request)
        } else {
            queue.push(request).map(|()| false)
        };
        // The push fails only once the writer has ended (closed, or panicked).
        pushed.map_err(|_| StoreError::Closed)
    }

    /// Applies `ops` atomically; returns once they are durable on disk (fsynced). Many
    /// concurrent callers share one fsync (group commit).
    ///
    /// The request is queued when the future is first polled; dropping the future after
    /// that does not withdraw it. An empty `ops` is a barrier: it returns once everything
    /// submitted before it, lazy commits included, is durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.commit_queued(ops).await
    }

    /// [`Store::commit`], except that the request is queued before this returns, so it
    /// is ordered before anything submitted afterwards (a lazy delete of the same key,
    /// say) even if the returned future is polled late.
    pub fn commit_queued(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.queue_commit(ops, false).0
    }

    /// [`Store::commit_queued`] without waking the writer thread: the request has its
    /// place in the queue now, but the writer sleeps on until another request wakes it
    /// (it then takes this one too) or someone calls [`Store::ring`]. When the returned
    /// flag is `true` (the writer was asleep), the caller must ring within
    /// [`Store::linger`] unless the commit has completed by then: the wait replaces the
    /// writer's linger. When `false`, the writer is busy and takes the request when it
    /// comes back to the queue.
    ///
    /// For the broker's QoS 1 delivery path: the subscriber's acknowledgement usually
    /// withdraws the message's Put ([`Store::withdraw_created`]) before the writer is
    /// ever woken; when the writer has it already, the acknowledgement's lazy Delete
    /// wakes it and it finds the message consumed. Either way the writer never takes a
    /// core in the middle of the delivery.
    pub fn commit_quiet(
        &self,
        ops: Vec<Op>,
    ) -> (
        impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        bool,
    ) {
        self.queue_commit(ops, true)
    }

    /// Wakes the writer for requests queued by [`Store::commit_quiet`]; does nothing when
    /// there are none.
    pub fn ring(&self) {
        self.inner.queue.ring();
    }

    /// How long a durable commit waits for company before its batch is written.
    pub fn linger(&self) -> std::time::Duration {
        self.inner.linger
    }

    /// Queues a durable commit (`quiet`: without waking the writer); the future of its
    /// completion, and whether the caller must ring (see [`Store::commit_quiet`]).
    fn queue_commit(
        &self,
        ops: Vec<Op>,
        quiet: bool,
    ) -> (
        impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        bool,
    ) {
        let (done, wait) = oneshot::channel();
        let request = Request::Commit {
            ops,
            done: Some(done),
            queued_at: Instant::now(),
        };
        let submitted = self.submit(request, quiet);
        let must_ring = matches!(submitted, Ok(true));
        let completion = async move {
            submitted?;
            // The writer completes every waiter; a dropped completion means it ended first.
            wait.await.map_err(|_| StoreError::Closed)?
        };
        (completion, must_ring)
    }

    /// Applies `ops` in the next batch without waiting and without forcing an fsync; they
    /// become durable within about one second (QoS 0 retained messages, counters). Order
    /// relative to other commits from the same caller is kept. A failure (quota, database)
    /// is logged, since nobody waits for it.
    pub fn commit_lazy(&self, ops: Vec<Op>) {
        let lazy = Request::Commit {
            ops,
            done: None,
            queued_at: Instant::now(),
        };
        if self.submit(lazy, false).is_err() {
            tracing::debug!("lazy store commit after close dropped");
        }
    }

    /// Whether the writer thread is asleep, with nothing queued that it was woken for: no
    /// batch is in progress. For tests that must know a request will find the writer
    /// waiting (a quiet commit then stays queued until it is rung).
    #[doc(hidden)]
    pub fn writer_idle(&self) -> bool {
        self.inner.queue.writer_idle()
    }

    /// How many times a commit or a ring has woken the sleeping writer thread, for tests
    /// that must show something did not.
    #[doc(hidden)]
    pub fn writer_wakes(&self) -> u64 {
        self.inner.queue.wakes()
    }

    /// Withdraws the Put that created `key` in `table` while the writer has not taken
    /// it yet: for a key that did not exist before that Put and was put only once (a QoS 1
    /// message queued for a persistent session, once its subscriber has acknowledged it).
    /// `true`: neither that Put nor the caller's Delete will be written, and a durable
    /// request left with nothing to write is answered now, without waking the writer.
    /// The writer is never woken here: a request with more left to write still waits
    /// for whatever it waited for before (its producer's ring, for a quiet one).
    /// `false`: the writer has the Put; delete the key as usual.
    ///
    /// Two exceptions to the rules of [`Store::commit`] follow, both harmless for such a
    /// key: the emptied request is answered ahead of requests queued before it (it is
    /// not a barrier: it never had an empty `ops`), and a store over its quota answers it
    /// Ok, since it no longer puts anything.
    pub fn withdraw_created(&self, table: Table, key: &[u8]) -> bool {
        let withdrawn = self.inner.queue.withdraw_put(table, key);
        if !matches!(withdrawn, queue::Withdrawn::NotQueued) {
            // The Put, and the Delete that need not be written.
            self.inner.counters.consumed.fetch_add(2, Ordering::Relaxed);
        }
        match withdrawn {
            queue::Withdrawn::NotQueued => false,
            queue::Withdrawn::Request(done) => {
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
                true
            }
            // The rest of the request still needs the writer, and gets it as the whole
            // would have: a quiet request from its producer's ring at the linger (the
            // broker's publisher keeps its timer until the commit is answered), any other
            // when the writer next takes the queue. Waking the writer here instead wrote
            // the rest before its own acknowledgement could withdraw it, and that
            // acknowledgement's Delete woke the writer again (docs/benchmarks.md,
            // "Session 16").
            queue::Withdrawn::Op => true,
        }
    }

    /// Every `(key, value)` in `table` whose key starts with `prefix`, in key order (a read
    /// transaction; never blocks the writer). A table never written reads as empty.
    pub fn scan(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let read = self.inner.db.begin_read().map_err(db_error)?;
        let table = match read.open_table(table.definition()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(e)),
        };
        let end = prefix_end(prefix);
        let range = table
            .range::<&[u8]>((
                std::ops::Bound::Included(prefix),
                match &end {
                    Some(end) => std::ops::Bound::Excluded(end.as_slice()),
                    None => std::ops::Bound::Unbounded,
                },
            ))
            .map_err(db_error)?;
        let mut out = Vec::new();
        for entry in range {
            let (key, value) = entry.map_err(db_error)?;
            out.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// The value of `key` in `table`, if any (a read transaction; never blocks the writer).
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.inner.db.begin_read().map_err(db_error)?;
        let table = match read.open_table(table.definition()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_error(e)),
        };
        Ok(table
            .get(key)
            .map_err(db_error)?
            .map(|value| value.value().to_vec()))
    }

    /// Flushes lazy operations durably and stops the writer thread. Later commits fail
    /// with [`StoreError::Closed`]; reads keep working until the last handle is dropped.
    /// Closing twice is not an error.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let answer = match self.inner.queue.push(Request::Close(done)) {
            Ok(()) => wait.await,
            Err(_) => return self.closed_before(),
        };
        // A dropped completion: another close was queued first, or the writer panicked.
        answer.unwrap_or_else(|_| self.closed_before())
    }

    /// The answer to a close that found the writer gone: fine after an earlier close, an
    /// error after a panic (lazy data may be lost).
    fn closed_before(&self) -> Result<(), StoreError> {
        if self.inner.counters.closed.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::Closed)
        }
    }

    /// Commit latency of every write transaction so far (apply and commit, fsync
    /// included), for `/metrics`.
    pub fn commit_latency(&self) -> histogram::HistogramSnapshot {
        self.inner.counters.commit_latency.snapshot()
    }

    /// Counters: commits requested, transactions written (batches), operations, fsyncs.
    pub fn stats(&self) -> StoreStats {
        let counters = &self.inner.counters;
        StoreStats {
            requests: counters.requests.load(Ordering::Relaxed),
            transactions: counters.transactions.load(Ordering::Relaxed),
            ops: counters.ops.load(Ordering::Relaxed),
            fsyncs: counters.fsyncs.load(Ordering::Relaxed),
            consumed: counters.consumed.load(Ordering::Relaxed),
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no
/// such key exists (the prefix is empty or all `0xff`), so a prefix scan is one bounded
/// range instead of a scan to the end of the table.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
