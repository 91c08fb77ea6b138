//! Serial ports end to end: the real `headwater run` on `flows/lux-to-csv.yaml`, its
//! light sensor a pseudo-terminal this test drives, checked at both ends a user would
//! look at: an MQTT subscriber (mosquitto_sub) and the CSV file.

mod common;

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Gateway, line_reader, subscribe_on};

/// A pty pair: the slave's path is the sensor's port, the master is the sensor.
struct Sensor {
    master: OwnedFd,
    _slave: OwnedFd,
    path: PathBuf,
}

impl Sensor {
    fn plug_in() -> Sensor {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds; the other arguments are optional.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fds owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: the buffer's length is passed; the result is NUL-terminated.
        let path = unsafe {
            assert_eq!(
                libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
                0
            );
            CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned()
        };
        // Raw until the gateway configures it: no echo back into the sensor.
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: valid fd and buffer, results checked.
        unsafe {
            assert_eq!(libc::tcgetattr(slave.as_raw_fd(), termios.as_mut_ptr()), 0);
            let mut termios = termios.assume_init();
            libc::cfmakeraw(&mut termios);
            assert_eq!(
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios),
                0
            );
        }
        Sensor {
            master,
            _slave: slave,
            path: path.into(),
        }
    }

    fn send(&self, text: &[u8]) {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(self.master.as_raw_fd(), text.as_ptr().cast(), text.len()) };
        assert_eq!(n, text.len() as isize, "write to the sensor's pty");
    }
}

fn flow() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("flows/lux-to-csv.yaml")
        .to_string_lossy()
        .into_owned()
}

/// The rows of the CSV once it has `rows` of them besides the header (bounded wait: a
/// file that never fills is a failure, not a hang).
fn csv_rows(path: &Path, rows: usize) -> Vec<Vec<String>> {
    let text = common::file_with_lines(path, rows + 1);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "payload.unix,payload.time,payload.id,payload.lux");
    lines[1..]
        .iter()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn lux_to_csv_publishes_and_writes_rows_from_a_serial_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sensor = Sensor::plug_in();
    // The way a user names it: a stable by-id symlink to whatever tty it got.
    let port = dir.path().join("usb-FTDI_lux-if00-port0");
    std::os::unix::fs::symlink(&sensor.path, &port).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["run", "--listen", "127.0.0.1:0", &flow()])
        .env("LUX_PORT", &port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start headwater");
    let lines = line_reader(child.stderr.take().unwrap());
    let gateway = Gateway { child, lines };
    let mqtt_port = gateway.listening_port();
    gateway.wait_for("serial port opened");
    let subscriber = subscribe_on(mqtt_port, "sensor-data", 0);

    let before = chrono::Utc::now().timestamp();
    sensor.send(b"lux-1,532.5\r\nlux-2,12\r\nnot,a,reading\r\n\xff\r\nlux-1,0.25\r\n");

    for expected in [
        r#"{"id":"lux-1","lux":532.5}"#,
        r#"{"id":"lux-2","lux":12}"#,
        r#"{"id":"lux-1","lux":0.25}"#,
    ] {
        assert_eq!(
            subscriber.next(),
            ("sensor-data".to_string(), expected.to_string())
        );
    }
    // The bad lines are reported (the sensor's error port is not wired: the log).
    gateway.wait_for("bad CSV: 3 cells, the columns name 2");

    let rows = csv_rows(&data.join("lux.csv"), 3);
    let after = chrono::Utc::now().timestamp();
    let ids_and_values: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[2].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(
        ids_and_values,
        [("lux-1", "532.5"), ("lux-2", "12"), ("lux-1", "0.25")]
    );
    for row in &rows {
        let unix: i64 = row[0].parse().expect("a Unix timestamp");
        assert!(
            (before..=after).contains(&unix),
            "{unix} not in {before}..={after}"
        );
        let human = chrono::DateTime::from_timestamp(unix, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        assert_eq!(row[1], human, "the human-readable time is the same instant");
    }

    gateway.signal("TERM");
    assert!(gateway.wait().success());
}

#[test]
fn check_passes_without_the_device_or_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["check", &flow()])
        .env_remove("LUX_PORT")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
