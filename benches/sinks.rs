//! Sink benchmarks: rows per second through `sql.out` into SQLite and PostgreSQL with
//! batching, and the disk buffer's write, drain and pass-through rates, with the bytes
//! each message costs the disk (`/proc/self/io` `write_bytes`, what reached the block
//! layer, plus the store file's growth).
//!
//! `cargo bench --bench sinks` (add `-- sqlite`, `-- postgres` or `-- buffer` to run one
//! group; `SINK_BENCH_N` sets the message count, default 100000). PostgreSQL runs on a
//! throwaway cluster started here (`initdb` as the `postgres` user when root, `fsync`
//! on); without PostgreSQL's binaries that group is skipped with a note.
//!
//! Each case runs the real node in the real engine: messages are tracked, and the clock
//! stops when the last one is done (committed), so the rate includes batching waits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use headwater::engine::harness::NodeHarness;
use headwater::engine::{
    BufferOptions, Clock, Engine, EngineOptions, FlowPlan, GraphPlan, InputPlan, Msg, NodeContext,
    NodeFuture, NodePlan, Overflow, StateStore, WhenFull,
};
use headwater::store::{Store, StoreOptions};
use tokio::sync::{Notify, mpsc};

fn count() -> usize {
    std::env::var("SINK_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// Bytes this process has caused to be written to storage so far.
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn report(name: &str, n: usize, elapsed: Duration, written: u64) {
    println!(
        "{name:<28} {n:>8} msgs {:>8.2} s {:>10.0} msg/s {:>8.0} B written/msg",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        written as f64 / n as f64
    );
}

fn reading(n: usize, done: &Arc<(AtomicUsize, Notify)>) -> Msg {
    let done = done.clone();
    Msg::tracked(
        "home/meter/power",
        format!(r#"{{"id":"meter-{}","w":{}.5,"n":{n}}}"#, n % 16, n % 4000),
        1_700_000_000_000 + n as i64,
        move |_| {
            if done.0.fetch_add(1, Ordering::AcqRel) + 1 == count() {
                done.1.notify_one();
            }
        },
    )
}

async fn sql_case(name: &str, options: &str, dir: &Path) {
    let n = count();
    let harness = NodeHarness::start_in("sql.out", options, Clock::system(), dir.into())
        .expect("the bench options are valid");
    // Warm up: connect and create the table outside the measurement.
    harness.send(Msg::new("warm", r#"{"w":0,"n":-1}"#, 0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = Arc::new((AtomicUsize::new(0), Notify::new()));
    let before = write_bytes();
    let start = Instant::now();
    let feeder = {
        let done = done.clone();
        async move {
            for i in 0..n {
                harness.send(reading(i, &done)).await;
            }
            harness
        }
    };
    let notified = done.1.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let harness = feeder.await;
    notified.await;
    report(name, n, start.elapsed(), write_bytes() - before);
    harness.shutdown().await;
}

const COLUMNS_SQLITE: &str = "columns: { ts: timestamp, meter: payload.id, w: { field: payload.w, type: real }, n: { field: payload.n, type: integer } }";
const COLUMNS_PG: &str = "columns: { ts: timestamp, meter: { field: payload.id, type: text }, w: { field: payload.w, type: real }, n: { field: payload.n, type: integer } }";

async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    for rows in [100, 500, 2000] {
        sql_case(
            &format!("sqlite rows={rows}"),
            &format!(
                "table: r{rows}\n{COLUMNS_SQLITE}\nbatch: {{ rows: {rows}, interval: 50ms }}\n"
            ),
            dir.path(),
        )
        .await;
    }
}

/// A throwaway PostgreSQL cluster, stopped on drop.
struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Pg {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start() -> Option<Pg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|v| v.path().join("bin"))
            .find(|b| b.join("initdb").exists())?;
        let dir = tempfile::tempdir().ok()?;
        let _ = Command::new("chown")
            .args(["postgres:postgres", dir.path().to_str()?])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let pg = Pg { dir, bin, port };
        let data = pg.dir.path().join("data");
        let ok = pg
            .command("initdb")
            .args([
                "-D",
                data.to_str()?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("log");
        let started = pg
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str()?,
                "-o",
                &options,
                "-l",
                log.to_str()?,
                "-w",
                "start",
            ])
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        (ok && started).then_some(pg)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .status();
    }
}

async fn postgres() {
    let Some(pg) = Pg::start() else {
        println!("postgres: skipped (no PostgreSQL binaries under /usr/lib/postgresql)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    for rows in [100, 500, 2000] {
        sql_case(
            &format!("postgres rows={rows}"),
            &format!("url: {url}\ntable: r{rows}\n{COLUMNS_PG}\nbatch: {{ rows: {rows}, interval: 50ms }}\n"),
            dir.path(),
        )
        .await;
    }
    sql_case(
        "postgres rows=500 upsert",
        &format!("url: {url}\ntable: up\n{COLUMNS_PG}\nupsert: [n]\nbatch: {{ rows: 500, interval: 50ms }}\n"),
        dir.path(),
    )
    .await;
}

/// `feed -> sink` with a buffer on the sink; the sink finishes messages at once when
/// `finish` is true and holds them otherwise.
fn buffered_graph(store: &Store, finish: bool) -> (mpsc::Sender<Msg>, Engine, Arc<AtomicUsize>) {
    let finished = Arc::new(AtomicUsize::new(0));
    let finished_in_sink = finished.clone();
    let (feed_tx, feed_rx) = mpsc::channel::<Msg>(4096);
    let feed_rx = Arc::new(tokio::sync::Mutex::new(feed_rx));
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let nodes = vec![
        NodePlan {
            name: "feed".into(),
            kind: "bench.feed",
            factory: Arc::new(move |cx: NodeContext| -> NodeFuture {
                let feed_rx = feed_rx.clone();
                Box::pin(async move {
                    let mut rx = feed_rx.lock().await;
                    while let Some(msg) = rx.recv().await {
                        cx.emit(msg).await;
                    }
                    Ok(())
                })
            }),
            ports: vec!["out".into()],
            inputs: Vec::new(),
            state_key: "bench/feed".into(),
            buffer: None,
        },
        NodePlan {
            name: "sink".into(),
            kind: "bench.sink",
            factory: Arc::new(move |mut cx: NodeContext| -> NodeFuture {
                let held = held.clone();
                let finished = finished_in_sink.clone();
                Box::pin(async move {
                    let mut batch = Vec::new();
                    while cx.inbox.recv_many(&mut batch, 256).await > 0 {
                        if finish {
                            finished.fetch_add(batch.len(), Ordering::Relaxed);
                            batch.drain(..).for_each(Msg::done);
                        } else {
                            held.lock().unwrap().append(&mut batch);
                        }
                    }
                    Ok(())
                })
            }),
            ports: Vec::new(),
            inputs: vec![InputPlan {
                node: "feed".into(),
                port: "out".into(),
                capacity: 1024,
                overflow: Overflow::Block,
            }],
            state_key: "bench/sink".into(),
            buffer: Some(BufferOptions {
                max_bytes: 1 << 30,
                when_full: WhenFull::Block,
            }),
        },
    ];
    let engine = Engine::start(
        GraphPlan {
            flows: vec![FlowPlan {
                name: "bench".into(),
                nodes,
            }],
        },
        EngineOptions {
            drain_deadline: Duration::from_millis(200),
            state: StateStore::new(store.clone()),
            ..EngineOptions::default()
        },
    );
    (feed_tx, engine, finished)
}

fn open_store(path: &Path) -> Store {
    Store::open(StoreOptions {
        path: Some(path.to_path_buf()),
        ..StoreOptions::default()
    })
    .unwrap()
}

async fn feed_all(feed: &mpsc::Sender<Msg>) {
    let done = Arc::new((AtomicUsize::new(0), Notify::new()));
    let notified = done.1.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    for i in 0..count() {
        feed.send(reading(i, &done)).await.unwrap();
    }
    notified.await;
}

async fn buffer() {
    let n = count();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");

    // Write: the sink holds everything, so every message stays in the buffer; the clock
    // stops when the last source is acknowledged (its entry is durable).
    let store = open_store(&path);
    let (feed, engine, _) = buffered_graph(&store, false);
    let before = write_bytes();
    let start = Instant::now();
    feed_all(&feed).await;
    let elapsed = start.elapsed();
    report("buffer write (fill)", n, elapsed, write_bytes() - before);
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{:<28} store file {:.1} MiB for {n} entries ({:.0} B/entry)",
        "",
        file as f64 / (1 << 20) as f64,
        file as f64 / n as f64
    );
    drop(feed);
    engine.shutdown().await;
    store.close().await.unwrap();
    drop(store);

    // Drain: a new engine on the same store feeds the entries to a sink that finishes
    // them at once; done when the buffer is empty.
    let store = open_store(&path);
    let before = write_bytes();
    let start = Instant::now();
    let (feed, engine, finished) = buffered_graph(&store, true);
    while finished.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report("buffer drain", n, start.elapsed(), write_bytes() - before);

    // Through: messages pass the buffer into a sink that finishes them at once.
    let before = write_bytes();
    let start = Instant::now();
    feed_all(&feed).await;
    report(
        "buffer pass-through",
        n,
        start.elapsed(),
        write_bytes() - before,
    );
    drop(feed);
    engine.shutdown().await;
    store.close().await.unwrap();
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants =
        |group: &str| filter.is_empty() || filter.iter().any(|f| group.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if wants("sqlite") {
            sqlite().await;
        }
        if wants("postgres") {
            postgres().await;
        }
        if wants("buffer") {
            buffer().await;
        }
    });
}
