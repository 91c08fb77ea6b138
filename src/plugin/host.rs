//! The host side of one plugin instance: the store's state, the `hw` (and `env.abort`)
//! imports, and the calls into the guest with their limits and faults.
//!
//! An instance is used by one thread at a time (the node's batch on the blocking pool).
//! Every call resets the per-call state, sets the epoch deadline, and afterwards turns a
//! trap, a timeout, a refused memory growth or a bad emit into one [`Fault`] with a
//! reason a user can act on.

use std::collections::BTreeMap;
use std::time::Instant;

use wasmtime::{
    AsContext, Caller, Engine, Extern, InstancePre, Linker, Memory, Store, Trap, TypedFunc,
};

use super::abi::{self, emit_status, kv_status};
use super::limits::{Limits, MemoryLimiter, duration_text, size_text};
use crate::engine::{Clock, NodeId, state::StagedKv};

/// What the host functions need: per instance (node, clock, state) and per call (emits,
/// pending kv writes, the first fault).
pub struct HostState {
    limiter: MemoryLimiter,
    /// Names of the node's output ports (without `error`), for `emit`'s port numbers.
    ports: Vec<String>,
    limits: Limits,
    node: NodeId,
    clock: Clock,
    /// The node's state: the batch's staged writes in front of the store.
    kv: Option<StagedKv>,
    log: LogLimiter,
    call: CallState,
}

/// Per-call state, reset before each call.
#[derive(Default)]
struct CallState {
    emits: Vec<Emitted>,
    emit_bytes: u64,
    kv: BTreeMap<String, Option<Vec<u8>>>,
    /// The first problem of this call that fails it even if the guest returns 0.
    fault: Option<String>,
    /// `env.abort`'s decoded message.
    abort: Option<String>,
}

/// One emitted record, copied out of the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The output port number (index into the node's `ports`).
    pub port: u32,
    /// Milliseconds since the epoch; 0: the input's.
    pub timestamp_ms: i64,
    /// Empty: the input's.
    pub topic: String,
    /// Empty: the input's.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What a successful call produced.
#[derive(Debug, Default)]
pub struct CallOutput {
    /// The emits, in order.
    pub emits: Vec<Emitted>,
    /// The kv writes, to be committed before the emits are sent (`None`: delete). The
    /// node stages them with the rest of its batch ([`StagedKv::stage`]).
    pub kv: Vec<(String, Option<Vec<u8>>)>,
}

/// Why a call failed; the text is the message's `error` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Fault {
    /// What happened, for users.
    pub reason: String,
    /// Whether the guest's own code misbehaved (trap, timeout, bad emit), as opposed to a
    /// deliberate nonzero return; only these count towards rebuilding the instance.
    pub counts: bool,
}

impl Fault {
    fn new(reason: impl Into<String>) -> Fault {
        Fault {
            reason: reason.into(),
            counts: true,
        }
    }
}

/// Logs of one instance: at most [`LogLimiter::BURST`] lines per
/// [`LogLimiter::WINDOW`], then one line saying how many were held back.
struct LogLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    const BURST: u32 = 20;
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    fn allow(&mut self) -> Option<u64> {
        // Wall-clock on purpose, like the deadline: it bounds real log volume.
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < Self::WINDOW => {
                if self.in_window < Self::BURST {
                    self.in_window += 1;
                    Some(0)
                } else {
                    self.suppressed += 1;
                    None
                }
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = 1;
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Builds the linker with every import of [`abi::HOST_IMPORTS`].
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    linker.func_wrap("hw", "emit", host_emit)?;
    linker.func_wrap("hw", "log", host_log)?;
    linker.func_wrap("hw", "kv_get", host_kv_get)?;
    linker.func_wrap("hw", "kv_set", host_kv_set)?;
    linker.func_wrap("hw", "now_ms", |caller: Caller<'_, HostState>| {
        caller.data().clock.wall_ms()
    })?;
    linker.func_wrap("env", "abort", host_abort)?;
    Ok(linker)
}

fn memory_of(caller: &mut Caller<'_, HostState>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Some(memory),
        _ => None,
    }
}

/// `ptr..ptr+len` inside `data`, with `ptr` and `len` read as unsigned 32-bit.
fn span(data_len: usize, ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    (end <= data_len).then_some(start..end)
}

fn host_emit(mut caller: Caller<'_, HostState>, port: i32, ptr: i32, len: i32) -> i32 {
    let Some(memory) = memory_of(&mut caller) else {
        return emit_status::BAD_RECORD;
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let call = &mut state.call;
    let fail = |call: &mut CallState, reason: String, code: i32| {
        call.fault.get_or_insert(reason);
        code
    };
    let ports = state.ports.len();
    if port < 0 || port as usize >= ports {
        let reason = format!(
            "emit to unknown port {port} (this node's ports are 0..{}: {})",
            ports.saturating_sub(1),
            state.ports.join(", ")
        );
        return fail(call, reason, emit_status::UNKNOWN_PORT);
    }
    let limits = state.limits;
    let size = len as u32 as u64;
    if call.emits.len() as u64 >= u64::from(limits.max_emits) {
        let reason = format!(
            "emit limit reached: more than {} emits in one call (limits.max_emits)",
            limits.max_emits
        );
        return fail(call, reason, emit_status::LIMIT);
    }
    if call.emit_bytes.saturating_add(size) > limits.max_emit_bytes {
        let reason = format!(
            "emit limit reached: {} bytes already emitted in this call, {size} more exceed {} (limits.max_emit_bytes)",
            call.emit_bytes,
            size_text(limits.max_emit_bytes)
        );
        return fail(call, reason, emit_status::LIMIT);
    }
    let Some(range) = span(data.len(), ptr, len) else {
        let reason = format!(
            "emit out of bounds: record at {} of {} bytes, the plugin's memory has {} bytes",
            ptr as u32,
            len as u32,
            data.len()
        );
        return fail(call, reason, emit_status::BAD_RECORD);
    };
    let record = match abi::decode(&data[range]) {
        Ok(record) => record,
        Err(e) => {
            return fail(
                call,
                format!("emit malformed: {e}"),
                emit_status::BAD_RECORD,
            );
        }
    };
    call.emit_bytes += size;
    call.emits.push(Emitted {
        port: port as u32,
        timestamp_ms: record.timestamp_ms,
        topic: record.topic.to_string(),
        headers: record
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        payload: record.payload.to_vec(),
    });
    emit_status::OK
}

fn host_log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    let Some(memory) = memory_of(&mut caller) else {
        return;
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(range) = span(data.len(), ptr, len.min(4096)) else {
        return;
    };
    let Some(suppressed) = state.log.allow() else {
        return;
    };
    let text = String::from_utf8_lossy(&data[range]);
    let node = &state.node;
    match level {
        0 => tracing::trace!(node = %node, suppressed, "plugin: {text}"),
        1 => tracing::debug!(node = %node, suppressed, "plugin: {text}"),
        3 => tracing::warn!(node = %node, suppressed, "plugin: {text}"),
        4 => tracing::error!(node = %node, suppressed, "plugin: {text}"),
        _ => tracing::info!(node = %node, suppressed, "plugin: {text}"),
    }
}

fn host_kv_get(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    buf_ptr: i32,
    buf_cap: i32,
) -> i32 {
    let Some(memory) = memory_of(&mut caller) else {
        return kv_status::BAD_POINTER;
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let (Some(key_range), Some(buf_range)) = (
        span(data.len(), key_ptr, key_len),
        span(data.len(), buf_ptr, buf_cap),
    ) else {
        return kv_status::BAD_POINTER;
    };
    let Ok(key) = std::str::from_utf8(&data[key_range]) else {
        return kv_status::BAD_POINTER;
    };
    let value = match state.call.kv.get(key) {
        Some(pending) => pending.clone(),
        None => match &state.kv {
            Some(kv) => match kv.get(key) {
                Ok(value) => value,
                Err(e) => {
                    let reason = format!("plugin state could not be read: {e}");
                    state.call.fault.get_or_insert(reason);
                    return kv_status::ABSENT;
                }
            },
            None => None,
        },
    };
    let Some(value) = value else {
        return kv_status::ABSENT;
    };
    let n = value.len().min(buf_range.len());
    data[buf_range.start..buf_range.start + n].copy_from_slice(&value[..n]);
    i32::try_from(value.len()).unwrap_or(i32::MAX)
}

fn host_kv_set(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> i32 {
    let Some(memory) = memory_of(&mut caller) else {
        return kv_status::BAD_POINTER;
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(key_range) = span(data.len(), key_ptr, key_len) else {
        return kv_status::BAD_POINTER;
    };
    if key_range.len() > abi::MAX_KEY_LEN {
        return kv_status::TOO_LARGE;
    }
    let Ok(key) = std::str::from_utf8(&data[key_range]) else {
        return kv_status::BAD_POINTER;
    };
    let value = if val_len == -1 {
        None
    } else {
        if val_len < 0 || val_len as usize > abi::MAX_VALUE_LEN {
            return kv_status::TOO_LARGE;
        }
        let Some(range) = span(data.len(), val_ptr, val_len) else {
            return kv_status::BAD_POINTER;
        };
        Some(data[range].to_vec())
    };
    // Bound the writes of one call: at most as many distinct keys as emits.
    let key = key.to_string();
    if !state.call.kv.contains_key(&key) && state.call.kv.len() >= state.limits.max_emits as usize {
        return kv_status::TOO_LARGE;
    }
    state.call.kv.insert(key, value);
    0
}

fn host_abort(
    mut caller: Caller<'_, HostState>,
    msg: i32,
    file: i32,
    line: i32,
    col: i32,
) -> wasmtime::Result<()> {
    let text = match memory_of(&mut caller) {
        Some(memory) => {
            let data = memory.data(&caller);
            let message = assemblyscript_string(data, msg).unwrap_or_else(|| "abort".into());
            match assemblyscript_string(data, file) {
                Some(file) => format!("{message} at {file}:{line}:{col}"),
                None => message,
            }
        }
        None => "abort".into(),
    };
    caller.data_mut().call.abort = Some(text.clone());
    Err(wasmtime::Error::msg(format!("abort: {text}")))
}

/// An AssemblyScript string: UTF-16LE, its byte length in the `u32` at `ptr - 4`.
fn assemblyscript_string(data: &[u8], ptr: i32) -> Option<String> {
    let ptr = ptr as u32 as usize;
    let len_at = ptr.checked_sub(4)?;
    let len = u32::from_le_bytes(data.get(len_at..ptr)?.try_into().ok()?) as usize;
    let bytes = data.get(ptr..ptr.checked_add(len.min(2048))?)?;
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(String::from_utf16_lossy(&units))
}

/// The guest's exports, resolved once per instance.
struct Exports {
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    dealloc: TypedFunc<(i32, i32), ()>,
    init: Option<TypedFunc<(i32, i32), i32>>,
    on_message: TypedFunc<(i32, i32), i32>,
    abi_version: TypedFunc<(), i32>,
}

/// One instance of a plugin with its store.
pub struct Instance {
    store: Store<HostState>,
    exports: Exports,
}

/// Who an instance works for: what the host functions report to and read from.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The node, for logs.
    pub node: NodeId,
    /// The engine's clock, for `now_ms`.
    pub clock: Clock,
    /// The node's state, for `kv_get` (staged writes of the batch first, then the store);
    /// `None` reads nothing (plugin check).
    pub kv: Option<StagedKv>,
    /// Output port names (without `error`).
    pub ports: Vec<String>,
}

impl Instance {
    /// Instantiates `pre` in a new store with `limits`. Runs the module's start function
    /// (if any) under the deadline; does not call `hw_init`.
    pub fn new(
        engine: &Engine,
        pre: &InstancePre<HostState>,
        limits: Limits,
        binding: Binding,
    ) -> Result<Instance, Fault> {
        let state = HostState {
            limiter: MemoryLimiter {
                memory: limits.memory,
                refused: None,
            },
            ports: binding.ports,
            limits,
            node: binding.node,
            clock: binding.clock,
            kv: binding.kv,
            log: LogLimiter {
                window_start: None,
                in_window: 0,
                suppressed: 0,
            },
            call: CallState::default(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(limits.deadline_ticks());
        store.epoch_deadline_trap();
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| describe_error(&store, &limits, e))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Fault::new("missing export `memory` (memory)"))?;
        let typed = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| Fault::new(format!("missing export `{name}`")))
        };
        let func_err = |e: wasmtime::Error| Fault::new(format!("bad export: {e}"));
        let alloc = typed(&mut store, "hw_alloc")?
            .typed(&store)
            .map_err(func_err)?;
        let dealloc = typed(&mut store, "hw_dealloc")?
            .typed(&store)
            .map_err(func_err)?;
        let on_message = typed(&mut store, "hw_on_message")?
            .typed(&store)
            .map_err(func_err)?;
        let abi_version = typed(&mut store, "hw_abi_version")?
            .typed(&store)
            .map_err(func_err)?;
        let init = match instance.get_func(&mut store, "hw_init") {
            Some(f) => Some(f.typed(&store).map_err(func_err)?),
            None => None,
        };
        Ok(Instance {
            store,
            exports: Exports {
                memory,
                alloc,
                dealloc,
                init,
                on_message,
                abi_version,
            },
        })
    }

    fn begin_call(&mut self) {
        let state = self.store.data_mut();
        state.call = CallState::default();
        state.limiter.refused = None;
        let ticks = state.limits.deadline_ticks();
        self.store.set_epoch_deadline(ticks);
    }

    /// Calls `hw_abi_version`.
    pub fn abi_version(&mut self) -> Result<i32, Fault> {
        self.begin_call();
        let f = &self.exports.abi_version;
        f.call(&mut self.store, ())
            .map_err(|e| describe_error(&self.store, &self.store.data().limits, e))
    }

    /// Whether the module exports `hw_init`.
    pub fn has_init(&self) -> bool {
        self.exports.init.is_some()
    }

    /// Calls `hw_init` with `config` (JSON text); the kv writes it made are returned to
    /// be committed before the first message.
    pub fn init(&mut self, config: &[u8]) -> Result<CallOutput, Fault> {
        if self.exports.init.is_none() {
            return Ok(CallOutput::default());
        }
        self.begin_call();
        let len = config.len();
        let ptr = self.alloc_and_write(len, |buf| buf.copy_from_slice(config))?;
        let Some(init) = &self.exports.init else {
            return Ok(CallOutput::default());
        };
        let result = init.call(&mut self.store, (ptr, len as i32));
        self.finish("hw_init", result, ptr, len)
    }

    /// Calls `hw_on_message` with one message record, written by `write` into a buffer
    /// of exactly `len` bytes in the guest.
    pub fn on_message(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<CallOutput, Fault> {
        self.begin_call();
        let ptr = self.alloc_and_write(len, write)?;
        let f = &self.exports.on_message;
        let result = f.call(&mut self.store, (ptr, len as i32));
        self.finish("hw_on_message", result, ptr, len)
    }

    fn alloc_and_write(&mut self, len: usize, write: impl FnOnce(&mut [u8])) -> Result<i32, Fault> {
        let len32 = i32::try_from(len)
            .map_err(|_| Fault::new(format!("input of {len} bytes is too large for a plugin")))?;
        let alloc = &self.exports.alloc;
        let ptr = alloc
            .call(&mut self.store, len32)
            .map_err(|e| describe_error(&self.store, &self.store.data().limits, e))?;
        if ptr == 0 && len > 0 {
            return Err(Fault::new(format!(
                "plugin could not allocate {len} bytes (hw_alloc returned 0)"
            )));
        }
        let memory = self.exports.memory;
        let data = memory.data_mut(&mut self.store);
        let Some(range) = span(data.len(), ptr, len32) else {
            return Err(Fault::new(format!(
                "hw_alloc returned {} for {len} bytes, outside the plugin's memory of {} bytes",
                ptr as u32,
                data.len()
            )));
        };
        write(&mut data[range]);
        Ok(ptr)
    }

    fn finish(
        &mut self,
        what: &str,
        result: wasmtime::Result<i32>,
        ptr: i32,
        len: usize,
    ) -> Result<CallOutput, Fault> {
        let returned = match result {
            Ok(code) => code,
            Err(e) => return Err(describe_error(&self.store, &self.store.data().limits, e)),
        };
        // The guest must not keep the buffer; freeing it is the host's job. A trap here is
        // a fault of the call like any other.
        let dealloc = &self.exports.dealloc;
        if let Err(e) = dealloc.call(&mut self.store, (ptr, len as i32)) {
            return Err(describe_error(&self.store, &self.store.data().limits, e));
        }
        let call = std::mem::take(&mut self.store.data_mut().call);
        if let Some(fault) = call.fault {
            return Err(Fault::new(fault));
        }
        if returned != 0 {
            let reason = if what == "hw_on_message" {
                format!("plugin returned {returned}")
            } else {
                format!("{what} returned {returned}")
            };
            return Err(Fault {
                reason,
                counts: false,
            });
        }
        Ok(CallOutput {
            emits: call.emits,
            kv: call.kv.into_iter().collect(),
        })
    }

    /// The current size of the guest's memory, in bytes.
    pub fn memory_size(&self) -> usize {
        self.exports.memory.data_size(self.store.as_context())
    }
}

/// Turns a wasmtime error from a call into the reason users see.
fn describe_error(store: &Store<HostState>, limits: &Limits, error: wasmtime::Error) -> Fault {
    let state = store.data();
    if let Some(asked) = state.limiter.refused {
        return Fault::new(format!(
            "plugin exceeded its memory limit of {} (it asked for {})",
            size_text(limits.memory),
            size_text(asked)
        ));
    }
    if let Some(abort) = &state.call.abort {
        return Fault::new(format!("plugin aborted: {abort}"));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::new(format!(
            "plugin timed out after {}",
            duration_text(limits.timeout)
        )),
        Some(Trap::StackOverflow) => Fault::new(format!(
            "plugin trapped: stack overflow (limit {})",
            size_text(limits.stack)
        )),
        Some(trap) => {
            let text = trap.to_string();
            let text = text.strip_prefix("wasm trap: ").unwrap_or(&text);
            Fault::new(format!("plugin trapped: {text}"))
        }
        None => Fault::new(format!("plugin trapped: {error}")),
    }
}
