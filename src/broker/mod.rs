//! The built-in MQTT broker (3.1, 3.1.1 and 5.0 on one listener).
//!
//! Layers, outside in: `listener` (accept loop, connection limit) -> `connection` (one
//! task per client: packets in, acknowledgements and deliveries out) -> `state`
//! (sessions, subscription tree, retained messages under one lock) -> `codec` (the
//! boundary to the wire) and the durable `store`. The codec knows nothing about
//! sessions; the state knows nothing about sockets.

pub mod auth;
pub mod bridge;
pub mod codec;
pub mod config;
mod connection;
mod listener;
mod local;
pub mod mosquitto_conf;
mod park;
pub mod session;
pub mod signal;
pub mod state;
mod sys;
pub mod tls;
pub mod topic;
pub mod ws;

use std::num::NonZeroU16;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytestring::ByteString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{
    BridgeConfig, BridgeDirection, BridgeTopic, BrokerConfig, ListenerConfig, ListenerProtocol,
    Persistence, TlsConfig,
};
pub use local::{LinkError, LocalClient, LocalConnect};

use codec::{Publish, Will};
use session::{
    INCOMING, QUEUE, RETAINED, SESSIONS, Session, SessionRecord, Subscription, decode_queued,
    decode_retained,
};
use state::State;

use crate::store::{Store, StoreError, StoreOptions};

/// How long a group commit waits for company once someone waits on it: 1 ms cuts the
/// fsyncs of a steady load and with them QoS 1 delivery latency (docs/benchmarks.md).
const STORE_LINGER: Duration = Duration::from_millis(1);
/// The process's store file inside the data directory: broker sessions, flow state and
/// sink buffers all live in it (docs/decisions/003-store.md).
pub const STORE_FILE: &str = "store.redb";

/// Opens (creating the directory if needed) the durable store in `data_dir`, tuned for
/// the broker's group commit; `run` opens it once and shares it with the flows.
pub fn open_store(data_dir: &Path) -> Result<Store, StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", data_dir.display())))?;
    Store::open(StoreOptions {
        path: Some(data_dir.join(STORE_FILE)),
        linger: STORE_LINGER,
        ..StoreOptions::default()
    })
}

/// How long the listeners wait for the bridges' local sessions at start.
const BRIDGE_ATTACH_WAIT: Duration = Duration::from_secs(5);
/// How often password and ACL files are looked at for changes.
const AUTH_FILE_POLL: Duration = Duration::from_secs(2);
/// How often silent clients are looked for; a client is closed at most this late.
const KEEPALIVE_SWEEP: Duration = Duration::from_millis(250);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store could not be opened or read.
    #[error("broker store: {0}")]
    Store(#[from] StoreError),
    /// A listener's TLS files cannot be used.
    #[error("listener {address}: {source}")]
    Tls {
        /// host:port
        address: String,
        /// What is wrong.
        source: tls::TlsError,
    },
    /// A password or ACL file cannot be used.
    #[error("{0}")]
    Auth(#[from] auth::AuthFileError),
    /// A listener could not bind.
    #[error("cannot listen on {address}: {cause}")]
    Bind {
        /// host:port
        address: String,
        /// The OS error; in the message rather than the error chain, so the CLI, which
        /// prints the chain, says it once.
        cause: std::io::Error,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters for `$SYS` and the logs.
#[derive(Default)]
pub struct Stats {
    connected: AtomicUsize,
    connects_total: AtomicU64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
}

impl Stats {
    fn clients_total_connects(&self) {
        self.connects_total.fetch_add(1, Ordering::Relaxed);
    }
    fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// What every connection shares.
pub struct Shared {
    state: Mutex<State>,
    /// The durable store (in memory with `persistence: memory`).
    pub store: Store,
    /// Settings.
    pub config: BrokerConfig,
    /// Counters.
    pub stats: Stats,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The runtime every task of the broker runs on: the one current when it was opened
    /// (the CLI opens it inside its own one-worker runtime), else when it first spawns
    /// or binds (see `runtime`).
    runtime: OnceLock<tokio::runtime::Handle>,
    /// The configured listeners, in order, with their TLS set up.
    listeners: Vec<Arc<listener::Listener>>,
    next_connection: AtomicU64,
    started: std::time::Instant,
    /// Idle plain-TCP connections without a task; made when the broker starts (it
    /// needs the runtime), absent if the system refused an epoll instance.
    parking: OnceLock<Arc<park::ParkingLot>>,
}

impl Shared {
    /// Spawns `task` on the broker's runtime, tracked for shutdown, whichever runtime
    /// the caller is on (an in-process client connects from a flow's).
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(task, self.runtime());
    }

    /// The broker's runtime; panics, as `tokio::spawn` does, when the broker was opened
    /// outside a runtime and is first used outside one too.
    fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.get_or_init(tokio::runtime::Handle::current)
    }

    fn durable(&self) -> bool {
        self.config.persistence == Persistence::Durable
    }

    fn connections(&self) -> usize {
        self.stats.connected.load(Ordering::Relaxed)
    }
}

/// A handle to the running broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("listeners", &self.shared.config.listeners)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens the store under `data_dir` (or memory), and restores sessions,
    /// subscriptions, queued and inflight messages, QoS 2 state and retained messages.
    pub fn open(config: BrokerConfig, data_dir: &Path) -> Result<Broker, BrokerError> {
        let store = match config.persistence {
            Persistence::Durable => open_store(data_dir)?,
            Persistence::Memory => Store::open(StoreOptions {
                linger: STORE_LINGER,
                ..StoreOptions::default()
            })?,
        };
        Broker::open_on(config, store)
    }

    /// Like [`Broker::open`], on a store opened by the caller ([`open_store`]) and shared
    /// with the flows' state; with `persistence: memory` the broker ignores it and keeps
    /// its sessions in memory.
    ///
    /// Every task of the broker runs on the tokio runtime current here (else on the
    /// one current when it binds or starts), whoever connects to it later:
    /// `headwater run` and `headwater broker` open it inside a runtime of its own with
    /// one worker (docs/decisions/019-broker-runtime.md).
    pub fn open_on(config: BrokerConfig, store: Store) -> Result<Broker, BrokerError> {
        tls::install_crypto_provider();
        let store = match config.persistence {
            Persistence::Durable => store,
            Persistence::Memory => Store::open(StoreOptions {
                linger: STORE_LINGER,
                ..StoreOptions::default()
            })?,
        };
        let mut state = State::new(
            config.max_queued_messages,
            config.persistence == Persistence::Durable,
        );
        state.realms = auth::realm::Realms::load(&config)?;
        recover(&store, &mut state)?;
        let listeners = config
            .listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                listener::Listener::new(index, listener.clone())
                    .map(Arc::new)
                    .map_err(|source| BrokerError::Tls {
                        address: format!("{}:{}", listener.host, listener.port),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let broker = Broker {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                store,
                config,
                stats: Stats::default(),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                runtime: tokio::runtime::Handle::try_current()
                    .map(OnceLock::from)
                    .unwrap_or_default(),
                listeners,
                next_connection: AtomicU64::new(1),
                started: std::time::Instant::now(),
                parking: OnceLock::new(),
            }),
        };
        // Sessions restored from disk start their expiry clock now.
        let expiring: Vec<(ByteString, u32, u32)> = broker
            .state()
            .sessions
            .iter()
            .filter(|(_, s)| s.expiry != u32::MAX)
            .map(|(client_id, s)| (client_id.clone(), s.generation, s.expiry))
            .collect();
        for (client, generation, expiry) in expiring {
            broker.expire_later(client, generation, expiry);
        }
        Ok(broker)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves state that is still consistent per
        // operation (each method finishes its change before returning).
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_connection_id(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Binds every configured listener; returns their addresses (port 0 resolved). The
    /// sockets belong to the broker's runtime, whichever runtime calls this.
    pub async fn bind(&self) -> Result<Vec<TcpListener>, BrokerError> {
        let mut listeners = Vec::new();
        for listener in &self.shared.config.listeners {
            let address = format!("{}:{}", listener.host, listener.port);
            let error = |cause| BrokerError::Bind {
                address: address.clone(),
                cause,
            };
            let bound = self
                .bind_one(&listener.host, listener.port)
                .map_err(error)?;
            listeners.push(bound);
        }
        Ok(listeners)
    }

    /// What `TcpListener::bind` does (the first address `host` resolves to that binds,
    /// SO_REUSEADDR, a backlog of 1024), registered with the broker's runtime so its I/O
    /// driver, not the caller's, polls it. A host name is resolved here, once, at start.
    fn bind_one(&self, host: &str, port: u16) -> std::io::Result<TcpListener> {
        use std::net::ToSocketAddrs;
        let mut last_error = None;
        // A (host, port) pair, so an IPv6 host such as `::1` needs no brackets.
        for address in (host, port).to_socket_addrs()? {
            let socket = if address.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            let listening = socket.bind(address).and_then(|()| {
                let _on_broker_runtime = self.shared.runtime().enter();
                socket.listen(1024)
            });
            match listening {
                Ok(listener) => return Ok(listener),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the host resolves to no address",
            )
        }))
    }

    /// Starts serving `sockets` (from `bind`, in the order of the configured
    /// listeners) and `$SYS`; returns at once.
    pub fn start(&self, sockets: Vec<TcpListener>) {
        // What is made here (the parking lot's epoll registration) belongs to the
        // broker's runtime too.
        let _on_broker_runtime = self.shared.runtime().enter();
        // Bridges attach their local sessions first; the listeners start accepting once
        // they are subscribed (or after 5 s), so nothing published at start-up misses a
        // bridge. Until then clients wait in the sockets' backlog.
        let mut attached = Vec::new();
        for bridge in &self.shared.config.bridges {
            let (done, wait) = tokio::sync::oneshot::channel();
            attached.push(wait);
            self.shared.spawn(bridge::run(
                self.clone(),
                bridge.clone(),
                self.shared.shutdown.child_token(),
                done,
            ));
        }
        if attached.is_empty() {
            self.serve(sockets);
        } else {
            let broker = self.clone();
            self.shared.spawn(async move {
                for wait in attached {
                    let _ = tokio::time::timeout(BRIDGE_ATTACH_WAIT, wait).await;
                }
                broker.serve(sockets);
            });
        }
        match park::ParkingLot::new() {
            Ok(lot) => {
                if self.shared.parking.set(lot.clone()).is_ok() {
                    self.shared.spawn(lot.run(self.clone()));
                }
            }
            Err(e) => tracing::warn!("idle connections will not be parked: {e}"),
        }
        self.shared.spawn(self.clone().keepalive_sweep());
        self.shared.spawn(self.clone().watch_auth_files());
        if self.shared.config.sys_interval > 0 {
            let broker = self.clone();
            self.shared.spawn(sys::run(broker));
        }
    }

    /// Logs each listener and starts its accept loop.
    fn serve(&self, sockets: Vec<TcpListener>) {
        for (socket, listener) in sockets.into_iter().zip(self.shared.listeners.clone()) {
            let config = &listener.config;
            if let Ok(address) = socket.local_addr() {
                // The address last: tests and scripts read the port from the line's end.
                tracing::info!(
                    protocol = ?config.protocol,
                    tls = config.tls.enabled(),
                    %address,
                    "broker listening"
                );
            }
            self.shared
                .spawn(listener::accept_loop(self.clone(), socket, listener));
        }
    }

    /// Closes connections whose clients have been silent for longer than 1.5 times
    /// their keepalive [MQTT-3.1.2-24]. One sweep for all connections instead of a
    /// timer each: a timer per connection costs memory on every idle client, and a
    /// client is closed at most `KEEPALIVE_SWEEP` late.
    async fn keepalive_sweep(self) {
        let mut tick = tokio::time::interval(KEEPALIVE_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = signal::elapsed_ms(self.shared.started);
            let park_after = park::PARK_AFTER.as_millis() as u64;
            // No lot (or a failed one): asking would only wake connections for nothing.
            let parking = self.parking_lot().is_some_and(|lot| lot.is_open());
            for session in self.state().sessions.values() {
                let Some(attached) = &session.attached else {
                    continue;
                };
                if attached.signal.overdue(now) {
                    attached.signal.kick(codec::reason::KEEP_ALIVE_TIMEOUT);
                } else if parking && attached.signal.silent_for(now) >= park_after {
                    attached.signal.ask_park();
                }
            }
        }
    }

    /// The parking lot, once the broker has started.
    fn parking_lot(&self) -> Option<&Arc<park::ParkingLot>> {
        self.shared.parking.get()
    }

    /// Milliseconds on the broker's clock (for keepalives).
    fn clock_ms(&self) -> u64 {
        signal::elapsed_ms(self.shared.started)
    }

    /// Rereads what may change under a running broker (SIGHUP): password and ACL files,
    /// TLS certificates, keys and CRLs. A listener whose new files are broken keeps its old ones; the errors
    /// are logged and returned.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = self.reload_realms(true);
        for error in &errors {
            tracing::error!("authentication files not reloaded, keeping the old ones: {error}");
        }
        for listener in &self.shared.listeners {
            if let Some(tls) = &listener.tls
                && let Err(e) = tls.reload()
            {
                let address = format!("{}:{}", listener.config.host, listener.config.port);
                tracing::error!(%address, "TLS reload failed, keeping the old certificates: {e}");
                errors.push(format!("listener {address}: {e}"));
            }
        }
        if errors.is_empty() {
            tracing::info!("broker settings reloaded");
        }
        errors
    }

    /// Rereads the password and ACL files (all, or those changed on disk). New ACL
    /// rules apply to connected clients at once; a client whose password changed or
    /// whose user is gone is disconnected, as Mosquitto does. A realm whose new files
    /// do not load keeps its old rules.
    fn reload_realms(&self, force: bool) -> Vec<String> {
        let current = self.state().realms.clone();
        let (fresh, failed) = current.reload(force);
        let errors: Vec<String> = failed.iter().map(ToString::to_string).collect();
        let mut state = self.state();
        for (client_id, session) in &state.sessions {
            let (Some(identity), Some(attached)) = (&session.identity, &session.attached) else {
                continue;
            };
            let index = usize::from(identity.realm);
            let (Some(old), Some(new)) = (current.get(index), fresh.get(index)) else {
                continue;
            };
            if let Some(username) = &identity.username
                && !new.same_credentials(old, username)
            {
                tracing::info!(client = %client_id, %username, "credentials changed: disconnecting");
                attached.signal.kick(codec::reason::NOT_AUTHORIZED);
            }
        }
        state.realms = fresh;
        errors
    }

    /// Watches the password and ACL files and rereads them when they change.
    async fn watch_auth_files(self) {
        let mut tick = tokio::time::interval(AUTH_FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_errors = Vec::new();
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let changed = self.state().realms.changed_on_disk();
            if !changed {
                continue;
            }
            // A broken file stays "changed" until mended: say so once, not every poll.
            let errors = self.reload_realms(false);
            if errors.is_empty() {
                tracing::info!("authentication files reloaded");
            } else if errors != last_errors {
                for error in &errors {
                    tracing::error!(
                        "authentication files not reloaded, keeping the old ones: {error}"
                    );
                }
            }
            last_errors = errors;
        }
    }

    /// Publishes a message from the broker itself (`$SYS`, wills, bridges): routed
    /// like a client's, and durable for persistent subscribers before this returns
    /// `Ok`. On `Err` nothing was delivered and the caller still holds the message.
    pub async fn publish(&self, publish: Publish, from: ByteString) -> Result<(), StoreError> {
        let msg = Arc::new(session::Message {
            publish,
            received_ms: now_ms(),
            from,
        });
        let (ops, deliveries) = {
            let mut state = self.state();
            let mut ops = Vec::new();
            if msg.publish.retain
                && let Some(op) = state.retain(&msg)
            {
                ops.push(op);
            }
            let plan = state.route(&msg);
            ops.extend(plan.ops);
            (ops, plan.deliveries)
        };
        if !ops.is_empty()
            && let Err(e) = self.shared.store.commit(ops).await
        {
            tracing::warn!(topic = %msg.publish.topic, "message could not be stored: {e}");
            return Err(e);
        }
        for signal in self.state().apply(deliveries) {
            signal.wake();
        }
        Ok(())
    }

    /// Sends `will` now, or after its v5 delay unless the session came back
    /// [MQTT-3.1.3-9]. The delay ends early when the session expires.
    fn send_will(&self, client: ByteString, will: Will, generation: u32, expiry: u32) {
        let publish = Publish {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            dup: false,
            packet_id: None,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: will.properties,
        };
        let broker = self.clone();
        let delay = will.delay.min(expiry);
        self.shared.spawn(async move {
            if delay > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                    _ = broker.shared.shutdown.cancelled() => return,
                }
                let resumed = broker
                    .state()
                    .sessions
                    .get(&client)
                    .is_some_and(|s| s.generation != generation);
                if resumed {
                    return;
                }
            }
            tracing::debug!(client = %client, topic = %publish.topic, "publishing will");
            // A will that cannot be stored is logged by `publish`; nobody is left
            // to hand it back to.
            let _ = broker.publish(publish, client).await;
        });
    }

    /// Ends the session of `client` after `expiry` seconds unless it reconnected.
    fn expire_later(&self, client: ByteString, generation: u32, expiry: u32) {
        let broker = self.clone();
        self.shared.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {}
                _ = broker.shared.shutdown.cancelled() => return,
            }
            let expired = {
                let mut state = broker.state();
                let same = state
                    .sessions
                    .get(&client)
                    .is_some_and(|s| s.generation == generation && s.attached.is_none());
                if same {
                    state.remove_session(&client);
                }
                same
            };
            if expired {
                tracing::info!(client = %client, "session expired");
                if broker.shared.durable() {
                    let _ = broker
                        .shared
                        .store
                        .commit(Session::erase_ops(&client))
                        .await;
                }
            }
        });
    }

    /// Stops accepting, closes every connection (v5 clients get 0x8B), and flushes the
    /// store.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        let attached: Vec<session::Attached> = self
            .state()
            .sessions
            .values()
            .filter_map(|s| s.attached.clone())
            .collect();
        for attached in attached {
            attached.signal.kick(codec::reason::SERVER_SHUTTING_DOWN);
        }
        self.shared.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("broker connections did not close within 5 s");
        }
        if let Err(e) = self.shared.store.close().await {
            tracing::warn!("broker store did not close cleanly: {e}");
        }
        tracing::info!("broker stopped");
    }

    /// Number of sessions, subscriptions and retained messages (for tests and `$SYS`).
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.state();
        (state.sessions.len(), state.tree.len(), state.retained.len())
    }

    /// Every counter and gauge the admin API and `/metrics` show, read at once. Walks
    /// the sessions under the state lock (one pass, no allocation per session).
    pub fn snapshot(&self) -> BrokerSnapshot {
        let stats = &self.shared.stats;
        let mut snapshot = BrokerSnapshot {
            connected: stats.connected.load(Ordering::Relaxed),
            connects_total: stats.connects_total.load(Ordering::Relaxed),
            messages_received: stats.messages_received.load(Ordering::Relaxed),
            messages_sent: stats.messages_sent.load(Ordering::Relaxed),
            bytes_received: stats.bytes_received.load(Ordering::Relaxed),
            bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
            uptime_seconds: self.shared.started.elapsed().as_secs(),
            ..BrokerSnapshot::default()
        };
        snapshot.parked = self.parking_lot().map_or(0, |lot| lot.len());
        let state = self.state();
        snapshot.sessions = state.sessions.len();
        snapshot.subscriptions = state.tree.len();
        snapshot.retained = state.retained.len();
        for session in state.sessions.values() {
            snapshot.queued += session.queue.len();
            snapshot.inflight += session.inflight.len();
            snapshot.dropped += u64::from(session.dropped);
        }
        snapshot.bridges = self
            .shared
            .config
            .bridges
            .iter()
            .map(|bridge| {
                let topic = bridge::state_topic(bridge);
                let connected = state
                    .retained
                    .get(topic.as_str())
                    .is_some_and(|m| m.publish.payload.as_ref() == b"1");
                BridgeSnapshot {
                    name: bridge.connection.clone(),
                    addresses: bridge.addresses.clone(),
                    connected,
                }
            })
            .collect();
        snapshot
    }
}

/// The broker's figures at one moment ([`Broker::snapshot`]).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BrokerSnapshot {
    /// Network and in-process connections open now.
    pub connected: usize,
    /// Connections accepted since start.
    pub connects_total: u64,
    /// PUBLISH packets received since start.
    pub messages_received: u64,
    /// PUBLISH packets sent since start.
    pub messages_sent: u64,
    /// Bytes received since start.
    pub bytes_received: u64,
    /// Bytes sent since start.
    pub bytes_sent: u64,
    /// Seconds since the broker started.
    pub uptime_seconds: u64,
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Subscriptions in the tree.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Messages queued for sessions (not yet sent).
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages dropped because a session's queue was full, summed over sessions.
    pub dropped: u64,
    /// Idle connections parked without a task (counted in `connected`).
    pub parked: usize,
    /// Configured bridges.
    pub bridges: Vec<BridgeSnapshot>,
}

/// One bridge as [`Broker::snapshot`] sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BridgeSnapshot {
    /// The bridge's `connection` name.
    pub name: String,
    /// The remote addresses it tries.
    pub addresses: Vec<String>,
    /// Whether it is connected now (its `$SYS/broker/connection/.../state` is `1`).
    pub connected: bool,
}

/// Restores the broker's state from the store.
fn recover(store: &Store, state: &mut State) -> Result<(), StoreError> {
    for (key, value) in store.scan(SESSIONS, b"")? {
        let Ok(client_id) = String::from_utf8(key) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<SessionRecord>(&value) else {
            tracing::warn!(client = %client_id, "unreadable session record skipped");
            continue;
        };
        let version = match record.version {
            3 => codec::Version::V31,
            5 => codec::Version::V5,
            _ => codec::Version::V311,
        };
        let client_id = ByteString::from(client_id);
        let mut session = Session::new(record.expiry, version);
        session.stored = true;
        session.identity = record.realm.map(|realm| {
            Arc::new(session::Identity {
                realm,
                username: record.username.map(ByteString::from),
            })
        });
        state.sessions.insert(client_id.clone(), Box::new(session));
        for sub in record.subscriptions {
            let raw = ByteString::from(sub.filter);
            let Ok(filter) = topic::parse_filter(&raw) else {
                continue;
            };
            state.subscribe(
                &client_id,
                raw,
                Subscription {
                    filter,
                    options: codec::SubscriptionOptions {
                        qos: codec::Qos::from_u8(sub.qos).unwrap_or(codec::Qos::AtMostOnce),
                        no_local: sub.no_local,
                        retain_as_published: sub.retain_as_published,
                        retain_handling: sub.retain_handling,
                    },
                    id: sub.id.and_then(std::num::NonZeroU32::new),
                },
            );
        }
    }
    let mut queued_count = 0;
    for (key, value) in store.scan(QUEUE, b"")? {
        let Some(split) = key.iter().position(|&b| b == 0) else {
            continue;
        };
        let Ok(client) = std::str::from_utf8(&key[..split]) else {
            continue;
        };
        let Some(seq) = key
            .get(split + 1..)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        state.next_seq = state.next_seq.max(seq + 1);
        let Some(session) = state.sessions.get_mut(client) else {
            continue;
        };
        let Some(queued) = decode_queued(seq, &value) else {
            continue;
        };
        queued_count += 1;
        match queued.packet_id {
            Some(id) if !session.inflight.contains_key(&id.get()) => {
                session.last_packet_id = session.last_packet_id.max(id.get());
                session.inflight.insert(id.get(), queued);
            }
            _ => session.queue.push_back(queued),
        }
    }
    for (key, _) in store.scan(INCOMING, b"")? {
        let Some(split) = key.iter().position(|&b| b == 0) else {
            continue;
        };
        let (Ok(client), Some(id)) = (
            std::str::from_utf8(&key[..split]),
            key.get(split + 1..)
                .and_then(|s| s.try_into().ok())
                .map(u16::from_be_bytes)
                .and_then(NonZeroU16::new),
        ) else {
            continue;
        };
        if let Some(session) = state.sessions.get_mut(client) {
            session.receive_qos2(id.get());
        }
    }
    for (key, value) in store.scan(RETAINED, b"")? {
        if let (Ok(topic), Some(msg)) = (String::from_utf8(key), decode_retained(&value)) {
            state.retained.insert(topic.into(), Arc::new(msg));
        }
    }
    if !state.sessions.is_empty() || !state.retained.is_empty() {
        tracing::info!(
            sessions = state.sessions.len(),
            queued = queued_count,
            retained = state.retained.len(),
            "broker state restored"
        );
    }
    Ok(())
}
