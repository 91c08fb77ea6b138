//! `headwater bench broker` end to end: every workload, tiny, against the built-in
//! broker started as a child process, and the TLS workloads against Mosquitto too (the
//! same generated certificates for both). It checks that the generator runs and
//! reports, never how fast anything is.

use std::process::Command;

/// Runs `headwater bench broker ARGS... --json`; its results, and its output for messages.
fn bench_broker(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(["bench", "broker"])
        .args(args)
        .arg("--json")
        .output()
        .expect("run headwater bench broker");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    let results = results.as_array().expect("an array").clone();
    (results, stdout)
}

#[test]
fn bench_broker_runs_every_workload_against_headwater() {
    let (results, _) = bench_broker(&[
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
        "--tls-connections",
        "20",
    ]);
    let workloads: Vec<&str> = results
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
            "idle-memory",
            "tls-connect",
            "tls-fan-in-qos0"
        ]
    );
    for result in &results {
        let headwater = &result["headwater"];
        // Nothing lost: every workload's messages all arrived.
        assert_eq!(headwater["notes"], serde_json::json!([]), "{result}");
        assert!(result["mosquitto"].is_null());
        for metric in headwater["metrics"].as_array().unwrap() {
            assert!(metric["value"].as_f64().unwrap() >= 0.0, "{metric}");
        }
        // The TLS workloads really ran over TLS; the others did not.
        let over_tls = headwater["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d.as_str().unwrap().starts_with("tls: TLSv1_3 "));
        let tls_workload = result["workload"].as_str().unwrap().starts_with("tls-");
        assert_eq!(over_tls, tls_workload, "{result}");
    }
}

#[test]
fn bench_broker_tls_workloads_run_against_both_brokers_with_the_same_certificates() {
    let (results, stdout) = bench_broker(&[
        "--workload",
        "tls-connect,tls-fan-in-qos0",
        "--mosquitto-nodelay",
        "--tls-connections",
        "10",
        "--messages",
        "100",
        "--publishers",
        "2",
    ]);
    assert_eq!(results.len(), 2, "{stdout}");
    for result in &results {
        for broker in ["headwater", "mosquitto"] {
            let side = &result[broker];
            assert_eq!(side["notes"], serde_json::json!([]), "{broker}: {result}");
            let details = side["details"].as_array().expect("details");
            assert!(
                details
                    .iter()
                    .any(|d| d.as_str().unwrap().starts_with("tls: TLSv1_3 ")),
                "{broker} not over TLS 1.3: {result}"
            );
            let connections_or_messages = side["metrics"][0]["value"].as_f64().unwrap();
            assert!(connections_or_messages > 0.0, "{broker}: {result}");
        }
    }
}

#[test]
fn bench_broker_latency_in_turns_measures_every_segment_of_both_brokers() {
    let (results, stdout) = bench_broker(&[
        "--workload",
        "latency",
        "--rate",
        "100",
        "--duration",
        "2",
        "--segments",
        "4",
    ]);
    assert_eq!(results.len(), 1, "{stdout}");
    for broker in ["headwater", "mosquitto"] {
        let side = &results[0][broker];
        assert_eq!(side["notes"], serde_json::json!([]), "{broker}: {stdout}");
        // 100 msg/s for 2 s at each QoS, gathered over four half-second segments.
        assert_eq!(
            side["details"],
            serde_json::json!([
                "QoS 0: 200 messages measured",
                "QoS 1: 200 messages measured"
            ]),
            "{broker}: {stdout}"
        );
        let stolen = side["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "CPU stolen by the host")
            .expect("the stolen CPU is reported");
        assert_eq!(stolen["condition"], true);
    }
}
