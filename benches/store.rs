//! Store throughput and write volume.
//!
//! - `store/durable_put_100b/{1,16,256}`: durable commits per second of one 100-byte Put
//!   each, from 1, 16 and 256 concurrent committers (criterion's elements/s). Each commit
//!   returns only after its fsync, so this is the rate of PUBACKs the broker can send for
//!   QoS 1 messages queued for one persistent session.
//! - `bytes per committed op` (printed, not timed): file growth and bytes written per
//!   commit at each concurrency, from `/proc/self/io` (`wchar`: bytes handed to write(2);
//!   `write_bytes`: bytes this process caused to be sent to the block layer, counted when
//!   pages are dirtied), since SD cards wear by what is written, not by what is stored.
//!
//! The database lives under `CARGO_TARGET_TMPDIR`, on the disk that holds `target/`, not
//! on a tmpfs where fsync costs nothing. Run: `cargo bench --bench store`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headwater::store::{Op, Store, StoreOptions, Table};

const QUEUE: Table = Table("bench.queue");
const CONCURRENCY: [u64; 3] = [1, 16, 256];
/// Commits per concurrency level for the write-volume report.
const VOLUME_COMMITS: u64 = 4096;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

fn open(path: &Path) -> Store {
    Store::open(StoreOptions {
        path: Some(path.to_path_buf()),
        ..StoreOptions::default()
    })
    .unwrap()
}

/// `total` durable commits of one 100-byte Put, spread over `committers` tasks. Keys
/// increase like the broker's queue keys, so every Put is an insert at the end.
async fn commit_many(store: &Store, next_key: &Arc<AtomicU64>, committers: u64, total: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..committers {
        let count = total / committers + u64::from(task < total % committers);
        let store = store.clone();
        let next_key = next_key.clone();
        tasks.spawn(async move {
            for _ in 0..count {
                let key = next_key
                    .fetch_add(1, Ordering::Relaxed)
                    .to_be_bytes()
                    .to_vec();
                store
                    .commit(vec![Op::Put {
                        table: QUEUE,
                        key,
                        value: vec![0x5a; 100],
                    }])
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

fn durable_commits(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut group = c.benchmark_group("store/durable_put_100b");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for committers in CONCURRENCY {
        let store = open(&dir.path().join(format!("throughput-{committers}.redb")));
        let next_key = Arc::new(AtomicU64::new(0));
        group.bench_function(BenchmarkId::from_parameter(committers), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                runtime.block_on(commit_many(&store, &next_key, committers, iters));
                start.elapsed()
            })
        });
        let stats = store.stats();
        println!(
            "store/durable_put_100b/{committers}: {:.1} ops per fsync",
            stats.ops as f64 / stats.fsyncs.max(1) as f64
        );
    }
    group.finish();
}

/// `(wchar, write_bytes)` of this process so far.
fn io_counters() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("wchar:"), field("write_bytes:"))
}

/// Runs `work` (which commits `VOLUME_COMMITS` ops) on a store already warmed by the same
/// work, so the numbers reflect a steady state past the file's initial allocation, and
/// prints what it cost per committed op and per transaction.
fn report_volume(name: &str, path: &Path, store: &Store, mut work: impl FnMut()) {
    work();
    let size_before = std::fs::metadata(path).unwrap().len();
    let (wchar_before, written_before) = io_counters();
    let stats_before = store.stats();
    work();
    let (wchar_after, written_after) = io_counters();
    let size_after = std::fs::metadata(path).unwrap().len();
    let stats = store.stats();
    let transactions = (stats.transactions - stats_before.transactions).max(1);
    let per_op = |bytes: u64| bytes as f64 / VOLUME_COMMITS as f64;
    let block_per_op = per_op(written_after - written_before);
    println!(
        "store/bytes_per_op/{name}: per committed op: file growth {:.0} B, write(2) {:.0} B, \
         block layer {block_per_op:.0} B; {:.1} ops and {:.0} block-layer bytes per transaction",
        per_op(size_after.saturating_sub(size_before)),
        per_op(wchar_after - wchar_before),
        VOLUME_COMMITS as f64 / transactions as f64,
        (written_after - written_before) as f64 / transactions as f64,
    );
}

fn bytes_per_op(_: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for committers in CONCURRENCY {
        let path = dir.path().join(format!("volume-{committers}.redb"));
        let store = open(&path);
        let next_key = Arc::new(AtomicU64::new(0));
        report_volume(&committers.to_string(), &path, &store, || {
            runtime.block_on(commit_many(&store, &next_key, committers, VOLUME_COMMITS))
        });
    }
    // Lazy commits (QoS 0 retained messages, counters): one caller, then a barrier that
    // makes them durable, as the one-second timer would.
    let path = dir.path().join("volume-lazy.redb");
    let store = open(&path);
    let mut next_key = 0u64;
    report_volume("lazy", &path, &store, || {
        for _ in 0..VOLUME_COMMITS {
            next_key += 1;
            store.commit_lazy(vec![Op::Put {
                table: QUEUE,
                key: next_key.to_be_bytes().to_vec(),
                value: vec![0x5a; 100],
            }]);
        }
        runtime.block_on(store.commit(Vec::new())).unwrap();
    });
}

criterion_group!(benches, durable_commits, bytes_per_op);
criterion_main!(benches);
