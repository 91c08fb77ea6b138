//! `delay`: holds every message for a fixed time (`for`) or a random time in
//! `[min, max]`, then passes it on; at most `max_queued` held at once, beyond which it
//! stops taking input (backpressure), so nothing is ever dropped.
//!
//! A held message keeps its acknowledgement branch: the source learns its outcome only
//! after the message was emitted and handled downstream.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use crate::engine::edge::BATCH;
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `delay` node. Give `for` (a fixed delay), or `min` and `max` (a random
/// delay).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// Hold every message this long, e.g. `5s`; messages keep their order.
    #[serde(rename = "for")]
    pub fixed: Option<HumanDuration>,
    /// Random delay: the shortest.
    pub min: Option<HumanDuration>,
    /// Random delay: the longest.
    pub max: Option<HumanDuration>,
    /// Most messages held at once (default 10000); when full the node takes no more
    /// input until one leaves, so upstream edges fill and apply their overflow policy.
    #[serde(default = "default_max_queued")]
    #[schemars(range(min = 1))]
    pub max_queued: usize,
}

fn default_max_queued() -> usize {
    10_000
}

/// How long each message waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Fixed(Duration),
    Random { min: Duration, max: Duration },
}

impl DelayConfig {
    fn wait(&self) -> Result<Wait, Vec<ConfigIssue>> {
        match (self.fixed, self.min, self.max) {
            (Some(fixed), None, None) => Ok(Wait::Fixed(fixed.get())),
            (None, Some(min), Some(max)) if min <= max => Ok(Wait::Random {
                min: min.get(),
                max: max.get(),
            }),
            (None, Some(_), Some(_)) => Err(vec![ConfigIssue::new(
                "min",
                "`min` must not be longer than `max`",
            )]),
            (None, None, None) => Err(vec![ConfigIssue::new(
                "",
                "a delay needs `for` (a fixed delay) or `min` and `max` (a random delay)",
            )]),
            (Some(_), _, _) => Err(vec![ConfigIssue::new(
                if self.min.is_some() { "min" } else { "max" },
                "give either `for` (a fixed delay) or `min` and `max` (a random delay), not both",
            )]),
            (None, Some(_), None) => Err(vec![ConfigIssue::new(
                "min",
                "a random delay needs `max` too",
            )]),
            (None, None, Some(_)) => Err(vec![ConfigIssue::new(
                "max",
                "a random delay needs `min` too",
            )]),
        }
    }
}

impl Config for DelayConfig {
    const TYPE: &'static str = "delay";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Delays every message by a fixed or random time, in order, with bounded memory";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = self.wait().err().unwrap_or_default();
        if self.max_queued == 0 {
            issues.push(ConfigIssue::new(
                "max_queued",
                "`max_queued` must be at least 1",
            ));
        }
        issues
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let issues = self.validate();
        if !issues.is_empty() {
            return Err(issues);
        }
        let wait = self.wait()?;
        let max_queued = self.max_queued;
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(wait, max_queued, cx))
        }))
    }
}

/// A held message, ordered by due time, then arrival.
struct Held {
    due: Instant,
    sequence: u64,
    msg: Msg,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

/// SplitMix64: enough randomness to spread delays, no dependency, seeded per run from
/// the standard library's random hasher keys.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Jitter(RandomState::new().hash_one(0x6865_6164_7761_7465_u64))
    }

    /// A uniform value in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits fill an f64 mantissa exactly.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        min + (max - min).mul_f64(self.unit())
    }
}

async fn run(wait: Wait, max_queued: usize, cx: NodeContext) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut jitter = Jitter::new();
    let mut sequence = 0u64;
    let mut inputs_open = true;
    let mut ready = Vec::new();
    loop {
        let next = held.peek().map(|Reverse(h)| h.due);
        if !inputs_open && next.is_none() {
            // Inputs closed and every held message sent.
            return Ok(());
        }
        let room = max_queued.saturating_sub(held.len());
        tokio::select! {
            biased;
            () = cx.clock.sleep_until(next.unwrap_or_else(|| cx.clock.now())), if next.is_some() => {
                let now = cx.clock.now();
                while let Some(Reverse(h)) = held.peek()
                    && h.due <= now
                {
                    if let Some(Reverse(h)) = held.pop() {
                        ready.push(h.msg);
                    }
                }
            }
            // When full, the inbox is left alone: the input edge fills and backpressure
            // (or that edge's overflow policy) takes over. Nothing is dropped here.
            n = inbox.recv_many(&mut batch, room.min(BATCH)), if inputs_open && room > 0 => {
                if n == 0 {
                    // Finish the schedule: held messages still go at their due time (the
                    // engine's drain deadline bounds how long that may take).
                    inputs_open = false;
                    continue;
                }
                cx.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                let now = cx.clock.now();
                for msg in batch.drain(..) {
                    let delay = match wait {
                        Wait::Fixed(d) => d,
                        Wait::Random { min, max } => jitter.between(min, max),
                    };
                    sequence += 1;
                    held.push(Reverse(Held {
                        due: now + delay,
                        sequence,
                        msg,
                    }));
                }
            }
        }
        for msg in ready.drain(..) {
            cx.emit(msg).await;
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

    fn payloads(msgs: Vec<Msg>) -> Vec<String> {
        msgs.into_iter()
            .map(|m| {
                let p = m.payload_str().unwrap().to_string();
                m.done();
                p
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_delay_keeps_order_and_exact_due_times() {
        let mut h = NodeHarness::start("delay", "for: 2s", Clock::virtual_at(0)).unwrap();
        h.send(Msg::new("t", "a", 0)).await;
        h.send(Msg::new("t", "b", 0)).await;
        h.settle().await;
        advance_ms(&h, 500).await;
        h.send(Msg::new("u", "c", 0)).await;
        h.settle().await;
        advance_ms(&h, 1_499).await;
        assert!(h.drain("out").is_empty(), "nothing before 2 s");
        advance_ms(&h, 1).await;
        assert_eq!(payloads(h.drain("out")), ["a", "b"]);
        advance_ms(&h, 499).await;
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 1).await;
        let out = h.drain("out");
        assert_eq!(&*out[0].topic, "u");
        assert_eq!(payloads(out), ["c"]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn random_delay_stays_within_bounds() {
        let mut h = NodeHarness::start("delay", "min: 1s\nmax: 3s", Clock::virtual_at(0)).unwrap();
        for n in 0..200 {
            h.send(Msg::new("t", n.to_string(), 0)).await;
        }
        h.settle().await;
        advance_ms(&h, 999).await;
        assert!(h.drain("out").is_empty(), "none before `min`");
        let mut seen = 0;
        let mut spread = Vec::new();
        for step in 0..=2_000u64 {
            advance_ms(&h, 1).await;
            let got = payloads(h.drain("out")).len();
            if got > 0 {
                spread.push(step);
            }
            seen += got;
        }
        assert_eq!(seen, 200, "all out by `max`");
        // 200 uniform delays over 2 s do not all land in one 100 ms slice.
        assert!(spread.last().unwrap() - spread.first().unwrap() > 100);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_applies_backpressure_and_drops_nothing() {
        let mut h =
            NodeHarness::start("delay", "for: 1s\nmax_queued: 3", Clock::virtual_at(0)).unwrap();
        let (tx, rx) = mpsc::channel();
        for n in 0..5 {
            let tx = tx.clone();
            h.send(Msg::tracked("t", n.to_string(), 0, move |o| {
                tx.send((n, o)).unwrap()
            }))
            .await;
        }
        h.settle().await;
        assert_eq!(h.stats().received.load(Ordering::Relaxed), 3, "stops at 3");
        assert!(rx.try_recv().is_err(), "nothing ended: none dropped");
        advance_ms(&h, 1_000).await;
        assert_eq!(payloads(h.drain("out")), ["0", "1", "2"]);
        // Room again: the two that waited upstream are taken now, 1 s after that.
        assert_eq!(h.stats().received.load(Ordering::Relaxed), 5);
        advance_ms(&h, 1_000).await;
        assert_eq!(payloads(h.drain("out")), ["3", "4"]);
        let mut outcomes: Vec<_> = rx.try_iter().collect();
        outcomes.sort_by_key(|(n, _)| *n);
        assert_eq!(
            outcomes,
            (0..5).map(|n| (n, Outcome::Done)).collect::<Vec<_>>()
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn outcome_only_after_emission_and_downstream() {
        let mut h = NodeHarness::start("delay", "for: 10s", Clock::virtual_at(0)).unwrap();
        let (tx, rx) = mpsc::channel();
        h.send(Msg::tracked("t", "x", 0, move |o| tx.send(o).unwrap()))
            .await;
        h.settle().await;
        advance_ms(&h, 9_999).await;
        assert!(rx.try_recv().is_err(), "held, no outcome yet");
        advance_ms(&h, 1).await;
        assert!(rx.try_recv().is_err(), "emitted, downstream not done yet");
        let out = h.drain("out");
        out.into_iter().for_each(|m| m.fail("sink refused"));
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Failed("sink refused".into())
        );
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn closed_inputs_finish_the_schedule() {
        let mut h = NodeHarness::start("delay", "for: 3s", Clock::virtual_at(0)).unwrap();
        h.send(Msg::new("t", "a", 0)).await;
        h.settle().await;
        advance_ms(&h, 1_000).await;
        h.send(Msg::new("t", "b", 0)).await;
        h.settle().await;
        h.close_input();
        h.settle().await;
        advance_ms(&h, 2_000).await;
        assert_eq!(payloads(h.drain("out")), ["a"]);
        advance_ms(&h, 1_000).await;
        assert_eq!(payloads(h.drain("out")), ["b"]);
        assert_eq!(h.shutdown().await, ShutdownReport::Drained);
    }

    #[test]
    fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("delay", options, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(
            err("max_queued: 5"),
            "a delay needs `for` (a fixed delay) or `min` and `max` (a random delay)"
        );
        assert_eq!(
            err("for: 1s\nmax: 2s"),
            "max: give either `for` (a fixed delay) or `min` and `max` (a random delay), not both"
        );
        assert_eq!(
            err("min: 2s\nmax: 1s\nmax_queued: 0"),
            "min: `min` must not be longer than `max`; max_queued: `max_queued` must be at least 1"
        );
        assert_eq!(err("min: 1s"), "min: a random delay needs `max` too");
        assert!(err("for: soon").contains("invalid duration `soon`"));
    }

    #[test]
    fn yaml_errors_are_located() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      later: { type: delay, inputs: [tick], min: 5s, max: 1s }
";
        let err = crate::flow::load_sources(
            vec![(std::path::PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            ["f.yaml:6:50: f/later: `min`: `min` must not be longer than `max`"]
        );
    }
}
