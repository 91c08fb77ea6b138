//! systemd's service notification protocol (`sd_notify`): `READY=1` once the process
//! serves, `WATCHDOG=1` pings while it is alive, `STOPPING=1` when it shuts down, each a
//! datagram on the Unix socket systemd names in `$NOTIFY_SOCKET`.
//!
//! Written here rather than taken from a crate: the protocol is one `sendto` of a few
//! bytes. Without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is
//! a no-op, so `run` and `broker` call it unconditionally.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// Where notifications go, read once from the environment at start.
#[derive(Clone, Default)]
pub struct Notifier {
    /// The socket and systemd's address; `None` when `$NOTIFY_SOCKET` is not set.
    target: Option<Arc<Target>>,
    /// Half of `$WATCHDOG_USEC` (systemd's advice), when the watchdog is on for us.
    watchdog_every: Option<Duration>,
}

struct Target {
    /// An unbound, non-blocking datagram socket: a send never stalls a runtime worker.
    socket: UnixDatagram,
    /// systemd's socket: a path, or a name in the abstract namespace (`@name`).
    address: SocketAddr,
    /// Whether a failed send was logged at warn already: the watchdog repeats forever,
    /// so later failures go to debug instead of flooding the log.
    warned: std::sync::atomic::AtomicBool,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A malformed value
    /// is logged and the notifications are off: the service still runs, and systemd
    /// reports the missing readiness itself.
    pub fn from_env() -> Notifier {
        let Some(socket_name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let target = match Target::open(&socket_name) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {error}; systemd will not hear that headwater is ready",
                    socket_name.to_string_lossy()
                );
                return Notifier::default();
            }
        };
        let watchdog_every = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier {
            target: Some(Arc::new(target)),
            watchdog_every,
        }
    }

    /// Says the service is up (`READY=1` with a `STATUS=` line for `systemctl status`)
    /// and, when systemd asked for a watchdog, starts pinging it from a task on the
    /// current tokio runtime: if the runtime stops making progress, the pings stop and
    /// systemd restarts the service.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        if let (Some(target), Some(every)) = (&self.target, self.watchdog_every) {
            let target = target.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    target.send("WATCHDOG=1");
                }
            });
        }
    }

    /// Says the service is shutting down (`STOPPING=1`), so systemd waits for the
    /// queues to drain instead of counting the exit as a crash.
    pub fn stopping(&self, reason: &str) {
        self.send(&format!("STOPPING=1\nSTATUS=shutting down: {reason}"));
    }

    fn send(&self, state: &str) {
        if let Some(target) = &self.target {
            target.send(state);
        }
    }
}

impl Target {
    fn open(name: &OsStr) -> std::io::Result<Target> {
        let address = notify_address(name)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Target {
            socket,
            address,
            warned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// One datagram; a failure is logged and otherwise ignored: notifications are
    /// advice to systemd, never a reason to stop serving.
    fn send(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            let first_line = state.lines().next().unwrap_or(state);
            if self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!("cannot notify systemd ({first_line}): {error}");
            } else {
                tracing::warn!("cannot notify systemd ({first_line}): {error}");
            }
        }
    }
}

/// systemd's socket address: an absolute path, or `@name` for the abstract namespace
/// (the `@` stands for the leading NUL byte).
fn notify_address(name: &OsStr) -> std::io::Result<SocketAddr> {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        Some(b'/') => SocketAddr::from_pathname(name),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path nor an abstract name (@name)",
        )),
    }
}

/// How often to ping: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises;
/// none when the variable is absent, zero or malformed, or when `WATCHDOG_PID` names
/// another process (the variables were inherited, not meant for us).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&usec| usec > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn watchdog_is_off_when_absent_zero_malformed_or_for_another_process() {
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("2000000"), Some("x"), 7), None);
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let path = notify_address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = notify_address(OsStr::new("@hw/notify")).unwrap();
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(abstract_name.as_abstract_name(), Some(&b"hw/notify"[..]));
        assert!(notify_address(OsStr::new("relative/socket")).is_err());
        assert!(notify_address(OsStr::new("")).is_err());
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("headwater-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let notifier = Notifier {
            target: Some(Arc::new(
                Target::open(OsStr::new(&format!("@{name}"))).unwrap(),
            )),
            watchdog_every: None,
        };
        notifier.stopping("SIGTERM");
        let mut buffer = [0u8; 256];
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(
            std::str::from_utf8(&buffer[..n]).unwrap(),
            "STOPPING=1\nSTATUS=shutting down: SIGTERM"
        );
    }
}
