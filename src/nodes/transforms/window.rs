//! `window`: aggregates a numeric message field over time or count windows, tumbling or
//! sliding, per topic or overall, and emits one JSON object per window
//! (`count`, `sum`, `avg`, `min`, `max`, `n`, `start`, `end`).
//!
//! Windows run on processing time: a sample belongs to the window of the moment the node
//! takes it, read from the engine's clock, never to the message's own timestamp (devices'
//! clocks drift, and late messages would keep windows open forever). Time windows are
//! aligned to the epoch, so `size: 1m` windows start on the minute and every topic shares
//! one schedule: one timer serves all of them.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::engine::edge::BATCH;
use crate::engine::fields::{FieldPath, MsgView, to_number};
use crate::engine::{Clock, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId};
use crate::flow::values::{HumanDuration, parse_duration};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `window` node. Give exactly one of `size` (a time window) and `count`
/// (a count window).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The field to aggregate (default `payload`): numbers, numeric strings (`"21.5"`)
    /// and booleans (0/1) count; a message without a number there goes to the `error`
    /// port.
    #[serde(default = "FieldPath::payload")]
    pub field: FieldPath,
    /// What to compute: one of `count`, `sum`, `avg`, `min`, `max`, or a list of them
    /// (default: all five). They become the keys of the output object, in this order.
    #[serde(default)]
    pub aggregate: Aggregates,
    /// A time window this long, aligned to the clock (`1m` windows start on the minute,
    /// UTC).
    pub size: Option<HumanDuration>,
    /// A count window of this many messages.
    #[schemars(range(min = 1))]
    pub count: Option<u64>,
    /// Makes the window sliding: emit every `slide` the aggregate of the last `size` (a
    /// duration) or, for count windows, every `slide` messages the aggregate of the last
    /// `count` (a number). Default: the window itself (tumbling windows).
    pub slide: Option<Slide>,
    /// Keep one window per topic and emit it with that topic (default true); `false`
    /// aggregates all messages in one window.
    #[serde(default = "yes")]
    pub per_topic: bool,
    /// Topic of the output when `per_topic` is false (default: the node's name).
    pub topic: Option<String>,
    /// Sliding time windows keep their samples: at most this many per window (default
    /// 100000); beyond it the oldest are dropped and reported as `dropped`.
    #[serde(default = "default_max_samples")]
    #[schemars(range(min = 1))]
    pub max_samples: usize,
    /// Most topics with an open window (default 10000); a message on a new topic beyond
    /// it goes to the `error` port.
    #[serde(default = "default_max_topics")]
    #[schemars(range(min = 1))]
    pub max_topics: usize,
}

fn yes() -> bool {
    true
}

fn default_max_samples() -> usize {
    100_000
}

fn default_max_topics() -> usize {
    10_000
}

/// One aggregate a window computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// How many samples the window holds.
    Count,
    /// Their sum.
    Sum,
    /// Their mean.
    Avg,
    /// The smallest.
    Min,
    /// The largest.
    Max,
}

impl Aggregate {
    fn key(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        }
    }
}

/// The aggregates of a window: written as one name or a list of names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregates(pub Vec<Aggregate>);

impl Default for Aggregates {
    fn default() -> Self {
        Aggregates(vec![
            Aggregate::Count,
            Aggregate::Sum,
            Aggregate::Avg,
            Aggregate::Min,
            Aggregate::Max,
        ])
    }
}

impl<'de> Deserialize<'de> for Aggregates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Aggregates;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an aggregate (`count`, `sum`, `avg`, `min`, `max`) or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Aggregates, E> {
                Aggregate::deserialize(v.into_deserializer()).map(|a| Aggregates(vec![a]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Aggregates, A::Error> {
                let mut all = Vec::new();
                while let Some(a) = seq.next_element::<Aggregate>()? {
                    all.push(a);
                }
                Ok(Aggregates(all))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Aggregates {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Aggregates".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let one = generator.subschema_for::<Aggregate>();
        schemars::json_schema!({
            "description": "An aggregate or a list of them: `count`, `sum`, `avg`, `min`, `max`",
            "anyOf": [one, { "type": "array", "items": one, "minItems": 1 }]
        })
    }
}

/// The step of a sliding window as written: a number (messages for count windows,
/// seconds for time windows) or a duration such as `10s`.
#[derive(Clone, Debug, PartialEq)]
pub enum Slide {
    /// A plain number.
    Number(f64),
    /// Text, a duration.
    Text(String),
}

impl<'de> Deserialize<'de> for Slide {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Slide;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `10s`, or a number of messages for count windows")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Slide, E> {
                Ok(Slide::Number(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Slide, E> {
                Ok(Slide::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Slide, E> {
                Ok(Slide::Number(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Slide, E> {
                Ok(Slide::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Slide {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Slide".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let duration = generator.subschema_for::<HumanDuration>();
        schemars::json_schema!({
            "description": "Step of a sliding window: a duration for time windows, a number of messages for count windows",
            "anyOf": [duration, { "type": "integer", "minimum": 1 }]
        })
    }
}

/// The window shape after validation; a `slide` equal to the window is tumbling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    TumblingTime { size_ms: i64 },
    SlidingTime { size_ms: i64, slide_ms: i64 },
    TumblingCount { count: u64 },
    SlidingCount { count: u64, slide: u64 },
}

impl WindowConfig {
    /// The shape, or what is wrong with `size`, `count` and `slide`.
    fn shape(&self) -> Result<Shape, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let shape = match (self.size, self.count) {
            (None, None) => {
                issues.push(ConfigIssue::new(
                    "",
                    "a window needs `size` (a duration) or `count` (a number of messages)",
                ));
                None
            }
            (Some(_), Some(_)) => {
                issues.push(ConfigIssue::new(
                    "count",
                    "give either `size` (a time window) or `count` (a count window), not both",
                ));
                None
            }
            (Some(size), None) => self.time_shape(size.get(), &mut issues),
            (None, Some(count)) => self.count_shape(count, &mut issues),
        };
        match shape {
            Some(shape) if issues.is_empty() => Ok(shape),
            _ => Err(issues),
        }
    }

    fn time_shape(&self, size: Duration, issues: &mut Vec<ConfigIssue>) -> Option<Shape> {
        if size < Duration::from_millis(1) {
            issues.push(ConfigIssue::new("size", "`size` must be at least 1ms"));
            return None;
        }
        let size_ms = millis(size);
        let Some(slide) = &self.slide else {
            return Some(Shape::TumblingTime { size_ms });
        };
        let text = match slide {
            Slide::Number(n) => n.to_string(),
            Slide::Text(t) => t.clone(),
        };
        let slide = match parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                issues.push(ConfigIssue::new("slide", e));
                return None;
            }
        };
        if slide < Duration::from_millis(1) {
            issues.push(ConfigIssue::new("slide", "`slide` must be at least 1ms"));
            return None;
        }
        let slide_ms = millis(slide);
        if slide_ms > size_ms {
            issues.push(ConfigIssue::new(
                "slide",
                "`slide` must not be longer than `size`: a sliding window emits every `slide` the aggregate of the last `size`",
            ));
            return None;
        }
        Some(if slide_ms == size_ms {
            Shape::TumblingTime { size_ms }
        } else {
            Shape::SlidingTime { size_ms, slide_ms }
        })
    }

    fn count_shape(&self, count: u64, issues: &mut Vec<ConfigIssue>) -> Option<Shape> {
        if count == 0 {
            issues.push(ConfigIssue::new("count", "`count` must be at least 1"));
            return None;
        }
        let slide = match &self.slide {
            None => return Some(Shape::TumblingCount { count }),
            Some(Slide::Number(n)) if n.fract() == 0.0 && *n >= 1.0 => *n as u64,
            Some(_) => {
                issues.push(ConfigIssue::new(
                    "slide",
                    "`slide` of a count window is a whole number of messages, at least 1, such as `2`",
                ));
                return None;
            }
        };
        if slide > count {
            issues.push(ConfigIssue::new(
                "slide",
                "`slide` must not be larger than `count`: a sliding window emits every `slide` messages the aggregate of the last `count`",
            ));
            return None;
        }
        if slide == count {
            return Some(Shape::TumblingCount { count });
        }
        if count > self.max_samples as u64 {
            issues.push(ConfigIssue::new(
                "count",
                format!(
                    "a sliding count window keeps its last `count` samples, at most `max_samples` ({}); lower `count` or raise `max_samples`",
                    self.max_samples
                ),
            ));
            return None;
        }
        Some(Shape::SlidingCount { count, slide })
    }
}

/// Whole milliseconds of `d`, saturating (durations are at most 1e10 s).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Config for WindowConfig {
    const TYPE: &'static str = "window";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Aggregates a numeric field (count, sum, avg, min, max) over time or count windows, tumbling or sliding, per topic";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = self.shape().err().unwrap_or_default();
        if self.aggregate.0.is_empty() {
            issues.push(ConfigIssue::new(
                "aggregate",
                "name at least one aggregate: `count`, `sum`, `avg`, `min` or `max`",
            ));
        }
        if self.per_topic && self.topic.is_some() {
            issues.push(ConfigIssue::new(
                "topic",
                "`topic` applies with `per_topic: false`; windows per topic keep their topic",
            ));
        }
        if self.max_samples == 0 {
            issues.push(ConfigIssue::new(
                "max_samples",
                "`max_samples` must be at least 1",
            ));
        }
        if self.max_topics == 0 {
            issues.push(ConfigIssue::new(
                "max_topics",
                "`max_topics` must be at least 1",
            ));
        }
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let issues = self.validate();
        if !issues.is_empty() {
            return Err(issues);
        }
        let shape = self.shape()?;
        let mut aggregates = Vec::new();
        for a in &self.aggregate.0 {
            if !aggregates.contains(a) {
                aggregates.push(*a);
            }
        }
        let settings = Arc::new(Settings {
            field: self.field.clone(),
            aggregates,
            shape,
            per_topic: self.per_topic,
            topic: self
                .topic
                .clone()
                .unwrap_or_else(|| cx.id.node.to_string())
                .into(),
            max_samples: self.max_samples,
            max_topics: self.max_topics,
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(settings.clone(), cx))
        }))
    }
}

/// Validated options, shared by every run of the node.
struct Settings {
    field: FieldPath,
    /// Without duplicates, in the order written.
    aggregates: Vec<Aggregate>,
    shape: Shape,
    per_topic: bool,
    /// The output topic when `per_topic` is false.
    topic: Arc<str>,
    max_samples: usize,
    max_topics: usize,
}

/// Running count, sum, min and max of samples.
#[derive(Clone, Copy, Debug)]
struct Agg {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Agg {
    fn new() -> Self {
        Agg {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, value: f64) {
        self.n += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    fn of<'a>(values: impl IntoIterator<Item = &'a f64>) -> Self {
        let mut agg = Agg::new();
        for v in values {
            agg.add(*v);
        }
        agg
    }
}

/// A number for JSON: integral values as integers (`6`, not `6.0`, as a JavaScript user
/// expects), non-finite ones (an overflowing sum) as null.
fn json_number(v: f64) -> Value {
    // 2^53: beyond it not every integer is exact in an f64.
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

/// One sample of a window that keeps its samples: arrival wall time and value.
type Sample = (i64, f64);

/// The open window of one topic.
enum TopicWindow {
    /// A tumbling time window starting at `start_ms`.
    TumblingTime { start_ms: i64, agg: Agg },
    /// The samples of the last `size`, plus what was added or dropped since the last
    /// emission (for the final flush and the `dropped` key).
    SlidingTime {
        samples: VecDeque<Sample>,
        added: u64,
        dropped: u64,
    },
    /// A tumbling count window: first and last arrival.
    TumblingCount {
        agg: Agg,
        first_ms: i64,
        last_ms: i64,
    },
    /// The last `count` samples and how many arrived since the last emission.
    SlidingCount {
        samples: VecDeque<Sample>,
        since_emit: u64,
    },
}

/// Every open window of a node run, by output topic.
struct Windows {
    settings: Arc<Settings>,
    /// By output topic; a BTreeMap so windows closing together emit in topic order.
    topics: BTreeMap<Arc<str>, TopicWindow>,
    /// Wall time (ms) of the next time-window emission; `None` when nothing is open.
    next_due_ms: Option<i64>,
    cap_log: CapLog,
}

/// Why a message could not join a window.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    NotANumber(String),
    #[error(
        "the window already tracks `max_topics` ({0}) topics; raise `max_topics` or set `per_topic: false`"
    )]
    TooManyTopics(usize),
}

impl Windows {
    fn new(settings: Arc<Settings>, id: NodeId) -> Self {
        Windows {
            settings,
            topics: BTreeMap::new(),
            next_due_ms: None,
            cap_log: CapLog::new(id),
        }
    }

    /// The value of the aggregated field of `msg`.
    fn value(&self, msg: &Msg) -> Result<f64, Refused> {
        let field = &self.settings.field;
        let view = MsgView::new(msg);
        let Some(value) = view.get(field) else {
            return Err(Refused::NotANumber(format!(
                "`{field}` is missing; the window needs a number there"
            )));
        };
        to_number(&value).filter(|v| v.is_finite()).ok_or_else(|| {
            let mut text = value.to_string();
            if text.len() > 64 {
                let cut = (0..=64)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push_str("...");
            }
            Refused::NotANumber(format!(
                "`{field}` is not a number: {text}; the window needs a number there"
            ))
        })
    }

    fn key(&self, msg: &Msg) -> Arc<str> {
        if self.settings.per_topic {
            msg.topic.clone()
        } else {
            self.settings.topic.clone()
        }
    }

    fn schedule(&mut self, due_ms: i64) {
        self.next_due_ms = Some(self.next_due_ms.map_or(due_ms, |d| d.min(due_ms)));
    }

    /// The payload of one window's output.
    fn output(&self, topic: &Arc<str>, agg: &Agg, span: (i64, i64), dropped: u64) -> Msg {
        let mut map = serde_json::Map::new();
        for a in &self.settings.aggregates {
            let value = match a {
                Aggregate::Count => Value::from(agg.n),
                Aggregate::Sum => json_number(agg.sum),
                Aggregate::Avg => json_number(agg.sum / agg.n as f64),
                Aggregate::Min => json_number(agg.min),
                Aggregate::Max => json_number(agg.max),
            };
            map.insert(a.key().to_string(), value);
        }
        map.insert("n".into(), Value::from(agg.n));
        map.insert("start".into(), Value::from(span.0));
        map.insert("end".into(), Value::from(span.1));
        if dropped > 0 {
            map.insert("dropped".into(), Value::from(dropped));
        }
        let payload = Bytes::from(Value::Object(map).to_string());
        Msg::new(topic.clone(), payload, span.1)
    }

    /// Adds a sample taken at `now_ms`; windows it completes go to `out`.
    fn absorb(
        &mut self,
        key: Arc<str>,
        value: f64,
        now_ms: i64,
        out: &mut Vec<Msg>,
    ) -> Result<(), Refused> {
        let settings = self.settings.clone();
        if !self.topics.contains_key(&key) {
            if self.topics.len() >= settings.max_topics {
                return Err(Refused::TooManyTopics(settings.max_topics));
            }
            let window = match settings.shape {
                Shape::TumblingTime { size_ms } => {
                    let start_ms = now_ms.div_euclid(size_ms) * size_ms;
                    self.schedule(start_ms + size_ms);
                    TopicWindow::TumblingTime {
                        start_ms,
                        agg: Agg::new(),
                    }
                }
                Shape::SlidingTime { slide_ms, .. } => {
                    self.schedule((now_ms.div_euclid(slide_ms) + 1) * slide_ms);
                    TopicWindow::SlidingTime {
                        samples: VecDeque::new(),
                        added: 0,
                        dropped: 0,
                    }
                }
                Shape::TumblingCount { .. } => TopicWindow::TumblingCount {
                    agg: Agg::new(),
                    first_ms: now_ms,
                    last_ms: now_ms,
                },
                Shape::SlidingCount { .. } => TopicWindow::SlidingCount {
                    samples: VecDeque::new(),
                    since_emit: 0,
                },
            };
            self.topics.insert(key.clone(), window);
        }
        let Some(window) = self.topics.get_mut(&key) else {
            return Ok(());
        };
        match (window, settings.shape) {
            (TopicWindow::TumblingTime { start_ms, agg }, Shape::TumblingTime { size_ms }) => {
                let window_start = now_ms.div_euclid(size_ms) * size_ms;
                // The clock passed the end before the timer fired: close the old window
                // first. (A clock stepped backwards keeps filling the current one.)
                if window_start > *start_ms {
                    let (old_start, old) = (*start_ms, *agg);
                    *start_ms = window_start;
                    *agg = Agg::new();
                    agg.add(value);
                    if old.n > 0 {
                        out.push(self.output(&key, &old, (old_start, old_start + size_ms), 0));
                    }
                    self.schedule(window_start + size_ms);
                } else {
                    agg.add(value);
                }
            }
            (
                TopicWindow::SlidingTime {
                    samples,
                    added,
                    dropped,
                },
                _,
            ) => {
                samples.push_back((now_ms, value));
                *added += 1;
                if samples.len() > settings.max_samples {
                    samples.pop_front();
                    *dropped += 1;
                    self.cap_log.count(&key, settings.max_samples);
                }
            }
            (
                TopicWindow::TumblingCount {
                    agg,
                    first_ms,
                    last_ms,
                },
                Shape::TumblingCount { count },
            ) => {
                if agg.n == 0 {
                    *first_ms = now_ms;
                }
                *last_ms = now_ms;
                agg.add(value);
                if agg.n >= count {
                    let (agg, span) = (*agg, (*first_ms, *last_ms));
                    self.topics.remove(&key);
                    out.push(self.output(&key, &agg, span, 0));
                }
            }
            (
                TopicWindow::SlidingCount {
                    samples,
                    since_emit,
                },
                Shape::SlidingCount { count, slide },
            ) => {
                samples.push_back((now_ms, value));
                if samples.len() as u64 > count {
                    samples.pop_front();
                }
                *since_emit += 1;
                if *since_emit >= slide {
                    *since_emit = 0;
                    let agg = Agg::of(samples.iter().map(|(_, v)| v));
                    let span = span_of(samples);
                    out.push(self.output(&key, &agg, span, 0));
                }
            }
            // A topic's window always has the node's shape.
            _ => {}
        }
        Ok(())
    }

    /// Emits the time windows due at `now_ms` and plans the next emission.
    fn fire(&mut self, now_ms: i64, out: &mut Vec<Msg>) {
        if self.next_due_ms.is_none_or(|due| due > now_ms) {
            return;
        }
        self.next_due_ms = None;
        let mut next = None::<i64>;
        let mut emitted = Vec::new();
        match self.settings.shape {
            Shape::TumblingTime { size_ms } => {
                self.topics.retain(|topic, window| {
                    let TopicWindow::TumblingTime { start_ms, agg } = window else {
                        return false;
                    };
                    let end = *start_ms + size_ms;
                    if end <= now_ms {
                        if agg.n > 0 {
                            emitted.push((topic.clone(), *agg, (*start_ms, end), 0));
                        }
                        // Closed: an idle topic costs nothing until it sends again.
                        false
                    } else {
                        next = Some(next.map_or(end, |n| n.min(end)));
                        true
                    }
                });
            }
            Shape::SlidingTime { size_ms, slide_ms } => {
                // Missed steps (a stalled process) are skipped: the latest one is emitted.
                let end = now_ms.div_euclid(slide_ms) * slide_ms;
                let start = end - size_ms;
                self.topics.retain(|topic, window| {
                    let TopicWindow::SlidingTime {
                        samples,
                        added,
                        dropped,
                    } = window
                    else {
                        return false;
                    };
                    while samples.front().is_some_and(|(at, _)| *at < start) {
                        samples.pop_front();
                    }
                    let agg = Agg::of(samples.iter().filter(|(at, _)| *at < end).map(|(_, v)| v));
                    if agg.n > 0 {
                        emitted.push((topic.clone(), agg, (start, end), *dropped));
                        *added = 0;
                        *dropped = 0;
                    }
                    !samples.is_empty()
                });
                if !self.topics.is_empty() {
                    next = Some(end + slide_ms);
                }
            }
            Shape::TumblingCount { .. } | Shape::SlidingCount { .. } => {}
        }
        self.next_due_ms = next;
        for (topic, agg, span, dropped) in emitted {
            out.push(self.output(&topic, &agg, span, dropped));
        }
    }

    /// Inputs closed: emits every window holding samples no output has covered yet, at
    /// once, with `end` = `now_ms` for time windows (they are cut short).
    fn flush(&mut self, now_ms: i64, out: &mut Vec<Msg>) {
        let topics = std::mem::take(&mut self.topics);
        for (topic, window) in topics {
            let emitted = match (window, self.settings.shape) {
                (TopicWindow::TumblingTime { start_ms, agg }, _) => {
                    Some((agg, (start_ms, now_ms.max(start_ms)), 0))
                }
                (
                    TopicWindow::SlidingTime {
                        samples,
                        added,
                        dropped,
                    },
                    Shape::SlidingTime { size_ms, .. },
                ) if added > 0 => {
                    let start = now_ms - size_ms;
                    let agg = Agg::of(
                        samples
                            .iter()
                            .filter(|(at, _)| *at >= start)
                            .map(|(_, v)| v),
                    );
                    Some((agg, (start, now_ms), dropped))
                }
                (
                    TopicWindow::TumblingCount {
                        agg,
                        first_ms,
                        last_ms,
                    },
                    _,
                ) => Some((agg, (first_ms, last_ms), 0)),
                (
                    TopicWindow::SlidingCount {
                        samples,
                        since_emit,
                    },
                    _,
                ) if since_emit > 0 => {
                    let agg = Agg::of(samples.iter().map(|(_, v)| v));
                    Some((agg, span_of(&samples), 0))
                }
                _ => None,
            };
            if let Some((agg, span, dropped)) = emitted
                && agg.n > 0
            {
                out.push(self.output(&topic, &agg, span, dropped));
            }
        }
        self.next_due_ms = None;
    }
}

/// First and last arrival of kept samples.
fn span_of(samples: &VecDeque<Sample>) -> (i64, i64) {
    (
        samples.front().map_or(0, |s| s.0),
        samples.back().map_or(0, |s| s.0),
    )
}

/// Logs samples dropped at the `max_samples` cap, at most once per interval, with the
/// number held back.
struct CapLog {
    id: NodeId,
    pending: u64,
    last: Option<Instant>,
}

impl CapLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn new(id: NodeId) -> Self {
        CapLog {
            id,
            pending: 0,
            last: None,
        }
    }

    fn count(&mut self, topic: &str, max_samples: usize) {
        self.pending += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= Self::INTERVAL)
        {
            tracing::warn!(
                node = %self.id,
                topic,
                max_samples,
                dropped = self.pending,
                "window holds `max_samples` samples, oldest dropped; raise `max_samples` or shorten `size`"
            );
            self.pending = 0;
            self.last = Some(now);
        }
    }
}

/// The monotonic instant at which the wall clock reads `wall_ms`.
fn instant_at(clock: &Clock, wall_ms: i64) -> Instant {
    let wait = wall_ms.saturating_sub(clock.wall_ms()).max(0);
    clock.now() + Duration::from_millis(wait.unsigned_abs())
}

async fn run(settings: Arc<Settings>, cx: NodeContext) -> Result<(), NodeError> {
    let mut windows = Windows::new(settings, cx.id.clone());
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut ready = Vec::new();
    let mut refused = Vec::new();
    loop {
        let due = windows.next_due_ms.map(|ms| instant_at(&cx.clock, ms));
        tokio::select! {
            // Close windows before taking samples that belong to the next ones.
            biased;
            () = cx.clock.sleep_until(due.unwrap_or_else(|| cx.clock.now())), if due.is_some() => {
                windows.fire(cx.clock.wall_ms(), &mut ready);
            }
            n = inbox.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    windows.flush(cx.clock.wall_ms(), &mut ready);
                    for msg in ready.drain(..) {
                        cx.emit(msg).await;
                    }
                    return Ok(());
                }
                cx.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                let now_ms = cx.clock.wall_ms();
                for msg in batch.drain(..) {
                    let absorbed = windows
                        .value(&msg)
                        .and_then(|v| windows.absorb(windows.key(&msg), v, now_ms, &mut ready));
                    match absorbed {
                        // Absorbed into the window. Until node state is durable (a later
                        // issue), this is where the input ends; see docs/nodes/window.md.
                        Ok(()) => msg.done(),
                        Err(reason) => refused.push((msg, reason)),
                    }
                }
            }
        }
        for msg in ready.drain(..) {
            cx.emit(msg).await;
        }
        for (msg, reason) in refused.drain(..) {
            cx.outputs.emit_error(msg, reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::engine::Outcome;
    use crate::engine::harness::NodeHarness;

    fn payloads(msgs: Vec<Msg>) -> Vec<String> {
        msgs.into_iter()
            .map(|m| {
                let p = m.payload_str().unwrap().to_string();
                m.done();
                p
            })
            .collect()
    }

    fn topics_and_payloads(msgs: Vec<Msg>) -> Vec<(String, String)> {
        msgs.into_iter()
            .map(|m| {
                let pair = (m.topic.to_string(), m.payload_str().unwrap().to_string());
                m.done();
                pair
            })
            .collect()
    }

    async fn advance_ms(h: &NodeHarness, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        h.settle().await;
    }

    async fn send(h: &NodeHarness, topic: &str, payload: &str) {
        h.send(Msg::new(topic, payload.to_string(), 0)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn tumbling_time_window_emits_exact_aggregates_on_the_clock() {
        // Start 3 s into a 10 s window: windows are aligned to the epoch.
        let mut h =
            NodeHarness::start("window", "size: 10s", Clock::virtual_at(1_003_000)).unwrap();
        for p in ["1", "2", "3"] {
            send(&h, "t", p).await;
        }
        h.settle().await;
        advance_ms(&h, 5_000).await;
        send(&h, "t", r#""4""#).await; // a numeric string counts
        h.settle().await;
        advance_ms(&h, 1_999).await;
        assert!(h.drain("out").is_empty(), "nothing before the window ends");
        advance_ms(&h, 1).await;
        assert_eq!(
            payloads(h.drain("out")),
            [
                r#"{"count":4,"sum":10,"avg":2.5,"min":1,"max":4,"n":4,"start":1000000,"end":1010000}"#
            ]
        );
        // The next window gets one sample late in it; an empty window emits nothing.
        advance_ms(&h, 9_000).await;
        send(&h, "t", "-1.5").await;
        h.settle().await;
        advance_ms(&h, 1_000).await;
        let out = h.drain("out");
        assert_eq!(out[0].timestamp_ms, 1_020_000);
        assert_eq!(
            payloads(out),
            [
                r#"{"count":1,"sum":-1.5,"avg":-1.5,"min":-1.5,"max":-1.5,"n":1,"start":1010000,"end":1020000}"#
            ]
        );
        advance_ms(&h, 30_000).await;
        assert!(h.drain("out").is_empty(), "empty windows emit nothing");
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn count_window_emits_every_count_messages() {
        let mut h = NodeHarness::start(
            "window",
            "count: 3\naggregate: [sum, max]\nfield: payload.v",
            Clock::virtual_at(0),
        )
        .unwrap();
        for (i, v) in [5, 7, 1, 2, 4].into_iter().enumerate() {
            send(&h, "t", &format!(r#"{{"v":{v}}}"#)).await;
            h.settle().await;
            advance_ms(&h, 100 * (i as u64 + 1)).await;
        }
        // Arrivals at 0, 100, 300, 600, 1000 ms.
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":13,"max":7,"n":3,"start":0,"end":300}"#]
        );
        send(&h, "t", r#"{"v":10}"#).await;
        h.settle().await;
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":16,"max":10,"n":3,"start":600,"end":1500}"#]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_time_window_emits_every_slide_over_the_last_size() {
        let mut h = NodeHarness::start(
            "window",
            "size: 30s\nslide: 10s\naggregate: [sum]",
            Clock::virtual_at(0),
        )
        .unwrap();
        send(&h, "t", "1").await; // at 0s
        h.settle().await;
        advance_ms(&h, 5_000).await;
        send(&h, "t", "2").await; // at 5s
        h.settle().await;
        advance_ms(&h, 5_000).await; // 10s: [-20s, 10s)
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":3,"n":2,"start":-20000,"end":10000}"#]
        );
        send(&h, "t", "4").await; // at 10s
        h.settle().await;
        advance_ms(&h, 10_000).await; // 20s
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":7,"n":3,"start":-10000,"end":20000}"#]
        );
        advance_ms(&h, 10_000).await; // 30s: the samples at 0s and 5s leave
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":7,"n":3,"start":0,"end":30000}"#]
        );
        advance_ms(&h, 10_000).await; // 40s
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":4,"n":1,"start":10000,"end":40000}"#]
        );
        advance_ms(&h, 10_000).await; // 50s: empty, and it stays quiet
        advance_ms(&h, 60_000).await;
        assert!(h.drain("out").is_empty());
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_count_window_emits_every_slide_messages() {
        let mut h = NodeHarness::start(
            "window",
            "count: 4\nslide: 2\naggregate: avg",
            Clock::virtual_at(0),
        )
        .unwrap();
        for v in 1..=7 {
            send(&h, "t", &v.to_string()).await;
        }
        h.settle().await;
        // After 2 (partial, as Flink's count windows), 4, 6 messages.
        assert_eq!(
            payloads(h.drain("out")),
            [
                r#"{"avg":1.5,"n":2,"start":0,"end":0}"#,
                r#"{"avg":2.5,"n":4,"start":0,"end":0}"#,
                r#"{"avg":4.5,"n":4,"start":0,"end":0}"#,
            ]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn windows_per_topic_or_one_for_all() {
        let mut h =
            NodeHarness::start("window", "count: 2\naggregate: sum", Clock::virtual_at(0)).unwrap();
        for (topic, v) in [("a", 1), ("b", 10), ("b", 20), ("a", 2)] {
            send(&h, topic, &v.to_string()).await;
        }
        h.settle().await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [
                ("b".into(), r#"{"sum":30,"n":2,"start":0,"end":0}"#.into()),
                ("a".into(), r#"{"sum":3,"n":2,"start":0,"end":0}"#.into()),
            ]
        );
        h.shutdown().await;

        let mut h = NodeHarness::start(
            "window",
            "size: 1s\naggregate: sum\nper_topic: false\ntopic: total",
            Clock::virtual_at(0),
        )
        .unwrap();
        for (topic, v) in [("a", 1), ("b", 10), ("c", 100)] {
            send(&h, topic, &v.to_string()).await;
        }
        h.settle().await;
        advance_ms(&h, 1_000).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [(
                "total".into(),
                r#"{"sum":111,"n":3,"start":0,"end":1000}"#.into()
            )]
        );
        h.shutdown().await;

        // Time windows of several topics close together, in topic order.
        let mut h =
            NodeHarness::start("window", "size: 1s\naggregate: max", Clock::virtual_at(0)).unwrap();
        for (topic, v) in [("z", 1), ("m", 2), ("a", 3), ("m", 5)] {
            send(&h, topic, &v.to_string()).await;
        }
        h.settle().await;
        advance_ms(&h, 1_000).await;
        let out = topics_and_payloads(h.drain("out"));
        assert_eq!(
            out.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            ["a", "m", "z"]
        );
        assert_eq!(out[1].1, r#"{"max":5,"n":2,"start":0,"end":1000}"#);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn non_numeric_values_go_to_the_error_port() {
        let mut h = NodeHarness::start(
            "window",
            "count: 2\nfield: payload.t\naggregate: count",
            Clock::virtual_at(0),
        )
        .unwrap();
        for p in [
            r#"{"t":"warm"}"#,
            r#"{"x":1}"#,
            "not json",
            r#"{"t":"NaN"}"#,
            r#"{"t":1}"#,
        ] {
            send(&h, "t", p).await;
        }
        h.settle().await;
        let errors = h.drain("error");
        assert_eq!(errors.len(), 4);
        assert_eq!(
            errors[0].headers.get("error").map(String::as_str),
            Some(r#"`payload.t` is not a number: "warm"; the window needs a number there"#)
        );
        assert_eq!(
            errors[1].headers.get("error").map(String::as_str),
            Some("`payload.t` is missing; the window needs a number there")
        );
        payloads(errors);
        assert!(
            h.drain("out").is_empty(),
            "the one number waits for a second"
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn absorbed_inputs_end_as_done_refused_ones_go_to_the_error_port() {
        let mut h = NodeHarness::start("window", "size: 1m", Clock::virtual_at(0)).unwrap();
        let (tx, rx) = mpsc::channel();
        for p in ["1", "oops"] {
            let tx = tx.clone();
            h.send(Msg::tracked("t", p, 0, move |o| tx.send((p, o)).unwrap()))
                .await;
        }
        h.settle().await;
        // Absorbed: done at once, long before its window closes.
        assert_eq!(rx.try_recv().unwrap(), ("1", Outcome::Done));
        assert!(
            rx.try_recv().is_err(),
            "the refused one is with the error port"
        );
        let errors = h.drain("error");
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].headers.get("error_node").map(String::as_str),
            Some("test/node")
        );
        // Whatever consumes the error port decides its outcome.
        errors.into_iter().for_each(|m| m.fail("dead-lettered"));
        assert_eq!(
            rx.try_recv().unwrap(),
            ("oops", Outcome::Failed("dead-lettered".into()))
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn closing_inputs_flushes_open_windows() {
        let mut h =
            NodeHarness::start("window", "size: 1m\naggregate: [sum]", Clock::virtual_at(0))
                .unwrap();
        send(&h, "a", "1").await;
        send(&h, "a", "2").await;
        h.settle().await;
        advance_ms(&h, 15_000).await;
        h.close_input();
        h.settle().await;
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"sum":3,"n":2,"start":0,"end":15000}"#]
        );
        assert_eq!(h.shutdown().await, crate::engine::ShutdownReport::Drained);

        let mut h =
            NodeHarness::start("window", "count: 5\naggregate: count", Clock::virtual_at(0))
                .unwrap();
        send(&h, "a", "1").await;
        h.settle().await;
        h.close_input();
        h.settle().await;
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"count":1,"n":1,"start":0,"end":0}"#]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sample_and_topic_caps() {
        let mut h = NodeHarness::start(
            "window",
            "size: 10s\nslide: 5s\naggregate: [min]\nmax_samples: 3\nmax_topics: 1",
            Clock::virtual_at(0),
        )
        .unwrap();
        for v in 1..=5 {
            send(&h, "a", &v.to_string()).await;
        }
        send(&h, "b", "1").await;
        h.settle().await;
        let errors = h.drain("error");
        assert_eq!(
            errors[0].headers.get("error").map(String::as_str),
            Some(
                "the window already tracks `max_topics` (1) topics; raise `max_topics` or set `per_topic: false`"
            )
        );
        payloads(errors);
        advance_ms(&h, 5_000).await;
        // 1 and 2 were dropped to keep 3 samples.
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"min":3,"n":3,"start":-5000,"end":5000,"dropped":2}"#]
        );
        advance_ms(&h, 5_000).await;
        assert_eq!(
            payloads(h.drain("out")),
            [r#"{"min":3,"n":3,"start":0,"end":10000}"#]
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("window", options, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(
            err("aggregate: sum"),
            "a window needs `size` (a duration) or `count` (a number of messages)"
        );
        assert_eq!(
            err("size: 1m\ncount: 3"),
            "count: give either `size` (a time window) or `count` (a count window), not both"
        );
        assert_eq!(
            err("count: 3\nslide: 4"),
            "slide: `slide` must not be larger than `count`: a sliding window emits every `slide` messages the aggregate of the last `count`"
        );
        assert_eq!(
            err("count: 3\nslide: 1s"),
            "slide: `slide` of a count window is a whole number of messages, at least 1, such as `2`"
        );
        assert_eq!(
            err("size: 1s\nslide: 0s\naggregate: []\ntopic: x"),
            "slide: `slide` must be at least 1ms; aggregate: name at least one aggregate: `count`, `sum`, `avg`, `min` or `max`; topic: `topic` applies with `per_topic: false`; windows per topic keep their topic"
        );
        assert_eq!(
            err("count: 200\nslide: 1\nmax_samples: 100"),
            "count: a sliding count window keeps its last `count` samples, at most `max_samples` (100); lower `count` or raise `max_samples`"
        );
        assert!(err("size: 1m\naggregate: median").contains("unknown variant `median`"));
        // A number is seconds for time windows, as everywhere durations are written.
        assert!(NodeHarness::start("window", "size: 1m\nslide: 30", Clock::system()).is_ok());
    }

    fn load_error(node: &str) -> Vec<String> {
        let yaml = format!(
            "\
version: 1
flows:
  f:
    nodes:
      tick: {{ type: timer, interval: 1s }}
      avg:
{node}
"
        );
        crate::flow::load_sources(
            vec![(std::path::PathBuf::from("f.yaml"), yaml)],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap()
        .headlines()
    }

    #[test]
    fn yaml_errors_are_located() {
        assert_eq!(
            load_error(
                "        type: window\n        inputs: [tick]\n        size: 1m\n        count: 10"
            ),
            [
                "f.yaml:10:16: f/avg: `count`: give either `size` (a time window) or `count` (a count window), not both"
            ]
        );
        assert_eq!(
            load_error(
                "        type: window\n        inputs: [tick]\n        size: 10s\n        slide: 1m"
            ),
            [
                "f.yaml:10:16: f/avg: `slide`: `slide` must not be longer than `size`: a sliding window emits every `slide` the aggregate of the last `size`"
            ]
        );
    }
}
