//! Mosquitto's `mosquitto.conf`, read into the broker's settings with Mosquitto 2.0's
//! meaning: listeners and their TLS keys, `per_listener_settings`, password and ACL
//! files, limits, persistence, bridges and `include_dir`.
//!
//! One documented exception: persistence is on unless `persistence false` is written.
//! A key Headwater has no use for is a warning that says why; a security key it cannot
//! honour (auth plugins, PSK, cipher lists, mount points...) is an error, because
//! ignoring it would open the broker wider than the file says. Every error of every file
//! is collected before [`load`] returns. See `docs/mosquitto-conf.md`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bytestring::ByteString;

use super::config::{
    BridgeConfig, BridgeDirection, BridgeTopic, BrokerConfig, ListenerConfig, ListenerProtocol,
    Persistence,
};
use super::topic;

/// A Mosquitto file read without errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The broker's settings.
    pub config: BrokerConfig,
    /// `persistence_location`, where Headwater keeps its data (the broker's store goes in
    /// `DIR/broker`); `None` when the file does not say.
    pub data_dir: Option<PathBuf>,
    /// Keys read but not applied, each with what Headwater does instead.
    pub warnings: Vec<ConfWarning>,
}

/// A line that was read but is not applied as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfWarning {
    /// The file (the main file or one from `include_dir`).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is not applied and why.
    pub message: String,
}

impl fmt::Display for ConfWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// A line that stops the broker from starting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfLineError {
    /// The file (the main file or one from `include_dir`).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Why a Mosquitto file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The main file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Lines that are wrong: every one of them, in the order read.
    #[error("{}", one_per_line(.0))]
    Invalid(Vec<ConfLineError>),
}

fn one_per_line(errors: &[ConfLineError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads the Mosquitto file at `path` and the files its `include_dir` lines name.
/// Relative paths in it (`include_dir`, `password_file`, ...) are relative to the current
/// directory, as in Mosquitto.
pub fn load(path: &Path) -> Result<Loaded, ConfError> {
    let bytes = std::fs::read(path).map_err(|source| ConfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = Reader::default();
    reader.read_file(path, &bytes, 0);
    reader.finish()
}

/// Where a line is.
#[derive(Clone, Debug)]
struct Loc {
    file: PathBuf,
    line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The three settings `per_listener_settings` moves between the broker and its listeners.
#[derive(Clone, Debug, Default)]
struct Security {
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    /// Where `allow_anonymous`/`acl_file` were written, for the warning when they end up
    /// on a listener that does not exist.
    written_at: Option<Loc>,
}

/// A listener being read.
#[derive(Clone, Debug)]
struct ListenerDraft {
    config: ListenerConfig,
    security: Security,
    /// `max_connections` as written (negative: unlimited) and where.
    max_connections: Option<(i64, Loc)>,
    max_topic_alias: Option<u16>,
    /// Mosquitto opens its default listener when something other than a default value
    /// was written for it; the first such line.
    changed_at: Option<Loc>,
    declared_at: Option<Loc>,
}

impl ListenerDraft {
    fn new(host: &str, port: u16, declared_at: Option<Loc>) -> Self {
        ListenerDraft {
            config: ListenerConfig::tcp(host, port),
            security: Security::default(),
            max_connections: None,
            max_topic_alias: None,
            changed_at: None,
            declared_at,
        }
    }
}

/// Which block a line is in. Mosquitto keeps these per file: a file from `include_dir`
/// starts outside any listener and any bridge.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    /// `None`: Mosquitto's default listener (`port`, `bind_address`).
    listener: Option<usize>,
    bridge: Option<usize>,
}

/// What a string setting belongs to, for Mosquitto's "duplicate value" rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Global,
    DefaultListener,
    Listener(usize),
    Bridge(usize),
}

#[derive(Default)]
struct Reader {
    errors: Vec<ConfLineError>,
    warnings: Vec<ConfWarning>,
    /// The line being read.
    here: Option<Loc>,
    config: BrokerConfig,
    global: Security,
    listeners: Vec<ListenerDraft>,
    default_listener: Option<ListenerDraft>,
    default_port: Option<u16>,
    default_host: Option<String>,
    /// No `listener`, `port` or `bind_address` line: Mosquitto listens on loopback only.
    explicit_listener: bool,
    per_listener_settings: bool,
    /// The first line that set a security option (Mosquitto's `cur_security_options`):
    /// `per_listener_settings true` must come before it.
    first_security_line: Option<Loc>,
    data_dir: Option<PathBuf>,
    bridges: Vec<(BridgeConfig, Loc)>,
    /// Where each string setting was first written.
    strings: HashMap<(Scope, &'static str), Loc>,
}

/// How the value of a key Headwater reads but does not apply is checked, so a file
/// Headwater accepts is one Mosquitto accepts too.
#[derive(Clone, Copy)]
enum Value {
    Bool,
    Int,
    Text,
    OneOf(&'static [&'static str]),
}

/// Where a key may appear.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Anywhere,
    /// Applies to the current (or default) listener.
    Listener,
    /// Only after `connection NAME`.
    Bridge,
}

const LOGGING: &str = "headwater logs to stderr (the journal under systemd); set the level with RUST_LOG and the format with --log-format";
const UNSUPPORTED: &str = "not supported by headwater";

/// Keys Headwater reads and ignores, with the reason the warning gives.
fn ignored(key: &str) -> Option<(Value, Place, &'static str)> {
    use Place::*;
    use Value::*;
    Some(match key {
        "log_dest" => (
            OneOf(&["none", "syslog", "stdout", "stderr", "topic", "dlt", "file"]),
            Anywhere,
            LOGGING,
        ),
        "log_type" => (
            OneOf(&[
                "none",
                "information",
                "notice",
                "warning",
                "error",
                "debug",
                "subscribe",
                "unsubscribe",
                "websockets",
                "all",
            ]),
            Anywhere,
            LOGGING,
        ),
        "log_timestamp" | "connection_messages" => (Bool, Anywhere, LOGGING),
        "log_timestamp_format" => (Text, Anywhere, LOGGING),
        "log_facility" | "websockets_log_level" => (Int, Anywhere, LOGGING),
        "pid_file" => (
            Text,
            Anywhere,
            "headwater writes no pid file; systemd (or whatever starts it) tracks the process",
        ),
        "user" => (
            Text,
            Anywhere,
            "headwater does not switch users; it runs as the user that starts it (systemd's `User=`)",
        ),
        "autosave_interval" => (
            Int,
            Anywhere,
            "headwater writes every acknowledged message before acknowledging it, so there is nothing to autosave",
        ),
        "autosave_on_changes" => (
            Bool,
            Anywhere,
            "headwater writes every acknowledged message before acknowledging it, so there is nothing to autosave",
        ),
        "persistence_file" => (
            Text,
            Anywhere,
            "headwater keeps its store in the directory `broker` under `persistence_location`, not in one file",
        ),
        "persistent_client_expiration" => (
            Text,
            Anywhere,
            "not supported by headwater: a persistent session is kept until its session expiry interval ends",
        ),
        "max_inflight_bytes" | "max_queued_bytes" => (
            Int,
            Anywhere,
            "byte limits are not supported by headwater; `max_inflight_messages` and `max_queued_messages` apply",
        ),
        "memory_limit" => (Int, Anywhere, UNSUPPORTED),
        "queue_qos0_messages" => (
            Bool,
            Anywhere,
            "headwater never queues QoS 0 messages for offline clients",
        ),
        "retain_available" => (
            Bool,
            Anywhere,
            "headwater always supports retained messages",
        ),
        "set_tcp_nodelay" => (Bool, Anywhere, "headwater always sets TCP_NODELAY"),
        "upgrade_outgoing_qos" => (
            Bool,
            Anywhere,
            "not supported by headwater: deliveries keep the QoS MQTT gives them",
        ),
        "allow_duplicate_messages" => (
            Bool,
            Anywhere,
            "deprecated in Mosquitto and not supported by headwater",
        ),
        "check_retain_source" => (Bool, Anywhere, UNSUPPORTED),
        "websockets_headers_size" => (Int, Anywhere, UNSUPPORTED),
        "retry_interval" => (Text, Anywhere, "removed in Mosquitto 2; it has no effect"),
        "allow_zero_length_clientid" => (
            Bool,
            Anywhere,
            "not supported by headwater: a client with an empty client id gets one generated, as MQTT 3.1.1 and 5 allow",
        ),
        "auto_id_prefix" => (
            Text,
            Anywhere,
            "not supported by headwater: it names generated client ids itself",
        ),
        "http_dir" => (
            Text,
            Listener,
            "headwater's WebSocket listeners serve no files",
        ),
        "socket_domain" => (
            OneOf(&["ipv4", "ipv6"]),
            Listener,
            "not supported by headwater: the listener's address decides the address family",
        ),
        "max_qos" | "maximum_qos" => (Int, Listener, UNSUPPORTED),
        "local_clientid" | "local_username" | "local_password" => (
            Text,
            Bridge,
            "a bridge talks to headwater's own broker in process, without a client id or credentials",
        ),
        "local_cleansession" => (
            Bool,
            Bridge,
            "a bridge's local side keeps its session as long as the bridge exists",
        ),
        "notifications" | "notifications_local_only" => (
            Bool,
            Bridge,
            "bridge state notifications are not supported by headwater",
        ),
        "notification_topic" => (
            Text,
            Bridge,
            "bridge state notifications are not supported by headwater",
        ),
        "round_robin" => (
            Bool,
            Bridge,
            "headwater tries a bridge's addresses in turn and stays on the one that works",
        ),
        "start_type" => (
            OneOf(&["automatic", "lazy", "once"]),
            Bridge,
            "headwater starts every bridge at once and reconnects it when it drops (`automatic`)",
        ),
        "threshold" | "idle_timeout" => (
            Int,
            Bridge,
            "lazy bridges are not supported by headwater; bridges start at once",
        ),
        "try_private" | "bridge_attempt_unsubscribe" | "bridge_outgoing_retain" => {
            (Bool, Bridge, UNSUPPORTED)
        }
        "bridge_max_packet_size" => (Int, Bridge, UNSUPPORTED),
        "bridge_bind_address" | "bridge_alpn" | "bridge_tls_version" => (Text, Bridge, UNSUPPORTED),
        _ => return None,
    })
}

/// Security keys Headwater cannot honour: refusing to start is the only safe answer.
fn refused(key: &str) -> Option<&'static str> {
    if key.starts_with("auth_opt_") || key.starts_with("plugin_opt_") {
        return Some(
            "options of an authentication plugin, which headwater cannot load; use `password_file` and `acl_file`, or remove the plugin and its options",
        );
    }
    if key.starts_with("ocsp_") {
        return Some("OCSP is not supported by headwater; remove the line");
    }
    Some(match key {
        "auth_plugin" | "plugin" | "global_plugin" | "auth_plugin_deny_special_chars" => {
            "authentication plugins cannot be loaded by headwater, and running without one would accept clients it refuses; use `password_file` and `acl_file`, or remove the line"
        }
        "psk_file" | "psk_hint" => {
            "TLS pre-shared keys are not supported by headwater; use certificates (`certfile`, `keyfile`, `cafile`)"
        }
        "use_subject_as_username" => {
            "not supported by headwater; use `use_identity_as_username` (the certificate's common name)"
        }
        "use_username_as_clientid" => {
            "not supported by headwater, and without it clients could take over each other's sessions; remove the line"
        }
        "ciphers" | "ciphers_tls1.3" | "bridge_ciphers" | "bridge_ciphers_tls1.3" => {
            "headwater cannot restrict TLS cipher suites (it offers rustls's modern suites only); remove the line"
        }
        "dhparamfile" => {
            "headwater does not use Diffie-Hellman parameter files (it offers ECDHE only); remove the line"
        }
        "capath" => {
            "a CA directory is not supported by headwater; concatenate the certificates into one PEM file and name it with `cafile`"
        }
        "bridge_capath" => {
            "a CA directory is not supported by headwater; concatenate the certificates into one PEM file and name it with `bridge_cafile`"
        }
        "tls_engine" | "tls_engine_kpass_sha1" | "tls_keyform" => {
            "keys held by an OpenSSL engine are not supported by headwater; give the key as a PEM `keyfile`"
        }
        "bridge_identity" | "bridge_psk" => {
            "TLS pre-shared keys are not supported by headwater; use `bridge_cafile`, `bridge_certfile` and `bridge_keyfile`"
        }
        "bridge_require_ocsp" => "OCSP is not checked by headwater; remove the line",
        "bind_interface" => {
            "binding to a network interface is not supported by headwater; give the interface's address on the `listener` line"
        }
        "mount_point" => {
            "mount points are not supported by headwater, and without them these clients would see every topic; remove the line or use an ACL"
        }
        "clientid_prefixes" => {
            "not supported by headwater, and without it any client id could connect; use a `password_file` instead"
        }
        "websockets_origin" => {
            "not supported by headwater, and without it any web page could connect; remove the line"
        }
        _ => return None,
    })
}

/// Splits off the first word of `text` (words are separated by spaces or tabs).
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    match text.find([' ', '\t']) {
        Some(end) => (&text[..end], text[end..].trim_start_matches([' ', '\t'])),
        None => (text, ""),
    }
}

/// Mosquitto's order for `include_dir`: alphabetical ignoring case, and where two names
/// differ only in case, upper case first (`A.conf`, `a.conf`, `B.conf`).
fn mosquitto_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        let folded = x.to_ascii_uppercase().cmp(&y.to_ascii_uppercase());
        if folded != std::cmp::Ordering::Equal {
            return folded;
        }
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

impl Reader {
    fn loc(&self) -> Loc {
        self.here.clone().unwrap_or(Loc {
            file: PathBuf::new(),
            line: 0,
        })
    }

    fn error(&mut self, message: impl Into<String>) {
        let loc = self.loc();
        self.errors.push(ConfLineError {
            file: loc.file,
            line: loc.line,
            message: message.into(),
        });
    }

    fn warn(&mut self, message: impl Into<String>) {
        let loc = self.loc();
        self.warnings.push(ConfWarning {
            file: loc.file,
            line: loc.line,
            message: message.into(),
        });
    }

    /// Reads one file's lines; `level` 0 is the main file.
    fn read_file(&mut self, file: &Path, bytes: &[u8], level: usize) {
        let mut cursor = Cursor::default();
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            self.here = Some(Loc {
                file: file.to_path_buf(),
                line: index + 1,
            });
            let Ok(text) = std::str::from_utf8(raw) else {
                self.error("this line is not valid UTF-8; save the file as UTF-8");
                continue;
            };
            let text = text.trim_end_matches(['\r', ' ', '\t']);
            let trimmed = text.trim_start_matches([' ', '\t']);
            // Mosquitto takes only a `#` in the first column as a comment; an indented one
            // is harmless enough to accept too.
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, rest) = first_word(trimmed);
            if let Err(message) = self.line(key, rest, &mut cursor, level) {
                self.error(message);
            }
        }
        self.here = None;
    }

    /// Warns about words after a value that Mosquitto would ignore (a `#` comment is
    /// fine).
    fn no_more(&mut self, key: &str, rest: &str) {
        if !rest.is_empty() && !rest.starts_with('#') {
            self.warn(format!(
                "ignoring `{rest}` after the value of `{key}`; Mosquitto ignores it too"
            ));
        }
    }

    fn text<'a>(&self, key: &str, rest: &'a str) -> Result<&'a str, String> {
        let value = rest.trim_matches([' ', '\t']);
        if value.is_empty() {
            return Err(format!("`{key}` needs a value"));
        }
        Ok(value)
    }

    /// A string setting: rest of the line; written twice in one scope is an error, as in
    /// Mosquitto.
    fn string(&mut self, scope: Scope, key: &'static str, rest: &str) -> Result<String, String> {
        let value = self.text(key, rest)?.to_string();
        let here = self.loc();
        if let Some(first) = self.strings.get(&(scope, key)) {
            return Err(format!(
                "`{key}` is already set at {first}; keep one of the two lines"
            ));
        }
        self.strings.insert((scope, key), here);
        Ok(value)
    }

    fn number(&mut self, key: &str, rest: &str) -> Result<i64, String> {
        let (word, more) = first_word(rest);
        if word.is_empty() {
            return Err(format!("`{key}` needs a number"));
        }
        let value = word
            .parse::<i64>()
            .map_err(|_| format!("`{key}` needs a whole number, found `{word}`"))?;
        self.no_more(key, more);
        Ok(value)
    }

    fn ranged(&mut self, key: &str, rest: &str, min: i64, max: i64) -> Result<i64, String> {
        let value = self.number(key, rest)?;
        if value < min || value > max {
            return Err(format!(
                "`{key}` must be between {min} and {max}, found {value}"
            ));
        }
        Ok(value)
    }

    fn boolean(&mut self, key: &str, rest: &str) -> Result<bool, String> {
        let (word, more) = first_word(rest);
        let value = match word {
            "true" | "1" => true,
            "false" | "0" => false,
            "" => return Err(format!("`{key}` needs a value: true or false")),
            other => return Err(format!("`{key}` must be true or false, found `{other}`")),
        };
        self.no_more(key, more);
        Ok(value)
    }

    fn listener_scope(&self, cursor: &Cursor) -> Scope {
        match cursor.listener {
            Some(index) => Scope::Listener(index),
            None => Scope::DefaultListener,
        }
    }

    /// The listener a listener-scoped key applies to; before any `listener` line in a
    /// file that is Mosquitto's default listener, which it opens (on port 1883, every
    /// interface) only because something was written for it.
    fn listener_mut(&mut self, cursor: &Cursor) -> &mut ListenerDraft {
        match cursor.listener {
            Some(index) => &mut self.listeners[index],
            None => self
                .default_listener
                .get_or_insert_with(|| ListenerDraft::new("0.0.0.0", 1883, None)),
        }
    }

    /// Records that a non-default value was written for the current listener.
    fn changed(&mut self, cursor: &Cursor) {
        let here = self.loc();
        let listener = self.listener_mut(cursor);
        listener.changed_at.get_or_insert(here);
    }

    fn bridge_mut(&mut self, key: &str, cursor: &Cursor) -> Result<&mut BridgeConfig, String> {
        match cursor.bridge {
            Some(index) => Ok(&mut self.bridges[index].0),
            None => Err(format!(
                "`{key}` belongs to a bridge: write it after a `connection NAME` line"
            )),
        }
    }

    /// The security settings a key goes to: the current listener's with
    /// `per_listener_settings true`, else the broker's.
    fn security_mut(&mut self, cursor: &Cursor) -> (&mut Security, Scope) {
        let here = self.loc();
        self.first_security_line.get_or_insert(here);
        if self.per_listener_settings {
            let scope = self.listener_scope(cursor);
            (&mut self.listener_mut(cursor).security, scope)
        } else {
            (&mut self.global, Scope::Global)
        }
    }

    fn line(
        &mut self,
        key: &str,
        rest: &str,
        cursor: &mut Cursor,
        level: usize,
    ) -> Result<(), String> {
        match key {
            "listener" => self.listener(rest, cursor),
            "port" => {
                self.explicit_listener = true;
                let port = self.ranged(key, rest, 1, 65535)?;
                if self.default_port.is_some() {
                    self.warn(
                        "`port` is written more than once; the last one applies, as in Mosquitto",
                    );
                }
                self.default_port = Some(port as u16);
                Ok(())
            }
            "bind_address" => {
                self.explicit_listener = true;
                let host = self.string(Scope::DefaultListener, "bind_address", rest)?;
                self.default_host = Some(host);
                Ok(())
            }
            "protocol" => {
                let (word, more) = first_word(rest);
                let protocol = match word {
                    "mqtt" => ListenerProtocol::Mqtt,
                    "websockets" => ListenerProtocol::Websockets,
                    "" => return Err("`protocol` needs a value: mqtt or websockets".into()),
                    other => {
                        return Err(format!(
                            "unknown protocol `{other}`: write mqtt or websockets"
                        ));
                    }
                };
                self.no_more(key, more);
                if protocol != ListenerProtocol::Mqtt {
                    self.changed(cursor);
                }
                self.listener_mut(cursor).config.protocol = protocol;
                Ok(())
            }
            "cafile" | "certfile" | "keyfile" | "crlfile" => {
                let key: &'static str = match key {
                    "cafile" => "cafile",
                    "certfile" => "certfile",
                    "keyfile" => "keyfile",
                    _ => "crlfile",
                };
                let scope = self.listener_scope(cursor);
                let path = PathBuf::from(self.string(scope, key, rest)?);
                self.changed(cursor);
                let tls = &mut self.listener_mut(cursor).config.tls;
                let slot = match key {
                    "cafile" => &mut tls.cafile,
                    "certfile" => &mut tls.certfile,
                    "keyfile" => &mut tls.keyfile,
                    _ => &mut tls.crlfile,
                };
                *slot = Some(path);
                Ok(())
            }
            "tls_version" => {
                let scope = self.listener_scope(cursor);
                let version = self.string(scope, "tls_version", rest)?;
                let version = match version.as_str() {
                    "tlsv1.3" | "tlsv1.2" => version,
                    "tlsv1.1" => {
                        self.warn(
                            "headwater never accepts TLS older than 1.2; `tls_version tlsv1.1` acts as tlsv1.2",
                        );
                        "tlsv1.2".to_string()
                    }
                    other => {
                        return Err(format!(
                            "unknown `tls_version` `{other}`: write tlsv1.3, tlsv1.2 or tlsv1.1"
                        ));
                    }
                };
                self.changed(cursor);
                self.listener_mut(cursor).config.tls.tls_version = Some(version);
                Ok(())
            }
            "require_certificate" | "use_identity_as_username" => {
                let value = self.boolean(key, rest)?;
                if value {
                    self.changed(cursor);
                }
                let tls = &mut self.listener_mut(cursor).config.tls;
                if key == "require_certificate" {
                    tls.require_certificate = value;
                } else {
                    tls.use_identity_as_username = value;
                }
                Ok(())
            }
            "max_connections" => {
                let value = self.number(key, rest)?;
                if value >= 0 {
                    self.changed(cursor);
                }
                let here = self.loc();
                self.listener_mut(cursor).max_connections = Some((value, here));
                Ok(())
            }
            "max_topic_alias" => {
                let value = self.ranged(key, rest, 0, 65535)?;
                if value != 10 {
                    self.changed(cursor);
                }
                self.listener_mut(cursor).max_topic_alias = Some(value as u16);
                Ok(())
            }
            "allow_anonymous" => {
                let value = self.boolean(key, rest)?;
                let here = self.loc();
                let (security, _) = self.security_mut(cursor);
                security.allow_anonymous = Some(value);
                security.written_at.get_or_insert(here);
                Ok(())
            }
            "password_file" | "acl_file" => {
                let key: &'static str = if key == "password_file" {
                    "password_file"
                } else {
                    "acl_file"
                };
                let here = self.loc();
                let (_, scope) = self.security_mut(cursor);
                let path = PathBuf::from(self.string(scope, key, rest)?);
                if self.per_listener_settings && key == "password_file" {
                    // Mosquitto opens its default listener for a password file written for
                    // it, but not for an ACL file or `allow_anonymous`.
                    self.changed(cursor);
                }
                let (security, _) = self.security_mut(cursor);
                if key == "password_file" {
                    security.password_file = Some(path);
                } else {
                    security.acl_file = Some(path);
                    security.written_at.get_or_insert(here);
                }
                Ok(())
            }
            "per_listener_settings" => {
                let value = self.boolean(key, rest)?;
                if self.per_listener_settings {
                    // Once set it stays set, as in Mosquitto.
                    if !value {
                        self.warn(
                            "`per_listener_settings` was already set to true and stays true, as in Mosquitto",
                        );
                    }
                    return Ok(());
                }
                if value && let Some(first) = &self.first_security_line {
                    return Err(format!(
                        "`per_listener_settings true` must come before any security setting (the first is at {first}); move it to the top of the file"
                    ));
                }
                self.per_listener_settings = value;
                Ok(())
            }
            "persistence" | "retained_persistence" => {
                let value = self.boolean(key, rest)?;
                self.config.persistence = if value {
                    Persistence::Durable
                } else {
                    Persistence::Memory
                };
                Ok(())
            }
            "persistence_location" => {
                let dir = self.string(Scope::Global, "persistence_location", rest)?;
                self.data_dir = Some(PathBuf::from(dir));
                Ok(())
            }
            "message_size_limit" => {
                let value = self.ranged(key, rest, 0, 268_435_455)?;
                self.config.message_size_limit = value as u32;
                Ok(())
            }
            "max_packet_size" => {
                let value = self.ranged(key, rest, 20, i64::from(i32::MAX))?;
                self.config.max_packet_size = value as u32;
                Ok(())
            }
            "max_inflight_messages" => {
                let value = self.number(key, rest)?;
                if value > 65535 {
                    return Err(format!(
                        "`max_inflight_messages` must be at most 65535, found {value}"
                    ));
                }
                // Mosquitto's 0 (and a negative number, and 65535) mean no maximum; the
                // client's own receive maximum still applies.
                self.config.max_inflight_messages = if value <= 0 || value == 65535 {
                    u16::MAX
                } else {
                    value as u16
                };
                Ok(())
            }
            "max_queued_messages" => {
                let value = self.number(key, rest)?;
                self.config.max_queued_messages = if value <= 0 {
                    self.warn(
                        "`max_queued_messages 0` means no limit: the queue of a client that stays away grows on disk without bound; consider a limit",
                    );
                    usize::MAX
                } else {
                    usize::try_from(value).unwrap_or(usize::MAX)
                };
                Ok(())
            }
            "max_keepalive" => {
                let value = self.ranged(key, rest, 10, 65535)?;
                self.config.max_keepalive = value as u16;
                Ok(())
            }
            "sys_interval" => {
                let value = self.ranged(key, rest, 0, 65535)?;
                self.config.sys_interval = value as u64;
                Ok(())
            }
            "include_dir" => self.include_dir(rest, level),
            "connection" => {
                let result = self.connection(rest);
                // Even a refused `connection` line starts a block, so the lines after it
                // are not blamed on the bridge before it.
                cursor.bridge = Some(self.bridges.len() - 1);
                result
            }
            "address" | "addresses" => self.addresses(key, rest, cursor),
            "topic" => self.bridge_topic(rest, cursor),
            "cleansession" => {
                self.bridge_mut(key, cursor)?;
                let value = self.boolean(key, rest)?;
                self.bridge_mut(key, cursor)?.cleansession = value;
                Ok(())
            }
            "remote_clientid" | "clientid" | "remote_username" | "username" | "remote_password"
            | "password" => {
                let index = cursor.bridge;
                self.bridge_mut(key, cursor)?;
                // Mosquitto's old names (`clientid`, `username`, `password`) are the same
                // settings as the new ones.
                let name: &'static str = match key {
                    "remote_clientid" | "clientid" => "remote_clientid",
                    "remote_username" | "username" => "remote_username",
                    _ => "remote_password",
                };
                let scope = Scope::Bridge(index.unwrap_or_default());
                let value = self.string(scope, name, rest)?;
                let bridge = self.bridge_mut(key, cursor)?;
                match name {
                    "remote_clientid" => bridge.remote_clientid = Some(value),
                    "remote_username" => bridge.remote_username = Some(value),
                    _ => bridge.remote_password = Some(value),
                }
                Ok(())
            }
            "bridge_protocol_version" => {
                self.bridge_mut(key, cursor)?;
                let version = self.text(key, rest)?;
                if !matches!(version, "mqttv31" | "mqttv311" | "mqttv50") {
                    return Err(format!(
                        "unknown `bridge_protocol_version` `{version}`: write mqttv50, mqttv311 or mqttv31"
                    ));
                }
                let version = version.to_string();
                self.bridge_mut(key, cursor)?.bridge_protocol_version = Some(version);
                Ok(())
            }
            "bridge_cafile" | "bridge_certfile" | "bridge_keyfile" => {
                let index = cursor.bridge;
                self.bridge_mut(key, cursor)?;
                let name: &'static str = match key {
                    "bridge_cafile" => "bridge_cafile",
                    "bridge_certfile" => "bridge_certfile",
                    _ => "bridge_keyfile",
                };
                let scope = Scope::Bridge(index.unwrap_or_default());
                let path = PathBuf::from(self.string(scope, name, rest)?);
                let bridge = self.bridge_mut(key, cursor)?;
                match name {
                    "bridge_cafile" => bridge.bridge_cafile = Some(path),
                    "bridge_certfile" => bridge.bridge_certfile = Some(path),
                    _ => bridge.bridge_keyfile = Some(path),
                }
                Ok(())
            }
            "bridge_insecure" => {
                self.bridge_mut(key, cursor)?;
                let value = self.boolean(key, rest)?;
                let bridge = self.bridge_mut(key, cursor)?;
                bridge.bridge_insecure = value;
                if value {
                    let name = bridge.connection.clone();
                    self.warn(format!(
                        "bridge `{name}` does not check the remote's host name against its certificate; use this for tests only"
                    ));
                }
                Ok(())
            }
            "keepalive_interval" => {
                self.bridge_mut(key, cursor)?;
                let mut value = self.number(key, rest)?;
                if value > 65535 {
                    return Err(format!(
                        "`keepalive_interval` must be at most 65535, found {value}"
                    ));
                }
                if value < 5 {
                    self.warn(format!(
                        "`keepalive_interval {value}` is too low; using 5 seconds, as Mosquitto does"
                    ));
                    value = 5;
                }
                self.bridge_mut(key, cursor)?.keepalive_interval = Some(value as u16);
                Ok(())
            }
            "restart_timeout" => self.restart_timeout(rest, cursor),
            _ => self.other(key, rest, cursor),
        }
    }

    /// Keys refused, ignored with a reason, or unknown.
    fn other(&mut self, key: &str, rest: &str, cursor: &Cursor) -> Result<(), String> {
        if let Some(reason) = refused(key) {
            return Err(format!("`{key}`: {reason}"));
        }
        let Some((value, place, reason)) = ignored(key) else {
            self.warn(format!(
                "unknown key `{key}`; headwater ignores it (Mosquitto would refuse to start): check its spelling"
            ));
            return Ok(());
        };
        if place == Place::Bridge {
            self.bridge_mut(key, cursor)?;
        }
        match value {
            Value::Bool => {
                self.boolean(key, rest)?;
            }
            Value::Int => {
                self.number(key, rest)?;
            }
            Value::Text => {
                self.text(key, rest)?;
            }
            Value::OneOf(allowed) => {
                let (word, _) = first_word(rest);
                if !allowed.contains(&word) {
                    return Err(format!(
                        "`{key}` must be one of {}, found `{word}`",
                        allowed.join(", ")
                    ));
                }
                if key == "log_dest" && word == "file" && first_word(rest).1.is_empty() {
                    return Err("`log_dest file` needs the file's path".into());
                }
                if key == "start_type" && word == "automatic" {
                    // Headwater's behaviour: nothing to warn about.
                    return Ok(());
                }
            }
        }
        if matches!(
            key,
            "allow_zero_length_clientid" | "auto_id_prefix" | "check_retain_source"
        ) {
            // Security options in Mosquitto's sense: `per_listener_settings` must precede them.
            let here = self.loc();
            self.first_security_line.get_or_insert(here);
        }
        if place == Place::Listener && cursor.listener.is_none() {
            self.changed(cursor);
        }
        self.warn(format!("`{key}` is ignored: {reason}"));
        Ok(())
    }

    fn listener(&mut self, rest: &str, cursor: &mut Cursor) -> Result<(), String> {
        self.explicit_listener = true;
        let (port, more) = first_word(rest);
        if port.is_empty() {
            return Err("`listener` needs a port: `listener PORT [ADDRESS]`".into());
        }
        let port: i64 = port
            .parse()
            .map_err(|_| format!("`listener` needs a port number, found `{port}`"))?;
        let (host, more) = first_word(more);
        let host = if host.starts_with('#') { "" } else { host };
        if port == 0 {
            return Err(
                "`listener 0 PATH` is a Unix socket in Mosquitto, which headwater does not support; give a TCP port"
                    .into(),
            );
        }
        if !(1..=65535).contains(&port) {
            return Err(format!(
                "`listener` port must be between 1 and 65535, found {port}"
            ));
        }
        if !host.is_empty() {
            self.no_more("listener", more);
        }
        // Without an address Mosquitto listens on every interface.
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let port = port as u16;
        let here = self.loc();
        if let Some(other) = self
            .listeners
            .iter()
            .find(|l| l.config.port == port && l.config.host == host)
        {
            let first = other.declared_at.clone().unwrap_or_else(|| here.clone());
            return Err(format!(
                "a listener on port {port} is already declared at {first}; remove one of them"
            ));
        }
        self.listeners
            .push(ListenerDraft::new(host, port, Some(here)));
        cursor.listener = Some(self.listeners.len() - 1);
        Ok(())
    }

    fn include_dir(&mut self, rest: &str, level: usize) -> Result<(), String> {
        let dir = self.text("include_dir", rest)?.to_string();
        if level > 0 {
            self.warn(
                "`include_dir` is read only in the main file, as in Mosquitto; this one is ignored",
            );
            return Ok(());
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            format!(
                "cannot open include_dir `{dir}`: {e} (a relative path is relative to the current directory, as in Mosquitto)"
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.len() > ".conf".len() && name.ends_with(".conf"))
            .collect();
        names.sort_by(|a, b| mosquitto_order(a, b));
        let here = self.here.clone();
        for name in names {
            let path = Path::new(&dir).join(&name);
            match std::fs::read(&path) {
                Ok(bytes) => self.read_file(&path, &bytes, level + 1),
                Err(e) => {
                    self.here = here.clone();
                    self.error(format!("cannot read `{}`: {e}", path.display()));
                }
            }
        }
        self.here = here;
        Ok(())
    }

    /// Starts a bridge block; always pushes one (see `line`).
    fn connection(&mut self, rest: &str) -> Result<(), String> {
        let (name, more) = first_word(rest);
        let result = if name.is_empty() {
            Err("`connection` needs the bridge's name".to_string())
        } else if let Some((_, first)) = self.bridges.iter().find(|(b, _)| b.connection == name) {
            Err(format!(
                "a bridge named `{name}` is already declared at {first}; give each bridge its own name"
            ))
        } else {
            self.no_more("connection", more);
            Ok(())
        };
        let here = self.loc();
        self.bridges.push((
            BridgeConfig::new(name.to_string(), Vec::new(), Vec::new()),
            here,
        ));
        result
    }

    /// `address HOST[:PORT] [HOST[:PORT]...]` (or `addresses`), tried in turn.
    fn addresses(&mut self, key: &str, rest: &str, cursor: &Cursor) -> Result<(), String> {
        let bridge = self.bridge_mut(key, cursor)?;
        if !bridge.addresses.is_empty() {
            return Err(format!(
                "bridge `{}` already has its addresses; write them all on one `address` line",
                bridge.connection
            ));
        }
        let mut addresses = Vec::new();
        for word in rest.split([' ', '\t']).filter(|w| !w.is_empty()) {
            if word.starts_with('#') {
                break;
            }
            if word.contains(',') {
                return Err(format!(
                    "`{word}`: separate bridge addresses with spaces, as Mosquitto reads them"
                ));
            }
            // The port is after the last colon; without one it is 1883 (an IPv6 address
            // must give its port, as in Mosquitto).
            let address = match word.rsplit_once(':') {
                Some((host, port)) => {
                    let number: i64 = port
                        .parse()
                        .map_err(|_| format!("`{word}`: the port after `:` must be a number"))?;
                    if !(1..=65535).contains(&number) || host.is_empty() {
                        return Err(format!(
                            "`{word}`: write HOST or HOST:PORT with a port between 1 and 65535"
                        ));
                    }
                    word.to_string()
                }
                None => format!("{word}:1883"),
            };
            addresses.push(address);
        }
        if addresses.is_empty() {
            return Err(format!("`{key}` needs at least one HOST[:PORT]"));
        }
        self.bridge_mut(key, cursor)?.addresses = addresses;
        Ok(())
    }

    /// `topic PATTERN [[[out|in|both] QOS] LOCAL_PREFIX [REMOTE_PREFIX]]`, where `""`
    /// stands for an empty pattern or prefix.
    fn bridge_topic(&mut self, rest: &str, cursor: &Cursor) -> Result<(), String> {
        self.bridge_mut("topic", cursor)?;
        let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
        let Some(pattern) = words.next() else {
            return Err("`topic` needs a pattern: `topic PATTERN [out|in|both [QOS [LOCAL_PREFIX [REMOTE_PREFIX]]]]`".into());
        };
        // After the pattern (which may itself be `#`), a word starting with `#` starts a
        // comment.
        let words: Vec<&str> = words.take_while(|w| !w.starts_with('#')).collect();
        let direction = match words.first().map(|w| w.to_ascii_lowercase()) {
            None => BridgeDirection::Out,
            Some(w) if w == "out" => BridgeDirection::Out,
            Some(w) if w == "in" => BridgeDirection::In,
            Some(w) if w == "both" => BridgeDirection::Both,
            Some(_) => {
                return Err(format!(
                    "unknown `topic` direction `{}`: write out, in or both",
                    words[0]
                ));
            }
        };
        let qos = match words.get(1) {
            None => 0,
            Some(word) => match word.parse::<u8>() {
                Ok(qos) if qos <= 2 => qos,
                _ => {
                    return Err(format!("`topic` QoS must be 0, 1 or 2, found `{word}`"));
                }
            },
        };
        let prefix = |word: Option<&&str>| match word {
            None | Some(&"\"\"") => None,
            Some(word) => Some(word.to_string()),
        };
        let local_prefix = prefix(words.get(2));
        let remote_prefix = prefix(words.get(3));
        if words.len() > 4 {
            self.warn(format!(
                "ignoring `{}` after the remote prefix of `topic`; Mosquitto ignores it too",
                words[4..].join(" ")
            ));
        }
        for (side, prefix) in [("local", &local_prefix), ("remote", &remote_prefix)] {
            if let Some(prefix) = prefix
                && prefix.contains(['+', '#'])
            {
                return Err(format!(
                    "the {side} prefix `{prefix}` has a wildcard; prefixes are plain topic levels"
                ));
            }
        }
        let pattern = if pattern == "\"\"" { "" } else { pattern };
        if pattern.is_empty() && (local_prefix.is_none() || remote_prefix.is_none()) {
            return Err(
                "an empty pattern (`\"\"`) needs both a local and a remote prefix: `topic \"\" DIRECTION QOS LOCAL REMOTE`"
                    .into(),
            );
        }
        for prefix in [&local_prefix, &remote_prefix].into_iter().flatten() {
            let full = format!("{prefix}{pattern}");
            topic::parse_filter(&ByteString::from(full.as_str()))
                .map_err(|e| format!("prefix and pattern `{full}` make no valid filter: {e}"))?;
        }
        if local_prefix.is_none() && remote_prefix.is_none() {
            topic::parse_filter(&ByteString::from(pattern))
                .map_err(|e| format!("`topic` pattern: {e}"))?;
        }
        self.bridge_mut("topic", cursor)?.topics.push(BridgeTopic {
            pattern: pattern.to_string(),
            direction,
            qos,
            local_prefix: local_prefix.unwrap_or_default(),
            remote_prefix: remote_prefix.unwrap_or_default(),
        });
        Ok(())
    }

    /// `restart_timeout SECONDS` (a constant wait) or `restart_timeout BASE CAP` (a
    /// backoff from BASE up to CAP).
    fn restart_timeout(&mut self, rest: &str, cursor: &Cursor) -> Result<(), String> {
        self.bridge_mut("restart_timeout", cursor)?;
        let (base, more) = first_word(rest);
        let (cap, more) = first_word(more);
        let number = |word: &str| -> Result<i64, String> {
            word.parse()
                .map_err(|_| format!("`restart_timeout` needs whole seconds, found `{word}`"))
        };
        if base.is_empty() {
            return Err("`restart_timeout` needs a value: SECONDS or BASE CAP".into());
        }
        let mut base = number(base)?;
        if base < 1 {
            self.warn("`restart_timeout` below 1 second; using 1 second, as Mosquitto does");
            base = 1;
        }
        let cap = if cap.is_empty() || cap.starts_with('#') {
            None
        } else {
            let cap = number(cap)?;
            if cap < base {
                return Err(format!(
                    "the `restart_timeout` cap ({cap}) is lower than its base ({base})"
                ));
            }
            self.no_more("restart_timeout", more);
            Some(cap as u64)
        };
        let bridge = self.bridge_mut("restart_timeout", cursor)?;
        bridge.restart_timeout = Some(base as u64);
        bridge.restart_timeout_cap = cap;
        Ok(())
    }

    /// Applies what spans the whole file set (listeners, per-listener settings, limits,
    /// bridge checks) and returns the result or every error.
    fn finish(mut self) -> Result<Loaded, ConfError> {
        let mut drafts = std::mem::take(&mut self.listeners);
        if let Some(mut default) = self.default_listener.take() {
            let opened = self.default_port.is_some() || self.default_host.is_some();
            if opened || default.changed_at.is_some() {
                if !opened && let Some(at) = default.changed_at.clone() {
                    self.warnings.push(ConfWarning {
                        file: at.file,
                        line: at.line,
                        message: "this applies to Mosquitto's default listener, which it opens on port 1883 on every interface for it; write a `listener` line first if that is not what you want".into(),
                    });
                }
                default.config.port = self.default_port.unwrap_or(1883);
                default.config.host = self.default_host.clone().unwrap_or(default.config.host);
                drafts.push(default);
            } else {
                if let Some(at) = default.security.written_at.clone()
                    && self.per_listener_settings
                {
                    self.warnings.push(ConfWarning {
                        file: at.file,
                        line: at.line,
                        message: "with `per_listener_settings true` this applies to the listener above it, and there is none: it has no effect, as in Mosquitto; move it below a `listener` line".into(),
                    });
                }
                if let Some((_, at)) = default.max_connections.clone() {
                    self.warnings.push(ConfWarning {
                        file: at.file,
                        line: at.line,
                        message: "`max_connections` applies to the listener above it, and there is none: it has no effect, as in Mosquitto; move it below a `listener` line".into(),
                    });
                }
            }
        } else if self.default_port.is_some() || self.default_host.is_some() {
            let mut default = ListenerDraft::new("0.0.0.0", 1883, None);
            default.config.port = self.default_port.unwrap_or(1883);
            if let Some(host) = self.default_host.clone() {
                default.config.host = host;
            }
            drafts.push(default);
        }

        // Limits Mosquitto keeps per listener and Headwater for the whole broker.
        let limited: Vec<&(i64, Loc)> = drafts
            .iter()
            .filter_map(|d| d.max_connections.as_ref())
            .collect();
        if !limited.is_empty() {
            let total = if limited.iter().any(|(n, _)| *n < 0) {
                usize::MAX
            } else {
                limited.iter().fold(0usize, |total, (n, _)| {
                    total.saturating_add(usize::try_from(*n).unwrap_or(usize::MAX))
                })
            };
            self.config.max_connections = total;
            if let Some((_, at)) = limited.get(1) {
                let total = if total == usize::MAX {
                    "unlimited".to_string()
                } else {
                    total.to_string()
                };
                self.warnings.push(ConfWarning {
                    file: at.file.clone(),
                    line: at.line,
                    message: format!(
                        "headwater has one connection limit for all listeners: it is the sum of the listeners' `max_connections` ({total})"
                    ),
                });
            }
        }
        let aliases: Vec<u16> = drafts.iter().filter_map(|d| d.max_topic_alias).collect();
        if let Some(&smallest) = aliases.iter().min() {
            self.config.topic_alias_maximum = smallest;
        }

        // Mosquitto 2: anonymous clients are refused once a listener is configured, unless
        // `allow_anonymous true` is written; with no listener at all it listens on loopback
        // and accepts them (Headwater's own default for a loopback listener, except that
        // Headwater would refuse them once a password file is given, so say it).
        let local_only = !self.explicit_listener;
        let unwritten = if local_only { Some(true) } else { Some(false) };
        if self.per_listener_settings {
            for draft in &mut drafts {
                let security = std::mem::take(&mut draft.security);
                draft.config.allow_anonymous = security.allow_anonymous.or(if local_only {
                    security.password_file.as_ref().and(unwritten)
                } else {
                    unwritten
                });
                draft.config.password_file = security.password_file;
                draft.config.acl_file = security.acl_file;
            }
            self.config.per_listener_settings = true;
        } else {
            let security = std::mem::take(&mut self.global);
            self.config.allow_anonymous = security.allow_anonymous.or(if local_only {
                security.password_file.as_ref().and(unwritten)
            } else {
                unwritten
            });
            self.config.password_file = security.password_file;
            self.config.acl_file = security.acl_file;
        }
        if !drafts.is_empty() {
            self.config.listeners = drafts.into_iter().map(|d| d.config).collect();
        }

        for (bridge, at) in &self.bridges {
            let missing = if bridge.addresses.is_empty() {
                Some("an `address` line")
            } else if bridge.topics.is_empty() {
                Some("at least one `topic` line")
            } else {
                None
            };
            if let Some(missing) = missing {
                self.errors.push(ConfLineError {
                    file: at.file.clone(),
                    line: at.line,
                    message: format!(
                        "bridge `{}` needs {missing} after its `connection` line",
                        bridge.connection
                    ),
                });
            }
        }
        self.config.bridges = self.bridges.into_iter().map(|(b, _)| b).collect();

        if !self.errors.is_empty() {
            return Err(ConfError::Invalid(self.errors));
        }
        Ok(Loaded {
            config: self.config,
            data_dir: self.data_dir,
            warnings: self.warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::TlsConfig;

    /// Reads `text` as the main file `m.conf`.
    fn read(text: &str) -> Result<Loaded, ConfError> {
        let mut reader = Reader::default();
        reader.read_file(Path::new("m.conf"), text.as_bytes(), 0);
        reader.finish()
    }

    /// Turns the default settings into the expected ones.
    type Expect = fn(&mut BrokerConfig);

    /// `text` loads with exactly `warnings`, into the default settings changed by `expect`.
    fn check(text: &str, warnings: &[&str], expect: Expect) {
        let loaded = read(text).unwrap_or_else(|e| panic!("{text:?} failed:\n{e}"));
        let got: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(got, warnings, "warnings of {text:?}");
        let mut expected = BrokerConfig::default();
        expect(&mut expected);
        assert_eq!(loaded.config, expected, "settings of {text:?}");
    }

    /// `text` fails with exactly `errors`.
    fn check_errors(text: &str, errors: &[&str]) {
        match read(text) {
            Ok(loaded) => panic!("{text:?} loaded: {loaded:?}"),
            Err(ConfError::Invalid(got)) => {
                let got: Vec<String> = got.iter().map(ToString::to_string).collect();
                assert_eq!(got, errors, "errors of {text:?}");
            }
            Err(other) => panic!("{text:?}: {other}"),
        }
    }

    fn listener(host: &str, port: u16) -> ListenerConfig {
        ListenerConfig::tcp(host, port)
    }

    #[test]
    fn an_empty_file_is_mosquittos_default_loopback_listener() {
        check("", &[], |_| {});
        check("# only a comment\n\n   \n  # indented\n", &[], |_| {});
    }

    #[test]
    fn listener_lines_open_listeners_and_refuse_anonymous_clients_unless_written() {
        let cases: &[(&str, Expect)] = &[
            ("listener 1884", |c| {
                c.listeners = vec![listener("0.0.0.0", 1884)];
                c.allow_anonymous = Some(false);
            }),
            ("listener 1884 127.0.0.1\nallow_anonymous true", |c| {
                c.listeners = vec![listener("127.0.0.1", 1884)];
                c.allow_anonymous = Some(true);
            }),
            ("listener 1884 # a comment\r\nlistener 8883 ::1\n", |c| {
                c.listeners = vec![listener("0.0.0.0", 1884), listener("::1", 8883)];
                c.allow_anonymous = Some(false);
            }),
            // The deprecated default listener: `port` and `bind_address`, placed after the
            // `listener` lines, as Mosquitto does.
            ("port 1885\nlistener 1884\n", |c| {
                c.listeners = vec![listener("0.0.0.0", 1884), listener("0.0.0.0", 1885)];
                c.allow_anonymous = Some(false);
            }),
            ("bind_address 10.0.0.1\n", |c| {
                c.listeners = vec![listener("10.0.0.1", 1883)];
                c.allow_anonymous = Some(false);
            }),
        ];
        for (text, expect) in cases {
            check(text, &[], *expect);
        }
    }

    #[test]
    fn listener_scoped_keys_apply_to_the_listener_above_them() {
        check(
            "listener 1883 127.0.0.1\nlistener 8883\nprotocol mqtt\ncafile ca.pem\ncertfile server.pem\nkeyfile server.key\ncrlfile crl.pem\ntls_version tlsv1.3\nrequire_certificate true\nuse_identity_as_username true\nlistener 9001\nprotocol websockets\n",
            &[],
            |c| {
                let mut tls_listener = listener("0.0.0.0", 8883);
                tls_listener.tls = TlsConfig {
                    cafile: Some("ca.pem".into()),
                    certfile: Some("server.pem".into()),
                    keyfile: Some("server.key".into()),
                    crlfile: Some("crl.pem".into()),
                    tls_version: Some("tlsv1.3".into()),
                    require_certificate: true,
                    use_identity_as_username: true,
                };
                let mut ws = listener("0.0.0.0", 9001);
                ws.protocol = ListenerProtocol::Websockets;
                c.listeners = vec![listener("127.0.0.1", 1883), tls_listener, ws];
                c.allow_anonymous = Some(false);
            },
        );
    }

    #[test]
    fn a_listener_key_before_any_listener_opens_mosquittos_default_listener() {
        check(
            "protocol websockets\n",
            &[
                "m.conf:1: this applies to Mosquitto's default listener, which it opens on port 1883 on every interface for it; write a `listener` line first if that is not what you want",
            ],
            |c| {
                let mut default = listener("0.0.0.0", 1883);
                default.protocol = ListenerProtocol::Websockets;
                c.listeners = vec![default];
            },
        );
        // Default values open nothing, as in Mosquitto.
        check(
            "protocol mqtt\nmax_connections -1\nrequire_certificate false\nlistener 1884\n",
            &[
                "m.conf:2: `max_connections` applies to the listener above it, and there is none: it has no effect, as in Mosquitto; move it below a `listener` line",
            ],
            |c| {
                c.listeners = vec![listener("0.0.0.0", 1884)];
                c.allow_anonymous = Some(false);
            },
        );
        // With `port`, the keys before any listener configure that listener.
        check("certfile a.pem\nkeyfile a.key\nport 8883\n", &[], |c| {
            let mut default = listener("0.0.0.0", 8883);
            default.tls.certfile = Some("a.pem".into());
            default.tls.keyfile = Some("a.key".into());
            c.listeners = vec![default];
            c.allow_anonymous = Some(false);
        });
    }

    #[test]
    fn security_settings_are_global_without_per_listener_settings() {
        // Wherever they appear, as in Mosquitto.
        check(
            "listener 1883\nlistener 1884\npassword_file pw\nacl_file acl\nallow_anonymous true\n",
            &[],
            |c| {
                c.listeners = vec![listener("0.0.0.0", 1883), listener("0.0.0.0", 1884)];
                c.password_file = Some("pw".into());
                c.acl_file = Some("acl".into());
                c.allow_anonymous = Some(true);
            },
        );
        // No listener: loopback, and anonymous clients stay welcome next to a password
        // file, as in Mosquitto.
        check("password_file pw\n", &[], |c| {
            c.password_file = Some("pw".into());
            c.allow_anonymous = Some(true);
        });
        check("allow_anonymous false\n", &[], |c| {
            c.allow_anonymous = Some(false);
        });
    }

    #[test]
    fn per_listener_settings_move_security_to_each_listener() {
        check(
            "per_listener_settings true\nlistener 1883 127.0.0.1\nallow_anonymous true\nlistener 8883\npassword_file pw\nacl_file acl\n",
            &[],
            |c| {
                c.per_listener_settings = true;
                let mut open = listener("127.0.0.1", 1883);
                open.allow_anonymous = Some(true);
                let mut closed = listener("0.0.0.0", 8883);
                closed.allow_anonymous = Some(false);
                closed.password_file = Some("pw".into());
                closed.acl_file = Some("acl".into());
                c.listeners = vec![open, closed];
            },
        );
        check(
            "per_listener_settings true\nacl_file acl\nlistener 1883\n",
            &[
                "m.conf:2: with `per_listener_settings true` this applies to the listener above it, and there is none: it has no effect, as in Mosquitto; move it below a `listener` line",
            ],
            |c| {
                c.per_listener_settings = true;
                let mut l = listener("0.0.0.0", 1883);
                l.allow_anonymous = Some(false);
                c.listeners = vec![l];
            },
        );
        check_errors(
            "password_file pw\nper_listener_settings true\n",
            &[
                "m.conf:2: `per_listener_settings true` must come before any security setting (the first is at m.conf:1); move it to the top of the file",
            ],
        );
    }

    #[test]
    fn limits() {
        let cases: &[(&str, Expect)] = &[
            ("message_size_limit 1000", |c| c.message_size_limit = 1000),
            ("max_packet_size 2048", |c| c.max_packet_size = 2048),
            ("max_inflight_messages 5", |c| c.max_inflight_messages = 5),
            ("max_inflight_messages 0", |c| {
                c.max_inflight_messages = u16::MAX
            }),
            ("max_queued_messages 20", |c| c.max_queued_messages = 20),
            ("max_keepalive 120", |c| c.max_keepalive = 120),
            ("sys_interval 0", |c| c.sys_interval = 0),
            ("persistence true", |_| {}),
            ("persistence false", |c| c.persistence = Persistence::Memory),
            ("retained_persistence 0", |c| {
                c.persistence = Persistence::Memory
            }),
            ("listener 1883\nmax_connections 5\nmax_topic_alias 3", |c| {
                c.listeners = vec![listener("0.0.0.0", 1883)];
                c.allow_anonymous = Some(false);
                c.max_connections = 5;
                c.topic_alias_maximum = 3;
            }),
        ];
        for (text, expect) in cases {
            check(text, &[], *expect);
        }
        check(
            "listener 1883\nmax_connections 5\nlistener 1884\nmax_connections 7\n",
            &[
                "m.conf:4: headwater has one connection limit for all listeners: it is the sum of the listeners' `max_connections` (12)",
            ],
            |c| {
                c.listeners = vec![listener("0.0.0.0", 1883), listener("0.0.0.0", 1884)];
                c.allow_anonymous = Some(false);
                c.max_connections = 12;
            },
        );
        check(
            "max_queued_messages 0",
            &[
                "m.conf:1: `max_queued_messages 0` means no limit: the queue of a client that stays away grows on disk without bound; consider a limit",
            ],
            |c| c.max_queued_messages = usize::MAX,
        );
    }

    #[test]
    fn persistence_location_is_the_data_directory() {
        let loaded = read("persistence_location /var/lib/mosquitto/\n").unwrap();
        assert_eq!(loaded.data_dir, Some(PathBuf::from("/var/lib/mosquitto/")));
        assert_eq!(loaded.config.persistence, Persistence::Durable);
        assert_eq!(read("").unwrap().data_dir, None);
    }

    fn bridge(name: &str, addresses: &[&str], topics: Vec<BridgeTopic>) -> BridgeConfig {
        BridgeConfig::new(
            name,
            addresses.iter().map(ToString::to_string).collect(),
            topics,
        )
    }

    fn topic(
        pattern: &str,
        direction: BridgeDirection,
        qos: u8,
        local: &str,
        remote: &str,
    ) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn bridges() {
        check(
            "connection cloud\naddress broker.example.com:8883 10.0.0.2\ncleansession true\nremote_clientid hub\nremote_username u\nremote_password p w\nbridge_protocol_version mqttv50\nbridge_cafile ca.pem\nbridge_certfile c.pem\nbridge_keyfile c.key\nkeepalive_interval 30\nrestart_timeout 10 60\ntopic sensors/# out 1\n",
            &[],
            |c| {
                let mut b = bridge(
                    "cloud",
                    &["broker.example.com:8883", "10.0.0.2:1883"],
                    vec![topic("sensors/#", BridgeDirection::Out, 1, "", "")],
                );
                b.cleansession = true;
                b.remote_clientid = Some("hub".into());
                b.remote_username = Some("u".into());
                b.remote_password = Some("p w".into());
                b.bridge_protocol_version = Some("mqttv50".into());
                b.bridge_cafile = Some("ca.pem".into());
                b.bridge_certfile = Some("c.pem".into());
                b.bridge_keyfile = Some("c.key".into());
                b.keepalive_interval = Some(30);
                b.restart_timeout = Some(10);
                b.restart_timeout_cap = Some(60);
                c.bridges = vec![b];
            },
        );
        // Mosquitto's old names, a constant restart timeout and two bridges.
        check(
            "connection a\naddresses h1\nclientid id\nusername u\npassword p\nrestart_timeout 20\ntopic t\nconnection b\naddress h2:1884\ntopic t in\n",
            &[],
            |c| {
                let mut a = bridge(
                    "a",
                    &["h1:1883"],
                    vec![topic("t", BridgeDirection::Out, 0, "", "")],
                );
                a.remote_clientid = Some("id".into());
                a.remote_username = Some("u".into());
                a.remote_password = Some("p".into());
                a.restart_timeout = Some(20);
                let b = bridge(
                    "b",
                    &["h2:1884"],
                    vec![topic("t", BridgeDirection::In, 0, "", "")],
                );
                c.bridges = vec![a, b];
            },
        );
    }

    #[test]
    fn a_topic_lines_optional_parts_and_empty_placeholders() {
        let cases: &[(&str, BridgeTopic)] = &[
            ("topic #", topic("#", BridgeDirection::Out, 0, "", "")),
            (
                "topic a/+ BOTH",
                topic("a/+", BridgeDirection::Both, 0, "", ""),
            ),
            ("topic a in 2", topic("a", BridgeDirection::In, 2, "", "")),
            (
                "topic a in 2 l/",
                topic("a", BridgeDirection::In, 2, "l/", ""),
            ),
            (
                "topic a out 1 l/ r/",
                topic("a", BridgeDirection::Out, 1, "l/", "r/"),
            ),
            (
                "topic a out 1 \"\" r/",
                topic("a", BridgeDirection::Out, 1, "", "r/"),
            ),
            (
                "topic a out 1 l/ \"\"",
                topic("a", BridgeDirection::Out, 1, "l/", ""),
            ),
            (
                "topic \"\" in 0 local/t remote/t",
                topic("", BridgeDirection::In, 0, "local/t", "remote/t"),
            ),
            (
                "topic a out # a comment",
                topic("a", BridgeDirection::Out, 0, "", ""),
            ),
            (
                "topic clients/total in 0 test/mosquitto/org/ $SYS/broker/",
                topic(
                    "clients/total",
                    BridgeDirection::In,
                    0,
                    "test/mosquitto/org/",
                    "$SYS/broker/",
                ),
            ),
        ];
        for (line, expected) in cases {
            let text = format!("connection b\naddress h\n{line}\n");
            let loaded = read(&text).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(loaded.warnings.is_empty(), "{line}: {:?}", loaded.warnings);
            assert_eq!(
                loaded.config.bridges[0].topics,
                vec![expected.clone()],
                "{line}"
            );
        }
    }

    #[test]
    fn malformed_lines_are_errors_and_all_are_reported() {
        check_errors(
            "listener\nlistener abc\nlistener 0\nlistener 70000\nport x\nmax_inflight_messages many\nmax_keepalive 5\nmax_packet_size 10\nsys_interval\npersistence yes\nprotocol mqtts\ntls_version tlsv9\nallow_anonymous\npassword_file\n",
            &[
                "m.conf:1: `listener` needs a port: `listener PORT [ADDRESS]`",
                "m.conf:2: `listener` needs a port number, found `abc`",
                "m.conf:3: `listener 0 PATH` is a Unix socket in Mosquitto, which headwater does not support; give a TCP port",
                "m.conf:4: `listener` port must be between 1 and 65535, found 70000",
                "m.conf:5: `port` needs a whole number, found `x`",
                "m.conf:6: `max_inflight_messages` needs a whole number, found `many`",
                "m.conf:7: `max_keepalive` must be between 10 and 65535, found 5",
                "m.conf:8: `max_packet_size` must be between 20 and 2147483647, found 10",
                "m.conf:9: `sys_interval` needs a number",
                "m.conf:10: `persistence` must be true or false, found `yes`",
                "m.conf:11: unknown protocol `mqtts`: write mqtt or websockets",
                "m.conf:12: unknown `tls_version` `tlsv9`: write tlsv1.3, tlsv1.2 or tlsv1.1",
                "m.conf:13: `allow_anonymous` needs a value: true or false",
                "m.conf:14: `password_file` needs a value",
            ],
        );
        check_errors(
            "password_file a\npassword_file b\nlistener 1883\nlistener 1883\n",
            &[
                "m.conf:2: `password_file` is already set at m.conf:1; keep one of the two lines",
                "m.conf:4: a listener on port 1883 is already declared at m.conf:3; remove one of them",
            ],
        );
    }

    #[test]
    fn malformed_bridges_are_errors() {
        check_errors(
            "address h\ntopic t\ncleansession true\nconnection a\naddress h1,h2\ntopic t sideways\ntopic t out 3\ntopic t out 0 l/+ r/\ntopic \"\" in 0 l/\ntopic a/#/b\nrestart_timeout 10 5\nconnection a\nconnection c\n",
            &[
                "m.conf:1: `address` belongs to a bridge: write it after a `connection NAME` line",
                "m.conf:2: `topic` belongs to a bridge: write it after a `connection NAME` line",
                "m.conf:3: `cleansession` belongs to a bridge: write it after a `connection NAME` line",
                "m.conf:5: `h1,h2`: separate bridge addresses with spaces, as Mosquitto reads them",
                "m.conf:6: unknown `topic` direction `sideways`: write out, in or both",
                "m.conf:7: `topic` QoS must be 0, 1 or 2, found `3`",
                "m.conf:8: the local prefix `l/+` has a wildcard; prefixes are plain topic levels",
                "m.conf:9: an empty pattern (`\"\"`) needs both a local and a remote prefix: `topic \"\" DIRECTION QOS LOCAL REMOTE`",
                "m.conf:10: `topic` pattern: `a/#/b`: `#` must be a whole level and the last one [MQTT-4.7.1-2]",
                "m.conf:11: the `restart_timeout` cap (5) is lower than its base (10)",
                "m.conf:12: a bridge named `a` is already declared at m.conf:4; give each bridge its own name",
                "m.conf:4: bridge `a` needs an `address` line after its `connection` line",
                "m.conf:12: bridge `a` needs an `address` line after its `connection` line",
                "m.conf:13: bridge `c` needs an `address` line after its `connection` line",
            ],
        );
    }

    #[test]
    fn security_keys_headwater_cannot_honour_are_errors() {
        for key in [
            "auth_plugin /usr/lib/x.so",
            "plugin /usr/lib/mosquitto_dynamic_security.so",
            "plugin_opt_config_file dynsec.json",
            "auth_opt_backends mysql",
            "psk_file psk",
            "psk_hint hint",
            "use_subject_as_username true",
            "use_username_as_clientid true",
            "ciphers ECDHE",
            "ciphers_tls1.3 TLS_AES_128_GCM_SHA256",
            "dhparamfile dh.pem",
            "capath /etc/ssl/certs",
            "tls_engine tpm",
            "tls_keyform engine",
            "ocsp_stapling true",
            "clientid_prefixes secure-",
        ] {
            let name = key.split(' ').next().unwrap();
            let Err(ConfError::Invalid(errors)) = read(&format!("listener 1883\n{key}\n")) else {
                panic!("{key} was accepted");
            };
            assert_eq!(errors.len(), 1, "{key}: {errors:?}");
            assert_eq!(errors[0].line, 2, "{key}");
            assert!(
                errors[0].message.starts_with(&format!("`{name}`: ")),
                "{key}: {}",
                errors[0].message
            );
        }
        check_errors(
            "listener 1883\nrequire_certificate maybe\nmount_point tenant/\n",
            &[
                "m.conf:2: `require_certificate` must be true or false, found `maybe`",
                "m.conf:3: `mount_point`: mount points are not supported by headwater, and without them these clients would see every topic; remove the line or use an ACL",
            ],
        );
    }

    #[test]
    fn keys_without_meaning_here_are_warnings_that_say_why() {
        check(
            "pid_file /run/mosquitto/mosquitto.pid\nuser mosquitto\nlog_dest file /var/log/mosquitto/mosquitto.log\nlog_type all\nautosave_interval 60\npersistence_file m.db\nlisten 1883\n",
            &[
                "m.conf:1: `pid_file` is ignored: headwater writes no pid file; systemd (or whatever starts it) tracks the process",
                "m.conf:2: `user` is ignored: headwater does not switch users; it runs as the user that starts it (systemd's `User=`)",
                "m.conf:3: `log_dest` is ignored: headwater logs to stderr (the journal under systemd); set the level with RUST_LOG and the format with --log-format",
                "m.conf:4: `log_type` is ignored: headwater logs to stderr (the journal under systemd); set the level with RUST_LOG and the format with --log-format",
                "m.conf:5: `autosave_interval` is ignored: headwater writes every acknowledged message before acknowledging it, so there is nothing to autosave",
                "m.conf:6: `persistence_file` is ignored: headwater keeps its store in the directory `broker` under `persistence_location`, not in one file",
                "m.conf:7: unknown key `listen`; headwater ignores it (Mosquitto would refuse to start): check its spelling",
            ],
            |_| {},
        );
        // Their values are still checked the way Mosquitto checks them.
        check_errors(
            "log_dest paper\nlog_dest file\nautosave_on_changes perhaps\nconnection b\naddress h\ntopic t\nstart_type manual\nlocal_clientid\n",
            &[
                "m.conf:1: `log_dest` must be one of none, syslog, stdout, stderr, topic, dlt, file, found `paper`",
                "m.conf:2: `log_dest file` needs the file's path",
                "m.conf:3: `autosave_on_changes` must be true or false, found `perhaps`",
                "m.conf:7: `start_type` must be one of automatic, lazy, once, found `manual`",
                "m.conf:8: `local_clientid` needs a value",
            ],
        );
        check_errors(
            "notifications false\n",
            &[
                "m.conf:1: `notifications` belongs to a bridge: write it after a `connection NAME` line",
            ],
        );
    }

    #[test]
    fn include_dir_reads_conf_files_in_mosquittos_order_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        // Each file opens one listener; their order shows the reading order. A file starts
        // outside the main file's listener: its `protocol` goes to Mosquitto's default
        // listener, opened by `port` in the main file.
        for (name, port) in [
            ("b.conf", 6),
            ("A.conf", 3),
            ("01.conf", 2),
            ("a.conf", 4),
            ("B.conf", 5),
            ("00.conf", 1),
        ] {
            std::fs::write(conf_d.join(name), format!("listener {port}\n")).unwrap();
        }
        std::fs::write(conf_d.join("README"), "not read\n").unwrap();
        std::fs::write(conf_d.join(".conf"), "not read either\n").unwrap();
        std::fs::write(
            conf_d.join("z.conf"),
            "protocol websockets\ninclude_dir /nowhere\nsys_interval x\n",
        )
        .unwrap();
        let main = dir.path().join("mosquitto.conf");
        std::fs::write(
            &main,
            format!(
                "port 1883\nlistener 9\ninclude_dir {}\nlistener 10\nallow_anonymous true\n",
                conf_d.display()
            ),
        )
        .unwrap();
        let err = load(&main).unwrap_err();
        let z = conf_d.join("z.conf");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: `sys_interval` needs a whole number, found `x`",
                z.display()
            )
        );
        std::fs::write(&z, "protocol websockets\ninclude_dir /nowhere\n").unwrap();
        let loaded = load(&main).unwrap();
        let ports: Vec<u16> = loaded.config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [9, 1, 2, 3, 4, 5, 6, 10, 1883]);
        assert_eq!(
            loaded.config.listeners[8].protocol,
            ListenerProtocol::Websockets
        );
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [format!(
                "{}:2: `include_dir` is read only in the main file, as in Mosquitto; this one is ignored",
                z.display()
            )]
        );

        std::fs::write(&main, "include_dir /no/such/dir\n").unwrap();
        let err = load(&main).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}:1: cannot open include_dir `/no/such/dir`: ",
                main.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn mosquitto_sorts_included_files_case_insensitively_upper_case_first() {
        let mut names = vec!["b.conf", "A.conf", "01.conf", "a.conf", "B.conf", "00.conf"];
        names.sort_by(|a, b| mosquitto_order(a, b));
        assert_eq!(
            names,
            ["00.conf", "01.conf", "A.conf", "a.conf", "B.conf", "b.conf"]
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let err = read("port\nmax_keepalive\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.conf:1: `port` needs a number\nm.conf:2: `max_keepalive` needs a number"
        );
    }
}
