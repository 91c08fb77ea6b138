//! `headwater passwd`: Mosquitto's `mosquitto_passwd` — add, change or delete a user
//! of a password file, or hash a plain-text one — writing files both brokers read.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use ring::rand::SystemRandom;

use crate::broker::auth::password::{Line, PasswordHash, parse_line};

/// Longest username or password MQTT can carry.
const MQTT_STRING_MAX: usize = u16::MAX as usize;

/// Options of `headwater passwd`, those of `mosquitto_passwd`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = "\
Examples:
  headwater passwd -c /etc/headwater/passwd alice      create the file with alice (asks twice)
  headwater passwd /etc/headwater/passwd bob           add bob, or change his password
  headwater passwd -b /etc/headwater/passwd bob PASS   the same without asking
  headwater passwd -D /etc/headwater/passwd bob        delete bob
  headwater passwd -U /etc/headwater/passwd            hash a file of user:password lines

Passwords are hashed as Mosquitto 2 does ($7$: PBKDF2-SHA512, 101 rounds, 12-byte salt),
so Mosquitto reads the file too. Other lines and comments are kept; the file is replaced
atomically, a new one with mode 0600, an existing one keeping its mode and owner.
The broker rereads it on SIGHUP and when it changes.")]
pub struct PasswdArgs {
    /// Create the file, replacing any file already there, with USER alone
    #[arg(short = 'c', conflicts_with_all = ["delete", "upgrade"])]
    pub create: bool,
    /// Batch mode: take PASSWORD from the command line instead of asking
    /// (it shows in the shell's history and in `ps`)
    #[arg(short = 'b', requires = "password", conflicts_with_all = ["delete", "upgrade"])]
    pub batch: bool,
    /// Delete USER from the file
    #[arg(short = 'D', conflicts_with = "upgrade")]
    pub delete: bool,
    /// Hash every plain-text password of a `user:password` file in place (lines already
    /// hashed are kept as they are)
    #[arg(short = 'U', conflicts_with = "user")]
    pub upgrade: bool,
    /// The password file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The username
    #[arg(value_name = "USER", required_unless_present = "upgrade")]
    pub user: Option<String>,
    /// The password, with -b only
    #[arg(value_name = "PASSWORD", requires = "batch")]
    pub password: Option<String>,
}

/// Runs `headwater passwd`.
pub fn passwd(args: &PasswdArgs) -> anyhow::Result<ExitCode> {
    let random = SystemRandom::new();
    let hash = |password: &[u8]| {
        PasswordHash::new(password, &random)
            .map_err(|_| anyhow::anyhow!("the system's random generator failed; try again"))
    };
    let path = target_path(&args.file)?;
    if args.upgrade {
        let text = read(&path)?;
        let (text, hashed) = upgrade(&text, &path, hash)?;
        write_atomically(&path, &text, false)?;
        eprintln!(
            "hashed {hashed} plain-text password(s) in {}",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let user = args.user.as_deref().unwrap_or_default();
    check_username(user)?;
    if args.delete {
        let text = read(&path)?;
        let text = delete(&text, &path, user)?;
        write_atomically(&path, &text, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Read the file before asking, so a bad file fails before the user types.
    let existing = if args.create {
        String::new()
    } else {
        read(&path)?
    };
    let password = match &args.password {
        Some(password) => password.clone(),
        None => ask_password()?,
    };
    check_password(&password)?;
    let line = format!("{user}:{}", hash(password.as_bytes())?);
    let text = set_user(&existing, &path, user, &line)?;
    write_atomically(&path, &text, args.create)?;
    Ok(ExitCode::SUCCESS)
}

/// The file to write: a symbolic link is followed, so the link stays a link.
fn target_path(path: &Path) -> anyhow::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}; create it with `headwater passwd -c {} USER`",
            path.display(),
            path.display()
        )
    })
}

fn check_username(user: &str) -> anyhow::Result<()> {
    if user.is_empty() {
        bail!("the username is empty; give one");
    }
    if user.contains(':') {
        bail!("the username `{user}` holds `:`, which separates it from the hash; choose another");
    }
    if user.chars().any(char::is_control) {
        bail!("the username holds control characters; choose another");
    }
    if user.len() > MQTT_STRING_MAX {
        bail!("the username is longer than MQTT allows (65535 bytes)");
    }
    if user.starts_with('#') || user.trim_matches([' ', '\t']) != user {
        bail!(
            "the username `{user}` starts with `#` or a blank, or ends with a blank; the \
             file would not read back the same: choose another"
        );
    }
    Ok(())
}

fn check_password(password: &str) -> anyhow::Result<()> {
    if password.is_empty() {
        bail!("the password is empty; choose one");
    }
    if password.len() > MQTT_STRING_MAX {
        bail!("the password is longer than MQTT allows (65535 bytes)");
    }
    Ok(())
}

/// The lines of `text`, each as written and as read, failing at a malformed one.
fn lines<'t>(text: &'t str, path: &Path) -> anyhow::Result<Vec<(&'t str, Line<'t>)>> {
    text.lines()
        .enumerate()
        .map(|(index, raw)| {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            match parse_line(line) {
                Ok(read) => Ok((line, read)),
                Err(message) => bail!("{}:{}: {message}", path.display(), index + 1),
            }
        })
        .collect()
}

fn join(lines: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let mut text = String::new();
    for line in lines {
        text.push_str(line.as_ref());
        text.push('\n');
    }
    text
}

/// `text` with `user`'s line replaced by `new_line`, or `new_line` added at the end.
fn set_user(text: &str, path: &Path, user: &str, new_line: &str) -> anyhow::Result<String> {
    let mut found = false;
    let mut out = Vec::new();
    for (line, entry) in lines(text, path)? {
        match entry {
            Line::Entry { username, .. } if username == user => {
                // A second line for the same user would be ambiguous: keep one.
                if !found {
                    out.push(new_line);
                }
                found = true;
            }
            _ => out.push(line),
        }
    }
    if !found {
        out.push(new_line);
    }
    Ok(join(out))
}

/// `text` without `user`'s line.
fn delete(text: &str, path: &Path, user: &str) -> anyhow::Result<String> {
    let all = lines(text, path)?;
    let before = all.len();
    let kept: Vec<&str> = all
        .into_iter()
        .filter(|(_, entry)| !matches!(entry, Line::Entry { username, .. } if *username == user))
        .map(|(line, _)| line)
        .collect();
    if kept.len() == before {
        bail!(
            "user `{user}` is not in {}; nothing deleted",
            path.display()
        );
    }
    Ok(join(kept))
}

/// `text` with every plain-text password hashed; returns how many were.
fn upgrade(
    text: &str,
    path: &Path,
    hash: impl Fn(&[u8]) -> anyhow::Result<PasswordHash>,
) -> anyhow::Result<(String, usize)> {
    let mut hashed = 0;
    let mut out = Vec::new();
    for (line, entry) in lines(text, path)? {
        match entry {
            // Mosquitto's hashes start with `$`; hashing one again would lock its user
            // out (mosquitto_passwd -U does that).
            Line::Entry {
                username,
                hash: password,
            } if !password.starts_with('$') => {
                check_password(password)?;
                out.push(format!("{username}:{}", hash(password.as_bytes())?));
                hashed += 1;
            }
            _ => out.push(line.to_string()),
        }
    }
    Ok((join(out), hashed))
}

/// Replaces `path` with `text` in one step: a reader sees the old file or the new one,
/// never half of one. A new file (or `-c`) gets mode 0600; an existing one keeps its
/// mode, owner and group, so a broker that could read it still can.
fn write_atomically(path: &Path, text: &str, create: bool) -> anyhow::Result<()> {
    let existing = fs::metadata(path).ok();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let temp = dir.join(format!(
        ".{}.headwater-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        file.write_all(text.as_bytes())?;
        if let (Some(meta), false) = (&existing, create) {
            // As root, hand the file back to its owner (the broker's user, often).
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid())).ok();
            file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        file.sync_all()?;
        fs::rename(&temp, path)?;
        // The rename is durable once the directory is.
        File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// The terminal's settings before echo was turned off, for the signal handler that
/// puts them back: a process-wide value because a signal handler can reach no other.
static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

extern "C" fn restore_terminal_and_exit(signal: libc::c_int) {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` is a valid
        // termios written once before the handler was installed.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
        }
    }
    // SAFETY: as above; the default action then ends the process as the signal would.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Echo off on standard input while it lives (when it is a terminal).
struct NoEcho {
    saved: Option<libc::termios>,
}

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill in.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return NoEcho { saved: None };
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return NoEcho { saved: None };
            }
            if SAVED_TERMINAL.set(saved).is_ok() {
                let handler = restore_terminal_and_exit as extern "C" fn(libc::c_int);
                libc::signal(libc::SIGINT, handler as libc::sighandler_t);
                libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet);
            NoEcho { saved: Some(saved) }
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: puts back the settings read in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}

/// Asks for the password twice on the terminal without echo (or reads two lines from
/// standard input when it is not a terminal) and refuses a mismatch.
fn ask_password() -> anyhow::Result<String> {
    let _no_echo = NoEcho::new();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut prompt = |text: &str| -> anyhow::Result<String> {
        eprint!("{text}");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            bail!("no password given (end of input); type it, or use -b");
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = prompt("Password: ")?;
    let second = prompt("Reenter password: ")?;
    if first != second {
        bail!("the passwords do not match; run the command again");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_hash(password: &[u8]) -> anyhow::Result<PasswordHash> {
        Ok(PasswordHash::pbkdf2(
            password,
            std::num::NonZeroU32::new(1).unwrap(),
            [7; 12],
        ))
    }

    #[test]
    fn set_user_replaces_in_place_and_keeps_the_rest() {
        let text = "# users\nalice:$7$a\n\nbob:$7$b\r\n";
        let out = set_user(text, Path::new("pw"), "alice", "alice:NEW").unwrap();
        assert_eq!(out, "# users\nalice:NEW\n\nbob:$7$b\n");
        let out = set_user(text, Path::new("pw"), "carol", "carol:NEW").unwrap();
        assert_eq!(out, "# users\nalice:$7$a\n\nbob:$7$b\ncarol:NEW\n");
        let out = set_user("", Path::new("pw"), "carol", "carol:NEW").unwrap();
        assert_eq!(out, "carol:NEW\n");
    }

    #[test]
    fn delete_removes_only_that_user() {
        let text = "alice:$7$a\n# bob was here\nbob:$7$b\n";
        let out = delete(text, Path::new("pw"), "bob").unwrap();
        assert_eq!(out, "alice:$7$a\n# bob was here\n");
        let err = delete(text, Path::new("pw"), "carol").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user `carol` is not in pw; nothing deleted"
        );
    }

    #[test]
    fn malformed_files_are_not_rewritten() {
        let err = set_user("alice:$7$a\nbroken\n", Path::new("pw"), "bob", "bob:x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pw:2: expected `username:hash`; add users with `headwater passwd FILE USER`"
        );
    }

    #[test]
    fn upgrade_hashes_plain_text_only() {
        let text = "# plain\nalice:secret\nbob:$7$101$x$y\n";
        let (out, hashed) = upgrade(text, Path::new("pw"), fixed_hash).unwrap();
        assert_eq!(hashed, 1);
        let expected = format!(
            "# plain\nalice:{}\nbob:$7$101$x$y\n",
            fixed_hash(b"secret").unwrap()
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn usernames_that_would_not_read_back_are_refused() {
        for user in ["", "a:b", "a\tb", "#a", " a", "a "] {
            assert!(check_username(user).is_err(), "{user:?}");
        }
        for user in ["alice", "a b", "ünï", "a#b", "a/b+c"] {
            assert!(check_username(user).is_ok(), "{user:?}");
        }
    }

    #[test]
    fn writes_atomically_with_0600_then_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        write_atomically(&path, "a:b\n", true).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, "a:c\n", false).unwrap();
        assert_eq!(mode(&path), 0o644);
        assert_eq!(fs::read_to_string(&path).unwrap(), "a:c\n");
        // -c replaces the file, mode included.
        write_atomically(&path, "a:d\n", true).unwrap();
        assert_eq!(mode(&path), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pw")]);
    }
}
