//! `json`: checks or re-emits a JSON payload, or converts one payload field between a
//! JSON string and the structure it holds (Node-RED's json node).

use std::sync::Arc;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::engine::fields::{self, FieldPath, Step};
use crate::engine::{Emit, Msg, NodeContext, NodeFactory, NodeFuture, Transform, run_transform};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `json` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonConfig {
    /// `parse` (default): check that the payload is JSON, or turn the JSON string in
    /// `field` into the structure it holds. `serialize`: re-emit the payload as compact
    /// (or `pretty`) JSON, or turn the structure in `field` into a JSON string.
    #[serde(default)]
    pub action: JsonAction,
    /// A payload field to convert in place (`payload.data`); `payload` converts the
    /// whole payload to or from a JSON string (double-encoded JSON).
    pub field: Option<FieldPath>,
    /// Indent the serialized JSON (`serialize` only; default false).
    #[serde(default)]
    pub pretty: bool,
}

/// The direction of a `json` node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonAction {
    /// JSON text to structure (default).
    #[default]
    Parse,
    /// Structure to JSON text.
    Serialize,
}

impl Config for JsonConfig {
    const TYPE: &'static str = "json";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Checks or re-emits a JSON payload, or converts a payload field to/from a JSON string";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if let Some(field) = &self.field
            && !matches!(field, FieldPath::Payload(_))
        {
            issues.push(ConfigIssue::new(
                "field",
                format!("`field` must be `payload` or a payload field such as `payload.data`, not `{field}`"),
            ));
        }
        if self.pretty && self.action == JsonAction::Parse {
            issues.push(ConfigIssue::new(
                "pretty",
                "`pretty` applies to `action: serialize`; remove it or set the action",
            ));
        }
        issues
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let issues = self.validate();
        if !issues.is_empty() {
            return Err(issues);
        }
        let steps = match &self.field {
            Some(FieldPath::Payload(steps)) => Some(steps.clone()),
            _ => None,
        };
        let (action, pretty) = (self.action, self.pretty);
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run_transform(
                Json {
                    action,
                    steps: steps.clone(),
                    pretty,
                },
                cx,
            ))
        }))
    }
}

struct Json {
    action: JsonAction,
    /// The payload field to convert; `None` works on the payload bytes themselves.
    steps: Option<Vec<Step>>,
    pretty: bool,
}

impl Json {
    fn encode(&self, value: &Value) -> String {
        if self.pretty {
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        } else {
            value.to_string()
        }
    }

    /// The new payload, `None` to keep the bytes as they are, or why it failed.
    fn convert(&self, payload: &[u8]) -> Result<Option<Bytes>, String> {
        let Some(steps) = &self.steps else {
            return match self.action {
                // Checking needs no tree: skim the bytes. On failure, parse again into a
                // tree for the message: serde_json explains a trailing comma only there.
                JsonAction::Parse => serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                    .map(|_| None)
                    .map_err(|skim| {
                        let e = serde_json::from_slice::<Value>(payload).err();
                        format!("the payload is not JSON: {}", e.map_or(skim, |e| e))
                    }),
                JsonAction::Serialize => serde_json::from_slice::<Value>(payload)
                    .map(|v| Some(Bytes::from(self.encode(&v))))
                    .map_err(|e| format!("the payload is not JSON: {e}")),
            };
        };
        let field = FieldPath::Payload(steps.clone());
        let mut root: Value = serde_json::from_slice(payload)
            .map_err(|e| format!("the payload is not JSON, so it has no `{field}`: {e}"))?;
        let current =
            fields::lookup(&root, steps).ok_or_else(|| format!("`{field}` is missing"))?;
        let replacement = match (self.action, current) {
            (JsonAction::Parse, Value::String(text)) => {
                serde_json::from_str(text).map_err(|e| format!("`{field}` is not JSON: {e}"))?
            }
            (JsonAction::Serialize, value) if !value.is_string() => {
                Value::String(self.encode(value))
            }
            // Already converted (a structure to parse, a string to serialize): passed on
            // unchanged, as Node-RED's json node does.
            _ => return Ok(None),
        };
        fields::set(&mut root, steps, replacement)?;
        Ok(Some(Bytes::from(root.to_string())))
    }
}

impl Transform for Json {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        match self.convert(&msg.payload) {
            Ok(None) => out.out(msg),
            Ok(Some(payload)) => out.out(msg.with_payload(payload)),
            Err(reason) => out.error(msg, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Msg, Outcome};

    /// Runs one payload through a `json` node: `Ok(payload)` from `out` or
    /// `Err(reason)` from `error`.
    async fn run(options: &str, payload: &str) -> Result<String, String> {
        let mut h = NodeHarness::start("json", options, Clock::virtual_at(0)).unwrap();
        h.send(Msg::new("t", payload.to_string(), 0)).await;
        h.settle().await;
        let out = h.drain("out");
        let err = h.drain("error");
        h.shutdown().await;
        match (out.as_slice(), err.as_slice()) {
            ([msg], []) => Ok(msg.payload_str().unwrap().to_string()),
            ([], [msg]) => Err(msg.headers["error"].clone()),
            _ => panic!("expected one message, got {out:?} and {err:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn parse_checks_the_payload() {
        let original = r#"{ "a" : 1 }"#;
        assert_eq!(run("{}", original).await.unwrap(), original, "bytes kept");
        assert_eq!(run("action: parse", "21.5").await.unwrap(), "21.5");
        assert_eq!(
            run("{}", r#"{"a": 1,}"#).await.unwrap_err(),
            "the payload is not JSON: trailing comma at line 1 column 9"
        );
        assert_eq!(
            run("{}", "").await.unwrap_err(),
            "the payload is not JSON: EOF while parsing a value at line 1 column 0"
        );
        assert_eq!(
            run("{}", "ON").await.unwrap_err(),
            "the payload is not JSON: expected value at line 1 column 1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn serialize_re_emits() {
        assert_eq!(
            run("action: serialize", "{ \"a\" : [1, 2] }")
                .await
                .unwrap(),
            r#"{"a":[1,2]}"#
        );
        assert_eq!(
            run("action: serialize\npretty: true", r#"{"a":1}"#)
                .await
                .unwrap(),
            "{\n  \"a\": 1\n}"
        );
        assert!(
            run("action: serialize", "not json")
                .await
                .unwrap_err()
                .starts_with("the payload is not JSON: ")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn field_conversions() {
        let nested = r#"{"id": 1, "data": "{\"t\": 21.5}"}"#;
        assert_eq!(
            run("field: payload.data", nested).await.unwrap(),
            r#"{"id":1,"data":{"t":21.5}}"#
        );
        // Already a structure: unchanged, bytes and all.
        let parsed = r#"{"data": {"t": 1}}"#;
        assert_eq!(run("field: payload.data", parsed).await.unwrap(), parsed);
        assert_eq!(
            run(
                "action: serialize\nfield: payload.data",
                r#"{"data": {"t": 1}}"#
            )
            .await
            .unwrap(),
            r#"{"data":"{\"t\":1}"}"#
        );
        assert_eq!(
            run(
                "action: serialize\nfield: payload.data\npretty: true",
                r#"{"data": [1]}"#
            )
            .await
            .unwrap(),
            r#"{"data":"[\n  1\n]"}"#
        );
        let string = r#"{"data": "text"}"#;
        assert_eq!(
            run("action: serialize\nfield: payload.data", string)
                .await
                .unwrap(),
            string
        );
        // Double-encoded JSON as the whole payload.
        assert_eq!(
            run("field: payload", r#""{\"a\": 1}""#).await.unwrap(),
            r#"{"a":1}"#
        );
        assert_eq!(
            run("action: serialize\nfield: payload", r#"{"a": 1}"#)
                .await
                .unwrap(),
            r#""{\"a\":1}""#
        );

        assert_eq!(
            run("field: payload.data", r#"{"data": "{oops"}"#)
                .await
                .unwrap_err(),
            "`payload.data` is not JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(
            run("field: payload.data", r#"{"other": 1}"#)
                .await
                .unwrap_err(),
            "`payload.data` is missing"
        );
        assert_eq!(
            run("field: payload.data", "plain").await.unwrap_err(),
            "the payload is not JSON, so it has no `payload.data`: expected value at line 1 column 1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_json_goes_to_the_error_port_with_its_ack() {
        // The dead letter carries the message's ack branch: the source learns the
        // outcome from whatever consumes the error port.
        let mut h = NodeHarness::start("json", "{}", Clock::virtual_at(0)).unwrap();
        let (tx, rx) = mpsc::channel();
        h.send(Msg::tracked("t", "nope", 0, move |o| tx.send(o).unwrap()))
            .await;
        h.settle().await;
        let err = h.drain("error");
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].headers["error_node"], "test/node");
        err.into_iter().for_each(|m| m.fail("not stored"));
        assert!(matches!(rx.try_recv().unwrap(), Outcome::Failed(_)));
        h.shutdown().await;
    }

    #[test]
    fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("json", options, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(
            err("field: topic"),
            "field: `field` must be `payload` or a payload field such as `payload.data`, not `topic`"
        );
        assert_eq!(
            err("pretty: true"),
            "pretty: `pretty` applies to `action: serialize`; remove it or set the action"
        );
        assert!(err("action: stringify").contains("unknown variant `stringify`"));
    }
}
