//! A script's `state` survives kill -9 of the real binary: a counting script, SIGKILL
//! while it counts, a restart on the same data directory, and the count goes on from
//! beyond the last value that left the script, never back.

mod common;

use common::Gateway;

/// The counts the `show` log node printed, in order, read from JSON log lines until
/// `enough` of them arrived (or the stream ended, after a kill).
fn counts(gateway: &Gateway, enough: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    // Bounds the whole wait (other log lines keep arriving), turning a hang into a failure.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while seen.len() < enough {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = gateway.lines.recv_timeout(left) else {
            break;
        };
        if !line.contains("\"node\":\"count/show\"") {
            continue;
        }
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let message = event["message"].as_str().expect("the payload");
        let payload: serde_json::Value = serde_json::from_str(message).expect("JSON payload");
        seen.push(payload["n"].as_i64().expect("a count"));
    }
    seen
}

fn start(flow: &str, data: &std::path::Path) -> Gateway {
    Gateway::start(&[
        "--log-format",
        "json",
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        flow,
    ])
}

#[test]
fn a_counting_script_continues_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("count.yaml");
    std::fs::write(
        &flow,
        r#"version: 1
flows:
  count:
    nodes:
      tick: { type: timer, interval: 5ms, at_start: true }
      counter:
        type: script
        inputs: tick
        rhai: |
          let n = state.get("n", 0) + 1;
          state.set("n", n);
          msg.payload = #{ n: n };
          msg
      show: { type: log, inputs: counter }
"#,
    )
    .unwrap();
    let flow = flow.to_str().unwrap();
    let data = dir.path().join("data");

    let gateway = start(flow, &data);
    let before = counts(&gateway, 30);
    assert_eq!(
        before,
        (1..=30).collect::<Vec<_>>(),
        "counts from 1, one by one"
    );
    gateway.signal("KILL");
    // Whatever was logged before the process died: the reader ends with the pipe.
    let mut gateway = gateway;
    let _ = gateway.child.wait();
    let mut tail = Vec::new();
    while let Ok(line) = gateway.lines.recv_timeout(common::PATIENCE) {
        tail.push(line);
    }
    let last = tail
        .iter()
        .filter(|l| l.contains("\"node\":\"count/show\""))
        .filter_map(|l| {
            let event: serde_json::Value = serde_json::from_str(l).ok()?;
            let payload: serde_json::Value =
                serde_json::from_str(event["message"].as_str()?).ok()?;
            payload["n"].as_i64()
        })
        .max()
        .unwrap_or(30);
    drop(gateway);

    let gateway = start(flow, &data);
    let after = counts(&gateway, 5);
    assert_eq!(after.len(), 5, "the restarted gateway counts");
    // A value that left the script was committed first, so the count never repeats one;
    // at most the few ticks committed but not yet logged at the kill are skipped.
    assert!(
        after[0] > last && after[0] <= last + 64,
        "last logged {last}, first after the restart {}",
        after[0]
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}
