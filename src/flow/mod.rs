//! The flow file: parsing with positions, `${...}` interpolation, validation that
//! reports every problem at once as `file:line:col`, and the plan the engine runs.
//!
//! Loading never does IO beyond reading the flow files, script files and secret files;
//! `check` and `run` share it, so what `check` accepts is exactly what `run` starts.

pub mod diag;
pub mod fingerprint;
pub mod interpolate;
pub mod schema;
pub mod tree;
pub mod values;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::engine::{self, Clock, FlowPlan, GraphPlan, InputPlan, NodePlan, Overflow};
use crate::nodes::registry::{self, BuildContext, ConfigIssue, NodeConfig, NodeKind, Role};
pub use diag::{Diagnostic, Diagnostics, SourceFile};
use interpolate::Env;
use tree::{Node, PathSegment, Pos, Value};

/// The only flow file format version so far.
pub const FORMAT_VERSION: i64 = 1;

/// Keys every node may have, whatever its type; the rest are the type's options.
pub const COMMON_NODE_KEYS: &[&str] = &[
    "type",
    "inputs",
    "queue",
    "state_key",
    "buffer",
    "description",
];

/// Whether a flow's sources may lose messages on lossy edges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Nothing a source acknowledged is lost; lossy edges after such a source are refused.
    #[default]
    AtLeastOnce,
    /// Lossy edges (`drop_oldest`, `drop_newest`, `latest_per_topic`) are allowed.
    AtMostOnce,
}

/// Process settings that may appear in (at most) one of the files given to `run`.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `data_dir:`, relative to the file that sets it.
    pub data_dir: Option<PathBuf>,
    /// `broker:`, the built-in MQTT broker (defaults when absent), or what
    /// `mosquitto_conf:` said.
    pub broker: Option<crate::broker::BrokerConfig>,
    /// Warnings from reading `mosquitto_conf:` (`file:line: ...`), for the log.
    pub broker_warnings: Vec<String>,
    /// `api:`, the admin API (defaults when absent); `token_file` resolved against the
    /// settings file.
    pub api: Option<crate::api::ApiConfig>,
    /// `reload:`, how `run` watches its files (defaults when absent).
    pub reload: Option<crate::engine::reload::ReloadConfig>,
}

/// A loaded, validated set of flow files.
pub struct FlowSet {
    /// The flows, in file order.
    pub flows: Vec<FlowDef>,
    /// Process settings, if a file had any.
    pub settings: Settings,
}

/// One validated flow.
pub struct FlowDef {
    /// The flow's name.
    pub name: String,
    /// The file it came from.
    pub file: Arc<SourceFile>,
    /// Where its name stands.
    pub pos: Pos,
    /// Its delivery guarantee.
    pub delivery: Delivery,
    /// Its nodes, in file order.
    pub nodes: Vec<NodeDef>,
}

/// One validated node.
pub struct NodeDef {
    /// The node's name.
    pub name: String,
    /// Where its name stands.
    pub pos: Pos,
    /// Its kind.
    pub kind: &'static dyn NodeKind,
    /// Its parsed options.
    pub config: Box<dyn NodeConfig>,
    /// Its output ports, without `error`.
    pub ports: Vec<String>,
    /// Its inputs.
    pub inputs: Vec<InputDef>,
    /// `state_key:` if given.
    pub state_key: Option<String>,
    /// `buffer:` (sinks only) and where it stands.
    pub buffer: Option<(BufferSettings, Pos)>,
    /// The node's mapping, for locating build errors.
    tree: Node,
}

impl NodeDef {
    /// The node's own options (without `type`, `inputs` and the other common keys) as
    /// JSON, after interpolation: what a hot reload compares.
    pub fn options_json(&self) -> serde_json::Value {
        self.tree.to_json()
    }
}

/// One resolved input of a node.
#[derive(Clone, Debug)]
pub struct InputDef {
    /// The producing node.
    pub node: String,
    /// The producing node's port.
    pub port: String,
    /// Where the reference stands.
    pub pos: Pos,
    /// Edge capacity.
    pub capacity: usize,
    /// Edge overflow policy.
    pub overflow: Overflow,
}

/// Loads, interpolates and validates flow files from disk.
pub fn load(paths: &[PathBuf], env: &dyn Env) -> Result<FlowSet, Diagnostics> {
    let mut sources = Vec::new();
    let mut diagnostics = Diagnostics::default();
    for path in paths {
        match std::fs::read_to_string(path) {
            Ok(text) => sources.push((path.clone(), text)),
            Err(e) => diagnostics.push(diag::unreadable(path, &e)),
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    load_sources(sources, env)
}

/// Loads, interpolates and validates flow files given as `(path, text)`.
pub fn load_sources(
    sources: Vec<(PathBuf, String)>,
    env: &dyn Env,
) -> Result<FlowSet, Diagnostics> {
    let mut loader = Loader::default();
    for (path, text) in sources {
        let file = Arc::new(SourceFile { path, text });
        loader.file(&file, env);
    }
    loader.finish()
}

#[derive(Default)]
struct Loader {
    diagnostics: Diagnostics,
    flows: Vec<FlowDef>,
    flow_names: HashMap<String, (Arc<SourceFile>, Pos)>,
    settings: Settings,
    settings_at: Option<(Arc<SourceFile>, Pos)>,
}

impl Loader {
    fn error(&mut self, file: &Arc<SourceFile>, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::at(file, pos, message));
    }

    fn file(&mut self, file: &Arc<SourceFile>, env: &dyn Env) {
        let mut root = match tree::parse(&file.text) {
            Ok(root) => root,
            Err(e) => {
                let pos = e.pos.unwrap_or(Pos { line: 1, col: 1 });
                self.error(file, pos, format!("invalid YAML: {}", e.message));
                return;
            }
        };
        let mut interpolation_errors = Vec::new();
        interpolate::interpolate(&mut root, env, &mut interpolation_errors);
        for e in interpolation_errors {
            self.error(file, e.pos, e.message);
        }
        let Value::Map(entries) = &root.value else {
            self.error(
                file,
                root.pos,
                "a flow file is a mapping with `version:` and `flows:`",
            );
            return;
        };
        self.duplicate_keys(file, entries, "key");
        let mut version_seen = false;
        for (key, value) in entries {
            match key.name.as_str() {
                "version" => {
                    version_seen = true;
                    if value.value != Value::Int(FORMAT_VERSION) {
                        self.error(file, value.pos, format!("unsupported version: this headwater reads `version: {FORMAT_VERSION}`"));
                    }
                }
                "flows" => self.flows(file, value),
                "data_dir" | "broker" | "mosquitto_conf" | "api" | "reload" => {
                    self.settings(file, &key.name, key.pos, value)
                }
                other => {
                    let message = format!(
                        "unknown top-level key `{other}`{}; expected `version`, `flows`, `broker`, `mosquitto_conf`, `api`, `reload` or `data_dir`",
                        suggest(
                            other,
                            &[
                                "version",
                                "flows",
                                "broker",
                                "mosquitto_conf",
                                "api",
                                "reload",
                                "data_dir"
                            ]
                        )
                    );
                    self.error(file, key.pos, message);
                }
            }
        }
        if !version_seen {
            self.error(
                file,
                root.pos,
                format!("missing `version: {FORMAT_VERSION}` at the top of the file"),
            );
        }
    }

    fn settings(&mut self, file: &Arc<SourceFile>, key: &str, pos: Pos, value: &Node) {
        if let Some((other, other_pos)) = &self.settings_at
            && !Arc::ptr_eq(other, file)
        {
            let message = format!(
                "process settings are already given in {}:{}:{}; keep them in one file",
                other.path.display(),
                other_pos.line,
                other_pos.col
            );
            self.error(file, pos, message);
            return;
        }
        self.settings_at = Some((file.clone(), pos));
        if key == "broker" {
            if self.settings.broker.is_some() {
                self.error(
                    file,
                    pos,
                    "`broker` and `mosquitto_conf` both configure the broker; keep one".to_string(),
                );
                return;
            }
            self.broker_settings(file, value);
            return;
        }
        if key == "api" {
            self.api_settings(file, value);
            return;
        }
        if key == "reload" {
            self.reload_settings(file, value);
            return;
        }
        let Some(path) = value.as_str() else {
            self.error(
                file,
                value.pos,
                format!("`{key}` must be a path, found {}", value.kind_name()),
            );
            return;
        };
        let base = file.path.parent().unwrap_or(Path::new("."));
        if key == "data_dir" {
            self.settings.data_dir = Some(base.join(path));
            return;
        }
        if self.settings.broker.is_some() {
            self.error(
                file,
                pos,
                "`broker` and `mosquitto_conf` both configure the broker; keep one".to_string(),
            );
            return;
        }
        match crate::broker::mosquitto_conf::load(&base.join(path)) {
            Ok(loaded) => {
                // The flow file's own `data_dir` wins over `persistence_location`.
                if self.settings.data_dir.is_none() {
                    self.settings.data_dir = loaded.data_dir;
                }
                self.settings.broker_warnings =
                    loaded.warnings.iter().map(ToString::to_string).collect();
                self.settings.broker = Some(loaded.config);
            }
            Err(e) => self.error(file, value.pos, format!("`mosquitto_conf`: {e}")),
        }
    }

    fn api_settings(&mut self, file: &Arc<SourceFile>, value: &Node) {
        let mut config =
            match serde_path_to_error::deserialize::<_, crate::api::ApiConfig>(value.to_json()) {
                Ok(config) => config,
                Err(e) => {
                    let pos = value.locate(&tree::parse_error_path(e.path()));
                    let message = serde_message(&e.into_inner().to_string());
                    self.error(file, pos, format!("`api`: {message}"));
                    return;
                }
            };
        config.resolve_paths(file.path.parent().unwrap_or(Path::new(".")));
        for issue in config.validate() {
            let pos = value.get(issue.key).map_or(value.pos, |n| n.pos);
            self.error(file, pos, format!("`api.{}`: {}", issue.key, issue.message));
        }
        self.settings.api = Some(config);
    }

    fn reload_settings(&mut self, file: &Arc<SourceFile>, value: &Node) {
        use crate::engine::reload::ReloadConfig;
        match serde_path_to_error::deserialize::<_, ReloadConfig>(value.to_json()) {
            Ok(config) => {
                for (key, message) in config.validate() {
                    let pos = value.get(key).map_or(value.pos, |n| n.pos);
                    self.error(file, pos, format!("`reload.{key}`: {message}"));
                }
                self.settings.reload = Some(config);
            }
            Err(e) => {
                let path = tree::parse_error_path(e.path());
                let message = serde_message(&e.into_inner().to_string());
                let pos = unknown_field_pos(value, &path, &message);
                self.error(file, pos, format!("`reload`: {message}"));
            }
        }
    }

    fn broker_settings(&mut self, file: &Arc<SourceFile>, value: &Node) {
        use crate::broker::BrokerConfig;
        let config = match serde_path_to_error::deserialize::<_, BrokerConfig>(value.to_json()) {
            Ok(config) => config,
            Err(e) => {
                let pos = value.locate(&tree::parse_error_path(e.path()));
                self.error(
                    file,
                    pos,
                    format!("`broker`: {}", serde_message(&e.into_inner().to_string())),
                );
                return;
            }
        };
        let mut names = std::collections::HashSet::new();
        for (i, bridge) in config.bridges.iter().enumerate() {
            let pos = value
                .get("bridges")
                .and_then(|b| match &b.value {
                    tree::Value::Seq(items) => items.get(i),
                    _ => None,
                })
                .map_or(value.pos, |n| n.pos);
            for problem in crate::broker::bridge::validate(bridge) {
                self.error(file, pos, format!("broker.bridges[{i}].{problem}"));
            }
            // Two bridges with one name would share one local session and take it
            // from each other forever.
            let id = crate::broker::bridge::remote_client_id(bridge, "");
            if !names.insert(id) {
                self.error(
                    file,
                    pos,
                    format!(
                        "`broker.bridges[{i}]`: a second bridge named `{}`; give each bridge its own `connection` (or `remote_clientid`)",
                        bridge.connection
                    ),
                );
            }
        }
        // Mosquitto 2's rule: anonymous access only on loopback unless said outright
        // (or clients authenticate: a password file, or certificates as identities).
        if config.allow_anonymous != Some(true) {
            for (i, listener) in config.listeners.iter().enumerate() {
                let authenticated = if config.per_listener_settings {
                    listener.allow_anonymous == Some(false) || listener.password_file.is_some()
                } else {
                    config.password_file.is_some()
                } || (listener.tls.require_certificate
                    && listener.tls.use_identity_as_username);
                if authenticated
                    || (config.per_listener_settings && listener.allow_anonymous == Some(true))
                {
                    continue;
                }
                let loopback = listener
                    .host
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(listener.host == "localhost");
                if !loopback {
                    let pos = value
                        .get("listeners")
                        .and_then(|l| match &l.value {
                            tree::Value::Seq(items) => items.get(i),
                            _ => None,
                        })
                        .map_or(value.pos, |n| n.pos);
                    self.error(
                        file,
                        pos,
                        format!(
                            "listener {}:{} is reachable beyond this machine and has no authentication; write `allow_anonymous: true` under `broker:` to accept anyone",
                            listener.host, listener.port
                        ),
                    );
                }
            }
        }
        self.settings.broker = Some(config);
    }

    fn duplicate_keys(
        &mut self,
        file: &Arc<SourceFile>,
        entries: &[(tree::Key, Node)],
        what: &str,
    ) {
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (key, _) in entries {
            if let Some(first) = seen.get(key.name.as_str()) {
                let message = format!(
                    "duplicate {what} `{}` (first defined at line {})",
                    key.name, first.line
                );
                self.error(file, key.pos, message);
            } else {
                seen.insert(&key.name, key.pos);
            }
        }
    }

    fn flows(&mut self, file: &Arc<SourceFile>, flows: &Node) {
        let Value::Map(entries) = &flows.value else {
            self.error(
                file,
                flows.pos,
                format!(
                    "`flows` must be a mapping of flow names to flows, found {}",
                    flows.kind_name()
                ),
            );
            return;
        };
        self.duplicate_keys(file, entries, "flow");
        let mut seen = HashSet::new();
        for (key, flow) in entries {
            if !seen.insert(key.name.as_str()) {
                continue;
            }
            if let Err(message) = check_name(&key.name, "flow") {
                self.error(file, key.pos, message);
                continue;
            }
            if let Some((other, pos)) = self.flow_names.get(&key.name) {
                let message = format!(
                    "flow `{}` is already defined in {}:{}:{}",
                    key.name,
                    other.path.display(),
                    pos.line,
                    pos.col
                );
                self.error(file, key.pos, message);
                continue;
            }
            self.flow_names
                .insert(key.name.clone(), (file.clone(), key.pos));
            if let Some(def) = self.flow(file, &key.name, key.pos, flow) {
                self.flows.push(def);
            }
        }
    }

    fn flow(
        &mut self,
        file: &Arc<SourceFile>,
        name: &str,
        pos: Pos,
        flow: &Node,
    ) -> Option<FlowDef> {
        let Value::Map(entries) = &flow.value else {
            self.error(
                file,
                flow.pos,
                format!(
                    "flow `{name}` must be a mapping with `nodes:`, found {}",
                    flow.kind_name()
                ),
            );
            return None;
        };
        self.duplicate_keys(file, entries, "key");
        let mut delivery = Delivery::default();
        let mut nodes_tree = None;
        for (key, value) in entries {
            match key.name.as_str() {
                "nodes" => nodes_tree = Some(value),
                "description" => {}
                "delivery" => match serde_json::from_value::<Delivery>(value.to_json()) {
                    Ok(d) => delivery = d,
                    Err(_) => self.error(
                        file,
                        value.pos,
                        "`delivery` must be `at_least_once` or `at_most_once`",
                    ),
                },
                other => {
                    let expected = ["nodes", "delivery", "description"];
                    let message = format!(
                        "unknown key `{other}` in flow `{name}`{}; expected one of `nodes`, `delivery`, `description`",
                        suggest(other, &expected)
                    );
                    self.error(file, key.pos, message);
                }
            }
        }
        let Some(nodes_tree) = nodes_tree else {
            self.error(file, pos, format!("flow `{name}` has no `nodes:`"));
            return None;
        };
        let Value::Map(node_entries) = &nodes_tree.value else {
            self.error(
                file,
                nodes_tree.pos,
                format!(
                    "`nodes` must be a mapping of node names to nodes, found {}",
                    nodes_tree.kind_name()
                ),
            );
            return None;
        };
        self.duplicate_keys(file, node_entries, "node name");

        // First pass: each node on its own. Second pass: the wiring between them.
        let mut nodes = Vec::new();
        let mut raw_inputs = Vec::new();
        let mut seen = HashSet::new();
        for (key, node) in node_entries {
            if !seen.insert(key.name.as_str()) {
                continue;
            }
            if let Some((def, inputs)) = self.node(file, name, &key.name, key.pos, node) {
                nodes.push(def);
                raw_inputs.push(inputs);
            }
        }
        // Names that failed to parse still exist for wiring purposes: an input naming
        // them is not reported as dangling on top of their own error.
        let known: HashSet<&str> = node_entries.iter().map(|(k, _)| k.name.as_str()).collect();
        for (i, inputs) in raw_inputs.into_iter().enumerate() {
            let resolved = self.resolve_inputs(file, &nodes, i, inputs, &known);
            nodes[i].inputs = resolved;
        }
        // Both run on the inputs that resolved, so they add no noise about bad ones.
        self.cycles(file, &nodes);
        self.delivery(file, name, delivery, &nodes);
        Some(FlowDef {
            name: name.to_string(),
            file: file.clone(),
            pos,
            delivery,
            nodes,
        })
    }

    fn node(
        &mut self,
        file: &Arc<SourceFile>,
        flow: &str,
        name: &str,
        pos: Pos,
        node: &Node,
    ) -> Option<(NodeDef, RawInputs)> {
        if let Err(message) = check_name(name, "node") {
            self.error(file, pos, message);
            return None;
        }
        let Value::Map(entries) = &node.value else {
            self.error(
                file,
                node.pos,
                format!(
                    "node `{name}` must be a mapping with a `type:`, found {}",
                    node.kind_name()
                ),
            );
            return None;
        };
        self.duplicate_keys(file, entries, "option");
        let Some(type_node) = node.get("type") else {
            self.error(file, pos, format!("node `{name}` has no `type:`"));
            return None;
        };
        let Some(type_name) = type_node.as_str() else {
            self.error(
                file,
                type_node.pos,
                format!("`type` must be a string, found {}", type_node.kind_name()),
            );
            return None;
        };
        let Some(kind) = registry::lookup(type_name) else {
            let message = format!(
                "unknown node type `{type_name}`{}",
                suggest(type_name, &registry::type_names()).if_empty_then(|| format!(
                    "; known types: {}",
                    registry::type_names().join(", ")
                ))
            );
            self.error(file, type_node.pos, message);
            return None;
        };

        let queue = self.queue(file, node.get("queue"));
        let raw_inputs = self.raw_inputs(file, name, kind, node, queue);
        let state_key = match node.get("state_key") {
            Some(n) => match n.as_str() {
                Some(s) if !s.is_empty() && !s.contains('\0') => Some(s.to_string()),
                _ => {
                    self.error(
                        file,
                        n.pos,
                        "`state_key` must be a non-empty string without NUL characters",
                    );
                    None
                }
            },
            None => None,
        };

        let buffer = self.buffer(file, name, kind, node.entry("buffer"));

        let options = Node {
            pos: node.pos,
            value: Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| !COMMON_NODE_KEYS.contains(&k.name.as_str()))
                    .cloned()
                    .collect(),
            ),
        };
        let config = match kind.parse(options.to_json()) {
            Ok(config) => config,
            Err(issues) => {
                for issue in issues {
                    let (pos, message) = self.locate_issue(file, &options, &issue, kind);
                    self.error(file, pos, format!("{flow}/{name}: {message}"));
                }
                return None;
            }
        };
        let ports = config.ports();
        Some((
            NodeDef {
                name: name.to_string(),
                pos,
                kind,
                config,
                ports,
                inputs: Vec::new(),
                state_key,
                buffer,
                tree: options,
            },
            raw_inputs,
        ))
    }

    /// Turns a config issue's path into a file position and a message.
    fn locate_issue(
        &self,
        file: &Arc<SourceFile>,
        options: &Node,
        issue: &ConfigIssue,
        kind: &dyn NodeKind,
    ) -> (Pos, String) {
        let path = parse_issue_path(&issue.path);
        let mut pos = options.locate(&path);
        let mut message = issue.message.clone();
        // serde reports an unknown field at its parent: point at the field itself.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
        {
            let mut parent = path.clone();
            if parent.last() != Some(&PathSegment::Key(field.clone())) {
                parent.push(PathSegment::Key(field.clone()));
            }
            pos = options.locate_key(&parent);
            let expected = message
                .split_once(", expected ")
                .map(|(_, e)| format!("; expected {e}"))
                .unwrap_or_default();
            message = format!(
                "unknown option `{field}` for type `{}`{expected}",
                kind.type_name()
            );
        } else if let Some(missing) = message.strip_prefix("missing field `") {
            let field = missing.split('`').next().unwrap_or_default();
            message = format!("missing option `{field}` for type `{}`", kind.type_name());
        } else if !issue.path.is_empty() && issue.inner.is_none() {
            message = format!("`{}`: {message}", issue.path);
        }
        if let Some((line, col)) = issue.inner {
            pos = inner_pos(file, pos, line, col);
        }
        (pos, message)
    }

    /// `buffer:` of a node: parsed, and refused on anything but a sink.
    fn buffer(
        &mut self,
        file: &Arc<SourceFile>,
        name: &str,
        kind: &dyn NodeKind,
        entry: Option<(&tree::Key, &Node)>,
    ) -> Option<(BufferSettings, Pos)> {
        let (key, at) = entry?;
        if kind.role() != Role::Sink {
            self.error(
                file,
                key.pos,
                format!(
                    "`buffer` is for sinks; node `{name}` ({}) is not one: put the buffer on the sink it feeds",
                    kind.type_name()
                ),
            );
            return None;
        }
        match serde_path_to_error::deserialize::<_, BufferSettings>(at.to_json()) {
            Ok(settings) if settings.max_size.0 == 0 => {
                let pos = at.get("max_size").map_or(at.pos, |n| n.pos);
                self.error(file, pos, "`max_size` must be above 0, e.g. `64MiB`");
                None
            }
            Ok(settings) => Some((settings, key.pos)),
            Err(e) => {
                let path = tree::parse_error_path(e.path());
                let message = serde_message(&e.into_inner().to_string());
                let pos = unknown_field_pos(at, &path, &message);
                self.error(file, pos, format!("`buffer`: {message}"));
                None
            }
        }
    }

    fn queue(&mut self, file: &Arc<SourceFile>, queue: Option<&Node>) -> QueueSettings {
        let Some(queue) = queue else {
            return QueueSettings::default();
        };
        match serde_path_to_error::deserialize::<_, QueueSettings>(queue.to_json()) {
            Ok(q) => self.check_queue(file, queue, q),
            Err(e) => {
                let pos = queue.locate(&tree::parse_error_path(e.path()));
                self.error(
                    file,
                    pos,
                    format!("`queue`: {}", serde_message(&e.into_inner().to_string())),
                );
                QueueSettings::default()
            }
        }
    }

    fn check_queue(
        &mut self,
        file: &Arc<SourceFile>,
        at: &Node,
        q: QueueSettings,
    ) -> QueueSettings {
        if q.capacity == 0 || q.capacity > 1_000_000 {
            let pos = at.get("capacity").map_or(at.pos, |n| n.pos);
            self.error(file, pos, "`capacity` must be between 1 and 1000000");
        }
        q
    }

    fn raw_inputs(
        &mut self,
        file: &Arc<SourceFile>,
        name: &str,
        kind: &dyn NodeKind,
        node: &Node,
        queue: QueueSettings,
    ) -> RawInputs {
        let Some((key, inputs)) = node.entry("inputs") else {
            if kind.role() != Role::Source {
                self.error(
                    file,
                    node.pos,
                    format!("node `{name}` ({}) needs `inputs:`", kind.type_name()),
                );
            }
            return Vec::new();
        };
        if kind.role() == Role::Source {
            self.error(
                file,
                key.pos,
                format!(
                    "`{name}` is a source ({}) and takes no inputs",
                    kind.type_name()
                ),
            );
            return Vec::new();
        }
        let items: Vec<&Node> = match &inputs.value {
            Value::Str(_) | Value::Map(_) => vec![inputs],
            Value::Seq(items) => items.iter().collect(),
            _ => {
                self.error(
                    file,
                    inputs.pos,
                    "`inputs` must be a node name, `node.port`, or a list of them",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::Str(reference) => out.push(RawInput {
                    reference: reference.clone(),
                    pos: item.pos,
                    queue,
                }),
                Value::Map(_) => {
                    match serde_path_to_error::deserialize::<_, InputSpec>(item.to_json()) {
                        Ok(spec) => {
                            let queue = QueueSettings {
                                capacity: spec.capacity.unwrap_or(queue.capacity),
                                overflow: spec.overflow.unwrap_or(queue.overflow),
                            };
                            let queue = self.check_queue(file, item, queue);
                            let pos = item.get("from").map_or(item.pos, |n| n.pos);
                            out.push(RawInput {
                                reference: spec.from,
                                pos,
                                queue,
                            });
                        }
                        Err(e) => {
                            let path = tree::parse_error_path(e.path());
                            let message = serde_message(&e.into_inner().to_string());
                            let pos = unknown_field_pos(item, &path, &message);
                            self.error(file, pos, format!("input: {message}"));
                        }
                    }
                }
                _ => self.error(
                    file,
                    item.pos,
                    format!(
                        "an input must be `node`, `node.port` or a mapping with `from:`, found {}",
                        item.kind_name()
                    ),
                ),
            }
        }
        out
    }

    fn resolve_inputs(
        &mut self,
        file: &Arc<SourceFile>,
        nodes: &[NodeDef],
        consumer: usize,
        raw: RawInputs,
        known: &HashSet<&str>,
    ) -> Vec<InputDef> {
        let mut resolved = Vec::new();
        for input in raw {
            let (node_name, port) = match input.reference.split_once('.') {
                Some((n, p)) => (n, Some(p)),
                None => (input.reference.as_str(), None),
            };
            let Some(producer) = nodes.iter().find(|n| n.name == node_name) else {
                if !known.contains(node_name) {
                    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                    let message = format!(
                        "input `{}` names no node in this flow{}",
                        input.reference,
                        suggest(node_name, &names)
                    );
                    self.error(file, input.pos, message);
                }
                continue;
            };
            let role = producer.kind.role();
            let port = match port {
                Some("error") => "error".to_string(),
                Some(p) if producer.ports.iter().any(|q| q == p) => p.to_string(),
                Some(p) => {
                    let mut ports = producer.ports.clone();
                    ports.push("error".into());
                    let message = format!(
                        "node `{node_name}` has no port `{p}`; its ports are: {}",
                        ports.join(", ")
                    );
                    self.error(file, input.pos, message);
                    continue;
                }
                None if role == Role::Sink => {
                    let message = format!(
                        "`{node_name}` is a sink ({}) and has no output; only its error port can be an input: `{node_name}.error`",
                        producer.kind.type_name()
                    );
                    self.error(file, input.pos, message);
                    continue;
                }
                None if producer.ports.len() == 1 => producer.ports[0].clone(),
                None => {
                    let options: Vec<String> = producer
                        .ports
                        .iter()
                        .map(|p| format!("`{node_name}.{p}`"))
                        .collect();
                    let message = format!(
                        "node `{node_name}` has several ports; name one: {}",
                        options.join(", ")
                    );
                    self.error(file, input.pos, message);
                    continue;
                }
            };
            if producer.name == nodes[consumer].name {
                self.error(
                    file,
                    input.pos,
                    format!("cycle: `{node_name}` is its own input"),
                );
                continue;
            }
            resolved.push(InputDef {
                node: producer.name.clone(),
                port,
                pos: input.pos,
                capacity: input.queue.capacity,
                overflow: input.queue.overflow,
            });
        }
        resolved
    }

    /// Reports each cycle once, at the input that closes it.
    fn cycles(&mut self, file: &Arc<SourceFile>, nodes: &[NodeDef]) {
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut color = vec![0u8; nodes.len()];
        let mut stack: Vec<usize> = Vec::new();
        let mut found = Vec::new();
        fn visit(
            i: usize,
            nodes: &[NodeDef],
            index: &HashMap<&str, usize>,
            color: &mut [u8],
            stack: &mut Vec<usize>,
            found: &mut Vec<(Pos, String)>,
        ) {
            color[i] = 1;
            stack.push(i);
            for input in &nodes[i].inputs {
                let j = index[input.node.as_str()];
                match color[j] {
                    0 => visit(j, nodes, index, color, stack, found),
                    1 => {
                        // The stack runs consumer -> producer; data flows the other way.
                        // Print it in data order, from the producer of this input.
                        let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                        let in_data_order: Vec<&str> = stack[start..]
                            .iter()
                            .rev()
                            .map(|&k| nodes[k].name.as_str())
                            .collect();
                        let mut path = vec![nodes[j].name.as_str()];
                        path.extend(&in_data_order[..in_data_order.len() - 1]);
                        path.push(nodes[j].name.as_str());
                        found.push((input.pos, format!("cycle: {}", path.join(" -> "))));
                    }
                    _ => {}
                }
            }
            stack.pop();
            color[i] = 2;
        }
        for i in 0..nodes.len() {
            if color[i] == 0 {
                visit(i, nodes, &index, &mut color, &mut stack, &mut found);
            }
        }
        for (pos, message) in found {
            self.error(file, pos, message);
        }
    }

    /// A lossy edge downstream of a source that holds acknowledgements would lose
    /// acknowledged messages: refuse it unless the flow says `delivery: at_most_once`.
    fn delivery(
        &mut self,
        file: &Arc<SourceFile>,
        flow: &str,
        delivery: Delivery,
        nodes: &[NodeDef],
    ) {
        if delivery == Delivery::AtMostOnce {
            return;
        }
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut memo: HashMap<usize, Option<String>> = HashMap::new();
        fn acking_source(
            i: usize,
            nodes: &[NodeDef],
            index: &HashMap<&str, usize>,
            memo: &mut HashMap<usize, Option<String>>,
        ) -> Option<String> {
            if let Some(known) = memo.get(&i) {
                return known.clone();
            }
            memo.insert(i, None);
            let node = &nodes[i];
            let found = if node.config.holds_acks() {
                Some(node.name.clone())
            } else {
                node.inputs
                    .iter()
                    .find_map(|input| acking_source(index[input.node.as_str()], nodes, index, memo))
            };
            memo.insert(i, found.clone());
            found
        }
        for node in nodes {
            if let Some((buffer, pos)) = &node.buffer
                && buffer.when_full == engine::WhenFull::DropOldest
                && let Some(source) = node.inputs.iter().find_map(|input| {
                    acking_source(index[input.node.as_str()], nodes, &index, &mut memo)
                })
            {
                let message = format!(
                    "`when_full: drop_oldest` may drop buffered messages that source `{source}` acknowledges; set `delivery: at_most_once` on flow `{flow}` or use `when_full: block`"
                );
                self.error(file, *pos, message);
            }
            for input in &node.inputs {
                if !input.overflow.is_lossy() {
                    continue;
                }
                if let Some(source) =
                    acking_source(index[input.node.as_str()], nodes, &index, &mut memo)
                {
                    let message = format!(
                        "overflow policy `{}` may drop messages that source `{source}` acknowledges; set `delivery: at_most_once` on flow `{flow}` or use `block`",
                        overflow_name(input.overflow)
                    );
                    self.error(file, input.pos, message);
                }
            }
        }
    }

    fn finish(mut self) -> Result<FlowSet, Diagnostics> {
        if self.diagnostics.is_empty() {
            Ok(FlowSet {
                flows: self.flows,
                settings: self.settings,
            })
        } else {
            self.diagnostics.sort();
            Err(self.diagnostics)
        }
    }
}

type RawInputs = Vec<RawInput>;

struct RawInput {
    reference: String,
    pos: Pos,
    queue: QueueSettings,
}

/// `buffer:` on a sink: a disk buffer between its inputs and the sink (see
/// docs/buffering.md).
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferSettings {
    /// Most bytes the buffer holds on disk (default `64MiB`).
    #[serde(default = "default_buffer_size")]
    pub max_size: values::ByteSize,
    /// When full: `block` (default: backpressure to the inputs) or `drop_oldest`
    /// (delete the oldest waiting entries; needs `delivery: at_most_once` after an
    /// acknowledging source).
    #[serde(default)]
    pub when_full: engine::WhenFull,
}

fn default_buffer_size() -> values::ByteSize {
    values::ByteSize(64 << 20)
}

impl BufferSettings {
    /// What the engine takes.
    pub fn options(&self) -> engine::BufferOptions {
        engine::BufferOptions {
            max_bytes: self.max_size.0,
            when_full: self.when_full,
        }
    }
}

/// `queue:` on a node: the default for its input edges.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Messages an input edge holds before its overflow policy applies.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// What happens when the edge is full.
    #[serde(default)]
    pub overflow: Overflow,
}

fn default_capacity() -> usize {
    engine::DEFAULT_CAPACITY
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            capacity: default_capacity(),
            overflow: Overflow::Block,
        }
    }
}

/// The long form of one input: `{ from: node.port, capacity: 64, overflow: drop_oldest }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `node` or `node.port`.
    pub from: String,
    /// Edge capacity (default: the node's `queue.capacity`).
    pub capacity: Option<usize>,
    /// Overflow policy (default: the node's `queue.overflow`).
    pub overflow: Option<Overflow>,
}

fn overflow_name(o: Overflow) -> &'static str {
    match o {
        Overflow::Block => "block",
        Overflow::DropOldest => "drop_oldest",
        Overflow::DropNewest => "drop_newest",
        Overflow::LatestPerTopic => "latest_per_topic",
    }
}

fn unknown_field_pos(at: &Node, path: &[PathSegment], message: &str) -> Pos {
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        let mut full = path.to_vec();
        if full.last() != Some(&PathSegment::Key(field.to_string())) {
            full.push(PathSegment::Key(field.to_string()));
        }
        at.locate_key(&full)
    } else {
        at.locate(path)
    }
}

/// Parses `a.b[2].c` into path segments.
fn parse_issue_path(path: &str) -> Vec<PathSegment> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(bracket) = rest.find('[') {
            if bracket > 0 {
                segments.push(PathSegment::Key(rest[..bracket].to_string()));
            }
            rest = &rest[bracket..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    segments.push(PathSegment::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else {
            segments.push(PathSegment::Key(rest.to_string()));
        }
    }
    segments
}

/// The file position of line:col inside an embedded text (a script) whose value starts
/// at `value`: a block scalar (`|`, `>`) starts on the next line at its indentation; a
/// one-line scalar starts after its opening quote, if any.
fn inner_pos(file: &SourceFile, value: Pos, line: u32, col: u32) -> Pos {
    let Some(first) = file.line(value.line) else {
        return value;
    };
    let at: String = first
        .chars()
        .skip(value.col.saturating_sub(1) as usize)
        .take(1)
        .collect();
    if at == "|" || at == ">" {
        let target = value.line + line;
        let indent = file
            .line(target)
            .map_or(0, |l| l.chars().take_while(|c| *c == ' ').count() as u32);
        Pos {
            line: target,
            col: indent + col,
        }
    } else if line <= 1 {
        let quote = u32::from(at == "\"" || at == "'");
        Pos {
            line: value.line,
            col: value.col + quote + col.saturating_sub(1),
        }
    } else {
        // The span starts at the text itself (serde-saphyr points block scalars at
        // their first content line): every line shares its indentation.
        Pos {
            line: value.line + line - 1,
            col: value.col + col.saturating_sub(1),
        }
    }
}

/// Validates a name of a flow or node: letters, digits, `_` and `-`.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{name}`: use letters, digits, `_` and `-` (a `.` separates a node from its port)"
        ))
    }
}

/// Shortens serde's messages where they are noisy.
pub fn serde_message(message: &str) -> String {
    message.to_string()
}

trait IfEmpty {
    fn if_empty_then(self, f: impl FnOnce() -> String) -> String;
}

impl IfEmpty for String {
    fn if_empty_then(self, f: impl FnOnce() -> String) -> String {
        if self.is_empty() { f() } else { self }
    }
}

/// `; did you mean `x`?` for the closest candidate within a small edit distance.
fn suggest(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min()
        .map(|(_, c)| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl FlowSet {
    /// Builds every node (compiling scripts and the like, no network IO) into the plan
    /// the engine runs. Build problems are located like validation problems.
    pub fn plan(&self, data_dir: &Path, clock: &Clock) -> Result<GraphPlan, Diagnostics> {
        let mut diagnostics = Diagnostics::default();
        let mut plan = GraphPlan::default();
        for flow in &self.flows {
            let base_dir = flow
                .file
                .path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let mut nodes = Vec::new();
            for node in &flow.nodes {
                let id = engine::NodeId::new(&flow.name, &node.name);
                let state_key = node.state_key.clone().unwrap_or_else(|| id.to_string());
                let cx = BuildContext {
                    state_key: state_key.clone(),
                    id,
                    base_dir: base_dir.clone(),
                    data_dir: data_dir.to_path_buf(),
                    clock: clock.clone(),
                };
                match node.config.build(&cx) {
                    Ok(factory) => nodes.push(NodePlan {
                        state_key,
                        buffer: node.buffer.as_ref().map(|(b, _)| b.options()),
                        name: node.name.clone(),
                        kind: node.kind.type_name(),
                        factory,
                        ports: node.ports.clone(),
                        inputs: node
                            .inputs
                            .iter()
                            .map(|i| InputPlan {
                                node: i.node.clone(),
                                port: i.port.clone(),
                                capacity: i.capacity,
                                overflow: i.overflow,
                            })
                            .collect(),
                    }),
                    Err(issues) => {
                        for issue in issues {
                            let loader = Loader::default();
                            let (pos, message) =
                                loader.locate_issue(&flow.file, &node.tree, &issue, node.kind);
                            diagnostics.push(Diagnostic::at(
                                &flow.file,
                                pos,
                                format!("{}/{}: {message}", flow.name, node.name),
                            ));
                        }
                    }
                }
            }
            plan.flows.push(FlowPlan {
                name: flow.name.clone(),
                nodes,
            });
        }
        if diagnostics.is_empty() {
            Ok(plan)
        } else {
            diagnostics.sort();
            Err(diagnostics)
        }
    }

    /// Edges of every flow as `(flow, producer, port, consumer)`, for `graph`.
    pub fn edges(&self) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        for flow in &self.flows {
            for node in &flow.nodes {
                for input in &node.inputs {
                    out.push((
                        flow.name.clone(),
                        input.node.clone(),
                        input.port.clone(),
                        node.name.clone(),
                    ));
                }
            }
        }
        out
    }

    /// Node types per flow, for `graph`.
    pub fn node_types(&self) -> BTreeMap<(String, String), &'static str> {
        self.flows
            .iter()
            .flat_map(|f| {
                f.nodes
                    .iter()
                    .map(move |n| ((f.name.clone(), n.name.clone()), n.kind.type_name()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_paths() {
        assert_eq!(
            parse_issue_path("rules[1].regex"),
            vec![
                PathSegment::Key("rules".into()),
                PathSegment::Index(1),
                PathSegment::Key("regex".into())
            ]
        );
        assert_eq!(parse_issue_path(""), vec![]);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("fliter", &["filter", "switch"]),
            "; did you mean `filter`?"
        );
        assert_eq!(suggest("zzz", &["filter", "switch"]), "");
    }

    #[test]
    fn inner_positions() {
        let file = SourceFile {
            path: "f".into(),
            text: "a:\n  rhai: |\n    let x = 1;\n    oops\n  b: \"x + \"\n".into(),
        };
        assert_eq!(
            inner_pos(&file, Pos { line: 2, col: 9 }, 2, 1),
            Pos { line: 4, col: 5 }
        );
        assert_eq!(
            inner_pos(&file, Pos { line: 5, col: 6 }, 1, 3),
            Pos { line: 5, col: 9 }
        );
        // A span at the first content line of the block.
        assert_eq!(
            inner_pos(&file, Pos { line: 3, col: 5 }, 2, 1),
            Pos { line: 4, col: 5 }
        );
    }
}
