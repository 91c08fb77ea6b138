//! `http.out` against a real local HTTP server that fails on purpose: 5xx, 429 with
//! `Retry-After`, dropped connections, answers later than the timeout, 4xx; over TLS
//! with a private CA; and one flow run by the real `headwater` binary.
//!
//! These run on real time (a paused clock would fire the request timeouts while the
//! runtime waits on the sockets), with backoffs of milliseconds; the retry timing itself
//! is tested on the virtual clock beside the code (`src/nodes/sinks/http_retry.rs`).

mod common;
mod http_peer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use headwater::engine::harness::NodeHarness;
use headwater::engine::{Clock, Msg, Outcome};
use http_peer::{Answer, Server};
use tokio::sync::oneshot;

fn tracked(payload: String) -> (Msg, oneshot::Receiver<Outcome>) {
    let (tx, rx) = oneshot::channel();
    let msg = Msg::tracked("t", payload, 0, move |outcome| {
        let _ = tx.send(outcome);
    });
    (msg, rx)
}

async fn outcome(rx: oneshot::Receiver<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("an outcome within 30 s")
        .expect("the message got a verdict")
}

fn start(options: &str) -> NodeHarness {
    NodeHarness::start("http.out", options, Clock::system()).expect("valid options")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_until_every_message_is_delivered() {
    let late = Duration::from_millis(1500);
    let server = Server::start(vec![
        Answer::status(503),
        Answer::Drop,
        Answer::Late(late, Box::new(Answer::status(200))),
        Answer::status(500),
        Answer::Status(429, Vec::new(), "slow down".into()),
        Answer::Drop,
        Answer::status(502),
    ])
    .await;
    let h = start(&format!(
        "url: {}\ntimeout: 300ms\nconcurrency: 4\nretry: {{ initial: 20ms, max: 100ms, max_attempts: 30 }}",
        server.url("/ingest")
    ));
    let sent: Vec<String> = (0..40).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let mut outcomes = Vec::new();
    for body in &sent {
        let (msg, rx) = tracked(body.clone());
        h.send(msg).await;
        outcomes.push(rx);
    }
    for rx in outcomes {
        assert_eq!(outcome(rx).await, Outcome::Done);
    }
    h.shutdown().await;

    let received = server.received();
    // Each message was answered 2xx at least once, and nothing else arrived.
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in received.iter().filter(|r| r.answer.is_success()) {
        *delivered.entry(r.text()).or_default() += 1;
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/ingest");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let mut keys: Vec<&String> = delivered.keys().collect();
    keys.sort();
    let mut expected: Vec<&String> = sent.iter().collect();
    expected.sort();
    assert_eq!(keys, expected, "every message, exactly as sent");
    // A duplicate only where an answer came after the timeout (the outcome was unknown
    // to the sink, so it sent again).
    let late_bodies: Vec<String> = received
        .iter()
        .filter(|r| matches!(r.answer, Answer::Late(..)))
        .map(|r| r.text())
        .collect();
    for (body, count) in &delivered {
        if *count > 1 {
            assert!(late_bodies.contains(body), "{body} delivered {count} times");
            assert_eq!(*count, 2);
        }
    }
    // Every failed request was tried again.
    let failed = received.iter().filter(|r| !r.answer.is_success()).count();
    assert_eq!(failed, 6);
    assert_eq!(received.len(), 40 + 6 + late_bodies.len());
}

#[tokio::test]
async fn retry_after_is_honoured_in_seconds_and_as_a_date() {
    // Dates are whole seconds: 4 s from now is more than 2 s after the second request.
    let in_four_seconds =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(4));
    let server = Server::start(vec![
        Answer::Status(429, vec![("retry-after".into(), "1".into())], String::new()),
        Answer::Status(
            503,
            vec![("retry-after".into(), in_four_seconds)],
            String::new(),
        ),
    ])
    .await;
    let h = start(&format!(
        "url: {}\nconcurrency: 1\nretry: {{ initial: 10ms, max: 20ms, max_attempts: 5 }}",
        server.url("/")
    ));
    let (msg, rx) = tracked("once".into());
    h.send(msg).await;
    assert_eq!(outcome(rx).await, Outcome::Done);
    let received = server.received();
    assert_eq!(received.len(), 3);
    // The backoff alone would come back within 20 ms; the server asked for 1 s, then for
    // a date at least 2 s after the second request.
    assert!(received[1].at - received[0].at >= Duration::from_secs(1));
    assert!(received[2].at - received[1].at >= Duration::from_secs(1));
    assert!(received.iter().all(|r| r.text() == "once"));
    h.shutdown().await;
}

#[tokio::test]
async fn client_errors_are_not_retried_and_go_to_the_error_port() {
    let long_answer = format!("field `w` is invalid {}", "x".repeat(4000));
    let server = Server::start(vec![
        Answer::Status(400, Vec::new(), long_answer),
        Answer::Status(404, Vec::new(), "no such room".into()),
        Answer::Status(
            301,
            vec![("location".into(), "http://elsewhere/".into())],
            String::new(),
        ),
    ])
    .await;
    let mut h = start(&format!(
        "url: {}\nconcurrency: 1\nretry: {{ initial: 10ms, max: 10ms }}",
        server.url("/rooms?key=secret")
    ));
    for n in 0..3 {
        h.send(Msg::new("t", format!("m{n}"), 0)).await;
    }
    let reasons: Vec<String> = [
        h.recv("error").await.unwrap(),
        h.recv("error").await.unwrap(),
        h.recv("error").await.unwrap(),
    ]
    .iter()
    .map(|m| m.headers["error"].clone())
    .collect();
    let base = server.url("/rooms");
    assert!(
        reasons[0].starts_with(&format!(
            "HTTP 400 Bad Request from POST {base}: field `w` is invalid xxx"
        )),
        "{}",
        reasons[0]
    );
    assert!(reasons[0].len() < 700, "the excerpt is bounded");
    assert!(
        !reasons[0].contains("secret"),
        "the query stays out of the log"
    );
    assert_eq!(
        reasons[1],
        format!("HTTP 404 Not Found from POST {base}: no such room")
    );
    assert_eq!(
        reasons[2],
        format!(
            "HTTP 301 Moved Permanently from POST {base}: redirected to http://elsewhere/; point `url` at the final address"
        )
    );
    // A fourth message goes through: by then the server has seen exactly one request
    // per message (concurrency 1 keeps them in order).
    let (msg, rx) = tracked("m3".into());
    h.send(msg).await;
    assert_eq!(outcome(rx).await, Outcome::Done);
    let bodies: Vec<String> = server.received().iter().map(|r| r.text()).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3"]);
    h.shutdown().await;
}

#[tokio::test]
async fn giving_up_after_the_bound_fails_to_the_error_port() {
    let server = Server::start(vec![Answer::status(503); 3]).await;
    let mut h = start(&format!(
        "url: {}\nretry: {{ initial: 10ms, max: 10ms, max_attempts: 3 }}",
        server.url("/")
    ));
    h.send(Msg::new("t", "x", 0)).await;
    let failed = h.recv("error").await.unwrap();
    assert_eq!(
        failed.headers["error"],
        format!(
            "HTTP 503 Service Unavailable from POST {} (gave up after 3 attempts)",
            server.url("/")
        )
    );
    assert_eq!(server.received().len(), 3);
    h.shutdown().await;
}

#[tokio::test]
async fn method_url_headers_and_body_come_from_the_message() {
    let server = Server::start(Vec::new()).await;
    let h = start(&format!(
        "url: '{}/rooms/{{{{payload.room}}}}/w?at={{{{timestamp}}}}'\nmethod: PUT\nheaders: {{ authorization: 'Bearer abc', x-source: '{{{{topic}}}}' }}\nbody: 'w={{{{payload.w}}}}'",
        server.url("")
    ));
    let (msg, rx) = tracked(r#"{"room": "Living room", "w": 350}"#.into());
    h.send(msg).await;
    assert_eq!(outcome(rx).await, Outcome::Done);
    let r = &server.received()[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.target, "/rooms/Living%20room/w?at=0");
    assert_eq!(r.header("authorization"), Some("Bearer abc"));
    assert_eq!(r.header("x-source"), Some("t"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.text(), "w=350");
    h.shutdown().await;
}

fn tls_acceptor(pki: &common::pki::Pki) -> http_peer::Acceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.server_cert())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn https_with_a_private_ca() {
    let pki = common::pki::Pki::new();
    let server = Server::start_with(Vec::new(), Some(tls_acceptor(&pki))).await;
    let url = format!("https://localhost:{}/secure", server.addr.port());
    let h = start(&format!(
        "url: {url}\ntls: {{ ca_file: {} }}",
        pki.ca_file().display()
    ));
    let (msg, rx) = tracked("over tls".into());
    h.send(msg).await;
    assert_eq!(outcome(rx).await, Outcome::Done);
    assert_eq!(server.received()[0].text(), "over tls");
    h.shutdown().await;

    // Without the CA the server is not trusted: retried (bounded), then the error port.
    let mut h = start(&format!(
        "url: {url}\nretry: {{ initial: 10ms, max: 10ms, max_attempts: 2 }}"
    ));
    h.send(Msg::new("t", "x", 0)).await;
    let failed = h.recv("error").await.unwrap();
    let reason = &failed.headers["error"];
    assert!(
        reason.contains("certificate") && reason.contains("gave up after 2 attempts"),
        "{reason}"
    );
    assert_eq!(server.received().len(), 1, "nothing reached the server");
    h.shutdown().await;
}

/// The real binary: a timer feeds `http.out`, whose token comes from a secret file
/// through `${file:...}`; the server fails the first requests, then takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_posts_to_a_flaky_server_with_a_secret_header() {
    let server = Server::start(vec![Answer::status(503), Answer::Drop, Answer::status(500)]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "t0k3n\n").unwrap();
    let flow = dir.path().join("post.yaml");
    std::fs::write(
        &flow,
        format!(
            "version: 1
flows:
  post:
    nodes:
      tick: {{ type: timer, interval: 20ms, at_start: true, count: 5, payload: {{ w: 1 }} }}
      send:
        type: http.out
        inputs: tick
        url: {}
        concurrency: 1
        headers: {{ authorization: 'Bearer ${{file:{}}}' }}
        retry: {{ initial: 10ms, max: 50ms }}
",
            server.url("/power"),
            secret.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let gateway = common::Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        "--listen",
        "127.0.0.1:0",
        flow.to_str().unwrap(),
    ]);
    server
        .wait_until("5 delivered ticks", |r| {
            r.iter().filter(|r| r.answer.is_success()).count() == 5
        })
        .await;
    let received = server.received();
    assert_eq!(received.len(), 8, "5 ticks and 3 failed attempts");
    for r in &received {
        assert_eq!(r.header("authorization"), Some("Bearer t0k3n"));
        assert_eq!(r.text(), r#"{"w":1}"#);
    }
    gateway.wait_for("endpoint recovered");
    gateway.signal("TERM");
    assert!(gateway.wait().success());
}
