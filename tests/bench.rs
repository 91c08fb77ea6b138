//! `headwater bench broker` end to end: every workload, tiny, against the built-in
//! broker started as a child process. It checks that the generator runs and reports,
//! never how fast anything is.

use std::process::Command;

#[test]
fn bench_broker_runs_every_workload_against_headwater() {
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args([
            "bench",
            "broker",
            "--brokers",
            "headwater",
            "--messages",
            "200",
            "--publishers",
            "2",
            "--subscribers",
            "3",
            "--rate",
            "200",
            "--duration",
            "1",
            "--connections",
            "20",
            "--json",
        ])
        .output()
        .expect("run headwater bench broker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    let workloads: Vec<&str> = results
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        workloads,
        [
            "fan-in-qos0",
            "qos1-durable",
            "fan-out-qos0",
            "latency",
            "idle-memory"
        ]
    );
    for result in results.as_array().unwrap() {
        let headwater = &result["headwater"];
        // Nothing lost: every workload's messages all arrived.
        assert_eq!(headwater["notes"], serde_json::json!([]), "{result}");
        assert!(result["mosquitto"].is_null());
        for metric in headwater["metrics"].as_array().unwrap() {
            assert!(metric["value"].as_f64().unwrap() >= 0.0, "{metric}");
        }
    }
}
