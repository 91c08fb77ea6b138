//! The Rust SDK for Headwater plugins: the exports of plugin ABI version 1 generated
//! from plain functions (`plugin!`), the message record (`Message`), and safe wrappers
//! for the host's imports (`emit`, `log`, `kv`, `now_ms`).
//!
//! A plugin is a `cdylib` crate built for `wasm32-unknown-unknown`:
//!
//! ```
//! # // The doctest runs on the host, where the SDK talks to its test host.
//! use headwater_plugin::{emit, json, Error, Message};
//!
//! /// Passes messages whose `value` is a number, with the value doubled.
//! fn on_message(msg: &Message) -> Result<(), Error> {
//!     let Some(value) = json::get_f64(msg.payload, "value") else {
//!         return Ok(()); // no emit: the message is dropped
//!     };
//!     let payload = json::Object::new().number("value", value * 2.0).finish();
//!     emit(&Message::new(payload.as_bytes()))?;
//!     Ok(())
//! }
//!
//! headwater_plugin::plugin!(on_message);
//! # let out = headwater_plugin::testing::run(on_message, &Message::new(br#"{"value":2}"#));
//! # assert_eq!(out.emits[0].payload, br#"{"value":4}"#);
//! ```
//!
//! On targets other than wasm32 the host functions talk to an in-process test host
//! (`testing`), so a plugin's logic can be unit-tested with `cargo test`.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod error;
mod global;
mod host;
pub mod json;
pub mod kv;
pub mod log;
mod record;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use error::{EmitError, Error, KvError};
pub use global::Global;
pub use host::{emit, emit_to, now_ms};
pub use record::{DecodeError, Message};

/// The plugin ABI version this SDK speaks; `hw_abi_version` returns it.
pub const ABI_VERSION: i32 = 1;

/// `value` rounded to `decimals` places, half away from zero (`core` has no `f64::round`
/// without std). Values too large to round are returned as they are.
///
/// ```
/// assert_eq!(headwater_plugin::round(2.345_67, 2), 2.35);
/// assert_eq!(headwater_plugin::round(-0.125, 2), -0.13);
/// ```
pub fn round(value: f64, decimals: u32) -> f64 {
    let scale = (0..decimals.min(15)).fold(1.0, |scale, _| scale * 10.0);
    let scaled = value * scale;
    // Beyond 2^53 every f64 is an integer already; the cast would saturate there.
    if !scaled.is_finite() || scaled.abs() >= 9_007_199_254_740_992.0 {
        return value;
    }
    let half = if scaled < 0.0 { -0.5 } else { 0.5 };
    ((scaled + half) as i64) as f64 / scale
}

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(all(target_arch = "wasm32", feature = "panic-handler", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Format into a fixed buffer: the panic may come from the allocator itself.
    let mut line = log::FixedLine::new();
    let _ = core::fmt::write(&mut line, format_args!("plugin panicked: {info}"));
    log::log(log::Level::Error, line.as_str());
    core::arch::wasm32::unreachable()
}

/// Generates the plugin's exports (`hw_abi_version`, `hw_alloc`, `hw_dealloc`,
/// `hw_on_message` and, when an init function is named, `hw_init`) from plain functions.
///
/// - `plugin!(on_message)` or `plugin!(on_message = f)`: `f` is
///   `fn(&Message) -> Result<(), Error>`, called once per input message. The messages it
///   emits are the output; emitting none drops the input. An `Err` fails the message
///   (the host sends it to the node's `error` port and discards the call's emits and
///   key/value writes).
/// - `plugin!(init = i, on_message = f)`: `i` is `fn(&[u8]) -> Result<(), Error>`,
///   called once per instance before any message with the node's `config:` as JSON text
///   (`null` when absent). An `Err` stops the node from starting; log why first
///   (`Error::fail` does).
///
/// Invoke it once, at the crate root. The exports exist only on wasm32.
#[macro_export]
macro_rules! plugin {
    ($on_message:path) => {
        $crate::plugin!(on_message = $on_message);
    };
    (on_message = $on_message:path $(,)?) => {
        $crate::__plugin_exports!($on_message);
    };
    (init = $init:path, on_message = $on_message:path $(,)?) => {
        $crate::__plugin_exports!($on_message);
        // Elsewhere: check the signature, and count the function as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&[u8]) -> ::core::result::Result<(), $crate::Error> = $init;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            /// ABI: called once with the node's `config:` as JSON.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn hw_init(ptr: i32, len: i32) -> i32 {
                // SAFETY: the host passes a buffer it got from `hw_alloc(len)`.
                unsafe { $crate::__private::init(ptr, len, $init) }
            }
        };
    };
}

/// The exports every plugin has; used by `plugin!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_exports {
    ($on_message:path) => {
        // Elsewhere (native tests): check the signature, and count the function as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&$crate::Message<'_>) -> ::core::result::Result<(), $crate::Error> =
            $on_message;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            /// ABI: the version of the plugin ABI this module speaks.
            #[unsafe(no_mangle)]
            pub extern "C" fn hw_abi_version() -> i32 {
                $crate::ABI_VERSION
            }
            /// ABI: `len` bytes for the host to write into, or 0.
            #[unsafe(no_mangle)]
            pub extern "C" fn hw_alloc(len: i32) -> i32 {
                $crate::__private::alloc(len)
            }
            /// ABI: frees what `hw_alloc(len)` returned.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn hw_dealloc(ptr: i32, len: i32) {
                // SAFETY: the host returns only what `hw_alloc(len)` gave it.
                unsafe { $crate::__private::dealloc(ptr, len) }
            }
            /// ABI: one input message as a record.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn hw_on_message(ptr: i32, len: i32) -> i32 {
                // SAFETY: the host passes a buffer it got from `hw_alloc(len)`.
                unsafe { $crate::__private::on_message(ptr, len, $on_message) }
            }
        };
    };
}

/// What the exports generated by `plugin!` call. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use alloc::format;

    use crate::{Error, Message};

    // The host's buffers hold records that begin with an i64; 8 keeps them aligned for
    // whoever reads them in place (the SDK itself reads bytewise).
    const ALIGN: usize = 8;

    fn layout(len: i32) -> Option<core::alloc::Layout> {
        let len = usize::try_from(len).ok()?;
        core::alloc::Layout::from_size_align(len.max(1), ALIGN).ok()
    }

    /// `hw_alloc`: 0 when out of memory or for a negative length.
    pub fn alloc(len: i32) -> i32 {
        match layout(len) {
            // SAFETY: the layout has a non-zero size.
            Some(layout) => unsafe { alloc::alloc::alloc(layout) as usize as i32 },
            None => 0,
        }
    }

    /// `hw_dealloc`.
    ///
    /// # Safety
    /// `ptr` came from `alloc(len)` and is freed once.
    pub unsafe fn dealloc(ptr: i32, len: i32) {
        if ptr == 0 {
            return;
        }
        if let Some(layout) = layout(len) {
            // SAFETY: the caller's contract.
            unsafe { alloc::alloc::dealloc(ptr as u32 as usize as *mut u8, layout) }
        }
    }

    /// # Safety
    /// `ptr..ptr+len` is readable for the duration of the call.
    unsafe fn bytes<'a>(ptr: i32, len: i32) -> &'a [u8] {
        let len = len as u32 as usize;
        if len == 0 {
            return &[];
        }
        // SAFETY: the caller's contract.
        unsafe { core::slice::from_raw_parts(ptr as u32 as usize as *const u8, len) }
    }

    /// `hw_on_message`: decodes the record and runs the plugin's function.
    ///
    /// # Safety
    /// `ptr..ptr+len` is readable for the duration of the call.
    pub unsafe fn on_message<F>(ptr: i32, len: i32, handler: F) -> i32
    where
        F: FnOnce(&Message<'_>) -> Result<(), Error>,
    {
        // SAFETY: the caller's contract.
        let record = unsafe { bytes(ptr, len) };
        crate::record::dispatch(record, handler)
    }

    /// `hw_init`: runs the plugin's init function on the config JSON.
    ///
    /// # Safety
    /// `ptr..ptr+len` is readable for the duration of the call.
    pub unsafe fn init<F>(ptr: i32, len: i32, init: F) -> i32
    where
        F: FnOnce(&[u8]) -> Result<(), Error>,
    {
        // SAFETY: the caller's contract.
        let config = unsafe { bytes(ptr, len) };
        match init(config) {
            Ok(()) => 0,
            Err(error) => error.code(),
        }
    }
}
