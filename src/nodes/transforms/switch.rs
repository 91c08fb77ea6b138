//! `switch`: routes each message to the output port of the first (or every) rule it
//! satisfies, like Node-RED's switch node with named ports instead of numbered outputs.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::fields::MsgView;
use crate::engine::{
    Emit, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, PortId, Transform, run_transform,
};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

use super::condition::{Condition, Conditions};

/// Options of a `switch` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// The rules, tried in order. Several rules may name the same port.
    pub rules: Vec<SwitchRule>,
    /// `first`: a message goes to the port of the first rule it satisfies (Node-RED's
    /// "stopping after first match"); `all`: to the port of every rule it satisfies.
    #[serde(default)]
    pub check: Check,
    /// Port for messages that satisfy no rule; without it they are consumed.
    pub otherwise: Option<String>,
}

/// One rule of a `switch`: a port and the conditions that send a message there.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRule {
    /// The output port; reference it downstream as `node.port`.
    pub port: String,
    /// Conditions that must all hold.
    pub when: Option<Vec<Condition>>,
    /// Conditions of which at least one must hold.
    pub any: Option<Vec<Condition>>,
}

/// How many rules a `switch` applies to one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Stop at the first rule that matches (default).
    #[default]
    First,
    /// Apply every rule; a message matching several is copied to each port once.
    All,
}

/// Checks an output port name: referenced as `node.port`, so no `.`, and not `error`,
/// which every node has already.
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    if name == "error" {
        return Err("`error` is the error port every node has; name this port otherwise".into());
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "invalid port name `{name}`: use letters, digits, `_` and `-`"
        ));
    }
    Ok(())
}

impl SwitchConfig {
    /// The rule ports in order of first appearance (deduplicated).
    fn rule_ports(&self) -> Vec<String> {
        let mut ports: Vec<String> = Vec::new();
        for rule in &self.rules {
            if !ports.contains(&rule.port) {
                ports.push(rule.port.clone());
            }
        }
        ports
    }

    fn compile(&self) -> Result<Vec<Conditions>, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if self.rules.is_empty() {
            issues.push(ConfigIssue::new(
                "rules",
                "a switch needs at least one rule: `- { port: NAME, when: [...] }`",
            ));
        }
        let mut compiled = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if let Err(e) = check_port_name(&rule.port) {
                issues.push(ConfigIssue::new(format!("{at}.port"), e));
            }
            match Conditions::compile(rule.when.as_deref(), rule.any.as_deref(), &at) {
                Ok(c) => compiled.push(c),
                Err(mut more) => issues.append(&mut more),
            }
        }
        if let Some(otherwise) = &self.otherwise {
            if let Err(e) = check_port_name(otherwise) {
                issues.push(ConfigIssue::new("otherwise", e));
            } else if let Some(i) = self.rules.iter().position(|r| &r.port == otherwise) {
                // The port would mean both "rule i matched" and "nothing matched".
                issues.push(ConfigIssue::new(
                    "otherwise",
                    format!(
                        "port `{otherwise}` is already the port of rules[{i}]; give `otherwise` a port of its own"
                    ),
                ));
            }
        }
        if issues.is_empty() {
            Ok(compiled)
        } else {
            Err(issues)
        }
    }
}

impl Config for SwitchConfig {
    const TYPE: &'static str = "switch";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Routes messages to the port of the first (or every) rule they satisfy, else to `otherwise`";

    fn validate(&self) -> Vec<ConfigIssue> {
        self.compile().err().unwrap_or_default()
    }

    fn ports(&self) -> Vec<String> {
        let mut ports = self.rule_ports();
        if let Some(otherwise) = &self.otherwise
            && !ports.contains(otherwise)
        {
            ports.push(otherwise.clone());
        }
        ports
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let conditions = self.compile()?;
        let rule_ports = self.rule_ports();
        let rules: Vec<(usize, Conditions)> = self
            .rules
            .iter()
            .zip(conditions)
            .map(|(rule, c)| {
                let index = rule_ports.iter().position(|p| *p == rule.port).unwrap_or(0);
                (index, c)
            })
            .collect();
        let plan = Arc::new(Plan {
            rules,
            port_names: rule_ports,
            otherwise: self.otherwise.clone(),
            check_all: self.check == Check::All,
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            let plan = plan.clone();
            Box::pin(async move {
                let switch = Switch::new(plan, &cx)?;
                run_transform(switch, cx).await
            })
        }))
    }
}

/// What the config compiles to; shared by every run of the node.
struct Plan {
    /// Each rule's index into `port_names`, with its conditions.
    rules: Vec<(usize, Conditions)>,
    port_names: Vec<String>,
    otherwise: Option<String>,
    check_all: bool,
}

struct Switch {
    plan: Arc<Plan>,
    ports: Vec<PortId>,
    otherwise: Option<PortId>,
    /// Reused per message: indices into `ports` that matched, in rule order.
    hits: Vec<usize>,
}

impl Switch {
    fn new(plan: Arc<Plan>, cx: &NodeContext) -> Result<Switch, NodeError> {
        let resolve = |name: &str| {
            cx.outputs
                .port(name)
                .ok_or_else(|| NodeError::new(format!("output port `{name}` is not wired up")))
        };
        let ports = plan
            .port_names
            .iter()
            .map(|p| resolve(p))
            .collect::<Result<_, _>>()?;
        let otherwise = plan.otherwise.as_deref().map(resolve).transpose()?;
        Ok(Switch {
            plan,
            ports,
            otherwise,
            hits: Vec::new(),
        })
    }
}

impl Transform for Switch {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        self.hits.clear();
        let view = MsgView::new(&msg);
        for (port, conditions) in &self.plan.rules {
            if conditions.matches(&view) {
                if !self.hits.contains(port) {
                    self.hits.push(*port);
                }
                if !self.plan.check_all {
                    break;
                }
            }
        }
        drop(view);
        match self.hits.split_last() {
            Some((last, others)) => {
                // Fan-out: each copy is its own branch of the message's ack tracker.
                for port in others {
                    out.to(self.ports[*port], msg.clone());
                }
                out.to(self.ports[*last], msg);
            }
            None => match self.otherwise {
                Some(port) => out.to(port, msg),
                // No rule and no `otherwise`: consumed on purpose, as Node-RED drops it.
                None => msg.done(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;

    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome};

    const RULES: &str = "
rules:
  - { port: high, when: [{ field: payload.t, op: gt, value: 30 }] }
  - { port: warm, when: [{ field: payload.t, op: gt, value: 20 }] }
  - { port: high, when: [{ field: payload.alarm, op: is_true }] }
";

    fn payloads(msgs: &[Msg]) -> Vec<&str> {
        msgs.iter().map(|m| m.payload_str().unwrap()).collect()
    }

    fn tracked(payload: &str) -> (Msg, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let msg = Msg::tracked("t", payload.to_string(), 0, move |o| tx.send(o).unwrap());
        (msg, rx)
    }

    #[test]
    fn ports_in_rule_order_deduplicated() {
        let config: SwitchConfig =
            serde_saphyr::from_str(&format!("{RULES}otherwise: normal")).expect("config parses");
        assert_eq!(Config::ports(&config), ["high", "warm", "normal"]);
    }

    #[tokio::test(start_paused = true)]
    async fn first_match_wins() {
        let mut h = NodeHarness::start(
            "switch",
            &format!("{RULES}otherwise: normal"),
            Clock::virtual_at(0),
        )
        .unwrap();
        for p in [
            r#"{"t": 35}"#,
            r#"{"t": "25"}"#,
            r#"{"t": 10}"#,
            r#"{"t": 10, "alarm": true}"#,
            "text",
        ] {
            h.send(Msg::new("t", p, 0)).await;
        }
        h.settle().await;
        assert_eq!(
            payloads(&h.drain("high")),
            [r#"{"t": 35}"#, r#"{"t": 10, "alarm": true}"#]
        );
        assert_eq!(payloads(&h.drain("warm")), [r#"{"t": "25"}"#]);
        assert_eq!(payloads(&h.drain("normal")), [r#"{"t": 10}"#, "text"]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn check_all_fans_out_once_per_port() {
        let mut h = NodeHarness::start(
            "switch",
            &format!("{RULES}check: all"),
            Clock::virtual_at(0),
        )
        .unwrap();
        let (both, both_rx) = tracked(r#"{"t": 35, "alarm": true}"#);
        let (none, none_rx) = tracked(r#"{"t": 5}"#);
        h.send(both).await;
        h.send(none).await;
        h.settle().await;
        let high = h.drain("high");
        let warm = h.drain("warm");
        // Rules 0 and 2 both route to `high`: one copy there, not two.
        assert_eq!(high.len(), 1);
        assert_eq!(warm.len(), 1);
        assert_eq!(high[0].id, warm[0].id);
        assert_eq!(
            none_rx.try_recv().unwrap(),
            Outcome::Done,
            "no match, no otherwise"
        );
        high.into_iter().for_each(Msg::done);
        assert!(both_rx.try_recv().is_err(), "one copy is still in flight");
        warm.into_iter().for_each(|m| m.fail("sink down"));
        assert_eq!(
            both_rx.try_recv().unwrap(),
            Outcome::Failed("sink down".into())
        );
        h.shutdown().await;
    }

    #[test]
    fn bad_ports_are_reported() {
        let err = NodeHarness::start(
            "switch",
            "rules:\n  - { port: error, when: [{op: exists}] }\n  - { port: 'a.b', any: [{op: exists}] }\n  - { port: ok }\notherwise: ok",
            Clock::system(),
        )
        .err()
        .unwrap();
        assert_eq!(
            err,
            "rules[0].port: `error` is the error port every node has; name this port otherwise; \
             rules[1].port: invalid port name `a.b`: use letters, digits, `_` and `-`; \
             rules[2]: give `when:` (conditions that must all hold) or `any:` (one must hold); \
             otherwise: port `ok` is already the port of rules[2]; give `otherwise` a port of its own"
        );
        let err = NodeHarness::start("switch", "rules: []", Clock::system())
            .err()
            .unwrap();
        assert!(err.starts_with("rules: a switch needs at least one rule"));
    }

    #[test]
    fn yaml_wiring_uses_rule_ports() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      route:
        type: switch
        inputs: [tick]
        rules:
          - { port: high, when: [{ field: payload, op: gt, value: 3 }] }
          - port: low
            when: [{ field: payload, op: matches, value: '*' }]
      out: { type: log, inputs: [route.high] }
      bad: { type: log, inputs: [route.medium] }
";
        let err = crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        let headlines = err.headlines();
        assert_eq!(headlines.len(), 1, "{headlines:?}");
        assert_eq!(
            headlines[0],
            "f.yaml:12:58: f/route: `rules[1].when[0].value`: invalid regex: repetition operator missing expression"
        );
        let fixed = yaml.replace("'*'", "'^x'");
        let err = crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), fixed)],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            ["f.yaml:14:34: node `route` has no port `medium`; its ports are: high, low, error"]
        );
    }
}
