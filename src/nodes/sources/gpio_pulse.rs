//! `gpio.pulse`: an energy meter's pulse output (S0) on a GPIO line, as a durable
//! counter in Wh and a gauge in W.
//!
//! The counter is `pulses x wh_per_pulse`, kept in the node's state (`cx.state`) and
//! committed before any message reporting it leaves: events that arrive while a commit
//! is in flight join the next one, so a pulse costs one group-committed write at most,
//! and a restart or a power cut never shows a counter lower than one already sent.
//!
//! The gauge is `3600 x wh_per_pulse / seconds` between consecutive pulses (kernel
//! timestamps). Between pulses it decays: no pulse for `elapsed` seconds means the
//! average power over that time was below `3600 x wh_per_pulse / elapsed`, so that bound
//! is sent when it is lower than the last gauge sent, and 0 once it is below
//! `zero_below`. Before the second pulse (no interval yet) the bound counts from the
//! node's start.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::state::NodeKv;
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture, PortId};
use crate::flow::values::HumanDuration;
use crate::nodes::gpio::sim::PulseGenerator;
use crate::nodes::gpio::{self, Bias, ChipRef, Edge, EdgeKind, InputRequest, LineEvent, LineRef};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `gpio.pulse` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioPulseConfig {
    /// The GPIO chip: `gpiochip0`, a device path, or `sim:NAME` for a simulated chip.
    pub chip: String,
    /// The line: an offset on the chip (`17`) or a line name (`GPIO17`).
    pub line: LineRef,
    /// Energy per pulse in Wh (a meter marked 1000 imp/kWh gives 1.0; 800 imp/kWh 1.25).
    #[serde(default = "default_wh_per_pulse")]
    pub wh_per_pulse: f64,
    /// The edge that counts a pulse: `rising` (default) or `falling`.
    #[serde(default)]
    pub edge: Edge,
    /// The line's pull resistor: `pull_up`, `pull_down` or `disabled`; absent leaves it.
    pub bias: Option<Bias>,
    /// Edges closer together than this are contact bounce (kernel debounce), e.g. `5ms`.
    pub debounce: Option<HumanDuration>,
    /// The pulse pulls the line low (an S0 output wired to ground with a pull-up).
    #[serde(default)]
    pub active_low: bool,
    /// Also emit the gauge and the counter this often without pulses (default `10s`).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// The decaying gauge reads 0 once its bound falls below this many W (default 1).
    #[serde(default = "default_zero_below")]
    pub zero_below: f64,
    /// The `id` field of the payloads and the messages' topic (default: the node's name).
    pub id: Option<String>,
    /// The counter in Wh when the node has no state yet (the meter's register today).
    pub counter_start: Option<f64>,
    /// A built-in pulse generator for demos on a simulated chip; ignored on a real one,
    /// so one flow file serves a PC and a Pi.
    pub simulate: Option<SimulateConfig>,
}

/// The built-in pulse generator of a simulated chip.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Power in W, or a list of powers held in turn for `hold` each (`[300, 2500, 0]`).
    pub watts: Watts,
    /// How long each power of a list lasts (default `5m`).
    pub hold: Option<HumanDuration>,
    /// Pulse width (default `90ms`, what S0 meters use).
    pub pulse_width: Option<HumanDuration>,
}

/// One power or a sequence of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Watts {
    /// A constant power.
    One(f64),
    /// Powers held in turn.
    Many(Vec<f64>),
}

impl Watts {
    fn levels(&self) -> Vec<f64> {
        match self {
            Watts::One(w) => vec![*w],
            Watts::Many(ws) => ws.clone(),
        }
    }
}

fn default_wh_per_pulse() -> f64 {
    1.0
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_zero_below() -> f64 {
    1.0
}

/// Most events read into one commit.
const MAX_BATCH: usize = 256;

/// The state key of the meter.
const STATE_KEY: &str = "meter";

impl Config for GpioPulseConfig {
    const TYPE: &'static str = "gpio.pulse";
    const ROLE: Role = Role::Source;
    const DOC: &'static str =
        "Counts an energy meter's pulses on a GPIO line: a durable counter in Wh and a gauge in W";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        gpio::validate_line_options(
            &self.chip,
            &self.line,
            self.debounce.map(HumanDuration::get),
            &mut issues,
        );
        if !(self.wh_per_pulse.is_finite() && self.wh_per_pulse > 0.0) {
            issues.push(ConfigIssue::new(
                "wh_per_pulse",
                "must be a positive number of Wh (1000 imp/kWh is 1.0)",
            ));
        }
        if self.edge == Edge::Both {
            issues.push(ConfigIssue::new(
                "edge",
                "a pulse is counted on one edge: give `rising` or `falling`",
            ));
        }
        if self.interval.get() < Duration::from_millis(100) {
            issues.push(ConfigIssue::new("interval", "must be at least 100ms"));
        }
        if !(self.zero_below.is_finite() && self.zero_below >= 0.0) {
            issues.push(ConfigIssue::new(
                "zero_below",
                "must be a number of W, 0 or more",
            ));
        }
        if let Some(start) = self.counter_start
            && !(start.is_finite() && start >= 0.0)
        {
            issues.push(ConfigIssue::new(
                "counter_start",
                "must be a number of Wh, 0 or more",
            ));
        }
        if let Some(simulate) = &self.simulate {
            let levels = simulate.watts.levels();
            if levels.is_empty() || levels.len() > 1000 {
                issues.push(ConfigIssue::new(
                    "simulate.watts",
                    "give a power in W or a list of 1 to 1000 of them",
                ));
            }
            if levels.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
                issues.push(ConfigIssue::new(
                    "simulate.watts",
                    "powers must be numbers of W, 0 or more",
                ));
            }
            if simulate
                .hold
                .is_some_and(|h| h.get() < Duration::from_secs(1))
            {
                issues.push(ConfigIssue::new("simulate.hold", "must be at least 1s"));
            }
            if simulate
                .pulse_width
                .is_some_and(|w| w.get().is_zero() || w.get() > Duration::from_secs(1))
            {
                issues.push(ConfigIssue::new(
                    "simulate.pulse_width",
                    "must be between 1ms and 1s",
                ));
            }
        }
        issues
    }

    fn ports(&self) -> Vec<String> {
        vec!["gauge".to_string(), "counter".to_string()]
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let chip = ChipRef::parse(&self.chip).map_err(|e| vec![ConfigIssue::new("chip", e)])?;
        let id: Arc<str> = self
            .id
            .clone()
            .unwrap_or_else(|| cx.id.node.to_string())
            .into();
        let node = Arc::new(PulseMeter {
            chip,
            request: InputRequest {
                line: self.line.clone(),
                edge: self.edge,
                bias: self.bias,
                debounce: self.debounce.map(HumanDuration::get),
                active_low: self.active_low,
                consumer: cx.id.to_string(),
            },
            wh_per_pulse: self.wh_per_pulse,
            interval: self.interval.get(),
            zero_below: self.zero_below,
            counter_start: self.counter_start.unwrap_or(0.0),
            id,
            simulate: self.simulate.as_ref().map(|s| Simulation {
                watts: s.watts.levels(),
                hold: s.hold.map_or(Duration::from_secs(300), HumanDuration::get),
                width: s
                    .pulse_width
                    .map_or(Duration::from_millis(90), HumanDuration::get),
            }),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(node.clone().run(cx))
        }))
    }
}

struct Simulation {
    watts: Vec<f64>,
    hold: Duration,
    width: Duration,
}

/// The built node.
struct PulseMeter {
    chip: ChipRef,
    request: InputRequest,
    wh_per_pulse: f64,
    interval: Duration,
    zero_below: f64,
    counter_start: f64,
    id: Arc<str>,
    simulate: Option<Simulation>,
}

/// The durable part of a meter, as stored under [`STATE_KEY`] (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredMeter {
    /// Wh counted before `pulses` (at earlier `wh_per_pulse` settings).
    pub base_wh: f64,
    /// Pulses counted at `wh_per_pulse`.
    pub pulses: u64,
    /// The setting `pulses` were counted at: changing the option later keeps the Wh
    /// already counted.
    pub wh_per_pulse: f64,
    /// Events the kernel lost (sequence gaps), counted as pulses too.
    pub lost: u64,
}

impl StoredMeter {
    /// The counter in Wh.
    pub fn counter_wh(&self) -> f64 {
        self.base_wh + self.pulses as f64 * self.wh_per_pulse
    }

    /// Reads the stored meter, or starts one at `counter_start`; a changed
    /// `wh_per_pulse` moves the Wh counted so far into `base_wh`.
    fn load(state: &NodeKv, wh_per_pulse: f64, counter_start: f64) -> Result<Self, NodeError> {
        let stored = state
            .get(STATE_KEY)
            .map_err(|e| NodeError::new(format!("reading the meter's state: {e}")))?;
        let Some(bytes) = stored else {
            return Ok(StoredMeter {
                base_wh: counter_start,
                pulses: 0,
                wh_per_pulse,
                lost: 0,
            });
        };
        let mut meter: StoredMeter = serde_json::from_slice(&bytes).map_err(|e| {
            NodeError::new(format!(
                "the meter's stored state is unreadable ({e}): refusing to restart the \
                 counter from 0; fix or remove the key `{STATE_KEY}` of this node"
            ))
        })?;
        if meter.wh_per_pulse != wh_per_pulse {
            meter.base_wh = meter.counter_wh();
            meter.pulses = 0;
            meter.wh_per_pulse = wh_per_pulse;
        }
        Ok(meter)
    }
}

/// The meter's arithmetic, apart from IO so it is tested on plain numbers.
#[derive(Debug)]
pub struct Meter {
    /// What is (or will be) stored.
    pub stored: StoredMeter,
    zero_below: f64,
    /// Timestamp of the last pulse (event clock).
    last_pulse_ns: Option<u64>,
    /// Start of the current pulse-free stretch: the last pulse, or the start.
    since_ns: u64,
    /// The last gauge sent: from the last two pulses, or a bound since.
    last_gauge: Option<f64>,
    last_seqno: u32,
}

/// What one event did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counted {
    /// Events the kernel lost just before this one.
    pub lost: u32,
    /// The gauge this pulse gives, if a previous pulse is known.
    pub gauge: Option<f64>,
}

impl Meter {
    /// A meter over `stored`, started at `now_ns` on the event clock.
    pub fn new(stored: StoredMeter, zero_below: f64, now_ns: u64) -> Meter {
        Meter {
            stored,
            zero_below,
            last_pulse_ns: None,
            since_ns: now_ns,
            last_gauge: None,
            last_seqno: 0,
        }
    }

    /// Counts a pulse event. A sequence gap of `n` means `n` pulses the kernel lost:
    /// they are counted (each event is one pulse, since one edge is watched), and the
    /// gauge spreads the `n + 1` pulses over the interval.
    pub fn pulse(&mut self, event: &LineEvent) -> Counted {
        let lost = event
            .line_seqno
            .wrapping_sub(self.last_seqno)
            .wrapping_sub(1);
        // A sequence number that went backwards is a new request, not a loss.
        let lost = if lost > u32::MAX / 2 { 0 } else { lost };
        self.last_seqno = event.line_seqno;
        let pulses = u64::from(lost) + 1;
        self.stored.pulses += pulses;
        self.stored.lost += u64::from(lost);
        let gauge = self.last_pulse_ns.and_then(|previous| {
            let interval = event.timestamp_ns.checked_sub(previous)?;
            (interval > 0).then(|| {
                round3(3600e9 * self.stored.wh_per_pulse * pulses as f64 / interval as f64)
            })
        });
        if gauge.is_some() {
            self.last_gauge = gauge;
        }
        self.last_pulse_ns = Some(event.timestamp_ns);
        self.since_ns = event.timestamp_ns;
        Counted { lost, gauge }
    }

    /// The gauge at `now_ns` with no pulse since the last: the last gauge sent, or the
    /// bound the pulse-free time allows when that is lower (0 below `zero_below`). What
    /// it returns becomes the last gauge, so between pulses the gauge only decays.
    pub fn gauge_at(&mut self, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.since_ns);
        if elapsed == 0 {
            return self.last_gauge.unwrap_or(0.0);
        }
        let bound = 3600e9 * self.stored.wh_per_pulse / elapsed as f64;
        let value = match self.last_gauge {
            Some(gauge) if gauge <= bound => gauge,
            _ if bound < self.zero_below => 0.0,
            _ => round3(bound),
        };
        self.last_gauge = Some(value);
        value
    }

    /// The counter in Wh, rounded to mWh.
    pub fn counter_wh(&self) -> f64 {
        round3(self.stored.counter_wh())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl PulseMeter {
    fn message(&self, wall_ms: i64, value: f64, unit: &str) -> Msg {
        let payload = serde_json::json!({
            "ts": wall_ms.div_euclid(1000),
            "value": value,
            "unit": unit,
            "id": &*self.id,
        });
        Msg::new(self.id.clone(), payload.to_string(), wall_ms)
    }

    /// Commits the meter, retrying with backoff while the store refuses (a full disk):
    /// pulses keep queueing in the kernel meanwhile. `false` if shutdown came first.
    async fn commit(&self, cx: &NodeContext, meter: &Meter) -> Result<bool, NodeError> {
        let bytes = serde_json::to_vec(&meter.stored)
            .map_err(|e| NodeError::new(format!("encoding the meter: {e}")))?;
        let mut backoff = Duration::from_millis(500);
        loop {
            match cx.state.set(STATE_KEY, bytes.clone()).await {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::warn!(node = %cx.id, "cannot store the meter, retrying in {backoff:?}: {e}");
                    tokio::select! {
                        () = cx.clock.sleep(backoff) => {}
                        () = cx.shutdown.cancelled() => return Ok(false),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn run(self: Arc<Self>, cx: NodeContext) -> Result<(), NodeError> {
        let gauge_port = cx.outputs.port("gauge").unwrap_or(PortId(0));
        let counter_port = cx.outputs.port("counter").unwrap_or(PortId(1));
        let stored = StoredMeter::load(&cx.state, self.wh_per_pulse, self.counter_start)?;
        let backend = gpio::backend(&self.chip, &cx.gpio_sim);
        let mut line = backend
            .request_input(&self.request)
            .map_err(NodeError::new)?;
        let mut meter = Meter::new(stored, self.zero_below, line.now_ns());
        let mut generator = match (&self.simulate, &self.chip) {
            (Some(sim), gpio::ChipRef::Sim(name)) => {
                let chip = cx.gpio_sim.chip(name);
                let offset = chip.resolve(&self.request.line).map_err(NodeError::new)?;
                Some(
                    PulseGenerator::new(
                        chip,
                        offset,
                        sim.watts.clone(),
                        sim.hold,
                        sim.width,
                        self.wh_per_pulse,
                        self.request.active_low,
                    )
                    .map_err(NodeError::new)?,
                )
            }
            (Some(_), gpio::ChipRef::Device(_)) => {
                // One flow file serves a PC demo and a Pi: `chip: ${GPIO_CHIP:-sim:meter}`.
                tracing::info!(node = %cx.id, "`simulate` is ignored on a real chip");
                None
            }
            _ => None,
        };
        tracing::info!(
            node = %cx.id,
            chip = %self.chip,
            line = %self.request.line,
            counter_wh = meter.counter_wh(),
            simulated = generator.is_some(),
            "pulse meter started"
        );
        let mut next_tick = cx.clock.now() + self.interval;
        let mut batch: Vec<LineEvent> = Vec::new();
        loop {
            let generator_at = generator.as_ref().map(PulseGenerator::next_at);
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled() => return Ok(()),
                event = line.next_event() => {
                    batch.push(event.map_err(NodeError::new)?);
                    while batch.len() < MAX_BATCH {
                        match line.next_event().now_or_never() {
                            Some(event) => batch.push(event.map_err(NodeError::new)?),
                            None => break,
                        }
                    }
                    if !self.count(&cx, &mut meter, line.now_ns(), &mut batch, gauge_port, counter_port).await? {
                        return Ok(());
                    }
                }
                () = cx.clock.sleep_until(next_tick) => {
                    next_tick += self.interval;
                    let now = cx.clock.now();
                    if next_tick < now {
                        next_tick = now + self.interval;
                    }
                    let wall_ms = cx.clock.wall_ms();
                    let gauge = meter.gauge_at(line.now_ns());
                    cx.outputs.emit(gauge_port, self.message(wall_ms, gauge, "W")).await;
                    cx.outputs.emit(counter_port, self.message(wall_ms, meter.counter_wh(), "Wh")).await;
                }
                () = tokio::time::sleep_until(generator_at.unwrap_or_else(|| cx.clock.now())), if generator_at.is_some() => {
                    if let Some(generator) = generator.as_mut() {
                        generator.fire().map_err(NodeError::new)?;
                    }
                }
            }
        }
    }

    /// Counts `batch` (emptied), commits, then emits one gauge (from the second pulse on)
    /// and one counter per pulse. `false` if shutdown came before the commit.
    async fn count(
        &self,
        cx: &NodeContext,
        meter: &mut Meter,
        now_ns: u64,
        batch: &mut Vec<LineEvent>,
        gauge_port: PortId,
        counter_port: PortId,
    ) -> Result<bool, NodeError> {
        let mut readings = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            if event.kind != expected_kind(self.request.edge) {
                continue;
            }
            let counted = meter.pulse(&event);
            if counted.lost > 0 {
                tracing::warn!(
                    node = %cx.id,
                    lost = counted.lost,
                    lost_total = meter.stored.lost,
                    "the kernel lost pulse events (sequence gap); counted them as pulses"
                );
            }
            let wall_ms = gpio::event_wall_ms(&cx.clock, now_ns, event.timestamp_ns);
            readings.push((wall_ms, counted.gauge, meter.counter_wh()));
        }
        if readings.is_empty() {
            return Ok(true);
        }
        if !self.commit(cx, meter).await? {
            return Ok(false);
        }
        for (wall_ms, gauge, counter) in readings {
            if let Some(gauge) = gauge {
                cx.outputs
                    .emit(gauge_port, self.message(wall_ms, gauge, "W"))
                    .await;
            }
            cx.outputs
                .emit(counter_port, self.message(wall_ms, counter, "Wh"))
                .await;
        }
        Ok(true)
    }
}

fn expected_kind(edge: Edge) -> EdgeKind {
    match edge {
        Edge::Falling => EdgeKind::Falling,
        _ => EdgeKind::Rising,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seconds: f64, seqno: u32) -> LineEvent {
        LineEvent {
            kind: EdgeKind::Rising,
            timestamp_ns: (seconds * 1e9) as u64,
            line_seqno: seqno,
        }
    }

    fn meter(wh: f64) -> Meter {
        Meter::new(
            StoredMeter {
                base_wh: 0.0,
                pulses: 0,
                wh_per_pulse: wh,
                lost: 0,
            },
            1.0,
            0,
        )
    }

    #[test]
    fn gauge_from_intervals_and_counter_from_pulses() {
        let mut m = meter(1.0);
        assert_eq!(
            m.pulse(&event(1.0, 1)).gauge,
            None,
            "one pulse gives no interval"
        );
        assert_eq!(m.pulse(&event(8.2, 2)).gauge, Some(500.0));
        assert_eq!(m.pulse(&event(11.8, 3)).gauge, Some(1000.0));
        assert_eq!(m.counter_wh(), 3.0);
        let mut m = meter(1.25);
        m.pulse(&event(0.0, 1));
        assert_eq!(m.pulse(&event(3.0, 2)).gauge, Some(1500.0));
        assert_eq!(m.counter_wh(), 2.5);
    }

    #[test]
    fn the_gauge_decays_to_the_bound_and_then_to_zero() {
        let mut m = meter(1.0);
        m.pulse(&event(0.0, 1));
        m.pulse(&event(3.6, 2)); // 1000 W
        let at = |s: f64| (s * 1e9) as u64;
        assert_eq!(
            m.gauge_at(at(5.0)),
            1000.0,
            "1.4 s without a pulse allows more"
        );
        assert_eq!(m.gauge_at(at(3.6 + 7.2)), 500.0);
        assert_eq!(m.gauge_at(at(3.6 + 36.0)), 100.0);
        assert_eq!(
            m.gauge_at(at(3.6 + 3600.0)),
            1.0,
            "1 W is not below zero_below"
        );
        assert_eq!(m.gauge_at(at(3.6 + 3601.0)), 0.0);
    }

    #[test]
    fn sequence_gaps_count_as_pulses() {
        let mut m = meter(1.0);
        m.pulse(&event(0.0, 1));
        let counted = m.pulse(&event(3.6, 4));
        assert_eq!(counted.lost, 2);
        assert_eq!(counted.gauge, Some(3000.0), "three pulses in 3.6 s");
        assert_eq!(m.counter_wh(), 4.0);
        assert_eq!(m.stored.lost, 2);
    }

    #[test]
    fn a_changed_wh_per_pulse_keeps_what_was_counted() {
        let state = crate::engine::StateStore::memory().node("f/n");
        let fresh = StoredMeter::load(&state, 1.0, 500.0).unwrap();
        assert_eq!(fresh.counter_wh(), 500.0);
        state
            .commit_blocking(vec![(
                STATE_KEY.into(),
                Some(
                    serde_json::to_vec(&StoredMeter {
                        base_wh: 500.0,
                        pulses: 10,
                        wh_per_pulse: 1.0,
                        lost: 0,
                    })
                    .unwrap(),
                ),
            )])
            .unwrap();
        let changed = StoredMeter::load(&state, 0.5, 0.0).unwrap();
        assert_eq!(changed.counter_wh(), 510.0);
        assert_eq!((changed.pulses, changed.wh_per_pulse), (0, 0.5));
        state
            .commit_blocking(vec![(STATE_KEY.into(), Some(b"garbage".to_vec()))])
            .unwrap();
        assert!(StoredMeter::load(&state, 1.0, 0.0).is_err());
    }
}
