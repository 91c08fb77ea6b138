//! Pseudo-terminal pairs for the serial tests: the slave's path is the "device" a node
//! opens, the master is the simulated device the test drives.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Creating pty pairs is serialised: the tests run on several threads.
static CREATE: Mutex<()> = Mutex::new(());

/// One pty pair. Dropping it closes both sides: the device is gone.
pub struct Pty {
    /// The simulated device's end.
    pub master: OwnedFd,
    /// Held so the slave stays configured (raw) until a node opens it.
    _slave: OwnedFd,
    /// The slave's path (`/dev/pts/N`).
    pub path: PathBuf,
}

impl Pty {
    /// A new pair, the slave in raw mode (no echo, no line editing).
    pub fn open() -> Pty {
        let _guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds; name, termios and winsize are optional.
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
        // SAFETY: both fds were just created and belong to us.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: the buffer's length is passed.
        let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        assert_eq!(rc, 0, "ptsname_r");
        // SAFETY: ptsname_r wrote a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: valid fd and buffer; checked.
        unsafe {
            assert_eq!(libc::tcgetattr(slave.as_raw_fd(), termios.as_mut_ptr()), 0);
            let mut termios = termios.assume_init();
            libc::cfmakeraw(&mut termios);
            assert_eq!(
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios),
                0
            );
        }
        Pty {
            master,
            _slave: slave,
            path: path.into(),
        }
    }

    /// The slave's termios, as the node configured it.
    pub fn slave_termios(&self) -> libc::termios {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: valid fd and buffer; checked.
        unsafe {
            assert_eq!(
                libc::tcgetattr(self._slave.as_raw_fd(), termios.as_mut_ptr()),
                0
            );
            termios.assume_init()
        }
    }

    /// The device sends `bytes`.
    pub fn write(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::write(self.master.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            assert!(
                n > 0,
                "write to the pty master: {}",
                std::io::Error::last_os_error()
            );
            bytes = &bytes[n as usize..];
        }
    }

    /// The device reads until what it got ends with `end`; panics after `patience`
    /// (which only turns a hang into a failure).
    pub fn read_until(&self, end: &[u8], patience: Duration) -> Vec<u8> {
        let deadline = Instant::now() + patience;
        let mut got = Vec::new();
        while !got.ends_with(end) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the device got only {:?}",
                String::from_utf8_lossy(&got)
            );
            let mut poll = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(1000) as i32) };
            if ready <= 0 {
                continue;
            }
            let mut buffer = [0u8; 256];
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::read(
                    self.master.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            assert!(
                n > 0,
                "read from the pty master: {}",
                std::io::Error::last_os_error()
            );
            got.extend_from_slice(&buffer[..n as usize]);
        }
        got
    }
}

/// Keeps a paused tokio clock from auto-advancing while it lives (a blocking task is
/// running), so time moves only by `tokio::time::advance` while real pty IO completes.
/// Bounded: it lets go after a minute in any case.
pub struct Freeze(Option<std::sync::mpsc::Sender<()>>);

impl Freeze {
    /// Freezes the current (paused, current-thread) runtime's clock.
    pub fn start() -> Freeze {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        });
        Freeze(Some(tx))
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        self.0.take();
    }
}
