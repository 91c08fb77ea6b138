//! `serial.out`: writes each message's payload and a terminator to a serial port, for
//! actuators and displays. A message is done once the kernel took all its bytes, failed
//! when the port is unavailable or the write fails; the port is reopened with backoff.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_serial::SerialStream;

use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::mqtt::Backoff;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};
use crate::nodes::serial::framing::unescape;
use crate::nodes::serial::{
    self, FlowControl, LinkLog, OpenError, Parity, PortSettings, default_baud, default_data_bits,
    default_stop_bits, yes,
};

/// Options of a `serial.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialOutConfig {
    /// The device: `/dev/ttyUSB0`, or a stable `/dev/serial/by-id/...` symlink.
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
    /// Lock the port against other openers (default true); `false` lets it be shared
    /// with a `serial.in`.
    #[serde(default = "yes")]
    pub exclusive: bool,
    /// Written after each payload (default `\n`; `""` for none). Escapes: `\r`, `\n`,
    /// `\t`, `\0`, `\\`, `\xHH`.
    pub terminator: Option<String>,
    /// Longest a message's write may take before it fails (default `5s`): hardware
    /// flow control can hold a write forever.
    #[serde(default = "default_write_timeout")]
    pub timeout: HumanDuration,
}

fn default_write_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl SerialOutConfig {
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

    fn terminator(&self) -> Result<Vec<u8>, ConfigIssue> {
        match &self.terminator {
            None => Ok(b"\n".to_vec()),
            Some(text) => unescape(text).map_err(|e| ConfigIssue::new("terminator", e)),
        }
    }
}

impl Config for SerialOutConfig {
    const TYPE: &'static str = "serial.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Writes payloads with a terminator to a serial port";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = self.port().validate();
        if let Err(issue) = self.terminator() {
            issues.push(issue);
        }
        if self.timeout.get() < Duration::from_millis(1) {
            issues.push(ConfigIssue::new("timeout", "must be at least 1ms"));
        }
        issues
    }

    fn build(&self, _cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let node = Arc::new(SerialOut {
            port: self.port(),
            terminator: self.terminator().map_err(|e| vec![e])?,
            timeout: self.timeout.get(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(node.clone().run(cx))
        }))
    }
}

struct SerialOut {
    port: PortSettings,
    terminator: Vec<u8>,
    timeout: Duration,
}

/// The port and when to try opening it again.
struct Link {
    stream: Option<SerialStream>,
    retry_at: Instant,
    last_error: String,
    backoff: Backoff,
    log: LinkLog,
}

impl SerialOut {
    async fn run(self: Arc<Self>, mut cx: NodeContext) -> Result<(), NodeError> {
        let mut link = Link {
            stream: None,
            retry_at: cx.clock.now(),
            last_error: "not opened yet".into(),
            backoff: Backoff::default(),
            log: LinkLog::new(cx.id.clone(), self.port.path.display().to_string()),
        };
        // Open at start, so the log tells at once whether the port is there.
        self.try_open(&cx, &mut link).await;
        while let Some(msg) = cx.recv().await {
            self.write(&cx, &mut link, msg).await;
        }
        Ok(())
    }

    async fn try_open(&self, cx: &NodeContext, link: &mut Link) {
        if link.stream.is_some() || cx.clock.now() < link.retry_at {
            return;
        }
        match serial::open(&self.port).await {
            Ok((stream, with)) => {
                link.log.opened(with, self.port.baud);
                link.stream = Some(stream);
            }
            Err(error) => self.down(cx, link, &error),
        }
    }

    fn down(&self, cx: &NodeContext, link: &mut Link, error: &OpenError) {
        link.log.failed(error);
        link.last_error = error.to_string();
        link.retry_at = cx.clock.now() + link.backoff.next_delay();
    }

    async fn write(&self, cx: &NodeContext, link: &mut Link, msg: Msg) {
        self.try_open(cx, link).await;
        // A write error on a port that was open (replugged since?) gets one immediate
        // reopen and retry, so the first command after a replug is not lost.
        for attempt in 0..2 {
            let Some(stream) = link.stream.as_mut() else {
                let reason = format!("the port is not open: {}", link.last_error);
                cx.outputs.emit_error(msg, reason).await;
                return;
            };
            let written = tokio::time::timeout(self.timeout, async {
                stream.write_all(&msg.payload).await?;
                stream.write_all(&self.terminator).await
            })
            .await;
            let (reason, retry) = match written {
                Ok(Ok(())) => {
                    link.backoff.reset();
                    msg.done();
                    return;
                }
                Ok(Err(e)) => (
                    format!("writing to {} failed: {e}", self.port.path.display()),
                    attempt == 0,
                ),
                // A held write is not retried: it would only be held again.
                Err(_) => (
                    format!(
                        "writing to {} took longer than {:?} (flow control holding it?)",
                        self.port.path.display(),
                        self.timeout
                    ),
                    false,
                ),
            };
            link.stream = None;
            link.log.lost(&reason);
            link.last_error = reason.clone();
            if retry {
                link.retry_at = cx.clock.now();
                self.try_open(cx, link).await;
                if link.stream.is_none() {
                    let reason = format!("{reason}; reopening: {}", link.last_error);
                    cx.outputs.emit_error(msg, reason).await;
                    return;
                }
                continue;
            }
            link.retry_at = cx.clock.now() + link.backoff.next_delay();
            cx.outputs.emit_error(msg, reason).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Msg, Outcome};
    use crate::nodes::serial::testpty::{Freeze, Pty};

    const PATIENCE: Duration = Duration::from_secs(20);

    fn tracked(payload: &str) -> (Msg, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let msg = Msg::tracked("t", payload.to_string(), 0, move |o| {
            let _ = tx.send(o);
        });
        (msg, rx)
    }

    async fn device_reads(pty: &Arc<Pty>, end: &'static [u8]) -> String {
        let pty = pty.clone();
        let got = tokio::task::spawn_blocking(move || pty.read_until(end, PATIENCE))
            .await
            .unwrap();
        String::from_utf8(got).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn writes_with_a_terminator_fails_while_unplugged_and_reopens_with_backoff() {
        let freeze = Freeze::start();
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("relay");
        let first = Arc::new(Pty::open());
        std::os::unix::fs::symlink(&first.path, &link).unwrap();
        let mut h = NodeHarness::start(
            "serial.out",
            &format!(
                "path: {}\nterminator: '\\r\\n'\nbaud: 57600",
                link.display()
            ),
            Clock::virtual_at(0),
        )
        .unwrap();

        let (msg, done) = tracked("RELAY1 ON");
        h.send(msg).await;
        assert_eq!(done.await.unwrap(), Outcome::Done);
        let (msg, done) = tracked(r#"{"relay":2}"#);
        h.send(msg).await;
        assert_eq!(done.await.unwrap(), Outcome::Done);
        assert_eq!(
            device_reads(&first, b"}\r\n").await,
            "RELAY1 ON\r\n{\"relay\":2}\r\n"
        );
        // serialport set the speed through TCSETS2 (`BOTHER` plus the number).
        assert_eq!(first.slave_termios().c_cflag & libc::CBAUD, libc::BOTHER);

        // Unplugged: the write fails, the immediate reopen finds nothing.
        std::fs::remove_file(&link).unwrap();
        drop(first);
        let (msg, _) = tracked("RELAY1 OFF");
        h.send(msg).await;
        let failed = tokio::time::timeout(PATIENCE, h.recv("error"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(failed.payload_str(), Some("RELAY1 OFF"));
        let reason = &failed.headers["error"];
        assert!(
            reason.starts_with(&format!("writing to {} failed: ", link.display()))
                && reason.ends_with(&format!(
                    "; reopening: {} does not exist (unplugged?)",
                    link.display()
                )),
            "{reason}"
        );
        // Back under a new name; within the backoff the port is not tried again.
        let second = Arc::new(Pty::open());
        std::os::unix::fs::symlink(&second.path, &link).unwrap();
        let (msg, _) = tracked("too soon");
        h.send(msg).await;
        let failed = tokio::time::timeout(PATIENCE, h.recv("error"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            failed.headers["error"].starts_with("the port is not open:"),
            "{:?}",
            failed.headers
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        let (msg, done) = tracked("RELAY1 OFF");
        h.send(msg).await;
        assert_eq!(done.await.unwrap(), Outcome::Done);
        assert_eq!(device_reads(&second, b"\r\n").await, "RELAY1 OFF\r\n");
        drop(freeze);
        h.shutdown().await;
    }

    #[test]
    fn options_are_checked() {
        let err = NodeHarness::start(
            "serial.out",
            "path: /dev/x\nterminator: '\\x'",
            Clock::system(),
        )
        .err()
        .unwrap();
        assert_eq!(err, "terminator: `\\x` needs two hex digits, e.g. `\\x03`");
        let err = NodeHarness::start("serial.out", "path: /dev/x\nstop_bits: 0", Clock::system())
            .err()
            .unwrap();
        assert_eq!(err, "stop_bits: stop bits are 1 or 2");
    }
}
