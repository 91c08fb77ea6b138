//! `serial.in`: reads frames from a serial port (lines, fixed-length records, regex
//! captures, CSV, JSON lines, NMEA 0183), optionally polling the device with a request,
//! and reopens the port with backoff when it disappears. Bad input goes to the `error`
//! port with its raw bytes; nothing a device sends can stop the node.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use regex::RegexBuilder;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::SerialStream;

use crate::engine::{Clock, Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::{ByteSize, HumanDuration};
use crate::nodes::mqtt::Backoff;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};
use crate::nodes::serial::decode::Decoder;
use crate::nodes::serial::framing::{Frame, Framer, Split, unescape};
use crate::nodes::serial::{
    self, FlowControl, LinkLog, Parity, PortSettings, default_baud, default_data_bits,
    default_stop_bits, yes,
};

/// Options of a `serial.in` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialInConfig {
    /// The device: `/dev/ttyUSB0`, `/dev/ttyAMA0`, or better a stable
    /// `/dev/serial/by-id/...` symlink.
    pub path: String,
    /// Bits per second (default 9600).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// 5, 6, 7 or 8 (default 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none` (default), `odd` or `even`.
    #[serde(default)]
    pub parity: Parity,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none` (default), `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// Lock the port against other openers (default true); `false` lets a `serial.out`
    /// share it.
    #[serde(default = "yes")]
    pub exclusive: bool,
    /// How bytes become messages: `lines` (default), `json`, `nmea`, `{fixed: N}`,
    /// `{regex: '...'}` or `{csv: [column, ...]}`.
    #[serde(default)]
    pub framing: Framing,
    /// What ends a line (line framings): default `\n`, a `\r` before it removed too.
    /// Any byte string, with escapes `\r`, `\n`, `\t`, `\0`, `\\`, `\xHH`.
    pub delimiter: Option<String>,
    /// Longest frame (default `4KiB`); a longer line is discarded up to its delimiter
    /// and reported on `error`.
    pub max_frame: Option<ByteSize>,
    /// Ask the device: write `request` every `interval`, read one reply frame within
    /// `timeout`.
    pub poll: Option<PollConfig>,
    /// Topic of the messages (default `serial/NODE`).
    pub topic: Option<String>,
}

/// How the byte stream is cut and decoded.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Framing {
    /// Text lines; the payload is the line (UTF-8).
    #[default]
    Lines,
    /// JSON lines; each line must be valid JSON and is the payload as it is.
    Json,
    /// NMEA 0183 sentences, checksum verified: `{"talker", "type", "fields", "raw"}`.
    Nmea,
    /// Binary records of this many bytes; the payload is the bytes.
    Fixed(usize),
    /// Lines matched by this regex; its named groups `(?P<name>...)` become the
    /// payload's fields (numbers where the text is a JSON number).
    Regex(String),
    /// CSV lines; the cells become fields with these names.
    Csv(Vec<String>),
}

/// Poll mode: request and reply.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Bytes to write, with escapes (`"READ\r\n"`, `'\x02R\x03'`); no terminator is added.
    pub request: String,
    /// How often, e.g. `10s`; the first request goes out when the port opens.
    pub interval: HumanDuration,
    /// How long to wait for the reply (default `2s`; at most `interval`).
    #[serde(default = "default_poll_timeout")]
    pub timeout: HumanDuration,
}

fn default_poll_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

const DEFAULT_MAX_FRAME: usize = 4096;
const LARGEST_FRAME: u64 = 1 << 20;

impl SerialInConfig {
    fn port(&self) -> PortSettings {
        PortSettings {
            path: self.path.clone().into(),
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow_control: self.flow_control,
            exclusive: self.exclusive,
        }
    }

    fn split(&self) -> Result<Split, ConfigIssue> {
        if let Framing::Fixed(size) = self.framing {
            return Ok(Split::Fixed(size));
        }
        match &self.delimiter {
            None => Ok(Split::Delimiter {
                delimiter: b"\n".to_vec(),
                strip_cr: true,
            }),
            Some(text) => {
                let delimiter = unescape(text).map_err(|e| ConfigIssue::new("delimiter", e))?;
                if delimiter.is_empty() {
                    return Err(ConfigIssue::new(
                        "delimiter",
                        "the delimiter cannot be empty; for binary records use `framing: {fixed: N}`",
                    ));
                }
                Ok(Split::Delimiter {
                    delimiter,
                    strip_cr: false,
                })
            }
        }
    }

    fn decoder(&self) -> Result<Decoder, ConfigIssue> {
        Ok(match &self.framing {
            Framing::Lines => Decoder::Text,
            Framing::Json => Decoder::Json,
            Framing::Nmea => Decoder::Nmea,
            Framing::Fixed(_) => Decoder::Bytes,
            Framing::Regex(pattern) => {
                let regex = RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        ConfigIssue::new("framing.regex", format!("invalid regex: {e}"))
                    })?;
                if regex.capture_names().flatten().next().is_none() {
                    return Err(ConfigIssue::new(
                        "framing.regex",
                        "name the groups that become fields, e.g. `T=(?P<temp>[-0-9.]+)`",
                    ));
                }
                Decoder::Regex(regex)
            }
            Framing::Csv(columns) => Decoder::Csv(columns.clone()),
        })
    }

    fn max_frame(&self) -> usize {
        self.max_frame.map_or(DEFAULT_MAX_FRAME, |s| {
            usize::try_from(s.0).unwrap_or(usize::MAX)
        })
    }
}

impl Config for SerialInConfig {
    const TYPE: &'static str = "serial.in";
    const ROLE: Role = Role::Source;
    const DOC: &'static str =
        "Reads lines, records, CSV, JSON or NMEA sentences from a serial port, optionally polling";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = self.port().validate();
        if let Err(issue) = self.split() {
            issues.push(issue);
        }
        if let Err(issue) = self.decoder() {
            issues.push(issue);
        }
        match &self.framing {
            Framing::Fixed(size) if *size == 0 || *size as u64 > LARGEST_FRAME => {
                issues.push(ConfigIssue::new(
                    "framing.fixed",
                    "a record is 1 byte to 1MiB long",
                ));
            }
            Framing::Fixed(_) if self.delimiter.is_some() => issues.push(ConfigIssue::new(
                "delimiter",
                "fixed-length records have no delimiter; remove `delimiter`",
            )),
            Framing::Csv(columns) => {
                if columns.is_empty() {
                    issues.push(ConfigIssue::new(
                        "framing.csv",
                        "name the columns, e.g. [id, value]",
                    ));
                }
                for (i, name) in columns.iter().enumerate() {
                    if name.trim().is_empty() {
                        issues.push(ConfigIssue::new(
                            format!("framing.csv[{i}]"),
                            "a column needs a name",
                        ));
                    } else if columns[..i].contains(name) {
                        issues.push(ConfigIssue::new(
                            format!("framing.csv[{i}]"),
                            format!("column `{name}` is named twice"),
                        ));
                    }
                }
            }
            _ => {}
        }
        if let Some(size) = self.max_frame
            && (size.0 == 0 || size.0 > LARGEST_FRAME)
        {
            issues.push(ConfigIssue::new("max_frame", "give 1 byte to 1MiB"));
        }
        if let Some(poll) = &self.poll {
            match unescape(&poll.request) {
                Ok(bytes) if bytes.is_empty() => issues.push(ConfigIssue::new(
                    "poll.request",
                    "the request cannot be empty",
                )),
                Ok(_) => {}
                Err(e) => issues.push(ConfigIssue::new("poll.request", e)),
            }
            if poll.interval.get() < Duration::from_millis(1) {
                issues.push(ConfigIssue::new("poll.interval", "must be at least 1ms"));
            }
            if poll.timeout.get() < Duration::from_millis(1) {
                issues.push(ConfigIssue::new("poll.timeout", "must be at least 1ms"));
            } else if poll.timeout.get() > poll.interval.get() {
                issues.push(ConfigIssue::new(
                    "poll.timeout",
                    "the reply timeout cannot be longer than the poll interval",
                ));
            }
        }
        if self.topic.as_deref().is_some_and(str::is_empty) {
            issues.push(ConfigIssue::new("topic", "the topic cannot be empty"));
        }
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        // Building does no IO: the port is opened when the node starts, so `check` works
        // on a machine without the device.
        let split = self.split().map_err(|e| vec![e])?;
        let decoder = self.decoder().map_err(|e| vec![e])?;
        let poll = match &self.poll {
            Some(p) => Some(Poll {
                request: unescape(&p.request)
                    .map_err(|e| vec![ConfigIssue::new("poll.request", e)])?,
                interval: p.interval.get(),
                timeout: p.timeout.get(),
            }),
            None => None,
        };
        let node = Arc::new(SerialIn {
            port: self.port(),
            skip_empty: !matches!(self.framing, Framing::Fixed(_)),
            split,
            max_frame: self.max_frame(),
            decoder,
            poll,
            topic: self
                .topic
                .clone()
                .unwrap_or_else(|| format!("serial/{}", cx.id.node))
                .into(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(node.clone().run(cx))
        }))
    }
}

struct Poll {
    request: Vec<u8>,
    interval: Duration,
    timeout: Duration,
}

struct SerialIn {
    port: PortSettings,
    split: Split,
    /// Line framings skip empty lines (blank keep-alives, `\r\n\r\n`).
    skip_empty: bool,
    max_frame: usize,
    decoder: Decoder,
    poll: Option<Poll>,
    topic: Arc<str>,
}

/// How one open period of the port ended.
enum SessionEnd {
    Shutdown,
    Lost { reason: String, got_data: bool },
}

/// Per-kind counts of one node run, logged when the port is lost and at shutdown (the
/// engine's node stats count the same messages as emitted and failed).
#[derive(Default)]
struct Tally {
    frames: u64,
    errors: std::collections::BTreeMap<&'static str, u64>,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} frames", self.frames)?;
        for (kind, n) in &self.errors {
            write!(f, ", {kind} {n}")?;
        }
        Ok(())
    }
}

async fn sleep_until_some(clock: &Clock, at: Option<Instant>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl SerialIn {
    async fn run(self: Arc<Self>, cx: NodeContext) -> Result<(), NodeError> {
        let mut link = LinkLog::new(cx.id.clone(), self.port.path.display().to_string());
        let mut backoff = Backoff::default();
        let mut tally = Tally::default();
        loop {
            let opened = tokio::select! {
                opened = serial::open(&self.port) => opened,
                () = cx.shutdown.cancelled() => return Ok(()),
            };
            match opened {
                Ok((stream, with)) => {
                    link.opened(with, self.port.baud);
                    match self.session(&cx, stream, &mut tally).await {
                        SessionEnd::Shutdown => {
                            tracing::debug!(node = %cx.id, "serial.in stopped: {tally}");
                            return Ok(());
                        }
                        SessionEnd::Lost { reason, got_data } => {
                            link.lost(&reason);
                            tracing::info!(node = %cx.id, "serial.in so far: {tally}");
                            if got_data {
                                backoff.reset();
                            }
                        }
                    }
                }
                Err(error) => link.failed(&error),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = cx.clock.sleep(delay) => {}
                () = cx.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Reads the open port until it is lost or the engine shuts down.
    async fn session(
        &self,
        cx: &NodeContext,
        mut stream: SerialStream,
        tally: &mut Tally,
    ) -> SessionEnd {
        let mut framer = Framer::new(self.split.clone(), self.max_frame);
        let mut buffer = vec![0u8; 4096];
        let mut frames = Vec::new();
        let mut got_data = false;
        // Poll mode: when the next request goes out, and the reply's deadline.
        let mut next_request = cx.clock.now();
        let mut reply_deadline: Option<Instant> = None;
        loop {
            let request_at = self
                .poll
                .as_ref()
                .filter(|_| reply_deadline.is_none())
                .map(|_| next_request);
            tokio::select! {
                () = cx.shutdown.cancelled() => return SessionEnd::Shutdown,
                read = stream.read(&mut buffer) => {
                    let reason = match read {
                        Ok(0) => "end of file (device gone?)".to_string(),
                        Ok(n) => {
                            got_data = true;
                            framer.push(&buffer[..n], &mut frames);
                            for frame in frames.drain(..) {
                                self.frame(cx, frame, &mut reply_deadline, tally).await;
                            }
                            continue;
                        }
                        Err(e) => e.to_string(),
                    };
                    if let Some(partial) = framer.take_partial() {
                        self.report(cx, tally, partial, "partial", "an unfinished frame was cut off: the port was lost").await;
                    }
                    return SessionEnd::Lost { reason, got_data };
                }
                () = sleep_until_some(&cx.clock, request_at) => {
                    let Some(poll) = &self.poll else { continue };
                    if let Some(partial) = framer.take_partial() {
                        self.report(cx, tally, partial, "partial", "an unfinished frame was discarded before the next poll request").await;
                    }
                    match tokio::time::timeout(poll.timeout, stream.write_all(&poll.request)).await {
                        Ok(Ok(())) => reply_deadline = Some(cx.clock.now() + poll.timeout),
                        Ok(Err(e)) => return SessionEnd::Lost { reason: format!("writing the poll request failed: {e}"), got_data },
                        Err(_) => {
                            self.report(cx, tally, Bytes::new(), "timeout", format!("the poll request could not be written within {:?} (flow control holding it?)", poll.timeout)).await;
                        }
                    }
                    // Fixed rate; after a stall, skip missed requests instead of bursting.
                    next_request += poll.interval;
                    let now = cx.clock.now();
                    if next_request <= now {
                        next_request = now + poll.interval;
                    }
                }
                () = sleep_until_some(&cx.clock, reply_deadline) => {
                    reply_deadline = None;
                    let timeout = self.poll.as_ref().map_or(Duration::ZERO, |p| p.timeout);
                    let partial = framer.take_partial();
                    let reason = if partial.is_some() {
                        format!("no complete reply to the poll request within {timeout:?} (the payload holds what arrived)")
                    } else {
                        format!("no reply to the poll request within {timeout:?}")
                    };
                    self.report(cx, tally, partial.unwrap_or_default(), "timeout", reason).await;
                }
            }
        }
    }

    /// Handles one frame: decoded and emitted, or reported.
    async fn frame(
        &self,
        cx: &NodeContext,
        frame: Frame,
        reply_deadline: &mut Option<Instant>,
        tally: &mut Tally,
    ) {
        let bytes = match frame {
            Frame::Good(bytes) if bytes.is_empty() && self.skip_empty => return,
            Frame::Good(bytes) => bytes,
            Frame::TooLong(head) => {
                reply_deadline.take();
                let reason = format!(
                    "a frame longer than max_frame ({} bytes) was discarded (the payload holds its start)",
                    self.max_frame
                );
                self.report(cx, tally, head, "too_long", reason).await;
                return;
            }
        };
        if self.poll.is_some() && reply_deadline.take().is_none() {
            self.report(
                cx,
                tally,
                bytes,
                "unsolicited",
                "a frame arrived while no poll request was waiting (a late reply?)",
            )
            .await;
            return;
        }
        match self.decoder.decode(&bytes) {
            Ok(payload) => {
                tally.frames += 1;
                cx.emit(Msg::new(self.topic.clone(), payload, cx.clock.wall_ms()))
                    .await;
            }
            Err(error) => self.report(cx, tally, bytes, error.kind(), error).await,
        }
    }

    /// Sends the raw bytes to the `error` port (or the rate-limited log), with the kind
    /// in the `serial_error` header.
    async fn report(
        &self,
        cx: &NodeContext,
        tally: &mut Tally,
        raw: Bytes,
        kind: &'static str,
        reason: impl fmt::Display,
    ) {
        *tally.errors.entry(kind).or_default() += 1;
        let mut msg = Msg::new(self.topic.clone(), raw, cx.clock.wall_ms());
        msg.headers_mut()
            .insert("serial_error".into(), kind.to_string());
        cx.outputs.emit_error(msg, reason).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Clock;
    use crate::engine::harness::NodeHarness;

    fn issues(options: &str) -> String {
        NodeHarness::start("serial.in", options, Clock::system())
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn options_are_checked_without_opening_anything() {
        assert_eq!(
            issues("path: /dev/ttyUSB0\nframing: {regex: 'T=(\\d+)'}"),
            "framing.regex: name the groups that become fields, e.g. `T=(?P<temp>[-0-9.]+)`"
        );
        assert!(
            issues("path: /dev/ttyUSB0\nframing: {regex: '(?P<a>'}")
                .starts_with("framing.regex: invalid regex")
        );
        assert_eq!(
            issues("path: /dev/ttyUSB0\nframing: {csv: [a, a]}"),
            "framing.csv[1]: column `a` is named twice"
        );
        assert_eq!(
            issues("path: /dev/ttyUSB0\nframing: {fixed: 4}\ndelimiter: ';'"),
            "delimiter: fixed-length records have no delimiter; remove `delimiter`"
        );
        assert_eq!(
            issues("path: /dev/ttyUSB0\ndelimiter: '\\q'"),
            "delimiter: unknown escape `\\q`; use \\n, \\r, \\t, \\0, \\\\ or \\xHH"
        );
        assert_eq!(
            issues("path: /dev/ttyUSB0\npoll: {request: 'R', interval: 1s, timeout: 2s}"),
            "poll.timeout: the reply timeout cannot be longer than the poll interval"
        );
        assert_eq!(
            issues("path: ''\ndata_bits: 9\nmax_frame: 0"),
            "path: name the port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/usb-...; \
             data_bits: data bits are 5, 6, 7 or 8; max_frame: give 1 byte to 1MiB"
        );
        assert!(issues("path: /dev/x\nframing: xml").contains("unknown variant `xml`"));
    }
}

#[cfg(test)]
mod run_tests {
    //! The node against real pseudo-terminals.

    use std::path::Path;
    use std::time::Duration;

    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Msg};
    use crate::nodes::serial::testpty::{Freeze, Pty};

    const PATIENCE: Duration = Duration::from_secs(20);

    async fn next(h: &mut NodeHarness, port: &str) -> Msg {
        tokio::time::timeout(PATIENCE, h.recv(port))
            .await
            .unwrap_or_else(|_| panic!("nothing on {port}"))
            .unwrap_or_else(|| panic!("{port} closed"))
    }

    fn point(link: &Path, pty: &Pty) {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&pty.path, link).unwrap();
    }

    fn text(msg: &Msg) -> String {
        String::from_utf8_lossy(&msg.payload).into_owned()
    }

    fn nmea(data: &str) -> String {
        let sum = data.bytes().fold(0u8, |s, b| s ^ b);
        format!("${data}*{sum:02X}")
    }

    #[tokio::test]
    async fn reads_sentences_reports_garbage_and_survives_unplugging() {
        let dir = tempfile::tempdir().unwrap();
        // A stable name like /dev/serial/by-id/..., re-pointed when the device comes back.
        let link = dir.path().join("usb-gps-if00");
        let first = Pty::open();
        point(&link, &first);
        let options = format!(
            "path: {}\nbaud: 115200\nframing: nmea\nmax_frame: 90\ntopic: gps",
            link.display()
        );
        let mut h = NodeHarness::start("serial.in", &options, Clock::system()).unwrap();

        let gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
        let rmc = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W");
        let bad_sum = gga.replace(&gga[gga.len() - 2..], "00");
        let too_long = format!("$GPTXT,{}*00", "x".repeat(100));
        let mut stream = Vec::new();
        for line in [
            gga.as_bytes(),
            b"garbage",
            b"\xff\xfe$GP",
            bad_sum.as_bytes(),
            too_long.as_bytes(),
            rmc.as_bytes(),
        ] {
            stream.extend_from_slice(line);
            stream.extend_from_slice(b"\r\n");
        }
        first.write(&stream);

        let got = next(&mut h, "out").await;
        let value: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
        assert_eq!(value["talker"], "GP");
        assert_eq!(value["type"], "GGA");
        assert_eq!(value["fields"][1], "4807.038");
        assert_eq!(value["raw"], gga.as_str());
        assert_eq!(&*got.topic, "gps");
        let got = next(&mut h, "out").await;
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&got.payload).unwrap()["raw"],
            rmc.as_str()
        );

        let mut errors = Vec::new();
        for _ in 0..4 {
            let msg = next(&mut h, "error").await;
            errors.push((msg.headers["serial_error"].clone(), text(&msg)));
        }
        assert_eq!(
            errors,
            vec![
                ("bad_nmea".to_string(), "garbage".to_string()),
                ("not_text".to_string(), "\u{fffd}\u{fffd}$GP".to_string()),
                ("bad_checksum".to_string(), bad_sum.clone()),
                ("too_long".to_string(), too_long[..90].to_string()),
            ]
        );

        // A partial sentence, then the device disappears: unplugged, its symlink gone.
        first.write(format!("{gga}\r\n$GPGGA,12").as_bytes());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&next(&mut h, "out").await.payload)
                .unwrap()["type"],
            "GGA"
        );
        std::fs::remove_file(&link).unwrap();
        drop(first);
        let partial = next(&mut h, "error").await;
        assert_eq!(partial.headers["serial_error"], "partial");
        assert_eq!(text(&partial), "$GPGGA,12");

        // It comes back under another /dev/pts name; the stable link follows it.
        let second = Pty::open();
        point(&link, &second);
        second.write(format!("{rmc}\r\n").as_bytes());
        let got = next(&mut h, "out").await;
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&got.payload).unwrap()["raw"],
            rmc.as_str()
        );

        // Not one message more than asserted above.
        h.settle().await;
        assert!(h.drain("out").is_empty());
        assert!(h.drain("error").is_empty());
        let stats = h.stats();
        assert_eq!(
            stats.emitted.load(std::sync::atomic::Ordering::Relaxed),
            4 + 5
        );
        assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 5);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn csv_regex_and_json_frames_with_a_custom_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let pty = Pty::open();
        let link = dir.path().join("meter");
        point(&link, &pty);
        let mut csv = NodeHarness::start(
            "serial.in",
            &format!(
                "path: {}\nframing: {{csv: [id, lux]}}\ndelimiter: ';'",
                link.display()
            ),
            Clock::system(),
        )
        .unwrap();
        pty.write(b"lux-1,532.5;lux-2, 007 ;1,2,3;");
        assert_eq!(
            text(&next(&mut csv, "out").await),
            r#"{"id":"lux-1","lux":532.5}"#
        );
        assert_eq!(
            text(&next(&mut csv, "out").await),
            r#"{"id":"lux-2","lux":"007"}"#
        );
        let bad = next(&mut csv, "error").await;
        assert_eq!(
            (bad.headers["serial_error"].as_str(), text(&bad).as_str()),
            ("bad_csv", "1,2,3")
        );
        assert_eq!(bad.headers["error"], "bad CSV: 3 cells, the columns name 2");
        assert_eq!(&*bad.topic, "serial/node");
        csv.shutdown().await;
        drop(pty);

        let pty = Pty::open();
        let mut regex = NodeHarness::start(
            "serial.in",
            &format!(
                "path: {}\nframing: {{regex: '^T=(?P<temp>\\S+) H=(?P<hum>\\d+)$'}}\ndelimiter: '\\r\\n'",
                pty.path.display()
            ),
            Clock::system(),
        )
        .unwrap();
        pty.write(b"T=21.5 H=40\r\nT=x\r\nT=-1 H=99\r\n");
        assert_eq!(
            text(&next(&mut regex, "out").await),
            r#"{"temp":21.5,"hum":40}"#
        );
        assert_eq!(
            text(&next(&mut regex, "out").await),
            r#"{"temp":-1,"hum":99}"#
        );
        assert_eq!(
            next(&mut regex, "error").await.headers["serial_error"],
            "no_match"
        );
        regex.shutdown().await;
        drop(pty);

        let pty = Pty::open();
        let mut json = NodeHarness::start(
            "serial.in",
            &format!("path: {}\nframing: json", pty.path.display()),
            Clock::system(),
        )
        .unwrap();
        pty.write(b"{\"a\":1}\n\n{\"a\":\n[1,2]\r\n");
        assert_eq!(text(&next(&mut json, "out").await), r#"{"a":1}"#);
        assert_eq!(text(&next(&mut json, "out").await), "[1,2]");
        let bad = next(&mut json, "error").await;
        assert_eq!(
            (bad.headers["serial_error"].as_str(), text(&bad).as_str()),
            ("bad_json", "{\"a\":")
        );
        json.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn poll_mode_with_a_device_that_answers_in_time_late_or_never() {
        // Time moves only when the test says so, while real pty IO completes.
        let freeze = Freeze::start();
        let pty = std::sync::Arc::new(Pty::open());
        let clock = Clock::virtual_at(1_000_000);
        let options = format!(
            "path: {}\npoll: {{request: 'READ\\r\\n', interval: 10s, timeout: 2s}}\nframing: {{regex: '^(?P<w>\\d+)$'}}",
            pty.path.display()
        );
        let mut h = NodeHarness::start("serial.in", &options, clock.clone()).unwrap();
        let request = || {
            let pty = pty.clone();
            async move {
                tokio::task::spawn_blocking(move || pty.read_until(b"\r\n", PATIENCE))
                    .await
                    .unwrap()
            }
        };

        // The first request goes out when the port opens; the device answers in time.
        assert_eq!(request().await, b"READ\r\n");
        pty.write(b"42\r\n");
        let reply = next(&mut h, "out").await;
        assert_eq!(text(&reply), r#"{"w":42}"#);
        assert_eq!(reply.timestamp_ms, 1_000_000);

        // 10 s later: a request the device never answers.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(request().await, b"READ\r\n");
        tokio::time::advance(Duration::from_millis(1999)).await;
        h.settle().await;
        assert!(h.drain("error").is_empty(), "no timeout before 2s");
        tokio::time::advance(Duration::from_millis(1)).await;
        let timeout = next(&mut h, "error").await;
        assert_eq!(timeout.headers["serial_error"], "timeout");
        assert_eq!(
            timeout.headers["error"],
            "no reply to the poll request within 2s"
        );
        assert_eq!(timeout.timestamp_ms, 1_012_000);

        // The next one is answered late: reported, not mistaken for the reply to the
        // request after it.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(request().await, b"READ\r\n");
        tokio::time::advance(Duration::from_secs(2)).await;
        let timeout = next(&mut h, "error").await;
        assert_eq!(timeout.headers["serial_error"], "timeout");
        assert!(timeout.payload.is_empty());
        pty.write(b"43\r\n");
        let late = next(&mut h, "error").await;
        assert_eq!(late.headers["serial_error"], "unsolicited");
        assert_eq!(text(&late), "43");

        // And the device answers in time again.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(request().await, b"READ\r\n");
        pty.write(b"44\r\n");
        assert_eq!(text(&next(&mut h, "out").await), r#"{"w":44}"#);
        assert!(h.drain("out").is_empty());
        assert!(h.drain("error").is_empty());
        drop(freeze);
        h.shutdown().await;
    }
}
