//! Who may connect and what they may do: Mosquitto's password files and ACL files.
//!
//! Both formats are read as Mosquitto 2.0 reads them (see `docs/security.md`), but a
//! line Mosquitto would skip or misread is an error here, with its `file:line`: a
//! security file that does not say what its author meant fails closed.

pub mod acl;
pub mod password;
pub mod realm;

use std::path::{Path, PathBuf};

pub use acl::{Access, Acl};
pub use password::PasswordFile;

/// A password or ACL file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what to write instead.
        message: String,
    },
}

/// Reads a whole security file as UTF-8.
fn read_file(path: &Path) -> Result<String, AuthFileError> {
    let bytes = std::fs::read(path).map_err(|source| AuthFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        // Name the line holding the first bad byte, so the user can find it.
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        AuthFileError::Line {
            path: path.to_path_buf(),
            line: good.iter().filter(|&&b| b == b'\n').count() + 1,
            message: "the line is not valid UTF-8; save the file as UTF-8".into(),
        }
    })
}

/// The lines of a file with their 1-based numbers, without their `\n` or `\r\n`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)))
}

/// The rules Mosquitto applies to `$` topics before it reads any ACL file (its
/// `acl__check_dollar`), so they hold with or without an `acl_file`:
/// - nobody publishes to `$SYS/...`: those topics are the broker's own (Mosquitto
///   lets only bridges write `$SYS/broker/connection/+/state`, and bridges are not
///   checked at all);
/// - `$share/...` is only ever a subscription filter, never a topic to publish to
///   or deliver from.
///
/// Every other `$` topic goes on to the ordinary checks. Returns false when the access
/// is refused whatever the ACL file says.
pub fn reserved_topic_allows(topic: &str, access: Access) -> bool {
    if !topic.starts_with('$') {
        return true;
    }
    if topic.starts_with("$SYS") {
        return access != Access::Write;
    }
    if topic.starts_with("$share") {
        return access == Access::Subscribe;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_topics() {
        let cases = [
            ("$SYS/broker/uptime", Access::Write, false),
            ("$SYS/broker/uptime", Access::Read, true),
            ("$SYS/#", Access::Subscribe, true),
            ("$share/g/a", Access::Subscribe, true),
            ("$share/g/a", Access::Write, false),
            ("$share/g/a", Access::Read, false),
            ("$other/x", Access::Write, true),
            ("a/b", Access::Write, true),
        ];
        for (topic, access, expected) in cases {
            assert_eq!(
                reserved_topic_allows(topic, access),
                expected,
                "{topic} {access:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, b"a:b\nc:d\n\xffe:f\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.ends_with("pw:3: the line is not valid UTF-8; save the file as UTF-8"));
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = read_file(Path::new("/nonexistent/acl"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/nonexistent/acl: "), "{err}");
    }
}
