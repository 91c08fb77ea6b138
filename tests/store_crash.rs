//! Crash test of the store: nothing `commit` acknowledged is lost to a SIGKILL.
//!
//! The test re-executes its own binary as a child (`crash_child`, selected by an
//! environment variable) that commits numbered keys from several tasks and prints each key
//! only after its `commit` returned. The parent reads those lines, SIGKILLs the child once
//! it has read a few hundred (decided by count, not by time), reopens the file and checks
//! that every printed key is there with its value. Five kill cycles hit the same file, so
//! each reopen also recovers a file that was itself recovered before.
//!
//! A SIGKILL loses the process, not the kernel's page cache: this proves that an
//! acknowledgement implies a committed redb transaction, and that redb recovers after
//! being killed mid-write. Power loss additionally relies on fsync, which the store
//! requests for every acknowledged commit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use headwater::store::{Op, Store, StoreOptions, Table};

/// Set in the child's environment to the database path; its presence selects child mode.
const CHILD_ENV: &str = "HEADWATER_STORE_CRASH_CHILD";
/// The kill cycle, so every cycle writes keys of its own.
const CYCLE_ENV: &str = "HEADWATER_STORE_CRASH_CYCLE";

/// Acknowledged keys and their values.
const ACKED: Table = Table("crash.acked");
/// Lazy writes sharing the batches; never acknowledged, so only read back for integrity.
const NOISE: Table = Table("crash.noise");

const CYCLES: u32 = 5;
const COMMITTERS: u32 = 8;

/// The ~100-byte value stored under `key`, so a torn or misplaced value is caught too.
fn value_for(key: &str) -> Vec<u8> {
    format!("{key:-<100}").into_bytes()
}

/// The child: commits until killed. A plain test that returns at once in the parent.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let cycle: u32 = std::env::var(CYCLE_ENV).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Store::open(StoreOptions {
            path: Some(PathBuf::from(path)),
            ..StoreOptions::default()
        })
        .unwrap();
        let committers: Vec<_> = (0..COMMITTERS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0u64.. {
                        let key = format!("{cycle}/{task}/{n:08}");
                        store
                            .commit(vec![Op::Put {
                                table: ACKED,
                                key: key.clone().into_bytes(),
                                value: value_for(&key),
                            }])
                            .await
                            .unwrap();
                        store.commit_lazy(vec![Op::Put {
                            table: NOISE,
                            key: key.clone().into_bytes(),
                            value: vec![0; 100],
                        }]);
                        // One write(2) of less than PIPE_BUF bytes: a line is never torn.
                        // A closed pipe means the parent is gone: stop.
                        if writeln!(std::io::stdout().lock(), "acked {key}").is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        for committer in committers {
            committer.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_commits_survive_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut acked: Vec<String> = Vec::new();
    for cycle in 0..CYCLES {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env(CYCLE_ENV, cycle.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let watchdog = watchdog(child.id());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let target = 300 + 100 * cycle as usize;
        let mut this_cycle = 0;
        while this_cycle < target {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("child of cycle {cycle} ended after {this_cycle} keys"))
                .unwrap();
            if let Some(key) = line.strip_prefix("acked ") {
                acked.push(key.to_owned());
                this_cycle += 1;
            }
        }
        child.kill().unwrap();
        // Lines still in the pipe were printed after their commit returned: they count too.
        for line in lines {
            if let Some(key) = line.unwrap().strip_prefix("acked ") {
                acked.push(key.to_owned());
            }
        }
        let status = child.wait().unwrap();
        drop(watchdog);
        assert_eq!(status.signal(), Some(9), "cycle {cycle}: {status:?}");

        let store = Store::open(StoreOptions {
            path: Some(path.clone()),
            ..StoreOptions::default()
        })
        .unwrap();
        let stored: HashMap<Vec<u8>, Vec<u8>> =
            store.scan(ACKED, b"").unwrap().into_iter().collect();
        for key in &acked {
            assert_eq!(
                stored.get(key.as_bytes()),
                Some(&value_for(key)),
                "acknowledged key {key} lost after kill {cycle}"
            );
        }
        // The lazy table must read cleanly too, whatever part of it survived.
        store.scan(NOISE, b"").unwrap();
        eprintln!(
            "cycle {cycle}: {} keys acknowledged so far, {} stored",
            acked.len(),
            stored.len()
        );
        // Dropping the last handle closes the file for the next child.
        drop(store);
    }
}

/// Kills the child if the test is still waiting for it after two minutes, so a stuck
/// child fails the test instead of hanging it; dropping the returned sender disarms it.
fn watchdog(pid: u32) -> mpsc::Sender<()> {
    let (disarm, disarmed) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if disarmed.recv_timeout(Duration::from_secs(120)) == Err(mpsc::RecvTimeoutError::Timeout) {
            // The pid is still ours: the parent has not waited for the child yet.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    disarm
}
