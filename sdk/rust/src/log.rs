//! Log lines through the host, which names the node and rate-limits them.

/// A log level, as the host numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// 0
    Trace = 0,
    /// 1
    Debug = 1,
    /// 2
    Info = 2,
    /// 3
    Warn = 3,
    /// 4
    Error = 4,
}

/// Logs `text` at `level`.
pub fn log(level: Level, text: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `text.len()` bytes at the pointer during the call.
    unsafe {
        crate::host::raw::log(
            level as i32,
            crate::host::addr(text.as_bytes()),
            text.len() as i32,
        )
    };
    #[cfg(not(target_arch = "wasm32"))]
    crate::host::raw_host::log(level, text);
}

/// Logs at trace level.
pub fn trace(text: &str) {
    log(Level::Trace, text)
}

/// Logs at debug level.
pub fn debug(text: &str) {
    log(Level::Debug, text)
}

/// Logs at info level. The default level of a gateway is info: do not log per message.
pub fn info(text: &str) {
    log(Level::Info, text)
}

/// Logs at warn level.
pub fn warn(text: &str) {
    log(Level::Warn, text)
}

/// Logs at error level.
pub fn error(text: &str) {
    log(Level::Error, text)
}

/// Formats and logs at info level: `headwater_plugin::info!("ready, window {}", n)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&$crate::__private::format!($($arg)*)) };
}

/// Formats and logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&$crate::__private::format!($($arg)*)) };
}

/// Formats and logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&$crate::__private::format!($($arg)*)) };
}

/// Formats and logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&$crate::__private::format!($($arg)*)) };
}

/// A line formatted without allocating (for the panic handler); cut at 256 bytes.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) struct FixedLine {
    buf: [u8; 256],
    len: usize,
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
impl FixedLine {
    pub(crate) const fn new() -> Self {
        FixedLine {
            buf: [0; 256],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Cut only at char boundaries (see write_str), so this never fails.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("plugin panicked")
    }
}

impl core::fmt::Write for FixedLine {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}
