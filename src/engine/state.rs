//! Persistent key/value state per node, on the process's one store: what a pulse meter's
//! counter, a script's `state.set` and a plugin's `kv_set` write.
//!
//! Keys live in the table `flow.state` as `STATE_KEY \0 KEY`, where `STATE_KEY` is the
//! node's `state_key:` (default `flow/node`), so a renamed node keeps its state by
//! naming its old key. Values are bytes; callers own their encoding.
//!
//! Invariants:
//! - [`NodeKv::set`] and [`NodeKv::commit`] return only once the change is fsynced:
//!   a node acknowledges the message that caused a change after that, so kill -9 never
//!   loses a change whose message was acknowledged.
//! - One [`NodeKv::commit`] is atomic: after a crash either all of its changes are
//!   there or none.
//! - A node sees only its own keys: nothing here can name another node's prefix.
//! - [`StagedKv`] (scripts, plugins) holds a batch's writes in memory and commits them
//!   in one [`NodeKv::commit_blocking`] from the transform's `finish_batch`, before any
//!   message of the batch is passed on (see `Transform::finish_batch`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{Op, Store, StoreError, StoreOptions, Table};

/// The table every node's state lives in.
pub const NODE_STATE: Table = Table("flow.state");

/// Separates the state key from the node's own key; `\0` cannot occur in a flow or node
/// name, nor in a `state_key` (the flow loader refuses it).
const SEPARATOR: u8 = 0;

/// The state of every node: a handle on the store, cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    store: Store,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

impl StateStore {
    /// State kept in `store` (the process's store: durable unless it is in memory).
    ///
    /// Also claims this start's message-id epoch from `store` (one small durable commit),
    /// so message ids never repeat those of an earlier run on the same store: see
    /// [`claim_id_epoch`].
    pub fn new(store: Store) -> StateStore {
        claim_id_epoch(&store);
        StateStore { store }
    }

    /// State kept in memory only, lost when the process ends: for `check`, unit tests and
    /// the node harness.
    pub fn memory() -> StateStore {
        let store = Store::open(StoreOptions::default())
            .expect("an in-memory store opens without touching the file system");
        StateStore { store }
    }

    /// The state of the node whose state key is `state_key`.
    pub fn node(&self, state_key: &str) -> NodeKv {
        let mut prefix = Vec::with_capacity(state_key.len() + 1);
        prefix.extend_from_slice(state_key.as_bytes());
        prefix.push(SEPARATOR);
        NodeKv {
            store: self.store.clone(),
            prefix,
        }
    }

    /// The underlying store (disk buffers of sinks share it).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// One node's key/value state. Reads are snapshots that never wait for the writer.
#[derive(Clone)]
pub struct NodeKv {
    store: Store,
    /// `STATE_KEY \0`.
    prefix: Vec<u8>,
}

impl std::fmt::Debug for NodeKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKv")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish()
    }
}

/// One change of a [`NodeKv::commit`]: `Some` sets the key, `None` removes it.
pub type Change = (String, Option<Vec<u8>>);

impl NodeKv {
    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key.as_bytes());
        full
    }

    fn op(&self, key: &str, value: Option<Vec<u8>>) -> Op {
        match value {
            Some(value) => Op::Put {
                table: NODE_STATE,
                key: self.full_key(key),
                value,
            },
            None => Op::Delete {
                table: NODE_STATE,
                key: self.full_key(key),
            },
        }
    }

    /// The value of `key`, as last committed (lazy sets included once applied).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(NODE_STATE, &self.full_key(key))
    }

    /// Every key of this node with its value, in key order.
    pub fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .store
            .scan(NODE_STATE, &self.prefix)?
            .into_iter()
            .map(|(key, value)| {
                let key = String::from_utf8_lossy(&key[self.prefix.len()..]).into_owned();
                (key, value)
            })
            .collect())
    }

    /// Sets `key` and returns once it is durable.
    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.store.commit(vec![self.op(key, Some(value))]).await
    }

    /// Removes `key` (a missing key is not an error) and returns once that is durable.
    pub async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.store.commit(vec![self.op(key, None)]).await
    }

    /// Applies `changes` atomically, in order, and returns once they are durable. An
    /// empty list returns at once.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let ops = changes
            .into_iter()
            .map(|(key, value)| self.op(&key, value))
            .collect();
        self.store.commit(ops).await
    }

    /// [`NodeKv::commit`] from a thread outside the runtime (a script or plugin on the
    /// blocking pool): blocks that thread until the changes are durable. Must not be
    /// called on a runtime worker.
    pub fn commit_blocking(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let ops = changes
            .into_iter()
            .map(|(key, value)| self.op(&key, value))
            .collect();
        block_on(self.store.commit_queued(ops))
    }

    /// Sets `key` without waiting; durable within about a second. For values that may lag
    /// behind what was acknowledged (a gauge's last reading), never for a counter whose
    /// loss would be visible.
    pub fn set_lazy(&self, key: &str, value: Vec<u8>) {
        self.store.commit_lazy(vec![self.op(key, Some(value))]);
    }
}

/// The table of the engine's own small records (the message-id epoch).
pub const ENGINE_META: Table = Table("engine.meta");
/// The key of the last message-id epoch claimed, a big-endian `u64`.
const ID_EPOCH_KEY: &[u8] = b"msg_id_epoch";

/// Makes the message ids of this process start above every id an earlier run on `store`
/// handed out: the epoch is the later of "now" (seconds since 2025) and one more than the
/// epoch the previous start stored, and is stored for the next start before any id of it
/// is used. A store that fails here is logged and left to the clock alone (ids are then
/// unique across runs unless the clock went back); the store's own callers report it.
pub fn claim_id_epoch(store: &Store) {
    let previous = match store.get(ENGINE_META, ID_EPOCH_KEY) {
        Ok(value) => value
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_be_bytes),
        Err(e) => {
            tracing::warn!("cannot read the message-id epoch, using the clock alone: {e}");
            return;
        }
    };
    let epoch = super::msg::clock_epoch().max(previous.saturating_add(1));
    let op = Op::Put {
        table: ENGINE_META,
        key: ID_EPOCH_KEY.to_vec(),
        value: epoch.to_be_bytes().to_vec(),
    };
    match block_on(store.commit_queued(vec![op])) {
        Ok(()) => super::msg::begin_id_epoch(epoch),
        Err(e) => tracing::warn!("cannot store the message-id epoch, using the clock alone: {e}"),
    }
}

/// Most distinct keys a [`StagedKv`] holds before its owner should commit early.
pub const STAGED_MAX_KEYS: usize = 4096;
/// Most value bytes a [`StagedKv`] holds before its owner should commit early.
pub const STAGED_MAX_BYTES: usize = 8 << 20;

/// A node's state with writes held in memory until the end of a batch: reads see the
/// staged writes first (removes included), then the store. The transform commits the
/// batch with [`StagedKv::commit_blocking`] in its `finish_batch`, before the batch's
/// messages are passed on, so many messages share one fsync instead of one each.
///
/// Clones share the same staged writes (a plugin's host functions and its node, or a
/// script's `state` and its node), so the writes outlive a plugin instance that is
/// rebuilt in the middle of a batch.
#[derive(Clone)]
pub struct StagedKv {
    kv: NodeKv,
    staged: Arc<Mutex<Staged>>,
}

#[derive(Default)]
struct Staged {
    /// Key -> new value (`None`: removed), each key once: the batch's net change.
    changes: HashMap<String, Option<Vec<u8>>>,
    /// Value bytes in `changes`, for the early-commit bound.
    bytes: usize,
}

impl std::fmt::Debug for StagedKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedKv")
            .field("kv", &self.kv)
            .field("staged", &self.lock().changes.len())
            .finish()
    }
}

impl StagedKv {
    /// Staging in front of `kv`, empty.
    pub fn new(kv: NodeKv) -> StagedKv {
        StagedKv {
            kv,
            staged: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Staged> {
        // A panic while holding the lock leaves a consistent map (every change is one
        // insert), so a poisoned lock is still usable.
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's store behind the staging.
    pub fn kv(&self) -> &NodeKv {
        &self.kv
    }

    /// The value of `key`: the staged write if there is one, else the committed value.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(staged) = self.lock().changes.get(key) {
            return Ok(staged.clone());
        }
        self.kv.get(key)
    }

    /// Adds `changes` (of one message that succeeded) to the batch, later ones replacing
    /// earlier ones of the same key. Returns `true` once the batch holds more than
    /// [`STAGED_MAX_KEYS`] keys or [`STAGED_MAX_BYTES`] bytes: the owner should commit
    /// now rather than at the end of the batch, to bound memory.
    pub fn stage(&self, changes: impl IntoIterator<Item = Change>) -> bool {
        let mut staged = self.lock();
        for (key, value) in changes {
            let added = value.as_ref().map_or(0, Vec::len);
            let replaced = staged.changes.insert(key, value);
            let removed = replaced.flatten().map_or(0, |v| v.len());
            staged.bytes = staged.bytes.saturating_sub(removed) + added;
        }
        staged.changes.len() > STAGED_MAX_KEYS || staged.bytes > STAGED_MAX_BYTES
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.lock().changes.is_empty()
    }

    /// Commits everything staged in one atomic, durable commit, blocking this thread
    /// until it is on disk (call it from the blocking pool, never on a runtime worker).
    /// The staging is empty afterwards either way: after a failure reads see the store
    /// again, which is what survived.
    pub fn commit_blocking(&self) -> Result<(), StoreError> {
        let changes: Vec<Change> = {
            let mut staged = self.lock();
            staged.bytes = 0;
            staged.changes.drain().collect()
        };
        self.kv.commit_blocking(changes)
    }

    /// Drops everything staged (the batch's messages failed).
    pub fn discard(&self) {
        let mut staged = self.lock();
        staged.changes.clear();
        staged.bytes = 0;
    }
}

/// Drives `future` to completion on the current thread. The store's completion is a
/// oneshot channel fed by the writer thread, so no runtime is needed to wait for it.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_per_node_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let open = || {
            StateStore::new(
                Store::open(StoreOptions {
                    path: Some(path.clone()),
                    ..StoreOptions::default()
                })
                .unwrap(),
            )
        };
        let states = open();
        let meter = states.node("energy/meter");
        let other = states.node("energy/meter2");
        meter.set("counter", b"42".to_vec()).await.unwrap();
        other.set("counter", b"7".to_vec()).await.unwrap();
        meter
            .commit(vec![
                ("a".into(), Some(b"1".to_vec())),
                ("b".into(), Some(b"2".to_vec())),
                ("a".into(), None),
            ])
            .await
            .unwrap();
        states.store().close().await.unwrap();
        drop((states, meter, other));

        let states = open();
        let meter = states.node("energy/meter");
        assert_eq!(meter.get("counter").unwrap(), Some(b"42".to_vec()));
        assert_eq!(meter.get("a").unwrap(), None);
        assert_eq!(
            meter.entries().unwrap(),
            vec![
                ("b".to_string(), b"2".to_vec()),
                ("counter".to_string(), b"42".to_vec())
            ]
        );
        // "energy/meter2" starts with "energy/meter" but is another node.
        assert_eq!(
            states.node("energy/meter2").entries().unwrap(),
            vec![("counter".to_string(), b"7".to_vec())]
        );
    }

    #[test]
    fn staged_writes_are_read_first_and_committed_together() {
        let states = StateStore::memory();
        let node = states.node("f/n");
        node.commit_blocking(vec![("old".into(), Some(b"1".to_vec()))])
            .unwrap();
        let staged = StagedKv::new(node.clone());
        let other_handle = staged.clone();
        assert!(!staged.stage(vec![
            ("a".into(), Some(b"x".to_vec())),
            ("old".into(), None),
        ]));
        // Clones share the staging; reads see it before the store, removes included.
        assert_eq!(other_handle.get("a").unwrap(), Some(b"x".to_vec()));
        assert_eq!(other_handle.get("old").unwrap(), None);
        assert_eq!(node.get("a").unwrap(), None, "nothing stored yet");
        assert_eq!(node.get("old").unwrap(), Some(b"1".to_vec()));
        let requests = states.store().stats().requests;
        staged.commit_blocking().unwrap();
        assert_eq!(states.store().stats().requests, requests + 1, "one commit");
        assert!(staged.is_empty());
        assert_eq!(node.get("a").unwrap(), Some(b"x".to_vec()));
        assert_eq!(node.get("old").unwrap(), None);

        // Discarded writes are gone, and reads see the store again.
        staged.stage(vec![("a".into(), Some(b"y".to_vec()))]);
        staged.discard();
        assert_eq!(staged.get("a").unwrap(), Some(b"x".to_vec()));

        // A batch too large to wait says so.
        let big = vec![0u8; STAGED_MAX_BYTES / 2];
        assert!(!staged.stage(vec![("b1".into(), Some(big.clone()))]));
        assert!(
            !staged.stage(vec![("b1".into(), Some(big.clone()))]),
            "replaced, not added"
        );
        assert!(staged.stage(vec![
            ("b2".into(), Some(big.clone())),
            ("b3".into(), Some(big))
        ]));
        staged.discard();
        let many = (0..=STAGED_MAX_KEYS).map(|i| (format!("k{i}"), None));
        assert!(staged.stage(many));

        // A failed commit empties the staging too: reads show what survived.
        staged.discard();
        staged.stage(vec![("a".into(), Some(b"z".to_vec()))]);
        close_blocking(&states);
        assert!(staged.commit_blocking().is_err());
        assert_eq!(staged.get("a").unwrap(), Some(b"x".to_vec()));
    }

    /// Closes the store from outside a runtime.
    fn close_blocking(states: &StateStore) {
        block_on(states.store().close()).unwrap();
    }

    #[test]
    fn each_store_start_claims_a_later_id_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let open = || {
            Store::open(StoreOptions {
                path: Some(path.clone()),
                ..StoreOptions::default()
            })
            .unwrap()
        };
        let epoch = |store: &Store| {
            let bytes = store.get(ENGINE_META, ID_EPOCH_KEY).unwrap().unwrap();
            u64::from_be_bytes(bytes.try_into().unwrap())
        };
        let store = open();
        let _states = StateStore::new(store.clone());
        let first = epoch(&store);
        assert!(first >= super::super::msg::clock_epoch() - 1);
        block_on(store.close()).unwrap();
        drop((store, _states));
        // A restart within the same second still gets a later epoch.
        let store = open();
        let _states = StateStore::new(store.clone());
        assert!(epoch(&store) > first);
        block_on(store.close()).unwrap();
    }

    #[test]
    fn commit_blocking_works_outside_a_runtime() {
        let states = StateStore::memory();
        let node = states.node("f/n");
        node.commit_blocking(vec![("k".into(), Some(b"v".to_vec()))])
            .unwrap();
        assert_eq!(node.get("k").unwrap(), Some(b"v".to_vec()));
        node.commit_blocking(vec![("k".into(), None)]).unwrap();
        assert_eq!(node.get("k").unwrap(), None);
    }
}
