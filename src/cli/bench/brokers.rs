//! The brokers under test: Headwater (`headwater broker`, durable, its defaults) and
//! Mosquitto (the system's, `persistence true`), each a fresh child process with its own
//! temporary directory, ready once an MQTT CONNECT is accepted, killed when dropped.
//!
//! For the TLS workloads both read one listener section, written by the same function:
//! `listener PORT 127.0.0.1` and the TLS lines naming the same certificate files. Mosquitto
//! gets it inside its usual file, Headwater as its whole `broker -c` file.

use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::client::{Client, Endpoint};
use super::tls::Certificates;

/// How long a broker may take to start before the run fails.
const START_PATIENCE: Duration = Duration::from_secs(15);

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// The built-in broker, run as `headwater broker`.
    Headwater,
    /// The system's Mosquitto.
    Mosquitto,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Headwater => "headwater",
            BrokerKind::Mosquitto => "mosquitto",
        })
    }
}

/// Executables and settings the brokers are started with.
#[derive(Clone, Debug)]
pub struct Executables {
    /// The `headwater` binary.
    pub headwater: PathBuf,
    /// The `mosquitto` binary.
    pub mosquitto: PathBuf,
    /// Mosquitto's `max_queued_messages`.
    pub mosquitto_max_queued: usize,
    /// Mosquitto's `set_tcp_nodelay`.
    pub mosquitto_nodelay: bool,
}

/// A running broker child process; killed and its directory removed on drop.
pub struct BrokerProcess {
    /// Which broker.
    pub kind: BrokerKind,
    /// Where it accepts MQTT clients, and whether over TLS.
    pub endpoint: Endpoint,
    child: Child,
    dir: PathBuf,
}

impl BrokerProcess {
    /// Starts a fresh `kind` broker on a free loopback port, its listener speaking TLS
    /// with `tls` when given, and waits until it accepts an MQTT connection.
    pub async fn start(
        kind: BrokerKind,
        exe: &Executables,
        tls: Option<&Certificates>,
    ) -> anyhow::Result<BrokerProcess> {
        let dir = fresh_dir(kind)?;
        let log = File::create(dir.join("broker.log"))
            .with_context(|| format!("cannot create a log file in {}", dir.display()))?;
        // Mosquitto cannot bind port 0 and report it: it gets a free port; Headwater's
        // is read from its log once bound.
        let mut port = 0;
        let mut command = match kind {
            BrokerKind::Headwater if tls.is_some() => {
                port = free_port()?;
                let config = dir.join("headwater.conf");
                let text = format!(
                    "# written by `headwater bench broker`\n{}allow_anonymous true\n",
                    listener_section(port, tls)
                );
                std::fs::write(&config, text)
                    .with_context(|| format!("cannot write {}", config.display()))?;
                let mut command = Command::new(&exe.headwater);
                command.arg("--data-dir").arg(dir.join("data")).args([
                    "--log-format",
                    "json",
                    "broker",
                    "-c",
                ]);
                command.arg(&config);
                command
            }
            BrokerKind::Headwater => {
                let mut command = Command::new(&exe.headwater);
                command.arg("--data-dir").arg(dir.join("data")).args([
                    "--log-format",
                    "json",
                    "broker",
                    "--listen",
                    "127.0.0.1:0",
                ]);
                command
            }
            BrokerKind::Mosquitto => {
                port = free_port()?;
                let config = dir.join("mosquitto.conf");
                std::fs::write(&config, mosquitto_config(port, &dir, exe, tls))
                    .with_context(|| format!("cannot write {}", config.display()))?;
                let mut command = Command::new(&exe.mosquitto);
                command.arg("-c").arg(&config);
                command
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match (child, kind) {
            (Ok(child), _) => child,
            (Err(e), BrokerKind::Mosquitto) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir_all(&dir);
                bail!(
                    "{} not found: install Mosquitto (apt-get install mosquitto) or pass --brokers headwater",
                    exe.mosquitto.display()
                )
            }
            (Err(e), _) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("cannot start {kind}"));
            }
        };
        // From here on, Drop kills the child and removes the directory.
        let mut broker = BrokerProcess {
            kind,
            endpoint: Endpoint {
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                tls: tls.map(Certificates::connector).transpose()?,
            },
            child,
            dir,
        };
        let deadline = Instant::now() + START_PATIENCE;
        if kind == BrokerKind::Headwater {
            broker.endpoint.address = broker.headwater_address(deadline).await?;
        }
        broker.wait_ready(deadline).await?;
        Ok(broker)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's resident set size in bytes (VmRSS of /proc/PID/status).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.proc_field("status", "VmRSS:")? * 1024)
    }

    /// Bytes the broker has caused to be written to storage so far (`write_bytes` of
    /// /proc/PID/io: counted when a page is first dirtied, so rewriting a page before it
    /// reaches the disk counts once). What an SD card wears by.
    pub fn disk_written_bytes(&self) -> anyhow::Result<u64> {
        self.proc_field("io", "write_bytes:")
    }

    /// The number on the line of /proc/PID/`file` that starts with `key` (a trailing
    /// `kB` is dropped).
    fn proc_field(&self, file: &str, key: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/{file}", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .with_context(|| format!("no {key} in {path}"))
    }

    /// The address from Headwater's `broker listening` log line (it binds port 0).
    async fn headwater_address(&mut self, deadline: Instant) -> anyhow::Result<SocketAddr> {
        let log = self.dir.join("broker.log");
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text.lines().find_map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                if event.get("message")?.as_str()? != "broker listening" {
                    return None;
                }
                event.get("address")?.as_str()?.parse::<SocketAddr>().ok()
            });
            if let Some(address) = found {
                return Ok(address);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("headwater logged no listening address within {START_PATIENCE:?}");
            }
            // The log is a file, not a pipe, so a chatty broker never blocks on it; it
            // is polled until the line appears.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Connects until an MQTT CONNECT is accepted: the broker is serving.
    async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            match Client::connect(&self.endpoint, None, "bench-ready-probe", true).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.check_alive()?;
                    if Instant::now() > deadline {
                        return Err(e.context(format!(
                            "{} does not accept connections on {}",
                            self.kind, self.endpoint.address
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An error with the log's tail when the child has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.kind, tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new empty directory under the system's temporary directory.
fn fresh_dir(kind: BrokerKind) -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("headwater-bench-{}-{kind}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The listener both brokers get: loopback, and the TLS files when given.
fn listener_section(port: u16, tls: Option<&Certificates>) -> String {
    let mut section = format!("listener {port} 127.0.0.1\n");
    if let Some(tls) = tls {
        section.push_str(&tls.listener_lines());
    }
    section
}

/// Mosquitto's configuration for a run.
fn mosquitto_config(
    port: u16,
    dir: &Path,
    exe: &Executables,
    tls: Option<&Certificates>,
) -> String {
    let mut config = format!(
        "# written by `headwater bench broker`\n\
         {}\
         allow_anonymous true\n\
         # Headwater always sets TCP_NODELAY; Mosquitto only when asked (default false).\n\
         set_tcp_nodelay {}\n\
         # Mosquitto's durable mode; it still acknowledges from memory and writes its\n\
         # database only on autosave and at exit.\n\
         persistence true\n\
         persistence_location {}/\n\
         max_queued_messages {}\n",
        listener_section(port, tls),
        exe.mosquitto_nodelay,
        dir.display(),
        exe.mosquitto_max_queued,
    );
    // Started as root, Mosquitto switches to the `mosquitto` user, which cannot write
    // our temporary directory; stay root instead (this is a local benchmark).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        config.push_str("user root\n");
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_config_listens_on_loopback_and_persists_in_its_directory() {
        let exe = Executables {
            headwater: PathBuf::from("headwater"),
            mosquitto: PathBuf::from("mosquitto"),
            mosquitto_max_queued: 100,
            mosquitto_nodelay: false,
        };
        let config = mosquitto_config(18830, Path::new("/tmp/x"), &exe, None);
        assert!(config.contains("listener 18830 127.0.0.1\n"));
        assert!(config.contains("persistence_location /tmp/x/\n"));
        assert!(config.contains("max_queued_messages 100\n"));
        assert!(config.contains("set_tcp_nodelay false\n"));
    }
}
