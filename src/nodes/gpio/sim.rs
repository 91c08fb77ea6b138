//! The simulated chip (`chip: sim:NAME`): 64 lines that tests and demos drive, with the
//! kernel's behaviour where nodes can see it: edge detection, debounce (an edge counts
//! once the line held its new level for the period, stamped at the end of it), bias,
//! active low, busy lines, and per-line sequence numbers that jump when events are lost.
//!
//! Time is tokio's, so on a paused runtime the chip runs on the virtual clock: an event
//! stamped `t` happened `t` ns after the chip was made.
//!
//! Chips live in a [`SimChips`] registry owned by the engine's options and handed to
//! nodes through their context: flows of one engine that name `sim:meter` share that
//! chip (a demo can wire a `gpio.out` and a `gpio.in` to it), and two engines in one
//! process (two tests) never see each other's.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{
    Bias, Edge, EdgeKind, EventFuture, GpioBackend, GpioError, InputLine, InputRequest, LineEvent,
    LineRef, OutputLine, OutputRequest, resolve_line,
};

/// Lines per simulated chip, named `GPIO0`..`GPIO63` like a Raspberry Pi's.
pub const SIM_LINES: u32 = 64;

/// Raw level changes a requested line buffers before it loses them, like the kernel's
/// event buffer; a lost edge shows as a jump of the next event's sequence number.
pub const EVENT_BUFFER: usize = 256;

/// The simulated chips of one engine, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct SimChips {
    chips: Arc<Mutex<HashMap<String, SimChip>>>,
}

impl fmt::Debug for SimChips {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = lock(&self.chips).keys().cloned().collect();
        f.debug_struct("SimChips").field("chips", &names).finish()
    }
}

impl SimChips {
    /// The chip named `name`, made on first use.
    pub fn chip(&self, name: &str) -> SimChip {
        lock(&self.chips)
            .entry(name.to_string())
            .or_insert_with(|| SimChip::new(name))
            .clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One simulated chip; a handle to drive and watch its lines. Cheap to clone.
#[derive(Clone)]
pub struct SimChip {
    shared: Arc<Shared>,
}

struct Shared {
    label: String,
    /// Event timestamps count from here.
    epoch: Instant,
    lines: Mutex<Vec<SimLine>>,
    /// Woken on every change of a line (level, request, release).
    changed: Notify,
    next_request: AtomicU64,
}

#[derive(Default)]
struct SimLine {
    name: String,
    /// Level forced from outside (a test, the pulse generator).
    driven: Option<bool>,
    /// Level the bias pulls an undriven line to.
    pull: Option<bool>,
    /// Level driven by an output request.
    output: Option<bool>,
    /// Who holds the line.
    consumer: Option<String>,
    watcher: Option<Watcher>,
    /// Events lost since the last one read; added to the next sequence number.
    lost: u32,
}

impl SimLine {
    /// The physical level: an output wins, then an outside driver, then the pull.
    fn physical(&self) -> bool {
        self.output.or(self.driven).or(self.pull).unwrap_or(false)
    }
}

/// The input request watching a line.
struct Watcher {
    id: u64,
    tx: mpsc::Sender<RawChange>,
    edge: Edge,
    active_low: bool,
}

/// A physical level change, before debounce and edge filtering.
#[derive(Clone, Copy, Debug)]
struct RawChange {
    high: bool,
    at_ns: u64,
}

impl fmt::Debug for SimChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimChip")
            .field("label", &self.shared.label)
            .finish_non_exhaustive()
    }
}

impl SimChip {
    fn new(name: &str) -> SimChip {
        let lines = (0..SIM_LINES)
            .map(|offset| SimLine {
                name: format!("GPIO{offset}"),
                ..SimLine::default()
            })
            .collect();
        SimChip {
            shared: Arc::new(Shared {
                label: format!("{}{name}", super::SIM_PREFIX),
                epoch: Instant::now(),
                lines: Mutex::new(lines),
                changed: Notify::new(),
                next_request: AtomicU64::new(1),
            }),
        }
    }

    /// `sim:NAME`.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Now on the chip's event clock (ns since the chip was made, tokio's time).
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// `at` on the chip's event clock.
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.shared.epoch).as_nanos())
            .unwrap_or(u64::MAX)
    }

    fn instant_of(&self, ns: u64) -> Instant {
        self.shared.epoch + Duration::from_nanos(ns)
    }

    /// The offset of `line` on this chip.
    pub fn resolve(&self, line: &LineRef) -> Result<u32, GpioError> {
        let lines = lock(&self.shared.lines);
        resolve_line(
            &self.shared.label,
            SIM_LINES,
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i as u32, l.name.as_str())),
            line,
        )
    }

    fn with_line<R>(&self, offset: u32, f: impl FnOnce(&mut SimLine) -> R) -> Result<R, GpioError> {
        let mut lines = lock(&self.shared.lines);
        let line = lines
            .get_mut(offset as usize)
            .ok_or_else(|| GpioError::NoSuchOffset {
                chip: self.shared.label.clone(),
                offset,
                lines: SIM_LINES,
            })?;
        let result = f(line);
        drop(lines);
        self.shared.changed.notify_waiters();
        Ok(result)
    }

    /// Applies `change` to a line and tells its watcher when the physical level moved.
    fn update(
        &self,
        offset: u32,
        at_ns: u64,
        change: impl FnOnce(&mut SimLine),
    ) -> Result<(), GpioError> {
        self.with_line(offset, |line| {
            let before = line.physical();
            change(line);
            let high = line.physical();
            if high == before {
                return;
            }
            let Some(watcher) = &line.watcher else {
                return;
            };
            if watcher.tx.try_send(RawChange { high, at_ns }).is_err() {
                // The buffer is full (or the reader is gone): the edge is lost, as in the
                // kernel, and the reader learns it from the sequence number.
                let kind = if high != watcher.active_low {
                    EdgeKind::Rising
                } else {
                    EdgeKind::Falling
                };
                if watcher.edge.accepts(kind) {
                    line.lost = line.lost.saturating_add(1);
                }
            }
        })
    }

    /// Names line `offset` (all are `GPIOn` at first).
    pub fn set_line_name(&self, offset: u32, name: &str) -> Result<(), GpioError> {
        self.with_line(offset, |line| line.name = name.to_string())
    }

    /// Drives line `offset` physically high or low from outside, now.
    pub fn drive(&self, offset: u32, high: bool) -> Result<(), GpioError> {
        self.drive_at(offset, high, Instant::now())
    }

    /// Drives line `offset` physically high or low, stamping the change `at` (which may
    /// be in the past: a test can replay a pulse train with exact times). Changes must
    /// be given in time order.
    pub fn drive_at(&self, offset: u32, high: bool, at: Instant) -> Result<(), GpioError> {
        let at_ns = self.ns_at(at);
        self.update(offset, at_ns, |line| line.driven = Some(high))
    }

    /// Stops driving line `offset` from outside: it returns to its pull.
    pub fn release(&self, offset: u32) -> Result<(), GpioError> {
        let at_ns = self.now_ns();
        self.update(offset, at_ns, |line| line.driven = None)
    }

    /// Makes the next event of line `offset` report `count` lost events before it, as
    /// when the kernel's buffer overflowed.
    pub fn lose_events(&self, offset: u32, count: u32) -> Result<(), GpioError> {
        self.with_line(offset, |line| line.lost = line.lost.saturating_add(count))
    }

    /// The physical level of line `offset`.
    pub fn level(&self, offset: u32) -> Result<bool, GpioError> {
        self.with_line(offset, |line| line.physical())
    }

    /// Who holds line `offset`, if anyone.
    pub fn consumer(&self, offset: u32) -> Result<Option<String>, GpioError> {
        self.with_line(offset, |line| line.consumer.clone())
    }

    /// Waits until `check` holds for line `offset` (re-checked on every change).
    async fn wait_for(&self, offset: u32, check: impl Fn(&SimLine) -> bool) {
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let done = {
                let lines = lock(&self.shared.lines);
                lines.get(offset as usize).is_none_or(&check)
            };
            if done {
                return;
            }
            notified.await;
        }
    }

    /// Waits until a node holds line `offset` (edges before that are not seen).
    pub async fn wait_requested(&self, offset: u32) {
        self.wait_for(offset, |line| line.consumer.is_some()).await;
    }

    /// Waits until line `offset` is physically `high`.
    pub async fn wait_level(&self, offset: u32, high: bool) {
        self.wait_for(offset, |line| line.physical() == high).await;
    }

    fn take_lost(&self, offset: u32) -> u32 {
        let mut lines = lock(&self.shared.lines);
        lines
            .get_mut(offset as usize)
            .map_or(0, |line| std::mem::take(&mut line.lost))
    }

    /// Releases a request if `id` still holds line `offset`.
    fn unrequest(&self, offset: u32, id: u64, clear: impl FnOnce(&mut SimLine)) {
        let _ = self.with_line(offset, |line| {
            let holds = match &line.watcher {
                Some(watcher) => watcher.id == id,
                None => line.output.is_some(),
            };
            if holds {
                line.watcher = None;
                line.consumer = None;
                clear(line);
            }
        });
    }

    fn claim(&self, request_line: &LineRef) -> Result<u32, GpioError> {
        let offset = self.resolve(request_line)?;
        let holder = self.with_line(offset, |line| line.consumer.clone())?;
        match holder {
            Some(consumer) => Err(GpioError::Busy {
                chip: self.shared.label.clone(),
                offset,
                consumer,
            }),
            None => Ok(offset),
        }
    }
}

impl GpioBackend for SimChip {
    fn request_input(&self, request: &InputRequest) -> Result<Box<dyn InputLine>, GpioError> {
        let offset = self.claim(&request.line)?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let level = self.with_line(offset, |line| {
            line.pull = match request.bias {
                Some(Bias::PullUp) => Some(true),
                Some(Bias::PullDown) => Some(false),
                Some(Bias::Disabled) => None,
                None => line.pull,
            };
            line.output = None;
            line.consumer = Some(request.consumer.clone());
            line.watcher = Some(Watcher {
                id,
                tx,
                edge: request.edge,
                active_low: request.active_low,
            });
            line.lost = 0;
            line.physical() != request.active_low
        })?;
        Ok(Box::new(SimInput {
            chip: self.clone(),
            offset,
            id,
            rx,
            edge: request.edge,
            active_low: request.active_low,
            debounce_ns: request
                .debounce
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            level,
            pending: None,
            seqno: 0,
        }))
    }

    fn request_output(&self, request: &OutputRequest) -> Result<Box<dyn OutputLine>, GpioError> {
        let offset = self.claim(&request.line)?;
        let at_ns = self.now_ns();
        self.update(offset, at_ns, |line| {
            line.output = Some(request.initial != request.active_low);
            line.consumer = Some(request.consumer.clone());
        })?;
        Ok(Box::new(SimOutput {
            chip: self.clone(),
            offset,
            active_low: request.active_low,
        }))
    }
}

/// An input request on a simulated line.
struct SimInput {
    chip: SimChip,
    offset: u32,
    id: u64,
    rx: mpsc::Receiver<RawChange>,
    edge: Edge,
    active_low: bool,
    debounce_ns: u64,
    /// The logical level as last reported (debounced).
    level: bool,
    /// A change waiting to hold for the debounce period.
    pending: Option<RawChange>,
    seqno: u32,
}

impl SimInput {
    /// The event for `change` becoming the line's level at `at_ns`, if it is a change
    /// of the logical level that the edge filter passes.
    fn accept(&mut self, change: RawChange, at_ns: u64) -> Option<LineEvent> {
        let logical = change.high != self.active_low;
        if logical == self.level {
            return None;
        }
        self.level = logical;
        let kind = if logical {
            EdgeKind::Rising
        } else {
            EdgeKind::Falling
        };
        if !self.edge.accepts(kind) {
            return None;
        }
        let lost = self.chip.take_lost(self.offset);
        self.seqno = self.seqno.wrapping_add(lost).wrapping_add(1);
        Some(LineEvent {
            kind,
            timestamp_ns: at_ns,
            line_seqno: self.seqno,
        })
    }

    fn closed(&self) -> GpioError {
        GpioError::Closed {
            chip: self.chip.label().to_string(),
        }
    }

    async fn next(&mut self) -> Result<LineEvent, GpioError> {
        loop {
            if self.debounce_ns == 0 {
                let change = self.rx.recv().await.ok_or_else(|| self.closed())?;
                if let Some(event) = self.accept(change, change.at_ns) {
                    return Ok(event);
                }
                continue;
            }
            let Some(pending) = self.pending else {
                self.pending = Some(self.rx.recv().await.ok_or_else(|| self.closed())?);
                continue;
            };
            let stable_ns = pending.at_ns.saturating_add(self.debounce_ns);
            tokio::select! {
                biased;
                change = self.rx.recv() => {
                    let change = change.ok_or_else(|| self.closed())?;
                    self.pending = Some(change);
                    // The pending level held for the whole period before this change.
                    if change.at_ns >= stable_ns
                        && let Some(event) = self.accept(pending, stable_ns)
                    {
                        return Ok(event);
                    }
                }
                () = tokio::time::sleep_until(self.chip.instant_of(stable_ns)) => {
                    self.pending = None;
                    if let Some(event) = self.accept(pending, stable_ns) {
                        return Ok(event);
                    }
                }
            }
        }
    }
}

impl InputLine for SimInput {
    fn next_event(&mut self) -> EventFuture<'_> {
        Box::pin(self.next())
    }

    fn value(&self) -> Result<bool, GpioError> {
        Ok(self.level)
    }

    fn now_ns(&self) -> u64 {
        self.chip.now_ns()
    }
}

impl Drop for SimInput {
    fn drop(&mut self) {
        self.chip.unrequest(self.offset, self.id, |_| {});
    }
}

/// An output request on a simulated line.
struct SimOutput {
    chip: SimChip,
    offset: u32,
    active_low: bool,
}

impl OutputLine for SimOutput {
    fn set(&mut self, active: bool) -> Result<(), GpioError> {
        let at_ns = self.chip.now_ns();
        let physical = active != self.active_low;
        self.chip
            .update(self.offset, at_ns, |line| line.output = Some(physical))
    }
}

impl Drop for SimOutput {
    fn drop(&mut self) {
        self.chip
            .unrequest(self.offset, 0, |line| line.output = None);
    }
}

/// Makes an energy meter's S0 pulses on a simulated line, for demos (`simulate:` of
/// `gpio.pulse`): each power level of `watts` is held for `hold`, in turn, forever.
pub struct PulseGenerator {
    chip: SimChip,
    offset: u32,
    watts: Vec<f64>,
    hold: Duration,
    width: Duration,
    wh_per_pulse: f64,
    active_low: bool,
    start: Instant,
    next: Instant,
    /// Whether the pulse is on.
    on: bool,
    last_rise: Instant,
}

impl PulseGenerator {
    /// A generator on line `offset`, starting now with the line inactive.
    pub fn new(
        chip: SimChip,
        offset: u32,
        watts: Vec<f64>,
        hold: Duration,
        width: Duration,
        wh_per_pulse: f64,
        active_low: bool,
    ) -> Result<PulseGenerator, GpioError> {
        let now = Instant::now();
        chip.drive_at(offset, active_low, now)?;
        let mut generator = PulseGenerator {
            chip,
            offset,
            watts,
            hold: hold.max(Duration::from_millis(1)),
            width,
            wh_per_pulse,
            active_low,
            start: now,
            next: now,
            on: false,
            last_rise: now,
        };
        generator.next = generator.after_fall(now);
        Ok(generator)
    }

    /// When [`PulseGenerator::fire`] is due.
    pub fn next_at(&self) -> Instant {
        self.next
    }

    fn watts_at(&self, at: Instant) -> f64 {
        if self.watts.is_empty() {
            return 0.0;
        }
        let step = at.saturating_duration_since(self.start).as_nanos() / self.hold.as_nanos();
        self.watts[(step % self.watts.len() as u128) as usize]
    }

    fn next_hold_boundary(&self, after: Instant) -> Instant {
        let hold = self.hold.as_nanos();
        let step = after.saturating_duration_since(self.start).as_nanos() / hold + 1;
        self.start + Duration::from_nanos(u64::try_from(step * hold).unwrap_or(u64::MAX))
    }

    fn period(&self, watts: f64) -> Duration {
        Duration::from_secs_f64((3600.0 * self.wh_per_pulse / watts).min(1e9))
    }

    /// The next rising edge after the line went inactive at `now`.
    fn after_fall(&self, now: Instant) -> Instant {
        let watts = self.watts_at(now);
        if watts <= 0.0 {
            return self.next_hold_boundary(now);
        }
        (self.last_rise + self.period(watts)).max(now)
    }

    /// Makes the due edge and plans the next.
    pub fn fire(&mut self) -> Result<(), GpioError> {
        let now = self.next;
        if self.on {
            self.chip.drive_at(self.offset, self.active_low, now)?;
            self.on = false;
            self.next = self.after_fall(now);
            return Ok(());
        }
        let watts = self.watts_at(now);
        if watts <= 0.0 {
            self.next = self.next_hold_boundary(now);
            return Ok(());
        }
        self.chip.drive_at(self.offset, !self.active_low, now)?;
        self.on = true;
        self.last_rise = now;
        self.next = now + self.width.min(self.period(watts) / 2);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(line: u32, edge: Edge, debounce_ms: u64) -> InputRequest {
        InputRequest {
            line: LineRef::Offset(line),
            edge,
            bias: None,
            debounce: (debounce_ms > 0).then(|| Duration::from_millis(debounce_ms)),
            active_low: false,
            consumer: "test".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn edges_are_filtered_and_numbered() {
        let chip = SimChips::default().chip("a");
        let mut line = chip.request_input(&input(3, Edge::Rising, 0)).unwrap();
        let t0 = Instant::now();
        for (i, high) in [true, false, true, false].into_iter().enumerate() {
            chip.drive_at(3, high, t0 + Duration::from_secs(i as u64))
                .unwrap();
        }
        let first = line.next_event().await.unwrap();
        let second = line.next_event().await.unwrap();
        assert_eq!(first.kind, EdgeKind::Rising);
        assert_eq!((first.line_seqno, second.line_seqno), (1, 2));
        assert_eq!(second.timestamp_ns - first.timestamp_ns, 2_000_000_000);
        chip.lose_events(3, 5).unwrap();
        chip.drive(3, true).unwrap();
        assert_eq!(line.next_event().await.unwrap().line_seqno, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_drops_bounces_and_stamps_the_end_of_the_period() {
        let chip = SimChips::default().chip("b");
        let mut line = chip.request_input(&input(0, Edge::Both, 10)).unwrap();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // A bouncing contact closing at 0 ms, settled from 4 ms; opening at 100 ms.
        for (at, high) in [(0, true), (1, false), (2, true), (4, false), (5, true)] {
            chip.drive_at(0, high, ms(at)).unwrap();
        }
        chip.drive_at(0, false, ms(100)).unwrap();
        let close = line.next_event().await.unwrap();
        assert_eq!(close.kind, EdgeKind::Rising);
        assert_eq!(close.timestamp_ns, chip.ns_at(ms(15)));
        let open = line.next_event().await.unwrap();
        assert_eq!(open.kind, EdgeKind::Falling);
        assert_eq!(open.timestamp_ns, chip.ns_at(ms(110)));
        assert_eq!(open.line_seqno, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn lines_are_exclusive_and_outputs_drive_levels() {
        let chips = SimChips::default();
        let chip = chips.chip("c");
        let held = chip.request_input(&input(1, Edge::Both, 0)).unwrap();
        let busy = chips.chip("c").request_input(&input(1, Edge::Both, 0));
        assert!(matches!(busy, Err(GpioError::Busy { .. })));
        drop(held);
        assert_eq!(chip.consumer(1).unwrap(), None);
        let mut out = chip
            .request_output(&OutputRequest {
                line: LineRef::Name("GPIO2".into()),
                initial: true,
                active_low: true,
                drive: super::super::Drive::PushPull,
                consumer: "relay".into(),
            })
            .unwrap();
        assert!(
            !chip.level(2).unwrap(),
            "active low: active is physically low"
        );
        out.set(false).unwrap();
        assert!(chip.level(2).unwrap());
        assert_eq!(chip.consumer(2).unwrap().as_deref(), Some("relay"));
        // Another engine's registry has its own chip of the same name.
        assert_eq!(SimChips::default().chip("c").consumer(2).unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn bias_sets_the_idle_level() {
        let chip = SimChips::default().chip("d");
        let mut request = input(5, Edge::Both, 0);
        request.bias = Some(Bias::PullUp);
        request.active_low = true;
        let line = chip.request_input(&request).unwrap();
        assert!(chip.level(5).unwrap());
        assert!(
            !line.value().unwrap(),
            "pulled up and active low reads inactive"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn generator_makes_pulses_at_the_power_asked() {
        let chip = SimChips::default().chip("e");
        let mut line = chip.request_input(&input(0, Edge::Rising, 0)).unwrap();
        // 1 Wh per pulse at 500 W: a pulse every 7.2 s; then 0 W for 60 s.
        let mut generator = PulseGenerator::new(
            chip.clone(),
            0,
            vec![500.0, 0.0],
            Duration::from_secs(60),
            Duration::from_millis(90),
            1.0,
            false,
        )
        .unwrap();
        let start = chip.now_ns();
        let mut stamps = Vec::new();
        while stamps.len() < 9 {
            tokio::time::sleep_until(generator.next_at()).await;
            generator.fire().unwrap();
            while let Ok(Ok(event)) = tokio::time::timeout(Duration::ZERO, line.next_event()).await
            {
                stamps.push(event.timestamp_ns - start);
            }
        }
        let expected: Vec<u64> = (1..=8).map(|n| n * 7_200_000_000).collect();
        assert_eq!(stamps[..8], expected[..]);
        // 64.8 s falls in the 0 W minute: the ninth pulse comes when 500 W is back.
        assert_eq!(stamps[8], 120_000_000_000);
    }
}
