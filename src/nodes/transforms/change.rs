//! `change`: sets, copies, deletes and moves message fields (Node-RED's change node).
//!
//! Rules apply in order to a staged copy of the fields they touch, each rule seeing the
//! effect of the ones before it; the message changes only if every rule succeeded, so a
//! message sent to the error port is the one that arrived. The payload is parsed at most
//! once and written back (as compact JSON) only when a rule changed it.

use std::sync::Arc;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::engine::fields::{self, FieldPath, MsgView, to_number, to_text};
use crate::engine::msg::Headers;
use crate::engine::{Emit, Msg, NodeContext, NodeFactory, NodeFuture, Transform, run_transform};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `change` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeConfig {
    /// The rules, applied in order.
    pub rules: Vec<ChangeRule>,
}

/// One rule: `{set: FIELD, value: V}`, `{set: FIELD, from: FIELD}`, `{delete: FIELD}` or
/// `{move: FIELD, to: FIELD}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRule {
    /// The field to set: `payload`, `payload.a.b`, `topic`, `headers.NAME` or
    /// `timestamp`. Objects along the way are created.
    pub set: Option<FieldPath>,
    /// The value `set` writes, as given (strings are literal, `null` is allowed).
    #[serde(default, deserialize_with = "present")]
    pub value: Option<Value>,
    /// The field whose current value `set` copies.
    pub from: Option<FieldPath>,
    /// The field to remove: `payload`, a payload field, or `headers.NAME`.
    pub delete: Option<FieldPath>,
    /// The field to move (a payload field or a header); a missing one moves nothing.
    #[serde(rename = "move")]
    pub move_from: Option<FieldPath>,
    /// Where `move` puts the value.
    pub to: Option<FieldPath>,
}

/// `value: null` is a value (set the field to null), not an absent option.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A compiled rule.
#[derive(Debug)]
enum Action {
    Set(FieldPath, Source),
    Delete(FieldPath),
    Move(FieldPath, FieldPath),
}

#[derive(Debug)]
enum Source {
    Literal(Value),
    Field(FieldPath),
}

fn settable(path: &FieldPath) -> Result<(), String> {
    match path {
        FieldPath::Id => Err("`id` cannot be changed: sinks deduplicate and upsert on it".into()),
        _ => Ok(()),
    }
}

fn deletable(path: &FieldPath) -> Result<(), String> {
    match path {
        FieldPath::Payload(_) | FieldPath::Header(_) => Ok(()),
        other => Err(format!(
            "`{other}` cannot be removed; only `payload`, payload fields and headers can"
        )),
    }
}

impl ChangeRule {
    fn compile(&self, at: &str) -> Result<Action, Vec<ConfigIssue>> {
        let issue = |key: &str, message: String| ConfigIssue::new(format!("{at}.{key}"), message);
        let mut issues = Vec::new();
        let given = [
            self.set.is_some(),
            self.delete.is_some(),
            self.move_from.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(vec![ConfigIssue::new(
                    at,
                    "a rule is `set:` (with `value:` or `from:`), `delete:` or `move:` (with `to:`)",
                )]);
            }
            1 => {}
            _ => {
                return Err(vec![ConfigIssue::new(
                    at,
                    "give one of `set`, `delete` or `move` per rule; split it into several rules",
                )]);
            }
        }
        let unexpected = |key: &str, action: &str| {
            issue(
                key,
                format!("`{key}` does not go with `{action}`; remove it"),
            )
        };
        let action = if let Some(target) = &self.set {
            if let Err(e) = settable(target) {
                issues.push(issue("set", e));
            }
            if self.to.is_some() {
                issues.push(unexpected("to", "set"));
            }
            match (&self.value, &self.from) {
                (Some(value), None) => {
                    if let Err(e) = literal_fits(target, value) {
                        issues.push(issue("value", e));
                    }
                    Some(Action::Set(target.clone(), Source::Literal(value.clone())))
                }
                (None, Some(from)) => {
                    Some(Action::Set(target.clone(), Source::Field(from.clone())))
                }
                (None, None) => {
                    issues.push(issue("set", "`set` needs `value:` or `from:`".into()));
                    None
                }
                (Some(_), Some(_)) => {
                    issues.push(issue("from", "give `value` or `from`, not both".into()));
                    None
                }
            }
        } else if let Some(target) = &self.delete {
            if let Err(e) = deletable(target) {
                issues.push(issue("delete", e));
            }
            for (key, given) in [
                ("value", self.value.is_some()),
                ("from", self.from.is_some()),
                ("to", self.to.is_some()),
            ] {
                if given {
                    issues.push(unexpected(key, "delete"));
                }
            }
            Some(Action::Delete(target.clone()))
        } else if let Some(source) = &self.move_from {
            if let Err(e) = deletable(source) {
                issues.push(issue("move", e));
            }
            for (key, given) in [
                ("value", self.value.is_some()),
                ("from", self.from.is_some()),
            ] {
                if given {
                    issues.push(unexpected(key, "move"));
                }
            }
            match &self.to {
                Some(to) => {
                    if let Err(e) = settable(to) {
                        issues.push(issue("to", e));
                    }
                    Some(Action::Move(source.clone(), to.clone()))
                }
                None => {
                    issues.push(issue("move", "`move` needs `to:`".into()));
                    None
                }
            }
        } else {
            None
        };
        match action {
            Some(action) if issues.is_empty() => Ok(action),
            _ => Err(issues),
        }
    }
}

/// Checks a literal against what its target accepts, so a mistake shows at `check`.
fn literal_fits(target: &FieldPath, value: &Value) -> Result<(), String> {
    match target {
        FieldPath::Topic => topic_text(value).map(drop),
        FieldPath::Timestamp => timestamp_ms(value).map(drop),
        _ => Ok(()),
    }
}

/// A topic from a value: strings as they are, numbers as their text.
fn topic_text(value: &Value) -> Result<Arc<str>, String> {
    match value {
        Value::String(s) if s.is_empty() => Err("the topic cannot be empty".into()),
        Value::String(s) => Ok(s.as_str().into()),
        Value::Number(n) => Ok(n.to_string().into()),
        other => Err(format!("the topic must be a string, not {}", kind(other))),
    }
}

/// A timestamp from a value: milliseconds since the epoch, as a number or numeric text.
fn timestamp_ms(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(_) | Value::String(_) => to_number(value)
            .filter(|n| n.is_finite() && n.abs() < 1e17)
            .map(|n| n.round() as i64)
            .ok_or_else(|| "the timestamp must be a number of milliseconds since the epoch".into()),
        other => Err(format!(
            "the timestamp must be a number of milliseconds since the epoch, not {}",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl ChangeConfig {
    fn compile(&self) -> Result<Vec<Action>, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if self.rules.is_empty() {
            issues.push(ConfigIssue::new(
                "rules",
                "give at least one rule: `- { set: payload.unit, value: C }`",
            ));
        }
        let mut actions = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            match rule.compile(&format!("rules[{i}]")) {
                Ok(action) => actions.push(action),
                Err(mut more) => issues.append(&mut more),
            }
        }
        if issues.is_empty() {
            Ok(actions)
        } else {
            Err(issues)
        }
    }
}

impl Config for ChangeConfig {
    const TYPE: &'static str = "change";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Sets, copies, deletes and moves message fields (topic, payload fields, headers)";

    fn validate(&self) -> Vec<ConfigIssue> {
        self.compile().err().unwrap_or_default()
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let actions: Arc<[Action]> = self.compile()?.into();
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run_transform(
                Change {
                    actions: actions.clone(),
                },
                cx,
            ))
        }))
    }
}

struct Change {
    actions: Arc<[Action]>,
}

impl Transform for Change {
    fn process(&mut self, mut msg: Msg, out: &mut Emit) {
        let staged = {
            let mut edit = Edit::new(&msg);
            let mut failed = None;
            for (i, action) in self.actions.iter().enumerate() {
                if let Err(e) = edit.apply(action) {
                    failed = Some(format!("rules[{i}]: {e}"));
                    break;
                }
            }
            match failed {
                Some(reason) => Err(reason),
                None => Ok(edit.into_staged()),
            }
        };
        match staged {
            Ok(staged) => {
                staged.apply_to(&mut msg);
                out.out(msg);
            }
            Err(reason) => out.error(msg, reason),
        }
    }
}

/// The fields the rules changed, staged so that a failing rule leaves the message as it
/// arrived.
struct Edit<'m> {
    view: MsgView<'m>,
    topic: Option<Arc<str>>,
    headers: Option<Headers>,
    timestamp: Option<i64>,
    /// The payload once a rule changed it; written back as JSON (a string as its text).
    payload: Option<Value>,
    /// A rule deleted the whole payload (and none set it again): written back empty.
    payload_deleted: bool,
}

/// What an [`Edit`] changed, without the borrow of the message.
struct Staged {
    topic: Option<Arc<str>>,
    headers: Option<Headers>,
    timestamp: Option<i64>,
    payload: Option<Value>,
    payload_deleted: bool,
}

impl<'m> Edit<'m> {
    fn new(msg: &'m Msg) -> Self {
        Edit {
            view: MsgView::new(msg),
            topic: None,
            headers: None,
            timestamp: None,
            payload: None,
            payload_deleted: false,
        }
    }

    fn into_staged(self) -> Staged {
        Staged {
            topic: self.topic,
            headers: self.headers,
            timestamp: self.timestamp,
            payload: self.payload,
            payload_deleted: self.payload_deleted,
        }
    }

    fn read(&self, path: &FieldPath) -> Option<Value> {
        match path {
            FieldPath::Topic if self.topic.is_some() => {
                self.topic.as_deref().map(|t| Value::String(t.into()))
            }
            FieldPath::Header(name) if self.headers.is_some() => self
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| Value::String(v.clone())),
            FieldPath::Timestamp if self.timestamp.is_some() => self.timestamp.map(Value::from),
            FieldPath::Payload(_) if self.payload_deleted => None,
            FieldPath::Payload(steps) => match &self.payload {
                Some(root) => fields::lookup(root, steps).cloned(),
                None => self.view.get(path).map(|v| v.into_owned()),
            },
            other => self.view.get(other).map(|v| v.into_owned()),
        }
    }

    /// The payload as a JSON value to change, parsing it on first use. An empty or
    /// deleted payload is null; a payload that is not JSON can only be replaced whole.
    fn payload_mut(&mut self, replacing_whole: bool) -> Result<&mut Value, String> {
        if self.payload.is_none() && !self.payload_deleted {
            let root = match self.view.json() {
                Some(json) => json.clone(),
                None if replacing_whole || self.view.msg.payload.is_empty() => Value::Null,
                None => {
                    return Err(
                        "the payload is not JSON, so it has no fields to change; set `payload` as a whole first"
                            .into(),
                    );
                }
            };
            self.payload = Some(root);
        }
        self.payload_deleted = false;
        Ok(self.payload.get_or_insert(Value::Null))
    }

    fn write(&mut self, path: &FieldPath, value: Value) -> Result<(), String> {
        match path {
            FieldPath::Topic => self.topic = Some(topic_text(&value)?),
            FieldPath::Timestamp => self.timestamp = Some(timestamp_ms(&value)?),
            FieldPath::Header(name) => {
                self.headers_mut()
                    .insert(name.clone(), to_text(&value).into_owned());
            }
            FieldPath::Id => settable(path)?,
            FieldPath::Payload(steps) => {
                let root = self.payload_mut(steps.is_empty())?;
                // Setting a field of nothing (an empty payload, null) starts an object,
                // as Node-RED does when it sets `msg.payload.x` on an undefined payload.
                if root.is_null() && !steps.is_empty() {
                    *root = Value::Object(Default::default());
                }
                fields::set(root, steps, value)?;
            }
        }
        Ok(())
    }

    fn headers_mut(&mut self) -> &mut Headers {
        let original = &self.view.msg.headers;
        self.headers.get_or_insert_with(|| (**original).clone())
    }

    /// Removes `path`; whether something was there.
    fn remove(&mut self, path: &FieldPath) -> Result<bool, String> {
        match path {
            FieldPath::Header(name) => {
                if self.read(path).is_none() {
                    return Ok(false);
                }
                Ok(self.headers_mut().remove(name).is_some())
            }
            FieldPath::Payload(steps) if steps.is_empty() => {
                self.payload = None;
                self.payload_deleted = true;
                Ok(true)
            }
            FieldPath::Payload(steps) => {
                // Only touch (and later re-serialize) the payload when the field exists.
                if self.read(path).is_none() {
                    return Ok(false);
                }
                let root = self.payload_mut(false)?;
                Ok(fields::remove(root, steps).is_some())
            }
            other => deletable(other).map(|()| false),
        }
    }

    fn apply(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Set(target, Source::Literal(value)) => self.write(target, value.clone()),
            Action::Set(target, Source::Field(from)) => {
                let value = self
                    .read(from)
                    .ok_or_else(|| format!("`{from}` is missing, nothing to copy"))?;
                self.write(target, value)
            }
            Action::Delete(target) => self.remove(target).map(drop),
            Action::Move(from, to) => {
                if from == to {
                    return Ok(());
                }
                // Like Node-RED, moving a missing field does nothing.
                let Some(value) = self.read(from) else {
                    return Ok(());
                };
                self.remove(from)?;
                self.write(to, value)
            }
        }
    }
}

impl Staged {
    fn apply_to(self, msg: &mut Msg) {
        if let Some(topic) = self.topic {
            msg.topic = topic;
        }
        if let Some(headers) = self.headers {
            msg.headers = Arc::new(headers);
        }
        if let Some(timestamp) = self.timestamp {
            msg.timestamp_ms = timestamp;
        }
        match self.payload {
            None if self.payload_deleted => msg.payload = Bytes::new(),
            None => {}
            // A string payload goes out as its text, as Node-RED's mqtt out publishes a
            // string `msg.payload`; anything else as compact JSON.
            Some(Value::String(text)) => msg.payload = Bytes::from(text),
            Some(value) => msg.set_json_payload(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome};

    async fn run(rules: &str, msg: Msg) -> (Vec<Msg>, Vec<Msg>) {
        let mut h = NodeHarness::start("change", rules, Clock::virtual_at(0)).unwrap();
        h.send(msg).await;
        h.settle().await;
        let result = (h.drain("out"), h.drain("error"));
        h.shutdown().await;
        result
    }

    async fn changed(rules: &str, payload: &str) -> Msg {
        let (mut out, err) = run(rules, Msg::new("in/topic", payload.to_string(), 7)).await;
        assert!(err.is_empty(), "{err:?}");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    async fn refused(rules: &str, payload: &str) -> Msg {
        let (out, mut err) = run(rules, Msg::new("in/topic", payload.to_string(), 7)).await;
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(err.len(), 1);
        err.remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn rules_apply_in_order() {
        let msg = changed(
            "rules:
  - { set: payload.unit, value: C }
  - { set: topic, from: payload.room }
  - { move: payload.t, to: payload.temperature }
  - { delete: payload.raw }
  - { set: headers.source, from: payload.temperature }
  - { set: timestamp, from: payload.ts }
  - { set: payload.copy, from: topic }",
            r#"{"room": "kitchen", "t": 21.5, "raw": "00ff", "ts": "1700000000000"}"#,
        )
        .await;
        assert_eq!(&*msg.topic, "kitchen");
        assert_eq!(msg.timestamp_ms, 1_700_000_000_000);
        assert_eq!(msg.headers.get("source").map(String::as_str), Some("21.5"));
        assert_eq!(
            msg.payload_str(),
            Some(
                r#"{"room":"kitchen","ts":"1700000000000","unit":"C","temperature":21.5,"copy":"kitchen"}"#
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn payload_untouched_keeps_its_bytes() {
        let original = r#"{ "t" : 21.50 }"#;
        let msg = changed("rules: [{ set: topic, value: out }]", original).await;
        assert_eq!(msg.payload_str(), Some(original));
        assert_eq!(&*msg.topic, "out");
        // Deleting a field that is not there does not rewrite the payload either.
        let msg = changed("rules: [{ delete: payload.nope }]", original).await;
        assert_eq!(msg.payload_str(), Some(original));
        let msg = changed("rules: [{ delete: payload.nope }]", "plain text").await;
        assert_eq!(msg.payload_str(), Some("plain text"));
    }

    #[tokio::test(start_paused = true)]
    async fn whole_payload_and_non_json() {
        // A non-JSON payload can be replaced, read, and wrapped, but has no fields.
        let msg = changed("rules: [{ set: payload, value: hello }]", "bin").await;
        assert_eq!(msg.payload_str(), Some("hello"));
        let msg = changed("rules: [{ set: payload, value: {on: true} }]", "x").await;
        assert_eq!(msg.payload_str(), Some(r#"{"on":true}"#));
        let msg = changed("rules: [{ move: payload, to: payload.value }]", "21.5").await;
        assert_eq!(msg.payload_str(), Some(r#"{"value":21.5}"#));
        let msg = changed("rules: [{ move: payload, to: payload.text }]", "ON").await;
        assert_eq!(msg.payload_str(), Some(r#"{"text":"ON"}"#));
        let msg = changed("rules: [{ set: headers.raw, from: payload }]", "ON").await;
        assert_eq!(msg.headers.get("raw").map(String::as_str), Some("ON"));
        let msg = changed("rules: [{ delete: payload }]", r#"{"a":1}"#).await;
        assert!(msg.payload.is_empty());
        // An empty payload starts as an object when a field is set.
        let msg = changed("rules: [{ set: payload.a.b, value: 1 }]", "").await;
        assert_eq!(msg.payload_str(), Some(r#"{"a":{"b":1}}"#));
        let msg = changed("rules: [{ set: payload.v, value: null }]", "{}").await;
        assert_eq!(msg.payload_str(), Some(r#"{"v":null}"#));

        let err = refused("rules: [{ set: payload.a, value: 1 }]", "not json").await;
        assert_eq!(
            err.headers.get("error").map(String::as_str),
            Some(
                "rules[0]: the payload is not JSON, so it has no fields to change; set `payload` as a whole first"
            )
        );
        assert_eq!(err.payload_str(), Some("not json"));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_leave_the_message_as_it_came() {
        let err = refused(
            "rules:\n  - { set: topic, value: changed }\n  - { set: topic, from: payload.obj }",
            r#"{"obj": {"a": 1}}"#,
        )
        .await;
        assert_eq!(
            &*err.topic, "in/topic",
            "first rule's change is not applied"
        );
        assert_eq!(
            err.headers.get("error").map(String::as_str),
            Some("rules[1]: the topic must be a string, not an object")
        );
        let err = refused("rules: [{ set: payload.x, from: payload.nope }]", "{}").await;
        assert_eq!(
            err.headers.get("error").map(String::as_str),
            Some("rules[0]: `payload.nope` is missing, nothing to copy")
        );
        let err = refused("rules: [{ set: payload.a.b, value: 1 }]", r#"{"a": 5}"#).await;
        assert_eq!(
            err.headers.get("error").map(String::as_str),
            Some("rules[0]: cannot set field `b` on a number")
        );
        let err = refused(
            "rules: [{ set: timestamp, from: payload.t }]",
            r#"{"t": "soon"}"#,
        )
        .await;
        assert!(err.headers["error"].contains("milliseconds since the epoch"));
    }

    #[tokio::test(start_paused = true)]
    async fn numbers_become_topics_and_moves_of_missing_fields_do_nothing() {
        let msg = changed(
            "rules:\n  - { set: topic, from: payload.id }\n  - { move: payload.nope, to: payload.x }",
            r#"{"id": 42}"#,
        )
        .await;
        assert_eq!(&*msg.topic, "42");
        assert_eq!(msg.payload_str(), Some(r#"{"id": 42}"#));
        let msg = changed("rules: [{ move: headers.a, to: payload.a }]", "{}").await;
        assert_eq!(msg.payload_str(), Some("{}"));
    }

    #[tokio::test(start_paused = true)]
    async fn headers_move_and_delete() {
        let mut msg = Msg::new("t", "{}", 0);
        msg.headers_mut().insert("a".into(), "1".into());
        msg.headers_mut().insert("b".into(), "2".into());
        let (mut out, _) = run(
            "rules:\n  - { move: headers.a, to: payload.a }\n  - { delete: headers.b }",
            msg,
        )
        .await;
        let msg = out.remove(0);
        assert!(msg.headers.is_empty());
        assert_eq!(msg.payload_str(), Some(r#"{"a":"1"}"#));
    }

    #[tokio::test(start_paused = true)]
    async fn changed_and_refused_messages_keep_their_ack() {
        let tracked = |payload: &str| {
            let (tx, rx) = mpsc::channel();
            let msg = Msg::tracked("t", payload.to_string(), 0, move |o| tx.send(o).unwrap());
            (msg, rx)
        };
        let mut h = NodeHarness::start(
            "change",
            "rules: [{ set: payload.a, value: 1 }]",
            Clock::virtual_at(0),
        )
        .unwrap();
        let (good, good_rx) = tracked("{}");
        let (bad, bad_rx) = tracked("not json");
        h.send(good).await;
        h.send(bad).await;
        h.settle().await;
        let out = h.drain("out");
        let err = h.drain("error");
        assert_eq!((out.len(), err.len()), (1, 1));
        assert!(good_rx.try_recv().is_err() && bad_rx.try_recv().is_err());
        out.into_iter().for_each(Msg::done);
        err.into_iter().for_each(|m| m.fail("dead letter"));
        assert_eq!(good_rx.try_recv().unwrap(), Outcome::Done);
        assert!(matches!(bad_rx.try_recv().unwrap(), Outcome::Failed(_)));
        h.shutdown().await;
    }

    #[test]
    fn options_are_checked() {
        let err = |rules: &str| {
            NodeHarness::start("change", rules, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(
            err("rules: [{ set: payload.a }]"),
            "rules[0].set: `set` needs `value:` or `from:`"
        );
        assert_eq!(
            err("rules: [{ set: payload.a, value: 1, from: topic }]"),
            "rules[0].from: give `value` or `from`, not both"
        );
        assert_eq!(
            err("rules: [{ set: topic, value: [1] }]"),
            "rules[0].value: the topic must be a string, not a list"
        );
        assert_eq!(
            err("rules: [{ delete: topic }]"),
            "rules[0].delete: `topic` cannot be removed; only `payload`, payload fields and headers can"
        );
        assert_eq!(
            err("rules: [{ move: payload.a }, { set: id, value: 1 }]"),
            "rules[0].move: `move` needs `to:`; rules[1].set: `id` cannot be changed: sinks deduplicate and upsert on it"
        );
        assert_eq!(
            err("rules: [{ set: payload.a, delete: payload.b }]"),
            "rules[0]: give one of `set`, `delete` or `move` per rule; split it into several rules"
        );
        assert_eq!(
            err("rules: [{ to: payload.a }]"),
            "rules[0]: a rule is `set:` (with `value:` or `from:`), `delete:` or `move:` (with `to:`)"
        );
        assert_eq!(
            err("rules: [{ delete: payload.a, to: payload.b }]"),
            "rules[0].to: `to` does not go with `delete`; remove it"
        );
        assert!(err("rules: [{ set: payloads, value: 1 }]").contains("invalid field path"));
    }

    #[test]
    fn yaml_errors_point_at_the_rule() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      tidy:
        type: change
        inputs: [tick]
        rules:
          - { set: payload.unit, value: W }
          - { set: topic, value: { a: 1 } }
          - { move: payload.a, too: payload.b }
";
        let err = crate::flow::load_sources(
            vec![(std::path::PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            [
                "f.yaml:12:32: f/tidy: unknown option `too` for type `change`; expected one of `set`, `value`, `from`, `delete`, `move`, `to`"
            ]
        );
        let fixed = yaml.replace("too:", "to:");
        let err = crate::flow::load_sources(
            vec![(std::path::PathBuf::from("f.yaml"), fixed)],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            ["f.yaml:11:27: f/tidy: `rules[1].value`: the topic must be a string, not an object"]
        );
    }
}
