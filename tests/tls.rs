//! The broker's TLS listeners end to end: `headwater run` with a settings file, Debian's
//! `mosquitto_pub`/`mosquitto_sub` with `--cafile --cert --key`, certificates and a CRL
//! made by the test PKI, and a reload on SIGHUP.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Gateway;
use common::pki::{ClientCert, Pki};

/// `headwater run` with one TLS listener on a free port; returns it and the port.
fn tls_broker(pki: &Pki, data: &Path, extra: &str) -> (Gateway, u16) {
    let settings = data.join("headwater.yaml");
    std::fs::write(
        &settings,
        format!(
            "version: 1\n\
             broker:\n  \
               listeners:\n    \
                 - host: 127.0.0.1\n      \
                   port: 0\n      \
                   tls:\n        \
                     cafile: {ca}\n        \
                     certfile: {cert}\n        \
                     keyfile: {key}\n        \
                     crlfile: {crl}\n        \
                     require_certificate: true\n\
             {extra}\
             flows: {{}}\n",
            ca = pki.ca_file().display(),
            cert = pki.server_cert().display(),
            key = pki.server_key().display(),
            crl = pki.crl_file().display(),
        ),
    )
    .unwrap();
    let gateway = Gateway::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        settings.to_str().unwrap(),
    ]);
    let port = gateway.listening_port();
    (gateway, port)
}

fn tls_args(pki: &Pki, client: &ClientCert, port: u16) -> Vec<String> {
    [
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
        "--cafile",
        pki.ca_file().to_str().unwrap(),
        "--cert",
        client.cert.to_str().unwrap(),
        "--key",
        client.key.to_str().unwrap(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// `mosquitto_pub` of one QoS 1 message; its exit status and stderr.
fn publish(args: &[String], extra: &[&str]) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(args)
        .args(extra)
        .args(["-t", "tls/test", "-m", "hello", "-q", "1"])
        .output()
        .expect("run mosquitto_pub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mosquitto_clients_with_certificates_talk_through_a_tls_listener() {
    let pki = Pki::new();
    pki.write_crl(&[]);
    let data = tempfile::tempdir().unwrap();
    let (_gateway, port) = tls_broker(&pki, data.path(), "");
    let alice = pki.client("alice");
    let args = tls_args(&pki, &alice, port);

    // Line-buffered, so the SUBACK line arrives when it is printed.
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(&args)
        .args(["-t", "tls/#", "-q", "1", "-C", "1", "-W", "30", "-d"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    let lines = common::line_reader(sub.stdout.take().unwrap());
    common::wait_line(&lines, "SUBACK", "mosquitto_sub");
    let (ok, stderr) = publish(&args, &[]);
    assert!(ok, "publish over TLS failed: {stderr}");
    common::wait_line(&lines, "hello", "mosquitto_sub");
    assert!(sub.wait().unwrap().success());
}

#[test]
fn a_revoked_or_foreign_or_missing_client_certificate_is_refused() {
    let pki = Pki::new();
    let mallory = pki.client("mallory");
    pki.write_crl(&[&mallory]);
    let data = tempfile::tempdir().unwrap();
    let (_gateway, port) = tls_broker(&pki, data.path(), "");

    let (ok, stderr) = publish(&tls_args(&pki, &mallory, port), &[]);
    assert!(!ok, "a revoked certificate was accepted");
    assert!(stderr.to_lowercase().contains("error"), "{stderr}");

    let stranger = pki.untrusted_client("stranger");
    let (ok, _) = publish(&tls_args(&pki, &stranger, port), &[]);
    assert!(!ok, "a certificate of an unknown CA was accepted");

    let (ok, _) = publish(
        &[
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            port.to_string(),
            "--cafile".into(),
            pki.ca_file().to_str().unwrap().into(),
        ],
        &[],
    );
    assert!(!ok, "a client without a certificate was accepted");

    // The same broker still serves a good client.
    let (ok, stderr) = publish(&tls_args(&pki, &pki.client("alice"), port), &[]);
    assert!(ok, "{stderr}");
}

/// A bare TLS handshake with `openssl s_client` forced to one version (`-tls1_1`,
/// `-tls1_2`); whether it succeeded. `mosquitto_pub --tls-version` cannot test this:
/// it sets the lowest version the client offers, not the highest.
fn handshake(pki: &Pki, client: &ClientCert, port: u16, version: &str) -> bool {
    Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &format!("127.0.0.1:{port}"), version])
        // OpenSSL 3 offers TLS 1.1 only at security level 0.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .args(["-servername", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(pki.ca_file())
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl s_client")
        .success()
}

#[test]
fn tls_1_1_is_refused_where_tls_1_2_is_the_minimum() {
    let pki = Pki::new();
    pki.write_crl(&[]);
    let data = tempfile::tempdir().unwrap();
    let (_gateway, port) = tls_broker(&pki, data.path(), "");
    let alice = pki.client("alice");
    assert!(
        !handshake(&pki, &alice, port, "-tls1_1"),
        "a TLS 1.1 client was accepted"
    );
    assert!(
        handshake(&pki, &alice, port, "-tls1_2"),
        "the same client on TLS 1.2 was refused"
    );
}

#[test]
fn sighup_rereads_the_crl_and_refuses_a_newly_revoked_client() {
    let pki = Pki::new();
    pki.write_crl(&[]);
    let data = tempfile::tempdir().unwrap();
    let (gateway, port) = tls_broker(&pki, data.path(), "");
    let bob = pki.client("bob");
    let (ok, stderr) = publish(&tls_args(&pki, &bob, port), &[]);
    assert!(ok, "{stderr}");

    pki.write_crl(&[&bob]);
    gateway.signal("HUP");
    gateway.wait_for("broker settings reloaded");
    let (ok, _) = publish(&tls_args(&pki, &bob, port), &[]);
    assert!(!ok, "bob's certificate is revoked since the reload");
}
