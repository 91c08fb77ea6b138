//! `$SYS/broker/...`: the broker's counters, published retained every `sys_interval`
//! seconds under Mosquitto's topic names so existing dashboards keep working. Never
//! written to the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;

use super::Broker;
use super::codec::{Publish, Qos};

/// Exponentially decayed rate per minute, as Mosquitto's `load/.../1min`.
struct Load {
    value: f64,
    last: u64,
}

impl Load {
    fn update(&mut self, total: u64, interval: f64, window: f64) -> f64 {
        let per_minute = (total - self.last) as f64 * 60.0 / interval;
        self.last = total;
        let k = (-interval / window).exp();
        self.value = per_minute + k * (self.value - per_minute);
        self.value
    }
}

/// Publishes `$SYS` until shutdown.
pub async fn run(broker: Broker) {
    let interval = broker.shared.config.sys_interval;
    let mut ticker = tokio::time::interval(Duration::from_secs(interval));
    let mut received = Load {
        value: 0.0,
        last: 0,
    };
    let mut sent = Load {
        value: 0.0,
        last: 0,
    };
    loop {
        tokio::select! {
            _ = broker.shared.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let stats = &broker.shared.stats;
        let (sessions, subscriptions, retained) = broker.counts();
        let messages_received = stats.messages_received.load(Ordering::Relaxed);
        let messages_sent = stats.messages_sent.load(Ordering::Relaxed);
        let load_received = received.update(messages_received, interval as f64, 60.0);
        let load_sent = sent.update(messages_sent, interval as f64, 60.0);
        let values = [
            (
                "version",
                format!("headwater version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime",
                format!("{} seconds", broker.shared.started.elapsed().as_secs()),
            ),
            (
                "clients/connected",
                stats.connected.load(Ordering::Relaxed).to_string(),
            ),
            ("clients/total", sessions.to_string()),
            ("messages/received", messages_received.to_string()),
            ("messages/sent", messages_sent.to_string()),
            ("publish/messages/received", messages_received.to_string()),
            ("publish/messages/sent", messages_sent.to_string()),
            (
                "bytes/received",
                stats.bytes_received.load(Ordering::Relaxed).to_string(),
            ),
            (
                "bytes/sent",
                stats.bytes_sent.load(Ordering::Relaxed).to_string(),
            ),
            ("retained messages/count", retained.to_string()),
            ("subscriptions/count", subscriptions.to_string()),
            ("load/messages/received/1min", format!("{load_received:.2}")),
            ("load/messages/sent/1min", format!("{load_sent:.2}")),
        ];
        for (name, value) in values {
            let publish = Publish {
                topic: ByteString::from(format!("$SYS/broker/{name}")),
                payload: Bytes::from(value),
                qos: Qos::AtMostOnce,
                retain: true,
                dup: false,
                packet_id: None,
                topic_alias: None,
                subscription_ids: Vec::new(),
                properties: Default::default(),
            };
            // `$SYS` is never persisted; a failure is logged by `publish`.
            let _ = broker.publish(publish, ByteString::new()).await;
        }
    }
}
