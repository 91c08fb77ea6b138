//! GPIO lines behind one trait, for the `gpio.pulse`, `gpio.in` and `gpio.out` nodes:
//! the kernel's character device (`cdev.rs`, gpiocdev, uAPI v2) and a simulated chip
//! (`sim.rs`, `chip: sim:NAME`) that tests and demos drive.
//!
//! Invariants:
//! - Nodes see only this module's types; nothing outside `cdev.rs` names gpiocdev.
//! - Event timestamps are nanoseconds on the backend's monotonic event clock
//!   ([`InputLine::now_ns`] reads the same clock), so intervals between pulses are the
//!   kernel's, not the time the gateway got round to reading them.
//! - Edge kinds are logical: `active_low` is applied by the backend.

pub mod cdev;
pub mod sim;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::Clock;
use crate::nodes::registry::ConfigIssue;

pub use sim::{SimChip, SimChips};

/// The prefix of a simulated chip's name in `chip:`.
pub const SIM_PREFIX: &str = "sim:";

/// Which chip a node uses, from its `chip:` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChipRef {
    /// A character device: `gpiochip0` (in `/dev`) or a path such as `/dev/gpiochip4`.
    Device(String),
    /// A simulated chip of this process, by name (`sim:meter`).
    Sim(String),
}

impl ChipRef {
    /// Reads a `chip:` option.
    pub fn parse(text: &str) -> Result<ChipRef, String> {
        if let Some(name) = text.strip_prefix(SIM_PREFIX) {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if valid {
                Ok(ChipRef::Sim(name.to_string()))
            } else {
                Err(format!(
                    "`{text}`: a simulated chip is named `sim:NAME` with NAME of letters, \
                     digits, `-`, `_` or `.` (at most 64)"
                ))
            }
        } else if text.trim().is_empty() {
            Err("give a chip such as `gpiochip0`, `/dev/gpiochip0` or `sim:NAME`".to_string())
        } else {
            Ok(ChipRef::Device(text.to_string()))
        }
    }
}

impl fmt::Display for ChipRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChipRef::Device(name) => f.write_str(name),
            ChipRef::Sim(name) => write!(f, "{SIM_PREFIX}{name}"),
        }
    }
}

/// A line by offset on its chip (`line: 17`) or by name (`line: GPIO17`).
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum LineRef {
    /// The line's offset on the chip.
    Offset(u32),
    /// The line's name as the chip reports it (`gpioinfo` shows them).
    Name(String),
}

impl fmt::Display for LineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineRef::Offset(offset) => write!(f, "{offset}"),
            LineRef::Name(name) => write!(f, "`{name}`"),
        }
    }
}

/// Which transitions of an input line make events.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// Inactive to active.
    #[default]
    Rising,
    /// Active to inactive.
    Falling,
    /// Both.
    Both,
}

impl Edge {
    /// Whether an event of `kind` passes this filter.
    pub fn accepts(self, kind: EdgeKind) -> bool {
        matches!(
            (self, kind),
            (Edge::Both, _) | (Edge::Rising, EdgeKind::Rising) | (Edge::Falling, EdgeKind::Falling)
        )
    }
}

/// The pull resistor of an input line; absent leaves it as it is.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// Pull up to the supply: a switch or S0 output then pulls the line to ground.
    PullUp,
    /// Pull down to ground: a switch or S0 output then pulls the line to the supply.
    PullDown,
    /// No pull resistor (an external one is fitted).
    Disabled,
}

/// How an output line drives.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Drive {
    /// Drives both levels.
    #[default]
    PushPull,
    /// Drives low only; high is left to a pull-up.
    OpenDrain,
    /// Drives high only; low is left to a pull-down.
    OpenSource,
}

/// What an input request asks of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRequest {
    /// The line.
    pub line: LineRef,
    /// Which edges make events.
    pub edge: Edge,
    /// Pull resistor; `None` leaves it as it is.
    pub bias: Option<Bias>,
    /// Edges closer together than this are filtered (the kernel's debounce).
    pub debounce: Option<Duration>,
    /// Active means physically low.
    pub active_low: bool,
    /// The consumer label the kernel shows (`gpioinfo`): the node's id.
    pub consumer: String,
}

/// What an output request asks of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRequest {
    /// The line.
    pub line: LineRef,
    /// The logical level driven from the moment of the request.
    pub initial: bool,
    /// Active means physically low.
    pub active_low: bool,
    /// Push-pull, open drain or open source.
    pub drive: Drive,
    /// The consumer label the kernel shows.
    pub consumer: String,
}

/// The logical direction of a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// Inactive to active.
    Rising,
    /// Active to inactive.
    Falling,
}

/// One edge event of an input line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineEvent {
    /// Rising or falling (logical).
    pub kind: EdgeKind,
    /// When it happened, on the backend's monotonic event clock.
    pub timestamp_ns: u64,
    /// The kernel's per-line sequence number, from 1: a jump means events were lost
    /// (the kernel's buffer overflowed while nobody read it).
    pub line_seqno: u32,
}

/// Why a GPIO operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The chip cannot be opened.
    #[error("cannot open GPIO chip {chip}: {reason} (is the user in the `gpio` group?)")]
    Open {
        /// The chip.
        chip: String,
        /// What the system said.
        reason: String,
    },
    /// No line has the name.
    #[error("no line named `{name}` on {chip}: check the name with `gpioinfo` or give an offset")]
    NoSuchName {
        /// The chip.
        chip: String,
        /// The name asked for.
        name: String,
    },
    /// Several lines have the name.
    #[error("the line name `{name}` is not unique on {chip} (offsets {offsets:?}): give an offset")]
    AmbiguousName {
        /// The chip.
        chip: String,
        /// The name asked for.
        name: String,
        /// Every offset with that name.
        offsets: Vec<u32>,
    },
    /// The offset is past the chip's last line.
    #[error("line {offset} does not exist on {chip}, which has {lines} lines")]
    NoSuchOffset {
        /// The chip.
        chip: String,
        /// The offset asked for.
        offset: u32,
        /// How many lines the chip has.
        lines: u32,
    },
    /// Someone else holds the line.
    #[error(
        "line {offset} of {chip} is in use by `{consumer}`: stop the other user or pick another line"
    )]
    Busy {
        /// The chip.
        chip: String,
        /// The line.
        offset: u32,
        /// Who holds it.
        consumer: String,
    },
    /// The system refused an operation.
    #[error("GPIO chip {chip}: {reason}")]
    Io {
        /// The chip.
        chip: String,
        /// What failed and why.
        reason: String,
    },
    /// The line's request was released (its chip went away).
    #[error("the GPIO line request of {chip} was closed")]
    Closed {
        /// The chip.
        chip: String,
    },
}

/// The future of [`InputLine::next_event`].
pub type EventFuture<'a> = Pin<Box<dyn Future<Output = Result<LineEvent, GpioError>> + Send + 'a>>;

/// A requested input line with edge detection. Dropping it releases the line.
pub trait InputLine: Send {
    /// The next edge event. Cancel-safe: dropping the future loses no event.
    fn next_event(&mut self) -> EventFuture<'_>;
    /// The current logical level (debounced where debounce is on).
    fn value(&self) -> Result<bool, GpioError>;
    /// Now, on the clock of [`LineEvent::timestamp_ns`].
    fn now_ns(&self) -> u64;
}

/// A requested output line. Dropping it releases the line.
pub trait OutputLine: Send {
    /// Drives the logical level `active`.
    fn set(&mut self, active: bool) -> Result<(), GpioError>;
}

/// A chip that hands out lines.
pub trait GpioBackend: Send + Sync {
    /// Requests an input line with edge detection.
    fn request_input(&self, request: &InputRequest) -> Result<Box<dyn InputLine>, GpioError>;
    /// Requests an output line.
    fn request_output(&self, request: &OutputRequest) -> Result<Box<dyn OutputLine>, GpioError>;
}

/// The backend for `chip`: the character device, or the simulated chip of that name in
/// `sims` (the engine's, so unrelated engines never share one).
pub fn backend(chip: &ChipRef, sims: &SimChips) -> Box<dyn GpioBackend> {
    match chip {
        ChipRef::Device(name) => Box::new(cdev::CdevChip::new(name)),
        ChipRef::Sim(name) => Box::new(sims.chip(name)),
    }
}

/// Finds `line` among a chip's `(offset, name)` pairs (`lines` is the chip's line count).
/// A name must be unique on the chip: a guess between two lines could drive a relay
/// that is wired to something else.
pub fn resolve_line<'a>(
    chip: &str,
    lines: u32,
    names: impl IntoIterator<Item = (u32, &'a str)>,
    line: &LineRef,
) -> Result<u32, GpioError> {
    match line {
        LineRef::Offset(offset) if *offset < lines => Ok(*offset),
        LineRef::Offset(offset) => Err(GpioError::NoSuchOffset {
            chip: chip.to_string(),
            offset: *offset,
            lines,
        }),
        LineRef::Name(name) => {
            let offsets: Vec<u32> = names
                .into_iter()
                .filter(|(_, n)| *n == name)
                .map(|(offset, _)| offset)
                .collect();
            match offsets.as_slice() {
                [offset] => Ok(*offset),
                [] => Err(GpioError::NoSuchName {
                    chip: chip.to_string(),
                    name: name.clone(),
                }),
                _ => Err(GpioError::AmbiguousName {
                    chip: chip.to_string(),
                    name: name.clone(),
                    offsets,
                }),
            }
        }
    }
}

/// The wall-clock time (ms since the epoch) of an event stamped `timestamp_ns` on an
/// event clock that reads `now_ns` now ([`InputLine::now_ns`]): now on the engine's
/// clock minus the event's age, so a reading delayed by a busy gateway keeps the time
/// the edge happened.
pub fn event_wall_ms(clock: &Clock, now_ns: u64, timestamp_ns: u64) -> i64 {
    let age_ns = now_ns.saturating_sub(timestamp_ns);
    clock.wall_ms() - i64::try_from(age_ns / 1_000_000).unwrap_or(i64::MAX)
}

/// Checks the options every GPIO node shares.
pub(crate) fn validate_line_options(
    chip: &str,
    line: &LineRef,
    debounce: Option<Duration>,
    issues: &mut Vec<ConfigIssue>,
) {
    if let Err(e) = ChipRef::parse(chip) {
        issues.push(ConfigIssue::new("chip", e));
    }
    if let LineRef::Name(name) = line
        && name.trim().is_empty()
    {
        issues.push(ConfigIssue::new(
            "line",
            "give a line offset (`17`) or a line name (`GPIO17`)",
        ));
    }
    // The kernel takes the debounce period in microseconds, in a u32.
    if let Some(period) = debounce
        && period > Duration::from_secs(60)
    {
        issues.push(ConfigIssue::new(
            "debounce",
            "must be at most 60s (it filters contact bounce, typically a few ms)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_are_parsed() {
        assert_eq!(
            ChipRef::parse("gpiochip0"),
            Ok(ChipRef::Device("gpiochip0".into()))
        );
        assert_eq!(
            ChipRef::parse("sim:meter"),
            Ok(ChipRef::Sim("meter".into()))
        );
        assert!(ChipRef::parse("sim:").is_err());
        assert!(ChipRef::parse("sim:a/b").is_err());
        assert!(ChipRef::parse(" ").is_err());
        assert_eq!(ChipRef::Sim("x".into()).to_string(), "sim:x");
    }

    #[test]
    fn lines_resolve_by_offset_and_unique_name() {
        let names = [(0, "GPIO0"), (1, "LED"), (2, ""), (3, "LED"), (4, "S0")];
        let resolve = |line: LineRef| resolve_line("gpiochip0", 5, names, &line);
        assert_eq!(resolve(LineRef::Offset(4)).unwrap(), 4);
        assert_eq!(resolve(LineRef::Name("S0".into())).unwrap(), 4);
        assert_eq!(
            resolve(LineRef::Offset(5)).unwrap_err().to_string(),
            "line 5 does not exist on gpiochip0, which has 5 lines"
        );
        assert_eq!(
            resolve(LineRef::Name("LED".into()))
                .unwrap_err()
                .to_string(),
            "the line name `LED` is not unique on gpiochip0 (offsets [1, 3]): give an offset"
        );
        assert!(matches!(
            resolve(LineRef::Name("GPIO9".into())),
            Err(GpioError::NoSuchName { .. })
        ));
    }

    #[test]
    fn edge_filter() {
        assert!(Edge::Rising.accepts(EdgeKind::Rising));
        assert!(!Edge::Rising.accepts(EdgeKind::Falling));
        assert!(Edge::Falling.accepts(EdgeKind::Falling));
        assert!(Edge::Both.accepts(EdgeKind::Rising) && Edge::Both.accepts(EdgeKind::Falling));
    }

    #[test]
    fn line_refs_deserialize_from_numbers_and_names() {
        let offset: LineRef = serde_json::from_str("17").unwrap();
        assert_eq!(offset, LineRef::Offset(17));
        let name: LineRef = serde_json::from_str("\"GPIO17\"").unwrap();
        assert_eq!(name, LineRef::Name("GPIO17".into()));
    }
}
