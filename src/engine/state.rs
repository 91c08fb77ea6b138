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
    pub fn new(store: Store) -> StateStore {
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
