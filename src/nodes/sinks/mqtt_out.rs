//! `mqtt.out`: publishes each message to a remote broker (rumqttc). A message is done
//! when the broker has it: at PUBACK for QoS 1, PUBCOMP for QoS 2, once written for
//! QoS 0. Until then it stays in flight, across reconnects (rumqttc sends it again), so
//! an upstream QoS 1 source acknowledges only what the other broker took.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rumqttc::{Event, EventLoop, Outgoing, Packet, QoS};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::engine::template::{Escape, Template};
use crate::engine::{Clock, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId};
use crate::flow::values::HumanDuration;
use crate::nodes::mqtt::{self, AbortOnDrop, Backoff, Connection, Qos, Will};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of an `mqtt.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttOutConfig {
    /// The broker: `mqtt://[user:password@]host[:port]`.
    pub url: String,
    /// Topic to publish to, a template filled per message: `sensor/{{payload.id}}/w`,
    /// `{{topic}}/state`. Default: the message's own topic.
    pub topic: Option<String>,
    /// QoS of the publishes (default 0).
    #[serde(default)]
    pub qos: Qos,
    /// Publish retained. Default: as the message says (its `retain` header, set by
    /// `mqtt.in`), else not retained.
    pub retain: Option<bool>,
    /// Client id (default `headwater-FLOW-NODE`).
    pub client_id: Option<String>,
    /// User name (overrides one in `url`).
    pub username: Option<String>,
    /// Password (overrides one in `url`); use `${file:...}` or `${ENV}` for secrets.
    pub password: Option<String>,
    /// Keepalive interval (default `60s`).
    pub keepalive: Option<HumanDuration>,
    /// Start a fresh session on every connect (default true).
    pub clean_session: Option<bool>,
    /// Message the broker publishes if this connection drops (e.g. `status` =
    /// `offline`, retained).
    pub will: Option<Will>,
    /// Most QoS 1/2 publishes awaiting the broker's acknowledgement (default 100).
    #[serde(default = "default_inflight")]
    #[schemars(range(min = 1, max = 65535))]
    pub inflight: u16,
}

fn default_inflight() -> u16 {
    100
}

impl MqttOutConfig {
    fn connection(&self) -> Connection {
        Connection {
            url: self.url.clone(),
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            keepalive: self
                .keepalive
                .map_or(std::time::Duration::from_secs(60), |k| k.get()),
            clean_session: self.clean_session.unwrap_or(true),
            will: self.will.clone(),
        }
    }

    fn template(&self) -> Result<Option<Template>, ConfigIssue> {
        let Some(topic) = &self.topic else {
            return Ok(None);
        };
        let template = Template::parse(topic, Escape::TopicLevel)
            .map_err(|e| ConfigIssue::new("topic", e.message))?;
        if let Some(literal) = template.literal() {
            mqtt::check_topic_name(literal).map_err(|e| ConfigIssue::new("topic", e))?;
        } else if topic.contains(['+', '#']) {
            return Err(ConfigIssue::new(
                "topic",
                format!("`{topic}` holds `+` or `#`, which a published topic cannot"),
            ));
        }
        Ok(Some(template))
    }
}

impl Config for MqttOutConfig {
    const TYPE: &'static str = "mqtt.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str =
        "Publishes to an MQTT broker; a message is done when the broker acknowledged it";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = mqtt::validate(&self.url, self.client_id.as_deref(), self.will.as_ref());
        if let Err(e) = self.template() {
            issues.push(e);
        }
        if self.inflight == 0 {
            issues.push(ConfigIssue::new(
                "inflight",
                "allow at least 1 message in flight",
            ));
        }
        issues
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let settings = Arc::new(Settings {
            connection: self.connection(),
            topic: self.template().map_err(|e| vec![e])?,
            qos: self.qos.get(),
            retain: self.retain,
            inflight: self.inflight,
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(settings.clone(), cx))
        }))
    }
}

struct Settings {
    connection: Connection,
    topic: Option<Template>,
    qos: QoS,
    retain: Option<bool>,
    inflight: u16,
}

/// Messages between "handed to rumqttc" and "the broker has it".
///
/// rumqttc reports each publish it writes as `Outgoing::Publish(pkid)`, in the order the
/// publishes were requested; a packet id already in flight is a retransmission after a
/// reconnect. So the n-th request is matched to the n-th new packet id.
#[derive(Default)]
struct Tracker {
    /// Requested, not yet written.
    queued: VecDeque<Msg>,
    /// Written with QoS 1/2, awaiting PUBACK/PUBCOMP, by packet id.
    inflight: HashMap<u16, Msg>,
    /// A publish rumqttc holds back because its packet id is still in flight.
    collision: Option<(u16, Msg)>,
}

impl Tracker {
    fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.inflight.is_empty() && self.collision.is_none()
    }

    fn written(&mut self, pkid: u16) {
        if pkid == 0 {
            if let Some(msg) = self.queued.pop_front() {
                msg.done();
            }
        } else if self.inflight.contains_key(&pkid) {
            // A retransmission after a reconnect.
        } else if self.collision.as_ref().is_some_and(|(id, _)| *id == pkid) {
            if let Some((id, msg)) = self.collision.take() {
                self.inflight.insert(id, msg);
            }
        } else if let Some(msg) = self.queued.pop_front() {
            self.inflight.insert(pkid, msg);
        }
    }

    fn held_back(&mut self, pkid: u16) {
        if let Some(msg) = self.queued.pop_front() {
            self.collision = Some((pkid, msg));
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(msg) = self.inflight.remove(&pkid) {
            msg.done();
        }
    }
}

struct Shared {
    tracker: Mutex<Tracker>,
    /// Signalled whenever the tracker empties.
    idle: Notify,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut tracker);
        if tracker.is_empty() {
            self.idle.notify_waiters();
        }
        result
    }
}

async fn run(settings: Arc<Settings>, mut cx: NodeContext) -> Result<(), NodeError> {
    let (client, eventloop) = settings
        .connection
        .client(&cx.id, settings.inflight)
        .map_err(NodeError::new)?;
    let shared = Arc::new(Shared {
        tracker: Mutex::default(),
        idle: Notify::new(),
    });
    let mut poller = AbortOnDrop(Some(tokio::spawn(poll(
        eventloop,
        settings.clone(),
        cx.id.clone(),
        cx.clock.clone(),
        shared.clone(),
    ))));
    while let Some(msg) = cx.recv().await {
        let topic = match &settings.topic {
            None => Ok(msg.topic.to_string()),
            Some(template) => template.fill(&msg).map_err(|e| e.to_string()),
        };
        let topic = match topic.and_then(|t| mqtt::check_topic_name(&t).map(|()| t)) {
            Ok(topic) => topic,
            Err(reason) => {
                cx.outputs.emit_error(msg, reason).await;
                continue;
            }
        };
        let retain = settings
            .retain
            .unwrap_or_else(|| msg.headers.get("retain").is_some_and(|r| r == "true"));
        let payload = msg.payload.clone();
        shared.with(|t| t.queued.push_back(msg));
        if let Err(e) = client
            .publish_bytes(topic, settings.qos, retain, payload)
            .await
        {
            // The request never reached rumqttc: the message is the last queued.
            if let Some(msg) = shared.with(|t| t.queued.pop_back()) {
                msg.fail(format!("cannot publish: {e}"));
            }
            return Err(NodeError::new(format!("the MQTT client stopped: {e}")));
        }
    }
    // Inputs are drained: wait until the broker has everything, then leave cleanly.
    loop {
        let idle = shared.idle.notified();
        if shared.with(|t| t.is_empty()) {
            break;
        }
        idle.await;
    }
    let _ = client.disconnect().await;
    if let Some(task) = poller.0.take() {
        let _ = task.await;
    }
    Ok(())
}

async fn poll(
    mut eventloop: EventLoop,
    settings: Arc<Settings>,
    node: NodeId,
    clock: Clock,
    shared: Arc<Shared>,
) {
    let mut backoff = Backoff::default();
    let mut connected_before = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                mqtt::log_connected(&node, &settings.connection.url, &mut connected_before);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.with(|t| t.written(pkid)),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => shared.with(|t| t.held_back(pkid)),
            Ok(Event::Incoming(Packet::PubAck(ack))) => shared.with(|t| t.acknowledged(ack.pkid)),
            Ok(Event::Incoming(Packet::PubComp(comp))) => {
                shared.with(|t| t.acknowledged(comp.pkid));
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Let rumqttc write the DISCONNECT before the task ends.
                let _ = eventloop.poll().await;
                return;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                mqtt::wait_to_retry(&node, &settings.connection.url, &e, &mut backoff, &clock)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn load_error(node: &str) -> Vec<String> {
        let yaml = format!(
            "version: 1\nflows:\n  f:\n    nodes:\n      tick: {{ type: timer, interval: 1s }}\n      pub: {node}\n"
        );
        crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml)],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .map(|d| d.headlines())
        .unwrap_or_default()
    }

    #[test]
    fn topics_are_checked_and_located() {
        assert_eq!(
            load_error(
                "{ type: mqtt.out, inputs: tick, url: \"mqtt://h\", topic: \"a/{{payload.x\" }"
            ),
            ["f.yaml:6:68: f/pub: `topic`: `{{` is not closed by `}}`"]
        );
        assert_eq!(
            load_error("{ type: mqtt.out, inputs: tick, url: \"mqtt://h\", topic: \"a/+\" }"),
            [
                "f.yaml:6:68: f/pub: `topic`: `a/+` holds `+`, `#` or NUL, which a published topic cannot"
            ]
        );
        assert!(
            load_error("{ type: mqtt.out, inputs: tick, url: \"mqtt://h\", topic: \"a/{{payload.id}}\", qos: 2 }")
                .is_empty()
        );
    }

    #[test]
    fn tracker_matches_packet_ids_to_requests() {
        use crate::engine::Outcome;
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let msg = |name: &'static str| {
            let outcomes = outcomes.clone();
            Msg::tracked(name, "", 0, move |o| {
                outcomes.lock().unwrap().push((name, o))
            })
        };
        let mut t = Tracker::default();
        for name in ["a", "b", "c", "d"] {
            t.queued.push_back(msg(name));
        }
        t.written(1); // a
        t.written(0); // b, QoS 0: done once written
        t.written(2); // c
        t.written(1); // a again: a retransmission, not d
        t.held_back(2); // d waits for packet id 2
        t.acknowledged(2); // c
        t.written(2); // d
        t.acknowledged(1);
        assert!(!t.is_empty());
        t.acknowledged(2);
        assert!(t.is_empty());
        let order: Vec<_> = outcomes
            .lock()
            .unwrap()
            .iter()
            .map(|(n, o)| (*n, o.clone()))
            .collect();
        assert_eq!(
            order,
            [
                ("b", Outcome::Done),
                ("c", Outcome::Done),
                ("a", Outcome::Done),
                ("d", Outcome::Done)
            ]
        );
    }
}
