//! `rate_limit`: lets at most `rate` messages per `per` through, per topic or overall;
//! the excess is dropped or queued and released at the rate (Node-RED's delay node in
//! rate-limit mode).
//!
//! The limit is a token bucket (GCRA): a burst of up to `rate` messages passes at once,
//! then one message every `per / rate`. Each topic's state is one instant, its
//! "theoretical arrival time"; a state whose instant has passed is the same as no state
//! at all, which is what makes idle topics free to forget.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use crate::engine::edge::BATCH;
use crate::engine::{
    Clock, Emit, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId, Transform,
    run_transform,
};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `rate_limit` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Messages let through per `per` (a burst of this many passes at once).
    #[schemars(range(min = 1))]
    pub rate: u32,
    /// The period of `rate` (default `1s`).
    #[serde(default = "one_second")]
    pub per: HumanDuration,
    /// Limit each topic on its own (default true, like Node-RED's "for each
    /// msg.topic"); `false` puts one limit on all messages.
    #[serde(default = "yes")]
    pub per_topic: bool,
    /// What happens to messages over the limit.
    #[serde(default)]
    pub mode: RateMode,
    /// `queue` mode: most messages waiting, all topics together (default 1000); beyond
    /// it new excess messages are dropped.
    #[schemars(range(min = 1))]
    pub max_queued: Option<usize>,
    /// Most topics whose limit is remembered (default 10000); see the docs for what
    /// happens beyond.
    #[serde(default = "default_max_topics")]
    #[schemars(range(min = 1))]
    pub max_topics: usize,
}

fn one_second() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn yes() -> bool {
    true
}

fn default_max_topics() -> usize {
    10_000
}

const DEFAULT_MAX_QUEUED: usize = 1000;

/// The shortest spacing between messages a limit may ask for.
const MIN_INTERVAL: Duration = Duration::from_micros(1);

/// What a `rate_limit` does with messages over the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateMode {
    /// Consume them (default): they end as done, on purpose.
    #[default]
    Drop,
    /// Hold them, in order, and release them at the rate.
    Queue,
}

impl Config for RateLimitConfig {
    const TYPE: &'static str = "rate_limit";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Lets at most `rate` messages per `per` through, per topic; drops or queues the excess";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.rate == 0 {
            issues.push(ConfigIssue::new("rate", "`rate` must be at least 1"));
        } else if self.per.get() / self.rate < MIN_INTERVAL {
            issues.push(ConfigIssue::new(
                "rate",
                "`rate` is too high for `per`: at most one message per microsecond; raise `per` or lower `rate`",
            ));
        }
        if self.per.get().is_zero() {
            issues.push(ConfigIssue::new("per", "`per` must be longer than 0s"));
        }
        match (self.mode, self.max_queued) {
            (RateMode::Drop, Some(_)) => issues.push(ConfigIssue::new(
                "max_queued",
                "`max_queued` applies to `mode: queue`; remove it or set the mode",
            )),
            (RateMode::Queue, Some(0)) => {
                issues.push(ConfigIssue::new(
                    "max_queued",
                    "`max_queued` must be at least 1",
                ));
            }
            _ => {}
        }
        if self.max_topics == 0 {
            issues.push(ConfigIssue::new(
                "max_topics",
                "`max_topics` must be at least 1",
            ));
        }
        issues
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let issues = self.validate();
        if !issues.is_empty() {
            return Err(issues);
        }
        let interval = self.per.get() / self.rate;
        let settings = Settings {
            interval,
            tolerance: self.per.get().saturating_sub(interval),
            per_topic: self.per_topic,
            max_topics: self.max_topics,
        };
        let mode = self.mode;
        let max_queued = self.max_queued.unwrap_or(DEFAULT_MAX_QUEUED);
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            let limiter = Limiter::new(settings);
            match mode {
                RateMode::Drop => Box::pin(run_transform(
                    Dropper {
                        limiter,
                        clock: cx.clock.clone(),
                        log: DropLog::new(cx.id.clone(), "over the rate limit, dropped on purpose"),
                    },
                    cx,
                )),
                RateMode::Queue => Box::pin(run_queue(Queue::new(limiter, max_queued), cx)),
            }
        }))
    }
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    /// `per / rate`: the spacing of messages once a burst is spent.
    interval: Duration,
    /// `per - interval`: how far ahead of its spacing a message may come (the burst).
    tolerance: Duration,
    per_topic: bool,
    max_topics: usize,
}

/// One topic's limit and, in queue mode, its waiting messages.
struct TopicState {
    /// When the next message would be exactly on schedule (GCRA's theoretical arrival
    /// time); a message may pass up to `tolerance` before it.
    tat: Instant,
    waiting: VecDeque<Msg>,
}

impl TopicState {
    /// Lets one message pass at `now`, or says from when it would.
    fn admit(&mut self, now: Instant, s: &Settings) -> Result<(), Instant> {
        let tat = self.tat.max(now);
        if tat <= now + s.tolerance {
            self.tat = tat + s.interval;
            Ok(())
        } else {
            // tat > now + tolerance, so this cannot go below `now`.
            Err(tat - s.tolerance)
        }
    }

    /// When the next message would conform.
    fn conforms_at(&self, now: Instant, s: &Settings) -> Instant {
        if self.tat > now + s.tolerance {
            self.tat - s.tolerance
        } else {
            now
        }
    }

    /// Whether forgetting this state would change nothing.
    fn is_idle(&self, now: Instant) -> bool {
        self.waiting.is_empty() && self.tat <= now
    }
}

/// The per-key limit states, bounded by `max_topics` (plus topics with messages waiting,
/// which are never forgotten and are bounded by `max_queued`).
struct Limiter {
    settings: Settings,
    states: HashMap<Arc<str>, TopicState>,
    /// The one key used when `per_topic` is false.
    global: Arc<str>,
}

impl Limiter {
    fn new(settings: Settings) -> Self {
        Limiter {
            settings,
            states: HashMap::new(),
            global: Arc::from(""),
        }
    }

    fn key(&self, msg: &Msg) -> Arc<str> {
        if self.settings.per_topic {
            msg.topic.clone()
        } else {
            self.global.clone()
        }
    }

    fn state(&mut self, key: &Arc<str>, now: Instant) -> &mut TopicState {
        if !self.states.contains_key(key) && self.states.len() >= self.settings.max_topics {
            self.make_room(now);
        }
        self.states
            .entry(key.clone())
            .or_insert_with(|| TopicState {
                tat: now,
                waiting: VecDeque::new(),
            })
    }

    /// Forgets idle topics (no behaviour change); if every tracked topic is still
    /// limited, forgets the tenth that is closest to idle, which lets those topics
    /// start over with a full burst. Amortized: the next sweep is a tenth of
    /// `max_topics` new topics away.
    fn make_room(&mut self, now: Instant) {
        self.states.retain(|_, s| !s.is_idle(now));
        if self.states.len() < self.settings.max_topics {
            return;
        }
        let mut candidates: Vec<(Instant, Arc<str>)> = self
            .states
            .iter()
            .filter(|(_, s)| s.waiting.is_empty())
            .map(|(k, s)| (s.tat, k.clone()))
            .collect();
        candidates.sort_unstable();
        let forget = (self.settings.max_topics / 10).max(1);
        for (_, key) in candidates.into_iter().take(forget) {
            self.states.remove(&key);
        }
    }
}

/// Logs how many messages a node dropped, at most once per interval, so that a flood
/// shows as one line every few seconds rather than one per message.
struct DropLog {
    id: NodeId,
    what: &'static str,
    pending: u64,
    total: u64,
    last: Option<Instant>,
}

impl DropLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn new(id: NodeId, what: &'static str) -> Self {
        DropLog {
            id,
            what,
            pending: 0,
            total: 0,
            last: None,
        }
    }

    fn count(&mut self, now: Instant) {
        self.pending += 1;
        self.total += 1;
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= Self::INTERVAL)
        {
            tracing::info!(
                node = %self.id,
                messages = self.pending,
                total = self.total,
                "{}",
                self.what
            );
            self.pending = 0;
            self.last = Some(now);
        }
    }
}

/// `mode: drop`: a synchronous transform; time comes from the engine's clock.
struct Dropper {
    limiter: Limiter,
    clock: Clock,
    log: DropLog,
}

impl Transform for Dropper {
    fn process(&mut self, msg: Msg, out: &mut Emit) {
        let now = self.clock.now();
        let key = self.limiter.key(&msg);
        let settings = self.limiter.settings;
        if self.limiter.state(&key, now).admit(now, &settings).is_ok() {
            out.out(msg);
        } else {
            // Over the limit by configuration: a deliberate end, like a filter's.
            msg.done();
            self.log.count(now);
        }
    }
}

/// What became of an offered message in queue mode.
enum Offer {
    /// Within the limit: send it now.
    Pass(Msg),
    /// Waiting for its turn.
    Queued,
    /// The queue is full: the message is lost to overflow.
    Full(Msg),
}

/// `mode: queue`: waiting messages per key and the schedule of their release.
struct Queue {
    limiter: Limiter,
    max_queued: usize,
    queued: usize,
    /// One entry per key with waiting messages: when its head may go. The sequence
    /// number keeps keys due at the same instant in the order they were scheduled.
    due: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    sequence: u64,
}

impl Queue {
    fn new(limiter: Limiter, max_queued: usize) -> Self {
        Queue {
            limiter,
            max_queued,
            queued: 0,
            due: BinaryHeap::new(),
            sequence: 0,
        }
    }

    fn schedule(&mut self, at: Instant, key: Arc<str>) {
        self.sequence += 1;
        self.due.push(Reverse((at, self.sequence, key)));
    }

    fn offer(&mut self, msg: Msg, now: Instant) -> Offer {
        let key = self.limiter.key(&msg);
        let settings = self.limiter.settings;
        let state = self.limiter.state(&key, now);
        // Behind waiting messages of the same key, a newcomer waits too: order is kept.
        let release_at = if state.waiting.is_empty() {
            match state.admit(now, &settings) {
                Ok(()) => return Offer::Pass(msg),
                Err(at) => Some(at),
            }
        } else {
            None
        };
        if self.queued >= self.max_queued {
            return Offer::Full(msg);
        }
        state.waiting.push_back(msg);
        self.queued += 1;
        if let Some(at) = release_at {
            self.schedule(at, key);
        }
        Offer::Queued
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Moves every message whose turn has come to `out`, in order.
    fn release(&mut self, now: Instant, out: &mut Vec<Msg>) {
        let settings = self.limiter.settings;
        while let Some(Reverse((at, _, _))) = self.due.peek()
            && *at <= now
        {
            let Some(Reverse((_, _, key))) = self.due.pop() else {
                break;
            };
            // Keys with waiting messages are never forgotten, so the state is there.
            let Some(state) = self.limiter.states.get_mut(&key) else {
                continue;
            };
            match state.admit(now, &settings) {
                Ok(()) => {
                    if let Some(msg) = state.waiting.pop_front() {
                        self.queued -= 1;
                        out.push(msg);
                    }
                    if !state.waiting.is_empty() {
                        let at = state.conforms_at(now, &settings);
                        self.schedule(at, key);
                    }
                }
                // Woken early (cannot happen with a monotonic clock); try again then.
                Err(at) => self.schedule(at, key),
            }
        }
    }
}

async fn run_queue(mut queue: Queue, cx: NodeContext) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut ready = Vec::new();
    let mut inputs_open = true;
    let mut overflow = DropLog::new(cx.id.clone(), "rate_limit queue is full, messages dropped");
    loop {
        let next = queue.next_due();
        if !inputs_open && next.is_none() {
            // Inputs closed and the queue drained: done.
            return Ok(());
        }
        tokio::select! {
            biased;
            () = cx.clock.sleep_until(next.unwrap_or_else(|| cx.clock.now())), if next.is_some() => {
                queue.release(cx.clock.now(), &mut ready);
            }
            n = inbox.recv_many(&mut batch, BATCH), if inputs_open => {
                if n == 0 {
                    // Keep releasing what waits, at the rate, until the queue is empty
                    // (or the engine's drain deadline aborts the node).
                    inputs_open = false;
                    continue;
                }
                cx.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                let now = cx.clock.now();
                for msg in batch.drain(..) {
                    match queue.offer(msg, now) {
                        Offer::Pass(msg) => ready.push(msg),
                        Offer::Queued => {}
                        Offer::Full(msg) => {
                            msg.dropped();
                            overflow.count(now);
                        }
                    }
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
    use crate::engine::{Outcome, ShutdownReport};

    fn tracked(topic: &str, n: usize) -> (Msg, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let msg = Msg::tracked(topic, n.to_string(), 0, move |o| tx.send(o).unwrap());
        (msg, rx)
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

    async fn advance_ms(h: &NodeHarness, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        h.settle().await;
    }

    #[tokio::test(start_paused = true)]
    async fn drop_mode_allows_a_burst_then_the_rate() {
        let mut h =
            NodeHarness::start("rate_limit", "rate: 2\nper: 1s", Clock::virtual_at(0)).unwrap();
        let mut outcomes = Vec::new();
        for n in 0..5 {
            let (msg, rx) = tracked("a", n);
            h.send(msg).await;
            outcomes.push(rx);
        }
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["0", "1"]);
        for rx in &outcomes {
            assert_eq!(rx.try_recv().unwrap(), Outcome::Done);
        }
        // Half a period refills one message.
        advance_ms(&h, 500).await;
        h.send(Msg::new("a", "5", 0)).await;
        h.send(Msg::new("a", "6", 0)).await;
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["5"]);
        // A whole idle period refills the burst, no more.
        advance_ms(&h, 1500).await;
        for n in 7..10 {
            h.send(Msg::new("a", n.to_string(), 0)).await;
        }
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["7", "8"]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn per_topic_or_global() {
        let mut h =
            NodeHarness::start("rate_limit", "rate: 1\nper: 10s", Clock::virtual_at(0)).unwrap();
        for topic in ["a", "b", "a", "b", "c"] {
            h.send(Msg::new(topic, topic, 0)).await;
        }
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["a", "b", "c"]);
        h.shutdown().await;

        let mut h = NodeHarness::start(
            "rate_limit",
            "rate: 1\nper: 10s\nper_topic: false",
            Clock::virtual_at(0),
        )
        .unwrap();
        for topic in ["a", "b", "c"] {
            h.send(Msg::new(topic, topic, 0)).await;
        }
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["a"]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn queue_mode_releases_in_order_at_the_rate() {
        let mut h = NodeHarness::start(
            "rate_limit",
            "rate: 2\nper: 1s\nmode: queue",
            Clock::virtual_at(0),
        )
        .unwrap();
        let mut outcomes = Vec::new();
        for n in 0..5 {
            let (msg, rx) = tracked("a", n);
            h.send(msg).await;
            outcomes.push(rx);
        }
        h.send(Msg::new("b", "b0", 0)).await;
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["0", "1", "b0"]);
        assert!(outcomes[2].try_recv().is_err(), "queued, not ended");
        advance_ms(&h, 499).await;
        assert!(h.drain("out").is_empty(), "nothing before its turn");
        advance_ms(&h, 1).await;
        assert_eq!(payloads(h.drain("out")), ["2"]);
        // A newcomer on a topic with waiting messages queues behind them.
        h.send(Msg::new("a", "5", 0)).await;
        h.settle().await;
        assert!(h.drain("out").is_empty());
        advance_ms(&h, 500).await;
        assert_eq!(payloads(h.drain("out")), ["3"]);
        advance_ms(&h, 500).await;
        assert_eq!(payloads(h.drain("out")), ["4"]);
        advance_ms(&h, 500).await;
        assert_eq!(payloads(h.drain("out")), ["5"]);
        advance_ms(&h, 5000).await;
        assert!(h.drain("out").is_empty());
        for rx in &outcomes {
            assert_eq!(rx.try_recv().unwrap(), Outcome::Done);
        }
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn queue_overflow_is_dropped() {
        let mut h = NodeHarness::start(
            "rate_limit",
            "rate: 1\nper: 1s\nmode: queue\nmax_queued: 2",
            Clock::virtual_at(0),
        )
        .unwrap();
        let mut outcomes = Vec::new();
        for n in 0..5 {
            let (msg, rx) = tracked(if n % 2 == 0 { "a" } else { "b" }, n);
            h.send(msg).await;
            outcomes.push(rx);
        }
        h.settle().await;
        // a:0 and b:1 pass; a:2 and b:3 wait; a:4 finds the queue (2 in all) full.
        assert_eq!(payloads(h.drain("out")), ["0", "1"]);
        assert_eq!(outcomes[4].try_recv().unwrap(), Outcome::Dropped);
        advance_ms(&h, 1000).await;
        assert_eq!(payloads(h.drain("out")), ["2", "3"]);
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn queue_drains_after_inputs_close() {
        let mut h = NodeHarness::start(
            "rate_limit",
            "rate: 1\nper: 2s\nmode: queue\nper_topic: false",
            Clock::virtual_at(0),
        )
        .unwrap();
        for n in 0..3 {
            h.send(Msg::new(format!("t{n}"), n.to_string(), 0)).await;
        }
        h.settle().await;
        assert_eq!(payloads(h.drain("out")), ["0"]);
        h.close_input();
        h.settle().await;
        advance_ms(&h, 2000).await;
        assert_eq!(payloads(h.drain("out")), ["1"]);
        advance_ms(&h, 2000).await;
        assert_eq!(payloads(h.drain("out")), ["2"]);
        assert_eq!(h.shutdown().await, ShutdownReport::Drained);
    }

    #[tokio::test(start_paused = true)]
    async fn topic_states_are_bounded() {
        let settings = Settings {
            interval: Duration::from_secs(10),
            tolerance: Duration::ZERO,
            per_topic: true,
            max_topics: 100,
        };
        let mut limiter = Limiter::new(settings);
        let start = Instant::now();
        let pass = |limiter: &mut Limiter, topic: &str, at: Instant| {
            let key: Arc<str> = topic.into();
            limiter.state(&key, at).admit(at, &settings).is_ok()
        };
        for n in 0..1000 {
            let at = start + Duration::from_millis(n);
            assert!(pass(&mut limiter, &format!("t{n}"), at));
            assert!(limiter.states.len() <= 100);
        }
        // The most recent topics are still limited; the oldest were forgotten.
        let now = start + Duration::from_millis(1000);
        assert!(!pass(&mut limiter, "t999", now));
        assert!(pass(&mut limiter, "t0", now));
        // Once their limit has passed, topics are idle: the next sweep (when the map
        // is full again) forgets all of them and nothing else.
        let later = now + Duration::from_secs(11);
        let before = limiter.states.len();
        for n in 0..=(100 - before) {
            assert!(pass(&mut limiter, &format!("fresh{n}"), later));
        }
        assert_eq!(limiter.states.len(), 100 - before + 1);
        assert!(limiter.states.keys().all(|k| k.starts_with("fresh")));
    }

    #[test]
    fn options_are_checked() {
        let err = |options: &str| {
            NodeHarness::start("rate_limit", options, Clock::system())
                .err()
                .unwrap()
        };
        assert_eq!(err("rate: 0"), "rate: `rate` must be at least 1");
        assert_eq!(
            err("rate: 10\nper: 0s"),
            "rate: `rate` is too high for `per`: at most one message per microsecond; raise `per` or lower `rate`; per: `per` must be longer than 0s"
        );
        assert_eq!(
            err("rate: 1\nmax_queued: 5"),
            "max_queued: `max_queued` applies to `mode: queue`; remove it or set the mode"
        );
        assert!(err("rate: 1\nper: 1x").contains("unknown unit `x`"));
        assert!(err("per: 1s").contains("missing field `rate`"));
    }

    #[test]
    fn yaml_error_is_located() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      slow: { type: rate_limit, inputs: [tick], rate: 5, mode: burst }
";
        let err = crate::flow::load_sources(
            vec![(std::path::PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            ["f.yaml:6:64: f/slow: `mode`: unknown variant `burst`, expected `drop` or `queue`"]
        );
    }
}
