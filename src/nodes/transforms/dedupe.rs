//! `dedupe`: drops repeats. By default it passes a message only when its payload differs
//! from the last one on the same topic (Node-RED's filter/RBE node, "block unless value
//! changes"); in `window` mode it drops a message whose key was let through less than
//! `window` ago.
//!
//! Keys are remembered as 64-bit hashes (SipHash with a random key per run), so memory
//! is bounded by `max_keys` whatever the payload size.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use schemars::{JsonSchema, SchemaGenerator};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use tokio::time::Instant;

use crate::engine::fields::{FieldPath, MsgView};
use crate::engine::{
    Clock, Emit, Msg, NodeContext, NodeFactory, NodeFuture, Transform, run_transform,
};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `dedupe` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// What makes two messages the same: a field (`payload.id`) or a list of fields
    /// (`[topic, payload.id]`). Default: the payload bytes, on the same topic.
    pub key: Option<KeyFields>,
    /// `changes` (default): drop a message whose key equals the previous message's on
    /// the same topic. `window`: drop a message whose key was let through less than
    /// `window` ago.
    #[serde(default)]
    pub mode: DedupeMode,
    /// How long a key let through blocks its repeats (`window` mode only), e.g. `10s`.
    pub window: Option<HumanDuration>,
    /// Most keys remembered (topics in `changes` mode); the least recently seen are
    /// forgotten first (default 10000).
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1))]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    10_000
}

/// How a `dedupe` judges a repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DedupeMode {
    /// Pass only when the key differs from the last one on the topic (default).
    #[default]
    Changes,
    /// Pass only when the key was not let through within `window`.
    Window,
}

/// One field or a list of fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFields(pub Vec<FieldPath>);

impl<'de> Deserialize<'de> for KeyFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field such as `payload.id`, or a list of fields")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyFields, E> {
                v.parse().map(|p| KeyFields(vec![p])).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyFields, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = seq.next_element::<FieldPath>()? {
                    fields.push(field);
                }
                Ok(KeyFields(fields))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for KeyFields {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DedupeKey".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> schemars::Schema {
        let one = generator.subschema_for::<FieldPath>();
        let many = generator.subschema_for::<Vec<FieldPath>>();
        schemars::json_schema!({
            "description": "A message field, or a list of fields, that make up the key",
            "anyOf": [one, many]
        })
    }
}

impl Config for DedupeConfig {
    const TYPE: &'static str = "dedupe";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Drops repeats: unchanged payloads per topic, or keys seen within a `window`";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.key.as_ref().is_some_and(|k| k.0.is_empty()) {
            issues.push(ConfigIssue::new("key", "`key` needs at least one field"));
        }
        match (self.mode, self.window) {
            (DedupeMode::Window, None) => issues.push(ConfigIssue::new(
                "mode",
                "`mode: window` needs `window:`, e.g. `window: 10s`",
            )),
            (DedupeMode::Window, Some(w)) if w.get().is_zero() => {
                issues.push(ConfigIssue::new(
                    "window",
                    "`window` must be longer than 0s",
                ));
            }
            (DedupeMode::Changes, Some(_)) => issues.push(ConfigIssue::new(
                "window",
                "`window` applies to `mode: window`; remove it or set the mode",
            )),
            _ => {}
        }
        if self.max_keys == 0 {
            issues.push(ConfigIssue::new(
                "max_keys",
                "`max_keys` must be at least 1",
            ));
        }
        issues
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let issues = self.validate();
        if !issues.is_empty() {
            return Err(issues);
        }
        let key: Option<Arc<[FieldPath]>> = self.key.as_ref().map(|k| k.0.clone().into());
        let window = match self.mode {
            DedupeMode::Changes => None,
            DedupeMode::Window => self.window.map(HumanDuration::get),
        };
        let max_keys = self.max_keys;
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            let dedupe = Dedupe {
                key: key.clone(),
                window,
                recent: Recent::new(max_keys),
                hasher: RandomState::new(),
                clock: cx.clock.clone(),
            };
            Box::pin(run_transform(dedupe, cx))
        }))
    }
}

struct Dedupe {
    /// The key fields; `None` for the payload bytes.
    key: Option<Arc<[FieldPath]>>,
    /// `Some` in window mode.
    window: Option<Duration>,
    recent: Recent,
    hasher: RandomState,
    clock: Clock,
}

impl Dedupe {
    /// The hash of the message's key, `None` when a key field is missing. The default
    /// key in window mode includes the topic; in changes mode the topic is the group.
    fn identity(&self, msg: &Msg) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        match &self.key {
            None => {
                if self.window.is_some() {
                    msg.topic.hash(&mut h);
                }
                msg.payload.as_ref().hash(&mut h);
            }
            Some(fields) => {
                let view = MsgView::new(msg);
                for field in fields.iter() {
                    // Compared as JSON: `{"a": 1}` and `{"a":1}` are the same value.
                    view.get(field)?.to_string().hash(&mut h);
                }
            }
        }
        Some(h.finish())
    }
}

impl Transform for Dedupe {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        // Without a key there is nothing to compare: pass it on, remember nothing.
        let Some(identity) = self.identity(&msg) else {
            out.out(msg);
            return;
        };
        let now = self.clock.now();
        let repeat = match self.window {
            None => {
                let group = self.hasher.hash_one(&*msg.topic);
                let previous = self.recent.get(group).map(|e| e.value);
                // Every message refreshes its topic, so the least recently seen topics
                // are the ones forgotten.
                self.recent.put(group, identity, now);
                previous == Some(identity)
            }
            Some(window) => {
                self.recent.expire(now, window);
                // The window runs from the last message let through: a value repeated
                // continuously passes once per window.
                let repeat = self.recent.get(identity).is_some();
                if !repeat {
                    self.recent.put(identity, identity, now);
                }
                repeat
            }
        };
        if repeat {
            // A duplicate ends on purpose, like a filtered message.
            msg.done();
        } else {
            out.out(msg);
        }
    }
}

struct Entry {
    value: u64,
    at: Instant,
    stamp: u64,
}

/// A map of recently seen keys bounded to `max` entries, least recently put first out.
/// `order` lists puts oldest first; a put of a key already present leaves its earlier
/// record in `order` stale (its stamp no longer matches), skipped and compacted away.
struct Recent {
    entries: HashMap<u64, Entry>,
    order: VecDeque<(u64, u64)>,
    next_stamp: u64,
    max: usize,
}

impl Recent {
    fn new(max: usize) -> Self {
        Recent {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
            max,
        }
    }

    fn get(&self, key: u64) -> Option<&Entry> {
        self.entries.get(&key)
    }

    fn is_live(&self, (key, stamp): (u64, u64)) -> bool {
        self.entries.get(&key).is_some_and(|e| e.stamp == stamp)
    }

    fn put(&mut self, key: u64, value: u64, at: Instant) {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.entries.insert(key, Entry { value, at, stamp });
        self.order.push_back((key, stamp));
        while self.entries.len() > self.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.is_live(oldest) {
                self.entries.remove(&oldest.0);
            }
        }
        if self.order.len() > 2 * self.max + 64 {
            let entries = &self.entries;
            self.order
                .retain(|&(k, s)| entries.get(&k).is_some_and(|e| e.stamp == s));
        }
    }

    /// Forgets entries put `window` or longer before `now` (puts come in time order).
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&front) = self.order.front() {
            if self.is_live(front) {
                let at = self.entries[&front.0].at;
                if at + window > now {
                    break;
                }
                self.entries.remove(&front.0);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;

    use super::*;
    use crate::engine::Outcome;
    use crate::engine::harness::NodeHarness;

    fn payloads(msgs: Vec<Msg>) -> Vec<String> {
        msgs.into_iter()
            .map(|m| {
                let p = format!("{}:{}", m.topic, m.payload_str().unwrap());
                m.done();
                p
            })
            .collect()
    }

    async fn feed(h: &NodeHarness, msgs: &[(&str, &str)]) {
        for (topic, payload) in msgs {
            h.send(Msg::new(*topic, payload.to_string(), 0)).await;
        }
        h.settle().await;
    }

    #[tokio::test(start_paused = true)]
    async fn changes_passes_only_new_values_per_topic() {
        let mut h = NodeHarness::start("dedupe", "{}", Clock::virtual_at(0)).unwrap();
        let (tx, rx) = mpsc::channel();
        feed(&h, &[("a", "1")]).await;
        h.send(Msg::tracked("a", "1", 0, move |o| tx.send(o).unwrap()))
            .await;
        feed(
            &h,
            &[("a", "2"), ("b", "2"), ("a", "2"), ("a", "1"), ("a", "1.0")],
        )
        .await;
        assert_eq!(
            payloads(h.drain("out")),
            ["a:1", "a:2", "b:2", "a:1", "a:1.0"]
        );
        assert_eq!(rx.try_recv().unwrap(), Outcome::Done, "duplicate is done");
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn changes_of_a_field() {
        let mut h =
            NodeHarness::start("dedupe", "key: payload.state", Clock::virtual_at(0)).unwrap();
        feed(
            &h,
            &[
                ("d", r#"{"state": "on", "ts": 1}"#),
                ("d", r#"{"state":"on","ts":2}"#),
                ("d", r#"{"state": "off", "ts": 3}"#),
                ("d", r#"{"ts": 4}"#),
                ("d", r#"{"ts": 5}"#),
                ("d", "not json"),
                ("d", r#"{"state": "off", "ts": 6}"#),
            ],
        )
        .await;
        assert_eq!(
            payloads(h.drain("out")),
            [
                r#"d:{"state": "on", "ts": 1}"#,
                r#"d:{"state": "off", "ts": 3}"#,
                // No key: passed, not remembered.
                r#"d:{"ts": 4}"#,
                r#"d:{"ts": 5}"#,
                "d:not json",
            ]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn window_expires() {
        let mut h = NodeHarness::start("dedupe", "mode: window\nwindow: 10s", Clock::virtual_at(0))
            .unwrap();
        let step = |ms| async move {
            tokio::time::advance(Duration::from_millis(ms)).await;
        };
        feed(&h, &[("a", "x"), ("b", "x")]).await;
        step(5_000).await;
        feed(&h, &[("a", "x"), ("a", "y")]).await;
        assert_eq!(payloads(h.drain("out")), ["a:x", "b:x", "a:y"]);
        step(4_999).await;
        feed(&h, &[("a", "x")]).await;
        assert!(h.drain("out").is_empty(), "9.999s after: still a repeat");
        step(1).await;
        feed(&h, &[("a", "x")]).await;
        assert_eq!(payloads(h.drain("out")), ["a:x"], "10s after the last pass");
        step(9_000).await;
        feed(&h, &[("a", "x"), ("a", "y")]).await;
        assert_eq!(payloads(h.drain("out")), ["a:y"]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn window_on_key_fields() {
        let mut h = NodeHarness::start(
            "dedupe",
            "mode: window\nwindow: 1m\nkey: [headers.source, payload.id]",
            Clock::virtual_at(0),
        )
        .unwrap();
        for (topic, source, payload) in [
            ("t1", "s1", r#"{"id": 1}"#),
            ("t2", "s1", r#"{"id": 1, "retry": true}"#),
            ("t1", "s2", r#"{"id": 1}"#),
            ("t1", "s1", r#"{"id": "1"}"#),
        ] {
            let mut msg = Msg::new(topic, payload, 0);
            msg.headers_mut().insert("source".into(), source.into());
            h.send(msg).await;
        }
        h.settle().await;
        assert_eq!(
            payloads(h.drain("out")),
            [r#"t1:{"id": 1}"#, r#"t1:{"id": 1}"#, r#"t1:{"id": "1"}"#]
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn oldest_keys_are_forgotten() {
        let mut h = NodeHarness::start("dedupe", "max_keys: 2", Clock::virtual_at(0)).unwrap();
        feed(&h, &[("a", "1"), ("b", "1"), ("c", "1")]).await;
        assert_eq!(payloads(h.drain("out")), ["a:1", "b:1", "c:1"]);
        // `a` was forgotten to make room for `c`; `a` coming back pushes out `b`.
        feed(&h, &[("a", "1"), ("c", "1"), ("b", "1")]).await;
        assert_eq!(payloads(h.drain("out")), ["a:1", "b:1"]);
        h.shutdown().await;
    }

    #[test]
    fn recent_stays_bounded() {
        let now = Instant::now();
        let mut recent = Recent::new(10);
        for i in 0..10_000u64 {
            recent.put(i % 13, i, now);
            assert!(recent.entries.len() <= 10);
            assert!(recent.order.len() <= 2 * 10 + 64 + 1);
        }
        // The 10 most recent keys are the ones kept.
        let kept: Vec<u64> = (0..13).filter(|k| recent.get(*k).is_some()).collect();
        assert_eq!(kept.len(), 10);
        assert!(recent.get(9_999 % 13).is_some());
        recent.expire(now + Duration::from_secs(1), Duration::from_secs(1));
        assert!(recent.entries.is_empty());
        assert!(recent.order.is_empty());
    }

    #[test]
    fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("dedupe", options, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(
            err("mode: window"),
            "mode: `mode: window` needs `window:`, e.g. `window: 10s`"
        );
        assert_eq!(
            err("window: 5s"),
            "window: `window` applies to `mode: window`; remove it or set the mode"
        );
        assert_eq!(
            err("key: []\nmax_keys: 0"),
            "key: `key` needs at least one field; max_keys: `max_keys` must be at least 1"
        );
    }

    #[test]
    fn yaml_error_is_located() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      once:
        type: dedupe
        inputs: [tick]
        key: [topic, payloads.id]
";
        let err = crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            [
                "f.yaml:9:22: f/once: `key[1]`: invalid field path `payloads.id`: start with `topic`, `payload`, `headers.`, `id` or `timestamp`"
            ]
        );
    }
}
