//! The message record that crosses the ABI both ways, and its encoding:
//! `i64 timestamp_ms`, `u32 topic_len` + topic, `u32 header_count` + (`u32` name_len,
//! name, `u32` value_len, value)*, `u32 payload_len` + payload; little-endian, no padding.

use alloc::vec::Vec;
use core::fmt;

use crate::Error;

/// A message: the input of `on_message`, or one to emit.
///
/// In an emitted message an empty `topic` means "the input's topic", a `timestamp_ms`
/// of 0 "the input's timestamp", and an empty `headers` list keeps the input's headers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message<'a> {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The MQTT-style topic (UTF-8).
    pub topic: &'a str,
    /// Header names and values in order (MQTT 5 user properties and the like).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The payload bytes: JSON text when the source gave JSON.
    pub payload: &'a [u8],
}

/// Why an input record could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record ends before a field it announces.
    Truncated,
    /// The topic, a header name or a header value is not UTF-8.
    NotUtf8,
    /// Bytes follow the payload.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "message record is truncated",
            DecodeError::NotUtf8 => "message record holds text that is not utf-8",
            DecodeError::TrailingBytes => "message record has bytes after the payload",
        })
    }
}

impl<'a> Message<'a> {
    /// A message with this payload that keeps the input's topic, timestamp and headers.
    pub fn new(payload: &'a [u8]) -> Self {
        Message {
            payload,
            ..Message::default()
        }
    }

    /// This message with another topic.
    pub fn with_topic(mut self, topic: &'a str) -> Self {
        self.topic = topic;
        self
    }

    /// This message with another timestamp.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// This message with one more header. Giving any header replaces all of the input's.
    pub fn with_header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The value of the first header called `name` (exact match).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| *value)
    }

    /// The payload as text, when it is UTF-8.
    pub fn payload_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.payload).ok()
    }

    /// Reads a record; borrows its text and payload.
    pub fn decode(record: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader { rest: record };
        let timestamp_ms = i64::from_le_bytes(reader.array()?);
        let topic = reader.text()?;
        let count = reader.u32()? as usize;
        // Each header takes at least 8 bytes: a count beyond that is a lie, not a reason
        // to reserve memory for it.
        if count > reader.rest.len() / 8 {
            return Err(DecodeError::Truncated);
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = reader.text()?;
            let value = reader.text()?;
            headers.push((name, value));
        }
        let payload = reader.bytes()?;
        if !reader.rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Message {
            timestamp_ms,
            topic,
            headers,
            payload,
        })
    }

    /// The size of the record `encode` writes.
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| 8 + name.len() + value.len())
            .sum();
        8 + 4 + self.topic.len() + 4 + headers + 4 + self.payload.len()
    }

    /// Appends the record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        put_bytes(out, self.topic.as_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value.as_bytes());
        }
        put_bytes(out, self.payload);
    }

    /// The record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn text(&mut self) -> Result<&'a str, DecodeError> {
        core::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::NotUtf8)
    }
}

/// Decodes an input record and runs the plugin's function on it: the body of
/// `hw_on_message`, shared with the test host.
pub(crate) fn dispatch<F>(record: &[u8], handler: F) -> i32
where
    F: FnOnce(&Message<'_>) -> Result<(), Error>,
{
    match Message::decode(record) {
        Ok(msg) => match handler(&msg) {
            Ok(()) => 0,
            Err(error) => error.code(),
        },
        Err(error) => {
            let mut line = crate::log::FixedLine::new();
            let _ = fmt::write(&mut line, format_args!("cannot read the input: {error}"));
            crate::log::warn(line.as_str());
            Error::from(error).code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message<'static> {
        Message {
            timestamp_ms: 1_700_000_000_123,
            topic: "home/meter",
            headers: alloc::vec![("unit", "W"), ("src", "é")],
            payload: br#"{"w":12}"#,
        }
    }

    #[test]
    fn a_record_has_the_documented_layout() {
        let record = Message::new(b"hi")
            .with_topic("t")
            .with_timestamp(0x0102_0304_0506_0708)
            .with_header("a", "bc")
            .encode();
        let expected: &[u8] = &[
            8, 7, 6, 5, 4, 3, 2, 1, // timestamp, little-endian
            1, 0, 0, 0, b't', // topic
            1, 0, 0, 0, // one header
            1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c', // name, value
            2, 0, 0, 0, b'h', b'i', // payload
        ];
        assert_eq!(record, expected);
    }

    #[test]
    fn encode_then_decode_gives_the_message_back() {
        let msg = sample();
        let record = msg.encode();
        assert_eq!(record.len(), msg.encoded_len());
        assert_eq!(Message::decode(&record), Ok(msg.clone()));
        assert_eq!(Message::decode(&record).unwrap().header("src"), Some("é"));
    }

    #[test]
    fn an_empty_message_is_twenty_bytes_of_zeros_and_lengths() {
        let record = Message::new(b"").encode();
        assert_eq!(record, [0u8; 20]);
        assert_eq!(Message::decode(&record), Ok(Message::new(b"")));
    }

    #[test]
    fn every_truncation_is_refused_not_misread() {
        let record = sample().encode();
        for cut in 0..record.len() {
            assert!(
                Message::decode(&record[..cut]).is_err(),
                "a record cut at {cut} bytes was accepted"
            );
        }
    }

    #[test]
    fn malformed_records_are_named() {
        let mut trailing = sample().encode();
        trailing.push(0);
        assert_eq!(Message::decode(&trailing), Err(DecodeError::TrailingBytes));

        let mut bad_topic = Message::new(b"").with_topic("ab").encode();
        bad_topic[12] = 0xff;
        assert_eq!(Message::decode(&bad_topic), Err(DecodeError::NotUtf8));

        // A header count of 4 billion must not reserve memory for them.
        let mut huge = Message::new(b"").encode();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Message::decode(&huge), Err(DecodeError::Truncated));
    }

    #[test]
    fn dispatch_returns_the_functions_verdict() {
        let record = sample().encode();
        assert_eq!(dispatch(&record, |_| Ok(())), 0);
        assert_eq!(dispatch(&record, |_| Err(Error::with_code(7))), 7);
        assert_eq!(dispatch(&record, |_| Err(Error::with_code(0))), 1);
        assert_eq!(dispatch(&record[..5], |_| Ok(())), 2);
    }
}
