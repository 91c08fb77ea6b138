//! `gpio.in`: debounced level changes of a GPIO line (a switch, a door contact, a PIR
//! sensor) as messages `{"ts", "value": 0|1, "id"}`.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::gpio::{self, Bias, ChipRef, Edge, EdgeKind, InputRequest, LineRef};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `gpio.in` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioInConfig {
    /// The GPIO chip: `gpiochip0`, a device path, or `sim:NAME` for a simulated chip.
    pub chip: String,
    /// The line: an offset on the chip (`17`) or a line name (`GPIO17`).
    pub line: LineRef,
    /// Which changes make messages: `both` (default), `rising` or `falling`.
    #[serde(default = "default_edge")]
    pub edge: Edge,
    /// The line's pull resistor: `pull_up`, `pull_down` or `disabled`; absent leaves it.
    pub bias: Option<Bias>,
    /// A change counts once the line held it this long (default `20ms`; `0` for none).
    #[serde(default = "default_debounce")]
    pub debounce: HumanDuration,
    /// Active means physically low (a switch to ground with a pull-up).
    #[serde(default)]
    pub active_low: bool,
    /// Also send the level read when the line is requested (default false).
    #[serde(default)]
    pub initial: bool,
    /// The `id` field of the payloads and the messages' topic (default: the node's name).
    pub id: Option<String>,
}

fn default_edge() -> Edge {
    Edge::Both
}

fn default_debounce() -> HumanDuration {
    HumanDuration(Duration::from_millis(20))
}

impl Config for GpioInConfig {
    const TYPE: &'static str = "gpio.in";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "Sends the debounced level changes of a GPIO line";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        gpio::validate_line_options(
            &self.chip,
            &self.line,
            Some(self.debounce.get()),
            &mut issues,
        );
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let chip = ChipRef::parse(&self.chip).map_err(|e| vec![ConfigIssue::new("chip", e)])?;
        let node = Arc::new(LevelInput {
            chip,
            request: InputRequest {
                line: self.line.clone(),
                edge: self.edge,
                bias: self.bias,
                debounce: Some(self.debounce.get()).filter(|d| !d.is_zero()),
                active_low: self.active_low,
                consumer: cx.id.to_string(),
            },
            initial: self.initial,
            id: self
                .id
                .clone()
                .unwrap_or_else(|| cx.id.node.to_string())
                .into(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(node.clone().run(cx))
        }))
    }
}

struct LevelInput {
    chip: ChipRef,
    request: InputRequest,
    initial: bool,
    id: Arc<str>,
}

impl LevelInput {
    fn message(&self, wall_ms: i64, level: bool) -> Msg {
        let payload = serde_json::json!({
            "ts": wall_ms.div_euclid(1000),
            "value": u8::from(level),
            "id": &*self.id,
        });
        Msg::new(self.id.clone(), payload.to_string(), wall_ms)
    }

    async fn run(self: Arc<Self>, cx: NodeContext) -> Result<(), NodeError> {
        let backend = gpio::backend(&self.chip, &cx.gpio_sim);
        let mut line = backend
            .request_input(&self.request)
            .map_err(NodeError::new)?;
        tracing::info!(node = %cx.id, chip = %self.chip, line = %self.request.line, "watching line");
        if self.initial {
            let level = line.value().map_err(NodeError::new)?;
            cx.emit(self.message(cx.clock.wall_ms(), level)).await;
        }
        loop {
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled() => return Ok(()),
                event = line.next_event() => {
                    let event = event.map_err(NodeError::new)?;
                    let wall_ms = gpio::event_wall_ms(&cx.clock, line.now_ns(), event.timestamp_ns);
                    cx.emit(self.message(wall_ms, event.kind == EdgeKind::Rising)).await;
                }
            }
        }
    }
}
