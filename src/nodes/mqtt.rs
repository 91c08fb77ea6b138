//! What `mqtt.in` and `mqtt.out` share: the connection options as written in a flow
//! file, their checks, and what they become: a rumqttc client for a remote broker
//! (`url:`), or an in-process client of the built-in broker (no `url:`).

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::broker::codec::{self, ConnAck};
use crate::broker::{LocalClient, LocalConnect};
use crate::engine::{NodeContext, NodeError, NodeId};
use crate::nodes::registry::ConfigIssue;

/// An MQTT quality of service: 0, 1 or 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Qos(pub u8);

impl JsonSchema for Qos {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Qos".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "enum": [0, 1, 2],
            "description": "MQTT quality of service: 0 at most once, 1 at least once, 2 exactly once"
        })
    }
}

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            q @ 0..=2 => Ok(Qos(q)),
            other => Err(serde::de::Error::custom(format!(
                "qos is 0, 1 or 2, not {other}"
            ))),
        }
    }
}

impl Qos {
    /// The rumqttc value.
    pub fn get(self) -> QoS {
        match self.0 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

/// The `will:` of a connection: published by the broker if the connection drops
/// without a clean disconnect.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Will {
    /// Topic of the will.
    pub topic: String,
    /// Its payload (default empty).
    #[serde(default)]
    pub payload: String,
    /// Its QoS (default 0).
    #[serde(default)]
    pub qos: Qos,
    /// Whether it is retained (default false).
    #[serde(default)]
    pub retain: bool,
}

/// Where and how to connect; built from a node's options.
#[derive(Clone, Debug)]
pub struct Connection {
    /// `mqtt://[user:password@]host[:port]`; `None` is the built-in broker, in process.
    pub url: Option<String>,
    /// Client id; default `headwater-FLOW-NODE`.
    pub client_id: Option<String>,
    /// User name (overrides one in the URL).
    pub username: Option<String>,
    /// Password (overrides one in the URL).
    pub password: Option<String>,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Whether the flow file set `keepalive` (it means nothing without `url`).
    pub keepalive_set: bool,
    /// Clean session; `None` lets the node decide.
    pub clean_session: bool,
    /// The will.
    pub will: Option<Will>,
}

/// The parts of an `mqtt://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 1883).
    pub port: u16,
    /// User from the URL.
    pub username: Option<String>,
    /// Password from the URL.
    pub password: Option<String>,
}

/// Parses `mqtt://[user[:password]@]host[:port]` (also `tcp://`).
pub fn parse_url(url: &str) -> Result<BrokerUrl, String> {
    let rest = if let Some(rest) = url.strip_prefix("mqtt://") {
        rest
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        rest
    } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err(format!(
            "`{url}`: TLS connections to remote brokers are not supported yet; use `mqtt://` (bridge through the built-in broker for TLS)"
        ));
    } else {
        return Err(format!(
            "`{url}` is not a broker URL; write `mqtt://host:1883`"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(user.to_string()), Some(pass.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unclosed `[` in the host"))?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{url}`: name a host, as in `mqtt://host:1883`"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{url}`: the port must be a number from 1 to 65535"))?,
        None => 1883,
    };
    Ok(BrokerUrl {
        host,
        port,
        username,
        password,
    })
}

/// Checks the options common to both node kinds: the URL, or without one, that no
/// option meant only for a remote broker (credentials, keepalive) is set.
pub fn validate(connection: &Connection) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    match &connection.url {
        Some(url) => {
            if let Err(e) = parse_url(url) {
                issues.push(ConfigIssue::new("url", e));
            }
        }
        None => {
            let remote_only = [
                ("username", connection.username.is_some()),
                ("password", connection.password.is_some()),
                ("keepalive", connection.keepalive_set),
            ];
            for (option, _) in remote_only.iter().filter(|(_, set)| *set) {
                issues.push(ConfigIssue::new(
                    *option,
                    format!(
                        "`{option}` applies to a remote broker; without `url` the node talks to the built-in broker in process, which needs no `{option}`"
                    ),
                ));
            }
        }
    }
    if connection
        .client_id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > 65535)
    {
        issues.push(ConfigIssue::new(
            "client_id",
            "the client id must not be empty; leave it out for `headwater-FLOW-NODE`",
        ));
    }
    if let Some(will) = &connection.will
        && let Err(e) = check_topic_name(&will.topic)
    {
        issues.push(ConfigIssue::new("will.topic", e));
    }
    issues
}

/// Checks a topic to publish to: not empty, no wildcards, no NUL.
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(format!(
            "`{topic}` holds `+`, `#` or NUL, which a published topic cannot"
        ));
    }
    Ok(())
}

/// Checks a subscription filter: `#` only last and alone in its level, `+` alone in its
/// level.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("the topic filter is empty".into());
    }
    if filter.contains('\0') {
        return Err(format!("`{filter}` holds NUL"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!(
                "`{filter}`: `#` must be a whole level and the last one, as in `sensors/#`"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "`{filter}`: `+` must be a whole level, as in `sensors/+/temperature`"
            ));
        }
    }
    Ok(())
}

impl Connection {
    /// The client id this node uses.
    pub fn client_id(&self, node: &NodeId) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("headwater-{}-{}", node.flow, node.node))
    }

    /// Where this connection goes, for logs.
    pub fn target(&self) -> &str {
        self.url
            .as_deref()
            .unwrap_or("built-in broker (in process)")
    }

    /// A rumqttc client and event loop for this connection (no IO yet).
    pub fn client(&self, node: &NodeId, inflight: u16) -> Result<(AsyncClient, EventLoop), String> {
        let url = parse_url(self.url.as_deref().unwrap_or_default())?;
        let mut options = MqttOptions::new(self.client_id(node), url.host, url.port);
        options
            .set_keep_alive(self.keepalive.max(Duration::from_secs(1)))
            .set_clean_session(self.clean_session)
            .set_manual_acks(true)
            .set_inflight(inflight.max(1))
            .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
        let username = self.username.clone().or(url.username);
        let password = self.password.clone().or(url.password);
        if let Some(user) = username {
            options.set_credentials(user, password.unwrap_or_default());
        }
        if let Some(will) = &self.will {
            options.set_last_will(LastWill::new(
                will.topic.clone(),
                will.payload.clone(),
                will.qos.get(),
                will.retain,
            ));
        }
        Ok(AsyncClient::new(options, 1024))
    }
}

/// Connects to the built-in broker in process, as `client_id(node)`; a persistent
/// session unless `clean_session`.
pub async fn connect_local(
    cx: &NodeContext,
    connection: &Connection,
    receive_max: u16,
) -> Result<(LocalClient, ConnAck), NodeError> {
    let broker = cx.broker.as_ref().ok_or_else(|| {
        NodeError::new(
            "no `url` is set and the built-in broker is off (`--no-broker`, or `enabled: false` under `broker:`); set `url` or turn the broker on",
        )
    })?;
    let will = connection.will.as_ref().map(|will| codec::Will {
        topic: will.topic.clone().into(),
        payload: will.payload.clone().into(),
        qos: codec::Qos::from_u8(will.qos.0).unwrap_or(codec::Qos::AtMostOnce),
        retain: will.retain,
        delay: 0,
        properties: Default::default(),
    });
    let connected = broker
        .connect_local(LocalConnect {
            client_id: connection.client_id(&cx.id),
            clean_start: connection.clean_session,
            session_expiry: if connection.clean_session {
                0
            } else {
                u32::MAX
            },
            receive_max,
            will,
        })
        .await
        .map_err(|e| NodeError::new(e.to_string()))?;
    tracing::info!(node = %cx.id, session_present = connected.1.session_present, "connected to the built-in broker");
    Ok(connected)
}

/// Reconnect delays: 100ms doubling to 30s, back to the start after a good connection.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// A connection succeeded.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Aborts a node's connection task when the run ends, however it ends; take the handle
/// out to await a clean end instead.
pub struct AbortOnDrop(pub Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Logs a (re)connection: one line per connection.
pub fn log_connected(node: &NodeId, url: &str, connected_before: &mut bool) {
    let what = if *connected_before {
        "reconnected to the broker"
    } else {
        "connected to the broker"
    };
    tracing::info!(node = %node, url, "{what}");
    *connected_before = true;
}

/// Logs a failed connection and waits the next backoff delay on the engine's clock.
pub async fn wait_to_retry(
    node: &NodeId,
    url: &str,
    error: &rumqttc::ConnectionError,
    backoff: &mut Backoff,
    clock: &crate::engine::Clock,
) {
    let delay = backoff.next_delay();
    tracing::warn!(node = %node, url, "broker connection failed: {error}; retrying in {delay:?}");
    clock.sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://u:p@broker.lan:1884").unwrap(),
            BrokerUrl {
                host: "broker.lan".into(),
                port: 1884,
                username: Some("u".into()),
                password: Some("p".into())
            }
        );
        assert_eq!(parse_url("tcp://[::1]").unwrap().host, "::1");
        assert_eq!(parse_url("mqtt://h/").unwrap().port, 1883);
        assert!(parse_url("mqtts://h").unwrap_err().contains("TLS"));
        assert!(
            parse_url("http://h")
                .unwrap_err()
                .contains("mqtt://host:1883")
        );
        assert!(parse_url("mqtt://h:0").unwrap_err().contains("1 to 65535"));
        assert!(
            parse_url("mqtt://:1883")
                .unwrap_err()
                .contains("name a host")
        );
    }

    #[test]
    fn filters_and_names() {
        for ok in ["a/b", "#", "a/+/c", "+", "a/#", "/"] {
            assert!(check_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/c", "a#", "a/b+", ""] {
            assert!(check_topic_filter(bad).is_err(), "{bad}");
        }
        assert!(check_topic_name("a/+").is_err());
        assert!(check_topic_name("a/b").is_ok());
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..11).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
