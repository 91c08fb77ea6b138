//! Serial line throughput: a writer thread plays a sensor on a pseudo-terminal at
//! full speed; `serial.in` (built from the registry as a flow file builds it, 4 Mbaud
//! nominal) reads, frames and decodes the lines; the bench counts the messages that
//! reach the node's `out` port.
//!
//! - `lines`: text lines, the payload is the line
//! - `csv`: `id,lux` lines decoded into `{"id": ..., "lux": ...}`
//! - `nmea`: GGA sentences with their checksums verified
//!
//! A pty moves bytes as fast as the kernel copies them, so this measures the node (and
//! the pty), not a UART: at 115200 baud a real port carries about 11.5 k bytes/s, some
//! 800 short lines/s. Run: `cargo bench --bench serial`. Numbers go to
//! docs/benchmarks.md.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use headwater::engine::Clock;
use headwater::engine::harness::NodeHarness;

const LINES: usize = 20_000;

/// A pty pair in raw mode: the master writes, the slave's path is the port.
fn pty() -> (OwnedFd, OwnedFd, String) {
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
    assert_eq!(rc, 0);
    // SAFETY: fresh fds owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: valid buffers and fds; results checked.
    let path = unsafe {
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), termios.as_mut_ptr()), 0);
        let mut termios = termios.assume_init();
        libc::cfmakeraw(&mut termios);
        assert_eq!(
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios),
            0
        );
        CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned()
    };
    (master, slave, path)
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert!(n > 0, "pty write: {}", std::io::Error::last_os_error());
        bytes = &bytes[n as usize..];
    }
}

fn nmea_line() -> String {
    let data = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,";
    let sum = data.bytes().fold(0u8, |s, b| s ^ b);
    format!("${data}*{sum:02X}\r\n")
}

fn bench_framing(c: &mut Criterion, name: &str, framing: &str, line: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (master, _slave, path) = pty();
    let options = format!("path: {path}\nbaud: 4000000\nframing: {framing}");
    let mut harness = runtime
        .block_on(async { NodeHarness::start("serial.in", &options, Clock::system()).unwrap() });
    let batch: Vec<u8> = line.repeat(LINES).into_bytes();
    let (to_writer, batches) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        while batches.recv().is_ok() {
            write_all(&master, &batch);
        }
    });
    let mut group = c.benchmark_group("serial_in");
    group.throughput(Throughput::Elements(LINES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                to_writer.send(()).unwrap();
                runtime.block_on(async {
                    for _ in 0..LINES {
                        let msg =
                            tokio::time::timeout(Duration::from_secs(30), harness.recv("out"))
                                .await
                                .expect("a line within 30s")
                                .expect("the node runs");
                        msg.done();
                    }
                });
            }
            start.elapsed()
        });
    });
    group.finish();
    drop(to_writer);
    writer.join().unwrap();
    runtime.block_on(async {
        assert!(harness.drain("error").is_empty(), "every line decodes");
        harness.shutdown().await;
    });
}

fn serial(c: &mut Criterion) {
    bench_framing(c, "lines", "lines", "lux-1,532.5\n");
    bench_framing(c, "csv", "{csv: [id, lux]}", "lux-1,532.5\n");
    bench_framing(c, "nmea", "nmea", &nmea_line());
}

criterion_group!(benches, serial);
criterion_main!(benches);
