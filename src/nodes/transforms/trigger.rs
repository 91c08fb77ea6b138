//! `trigger`: time-driven reactions to input, in two modes. `watchdog` raises an alarm
//! when nothing arrived for `after`; `pulse` (Node-RED's trigger node) sends `first` at
//! once, then `then` after `after`, ignoring or extending on inputs meanwhile.
//!
//! Both keep one deadline per key (the topic with `per_topic`, else one for all) in a
//! heap with lazy updates: an input only moves its key's deadline later, so the heap
//! entry is left in place and re-filed when it comes due early. That keeps an input at
//! O(1) and the heap at one entry per key, however fast inputs arrive.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio::time::Instant;

use crate::engine::edge::BATCH;
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `trigger` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// `pulse` (default): send `first` on an input, then `then` after `after`.
    /// `watchdog`: send an alarm when no input arrived for `after`.
    #[serde(default)]
    pub mode: TriggerMode,
    /// The time: of silence before an alarm (`watchdog`), or between `first` and `then`
    /// (`pulse`), e.g. `5m`.
    pub after: HumanDuration,
    /// `pulse`: the payload sent at once (a string as is, anything else as JSON).
    /// Absent: the input message itself; `null`: nothing.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<Value>")]
    pub first: Option<Value>,
    /// `pulse`: the payload sent `after` later, on the input's topic (a string as is,
    /// anything else as JSON). Absent or `null`: nothing, so the node only blocks
    /// further inputs for `after`.
    pub then: Option<Value>,
    /// `pulse`: an input while waiting restarts the wait (default false: it is ignored).
    pub extend: Option<bool>,
    /// `watchdog`: the alarm's payload (a string as is, anything else as JSON). Default:
    /// `{"silent_for_ms": N}`, the silence so far.
    pub payload: Option<Value>,
    /// `watchdog` without `per_topic`: the alarm's topic (default: the node's name).
    pub topic: Option<String>,
    /// `watchdog`: keep sending the alarm every `after` while the silence lasts
    /// (default false: once per silence).
    pub repeat: Option<bool>,
    /// One watchdog or pulse per topic (default false: one for all messages). A
    /// per-topic watchdog watches topics from their first message on.
    #[serde(default)]
    pub per_topic: bool,
    /// Most topics tracked at once with `per_topic` (default 10000); an input on a new
    /// topic beyond it goes to the `error` port.
    #[serde(default = "default_max_topics")]
    #[schemars(range(min = 1))]
    pub max_topics: usize,
}

/// Keeps an explicit `null` apart from an absent option.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn default_max_topics() -> usize {
    10_000
}

/// What a `trigger` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMode {
    /// Send `first` at once, then `then` after `after` (Node-RED's trigger).
    #[default]
    Pulse,
    /// Send an alarm when nothing arrived for `after`.
    Watchdog,
}

/// A payload option as bytes: strings as they are, anything else as JSON.
fn payload_bytes(value: &Value) -> Bytes {
    match value {
        Value::String(s) => Bytes::from(s.clone()),
        other => Bytes::from(other.to_string()),
    }
}

impl Config for TriggerConfig {
    const TYPE: &'static str = "trigger";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Sends a message, then another after a time (pulse), or an alarm after a silence (watchdog)";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.after.get() < Duration::from_millis(1) {
            issues.push(ConfigIssue::new("after", "`after` must be at least 1ms"));
        }
        let (own, other) = match self.mode {
            TriggerMode::Pulse => ("pulse", "watchdog"),
            TriggerMode::Watchdog => ("watchdog", "pulse"),
        };
        let foreign: &[(&str, bool)] = match self.mode {
            TriggerMode::Pulse => &[
                ("payload", self.payload.is_some()),
                ("topic", self.topic.is_some()),
                ("repeat", self.repeat.is_some()),
            ],
            TriggerMode::Watchdog => &[
                ("first", self.first.is_some()),
                ("then", self.then.is_some()),
                ("extend", self.extend.is_some()),
            ],
        };
        for (name, given) in foreign {
            if *given {
                issues.push(ConfigIssue::new(
                    *name,
                    format!(
                        "`{name}` applies to `mode: {other}`, this trigger is in `mode: {own}`; remove it or change the mode"
                    ),
                ));
            }
        }
        if self.mode == TriggerMode::Watchdog && self.per_topic && self.topic.is_some() {
            issues.push(ConfigIssue::new(
                "topic",
                "`topic` applies with `per_topic: false`; a per-topic watchdog alarms on the silent topic",
            ));
        }
        if self.mode == TriggerMode::Pulse
            && self.first == Some(Value::Null)
            && self.then.as_ref().is_none_or(Value::is_null)
        {
            issues.push(ConfigIssue::new(
                "first",
                "with `first: null` and no `then` this trigger never sends anything; give `then` or remove `first: null`",
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
        let after = self.after.get();
        let (per_topic, max_topics) = (self.per_topic, self.max_topics);
        match self.mode {
            TriggerMode::Watchdog => {
                let settings = Arc::new(WatchdogSettings {
                    after,
                    payload: self.payload.as_ref().map(payload_bytes),
                    topic: self
                        .topic
                        .clone()
                        .unwrap_or_else(|| cx.id.node.to_string())
                        .into(),
                    repeat: self.repeat.unwrap_or(false),
                    per_topic,
                    max_topics,
                });
                Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
                    Box::pin(run_watchdog(settings.clone(), cx))
                }))
            }
            TriggerMode::Pulse => {
                let settings = Arc::new(PulseSettings {
                    after,
                    first: match &self.first {
                        None => First::Input,
                        Some(Value::Null) => First::Nothing,
                        Some(value) => First::Payload(payload_bytes(value)),
                    },
                    then: self
                        .then
                        .as_ref()
                        .filter(|v| !v.is_null())
                        .map(payload_bytes),
                    extend: self.extend.unwrap_or(false),
                    per_topic,
                    max_topics,
                });
                Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
                    Box::pin(run_pulse(settings.clone(), cx))
                }))
            }
        }
    }
}

/// Deadlines by key, earliest first; an entry may be earlier than its key's real
/// deadline (see the module docs), never later.
#[derive(Default)]
struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    sequence: u64,
}

impl Deadlines {
    fn push(&mut self, at: Instant, key: Arc<str>) {
        self.sequence += 1;
        self.heap.push(Reverse((at, self.sequence, key)));
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next key whose entry is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Arc<str>> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((_, _, key))| key)
    }
}

/// The key of a message: its topic, or one shared key.
fn key_of(msg: &Msg, per_topic: bool) -> Arc<str> {
    if per_topic {
        msg.topic.clone()
    } else {
        Arc::from("")
    }
}

fn too_many_topics(max_topics: usize) -> String {
    format!(
        "the trigger already tracks `max_topics` ({max_topics}) topics; raise `max_topics` or set `per_topic: false`"
    )
}

struct WatchdogSettings {
    after: Duration,
    payload: Option<Bytes>,
    /// The alarm topic without `per_topic`.
    topic: Arc<str>,
    repeat: bool,
    per_topic: bool,
    max_topics: usize,
}

/// One watched key.
struct Watch {
    last_seen: Instant,
    /// Alarms sent in the current silence.
    alarms: u32,
}

impl Watch {
    fn deadline(&self, after: Duration) -> Instant {
        self.last_seen + after * (self.alarms + 1)
    }
}

async fn run_watchdog(settings: Arc<WatchdogSettings>, cx: NodeContext) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut watched: HashMap<Arc<str>, Watch> = HashMap::new();
    let mut deadlines = Deadlines::default();
    let mut alarms = Vec::new();
    let mut refused = Vec::new();
    if !settings.per_topic {
        // One watchdog for everything is armed from the start: a sensor that never
        // speaks after a restart is a silence too. Per-topic ones cannot know their
        // topics before the first message.
        let key: Arc<str> = Arc::from("");
        let now = cx.clock.now();
        deadlines.push(now + settings.after, key.clone());
        watched.insert(
            key,
            Watch {
                last_seen: now,
                alarms: 0,
            },
        );
    }
    loop {
        let next = deadlines.next();
        tokio::select! {
            biased;
            n = inbox.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    // Nothing more can arrive: the silence would be permanent, and an
                    // alarm about our own shutdown helps nobody.
                    return Ok(());
                }
                cx.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                let now = cx.clock.now();
                for msg in batch.drain(..) {
                    let key = key_of(&msg, settings.per_topic);
                    if let Some(watch) = watched.get_mut(&key) {
                        watch.last_seen = now;
                        watch.alarms = 0;
                    } else if watched.len() >= settings.max_topics {
                        refused.push(msg);
                        continue;
                    } else {
                        deadlines.push(now + settings.after, key.clone());
                        watched.insert(key, Watch { last_seen: now, alarms: 0 });
                    }
                    // An input only resets the watch; it goes no further.
                    msg.done();
                }
            }
            () = cx.clock.sleep_until(next.unwrap_or_else(|| cx.clock.now())), if next.is_some() => {
                let now = cx.clock.now();
                while let Some(key) = deadlines.pop_due(now) {
                    let Some(watch) = watched.get_mut(&key) else {
                        continue;
                    };
                    let deadline = watch.deadline(settings.after);
                    if deadline > now {
                        // Reset by an input since this entry was filed.
                        deadlines.push(deadline, key);
                        continue;
                    }
                    let silent_ms = now.duration_since(watch.last_seen).as_millis();
                    watch.alarms += 1;
                    let topic = if settings.per_topic { key.clone() } else { settings.topic.clone() };
                    let payload = settings.payload.clone().unwrap_or_else(|| {
                        Bytes::from(format!(r#"{{"silent_for_ms":{silent_ms}}}"#))
                    });
                    alarms.push(Msg::new(topic, payload, cx.clock.wall_ms()));
                    if settings.repeat {
                        deadlines.push(watch.deadline(settings.after), key);
                    } else {
                        // Forgetting an alarmed key changes nothing: its next input
                        // starts a new watch, as it would reset this one. So idle
                        // topics cost no memory.
                        watched.remove(&key);
                    }
                }
            }
        }
        for msg in alarms.drain(..) {
            cx.emit(msg).await;
        }
        for msg in refused.drain(..) {
            cx.outputs
                .emit_error(msg, too_many_topics(settings.max_topics))
                .await;
        }
    }
}

/// What `pulse` sends at once.
enum First {
    /// The input message itself.
    Input,
    /// Nothing.
    Nothing,
    /// The input with this payload.
    Payload(Bytes),
}

struct PulseSettings {
    after: Duration,
    first: First,
    then: Option<Bytes>,
    extend: bool,
    per_topic: bool,
    max_topics: usize,
}

/// A pulse in progress.
struct Pulse {
    until: Instant,
    /// The `then` message, derived from the input that started the pulse, so that
    /// input's source learns its outcome only once `then` went out too.
    then: Option<Msg>,
}

async fn run_pulse(settings: Arc<PulseSettings>, cx: NodeContext) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut pulses: HashMap<Arc<str>, Pulse> = HashMap::new();
    let mut deadlines = Deadlines::default();
    let mut inputs_open = true;
    let mut ready = Vec::new();
    let mut refused = Vec::new();
    loop {
        let next = deadlines.next();
        if !inputs_open && next.is_none() {
            return Ok(());
        }
        tokio::select! {
            // Due pulses end before new inputs are judged, so an input arriving right
            // at the end starts a new pulse rather than being ignored.
            biased;
            () = cx.clock.sleep_until(next.unwrap_or_else(|| cx.clock.now())), if next.is_some() => {
                let now = cx.clock.now();
                while let Some(key) = deadlines.pop_due(now) {
                    let Some(pulse) = pulses.get(&key) else {
                        continue;
                    };
                    if pulse.until > now {
                        // Extended since this entry was filed.
                        deadlines.push(pulse.until, key);
                        continue;
                    }
                    if let Some(then) = pulses.remove(&key).and_then(|p| p.then) {
                        ready.push(then);
                    }
                }
            }
            n = inbox.recv_many(&mut batch, BATCH), if inputs_open => {
                if n == 0 {
                    // Finish the pulses in progress: their `then` goes out on time.
                    inputs_open = false;
                    continue;
                }
                cx.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                let now = cx.clock.now();
                for msg in batch.drain(..) {
                    let key = key_of(&msg, settings.per_topic);
                    if let Some(pulse) = pulses.get_mut(&key) {
                        if settings.extend {
                            pulse.until = now + settings.after;
                        }
                        // Ignored or only extending: consumed on purpose.
                        msg.done();
                        continue;
                    }
                    if pulses.len() >= settings.max_topics {
                        refused.push(msg);
                        continue;
                    }
                    let then = settings
                        .then
                        .as_ref()
                        .map(|payload| msg.derive(msg.topic.clone(), payload.clone()));
                    match &settings.first {
                        First::Input => ready.push(msg),
                        First::Payload(payload) => ready.push(msg.with_payload(payload.clone())),
                        First::Nothing => msg.done(),
                    }
                    let until = now + settings.after;
                    deadlines.push(until, key.clone());
                    pulses.insert(key, Pulse { until, then });
                }
            }
        }
        for msg in ready.drain(..) {
            cx.emit(msg).await;
        }
        for msg in refused.drain(..) {
            cx.outputs
                .emit_error(msg, too_many_topics(settings.max_topics))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome, ShutdownReport};

    async fn advance_ms(h: &NodeHarness, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        h.settle().await;
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

    fn pair(topic: &str, payload: &str) -> (String, String) {
        (topic.to_string(), payload.to_string())
    }

    async fn send(h: &NodeHarness, topic: &str, payload: &str) {
        h.send(Msg::new(topic, payload.to_string(), 0)).await;
        h.settle().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_fires_once_after_the_silence() {
        let mut h = NodeHarness::start(
            "trigger",
            "mode: watchdog\nafter: 10s",
            Clock::virtual_at(0),
        )
        .unwrap();
        h.settle().await;
        // Armed from the start: 10 s without input is a silence.
        advance_ms(&h, 9_999).await;
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 1).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("node", r#"{"silent_for_ms":10000}"#)]
        );
        advance_ms(&h, 60_000).await;
        assert!(h.drain("out").is_empty(), "once per silence");
        // A new input starts a new watch.
        send(&h, "s", "1").await;
        advance_ms(&h, 10_000).await;
        assert_eq!(h.drain("out").len(), 1);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_is_reset_by_every_input() {
        let mut h = NodeHarness::start(
            "trigger",
            "mode: watchdog\nafter: 10s\ntopic: alarm\npayload: silent",
            Clock::virtual_at(0),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..5 {
            advance_ms(&h, 6_000).await;
            let tx = tx.clone();
            h.send(Msg::tracked("s", "1", 0, move |o| tx.send(o).unwrap()))
                .await;
            h.settle().await;
        }
        assert!(h.drain("out").is_empty(), "never 10 s apart");
        // Inputs are consumed by the watchdog.
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![Outcome::Done; 5]);
        advance_ms(&h, 9_999).await;
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 1).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("alarm", "silent")]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_repeats_while_silent() {
        let mut h = NodeHarness::start(
            "trigger",
            "mode: watchdog\nafter: 5s\nrepeat: true",
            Clock::virtual_at(0),
        )
        .unwrap();
        h.settle().await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            advance_ms(&h, 5_000).await;
            seen.extend(topics_and_payloads(h.drain("out")));
        }
        assert_eq!(
            seen,
            [
                pair("node", r#"{"silent_for_ms":5000}"#),
                pair("node", r#"{"silent_for_ms":10000}"#),
                pair("node", r#"{"silent_for_ms":15000}"#),
            ]
        );
        advance_ms(&h, 2_000).await;
        send(&h, "s", "1").await;
        advance_ms(&h, 4_999).await;
        assert!(h.drain("out").is_empty(), "reset by the input");
        advance_ms(&h, 1).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("node", r#"{"silent_for_ms":5000}"#)]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_per_topic() {
        let mut h = NodeHarness::start(
            "trigger",
            "mode: watchdog\nafter: 10s\nper_topic: true\nmax_topics: 2",
            Clock::virtual_at(0),
        )
        .unwrap();
        h.settle().await;
        advance_ms(&h, 20_000).await;
        assert!(h.drain("out").is_empty(), "no topic known yet");
        send(&h, "a", "1").await;
        advance_ms(&h, 4_000).await;
        send(&h, "b", "1").await;
        send(&h, "c", "1").await; // a third topic is over `max_topics`
        let errors = h.drain("error");
        assert_eq!(errors.len(), 1);
        assert_eq!(&*errors[0].topic, "c");
        errors.into_iter().for_each(Msg::done);
        advance_ms(&h, 6_000).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("a", r#"{"silent_for_ms":10000}"#)]
        );
        send(&h, "a", "1").await;
        advance_ms(&h, 4_000).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("b", r#"{"silent_for_ms":10000}"#)]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_finishes_when_inputs_close() {
        let mut h = NodeHarness::start(
            "trigger",
            "mode: watchdog\nafter: 1h\nrepeat: true",
            Clock::virtual_at(0),
        )
        .unwrap();
        send(&h, "s", "1").await;
        h.close_input();
        assert_eq!(h.shutdown().await, ShutdownReport::Drained);
    }

    #[tokio::test(start_paused = true)]
    async fn pulse_sends_first_then_after() {
        let mut h =
            NodeHarness::start("trigger", "after: 5s\nthen: 'off'", Clock::virtual_at(0)).unwrap();
        let (tx, rx) = mpsc::channel();
        h.send(Msg::tracked("light", "on", 0, move |o| tx.send(o).unwrap()))
            .await;
        h.settle().await;
        assert_eq!(topics_and_payloads(h.drain("out")), [pair("light", "on")]);
        assert!(
            rx.try_recv().is_err(),
            "the `then` message still belongs to the input"
        );
        advance_ms(&h, 2_000).await;
        send(&h, "light", "again").await; // ignored while waiting
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 2_999).await;
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 1).await;
        assert_eq!(topics_and_payloads(h.drain("out")), [pair("light", "off")]);
        assert_eq!(rx.try_recv().unwrap(), Outcome::Done);
        // The pulse is over: the next input starts a new one.
        send(&h, "light", "on").await;
        assert_eq!(topics_and_payloads(h.drain("out")), [pair("light", "on")]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn pulse_extend_restarts_the_wait() {
        let mut h = NodeHarness::start(
            "trigger",
            "after: 5s\nfirst: {state: on}\nthen: {state: off}\nextend: true",
            Clock::virtual_at(0),
        )
        .unwrap();
        send(&h, "motion", "1").await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("motion", r#"{"state":"on"}"#)]
        );
        for _ in 0..3 {
            advance_ms(&h, 4_000).await;
            send(&h, "motion", "1").await;
        }
        assert!(h.drain("out").is_empty(), "each input pushed the end back");
        advance_ms(&h, 4_999).await;
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 1).await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("motion", r#"{"state":"off"}"#)]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn pulse_without_then_blocks_for_after() {
        let mut h = NodeHarness::start(
            "trigger",
            "after: 1s\nper_topic: true",
            Clock::virtual_at(0),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        for (topic, payload) in [("a", "1"), ("a", "2"), ("b", "3")] {
            let tx = tx.clone();
            h.send(Msg::tracked(topic, payload, 0, move |o| {
                tx.send((payload, o)).unwrap()
            }))
            .await;
        }
        h.settle().await;
        assert_eq!(
            topics_and_payloads(h.drain("out")),
            [pair("a", "1"), pair("b", "3")]
        );
        let mut outcomes: Vec<_> = rx.try_iter().collect();
        outcomes.sort_by_key(|(p, _)| *p);
        assert_eq!(
            outcomes,
            [
                ("1", Outcome::Done),
                ("2", Outcome::Done),
                ("3", Outcome::Done)
            ]
        );
        advance_ms(&h, 1_000).await;
        assert!(h.drain("out").is_empty(), "nothing at the end");
        send(&h, "a", "4").await;
        assert_eq!(topics_and_payloads(h.drain("out")), [pair("a", "4")]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn pulse_with_nothing_first_and_closed_inputs() {
        let mut h = NodeHarness::start(
            "trigger",
            "after: 3s\nfirst: null\nthen: 0",
            Clock::virtual_at(0),
        )
        .unwrap();
        send(&h, "t", "x").await;
        assert!(h.drain("out").is_empty(), "`first: null` sends nothing");
        h.close_input();
        h.settle().await;
        advance_ms(&h, 3_000).await;
        assert_eq!(topics_and_payloads(h.drain("out")), [pair("t", "0")]);
        assert_eq!(h.shutdown().await, ShutdownReport::Drained);
    }

    #[test]
    fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("trigger", options, Clock::system())
                .err()
                .unwrap()
        };
        assert!(err("then: 1").contains("missing field `after`"));
        assert_eq!(
            err("mode: watchdog\nafter: 1s\nthen: 1\nextend: false"),
            "then: `then` applies to `mode: pulse`, this trigger is in `mode: watchdog`; remove it or change the mode; extend: `extend` applies to `mode: pulse`, this trigger is in `mode: watchdog`; remove it or change the mode"
        );
        assert_eq!(
            err("after: 0s\nrepeat: true"),
            "after: `after` must be at least 1ms; repeat: `repeat` applies to `mode: watchdog`, this trigger is in `mode: pulse`; remove it or change the mode"
        );
        assert_eq!(
            err("after: 1s\nfirst: null"),
            "first: with `first: null` and no `then` this trigger never sends anything; give `then` or remove `first: null`"
        );
        assert_eq!(
            err("mode: watchdog\nafter: 1s\nper_topic: true\ntopic: x"),
            "topic: `topic` applies with `per_topic: false`; a per-topic watchdog alarms on the silent topic"
        );
    }

    #[test]
    fn yaml_errors_are_located() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      dog:
        type: trigger
        inputs: [tick]
        mode: watchdog
        after: 1m
        extend: true
";
        let err = crate::flow::load_sources(
            vec![(std::path::PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            [
                "f.yaml:11:17: f/dog: `extend`: `extend` applies to `mode: pulse`, this trigger is in `mode: watchdog`; remove it or change the mode"
            ]
        );
    }
}
