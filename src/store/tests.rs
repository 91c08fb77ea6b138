//! Unit tests of the store: operations, batching (made deterministic by holding the
//! writer), lazy flushes, quota, failures, close and drop.

use std::path::Path;
use std::time::Duration;

use futures::future::join_all;

use super::writer::{BatchEvent, INTERVAL};
use super::*;

const T: Table = Table("test");

/// Generous bound for events that arrive within milliseconds; only a broken writer waits
/// this long.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Op {
    Op::Put {
        table: T,
        key: key.as_ref().to_vec(),
        value: value.as_ref().to_vec(),
    }
}

fn delete(key: impl AsRef<[u8]>) -> Op {
    Op::Delete {
        table: T,
        key: key.as_ref().to_vec(),
    }
}

fn on_file(path: &Path) -> StoreOptions {
    StoreOptions {
        path: Some(path.to_path_buf()),
        ..StoreOptions::default()
    }
}

fn keys(entries: &[Entry]) -> Vec<&[u8]> {
    entries.iter().map(|(key, _)| key.as_slice()).collect()
}

fn event(ops: u64, durable: bool) -> BatchEvent {
    BatchEvent {
        ops,
        durable,
        ok: true,
    }
}

#[tokio::test]
async fn put_get_scan_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/s.redb");
    let store = Store::open(on_file(&path)).unwrap();
    assert!(store.scan(T, b"").unwrap().is_empty(), "no table yet");
    assert_eq!(store.get(T, b"a").unwrap(), None);
    store
        .commit(vec![
            put("a/2", "y"),
            put("a/1", "x"),
            put("a", "bare"),
            put("b/1", "z"),
            put("ab", "w"),
        ])
        .await
        .unwrap();
    let a = store.scan(T, b"a/").unwrap();
    assert_eq!(
        keys(&a),
        [b"a/1".as_slice(), b"a/2"],
        "key order, prefix only"
    );
    assert_eq!(a[0].1, b"x");
    assert_eq!(
        keys(&store.scan(T, b"a").unwrap()),
        [b"a".as_slice(), b"a/1", b"a/2", b"ab"]
    );
    assert_eq!(store.scan(T, b"").unwrap().len(), 5);
    assert_eq!(store.scan(T, b"c").unwrap(), vec![]);

    store.commit(vec![put("a/1", "x2")]).await.unwrap();
    assert_eq!(
        store.get(T, b"a/1").unwrap().as_deref(),
        Some(b"x2".as_slice())
    );
    store
        .commit(vec![
            Op::DeletePrefix {
                table: T,
                prefix: b"a/".to_vec(),
            },
            delete("ab"),
            delete("never-there"),
        ])
        .await
        .unwrap();
    assert_eq!(
        keys(&store.scan(T, b"").unwrap()),
        [b"a".as_slice(), b"b/1"]
    );

    store.commit_lazy(vec![put("c", "lazy")]);
    store.close().await.unwrap();
    assert_eq!(
        store.commit(vec![put("d", "")]).await,
        Err(StoreError::Closed)
    );
    store.close().await.unwrap();
    drop(store);

    let store = Store::open(on_file(&path)).unwrap();
    assert_eq!(
        keys(&store.scan(T, b"").unwrap()),
        [b"a".as_slice(), b"b/1", b"c"]
    );
    assert_eq!(
        store.get(T, b"c").unwrap().as_deref(),
        Some(b"lazy".as_slice())
    );
}

#[tokio::test]
async fn prefixes_ending_in_0xff() {
    assert_eq!(prefix_end(b""), None);
    assert_eq!(prefix_end(&[0xff, 0xff]), None);
    assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));

    let store = Store::open(StoreOptions::default()).unwrap();
    let all: [&[u8]; 6] = [
        &[1],
        &[1, 0xff],
        &[1, 0xff, 0],
        &[2],
        &[0xff],
        &[0xff, 0xff],
    ];
    store
        .commit(all.iter().map(|k| put(k, "")).collect())
        .await
        .unwrap();
    assert_eq!(
        keys(&store.scan(T, &[1, 0xff]).unwrap()),
        [&[1, 0xff][..], &[1, 0xff, 0]]
    );
    assert_eq!(
        keys(&store.scan(T, &[0xff]).unwrap()),
        [&[0xff][..], &[0xff, 0xff]]
    );
    store
        .commit(vec![Op::DeletePrefix {
            table: T,
            prefix: vec![0xff],
        }])
        .await
        .unwrap();
    assert_eq!(keys(&store.scan(T, b"").unwrap()), &all[..4]);
    store
        .commit(vec![Op::DeletePrefix {
            table: T,
            prefix: vec![],
        }])
        .await
        .unwrap();
    assert!(store.scan(T, b"").unwrap().is_empty());
}

#[tokio::test]
async fn memory_store_starts_empty_and_works() {
    let store = Store::open(StoreOptions::default()).unwrap();
    assert!(store.scan(T, b"").unwrap().is_empty());
    store.commit(vec![put("k", "v")]).await.unwrap();
    assert_eq!(
        store.get(T, b"k").unwrap().as_deref(),
        Some(b"v".as_slice())
    );
    let other = Store::open(StoreOptions::default()).unwrap();
    assert_eq!(
        other.get(T, b"k").unwrap(),
        None,
        "each memory store is its own"
    );
    // Racing closes both succeed; the second finds the writer already gone.
    let (first, second) = tokio::join!(store.close(), store.close());
    assert_eq!((first, second), (Ok(()), Ok(())));
    assert_eq!(
        store.get(T, b"k").unwrap().as_deref(),
        Some(b"v".as_slice()),
        "reads after close"
    );
}

#[tokio::test]
async fn queued_commits_share_one_transaction_and_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hold, events) =
        Store::open_held(on_file(&dir.path().join("s.redb")), INTERVAL).unwrap();
    let mut commits: Vec<_> = (0..64)
        .map(|i| Box::pin(store.commit(vec![put(format!("k{i:02}"), "v")])))
        .collect();
    // One poll runs each commit up to its wait: all 64 requests are queued behind the hold.
    for commit in &mut commits {
        assert!(futures::poll!(commit.as_mut()).is_pending());
    }
    drop(hold);
    for result in join_all(commits).await {
        result.unwrap();
    }
    assert_eq!(events.try_iter().collect::<Vec<_>>(), [event(64, true)]);
    let stats = store.stats();
    assert_eq!(
        stats,
        StoreStats {
            requests: 64,
            transactions: 1,
            ops: 64,
            fsyncs: 1,
            consumed: 0
        }
    );
    assert_eq!(store.scan(T, b"k").unwrap().len(), 64);
}

#[tokio::test]
async fn batches_stop_at_max_ops_but_never_split_a_commit() {
    let (store, hold, events) = Store::open_held(
        StoreOptions {
            max_batch_ops: 4,
            ..StoreOptions::default()
        },
        INTERVAL,
    )
    .unwrap();
    let sizes = [1, 6, 1, 1, 1, 1, 1, 1];
    let mut commits: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            Box::pin(store.commit((0..n).map(|j| put(format!("{i}/{j}"), "")).collect()))
        })
        .collect();
    for commit in &mut commits {
        assert!(futures::poll!(commit.as_mut()).is_pending());
    }
    drop(hold);
    for result in join_all(commits).await {
        result.unwrap();
    }
    // 1 + 6 reaches the limit; then 4; then the last 2.
    assert_eq!(
        events.try_iter().collect::<Vec<_>>(),
        [event(7, true), event(4, true), event(2, true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_many_tasks_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(on_file(&dir.path().join("s.redb"))).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.commit(vec![put(format!("k{i:03}"), "v")]).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!(store.scan(T, b"k").unwrap().len(), 200);
    assert_eq!((stats.requests, stats.ops), (200, 200));
    assert!(
        stats.fsyncs <= stats.transactions && stats.transactions <= 200,
        "{stats:?}"
    );
}

#[tokio::test]
async fn lazy_commits_are_flushed_by_the_timer() {
    let (store, hold, events) =
        Store::open_held(StoreOptions::default(), Duration::from_millis(20)).unwrap();
    drop(hold);
    store.commit_lazy(vec![put("counter", "1")]);
    assert_eq!(events.recv_timeout(EVENT_TIMEOUT), Ok(event(1, false)));
    // Readers see a lazy commit before it is durable.
    assert_eq!(
        store.get(T, b"counter").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
    // Nothing else is sent: only the timer can produce this empty durable commit.
    assert_eq!(events.recv_timeout(EVENT_TIMEOUT), Ok(event(0, true)));
    assert_eq!(store.stats().fsyncs, 1);
}

#[tokio::test]
async fn a_steady_lazy_stream_is_still_flushed() {
    // With a zero interval, the second of two back-to-back lazy batches is overdue; the
    // queue never runs empty, so only the batch itself can carry the fsync.
    let (store, hold, events) = Store::open_held(
        StoreOptions {
            max_batch_ops: 1,
            ..StoreOptions::default()
        },
        Duration::ZERO,
    )
    .unwrap();
    store.commit_lazy(vec![put("a", "1")]);
    store.commit_lazy(vec![put("b", "1")]);
    drop(hold);
    assert_eq!(events.recv_timeout(EVENT_TIMEOUT), Ok(event(1, false)));
    assert_eq!(events.recv_timeout(EVENT_TIMEOUT), Ok(event(1, true)));
}

#[tokio::test]
async fn lazy_order_is_kept_and_an_empty_commit_is_a_barrier() {
    let (store, hold, events) = Store::open_held(StoreOptions::default(), INTERVAL).unwrap();
    drop(hold);
    // On an idle store a barrier writes nothing.
    store.commit(vec![]).await.unwrap();
    assert_eq!(store.stats().transactions, 0);

    store.commit_lazy(vec![put("k", "1")]);
    store.commit_lazy(vec![delete("k"), put("j", "2")]);
    store.commit_lazy(vec![put("k", "3")]);
    store.commit(vec![]).await.unwrap();
    assert_eq!(
        store.get(T, b"k").unwrap().as_deref(),
        Some(b"3".as_slice())
    );
    assert_eq!(
        store.get(T, b"j").unwrap().as_deref(),
        Some(b"2".as_slice())
    );
    // However the lazy commits were batched, the barrier ended with an fsync of them all.
    let all: Vec<_> = events.try_iter().collect();
    assert_eq!(all.iter().map(|e| e.ops).sum::<u64>(), 4);
    assert!(all.last().unwrap().durable, "{all:?}");
}

#[tokio::test]
async fn over_quota_refuses_puts_but_deletes_still_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::open(on_file(&path)).unwrap();
    store
        .commit(vec![put("a", "1"), put("b", "2")])
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);

    // Reopened over its quota: refused from the first batch on.
    let (store, hold, events) = Store::open_held(
        StoreOptions {
            quota_bytes: Some(1),
            ..on_file(&path)
        },
        INTERVAL,
    )
    .unwrap();
    let mut put_c = Box::pin(store.commit(vec![put("c", "3")]));
    let mut delete_b = Box::pin(store.commit(vec![delete("b")]));
    let mut mixed = Box::pin(store.commit(vec![delete("a"), put("d", "4")]));
    assert!(futures::poll!(put_c.as_mut()).is_pending());
    assert!(futures::poll!(delete_b.as_mut()).is_pending());
    assert!(futures::poll!(mixed.as_mut()).is_pending());
    drop(hold);
    // All three share a batch; only the commits containing a Put are refused.
    assert_eq!(put_c.await, Err(StoreError::QuotaExceeded));
    assert_eq!(delete_b.await, Ok(()));
    assert_eq!(mixed.await, Err(StoreError::QuotaExceeded));
    assert_eq!(events.try_iter().collect::<Vec<_>>(), [event(1, true)]);
    assert_eq!(keys(&store.scan(T, b"").unwrap()), [b"a".as_slice()]);
}

#[tokio::test]
async fn puts_are_refused_once_the_file_grows_past_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    drop(Store::open(on_file(&path)).unwrap());
    let empty = std::fs::metadata(&path).unwrap().len();
    let quota = empty + (1 << 20);
    // A zero interval measures the allocation after every commit while over the quota.
    let (store, hold, _events) = Store::open_held(
        StoreOptions {
            quota_bytes: Some(quota),
            ..on_file(&path)
        },
        Duration::ZERO,
    )
    .unwrap();
    drop(hold);
    let value = vec![7u8; 4096];
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 10_000, "quota never reached");
        match store
            .commit(vec![put(format!("k{accepted:05}"), &value)])
            .await
        {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refused, StoreError::QuotaExceeded);
    assert!(std::fs::metadata(&path).unwrap().len() > quota);
    assert!(accepted > 0);
    assert_eq!(store.scan(T, b"k").unwrap().len(), accepted);
    store
        .commit(vec![Op::DeletePrefix {
            table: T,
            prefix: b"k".to_vec(),
        }])
        .await
        .unwrap();
    assert!(store.scan(T, b"").unwrap().is_empty());
    // The file stays over the quota, but the space it holds is free again: Puts are back
    // once redb has released the pages (a few commits later).
    assert!(std::fs::metadata(&path).unwrap().len() > quota);
    let mut refused_after_drain = 0;
    while store.commit(vec![put("again", "1")]).await == Err(StoreError::QuotaExceeded) {
        refused_after_drain += 1;
        assert!(
            refused_after_drain < 10,
            "puts stay refused after the store was drained"
        );
        store.commit(vec![delete("nothing")]).await.unwrap();
    }
    assert_eq!(
        store.get(T, b"again").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
}

#[tokio::test]
async fn a_failed_transaction_fails_its_whole_batch_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    // A table of another type under a name the store will use: opening it fails.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("wrong"))
            .unwrap()
            .insert(1, 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let wrong = Table("wrong");
    let (store, hold, events) = Store::open_held(on_file(&path), INTERVAL).unwrap();
    let mut good = Box::pin(store.commit(vec![put("good", "1")]));
    let mut bad = Box::pin(store.commit(vec![Op::Put {
        table: wrong,
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    }]));
    assert!(futures::poll!(good.as_mut()).is_pending());
    assert!(futures::poll!(bad.as_mut()).is_pending());
    drop(hold);
    let (good, bad) = (good.await, bad.await);
    assert!(
        matches!(&good, Err(StoreError::Database(m)) if m.contains("wrong")),
        "{good:?}"
    );
    assert_eq!(good, bad, "every waiter of the batch gets the error");
    assert_eq!(
        events.recv_timeout(EVENT_TIMEOUT),
        Ok(BatchEvent {
            ops: 2,
            durable: true,
            ok: false
        })
    );
    assert_eq!(
        store.get(T, b"good").unwrap(),
        None,
        "nothing of the batch is written"
    );
    // The failed batch's record reached the commit log before redb refused it; it must
    // never be replayed (here it would even fail the open), crash or no crash.
    let crashed = dir.path().join("crashed.redb");
    copy_as_after_a_crash(&path, &crashed);
    let reopened = Store::open(on_file(&crashed)).unwrap();
    assert_eq!(reopened.get(T, b"good").unwrap(), None);
    drop(reopened);
    store.commit(vec![put("after", "1")]).await.unwrap();
    assert_eq!(
        store.get(T, b"after").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
    let crashed = dir.path().join("crashed-later.redb");
    copy_as_after_a_crash(&path, &crashed);
    let reopened = Store::open(on_file(&crashed)).unwrap();
    assert_eq!(reopened.get(T, b"good").unwrap(), None);
    assert_eq!(
        reopened.get(T, b"after").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
}

#[tokio::test]
async fn dropping_the_last_handle_flushes_lazy_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::open(on_file(&path)).unwrap();
    let clone = store.clone();
    store.commit_lazy(vec![put("lazy", "1")]);
    drop(store);
    clone.commit_lazy(vec![put("lazy2", "2")]);
    // Joins the writer after its final flush; the file is then free to reopen.
    drop(clone);
    let store = Store::open(on_file(&path)).unwrap();
    assert_eq!(store.scan(T, b"lazy").unwrap().len(), 2);
}

#[tokio::test]
async fn a_cancelled_commit_still_applies_and_drop_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (store, hold, events) = Store::open_held(on_file(&path), INTERVAL).unwrap();
    let mut commit = Box::pin(store.commit(vec![put("k", "v")]));
    assert!(futures::poll!(commit.as_mut()).is_pending());
    drop(commit);
    drop(hold);
    // The writer answers nobody, then ends when the last handle goes.
    drop(store);
    assert_eq!(events.try_iter().collect::<Vec<_>>(), [event(1, true)]);
    let store = Store::open(on_file(&path)).unwrap();
    assert_eq!(
        store.get(T, b"k").unwrap().as_deref(),
        Some(b"v".as_slice())
    );
}

#[tokio::test]
async fn a_durable_commit_lingers_for_company() {
    let dir = tempfile::tempdir().unwrap();
    // A linger no test machine outlasts, and a batch full at two requests: the second
    // commit always joins the first's transaction and ends the wait. Without the linger
    // the writer may take the first alone.
    let store = Store::open(StoreOptions {
        linger: Duration::from_secs(30),
        max_batch_ops: 2,
        ..on_file(&dir.path().join("s.redb"))
    })
    .unwrap();
    let first = store.commit_queued(vec![put("a", "1")]);
    tokio::task::yield_now().await;
    let second = store.commit_queued(vec![put("b", "2")]);
    let (first, second) = tokio::join!(first, second);
    first.unwrap();
    second.unwrap();
    let stats = store.stats();
    assert_eq!((stats.transactions, stats.fsyncs), (1, 1), "{stats:?}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_key_created_and_deleted_in_one_batch_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (store, hold, events) = Store::open_held(on_file(&path), INTERVAL).unwrap();
    // A message queued durably, then acknowledged (a lazy delete) before the writer ran:
    // both wait behind the hold and form one batch.
    let mut queued = Box::pin(store.commit(vec![put("m1", "message")]));
    assert!(futures::poll!(queued.as_mut()).is_pending());
    store.commit_lazy(vec![delete("m1")]);
    drop(hold);
    queued.await.unwrap();
    assert_eq!(store.get(T, b"m1").unwrap(), None);
    let stats = store.stats();
    assert_eq!(
        (stats.transactions, stats.fsyncs, stats.consumed),
        (0, 0, 2),
        "{stats:?}"
    );
    store.close().await.unwrap();
    drop(store);
    assert_eq!(
        events.try_iter().collect::<Vec<_>>(),
        Vec::<BatchEvent>::new()
    );
    let store = Store::open(on_file(&path)).unwrap();
    assert_eq!(store.get(T, b"m1").unwrap(), None);
}

#[tokio::test]
async fn only_keys_new_to_the_store_and_deleted_last_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    // Every batch below is exactly two requests: the first (durable) lingers for the
    // second, which fills the batch (see a_durable_commit_lingers_for_company).
    let store = Store::open(StoreOptions {
        linger: Duration::from_secs(30),
        max_batch_ops: 2,
        ..on_file(&path)
    })
    .unwrap();
    store
        .commit(vec![put("old", "1"), put("other", "1")])
        .await
        .unwrap();
    let pair = |first: Vec<Op>, second: Vec<Op>| {
        let first = store.commit_queued(first);
        store.commit_lazy(second);
        first
    };
    // A key that existed: Put then Delete is a Delete, and it is written.
    pair(vec![put("old", "2")], vec![delete("old")])
        .await
        .unwrap();
    assert_eq!(store.get(T, b"old").unwrap(), None);
    assert_eq!(store.stats().consumed, 0);
    // A new key put again after its delete stays.
    pair(
        vec![put("again", "1")],
        vec![delete("again"), put("again", "2")],
    )
    .await
    .unwrap();
    assert_eq!(
        store.get(T, b"again").unwrap().as_deref(),
        Some(b"2".as_slice())
    );
    assert_eq!(store.stats().consumed, 0);
    // A prefix delete in the same table keeps everything in it.
    pair(
        vec![put("p1", "1")],
        vec![
            delete("p1"),
            Op::DeletePrefix {
                table: T,
                prefix: b"zz".to_vec(),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(store.get(T, b"p1").unwrap(), None);
    assert_eq!(store.stats().consumed, 0);
    // A new key put and deleted: skipped, while the rest of the batch is written.
    let before = store.stats();
    pair(vec![put("new", "1")], vec![delete("new"), put("kept", "1")])
        .await
        .unwrap();
    let after = store.stats();
    assert_eq!(after.consumed, 2, "{after:?}");
    assert_eq!(after.transactions, before.transactions + 1);
    assert_eq!(after.ops, before.ops + 1);
    assert_eq!(store.get(T, b"new").unwrap(), None);
    assert_eq!(
        store.get(T, b"kept").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
    assert_eq!(
        store.get(T, b"other").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_linger_ends_once_what_it_waits_for_is_consumed() {
    let dir = tempfile::tempdir().unwrap();
    // A linger of an hour: the commit below finishes only because the Delete of the key
    // it put ends the wait (the hour would outlast the timeout).
    let store = Store::open(StoreOptions {
        linger: Duration::from_secs(3600),
        ..on_file(&dir.path().join("s.redb"))
    })
    .unwrap();
    let queued = store.commit_queued(vec![put("m1", "message")]);
    store.commit_lazy(vec![delete("m1")]);
    tokio::time::timeout(EVENT_TIMEOUT, queued)
        .await
        .expect("the linger ended when its key was consumed")
        .unwrap();
    let stats = store.stats();
    assert_eq!((stats.fsyncs, stats.consumed), (0, 2), "{stats:?}");
    assert_eq!(store.get(T, b"m1").unwrap(), None);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_quiet_commit_keeps_its_place_and_completes_once_rung() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (store, hold, events) = Store::open_held(on_file(&path), INTERVAL).unwrap();
    // What the broker does for a QoS 1 message it hands to a persistent subscriber: the
    // Put is queued quietly, the subscriber's acknowledgement queues the Delete after it,
    // and the publisher's connection rings the writer afterwards.
    let (queued, _) = store.commit_quiet(vec![put("m1", "message")]);
    store.commit_lazy(vec![delete("m1")]);
    let (kept, _) = store.commit_quiet(vec![put("m2", "kept")]);
    drop(hold);
    store.ring();
    queued.await.unwrap();
    kept.await.unwrap();
    // The Delete did not overtake the Put: both vanished together, and m2 is durable.
    assert_eq!(store.get(T, b"m1").unwrap(), None);
    assert_eq!(store.get(T, b"m2").unwrap(), Some(b"kept".to_vec()));
    assert_eq!(events.try_iter().collect::<Vec<_>>(), vec![event(1, true)]);
    assert_eq!(store.stats().consumed, 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn an_acknowledgement_that_finds_its_put_still_queued_answers_the_commit_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (store, hold, events) = Store::open_held(on_file(&path), INTERVAL).unwrap();
    // The broker's QoS 1 path: the message's Put queued quietly, and the subscriber's
    // acknowledgement arriving before the writer took it. The writer is held the whole
    // time, so only the withdrawal can answer the commit.
    let (queued, _) = store.commit_quiet(vec![put("m1", "message")]);
    let (kept, _) = store.commit_quiet(vec![put("m2", "kept"), put("m3", "message")]);
    assert!(store.withdraw_created(T, b"m1"));
    assert!(store.withdraw_created(T, b"m3"));
    tokio::time::timeout(EVENT_TIMEOUT, queued)
        .await
        .expect("answered without the writer")
        .unwrap();
    // Already withdrawn, and never queued: the caller deletes as usual.
    assert!(!store.withdraw_created(T, b"m1"));
    assert!(!store.withdraw_created(T, b"m9"));
    drop(hold);
    kept.await.unwrap();
    assert_eq!(store.get(T, b"m1").unwrap(), None);
    assert_eq!(store.get(T, b"m3").unwrap(), None);
    assert_eq!(store.get(T, b"m2").unwrap(), Some(b"kept".to_vec()));
    let stats = store.stats();
    assert_eq!((stats.ops, stats.consumed), (1, 4), "{stats:?}");
    assert_eq!(events.try_iter().collect::<Vec<_>>(), vec![event(1, true)]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn withdrawing_one_put_of_a_quiet_request_leaves_the_rest_to_its_producers_ring() {
    let dir = tempfile::tempdir().unwrap();
    // No linger to end a batch early (one operation fills it), and an hour before the
    // writer would flush by itself: only a ring gets the rest written.
    let store = Store::open(StoreOptions {
        linger: Duration::from_secs(3600),
        max_batch_ops: 1,
        ..on_file(&dir.path().join("s.redb"))
    })
    .unwrap();
    while !store.writer_idle() {
        tokio::task::yield_now().await;
    }
    let wakes = store.writer_wakes();
    let (rest, must_ring) = store.commit_quiet(vec![put("m1", "message"), put("m2", "kept")]);
    assert!(must_ring, "the writer was asleep");
    assert!(store.withdraw_created(T, b"m1"));
    // m2's own acknowledgement may still withdraw it: the writer is left asleep.
    assert_eq!(
        store.writer_wakes(),
        wakes,
        "the withdrawal woke the writer"
    );
    assert!(store.writer_idle());
    // The producer's ring, as the broker's publisher sends it at the linger.
    store.ring();
    assert_eq!(store.writer_wakes(), wakes + 1);
    tokio::time::timeout(EVENT_TIMEOUT, rest)
        .await
        .expect("the ring had the writer commit m2")
        .unwrap();
    assert_eq!(store.get(T, b"m1").unwrap(), None);
    assert_eq!(store.get(T, b"m2").unwrap(), Some(b"kept".to_vec()));
    store.close().await.unwrap();
}

/// What a SIGKILL would leave of the store at `path`: its database and its commit log as
/// the files hold them now (the page cache survives a killed process).
fn copy_as_after_a_crash(path: &Path, to: &Path) {
    std::fs::copy(path, to).unwrap();
    let log = log::CommitLog::path_for(path);
    std::fs::copy(&log, log::CommitLog::path_for(to)).unwrap();
}

#[tokio::test]
async fn durable_commits_live_in_the_log_until_a_checkpoint_and_replay_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::open(on_file(&path)).unwrap();
    let log_path = log::CommitLog::path_for(&path);
    let empty_log = std::fs::metadata(&log_path).unwrap().len();
    store
        .commit((0..100).map(|i| put(format!("k{i:03}"), "v")).collect())
        .await
        .unwrap();
    store.commit(vec![delete("k005")]).await.unwrap();
    store
        .commit(vec![Op::DeletePrefix {
            table: T,
            prefix: b"k09".to_vec(),
        }])
        .await
        .unwrap();
    store.commit(vec![put("k001", "changed")]).await.unwrap();
    // One fsync per commit, each of the log alone: redb waits for a checkpoint.
    let stats = store.stats();
    assert_eq!((stats.transactions, stats.fsyncs), (4, 4), "{stats:?}");
    assert!(std::fs::metadata(&log_path).unwrap().len() > empty_log);

    // The writer is idle (every commit returned): the files are what a crash leaves.
    let crashed = dir.path().join("crashed.redb");
    copy_as_after_a_crash(&path, &crashed);
    let reopened = Store::open(on_file(&crashed)).unwrap();
    let entries = reopened.scan(T, b"").unwrap();
    assert_eq!(entries.len(), 100 - 1 - 10);
    assert!(!keys(&entries).contains(&b"k005".as_slice()));
    assert!(!keys(&entries).iter().any(|key| key.starts_with(b"k09")));
    assert_eq!(
        reopened.get(T, b"k001").unwrap().as_deref(),
        Some(&b"changed"[..])
    );

    // The replay was checkpointed into redb: opening the copy once more (with what it
    // left) finds the same data with nothing left to replay.
    reopened.close().await.unwrap();
    drop(reopened);
    let again = dir.path().join("again.redb");
    copy_as_after_a_crash(&crashed, &again);
    let opened = log::CommitLog::open(&log::CommitLog::path_for(&again)).unwrap();
    assert!(opened.records.is_empty());
    let again = Store::open(on_file(&again)).unwrap();
    assert_eq!(again.scan(T, b"").unwrap(), entries);

    // A clean close checkpoints: the log of the original store is empty afterwards.
    store.close().await.unwrap();
    drop(store);
    assert!(log::CommitLog::open(&log_path).unwrap().records.is_empty());
    let store = Store::open(on_file(&path)).unwrap();
    assert_eq!(store.scan(T, b"").unwrap(), entries);
}

#[tokio::test]
async fn lazy_commits_reach_the_log_and_the_timer_syncs_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (store, hold, events) =
        Store::open_held(on_file(&path), Duration::from_millis(50)).unwrap();
    drop(hold);
    store.commit_lazy(vec![put("lazy", "1")]);
    assert_eq!(events.recv_timeout(EVENT_TIMEOUT).unwrap(), event(1, false));
    // The timer's flush is a sync of the log, not a redb transaction.
    assert_eq!(events.recv_timeout(EVENT_TIMEOUT).unwrap(), event(0, true));
    let stats = store.stats();
    assert_eq!((stats.transactions, stats.fsyncs), (1, 1), "{stats:?}");
    let crashed = dir.path().join("crashed.redb");
    copy_as_after_a_crash(&path, &crashed);
    let reopened = Store::open(on_file(&crashed)).unwrap();
    assert_eq!(
        reopened.get(T, b"lazy").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}
