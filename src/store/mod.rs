//! The durable store: one redb database shared by the broker (sessions, queues, QoS 2
//! state, retained messages) and later flow state, with group commit.
//!
//! One writer thread owns every write transaction. Callers send batches of operations
//! with an optional completion; the writer takes the first request, drains whatever else
//! is already waiting (up to `max_batch_ops`), applies all of it in one transaction and
//! commits once. While one fsync runs, the next batch gathers in the channel, so under
//! load many acknowledgements share one fsync and when idle a commit waits for nobody
//! (no timer adds latency). Readers use redb read transactions and never wait for the
//! writer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// Names a table; each subsystem declares its own constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table(pub &'static str);

impl Table {
    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.0)
    }
}

/// A stored `(key, value)`.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One change.
#[derive(Clone, Debug)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// Table.
        table: Table,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// Table.
        table: Table,
        /// Key.
        key: Vec<u8>,
    },
    /// Removes every key starting with `prefix`.
    DeletePrefix {
        /// Table.
        table: Table,
        /// Prefix.
        prefix: Vec<u8>,
    },
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The database file; `None` keeps everything in memory (`persistence: memory`).
    pub path: Option<PathBuf>,
    /// redb's cache (a Pi Zero 2 W has 512 MB).
    pub cache_bytes: usize,
    /// Most operations in one group commit.
    pub max_batch_ops: usize,
    /// File size beyond which Puts are refused with [`StoreError::QuotaExceeded`].
    pub quota_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            path: None,
            cache_bytes: 16 << 20,
            max_batch_ops: 4096,
            quota_bytes: None,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// redb or the file system failed.
    #[error("database error: {0}")]
    Database(String),
    /// The store is over its quota; nothing new is accepted (MQTT reason 0x97).
    #[error("store quota exceeded")]
    QuotaExceeded,
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

fn db_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commit requests (durable and lazy).
    pub requests: u64,
    /// Write transactions committed.
    pub transactions: u64,
    /// Operations applied.
    pub ops: u64,
    /// Transactions committed with an fsync.
    pub fsyncs: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    transactions: AtomicU64,
    ops: AtomicU64,
    fsyncs: AtomicU64,
}

enum Request {
    Commit {
        ops: Vec<Op>,
        /// `None` for a lazy commit.
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Close(oneshot::Sender<Result<(), StoreError>>),
}

struct Inner {
    db: Arc<Database>,
    sender: Mutex<Option<mpsc::Sender<Request>>>,
    counters: Arc<Counters>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender ends the writer loop after it flushes what it has.
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

impl Store {
    /// Opens (creating if needed) and starts the writer thread.
    pub fn open(options: StoreOptions) -> Result<Store, StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(options.cache_bytes);
        let db = match &options.path {
            Some(path) => builder.create(path).map_err(db_error)?,
            None => builder
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(db_error)?,
        };
        let db = Arc::new(db);
        let (sender, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            db: db.clone(),
            receiver,
            counters: counters.clone(),
            max_batch_ops: options.max_batch_ops.max(1),
            path: options.path.clone(),
            quota: options.quota_bytes,
            over_quota: false,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(db_error)?;
        Ok(Store(Arc::new(Inner {
            db,
            sender: Mutex::new(Some(sender)),
            counters,
            writer: Mutex::new(Some(handle)),
        })))
    }

    fn submit(&self, request: Request) -> Result<(), StoreError> {
        let sender = self.0.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => sender.send(request).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Applies `ops` atomically; returns once they are durable on disk. Concurrent
    /// callers share one fsync (group commit).
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.0.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.submit(Request::Commit {
            ops,
            done: Some(done),
        })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Applies `ops` in the next batch without waiting or forcing an fsync; they are
    /// durable within about a second. Order with other commits of the caller is kept.
    pub fn commit_lazy(&self, ops: Vec<Op>) {
        self.0.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.submit(Request::Commit { ops, done: None }).is_err() {
            tracing::debug!("lazy store commit after close dropped");
        }
    }

    /// Every `(key, value)` of `table` whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let read = self.0.db.begin_read().map_err(db_error)?;
        let table = match read.open_table(table.definition()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(e)),
        };
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(prefix..).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// One value.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.0.db.begin_read().map_err(db_error)?;
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

    /// Flushes lazy operations durably and stops the writer. Later commits fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        if self.submit(Request::Close(done)).is_err() {
            return Ok(());
        }
        self.0
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.0.counters;
        StoreStats {
            requests: c.requests.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
        }
    }
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    receiver: mpsc::Receiver<Request>,
    counters: Arc<Counters>,
    max_batch_ops: usize,
    path: Option<PathBuf>,
    quota: Option<u64>,
    over_quota: bool,
}

/// Lazy operations become durable at the latest this long after they were applied.
const LAZY_FLUSH: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self) {
        let mut unsynced_since: Option<Instant> = None;
        loop {
            let first = match unsynced_since {
                // Lazy data waits: wake in time to make it durable.
                Some(since) => {
                    let left = LAZY_FLUSH.saturating_sub(since.elapsed());
                    match self.receiver.recv_timeout(left) {
                        Ok(request) => request,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if self.apply(Vec::new(), true).is_ok() {
                                unsynced_since = None;
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            let _ = self.apply(Vec::new(), true);
                            return;
                        }
                    }
                }
                None => match self.receiver.recv() {
                    Ok(request) => request,
                    Err(_) => return,
                },
            };
            let mut batch = Vec::new();
            let mut waiters = Vec::new();
            let mut close = None;
            let mut count = 0;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Commit { ops, done } => {
                        count += ops.len().max(1);
                        batch.extend(ops);
                        if let Some(done) = done {
                            waiters.push(done);
                        }
                    }
                    Request::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if count >= self.max_batch_ops {
                    break;
                }
                next = self.receiver.try_recv().ok();
            }
            let durable = !waiters.is_empty() || close.is_some();
            let result = if batch.is_empty() && !durable {
                Ok(())
            } else {
                self.apply(batch, durable)
            };
            match (&result, durable) {
                (Ok(()), true) => unsynced_since = None,
                (Ok(()), false) => {
                    unsynced_since.get_or_insert_with(Instant::now);
                }
                (Err(e), _) => tracing::warn!("store commit failed: {e}"),
            }
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            if let Some(done) = close {
                let _ = done.send(result);
                return;
            }
        }
    }

    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Result<(), StoreError> {
        if self.over_quota && ops.iter().any(|op| matches!(op, Op::Put { .. })) {
            return Err(StoreError::QuotaExceeded);
        }
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_error)?;
        let n = ops.len() as u64;
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    let mut table = txn.open_table(table.definition()).map_err(db_error)?;
                    table
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(db_error)?;
                }
                Op::Delete { table, key } => {
                    let mut table = txn.open_table(table.definition()).map_err(db_error)?;
                    table.remove(key.as_slice()).map_err(db_error)?;
                }
                Op::DeletePrefix { table, prefix } => {
                    let mut table = txn.open_table(table.definition()).map_err(db_error)?;
                    let keys: Vec<Vec<u8>> = table
                        .range::<&[u8]>(prefix.as_slice()..)
                        .map_err(db_error)?
                        .map_while(|entry| {
                            let (key, _) = entry.ok()?;
                            let key = key.value().to_vec();
                            key.starts_with(&prefix).then_some(key)
                        })
                        .collect();
                    for key in keys {
                        table.remove(key.as_slice()).map_err(db_error)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_error)?;
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters.ops.fetch_add(n, Ordering::Relaxed);
        if durable {
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(quota), Some(path)) = (self.quota, &self.path) {
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            self.over_quota = size > quota;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table("test");

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            table: T,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn put_scan_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(StoreOptions {
            path: Some(path.clone()),
            ..StoreOptions::default()
        })
        .unwrap();
        assert!(store.scan(T, b"").unwrap().is_empty(), "no table yet");
        store
            .commit(vec![put("a/1", "x"), put("a/2", "y"), put("b/1", "z")])
            .await
            .unwrap();
        assert_eq!(store.scan(T, b"a/").unwrap().len(), 2);
        store
            .commit(vec![Op::DeletePrefix {
                table: T,
                prefix: b"a/".to_vec(),
            }])
            .await
            .unwrap();
        store.commit_lazy(vec![put("c", "lazy")]);
        store.close().await.unwrap();
        assert_eq!(
            store.commit(vec![put("d", "")]).await,
            Err(StoreError::Closed)
        );
        drop(store);
        let store = Store::open(StoreOptions {
            path: Some(path),
            ..StoreOptions::default()
        })
        .unwrap();
        let all = store.scan(T, b"").unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![b"b/1".as_slice(), b"c".as_slice()]);
        assert_eq!(
            store.get(T, b"c").unwrap().as_deref(),
            Some(b"lazy".as_slice())
        );
    }

    #[tokio::test]
    async fn memory_store_starts_empty() {
        let store = Store::open(StoreOptions::default()).unwrap();
        store.commit(vec![put("k", "v")]).await.unwrap();
        assert_eq!(
            store.get(T, b"k").unwrap().as_deref(),
            Some(b"v".as_slice())
        );
        let other = Store::open(StoreOptions::default()).unwrap();
        assert_eq!(other.get(T, b"k").unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions {
            path: Some(dir.path().join("s.redb")),
            ..StoreOptions::default()
        })
        .unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.commit(vec![put(&format!("k{i:03}"), "v")]).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stats = store.stats();
        assert_eq!(store.scan(T, b"k").unwrap().len(), 200);
        assert_eq!(stats.ops, 200);
        // Every request is in some transaction; never more transactions than requests.
        assert!(stats.transactions <= stats.requests, "{stats:?}");
    }

    #[tokio::test]
    async fn quota_refuses_puts_but_not_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions {
            path: Some(dir.path().join("s.redb")),
            quota_bytes: Some(1),
            ..StoreOptions::default()
        })
        .unwrap();
        // The first commit is measured after it lands; from then on the file is over.
        store.commit(vec![put("a", "1")]).await.unwrap();
        assert_eq!(
            store.commit(vec![put("b", "2")]).await,
            Err(StoreError::QuotaExceeded)
        );
        store
            .commit(vec![Op::Delete {
                table: T,
                key: b"a".to_vec(),
            }])
            .await
            .unwrap();
        assert_eq!(store.get(T, b"a").unwrap(), None);
    }
}
