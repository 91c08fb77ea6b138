//! `state`, a script's persistent key/value state: `state.get(key)`, `state.set(key,
//! value)`, `state.remove(key)`, and `state.key` / `state["key"]` as shorthands, kept as
//! JSON in the node's [`NodeKv`].
//!
//! Writes of one run (one message) are held here; when the script succeeded they join
//! the batch's writes ([`ScriptState::end_run`], a [`StagedKv`]), which the node commits
//! in one durable commit at the end of the batch ([`ScriptState::commit_batch`]), before
//! any of the batch's messages go on. A failed run's writes are dropped
//! ([`ScriptState::discard`]): a message that fails changes nothing. Reads see the run's
//! own writes first, then the batch's, then the store.

use std::sync::{Arc, Mutex};

use rhai::{Dynamic, Engine, EvalAltResult, Position};

use crate::engine::NodeKv;
use crate::engine::state::{Change, StagedKv};
use crate::store::StoreError;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, as JSON, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys one run may change (each becomes a write in the store).
pub const MAX_CHANGES_PER_RUN: usize = 1024;

/// The `state` a script sees; clones share the same pending writes.
#[derive(Clone)]
pub struct ScriptState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The batch's writes in front of the node's store; `None` for a script run without
    /// a node (tests of the engine alone), whose state then lives in `pending` only.
    kv: Option<StagedKv>,
    /// This run's writes, in order; `None` removes.
    pending: Mutex<Vec<Change>>,
}

impl std::fmt::Debug for ScriptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptState").finish_non_exhaustive()
    }
}

impl ScriptState {
    /// The state of the node owning `kv`.
    pub fn new(kv: NodeKv) -> ScriptState {
        ScriptState {
            inner: Arc::new(Inner {
                kv: Some(StagedKv::new(kv)),
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A state with no store behind it: writes stay pending until taken.
    pub fn detached() -> ScriptState {
        ScriptState {
            inner: Arc::new(Inner {
                kv: None,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Change>> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writes of the run so far, in order, leaving none pending.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut *self.pending())
    }

    /// Drops the run's writes (the script failed).
    pub fn discard(&self) {
        self.pending().clear();
    }

    /// The run succeeded: its writes join the batch's. Returns `true` when the batch
    /// holds so much that it should be committed now ([`StagedKv::stage`]). Without a
    /// store the writes stay pending.
    pub fn end_run(&self) -> bool {
        let Some(kv) = &self.inner.kv else {
            return false;
        };
        let changes = self.take_changes();
        !changes.is_empty() && kv.stage(changes)
    }

    /// Commits the batch's writes in one durable commit (blocking: the blocking pool
    /// only). A run's writes not ended with [`ScriptState::end_run`] are not part of it.
    /// After a failure the batch's writes are gone and reads see the store again.
    pub fn commit_batch(&self) -> Result<(), StoreError> {
        match &self.inner.kv {
            Some(kv) => kv.commit_blocking(),
            None => Ok(()),
        }
    }

    /// Drops the batch's writes (its messages are failed).
    pub fn discard_batch(&self) {
        if let Some(kv) = &self.inner.kv {
            kv.discard();
        }
    }

    /// The node's store.
    pub fn kv(&self) -> Option<&NodeKv> {
        self.inner.kv.as_ref().map(StagedKv::kv)
    }

    fn get(&self, key: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        if let Some((_, value)) = self.pending().iter().rev().find(|(k, _)| k == key) {
            return decode(key, value.as_deref());
        }
        let Some(kv) = &self.inner.kv else {
            return Ok(Dynamic::UNIT);
        };
        let stored = kv
            .get(key)
            .map_err(|e| error(format!("state.get(\"{key}\"): the store failed: {e}")))?;
        decode(key, stored.as_deref())
    }

    fn set(&self, key: &str, value: Dynamic) -> Result<(), Box<EvalAltResult>> {
        check_key(key)?;
        if value.is_unit() {
            return self.change(key, None);
        }
        let json = serde_json::to_vec(&value).map_err(|e| {
            error(format!(
                "state.set(\"{key}\", ...): a {} cannot be stored as JSON: {e}",
                value.type_name()
            ))
        })?;
        if json.len() > MAX_VALUE_BYTES {
            return Err(error(format!(
                "state.set(\"{key}\", ...): the value is {} bytes as JSON, more than the {MAX_VALUE_BYTES} a state value may hold",
                json.len()
            )));
        }
        self.change(key, Some(json))
    }

    fn change(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), Box<EvalAltResult>> {
        let mut pending = self.pending();
        if let Some(slot) = pending.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
            return Ok(());
        }
        if pending.len() >= MAX_CHANGES_PER_RUN {
            return Err(error(format!(
                "a script may change at most {MAX_CHANGES_PER_RUN} state keys per message"
            )));
        }
        pending.push((key.to_string(), value));
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), Box<EvalAltResult>> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(error(format!(
            "a state key must be 1 to {MAX_KEY_BYTES} bytes long, not {}",
            key.len()
        )));
    }
    Ok(())
}

fn decode(key: &str, json: Option<&[u8]>) -> Result<Dynamic, Box<EvalAltResult>> {
    match json {
        None => Ok(Dynamic::UNIT),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            error(format!(
                "state.get(\"{key}\"): the stored value is not JSON ({e}); state.remove(\"{key}\") clears it"
            ))
        }),
    }
}

fn error(message: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(message.into(), Position::NONE))
}

/// Teaches `engine` the `state` type: its methods and the `state.key` / `state["key"]`
/// shorthands (Rhai falls back to the indexer for properties it does not know).
pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<ScriptState>("State")
        .register_fn("get", |s: &mut ScriptState, key: &str| s.get(key))
        .register_fn(
            "get",
            |s: &mut ScriptState,
             key: &str,
             default: Dynamic|
             -> Result<Dynamic, Box<EvalAltResult>> {
                let value = s.get(key)?;
                Ok(if value.is_unit() { default } else { value })
            },
        )
        .register_fn("set", |s: &mut ScriptState, key: &str, value: Dynamic| {
            s.set(key, value)
        })
        .register_fn("remove", |s: &mut ScriptState, key: &str| {
            check_key(key)?;
            s.change(key, None)
        })
        .register_indexer_get(|s: &mut ScriptState, key: &str| s.get(key))
        .register_indexer_set(|s: &mut ScriptState, key: &str, value: Dynamic| s.set(key, value));
}
