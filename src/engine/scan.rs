//! A validating JSON skimmer: finds where the value at a path lies inside a JSON text
//! without building anything. Chains of built-in nodes read one or two fields of every
//! message; a full parse (or serde's visitor machinery) costs more than the rest of the
//! engine together, and this walk costs a few ns per byte.
//!
//! It accepts exactly what RFC 8259 accepts (what `serde_json` accepts), so a payload
//! that would not parse has no fields here either. Nesting is bounded like serde_json's
//! (128) so a hostile payload cannot exhaust the stack.

use super::fields::Step;

/// serde_json's recursion limit; deeper documents are refused by both.
const MAX_DEPTH: usize = 128;

/// The byte range of the value at `steps` in `text`: `Ok(None)` when the document is
/// valid JSON with nothing there, `Err(())` when it is not JSON. With duplicate keys the
/// last one wins, as in a parsed tree.
pub(crate) fn find(text: &[u8], steps: &[Step]) -> Result<Option<(usize, usize)>, ()> {
    // Strings are checked byte-wise below; UTF-8 validity is checked once, up front,
    // which is fast for the ASCII that nearly every payload is.
    if !text.is_ascii() && std::str::from_utf8(text).is_err() {
        return Err(());
    }
    let mut scan = Scanner { text, at: 0 };
    scan.whitespace();
    let found = scan.find_in(steps, 0)?;
    scan.whitespace();
    if scan.at != text.len() {
        return Err(());
    }
    Ok(found)
}

struct Scanner<'t> {
    text: &'t [u8],
    at: usize,
}

impl<'t> Scanner<'t> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), ()> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    fn find_in(&mut self, steps: &[Step], depth: usize) -> Result<Option<(usize, usize)>, ()> {
        let Some((step, rest)) = steps.split_first() else {
            let start = self.at;
            self.value(depth)?;
            return Ok(Some((start, self.at)));
        };
        match (self.peek(), step) {
            (Some(b'{'), Step::Key(key)) => self.find_in_object(key, rest, depth + 1),
            (Some(b'['), Step::Index(index)) => self.find_in_array(*index, rest, depth + 1),
            _ => self.value(depth).map(|()| None),
        }
    }

    fn find_in_object(
        &mut self,
        key: &str,
        rest: &[Step],
        depth: usize,
    ) -> Result<Option<(usize, usize)>, ()> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        self.at += 1;
        self.whitespace();
        let mut found = None;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(None);
        }
        loop {
            let (start, end, escaped) = self.string()?;
            let matched = if escaped {
                // Rare: compare the decoded key.
                serde_json::from_slice::<String>(&self.text[start - 1..end + 1]).map_err(|_| ())?
                    == key
            } else {
                &self.text[start..end] == key.as_bytes()
            };
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            if matched {
                found = self.find_in(rest, depth)?;
            } else {
                self.value(depth)?;
            }
            if self.end_of_member(b'}')? {
                return Ok(found);
            }
        }
    }

    fn find_in_array(
        &mut self,
        index: usize,
        rest: &[Step],
        depth: usize,
    ) -> Result<Option<(usize, usize)>, ()> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        self.at += 1;
        self.whitespace();
        let mut found = None;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(None);
        }
        let mut position = 0;
        loop {
            if position == index {
                found = self.find_in(rest, depth)?;
            } else {
                self.value(depth)?;
            }
            position += 1;
            if self.end_of_member(b']')? {
                return Ok(found);
            }
        }
    }

    /// After a member of an object or array: `,` (more follow) or `close` (true: the
    /// container ended); anything else is not JSON.
    fn end_of_member(&mut self, close: u8) -> Result<bool, ()> {
        self.whitespace();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                self.whitespace();
                Ok(false)
            }
            Some(byte) if byte == close => {
                self.at += 1;
                Ok(true)
            }
            _ => Err(()),
        }
    }

    /// Skips one value, checking its grammar.
    fn value(&mut self, depth: usize) -> Result<(), ()> {
        match self.peek().ok_or(())? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.find_in_object("", &[], depth + 1).map(|_| ()),
            b'[' => self.find_in_array(usize::MAX, &[], depth + 1).map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ()> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(())
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), ()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(()),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(());
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(());
            }
        }
        Ok(())
    }

    /// Skips a string; returns the range of its contents and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), ()> {
        self.expect(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            // Plain bytes in one tight pass; stop at a quote, an escape or a control byte.
            let plain = self.text[self.at..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(())?;
            self.at += plain;
            match self.text[self.at] {
                b'"' => {
                    let end = self.at;
                    self.at += 1;
                    // Escapes are rare; let serde_json judge them (surrogate pairs).
                    if escaped
                        && serde_json::from_slice::<serde::de::IgnoredAny>(
                            &self.text[start - 1..self.at],
                        )
                        .is_err()
                    {
                        return Err(());
                    }
                    return Ok((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek().ok_or(())? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.text.get(self.at + 1..self.at + 5).ok_or(())?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(());
                            }
                            self.at += 5;
                        }
                        _ => return Err(()),
                    }
                }
                _ => return Err(()),
            }
        }
    }
}
