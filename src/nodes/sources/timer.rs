//! `timer`: emits a message every `interval`, or on a `cron` schedule.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Local, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `timer` node. Give exactly one of `interval` and `cron`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerConfig {
    /// Emit every this long, e.g. `10s`.
    pub interval: Option<HumanDuration>,
    /// Emit on this cron schedule: 5 fields (`*/5 * * * *`), or 6 with seconds first.
    pub cron: Option<String>,
    /// Time zone of `cron`.
    #[serde(default)]
    pub timezone: TimeZoneChoice,
    /// Topic of the messages (default: the node's name).
    pub topic: Option<String>,
    /// Payload: a string is sent as is, anything else as JSON. Default: the wall-clock
    /// time in milliseconds since the Unix epoch, as Node-RED's inject node does.
    pub payload: Option<serde_json::Value>,
    /// Also emit once at start (interval timers only; default false).
    #[serde(default)]
    pub at_start: bool,
    /// Stop after this many messages (default: never).
    pub count: Option<u64>,
}

/// Which clock a cron schedule reads.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeZoneChoice {
    /// The machine's local time zone.
    #[default]
    Local,
    /// UTC.
    Utc,
}

fn parse_cron(pattern: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| format!("invalid cron pattern `{pattern}`: {e}"))
}

impl Config for TimerConfig {
    const TYPE: &'static str = "timer";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "Emits a message every `interval` or on a `cron` schedule";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        match (&self.interval, &self.cron) {
            (None, None) => issues.push(ConfigIssue::new("", "a timer needs `interval` or `cron`")),
            (Some(_), Some(_)) => issues.push(ConfigIssue::new(
                "cron",
                "give either `interval` or `cron`, not both",
            )),
            (Some(interval), None) if interval.get() < Duration::from_millis(1) => {
                issues.push(ConfigIssue::new("interval", "must be at least 1ms"));
            }
            (None, Some(pattern)) => {
                if let Err(e) = parse_cron(pattern) {
                    issues.push(ConfigIssue::new("cron", e));
                }
            }
            _ => {}
        }
        if self.at_start && self.cron.is_some() {
            issues.push(ConfigIssue::new(
                "at_start",
                "`at_start` applies to interval timers only",
            ));
        }
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let schedule = match (&self.interval, &self.cron) {
            (Some(interval), _) => Schedule::Every(interval.get()),
            (None, Some(pattern)) => Schedule::Cron(
                Box::new(parse_cron(pattern).map_err(|e| vec![ConfigIssue::new("cron", e)])?),
                self.timezone,
            ),
            (None, None) => {
                return Err(vec![ConfigIssue::new(
                    "",
                    "a timer needs `interval` or `cron`",
                )]);
            }
        };
        let timer = Arc::new(Timer {
            schedule,
            topic: self
                .topic
                .clone()
                .unwrap_or_else(|| cx.id.node.to_string())
                .into(),
            payload: self.payload.as_ref().map(|p| match p {
                serde_json::Value::String(s) => Bytes::from(s.clone()),
                other => Bytes::from(other.to_string()),
            }),
            at_start: self.at_start,
            count: self.count,
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(timer.clone().run(cx))
        }))
    }
}

enum Schedule {
    Every(Duration),
    Cron(Box<Cron>, TimeZoneChoice),
}

struct Timer {
    schedule: Schedule,
    topic: Arc<str>,
    payload: Option<Bytes>,
    at_start: bool,
    count: Option<u64>,
}

impl Timer {
    fn message(&self, cx: &NodeContext) -> Msg {
        let now = cx.clock.wall_ms();
        let payload = self
            .payload
            .clone()
            .unwrap_or_else(|| Bytes::from(now.to_string()));
        Msg::new(self.topic.clone(), payload, now)
    }

    /// Milliseconds since the epoch of the next cron occurrence after `now_ms`.
    fn next_cron(cron: &Cron, tz: TimeZoneChoice, now_ms: i64) -> Result<i64, NodeError> {
        fn next<Z: TimeZone>(cron: &Cron, at: DateTime<Z>) -> Result<i64, NodeError> {
            cron.find_next_occurrence(&at, false)
                .map(|t| t.timestamp_millis())
                .map_err(|e| NodeError::new(format!("cron schedule has no next occurrence: {e}")))
        }
        let utc = DateTime::<Utc>::from_timestamp_millis(now_ms)
            .ok_or_else(|| NodeError::new("clock out of range"))?;
        match tz {
            TimeZoneChoice::Utc => next(cron, utc),
            TimeZoneChoice::Local => next(cron, utc.with_timezone(&Local)),
        }
    }

    async fn run(self: Arc<Self>, cx: NodeContext) -> Result<(), NodeError> {
        let mut sent = 0u64;
        let limit = self.count.unwrap_or(u64::MAX);
        let mut next_tick = cx.clock.now();
        if let Schedule::Every(interval) = self.schedule
            && !self.at_start
        {
            next_tick += interval;
        }
        while sent < limit {
            match &self.schedule {
                Schedule::Every(interval) => {
                    tokio::select! {
                        () = cx.clock.sleep_until(next_tick) => {}
                        () = cx.shutdown.cancelled() => return Ok(()),
                    }
                    // Fixed-rate ticks; after a long stall, skip the missed ones instead
                    // of bursting them.
                    next_tick += *interval;
                    let now = cx.clock.now();
                    if next_tick < now {
                        next_tick = now + *interval;
                    }
                }
                Schedule::Cron(cron, tz) => {
                    let at = Self::next_cron(cron, *tz, cx.clock.wall_ms())?;
                    tokio::select! {
                        () = cx.clock.sleep_until_wall(at) => {}
                        () = cx.shutdown.cancelled() => return Ok(()),
                    }
                }
            }
            cx.emit(self.message(&cx)).await;
            sent += 1;
        }
        // Count reached: stay idle until shutdown so the node does not look finished
        // early to people watching its state.
        cx.shutdown.cancelled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_next_occurrence_utc() {
        let cron = parse_cron("*/15 * * * *").unwrap();
        // 2026-01-01T00:07:00Z -> 00:15:00Z
        let now = 1_767_226_020_000;
        let next = Timer::next_cron(&cron, TimeZoneChoice::Utc, now).unwrap();
        assert_eq!(next, 1_767_226_500_000);
        let with_seconds = parse_cron("30 * * * * *").unwrap();
        let next = Timer::next_cron(&with_seconds, TimeZoneChoice::Utc, now).unwrap();
        assert_eq!(next, 1_767_226_050_000);
    }

    #[test]
    fn bad_cron_is_reported() {
        assert!(
            parse_cron("61 * * * *")
                .unwrap_err()
                .contains("invalid cron pattern")
        );
    }
}

#[cfg(test)]
mod run_tests {
    use crate::engine::Clock;
    use crate::engine::harness::NodeHarness;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn interval_ticks_on_the_virtual_clock() {
        let clock = Clock::virtual_at(1_000_000);
        let mut h = NodeHarness::start(
            "timer",
            "interval: 10s\npayload: {on: true}\ncount: 3",
            clock,
        )
        .unwrap();
        h.settle().await;
        assert!(
            h.drain("out").is_empty(),
            "no tick before the first interval"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        h.settle().await;
        let first = h.drain("out");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].payload_str(), Some(r#"{"on":true}"#));
        assert_eq!(&*first[0].topic, "node");
        assert_eq!(first[0].timestamp_ms, 1_010_000);
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(10)).await;
            h.settle().await;
            assert_eq!(h.drain("out").len(), 1);
        }
        tokio::time::advance(Duration::from_secs(100)).await;
        h.settle().await;
        assert!(h.drain("out").is_empty(), "count stops the timer at 3");
        h.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn default_payload_is_the_timestamp() {
        let clock = Clock::virtual_at(5_000);
        let mut h = NodeHarness::start("timer", "interval: 1s\nat_start: true\ntopic: tick", clock)
            .unwrap();
        let msg = h.recv("out").await.unwrap();
        assert_eq!(msg.payload_str(), Some("5000"));
        assert_eq!(&*msg.topic, "tick");
        h.shutdown().await;
    }

    #[test]
    fn options_are_checked() {
        let err = NodeHarness::start("timer", "payload: 1", Clock::system())
            .err()
            .unwrap();
        assert_eq!(err, "a timer needs `interval` or `cron`");
        let err = NodeHarness::start("timer", "interval: 1s\ncron: '* * * * *'", Clock::system())
            .err()
            .unwrap();
        assert_eq!(err, "cron: give either `interval` or `cron`, not both");
    }
}
