//! `log`: writes each message to the process log (Node-RED's debug node, headless).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId};
use crate::nodes::registry::{BuildContext, Config, Role};

/// Options of a `log` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Log level of the lines.
    #[serde(default)]
    pub level: LogLevel,
    /// Longest payload printed; longer ones are cut and marked with `...`.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

fn default_max_payload() -> usize {
    1024
}

/// Level of the log lines a `log` node writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info (default).
    #[default]
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

impl Config for LogConfig {
    const TYPE: &'static str = "log";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Writes every message to the log: topic, headers and payload";

    fn build(
        &self,
        _: &BuildContext,
    ) -> Result<Arc<dyn NodeFactory>, Vec<crate::nodes::registry::ConfigIssue>> {
        let (level, max) = (self.level, self.max_payload);
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(cx, level, max))
        }))
    }
}

async fn run(mut cx: NodeContext, level: LogLevel, max: usize) -> Result<(), NodeError> {
    while let Some(msg) = cx.recv().await {
        write(&cx.id, level, max, &msg);
        msg.done();
    }
    Ok(())
}

/// Renders a payload for a log line: text as is, binary as hex, cut at `max` bytes.
pub fn render_payload(payload: &[u8], max: usize) -> String {
    let cut = payload.len() > max;
    let shown = &payload[..payload.len().min(max)];
    let mut text = match std::str::from_utf8(shown) {
        Ok(s) => s.to_string(),
        Err(e) if cut && e.error_len().is_none() => {
            String::from_utf8_lossy(&shown[..e.valid_up_to()]).into_owned()
        }
        Err(_) => shown.iter().map(|b| format!("{b:02x}")).collect(),
    };
    if cut {
        text.push_str("...");
    }
    text
}

fn write(id: &NodeId, level: LogLevel, max: usize, msg: &Msg) {
    let payload = render_payload(&msg.payload, max);
    let topic = &*msg.topic;
    // Recorded only when present, so plain messages log as `topic=... payload`.
    let headers = (!msg.headers.is_empty()).then(|| format!("{:?}", msg.headers));
    let headers = headers.as_deref();
    match level {
        LogLevel::Debug => tracing::debug!(node = %id, topic, headers, "{payload}"),
        LogLevel::Info => tracing::info!(node = %id, topic, headers, "{payload}"),
        LogLevel::Warn => tracing::warn!(node = %id, topic, headers, "{payload}"),
        LogLevel::Error => tracing::error!(node = %id, topic, headers, "{payload}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_rendering() {
        assert_eq!(render_payload(b"hello", 10), "hello");
        assert_eq!(render_payload(b"hello world", 5), "hello...");
        assert_eq!(render_payload(&[0xff, 0x00], 10), "ff00");
        // A cut in the middle of a UTF-8 character keeps the valid prefix.
        assert_eq!(render_payload("aé".as_bytes(), 2), "a...");
    }
}
