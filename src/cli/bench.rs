//! `headwater bench`: load generators that measure Headwater against the software it
//! replaces. `bench broker` runs MQTT workloads against the built-in broker and against
//! Mosquitto, each workload on a fresh process of each, and prints both figures and
//! their ratio. See docs/benchmarks.md for the method and the recorded results.

mod brokers;
mod client;
mod tls;
mod workloads;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rmqtt_codec::types::QoS;

use brokers::{BrokerKind, BrokerProcess, Executables};
use tls::{Certificates, TlsKey};
use workloads::{Load, Measured};

/// What `headwater bench` measures.
#[derive(Debug, clap::Subcommand)]
pub enum BenchTarget {
    /// Compare the MQTT broker with Mosquitto: throughput, latency, memory per connection
    Broker(BrokerBenchArgs),
}

/// Options of `headwater bench broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerBenchArgs {
    /// Workloads to run, comma-separated or repeated [default: all]
    #[arg(
        long = "workload",
        value_enum,
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub workloads: Vec<Workload>,
    /// Which brokers to run each workload against
    #[arg(long, value_enum, default_value_t = Brokers::Both)]
    pub brokers: Brokers,
    /// Times each comparison is repeated (the broker order alternates between runs)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub runs: u32,
    /// Messages published by each throughput workload [default: fan-in-qos0 1000000,
    /// qos1-durable 300000, fan-out-qos0 20000 (each to every subscriber)]
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Payload size in bytes (at least 8: the send time travels in the first 8)
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub payload: usize,
    /// Publishers of fan-in-qos0 and qos1-durable
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub publishers: usize,
    /// Subscribers of fan-out-qos0
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub subscribers: usize,
    /// Most messages published and not yet received by the slowest subscriber; keep it
    /// below the brokers' queue limit (1000 per client) so nothing is dropped
    #[arg(long, default_value_t = 900, value_name = "N")]
    pub window: u64,
    /// Most unacknowledged QoS 1 publishes per publisher in qos1-durable
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub inflight: u16,
    /// Messages per second of the latency workload
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub rate: u32,
    /// Seconds the latency workload runs at each QoS
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub duration: u64,
    /// Latency only: split each broker's --duration into N segments and let the brokers
    /// take turns, segment by segment, both running all along, so that a slow spell of
    /// the host falls on both [default: 1, one broker after the other]
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub segments: u32,
    /// Idle connections opened by idle-memory
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub connections: usize,
    /// Connect idle-memory clients from 127.0.0.1 ..= 127.0.0.N, when one address runs
    /// short of ephemeral ports
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub source_addresses: u8,
    /// Seconds without a message after which a run stops and reports what was lost
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub quiet: u64,
    /// Connections made by tls-connect
    #[arg(long, default_value_t = workloads::TLS_CONNECTIONS, value_name = "N")]
    pub tls_connections: usize,
    /// Connections tls-connect has in progress at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub tls_concurrency: usize,
    /// Key type of the certificates the TLS workloads' brokers present
    #[arg(long, value_enum, default_value_t = TlsKey::EcP256)]
    pub tls_key: TlsKey,
    /// The headwater executable to measure [default: this one]
    #[arg(long, value_name = "PATH")]
    pub headwater: Option<PathBuf>,
    /// The mosquitto executable
    #[arg(long, default_value = "/usr/sbin/mosquitto", value_name = "PATH")]
    pub mosquitto: PathBuf,
    /// Mosquitto's max_queued_messages (Headwater keeps its default, 1000)
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub mosquitto_max_queued: usize,
    /// Set Mosquitto's set_tcp_nodelay, as Headwater always does (Mosquitto's default: off)
    #[arg(long)]
    pub mosquitto_nodelay: bool,
    /// Record `perf record -g` of Headwater during each workload into DIR
    #[arg(long, value_name = "DIR")]
    pub perf: Option<PathBuf>,
    /// Print the results as JSON (one array) instead of tables
    #[arg(long)]
    pub json: bool,
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 10 publishers -> 1 subscriber, QoS 0; messages received per second
    #[value(name = "fan-in-qos0")]
    FanInQos0,
    /// 10 publishers at QoS 1 -> 1 persistent QoS 1 subscriber, brokers durable;
    /// messages received per second
    #[value(name = "qos1-durable")]
    Qos1Durable,
    /// 1 publisher -> 100 subscribers, QoS 0; deliveries per second
    #[value(name = "fan-out-qos0")]
    FanOutQos0,
    /// 1 publisher at a fixed rate -> 1 subscriber, QoS 0 and QoS 1, both clients on one
    /// thread of the generator; p50, p99, max
    #[value(name = "latency")]
    Latency,
    /// 10000 connections that connect and idle; broker RSS growth per connection
    #[value(name = "idle-memory")]
    IdleMemory,
    /// 3000 TLS connections, 4 at a time: TCP connect, TLS handshake, CONNECT, CONNACK,
    /// DISCONNECT; connections per second, handshake p50 and p99
    #[value(name = "tls-connect")]
    TlsConnect,
    /// fan-in-qos0 with every client over TLS; messages received per second
    #[value(name = "tls-fan-in-qos0")]
    TlsFanInQos0,
}

impl Workload {
    const ALL: [Workload; 7] = [
        Workload::FanInQos0,
        Workload::Qos1Durable,
        Workload::FanOutQos0,
        Workload::Latency,
        Workload::IdleMemory,
        Workload::TlsConnect,
        Workload::TlsFanInQos0,
    ];

    /// Whether the brokers' listener speaks TLS for this workload.
    fn tls(self) -> bool {
        matches!(self, Workload::TlsConnect | Workload::TlsFanInQos0)
    }

    fn name(self) -> &'static str {
        match self {
            Workload::FanInQos0 => "fan-in-qos0",
            Workload::Qos1Durable => "qos1-durable",
            Workload::FanOutQos0 => "fan-out-qos0",
            Workload::Latency => "latency",
            Workload::IdleMemory => "idle-memory",
            Workload::TlsConnect => "tls-connect",
            Workload::TlsFanInQos0 => "tls-fan-in-qos0",
        }
    }

    /// One line saying what the workload does with these options.
    fn describe(self, load: &Load, key: TlsKey) -> String {
        let messages = |default| load.messages.unwrap_or(default);
        match self {
            Workload::FanInQos0 => format!(
                "{} publishers -> 1 subscriber, QoS 0, {}-byte payloads, {} messages, window {}",
                load.publishers,
                load.payload,
                messages(workloads::FAN_IN_MESSAGES),
                load.window
            ),
            Workload::Qos1Durable => format!(
                "{} publishers (QoS 1, {} unacknowledged each) -> 1 persistent QoS 1 subscriber, \
                 {}-byte payloads, {} messages, window {}",
                load.publishers,
                load.inflight,
                load.payload,
                messages(workloads::QOS1_MESSAGES),
                load.window
            ),
            Workload::FanOutQos0 => format!(
                "1 publisher -> {} subscribers, QoS 0, {}-byte payloads, {} messages, window {}",
                load.subscribers,
                load.payload,
                messages(workloads::FAN_OUT_MESSAGES),
                load.window
            ),
            Workload::Latency if load.segments > 1 => format!(
                "1 publisher at {} msg/s -> 1 subscriber, QoS 0 then QoS 1 (persistent \
                 subscriber), {} s each in {} segments, the brokers taking turns",
                load.rate,
                load.duration.as_secs(),
                load.segments
            ),
            Workload::Latency => format!(
                "1 publisher at {} msg/s -> 1 subscriber, {} s at QoS 0 then {} s at QoS 1 \
                 (persistent subscriber)",
                load.rate,
                load.duration.as_secs(),
                load.duration.as_secs()
            ),
            Workload::IdleMemory => format!(
                "{} connections (CONNECT, CONNACK, idle {} s); RSS growth / connections",
                load.connections,
                workloads::IDLE_SECONDS
            ),
            Workload::TlsConnect => format!(
                "{} connections, {} at a time, each TCP + TLS handshake ({} server key, no \
                 resumption) + CONNECT/CONNACK + DISCONNECT",
                load.tls_connections,
                load.tls_concurrency,
                key.name()
            ),
            Workload::TlsFanInQos0 => format!(
                "{} publishers -> 1 subscriber over TLS ({} server key), QoS 0, {}-byte \
                 payloads, {} messages, window {}",
                load.publishers,
                key.name(),
                load.payload,
                messages(workloads::FAN_IN_MESSAGES),
                load.window
            ),
        }
    }

    async fn run(self, broker: &BrokerProcess, load: &Load) -> anyhow::Result<Measured> {
        match self {
            Workload::FanInQos0 | Workload::TlsFanInQos0 => {
                workloads::fan_in(broker, load, QoS::AtMostOnce).await
            }
            Workload::Qos1Durable => workloads::fan_in(broker, load, QoS::AtLeastOnce).await,
            Workload::FanOutQos0 => workloads::fan_out(broker, load).await,
            Workload::Latency => workloads::latency(broker, load).await,
            Workload::IdleMemory => workloads::idle_memory(broker, load).await,
            Workload::TlsConnect => workloads::connect_rate(broker, load).await,
        }
    }
}

/// Which brokers to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Brokers {
    /// Headwater and Mosquitto, with their ratio
    Both,
    /// Headwater alone
    Headwater,
    /// Mosquitto alone
    Mosquitto,
}

/// One workload's comparison in one run.
struct Comparison {
    workload: Workload,
    run: u32,
    /// /proc/loadavg when the run started: the generator shares the machine with the
    /// brokers, and anything else running skews both.
    load_average: String,
    headwater: Option<Measured>,
    mosquitto: Option<Measured>,
}

/// Runs `bench`.
pub fn bench(target: BenchTarget) -> anyhow::Result<ExitCode> {
    match target {
        BenchTarget::Broker(args) => broker(args),
    }
}

fn broker(args: BrokerBenchArgs) -> anyhow::Result<ExitCode> {
    let load = Load {
        messages: args.messages,
        payload: args.payload.max(8),
        publishers: args.publishers.max(1),
        subscribers: args.subscribers.max(1),
        window: args.window.max(1),
        inflight: args.inflight.max(1),
        rate: args.rate.max(1),
        duration: Duration::from_secs(args.duration.max(1)),
        segments: args.segments.max(1),
        connections: args.connections,
        source_addresses: args.source_addresses,
        quiet: Duration::from_secs(args.quiet.max(1)),
        tls_connections: args.tls_connections.max(1),
        tls_concurrency: args.tls_concurrency.max(1),
    };
    let exe = Executables {
        headwater: match &args.headwater {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("cannot find this executable")?,
        },
        mosquitto: args.mosquitto.clone(),
        mosquitto_max_queued: args.mosquitto_max_queued,
        mosquitto_nodelay: args.mosquitto_nodelay,
    };
    let workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    if workloads.contains(&Workload::Latency) && load.segments > 1 {
        check_segments(&load)?;
    }
    if let Some(dir) = &args.perf {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // One CA and server certificate for the whole invocation: both brokers present the
    // same files.
    let certificates = if workloads.iter().any(|w| w.tls()) {
        let dir = std::env::temp_dir().join(format!("headwater-bench-{}-tls", std::process::id()));
        Some(
            Certificates::generate(dir, args.tls_key)
                .context("cannot make the TLS certificates")?,
        )
    } else {
        None
    };
    // The idle-memory clients hold one descriptor each.
    super::broker::raise_open_file_limit();
    let runtime = super::runtime("bench")?;
    // The latency clients run on this thread alone. On the two-worker runtime the
    // publisher and the subscriber sat on different workers, and one woke the other for
    // messages both brokers carried: noise in both tails (docs/benchmarks.md, session 17).
    let one_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the latency workload's runtime")?;
    let mut comparisons = Vec::new();
    for &workload in &workloads {
        let runtime = match workload {
            Workload::Latency => &one_thread,
            _ => &runtime,
        };
        for run in 1..=args.runs.max(1) {
            let tls = certificates.as_ref().filter(|_| workload.tls());
            let comparison = runtime.block_on(compare(workload, run, &args, &exe, &load, tls))?;
            if !args.json {
                print_table(&comparison, &load, args.runs.max(1), args.tls_key);
            }
            comparisons.push(comparison);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&comparisons))?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `workload` on a fresh process of each broker, one after the other; even runs
/// start with Mosquitto so neither always runs on the warmer machine.
async fn compare(
    workload: Workload,
    run: u32,
    args: &BrokerBenchArgs,
    exe: &Executables,
    load: &Load,
    tls: Option<&Certificates>,
) -> anyhow::Result<Comparison> {
    let mut kinds = match args.brokers {
        Brokers::Both => vec![BrokerKind::Headwater, BrokerKind::Mosquitto],
        Brokers::Headwater => vec![BrokerKind::Headwater],
        Brokers::Mosquitto => vec![BrokerKind::Mosquitto],
    };
    if run.is_multiple_of(2) {
        kinds.reverse();
    }
    let mut comparison = Comparison {
        workload,
        run,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|text| {
                text.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        headwater: None,
        mosquitto: None,
    };
    if workload == Workload::Latency && load.segments > 1 {
        latency_in_turns(&kinds, run, args, exe, load, &mut comparison).await?;
        return Ok(comparison);
    }
    for kind in kinds {
        let broker = BrokerProcess::start(kind, exe, tls).await?;
        let profile = start_profile(args, workload, run, &broker)?;
        let stolen_before = stolen_ms();
        let mut measured = workload
            .run(&broker, load)
            .await
            .with_context(|| format!("{} on {kind}", workload.name()))?;
        // Brokers run one after the other: a host that took more CPU from this VM during
        // one broker's turn makes the two columns incomparable (docs/benchmarks.md).
        if let (Some(before), Some(after)) = (stolen_before, stolen_ms()) {
            measured.push_condition("CPU stolen by the host", "ms", after - before);
        }
        if let Some(profile) = profile {
            profile.stop();
        }
        drop(broker);
        comparison.record(kind, measured);
    }
    Ok(comparison)
}

impl Comparison {
    /// Files what `kind` measured in its column.
    fn record(&mut self, kind: BrokerKind, measured: Measured) {
        match kind {
            BrokerKind::Headwater => self.headwater = Some(measured),
            BrokerKind::Mosquitto => self.mosquitto = Some(measured),
        }
    }
}

/// Longest segment of the latency workload in turns: a client waits through up to five
/// segments (the other broker's two, its other QoS's) and the bench clients' keepalive
/// is 600 s, so a broker would close it after 900 s of that.
const LONGEST_SEGMENT: Duration = Duration::from_secs(120);

/// Refuses segment lengths the latency workload in turns cannot measure.
fn check_segments(load: &Load) -> anyhow::Result<()> {
    let segment = load.segment();
    if segment.duration > LONGEST_SEGMENT {
        anyhow::bail!(
            "--segments {}: segments of {} s leave each broker's clients idle too long for \
             their keepalive; use segments of at most {} s",
            load.segments,
            segment.duration.as_secs(),
            LONGEST_SEGMENT.as_secs()
        );
    }
    if workloads::messages_in(&segment) == 0 {
        anyhow::bail!(
            "--segments {}: a segment of {} ms holds no message at {} msg/s; use fewer segments",
            load.segments,
            segment.duration.as_millis(),
            load.rate
        );
    }
    Ok(())
}

/// The latency workload with both brokers running and taking turns: `load.segments`
/// segments of `load.duration / segments` each, the order reversed every segment, so a
/// spell of stolen CPU lands on both about equally. Returns Headwater's and
/// Mosquitto's figures into `comparison`, each over all of its segments.
async fn latency_in_turns(
    kinds: &[BrokerKind],
    run: u32,
    args: &BrokerBenchArgs,
    exe: &Executables,
    load: &Load,
    comparison: &mut Comparison,
) -> anyhow::Result<()> {
    let mut brokers = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        brokers.push(BrokerProcess::start(kind, exe, None).await?);
    }
    let profile = match brokers.iter().find(|b| b.kind == BrokerKind::Headwater) {
        Some(broker) => start_profile(args, Workload::Latency, run, broker)?,
        None => None,
    };
    let segment = load.segment();
    let mut runs = Vec::with_capacity(brokers.len());
    for broker in &brokers {
        runs.push(workloads::LatencyRun::connect(broker).await?);
    }
    let mut stolen: Vec<Option<f64>> = vec![Some(0.0); kinds.len()];
    for turn in 0..load.segments {
        let mut order: Vec<usize> = (0..brokers.len()).collect();
        if turn % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let before = stolen_ms();
            runs[index]
                .segment(&brokers[index], &segment)
                .await
                .with_context(|| format!("latency on {}, segment {}", kinds[index], turn + 1))?;
            stolen[index] = match (stolen[index], before, stolen_ms()) {
                (Some(sum), Some(before), Some(after)) => Some(sum + after - before),
                _ => None,
            };
        }
    }
    if let Some(profile) = profile {
        profile.stop();
    }
    drop(brokers);
    for ((&kind, gathered), stolen) in kinds.iter().zip(runs).zip(stolen) {
        let mut measured = gathered.figures();
        if let Some(stolen) = stolen {
            measured.push_condition("CPU stolen by the host", "ms", stolen);
        }
        comparison.record(kind, measured);
    }
    Ok(())
}

/// `perf record` of Headwater during one workload when `--perf` asks for it.
fn start_profile(
    args: &BrokerBenchArgs,
    workload: Workload,
    run: u32,
    broker: &BrokerProcess,
) -> anyhow::Result<Option<Profile>> {
    match (&args.perf, broker.kind) {
        (Some(dir), BrokerKind::Headwater) => Ok(Some(Profile::start(
            dir.join(format!("{}-run{run}.data", workload.name())),
            broker.pid(),
        )?)),
        _ => Ok(None),
    }
}

/// CPU time the hypervisor has taken from this machine's CPUs since boot, in ms: the
/// `steal` column of /proc/stat. `None` where that cannot be read.
fn stolen_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    Some(steal_ticks(&stat)? as f64 * 1000.0 / ticks_per_second as f64)
}

/// The `steal` field (the eighth number) of the all-CPU line of /proc/stat, in clock
/// ticks; `None` on a kernel too old to have it.
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// `perf record -g` attached to one process.
struct Profile {
    child: Child,
}

impl Profile {
    fn start(output: PathBuf, pid: u32) -> anyhow::Result<Profile> {
        let child = Command::new("perf")
            .args(["record", "-g", "-o"])
            .arg(&output)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start perf (apt-get install linux-perf)")?;
        // perf creates its output once attached; wait for that, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !output.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Profile { child })
    }

    /// Stops recording (SIGINT, as perf expects) and waits for the file to be written.
    fn stop(mut self) {
        // SAFETY: kill only sends a signal to the child we started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = self.child.wait();
    }
}

/// `value` in its unit, compactly.
fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "msg/s" if value >= 1e6 => format!("{:.2} M", value / 1e6),
        "msg/s" if value >= 1e3 => format!("{:.1} k", value / 1e3),
        "conn/s" => format!("{value:.0}"),
        "MiB" => format!("{value:.1}"),
        _ => format!("{value:.0}"),
    }
}

fn print_table(comparison: &Comparison, load: &Load, runs: u32, key: TlsKey) {
    let workload = comparison.workload;
    println!(
        "\n{} (run {} of {runs}, load average {}): {}",
        workload.name(),
        comparison.run,
        comparison.load_average,
        workload.describe(load, key)
    );
    let reference = comparison
        .headwater
        .as_ref()
        .or(comparison.mosquitto.as_ref());
    let Some(reference) = reference else { return };
    println!(
        "  {:<34} {:>12} {:>12} {:>8}  better",
        "metric", "headwater", "mosquitto", "hw/mq"
    );
    for (i, metric) in reference.metrics.iter().enumerate() {
        let value =
            |m: &Option<Measured>| m.as_ref().and_then(|m| m.metrics.get(i)).map(|m| m.value);
        let headwater = value(&comparison.headwater);
        let mosquitto = value(&comparison.mosquitto);
        let shown = |v: Option<f64>| v.map_or("-".into(), |v| format_value(v, metric.unit));
        let ratio = match (headwater, mosquitto) {
            (Some(h), Some(m)) if m > 0.0 && !metric.condition => format!("{:.2}x", h / m),
            _ => "-".into(),
        };
        println!(
            "  {:<34} {:>12} {:>12} {:>8}  {}",
            format!("{} ({})", metric.name, metric.unit),
            shown(headwater),
            shown(mosquitto),
            ratio,
            if metric.condition {
                "condition"
            } else if metric.higher_is_better {
                "higher"
            } else {
                "lower"
            }
        );
    }
    for (kind, measured) in [
        ("headwater", &comparison.headwater),
        ("mosquitto", &comparison.mosquitto),
    ] {
        for note in measured.iter().flat_map(|m| &m.notes) {
            println!("  note ({kind}): {note}");
        }
        for detail in measured.iter().flat_map(|m| &m.details) {
            println!("  {kind}: {detail}");
        }
    }
}

fn to_json(comparisons: &[Comparison]) -> serde_json::Value {
    let side = |measured: &Option<Measured>| {
        measured.as_ref().map(|m| {
            serde_json::json!({
                "metrics": m.metrics.iter().map(|metric| serde_json::json!({
                    "name": metric.name,
                    "unit": metric.unit,
                    "value": metric.value,
                    "higher_is_better": metric.higher_is_better,
                    "condition": metric.condition,
                })).collect::<Vec<_>>(),
                "notes": m.notes,
                "details": m.details,
            })
        })
    };
    comparisons
        .iter()
        .map(|c| {
            serde_json::json!({
                "workload": c.workload.name(),
                "run": c.run,
                "load_average": c.load_average,
                "headwater": side(&c.headwater),
                "mosquitto": side(&c.mosquitto),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_from_the_all_cpu_line() {
        let stat = "cpu  4705 150 1120 16250 520 0 36 212 0 0\n\
                    cpu0 2300 75 560 8100 260 0 18 106 0 0\n\
                    intr 114930548 113 0\n";
        assert_eq!(steal_ticks(stat), Some(212));
        // Kernels before 2.6.11 print seven numbers: no steal to report.
        assert_eq!(steal_ticks("cpu  4705 150 1120 16250 520 0 36\n"), None);
        assert_eq!(steal_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn segments_must_hold_a_message_and_stay_within_the_keepalive() {
        let load = |rate, seconds, segments| Load {
            messages: None,
            payload: 64,
            publishers: 1,
            subscribers: 1,
            window: 1,
            inflight: 1,
            rate,
            duration: Duration::from_secs(seconds),
            segments,
            connections: 1,
            source_addresses: 1,
            quiet: Duration::from_secs(1),
            tls_connections: 1,
            tls_concurrency: 1,
        };
        assert!(check_segments(&load(1000, 20, 10)).is_ok());
        assert!(check_segments(&load(1000, 1200, 10)).is_ok());
        let too_long = check_segments(&load(1000, 1210, 10)).unwrap_err();
        assert!(too_long.to_string().contains("keepalive"), "{too_long}");
        // 10 msg/s in 50 ms segments: none would be sent.
        let empty = check_segments(&load(10, 1, 20)).unwrap_err();
        assert!(empty.to_string().contains("holds no message"), "{empty}");
        assert!(check_segments(&load(10, 1, 10)).is_ok());
    }

    #[test]
    fn values_are_printed_in_their_unit() {
        assert_eq!(format_value(1_234_567.0, "msg/s"), "1.23 M");
        assert_eq!(format_value(412_345.0, "msg/s"), "412.3 k");
        assert_eq!(format_value(999.0, "msg/s"), "999");
        assert_eq!(format_value(12.345, "MiB"), "12.3");
        assert_eq!(format_value(3071.6, "bytes"), "3072");
    }
}
