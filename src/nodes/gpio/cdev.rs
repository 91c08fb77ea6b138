//! The GPIO character device backend (gpiocdev, uAPI v2): opens `/dev/gpiochipN`,
//! finds a line by offset or name, requests it with bias, debounce, edge detection and
//! monotonic kernel timestamps, and reads its edge events through tokio.
//!
//! Building a request is pure ([`input_request`], [`output_request`]) so it is tested
//! without hardware; the tests against the kernel's `gpio-sim` module are in
//! `tests/gpio.rs` behind the cargo feature `gpio-sim-tests`.

use std::path::{Path, PathBuf};

use gpiocdev::line::{self, EdgeDetection, EventClock, Value};
use gpiocdev::request::Builder;
use gpiocdev::tokio::AsyncRequest;

use super::{
    Bias, Drive, Edge, EdgeKind, EventFuture, GpioBackend, GpioError, InputLine, InputRequest,
    LineEvent, OutputLine, OutputRequest, resolve_line,
};

/// Events the kernel buffers for a line before it loses them (its default is 16 per
/// line, which a burst of bouncing contacts fills quickly; the kernel caps this).
const KERNEL_EVENT_BUFFER: u32 = 256;

/// A GPIO chip character device.
#[derive(Clone, Debug)]
pub struct CdevChip {
    path: PathBuf,
}

/// The device path of a `chip:` option: a bare name is looked for in `/dev`.
pub fn chip_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/dev").join(name)
    }
}

impl CdevChip {
    /// The chip `name` (`gpiochip0`, or a path).
    pub fn new(name: &str) -> CdevChip {
        CdevChip {
            path: chip_path(name),
        }
    }

    fn label(&self) -> String {
        self.path.display().to_string()
    }

    fn io(&self, what: &str, err: impl std::fmt::Display) -> GpioError {
        GpioError::Io {
            chip: self.label(),
            reason: format!("{what}: {err}"),
        }
    }

    /// Opens the chip and finds the line's offset; a line already in use is reported
    /// with its consumer, which the kernel's EBUSY does not name.
    fn find(&self, line: &super::LineRef) -> Result<u32, GpioError> {
        let chip = gpiocdev::Chip::from_path(&self.path).map_err(|e| GpioError::Open {
            chip: self.label(),
            reason: e.to_string(),
        })?;
        let info = chip.info().map_err(|e| self.io("reading chip info", e))?;
        let offset = match line {
            super::LineRef::Offset(_) => resolve_line(&self.label(), info.num_lines, [], line)?,
            super::LineRef::Name(_) => {
                let infos: Vec<line::Info> = chip
                    .line_info_iter()
                    .map_err(|e| self.io("reading line names", e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.io("reading line names", e))?;
                resolve_line(
                    &self.label(),
                    info.num_lines,
                    infos.iter().map(|i| (i.offset, i.name.as_str())),
                    line,
                )?
            }
        };
        let line_info = chip
            .line_info(offset)
            .map_err(|e| self.io("reading line info", e))?;
        if line_info.used {
            return Err(GpioError::Busy {
                chip: self.label(),
                offset,
                consumer: if line_info.consumer.is_empty() {
                    "the kernel".to_string()
                } else {
                    line_info.consumer
                },
            });
        }
        Ok(offset)
    }
}

/// The gpiocdev request for an input line at `offset` of the chip at `path`.
pub fn input_request(path: &Path, offset: u32, request: &InputRequest) -> Builder {
    let mut builder = gpiocdev::Request::builder();
    builder
        .on_chip(path)
        .with_consumer(request.consumer.as_str())
        .with_kernel_event_buffer_size(KERNEL_EVENT_BUFFER)
        .with_line(offset)
        .as_input()
        .with_edge_detection(match request.edge {
            Edge::Rising => EdgeDetection::RisingEdge,
            Edge::Falling => EdgeDetection::FallingEdge,
            Edge::Both => EdgeDetection::BothEdges,
        })
        // Monotonic: intervals between pulses must not jump when NTP sets the clock
        // (a Pi without a battery clock boots in 1970 and jumps once online).
        .with_event_clock(EventClock::Monotonic);
    if let Some(bias) = request.bias {
        builder.with_bias(map_bias(bias));
    }
    if let Some(period) = request.debounce.filter(|d| !d.is_zero()) {
        builder.with_debounce_period(period);
    }
    if request.active_low {
        builder.as_active_low();
    }
    builder
}

/// The gpiocdev request for an output line at `offset` of the chip at `path`.
pub fn output_request(path: &Path, offset: u32, request: &OutputRequest) -> Builder {
    let mut builder = gpiocdev::Request::builder();
    builder
        .on_chip(path)
        .with_consumer(request.consumer.as_str())
        .with_line(offset)
        .as_output(value(request.initial))
        .with_drive(match request.drive {
            Drive::PushPull => line::Drive::PushPull,
            Drive::OpenDrain => line::Drive::OpenDrain,
            Drive::OpenSource => line::Drive::OpenSource,
        });
    if request.active_low {
        builder.as_active_low();
    }
    builder
}

fn map_bias(bias: Bias) -> line::Bias {
    match bias {
        Bias::PullUp => line::Bias::PullUp,
        Bias::PullDown => line::Bias::PullDown,
        Bias::Disabled => line::Bias::Disabled,
    }
}

fn value(active: bool) -> Value {
    if active {
        Value::Active
    } else {
        Value::Inactive
    }
}

/// Our event from the kernel's.
pub fn convert_event(event: &gpiocdev::line::EdgeEvent) -> LineEvent {
    LineEvent {
        kind: match event.kind {
            line::EdgeKind::Rising => EdgeKind::Rising,
            line::EdgeKind::Falling => EdgeKind::Falling,
        },
        timestamp_ns: event.timestamp_ns,
        line_seqno: event.line_seqno,
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of events requested with
/// `EventClock::Monotonic`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on
    // Linux, so the call cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

impl GpioBackend for CdevChip {
    fn request_input(&self, request: &InputRequest) -> Result<Box<dyn InputLine>, GpioError> {
        let offset = self.find(&request.line)?;
        let requested = input_request(&self.path, offset, request)
            .request()
            .map_err(|e| self.io(&format!("requesting line {offset} as input"), e))?;
        Ok(Box::new(CdevInput {
            chip: self.label(),
            offset,
            request: AsyncRequest::new(requested),
        }))
    }

    fn request_output(&self, request: &OutputRequest) -> Result<Box<dyn OutputLine>, GpioError> {
        let offset = self.find(&request.line)?;
        let requested = output_request(&self.path, offset, request)
            .request()
            .map_err(|e| self.io(&format!("requesting line {offset} as output"), e))?;
        Ok(Box::new(CdevOutput {
            chip: self.label(),
            offset,
            request: requested,
        }))
    }
}

/// An input line request on the character device.
struct CdevInput {
    chip: String,
    offset: u32,
    request: AsyncRequest,
}

impl InputLine for CdevInput {
    fn next_event(&mut self) -> EventFuture<'_> {
        Box::pin(async move {
            // Reads one event at a time from gpiocdev's user-space buffer; waiting is
            // tokio's readiness on the request's file descriptor.
            let event = self
                .request
                .read_edge_event()
                .await
                .map_err(|e| GpioError::Io {
                    chip: self.chip.clone(),
                    reason: format!("reading events of line {}: {e}", self.offset),
                })?;
            Ok(convert_event(&event))
        })
    }

    fn value(&self) -> Result<bool, GpioError> {
        self.request
            .as_ref()
            .value(self.offset)
            .map(|v| v == Value::Active)
            .map_err(|e| GpioError::Io {
                chip: self.chip.clone(),
                reason: format!("reading line {}: {e}", self.offset),
            })
    }

    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// An output line request on the character device.
struct CdevOutput {
    chip: String,
    offset: u32,
    request: gpiocdev::Request,
}

impl OutputLine for CdevOutput {
    fn set(&mut self, active: bool) -> Result<(), GpioError> {
        self.request
            .set_value(self.offset, value(active))
            .map(|_| ())
            .map_err(|e| GpioError::Io {
                chip: self.chip.clone(),
                reason: format!("setting line {}: {e}", self.offset),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::nodes::gpio::LineRef;

    fn input(edge: Edge, bias: Option<Bias>, debounce: Option<Duration>) -> InputRequest {
        InputRequest {
            line: LineRef::Offset(17),
            edge,
            bias,
            debounce,
            active_low: false,
            consumer: "energy/meter".into(),
        }
    }

    #[test]
    fn chip_names_map_to_dev() {
        assert_eq!(chip_path("gpiochip0"), PathBuf::from("/dev/gpiochip0"));
        assert_eq!(chip_path("/dev/gpiochip4"), PathBuf::from("/dev/gpiochip4"));
    }

    #[test]
    fn input_options_map_onto_the_line_config() {
        let path = Path::new("/dev/gpiochip0");
        let builder = input_request(
            path,
            17,
            &input(
                Edge::Rising,
                Some(Bias::PullDown),
                Some(Duration::from_millis(5)),
            ),
        );
        let config = builder.config();
        assert_eq!(config.chip(), path);
        assert_eq!(config.lines(), &vec![17]);
        let line = config.line_config(17).unwrap();
        assert_eq!(line.direction, Some(line::Direction::Input));
        assert_eq!(line.edge_detection, Some(EdgeDetection::RisingEdge));
        assert_eq!(line.bias, Some(line::Bias::PullDown));
        assert_eq!(line.debounce_period, Some(Duration::from_millis(5)));
        assert_eq!(line.event_clock, Some(EventClock::Monotonic));
        assert!(!line.active_low);

        let mut both = input(Edge::Both, None, Some(Duration::ZERO));
        both.active_low = true;
        let builder = input_request(path, 17, &both);
        let config = builder.config();
        let line = config.line_config(17).unwrap();
        assert_eq!(line.edge_detection, Some(EdgeDetection::BothEdges));
        assert_eq!(line.bias, None, "no bias option leaves the line as it is");
        assert_eq!(line.debounce_period, None, "0 means no debounce");
        assert!(line.active_low);
        let falling = input_request(path, 3, &input(Edge::Falling, Some(Bias::Disabled), None));
        let config = falling.config();
        let line = config.line_config(3).unwrap();
        assert_eq!(line.edge_detection, Some(EdgeDetection::FallingEdge));
        assert_eq!(line.bias, Some(line::Bias::Disabled));
    }

    #[test]
    fn output_options_map_onto_the_line_config() {
        let builder = output_request(
            Path::new("/dev/gpiochip0"),
            4,
            &OutputRequest {
                line: LineRef::Offset(4),
                initial: true,
                active_low: true,
                drive: Drive::OpenDrain,
                consumer: "home/relay".into(),
            },
        );
        let config = builder.config();
        let line = config.line_config(4).unwrap();
        assert_eq!(line.direction, Some(line::Direction::Output));
        assert_eq!(line.value, Some(Value::Active));
        assert_eq!(line.drive, Some(line::Drive::OpenDrain));
        assert!(line.active_low);
    }

    #[test]
    fn kernel_events_convert() {
        let event = gpiocdev::line::EdgeEvent {
            timestamp_ns: 123_456_789,
            kind: line::EdgeKind::Falling,
            offset: 17,
            seqno: 9,
            line_seqno: 4,
        };
        assert_eq!(
            convert_event(&event),
            LineEvent {
                kind: EdgeKind::Falling,
                timestamp_ns: 123_456_789,
                line_seqno: 4
            }
        );
    }

    #[test]
    fn a_missing_chip_says_what_to_check() {
        let chip = CdevChip::new("/nonexistent/gpiochip9");
        let err = chip
            .request_input(&input(Edge::Rising, None, None))
            .err()
            .unwrap();
        assert!(matches!(err, GpioError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/gpiochip9"), "{err}");
    }

    #[test]
    fn the_monotonic_clock_moves() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() >= a + 2_000_000);
    }
}
