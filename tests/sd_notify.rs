//! sd_notify as systemd would see it: the test binds the Unix datagram socket systemd
//! would, runs the real `headwater` with `NOTIFY_SOCKET` and `WATCHDOG_USEC`, and reads
//! `READY=1` (after the broker's listener is bound), `WATCHDOG=1` pings, and
//! `STOPPING=1` after SIGTERM. There is no systemd here (and none is needed).

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};

use common::{PATIENCE, line_reader, wait_line};

/// The notifications one process sends, one datagram each.
struct NotifySocket {
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(path: &std::path::Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket { socket }
    }

    /// The next datagram; the timeout only turns a silent process into a failure.
    fn next(&self) -> String {
        let mut buffer = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buffer)
            .expect("a notification within the patience");
        String::from_utf8(buffer[..n].to_vec()).expect("notifications are text")
    }

    /// Reads datagrams until one has `KEY=VALUE` on a line of its own; returns it and
    /// the datagrams seen before it.
    fn until(&self, line: &str) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let datagram = self.next();
            if datagram.lines().any(|l| l == line) {
                return (datagram, before);
            }
            before.push(datagram);
        }
    }
}

fn spawn(args: &[&str], notify_socket: &str, watchdog_usec: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(args)
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start headwater")
}

fn terminate(child: &Child) {
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
}

fn broker_port(line: &str) -> u16 {
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

#[test]
fn run_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = NotifySocket::bind(&socket_path);
    let flow = dir.path().join("flow.yaml");
    std::fs::write(
        &flow,
        "version: 1\nflows:\n  ticks:\n    nodes:\n      tick: { type: timer, interval: 1h, topic: t }\n      show: { type: log, inputs: tick }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    // 400 ms: pings every 200 ms, so the test sees some quickly.
    let mut child = spawn(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            "--listen",
            "127.0.0.1:0",
            flow.to_str().unwrap(),
        ],
        socket_path.to_str().unwrap(),
        "400000",
    );
    let lines = line_reader(child.stderr.take().unwrap());

    let (ready, before) = notify.until("READY=1");
    assert!(
        before.is_empty(),
        "READY is the first notification: {before:?}"
    );
    assert!(
        ready.lines().any(|l| l == "STATUS=running 1 flows"),
        "{ready:?}"
    );
    // READY comes after the listener is bound: the broker accepts right away.
    let port = broker_port(&wait_line(&lines, "broker listening", "headwater"));
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the broker accepts after READY");

    let (watchdog, _) = notify.until("WATCHDOG=1");
    assert_eq!(watchdog, "WATCHDOG=1");
    let (_, _) = notify.until("WATCHDOG=1");

    terminate(&child);
    let (stopping, _) = notify.until("STOPPING=1");
    assert!(
        stopping
            .lines()
            .any(|l| l == "STATUS=shutting down: SIGTERM"),
        "{stopping:?}"
    );
    wait_line(&lines, "all queues drained", "headwater");
    assert!(child.wait().unwrap().success());
}

#[test]
fn broker_notifies_an_abstract_socket_and_skips_a_foreign_watchdog() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("headwater-sd-notify-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let notify = NotifySocket { socket };
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "broker",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        // Inherited from a parent that systemd watches: not ours, so no pings.
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start headwater");
    let lines = line_reader(child.stderr.take().unwrap());
    let (ready, _) = notify.until("READY=1");
    assert!(
        ready.lines().any(|l| l == "STATUS=broker running"),
        "{ready:?}"
    );
    let port = broker_port(&wait_line(&lines, "broker listening", "headwater"));
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the broker accepts after READY");

    terminate(&child);
    let (stopping, before) = notify.until("STOPPING=1");
    assert!(
        before.is_empty(),
        "no watchdog pings (every 50 ms if it were on) for another process's WATCHDOG_PID: {before:?}"
    );
    assert!(stopping.contains("STATUS=shutting down: SIGTERM"));
    assert!(child.wait().unwrap().success());
}
