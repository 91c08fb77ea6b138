//! What `serial.in` and `serial.out` share: the port options, opening a port (through
//! serialport, or through classic termios where `TCGETS2` is missing), and logging
//! the port's state once per change while it is reopened with backoff.

pub mod decode;
pub mod framing;
pub mod termios;
#[cfg(test)]
pub mod testpty;

use std::io;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use tokio_serial::SerialStream;

use crate::engine::NodeId;
use crate::nodes::registry::ConfigIssue;

/// Parity bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF characters.
    Software,
    /// RTS/CTS lines.
    Hardware,
}

/// Everything needed to open and configure a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSettings {
    /// The device, e.g. `/dev/ttyUSB0` or a `/dev/serial/by-id/...` symlink.
    pub path: PathBuf,
    /// Bits per second.
    pub baud: u32,
    /// 5 to 8.
    pub data_bits: u8,
    /// Parity bit.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
    /// Refuse other openers (`TIOCEXCL` and an exclusive `flock`); `false` takes a
    /// shared `flock`, so a `serial.in` and a `serial.out` can share a port.
    pub exclusive: bool,
}

/// The default baud rate.
pub fn default_baud() -> u32 {
    9600
}

/// The default data bits.
pub fn default_data_bits() -> u8 {
    8
}

/// The default stop bits.
pub fn default_stop_bits() -> u8 {
    1
}

/// `true`, for serde defaults.
pub fn yes() -> bool {
    true
}

impl PortSettings {
    /// Checks the options serde cannot: an empty path, a zero baud, data and stop bits
    /// out of range.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.path.as_os_str().is_empty() {
            issues.push(ConfigIssue::new(
                "path",
                "name the port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/usb-...",
            ));
        }
        if self.baud == 0 {
            issues.push(ConfigIssue::new(
                "baud",
                "the baud rate must be above 0, e.g. 9600 or 115200",
            ));
        }
        if !(5..=8).contains(&self.data_bits) {
            issues.push(ConfigIssue::new("data_bits", "data bits are 5, 6, 7 or 8"));
        }
        if !(1..=2).contains(&self.stop_bits) {
            issues.push(ConfigIssue::new("stop_bits", "stop bits are 1 or 2"));
        }
        issues
    }
}

/// How a port was opened, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenedWith {
    /// serialport's configuration (`TCGETS2` on Linux).
    Serialport,
    /// The classic termios fallback (`TCGETS2` answered `ENOSYS`).
    Termios,
}

/// Why a port could not be opened; the text says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The path does not exist (unplugged, or a symlink not re-created yet).
    #[error("{0} does not exist (unplugged?)")]
    Missing(String),
    /// No permission.
    #[error("permission denied on {0}: add the user to the `dialout` group (or the port's group)")]
    Permission(String),
    /// Locked by another program or node.
    #[error("{0} is in use by another program or node")]
    Busy(String),
    /// Anything else.
    #[error("cannot open {0}: {1}")]
    Other(String, String),
}

fn data_bits(bits: u8) -> tokio_serial::DataBits {
    match bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    }
}

/// Opens and configures the port (blocking syscalls: call it on the blocking pool).
/// serialport first; when it fails and the `TCGETS2` ioctl answers `ENOSYS` on the
/// device, classic termios (standard baud rates only).
pub fn open_blocking(
    settings: &PortSettings,
) -> Result<(serialport::TTYPort, OpenedWith), OpenError> {
    let path = settings.path.to_string_lossy().into_owned();
    let builder = serialport::new(path.clone(), settings.baud)
        .data_bits(data_bits(settings.data_bits))
        .parity(match settings.parity {
            Parity::None => serialport::Parity::None,
            Parity::Odd => serialport::Parity::Odd,
            Parity::Even => serialport::Parity::Even,
        })
        .stop_bits(if settings.stop_bits == 2 {
            serialport::StopBits::Two
        } else {
            serialport::StopBits::One
        })
        .flow_control(match settings.flow_control {
            FlowControl::None => serialport::FlowControl::None,
            FlowControl::Software => serialport::FlowControl::Software,
            FlowControl::Hardware => serialport::FlowControl::Hardware,
        })
        .exclusive(settings.exclusive);
    match builder.open_native() {
        Ok(port) => Ok((port, OpenedWith::Serialport)),
        Err(error) => {
            let io_kind = match error.kind() {
                serialport::ErrorKind::Io(kind) => Some(kind),
                _ => None,
            };
            match io_kind {
                Some(io::ErrorKind::NotFound) => return Err(OpenError::Missing(path)),
                Some(io::ErrorKind::PermissionDenied) => return Err(OpenError::Permission(path)),
                _ => {}
            }
            if error.kind() == serialport::ErrorKind::NoDevice {
                return Err(OpenError::Busy(path));
            }
            // serialport reports ENOSYS as `Unknown`: ask the device directly.
            match termios::open_if_tcgets2_missing(settings) {
                Ok(Some(port)) => Ok((port, OpenedWith::Termios)),
                Ok(None) => Err(OpenError::Other(path, error.to_string())),
                Err(io_error) => Err(classify(&path, io_error)),
            }
        }
    }
}

/// Sorts an OS error from opening `path` into an [`OpenError`].
pub fn classify(path: &str, error: io::Error) -> OpenError {
    match error.kind() {
        io::ErrorKind::NotFound => OpenError::Missing(path.to_string()),
        io::ErrorKind::PermissionDenied => OpenError::Permission(path.to_string()),
        io::ErrorKind::ResourceBusy => OpenError::Busy(path.to_string()),
        _ => OpenError::Other(path.to_string(), error.to_string()),
    }
}

/// Opens the port on the blocking pool and registers it with the runtime.
pub async fn open(settings: &PortSettings) -> Result<(SerialStream, OpenedWith), OpenError> {
    let job = settings.clone();
    let path = settings.path.to_string_lossy().into_owned();
    let (port, with) = tokio::task::spawn_blocking(move || open_blocking(&job))
        .await
        .map_err(|e| OpenError::Other(path.clone(), format!("the open task was lost: {e}")))??;
    let stream = SerialStream::try_from(port).map_err(|e| OpenError::Other(path, e.to_string()))?;
    Ok((stream, with))
}

/// The port's state as the log last told it, so a port that stays unplugged for an
/// hour logs one line, not one per retry.
#[derive(Debug)]
pub struct LinkLog {
    node: NodeId,
    path: String,
    state: LinkState,
}

#[derive(Debug, PartialEq, Eq)]
enum LinkState {
    Starting,
    Open,
    Down(String),
}

impl LinkLog {
    /// Nothing logged yet.
    pub fn new(node: NodeId, path: String) -> Self {
        LinkLog {
            node,
            path,
            state: LinkState::Starting,
        }
    }

    /// The port opened (logged always: opening follows a change).
    pub fn opened(&mut self, with: OpenedWith, baud: u32) {
        let again = self.state != LinkState::Starting;
        let how = match with {
            OpenedWith::Serialport => "",
            OpenedWith::Termios => " (classic termios: TCGETS2 is not available)",
        };
        let what = if again { "reopened" } else { "opened" };
        tracing::info!(node = %self.node, path = %self.path, baud, "serial port {what}{how}");
        self.state = LinkState::Open;
    }

    /// An attempt to open failed; logged when the reason differs from the last one.
    pub fn failed(&mut self, error: &OpenError) {
        let reason = error.to_string();
        if self.state != LinkState::Down(reason.clone()) {
            tracing::warn!(node = %self.node, path = %self.path, "serial port unavailable: {reason}; retrying with backoff (up to 30s)");
            self.state = LinkState::Down(reason);
        } else {
            tracing::debug!(node = %self.node, path = %self.path, "serial port still unavailable: {reason}");
        }
    }

    /// An open port was lost (read or write error, end of file).
    pub fn lost(&mut self, reason: &str) {
        tracing::warn!(node = %self.node, path = %self.path, "serial port lost: {reason}; reopening with backoff");
        self.state = LinkState::Down(format!("lost: {reason}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PortSettings {
        PortSettings {
            path: "/dev/ttyUSB0".into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            exclusive: true,
        }
    }

    #[test]
    fn port_settings_are_checked() {
        assert!(settings().validate().is_empty());
        let bad = PortSettings {
            path: "".into(),
            baud: 0,
            data_bits: 9,
            stop_bits: 3,
            ..settings()
        };
        let paths: Vec<String> = bad.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(paths, ["path", "baud", "data_bits", "stop_bits"]);
    }

    #[test]
    fn a_missing_device_is_named_as_such() {
        let gone = PortSettings {
            path: "/dev/serial/by-id/usb-no-such-device".into(),
            ..settings()
        };
        let err = open_blocking(&gone).unwrap_err();
        assert_eq!(
            err,
            OpenError::Missing("/dev/serial/by-id/usb-no-such-device".into())
        );
        assert!(err.to_string().contains("unplugged"));
        assert_eq!(
            termios::open_classic(&gone).map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn the_termios_fallback_configures_and_reads_a_port() {
        use std::os::fd::AsRawFd;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let pty = testpty::Pty::open();
        let wanted = PortSettings {
            path: pty.path.clone(),
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 2,
            flow_control: FlowControl::Hardware,
            exclusive: true,
        };
        let port = termios::open_classic(&wanted).unwrap();
        // A pty pins 8 bits without parity (termios.rs tests the other flags); the rest
        // shows on the device.
        let seen = pty.slave_termios();
        assert_eq!(seen.c_ospeed, libc::B115200);
        assert_eq!(seen.c_ispeed, libc::B115200);
        assert_eq!(seen.c_cflag & libc::CSIZE, libc::CS8);
        assert_ne!(seen.c_cflag & libc::CSTOPB, 0);
        assert_ne!(seen.c_cflag & libc::CRTSCTS, 0);
        assert_eq!(seen.c_lflag & (libc::ICANON | libc::ECHO), 0, "raw mode");
        // Exclusive: a second opener is refused.
        assert!(matches!(
            termios::open_classic(&wanted)
                .map(|_| ())
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::ResourceBusy)
        ));
        let mut stream = SerialStream::try_from(port).unwrap();
        assert!(stream.as_raw_fd() >= 0);
        pty.write(b"hello\n");
        let mut got = [0u8; 6];
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stream.read_exact(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&got, b"hello\n");
        stream.write_all(b"back\n").await.unwrap();
        assert_eq!(
            pty.read_until(b"\n", std::time::Duration::from_secs(20)),
            b"back\n"
        );

        // A rate termios cannot name is refused with what to do.
        drop(stream);
        let odd = PortSettings {
            baud: 31_250,
            ..wanted
        };
        let err = termios::open_classic(&odd).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("not a standard rate"), "{err}");
    }

    #[test]
    fn tcgets2_works_here_so_serialport_opens_ptys_itself() {
        let pty = testpty::Pty::open();
        let (_, with) = open_blocking(&PortSettings {
            path: pty.path.clone(),
            ..settings()
        })
        .unwrap();
        // Under qemu-user this is the fallback's job instead (docs/decisions/010).
        let expected = if cfg!(target_arch = "x86_64") {
            OpenedWith::Serialport
        } else {
            with
        };
        assert_eq!(with, expected);
    }
}
