//! TLS listener handshakes over real sockets, driven by real clients: `openssl s_client`
//! (Debian's `openssl`) against `broker::tls::TlsAcceptor`, and the same certificates
//! against Debian's Mosquitto where its behaviour is the reference.
//!
//! The test server accepts in a loop; after a handshake it writes `CN=<name>` (or
//! `CN=none`) and closes, and it reports every handshake's outcome on a channel, so a
//! refusal is asserted where it happens (the server) and not only from a client's exit
//! code, which would also be non-zero if the client never got as far as offering.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use common::pki::{ClientCert, Pki};
use common::{PATIENCE, free_port};
use headwater::broker::TlsConfig;
use headwater::broker::tls::{TlsAcceptor, TlsError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::mpsc;

/// Handshake deadline of the test servers: long, so that only the silent client of
/// `silent_client_is_dropped_while_others_connect` ever reaches it.
const HANDSHAKE: Duration = Duration::from_secs(20);

/// What one handshake on the server came to: the Common Name, or why it failed.
type Outcome = Result<Option<String>, TlsError>;

/// A TLS test server on 127.0.0.1.
struct Server {
    port: u16,
    acceptor: TlsAcceptor,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(config: &TlsConfig, timeout: Duration) -> Server {
        let acceptor = TlsAcceptor::new(config).expect("valid TLS settings");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (report, outcomes) = mpsc::unbounded_channel();
        let serving = acceptor.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = serving.clone();
                let report = report.clone();
                // The handshake runs in the connection's task, never in the accept loop.
                tokio::spawn(async move {
                    let outcome = match acceptor.accept(socket, timeout).await {
                        Ok((mut tls, common_name)) => {
                            let line = format!("CN={}\n", common_name.as_deref().unwrap_or("none"));
                            let _ = tls.write_all(line.as_bytes()).await;
                            let _ = tls.shutdown().await;
                            Ok(common_name)
                        }
                        Err(e) => Err(e),
                    };
                    let _ = report.send(outcome);
                });
            }
        });
        Server {
            port,
            acceptor,
            outcomes,
            task,
        }
    }

    /// The outcome of the next handshake to finish.
    async fn outcome(&mut self) -> Outcome {
        tokio::time::timeout(PATIENCE, self.outcomes.recv())
            .await
            .expect("a handshake outcome in time")
            .expect("the server is running")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server's settings for `pki`.
fn settings(pki: &Pki, require_certificate: bool) -> TlsConfig {
    TlsConfig {
        cafile: Some(pki.ca_file()),
        certfile: Some(pki.server_cert()),
        keyfile: Some(pki.server_key()),
        require_certificate,
        ..TlsConfig::default()
    }
}

/// What `openssl s_client` printed and how it ended.
struct Client {
    stdout: String,
    stderr: String,
    success: bool,
}

/// Connects with `openssl s_client`, verifying the server against `trust` as
/// `localhost`, presenting `cert` if given, with `extra` arguments; returns once the
/// server closed or refused.
async fn s_client(port: u16, trust: &Path, cert: Option<&ClientCert>, extra: &[&str]) -> Client {
    let mut command = Command::new("openssl");
    command
        .arg("s_client")
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(trust)
        // Fail on a bad server certificate; `-ign_eof`: read until the server closes.
        .args(["-verify_return_error", "-quiet", "-ign_eof"])
        .args(extra)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(cert) = cert {
        command
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key);
    }
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("openssl s_client finished in time")
        .expect("run openssl (apt-get install openssl)");
    Client {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    }
}

fn assert_accepted(client: &Client, common_name: &str) {
    let expected = format!("CN={common_name}");
    assert!(
        client.stdout.lines().any(|line| line == expected),
        "client should read {expected:?}; stdout {:?}, stderr {:?}",
        client.stdout,
        client.stderr
    );
}

fn assert_refused(client: &Client) {
    assert!(
        !client.stdout.contains("CN="),
        "client should be refused; stdout {:?}, stderr {:?}",
        client.stdout,
        client.stderr
    );
}

fn assert_certificate_refused(outcome: Outcome, why: &str) {
    match outcome {
        Err(TlsError::ClientCertificate { reason }) => {
            let text = format!("{reason:?}");
            assert!(text.contains(why), "refused for {text}, expected {why}");
        }
        other => panic!("expected the client certificate refused ({why}), got {other:?}"),
    }
}

/// A handshake failure other than the client certificate, `why` in its details.
fn assert_handshake_failed(outcome: Outcome, why: &str) {
    match outcome {
        Err(error @ TlsError::Handshake { .. }) => {
            let text = format!("{error:?}");
            assert!(text.contains(why), "failed with {text}, expected {why}");
        }
        other => panic!("expected a failed handshake ({why}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn good_client_certificate_is_accepted_and_its_common_name_read() {
    let pki = Pki::new();
    let sensor = pki.client("sensor-1");
    let mut server = Server::start(&settings(&pki, true), HANDSHAKE).await;

    let client = s_client(server.port, &pki.ca_file(), Some(&sensor), &[]).await;
    assert_accepted(&client, "sensor-1");
    assert!(client.success, "stderr {:?}", client.stderr);
    assert_eq!(
        server.outcome().await.unwrap(),
        Some("sensor-1".to_string())
    );

    // Over TLS 1.2 as well (the client certificate is sent at another point).
    let client = s_client(server.port, &pki.ca_file(), Some(&sensor), &["-tls1_2"]).await;
    assert_accepted(&client, "sensor-1");
    assert_eq!(
        server.outcome().await.unwrap(),
        Some("sensor-1".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let good = pki.client("good");
    let revoked = pki.client("revoked");
    let mut config = settings(&pki, true);
    config.crlfile = Some(pki.write_crl(&[&revoked]));
    let mut server = Server::start(&config, HANDSHAKE).await;

    let client = s_client(server.port, &pki.ca_file(), Some(&revoked), &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "Revoked");
    let client = s_client(server.port, &pki.ca_file(), Some(&revoked), &["-tls1_2"]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "Revoked");

    let client = s_client(server.port, &pki.ca_file(), Some(&good), &[]).await;
    assert_accepted(&client, "good");
    assert_eq!(server.outcome().await.unwrap(), Some("good".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_crl_refuses_every_client() {
    let pki = Pki::new();
    let good = pki.client("good");
    let mut config = settings(&pki, true);
    config.crlfile = Some(pki.write_expired_crl(&[]));
    let mut server = Server::start(&config, HANDSHAKE).await;

    let client = s_client(server.port, &pki.ca_file(), Some(&good), &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "ExpiredRevocationList");
}

/// With a `crlfile`, a client of a trusted CA that has no CRL in it has an unknown
/// revocation status and is refused (OpenSSL's CRL check, and so Mosquitto, does
/// the same).
#[tokio::test(flavor = "multi_thread")]
async fn client_of_a_ca_without_crl_is_refused() {
    let pki = Pki::new();
    let good = pki.client("good");
    let other = pki.untrusted_client("other");
    let both = pki.dir().join("both-cas.pem");
    let trusted = std::fs::read_to_string(pki.ca_file()).unwrap();
    let second = std::fs::read_to_string(pki.untrusted_ca_file()).unwrap();
    std::fs::write(&both, trusted + second.as_str()).unwrap();
    let mut config = settings(&pki, true);
    config.cafile = Some(both);
    config.crlfile = Some(pki.write_crl(&[]));
    let mut server = Server::start(&config, HANDSHAKE).await;

    let client = s_client(server.port, &pki.ca_file(), Some(&good), &[]).await;
    assert_accepted(&client, "good");
    server.outcome().await.unwrap();
    let client = s_client(server.port, &pki.ca_file(), Some(&other), &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "UnknownRevocationStatus");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    let stranger = pki.untrusted_client("stranger");
    let mut server = Server::start(&settings(&pki, true), HANDSHAKE).await;

    let client = s_client(server.port, &pki.ca_file(), Some(&stranger), &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "UnknownIssuer");
}

#[tokio::test(flavor = "multi_thread")]
async fn required_certificate_missing_is_refused() {
    let pki = Pki::new();
    let mut server = Server::start(&settings(&pki, true), HANDSHAKE).await;

    let client = s_client(server.port, &pki.ca_file(), None, &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "NoCertificatesPresented");
}

/// Without `require_certificate` the server asks for no certificate (Mosquitto's
/// `SSL_VERIFY_NONE`): a client with one, even from a CA nobody trusts, connects as
/// an anonymous TLS client, and no Common Name is read.
#[tokio::test(flavor = "multi_thread")]
async fn without_require_certificate_no_certificate_is_asked_for() {
    let pki = Pki::new();
    let sensor = pki.client("sensor-1");
    let stranger = pki.untrusted_client("stranger");
    let mut server = Server::start(&settings(&pki, false), HANDSHAKE).await;

    for cert in [None, Some(&sensor), Some(&stranger)] {
        let client = s_client(server.port, &pki.ca_file(), cert, &[]).await;
        assert_accepted(&client, "none");
        assert_eq!(server.outcome().await.unwrap(), None);
    }
}

/// The reference for the test above: Debian's Mosquitto with the same files accepts a
/// client certificate from an untrusted CA without `require_certificate`, and refuses
/// it with.
#[test]
fn mosquitto_agrees_on_optional_client_certificates() {
    let pki = Pki::new();
    let stranger = pki.untrusted_client("stranger");
    for (require_certificate, accepted) in [(false, true), (true, false)] {
        let broker = mosquitto_tls(&pki, require_certificate);
        let published = mosquitto_pub(broker.port, &pki, &stranger);
        assert_eq!(
            published, accepted,
            "mosquitto with require_certificate {require_certificate}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn minimum_tls_version_is_enforced() {
    let pki = Pki::new();
    // OpenSSL 3 disables TLS 1.1 at its default security level; level 0 makes the
    // client really offer it, and the server refuses that hello (a TLS 1.1 hello
    // lacks the signature_algorithms extension TLS 1.2 brought).
    let tls1_1 = ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"];

    let mut server = Server::start(&settings(&pki, false), HANDSHAKE).await;
    let client = s_client(server.port, &pki.ca_file(), None, &tls1_1).await;
    assert_refused(&client);
    assert_handshake_failed(
        server.outcome().await,
        "SignatureAlgorithmsExtensionRequired",
    );
    let client = s_client(server.port, &pki.ca_file(), None, &["-tls1_2"]).await;
    assert_accepted(&client, "none");
    server.outcome().await.unwrap();

    let mut config = settings(&pki, false);
    config.tls_version = Some("tlsv1.3".into());
    let mut server = Server::start(&config, HANDSHAKE).await;
    let client = s_client(server.port, &pki.ca_file(), None, &["-tls1_2"]).await;
    assert_refused(&client);
    // A TLS 1.2 hello has no supported_versions extension, which TLS 1.3 needs.
    assert_handshake_failed(server.outcome().await, "SupportedVersionsExtensionRequired");
    let client = s_client(server.port, &pki.ca_file(), None, &["-tls1_3"]).await;
    assert_accepted(&client, "none");
    server.outcome().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_new_files_and_keeps_the_old_ones_when_broken() {
    let pki = Pki::new();
    let alice = pki.client("alice");
    let bob = pki.client("bob");
    let mut config = settings(&pki, true);
    config.crlfile = Some(pki.write_crl(&[]));
    let mut server = Server::start(&config, HANDSHAKE).await;
    let ca = pki.ca_file();

    let client = s_client(server.port, &ca, Some(&alice), &[]).await;
    assert_accepted(&client, "alice");
    server.outcome().await.unwrap();

    // A new CRL on disk changes nothing until the reload.
    pki.write_crl(&[&alice]);
    let client = s_client(server.port, &ca, Some(&alice), &[]).await;
    assert_accepted(&client, "alice");
    server.outcome().await.unwrap();

    server.acceptor.reload().expect("reload the new CRL");
    let client = s_client(server.port, &ca, Some(&alice), &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "Revoked");
    let client = s_client(server.port, &ca, Some(&bob), &[]).await;
    assert_accepted(&client, "bob");
    server.outcome().await.unwrap();

    // A new server certificate, from the other CA: clients trusting only that CA get
    // through after the reload, not before.
    pki.write_server_cert(true);
    let other_ca = pki.untrusted_ca_file();
    let client = s_client(server.port, &other_ca, Some(&bob), &[]).await;
    assert_refused(&client);
    // The client refused our (old) certificate with an alert.
    assert_handshake_failed(server.outcome().await, "UnknownCA");
    server
        .acceptor
        .reload()
        .expect("reload the new server certificate");
    let client = s_client(server.port, &other_ca, Some(&bob), &[]).await;
    assert_accepted(&client, "bob");
    server.outcome().await.unwrap();

    // A broken key: the reload fails, names the file, and the server goes on as before.
    std::fs::write(pki.server_key(), "-----BEGIN PRIVATE KEY-----\ncut short\n").unwrap();
    let error = server
        .acceptor
        .reload()
        .expect_err("a broken key does not load");
    let message = error.to_string();
    assert!(
        message.contains("keyfile") && message.contains(&pki.server_key().display().to_string()),
        "{message}"
    );
    let client = s_client(server.port, &other_ca, Some(&bob), &[]).await;
    assert_accepted(&client, "bob");
    server.outcome().await.unwrap();
    let client = s_client(server.port, &other_ca, Some(&alice), &[]).await;
    assert_refused(&client);
    assert_certificate_refused(server.outcome().await, "Revoked");
}

/// A client that opens TCP and says nothing is dropped at the deadline, and does not
/// hold up others meanwhile. Only the order of events is asserted: the deadline is
/// long enough that a full handshake by another client always fits before it.
#[tokio::test(flavor = "multi_thread")]
async fn silent_client_is_dropped_while_others_connect() {
    const SILENT_DEADLINE: Duration = Duration::from_secs(5);
    let pki = Pki::new();
    let sensor = pki.client("sensor-1");
    let mut server = Server::start(&settings(&pki, true), SILENT_DEADLINE).await;

    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let client = s_client(server.port, &pki.ca_file(), Some(&sensor), &[]).await;
    assert_accepted(&client, "sensor-1");
    // The first outcome is the good handshake: the silent one is still pending.
    assert_eq!(
        server.outcome().await.unwrap(),
        Some("sensor-1".to_string())
    );

    match server.outcome().await {
        Err(TlsError::HandshakeTimeout { after }) => assert_eq!(after, SILENT_DEADLINE),
        other => panic!("expected the silent client to time out, got {other:?}"),
    }
    // And its socket was closed by the server.
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read(&mut silent, &mut buffer),
    )
    .await
    .expect("the silent client's socket is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Debian's Mosquitto with one TLS listener made from `pki`.
fn mosquitto_tls(pki: &Pki, require_certificate: bool) -> common::Mosquitto {
    common::Mosquitto::with_conf(
        pki.dir(),
        free_port(),
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\nallow_anonymous true",
            pki.ca_file().display(),
            pki.server_cert().display(),
            pki.server_key().display(),
        ),
    )
}

/// Whether `mosquitto_pub` with `cert` gets a message through to a TLS listener.
fn mosquitto_pub(port: u16, pki: &Pki, cert: &ClientCert) -> bool {
    let mut child = StdCommand::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-t",
            "tls/test",
            "-m",
            "x",
        ])
        .arg("--cafile")
        .arg(pki.ca_file())
        .arg("--cert")
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    let status = child.wait().unwrap();
    if !status.success() {
        eprintln!("mosquitto_pub: {stderr}");
    }
    status.success()
}
