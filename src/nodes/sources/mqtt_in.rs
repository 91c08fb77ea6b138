//! `mqtt.in`: subscribes and emits what arrives; on a remote broker (`url:`, rumqttc)
//! or, without `url`, on the built-in broker through the in-process link. For QoS 1
//! and 2 the PUBACK/PUBREC is held until the message and everything derived from it
//! reached a terminal state in the flow, so a crash or a failing sink never loses a
//! message the broker counts as delivered. In process, the node's session is durable
//! in the broker's store: the broker acknowledges a remote publisher once the message
//! is queued there, and the queue entry goes when the flow is done with it.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS, SubscribeFilter};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::broker::codec::{self, Packet as Packet5, SubscriptionOptions};
use crate::broker::{LinkError, LocalClient};
use crate::engine::{Clock, Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId, Outcome};
use crate::flow::values::HumanDuration;
use crate::nodes::mqtt::{self, AbortOnDrop, Backoff, Connection, Qos, Will};
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of an `mqtt.in` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttInConfig {
    /// A remote broker: `mqtt://[user:password@]host[:port]`. Leave it out to
    /// subscribe on the built-in broker, in process (no TCP).
    pub url: Option<String>,
    /// Topic filters to subscribe to; `+` and `#` wildcards as in MQTT.
    pub topics: Topics,
    /// QoS of the subscriptions (default 0). With 1 or 2 the broker's acknowledgement
    /// waits for the flow to finish each message.
    #[serde(default)]
    pub qos: Qos,
    /// Client id (default `headwater-FLOW-NODE`); keep it stable for a persistent session.
    pub client_id: Option<String>,
    /// User name (overrides one in `url`; remote brokers only).
    pub username: Option<String>,
    /// Password (overrides one in `url`; remote brokers only); use `${file:...}` or
    /// `${ENV}` for secrets.
    pub password: Option<String>,
    /// Keepalive interval (default `60s`; remote brokers only).
    pub keepalive: Option<HumanDuration>,
    /// Start a fresh session on every connect. Default: `false` for QoS 1 and 2 (the
    /// broker keeps the subscription and queues messages while the gateway is away),
    /// `true` for QoS 0.
    pub clean_session: Option<bool>,
    /// Message the broker publishes if this connection drops.
    pub will: Option<Will>,
    /// What to do with a QoS 1/2 message whose processing failed (no `error` port
    /// took it): `redeliver` (default) keeps it unacknowledged and reconnects, so the
    /// broker delivers it again; `acknowledge` acknowledges it anyway (it is logged).
    #[serde(default)]
    pub failed: OnFailure,
    /// Most QoS 0 messages waiting for the flow (default 10000); beyond it new ones are
    /// dropped and counted in a warning, as a broker drops QoS 0 for a slow client.
    /// In process the built-in broker's own queue (`max_queued_messages`) is the bound.
    #[serde(default = "default_max_pending")]
    #[schemars(range(min = 1))]
    pub max_pending: usize,
}

fn default_max_pending() -> usize {
    10_000
}

/// One topic filter or a list of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Topics {
    /// One filter.
    One(String),
    /// Several filters.
    Many(Vec<String>),
}

impl Topics {
    fn list(&self) -> Vec<String> {
        match self {
            Topics::One(t) => vec![t.clone()],
            Topics::Many(ts) => ts.clone(),
        }
    }
}

/// What happens to a QoS 1/2 message whose processing failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep it unacknowledged and reconnect: the broker delivers it again.
    #[default]
    Redeliver,
    /// Acknowledge it anyway.
    Acknowledge,
}

impl MqttInConfig {
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
            clean_session: self.clean_session.unwrap_or(self.qos.0 == 0),
            will: self.will.clone(),
        }
    }
}

impl Config for MqttInConfig {
    const TYPE: &'static str = "mqtt.in";
    const ROLE: Role = Role::Source;
    const DOC: &'static str =
        "Subscribes on an MQTT broker; QoS 1/2 acknowledgements wait for the flow";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = mqtt::validate(&self.connection());
        let topics = self.topics.list();
        if topics.is_empty() {
            issues.push(ConfigIssue::new("topics", "name at least one topic filter"));
        }
        for (i, topic) in topics.iter().enumerate() {
            if let Err(e) = mqtt::check_topic_filter(topic) {
                let path = match self.topics {
                    Topics::One(_) => "topics".to_string(),
                    Topics::Many(_) => format!("topics[{i}]"),
                };
                issues.push(ConfigIssue::new(path, e));
            }
        }
        issues
    }

    fn holds_acks(&self) -> bool {
        self.qos.0 > 0
    }

    fn build(&self, _: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let settings = Arc::new(Settings {
            connection: self.connection(),
            filters: self.topics.list(),
            qos: self.qos.get(),
            failed: self.failed,
            max_pending: self.max_pending,
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
    filters: Vec<String>,
    qos: QoS,
    failed: OnFailure,
    max_pending: usize,
}

impl Settings {
    /// What a failed message means, by `failed:`: an error that ends the run so the
    /// broker delivers it again (`redeliver`), or a warning and an acknowledgement.
    fn judge_failure(
        &self,
        node: &NodeId,
        topic: &str,
        outcome: &Outcome,
    ) -> Result<(), NodeError> {
        let Outcome::Failed(reason) = outcome else {
            return Ok(());
        };
        if self.failed == OnFailure::Redeliver {
            return Err(NodeError::new(format!(
                "a message on `{topic}` failed ({reason}); it stays unacknowledged and the broker will deliver it again"
            )));
        }
        tracing::warn!(node = %node, "a message on `{topic}` failed ({reason}); acknowledged anyway (`failed: acknowledge`)");
        Ok(())
    }
}

/// A message received on connection number `generation`; its packet id only means
/// something on that connection.
struct Received {
    generation: u64,
    publish: Publish,
}

async fn run(settings: Arc<Settings>, cx: NodeContext) -> Result<(), NodeError> {
    let (client, eventloop) = settings
        .connection
        .client(&cx.id, 100)
        .map_err(NodeError::new)?;
    let generation = Arc::new(AtomicU64::new(0));
    let pending = Arc::new(AtomicUsize::new(0));
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Received>();
    let poller = Some(tokio::spawn(poll(
        eventloop,
        client.clone(),
        settings.clone(),
        cx.id.clone(),
        cx.clock.clone(),
        in_tx,
        generation.clone(),
        pending.clone(),
    )));
    let mut poller = AbortOnDrop(poller);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(Received, Outcome)>();
    let mut outstanding = 0usize;
    loop {
        tokio::select! {
            biased;
            Some((received, outcome)) = ack_rx.recv() => {
                outstanding -= 1;
                settle(&settings, &client, &generation, &cx.id, received, outcome).await?;
            }
            _ = cx.shutdown.cancelled() => break,
            Some(received) = in_rx.recv() => {
                let publish = &received.publish;
                let (topic, payload) = (topic_of(publish), publish.payload.clone());
                let qos = publish.qos as u8;
                let retain = if publish.retain { "true" } else { "false" };
                let mut msg = if publish.qos == QoS::AtMostOnce {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    Msg::new(topic, payload, cx.clock.wall_ms())
                } else {
                    outstanding += 1;
                    let ack_tx = ack_tx.clone();
                    Msg::tracked(topic, payload, cx.clock.wall_ms(), move |outcome| {
                        // A closed channel means this run ended: the message stays
                        // unacknowledged and the broker delivers it again.
                        let _ = ack_tx.send((received, outcome));
                    })
                };
                let headers = msg.headers_mut();
                headers.insert("qos".into(), qos.to_string());
                headers.insert("retain".into(), retain.into());
                cx.emit(msg).await;
            }
            else => break,
        }
    }
    // Stop taking messages; let the ones in the flow finish and acknowledge them.
    cx.outputs.close();
    while outstanding > 0 {
        let Some((received, outcome)) = ack_rx.recv().await else {
            break;
        };
        outstanding -= 1;
        settle(&settings, &client, &generation, &cx.id, received, outcome).await?;
    }
    // A clean DISCONNECT (no will); the engine's drain deadline bounds the wait.
    let _ = client.disconnect().await;
    if let Some(task) = poller.0.take() {
        let _ = task.await;
    }
    Ok(())
}

/// QoS 1/2 messages the built-in broker sends before the flow finished some.
const LOCAL_WINDOW: u16 = 1024;

/// A message from the built-in broker, waiting for the flow's verdict.
struct LocalDelivery {
    topic: Arc<str>,
    packet_id: Option<NonZeroU16>,
    qos: codec::Qos,
}

/// `mqtt.in` without `url`: a session of the built-in broker, in process.
async fn run_local(settings: Arc<Settings>, cx: NodeContext) -> Result<(), NodeError> {
    let (mut link, _) = mqtt::connect_local(&cx, &settings.connection, LOCAL_WINDOW).await?;
    // A resumed session keeps its subscriptions; make them what the flow file says now
    // (an edited `topics:` takes effect), without resending retained messages for the
    // filters it already had.
    let client_id = settings.connection.client_id(&cx.id);
    let stale: Vec<String> = cx
        .broker
        .as_ref()
        .map(|b| b.subscriptions_of(&client_id))
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !settings.filters.contains(f))
        .collect();
    if !stale.is_empty() {
        tracing::info!(node = %cx.id, "dropping subscriptions no longer in the flow: {stale:?}");
        link.unsubscribe(stale)
            .await
            .map_err(|e| NodeError::new(e.to_string()))?;
    }
    {
        let options = SubscriptionOptions {
            retain_handling: 1,
            ..SubscriptionOptions::qos(
                codec::Qos::from_u8(settings.qos as u8).unwrap_or(codec::Qos::AtMostOnce),
            )
        };
        let filters = settings
            .filters
            .iter()
            .map(|f| (f.clone(), options))
            .collect();
        let codes = link
            .subscribe(filters)
            .await
            .map_err(|e| NodeError::new(e.to_string()))?;
        let mut granted = 0;
        for (filter, code) in settings.filters.iter().zip(&codes) {
            if *code >= 0x80 {
                tracing::warn!(node = %cx.id, "the built-in broker refused the subscription to `{filter}` (reason {code:#04x})");
            } else {
                granted += 1;
            }
        }
        tracing::info!(node = %cx.id, "subscribed to {granted} of {} topic filters on the built-in broker", codes.len());
    }
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(LocalDelivery, Outcome)>();
    let mut outstanding = 0usize;
    loop {
        tokio::select! {
            biased;
            Some((delivery, outcome)) = ack_rx.recv() => {
                outstanding -= 1;
                settle_local(&settings, &link, &cx.id, delivery, outcome).await?;
            }
            _ = cx.shutdown.cancelled() => break,
            packet = link.recv() => match packet {
                Some(Packet5::Publish(publish)) => {
                    let delivery = LocalDelivery {
                        topic: Arc::from(&*publish.topic),
                        packet_id: publish.packet_id,
                        qos: publish.qos,
                    };
                    let mut msg = if publish.qos == codec::Qos::AtMostOnce {
                        Msg::new(delivery.topic.clone(), publish.payload.clone(), cx.clock.wall_ms())
                    } else {
                        outstanding += 1;
                        let ack_tx = ack_tx.clone();
                        let topic = delivery.topic.clone();
                        Msg::tracked(topic, publish.payload.clone(), cx.clock.wall_ms(), move |outcome| {
                            // A closed channel means this run ended: the message stays
                            // in flight and the broker sends it again on reconnect.
                            let _ = ack_tx.send((delivery, outcome));
                        })
                    };
                    let headers = msg.headers_mut();
                    headers.insert("qos".into(), (publish.qos as u8).to_string());
                    headers.insert("retain".into(), publish.retain.to_string());
                    cx.emit(msg).await;
                }
                // QoS 2, second half: the broker released it; it is ours alone now.
                Some(Packet5::PubRel(id, _)) => send_local(&link, Packet5::PubComp(id, 0)).await?,
                Some(Packet5::Disconnect(code, _)) => {
                    return Err(NodeError::new(format!(
                        "the built-in broker closed the session (reason {code:#04x})"
                    )));
                }
                Some(_) => {}
                None => return Err(NodeError::new(LinkError::Closed.to_string())),
            },
        }
    }
    // As for a remote broker: let what is in the flow finish, then leave cleanly. What
    // the broker sent after this stays in the session for the next start.
    cx.outputs.close();
    while outstanding > 0 {
        let Some((delivery, outcome)) = ack_rx.recv().await else {
            break;
        };
        outstanding -= 1;
        settle_local(&settings, &link, &cx.id, delivery, outcome).await?;
    }
    link.disconnect().await;
    Ok(())
}

async fn send_local(link: &LocalClient, packet: Packet5) -> Result<(), NodeError> {
    link.send(packet)
        .await
        .map_err(|e| NodeError::new(e.to_string()))
}

/// Acknowledges a finished message to the built-in broker (PUBACK, or PUBREC for QoS 2),
/// or ends the run so the broker sends it again.
async fn settle_local(
    settings: &Settings,
    link: &LocalClient,
    node: &NodeId,
    delivery: LocalDelivery,
    outcome: Outcome,
) -> Result<(), NodeError> {
    settings.judge_failure(node, &delivery.topic, &outcome)?;
    let Some(id) = delivery.packet_id else {
        return Ok(());
    };
    let packet = match delivery.qos {
        codec::Qos::ExactlyOnce => Packet5::PubRec(id, 0),
        _ => Packet5::PubAck(id, 0),
    };
    send_local(link, packet).await
}

fn topic_of(publish: &Publish) -> Arc<str> {
    Arc::from(publish.topic.as_str())
}

/// Acknowledges a finished QoS 1/2 message, or ends the run so the broker redelivers it.
async fn settle(
    settings: &Settings,
    client: &AsyncClient,
    generation: &AtomicU64,
    node: &NodeId,
    received: Received,
    outcome: Outcome,
) -> Result<(), NodeError> {
    settings.judge_failure(node, &topic_of(&received.publish), &outcome)?;
    // A packet id from an earlier connection would acknowledge some other message on
    // this one; the broker redelivers the old message instead.
    if received.generation == generation.load(Ordering::Acquire) {
        client
            .ack(&received.publish)
            .await
            .map_err(|e| NodeError::new(format!("cannot acknowledge: {e}")))?;
    }
    Ok(())
}

/// Drives the connection: reconnects with backoff, subscribes when the broker has no
/// session for us, forwards publishes.
#[allow(clippy::too_many_arguments)]
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    settings: Arc<Settings>,
    node: NodeId,
    clock: Clock,
    in_tx: mpsc::UnboundedSender<Received>,
    generation: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
) {
    let mut backoff = Backoff::default();
    let mut connected_before = false;
    let mut dropped = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                generation.fetch_add(1, Ordering::AcqRel);
                backoff.reset();
                mqtt::log_connected(&node, settings.connection.target(), &mut connected_before);
                if !ack.session_present {
                    let filters = settings
                        .filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), settings.qos));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::warn!(node = %node, "cannot subscribe: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let mut granted = 0;
                for (filter, code) in settings.filters.iter().zip(&suback.return_codes) {
                    if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                        tracing::warn!(node = %node, "the broker refused the subscription to `{filter}`");
                    } else {
                        granted += 1;
                    }
                }
                tracing::info!(node = %node, "subscribed to {granted} of {} topic filters", settings.filters.len());
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.qos == QoS::AtMostOnce {
                    if pending.load(Ordering::Relaxed) >= settings.max_pending {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(node = %node, dropped, "the flow is behind: QoS 0 messages dropped");
                        }
                        continue;
                    }
                    pending.fetch_add(1, Ordering::Relaxed);
                }
                let received = Received {
                    generation: generation.load(Ordering::Acquire),
                    publish,
                };
                if in_tx.send(received).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Let rumqttc finish writing the DISCONNECT before the task ends.
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

    fn load_error(node: &str) -> Vec<String> {
        let yaml = format!("version: 1\nflows:\n  f:\n    nodes:\n      sub: {node}\n");
        crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml)],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .map(|d| d.headlines())
        .unwrap_or_default()
    }

    #[test]
    fn options_are_checked_and_located() {
        assert_eq!(
            load_error("{ type: mqtt.in, url: \"http://h\", topics: [\"a/#/b\", ok] }"),
            [
                "f.yaml:5:34: f/sub: `url`: `http://h` is not a broker URL; write `mqtt://host:1883`",
                "f.yaml:5:55: f/sub: `topics[0]`: `a/#/b`: `#` must be a whole level and the last one, as in `sensors/#`"
            ]
        );
        assert_eq!(
            load_error("{ type: mqtt.in, url: \"mqtt://h\", topics: a, qos: 3 }"),
            ["f.yaml:5:62: f/sub: `qos`: qos is 0, 1 or 2, not 3"]
        );
        assert!(
            load_error("{ type: mqtt.in, url: \"mqtt://h\", topics: \"a/+\", qos: 1 }").is_empty()
        );
        // Without `url`: the built-in broker, where credentials mean nothing.
        assert!(load_error("{ type: mqtt.in, topics: \"a/+\", qos: 1 }").is_empty());
        let errors = load_error("{ type: mqtt.in, topics: a, username: u, keepalive: 5s }");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("`username` applies to a remote broker"),
            "{errors:?}"
        );
    }
}
