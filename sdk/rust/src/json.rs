//! A small JSON reader and writer for payloads and configs, without serde: reads one
//! field by path straight from the bytes (no tree is built) and writes flat objects.
//!
//! ```
//! use headwater_plugin::json;
//! let payload = br#"{"sensor":{"temp":71.6,"unit":"F"},"id":"k\u00fcche"}"#;
//! assert_eq!(json::get_f64(payload, "sensor.temp"), Some(71.6));
//! assert_eq!(json::get_str(payload, "id").as_deref(), Some("küche"));
//! let out = json::Object::new().number("c", 22.0).string("id", "küche").finish();
//! assert_eq!(out, r#"{"c":22,"id":"küche"}"#);
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::ops::Range;

/// Nesting deeper than this is refused (a hostile payload must not exhaust the stack).
pub const MAX_DEPTH: usize = 64;

/// A JSON value found in a document. Objects, arrays and strings borrow their text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string, as written between the quotes (escapes not yet resolved).
    String(&'a str),
    /// An object, as written, braces included.
    Object(&'a [u8]),
    /// An array, as written, brackets included.
    Array(&'a [u8]),
}

/// A field found by `find`: its value and where its text is in the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Field<'a> {
    /// The value.
    pub value: Value<'a>,
    /// The byte range of the value's text in the document (for `replace`).
    pub span: Range<usize>,
}

/// Finds the value at `path`: keys separated by dots (`sensor.temp`), or `""` for the
/// whole document. Reads the document only as far as needed; `None` when a key is
/// missing, a step is not an object, or the text is not JSON up to there.
pub fn find<'a>(json: &'a [u8], path: &str) -> Option<Field<'a>> {
    let mut parser = Parser { text: json, at: 0 };
    parser.space();
    let mut start = parser.at;
    let mut value = parser.value(0)?;
    if !path.is_empty() {
        for key in path.split('.') {
            let Value::Object(object) = value else {
                return None;
            };
            let (found_start, found) = member(object, key)?;
            start += found_start;
            value = found;
        }
    }
    let len = match value {
        Value::Object(raw) | Value::Array(raw) => raw.len(),
        _ => {
            // Scalars: measure their text again from where they start.
            let mut scalar = Parser {
                text: json,
                at: start,
            };
            scalar.value(0)?;
            scalar.at - start
        }
    };
    Some(Field {
        value,
        span: start..start + len,
    })
}

/// The value at `path` (see `find`).
pub fn get<'a>(json: &'a [u8], path: &str) -> Option<Value<'a>> {
    find(json, path).map(|field| field.value)
}

/// The number at `path`.
pub fn get_f64(json: &[u8], path: &str) -> Option<f64> {
    match get(json, path)? {
        Value::Number(number) => Some(number),
        _ => None,
    }
}

/// The string at `path`, escapes resolved.
pub fn get_str(json: &[u8], path: &str) -> Option<String> {
    match get(json, path)? {
        Value::String(raw) => unescape(raw),
        _ => None,
    }
}

/// The boolean at `path`.
pub fn get_bool(json: &[u8], path: &str) -> Option<bool> {
    match get(json, path)? {
        Value::Bool(flag) => Some(flag),
        _ => None,
    }
}

/// `json` with the bytes in `span` replaced by `text` (a field's new value).
pub fn replace(json: &[u8], span: Range<usize>, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + text.len());
    out.extend_from_slice(&json[..span.start]);
    out.extend_from_slice(text);
    out.extend_from_slice(&json[span.end..]);
    out
}

/// Resolves the escapes of a string's text (as in `Value::String`); `None` when one is
/// invalid.
pub fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('\\') {
        return Some(String::from(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let resolved = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let high = hex4(&mut chars)?;
                if (0xd800..0xdc00).contains(&high) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let low = hex4(&mut chars)?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?
                } else {
                    char::from_u32(high)?
                }
            }
            _ => return None,
        };
        out.push(resolved);
    }
    Some(out)
}

fn hex4(chars: &mut core::str::Chars<'_>) -> Option<u32> {
    let mut value = 0;
    for _ in 0..4 {
        value = value * 16 + chars.next()?.to_digit(16)?;
    }
    Some(value)
}

/// Appends `text` as a JSON string, quoted and escaped.
pub fn write_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a number; NaN and the infinities, which JSON cannot hold, become `null`.
pub fn write_f64(out: &mut String, number: f64) {
    if number.is_finite() {
        let _ = write!(out, "{number}");
    } else {
        out.push_str("null");
    }
}

/// Builds a flat JSON object field by field.
#[derive(Clone, Debug)]
pub struct Object {
    text: String,
}

impl Default for Object {
    fn default() -> Self {
        Object::new()
    }
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Object {
            text: String::from("{"),
        }
    }

    fn key(mut self, key: &str) -> Self {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        write_str(&mut self.text, key);
        self.text.push(':');
        self
    }

    /// Adds a number field (`null` for NaN and the infinities).
    pub fn number(self, key: &str, number: f64) -> Self {
        let mut this = self.key(key);
        write_f64(&mut this.text, number);
        this
    }

    /// Adds an integer field.
    pub fn integer(self, key: &str, number: i64) -> Self {
        let mut this = self.key(key);
        let _ = write!(this.text, "{number}");
        this
    }

    /// Adds a string field.
    pub fn string(self, key: &str, text: &str) -> Self {
        let mut this = self.key(key);
        write_str(&mut this.text, text);
        this
    }

    /// Adds a boolean field.
    pub fn bool(self, key: &str, flag: bool) -> Self {
        let mut this = self.key(key);
        this.text.push_str(if flag { "true" } else { "false" });
        this
    }

    /// Adds a field whose value is JSON text already (an object, an array, ...).
    pub fn raw(self, key: &str, json: &str) -> Self {
        let mut this = self.key(key);
        this.text.push_str(json);
        this
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

/// The member `key` of an object's text: where its value starts in `object`, and it.
fn member<'a>(object: &'a [u8], key: &str) -> Option<(usize, Value<'a>)> {
    let mut parser = Parser {
        text: object,
        at: 1,
    };
    parser.space();
    if parser.peek()? == b'}' {
        return None;
    }
    loop {
        parser.space();
        let name = parser.string()?;
        parser.space();
        parser.expect(b':')?;
        parser.space();
        let start = parser.at;
        let value = parser.value(1)?;
        let matches = if name.contains('\\') {
            unescape(name).as_deref() == Some(key)
        } else {
            name == key
        };
        if matches {
            return Some((start, value));
        }
        parser.space();
        match parser.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = self.at;
        match self.peek()? {
            b'{' => {
                self.container(depth, b'}', true)?;
                Some(Value::Object(&self.text[start..self.at]))
            }
            b'[' => {
                self.container(depth, b']', false)?;
                Some(Value::Array(&self.text[start..self.at]))
            }
            b'"' => self.string().map(Value::String),
            b't' => self.literal(b"true").map(|()| Value::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Value::Bool(false)),
            b'n' => self.literal(b"null").map(|()| Value::Null),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            _ => None,
        }
    }

    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        self.at += 1;
        self.space();
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            self.space();
            if keyed {
                self.string()?;
                self.space();
                self.expect(b':')?;
                self.space();
            }
            self.value(depth + 1)?;
            self.space();
            match self.next()? {
                b',' => continue,
                byte if byte == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string's text between the quotes; checks escapes' shape, not their meaning.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => {
                    self.next()?;
                }
                byte if byte < 0x20 => return None,
                _ => {}
            }
        }
        core::str::from_utf8(&self.text[start..self.at - 1]).ok()
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Option<f64> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let leading_zero = self.peek() == Some(b'0');
        let integer = self.digits();
        if integer == 0 || (leading_zero && integer > 1) {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        core::str::from_utf8(&self.text[start..self.at])
            .ok()?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_path() {
        let doc = br#" { "a" : 1, "b": {"c": [1, {"x": 2}], "d": "e\"f"}, "g": true, "h": null } "#;
        assert_eq!(get_f64(doc, "a"), Some(1.0));
        assert_eq!(get(doc, "b.c"), Some(Value::Array(br#"[1, {"x": 2}]"#)));
        assert_eq!(get_str(doc, "b.d").as_deref(), Some("e\"f"));
        assert_eq!(get_bool(doc, "g"), Some(true));
        assert_eq!(get(doc, "h"), Some(Value::Null));
        assert_eq!(get(doc, "missing"), None);
        assert_eq!(get(doc, "a.b"), None);
        assert_eq!(get_f64(b"-12.5e1", ""), Some(-125.0));
    }

    #[test]
    fn spans_cover_the_value_text() {
        let doc = br#"{"t": 71.6, "o": {"k": "v"}}"#;
        let field = find(doc, "t").unwrap();
        assert_eq!(&doc[field.span.clone()], b"71.6");
        assert_eq!(
            replace(doc, field.span, b"22"),
            br#"{"t": 22, "o": {"k": "v"}}"#
        );
        let field = find(doc, "o.k").unwrap();
        assert_eq!(&doc[field.span], br#""v""#);
        let field = find(doc, "o").unwrap();
        assert_eq!(&doc[field.span], br#"{"k": "v"}"#);
    }

    #[test]
    fn bad_json_is_refused() {
        for bad in [
            &b"{"[..],
            b"{\"a\" 1}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"[1,]x",
            b"\"\x01\"",
            b"tru",
        ] {
            assert_eq!(find(bad, "a"), None, "{:?}", core::str::from_utf8(bad));
        }
        let deep = [b'['; 200];
        assert_eq!(get(&deep, ""), None);
    }

    #[test]
    fn escapes_resolve_including_surrogate_pairs() {
        assert_eq!(
            unescape(r"a\n\u00e9\ud83d\ude00\/").as_deref(),
            Some("a\né😀/")
        );
        assert_eq!(unescape(r"\ud83d"), None);
        assert_eq!(unescape(r"\q"), None);
    }

    #[test]
    fn objects_are_written_as_json() {
        let text = Object::new()
            .number("w", 1500.25)
            .number("nan", f64::NAN)
            .integer("n", -3)
            .string("s", "a\"b\\\u{1}")
            .bool("ok", false)
            .raw("r", "[1]")
            .finish();
        assert_eq!(
            text,
            r#"{"w":1500.25,"nan":null,"n":-3,"s":"a\"b\\\u0001","ok":false,"r":[1]}"#
        );
        assert_eq!(
            get_str(text.as_bytes(), "s").as_deref(),
            Some("a\"b\\\u{1}")
        );
        assert_eq!(Object::new().finish(), "{}");
    }
}
