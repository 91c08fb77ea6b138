//! Test helpers shared by the process-level tests: the gateway as a child process, a
//! real Mosquitto broker on a free port, and `mosquitto_sub`/`mosquitto_pub` peers.
//!
//! Every wait here reads a line the peer prints when it is ready (a log line, a
//! SUBACK); the 30 s bound only turns a hang into a failure, it never decides success.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Polls `probe` until it returns `Some`, for state with no event to wait on (rows in a
/// database, lines in a file). The bound, twice [`PATIENCE`], only turns a hang into a
/// failure; it never decides success.
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of `path` once it has at least `lines` lines (a sink's file filling up).
pub fn file_with_lines(path: &Path, lines: usize) -> String {
    eventually(&format!("{} to have {lines} lines", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        (text.lines().count() >= lines).then_some(text)
    })
}

/// How long a test waits for a line before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Lines a child prints on one stream, read on a thread.
pub fn line_reader(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn wait_line(lines: &mpsc::Receiver<String>, needle: &str, what: &str) -> String {
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("{what}: no line containing {needle:?}: {e}"),
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `headwater` running as a child process, its stderr (the log) read line by line.
pub struct Gateway {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Gateway {
    /// Starts `headwater ARGS...`.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with_env(args, &[])
    }

    /// Starts `headwater ARGS...` with `env` added to its environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_headwater"))
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start headwater");
        let lines = line_reader(child.stderr.take().expect("stderr"));
        Gateway { child, lines }
    }

    /// The port of the built-in broker, from its "broker listening address=HOST:PORT"
    /// log line (it binds port 0 in tests).
    pub fn listening_port(&self) -> u16 {
        let line = self.wait_for("broker listening");
        // `address=HOST:PORT` in text logs, `"address":"HOST:PORT"` in JSON ones.
        line.split_once("address")
            .map(|(_, rest)| {
                rest.trim_start_matches(['=', '"', ':'])
                    .split(['"', ' ', ','])
                    .next()
                    .unwrap_or_default()
            })
            .and_then(|address| address.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        wait_line(&self.lines, needle, "headwater")
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to end.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `mosquitto` broker on 127.0.0.1:`port`, anonymous, without persistence.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    /// Starts a broker on a free port.
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_on(dir, free_port())
    }

    /// Starts a broker on `port` and waits until it listens.
    pub fn start_on(dir: &Path, port: u16) -> Mosquitto {
        Self::with_conf(dir, port, "allow_anonymous true")
    }

    /// Starts a broker on 127.0.0.1:`port` without persistence, with `extra`
    /// configuration lines, and waits until every listener is up. A configuration
    /// Mosquitto refuses fails the test with its error line. Started as root it drops
    /// to its own user: the files it reads must be world-readable.
    pub fn with_conf(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type all\n{extra}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        let lines = line_reader(child.stderr.take().expect("stderr"));
        // "Opening ... listen socket" comes before the socket listens; "running" after
        // every listener is up (a connect in between is refused).
        loop {
            match lines.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(" running") => break,
                Ok(line) if line.contains("Error") => panic!("mosquitto refused {extra:?}: {line}"),
                Ok(_) => {}
                Err(e) => panic!("mosquitto did not start with {extra:?}: {e}"),
            }
        }
        // Keep draining its log so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Mosquitto { child, port }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Publishes with `mosquitto_pub`.
    pub fn publish(&self, topic: &str, payload: &str, qos: u8, retain: bool) {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-t", topic, "-m", payload, "-q", &qos.to_string()]);
        if retain {
            cmd.arg("-r");
        }
        let status = cmd.status().expect("run mosquitto_pub");
        assert!(status.success(), "mosquitto_pub failed");
    }

    /// Starts `mosquitto_sub` on `filter` and waits until the broker granted the
    /// subscription.
    pub fn subscribe(&self, filter: &str, qos: u8) -> Subscriber {
        subscribe_on(self.port, filter, qos)
    }
}

/// Starts `mosquitto_sub` on `filter` against any broker on 127.0.0.1:`port` and waits
/// until the subscription is granted.
pub fn subscribe_on(port: u16, filter: &str, qos: u8) -> Subscriber {
    // Line-buffered: a pipe would otherwise hold the SUBACK line back.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", filter, "-q", &qos.to_string(), "-v", "-d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto_sub");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    wait_line(&lines, "received SUBACK", "mosquitto_sub");
    Subscriber { child, lines }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `mosquitto_sub -v -d`.
pub struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    /// The next message as `(topic, payload)`, skipping `-d` protocol lines.
    pub fn next(&self) -> (String, String) {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("mosquitto_sub received nothing: {e}"));
            if line.starts_with("Client ") || line.starts_with("Subscribed (mid") {
                continue;
            }
            let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
            return (topic.to_string(), payload.to_string());
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `headwater broker` alone on a free port of 127.0.0.1, its store in `data`; returns it
/// with the port it logged ("broker listening address=HOST:PORT").
pub fn headwater_broker(data: &Path) -> (Gateway, u16) {
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().expect("a UTF-8 path"),
        "broker",
        "--listen",
        "127.0.0.1:0",
    ]);
    let port = gateway.listening_port();
    (gateway, port)
}

/// Starts Mosquitto on a free port of 127.0.0.1 without persistence, with `extra`
/// configuration lines (`allow_anonymous false`, `password_file ...`, `acl_file ...`).
pub fn mosquitto_with(dir: &Path, extra: &str) -> Mosquitto {
    Mosquitto::with_conf(dir, free_port(), extra)
}

/// A test PKI (CAs, server and client certificates, CRLs) as PEM files.
pub mod pki;

/// Runs `plugins/build.sh` once per test binary (it only redoes what changed), so flows
/// load modules built from the current sources.
pub fn build_plugins() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/build.sh"))
            // The plugins have their own workspace and target dir.
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run plugins/build.sh");
        assert!(
            output.status.success(),
            "plugins/build.sh failed (test.sh installs its toolchains):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// One HTTP/1.1 request to the admin API on `port` with `Connection: close`, a bearer
/// `token` if given and a JSON `body`; returns status and body.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the api");
    // Bounded well above the API's own limits (a reload may take up to 60 s).
    stream.set_read_timeout(Some(PATIENCE * 3)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    use std::io::Write;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "this client reads fixed-length bodies only"
    );
    (status, body.to_string())
}
