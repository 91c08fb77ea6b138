//! Bridges from the built-in broker to remote brokers, with Mosquitto's settings and
//! meanings (`connection`, `address`, `topic PATTERN in|out|both QOS LOCAL REMOTE`, ...).
//!
//! A bridge is two clients glued together:
//! - towards the built-in broker, an in-process client with a persistent session
//!   (`local.<remote_clientid>`), subscribed with `no_local` to what goes `out`. While
//!   the remote is away, the broker queues those messages durably in that session, and
//!   the bridge acknowledges a QoS 1/2 delivery only once the remote acknowledged the
//!   forwarded copy: nothing acknowledged is lost to an outage, a restart or a crash.
//!   What comes `in` is published on the broker as sent by that same client id, so
//!   `no_local` keeps it from going straight back out;
//! - towards the remote, an MQTT client (`wire`, optionally over TLS) that tries the
//!   addresses in turn, keeps the connection alive, reconnects with Mosquitto's
//!   backoff, and avoids echoes: `no_local` on MQTT 5, Mosquitto's bridge bit on 3.1 and
//!   3.1.1, and where a remote refuses that bit, a memory of what was just forwarded.
//!
//! The bridge's state is `$SYS/broker/connection/<remote_clientid>/state`, retained,
//! `1` while connected and `0` otherwise, as Mosquitto publishes it.

mod tls;
mod wire;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{MessageProperties, Packet, Publish, Qos, SubscriptionOptions, Version, Will};
use super::{BridgeConfig, BridgeDirection, Broker, LinkError, LocalClient, LocalConnect, topic};
use wire::{Ack, Incoming};

/// QoS 1/2 messages in flight each way: deliveries from the built-in broker awaiting
/// the remote's acknowledgement, and publishes to the remote awaiting it. Also keeps
/// what the bridge sends on the in-process link (acknowledgements only) well under the
/// link's channel depth, so neither side ever waits on the other.
const WINDOW: u16 = 64;

/// Bytes queued for the remote before the bridge stops taking deliveries from the
/// built-in broker (a slow remote holds messages back in the durable queue, not here).
const MAX_UNSENT_BYTES: usize = 1 << 20;

/// Forwarded messages remembered to recognise their echo from a remote that ignores
/// the bridge bit.
const ECHO_MEMORY: usize = 4096;

/// Largest packet accepted from the remote: MQTT's own limit (256 MiB of remaining
/// length); what the built-in broker's clients cannot take is dropped per client there.
const MAX_PACKET: usize = 268_435_460;

/// Runs one bridge until `shutdown`; reconnects with backoff; never returns early on
/// remote errors. A bridge whose settings are invalid logs why and waits for shutdown.
///
/// `attached` is sent once the bridge's local session is attached and subscribed (or
/// dropped if the bridge cannot start), so the broker can hold its listeners until then:
/// a message published at start-up must not miss the bridge's subscriptions.
pub async fn run(
    broker: Broker,
    config: BridgeConfig,
    shutdown: CancellationToken,
    attached: tokio::sync::oneshot::Sender<()>,
) {
    let problems = validate(&config);
    if !problems.is_empty() {
        for problem in &problems {
            tracing::error!(bridge = %config.connection, "bridge not started: {problem}");
        }
        shutdown.cancelled().await;
        return;
    }
    let plan = Arc::new(Plan::new(config, &hostname()));
    let bridge = Bridge {
        broker,
        plan,
        bridge_bit: true,
    };
    bridge.run(shutdown, attached).await;
}

/// Pure checks of a bridge config: every problem, each as `field: what to do`, with the
/// field's path inside the bridge (`topics[1].qos`).
pub fn validate(config: &BridgeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| problems.push(format!("{field}: {message}"));
    let name = &config.connection;
    if name.is_empty() || name.contains(['+', '#', '/', '\0']) || name.contains(char::is_whitespace)
    {
        problem(
            "connection".into(),
            format!("`{name}` cannot name a bridge; use letters, digits, `-`, `_` or `.`"),
        );
    }
    if config.addresses.iter().all(|a| a.trim().is_empty()) {
        problem(
            "addresses".into(),
            "give at least one remote address, as in `broker.example.com:1883`".into(),
        );
    }
    for (i, address) in config.addresses.iter().enumerate() {
        for one in address.split_whitespace() {
            if let Err(e) = parse_address(one) {
                problem(format!("addresses[{i}]"), e);
            }
        }
    }
    if config.topics.is_empty() {
        problem(
            "topics".into(),
            "a bridge needs at least one topic, as in `{ pattern: \"sensors/#\", direction: out }`"
                .into(),
        );
    }
    for (i, line) in config.topics.iter().enumerate() {
        for (field, message) in check_topic_line(line) {
            problem(format!("topics[{i}].{field}"), message);
        }
    }
    if let Some(id) = &config.remote_clientid
        && (id.is_empty() || id.len() > 65535 || id.contains(['+', '#', '\0']))
    {
        problem(
            "remote_clientid".into(),
            format!(
                "`{id}` cannot be a client id here (empty, too long, or `+`, `#`, NUL); leave it out for HOSTNAME.CONNECTION"
            ),
        );
    }
    if config.remote_password.is_some() && config.remote_username.is_none() {
        problem(
            "remote_password".into(),
            "a password needs `remote_username` too (MQTT sends no password without a user name)"
                .into(),
        );
    }
    if let Some(version) = &config.bridge_protocol_version
        && parse_version(version).is_none()
    {
        problem(
            "bridge_protocol_version".into(),
            format!("`{version}` is not a protocol version; write mqttv311, mqttv31 or mqttv50"),
        );
    }
    if config.bridge_certfile.is_some() != config.bridge_keyfile.is_some() {
        problem(
            if config.bridge_certfile.is_some() {
                "bridge_keyfile"
            } else {
                "bridge_certfile"
            }
            .into(),
            "`bridge_certfile` and `bridge_keyfile` go together; set both or neither".into(),
        );
    }
    if config.bridge_cafile.is_none() {
        let tls_only = [
            ("bridge_certfile", config.bridge_certfile.is_some()),
            ("bridge_keyfile", config.bridge_keyfile.is_some()),
            ("bridge_insecure", config.bridge_insecure),
        ];
        for (field, _) in tls_only.iter().filter(|(_, set)| *set) {
            problem(
                (*field).into(),
                format!(
                    "`{field}` needs TLS, which `bridge_cafile` turns on; set `bridge_cafile` to the remote's CA certificates"
                ),
            );
        }
    }
    if let Some(keepalive) = config.keepalive_interval
        && keepalive < 5
    {
        problem(
            "keepalive_interval".into(),
            format!("{keepalive} s is below the minimum of 5 s"),
        );
    }
    if config.restart_timeout == Some(0) {
        problem(
            "restart_timeout".into(),
            "wait at least 1 s between connection attempts".into(),
        );
    }
    if let Some(cap) = config.restart_timeout_cap
        && cap < config.restart_timeout.unwrap_or(5).max(1)
    {
        problem(
            "restart_timeout_cap".into(),
            format!(
                "the cap ({cap} s) is below the first wait ({} s); raise it",
                config.restart_timeout.unwrap_or(5)
            ),
        );
    }
    problems
}

/// The bridge's client id on the remote: `remote_clientid`, else `HOSTNAME.CONNECTION`
/// (Mosquitto's default).
pub fn remote_client_id(config: &BridgeConfig, hostname: &str) -> String {
    config
        .remote_clientid
        .clone()
        .unwrap_or_else(|| format!("{hostname}.{}", config.connection))
}

/// Where the bridge's state (`1` connected, `0` not) is published, retained, on the
/// built-in broker: Mosquitto's `$SYS/broker/connection/<remote_clientid>/state`.
pub fn state_topic(config: &BridgeConfig) -> String {
    format!(
        "$SYS/broker/connection/{}/state",
        remote_client_id(config, &hostname())
    )
}

/// This machine's host name, as Mosquitto uses it in a bridge's default client id.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the slice below stops at the first NUL or the end.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "headwater".into(),
    }
}

fn parse_version(version: &str) -> Option<Version> {
    match version {
        "mqttv31" => Some(Version::V31),
        "mqttv311" => Some(Version::V311),
        "mqttv50" => Some(Version::V5),
        _ => None,
    }
}

/// `host`, `host:port`, `[v6]:port` or, as Mosquitto reads it, `v6:port` (the port is
/// then required); default port 1883.
fn parse_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{address}`: unclosed `[` around the IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("`{address}`: write `[ADDRESS]:PORT`")),
        }
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(format!(
            "`{address}`: name a host, as in `broker.example.com:1883`"
        ));
    }
    let port = match port {
        None => 1883,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{address}`: the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// The problems of one `topic` line, as (field, message).
fn check_topic_line(line: &super::BridgeTopic) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if line.qos > 2 {
        problems.push(("qos", format!("qos is 0, 1 or 2, not {}", line.qos)));
    }
    for (field, prefix) in [
        ("local_prefix", &line.local_prefix),
        ("remote_prefix", &line.remote_prefix),
    ] {
        if prefix.contains(['+', '#', '\0']) {
            problems.push((
                field,
                format!("`{prefix}` holds a wildcard or NUL; a prefix is plain topic levels, as in `home/`"),
            ));
        }
    }
    if line.pattern.is_empty() {
        // Mosquitto's table: an empty pattern maps one local topic onto one remote
        // topic, so both prefixes must be there.
        if line.local_prefix.is_empty() || line.remote_prefix.is_empty() {
            problems.push((
                "pattern",
                "an empty pattern maps the local prefix onto the remote prefix; give both prefixes, or a pattern".into(),
            ));
        }
        return problems;
    }
    if line.pattern.starts_with("$share/") {
        problems.push((
            "pattern",
            format!(
                "`{}`: a bridge cannot use a shared subscription",
                line.pattern
            ),
        ));
        return problems;
    }
    if let Err(e) = topic::parse_filter(&ByteString::from(line.pattern.as_str())) {
        problems.push(("pattern", e));
        return problems;
    }
    for (field, prefix) in [
        ("local_prefix", &line.local_prefix),
        ("remote_prefix", &line.remote_prefix),
    ] {
        let full = format!("{prefix}{}", line.pattern);
        if !prefix.contains(['+', '#'])
            && let Err(e) = topic::parse_filter(&ByteString::from(full.as_str()))
        {
            problems.push((
                field,
                format!(
                    "`{prefix}` before `{}` makes an invalid filter ({e}); end the prefix with `/`",
                    line.pattern
                ),
            ));
        }
    }
    problems
}

/// A remote address, parsed.
#[derive(Clone, Debug)]
struct Address {
    host: String,
    port: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One `topic` line, with its full filters on both sides.
#[derive(Clone, Debug)]
struct Line {
    direction: BridgeDirection,
    qos: Qos,
    local_prefix: String,
    remote_prefix: String,
    /// `local_prefix + pattern`: subscribed on the built-in broker (`out`, `both`).
    local_filter: String,
    /// `remote_prefix + pattern`: subscribed on the remote (`in`, `both`).
    remote_filter: String,
}

impl Line {
    fn goes_out(&self) -> bool {
        self.direction != BridgeDirection::In
    }

    fn comes_in(&self) -> bool {
        self.direction != BridgeDirection::Out
    }
}

/// A validated bridge, ready to run.
struct Plan {
    config: BridgeConfig,
    version: Version,
    addresses: Vec<Address>,
    remote_client_id: String,
    local_client_id: ByteString,
    state_topic: String,
    keep_alive: u16,
    lines: Vec<Line>,
}

impl Plan {
    /// Builds the plan of a config that passed [`validate`].
    fn new(config: BridgeConfig, hostname: &str) -> Plan {
        let remote_client_id = remote_client_id(&config, hostname);
        let lines = config
            .topics
            .iter()
            .map(|t| Line {
                direction: t.direction,
                qos: Qos::from_u8(t.qos).unwrap_or(Qos::AtMostOnce),
                local_prefix: t.local_prefix.clone(),
                remote_prefix: t.remote_prefix.clone(),
                local_filter: format!("{}{}", t.local_prefix, t.pattern),
                remote_filter: format!("{}{}", t.remote_prefix, t.pattern),
            })
            .collect();
        Plan {
            version: config
                .bridge_protocol_version
                .as_deref()
                .and_then(parse_version)
                .unwrap_or(Version::V311),
            addresses: config
                .addresses
                .iter()
                .flat_map(|a| a.split_whitespace())
                .filter_map(|a| parse_address(a).ok())
                .map(|(host, port)| Address { host, port })
                .collect(),
            local_client_id: format!("local.{remote_client_id}").into(),
            state_topic: format!("$SYS/broker/connection/{remote_client_id}/state"),
            keep_alive: config.keepalive_interval.unwrap_or(60).max(5),
            remote_client_id,
            lines,
            config,
        }
    }

    /// The remote topic of a local message: the first `out`/`both` line whose local
    /// filter matches, local prefix swapped for the remote one (Mosquitto's rule).
    fn to_remote(&self, local_topic: &str) -> Option<String> {
        self.lines
            .iter()
            .filter(|l| l.goes_out() && topic::matches(&l.local_filter, local_topic))
            .find_map(|l| {
                let rest = local_topic.strip_prefix(l.local_prefix.as_str())?;
                Some(format!("{}{rest}", l.remote_prefix))
            })
    }

    /// The local topic of a remote message: the first `in`/`both` line whose remote
    /// filter matches, remote prefix swapped for the local one.
    fn to_local(&self, remote_topic: &str) -> Option<String> {
        self.lines
            .iter()
            .filter(|l| l.comes_in() && topic::matches(&l.remote_filter, remote_topic))
            .find_map(|l| {
                let rest = remote_topic.strip_prefix(l.remote_prefix.as_str())?;
                Some(format!("{}{rest}", l.local_prefix))
            })
    }

    /// Whether the remote sends us messages on `remote_topic` (an echo is possible).
    fn subscribed_remotely(&self, remote_topic: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.comes_in() && topic::matches(&l.remote_filter, remote_topic))
    }

    /// Local subscriptions: one per distinct filter, at the highest QoS asked.
    fn local_subscriptions(&self) -> Vec<(String, SubscriptionOptions)> {
        let mut subscriptions: Vec<(String, SubscriptionOptions)> = Vec::new();
        for line in self.lines.iter().filter(|l| l.goes_out()) {
            match subscriptions
                .iter_mut()
                .find(|(filter, _)| *filter == line.local_filter)
            {
                Some((_, options)) => options.qos = options.qos.max(line.qos),
                None => subscriptions.push((
                    line.local_filter.clone(),
                    SubscriptionOptions {
                        qos: line.qos,
                        // What the bridge brings in must not go straight back out.
                        no_local: true,
                        retain_as_published: true,
                        // Retained messages go out when the subscription is new, not
                        // again on every restart of the bridge.
                        retain_handling: 1,
                    },
                )),
            }
        }
        subscriptions
    }

    /// Remote subscriptions (`in`, `both`), one per distinct filter.
    fn remote_subscriptions(&self, echo_free: bool) -> Vec<wire::SubscribeFilter> {
        let mut subscriptions: Vec<wire::SubscribeFilter> = Vec::new();
        for line in self.lines.iter().filter(|l| l.comes_in()) {
            match subscriptions
                .iter_mut()
                .find(|s| s.filter == line.remote_filter)
            {
                Some(s) => s.qos = s.qos.max(line.qos),
                None => subscriptions.push(wire::SubscribeFilter {
                    filter: line.remote_filter.clone(),
                    qos: line.qos,
                    no_local: echo_free,
                    retain_as_published: true,
                    retain_handling: 1,
                }),
            }
        }
        subscriptions
    }

    /// Remote filters of `out`-only lines: unsubscribed on the remote at connect, so a
    /// line turned from `in` to `out` stops bringing messages in (Mosquitto's
    /// `bridge_attempt_unsubscribe`).
    fn remote_unsubscriptions(&self) -> Vec<String> {
        let subscribed: HashSet<&str> = self
            .lines
            .iter()
            .filter(|l| l.comes_in())
            .map(|l| l.remote_filter.as_str())
            .collect();
        let mut filters: Vec<String> = self
            .lines
            .iter()
            .filter(|l| !l.comes_in() && !subscribed.contains(l.remote_filter.as_str()))
            .map(|l| l.remote_filter.clone())
            .collect();
        filters.dedup();
        filters
    }
}

/// Delays between connection attempts: Mosquitto's `restart_timeout`, either constant
/// or "decorrelated jitter" from a base up to a cap (default 5 s up to 30 s).
#[derive(Debug)]
struct Backoff {
    base: Duration,
    cap: Option<Duration>,
    current: Duration,
    rng: u64,
}

impl Backoff {
    fn new(config: &BridgeConfig) -> Backoff {
        let (base, cap) = match (config.restart_timeout, config.restart_timeout_cap) {
            (None, None) => (5, Some(30)),
            (Some(base), None) => (base, None),
            (base, Some(cap)) => (base.unwrap_or(5), Some(cap)),
        };
        let base = Duration::from_secs(base.max(1));
        Backoff {
            base,
            cap: cap.map(Duration::from_secs),
            current: base,
            rng: super::now_ms() | 1,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let Some(cap) = self.cap else {
            return self.base;
        };
        let upper = (self.current * 3).min(cap).max(self.base);
        let span = (upper - self.base).as_millis() as u64;
        // xorshift64: jitter only spreads reconnecting bridges apart, it needs no
        // cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = if span == 0 { 0 } else { self.rng % (span + 1) };
        self.current = self.base + Duration::from_millis(jitter);
        self.current
    }

    fn reset(&mut self) {
        self.current = self.base;
    }
}

/// A byte stream to the remote: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxedStream = Box<dyn Stream>;

/// A remote connection just accepted (CONNACK received).
struct Connected {
    reader: ReadHalf<BoxedStream>,
    writer: WriteHalf<BoxedStream>,
    /// Bytes read after the CONNACK.
    leftover: BytesMut,
    ack: wire::ConnAck,
    address: Address,
    /// The remote does not send our own messages back (v5 `no_local`, or a v3 remote
    /// that accepted the bridge bit).
    echo_free: bool,
    /// The bridge bit was refused: later attempts go without it.
    bridge_bit_refused: bool,
}

/// Why one connection attempt failed.
enum AttemptError {
    /// A v3 remote refused the bridge bit (CONNACK 1, or it closed before CONNACK).
    BridgeBitRefused(String),
    /// Anything else.
    Failed(String),
}

/// Tries every address in turn, the first (main) one first; `Err` lists why each
/// failed.
async fn connect(plan: Arc<Plan>, bridge_bit: bool) -> Result<Connected, String> {
    let tls = tls::client_config(&plan.config)?;
    let limit = Duration::from_secs(u64::from(plan.keep_alive));
    let mut failures = Vec::new();
    for address in &plan.addresses {
        let mut bit = bridge_bit && plan.version != Version::V5;
        loop {
            let attempt = attempt(&plan, address, tls.clone(), bit);
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(mut connected)) => {
                    connected.bridge_bit_refused = bridge_bit && !bit;
                    return Ok(connected);
                }
                Ok(Err(AttemptError::BridgeBitRefused(why))) if bit => {
                    tracing::warn!(
                        bridge = %plan.config.connection,
                        %address,
                        "the remote broker refused the bridge bit ({why}); connecting as an ordinary client, and dropping the echoes of forwarded messages instead"
                    );
                    bit = false;
                }
                Ok(Err(AttemptError::BridgeBitRefused(why) | AttemptError::Failed(why))) => {
                    failures.push(format!("{address}: {why}"));
                    break;
                }
                Err(_) => {
                    failures.push(format!("{address}: no CONNACK within {limit:?}"));
                    break;
                }
            }
        }
    }
    Err(failures.join("; "))
}

/// One connection attempt to `address`: TCP, TLS, CONNECT, CONNACK.
async fn attempt(
    plan: &Plan,
    address: &Address,
    tls: Option<Arc<rustls::ClientConfig>>,
    bridge_bit: bool,
) -> Result<Connected, AttemptError> {
    let failed = |e: String| AttemptError::Failed(e);
    let tcp = TcpStream::connect((address.host.as_str(), address.port))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream: BoxedStream = match tls {
        Some(config) => {
            let name = tls::server_name(&address.host).map_err(failed)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| failed(format!("tls: {e}")))?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let config = &plan.config;
    let mut out = BytesMut::new();
    wire::encode_connect(
        &wire::ConnectOptions {
            version: plan.version,
            bridge_bit,
            client_id: plan.remote_client_id.clone(),
            clean_start: config.cleansession,
            keep_alive: plan.keep_alive,
            // A persistent session on the remote keeps queuing for us while the link
            // is down; with `cleansession` it ends with the connection.
            session_expiry: if config.cleansession { 0 } else { u32::MAX },
            receive_max: WINDOW,
            max_packet_size: MAX_PACKET as u32,
            will: None::<Will>,
            username: config.remote_username.clone(),
            password: config.remote_password.clone(),
        },
        &mut out,
    );
    writer
        .write_all(&out)
        .await
        .map_err(|e| failed(e.to_string()))?;
    writer.flush().await.map_err(|e| failed(e.to_string()))?;
    let mut inbuf = BytesMut::with_capacity(256);
    let refused_bit = |why: String| {
        if bridge_bit {
            AttemptError::BridgeBitRefused(why)
        } else {
            AttemptError::Failed(why)
        }
    };
    loop {
        match wire::decode(plan.version, &mut inbuf, 65_536) {
            Ok(Some(Incoming::ConnAck(ack))) if ack.accepted() => {
                return Ok(Connected {
                    reader,
                    writer,
                    leftover: inbuf,
                    echo_free: plan.version == Version::V5 || bridge_bit,
                    ack,
                    address: address.clone(),
                    bridge_bit_refused: false,
                });
            }
            Ok(Some(Incoming::ConnAck(ack))) if ack.code == 1 && plan.version != Version::V5 => {
                return Err(refused_bit(connack_reason(plan.version, ack.code)));
            }
            Ok(Some(Incoming::ConnAck(ack))) => {
                return Err(failed(connack_reason(plan.version, ack.code)));
            }
            Ok(Some(other)) => return Err(failed(format!("expected CONNACK, got {other:?}"))),
            Ok(None) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
        match reader.read_buf(&mut inbuf).await {
            Ok(0) => return Err(refused_bit("closed the connection before CONNACK".into())),
            Ok(_) => {}
            Err(e) => return Err(refused_bit(e.to_string())),
        }
    }
}

/// A refusing CONNACK's code, in words.
fn connack_reason(version: Version, code: u8) -> String {
    let words = match (version, code) {
        (Version::V5, 0x84) | (_, 1) => "unsupported protocol version",
        (Version::V5, 0x85) | (_, 2) => "client id refused",
        (Version::V5, 0x88) | (_, 3) => "server unavailable",
        (Version::V5, 0x86) | (_, 4) => "bad user name or password",
        (Version::V5, 0x87) | (_, 5) => "not authorized",
        (Version::V5, 0x8A) => "banned",
        (Version::V5, 0x89) => "server busy",
        _ => "refused",
    };
    format!("connection refused: {words} (code {code:#04x})")
}

/// One local QoS 1/2 message on its way out.
#[derive(Debug)]
struct Outbound {
    /// The message as the remote gets it (remote topic; no packet id).
    publish: Publish,
    /// Its packet id on the in-process link.
    local_id: NonZeroU16,
    /// The QoS it was delivered with locally (how to acknowledge it).
    local_qos: Qos,
    stage: Stage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not sent to the remote yet.
    Waiting,
    /// Sent with this packet id, awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(NonZeroU16),
    /// QoS 2: PUBREC received, PUBREL sent with this id, awaiting PUBCOMP.
    Released(NonZeroU16),
}

/// The state of the connection to the remote, without its socket halves.
struct Remote {
    version: Version,
    address: Address,
    /// Bytes waiting to be written.
    out: BytesMut,
    /// Most of our QoS 1/2 publishes in flight.
    window: usize,
    max_qos: Qos,
    retain_available: bool,
    max_packet_size: Option<usize>,
    echo_free: bool,
    keep_alive: Duration,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    /// Packet id of the SUBSCRIBE whose SUBACK is awaited.
    subscribe_id: Option<NonZeroU16>,
    /// The remote refused a message this connection: logged once.
    warned_refusal: bool,
}

/// Messages crossing the bridge. Lives as long as the in-process link: local packet
/// ids mean nothing on another link.
#[derive(Default)]
struct Flows {
    /// Local QoS 1/2 messages the remote has not acknowledged, oldest first.
    out: VecDeque<Outbound>,
    /// Remote QoS 2 packet ids published locally and PUBREC'd, awaiting PUBREL.
    in_qos2: HashSet<u16>,
    last_remote_id: u16,
    echoes: Echoes,
    /// QoS 0 messages dropped while the remote was away (logged when it returns).
    qos0_dropped: u64,
}

/// What was recently forwarded to a remote that may send it back.
#[derive(Default)]
struct Echoes {
    recent: VecDeque<(ByteString, u64)>,
}

impl Echoes {
    fn fingerprint(payload: &Bytes) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        payload.hash(&mut hasher);
        hasher.finish()
    }

    fn remember(&mut self, topic: &ByteString, payload: &Bytes) {
        if self.recent.len() >= ECHO_MEMORY {
            self.recent.pop_front();
        }
        self.recent
            .push_back((topic.clone(), Self::fingerprint(payload)));
    }

    /// Whether `topic`/`payload` is the echo of a forwarded message (forgotten then).
    fn take(&mut self, topic: &ByteString, payload: &Bytes) -> bool {
        let fingerprint = Self::fingerprint(payload);
        match self
            .recent
            .iter()
            .position(|(t, f)| t == topic && *f == fingerprint)
        {
            Some(i) => {
                self.recent.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Why a remote connection ended (for the log).
type Lost = String;

impl Flows {
    fn next_remote_id(&mut self, remote: &Remote) -> NonZeroU16 {
        loop {
            self.last_remote_id = self.last_remote_id.checked_add(1).unwrap_or(1);
            let id = NonZeroU16::new(self.last_remote_id).expect("never 0");
            let taken = remote.subscribe_id == Some(id)
                || self
                    .out
                    .iter()
                    .any(|o| matches!(o.stage, Stage::Sent(i) | Stage::Released(i) if i == id));
            if !taken {
                return id;
            }
        }
    }

    /// Writes `publish` for the remote, adapted to what it accepts; false when it
    /// cannot take it at all (larger than its maximum packet size).
    fn transmit(&mut self, remote: &mut Remote, plan: &Plan, mut publish: Publish) -> bool {
        if !remote.retain_available {
            publish.retain = false;
        }
        let start = remote.out.len();
        let size = wire::encode_publish(remote.version, &publish, &mut remote.out);
        if remote.max_packet_size.is_some_and(|max| size > max) {
            remote.out.truncate(start);
            return false;
        }
        if !remote.echo_free && plan.subscribed_remotely(&publish.topic) {
            self.echoes.remember(&publish.topic, &publish.payload);
        }
        true
    }

    /// Acknowledges a local delivery: the remote has it (or refused it for good).
    async fn settle_local(&self, local: &LocalClient, done: &Outbound) -> Result<(), LinkError> {
        match done.local_qos {
            Qos::AtMostOnce => Ok(()),
            Qos::AtLeastOnce => local.send(Packet::PubAck(done.local_id, 0)).await,
            // PUBREC now; the broker's PUBREL is answered when it comes.
            Qos::ExactlyOnce => local.send(Packet::PubRec(done.local_id, 0)).await,
        }
    }

    /// Sends waiting messages while the remote's window has room.
    async fn pump(
        &mut self,
        remote: &mut Remote,
        local: &LocalClient,
        plan: &Plan,
    ) -> Result<(), LinkError> {
        let mut in_flight = self
            .out
            .iter()
            .filter(|o| o.stage != Stage::Waiting)
            .count();
        let mut i = 0;
        while i < self.out.len() && in_flight < remote.window {
            if self.out[i].stage != Stage::Waiting {
                i += 1;
                continue;
            }
            let mut publish = self.out[i].publish.clone();
            publish.qos = publish.qos.min(remote.max_qos);
            let id = (publish.qos != Qos::AtMostOnce).then(|| self.next_remote_id(remote));
            publish.packet_id = id;
            let sent = self.transmit(remote, plan, publish);
            match (sent, id) {
                (true, Some(id)) => {
                    self.out[i].stage = Stage::Sent(id);
                    in_flight += 1;
                    i += 1;
                }
                (sent, _) => {
                    // Sent at QoS 0 (the remote's maximum), or too large for it: over.
                    let done = self.out.remove(i).expect("index checked");
                    if !sent {
                        tracing::warn!(
                            bridge = %plan.config.connection,
                            topic = %done.publish.topic,
                            "message larger than the remote broker accepts; not forwarded"
                        );
                    }
                    self.settle_local(local, &done).await?;
                }
            }
        }
        Ok(())
    }

    /// A packet from the built-in broker.
    async fn on_local(
        &mut self,
        packet: Packet,
        remote: Option<&mut Remote>,
        local: &LocalClient,
        plan: &Plan,
    ) -> Result<(), LinkError> {
        match packet {
            Packet::Publish(p) => {
                let Some(remote_topic) = plan.to_remote(&p.topic) else {
                    // A subscription the bridge no longer has (being removed): nothing
                    // to forward, but the delivery must end.
                    let done = Outbound {
                        local_id: p.packet_id.unwrap_or(NonZeroU16::MIN),
                        local_qos: p.qos,
                        publish: *p,
                        stage: Stage::Waiting,
                    };
                    return self.settle_local(local, &done).await;
                };
                let publish = Publish {
                    topic: remote_topic.into(),
                    payload: p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    dup: false,
                    packet_id: None,
                    topic_alias: None,
                    subscription_ids: Vec::new(),
                    properties: p.properties,
                };
                match p.packet_id {
                    None => match remote {
                        Some(remote) => {
                            self.transmit(remote, plan, publish);
                        }
                        None => self.qos0_dropped += 1,
                    },
                    Some(local_id) => {
                        if self.out.iter().any(|o| o.local_id == local_id) {
                            return Ok(()); // a resend of one we hold
                        }
                        self.out.push_back(Outbound {
                            publish,
                            local_id,
                            local_qos: p.qos,
                            stage: Stage::Waiting,
                        });
                        if let Some(remote) = remote {
                            self.pump(remote, local, plan).await?;
                        }
                    }
                }
                Ok(())
            }
            Packet::PubRel(id, _) => local.send(Packet::PubComp(id, 0)).await,
            _ => Ok(()),
        }
    }

    /// The remote accepted us: resend what was in flight [MQTT-4.4.0-1], subscribe,
    /// then send what waits.
    async fn on_connected(
        &mut self,
        remote: &mut Remote,
        session_present: bool,
        local: &LocalClient,
        plan: &Plan,
    ) -> Result<(), LinkError> {
        if !session_present {
            self.in_qos2.clear();
        }
        let mut resend = Vec::new();
        for o in &self.out {
            match o.stage {
                Stage::Sent(id) => {
                    let mut publish = o.publish.clone();
                    publish.qos = publish.qos.min(remote.max_qos).max(Qos::AtLeastOnce);
                    publish.packet_id = Some(id);
                    publish.dup = true;
                    resend.push(Ok(publish));
                }
                Stage::Released(id) => resend.push(Err(id)),
                Stage::Waiting => {}
            }
        }
        for item in resend {
            match item {
                Ok(publish) => {
                    self.transmit(remote, plan, publish);
                }
                Err(id) => wire::encode_ack(Ack::Release, id, &mut remote.out),
            }
        }
        let subscriptions = plan.remote_subscriptions(remote.echo_free);
        if !subscriptions.is_empty() {
            let id = self.next_remote_id(remote);
            remote.subscribe_id = Some(id);
            wire::encode_subscribe(remote.version, id, &subscriptions, &mut remote.out);
        }
        let unsubscriptions = plan.remote_unsubscriptions();
        if !unsubscriptions.is_empty() {
            let id = self.next_remote_id(remote);
            wire::encode_unsubscribe(remote.version, id, &unsubscriptions, &mut remote.out);
        }
        self.pump(remote, local, plan).await
    }

    /// A packet from the remote.
    async fn on_remote(
        &mut self,
        packet: Incoming,
        remote: &mut Remote,
        local: &LocalClient,
        broker: &Broker,
        plan: &Plan,
    ) -> Result<Result<(), Lost>, LinkError> {
        match packet {
            Incoming::Publish(p) => {
                if let Err(lost) = self.bring_in(*p, remote, broker, plan).await {
                    return Ok(Err(lost));
                }
            }
            Incoming::PubAck(id, code) => {
                if let Some(i) = self.out.iter().position(|o| o.stage == Stage::Sent(id)) {
                    let done = self.out.remove(i).expect("position found");
                    self.note_refusal(remote, plan, &done, code);
                    self.settle_local(local, &done).await?;
                    self.pump(remote, local, plan).await?;
                }
            }
            Incoming::PubRec(id, code) => {
                match self.out.iter().position(|o| o.stage == Stage::Sent(id)) {
                    Some(i) if code >= 0x80 => {
                        let done = self.out.remove(i).expect("position found");
                        self.note_refusal(remote, plan, &done, code);
                        self.settle_local(local, &done).await?;
                        self.pump(remote, local, plan).await?;
                    }
                    Some(i) => {
                        self.out[i].stage = Stage::Released(id);
                        wire::encode_ack(Ack::Release, id, &mut remote.out);
                    }
                    // A repeated PUBREC: release again.
                    None => wire::encode_ack(Ack::Release, id, &mut remote.out),
                }
            }
            Incoming::PubComp(id) => {
                if let Some(i) = self.out.iter().position(|o| o.stage == Stage::Released(id)) {
                    // Only now does the local broker hear the remote has it: a crash
                    // before this resends it rather than losing it.
                    let done = self.out.remove(i).expect("position found");
                    self.settle_local(local, &done).await?;
                    self.pump(remote, local, plan).await?;
                }
            }
            Incoming::PubRel(id) => {
                self.in_qos2.remove(&id.get());
                wire::encode_ack(Ack::Complete, id, &mut remote.out);
            }
            Incoming::SubAck(id, codes) => {
                if remote.subscribe_id == Some(id) {
                    remote.subscribe_id = None;
                    let filters = plan.remote_subscriptions(remote.echo_free);
                    for (filter, code) in filters.iter().zip(codes) {
                        if code >= 0x80 {
                            tracing::warn!(
                                bridge = %plan.config.connection,
                                filter = %filter.filter,
                                "the remote broker refused the subscription (code {code:#04x}); nothing comes in on it"
                            );
                        }
                    }
                }
            }
            Incoming::UnsubAck | Incoming::PingResp => {}
            Incoming::ConnAck(_) => {
                return Ok(Err("the remote broker sent a second CONNACK".into()));
            }
            Incoming::Disconnect(code) => {
                return Ok(Err(format!(
                    "the remote broker disconnected us (reason {code:#04x})"
                )));
            }
        }
        Ok(Ok(()))
    }

    fn note_refusal(&self, remote: &mut Remote, plan: &Plan, done: &Outbound, code: u8) {
        if code >= 0x80 && !remote.warned_refusal {
            remote.warned_refusal = true;
            tracing::warn!(
                bridge = %plan.config.connection,
                topic = %done.publish.topic,
                "the remote broker refused a forwarded message (reason {code:#04x}); it is not retried (logged once per connection)"
            );
        }
    }

    /// A message from the remote: published on the built-in broker as the bridge's
    /// local client (so `no_local` keeps it from going back out), then acknowledged to
    /// the remote once durable locally. A message the store cannot take is not
    /// acknowledged: the link is dropped and the remote sends it again after the
    /// reconnect.
    async fn bring_in(
        &mut self,
        p: Publish,
        remote: &mut Remote,
        broker: &Broker,
        plan: &Plan,
    ) -> Result<(), Lost> {
        let echo = !remote.echo_free && self.echoes.take(&p.topic, &p.payload);
        let local_topic = plan.to_local(&p.topic);
        let deliver = |local_topic: String| Publish {
            topic: local_topic.into(),
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
            dup: false,
            packet_id: None,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: p.properties.clone(),
        };
        let fresh = match (p.qos, p.packet_id) {
            (Qos::ExactlyOnce, Some(id)) => self.in_qos2.insert(id.get()),
            _ => true,
        };
        if fresh
            && !echo
            && let Some(local_topic) = local_topic
            && let Err(e) = broker
                .publish(deliver(local_topic), plan.local_client_id.clone())
                .await
        {
            if let (Qos::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
                self.in_qos2.remove(&id.get());
            }
            if p.qos != Qos::AtMostOnce {
                return Err(format!(
                    "a message from the remote could not be stored ({e}); reconnecting so the remote sends it again"
                ));
            }
        }
        match (p.qos, p.packet_id) {
            (Qos::AtLeastOnce, Some(id)) => wire::encode_ack(Ack::Acknowledge, id, &mut remote.out),
            (Qos::ExactlyOnce, Some(id)) => wire::encode_ack(Ack::Received, id, &mut remote.out),
            _ => {}
        }
        Ok(())
    }
}

/// The running bridge.
struct Bridge {
    broker: Broker,
    plan: Arc<Plan>,
    /// Whether a v3 CONNECT carries the bridge bit (cleared once a remote refused it).
    bridge_bit: bool,
}

/// What woke the bridge's loop.
enum Event {
    Shutdown,
    Local(Option<Packet>),
    Connected(Result<Connected, String>),
    Retry,
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<()>),
    Tick,
}

/// How a link to the built-in broker ended.
enum Served {
    Shutdown,
    LocalLost(String),
}

type Connecting = Pin<Box<dyn Future<Output = Result<Connected, String>> + Send>>;

async fn read_some(
    reader: &mut Option<ReadHalf<BoxedStream>>,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    match reader {
        Some(reader) => {
            buf.reserve(4096);
            reader.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

async fn write_some(
    writer: &mut Option<WriteHalf<BoxedStream>>,
    remote: &mut Option<Remote>,
) -> std::io::Result<()> {
    match (writer, remote) {
        (Some(writer), Some(remote)) if !remote.out.is_empty() => {
            writer.write_buf(&mut remote.out).await?;
            if remote.out.is_empty() {
                // TLS buffers records until flushed.
                writer.flush().await?;
            }
            Ok(())
        }
        _ => std::future::pending().await,
    }
}

async fn wait_for(connecting: &mut Option<Connecting>) -> Result<Connected, String> {
    match connecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn wait_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Bridge {
    async fn run(
        mut self,
        shutdown: CancellationToken,
        attached: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut attached = Some(attached);
        let name = self.plan.config.connection.clone();
        self.set_state(false).await;
        let mut backoff = Backoff::new(&self.plan.config);
        loop {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                opened = self.open_local() => opened,
            };
            match opened {
                Ok(local) => {
                    if let Some(attached) = attached.take() {
                        let _ = attached.send(());
                    }
                    match self.serve(local, &shutdown, &mut backoff).await {
                        Served::Shutdown => break,
                        Served::LocalLost(why) => {
                            tracing::warn!(bridge = %name, "link to the built-in broker lost: {why}");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(bridge = %name, "cannot attach to the built-in broker: {e}")
                }
            }
            let delay = backoff.next_delay();
            tracing::info!(bridge = %name, "retrying in {} s", delay.as_secs());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.set_state(false).await;
        tracing::info!(bridge = %name, "bridge stopped");
    }

    /// Attaches to the built-in broker with the bridge's persistent session and makes
    /// its subscriptions those of the current settings.
    async fn open_local(&self) -> Result<LocalClient, LinkError> {
        let client_id = self.plan.local_client_id.to_string();
        let (mut local, _) = self
            .broker
            .connect_local(LocalConnect {
                client_id: client_id.clone(),
                clean_start: false,
                session_expiry: u32::MAX,
                receive_max: WINDOW,
                will: None,
            })
            .await?;
        let wanted = self.plan.local_subscriptions();
        let stale: Vec<String> = self
            .broker
            .subscriptions_of(&client_id)
            .into_iter()
            .filter(|f| !wanted.iter().any(|(w, _)| w == f))
            .collect();
        if !stale.is_empty() {
            local.unsubscribe(stale).await?;
        }
        if !wanted.is_empty() {
            let codes = local.subscribe(wanted.clone()).await?;
            for ((filter, _), code) in wanted.iter().zip(codes) {
                if code >= 0x80 {
                    tracing::warn!(
                        bridge = %self.plan.config.connection,
                        %filter,
                        "the built-in broker refused the subscription (code {code:#04x}); nothing goes out on it"
                    );
                }
            }
        }
        Ok(local)
    }

    /// Runs the bridge over one in-process link until shutdown or the link's end.
    async fn serve(
        &mut self,
        mut local: LocalClient,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Served {
        let plan = self.plan.clone();
        let name = plan.config.connection.as_str();
        let mut flows = Flows::default();
        let mut remote: Option<Remote> = None;
        let mut reader: Option<ReadHalf<BoxedStream>> = None;
        let mut writer: Option<WriteHalf<BoxedStream>> = None;
        let mut inbuf = BytesMut::new();
        let mut connecting: Option<Connecting> =
            Some(Box::pin(connect(plan.clone(), self.bridge_bit)));
        let mut retry_at: Option<Instant> = None;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_incoming = MAX_PACKET;
        loop {
            let backlog = remote
                .as_ref()
                .is_some_and(|r| r.out.len() >= MAX_UNSENT_BYTES);
            let event = tokio::select! {
                _ = shutdown.cancelled() => Event::Shutdown,
                packet = local.recv(), if !backlog => Event::Local(packet),
                connected = wait_for(&mut connecting) => Event::Connected(connected),
                _ = wait_until(retry_at) => Event::Retry,
                read = read_some(&mut reader, &mut inbuf) => Event::Read(read),
                wrote = write_some(&mut writer, &mut remote) => Event::Wrote(wrote),
                _ = ticker.tick() => Event::Tick,
            };
            let mut lost: Option<Lost> = None;
            match event {
                Event::Shutdown => {
                    if let (Some(mut w), Some(mut r)) = (writer.take(), remote.take()) {
                        wire::encode_disconnect(&mut r.out);
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            w.write_all(&r.out).await?;
                            w.flush().await
                        })
                        .await;
                    }
                    local.disconnect().await;
                    return Served::Shutdown;
                }
                Event::Local(None) => return Served::LocalLost("closed".into()),
                Event::Local(Some(Packet::Disconnect(code, _))) => {
                    return Served::LocalLost(format!("disconnected (reason {code:#04x})"));
                }
                Event::Local(Some(packet)) => {
                    if let Err(e) = flows.on_local(packet, remote.as_mut(), &local, &plan).await {
                        return Served::LocalLost(e.to_string());
                    }
                }
                Event::Connected(Ok(connected)) => {
                    connecting = None;
                    backoff.reset();
                    if connected.bridge_bit_refused {
                        self.bridge_bit = false;
                    }
                    let ack = connected.ack;
                    let mut state = Remote {
                        version: plan.version,
                        address: connected.address,
                        out: BytesMut::new(),
                        window: usize::from(ack.receive_max.unwrap_or(WINDOW).clamp(1, WINDOW)),
                        max_qos: ack.max_qos.unwrap_or(Qos::ExactlyOnce),
                        retain_available: ack.retain_available,
                        max_packet_size: ack.max_packet_size.map(|m| m as usize),
                        echo_free: connected.echo_free,
                        keep_alive: Duration::from_secs(u64::from(
                            ack.server_keep_alive.unwrap_or(plan.keep_alive),
                        )),
                        last_sent: Instant::now(),
                        ping_sent: None,
                        subscribe_id: None,
                        warned_refusal: false,
                    };
                    tracing::info!(
                        bridge = %name,
                        address = %state.address,
                        session_present = ack.session_present,
                        "connected to {}",
                        state.address
                    );
                    if flows.qos0_dropped > 0 {
                        tracing::warn!(
                            bridge = %name,
                            "{} QoS 0 messages were dropped while the remote broker was away",
                            flows.qos0_dropped
                        );
                        flows.qos0_dropped = 0;
                    }
                    if let Err(e) = flows
                        .on_connected(&mut state, ack.session_present, &local, &plan)
                        .await
                    {
                        return Served::LocalLost(e.to_string());
                    }
                    inbuf = connected.leftover;
                    reader = Some(connected.reader);
                    writer = Some(connected.writer);
                    remote = Some(state);
                    self.set_state(true).await;
                    // The CONNACK may have come with more packets behind it.
                    if !inbuf.is_empty() {
                        lost = self
                            .drain_incoming(
                                &mut flows,
                                &mut remote,
                                &mut inbuf,
                                &local,
                                max_incoming,
                            )
                            .await;
                    }
                }
                Event::Connected(Err(why)) => {
                    connecting = None;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        bridge = %name,
                        "cannot connect to the remote broker ({why}); retrying in {} s",
                        delay.as_secs()
                    );
                    retry_at = Some(Instant::now() + delay);
                }
                Event::Retry => {
                    retry_at = None;
                    connecting = Some(Box::pin(connect(plan.clone(), self.bridge_bit)));
                }
                Event::Read(Ok(0)) => lost = Some("the remote broker closed the connection".into()),
                Event::Read(Ok(_)) => {
                    if let Some(r) = remote.as_mut() {
                        r.ping_sent = None;
                    }
                    lost = self
                        .drain_incoming(&mut flows, &mut remote, &mut inbuf, &local, max_incoming)
                        .await;
                }
                Event::Read(Err(e)) => lost = Some(format!("read failed: {e}")),
                Event::Wrote(Ok(())) => {
                    if let Some(r) = remote.as_mut() {
                        r.last_sent = Instant::now();
                    }
                }
                Event::Wrote(Err(e)) => lost = Some(format!("write failed: {e}")),
                Event::Tick => {
                    if let Some(r) = remote.as_mut() {
                        if r.ping_sent.is_some_and(|at| at.elapsed() >= r.keep_alive) {
                            lost = Some(format!(
                                "no answer from the remote broker within the keepalive ({} s)",
                                r.keep_alive.as_secs()
                            ));
                        } else if r.ping_sent.is_none() && r.last_sent.elapsed() >= r.keep_alive {
                            wire::encode_pingreq(&mut r.out);
                            r.ping_sent = Some(Instant::now());
                        }
                    }
                }
            }
            if let Some(why) = lost
                && let Some(r) = remote.take()
            {
                {
                    reader = None;
                    writer = None;
                    inbuf.clear();
                    self.set_state(false).await;
                    // What was sent and not acknowledged goes again on the next
                    // connection; nothing was acknowledged locally for it.
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        bridge = %name,
                        address = %r.address,
                        "disconnected from {}: {why}; retrying in {} s",
                        r.address,
                        delay.as_secs()
                    );
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// Decodes and handles every whole packet in `inbuf`; returns why the connection
    /// must end, if it must. A failing in-process link ends it too (the caller then sees
    /// the link's end on its next receive).
    async fn drain_incoming(
        &self,
        flows: &mut Flows,
        remote: &mut Option<Remote>,
        inbuf: &mut BytesMut,
        local: &LocalClient,
        max_incoming: usize,
    ) -> Option<Lost> {
        let r = remote.as_mut()?;
        loop {
            match wire::decode(r.version, inbuf, max_incoming) {
                Ok(Some(packet)) => {
                    match flows
                        .on_remote(packet, r, local, &self.broker, &self.plan)
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(why)) => return Some(why),
                        Err(e) => return Some(format!("the built-in broker link failed: {e}")),
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(e.to_string()),
            }
        }
    }

    /// Publishes the bridge's state, retained, on the built-in broker.
    async fn set_state(&self, connected: bool) {
        let publish = Publish {
            topic: self.plan.state_topic.as_str().into(),
            payload: Bytes::from_static(if connected { b"1" } else { b"0" }),
            qos: Qos::AtMostOnce,
            retain: true,
            dup: false,
            packet_id: None,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: MessageProperties::default(),
        };
        // The state topic is the broker's own; a failure is logged by `publish`.
        let _ = self.broker.publish(publish, ByteString::new()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BridgeTopic;

    fn config(topics: Vec<BridgeTopic>) -> BridgeConfig {
        BridgeConfig::new("cloud", vec!["broker.example.com:8883".into()], topics)
    }

    fn line(pattern: &str, direction: BridgeDirection, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn topics_are_remapped_with_mosquittos_prefix_rules() {
        let plan = Plan::new(
            config(vec![
                line("sensors/#", BridgeDirection::Out, "home/", "hubs/pi/"),
                line("cmd/+", BridgeDirection::In, "home/", "hubs/pi/"),
                line("", BridgeDirection::Both, "local/one", "remote/one"),
                line("shared/#", BridgeDirection::Both, "", ""),
            ]),
            "pi",
        );
        assert_eq!(plan.remote_client_id, "pi.cloud");
        assert_eq!(&*plan.local_client_id, "local.pi.cloud");
        assert_eq!(plan.state_topic, "$SYS/broker/connection/pi.cloud/state");
        assert_eq!(
            plan.to_remote("home/sensors/kitchen/t").as_deref(),
            Some("hubs/pi/sensors/kitchen/t")
        );
        assert_eq!(plan.to_remote("home/cmd/x"), None, "in-only line");
        assert_eq!(
            plan.to_local("hubs/pi/cmd/light").as_deref(),
            Some("home/cmd/light")
        );
        assert_eq!(plan.to_local("hubs/pi/sensors/x"), None, "out-only line");
        assert_eq!(plan.to_remote("local/one").as_deref(), Some("remote/one"));
        assert_eq!(plan.to_local("remote/one").as_deref(), Some("local/one"));
        assert_eq!(plan.to_remote("shared/a").as_deref(), Some("shared/a"));
        assert_eq!(
            plan.local_subscriptions()
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>(),
            ["home/sensors/#", "local/one", "shared/#"]
        );
        let remote: Vec<String> = plan
            .remote_subscriptions(true)
            .into_iter()
            .map(|s| s.filter)
            .collect();
        assert_eq!(remote, ["hubs/pi/cmd/+", "remote/one", "shared/#"]);
        assert_eq!(plan.remote_unsubscriptions(), ["hubs/pi/sensors/#"]);
        assert!(plan.subscribed_remotely("shared/x"));
        assert!(!plan.subscribed_remotely("hubs/pi/sensors/x"));
    }

    #[test]
    fn validation_reports_every_problem_with_its_field() {
        let mut bad = config(vec![
            BridgeTopic {
                qos: 3,
                ..line("a/#/b", BridgeDirection::Out, "x+", "")
            },
            line("", BridgeDirection::In, "only-local", ""),
            line("+/t", BridgeDirection::Out, "home", ""),
        ]);
        bad.connection = "my bridge".into();
        bad.addresses = vec!["good:1883 :1883".into(), "h:0".into()];
        bad.remote_password = Some("p".into());
        bad.bridge_protocol_version = Some("mqttv4".into());
        bad.bridge_certfile = Some("c.pem".into());
        bad.keepalive_interval = Some(2);
        bad.restart_timeout = Some(10);
        bad.restart_timeout_cap = Some(5);
        let problems = validate(&bad);
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "connection",
                "addresses[0]",
                "addresses[1]",
                "topics[0].qos",
                "topics[0].local_prefix",
                "topics[0].pattern",
                "topics[1].pattern",
                "topics[2].local_prefix",
                "remote_password",
                "bridge_protocol_version",
                "bridge_keyfile",
                "bridge_certfile",
                "keepalive_interval",
                "restart_timeout_cap",
            ],
            "{problems:#?}"
        );
        assert!(
            validate(&config(vec![line(
                "a/#",
                BridgeDirection::Both,
                "l/",
                "r/"
            )]))
            .is_empty()
        );
        assert_eq!(
            validate(&config(Vec::new())),
            [
                "topics: a bridge needs at least one topic, as in `{ pattern: \"sensors/#\", direction: out }`"
            ]
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("h").unwrap(), ("h".into(), 1883));
        assert_eq!(parse_address("h:1884").unwrap(), ("h".into(), 1884));
        assert_eq!(parse_address("[::1]:1884").unwrap(), ("::1".into(), 1884));
        assert_eq!(parse_address("[::1]").unwrap(), ("::1".into(), 1883));
        assert_eq!(parse_address("::1:1884").unwrap(), ("::1".into(), 1884));
        assert!(parse_address("h:x").is_err());
        assert!(parse_address(":1").is_err());
    }

    #[test]
    fn backoff_is_constant_or_jitters_between_base_and_cap() {
        let mut constant = Backoff::new(&BridgeConfig {
            restart_timeout: Some(2),
            ..config(Vec::new())
        });
        assert!((0..5).all(|_| constant.next_delay() == Duration::from_secs(2)));
        let mut jitter = Backoff::new(&config(Vec::new()));
        let delays: Vec<Duration> = (0..50).map(|_| jitter.next_delay()).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(5) && *d <= Duration::from_secs(30))
        );
        assert!(
            delays.iter().any(|d| *d > Duration::from_secs(5)),
            "{delays:?}"
        );
        jitter.reset();
        assert_eq!(jitter.current, Duration::from_secs(5));
    }

    #[test]
    fn an_echo_is_recognised_once() {
        let mut echoes = Echoes::default();
        let topic = ByteString::from("t");
        echoes.remember(&topic, &Bytes::from_static(b"1"));
        assert!(!echoes.take(&topic, &Bytes::from_static(b"2")));
        assert!(echoes.take(&topic, &Bytes::from_static(b"1")));
        assert!(!echoes.take(&topic, &Bytes::from_static(b"1")));
    }
}
