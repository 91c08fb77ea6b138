//! Password and ACL files against Debian's Mosquitto 2.0: files written by
//! `mosquitto_passwd` verify here, files written by `headwater passwd` let Mosquitto's
//! clients in, and the ACL decisions of `Acl::allows` are the ones Mosquitto makes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

use headwater::broker::auth::{Access, Acl, PasswordFile};

use common::{Mosquitto, PATIENCE, mosquitto_with};

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn succeed(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn headwater() -> &'static str {
    env!("CARGO_BIN_EXE_headwater")
}

/// Mosquitto drops root to its own user: it must be able to read the files.
fn world_readable(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
fn files_written_by_mosquitto_passwd_verify() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let file = pw.to_str().unwrap();
    succeed("mosquitto_passwd", &["-c", "-b", file, "alice", "secret"]);
    succeed("mosquitto_passwd", &["-b", file, "bob", "hunter2"]);
    succeed("mosquitto_passwd", &["-b", file, "carol", "pa ss:wörd"]);
    // Mosquitto 1.x's format, still written on request.
    succeed(
        "mosquitto_passwd",
        &["-H", "sha512", "-b", file, "dave", "old-style"],
    );
    let text = fs::read_to_string(&pw).unwrap();
    assert!(text.contains("dave:$6$"), "{text}");

    let users = PasswordFile::load(&pw).unwrap();
    assert_eq!(users.len(), 4);
    assert!(users.verify("alice", b"secret"));
    assert!(users.verify("bob", b"hunter2"));
    assert!(users.verify("carol", "pa ss:wörd".as_bytes()));
    assert!(users.verify("dave", b"old-style"));
    assert!(!users.verify("alice", b"hunter2"));
    assert!(!users.verify("bob", b"hunter"));
    assert!(!users.verify("dave", b"old-style "));
    assert!(!users.verify("eve", b"secret"));

    // A password changed and a user deleted.
    succeed("mosquitto_passwd", &["-b", file, "alice", "changed"]);
    succeed("mosquitto_passwd", &["-D", file, "bob"]);
    let users = PasswordFile::load(&pw).unwrap();
    assert_eq!(users.len(), 3);
    assert!(!users.verify("alice", b"secret"));
    assert!(users.verify("alice", b"changed"));
    assert!(!users.verify("bob", b"hunter2"));
    assert!(users.verify("carol", "pa ss:wörd".as_bytes()));
}

/// Runs `mosquitto_pub` once; returns whether it succeeded and what it printed.
fn publish(port: u16, version: &str, credentials: Option<(&str, &str)>) -> (bool, String) {
    let port = port.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        version,
        "-t",
        "t",
        "-m",
        "x",
    ];
    if let Some((user, password)) = credentials {
        args.extend(["-u", user, "-P", password]);
    }
    let out = run("mosquitto_pub", &args);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn files_written_by_headwater_passwd_let_mosquitto_clients_in() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let file = pw.to_str().unwrap();
    succeed(
        headwater(),
        &["passwd", "-c", "-b", file, "alice", "secret"],
    );
    assert_eq!(
        fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
        0o600,
        "a new password file is private"
    );
    succeed(headwater(), &["passwd", "-b", file, "bob", "hunter2"]);
    // Without -b and without a terminal, the password is read twice from stdin.
    let mut asked = Command::new(headwater())
        .args(["passwd", file, "carol"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = asked.stdin.take().unwrap();
        stdin.write_all(b"typed pw\ntyped pw\n").unwrap();
    }
    let out = asked.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mosquitto's own tool reads and extends the file.
    succeed("mosquitto_passwd", &["-b", file, "dave", "from-mosquitto"]);
    let users = PasswordFile::load(&pw).unwrap();
    assert_eq!(users.len(), 4);
    assert!(users.verify("carol", b"typed pw"));
    assert!(users.verify("dave", b"from-mosquitto"));

    world_readable(dir.path());
    let broker: Mosquitto = mosquitto_with(
        dir.path(),
        &format!("allow_anonymous false\npassword_file {file}"),
    );
    for (user, password) in [
        ("alice", "secret"),
        ("bob", "hunter2"),
        ("carol", "typed pw"),
    ] {
        for version in ["mqttv311", "mqttv5"] {
            let (ok, printed) = publish(broker.port, version, Some((user, password)));
            assert!(ok, "{user} over {version} refused: {printed}");
        }
    }
    // Mosquitto 2.0 answers "not authorised" (3.1.1: 5; v5: 0x87) to both a wrong
    // password and an anonymous client.
    for credentials in [
        Some(("alice", "hunter2")),
        Some(("alice", "")),
        Some(("eve", "secret")),
        None,
    ] {
        let (ok, printed) = publish(broker.port, "mqttv311", credentials);
        assert!(!ok, "{credentials:?} got in");
        assert!(
            printed.contains("Connection Refused: not authorised"),
            "{credentials:?}: {printed}"
        );
        let (ok, printed) = publish(broker.port, "mqttv5", credentials);
        assert!(!ok, "{credentials:?} got in over v5");
        assert!(
            printed.contains("Not authorized"),
            "{credentials:?}: {printed}"
        );
    }
}

/// The ACL file both brokers read. `pub` and `spy` publish and watch for the cases;
/// every client that is a subject can read `marker`, the end-of-case message.
const ACL: &str = "\
# anonymous clients
topic read marker
topic read public/#
topic deny public/secret
topic readwrite anon/%c

user alice
topic readwrite alice/#
topic read #
topic deny alice/private/#

user admin
topic read marker
topic read $other/#

user bob
topic read marker

user carol
topic read marker

user pub
topic write #
topic write $other/#

user spy
topic read #

pattern readwrite devices/%c/#
pattern deny devices/%c/locked
pattern read users/%u/#
";

/// A `mosquitto_sub -V mqttv5 -d -v` on `filter` and `marker`; returns it, its lines,
/// and the SUBACK codes it printed ("Subscribed (mid: 1): 1, 1").
fn subscribe(
    port: u16,
    client_id: &str,
    username: Option<&str>,
    filter: &str,
) -> (Child, mpsc::Receiver<String>, Vec<u8>) {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-v",
            "-d",
        ])
        .args(["-i", client_id, "-t", filter, "-t", "marker"]);
    if let Some(user) = username {
        cmd.args(["-u", user]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto_sub");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let codes = loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("mosquitto_sub {client_id} {filter}: no SUBACK: {e}"));
        if let Some(codes) = line
            .strip_prefix("Subscribed (mid: ")
            .and_then(|rest| rest.split_once("): "))
        {
            break codes
                .1
                .split(", ")
                .map(|code| code.trim().parse().expect("a SUBACK code"))
                .collect();
        }
    };
    (child, lines, codes)
}

/// Publishes `payload` on `topic` at QoS 1 and waits for `mosquitto_pub` to end (after
/// its PUBACK, so the broker routed it before the next publish).
fn publish_as(port: u16, username: &str, topic: &str, payload: &str) {
    let port = port.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-u",
        username,
        "-t",
        topic,
        "-m",
        payload,
    ];
    // A refused publish is acknowledged all the same over 3.1.1: the exit status tells
    // nothing, the subscriber does.
    run("mosquitto_pub", &args);
}

/// Whether the subscriber's next message is `topic` (delivered) rather than the marker
/// published after it (not delivered).
fn delivered(lines: &mpsc::Receiver<String>, topic: &str, payload: &str, marker: &str) -> bool {
    let message = format!("{topic} {payload}");
    let end = format!("marker {marker}");
    loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("no {message:?} nor {end:?}: {e}"));
        if line == message {
            return true;
        }
        if line == end {
            return false;
        }
    }
}

#[test]
fn acl_decisions_agree_with_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let acl_path = dir.path().join("acl");
    fs::write(&acl_path, ACL).unwrap();
    let acl = Acl::parse(ACL, &acl_path).unwrap();
    world_readable(dir.path());
    let broker = mosquitto_with(
        dir.path(),
        &format!("allow_anonymous true\nacl_file {}", acl_path.display()),
    );
    let port = broker.port;

    // Reading: (client id, username, subscribed filter, published topic, delivered?).
    let reads: &[(&str, Option<&str>, &str, &str, bool)] = &[
        ("c1", None, "public/a", "public/a", true),
        ("c1", None, "public/secret", "public/secret", false),
        ("c1", None, "alice/x", "alice/x", false),
        // A wildcard subscription is granted; each message is checked on its topic.
        ("c1", None, "#", "public/b", true),
        ("c1", None, "#", "alice/x", false),
        ("c1", Some("alice"), "alice/x", "alice/x", true),
        ("c1", Some("alice"), "alice/#", "alice/private/x", false),
        ("c1", Some("alice"), "other/x", "other/x", true),
        // `#` in an ACL does not reach `$` topics; a `$` rule does.
        ("c1", Some("alice"), "$other/x", "$other/x", false),
        ("c1", Some("admin"), "$other/x", "$other/x", true),
        ("dev1", None, "devices/dev1/t", "devices/dev1/t", true),
        (
            "dev1",
            Some("bob"),
            "devices/dev2/t",
            "devices/dev2/t",
            false,
        ),
        (
            "dev1",
            Some("bob"),
            "devices/+/locked",
            "devices/dev1/locked",
            false,
        ),
        ("c1", Some("bob"), "users/bob/x", "users/bob/x", true),
        ("c1", None, "users/+/x", "users//x", false),
        ("a/b", Some("bob"), "devices/a/b/t", "devices/a/b/t", true),
        ("c1", Some("carol"), "users/carol/x", "users/carol/x", true),
        ("x+", Some("carol"), "users/carol/x", "users/carol/x", false),
    ];
    for (n, &(client, user, filter, topic, expected)) in reads.iter().enumerate() {
        let what = format!("read #{n}: client {client:?} user {user:?} {filter:?} <- {topic:?}");
        let (mut sub, lines, codes) = subscribe(port, client, user, filter);
        // Mosquitto grants every subscription (QoS 1), whatever the file says.
        assert_eq!(codes, vec![1, 1], "{what}: SUBACK");
        // Headwater refuses at SUBACK a filter through which nothing is readable;
        // it must never refuse one through which Mosquitto delivers.
        let granted = acl.allows(client, user, filter, Access::Subscribe);
        let (payload, marker) = (format!("T{n}"), format!("M{n}"));
        publish_as(port, "pub", topic, &payload);
        publish_as(port, "pub", "marker", &marker);
        let mosquitto = delivered(&lines, topic, &payload, &marker);
        let _ = sub.kill();
        let _ = sub.wait();
        assert_eq!(mosquitto, expected, "{what}: mosquitto");
        assert!(
            granted || !mosquitto,
            "{what}: headwater refused the subscription"
        );
        assert_eq!(
            acl.allows(client, user, topic, Access::Read),
            expected,
            "{what}: headwater"
        );
    }

    // Writing: (client id, username, topic, published?), watched by `spy`.
    let writes: &[(&str, Option<&str>, &str, bool)] = &[
        // `topic` lines take %c literally; only `pattern` substitutes.
        ("c1", None, "anon/%c", true),
        ("c1", None, "anon/c1", false),
        ("c1", None, "public/a", false),
        ("c1", Some("alice"), "alice/x", true),
        ("c1", Some("alice"), "other/x", false),
        ("dev1", Some("bob"), "devices/dev1/t", true),
        ("dev1", Some("bob"), "devices/dev1/locked", false),
        ("c1", Some("bob"), "users/bob/x", false),
    ];
    for (n, &(client, user, topic, expected)) in writes.iter().enumerate() {
        let what = format!("write #{n}: client {client:?} user {user:?} -> {topic:?}");
        let (mut spy, lines, _) = subscribe(port, &format!("spy{n}"), Some("spy"), topic);
        let (payload, marker) = (format!("W{n}"), format!("E{n}"));
        let port_s = port.to_string();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-q",
            "1",
            "-i",
            client,
            "-t",
            topic,
            "-m",
            &payload,
        ];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        run("mosquitto_pub", &args);
        publish_as(port, "pub", "marker", &marker);
        let mosquitto = delivered(&lines, topic, &payload, &marker);
        let _ = spy.kill();
        let _ = spy.wait();
        assert_eq!(mosquitto, expected, "{what}: mosquitto");
        assert_eq!(
            acl.allows(client, user, topic, Access::Write),
            expected,
            "{what}: headwater"
        );
    }
}
