//! The `broker:` section of the settings file, and its defaults (Mosquitto's where it
//! has one).

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
    /// Mosquitto); lowered further by a v5 client's receive maximum.
    pub max_inflight_messages: u16,
    /// Most QoS 1/2 messages a client may have sent us unacknowledged (our v5 receive
    /// maximum, default 1024).
    pub receive_maximum: u16,
    /// Most messages queued for one client beyond its inflight window (default 1000, as
    /// Mosquitto); more are dropped and counted.
    pub max_queued_messages: usize,
    /// Highest keepalive a client may ask for, in seconds (default 65535); v5 clients
    /// asking for more (or for none) are told to use this.
    pub max_keepalive: u16,
    /// Highest topic alias a v5 client may use towards us (default 64).
    pub topic_alias_maximum: u16,
    /// Seconds between `$SYS` updates (default 10; 0 turns `$SYS` off).
    pub sys_interval: u64,
    /// Accept clients without authentication on listeners beyond loopback. Without it
    /// `check` refuses such a listener, as Mosquitto 2 does.
    pub allow_anonymous: Option<bool>,
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
        }
    }
}

/// One TCP listener.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to bind (default 127.0.0.1, as Mosquitto 2 without a listener line).
    pub host: String,
    /// Port (default 1883; 0 picks a free one).
    pub port: u16,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
        }
    }
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
