//! Cutting a serial byte stream into frames: lines ending in a delimiter, or records of
//! a fixed length, with a bound on how long a frame may grow; and the escapes
//! (`\r`, `\n`, `\xHH`...) byte-string options are written with.

use bytes::Bytes;

/// How the stream is cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    /// Frames end with `delimiter` (not part of the frame). With `strip_cr`, a `\r`
    /// right before the delimiter is removed too (the default `\n` then reads `\r\n`
    /// devices).
    Delimiter {
        /// The delimiter bytes, at least one.
        delimiter: Vec<u8>,
        /// Remove a `\r` before the delimiter.
        strip_cr: bool,
    },
    /// Frames of exactly this many bytes.
    Fixed(usize),
}

/// What the framer cut.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame, without its delimiter.
    Good(Bytes),
    /// A frame longer than `max_frame`: its first `max_frame` bytes; the rest up to the
    /// next delimiter is discarded.
    TooLong(Bytes),
}

/// Turns chunks read from a port into frames. Holds at most `max_frame` plus a
/// delimiter's length of bytes.
#[derive(Debug)]
pub struct Framer {
    split: Split,
    max_frame: usize,
    buffer: Vec<u8>,
    /// Where the delimiter search resumes in `buffer` (bytes before it hold none).
    scanned: usize,
    /// Inside an over-long frame: drop bytes until the next delimiter.
    discarding: bool,
}

impl Framer {
    /// A framer; `max_frame` bounds delimited frames (fixed ones are their length).
    pub fn new(split: Split, max_frame: usize) -> Self {
        Framer {
            split,
            max_frame: max_frame.max(1),
            buffer: Vec::new(),
            scanned: 0,
            discarding: false,
        }
    }

    /// Feeds `data`, appending every frame it completes to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Frame>) {
        match &self.split {
            Split::Fixed(size) => {
                let size = *size;
                while !data.is_empty() {
                    let take = (size - self.buffer.len()).min(data.len());
                    self.buffer.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buffer.len() == size {
                        out.push(Frame::Good(Bytes::from(std::mem::take(&mut self.buffer))));
                    }
                }
            }
            Split::Delimiter {
                delimiter,
                strip_cr,
            } => {
                let (delimiter, strip_cr) = (delimiter.clone(), *strip_cr);
                while !data.is_empty() {
                    if self.discarding {
                        // Look for the delimiter across the chunk boundary: keep up to
                        // its length minus one byte from before.
                        self.buffer.extend_from_slice(data);
                        data = &[];
                        match find(&self.buffer, &delimiter, 0) {
                            Some(at) => {
                                self.buffer.drain(..at + delimiter.len());
                                self.discarding = false;
                                self.scanned = 0;
                                let rest = std::mem::take(&mut self.buffer);
                                self.push_delimited(&rest, &delimiter, strip_cr, out);
                            }
                            None => {
                                let keep = delimiter.len() - 1;
                                let cut = self.buffer.len().saturating_sub(keep);
                                self.buffer.drain(..cut);
                            }
                        }
                    } else {
                        self.push_delimited(data, &delimiter, strip_cr, out);
                        data = &[];
                    }
                }
            }
        }
    }

    fn push_delimited(
        &mut self,
        data: &[u8],
        delimiter: &[u8],
        strip_cr: bool,
        out: &mut Vec<Frame>,
    ) {
        self.buffer.extend_from_slice(data);
        let mut start = 0;
        while let Some(at) = find(&self.buffer, delimiter, self.scanned.max(start)) {
            let mut frame = &self.buffer[start..at];
            if strip_cr && frame.last() == Some(&b'\r') {
                frame = &frame[..frame.len() - 1];
            }
            if frame.len() > self.max_frame {
                out.push(Frame::TooLong(Bytes::copy_from_slice(
                    &frame[..self.max_frame],
                )));
            } else {
                out.push(Frame::Good(Bytes::copy_from_slice(frame)));
            }
            start = at + delimiter.len();
            self.scanned = start;
        }
        self.buffer.drain(..start);
        // No delimiter in what is left: resume the search where a delimiter split by
        // the next chunk could begin.
        self.scanned = self.buffer.len().saturating_sub(delimiter.len() - 1);
        // A frame may hold `max_frame` bytes plus `\r` and a delimiter cut in two.
        if self.buffer.len() > self.max_frame + delimiter.len() {
            let head = Bytes::copy_from_slice(&self.buffer[..self.max_frame]);
            out.push(Frame::TooLong(head));
            // Keep what could be the start of a delimiter the next chunk completes.
            let keep = delimiter.len() - 1;
            self.buffer.drain(..self.buffer.len() - keep);
            self.scanned = 0;
            self.discarding = true;
        }
    }

    /// The bytes of an unfinished frame, if any, leaving the framer empty (the port was
    /// lost, or a poll timed out). An over-long frame being discarded was reported
    /// already and yields nothing.
    pub fn take_partial(&mut self) -> Option<Bytes> {
        let discarding = std::mem::take(&mut self.discarding);
        self.scanned = 0;
        let rest = std::mem::take(&mut self.buffer);
        (!discarding && !rest.is_empty()).then(|| Bytes::from(rest))
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from >= haystack.len() {
        return None;
    }
    if let [byte] = needle {
        return haystack[from..]
            .iter()
            .position(|b| b == byte)
            .map(|i| i + from);
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Reads the escapes of a byte-string option: `\n`, `\r`, `\t`, `\0`, `\\` and `\xHH`
/// (any byte). Other characters stand for their UTF-8 bytes, so a YAML double-quoted
/// `"\r\n"` (already real control characters) and a single-quoted `'\r\n'` agree.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = (hex.len() == 2)
                    .then(|| u8::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| format!("`\\x{hex}` needs two hex digits, e.g. `\\x03`"))?;
                out.push(byte);
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape `\\{other}`; use \\n, \\r, \\t, \\0, \\\\ or \\xHH"
                ));
            }
            None => return Err("a lone `\\` at the end; write `\\\\` for a backslash".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(delimiter: &str, strip_cr: bool, max: usize) -> Framer {
        Framer::new(
            Split::Delimiter {
                delimiter: delimiter.as_bytes().to_vec(),
                strip_cr,
            },
            max,
        )
    }

    fn feed(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out);
        }
        out
    }

    fn good(text: &str) -> Frame {
        Frame::Good(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn lines_across_chunks_with_optional_cr() {
        let mut f = lines("\n", true, 100);
        let out = feed(&mut f, &[b"a=1\r\nb=", b"2\n\nc", b"=3\r", b"\n"]);
        assert_eq!(out, vec![good("a=1"), good("b=2"), good(""), good("c=3")]);
        assert_eq!(f.take_partial(), None);
        let out = feed(&mut f, &[b"half"]);
        assert!(out.is_empty());
        assert_eq!(f.take_partial(), Some(Bytes::from_static(b"half")));
        assert_eq!(f.take_partial(), None);
    }

    #[test]
    fn multi_byte_delimiter_split_between_chunks() {
        let mut f = lines("\r\n", false, 100);
        let out = feed(&mut f, &[b"one\r", b"\ntwo\r", b"x\r\n", b"\r", b"\n"]);
        assert_eq!(out, vec![good("one"), good("two\rx"), good("")]);
        let mut f = lines("END", false, 100);
        let out = feed(&mut f, &[b"aEN", b"DbE", b"ND"]);
        assert_eq!(out, vec![good("a"), good("b")]);
    }

    #[test]
    fn too_long_frames_are_cut_reported_once_and_skipped_to_the_delimiter() {
        let mut f = lines("\n", true, 4);
        // Exactly max_frame is fine, with or without \r.
        let out = feed(&mut f, &[b"abcd\nabcd\r\n"]);
        assert_eq!(out, vec![good("abcd"), good("abcd")]);
        // A long line complete in one chunk.
        let out = feed(&mut f, &[b"abcdefgh\nok\n"]);
        assert_eq!(
            out,
            vec![Frame::TooLong(Bytes::from_static(b"abcd")), good("ok")]
        );
        // A long line without a delimiter for many chunks: reported once, memory bounded.
        let out = feed(&mut f, &[b"0123456", b"789", b"0123456789", b"xyz"]);
        assert_eq!(out, vec![Frame::TooLong(Bytes::from_static(b"0123"))]);
        assert!(f.buffer.len() <= 4 + 1);
        let out = feed(&mut f, &[b"tail\nnext\n"]);
        assert_eq!(out, vec![good("next")]);
        // Discarding, then the port is lost: nothing partial to report twice.
        feed(&mut f, &[b"0123456789"]);
        assert_eq!(f.take_partial(), None);
        assert_eq!(feed(&mut f, &[b"fine\n"]), vec![good("fine")]);
    }

    #[test]
    fn discarding_finds_a_delimiter_split_across_chunks() {
        let mut f = lines("\r\n", false, 3);
        let out = feed(&mut f, &[b"abcdefgh\r", b"\nok\r\n"]);
        assert_eq!(
            out,
            vec![Frame::TooLong(Bytes::from_static(b"abc")), good("ok")]
        );
    }

    #[test]
    fn fixed_records() {
        let mut f = Framer::new(Split::Fixed(3), 4096);
        let out = feed(&mut f, &[b"ab", b"cdefg", b"h"]);
        assert_eq!(out, vec![good("abc"), good("def")]);
        assert_eq!(f.take_partial(), Some(Bytes::from_static(b"gh")));
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(r"\r\n").unwrap(), b"\r\n");
        assert_eq!(unescape("\r\n").unwrap(), b"\r\n");
        assert_eq!(unescape(r"\x03\xff;").unwrap(), vec![3, 255, b';']);
        assert_eq!(unescape(r"a\\b\t\0").unwrap(), b"a\\b\t\0");
        assert_eq!(unescape("°").unwrap(), "°".as_bytes());
        assert!(
            unescape(r"\q")
                .unwrap_err()
                .contains("unknown escape `\\q`")
        );
        assert!(unescape(r"\x3").unwrap_err().contains("two hex digits"));
        assert!(unescape(r"\xzz").unwrap_err().contains("two hex digits"));
        assert!(unescape("\\").unwrap_err().contains("lone"));
    }
}
