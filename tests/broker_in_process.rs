//! The built-in broker inside the test's own process, over loopback TCP, with a durable
//! store on disk: QoS 0/1/2 between a v3.1.1 and a v5 client, and a retained message
//! that survives a restart of the broker on the same store; and a QoS 1 message
//! acknowledged by its persistent subscriber before the store's writer took it, which
//! is never written (the test reads the store's counters, which needs the same process).
//!
//! The other broker tests run the `headwater` binary as a child; this one exists so the
//! ARM builds can run a broker round trip under qemu-user (deploy/qemu-tests.sh), which
//! cannot start a second ARM process from an emulated one.

mod common;
mod raw_client;

use std::path::Path;
use std::time::{Duration, Instant};

use headwater::broker::{Broker, BrokerConfig, ListenerConfig};
use headwater::store::{Store, StoreOptions};
use raw_client::{Conn, Connect, Props};

/// A started broker on 127.0.0.1 and a free port, on the durable store in `data`.
async fn start(data: &Path) -> (Broker, Store, u16) {
    let store = headwater::broker::open_store(data).expect("open the store");
    let (broker, port) = start_on(store.clone()).await;
    (broker, store, port)
}

/// A started broker on 127.0.0.1 and a free port, on `store`.
async fn start_on(store: Store) -> (Broker, u16) {
    let config = BrokerConfig {
        listeners: vec![ListenerConfig::tcp("127.0.0.1", 0)],
        ..BrokerConfig::default()
    };
    let broker = Broker::open_on(config, store).expect("open the broker");
    let listeners = broker.bind().await.expect("bind a loopback listener");
    let port = listeners[0].local_addr().unwrap().port();
    broker.start(listeners);
    (broker, port)
}

/// The broker's runtime: two workers, as on the 2-core machines the tests run on. The
/// clients are blocking sockets on the test's own thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn stop(broker: Broker, store: Store) {
    broker.shutdown().await;
    store.close().await.expect("close the store");
}

#[test]
fn qos_0_1_2_round_trip_and_a_retained_message_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();

    let (broker, store, port) = runtime.block_on(start(dir.path()));
    // The clients are blocking sockets on this thread; the broker runs on the runtime's
    // workers meanwhile.
    let mut subscriber = Conn::open(port, "sub", Connect::v5("sub"));
    subscriber.subscribe(&[("pi/#", 2)], Props::new());
    let mut publisher = Conn::open(port, "pub", Connect::v3("pub"));
    publisher.publish("pi/q0", "zero", 0, false, Props::new());
    publisher.publish("pi/q1", "one", 1, false, Props::new());
    publisher.publish("pi/q2", "two", 2, false, Props::new());
    publisher.publish("pi/retained", "kept", 1, true, Props::new());
    publisher.publish("pi/fence", "fence", 1, false, Props::new());
    let seen: Vec<String> = subscriber
        .until("fence")
        .iter()
        .map(raw_client::Message::brief)
        .collect();
    assert_eq!(
        seen,
        [
            "pi/q0 zero q0",
            "pi/q1 one q1",
            "pi/q2 two q2",
            "pi/retained kept q1",
            "pi/fence fence q1",
        ]
    );
    assert!(
        publisher
            .log
            .iter()
            .filter(|l| l.contains("PUBACK") || l.contains("PUBCOMP"))
            .all(|l| l.ends_with("code=0x00")),
        "{:?}",
        publisher.log
    );
    drop(subscriber);
    drop(publisher);
    runtime.block_on(stop(broker, store));

    // Same data directory, new broker: the retained QoS 1 message was on disk before
    // its PUBACK, so a new subscriber gets it.
    let (broker, store, port) = runtime.block_on(start(dir.path()));
    let mut late = Conn::open(port, "late", Connect::v3("late"));
    late.subscribe(&[("pi/retained", 1)], Props::new());
    let retained = late.until("kept");
    assert_eq!(retained.len(), 1);
    assert!(retained[0].retain, "{:?}", retained[0]);
    drop(late);
    runtime.block_on(stop(broker, store));
}

/// A QoS 1 message that its persistent subscriber acknowledges before the store's writer
/// took the message's Put: the Put is taken back out of the store's queue, the
/// acknowledgement's Delete is never queued, and the publisher's PUBACK comes without
/// the writer. The ring the publisher's connection arms for its quiet commit is an
/// hour away (the store's linger), so nothing but the acknowledgement answers it in
/// time; a batch of one operation is full at once, so the writer itself never lingers
/// (the CONNACK and SUBACK of the persistent session do not wait an hour).
#[test]
fn a_qos_1_message_acknowledged_before_the_writer_took_it_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let store = Store::open(StoreOptions {
        path: Some(dir.path().join("store.redb")),
        linger: Duration::from_secs(3600),
        max_batch_ops: 1,
        ..StoreOptions::default()
    })
    .expect("open the store");
    let (broker, port) = runtime.block_on(start_on(store.clone()));
    let mut subscriber = Conn::open(port, "sub", Connect::v3("sub").clean(false));
    subscriber.subscribe(&[("meter/#", 1)], Props::new());
    let mut publisher = Conn::open(port, "pub", Connect::v3("pub"));
    let before = store.stats();
    const MESSAGES: u64 = 20;
    for n in 0..MESSAGES {
        let payload = format!("reading {n}");
        let bytes = publisher.publish_bytes("meter/1", &payload, 1, false, &Props::new());
        // A writer still busy (with the connects' commits, say) would take the Put on
        // its way back to the queue, before the acknowledgement could withdraw it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.writer_idle() {
            assert!(
                Instant::now() < deadline,
                "the store's writer never went idle"
            );
            std::thread::yield_now();
        }
        publisher.send(&bytes);
        // Read and acknowledged before the publisher's PUBACK can exist.
        let seen = subscriber.until(&payload);
        assert_eq!(seen.len(), 1, "{seen:?}");
        match publisher.read() {
            Some(raw_client::Packet::Ack { kind, code, .. }) => {
                assert_eq!((kind, code), (raw_client::PUBACK, 0), "message {n}");
            }
            other => panic!("message {n}: expected its PUBACK, got {other:?}"),
        }
    }
    let after = store.stats();
    // One request per message (the publish's): the acknowledgement withdrew the Put and
    // queued no Delete. Neither was written, and the writer committed nothing.
    assert_eq!(after.requests - before.requests, MESSAGES, "{after:?}");
    assert_eq!(after.consumed - before.consumed, 2 * MESSAGES, "{after:?}");
    assert_eq!(after.transactions, before.transactions, "{after:?}");
    drop(subscriber);
    drop(publisher);
    runtime.block_on(stop(broker, store));
}
