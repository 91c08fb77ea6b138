//! The classic `TCGETS`/`TCSETS` way of configuring a port (libc's `tcgetattr`,
//! `tcsetattr`, `cfsetspeed` with the `Bnnn` constants), for systems where the
//! `TCGETS2` ioctl that serialport uses on Linux answers `ENOSYS`: Debian's qemu-user
//! 7.2 (so ARM test binaries under emulation) and old kernels. It covers the standard
//! baud rates only; arbitrary rates need `TCGETS2` (docs/decisions/010).

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use super::{FlowControl, Parity, PortSettings};

/// The `Bnnn` constant of a standard baud rate; `None` for rates termios cannot name
/// (those need `TCGETS2`/`BOTHER`).
pub fn baud_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        50 => libc::B50,
        75 => libc::B75,
        110 => libc::B110,
        134 => libc::B134,
        150 => libc::B150,
        200 => libc::B200,
        300 => libc::B300,
        600 => libc::B600,
        1200 => libc::B1200,
        1800 => libc::B1800,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        500_000 => libc::B500000,
        576_000 => libc::B576000,
        921_600 => libc::B921600,
        1_000_000 => libc::B1000000,
        1_152_000 => libc::B1152000,
        1_500_000 => libc::B1500000,
        2_000_000 => libc::B2000000,
        2_500_000 => libc::B2500000,
        3_000_000 => libc::B3000000,
        3_500_000 => libc::B3500000,
        4_000_000 => libc::B4000000,
        _ => return None,
    })
}

/// The standard rates, for error messages.
pub const STANDARD_RATES: &str = "50 to 4000000: 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, ...";

/// Opens `settings.path` and, when the `TCGETS2` ioctl is missing there (`ENOSYS`),
/// configures it with classic termios and returns it. `Ok(None)` when `TCGETS2` works:
/// then serialport's own error stands and this fd is closed again.
pub fn open_if_tcgets2_missing(settings: &PortSettings) -> io::Result<Option<serialport::TTYPort>> {
    let fd = open_fd(settings)?;
    if !tcgets2_missing(fd.as_raw_fd()) {
        return Ok(None);
    }
    finish(fd, settings).map(Some)
}

/// Opens and configures `settings.path` with classic termios, whatever `TCGETS2` does.
/// The fallback's whole path; the tests call it directly on machines that have `TCGETS2`.
pub fn open_classic(settings: &PortSettings) -> io::Result<serialport::TTYPort> {
    finish(open_fd(settings)?, settings)
}

fn open_fd(settings: &PortSettings) -> io::Result<OwnedFd> {
    let path = CString::new(settings.path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    // Non-blocking so a modem line (no carrier) cannot hang the open; the async stream
    // wants O_NONBLOCK anyway.
    // SAFETY: `path` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn finish(fd: OwnedFd, settings: &PortSettings) -> io::Result<serialport::TTYPort> {
    lock(fd.as_raw_fd(), settings.exclusive)?;
    configure(fd.as_raw_fd(), settings)?;
    // SAFETY: the fd is an open tty that we own; TTYPort takes it over (and closes it).
    let mut port = unsafe { serialport::TTYPort::from_raw_fd(fd.into_raw_fd()) };
    // `from_raw_fd` locks exclusively whatever we asked for; put a shared port back.
    if !settings.exclusive {
        port.set_exclusive(false).map_err(io::Error::other)?;
    }
    Ok(port)
}

/// `TIOCEXCL` and an exclusive `flock` (or a shared `flock`), like serialport does, so a
/// port in use by another program is refused with a clear reason.
fn lock(fd: RawFd, exclusive: bool) -> io::Result<()> {
    let operation = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: plain syscalls on an fd we own.
    if unsafe { libc::flock(fd, operation | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the port is locked by another program",
            )
        } else {
            err
        });
    }
    // SAFETY: as above; TIOCEXCL takes no argument.
    if exclusive && unsafe { libc::ioctl(fd, libc::TIOCEXCL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the `TCGETS2` ioctl is missing for `fd` (it answers `ENOSYS`).
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
))]
fn tcgets2_missing(fd: RawFd) -> bool {
    let mut termios2 = MaybeUninit::<libc::termios2>::uninit();
    // SAFETY: TCGETS2 writes one `termios2` into the buffer we pass.
    let result = unsafe { libc::ioctl(fd, libc::TCGETS2, termios2.as_mut_ptr()) };
    result != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
}

/// Elsewhere serialport configures with `tcgetattr` already.
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
)))]
fn tcgets2_missing(_fd: RawFd) -> bool {
    false
}

/// Applies `settings` to the tty `fd`: raw mode, receiver on, modem lines ignored,
/// then size, parity, stop bits, flow control and speed; read back to check.
pub fn configure(fd: RawFd, settings: &PortSettings) -> io::Result<()> {
    let speed = baud_constant(settings.baud).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "baud {} is not a standard rate, and this system lacks the TCGETS2 ioctl that \
                 other rates need; use a standard rate ({STANDARD_RATES})",
                settings.baud
            ),
        )
    })?;
    let mut termios = get(fd)?;
    // SAFETY: `termios` is a valid, initialised struct.
    unsafe { libc::cfmakeraw(&mut termios) };
    termios.c_cflag |= libc::CREAD | libc::CLOCAL;
    apply_frame(&mut termios, settings);
    // SAFETY: as above.
    if unsafe { libc::cfsetispeed(&mut termios, speed) } != 0
        || unsafe { libc::cfsetospeed(&mut termios, speed) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain call with a valid struct.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // tcsetattr succeeds if *any* change applied; read back what matters.
    let applied = get(fd)?;
    // SAFETY: valid struct.
    let applied_speed = unsafe { libc::cfgetospeed(&applied) };
    // Only the speed: drivers may pin the rest (a pty forces 8 bits, no parity), as
    // serialport tolerates too.
    if applied_speed != speed {
        return Err(io::Error::other(format!(
            "the port did not take the baud rate {}",
            settings.baud
        )));
    }
    Ok(())
}

fn get(fd: RawFd) -> io::Result<libc::termios> {
    let mut termios = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the struct on success, checked before use.
    if unsafe { libc::tcgetattr(fd, termios.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call.
    Ok(unsafe { termios.assume_init() })
}

/// Character size, parity, stop bits and flow control, as serialport sets them.
fn apply_frame(termios: &mut libc::termios, settings: &PortSettings) {
    termios.c_cflag &= !libc::CSIZE;
    termios.c_cflag |= match settings.data_bits {
        5 => libc::CS5,
        6 => libc::CS6,
        7 => libc::CS7,
        _ => libc::CS8,
    };
    match settings.parity {
        Parity::None => {
            termios.c_cflag &= !(libc::PARENB | libc::PARODD);
            termios.c_iflag &= !libc::INPCK;
            termios.c_iflag |= libc::IGNPAR;
        }
        Parity::Odd => {
            termios.c_cflag |= libc::PARENB | libc::PARODD;
            termios.c_iflag |= libc::INPCK;
            termios.c_iflag &= !libc::IGNPAR;
        }
        Parity::Even => {
            termios.c_cflag &= !libc::PARODD;
            termios.c_cflag |= libc::PARENB;
            termios.c_iflag |= libc::INPCK;
            termios.c_iflag &= !libc::IGNPAR;
        }
    }
    if settings.stop_bits == 2 {
        termios.c_cflag |= libc::CSTOPB;
    } else {
        termios.c_cflag &= !libc::CSTOPB;
    }
    match settings.flow_control {
        FlowControl::None => {
            termios.c_iflag &= !(libc::IXON | libc::IXOFF);
            termios.c_cflag &= !libc::CRTSCTS;
        }
        FlowControl::Software => {
            termios.c_iflag |= libc::IXON | libc::IXOFF;
            termios.c_cflag &= !libc::CRTSCTS;
        }
        FlowControl::Hardware => {
            termios.c_iflag &= !(libc::IXON | libc::IXOFF);
            termios.c_cflag |= libc::CRTSCTS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_rates_map_to_their_constants() {
        let table = [
            (50, libc::B50),
            (300, libc::B300),
            (1200, libc::B1200),
            (9600, libc::B9600),
            (19200, libc::B19200),
            (38400, libc::B38400),
            (57600, libc::B57600),
            (115_200, libc::B115200),
            (230_400, libc::B230400),
            (460_800, libc::B460800),
            (921_600, libc::B921600),
            (1_000_000, libc::B1000000),
            (4_000_000, libc::B4000000),
        ];
        for (rate, constant) in table {
            assert_eq!(baud_constant(rate), Some(constant), "rate {rate}");
        }
        // The constants are codes, not rates (B9600 is 0o15, B115200 is 0o10002).
        assert_eq!(libc::B9600, 0o15);
        assert_eq!(libc::B115200, 0o10002);
    }

    #[test]
    fn every_standard_rate_has_a_distinct_constant() {
        let rates = [
            50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400,
            57600, 115_200, 230_400, 460_800, 500_000, 576_000, 921_600, 1_000_000, 1_152_000,
            1_500_000, 2_000_000, 2_500_000, 3_000_000, 3_500_000, 4_000_000,
        ];
        let mut constants: Vec<_> = rates.iter().map(|r| baud_constant(*r).unwrap()).collect();
        constants.sort_unstable();
        constants.dedup();
        assert_eq!(constants.len(), rates.len());
    }

    #[test]
    fn frame_settings_set_the_flags() {
        // SAFETY: termios is plain data; all-zero is a valid value.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        t.c_cflag = libc::CS8 | libc::CRTSCTS;
        t.c_iflag = libc::IXON;
        let settings = PortSettings {
            path: "/dev/null".into(),
            baud: 9600,
            data_bits: 7,
            parity: Parity::Even,
            stop_bits: 2,
            flow_control: FlowControl::Software,
            exclusive: true,
        };
        apply_frame(&mut t, &settings);
        assert_eq!(t.c_cflag & libc::CSIZE, libc::CS7);
        assert_eq!(t.c_cflag & (libc::PARENB | libc::PARODD), libc::PARENB);
        assert_ne!(t.c_cflag & libc::CSTOPB, 0);
        assert_eq!(t.c_cflag & libc::CRTSCTS, 0);
        assert_eq!(
            t.c_iflag & (libc::IXON | libc::IXOFF),
            libc::IXON | libc::IXOFF
        );
        assert_ne!(t.c_iflag & libc::INPCK, 0);
        let odd_hw = PortSettings {
            data_bits: 5,
            parity: Parity::Odd,
            stop_bits: 1,
            flow_control: FlowControl::Hardware,
            ..settings
        };
        apply_frame(&mut t, &odd_hw);
        assert_eq!(t.c_cflag & libc::CSIZE, libc::CS5);
        assert_eq!(
            t.c_cflag & (libc::PARENB | libc::PARODD),
            libc::PARENB | libc::PARODD
        );
        assert_eq!(t.c_cflag & libc::CSTOPB, 0);
        assert_ne!(t.c_cflag & libc::CRTSCTS, 0);
        assert_eq!(t.c_iflag & (libc::IXON | libc::IXOFF), 0);
    }

    #[test]
    fn other_rates_have_none() {
        for rate in [0, 1, 9601, 100_000, 250_000, 31_250, 4_000_001] {
            assert_eq!(baud_constant(rate), None, "rate {rate}");
        }
    }
}
