//! The workloads: each connects its own clients to a running broker, drives the load
//! and returns what it measured. None knows which broker it talks to.
//!
//! Throughput workloads keep at most `window` messages published and not yet received
//! by the slowest subscriber. Both brokers drop messages once a subscriber's queue is
//! full (1000 by default); a window below that measures the rate a broker sustains
//! without loss instead of how fast it can discard.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures::{StreamExt, TryStreamExt};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::brokers::BrokerProcess;
use super::client::{self, Client, Endpoint, Reader, Writer};

/// Messages queued per write by a publisher.
const BATCH: u64 = 64;

/// Connections opened at once by the idle-memory workload.
const CONNECT_CONCURRENCY: usize = 200;

/// The load's shape, from the command line.
#[derive(Clone, Debug)]
pub struct Load {
    /// Messages published by a throughput workload; `None` = the workload's default.
    pub messages: Option<u64>,
    /// Payload bytes (at least 8: the send time travels in the first 8).
    pub payload: usize,
    /// Publishers of fan-in and qos1-durable.
    pub publishers: usize,
    /// Subscribers of fan-out.
    pub subscribers: usize,
    /// Most messages published and not yet received by the slowest subscriber.
    pub window: u64,
    /// Most unacknowledged QoS 1 publishes per publisher.
    pub inflight: u16,
    /// Latency workload: messages per second.
    pub rate: u32,
    /// Latency workload: how long each QoS is measured.
    pub duration: Duration,
    /// Latency workload: segments `duration` is split into, the brokers taking turns.
    pub segments: u32,
    /// Idle-memory workload: connections opened.
    pub connections: usize,
    /// Idle-memory workload: source addresses 127.0.0.1 ..= 127.0.0.N.
    pub source_addresses: u8,
    /// A subscriber that receives nothing for this long ends the run (lost messages).
    pub quiet: Duration,
    /// tls-connect: connections made.
    pub tls_connections: usize,
    /// tls-connect: connections in progress at once.
    pub tls_concurrency: usize,
}

impl Load {
    /// The load of one latency segment: `duration / segments`.
    pub fn segment(&self) -> Load {
        Load {
            duration: self.duration / self.segments.max(1),
            ..self.clone()
        }
    }
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Metric {
    /// What it is.
    pub name: String,
    /// Its unit.
    pub unit: &'static str,
    /// The value.
    pub value: f64,
    /// Whether more is better (throughput) or less (latency, memory).
    pub higher_is_better: bool,
    /// A condition of the run rather than a result of the broker (CPU the host took):
    /// shown beside the results, never as a ratio or a side that did better.
    pub condition: bool,
}

/// What one workload measured on one broker.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// The figures, in a fixed order per workload.
    pub metrics: Vec<Metric>,
    /// Anything a reader must know to trust the figures (lost messages).
    pub notes: Vec<String>,
    /// What the run used, for the record rather than as a warning (the negotiated TLS
    /// version and cipher suite).
    pub details: Vec<String>,
}

impl Measured {
    /// Adds a result; `higher`: more is better.
    fn push(&mut self, name: impl Into<String>, unit: &'static str, value: f64, higher: bool) {
        self.metrics.push(Metric {
            name: name.into(),
            unit,
            value,
            higher_is_better: higher,
            condition: false,
        });
    }

    /// Adds a condition the run was measured under (see [`Metric::condition`]).
    pub(super) fn push_condition(
        &mut self,
        name: impl Into<String>,
        unit: &'static str,
        value: f64,
    ) {
        self.metrics.push(Metric {
            name: name.into(),
            unit,
            value,
            higher_is_better: false,
            condition: true,
        });
    }
}

/// Default message counts, each about 5 s on the 2-core VM.
pub const FAN_IN_MESSAGES: u64 = 1_000_000;
/// See [`FAN_IN_MESSAGES`].
pub const QOS1_MESSAGES: u64 = 300_000;
/// See [`FAN_IN_MESSAGES`]; each goes to every subscriber.
pub const FAN_OUT_MESSAGES: u64 = 20_000;

/// Shared progress of publishers and subscribers.
struct Progress {
    /// Messages published so far (all publishers).
    sent: AtomicU64,
    /// Messages received so far, per subscriber.
    received: Vec<AtomicU64>,
    /// Woken whenever a subscriber received a batch.
    received_more: Notify,
    /// Most messages published and not yet received by the slowest subscriber.
    window: u64,
}

impl Progress {
    fn new(subscribers: usize, window: u64) -> Arc<Progress> {
        Arc::new(Progress {
            sent: AtomicU64::new(0),
            received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            received_more: Notify::new(),
            window,
        })
    }

    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Waits until `n` more messages fit in the window, and claims them.
    async fn claim(&self, n: u64) {
        loop {
            let notified = self.received_more.notified();
            tokio::pin!(notified);
            // Registered before the check, so a batch received in between still wakes us.
            notified.as_mut().enable();
            let sent = self.sent.load(Ordering::Acquire);
            if sent + n <= self.slowest() + self.window.max(n) {
                if self
                    .sent
                    .compare_exchange(sent, sent + n, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            notified.await;
        }
    }

    fn received(&self, subscriber: usize, total: u64) {
        self.received[subscriber].store(total, Ordering::Release);
        self.received_more.notify_waiters();
    }
}

/// What one subscriber saw.
struct Received {
    count: u64,
    last: Option<Instant>,
    /// Latencies in nanoseconds, when asked for.
    latencies: Vec<u64>,
    /// The subscriber's connection, for another round.
    halves: (Reader, Writer),
}

/// Receives until `expected` messages arrived or none came for `quiet`; acknowledges
/// QoS 1 deliveries in one write per read.
async fn receive(
    mut reader: Reader,
    mut writer: Writer,
    progress: Arc<Progress>,
    index: usize,
    expected: u64,
    quiet: Duration,
    clock: Option<Instant>,
) -> anyhow::Result<Received> {
    let mut count = 0;
    let mut last = None;
    let mut latencies = Vec::new();
    while count < expected {
        let packet = match tokio::time::timeout(quiet, reader.next()).await {
            Err(_) => break,
            Ok(packet) => packet?,
        };
        let mut next = packet;
        let now = Instant::now();
        while let Some(packet) = next {
            if let Packet::Publish(publish) = packet {
                count += 1;
                if let Some(packet_id) = publish.packet_id {
                    writer.queue(Packet::PublishAck { packet_id })?;
                }
                if let Some(clock) = clock {
                    let sent = read_timestamp(&publish.payload)?;
                    let at = now.duration_since(clock).as_nanos() as u64;
                    latencies.push(at.saturating_sub(sent));
                }
            }
            next = reader.buffered()?;
        }
        last = Some(now);
        progress.received(index, count);
        writer.flush().await?;
    }
    Ok(Received {
        count,
        last,
        latencies,
        halves: (reader, writer),
    })
}

/// A payload of `size` bytes whose first 8 are `nanos` (big endian).
fn timestamped(size: usize, nanos: u64) -> Bytes {
    let mut payload = BytesMut::zeroed(size.max(8));
    payload[..8].copy_from_slice(&nanos.to_be_bytes());
    payload.freeze()
}

fn read_timestamp(payload: &[u8]) -> anyhow::Result<u64> {
    let bytes = payload
        .get(..8)
        .context("a payload without a timestamp: is something else publishing?")?;
    Ok(u64::from_be_bytes(bytes.try_into().expect("eight bytes")))
}

/// Publishes `count` copies of `payload` at QoS 0 in batches, within the window.
async fn publish_qos0(
    mut writer: Writer,
    topic: ByteString,
    payload: Bytes,
    count: u64,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        progress.claim(n).await;
        for _ in 0..n {
            writer.queue(client::publish(
                &topic,
                payload.clone(),
                QoS::AtMostOnce,
                None,
            ))?;
        }
        writer.flush().await?;
        sent += n;
    }
    Ok(())
}

/// Publishes `count` copies of `payload` at QoS 1 with at most `inflight` unacknowledged,
/// within the window; returns once every PUBACK arrived.
async fn publish_qos1(
    client: Client,
    topic: ByteString,
    payload: Bytes,
    count: u64,
    inflight: u16,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let (mut reader, mut writer) = client.split();
    let permits = Semaphore::new(usize::from(inflight.max(1)));
    let send = async {
        let mut sent = 0;
        let mut packet_id = 0u16;
        while sent < count {
            let want = BATCH.min(count - sent);
            permits.acquire().await?.forget();
            let mut n = 1;
            while n < want {
                match permits.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                n += 1;
            }
            progress.claim(n).await;
            for _ in 0..n {
                packet_id = packet_id.checked_add(1).unwrap_or(1);
                writer.queue(client::publish(
                    &topic,
                    payload.clone(),
                    QoS::AtLeastOnce,
                    NonZeroU16::new(packet_id),
                ))?;
            }
            writer.flush().await?;
            sent += n;
        }
        anyhow::Ok(())
    };
    let acks = async {
        let mut acked = 0;
        while acked < count {
            match reader.next().await? {
                Some(Packet::PublishAck { .. }) => {
                    acked += 1;
                    permits.add_permits(1);
                }
                Some(_) => {}
                None => bail!("the broker closed a publisher's connection"),
            }
        }
        Ok(())
    };
    tokio::try_join!(send, acks)?;
    Ok(())
}

/// Throughput from `count` messages received between `start` and `last`.
fn rate(count: u64, start: Instant, last: Option<Instant>) -> f64 {
    match last {
        Some(last) if last > start => count as f64 / last.duration_since(start).as_secs_f64(),
        _ => 0.0,
    }
}

/// fan-in: `publishers` -> 1 subscriber at `qos` (QoS 1: a persistent session and
/// `inflight` unacknowledged publishes per publisher); received messages/s.
pub async fn fan_in(broker: &BrokerProcess, load: &Load, qos: QoS) -> anyhow::Result<Measured> {
    let endpoint = &broker.endpoint;
    let persistent = qos == QoS::AtLeastOnce;
    let default = if persistent {
        QOS1_MESSAGES
    } else {
        FAN_IN_MESSAGES
    };
    let messages = load.messages.unwrap_or(default);
    let mut subscriber = Client::connect(endpoint, None, "bench-fan-in-sub", !persistent).await?;
    subscriber.subscribe("bench/fan-in/+", qos).await?;
    let tls_session = subscriber.tls_session.take();
    let mut publishers = Vec::new();
    for i in 0..load.publishers {
        publishers
            .push(Client::connect(endpoint, None, &format!("bench-fan-in-pub-{i}"), true).await?);
    }
    let progress = Progress::new(1, load.window);
    let payload = timestamped(load.payload, 0);
    let written_before = broker.disk_written_bytes()?;
    let start = Instant::now();
    let (reader, writer) = subscriber.split();
    let receiving = tokio::spawn(receive(
        reader,
        writer,
        progress.clone(),
        0,
        messages,
        load.quiet,
        None,
    ));
    let mut sending = JoinSet::new();
    let share = messages / load.publishers as u64;
    for (i, publisher) in publishers.into_iter().enumerate() {
        // The first publisher also sends the remainder.
        let count = share
            + if i == 0 {
                messages % load.publishers as u64
            } else {
                0
            };
        let topic = ByteString::from(format!("bench/fan-in/{i}"));
        let progress = progress.clone();
        let payload = payload.clone();
        if persistent {
            sending.spawn(publish_qos1(
                publisher,
                topic,
                payload,
                count,
                load.inflight,
                progress,
            ));
        } else {
            sending.spawn(publish_qos0(
                publisher.writer,
                topic,
                payload,
                count,
                progress,
            ));
        }
    }
    let received = receiving.await??;
    finish_publishers(sending, received.count == messages, load.quiet).await?;
    let mut measured = Measured::default();
    measured.push(
        "received msg/s",
        "msg/s",
        rate(received.count, start, received.last),
        true,
    );
    if persistent {
        // Read once every PUBACK is in: what it took to make the messages durable.
        let written = broker.disk_written_bytes()?.saturating_sub(written_before);
        measured.push(
            "disk writes per message",
            "B",
            written as f64 / received.count.max(1) as f64,
            false,
        );
    }
    measured
        .details
        .extend(tls_session.map(|s| format!("tls: {s}")));
    if received.count < messages {
        measured.notes.push(format!(
            "lost {} of {messages} messages (nothing arrived for {:?})",
            messages - received.count,
            load.quiet
        ));
    }
    Ok(measured)
}

/// Waits for the publishers when everything arrived (QoS 1: their last PUBACKs), else
/// stops them.
async fn finish_publishers(
    mut sending: JoinSet<anyhow::Result<()>>,
    complete: bool,
    quiet: Duration,
) -> anyhow::Result<()> {
    if !complete {
        sending.abort_all();
        return Ok(());
    }
    let all = async {
        while let Some(done) = sending.join_next().await {
            done??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(quiet, all)
        .await
        .context("publishers still waiting for acknowledgements")?
}

/// fan-out: 1 publisher -> `subscribers`, QoS 0; deliveries/s.
pub async fn fan_out(broker: &BrokerProcess, load: &Load) -> anyhow::Result<Measured> {
    let endpoint = &broker.endpoint;
    let messages = load.messages.unwrap_or(FAN_OUT_MESSAGES);
    let mut subscribers = Vec::new();
    for i in 0..load.subscribers {
        let mut subscriber =
            Client::connect(endpoint, None, &format!("bench-fan-out-sub-{i}"), true).await?;
        subscriber
            .subscribe("bench/fan-out", QoS::AtMostOnce)
            .await?;
        subscribers.push(subscriber);
    }
    let publisher = Client::connect(endpoint, None, "bench-fan-out-pub", true).await?;
    let progress = Progress::new(subscribers.len(), load.window);
    let start = Instant::now();
    let mut receiving = JoinSet::new();
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let (reader, writer) = subscriber.split();
        receiving.spawn(receive(
            reader,
            writer,
            progress.clone(),
            i,
            messages,
            load.quiet,
            None,
        ));
    }
    let mut sending = JoinSet::new();
    sending.spawn(publish_qos0(
        publisher.writer,
        ByteString::from_static("bench/fan-out"),
        timestamped(load.payload, 0),
        messages,
        progress.clone(),
    ));
    let mut deliveries = 0;
    let mut last: Option<Instant> = None;
    while let Some(done) = receiving.join_next().await {
        let received = done??;
        deliveries += received.count;
        last = last.max(received.last);
    }
    let expected = messages * load.subscribers as u64;
    finish_publishers(sending, deliveries == expected, load.quiet).await?;
    let mut measured = Measured::default();
    measured.push("deliveries/s", "msg/s", rate(deliveries, start, last), true);
    if deliveries < expected {
        measured.notes.push(format!(
            "lost {} of {expected} deliveries (nothing arrived for {:?})",
            expected - deliveries,
            load.quiet
        ));
    }
    Ok(measured)
}

/// The latency workload on one broker: its clients, connected once and kept for every
/// segment, and what they measured so far. A connection's start (TCP slow start; on
/// Mosquitto, Nagle's algorithm stalling against delayed ACKs) then happens once per
/// run however many segments it has, as it does in a run of one segment.
pub struct LatencyRun {
    /// The clients at QoS 0, then at QoS 1.
    clients: [LatencyClients; 2],
    /// Latencies in nanoseconds, QoS 0 then QoS 1.
    latencies: [Vec<u64>; 2],
    /// Messages published at each QoS.
    expected: [u64; 2],
    /// Growth of the broker's disk writes during the QoS 1 segments.
    qos1_written: u64,
}

impl LatencyRun {
    /// Connects the publisher and subscriber of each QoS to `broker`.
    pub async fn connect(broker: &BrokerProcess) -> anyhow::Result<LatencyRun> {
        Ok(LatencyRun {
            clients: [
                LatencyClients::connect(&broker.endpoint, QoS::AtMostOnce).await?,
                LatencyClients::connect(&broker.endpoint, QoS::AtLeastOnce).await?,
            ],
            latencies: Default::default(),
            expected: [0; 2],
            qos1_written: 0,
        })
    }

    /// One segment: one publisher at `rate` msg/s to one subscriber for `duration` at
    /// QoS 0 and then at QoS 1 (a persistent subscriber, so a durable broker writes each
    /// message).
    pub async fn segment(&mut self, broker: &BrokerProcess, load: &Load) -> anyhow::Result<()> {
        for (index, clients) in self.clients.iter_mut().enumerate() {
            let written_before = broker.disk_written_bytes()?;
            let latencies = clients.measure(load).await?;
            let written = broker.disk_written_bytes()?.saturating_sub(written_before);
            self.expected[index] += messages_in(load);
            self.latencies[index].extend(latencies);
            if clients.qos == QoS::AtLeastOnce {
                self.qos1_written += written;
            }
        }
        Ok(())
    }

    /// p50, p99, max, messages over 1 ms (and QoS 1 disk writes per message) of every
    /// segment so far.
    pub fn figures(self) -> Measured {
        let mut measured = Measured::default();
        let LatencyRun {
            latencies,
            expected,
            qos1_written,
            ..
        } = self;
        for (index, (mut latencies, expected)) in latencies.into_iter().zip(expected).enumerate() {
            let label = ["QoS 0", "QoS 1"][index];
            if (latencies.len() as u64) < expected {
                measured.notes.push(format!(
                    "{label}: {} of {expected} messages arrived",
                    latencies.len()
                ));
            }
            measured
                .details
                .push(format!("{label}: {} messages measured", latencies.len()));
            latencies.sort_unstable();
            let micros = |nanos: u64| nanos as f64 / 1000.0;
            measured.push(
                format!("{label} p50"),
                "µs",
                micros(percentile(&latencies, 50.0)),
                false,
            );
            measured.push(
                format!("{label} p99"),
                "µs",
                micros(percentile(&latencies, 99.0)),
                false,
            );
            measured.push(
                format!("{label} max"),
                "µs",
                micros(latencies.last().copied().unwrap_or(0)),
                false,
            );
            // How many stalls a p99 stands for: on a shared 2-core VM one scheduling
            // hiccup of either broker can move a 20 s run's p99 by milliseconds.
            let stalled = latencies.len() - latencies.partition_point(|&nanos| nanos <= 1_000_000);
            measured.push(format!("{label} over 1 ms"), "msgs", stalled as f64, false);
            if index == 1 {
                measured.push(
                    format!("{label} disk writes per message"),
                    "B",
                    qos1_written as f64 / latencies.len().max(1) as f64,
                    false,
                );
            }
        }
        measured
    }
}

/// latency in one piece: one segment of the whole `duration`.
pub async fn latency(broker: &BrokerProcess, load: &Load) -> anyhow::Result<Measured> {
    let mut run = LatencyRun::connect(broker).await?;
    run.segment(broker, load).await?;
    Ok(run.figures())
}

/// Messages the latency workload publishes per segment at one QoS: `rate` for `duration`.
pub fn messages_in(load: &Load) -> u64 {
    (u128::from(load.rate) * load.duration.as_millis() / 1000) as u64
}

/// The nearest-rank percentile of sorted `values`; 0 when empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The latency workload's publisher and subscriber at one QoS, between segments.
struct LatencyClients {
    qos: QoS,
    topic: ByteString,
    /// The send and receive times of every segment are read from this one clock.
    clock: Instant,
    /// `None` only while a segment runs, or after one failed.
    subscriber: Option<(Reader, Writer)>,
    publisher: Option<Writer>,
    /// Reads and drops the publisher's PUBACKs, so its socket never fills.
    draining: tokio::task::JoinHandle<()>,
    /// The publisher's last packet id.
    packet_id: u16,
}

impl Drop for LatencyClients {
    fn drop(&mut self) {
        self.draining.abort();
    }
}

impl LatencyClients {
    async fn connect(endpoint: &Endpoint, qos: QoS) -> anyhow::Result<LatencyClients> {
        let level = qos as u8;
        let topic = ByteString::from(format!("bench/latency/{level}"));
        let persistent = qos == QoS::AtLeastOnce;
        let mut subscriber = Client::connect(
            endpoint,
            None,
            &format!("bench-latency-sub-{level}"),
            !persistent,
        )
        .await?;
        subscriber.subscribe(&topic, qos).await?;
        let publisher =
            Client::connect(endpoint, None, &format!("bench-latency-pub-{level}"), true).await?;
        let (mut acks, writer) = publisher.split();
        let draining = tokio::spawn(async move { while let Ok(Some(_)) = acks.next().await {} });
        Ok(LatencyClients {
            qos,
            topic,
            clock: Instant::now(),
            subscriber: Some(subscriber.split()),
            publisher: Some(writer),
            draining,
            packet_id: 0,
        })
    }

    /// Publishes `rate` msg/s for `duration`; the latencies in nanoseconds of what arrived.
    async fn measure(&mut self, load: &Load) -> anyhow::Result<Vec<u64>> {
        let count = messages_in(load);
        let clock = self.clock;
        let (reader, writer) = self
            .subscriber
            .take()
            .context("the latency subscriber was lost in an earlier segment")?;
        // The window never binds at a fixed rate; the subscriber counts into it regardless.
        let progress = Progress::new(1, u64::MAX / 2);
        let receiving = tokio::spawn(receive(
            reader,
            writer,
            progress,
            0,
            count,
            load.quiet,
            Some(clock),
        ));
        let mut writer = self
            .publisher
            .take()
            .context("the latency publisher was lost in an earlier segment")?;
        let qos = self.qos;
        let topic = self.topic.clone();
        let mut packet_id = self.packet_id;
        let payload_size = load.payload;
        let rate = u64::from(load.rate.max(1));
        let sending = tokio::spawn(async move {
            // A tick every millisecond sends what is due by then, so rates above 1000/s
            // work with tokio's millisecond timer.
            let mut ticks = tokio::time::interval(Duration::from_millis(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < count {
                ticks.tick().await;
                let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000 + 1).min(count);
                while sent < due {
                    let nanos = clock.elapsed().as_nanos() as u64;
                    let id = if qos == QoS::AtLeastOnce {
                        packet_id = packet_id.checked_add(1).unwrap_or(1);
                        NonZeroU16::new(packet_id)
                    } else {
                        None
                    };
                    writer.queue(client::publish(
                        &topic,
                        timestamped(payload_size, nanos),
                        qos,
                        id,
                    ))?;
                    sent += 1;
                }
                writer.flush().await?;
            }
            anyhow::Ok((writer, packet_id))
        });
        let received = receiving.await??;
        let (writer, packet_id) = sending.await??;
        self.subscriber = Some(received.halves);
        self.publisher = Some(writer);
        self.packet_id = packet_id;
        Ok(received.latencies)
    }
}

/// Connections made by tls-connect by default.
pub const TLS_CONNECTIONS: usize = 3000;
/// How long the idle-memory clients stay idle before the broker's RSS is read: long
/// enough for Headwater to park them (about 1.5 s after a client's last packet) and
/// for the allocator to return what the connect phase freed (its purge delay).
pub const IDLE_SECONDS: u64 = 6;

/// tls-connect: `tls_connections` clients, `tls_concurrency` at a time, each doing TCP
/// connect, TLS handshake, CONNECT, CONNACK, DISCONNECT and waiting for the broker to
/// close; connections/s over the whole run, and percentiles of the time to the end of
/// the handshake and to CONNACK.
pub async fn connect_rate(broker: &BrokerProcess, load: &Load) -> anyhow::Result<Measured> {
    let endpoint = &broker.endpoint;
    if endpoint.tls.is_none() {
        bail!("tls-connect needs a broker with a TLS listener");
    }
    let total = load.tls_connections.max(1);
    let quiet = load.quiet;
    let start = Instant::now();
    let connections: Vec<(client::Timing, Option<String>)> = futures::stream::iter(0..total)
        .map(|i| async move {
            let (mut client, timing) =
                Client::connect_timed(endpoint, None, &format!("bench-tls-connect-{i}"), true)
                    .await
                    .with_context(|| format!("connection {} of {total}", i + 1))?;
            let session = client.tls_session.take();
            client.disconnect(quiet).await?;
            anyhow::Ok((timing, session))
        })
        .buffer_unordered(load.tls_concurrency.max(1))
        .try_collect()
        .await?;
    let elapsed = start.elapsed();
    let nanos = |d: Duration| d.as_nanos() as u64;
    let mut handshakes: Vec<u64> = connections
        .iter()
        .map(|(t, _)| nanos(t.handshake))
        .collect();
    let mut connacks: Vec<u64> = connections.iter().map(|(t, _)| nanos(t.connack)).collect();
    handshakes.sort_unstable();
    connacks.sort_unstable();
    let mut measured = Measured::default();
    measured.push(
        "connections/s",
        "conn/s",
        connections.len() as f64 / elapsed.as_secs_f64(),
        true,
    );
    let us = |nanos: u64| nanos as f64 / 1000.0;
    for (name, sorted) in [("handshake", &handshakes), ("CONNACK", &connacks)] {
        for p in [50.0, 99.0] {
            measured.push(
                format!("{name} p{p:.0}"),
                "µs",
                us(percentile(sorted, p)),
                false,
            );
        }
    }
    measured.details.extend(
        connections
            .into_iter()
            .find_map(|(_, session)| session)
            .map(|s| format!("tls: {s}")),
    );
    Ok(measured)
}

/// idle-memory: the broker's RSS growth per connection that connected and sits idle.
pub async fn idle_memory(broker: &BrokerProcess, load: &Load) -> anyhow::Result<Measured> {
    // Let the readiness probe's connection be torn down before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = broker.rss_bytes()?;
    let endpoint = &broker.endpoint;
    let sources = load.source_addresses.max(1);
    let clients: Vec<Client> = futures::stream::iter(0..load.connections)
        .map(|i| async move {
            // 127.0.0.1 alone when one source suffices: its ephemeral ports are enough.
            let source = (sources > 1).then(|| {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    1 + (i % usize::from(sources)) as u8,
                ))
            });
            Client::connect(endpoint, source, &format!("bench-idle-{i}"), true)
                .await
                .with_context(|| format!("connection {} of {}", i + 1, load.connections))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    // Idle: whatever the broker does after CONNACK (buffers shrinking, tasks parking)
    // has happened by now.
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
    let after = broker.rss_bytes()?;
    let connections = clients.len();
    drop(clients);
    let mut measured = Measured::default();
    measured.push(
        "RSS per idle connection",
        "bytes",
        after.saturating_sub(before) as f64 / connections.max(1) as f64,
        false,
    );
    measured.push("RSS before", "MiB", before as f64 / (1 << 20) as f64, false);
    measured.push(
        format!("RSS with {connections} connections"),
        "MiB",
        after as f64 / (1 << 20) as f64,
        false,
    );
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn timestamps_round_trip_through_payloads() {
        let payload = timestamped(64, 123_456_789);
        assert_eq!(payload.len(), 64);
        assert_eq!(read_timestamp(&payload).unwrap(), 123_456_789);
        assert_eq!(timestamped(2, 5).len(), 8);
    }

    #[tokio::test]
    async fn the_window_holds_publishers_until_subscribers_catch_up() {
        let progress = Progress::new(2, 10);
        progress.claim(10).await;
        let waiting = {
            let progress = progress.clone();
            tokio::spawn(async move { progress.claim(5).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Only the slowest subscriber counts.
        progress.received(0, 10);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        progress.received(1, 5);
        waiting.await.unwrap();
        assert_eq!(progress.sent.load(Ordering::Acquire), 15);
    }
}
