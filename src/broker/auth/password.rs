//! Mosquitto's password files (`mosquitto_passwd`): one `username:hash` per line,
//! read, verified in constant time, and written.
//!
//! The two hash formats Mosquitto reads, with its byte layout (`src/password_mosq.c`,
//! `apps/mosquitto_passwd/`), checked against Debian's `mosquitto_passwd` 2.0.11:
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 of the password over the salt,
//!   written by Mosquitto 2 (101 iterations, a 12-byte salt, a 64-byte hash);
//! - `$6$SALT$HASH`: one SHA-512 over the password then the salt, written by
//!   Mosquitto 1.x and by `mosquitto_passwd -H sha512`.
//!
//! SALT and HASH are standard base64 with padding. Mosquitto drops any entry whose
//! salt is not 12 bytes or whose hash is not 64 bytes, so those are errors here.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use ring::rand::SecureRandom;

use super::{AuthFileError, numbered_lines, read_file};

/// PBKDF2 iterations `mosquitto_passwd` 2.0 writes (its `PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt length Mosquitto writes and requires, in bytes.
pub const SALT_LEN: usize = 12;
/// Length of a SHA-512 hash, in bytes.
const HASH_LEN: usize = 64;

/// Reads base64 with or without the trailing `=` (OpenSSL's decoder, which Mosquitto
/// uses, accepts both).
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One user's stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512 over the password then the salt (Mosquitto 1.x).
    Sha512 {
        /// The random salt.
        salt: [u8; SALT_LEN],
        /// SHA-512(password ‖ salt).
        hash: [u8; HASH_LEN],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512 (Mosquitto 2).
    Pbkdf2Sha512 {
        /// PBKDF2 rounds.
        iterations: NonZeroU32,
        /// The random salt.
        salt: [u8; SALT_LEN],
        /// The derived key.
        hash: [u8; HASH_LEN],
    },
}

// The hash stays out of logs and panic messages.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash::Sha512"),
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(
                    f,
                    "PasswordHash::Pbkdf2Sha512 {{ iterations: {iterations} }}"
                )
            }
        }
    }
}

impl PasswordHash {
    /// Hashes `password` as `mosquitto_passwd` 2.0 does: PBKDF2-HMAC-SHA512,
    /// [`DEFAULT_ITERATIONS`] rounds, a fresh 12-byte salt from `random`.
    pub fn new(
        password: &[u8],
        random: &dyn SecureRandom,
    ) -> Result<PasswordHash, ring::error::Unspecified> {
        let mut salt = [0u8; SALT_LEN];
        random.fill(&mut salt)?;
        let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).expect("a non-zero constant");
        Ok(Self::pbkdf2(password, iterations, salt))
    }

    /// PBKDF2-HMAC-SHA512 of `password` with the given parameters.
    pub fn pbkdf2(password: &[u8], iterations: NonZeroU32, salt: [u8; SALT_LEN]) -> PasswordHash {
        let mut hash = [0u8; HASH_LEN];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        }
    }

    /// Parses the part after `username:`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let Some(rest) = text.strip_prefix('$') else {
            return Err(
                "the password is not hashed (plain text?); hash the file with \
                 `headwater passwd -U FILE` or `mosquitto_passwd -U FILE`"
                    .into(),
            );
        };
        let fields: Vec<&str> = rest.split('$').collect();
        match fields.as_slice() {
            ["7", iterations, salt, hash] => {
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| {
                        format!(
                            "`{iterations}` is not an iteration count; `$7$` is \
                             `$7$ITERATIONS$SALT$HASH` with ITERATIONS at least 1"
                        )
                    })?;
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode("salt", salt)?,
                    hash: decode("hash", hash)?,
                })
            }
            ["6", salt, hash] => Ok(PasswordHash::Sha512 {
                salt: decode("salt", salt)?,
                hash: decode("hash", hash)?,
            }),
            ["7", ..] => Err("a `$7$` hash is `$7$ITERATIONS$SALT$HASH`".into()),
            ["6", ..] => Err("a `$6$` hash is `$6$SALT$HASH`".into()),
            other => Err(format!(
                "unknown hash type `${}$`; Mosquitto's are `$7$` (PBKDF2-SHA512) and \
                 `$6$` (SHA-512): set the password again with `headwater passwd`",
                other.first().copied().unwrap_or_default()
            )),
        }
    }

    /// Whether `password` hashes to this, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            PasswordHash::Sha512 { salt, hash } => {
                let mut context = ring::digest::Context::new(&ring::digest::SHA512);
                context.update(password);
                context.update(salt);
                equal_in_constant_time(context.finish().as_ref(), hash)
            }
        }
    }

    /// The same kind and cost with a hash no password is expected to produce: what an
    /// unknown user's password is checked against, so that a wrong username takes
    /// as long as a wrong password.
    fn decoy(&self) -> PasswordHash {
        match self {
            PasswordHash::Sha512 { .. } => PasswordHash::Sha512 {
                salt: [0; SALT_LEN],
                hash: [0; HASH_LEN],
            },
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => PasswordHash::Pbkdf2Sha512 {
                iterations: *iterations,
                salt: [0; SALT_LEN],
                hash: [0; HASH_LEN],
            },
        }
    }
}

/// Mosquitto's text form: `$7$101$SALT$HASH` or `$6$SALT$HASH`.
impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
        }
    }
}

fn decode<const N: usize>(what: &str, text: &str) -> Result<[u8; N], String> {
    let bytes = BASE64_LENIENT
        .decode(text)
        .map_err(|e| format!("the {what} `{text}` is not base64 ({e})"))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        format!("the {what} is {len} bytes long; Mosquitto's is {N} bytes (base64 of {N} bytes)")
    })
}

/// Compares two byte strings of public length without stopping at the first
/// difference, so the time taken does not tell how much of a guess was right.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

/// What one line of a password file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Blank, or a comment (`#` as the first character that is not a blank).
    Skip,
    /// `username:hash`, both trimmed of blanks as Mosquitto does.
    Entry {
        /// The username.
        username: &'a str,
        /// Everything after the first `:`.
        hash: &'a str,
    },
}

/// Splits one line (without its line break); the error says what is wrong.
pub fn parse_line(line: &str) -> Result<Line<'_>, String> {
    let trimmed = line.trim_matches([' ', '\t']);
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(Line::Skip);
    }
    let Some((username, hash)) = trimmed.split_once(':') else {
        return Err("expected `username:hash`; add users with `headwater passwd FILE USER`".into());
    };
    let username = username.trim_matches([' ', '\t']);
    let hash = hash.trim_matches([' ', '\t']);
    if username.is_empty() {
        return Err("the username before `:` is empty".into());
    }
    if username.len() > usize::from(u16::MAX) {
        return Err("the username is longer than MQTT allows (65535 bytes)".into());
    }
    if hash.is_empty() {
        return Err(format!(
            "`{username}` has no password hash; set one with `headwater passwd FILE {username}`"
        ));
    }
    Ok(Line::Entry { username, hash })
}

/// The users of a password file and their hashes.
#[derive(Debug)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
    /// Checked for unknown usernames (see [`PasswordHash::decoy`]).
    decoy: PasswordHash,
}

impl PasswordFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthFileError> {
        let text = read_file(path)?;
        Self::parse(&text, path)
    }

    /// Parses a password file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthFileError> {
        let error = |line, message| AuthFileError::Line {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        for (number, line) in numbered_lines(text) {
            let (username, hash) = match parse_line(line).map_err(|m| error(number, m))? {
                Line::Skip => continue,
                Line::Entry { username, hash } => (username, hash),
            };
            let hash = PasswordHash::parse(hash)
                .map_err(|m| error(number, format!("user `{username}`: {m}")))?;
            if let Some(first) = first_line.insert(username.to_string(), number) {
                return Err(error(
                    number,
                    format!("`{username}` is already on line {first}; keep one of the two lines"),
                ));
            }
            users.insert(username.to_string(), hash);
        }
        // The more common kind in the file sets what an unknown user costs.
        let pbkdf2 = users
            .values()
            .filter(|hash| matches!(hash, PasswordHash::Pbkdf2Sha512 { .. }))
            .count();
        let decoy = users
            .values()
            .find(|hash| {
                matches!(hash, PasswordHash::Pbkdf2Sha512 { .. }) == (pbkdf2 * 2 >= users.len())
            })
            .map(PasswordHash::decoy)
            .unwrap_or_else(|| PasswordHash::Pbkdf2Sha512 {
                iterations: NonZeroU32::new(DEFAULT_ITERATIONS).expect("a non-zero constant"),
                salt: [0; SALT_LEN],
                hash: [0; HASH_LEN],
            });
        Ok(PasswordFile { users, decoy })
    }

    /// True when `username` is in the file and `password` matches its hash.
    ///
    /// A PBKDF2 check takes some CPU (see `docs/security.md`): call it off the async
    /// runtime's workers (`spawn_blocking`). An unknown username costs about as much
    /// as a known one, so the time taken does not tell which usernames exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                std::hint::black_box(self.decoy.verify(password));
                false
            }
        }
    }

    /// Whether `username` has a line in the file.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// `username`'s stored hash. After a reload, a connected client whose entry is
    /// gone or differs from the one it logged in with (`old.hash(u) != new.hash(u)`)
    /// no longer holds a valid password, and can be disconnected as Mosquitto does,
    /// without keeping its password in memory.
    pub fn hash(&self, username: &str) -> Option<&PasswordHash> {
        self.users.get(username)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users (then nobody can log in with a password).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by Debian's mosquitto_passwd 2.0.11: `-c -b pw alice secret`,
    // `-b pw bob hunter2`, and `-H sha512 -c -b pw6 carol pass6`.
    const ALICE: &str = "alice:$7$101$jcejj0bg8mGwfk5o$mAeVacbABFBT4c/mZGBOvQ89KwsylpS3kEf4xS/tAp7rxUTJVhp+Qx2qbnNPa1EXhaak+QSAO2ibDoilxwQjzw==";
    const BOB: &str = "bob:$7$101$M/NVFW2TifQX4sS9$ldgNdTvwcbG+sQX0gZRCDGHFW9iKrQG41Qqm9tAGloy66PEymknIfe21Zr9lKHCDEApF4u39XFl1fuL294+CTw==";
    const CAROL: &str = "carol:$6$MBl5hglSV7FTZDKi$Ryyr7FbtofWJNMQyikz8u6jr+EZ0sdtZUeQschpMppj6N2wj+7dIjXb+qV/lVEXOo17i3Pn9vxe0NEmlT+frFA==";

    fn parse(text: &str) -> Result<PasswordFile, String> {
        PasswordFile::parse(text, Path::new("pw")).map_err(|e| e.to_string())
    }

    #[test]
    fn verifies_hashes_written_by_mosquitto_passwd() {
        let file = parse(&format!("# users\n{ALICE}\n\n  {BOB}  \r\n{CAROL}\n")).unwrap();
        assert_eq!(file.len(), 3);
        assert!(file.verify("alice", b"secret"));
        assert!(file.verify("bob", b"hunter2"));
        assert!(file.verify("carol", b"pass6"));
        assert!(!file.verify("alice", b"hunter2"));
        assert!(!file.verify("alice", b"secre"));
        assert!(!file.verify("alice", b"secret "));
        assert!(!file.verify("alice", b""));
        assert!(!file.verify("carol", b"pass7"));
        assert!(
            !file.verify("Alice", b"secret"),
            "usernames are case-sensitive"
        );
        assert!(!file.verify("dave", b"secret"));
    }

    #[test]
    fn new_hashes_round_trip_through_text() {
        let random = ring::rand::SystemRandom::new();
        let hash = PasswordHash::new(b"pa:ss word", &random).unwrap();
        let text = hash.to_string();
        assert!(text.starts_with("$7$101$"), "{text}");
        // 12 bytes of salt are 16 base64 characters, 64 bytes of hash 88.
        let fields: Vec<&str> = text.split('$').collect();
        assert_eq!((fields[3].len(), fields[4].len()), (16, 88), "{text}");
        let parsed = PasswordHash::parse(&text).unwrap();
        assert_eq!(parsed, hash);
        assert!(parsed.verify(b"pa:ss word"));
        assert!(!parsed.verify(b"pa:ss Word"));
        let other = PasswordHash::new(b"pa:ss word", &random).unwrap();
        assert_ne!(other, hash, "each hash has its own salt");
    }

    #[test]
    fn debug_hides_the_hash() {
        let hash = PasswordHash::parse(ALICE.split_once(':').unwrap().1).unwrap();
        assert_eq!(
            format!("{hash:?}"),
            "PasswordHash::Pbkdf2Sha512 { iterations: 101 }"
        );
    }

    #[test]
    fn reloads_tell_changed_entries() {
        let old = parse(&format!("{ALICE}\n{BOB}\n")).unwrap();
        let new = parse(&format!("{ALICE}\n{CAROL}\n")).unwrap();
        assert_eq!(old.hash("alice"), new.hash("alice"));
        assert!(old.hash("bob").is_some() && new.hash("bob").is_none());
        assert!(old.contains("bob") && !new.contains("bob"));
    }

    #[test]
    fn empty_file_has_nobody() {
        let file = parse("# nobody yet\n\n").unwrap();
        assert!(file.is_empty());
        assert!(!file.verify("alice", b"secret"));
    }

    #[test]
    fn unknown_users_are_checked_against_a_decoy_of_the_same_kind() {
        let file = parse(&format!("{CAROL}\n")).unwrap();
        assert!(matches!(file.decoy, PasswordHash::Sha512 { .. }));
        let file = parse(&format!("{CAROL}\n{ALICE}\n{BOB}\n")).unwrap();
        assert!(matches!(file.decoy, PasswordHash::Pbkdf2Sha512 { .. }));
    }

    #[test]
    fn malformed_lines_name_file_line_and_fix() {
        let salt = "jcejj0bg8mGwfk5o";
        let hash = ALICE.rsplit('$').next().unwrap();
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{ALICE}\nbob\n"),
                "pw:2: expected `username:hash`; add users with `headwater passwd FILE USER`",
            ),
            (
                "bob:hunter2\n".into(),
                "pw:1: user `bob`: the password is not hashed (plain text?); hash the file \
                 with `headwater passwd -U FILE` or `mosquitto_passwd -U FILE`",
            ),
            (
                ":$7$101$x$y\n".into(),
                "pw:1: the username before `:` is empty",
            ),
            (
                "# x\nbob:\n".into(),
                "pw:2: `bob` has no password hash; set one with `headwater passwd FILE bob`",
            ),
            (
                format!("bob:$5${salt}${hash}\n"),
                "pw:1: user `bob`: unknown hash type `$5$`; Mosquitto's are `$7$` \
                 (PBKDF2-SHA512) and `$6$` (SHA-512): set the password again with \
                 `headwater passwd`",
            ),
            (
                format!("bob:$7$0${salt}${hash}\n"),
                "pw:1: user `bob`: `0` is not an iteration count; `$7$` is \
                 `$7$ITERATIONS$SALT$HASH` with ITERATIONS at least 1",
            ),
            (
                format!("bob:$7${salt}${hash}\n"),
                "pw:1: user `bob`: a `$7$` hash is `$7$ITERATIONS$SALT$HASH`",
            ),
            (
                format!("bob:$6$101${salt}${hash}\n"),
                "pw:1: user `bob`: a `$6$` hash is `$6$SALT$HASH`",
            ),
            (
                format!("bob:$7$101$c2FsdA==${hash}\n"),
                "pw:1: user `bob`: the salt is 4 bytes long; Mosquitto's is 12 bytes \
                 (base64 of 12 bytes)",
            ),
            (
                format!("bob:$7$101${salt}$!!\n"),
                "pw:1: user `bob`: the hash `!!` is not base64 (Invalid symbol 33, offset 0.)",
            ),
            (
                format!("{ALICE}\n\n{ALICE}\n"),
                "pw:3: `alice` is already on line 1; keep one of the two lines",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(&text).unwrap_err(), expected, "{text}");
        }
    }

    #[test]
    fn constant_time_comparison_is_a_comparison() {
        assert!(equal_in_constant_time(b"abc", b"abc"));
        assert!(!equal_in_constant_time(b"abc", b"abd"));
        assert!(!equal_in_constant_time(b"abc", b"ab"));
        assert!(equal_in_constant_time(b"", b""));
    }

    #[test]
    fn loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, format!("{ALICE}\n")).unwrap();
        assert!(
            PasswordFile::load(&path)
                .unwrap()
                .verify("alice", b"secret")
        );
    }
}
