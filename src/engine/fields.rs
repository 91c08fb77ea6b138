//! Addressing parts of a message by path: `topic`, `payload`, `payload.a.b`,
//! `payload.items[0]`, `headers.name`, `id`, `timestamp`. Used by every node that reads
//! or changes message fields (filter, switch, change, window, templates).
//!
//! The payload is parsed as JSON at most once per message ([`MsgView`]); a payload that
//! is not JSON has no fields, and `payload` alone is then its text.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::msg::Msg;

/// One step inside a JSON payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path to a part of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldPath {
    /// The topic (a string).
    Topic,
    /// The payload, or a part of it when the steps are not empty.
    Payload(Vec<Step>),
    /// One header.
    Header(String),
    /// The message id (a number).
    Id,
    /// The timestamp in ms since the epoch (a number).
    Timestamp,
}

impl FieldPath {
    /// The whole payload.
    pub fn payload() -> Self {
        FieldPath::Payload(Vec::new())
    }
}

/// Why a path did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path `{path}`: {reason}")]
pub struct FieldPathError {
    path: String,
    reason: &'static str,
}

impl FromStr for FieldPath {
    type Err = FieldPathError;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        let err = |reason| FieldPathError {
            path: path.to_string(),
            reason,
        };
        let (head, rest) = match path.find(['.', '[']) {
            Some(i) => (&path[..i], &path[i..]),
            None => (path, ""),
        };
        match head {
            "topic" | "id" | "timestamp" if !rest.is_empty() => Err(err("it has no fields")),
            "topic" => Ok(FieldPath::Topic),
            "id" => Ok(FieldPath::Id),
            "timestamp" => Ok(FieldPath::Timestamp),
            "headers" => match rest.strip_prefix('.') {
                Some(name) if !name.is_empty() => Ok(FieldPath::Header(name.to_string())),
                _ => Err(err("name a header: `headers.NAME`")),
            },
            "payload" => parse_steps(rest).map(FieldPath::Payload).map_err(err),
            _ => Err(err(
                "start with `topic`, `payload`, `headers.`, `id` or `timestamp`",
            )),
        }
    }
}

fn parse_steps(mut rest: &str) -> Result<Vec<Step>, &'static str> {
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return Err("empty field name");
            }
            steps.push(Step::Key(after[..end].to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or("unclosed `[`")?;
            let index = after[..end]
                .parse()
                .map_err(|_| "an index is a number: `[0]`")?;
            steps.push(Step::Index(index));
            rest = &after[end + 1..];
        } else {
            return Err("expected `.` or `[` between fields");
        }
    }
    Ok(steps)
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Topic => f.write_str("topic"),
            FieldPath::Id => f.write_str("id"),
            FieldPath::Timestamp => f.write_str("timestamp"),
            FieldPath::Header(name) => write!(f, "headers.{name}"),
            FieldPath::Payload(steps) => {
                f.write_str("payload")?;
                for step in steps {
                    match step {
                        Step::Key(k) => write!(f, ".{k}")?,
                        Step::Index(i) => write!(f, "[{i}]")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for FieldPath {
    fn schema_name() -> Cow<'static, str> {
        "FieldPath".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A message field: `topic`, `payload`, `payload.a.b`, `payload.list[0]`, `headers.NAME`, `id` or `timestamp`",
            "pattern": "^(topic|id|timestamp|headers\\..+|payload([.\\[].*)?)$"
        })
    }
}

/// A message with its payload parsed as JSON on first use (through the message's own
/// parse cache, shared along a chain of nodes).
pub struct MsgView<'a> {
    /// The message.
    pub msg: &'a Msg,
    json: OnceLock<Option<Arc<Value>>>,
}

impl<'a> MsgView<'a> {
    /// A view of `msg`; nothing is parsed yet.
    pub fn new(msg: &'a Msg) -> Self {
        MsgView {
            msg,
            json: OnceLock::new(),
        }
    }

    /// The payload as JSON, if it is JSON.
    pub fn json(&self) -> Option<&Value> {
        self.json.get_or_init(|| self.msg.payload_json()).as_deref()
    }

    /// The value at `path`: `None` when absent. A non-JSON payload reads as a string
    /// (when UTF-8) at `payload` and has no fields.
    pub fn get(&self, path: &FieldPath) -> Option<Cow<'_, Value>> {
        match path {
            FieldPath::Topic => Some(Cow::Owned(Value::String(self.msg.topic.to_string()))),
            FieldPath::Id => Some(Cow::Owned(Value::from(self.msg.id))),
            FieldPath::Timestamp => Some(Cow::Owned(Value::from(self.msg.timestamp_ms))),
            FieldPath::Header(name) => self
                .msg
                .headers
                .get(name)
                .map(|v| Cow::Owned(Value::String(v.clone()))),
            FieldPath::Payload(steps) if steps.is_empty() => match self.json() {
                Some(json) => Some(Cow::Borrowed(json)),
                None => self
                    .msg
                    .payload_str()
                    .map(|s| Cow::Owned(Value::String(s.to_string()))),
            },
            FieldPath::Payload(steps) => {
                // Parsed already (here or by an earlier node): walk the tree. Else scan
                // the bytes for just this field: no tree is built, nothing is allocated
                // but the value found, which is what keeps chains of built-ins fast.
                if self.json.get().is_none()
                    && let Some(cached) = self.msg.cached_json()
                {
                    let _ = self.json.set(cached);
                }
                match self.json.get() {
                    Some(Some(json)) => lookup(json, steps).map(Cow::Borrowed),
                    Some(None) => None,
                    None => extract(&self.msg.payload, steps).map(Cow::Owned),
                }
            }
        }
    }
}

/// The value at `steps` inside the JSON text `bytes`, read without building the rest of
/// the document. `None` when the text is not JSON or has nothing there. With duplicate
/// keys the last one wins, as in a parsed [`Value`].
pub fn extract(bytes: &[u8], steps: &[Step]) -> Option<Value> {
    let (start, end) = super::scan::find(bytes, steps).ok()??;
    let raw = &bytes[start..end];
    // The common leaves without serde's machinery; the scan has checked their grammar.
    match raw {
        [b'"', text @ .., b'"'] if !text.contains(&b'\\') => {
            return std::str::from_utf8(text).ok().map(Value::from);
        }
        b"true" => return Some(Value::Bool(true)),
        b"false" => return Some(Value::Bool(false)),
        b"null" => return Some(Value::Null),
        _ => {}
    }
    serde_json::from_slice(raw).ok()
}

/// The value at `steps` inside `value`.
pub fn lookup<'v>(value: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    steps.iter().try_fold(value, |v, step| match (step, v) {
        (Step::Key(k), Value::Object(map)) => map.get(k),
        (Step::Index(i), Value::Array(items)) => items.get(*i),
        _ => None,
    })
}

/// Sets the value at `steps` inside `root`, creating objects along the way. Fails when a
/// step crosses a scalar or an index is out of range.
pub fn set(root: &mut Value, steps: &[Step], new: Value) -> Result<(), String> {
    let Some((last, parents)) = steps.split_last() else {
        *root = new;
        return Ok(());
    };
    let mut node = root;
    for step in parents {
        node = match (step, node) {
            (Step::Key(k), Value::Object(map)) => map
                .entry(k.clone())
                .or_insert_with(|| Value::Object(Default::default())),
            (Step::Index(i), Value::Array(items)) => items
                .get_mut(*i)
                .ok_or_else(|| format!("index {i} is out of range"))?,
            (step, other) => {
                return Err(format!(
                    "cannot enter {} with {}",
                    kind(other),
                    describe(step)
                ));
            }
        };
    }
    match (last, node) {
        (Step::Key(k), Value::Object(map)) => {
            map.insert(k.clone(), new);
            Ok(())
        }
        (Step::Index(i), Value::Array(items)) => {
            if *i < items.len() {
                items[*i] = new;
            } else if *i == items.len() {
                items.push(new);
            } else {
                return Err(format!("index {i} is out of range"));
            }
            Ok(())
        }
        (step, other) => Err(format!("cannot set {} on {}", describe(step), kind(other))),
    }
}

/// Removes and returns the value at `steps` inside `root`.
pub fn remove(root: &mut Value, steps: &[Step]) -> Option<Value> {
    let (last, parents) = steps.split_last()?;
    let mut node = root;
    for step in parents {
        node = match (step, node) {
            (Step::Key(k), Value::Object(map)) => map.get_mut(k)?,
            (Step::Index(i), Value::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    match (last, node) {
        (Step::Key(k), Value::Object(map)) => map.shift_remove(k),
        (Step::Index(i), Value::Array(items)) if *i < items.len() => Some(items.remove(*i)),
        _ => None,
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Key(k) => format!("field `{k}`"),
        Step::Index(i) => format!("index [{i}]"),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as text for topics, templates and headers: strings bare, the rest as JSON.
pub fn to_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// A JSON value as a number: numbers, and strings that parse as numbers (sensors often
/// send `"21.5"`), and booleans as 0/1.
pub fn to_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> FieldPath {
        p.parse().unwrap()
    }

    #[test]
    fn parse_and_print() {
        for p in [
            "topic",
            "payload",
            "payload.a.b",
            "payload.items[2].v",
            "headers.x-id",
            "id",
            "timestamp",
        ] {
            assert_eq!(path(p).to_string(), p);
        }
        for bad in [
            "payloads",
            "topic.x",
            "headers",
            "payload..a",
            "payload[x]",
            "payload[1",
            "payloadx",
        ] {
            assert!(bad.parse::<FieldPath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn view_reads_fields() {
        let mut msg = Msg::new("s/1", r#"{"a":{"b":[1,{"c":"x"}]}}"#, 42);
        msg.headers_mut().insert("h".into(), "v".into());
        let view = MsgView::new(&msg);
        assert_eq!(
            view.get(&path("payload.a.b[1].c")).unwrap().as_ref(),
            &json!("x")
        );
        assert_eq!(view.get(&path("topic")).unwrap().as_ref(), &json!("s/1"));
        assert_eq!(view.get(&path("headers.h")).unwrap().as_ref(), &json!("v"));
        assert_eq!(view.get(&path("timestamp")).unwrap().as_ref(), &json!(42));
        assert!(view.get(&path("payload.a.zz")).is_none());
        let text = Msg::new("t", "hello", 0);
        let view = MsgView::new(&text);
        assert_eq!(
            view.get(&path("payload")).unwrap().as_ref(),
            &json!("hello")
        );
        assert!(view.get(&path("payload.a")).is_none());
    }

    #[test]
    fn set_and_remove() {
        let mut v = json!({"a": 1, "list": [1, 2]});
        set(
            &mut v,
            &[Step::Key("b".into()), Step::Key("c".into())],
            json!(true),
        )
        .unwrap();
        set(
            &mut v,
            &[Step::Key("list".into()), Step::Index(2)],
            json!(3),
        )
        .unwrap();
        assert_eq!(v, json!({"a": 1, "list": [1, 2, 3], "b": {"c": true}}));
        assert!(
            set(
                &mut v,
                &[Step::Key("a".into()), Step::Key("x".into())],
                json!(0)
            )
            .is_err()
        );
        assert_eq!(remove(&mut v, &[Step::Key("a".into())]), Some(json!(1)));
        assert_eq!(remove(&mut v, &[Step::Key("nope".into())]), None);
        assert_eq!(v, json!({"list": [1, 2, 3], "b": {"c": true}}));
    }

    #[test]
    fn numbers() {
        assert_eq!(to_number(&json!("21.5")), Some(21.5));
        assert_eq!(to_number(&json!(3)), Some(3.0));
        assert_eq!(to_number(&json!({"a": 1})), None);
    }
}

#[cfg(test)]
mod extract_tests {
    use super::*;

    fn path(p: &str) -> Vec<Step> {
        match p.parse::<FieldPath>().unwrap() {
            FieldPath::Payload(steps) => steps,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn extract_agrees_with_a_full_parse() {
        let doc = r#"{"a": {"b": [1, {"c": "x\"y"}, 3]}, "n": 2.5, "s": "t", "dup": 1, "dup": 2, "e": {}}"#;
        let full: Value = serde_json::from_str(doc).unwrap();
        for p in [
            "payload.a",
            "payload.a.b",
            "payload.a.b[1].c",
            "payload.a.b[2]",
            "payload.a.b[3]",
            "payload.n",
            "payload.s",
            "payload.dup",
            "payload.missing",
            "payload.n.x",
            "payload.a.b.c",
            "payload.a[0]",
            "payload.e.x",
        ] {
            let steps = path(p);
            assert_eq!(
                extract(doc.as_bytes(), &steps),
                lookup(&full, &steps).cloned(),
                "{p}"
            );
        }
        assert_eq!(
            extract(b"{\"a\": 1", &path("payload.a")),
            None,
            "invalid JSON"
        );
        assert_eq!(
            extract(b"{\"a\": 1} x", &path("payload.a")),
            None,
            "trailing text"
        );
        assert_eq!(extract(b"plain text", &path("payload.a")), None);
    }

    #[test]
    fn extract_refuses_what_serde_json_refuses() {
        // Each document: does a full parse accept it, and does the skimmer agree?
        let docs: &[&[u8]] = &[
            br#"{"a": 1, "b": "x"}"#,
            br#" {"a" : [1, 2.5e-3, -0, true, false, null, {"k": []}], "b": "\u00e9\n"} "#,
            br#"{"a": 01}"#,
            br#"{"a": 1.}"#,
            br#"{"a": -}"#,
            br#"{"a": 1e}"#,
            br#"{"a": .5}"#,
            br#"{"a": 1,}"#,
            br#"{"a": [1,]}"#,
            br#"{"a" 1}"#,
            br#"{a: 1}"#,
            br#"{"a": tru}"#,
            br#"{"a": "\x"}"#,
            br#"{"a": "\ud800"}"#,
            br#"{"a": "\ud83d\ude00", "b": 2}"#,
            b"{\"a\": \"tab\there\"}",
            b"{\"a\": \"\xff\"}",
            "{\"a\": \"caf\u{e9}\", \"b\": 1}".as_bytes(),
            br#"{"\u0061": 5, "b": 1}"#,
            br#"[1, 2, 3]"#,
            br#""a""#,
            b"",
            b"   ",
            br#"{"a": 1} {"a": 2}"#,
        ];
        for doc in docs {
            let full: Result<Value, _> = serde_json::from_slice(doc);
            for p in ["payload.a", "payload.b", "payload[1]", "payload.a[0]"] {
                let steps = path(p);
                let expected = full.as_ref().ok().and_then(|v| lookup(v, &steps).cloned());
                assert_eq!(
                    extract(doc, &steps),
                    expected,
                    "{} at {p}",
                    String::from_utf8_lossy(doc)
                );
            }
        }
        // Nesting deeper than serde_json allows is refused, not a stack overflow.
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(extract(deep.as_bytes(), &path("payload[0]")), None);
    }
}
