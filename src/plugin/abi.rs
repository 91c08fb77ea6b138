//! The plugin ABI, version 1, as data: the message record (encoding and a bounds-checked
//! decoding), the exports a module must have and the imports it may have, with their
//! signatures. Nothing here runs WebAssembly; `host.rs` does.
//!
//! The record (all integers little-endian, no padding):
//! ```text
//! i64 timestamp_ms
//! u32 topic_len, topic bytes (UTF-8)
//! u32 header_count, then per header: u32 name_len, name, u32 value_len, value
//! u32 payload_len, payload bytes
//! ```

use std::fmt;

use wasmtime::{ExternType, FuncType, ValType};

/// The ABI version this host speaks; `hw_abi_version` must return it.
pub const ABI_VERSION: i32 = 1;

/// The import module of the host functions.
pub const HOST_MODULE: &str = "hw";

/// Most headers an emitted record may carry: bounds the work one emit can cause.
pub const MAX_HEADERS: usize = 256;

/// A WebAssembly value type of the ABI (only numbers cross it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val {
    /// `i32`
    I32,
    /// `i64`
    I64,
}

/// A function signature of the ABI: parameters and results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Parameter types.
    pub params: &'static [Val],
    /// Result types (none or one).
    pub results: &'static [Val],
}

impl Signature {
    /// Whether a module's function type is exactly this signature.
    pub fn matches(&self, ty: &FuncType) -> bool {
        let same = |expected: &[Val], got: &mut dyn ExactSizeIterator<Item = ValType>| {
            got.len() == expected.len()
                && got.zip(expected).all(|(got, want)| match want {
                    Val::I32 => matches!(got, ValType::I32),
                    Val::I64 => matches!(got, ValType::I64),
                })
        };
        same(self.params, &mut ty.params()) && same(self.results, &mut ty.results())
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |v: &Val| match v {
            Val::I32 => "i32",
            Val::I64 => "i64",
        };
        let params: Vec<&str> = self.params.iter().map(name).collect();
        write!(f, "fn({})", params.join(", "))?;
        match self.results {
            [] => Ok(()),
            [one] => write!(f, " -> {}", name(one)),
            many => {
                let results: Vec<&str> = many.iter().map(name).collect();
                write!(f, " -> ({})", results.join(", "))
            }
        }
    }
}

/// Writes a module's function type the way [`Signature`] is written, for messages.
pub fn describe_func(ty: &FuncType) -> String {
    let name = |v: ValType| match v {
        ValType::I32 => "i32".to_string(),
        ValType::I64 => "i64".to_string(),
        ValType::F32 => "f32".to_string(),
        ValType::F64 => "f64".to_string(),
        ValType::V128 => "v128".to_string(),
        ValType::Ref(r) => r.to_string(),
    };
    let params: Vec<String> = ty.params().map(name).collect();
    let results: Vec<String> = ty.results().map(name).collect();
    let mut text = format!("fn({})", params.join(", "));
    match results.len() {
        0 => {}
        1 => text.push_str(&format!(" -> {}", results[0])),
        _ => text.push_str(&format!(" -> ({})", results.join(", "))),
    }
    text
}

/// Writes any extern type briefly (`memory`, `table`, `global`, a function type).
pub fn describe_extern(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => describe_func(f),
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

const I: Val = Val::I32;
const L: Val = Val::I64;

/// An export of the guest: its name, signature and whether it must be there.
#[derive(Clone, Copy, Debug)]
pub struct GuestExport {
    /// The export's name.
    pub name: &'static str,
    /// Its signature.
    pub signature: Signature,
    /// Whether a module without it is refused.
    pub required: bool,
}

/// The function exports of ABI version 1 (besides the `memory` export).
pub const GUEST_EXPORTS: &[GuestExport] = &[
    GuestExport {
        name: "hw_abi_version",
        signature: Signature {
            params: &[],
            results: &[I],
        },
        required: true,
    },
    GuestExport {
        name: "hw_alloc",
        signature: Signature {
            params: &[I],
            results: &[I],
        },
        required: true,
    },
    GuestExport {
        name: "hw_dealloc",
        signature: Signature {
            params: &[I, I],
            results: &[],
        },
        required: true,
    },
    GuestExport {
        name: "hw_init",
        signature: Signature {
            params: &[I, I],
            results: &[I],
        },
        required: false,
    },
    GuestExport {
        name: "hw_on_message",
        signature: Signature {
            params: &[I, I],
            results: &[I],
        },
        required: true,
    },
];

/// A host function a module may import: `module.name` and its signature.
#[derive(Clone, Copy, Debug)]
pub struct HostImport {
    /// The import module (`hw`, or `env` for AssemblyScript's `abort`).
    pub module: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// Its signature.
    pub signature: Signature,
}

/// Every import a module may have; anything else is refused at load.
pub const HOST_IMPORTS: &[HostImport] = &[
    HostImport {
        module: HOST_MODULE,
        name: "emit",
        signature: Signature {
            params: &[I, I, I],
            results: &[I],
        },
    },
    HostImport {
        module: HOST_MODULE,
        name: "log",
        signature: Signature {
            params: &[I, I, I],
            results: &[],
        },
    },
    HostImport {
        module: HOST_MODULE,
        name: "kv_get",
        signature: Signature {
            params: &[I, I, I, I],
            results: &[I],
        },
    },
    HostImport {
        module: HOST_MODULE,
        name: "kv_set",
        signature: Signature {
            params: &[I, I, I, I],
            results: &[I],
        },
    },
    HostImport {
        module: HOST_MODULE,
        name: "now_ms",
        signature: Signature {
            params: &[],
            results: &[L],
        },
    },
    HostImport {
        module: "env",
        name: "abort",
        signature: Signature {
            params: &[I, I, I, I],
            results: &[],
        },
    },
];

/// `emit` results.
pub mod emit_status {
    /// Sent (buffered until the call returns).
    pub const OK: i32 = 0;
    /// No output port with that number.
    pub const UNKNOWN_PORT: i32 = -1;
    /// The record is outside the guest's memory or malformed.
    pub const BAD_RECORD: i32 = -2;
    /// The call's emit count or bytes limit is reached.
    pub const LIMIT: i32 = -3;
}

/// `kv_get`/`kv_set` results.
pub mod kv_status {
    /// `kv_get`: the key is absent.
    pub const ABSENT: i32 = -1;
    /// A pointer is outside the guest's memory (or a key is not UTF-8).
    pub const BAD_POINTER: i32 = -2;
    /// `kv_set`: the key or the value is too large.
    pub const TOO_LARGE: i32 = -3;
}

/// Longest key of `kv_set`, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest value of `kv_set`, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The parts of a message that cross the boundary, borrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Milliseconds since the Unix epoch (0 in an emit: the input's).
    pub timestamp_ms: i64,
    /// The topic (empty in an emit: the input's).
    pub topic: &'a str,
    /// The headers, in order (none in an emit: the input's).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Why a record could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record ends inside a field.
    #[error("record truncated: {field} needs {need} bytes at offset {at}, the record has {len}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes that field needs.
        need: u64,
        /// Its offset.
        at: usize,
        /// The record's length.
        len: usize,
    },
    /// Bytes remain after the payload.
    #[error("record has {0} bytes after the payload; `len` must be the record's exact size")]
    Trailing(usize),
    /// A text field is not UTF-8.
    #[error("record {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// More headers than [`MAX_HEADERS`].
    #[error("record has {0} headers, at most {MAX_HEADERS} are allowed")]
    TooManyHeaders(u32),
}

/// Bytes a record with these parts takes.
pub fn encoded_len<'a>(
    topic: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    payload: &[u8],
) -> usize {
    let headers: usize = headers.map(|(n, v)| 8 + n.len() + v.len()).sum();
    8 + 4 + topic.len() + 4 + headers + 4 + payload.len()
}

/// Writes a record into `out`, which must be exactly [`encoded_len`] bytes long.
/// Returns `false` (writing nothing useful) if it is not, or if a length does not fit
/// in a `u32`.
pub fn encode_into<'a>(
    out: &mut [u8],
    timestamp_ms: i64,
    topic: &str,
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    payload: &[u8],
) -> bool {
    if out.len() != encoded_len(topic, headers.clone(), payload) {
        return false;
    }
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    let len32 = |n: usize| u32::try_from(n).ok().map(u32::to_le_bytes);
    put(&timestamp_ms.to_le_bytes());
    let Some(topic_len) = len32(topic.len()) else {
        return false;
    };
    put(&topic_len);
    put(topic.as_bytes());
    let Some(count) = len32(headers.len()) else {
        return false;
    };
    put(&count);
    for (name, value) in headers {
        let (Some(name_len), Some(value_len)) = (len32(name.len()), len32(value.len())) else {
            return false;
        };
        put(&name_len);
        put(name.as_bytes());
        put(&value_len);
        put(value.as_bytes());
    }
    let Some(payload_len) = len32(payload.len()) else {
        return false;
    };
    put(&payload_len);
    put(payload);
    true
}

/// A record as a new vector (tests, tools).
pub fn encode(timestamp_ms: i64, topic: &str, headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0; encoded_len(topic, headers.iter().copied(), payload)];
    encode_into(
        &mut out,
        timestamp_ms,
        topic,
        headers.iter().copied(),
        payload,
    );
    out
}

/// Reads a record that must fill `bytes` exactly; every length is checked against what
/// is left before anything is sliced.
pub fn decode(bytes: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let mut reader = Reader { bytes, at: 0 };
    let timestamp_ms =
        i64::from_le_bytes(reader.take("timestamp", 8)?.try_into().unwrap_or_default());
    let topic = reader.text("topic")?;
    let count = reader.u32("header count")?;
    if count as usize > MAX_HEADERS {
        return Err(RecordError::TooManyHeaders(count));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = reader.text("header name")?;
        let value = reader.text("header value")?;
        headers.push((name, value));
    }
    let payload_len = reader.u32("payload length")?;
    let payload = reader.take("payload", u64::from(payload_len))?;
    if reader.at != bytes.len() {
        return Err(RecordError::Trailing(bytes.len() - reader.at));
    }
    Ok(RecordRef {
        timestamp_ms,
        topic,
        headers,
        payload,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, need: u64) -> Result<&'a [u8], RecordError> {
        let left = (self.bytes.len() - self.at) as u64;
        if need > left {
            return Err(RecordError::Truncated {
                field,
                need,
                at: self.at,
                len: self.bytes.len(),
            });
        }
        let slice = &self.bytes[self.at..self.at + need as usize];
        self.at += need as usize;
        Ok(slice)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        let bytes = self.take(field, 4)?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn text(&mut self, field: &'static str) -> Result<&'a str, RecordError> {
        let len = self.u32(field)?;
        let bytes = self.take(field, u64::from(len))?;
        std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let bytes = encode(
            1_767_225_600_000,
            "meters/1",
            &[("unit", "Wh"), ("id", "m1")],
            br#"{"v":1}"#,
        );
        assert_eq!(
            bytes.len(),
            8 + 4 + 8 + 4 + (8 + 4 + 2) + (8 + 2 + 2) + 4 + 7
        );
        let record = decode(&bytes).unwrap();
        assert_eq!(record.timestamp_ms, 1_767_225_600_000);
        assert_eq!(record.topic, "meters/1");
        assert_eq!(record.headers, vec![("unit", "Wh"), ("id", "m1")]);
        assert_eq!(record.payload, br#"{"v":1}"#);
    }

    #[test]
    fn hostile_records_are_refused_not_sliced() {
        let good = encode(0, "t", &[], b"abc");
        // Every truncation is refused.
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A trailing byte is refused.
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(RecordError::Trailing(1)));
        // A length near u32::MAX does not overflow or allocate.
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge),
            Err(RecordError::Truncated { field: "topic", .. })
        ));
        let mut many = encode(0, "", &[], b"");
        many[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&many), Err(RecordError::TooManyHeaders(u32::MAX)));
        // Bad UTF-8 in the topic.
        let mut bad = encode(0, "ab", &[], b"");
        bad[12] = 0xff;
        assert_eq!(decode(&bad), Err(RecordError::NotUtf8("topic")));
    }

    #[test]
    fn signatures_are_written_as_in_the_docs() {
        let on_message = GUEST_EXPORTS
            .iter()
            .find(|e| e.name == "hw_on_message")
            .unwrap();
        assert_eq!(on_message.signature.to_string(), "fn(i32, i32) -> i32");
        let dealloc = GUEST_EXPORTS
            .iter()
            .find(|e| e.name == "hw_dealloc")
            .unwrap();
        assert_eq!(dealloc.signature.to_string(), "fn(i32, i32)");
        let now = HOST_IMPORTS.iter().find(|i| i.name == "now_ms").unwrap();
        assert_eq!(now.signature.to_string(), "fn() -> i64");
    }
}
