//! Message ids stay unique across restarts of the real binary: a sink that upserts on
//! the message id (`sql.out` with `upsert: [msg_id]`, SQLite) must keep the rows of an
//! earlier run when the gateway restarts on the same data directory. With ids that
//! started at 0 again on every start, the second run's rows replaced the first's.

mod common;

use std::path::Path;

use common::{Gateway, eventually};

/// Rows per `run` in the SQLite file, or `None` while it is not there yet.
fn rows_per_run(db: &Path) -> Option<Vec<(String, i64)>> {
    if !db.exists() {
        return None;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = db.to_path_buf();
    runtime.block_on(async move {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.ok()?;
        let rows = sqlx::query_as("SELECT run, count(*) FROM ticks GROUP BY run ORDER BY run")
            .fetch_all(&pool)
            .await
            .ok();
        pool.close().await;
        rows
    })
}

fn start(flow: &Path, data: &Path, run: &str) -> Gateway {
    Gateway::start_with_env(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            "--listen",
            "127.0.0.1:0",
            flow.to_str().unwrap(),
        ],
        &[("RUN", run)],
    )
}

#[test]
fn rows_upserted_on_the_message_id_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("ids.yaml");
    std::fs::write(
        &flow,
        r#"version: 1
flows:
  ids:
    nodes:
      tick: { type: timer, interval: 5ms, at_start: true, count: 20, payload: { run: "${RUN}" } }
      rows:
        type: sql.out
        inputs: tick
        table: ticks
        columns: { msg_id: id, run: { field: payload.run, type: text } }
        upsert: [msg_id]
        batch: { rows: 5, interval: 10ms }
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let db = data.join("headwater.sqlite");
    // Waits until `run` wrote `n` rows; returns the rows per run then.
    let rows_once = |run: &str, n: i64| {
        eventually(&format!("{n} rows of run {run}"), || {
            let rows = rows_per_run(&db)?;
            rows.iter()
                .any(|(r, count)| r == run && *count >= n)
                .then_some(rows)
        })
    };

    let first = start(&flow, &data, "1");
    assert_eq!(rows_once("1", 20), [("1".to_string(), 20)]);
    first.signal("TERM");
    assert!(first.wait().success());

    // Same data directory, a second run right away (often within the same second).
    let second = start(&flow, &data, "2");
    let rows = rows_once("2", 20);
    assert_eq!(
        rows,
        [("1".to_string(), 20), ("2".to_string(), 20)],
        "the second run's ids replaced rows of the first"
    );
    second.signal("TERM");
    assert!(second.wait().success());
}
