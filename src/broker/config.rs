//! The `broker:` section of the settings file, and its defaults (Mosquitto's where it
//! has one).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

/// The built-in MQTT broker.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Whether the broker runs at all (default true).
    pub enabled: bool,
    /// TCP listeners; default one on 127.0.0.1:1883.
    pub listeners: Vec<ListenerConfig>,
    /// `durable` (default): sessions, queued and inflight messages and retained messages
    /// survive a restart or a crash, and nothing is acknowledged before it is on disk.
    /// `memory`: nothing is written.
    pub persistence: Persistence,
    /// Most simultaneous client connections (default 10000).
    pub max_connections: usize,
    /// Largest payload accepted, in bytes (default 0 = up to the maximum packet size).
    pub message_size_limit: u32,
    /// Largest packet accepted, in bytes (default 1 MiB; MQTT allows 256 MiB).
    pub max_packet_size: u32,
    /// Most QoS 1/2 messages sent to a client and not yet acknowledged (default 20, as
    /// Mosquitto; 0 = no limit); lowered further by a v5 client's receive maximum.
    pub max_inflight_messages: u16,
    /// Most QoS 1/2 messages a client may have sent us unacknowledged (our v5 receive
    /// maximum, default 1024).
    pub receive_maximum: u16,
    /// Most messages queued for one client beyond its inflight window (default 1000, as
    /// Mosquitto; 0 = no limit); more are dropped and counted.
    pub max_queued_messages: usize,
    /// Highest keepalive a client may ask for, in seconds (default 65535); v5 clients
    /// asking for more (or for none) are told to use this.
    pub max_keepalive: u16,
    /// Highest topic alias a v5 client may use towards us (default 64).
    pub topic_alias_maximum: u16,
    /// Seconds between `$SYS` updates (default 10; 0 turns `$SYS` off).
    pub sys_interval: u64,
    /// Accept clients without a username. Unset: loopback-only listeners without a
    /// `password_file` accept them, and `check` refuses a listener beyond loopback
    /// without authentication, as Mosquitto 2 does. Set to false once a password file
    /// is given unless written.
    pub allow_anonymous: Option<bool>,
    /// A `mosquitto_passwd` file (`user:$7$...`); reread on SIGHUP and when it changes.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto ACL file (`user`, `topic [read|write|readwrite|deny]`, `pattern`
    /// with `%c`/`%u`); reread on SIGHUP and when it changes.
    pub acl_file: Option<PathBuf>,
    /// As Mosquitto's: when true, `allow_anonymous`, `password_file` and `acl_file` are
    /// read from each listener instead of from here.
    pub per_listener_settings: bool,
    /// Bridges to remote brokers.
    pub bridges: Vec<BridgeConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            enabled: true,
            listeners: vec![ListenerConfig::default()],
            persistence: Persistence::Durable,
            max_connections: 10_000,
            message_size_limit: 0,
            max_packet_size: 1 << 20,
            max_inflight_messages: 20,
            receive_maximum: 1024,
            max_queued_messages: 1000,
            max_keepalive: 65535,
            topic_alias_maximum: 64,
            sys_interval: 10,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            per_listener_settings: false,
            bridges: Vec::new(),
        }
    }
}

/// One listener: MQTT over TCP or WebSockets, either optionally over TLS.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to bind (default 127.0.0.1, as Mosquitto 2 without a listener line).
    pub host: String,
    /// Port (default 1883; 0 picks a free one).
    pub port: u16,
    /// `mqtt` (default) or `websockets` (subprotocol `mqtt`, binary frames).
    pub protocol: ListenerProtocol,
    /// TLS settings (Mosquitto's keys); TLS is on when `certfile` and `keyfile` are set.
    pub tls: TlsConfig,
    /// With `per_listener_settings`: this listener's `allow_anonymous`.
    pub allow_anonymous: Option<bool>,
    /// With `per_listener_settings`: this listener's password file.
    pub password_file: Option<PathBuf>,
    /// With `per_listener_settings`: this listener's ACL file.
    pub acl_file: Option<PathBuf>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            protocol: ListenerProtocol::Mqtt,
            tls: TlsConfig::default(),
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
        }
    }
}

impl ListenerConfig {
    /// A plain MQTT listener on `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        ListenerConfig {
            host: host.into(),
            port,
            ..ListenerConfig::default()
        }
    }
}

/// What a listener speaks above TCP (or TLS).
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// MQTT straight over the stream.
    #[default]
    Mqtt,
    /// MQTT in binary WebSocket frames (subprotocol `mqtt`), as browsers speak it.
    Websockets,
}

/// A listener's TLS settings, with Mosquitto's names and meanings.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates that client certificates must chain to.
    pub cafile: Option<PathBuf>,
    /// PEM file of the server's certificate chain; with `keyfile` turns TLS on.
    pub certfile: Option<PathBuf>,
    /// PEM file of the server's private key.
    pub keyfile: Option<PathBuf>,
    /// PEM file of certificate revocation lists; revoked client certificates are
    /// refused.
    pub crlfile: Option<PathBuf>,
    /// Lowest TLS version accepted: `tlsv1.2` (default) or `tlsv1.3`; older versions
    /// are never accepted.
    pub tls_version: Option<String>,
    /// Clients must present a certificate that chains to `cafile`.
    pub require_certificate: bool,
    /// The client certificate's Common Name is the username (for the ACL); no
    /// password is asked.
    pub use_identity_as_username: bool,
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.certfile.is_some() || self.keyfile.is_some()
    }
}

/// A bridge to a remote broker, with Mosquitto's keys.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The bridge's name (Mosquitto's `connection`); names its `$SYS` state topic
    /// and, by default, its client id.
    pub connection: String,
    /// Remote `host:port` addresses, tried in turn (Mosquitto's `address`).
    pub addresses: Vec<String>,
    /// What crosses the bridge.
    #[serde(default)]
    pub topics: Vec<BridgeTopic>,
    /// Start a clean session on the remote (default false: the remote keeps queuing
    /// for us while the link is down).
    #[serde(default)]
    pub cleansession: bool,
    /// Client id on the remote (default `HOSTNAME.CONNECTION`).
    #[serde(default)]
    pub remote_clientid: Option<String>,
    /// Username on the remote.
    #[serde(default)]
    pub remote_username: Option<String>,
    /// Password on the remote.
    #[serde(default)]
    pub remote_password: Option<String>,
    /// `mqttv311` (default), `mqttv31` or `mqttv50`.
    #[serde(default)]
    pub bridge_protocol_version: Option<String>,
    /// CA certificates to verify the remote with; turns TLS on.
    #[serde(default)]
    pub bridge_cafile: Option<PathBuf>,
    /// Our client certificate for the remote.
    #[serde(default)]
    pub bridge_certfile: Option<PathBuf>,
    /// The key of `bridge_certfile`.
    #[serde(default)]
    pub bridge_keyfile: Option<PathBuf>,
    /// Do not check the remote's host name against its certificate.
    #[serde(default)]
    pub bridge_insecure: bool,
    /// Keepalive towards the remote, in seconds (default 60).
    #[serde(default)]
    pub keepalive_interval: Option<u16>,
    /// Seconds before the first reconnect attempt (default 5; Mosquitto's
    /// `restart_timeout` base).
    #[serde(default)]
    pub restart_timeout: Option<u64>,
    /// Most seconds between reconnect attempts; with it the wait is drawn at random
    /// between the base and this cap, as Mosquitto's `restart_timeout BASE CAP` does.
    #[serde(default)]
    pub restart_timeout_cap: Option<u64>,
}

impl BridgeConfig {
    /// A bridge named `connection` to `addresses` with `topics`, everything else at
    /// Mosquitto's defaults.
    pub fn new(
        connection: impl Into<String>,
        addresses: Vec<String>,
        topics: Vec<BridgeTopic>,
    ) -> BridgeConfig {
        BridgeConfig {
            connection: connection.into(),
            addresses,
            topics,
            cleansession: false,
            remote_clientid: None,
            remote_username: None,
            remote_password: None,
            bridge_protocol_version: None,
            bridge_cafile: None,
            bridge_certfile: None,
            bridge_keyfile: None,
            bridge_insecure: false,
            keepalive_interval: None,
            restart_timeout: None,
            restart_timeout_cap: None,
        }
    }
}

/// One `topic` line of a bridge.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// The topic filter, below the prefixes.
    pub pattern: String,
    /// `out` (local to remote; default), `in` or `both`.
    #[serde(default)]
    pub direction: BridgeDirection,
    /// QoS used across the bridge (default 0).
    #[serde(default)]
    pub qos: u8,
    /// Prefix of the topic on the local broker.
    #[serde(default)]
    pub local_prefix: String,
    /// Prefix of the topic on the remote broker.
    #[serde(default)]
    pub remote_prefix: String,
}

/// Which way a bridge topic flows.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BridgeDirection {
    /// Local to remote.
    #[default]
    Out,
    /// Remote to local.
    In,
    /// Both ways.
    Both,
}

/// Whether the broker writes its state to disk.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// Everything acknowledged is on disk first.
    Durable,
    /// Nothing is written; a restart starts empty.
    Memory,
}
