//! `sql.out` against real databases, through the real `headwater` binary: the README's
//! demo writing to SQLite with no set-up, and PostgreSQL (rows, upserts, an outage, and
//! a SIGKILL of the gateway while the database is down and the disk buffer fills).
//!
//! PostgreSQL: every test starts its own throwaway cluster (`initdb` in a temporary
//! directory, on a free port, as the `postgres` user when run as root, since PostgreSQL
//! refuses to run as root), so it can stop and start the server at will. Debian's
//! `postgresql` package provides the binaries (`./test.sh` installs it); the directory can
//! be overridden with `HEADWATER_PG_BIN`.
//!
//! Publishers are `mosquitto_pub -q 1`, one process per message: its exit status 0 means
//! the broker's PUBACK arrived, which is what "acknowledged to the publisher" means here.
//! Every wait is a bounded poll on an observable count or a log line.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Gateway, eventually, free_port};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A private PostgreSQL cluster in a temporary directory.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEADWATER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(Result::ok)
                .map(|v| v.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .max()
        });
    found.unwrap_or_else(|| {
        panic!(
            "PostgreSQL's binaries (initdb, pg_ctl) are missing: run ./test.sh, which installs Debian's `postgresql`, or set HEADWATER_PG_BIN"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("hw-pg").tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.up();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL program, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let data = self.data();
        let log = self.dir.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn down(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one query returning one integer.
    fn count(&self, sql: &str) -> i64 {
        let url = self.url();
        let sql = sql.to_string();
        runtime().block_on(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        })
    }

    /// Like `count`, but `None` while the query fails (the sink creates its table when
    /// it first connects, which may be after the gateway reports it is subscribed).
    fn try_count(&self, sql: &str) -> Option<i64> {
        let url = self.url();
        let sql = sql.to_string();
        runtime().block_on(async move {
            let pool = sqlx::PgPool::connect(&url).await.ok()?;
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .ok();
            pool.close().await;
            n
        })
    }

    /// The distinct values of the integer column `n` of `table` (empty before it exists).
    fn numbers(&self, table: &str) -> BTreeSet<i64> {
        let url = self.url();
        let sql = format!("SELECT n FROM {table}");
        runtime().block_on(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let rows: Result<Vec<i64>, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&pool)
                .await;
            pool.close().await;
            rows.unwrap_or_default().into_iter().collect()
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `headwater --data-dir DATA run --listen 127.0.0.1:0 FLOW` with extra environment.
fn gateway(data: &Path, flow: &Path, env: &[(&str, &str)]) -> Gateway {
    Gateway::start_with_env(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            "--listen",
            "127.0.0.1:0",
            flow.to_str().unwrap(),
        ],
        env,
    )
}

/// Publishes `{"n":N}` on `topic` with QoS 1; `true` once the broker's PUBACK arrived.
fn publish(port: u16, topic: &str, payload: &str) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
        ])
        .args(["-m", payload])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Publishes `{"n":N}` for N in `range` from a thread; returns the numbers acknowledged.
struct Publisher {
    acked: Arc<std::sync::Mutex<Vec<i64>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    fn start(port: u16, range: std::ops::Range<i64>) -> Publisher {
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                for n in range {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if publish(port, "meters/a", &format!(r#"{{"n":{n}}}"#)) {
                        acked.lock().unwrap().push(n);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Publisher {
            acked,
            count,
            stop,
            thread: Some(thread),
        }
    }

    fn acked_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops (after the message in progress) and returns what was acknowledged.
    fn finish(mut self) -> BTreeSet<i64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.acked.lock().unwrap().iter().copied().collect()
    }
}

fn write_flow(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("flow.yaml");
    std::fs::write(&path, body).unwrap();
    path
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_demo_writes_its_readings_to_sqlite_with_no_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gateway = gateway(
        &data,
        &repo_root().join("flows/demo.yaml"),
        &[("DEMO_INTERVAL", "20ms")],
    );
    gateway.wait_for("engine started");
    let db = data.join("headwater.sqlite");
    let rows: Vec<(i64, String, f64, i64)> = eventually("5 readings in SQLite", || {
        if !db.exists() {
            return None;
        }
        let db = db.clone();
        let rows = runtime().block_on(async move {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .read_only(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.ok()?;
            let rows: Vec<(i64, String, f64, i64)> =
                sqlx::query_as("SELECT ts, meter, w, n FROM readings ORDER BY n")
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            pool.close().await;
            Some(rows)
        })?;
        (rows.len() >= 5).then_some(rows)
    });
    for (i, (ts, meter, w, n)) in rows.iter().enumerate() {
        assert_eq!(*n, i as i64 + 1, "every reading, in order");
        assert_eq!(meter, "house");
        assert!(*w > 0.0);
        assert!(*ts > 1_600_000_000_000, "a timestamp in ms: {ts}");
    }
    gateway.signal("TERM");
    gateway.wait_for("all queues drained");
    assert!(gateway.wait().success());
}

#[test]
fn postgres_rows_and_upserts() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let flow = write_flow(
        dir.path(),
        &format!(
            r#"version: 1
flows:
  meters:
    nodes:
      in: {{ type: mqtt.in, topics: "meters/#", qos: 1 }}
      all:
        type: sql.out
        inputs: in
        url: {url}
        table: readings
        columns:
          topic: topic
          k: {{ field: payload.k, type: text }}
          n: {{ field: payload.n, type: integer }}
          doc: payload
          at: {{ field: timestamp, type: timestamptz }}
      latest:
        type: sql.out
        inputs: in
        url: {url}
        table: latest
        columns:
          k: {{ field: payload.k, type: text }}
          n: {{ field: payload.n, type: integer }}
        upsert: [k]
"#,
            url = pg.url()
        ),
    );
    let gw = gateway(&dir.path().join("data"), &flow, &[]);
    let port = gw.listening_port();
    gw.wait_for("subscribed to 1 of 1 topic filters on the built-in broker");
    // Five keys, each sent twice: the second round is what a redelivery after a crash
    // looks like to the sink (same key, maybe the same content).
    for round in 0..2 {
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let n = round * 10 + i;
            assert!(publish(
                port,
                "meters/x",
                &format!(r#"{{"k":"{k}","n":{n}}}"#)
            ));
        }
    }
    eventually("10 rows in readings", || {
        (pg.try_count("SELECT count(*) FROM readings") == Some(10)).then_some(())
    });
    eventually("the second round in latest", || {
        (pg.try_count("SELECT count(*) FROM latest WHERE n >= 10") == Some(5)).then_some(())
    });
    assert_eq!(
        pg.count("SELECT count(*) FROM latest"),
        5,
        "one row per key"
    );
    assert_eq!(
        pg.count("SELECT count(*) FROM readings WHERE doc->>'k' = k AND topic = 'meters/x' AND at > now() - interval '1 hour'"),
        10,
        "JSONB payload, topic and timestamptz columns hold the message"
    );
    gw.signal("TERM");
    gw.wait_for("all queues drained");
    assert!(gw.wait().success());
}

fn counter_flow(dir: &Path, url: &str, buffer: &str) -> PathBuf {
    write_flow(
        dir,
        &format!(
            r#"version: 1
flows:
  meters:
    nodes:
      in: {{ type: mqtt.in, topics: "meters/#", qos: 1 }}
      store:
        type: sql.out
        inputs: in
        url: {url}
        table: counts
        columns: {{ n: {{ field: payload.n, type: integer }} }}
        batch: {{ rows: 50, interval: 20ms }}
{buffer}"#
        ),
    )
}

#[test]
fn a_postgres_outage_loses_nothing() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let flow = counter_flow(dir.path(), &pg.url(), "");
    let gw = gateway(&dir.path().join("data"), &flow, &[]);
    let port = gw.listening_port();
    gw.wait_for("subscribed to 1 of 1 topic filters");
    let publisher = Publisher::start(port, 0..1_000_000);
    eventually("rows before the outage", || {
        (pg.numbers("counts").len() >= 30).then_some(())
    });
    pg.down();
    gw.wait_for("database unavailable");
    // The outage lasts while at least 100 more messages are published (and acknowledged
    // by the broker, which queues them for the flow's session).
    let during = publisher.acked_count();
    eventually("100 messages published during the outage", || {
        (publisher.acked_count() >= during + 100).then_some(())
    });
    pg.up();
    let after = publisher.acked_count();
    eventually("50 messages published after the outage", || {
        (publisher.acked_count() >= after + 50).then_some(())
    });
    let acked = publisher.finish();
    gw.wait_for("database available again");
    eventually("every acknowledged message in the table", || {
        acked.is_subset(&pg.numbers("counts")).then_some(())
    });
    gw.signal("TERM");
    gw.wait_for("all queues drained");
    assert!(gw.wait().success());
}

#[test]
fn sigkill_while_the_database_is_down_loses_no_acknowledged_message() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flow = counter_flow(
        dir.path(),
        &pg.url(),
        "        buffer: { max_size: 16MiB }\n",
    );
    let gw = gateway(&data, &flow, &[]);
    let port = gw.listening_port();
    gw.wait_for("subscribed to 1 of 1 topic filters");
    let publisher = Publisher::start(port, 0..1_000_000);
    eventually("rows before the outage", || {
        (pg.numbers("counts").len() >= 20).then_some(())
    });
    pg.down();
    gw.wait_for("database unavailable");
    let during = publisher.acked_count();
    eventually(
        "150 messages acknowledged while the database is down",
        || (publisher.acked_count() >= during + 150).then_some(()),
    );
    // Killed while the publisher is still sending and the buffer is filling.
    gw.signal("KILL");
    let status = gw.wait();
    assert!(!status.success());
    let acked = publisher.finish();
    assert!(acked.len() >= 170);

    pg.up();
    let gw = gateway(&data, &flow, &[]);
    gw.wait_for("disk buffer holds entries from before");
    eventually("every acknowledged message in the table", || {
        let rows = pg.numbers("counts");
        acked.is_subset(&rows).then_some(())
    });
    gw.signal("TERM");
    gw.wait_for("all queues drained");
    assert!(gw.wait().success());
}
