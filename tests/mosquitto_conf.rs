//! `headwater broker -c mosquitto.conf` against real files and real peers: Debian's own
//! default configuration, the fixtures in `tests/mosquitto_conf/` (each one that
//! Headwater accepts is started by Debian's `mosquitto` too, so both read the same
//! language), and `mosquitto_pub`/`mosquitto_sub` talking through a broker configured by
//! a Mosquitto file.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{Gateway, PATIENCE, free_port};
use headwater::broker::mosquitto_conf::{self, ConfError};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mosquitto_conf");

/// The fixtures Headwater accepts; `broken.conf` and `auth_plugin.conf` it refuses.
const ACCEPTED: &[&str] = &[
    "listeners.conf",
    "per_listener.conf",
    "bridge.conf",
    "limits.conf",
    "included.conf",
];

/// A temporary directory that Mosquitto, which drops from root to its own user, can
/// read; removed at the end.
fn world_readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_world_readable(dir.path());
    dir
}

fn make_world_readable(path: &Path) {
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Copies the fixtures into `dir` with `@DIR@` and `@PORTn@` filled in; creates the
/// files their keys name (certificates, a password file, the data directory). Returns
/// the ports used.
fn render_fixtures(dir: &Path) -> [u16; 3] {
    let ports = [free_port(), free_port(), free_port()];
    copy_rendered(Path::new(FIXTURES), dir, dir, &ports);
    make_certificates(dir);
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(dir.join("passwd"))
        .args(["alice", "secret"])
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success());
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_world_readable(dir);
    // Mosquitto writes its database there as its own user.
    Command::new("chmod")
        .arg("777")
        .arg(&data)
        .status()
        .unwrap();
    ports
}

fn copy_rendered(from: &Path, to: &Path, dir: &Path, ports: &[u16; 3]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_rendered(&entry.path(), &target, dir, ports);
            continue;
        }
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        text = text.replace("@DIR@", dir.to_str().unwrap());
        for (i, port) in ports.iter().enumerate() {
            text = text.replace(&format!("@PORT{}@", i + 1), &port.to_string());
        }
        std::fs::write(target, text).unwrap();
    }
}

/// A CA and a server certificate it signed, for the TLS listener of `listeners.conf`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &str| {
        let status = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"
    ));
    openssl(&format!(
        "req {ec} -keyout server.key -out server.csr -subj /CN=localhost"
    ));
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2",
    );
}

/// Lines of a child's stream, read on a thread; the channel closes when the stream does.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// Starts Debian's `mosquitto -c conf`: `Ok` once it logs that it runs (then stops
/// it), `Err(its log)` when it exits first.
fn mosquitto_accepts(conf: &Path) -> Result<(), String> {
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto (apt-get install mosquitto)");
    let lines = lines_of(child.stderr.take().unwrap());
    let mut log = Vec::new();
    let outcome = loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) if line.contains(" running") => break Ok(()),
            Ok(line) => log.push(line),
            // Its stderr closed: it exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err(log.join("\n")),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("mosquitto hangs:\n{}", log.join("\n")),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// Debian's `/etc/mosquitto` copied under `dir`, with its absolute paths moved there;
/// returns the main file.
fn debian_default(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/etc/mosquitto/mosquitto.conf")
        .expect("Debian's /etc/mosquitto/mosquitto.conf (apt-get install mosquitto)");
    let root = dir.to_str().unwrap();
    let text = text
        .replace("/etc/mosquitto", &format!("{root}/etc"))
        .replace("/var/lib/mosquitto", &format!("{root}/lib"))
        .replace("/run/mosquitto", &format!("{root}/run"))
        .replace("/var/log/mosquitto", &format!("{root}/log"));
    std::fs::create_dir_all(dir.join("etc/conf.d")).unwrap();
    for entry in std::fs::read_dir("/etc/mosquitto/conf.d").unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("etc/conf.d").join(entry.file_name())).unwrap();
    }
    for sub in ["lib", "run", "log"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let main = dir.join("mosquitto.conf");
    std::fs::write(&main, text).unwrap();
    make_world_readable(dir);
    for sub in ["lib", "run", "log"] {
        Command::new("chmod")
            .arg("777")
            .arg(dir.join(sub))
            .status()
            .unwrap();
    }
    main
}

/// The 1-based number of the first line of `file` starting with `key `.
fn line_of(file: &Path, key: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no `{key}` in {}", file.display()))
        + 1
}

#[test]
fn debians_default_configuration_loads_with_warnings_only() {
    let dir = world_readable_dir();
    let main = debian_default(dir.path());

    let loaded = mosquitto_conf::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let warned: Vec<(PathBuf, usize)> = loaded
        .warnings
        .iter()
        .map(|w| (w.file.clone(), w.line))
        .collect();
    assert_eq!(
        warned,
        [
            (main.clone(), line_of(&main, "pid_file")),
            (main.clone(), line_of(&main, "log_dest")),
        ],
        "{:#?}",
        loaded.warnings
    );
    assert_eq!(loaded.data_dir, Some(dir.path().join("lib/")));

    // The process: it starts (on a free port, since Debian's file has no listener and
    // Mosquitto would take 127.0.0.1:1883), logs each warning, and keeps its store in
    // `persistence_location`.
    let gateway = Gateway::start(&[
        "broker",
        "-c",
        main.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let pid_warning = gateway.wait_for("`pid_file` is ignored");
    assert!(
        pid_warning.contains(&format!(
            "{}:{}:",
            main.display(),
            line_of(&main, "pid_file")
        )),
        "{pid_warning}"
    );
    gateway.wait_for("`log_dest` is ignored");
    gateway.listening_port();
    assert!(
        dir.path().join("lib/store.redb").is_file(),
        "no store in persistence_location"
    );
}

#[test]
fn mosquitto_clients_talk_through_a_broker_configured_by_a_mosquitto_file() {
    // Debian's default file with the drop-in a user would add to conf.d.
    let dir = world_readable_dir();
    let main = debian_default(dir.path());
    let port = free_port();
    std::fs::write(
        dir.path().join("etc/conf.d/local.conf"),
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();

    let gateway = Gateway::start(&["broker", "-c", main.to_str().unwrap()]);
    assert_eq!(gateway.listening_port(), port);

    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-v", "-d"])
        .args(["-p", &port.to_string(), "-t", "sensors/#", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto_sub");
    let lines = lines_of(sub.stdout.take().unwrap());
    let wait_for = |needle: &str| loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("mosquitto_sub: no {needle:?}: {e}"),
        }
    };
    wait_for("received SUBACK");
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "sensors/kitchen", "-m", "21.5", "-q", "1"])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
    // `-v` prints "TOPIC PAYLOAD"; `-d` lines around it name the topic in quotes.
    assert_eq!(wait_for("sensors/kitchen 21"), "sensors/kitchen 21.5");
    let _ = sub.kill();
    let _ = sub.wait();
    // No --data-dir: the store is where the file's persistence_location says.
    assert!(dir.path().join("lib/store.redb").is_file());
}

#[test]
fn debians_default_configuration_with_a_listener_runs_under_mosquitto_too() {
    let dir = world_readable_dir();
    let main = debian_default(dir.path());
    std::fs::write(
        dir.path().join("etc/conf.d/local.conf"),
        format!("listener {} 127.0.0.1\nlog_dest stderr\n", free_port()),
    )
    .unwrap();
    make_world_readable(dir.path());
    mosquitto_conf::load(&main).unwrap_or_else(|e| panic!("{e}"));
    mosquitto_accepts(&main).unwrap_or_else(|log| panic!("mosquitto refused it:\n{log}"));
}

#[test]
fn every_fixture_headwater_accepts_mosquitto_accepts_too() {
    let dir = world_readable_dir();
    render_fixtures(dir.path());
    for name in ACCEPTED {
        let conf = dir.path().join(name);
        mosquitto_conf::load(&conf).unwrap_or_else(|e| panic!("{name}: {e}"));
        mosquitto_accepts(&conf).unwrap_or_else(|log| panic!("mosquitto refused {name}:\n{log}"));
    }
    // And the files headwater refuses, Mosquitto refuses too (for these two).
    for name in ["broken.conf", "auth_plugin.conf"] {
        let conf = dir.path().join(name);
        assert!(mosquitto_conf::load(&conf).is_err(), "{name}");
        assert!(
            mosquitto_accepts(&conf).is_err(),
            "mosquitto accepted {name}"
        );
    }
}

#[test]
fn fixtures_read_as_mosquitto_means_them() {
    let dir = world_readable_dir();
    let [port1, port2, port3] = render_fixtures(dir.path());

    let listeners = mosquitto_conf::load(&dir.path().join("listeners.conf")).unwrap();
    let config = &listeners.config;
    let ports: Vec<u16> = config.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [port1, port2, port3]);
    assert_eq!(config.max_connections, 100);
    assert_eq!(config.topic_alias_maximum, 20);
    assert!(config.listeners[2].tls.enabled() && config.listeners[2].tls.require_certificate);
    assert_eq!(config.password_file, Some(dir.path().join("passwd")));
    assert_eq!(config.allow_anonymous, Some(false));

    let per_listener = mosquitto_conf::load(&dir.path().join("per_listener.conf")).unwrap();
    let config = &per_listener.config;
    assert!(config.per_listener_settings);
    assert_eq!(config.listeners[0].allow_anonymous, Some(true));
    assert_eq!(config.listeners[0].password_file, None);
    assert_eq!(config.listeners[1].allow_anonymous, Some(false));
    assert_eq!(
        config.listeners[1].password_file,
        Some(dir.path().join("passwd"))
    );

    let bridge = mosquitto_conf::load(&dir.path().join("bridge.conf")).unwrap();
    let upstream = &bridge.config.bridges[0];
    assert_eq!(
        upstream.addresses,
        [format!("127.0.0.1:{port2}"), format!("127.0.0.1:{port3}")]
    );
    assert_eq!(upstream.topics.len(), 4);
    assert_eq!(
        (upstream.restart_timeout, upstream.restart_timeout_cap),
        (Some(5), Some(60))
    );

    let limits = mosquitto_conf::load(&dir.path().join("limits.conf")).unwrap();
    assert_eq!(limits.data_dir, Some(dir.path().join("data/")));
    assert_eq!(limits.config.max_inflight_messages, 10);
    assert_eq!(limits.config.sys_interval, 30);

    let included = mosquitto_conf::load(&dir.path().join("included.conf")).unwrap();
    assert_eq!(included.config.listeners[0].port, port1);
    assert_eq!(included.config.allow_anonymous, Some(true));
    assert_eq!(included.config.sys_interval, 0);
    assert!(included.warnings.is_empty(), "{:?}", included.warnings);
}

/// Runs `headwater broker -c conf` and returns its exit status and stderr.
fn run_to_end(conf: &Path, data: &Path) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .arg("--data-dir")
        .arg(data)
        .args(["broker", "-c"])
        .arg(conf)
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_broken_file_stops_the_start_and_names_every_line() {
    let dir = world_readable_dir();
    render_fixtures(dir.path());
    let main = dir.path().join("broken.conf");
    let included = dir.path().join("broken.d/listener.conf");
    let (status, stderr) = run_to_end(&main, &dir.path().join("data"));
    assert!(!status.success(), "{stderr}");
    for (file, line, what) in [
        (
            &main,
            3,
            "`allow_anonymous` must be true or false, found `maybe`",
        ),
        (
            &main,
            4,
            "`max_keepalive` needs a whole number, found `soon`",
        ),
        (&included, 2, "unknown protocol `mqtts`"),
        (&main, 8, "unknown `topic` direction `sideways`"),
    ] {
        let located = format!("{}:{line}: {what}", file.display());
        assert!(stderr.contains(&located), "no {located:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("broker listening"), "{stderr}");
    // The includes' errors come in reading order, between the main file's.
    let order: Vec<usize> = ["maybe", "soon", "mqtts", "sideways"]
        .iter()
        .map(|w| stderr.find(w).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stderr}");
}

#[test]
fn an_auth_plugin_line_refuses_to_start() {
    let dir = world_readable_dir();
    render_fixtures(dir.path());
    let conf = dir.path().join("auth_plugin.conf");
    let (status, stderr) = run_to_end(&conf, &dir.path().join("data"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: `auth_plugin`: ", conf.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:3: `auth_opt_backends`: ", conf.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("broker listening"), "{stderr}");
}

#[test]
fn run_refuses_a_mosquitto_file_rather_than_ignoring_it() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow.yaml");
    std::fs::write(&flow, "version: 1\nflows: {}\n").unwrap();
    let conf = dir.path().join("m.conf");
    std::fs::write(&conf, "listener 1883\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("run")
        .arg(&flow)
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("read by `headwater broker` only"),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_file_is_an_error_naming_it() {
    let missing = Path::new("/nonexistent/mosquitto.conf");
    let err = mosquitto_conf::load(missing).unwrap_err();
    assert!(matches!(err, ConfError::Read { .. }), "{err}");
    assert!(
        err.to_string().starts_with("/nonexistent/mosquitto.conf: "),
        "{err}"
    );
}

#[test]
fn run_reads_the_broker_from_a_settings_file_naming_a_mosquitto_conf() {
    let dir = world_readable_dir();
    let port = free_port();
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n"),
    )
    .unwrap();
    let settings = dir.path().join("headwater.yaml");
    std::fs::write(
        &settings,
        "version: 1\nmosquitto_conf: mosquitto.conf\ndata_dir: data\nflows: {}\n",
    )
    .unwrap();
    let gateway = Gateway::start(&["run", settings.to_str().unwrap()]);
    // The warning names the Mosquitto file and its line.
    let warning = gateway.wait_for("mosquitto.conf:3");
    assert!(warning.contains("log_dest"), "{warning}");
    // `check` shows the same warning.
    let out = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["check", settings.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("mosquitto.conf:3"),
        "{stderr}"
    );
    assert_eq!(gateway.listening_port(), port);
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "t", "-m", "m", "-q", "1"])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
}

#[test]
fn a_settings_file_with_both_broker_and_mosquitto_conf_is_refused() {
    let dir = world_readable_dir();
    std::fs::write(dir.path().join("m.conf"), "listener 1883\n").unwrap();
    let settings = dir.path().join("headwater.yaml");
    std::fs::write(
        &settings,
        "version: 1\nmosquitto_conf: m.conf\nbroker: {}\nflows: {}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["check", settings.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("headwater.yaml:3:1") && stderr.contains("keep one"),
        "{stderr}"
    );
}
