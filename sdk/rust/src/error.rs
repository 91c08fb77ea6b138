//! The errors a plugin function returns and the host functions report.

use core::fmt;

/// Why a plugin function failed: a non-zero code the host reports as
/// "plugin returned N". The message then goes to the node's `error` port and the call's
/// emits and key/value writes are discarded (or, from init, the node does not start).
///
/// Codes the SDK itself uses: 1 for `Error::fail`, 2 for a malformed input record,
/// 10 + n for an emit that the host refused with `-n`, 20 + n for a key/value call
/// refused with `-n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    code: i32,
}

impl Error {
    /// An error with this code (0, which means success to the host, becomes 1).
    pub const fn with_code(code: i32) -> Self {
        Error {
            code: if code == 0 { 1 } else { code },
        }
    }

    /// Logs `reason` at warn level (the host names the node) and fails with code 1.
    pub fn fail(reason: &str) -> Self {
        crate::log::warn(reason);
        Error::with_code(1)
    }

    /// The code returned to the host; never 0.
    pub const fn code(self) -> i32 {
        self.code
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin returned {}", self.code)
    }
}

/// Why the host refused an emitted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The port number is not in the node's `ports:` list (-1).
    UnknownPort,
    /// The record was out of bounds or malformed (-2).
    Malformed,
    /// The per-call limit on emitted messages or bytes was reached (-3).
    LimitReached,
    /// Another negative answer from a newer host.
    Other(i32),
}

impl EmitError {
    pub(crate) fn from_code(code: i32) -> Self {
        match code {
            -1 => EmitError::UnknownPort,
            -2 => EmitError::Malformed,
            -3 => EmitError::LimitReached,
            other => EmitError::Other(other),
        }
    }

    /// The host's answer (-1, -2, -3, ...).
    pub const fn host_code(self) -> i32 {
        match self {
            EmitError::UnknownPort => -1,
            EmitError::Malformed => -2,
            EmitError::LimitReached => -3,
            EmitError::Other(code) => code,
        }
    }
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::UnknownPort => f.write_str("emit to a port the node does not have"),
            EmitError::Malformed => f.write_str("emitted record is malformed"),
            EmitError::LimitReached => f.write_str("emit limit of the call reached"),
            EmitError::Other(code) => write!(f, "emit refused by the host ({code})"),
        }
    }
}

impl From<EmitError> for Error {
    fn from(error: EmitError) -> Self {
        Error::with_code(10 - error.host_code())
    }
}

/// Why the host refused a key/value call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// A pointer was out of bounds (-2).
    BadPointer,
    /// The key is over 256 bytes or the value over 64 KiB (-3).
    TooLarge,
    /// Another negative answer from a newer host.
    Other(i32),
}

impl KvError {
    pub(crate) fn from_code(code: i32) -> Self {
        match code {
            -2 => KvError::BadPointer,
            -3 => KvError::TooLarge,
            other => KvError::Other(other),
        }
    }

    /// The host's answer (-2, -3, ...).
    pub const fn host_code(self) -> i32 {
        match self {
            KvError::BadPointer => -2,
            KvError::TooLarge => -3,
            KvError::Other(code) => code,
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::BadPointer => f.write_str("key/value buffer out of bounds"),
            KvError::TooLarge => f.write_str("key over 256 bytes or value over 64 KiB"),
            KvError::Other(code) => write!(f, "key/value call refused by the host ({code})"),
        }
    }
}

impl From<KvError> for Error {
    fn from(error: KvError) -> Self {
        Error::with_code(20 - error.host_code())
    }
}

impl From<crate::DecodeError> for Error {
    fn from(_: crate::DecodeError) -> Self {
        Error::with_code(2)
    }
}
