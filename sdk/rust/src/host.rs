//! The host's imports (module `hw`): raw on wasm32, the test host elsewhere; and the
//! safe `emit`, `emit_to` and `now_ms` on top.

use crate::{EmitError, Message};

#[cfg(target_arch = "wasm32")]
pub(crate) mod raw {
    #[link(wasm_import_module = "hw")]
    unsafe extern "C" {
        pub fn emit(port: i32, ptr: i32, len: i32) -> i32;
        pub fn log(level: i32, ptr: i32, len: i32);
        pub fn kv_get(key_ptr: i32, key_len: i32, buf_ptr: i32, buf_cap: i32) -> i32;
        pub fn kv_set(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32) -> i32;
        pub fn now_ms() -> i64;
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::host as raw_host;

/// A wasm32 address of a slice (the ABI's pointers are 32-bit).
#[cfg(target_arch = "wasm32")]
pub(crate) fn addr(bytes: &[u8]) -> i32 {
    bytes.as_ptr() as usize as i32
}

/// Sends `msg` on port 0 (`out`, the first of the node's `ports:`).
///
/// An empty topic, a timestamp of 0 and an empty header list keep the input's; see
/// `Message::new`. The host buffers the emits of a call and sends them after the
/// plugin function returns `Ok`.
pub fn emit(msg: &Message<'_>) -> Result<(), EmitError> {
    emit_to(0, msg)
}

/// Sends `msg` on output port number `port`: the index in the node's `ports:` list
/// (`ports: [out, alert]` makes `alert` port 1).
pub fn emit_to(port: u32, msg: &Message<'_>) -> Result<(), EmitError> {
    let record = msg.encode();
    let Ok(port) = i32::try_from(port) else {
        return Err(EmitError::UnknownPort);
    };
    let Ok(len) = i32::try_from(record.len()) else {
        return Err(EmitError::LimitReached);
    };
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `len` bytes at the pointer during the call.
    let code = unsafe { raw::emit(port, addr(&record), len) };
    #[cfg(not(target_arch = "wasm32"))]
    let code = {
        let _ = len;
        raw_host::emit(port, &record)
    };
    if code < 0 {
        Err(EmitError::from_code(code))
    } else {
        Ok(())
    }
}

/// The engine's clock in milliseconds since the Unix epoch (virtual in Headwater's
/// tests, so time-based plugins are tested without waiting).
pub fn now_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: no arguments.
    return unsafe { raw::now_ms() };
    #[cfg(not(target_arch = "wasm32"))]
    raw_host::now_ms()
}
