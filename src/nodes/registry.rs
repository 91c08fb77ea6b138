//! Maps each `type:` of a flow file to its node kind. Every kind is listed here, once,
//! explicitly; adding a node kind means adding a file and a line in [`KINDS`].

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::engine::{Clock, NodeFactory, NodeId};

use super::{sinks, sources, transforms};

/// What a node does in a graph; decides which wiring is legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Produces messages; takes no inputs.
    Source,
    /// Takes inputs and produces outputs.
    Transform,
    /// Takes inputs; only its `error` port may feed other nodes.
    Sink,
}

/// A problem with a node's options, located by a path into them such as `rules[1].regex`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Path into the node's options; empty for the node as a whole.
    pub path: String,
    /// What is wrong, lowercase, saying what to do.
    pub message: String,
    /// For errors inside an embedded text (a script): the 1-based line and column in
    /// that text, so the flow file position can be computed.
    pub inner: Option<(u32, u32)>,
}

impl ConfigIssue {
    /// An issue at `path` with `message`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            path: path.into(),
            message: message.into(),
            inner: None,
        }
    }

    /// An issue inside the text at `path`, at `line`:`col` of that text.
    pub fn inside(
        path: impl Into<String>,
        line: u32,
        col: u32,
        message: impl Into<String>,
    ) -> Self {
        ConfigIssue {
            inner: Some((line, col)),
            ..ConfigIssue::new(path, message)
        }
    }
}

/// What building a node may use; building does no network IO (that is the run's job),
/// so `check` builds every node too.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// `flow/node`.
    pub id: NodeId,
    /// The directory of the flow file, for relative paths such as `file:`.
    pub base_dir: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The engine's clock.
    pub clock: Clock,
    /// The node's `state_key`, or `flow/node`.
    pub state_key: String,
}

/// The typed side of a node kind: its options struct. Implement this, then list
/// `&Kind::<YourConfig>::NEW` in [`KINDS`].
pub trait Config: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The `type:` name, exactly as in DESIGN.md's table.
    const TYPE: &'static str;
    /// Source, transform or sink.
    const ROLE: Role;
    /// One line for `headwater schema` and docs.
    const DOC: &'static str;

    /// Checks what serde cannot (ranges, regexes, combinations); report every issue.
    fn validate(&self) -> Vec<ConfigIssue> {
        Vec::new()
    }

    /// Output ports besides `error`. Sources and transforms default to `out`.
    fn ports(&self) -> Vec<String> {
        match Self::ROLE {
            Role::Sink => Vec::new(),
            _ => vec!["out".to_string()],
        }
    }

    /// Whether this source holds an acknowledgement (e.g. an MQTT PUBACK) until its
    /// messages are finished; a lossy edge downstream of it then needs
    /// `delivery: at_most_once` on the flow.
    fn holds_acks(&self) -> bool {
        false
    }

    /// Builds the factory that starts runs of the node.
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>>;
}

/// A parsed, validated node config with its type erased.
pub trait NodeConfig: Send + Sync {
    /// See [`Config::ports`].
    fn ports(&self) -> Vec<String>;
    /// See [`Config::holds_acks`].
    fn holds_acks(&self) -> bool;
    /// See [`Config::build`].
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>>;
}

impl<C: Config> NodeConfig for C {
    fn ports(&self) -> Vec<String> {
        Config::ports(self)
    }
    fn holds_acks(&self) -> bool {
        Config::holds_acks(self)
    }
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        Config::build(self, cx)
    }
}

/// A node kind with its config type erased, as the registry lists it.
pub trait NodeKind: Send + Sync {
    /// The `type:` name.
    fn type_name(&self) -> &'static str;
    /// Source, transform or sink.
    fn role(&self) -> Role;
    /// One line of documentation.
    fn doc(&self) -> &'static str;
    /// The JSON Schema of the options (an object schema).
    fn schema(&self, generator: &mut SchemaGenerator) -> schemars::Schema;
    /// Deserializes and validates options given as JSON.
    fn parse(&self, options: serde_json::Value) -> Result<Box<dyn NodeConfig>, Vec<ConfigIssue>>;
}

/// The registry entry for the config type `C`.
pub struct Kind<C>(PhantomData<fn() -> C>);

impl<C> Kind<C> {
    /// The entry, usable in a `static`.
    pub const NEW: Kind<C> = Kind(PhantomData);
}

impl<C: Config> NodeKind for Kind<C> {
    fn type_name(&self) -> &'static str {
        C::TYPE
    }
    fn role(&self) -> Role {
        C::ROLE
    }
    fn doc(&self) -> &'static str {
        C::DOC
    }
    fn schema(&self, generator: &mut SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<C>()
    }
    fn parse(&self, options: serde_json::Value) -> Result<Box<dyn NodeConfig>, Vec<ConfigIssue>> {
        let config: C = serde_path_to_error::deserialize(options).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            vec![ConfigIssue::new(
                path,
                crate::flow::serde_message(&err.into_inner().to_string()),
            )]
        })?;
        let issues = config.validate();
        if issues.is_empty() {
            Ok(Box::new(config))
        } else {
            Err(issues)
        }
    }
}

/// Every node kind, by `type:`.
pub static KINDS: &[&dyn NodeKind] = &[
    // sources
    &Kind::<sources::timer::TimerConfig>::NEW,
    &Kind::<sources::mqtt_in::MqttInConfig>::NEW,
    &Kind::<sources::gpio_pulse::GpioPulseConfig>::NEW,
    &Kind::<sources::gpio_in::GpioInConfig>::NEW,
    // transforms
    &Kind::<transforms::script::ScriptConfig>::NEW,
    &Kind::<transforms::filter::FilterConfig>::NEW,
    &Kind::<transforms::switch::SwitchConfig>::NEW,
    &Kind::<transforms::change::ChangeConfig>::NEW,
    &Kind::<transforms::json::JsonConfig>::NEW,
    &Kind::<transforms::rate_limit::RateLimitConfig>::NEW,
    &Kind::<transforms::dedupe::DedupeConfig>::NEW,
    &Kind::<transforms::window::WindowConfig>::NEW,
    &Kind::<transforms::trigger::TriggerConfig>::NEW,
    &Kind::<transforms::delay::DelayConfig>::NEW,
    // sinks
    &Kind::<sinks::log::LogConfig>::NEW,
    &Kind::<sinks::mqtt_out::MqttOutConfig>::NEW,
    &Kind::<sinks::file::FileOutConfig>::NEW,
    &Kind::<sinks::gpio_out::GpioOutConfig>::NEW,
    &Kind::<sinks::http_out::HttpOutConfig>::NEW,
    &Kind::<sinks::influx_out::InfluxOutConfig>::NEW,
];

/// The kind registered under `type_name`.
pub fn lookup(type_name: &str) -> Option<&'static dyn NodeKind> {
    KINDS.iter().copied().find(|k| k.type_name() == type_name)
}

/// All `type:` names, for "did you mean" messages and the schema.
pub fn type_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.type_name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_unique() {
        let mut names = type_names();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
