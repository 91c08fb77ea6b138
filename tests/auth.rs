//! Authentication and authorisation end to end: `headwater run` with a password file
//! made by `headwater passwd` and a Mosquitto ACL file, Debian's `mosquitto_pub` and
//! `mosquitto_sub` (3.1.1 and 5) as clients, reloads on file change and on SIGHUP,
//! and certificate names as usernames.
//!
//! "Not delivered" is shown with a marker: the forbidden message is published (and
//! acknowledged) first, then an allowed marker; a subscriber that gets the marker
//! without the forbidden message before it did not get the forbidden one at all.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use common::pki::Pki;
use common::{Gateway, line_reader, wait_line};

const ACL: &str = "\
# anonymous clients: nothing
user alice
topic readwrite home/#
topic write clients/#
topic read $SYS/broker/version
user bob
topic write home/kitchen/#
topic read home/kitchen/#
topic deny home/kitchen/secret
pattern read clients/%c/#
";

/// A settings file with one listener and `broker_extra` under `broker:`.
fn start(dir: &Path, listener_extra: &str, broker_extra: &str) -> (Gateway, u16) {
    let settings = dir.join("headwater.yaml");
    std::fs::write(
        &settings,
        format!(
            "version: 1\nbroker:\n  sys_interval: 1\n  listeners:\n    - host: 127.0.0.1\n      port: 0\n{listener_extra}{broker_extra}flows: {{}}\n"
        ),
    )
    .unwrap();
    let gateway = Gateway::start(&[
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "run",
        settings.to_str().unwrap(),
    ]);
    let port = gateway.listening_port();
    (gateway, port)
}

/// Password file with alice/wonderland and bob/builder, written by `headwater passwd`.
fn passwords(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("passwd");
    for (i, (user, password)) in [("alice", "wonderland"), ("bob", "builder")]
        .into_iter()
        .enumerate()
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_headwater"));
        command.arg("passwd");
        if i == 0 {
            command.arg("-c");
        }
        let status = command
            .args(["-b", file.to_str().unwrap(), user, password])
            .status()
            .unwrap();
        assert!(status.success());
    }
    file
}

fn auth_broker(dir: &Path) -> (Gateway, u16) {
    let passwd = passwords(dir);
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    start(
        dir,
        "",
        &format!(
            "  password_file: {}\n  acl_file: {}\n",
            passwd.display(),
            acl.display()
        ),
    )
}

/// `mosquitto_pub` with `args`; (success, stdout + stderr).
fn pub_(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .args(args)
        .output()
        .expect("run mosquitto_pub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A running `mosquitto_sub -v -d` and its output lines.
struct Sub {
    child: Child,
    lines: Receiver<String>,
}

impl Sub {
    fn start(port: u16, args: &[&str]) -> Sub {
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-v", "-d"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub");
        let lines = line_reader(child.stdout.take().unwrap());
        Sub { child, lines }
    }

    fn wait(&self, needle: &str) -> String {
        wait_line(&self.lines, needle, "mosquitto_sub")
    }

    /// The message lines ("TOPIC PAYLOAD") up to and including `marker`'s.
    fn messages_until(&self, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = wait_line(&self.lines, "", "mosquitto_sub");
            if line.starts_with("Client ") || line.starts_with("Subscribed") {
                continue;
            }
            let done = line.ends_with(marker);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn passwords_are_checked_and_refusals_carry_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port) = auth_broker(dir.path());
    let (ok, out) = pub_(
        port,
        &["-u", "alice", "-P", "wonderland", "-t", "home/x", "-m", "1"],
    );
    assert!(ok, "{out}");
    // 3.1.1: 4 for a bad password, 5 for an anonymous client.
    let (ok, out) = pub_(
        port,
        &["-u", "alice", "-P", "wrong", "-t", "home/x", "-m", "1"],
    );
    assert!(!ok && out.contains("bad user name or password"), "{out}");
    let (ok, out) = pub_(
        port,
        &["-u", "mallory", "-P", "x", "-t", "home/x", "-m", "1"],
    );
    assert!(!ok && out.contains("bad user name or password"), "{out}");
    let (ok, out) = pub_(port, &["-t", "home/x", "-m", "1"]);
    assert!(!ok && out.contains("not authorised"), "{out}");
    // v5: 0x86 and 0x87.
    let v5 = ["-V", "mqttv5", "-t", "home/x", "-m", "1"];
    let (ok, out) = pub_(port, &[&["-u", "alice", "-P", "wrong"][..], &v5].concat());
    assert!(!ok && out.contains("CONNACK (134)"), "{out}");
    let (ok, out) = pub_(port, &v5);
    assert!(!ok && out.contains("CONNACK (135)"), "{out}");
}

#[test]
fn the_acl_filters_publishes_subscriptions_and_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port) = auth_broker(dir.path());
    // bob subscribes to everything: granted (something is readable), then filtered.
    let bob = Sub::start(
        port,
        &[
            "-u", "bob", "-P", "builder", "-i", "bob-sub", "-t", "#", "-q", "1",
        ],
    );
    bob.wait("SUBACK");
    let alice = ["-u", "alice", "-P", "wonderland", "-q", "1"];
    for (topic, payload) in [
        ("home/garage", "forbidden-to-bob"),
        ("home/kitchen/secret", "denied-to-bob"),
        ("home/kitchen/light", "marker"),
    ] {
        let (ok, out) = pub_(port, &[&alice[..], &["-t", topic, "-m", payload]].concat());
        assert!(ok, "{out}");
    }
    assert_eq!(
        bob.messages_until("marker"),
        vec!["home/kitchen/light marker"]
    );

    // bob may not write home/garage: v5 PUBACK 0x87, and nobody receives it.
    let watcher = Sub::start(
        port,
        &["-u", "alice", "-P", "wonderland", "-t", "home/#", "-q", "1"],
    );
    watcher.wait("SUBACK");
    let (ok, out) = pub_(
        port,
        &[
            "-V",
            "mqttv5",
            "-u",
            "bob",
            "-P",
            "builder",
            "-q",
            "1",
            "-t",
            "home/garage",
            "-m",
            "sneaky",
        ],
    );
    assert!(
        out.contains("rc:135") || out.contains("RC:135"),
        "{ok} {out}"
    );
    let (ok, out) = pub_(
        port,
        &[
            "-u",
            "bob",
            "-P",
            "builder",
            "-q",
            "1",
            "-t",
            "home/kitchen/oven",
            "-m",
            "marker2",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        watcher.messages_until("marker2"),
        vec!["home/kitchen/oven marker2"]
    );

    // A filter nothing readable matches is refused at SUBACK (v5 0x87, 3.1.1 0x80).
    let refused = Sub::start(
        port,
        &[
            "-V", "mqttv5", "-u", "bob", "-P", "builder", "-t", "garden/#",
        ],
    );
    let line = refused.wait("Subscribed");
    assert!(line.contains("135"), "{line}");
    let refused = Sub::start(port, &["-u", "bob", "-P", "builder", "-t", "garden/#"]);
    let line = refused.wait("Subscribed");
    assert!(line.contains("128"), "{line}");

    // The pattern: bob reads clients/bob-sub/... as client id bob-sub.
    let (ok, out) = pub_(
        port,
        &[&alice[..], &["-t", "clients/bob-sub/cmd", "-m", "marker3"]].concat(),
    );
    assert!(ok, "{out}");
    assert_eq!(
        bob.messages_until("marker3"),
        vec!["home/kitchen/oven marker2", "clients/bob-sub/cmd marker3"]
    );
}

#[test]
fn sys_topics_follow_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port) = auth_broker(dir.path());
    let alice = Sub::start(
        port,
        &[
            "-u",
            "alice",
            "-P",
            "wonderland",
            "-t",
            "$SYS/broker/version",
            "-C",
            "1",
        ],
    );
    let line = alice.messages_until("").remove(0);
    assert!(line.starts_with("$SYS/broker/version "), "{line}");
    // bob has no $SYS grant: his `$SYS/#` is refused.
    let bob = Sub::start(
        port,
        &["-V", "mqttv5", "-u", "bob", "-P", "builder", "-t", "$SYS/#"],
    );
    let line = bob.wait("Subscribed");
    assert!(line.contains("135"), "{line}");
    // Nobody may publish into $SYS, even with readwrite on it.
    let (_, out) = pub_(
        port,
        &[
            "-V",
            "mqttv5",
            "-u",
            "alice",
            "-P",
            "wonderland",
            "-q",
            "1",
            "-t",
            "$SYS/broker/version",
            "-m",
            "fake",
        ],
    );
    assert!(out.contains("rc:135") || out.contains("RC:135"), "{out}");
}

#[test]
fn a_changed_password_file_is_reread_and_sighup_rereads_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = auth_broker(dir.path());
    let passwd = dir.path().join("passwd");
    let change = |password: &str| {
        let status = Command::new(env!("CARGO_BIN_EXE_headwater"))
            .args(["passwd", "-b", passwd.to_str().unwrap(), "alice", password])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // alice is connected when her password changes: she is disconnected.
    let connected = Sub::start(port, &["-u", "alice", "-P", "wonderland", "-t", "home/#"]);
    connected.wait("SUBACK");
    change("looking-glass");
    // The disconnection is logged before the reload's summary line.
    gateway.wait_for("credentials changed");
    gateway.wait_for("authentication files reloaded");
    let (ok, out) = pub_(
        port,
        &["-u", "alice", "-P", "wonderland", "-t", "home/x", "-m", "1"],
    );
    assert!(!ok, "the old password still works: {out}");
    let (ok, out) = pub_(
        port,
        &[
            "-u",
            "alice",
            "-P",
            "looking-glass",
            "-t",
            "home/x",
            "-m",
            "1",
        ],
    );
    assert!(ok, "{out}");

    // A broken file keeps the old rules, and says why once.
    std::fs::write(&passwd, "alice:not-a-hash\n").unwrap();
    let error = gateway.wait_for("not reloaded");
    assert!(error.contains("passwd:1"), "{error}");
    let (ok, out) = pub_(
        port,
        &[
            "-u",
            "alice",
            "-P",
            "looking-glass",
            "-t",
            "home/x",
            "-m",
            "1",
        ],
    );
    assert!(ok, "{out}");

    // SIGHUP rereads everything.
    passwords(dir.path());
    gateway.signal("HUP");
    gateway.wait_for("broker settings reloaded");
    let (ok, out) = pub_(
        port,
        &["-u", "alice", "-P", "wonderland", "-t", "home/x", "-m", "1"],
    );
    assert!(ok, "{out}");
}

#[test]
fn a_certificate_name_is_the_username_the_acl_applies_to() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_crl(&[]);
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let listener_tls = format!(
        "      tls:\n        cafile: {}\n        certfile: {}\n        keyfile: {}\n        require_certificate: true\n        use_identity_as_username: true\n",
        pki.ca_file().display(),
        pki.server_cert().display(),
        pki.server_key().display(),
    );
    let (_gateway, port) = start(
        dir.path(),
        &listener_tls,
        &format!("  acl_file: {}\n", acl.display()),
    );
    let tls = |cn: &str| -> Vec<String> {
        let client = pki.client(cn);
        vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            port.to_string(),
            "--cafile".into(),
            pki.ca_file().to_str().unwrap().into(),
            "--cert".into(),
            client.cert.to_str().unwrap().into(),
            "--key".into(),
            client.key.to_str().unwrap().into(),
        ]
    };
    let alice = tls("alice");
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(&alice)
        .args(["-t", "#", "-v", "-d", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(sub.stdout.take().unwrap());
    wait_line(&lines, "SUBACK", "mosquitto_sub");
    // bob (by certificate) writes home/kitchen/x, which alice may read; he may not
    // write home/garage.
    let publish = |args: &[String], topic: &str, payload: &str| {
        Command::new("mosquitto_pub")
            .args(args)
            .args(["-q", "1", "-t", topic, "-m", payload])
            .status()
            .unwrap()
            .success()
    };
    let bob = tls("bob");
    assert!(publish(&bob, "home/garage", "not-bobs"));
    assert!(publish(&bob, "home/kitchen/x", "marker"));
    let line = loop {
        let line = wait_line(&lines, "", "mosquitto_sub");
        if !line.starts_with("Client ") && !line.starts_with("Subscribed") {
            break line;
        }
    };
    assert_eq!(line, "home/kitchen/x marker");
    let _ = sub.kill();
    let _ = sub.wait();
}
