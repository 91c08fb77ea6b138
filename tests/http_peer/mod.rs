//! A real HTTP/1.1 server (hyper) on 127.0.0.1 port 0 for the HTTP sink tests, answering
//! from a script: a status with headers and a body, a dropped connection, or an answer
//! sent late. It records every request it read, with the answer it planned.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the server answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A status, extra headers and a body.
    Status(u16, Vec<(String, String)>, String),
    /// The connection is closed without an answer.
    Drop,
    /// The answer, sent after a wait (longer than the client's timeout in the tests).
    Late(Duration, Box<Answer>),
}

impl Answer {
    /// A plain status with an empty body.
    pub fn status(code: u16) -> Answer {
        Answer::Status(code, Vec::new(), String::new())
    }

    /// Whether this answer says 2xx (when it arrives).
    pub fn is_success(&self) -> bool {
        match self {
            Answer::Status(code, _, _) => (200..300).contains(code),
            Answer::Drop => false,
            Answer::Late(_, answer) => answer.is_success(),
        }
    }
}

/// One request the server read.
#[derive(Clone, Debug)]
pub struct Received {
    /// The method.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// When it was read (tokio's clock).
    pub at: Instant,
    /// What the server answered.
    pub answer: Answer,
}

impl Received {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Shared {
    plan: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    changed: Notify,
}

/// The server; it stops when dropped (its tasks end with the test's runtime).
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// The TLS side of an HTTPS server.
pub type Acceptor = tokio_rustls::TlsAcceptor;

impl Server {
    /// A server answering `plan` in order, then 204 to everything.
    pub async fn start(plan: Vec<Answer>) -> Server {
        Server::start_with(plan, None).await
    }

    /// Like [`Server::start`], over TLS when `tls` is given.
    pub async fn start_with(plan: Vec<Answer>, tls: Option<Acceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan.into()),
            ..Shared::default()
        });
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = accept_shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Server { addr, shared }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `done(requests)` holds; fails after 30 s (a hang, not a verdict).
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let changed = self.shared.changed.notified();
            if done(&self.shared.received.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("the server never saw {what}; it got {:#?}", self.received());
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = shared
        .plan
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Answer::status(204));
    let received = Received {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, |p| p.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
        answer: answer.clone(),
    };
    shared.received.lock().unwrap().push(received);
    shared.changed.notify_waiters();
    respond(answer).await
}

async fn respond(mut answer: Answer) -> Result<Response<Full<Bytes>>, std::io::Error> {
    loop {
        match answer {
            Answer::Late(wait, inner) => {
                tokio::time::sleep(wait).await;
                answer = *inner;
            }
            // An error from the service makes hyper close the connection unanswered.
            Answer::Drop => return Err(std::io::Error::other("dropped on purpose")),
            Answer::Status(code, headers, body) => {
                let mut response = Response::builder().status(code);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                return Ok(response.body(Full::new(Bytes::from(body))).unwrap());
            }
        }
    }
}
