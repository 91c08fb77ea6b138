//! TLS for the bench: a throw-away CA and server certificate made with the `openssl`
//! command line, the Mosquitto-format listener lines both brokers read them from, and
//! the generator's client configuration, which trusts that CA and nothing else.
//!
//! The `openssl` CLI rather than a crate: Debian has it, and the certificates then come
//! from the tool a user setting up Mosquitto would use, not from our own code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

/// Days the certificates are valid: they live as long as one bench invocation.
const VALID_DAYS: &str = "2";

/// The server's key type (the CA's is the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsKey {
    /// ECDSA on P-256
    #[value(name = "ec-p256")]
    EcP256,
    /// RSA, 2048 bits
    #[value(name = "rsa-2048")]
    Rsa2048,
}

impl TlsKey {
    /// The `openssl genpkey` options that make such a key.
    fn genpkey_args(self) -> [&'static str; 4] {
        match self {
            TlsKey::EcP256 => ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            TlsKey::Rsa2048 => ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TlsKey::EcP256 => "ec-p256",
            TlsKey::Rsa2048 => "rsa-2048",
        }
    }
}

/// The CA's `openssl req` configuration: a self-signed CA that may sign certificates.
const CA_CONFIG: &str = "\
[req]
distinguished_name = subject
x509_extensions = ca
prompt = no
[subject]
CN = headwater bench CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

/// The server certificate's `openssl req` configuration and extensions: valid for
/// 127.0.0.1 and localhost, for server authentication only.
const SERVER_CONFIG: &str = "\
[req]
distinguished_name = subject
prompt = no
[subject]
CN = localhost
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A CA and a server certificate signed by it, in a directory removed when dropped.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
    /// The key type they were made with.
    pub key_type: TlsKey,
}

impl Certificates {
    /// Makes the CA and the server certificate in a new directory `dir` (removed first
    /// if it exists). Every file is world-readable: Mosquitto started as root may read
    /// them as its own user.
    pub fn generate(dir: PathBuf, key_type: TlsKey) -> anyhow::Result<Certificates> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // From here on, Drop removes the directory, whatever fails.
        let certificates = Certificates { dir, key_type };
        certificates.make()?;
        Ok(certificates)
    }

    fn make(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        write(&dir.join("ca.cnf"), CA_CONFIG)?;
        write(&dir.join("server.cnf"), SERVER_CONFIG)?;
        let key_args = self.key_type.genpkey_args();
        openssl(
            dir,
            &[&["genpkey"][..], &key_args, &["-out", "ca.key"]].concat(),
        )?;
        openssl(
            dir,
            &[
                "req", "-x509", "-new", "-config", "ca.cnf", "-key", "ca.key", "-sha256", "-days",
                VALID_DAYS, "-out", "ca.pem",
            ],
        )?;
        openssl(
            dir,
            &[&["genpkey"][..], &key_args, &["-out", "server.key"]].concat(),
        )?;
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-config",
                "server.cnf",
                "-key",
                "server.key",
                "-out",
                "server.csr",
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-sha256",
                "-days",
                VALID_DAYS,
                "-extfile",
                "server.cnf",
                "-extensions",
                "server",
                "-out",
                "server.pem",
            ],
        )?;
        make_world_readable(dir)
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The TLS lines of a Mosquitto listener section, which Headwater's `broker -c`
    /// reads with the same meaning: server authentication only (no
    /// `require_certificate`, so neither broker asks the client for a certificate).
    pub fn listener_lines(&self) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            self.ca_file().display(),
            self.cert_file().display(),
            self.key_file().display()
        )
    }

    /// The generator's client side: trusts this CA only, TLS 1.2 and 1.3, and never
    /// resumes a session, so every connection pays a full handshake on both brokers
    /// alike (they differ in whether and how they issue tickets).
    pub fn connector(&self) -> anyhow::Result<TlsConnector> {
        let path = self.ca_file();
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
        {
            let certificate = certificate
                .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
            roots
                .add(certificate)
                .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("rustls refuses its own default protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `openssl ARGS` in `dir`; its error output becomes the error.
fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("openssl not found: install it (apt-get install openssl)")
            }
            _ => anyhow::Error::new(e).context("cannot run openssl"),
        })?;
    if !output.status.success() {
        bail!(
            "`openssl {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// `chmod a+rX` on `dir` and the files in it.
fn make_world_readable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot make {} readable", path.display()))
    };
    set(dir, 0o755)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        set(&entry?.path(), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_are_readable_and_accepted_by_both_sides() {
        for key_type in [TlsKey::EcP256, TlsKey::Rsa2048] {
            let dir = std::env::temp_dir().join(format!(
                "headwater-bench-tls-unit-{}-{}",
                std::process::id(),
                key_type.name()
            ));
            let certificates = Certificates::generate(dir.clone(), key_type).unwrap();
            for file in [
                certificates.ca_file(),
                certificates.cert_file(),
                certificates.key_file(),
            ] {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&file).unwrap().permissions().mode();
                assert_eq!(mode & 0o044, 0o044, "{} not world-readable", file.display());
            }
            // The client parses the CA; the broker's own loader accepts the key pair.
            certificates.connector().unwrap();
            let config = crate::broker::TlsConfig {
                cafile: Some(certificates.ca_file()),
                certfile: Some(certificates.cert_file()),
                keyfile: Some(certificates.key_file()),
                ..Default::default()
            };
            crate::broker::tls::TlsAcceptor::new(&config).unwrap();
            drop(certificates);
            assert!(!dir.exists());
        }
    }

    #[test]
    fn listener_lines_name_the_three_files() {
        let certificates = Certificates {
            dir: PathBuf::from("/nonexistent/headwater-bench-tls-test"),
            key_type: TlsKey::EcP256,
        };
        let lines = certificates.listener_lines();
        assert_eq!(
            lines,
            "cafile /nonexistent/headwater-bench-tls-test/ca.pem\n\
             certfile /nonexistent/headwater-bench-tls-test/server.pem\n\
             keyfile /nonexistent/headwater-bench-tls-test/server.key\n"
        );
    }
}
