//! `filter`: passes the messages that satisfy its conditions and consumes the rest.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::fields::MsgView;
use crate::engine::{Emit, Msg, NodeContext, NodeFactory, NodeFuture, Transform, run_transform};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

use super::condition::{Condition, Conditions};

/// Options of a `filter` node. Give `when`, `any`, or both.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Conditions that must all hold for a message to pass.
    pub when: Option<Vec<Condition>>,
    /// Conditions of which at least one must hold for a message to pass.
    pub any: Option<Vec<Condition>>,
}

impl FilterConfig {
    fn conditions(&self) -> Result<Conditions, Vec<ConfigIssue>> {
        Conditions::compile(self.when.as_deref(), self.any.as_deref(), "")
    }
}

impl Config for FilterConfig {
    const TYPE: &'static str = "filter";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Passes messages that satisfy `when` (all) / `any` (one) conditions; consumes the rest";

    fn validate(&self) -> Vec<ConfigIssue> {
        self.conditions().err().unwrap_or_default()
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let conditions = Arc::new(self.conditions()?);
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run_transform(
                Filter {
                    conditions: conditions.clone(),
                },
                cx,
            ))
        }))
    }
}

struct Filter {
    conditions: Arc<Conditions>,
}

impl Transform for Filter {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        if self.conditions.matches(&MsgView::new(&msg)) {
            out.out(msg);
        } else {
            // Filtered out on purpose: a terminal state, so an MQTT source may PUBACK.
            msg.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;

    use crate::engine::harness::{NodeHarness, json_msg};
    use crate::engine::{Clock, Msg, Outcome};
    use serde_json::json;

    fn tracked(payload: &str) -> (Msg, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let msg = Msg::tracked("sensors/a/temp", payload.to_string(), 0, move |o| {
            tx.send(o).unwrap()
        });
        (msg, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn passes_matching_and_consumes_the_rest() {
        let mut h = NodeHarness::start(
            "filter",
            "when:\n  - { field: payload.t, op: gt, value: 30 }\n  - { topic: sensors/+/temp }",
            Clock::virtual_at(0),
        )
        .unwrap();
        let (hot, hot_rx) = tracked(r#"{"t": "31.5"}"#);
        let (cold, cold_rx) = tracked(r#"{"t": 12}"#);
        let (text, text_rx) = tracked("not json");
        let (missing, missing_rx) = tracked(r#"{"x": 99}"#);
        for msg in [hot, cold, text, missing] {
            h.send(msg).await;
        }
        h.send(json_msg("other/topic", json!({"t": 40}))).await;
        h.settle().await;
        let passed = h.drain("out");
        assert_eq!(passed.len(), 1);
        assert_eq!(passed[0].payload_str(), Some(r#"{"t": "31.5"}"#));
        assert!(
            hot_rx.try_recv().is_err(),
            "passed message is still in flight"
        );
        passed.into_iter().for_each(Msg::done);
        assert_eq!(hot_rx.try_recv().unwrap(), Outcome::Done);
        for rx in [cold_rx, text_rx, missing_rx] {
            assert_eq!(rx.try_recv().unwrap(), Outcome::Done, "filtered is done");
        }
        assert!(h.drain("error").is_empty());
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn any_needs_one() {
        let mut h = NodeHarness::start(
            "filter",
            "any:\n  - { field: headers.kind, op: eq, value: alarm }\n  - { field: payload, op: matches, value: '(?i)^alarm' }",
            Clock::virtual_at(0),
        )
        .unwrap();
        let mut by_header = Msg::new("t", "x", 0);
        by_header
            .headers_mut()
            .insert("kind".into(), "alarm".into());
        h.send(by_header).await;
        h.send(Msg::new("t", "ALARM: door", 0)).await;
        h.send(Msg::new("t", "all quiet", 0)).await;
        h.settle().await;
        let passed: Vec<_> = h
            .drain("out")
            .iter()
            .map(|m| m.payload_str().unwrap().to_string())
            .collect();
        assert_eq!(passed, ["x", "ALARM: door"]);
        h.shutdown().await;
    }

    #[test]
    fn options_are_checked() {
        let err = NodeHarness::start("filter", "{}", Clock::system())
            .err()
            .unwrap();
        assert_eq!(
            err,
            "give `when:` (conditions that must all hold) or `any:` (one must hold)"
        );
        let err = NodeHarness::start(
            "filter",
            "when: [{op: gt, value: 1}, {op: matches, value: '['}]",
            Clock::system(),
        )
        .err()
        .unwrap();
        assert!(err.starts_with("when[1].value: invalid regex: "), "{err}");
    }

    fn load(yaml: &str) -> Vec<String> {
        match crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        ) {
            Ok(_) => Vec::new(),
            Err(d) => d.headlines(),
        }
    }

    #[test]
    fn yaml_errors_point_at_the_option() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      hot:
        type: filter
        inputs: [tick]
        when:
          - { field: payload.t, op: gt, value: 30 }
          - { field: payload.id, op: matches, value: 'dev-(' }
";
        assert_eq!(
            load(yaml),
            ["f.yaml:11:54: f/hot: `when[1].value`: invalid regex: unclosed group"]
        );
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      hot:
        type: filter
        inputs: [tick]
        when:
          - field: payload.t
            op: greater
            value: 30
";
        assert_eq!(
            load(yaml),
            [
                "f.yaml:11:17: f/hot: `when[0].op`: unknown variant `greater`, expected one of `eq`, `ne`, `gt`, `ge`, `lt`, `le`, `between`, `contains`, `matches`, `exists`, `missing`, `in`, `is_true`, `is_false`"
            ]
        );
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      hot:
        type: filter
        inputs: [tick]
        when:
          - { field: payload.t, op: between, value: [1, 2, 3] }
          - { topic: 'a/#/b' }
";
        assert_eq!(
            load(yaml),
            [
                "f.yaml:10:46: f/hot: `when[0].value`: `between` needs `value: [low, high]`, two numbers",
                "f.yaml:11:22: f/hot: `when[1].topic`: invalid topic filter `a/#/b`: `#` must be a whole level and the last one (`a/#`)"
            ]
        );
    }
}
