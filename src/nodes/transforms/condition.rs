//! The condition shared by `filter` and `switch`: a test on one message field
//! (`{ field, op, value }`), an MQTT topic filter (`{ topic: "sensors/+/temp" }`), or
//! both; plus the MQTT wildcard matcher that the topic form uses.
//!
//! Conditions are compiled once (regexes, topic filters, numeric bounds) when the node
//! is validated and built, then evaluated against a [`MsgView`], which parses the
//! payload at most once per message however many conditions read it.

use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::engine::fields::{FieldPath, MsgView, to_number, to_text};
use crate::nodes::registry::ConfigIssue;

/// One test on a message. Give `op` (with `value` where the op needs one) to test a
/// field, `topic` to match the topic against an MQTT filter, or both (both must hold).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The field tested: `payload` (default), `payload.a.b`, `payload.list[0]`, `topic`,
    /// `headers.NAME`, `id` or `timestamp`.
    pub field: Option<FieldPath>,
    /// The test applied to the field.
    pub op: Option<Op>,
    /// What the field is compared with: a number or string for `eq`, `ne`, `gt`, `ge`,
    /// `lt`, `le`; `[low, high]` for `between`; a string for `contains`; a regex for
    /// `matches`; a list for `in`; nothing for `exists`, `missing`, `is_true`, `is_false`.
    pub value: Option<Value>,
    /// An MQTT topic filter the message's topic must match: `+` is one level, `#` the
    /// rest (`sensors/+/temp`, `home/#`).
    pub topic: Option<String>,
}

/// The test a condition applies to its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal: numerically when `value` is a number (numeric strings count), as text when
    /// it is a string, else as JSON.
    Eq,
    /// Not equal; also true when the field is missing.
    Ne,
    /// Greater than a number (numerically) or a string (alphabetically).
    Gt,
    /// Greater than or equal.
    Ge,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Between `[low, high]`, both included.
    Between,
    /// A string containing `value`, or a list with an element equal to `value`.
    Contains,
    /// A string (or number) matching the regular expression `value`.
    Matches,
    /// The field is present and not null.
    Exists,
    /// The field is absent or null.
    Missing,
    /// Equal to one of the list `value`.
    In,
    /// `true` (or the string `"true"`, as headers carry it).
    IsTrue,
    /// `false` (or the string `"false"`).
    IsFalse,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Lt => "lt",
            Op::Le => "le",
            Op::Between => "between",
            Op::Contains => "contains",
            Op::Matches => "matches",
            Op::Exists => "exists",
            Op::Missing => "missing",
            Op::In => "in",
            Op::IsTrue => "is_true",
            Op::IsFalse => "is_false",
        }
    }
}

/// A compiled [`Condition`].
#[derive(Clone, Debug)]
pub struct Test {
    field: FieldPath,
    check: Option<Check>,
    topic: Option<String>,
}

#[derive(Clone, Debug)]
enum Check {
    Eq(Value),
    Ne(Value),
    Order(Op, Bound),
    Between(f64, f64),
    Contains(Value),
    Matches(Regex),
    Exists,
    Missing,
    In(Vec<Value>),
    IsTrue,
    IsFalse,
}

#[derive(Clone, Debug)]
enum Bound {
    Number(f64),
    Text(String),
}

/// Joins an issue path prefix and a key: `("", "when")` is `when`,
/// `("rules[1]", "when")` is `rules[1].when`.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Regexes come from flow authors, but a bound keeps a careless one from eating a Pi's
/// memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Condition {
    /// Checks and compiles the condition; issues are located under `at` (`when[1]`).
    pub fn compile(&self, at: &str) -> Result<Test, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if let Some(filter) = &self.topic
            && let Err(e) = check_topic_filter(filter)
        {
            issues.push(ConfigIssue::new(join(at, "topic"), e));
        }
        let check = match self.op {
            Some(op) => match compile_check(op, self.value.as_ref()) {
                Ok(check) => Some(check),
                Err((key, message)) => {
                    issues.push(ConfigIssue::new(join(at, key), message));
                    None
                }
            },
            None => {
                if self.topic.is_none() {
                    issues.push(ConfigIssue::new(
                        at,
                        "a condition needs `op` (with `field` and `value`) or `topic`",
                    ));
                } else if self.field.is_some() || self.value.is_some() {
                    let key = if self.field.is_some() {
                        "field"
                    } else {
                        "value"
                    };
                    issues.push(ConfigIssue::new(
                        join(at, key),
                        "`field` and `value` need an `op` such as `eq` or `gt`",
                    ));
                }
                None
            }
        };
        if issues.is_empty() {
            Ok(Test {
                field: self.field.clone().unwrap_or_else(FieldPath::payload),
                check,
                topic: self.topic.clone(),
            })
        } else {
            Err(issues)
        }
    }
}

/// Compiles `op` with its `value`; an error names the key at fault and what to do.
fn compile_check(op: Op, value: Option<&Value>) -> Result<Check, (&'static str, String)> {
    let name = op.name();
    let needs = |what: &str| ("value", format!("`{name}` needs a `value`: {what}"));
    match op {
        Op::Exists | Op::Missing | Op::IsTrue | Op::IsFalse => {
            if value.is_some() {
                return Err(("value", format!("`{name}` takes no `value`; remove it")));
            }
            Ok(match op {
                Op::Exists => Check::Exists,
                Op::Missing => Check::Missing,
                Op::IsTrue => Check::IsTrue,
                _ => Check::IsFalse,
            })
        }
        Op::Eq | Op::Ne => {
            let value = value
                .cloned()
                .ok_or_else(|| needs("to test for null use `missing` or `exists`"))?;
            Ok(if op == Op::Eq {
                Check::Eq(value)
            } else {
                Check::Ne(value)
            })
        }
        Op::Gt | Op::Ge | Op::Lt | Op::Le => match value {
            Some(Value::Number(n)) => Ok(Check::Order(
                op,
                Bound::Number(n.as_f64().unwrap_or(f64::NAN)),
            )),
            Some(Value::String(s)) => Ok(Check::Order(op, Bound::Text(s.clone()))),
            Some(_) => Err((
                "value",
                format!("`{name}` compares with a number or a string"),
            )),
            None => Err(needs("a number or a string")),
        },
        Op::Between => {
            let bounds = value
                .and_then(Value::as_array)
                .filter(|items| items.len() == 2)
                .and_then(|items| Some((items[0].as_f64()?, items[1].as_f64()?)));
            match bounds {
                // Node-RED accepts the bounds in either order; so do we.
                Some((a, b)) => Ok(Check::Between(a.min(b), a.max(b))),
                None => Err((
                    "value",
                    "`between` needs `value: [low, high]`, two numbers".to_string(),
                )),
            }
        }
        Op::Contains => match value {
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                Ok(Check::Contains(v.clone()))
            }
            Some(_) => Err(("value", "`contains` looks for a string or a number".into())),
            None => Err(needs("the text or list element to look for")),
        },
        Op::Matches => match value {
            Some(Value::String(pattern)) => RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(Check::Matches)
                .map_err(|e| ("value", format!("invalid regex: {}", regex_message(&e)))),
            Some(_) => Err(("value", "`matches` needs a regex as a string".into())),
            None => Err(needs("a regular expression")),
        },
        Op::In => match value {
            Some(Value::Array(items)) if !items.is_empty() => Ok(Check::In(items.clone())),
            _ => Err((
                "value",
                "`in` needs `value: [a, b, ...]`, a non-empty list".into(),
            )),
        },
    }
}

/// The regex crate's messages span several lines with a caret drawing; a flow
/// diagnostic is one line, so keep the last line (the actual complaint).
fn regex_message(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(text)
            .trim()
            .trim_start_matches("error: ")
            .to_string(),
        other => other.to_string(),
    }
}

impl Test {
    /// Whether the message seen through `view` passes this test.
    pub fn matches(&self, view: &MsgView<'_>) -> bool {
        if let Some(filter) = &self.topic
            && !topic_matches(filter, &view.msg.topic)
        {
            return false;
        }
        let Some(check) = &self.check else {
            return true;
        };
        let actual = view.get(&self.field);
        let actual = actual.as_deref().filter(|v| !v.is_null());
        match (check, actual) {
            (Check::Exists, found) => found.is_some(),
            (Check::Missing, found) => found.is_none(),
            (Check::Ne(expected), found) => !found.is_some_and(|a| loosely_equal(a, expected)),
            (_, None) => false,
            (Check::Eq(expected), Some(a)) => loosely_equal(a, expected),
            (Check::Order(op, bound), Some(a)) => {
                let ordering = match bound {
                    Bound::Number(b) => to_number(a).and_then(|a| a.partial_cmp(b)),
                    Bound::Text(b) => a.as_str().map(|a| a.cmp(b.as_str())),
                };
                ordering.is_some_and(|o| match op {
                    Op::Gt => o == Ordering::Greater,
                    Op::Ge => o != Ordering::Less,
                    Op::Lt => o == Ordering::Less,
                    _ => o != Ordering::Greater,
                })
            }
            (Check::Between(low, high), Some(a)) => {
                to_number(a).is_some_and(|a| *low <= a && a <= *high)
            }
            (Check::Contains(needle), Some(Value::String(text))) => {
                text.contains(to_text(needle).as_ref())
            }
            (Check::Contains(needle), Some(Value::Array(items))) => {
                items.iter().any(|item| loosely_equal(item, needle))
            }
            (Check::Contains(_), Some(_)) => false,
            (Check::Matches(regex), Some(a @ (Value::String(_) | Value::Number(_)))) => {
                regex.is_match(&to_text(a))
            }
            (Check::Matches(_), Some(_)) => false,
            (Check::In(options), Some(a)) => options.iter().any(|o| loosely_equal(a, o)),
            (Check::IsTrue, Some(a)) => is_bool(a, true),
            (Check::IsFalse, Some(a)) => is_bool(a, false),
        }
    }
}

/// Equality as a Node-RED switch rule sees it: a number matches numbers and numeric
/// strings (`"21.5"` equals `21.5`), a string matches strings and the text of numbers
/// and booleans, anything else compares as JSON.
fn loosely_equal(actual: &Value, expected: &Value) -> bool {
    match expected {
        Value::Number(n) => to_number(actual).is_some_and(|a| Some(a) == n.as_f64()),
        Value::String(s) => match actual {
            Value::String(a) => a == s,
            Value::Number(_) | Value::Bool(_) => to_text(actual) == s.as_str(),
            _ => false,
        },
        other => actual == other,
    }
}

fn is_bool(actual: &Value, want: bool) -> bool {
    match actual {
        Value::Bool(b) => *b == want,
        Value::String(s) => s.eq_ignore_ascii_case(if want { "true" } else { "false" }),
        _ => false,
    }
}

/// A set of conditions: all of `when` must hold and, when `any` is given, at least one
/// of `any`.
#[derive(Clone, Debug)]
pub struct Conditions {
    all: Vec<Test>,
    any: Vec<Test>,
}

impl Conditions {
    /// Compiles `when:` and `any:` as given under `at` (empty for a node's top level);
    /// at least one of them must be given and not empty.
    pub fn compile(
        when: Option<&[Condition]>,
        any: Option<&[Condition]>,
        at: &str,
    ) -> Result<Conditions, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if when.is_none() && any.is_none() {
            issues.push(ConfigIssue::new(
                at,
                "give `when:` (conditions that must all hold) or `any:` (one must hold)",
            ));
        }
        let mut compile_list = |list: Option<&[Condition]>, key: &str| -> Vec<Test> {
            let Some(list) = list else {
                return Vec::new();
            };
            let path = join(at, key);
            if list.is_empty() {
                issues.push(ConfigIssue::new(
                    &path,
                    format!("`{key}` is empty; give at least one condition"),
                ));
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, c)| match c.compile(&format!("{path}[{i}]")) {
                    Ok(test) => Some(test),
                    Err(mut more) => {
                        issues.append(&mut more);
                        None
                    }
                })
                .collect()
        };
        let all = compile_list(when, "when");
        let any = compile_list(any, "any");
        if issues.is_empty() {
            Ok(Conditions { all, any })
        } else {
            Err(issues)
        }
    }

    /// Whether the message seen through `view` satisfies the set.
    pub fn matches(&self, view: &MsgView<'_>) -> bool {
        self.all.iter().all(|t| t.matches(view))
            && (self.any.is_empty() || self.any.iter().any(|t| t.matches(view)))
    }
}

/// Checks an MQTT topic filter: not empty, `+` and `#` alone in their level, `#` last.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    if filter.len() > 65_535 || filter.contains('\0') {
        return Err("a topic filter is at most 65535 bytes, without NUL characters".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "invalid topic filter `{filter}`: `#` must be a whole level and the last one (`a/#`)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "invalid topic filter `{filter}`: `+` must be a whole level (`a/+/b`)"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` matches the MQTT topic filter `filter` (checked beforehand with
/// [`check_topic_filter`]): `+` matches exactly one level (possibly empty), `#` matches
/// the rest including the parent level (`a/#` matches `a`), and, as MQTT 3.1.1 §4.7.2
/// says, a filter starting with a wildcard does not match topics starting with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Msg;
    use serde_json::json;

    fn condition(yaml: serde_json::Value) -> Result<Test, Vec<ConfigIssue>> {
        let c: Condition = serde_json::from_value(yaml).expect("condition parses");
        c.compile("when[0]")
    }

    fn check(cond: serde_json::Value, payload: &str) -> bool {
        let test = condition(cond).expect("condition compiles");
        let msg = Msg::new("sensors/kitchen/temp", payload.to_string(), 0);
        test.matches(&MsgView::new(&msg))
    }

    #[test]
    fn topic_wildcards() {
        let cases = [
            ("sensors/+/temp", "sensors/kitchen/temp", true),
            ("sensors/+/temp", "sensors/kitchen/hum", false),
            ("sensors/+/temp", "sensors/a/b/temp", false),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/a/b", true),
            ("sensors/#", "sensorsx/a", false),
            ("#", "anything/at/all", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/+", "a/", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            // MQTT: a leading wildcard never matches a `$` topic; an explicit `$` does.
            ("#", "$SYS/broker/load", false),
            ("+/broker/load", "$SYS/broker/load", false),
            ("$SYS/#", "$SYS/broker/load", true),
            ("$SYS/+/load", "$SYS/broker/load", true),
        ];
        for (filter, topic, expected) in cases {
            assert!(check_topic_filter(filter).is_ok(), "{filter}");
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "+a/b", "a/##"] {
            assert!(check_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numeric_ops_accept_numeric_strings() {
        let gt = json!({"field": "payload.t", "op": "gt", "value": 30});
        assert!(check(gt.clone(), r#"{"t": 31}"#));
        assert!(check(gt.clone(), r#"{"t": "30.5"}"#));
        assert!(!check(gt.clone(), r#"{"t": 30}"#));
        assert!(!check(gt.clone(), r#"{"t": "hot"}"#));
        assert!(!check(gt.clone(), r#"{"other": 99}"#), "missing field");
        assert!(!check(gt, "not json"));
        // A bare numeric payload is JSON; a numeric text in a non-JSON payload is not.
        let le = json!({"op": "le", "value": 21.5});
        assert!(check(le.clone(), "21.5"));
        assert!(check(le.clone(), " 20 "));
        assert!(!check(le, "22"));
        let ge = json!({"field": "payload.t", "op": "ge", "value": 30});
        assert!(check(ge, r#"{"t": 30}"#));
        let lt = json!({"field": "payload.t", "op": "lt", "value": 0});
        assert!(check(lt, r#"{"t": "-3"}"#));
        let between = json!({"field": "payload.t", "op": "between", "value": [25, 18]});
        assert!(check(between.clone(), r#"{"t": 18}"#));
        assert!(check(between.clone(), r#"{"t": "25"}"#));
        assert!(!check(between, r#"{"t": 25.1}"#));
    }

    #[test]
    fn string_ordering_is_alphabetical() {
        let after = json!({"field": "payload.at", "op": "ge", "value": "08:30"});
        assert!(check(after.clone(), r#"{"at": "09:00"}"#));
        assert!(!check(after.clone(), r#"{"at": "08:00"}"#));
        assert!(!check(after, r#"{"at": 900}"#), "a number is not text");
    }

    #[test]
    fn equality_is_loose_like_node_red() {
        let eq = |v: serde_json::Value, payload: &str| {
            check(
                json!({"field": "payload.v", "op": "eq", "value": v}),
                payload,
            )
        };
        assert!(eq(json!(1), r#"{"v": 1.0}"#));
        assert!(eq(json!(1), r#"{"v": "1"}"#));
        assert!(eq(json!("on"), r#"{"v": "on"}"#));
        assert!(eq(json!("5"), r#"{"v": 5}"#));
        assert!(eq(json!(true), r#"{"v": true}"#));
        assert!(!eq(json!(true), r#"{"v": "yes"}"#));
        assert!(eq(json!({"a": 1}), r#"{"v": {"a": 1}}"#));
        assert!(!eq(json!("on"), r#"{"x": "on"}"#));
        let ne = json!({"field": "payload.mode", "op": "ne", "value": "auto"});
        assert!(check(ne.clone(), r#"{"mode": "manual"}"#));
        assert!(!check(ne.clone(), r#"{"mode": "auto"}"#));
        assert!(
            check(ne, r#"{}"#),
            "ne holds for a missing field, as in Node-RED"
        );
        // The topic and a non-JSON payload read as text.
        assert!(check(
            json!({"field": "topic", "op": "eq", "value": "sensors/kitchen/temp"}),
            "x"
        ));
        assert!(check(json!({"op": "eq", "value": "ON"}), "ON"));
    }

    #[test]
    fn contains_matches_in_and_presence() {
        let contains = json!({"field": "payload.msg", "op": "contains", "value": "err"});
        assert!(check(contains.clone(), r#"{"msg": "an error"}"#));
        assert!(!check(contains, r#"{"msg": ["an error"]}"#));
        let in_list = json!({"field": "payload.tags", "op": "contains", "value": 3});
        assert!(check(in_list.clone(), r#"{"tags": [1, "3"]}"#));
        assert!(!check(in_list, r#"{"tags": [1, 2]}"#));
        let re = json!({"field": "payload.id", "op": "matches", "value": "^dev-[0-9]+$"});
        assert!(check(re.clone(), r#"{"id": "dev-42"}"#));
        assert!(!check(re.clone(), r#"{"id": "dev-x"}"#));
        assert!(!check(re, r#"{"id": {"x": 1}}"#));
        let num_re = json!({"field": "payload.n", "op": "matches", "value": "^4"});
        assert!(check(num_re, r#"{"n": 42}"#));
        let one_of = json!({"field": "payload.s", "op": "in", "value": ["on", 1]});
        assert!(check(one_of.clone(), r#"{"s": "on"}"#));
        assert!(check(one_of.clone(), r#"{"s": "1"}"#));
        assert!(!check(one_of, r#"{"s": "off"}"#));
        let exists = json!({"field": "payload.a", "op": "exists"});
        assert!(check(exists.clone(), r#"{"a": 0}"#));
        assert!(
            !check(exists.clone(), r#"{"a": null}"#),
            "null counts as missing"
        );
        assert!(!check(exists, "plain text"));
        let missing = json!({"field": "payload.a", "op": "missing"});
        assert!(check(missing.clone(), r#"{"b": 1}"#));
        assert!(check(missing.clone(), r#"{"a": null}"#));
        assert!(!check(missing, r#"{"a": false}"#));
    }

    #[test]
    fn booleans() {
        let is_true = json!({"field": "payload.on", "op": "is_true"});
        assert!(check(is_true.clone(), r#"{"on": true}"#));
        assert!(check(is_true.clone(), r#"{"on": "TRUE"}"#));
        assert!(!check(is_true.clone(), r#"{"on": 1}"#));
        assert!(!check(is_true, r#"{"on": false}"#));
        let is_false = json!({"field": "payload.on", "op": "is_false"});
        assert!(check(is_false.clone(), r#"{"on": false}"#));
        assert!(!check(is_false, r#"{}"#));
    }

    #[test]
    fn topic_shorthand_combines_with_a_field_test() {
        assert!(check(json!({"topic": "sensors/+/temp"}), "1"));
        assert!(!check(json!({"topic": "sensors/+/hum"}), "1"));
        let both = json!({"topic": "sensors/#", "op": "gt", "value": 5});
        assert!(check(both.clone(), "6"));
        assert!(!check(both, "4"));
    }

    #[test]
    fn invalid_combinations_are_located() {
        let issue = |cond| condition(cond).unwrap_err();
        let bad_re = issue(json!({"op": "matches", "value": "("}));
        assert_eq!(bad_re.len(), 1);
        assert_eq!(bad_re[0].path, "when[0].value");
        assert!(
            bad_re[0].message.starts_with("invalid regex: "),
            "{}",
            bad_re[0].message
        );
        assert!(!bad_re[0].message.contains('\n'));
        let between = issue(json!({"op": "between", "value": 3}));
        assert_eq!(between[0].path, "when[0].value");
        assert_eq!(
            between[0].message,
            "`between` needs `value: [low, high]`, two numbers"
        );
        assert_eq!(
            issue(json!({"op": "exists", "value": 1}))[0].message,
            "`exists` takes no `value`; remove it"
        );
        assert_eq!(
            issue(json!({"op": "eq"}))[0].message,
            "`eq` needs a `value`: to test for null use `missing` or `exists`"
        );
        assert_eq!(
            issue(json!({"op": "gt", "value": [1]}))[0].path,
            "when[0].value"
        );
        assert_eq!(
            issue(json!({"op": "in", "value": []}))[0].path,
            "when[0].value"
        );
        let nothing = issue(json!({"field": "payload.a"}));
        assert_eq!(nothing[0].path, "when[0]");
        let no_op = issue(json!({"topic": "a/#", "value": 1}));
        assert_eq!(no_op[0].path, "when[0].value");
        let both = issue(json!({"topic": "a/#/b", "op": "in", "value": 1}));
        let paths: Vec<&str> = both.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["when[0].topic", "when[0].value"]);
    }

    #[test]
    fn sets_need_conditions() {
        let c: Vec<Condition> = serde_json::from_value(json!([{"op": "exists"}])).unwrap();
        let issues = Conditions::compile(None, None, "rules[0]").unwrap_err();
        assert_eq!(issues[0].path, "rules[0]");
        let issues = Conditions::compile(Some(&[]), None, "").unwrap_err();
        assert_eq!(issues[0].path, "when");
        assert_eq!(
            issues[0].message,
            "`when` is empty; give at least one condition"
        );
        assert!(Conditions::compile(Some(&c), None, "").is_ok());
    }

    #[test]
    fn all_and_any() {
        let when: Vec<Condition> =
            serde_json::from_value(json!([{"field": "payload.a", "op": "exists"}])).unwrap();
        let any: Vec<Condition> = serde_json::from_value(json!([
            {"field": "payload.a", "op": "eq", "value": 1},
            {"field": "payload.b", "op": "eq", "value": 2}
        ]))
        .unwrap();
        let set = Conditions::compile(Some(&when), Some(&any), "").unwrap();
        let test = |p: &str| set.matches(&MsgView::new(&Msg::new("t", p.to_string(), 0)));
        assert!(test(r#"{"a": 1}"#));
        assert!(test(r#"{"a": 5, "b": 2}"#));
        assert!(!test(r#"{"a": 5}"#));
        assert!(!test(r#"{"b": 2}"#));
    }
}
