//! A YAML document as a tree whose every node remembers where it stood in the file.
//!
//! serde-saphyr deserializes straight into typed structs, but node options are typed only
//! once the node's `type:` is known. So a flow file is first read into this tree (every
//! scalar, sequence and mapping carries its line and column), `${...}` interpolation runs
//! on it, and each node's options are then converted to JSON and deserialized into the
//! node kind's config struct; a serde error path is mapped back onto the tree to find its
//! location.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based position in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub col: u32,
}

impl Pos {
    fn from_location(loc: &serde_saphyr::Location) -> Self {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            col: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        }
    }
}

/// One YAML value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: Pos,
    /// The value itself.
    pub value: Value,
}

/// A YAML value; mappings keep their order and every key's position.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// An unsigned integer beyond i64.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, duplicates kept so that validation can report them.
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// Where the key starts.
    pub pos: Pos,
    /// The key as text (non-string keys are rendered as YAML would print them).
    pub name: String,
}

impl Node {
    /// Looks a key up in a mapping; the first occurrence wins.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, node)| node)
    }

    /// Looks a key up in a mapping and returns the key with its value.
    pub fn entry(&self, key: &str) -> Option<(&Key, &Node)> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == key)
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The string value, if this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the value's YAML kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }

    /// Converts the tree into JSON, which is what node configs are deserialized from.
    /// Later duplicates of a key overwrite earlier ones (duplicates are reported elsewhere).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Finds the position best describing a serde error path such as `rules[2].op`.
    /// Walks as deep as the path exists; for a key that does not exist as a value
    /// (an unknown field) the key's own position is returned.
    pub fn locate(&self, path: &[PathSegment]) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for segment in path {
            match (segment, &node.value) {
                (PathSegment::Key(name), Value::Map(entries)) => {
                    match entries.iter().find(|(k, _)| &k.name == name) {
                        Some((key, value)) => {
                            pos = key.pos;
                            node = value;
                            // A scalar value is a better anchor than its key: point at it.
                            if !matches!(value.value, Value::Map(_) | Value::Seq(_)) {
                                pos = value.pos;
                            }
                        }
                        None => return pos,
                    }
                }
                (PathSegment::Index(i), Value::Seq(items)) => match items.get(*i) {
                    Some(item) => {
                        pos = item.pos;
                        node = item;
                    }
                    None => return pos,
                },
                _ => return pos,
            }
        }
        pos
    }

    /// Like [`Node::locate`], but when the path ends at a mapping key that exists, the
    /// key's own position: an unknown field is reported where its name stands.
    pub fn locate_key(&self, path: &[PathSegment]) -> Pos {
        if let Some((PathSegment::Key(name), parents)) = path.split_last() {
            let mut node = self;
            for segment in parents {
                let next = match (segment, &node.value) {
                    (PathSegment::Key(k), Value::Map(_)) => node.get(k),
                    (PathSegment::Index(i), Value::Seq(items)) => items.get(*i),
                    _ => None,
                };
                match next {
                    Some(n) => node = n,
                    None => return self.locate(path),
                }
            }
            if let Some(pos) = node.key_pos(name) {
                return pos;
            }
        }
        self.locate(path)
    }

    /// The position of a key in a mapping, if present.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entry(key).map(|(k, _)| k.pos)
    }
}

/// One step of a path into a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Parses the path format of `serde_path_to_error` (`a.b[3].c`) into segments.
pub fn parse_error_path(path: &serde_path_to_error::Path) -> Vec<PathSegment> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(PathSegment::Index(*index)),
            Segment::Map { key } => Some(PathSegment::Key(key.clone())),
            Segment::Enum { variant } => Some(PathSegment::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// A YAML syntax or structure error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// Where the parser stopped, when it knows.
    pub pos: Option<Pos>,
    /// The parser's message, without location or snippet.
    pub message: String,
}

/// Upper bounds for hostile or accidental giant flow files.
const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 200_000;

/// Parses YAML text into a positioned tree. An empty document is a null node.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough,
        // YAML 1.2: `on`, `yes`, `n` are strings (an `on:` key or the country code `NO`
        // must not turn into a boolean).
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_documents: 1,
        },
    };
    match serde_saphyr::from_str_with_options::<Option<Spanned<Node>>>(text, options) {
        Ok(Some(spanned)) => {
            let mut node = spanned.value;
            node.pos = Pos::from_location(&spanned.referenced);
            Ok(node)
        }
        Ok(None) => Ok(Node {
            pos: Pos { line: 1, col: 1 },
            value: Value::Null,
        }),
        Err(err) => Err(ParseError {
            pos: err.location().map(|loc| Pos::from_location(&loc)),
            message: plain_message(&err),
        }),
    }
}

/// serde-saphyr renders errors with their location appended; the location is printed
/// separately by our diagnostics, so it is cut here.
fn plain_message(err: &serde_saphyr::Error) -> String {
    let rendered = err.render_with_options(serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
    });
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    let without_location = match first.rfind(" at line ") {
        Some(cut) => &first[..cut],
        None => first,
    };
    without_location.trim_end_matches(['.', ':']).to_string()
}

struct NodeVisitor;

fn leaf(value: Value) -> Node {
    Node {
        pos: Pos::default(),
        value,
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(leaf(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(leaf(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(leaf(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(leaf(Value::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(leaf(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(v),
        }))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        i64::try_from(v)
            .map(|i| leaf(Value::Int(i)))
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        u64::try_from(v)
            .map(|u| self.visit_u64::<E>(u))
            .map_err(|_| E::custom("integer out of range"))?
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(leaf(Value::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(leaf(Value::Str(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(leaf(Value::Str(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(leaf(Value::Str(String::from_utf8_lossy(v).into_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            let mut node = item.value;
            node.pos = Pos::from_location(&item.referenced);
            items.push(node);
        }
        Ok(leaf(Value::Seq(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Node>>()? {
            let key_pos = Pos::from_location(&key.referenced);
            let name = match key.value.value {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::UInt(u) => u.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => "~".to_string(),
                Value::Seq(_) | Value::Map(_) => {
                    return Err(de::Error::custom("mapping keys must be scalars"));
                }
            };
            let value: Spanned<Node> = map.next_value()?;
            let mut node = value.value;
            node.pos = Pos::from_location(&value.referenced);
            entries.push((Key { pos: key_pos, name }, node));
        }
        Ok(leaf(Value::Map(entries)))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }

    #[test]
    fn positions_of_keys_values_and_items() {
        let doc = parse("a: 1\nb:\n  c: [x, \"y\"]\n  d: hi\n").unwrap();
        assert_eq!(doc.key_pos("a"), Some(at(1, 1)));
        assert_eq!(doc.get("a").unwrap().pos, at(1, 4));
        let b = doc.get("b").unwrap();
        assert_eq!(b.key_pos("c"), Some(at(3, 3)));
        let Value::Seq(items) = &b.get("c").unwrap().value else {
            panic!("not a sequence")
        };
        assert_eq!(items[0].pos, at(3, 7));
        assert_eq!(items[1].pos, at(3, 10));
        assert_eq!(b.get("d").unwrap().as_str(), Some("hi"));
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let doc = parse("a: 1\na: 2\n").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0.pos, at(2, 1));
    }

    #[test]
    fn scalar_types() {
        let doc =
            parse("i: -3\nf: 1.5\nb: true\nn: ~\ns: '12'\nbig: 18446744073709551615\n").unwrap();
        assert_eq!(doc.get("i").unwrap().value, Value::Int(-3));
        assert_eq!(doc.get("f").unwrap().value, Value::Float(1.5));
        assert_eq!(doc.get("b").unwrap().value, Value::Bool(true));
        assert_eq!(doc.get("n").unwrap().value, Value::Null);
        let yaml11 = parse("on: yes\nNO: off\n").unwrap();
        assert_eq!(yaml11.get("on").unwrap().as_str(), Some("yes"));
        assert_eq!(yaml11.get("NO").unwrap().as_str(), Some("off"));
        assert_eq!(doc.get("s").unwrap().value, Value::Str("12".into()));
        assert_eq!(doc.get("big").unwrap().value, Value::UInt(u64::MAX));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn locate_follows_error_paths() {
        let doc = parse("rules:\n  - op: eq\n    value: 3\n").unwrap();
        let path = [
            PathSegment::Key("rules".into()),
            PathSegment::Index(0),
            PathSegment::Key("value".into()),
        ];
        assert_eq!(doc.locate(&path), at(3, 12));
        let missing = [PathSegment::Key("rules".into()), PathSegment::Index(4)];
        assert_eq!(doc.locate(&missing), at(1, 1));
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("").unwrap().value, Value::Null);
    }
}
