//! The test host: on targets other than wasm32 the SDK's host functions talk to this
//! in-process stand-in, so a plugin's functions can be run by `cargo test` natively.
//! It keeps the host's rules: emits and key/value writes of a failed call are
//! discarded, an emit to an unknown port is refused, keys and values are bounded.
//!
//! The host's state is per thread (the test runner gives each test its own thread), but
//! a plugin's [`Global`](crate::Global)s are statics shared by every thread, so the
//! tests that call [`reset`] run one at a time: the first `reset` of a thread waits
//! for the previous such test's thread to end.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use std::thread_local;

use crate::log::Level;
use crate::{Error, Message};

/// A message the plugin emitted, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The output port number.
    pub port: u32,
    /// As emitted: 0 means "the input's".
    pub timestamp_ms: i64,
    /// As emitted: empty means "the input's".
    pub topic: String,
    /// As emitted: empty means "the input's".
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Emitted {
    /// The payload as text (lossy).
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What one call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The code returned to the host: 0 handled, anything else failed.
    pub code: i32,
    /// The messages emitted (none when the call failed, as with the real host).
    pub emits: Vec<Emitted>,
    /// The lines logged during the call.
    pub logs: Vec<(Level, String)>,
}

struct Host {
    now_ms: i64,
    ports: u32,
    committed: BTreeMap<String, Vec<u8>>,
    pending: BTreeMap<String, Option<Vec<u8>>>,
    emits: Vec<Emitted>,
    logs: Vec<(Level, String)>,
}

impl Host {
    const fn new() -> Self {
        Host {
            now_ms: 0,
            ports: 1,
            committed: BTreeMap::new(),
            pending: BTreeMap::new(),
            emits: Vec::new(),
            logs: Vec::new(),
        }
    }
}

thread_local! {
    static HOST: RefCell<Host> = const { RefCell::new(Host::new()) };
}

/// Held by the thread of the test that uses the host; see the module's documentation.
static INSTANCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static HOLDS_INSTANCE: RefCell<Option<std::sync::MutexGuard<'static, ()>>> =
        const { RefCell::new(None) };
}

/// Forgets all state: time 0, one port, no keys. The first call on a thread also waits
/// until no other test thread uses the plugin (its `Global`s are shared), and keeps it
/// to itself until the thread (the test) ends.
pub fn reset() {
    HOLDS_INSTANCE.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_none() {
            // A test that panicked poisons it; the next one starts from `reset` anyway.
            *held = Some(
                INSTANCE
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
        }
    });
    HOST.with(|host| *host.borrow_mut() = Host::new());
}

/// Sets what `now_ms()` returns.
pub fn set_now_ms(now_ms: i64) {
    HOST.with(|host| host.borrow_mut().now_ms = now_ms);
}

/// Sets how many output ports the node has (`ports:`; 1 by default).
pub fn set_ports(ports: u32) {
    HOST.with(|host| host.borrow_mut().ports = ports);
}

/// The committed value of a key.
pub fn stored(key: &str) -> Option<Vec<u8>> {
    HOST.with(|host| host.borrow().committed.get(key).cloned())
}

/// Runs a plugin's message function as the host would: the message crosses as a
/// record, and on failure the call's emits and key/value writes are discarded.
pub fn run<F>(handler: F, msg: &Message<'_>) -> Outcome
where
    F: FnOnce(&Message<'_>) -> Result<(), Error>,
{
    let record = msg.encode();
    let code = crate::record::dispatch(&record, handler);
    finish(code)
}

/// Runs a plugin's init function on a config given as JSON text, as the host would.
pub fn init<F>(init: F, config: &str) -> Outcome
where
    F: FnOnce(&[u8]) -> Result<(), Error>,
{
    let code = match init(config.as_bytes()) {
        Ok(()) => 0,
        Err(error) => error.code(),
    };
    finish(code)
}

fn finish(code: i32) -> Outcome {
    HOST.with(|host| {
        let mut host = host.borrow_mut();
        let pending = core::mem::take(&mut host.pending);
        let mut emits = core::mem::take(&mut host.emits);
        if code == 0 {
            for (key, value) in pending {
                match value {
                    Some(value) => host.committed.insert(key, value),
                    None => host.committed.remove(&key),
                };
            }
        } else {
            emits.clear();
        }
        Outcome {
            code,
            emits,
            logs: core::mem::take(&mut host.logs),
        }
    })
}

/// The host's side of the imports.
pub(crate) mod host {
    use super::*;

    pub(crate) fn emit(port: i32, record: &[u8]) -> i32 {
        HOST.with(|host| {
            let mut host = host.borrow_mut();
            if port < 0 || port as u32 >= host.ports {
                return -1;
            }
            if host.emits.len() >= 1024 {
                return -3;
            }
            let Ok(msg) = Message::decode(record) else {
                return -2;
            };
            host.emits.push(Emitted {
                port: port as u32,
                timestamp_ms: msg.timestamp_ms,
                topic: msg.topic.to_string(),
                headers: msg
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect(),
                payload: msg.payload.to_vec(),
            });
            0
        })
    }

    pub(crate) fn log(level: Level, text: &str) {
        HOST.with(|host| host.borrow_mut().logs.push((level, text.to_string())));
    }

    pub(crate) fn now_ms() -> i64 {
        HOST.with(|host| host.borrow().now_ms)
    }

    pub(crate) fn kv_get(key: &str, buf: &mut [core::mem::MaybeUninit<u8>]) -> i32 {
        HOST.with(|host| {
            let host = host.borrow();
            let value = match host.pending.get(key) {
                Some(pending) => pending.as_ref(),
                None => host.committed.get(key),
            };
            let Some(value) = value else {
                return -1;
            };
            for (slot, byte) in buf.iter_mut().zip(value) {
                slot.write(*byte);
            }
            value.len() as i32
        })
    }

    pub(crate) fn kv_set(key: &str, value: Option<&[u8]>) -> i32 {
        if key.len() > crate::kv::MAX_KEY_LEN
            || value.is_some_and(|value| value.len() > crate::kv::MAX_VALUE_LEN)
        {
            return -3;
        }
        HOST.with(|host| {
            host.borrow_mut()
                .pending
                .insert(key.to_string(), value.map(<[u8]>::to_vec));
        });
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmitError, emit, emit_to, kv, now_ms};

    fn copy_twice(msg: &Message<'_>) -> Result<(), Error> {
        kv::set("seen", msg.payload)?;
        emit(&Message::new(msg.payload))?;
        emit_to(1, &Message::new(b"alert").with_topic("a"))?;
        if msg.payload == b"fail" {
            return Err(Error::fail("told to fail"));
        }
        Ok(())
    }

    #[test]
    fn a_successful_call_emits_and_commits() {
        reset();
        set_ports(2);
        let outcome = run(copy_twice, &Message::new(b"x").with_topic("t"));
        assert_eq!(outcome.code, 0);
        assert_eq!(outcome.emits.len(), 2);
        assert_eq!(outcome.emits[0].payload, b"x");
        assert_eq!(
            (outcome.emits[1].port, outcome.emits[1].topic.as_str()),
            (1, "a")
        );
        assert_eq!(stored("seen").as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn a_failed_call_leaves_nothing_behind_but_its_log() {
        reset();
        set_ports(2);
        let outcome = run(copy_twice, &Message::new(b"fail"));
        assert_eq!(outcome.code, 1);
        assert!(outcome.emits.is_empty());
        assert_eq!(outcome.logs, [(Level::Warn, "told to fail".to_string())]);
        assert_eq!(stored("seen"), None);
    }

    #[test]
    fn an_unknown_port_is_refused_and_fails_the_call_with_its_code() {
        reset();
        let outcome = run(copy_twice, &Message::new(b"x"));
        assert_eq!(outcome.code, Error::from(EmitError::UnknownPort).code());
        assert_eq!(outcome.code, 11);
    }

    #[test]
    fn kv_reads_see_the_calls_own_writes_and_large_values() {
        reset();
        let big = alloc::vec![7u8; 5000];
        let outcome = run(
            |_| {
                assert_eq!(kv::get("k")?, None);
                kv::set("k", &big)?;
                assert_eq!(kv::get("k")?.as_deref(), Some(&big[..]));
                kv::delete("k")?;
                assert_eq!(kv::get("k")?, None);
                assert_eq!(
                    kv::set(&"k".repeat(257), b""),
                    Err(crate::KvError::TooLarge)
                );
                Ok(())
            },
            &Message::new(b""),
        );
        assert_eq!(outcome.code, 0);
        set_now_ms(42);
        assert_eq!(now_ms(), 42);
    }
}
