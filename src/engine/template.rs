//! Per-message templates: `{{topic}}`, `{{payload.a.b}}`, `{{headers.x}}` filled from
//! each message, with every value escaped for where it goes. Parsed once at load, so a
//! bad field path is a located error in `check`.

use std::fmt;

use super::fields::{FieldPath, MsgView, to_text};
use super::msg::Msg;

/// Where a filled template goes, which decides how values are escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// An MQTT topic: a value is one topic level, so `/`, `+`, `#` and NUL inside it are
    /// refused (they would change which level it fills or make a filter of it). The
    /// message's own `{{topic}}` is a topic already and may hold `/`.
    TopicLevel,
    /// A URL: values are percent-encoded (RFC 3986 unreserved characters stay).
    Url,
    /// Plain text (a file line, a log): values go in as they are.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(FieldPath),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    escape: Escape,
}

/// Why a template did not parse: the byte offset in the template and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// Byte offset of the problem in the template text.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Why a template could not be filled for one message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// The message has no such field.
    #[error("the message has no `{0}` for the template")]
    Missing(FieldPath),
    /// The value would break out of its topic level.
    #[error(
        "`{field}` is `{value}`, which cannot be a topic level (it holds `/`, `+`, `#` or NUL)"
    )]
    BadTopicLevel {
        /// The field.
        field: FieldPath,
        /// Its value.
        value: String,
    },
}

impl Template {
    /// Parses `text`; `{{` opens a field, `}}` closes it. There is no escape for a
    /// literal `{{`: topics, URLs and file names never need one.
    pub fn parse(text: &str, escape: Escape) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(TemplateError {
                    offset: offset + open,
                    message: "`{{` is not closed by `}}`".into(),
                });
            };
            let field = after[..close].trim();
            let path: FieldPath = field.parse().map_err(|e| TemplateError {
                offset: offset + open + 2,
                message: format!("{e}"),
            })?;
            parts.push(Part::Field(path));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts, escape })
    }

    /// Whether the template has no fields (the same text for every message).
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The text parts joined, for constant templates and display.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Fills the template from `msg`.
    pub fn fill(&self, msg: &Msg) -> Result<String, FillError> {
        if let Some(text) = self.literal() {
            return Ok(text.to_string());
        }
        let view = MsgView::new(msg);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => {
                    let value = view
                        .get(path)
                        .ok_or_else(|| FillError::Missing(path.clone()))?;
                    let text = to_text(&value);
                    match self.escape {
                        Escape::None => out.push_str(&text),
                        Escape::Url => percent_encode(&text, &mut out),
                        Escape::TopicLevel => {
                            let forbidden: &[char] = if *path == FieldPath::Topic {
                                &['+', '#', '\0']
                            } else {
                                &['/', '+', '#', '\0']
                            };
                            if text.contains(forbidden) {
                                return Err(FillError::BadTopicLevel {
                                    field: path.clone(),
                                    value: text.into_owned(),
                                });
                            }
                            out.push_str(&text);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(t)?,
                Part::Field(p) => write!(f, "{{{{{p}}}}}")?,
            }
        }
        Ok(())
    }
}

fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Msg {
        let mut msg = Msg::new(
            "home/kitchen",
            r#"{"id": "meter-1", "room": {"name": "Living room"}, "n": 3, "bad": "a/b"}"#,
            1_700_000_000_000,
        );
        msg.headers_mut().insert("site".into(), "north".into());
        msg
    }

    #[test]
    fn fills_fields() {
        let t = Template::parse(
            "/sensor/{{payload.id}}/{{ headers.site }}/{{payload.n}}",
            Escape::TopicLevel,
        )
        .unwrap();
        assert_eq!(t.fill(&msg()).unwrap(), "/sensor/meter-1/north/3");
        assert!(!t.is_constant());
        assert_eq!(
            t.to_string(),
            "/sensor/{{payload.id}}/{{headers.site}}/{{payload.n}}"
        );
        let t = Template::parse("{{topic}}/state", Escape::TopicLevel).unwrap();
        assert_eq!(t.fill(&msg()).unwrap(), "home/kitchen/state");
    }

    #[test]
    fn constant_templates() {
        let t = Template::parse("a/b", Escape::TopicLevel).unwrap();
        assert!(t.is_constant());
        assert_eq!(t.literal(), Some("a/b"));
        assert_eq!(t.fill(&msg()).unwrap(), "a/b");
    }

    #[test]
    fn escapes_for_the_destination() {
        let t = Template::parse("x/{{payload.bad}}", Escape::TopicLevel).unwrap();
        assert_eq!(
            t.fill(&msg()).unwrap_err().to_string(),
            "`payload.bad` is `a/b`, which cannot be a topic level (it holds `/`, `+`, `#` or NUL)"
        );
        let t = Template::parse("http://h/rooms/{{payload.room.name}}", Escape::Url).unwrap();
        assert_eq!(t.fill(&msg()).unwrap(), "http://h/rooms/Living%20room");
    }

    #[test]
    fn missing_fields_and_bad_templates() {
        let t = Template::parse("x/{{payload.nope}}", Escape::TopicLevel).unwrap();
        assert_eq!(
            t.fill(&msg()).unwrap_err(),
            FillError::Missing("payload.nope".parse().unwrap())
        );
        let e = Template::parse("x/{{payload.id", Escape::TopicLevel).unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (2, "`{{` is not closed by `}}`")
        );
        let e = Template::parse("x/{{pay.id}}", Escape::TopicLevel).unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.message.starts_with("invalid field path `pay.id`"), "{e}");
    }
}
