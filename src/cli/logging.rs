//! Log set-up: human-readable lines, or one JSON object per line whose top level holds
//! the event's fields plus `flow` and `node` for every line logged inside a node (the
//! engine runs each node in a `node` span carrying both).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::LogFormat;

/// Installs the global subscriber; the level comes from `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // A second initialisation (tests calling main twice) is harmless: keep the first.
    let _ = match format {
        LogFormat::Text => {
            // Text lines already name the node (`node=flow/node`); the span would only
            // repeat it as a prefix.
            let text = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    !(meta.is_span() && meta.name() == "node")
                }));
            registry.with(text).try_init()
        }
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(JsonLines);
            registry.with(NodeFieldsLayer).with(json).try_init()
        }
    };
}

/// The `flow` and `node` of a `node` span, kept in the span's extensions.
#[derive(Default)]
struct NodeFields {
    flow: Option<String>,
    node: Option<String>,
}

impl Visit for NodeFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "flow" => self.flow = Some(format!("{value:?}")),
            "node" => self.node = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Records [`NodeFields`] when a `node` span is created.
struct NodeFieldsLayer;

impl<S> Layer<S> for NodeFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "node" {
            return;
        }
        let mut fields = NodeFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
}

/// An event's fields as JSON values.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

/// One JSON object per line: `timestamp`, `level`, `flow` and `node` (inside a node),
/// the event's fields (`message` included), `target`.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut map = serde_json::Map::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        map.insert("timestamp".into(), now.into());
        map.insert("level".into(), event.metadata().level().as_str().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<NodeFields>() {
                    if let Some(flow) = &fields.flow {
                        map.insert("flow".into(), flow.clone().into());
                    }
                    if let Some(node) = &fields.node {
                        map.insert("node".into(), node.clone().into());
                    }
                }
            }
        }
        event.record(&mut JsonFields(&mut map));
        map.insert("target".into(), event.metadata().target().into());
        writeln!(writer, "{}", serde_json::Value::Object(map))
    }
}
