//! This node's persistent key/value state. The writes of one message are committed
//! together and durably after the plugin function returns `Ok` (discarded on `Err`);
//! they survive restarts of the gateway.

use alloc::vec::Vec;

use crate::KvError;

/// The longest key the host accepts, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// The longest value the host accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The value of `key`, or `None` when it is absent. Sees this call's own earlier `set`s.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    let mut buf = Vec::with_capacity(64);
    // The host reports the full length; a second call with room for it is enough unless
    // the value changed between the two, which cannot happen within one call.
    for _ in 0..3 {
        let cap = buf.capacity();
        match get_into(key, buf.spare_capacity_mut())? {
            None => return Ok(None),
            Some(len) if len <= cap => {
                // SAFETY: the host wrote `len` (<= capacity) bytes into the spare capacity.
                unsafe { buf.set_len(len) };
                return Ok(Some(buf));
            }
            Some(len) => buf.reserve_exact(len),
        }
    }
    Err(KvError::Other(-1))
}

/// Copies the value of `key` into `buf` (as much as fits) and returns its full length,
/// or `None` when the key is absent. A length over `buf.len()` means: call again with a
/// bigger buffer.
pub fn get_into(
    key: &str,
    buf: &mut [core::mem::MaybeUninit<u8>],
) -> Result<Option<usize>, KvError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads the key and writes at most `buf.len()` bytes into `buf`.
    let code = unsafe {
        crate::host::raw::kv_get(
            key.as_ptr() as usize as i32,
            key.len() as i32,
            buf.as_mut_ptr() as usize as i32,
            buf.len() as i32,
        )
    };
    #[cfg(not(target_arch = "wasm32"))]
    let code = crate::host::raw_host::kv_get(key, buf);
    match code {
        -1 => Ok(None),
        len if len >= 0 => Ok(Some(len as usize)),
        other => Err(KvError::from_code(other)),
    }
}

/// Sets `key` (UTF-8, at most 256 bytes) to `value` (at most 64 KiB).
pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
        return Err(KvError::TooLarge);
    }
    write(key, Some(value))
}

/// Deletes `key` (nothing happens when it is absent).
pub fn delete(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::TooLarge);
    }
    write(key, None)
}

fn write(key: &str, value: Option<&[u8]>) -> Result<(), KvError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads the key and the value during the call.
    let code = unsafe {
        let (ptr, len) = match value {
            Some(value) => (value.as_ptr() as usize as i32, value.len() as i32),
            None => (0, -1),
        };
        crate::host::raw::kv_set(key.as_ptr() as usize as i32, key.len() as i32, ptr, len)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let code = crate::host::raw_host::kv_set(key, value);
    if code < 0 {
        Err(KvError::from_code(code))
    } else {
        Ok(())
    }
}
