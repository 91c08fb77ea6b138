//! `mqtt.out`: publishes each message to a remote broker (`url:`, rumqttc) or, without
//! `url`, to the built-in broker through the in-process link. A message is done when
//! the broker has it: at PUBACK for QoS 1, PUBCOMP for QoS 2 (the built-in broker sends
//! those once the message is durable for every persistent subscriber), once written
//! for QoS 0. Until then it stays in flight, across reconnects (rumqttc sends it
//! again), so an upstream QoS 1 source acknowledges only what the broker took.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rumqttc::{Event, EventLoop, Outgoing, Packet, QoS};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::broker::LinkError;
use crate::broker::codec::{self, Packet as Packet5};
use crate::engine::template::{Escape, Template};
use crate::engine::{Clock, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId};
use crate::flow::values::HumanDuration;
use crate::nodes::mqtt::{self, AbortOnDrop, Backoff, Connection, Qos, Will};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of an `mqtt.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttOutConfig {
    /// A remote broker: `mqtt://[user:password@]host[:port]`. Leave it out to publish
    /// on the built-in broker, in process (no TCP).
    pub url: Option<String>,
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
    /// User name (overrides one in `url`; remote brokers only).
    pub username: Option<String>,
    /// Password (overrides one in `url`; remote brokers only); use `${file:...}` or
    /// `${ENV}` for secrets.
    pub password: Option<String>,
    /// Keepalive interval (default `60s`; remote brokers only).
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
            keepalive_set: self.keepalive.is_some(),
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
        let mut issues = mqtt::validate(&self.connection());
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
            match settings.connection.url {
                Some(_) => Box::pin(run(settings.clone(), cx)),
                None => Box::pin(run_local(settings.clone(), cx)),
            }
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

impl Settings {
    /// The topic and retain flag `msg` is published with; an error names why it cannot
    /// be (the message goes to the `error` port).
    fn destination(&self, msg: &Msg) -> Result<(String, bool), String> {
        let topic = match &self.topic {
            None => msg.topic.to_string(),
            Some(template) => template.fill(msg).map_err(|e| e.to_string())?,
        };
        mqtt::check_topic_name(&topic)?;
        let retain = self
            .retain
            .unwrap_or_else(|| msg.headers.get("retain").is_some_and(|r| r == "true"));
        Ok((topic, retain))
    }
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
        let (topic, retain) = match settings.destination(&msg) {
            Ok(destination) => destination,
            Err(reason) => {
                cx.outputs.emit_error(msg, reason).await;
                continue;
            }
        };
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

/// `mqtt.out` without `url`: publishes on the built-in broker, in process. Up to
/// `inflight` QoS 1/2 messages wait for the broker's durable acknowledgement at once.
async fn run_local(settings: Arc<Settings>, mut cx: NodeContext) -> Result<(), NodeError> {
    let (mut link, _) = mqtt::connect_local(&cx, &settings.connection, 1).await?;
    let qos = codec::Qos::from_u8(settings.qos as u8).unwrap_or(codec::Qos::AtMostOnce);
    let mut inflight: HashMap<u16, Msg> = HashMap::new();
    let mut inputs_open = true;
    let closed = |inflight: &mut HashMap<u16, Msg>, why: String| {
        for (_, msg) in inflight.drain() {
            msg.fail(&why);
        }
        NodeError::new(why)
    };
    while inputs_open || !inflight.is_empty() {
        tokio::select! {
            biased;
            packet = link.recv() => match packet {
                Some(Packet5::PubAck(id, code) | Packet5::PubComp(id, code)) => {
                    if let Some(msg) = inflight.remove(&id.get()) {
                        settle_local(msg, code);
                    }
                }
                Some(Packet5::PubRec(id, code)) if code >= 0x80 => {
                    if let Some(msg) = inflight.remove(&id.get()) {
                        settle_local(msg, code);
                    }
                }
                Some(Packet5::PubRec(id, _)) => {
                    if link.send(Packet5::PubRel(id, 0)).await.is_err() {
                        return Err(closed(&mut inflight, LinkError::Closed.to_string()));
                    }
                }
                Some(Packet5::Disconnect(code, _)) => {
                    let why = format!("the built-in broker closed the connection (reason {code:#04x})");
                    return Err(closed(&mut inflight, why));
                }
                Some(_) => {}
                None => return Err(closed(&mut inflight, LinkError::Closed.to_string())),
            },
            msg = cx.recv(), if inputs_open && inflight.len() < usize::from(settings.inflight) => {
                let Some(msg) = msg else {
                    inputs_open = false;
                    continue;
                };
                let (topic, retain) = match settings.destination(&msg) {
                    Ok(destination) => destination,
                    Err(reason) => {
                        cx.outputs.emit_error(msg, reason).await;
                        continue;
                    }
                };
                let mut packet_id = None;
                if qos != codec::Qos::AtMostOnce {
                    // At most `inflight` ids are taken, so a free one is near.
                    let mut id = link.next_packet_id();
                    while inflight.contains_key(&id.get()) {
                        id = link.next_packet_id();
                    }
                    packet_id = Some(id);
                }
                let publish = codec::Publish {
                    topic: topic.into(),
                    payload: msg.payload.clone(),
                    qos,
                    retain,
                    dup: false,
                    packet_id,
                    topic_alias: None,
                    subscription_ids: Vec::new(),
                    properties: Default::default(),
                };
                let sent = link.send(Packet5::Publish(Box::new(publish))).await;
                match (sent, packet_id) {
                    (Err(e), _) => {
                        msg.fail(&e);
                        return Err(closed(&mut inflight, e.to_string()));
                    }
                    (Ok(()), None) => msg.done(),
                    (Ok(()), Some(id)) => {
                        inflight.insert(id.get(), msg);
                    }
                }
            }
        }
    }
    link.disconnect().await;
    Ok(())
}

/// The built-in broker's verdict on one QoS 1/2 publish.
fn settle_local(msg: Msg, code: u8) {
    if code >= 0x80 {
        msg.fail(format!(
            "the built-in broker refused it (reason {code:#04x})"
        ));
    } else {
        msg.done();
    }
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
                mqtt::log_connected(&node, settings.connection.target(), &mut connected_before);
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
                mqtt::wait_to_retry(
                    &node,
                    settings.connection.target(),
                    &e,
                    &mut backoff,
                    &clock,
                )
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
