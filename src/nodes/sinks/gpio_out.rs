//! `gpio.out`: sets a GPIO line (a relay, an LED) from each message's payload: `0`/`1`,
//! `true`/`false`, `"on"`/`"off"`, or an object with such a `value`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::nodes::gpio::{self, ChipRef, Drive, LineRef, OutputRequest};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `gpio.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioOutConfig {
    /// The GPIO chip: `gpiochip0`, a device path, or `sim:NAME` for a simulated chip.
    pub chip: String,
    /// The line: an offset on the chip (`17`) or a line name (`GPIO17`).
    pub line: LineRef,
    /// The level set when the line is requested (`0`/`1`, `true`/`false`, `on`/`off`);
    /// default inactive.
    pub initial: Option<serde_json::Value>,
    /// Active means physically low (many relay boards switch on a low input).
    #[serde(default)]
    pub active_low: bool,
    /// `push_pull` (default), `open_drain` or `open_source`.
    #[serde(default)]
    pub drive: Drive,
}

/// The level a JSON value asks for, if it is one.
pub fn level_of(value: &serde_json::Value) -> Option<bool> {
    use serde_json::Value;
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => {
            let x = n.as_f64()?;
            if x == 0.0 {
                Some(false)
            } else if x == 1.0 {
                Some(true)
            } else {
                None
            }
        }
        Value::String(s) => level_of_text(s),
        Value::Object(map) => map.get("value").and_then(level_of),
        _ => None,
    }
}

fn level_of_text(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" => Some(true),
        "0" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// The level a payload asks for: JSON first, then bare text (`on` without quotes).
fn level_of_payload(msg: &Msg) -> Option<bool> {
    match msg.payload_json() {
        Some(value) => level_of(&value),
        None => msg.payload_str().and_then(level_of_text),
    }
}

impl Config for GpioOutConfig {
    const TYPE: &'static str = "gpio.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Sets a GPIO line from each message: 0/1, true/false, on/off";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        gpio::validate_line_options(&self.chip, &self.line, None, &mut issues);
        if let Some(initial) = &self.initial
            && level_of(initial).is_none()
        {
            issues.push(ConfigIssue::new(
                "initial",
                "give 0 or 1, true or false, on or off",
            ));
        }
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let chip = ChipRef::parse(&self.chip).map_err(|e| vec![ConfigIssue::new("chip", e)])?;
        let node = Arc::new(LevelOutput {
            chip,
            request: OutputRequest {
                line: self.line.clone(),
                initial: self.initial.as_ref().and_then(level_of).unwrap_or(false),
                active_low: self.active_low,
                drive: self.drive,
                consumer: cx.id.to_string(),
            },
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(node.clone().run(cx))
        }))
    }
}

struct LevelOutput {
    chip: ChipRef,
    request: OutputRequest,
}

impl LevelOutput {
    async fn run(self: Arc<Self>, mut cx: NodeContext) -> Result<(), NodeError> {
        let backend = gpio::backend(&self.chip, &cx.gpio_sim);
        let mut line = backend
            .request_output(&self.request)
            .map_err(NodeError::new)?;
        tracing::info!(node = %cx.id, chip = %self.chip, line = %self.request.line, "driving line");
        while let Some(msg) = cx.recv().await {
            let Some(level) = level_of_payload(&msg) else {
                cx.outputs
                    .emit_error(
                        msg,
                        "the payload is not a level: send 0 or 1, true or false, on or off",
                    )
                    .await;
                continue;
            };
            match line.set(level) {
                Ok(()) => msg.done(),
                Err(e) => {
                    // The line is gone (chip unplugged): fail this message and restart.
                    let reason = e.to_string();
                    cx.outputs.emit_error(msg, &reason).await;
                    return Err(NodeError::new(reason));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_from_payloads() {
        for (value, level) in [
            (json!(1), Some(true)),
            (json!(0), Some(false)),
            (json!(true), Some(true)),
            (json!("on"), Some(true)),
            (json!("OFF"), Some(false)),
            (json!({"value": "on"}), Some(true)),
            (json!(2), None),
            (json!("maybe"), None),
            (json!(null), None),
        ] {
            assert_eq!(level_of(&value), level, "{value}");
        }
        assert_eq!(level_of_payload(&Msg::new("t", "on", 0)), Some(true));
        assert_eq!(level_of_payload(&Msg::new("t", "0", 0)), Some(false));
        assert_eq!(level_of_payload(&Msg::new("t", "open", 0)), None);
    }
}
