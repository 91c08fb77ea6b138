//! `influx.out` against a local HTTP server standing in for InfluxDB: it checks the
//! write path and query of the v2 and v3 APIs, the token header, the gzip body and the
//! exact line protocol; batches by size and by time; retries a 503 and refuses a 400.

mod http_peer;

use std::io::Read;
use std::time::Duration;

use headwater::engine::harness::NodeHarness;
use headwater::engine::{Clock, Msg, Outcome};
use http_peer::{Answer, Received, Server};
use tokio::sync::oneshot;

fn tracked(payload: &str, timestamp_ms: i64) -> (Msg, oneshot::Receiver<Outcome>) {
    let (tx, rx) = oneshot::channel();
    let msg = Msg::tracked("home/meter", payload.to_string(), timestamp_ms, move |o| {
        let _ = tx.send(o);
    });
    (msg, rx)
}

async fn outcome(rx: oneshot::Receiver<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("an outcome within 30 s")
        .expect("a verdict")
}

/// The body as the server would read it: gunzipped when it says gzip.
fn lines(r: &Received) -> String {
    if r.header("content-encoding") == Some("gzip") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_string(&mut text)
            .expect("a gzip body");
        text
    } else {
        r.text()
    }
}

#[tokio::test]
async fn v2_batches_are_gzipped_line_protocol_with_the_token() {
    let server = Server::start(Vec::new()).await;
    let h = NodeHarness::start(
        "influx.out",
        &format!(
            "url: {}
org: my org
bucket: sensors
token: s3cret
measurement: '{{{{payload.kind}}}}'
tags: {{ room: payload.room, topic: topic }}
fields: {{ w: payload.w, count: payload.n, note: payload.note, on: payload.on }}
integers: [count]
batch: {{ max_lines: 3, max_wait: 1h }}",
            server.url("")
        ),
        Clock::system(),
    )
    .unwrap();
    let payloads = [
        r#"{"kind": "power", "room": "living room", "w": 350.5, "n": 1, "on": true}"#,
        r#"{"kind": "power", "room": "a,b=c", "w": 12, "n": 2, "note": "say \"hi\""}"#,
        r#"{"kind": "energy meter", "w": 0.25, "n": 3}"#,
    ];
    let mut outcomes = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let (msg, rx) = tracked(p, 1_700_000_000_000 + i as i64);
        h.send(msg).await;
        outcomes.push(rx);
    }
    // `max_wait: 1h`: only the third line can have sent the batch.
    for rx in outcomes {
        assert_eq!(outcome(rx).await, Outcome::Done);
    }
    let received = server.received();
    assert_eq!(received.len(), 1, "one batch, one request");
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.target,
        "/api/v2/write?org=my+org&bucket=sensors&precision=ms"
    );
    assert_eq!(r.header("authorization"), Some("Token s3cret"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        lines(r),
        concat!(
            "power,room=living\\ room,topic=home/meter count=1i,on=true,w=350.5 1700000000000\n",
            "power,room=a\\,b\\=c,topic=home/meter count=2i,note=\"say \\\"hi\\\"\",w=12 1700000000001\n",
            "energy\\ meter,topic=home/meter count=3i,w=0.25 1700000000002\n",
        )
    );
    h.shutdown().await;
}

#[tokio::test]
async fn v3_sends_after_max_wait_and_retries_a_503() {
    let server = Server::start(vec![Answer::Status(503, Vec::new(), "compacting".into())]).await;
    let h = NodeHarness::start(
        "influx.out",
        &format!(
            "url: {}
api: v3
database: home
token: t0k3n
precision: s
gzip: false
measurement: power
tags: {{ id: payload.id }}
batch: {{ max_lines: 1000, max_wait: 50ms }}
retry: {{ initial: 10ms, max: 20ms }}",
            server.url("")
        ),
        Clock::system(),
    )
    .unwrap();
    let (a, a_done) = tracked(r#"{"id": "m1", "w": 5}"#, 1_700_000_000_999);
    let (b, b_done) = tracked(r#"{"id": "m2", "w": 6.5, "unit": "W"}"#, 1_700_000_001_000);
    h.send(a).await;
    h.send(b).await;
    assert_eq!(outcome(a_done).await, Outcome::Done);
    assert_eq!(outcome(b_done).await, Outcome::Done);
    let received = server.received();
    assert_eq!(received.len(), 2, "the 503, then the same batch again");
    for r in &received {
        assert_eq!(
            r.target,
            "/api/v3/write_lp?db=home&precision=second&accept_partial=false"
        );
        assert_eq!(r.header("authorization"), Some("Bearer t0k3n"));
        assert_eq!(r.header("content-encoding"), None);
        assert_eq!(
            lines(r),
            "power,id=m1 w=5 1700000000\npower,id=m2 w=6.5,unit=\"W\" 1700000001\n"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_refused_batch_and_unwritable_messages_go_to_the_error_port() {
    let server = Server::start(vec![Answer::Status(
        400,
        Vec::new(),
        r#"{"code":"invalid","message":"field type conflict"}"#.into(),
    )])
    .await;
    let mut h = NodeHarness::start(
        "influx.out",
        &format!(
            "url: {}\norg: o\nbucket: b\nmeasurement: m\nbatch: {{ max_lines: 2 }}\nretry: {{ initial: 10ms, max: 10ms }}",
            server.url("")
        ),
        Clock::system(),
    )
    .unwrap();
    // Not a field in it: refused before any request.
    h.send(Msg::new("t", r#"{"nested": {"w": 1}}"#, 0)).await;
    let unwritable = h.recv("error").await.unwrap();
    assert_eq!(
        unwritable.headers["error"],
        "the message has no field to write (line protocol needs at least one)"
    );
    h.send(Msg::new("t", r#"{"w": 1}"#, 0)).await;
    h.send(Msg::new("t", r#"{"w": "x"}"#, 0)).await;
    let refused = [
        h.recv("error").await.unwrap(),
        h.recv("error").await.unwrap(),
    ];
    for msg in &refused {
        assert_eq!(
            msg.headers["error"],
            format!(
                "HTTP 400 Bad Request from POST {}: {{\"code\":\"invalid\",\"message\":\"field type conflict\"}}",
                server.url("/api/v2/write")
            )
        );
    }
    // Not retried: one request, and the next batch goes through.
    let (c, c_done) = tracked(r#"{"w": 2}"#, 0);
    let (d, d_done) = tracked(r#"{"w": 3}"#, 0);
    h.send(c).await;
    h.send(d).await;
    assert_eq!(outcome(c_done).await, Outcome::Done);
    assert_eq!(outcome(d_done).await, Outcome::Done);
    assert_eq!(server.received().len(), 2);
    h.shutdown().await;
}
