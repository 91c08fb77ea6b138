//! TLS for broker listeners: reads a listener's Mosquitto-style TLS files into a rustls
//! server configuration, runs handshakes with a deadline, reads the client certificate's
//! Common Name, and swaps in a rebuilt configuration on reload.
//!
//! Only the `ring` provider is used, and every configuration names it explicitly, so
//! nothing depends on which provider happens to be the process default (DESIGN.md: two
//! providers make rustls panic; aws-lc-rs breaks ARM cross builds).
//!
//! Mosquitto's meanings, kept here:
//! - `require_certificate: false`: the server does not ask for a client certificate at
//!   all (Mosquitto sets `SSL_VERIFY_NONE`), so a client that has one configured
//!   connects as if it had none, whoever signed it, and no Common Name is read.
//! - `require_certificate: true`: a certificate chaining to `cafile` is required and
//!   checked against `crlfile` when one is given.
//! - `tls_version` is the lowest version accepted; TLS 1.1 and older are refused
//!   with a settings error (rustls cannot speak them, and they are insecure).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::TlsConfig;

/// How many TLS 1.3 session tickets a client gets after a full handshake. MQTT clients
/// keep one long connection and reconnect one at a time, so one ticket is enough to
/// resume; rustls's default is two.
const TLS13_TICKETS: usize = 1;

/// Installs rustls's `ring` provider as the process default. Safe to call any number
/// of times, from anywhere: a provider already installed (ours or another) is kept.
/// Headwater's own configurations do not rely on it (they name `ring` explicitly); it
/// is for libraries that build rustls configurations with the default provider.
pub fn install_crypto_provider() {
    // An error only says a default is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a TLS listener cannot be set up, or why one handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A setting is missing, contradicts another or has a value we do not accept.
    #[error("tls {key}: {message}")]
    Setting {
        /// The Mosquitto key (`certfile`, `tls_version`, ...).
        key: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A file named by a setting cannot be read or used.
    #[error("tls {key} {}: {message}", path.display())]
    File {
        /// The Mosquitto key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it and what to do.
        message: String,
    },
    /// The client did not finish the handshake in time.
    #[error("tls handshake timed out after {after:?}")]
    HandshakeTimeout {
        /// The deadline it missed.
        after: Duration,
    },
    /// The client's certificate was missing, untrusted, revoked or otherwise refused.
    #[error("tls client certificate refused: {reason}")]
    ClientCertificate {
        /// rustls's reason.
        reason: rustls::Error,
    },
    /// Any other handshake failure: the peer closed, spoke something else than TLS,
    /// offered only versions or ciphers we refuse, or sent an alert.
    #[error("tls handshake failed: {source}")]
    Handshake {
        /// The error from the stream, a rustls error inside when TLS itself failed.
        source: io::Error,
    },
}

impl TlsError {
    /// Whether this is a failed handshake with one client (an expected condition to
    /// log and move on), as opposed to unusable settings.
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            TlsError::HandshakeTimeout { .. }
                | TlsError::ClientCertificate { .. }
                | TlsError::Handshake { .. }
        )
    }

    /// Sorts a failed handshake by what went wrong.
    fn from_handshake(source: io::Error) -> TlsError {
        let certificate = source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .filter(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                )
            })
            .cloned();
        match certificate {
            Some(reason) => TlsError::ClientCertificate { reason },
            None => TlsError::Handshake { source },
        }
    }
}

/// A listener's TLS acceptor: the settings it was built from and the server
/// configuration in force. Cheap to clone; clones share the configuration, so a
/// `reload` through one is seen by all.
#[derive(Clone)]
pub struct TlsAcceptor {
    shared: Arc<Shared>,
}

struct Shared {
    /// What `reload` reads again.
    settings: TlsConfig,
    /// The configuration new handshakes use. The lock is held only to clone or replace
    /// the `Arc`, never across a handshake; handshakes under way keep the one they
    /// started with.
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Reads the files and builds the server config; errors name the setting and the
    /// file.
    pub fn new(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
        let server = build_server_config(config)?;
        if config.use_identity_as_username && !config.require_certificate {
            // Mosquitto starts with this too, then refuses every client: without
            // require_certificate no certificate is asked for, so there is no identity.
            tracing::warn!(
                "tls use_identity_as_username without require_certificate: no client \
                 certificate is asked for, so every client will be refused; set \
                 require_certificate: true"
            );
        }
        if config.crlfile.is_some() && !config.require_certificate {
            tracing::warn!(
                "tls crlfile has no effect without require_certificate: no client \
                 certificate is asked for"
            );
        }
        Ok(TlsAcceptor {
            shared: Arc::new(Shared {
                settings: config.clone(),
                current: RwLock::new(Arc::new(server)),
            }),
        })
    }

    /// Rebuilds from the same files (new ServerConfig, fresh session ticketer) and swaps
    /// it in atomically; on error keeps the old one and returns the error.
    ///
    /// Connections already established are not touched. Sessions issued under the old
    /// configuration cannot be resumed under the new one, so every client is checked
    /// again (against a new CRL, say) on its next connection.
    pub fn reload(&self) -> Result<(), TlsError> {
        let server = Arc::new(build_server_config(&self.shared.settings)?);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = server;
        Ok(())
    }

    /// Whether connections must present a client certificate (`require_certificate`).
    pub fn requires_certificate(&self) -> bool {
        self.shared.settings.require_certificate
    }

    /// Whether the client certificate's Common Name is the MQTT username
    /// (`use_identity_as_username`).
    pub fn identity_is_username(&self) -> bool {
        self.shared.settings.use_identity_as_username
    }

    /// Runs the handshake within `timeout`; returns the stream and, when the client
    /// presented a certificate, its subject Common Name.
    ///
    /// The Common Name is `None` also when the certificate has no Common Name, or one
    /// that is not text (or holds a NUL, which Mosquitto refuses as well).
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: IO,
        timeout: Duration,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Option<String>), TlsError> {
        let server = self.current();
        let handshake = tokio_rustls::TlsAcceptor::from(server).accept(stream);
        let tls = match tokio::time::timeout(timeout, handshake).await {
            Err(_elapsed) => return Err(TlsError::HandshakeTimeout { after: timeout }),
            Ok(Err(e)) => return Err(TlsError::from_handshake(e)),
            Ok(Ok(tls)) => tls,
        };
        let common_name = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(common_name);
        Ok((tls, common_name))
    }

    /// The configuration new handshakes use.
    fn current(&self) -> Arc<ServerConfig> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The protocol versions from `tls_version` (Mosquitto's names; a minimum).
fn protocol_versions(
    tls_version: Option<&str>,
) -> Result<&'static [&'static SupportedProtocolVersion], TlsError> {
    static FROM_1_2: &[&SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    static FROM_1_3: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    match tls_version.map(str::trim) {
        None | Some("tlsv1.2") => Ok(FROM_1_2),
        Some("tlsv1.3") => Ok(FROM_1_3),
        Some(old @ ("tlsv1.1" | "tlsv1" | "tlsv1.0")) => Err(TlsError::Setting {
            key: "tls_version",
            message: format!(
                "{old} is not supported: TLS 1.1 and older are insecure and refused; \
                 write tlsv1.2 (the default) or tlsv1.3"
            ),
        }),
        Some(other) => Err(TlsError::Setting {
            key: "tls_version",
            message: format!("unknown version {other:?}; write tlsv1.2 (the default) or tlsv1.3"),
        }),
    }
}

/// Builds the rustls configuration of one listener from its settings, reading every
/// file it names.
fn build_server_config(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let versions = protocol_versions(config.tls_version.as_deref())?;
    let (certfile, keyfile) = match (&config.certfile, &config.keyfile) {
        (Some(cert), Some(key)) => (cert.as_path(), key.as_path()),
        (None, _) => {
            return Err(TlsError::Setting {
                key: "certfile",
                message: "not set: a TLS listener needs both certfile (the server's \
                          certificate chain, PEM) and keyfile"
                    .into(),
            });
        }
        (Some(_), None) => {
            return Err(TlsError::Setting {
                key: "keyfile",
                message: "not set: a TLS listener needs both certfile and keyfile (the \
                          server's private key, PEM)"
                    .into(),
            });
        }
    };
    if config.require_certificate && config.cafile.is_none() {
        return Err(TlsError::Setting {
            key: "cafile",
            message: "not set, but require_certificate is true: name the PEM file of \
                      the CA certificates that client certificates must chain to"
                .into(),
        });
    }
    let chain = read_certificates("certfile", certfile)?;
    let key = read_private_key(keyfile)?;
    let roots = match &config.cafile {
        Some(cafile) => Some(read_roots(cafile)?),
        None => None,
    };
    let crls = match &config.crlfile {
        Some(crlfile) => read_crls(crlfile)?,
        None => Vec::new(),
    };

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Setting {
            key: "tls_version",
            message: format!("not supported by the TLS library: {e}"),
        })?;
    let verifier = match roots {
        Some(roots) if config.require_certificate => {
            client_verifier(roots, crls, provider, config)?
        }
        // Mosquitto asks for no client certificate without require_certificate.
        _ => WebPkiClientVerifier::no_client_auth(),
    };
    let mut server = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| key_error(certfile, keyfile, e))?;
    // A fresh ticket key per build: tickets issued before a reload do not resume after
    // it, so a revoked client cannot skip the new check. Stateless tickets also keep
    // resumption state out of the server's memory.
    server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setting {
        key: "session tickets",
        message: format!("cannot make a ticket key (is the system's random source working?): {e}"),
    })?;
    server.send_tls13_tickets = TLS13_TICKETS;
    Ok(server)
}

/// The verifier of client certificates for `require_certificate`.
fn client_verifier(
    roots: Roots,
    crls: Vec<Crl>,
    provider: Arc<CryptoProvider>,
    config: &TlsConfig,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    // Checking a whole chain needs a CRL from every CA in it (an unknown status is a
    // refusal); with fewer, check the client's own certificate only, as Mosquitto does.
    let every_ca_has_crl = !crls.is_empty()
        && roots
            .subjects
            .iter()
            .all(|subject| crls.iter().any(|crl| &crl.issuer == subject));
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots.store), provider)
        .with_crls(crls.into_iter().map(|crl| crl.der))
        // An expired CRL may miss revocations made since; refuse rather than trust it.
        .enforce_revocation_expiration();
    if !every_ca_has_crl {
        builder = builder.only_check_end_entity_revocation();
    }
    builder.build().map_err(|e| {
        let (key, path) = match e {
            rustls::server::VerifierBuilderError::InvalidCrl(_) => ("crlfile", &config.crlfile),
            _ => ("cafile", &config.cafile),
        };
        match path {
            Some(path) => TlsError::File {
                key,
                path: path.clone(),
                message: format!("cannot be used to check client certificates: {e}"),
            },
            None => TlsError::Setting {
                key,
                message: format!("cannot check client certificates: {e}"),
            },
        }
    })
}

/// Reads a whole file named by setting `key`.
fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        key,
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })
}

/// The PEM error as an answer for the user.
fn pem_problem(key: &'static str, path: &Path, what: &str, error: pem::Error) -> TlsError {
    let message = match error {
        pem::Error::NoItemsFound => format!("no {what} found; it must be a PEM file"),
        pem::Error::MissingSectionEnd { .. } => {
            format!("a PEM block has no END line (is the file cut short?); it must hold {what}s")
        }
        pem::Error::IllegalSectionStart { .. } => {
            format!("a PEM BEGIN line is malformed; it must hold {what}s")
        }
        pem::Error::Base64Decode(_) => {
            format!("a PEM block is not valid base64; it must hold {what}s")
        }
        other => format!("not valid PEM ({other}); it must hold {what}s"),
    };
    TlsError::File {
        key,
        path: path.to_owned(),
        message,
    }
}

/// Every certificate of a PEM file, in order; at least one.
fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(key, path, "CERTIFICATE block", e))?;
    if certificates.is_empty() {
        return Err(pem_problem(
            key,
            path,
            "CERTIFICATE block",
            pem::Error::NoItemsFound,
        ));
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("keyfile", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        if matches!(e, pem::Error::NoItemsFound)
            && bytes
                .windows(b"ENCRYPTED PRIVATE KEY".len())
                .any(|w| w == b"ENCRYPTED PRIVATE KEY")
        {
            TlsError::File {
                key: "keyfile",
                path: path.to_owned(),
                message: "the key is encrypted, which is not supported; write it \
                          unencrypted with `openssl pkey -in KEY -out KEY.plain` and \
                          restrict who can read it"
                    .into(),
            }
        } else {
            pem_problem("keyfile", path, "PRIVATE KEY block", e)
        }
    })
}

/// The CA certificates of `cafile`, and their subjects (to match CRLs to them).
struct Roots {
    store: RootCertStore,
    subjects: Vec<Vec<u8>>,
}

fn read_roots(path: &Path) -> Result<Roots, TlsError> {
    let mut roots = Roots {
        store: RootCertStore::empty(),
        subjects: Vec::new(),
    };
    for (index, certificate) in read_certificates("cafile", path)?.into_iter().enumerate() {
        let anchor =
            webpki::anchor_from_trusted_cert(&certificate).map_err(|e| TlsError::File {
                key: "cafile",
                path: path.to_owned(),
                message: format!("certificate {} cannot be a trust anchor: {e:?}", index + 1),
            })?;
        roots.subjects.push(anchor.subject.as_ref().to_vec());
        roots.store.roots.push(anchor.to_owned());
    }
    Ok(roots)
}

/// One CRL of `crlfile` and the subject of the CA that issued it.
struct Crl {
    der: CertificateRevocationListDer<'static>,
    issuer: Vec<u8>,
}

fn read_crls(path: &Path) -> Result<Vec<Crl>, TlsError> {
    let bytes = read_file("crlfile", path)?;
    let ders = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem("crlfile", path, "X509 CRL block", e))?;
    if ders.is_empty() {
        return Err(TlsError::File {
            key: "crlfile",
            path: path.to_owned(),
            message: "no X509 CRL block found; it must be PEM (convert a DER CRL with \
                      `openssl crl -inform DER -in CRL -out CRL.pem`)"
                .into(),
        });
    }
    ders.into_iter()
        .enumerate()
        .map(|(index, der)| {
            let parsed = webpki::OwnedCertRevocationList::from_der(der.as_ref()).map_err(|e| {
                TlsError::File {
                    key: "crlfile",
                    path: path.to_owned(),
                    message: format!("CRL {} cannot be parsed: {e:?}", index + 1),
                }
            })?;
            let issuer = webpki::CertRevocationList::from(parsed).issuer().to_vec();
            Ok(Crl { der, issuer })
        })
        .collect()
}

/// Explains why the certificate chain and key were refused together.
fn key_error(certfile: &Path, keyfile: &Path, error: rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::File {
            key: "keyfile",
            path: keyfile.to_owned(),
            message: format!(
                "does not match the certificate in {}; give the key the certificate was \
                 made for",
                certfile.display()
            ),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsError::File {
                key: "certfile",
                path: certfile.to_owned(),
                message: format!("the server certificate cannot be used: {error}"),
            }
        }
        other => TlsError::File {
            key: "keyfile",
            path: keyfile.to_owned(),
            message: format!("the private key cannot be used: {other}"),
        },
    }
}

/// The first Common Name of a certificate's subject, as Mosquitto takes it for
/// `use_identity_as_username`; `None` when there is none or it is not text.
fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    subject_common_name(parsed.subject()).ok().flatten()
}

/// The DER encoding was not what X.509 says.
#[derive(Debug)]
struct Malformed;

/// OID 2.5.4.3, id-at-commonName, as its DER content bytes.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;

/// Finds the first commonName in a Name's content (the RDNSequence without its outer
/// SEQUENCE header, as webpki hands it over):
/// `SEQUENCE OF SET OF SEQUENCE { type OID, value DirectoryString }`.
fn subject_common_name(name: &[u8]) -> Result<Option<String>, Malformed> {
    let mut rdns = Der(name);
    while let Some(rdn) = rdns.expect(TAG_SET)? {
        let mut attributes = Der(rdn);
        while let Some(attribute) = attributes.expect(TAG_SEQUENCE)? {
            let mut fields = Der(attribute);
            let oid = fields.expect(TAG_OID)?.ok_or(Malformed)?;
            let (tag, value) = fields.next()?.ok_or(Malformed)?;
            if oid == COMMON_NAME {
                return Ok(directory_string(tag, value));
            }
        }
    }
    Ok(None)
}

/// The text of a DirectoryString (or IA5String); `None` for other types, bad encodings
/// and text with a NUL (Mosquitto refuses those as usernames).
fn directory_string(tag: u8, value: &[u8]) -> Option<String> {
    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const TELETEX: u8 = 0x14;
    const IA5: u8 = 0x16;
    const UNIVERSAL: u8 = 0x1c;
    const BMP: u8 = 0x1e;
    let text = match tag {
        UTF8 | PRINTABLE | TELETEX | IA5 => String::from_utf8(value.to_vec()).ok()?,
        BMP if value.len().is_multiple_of(2) => char::decode_utf16(
            value
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]])),
        )
        .collect::<Result<String, _>>()
        .ok()?,
        UNIVERSAL if value.len().is_multiple_of(4) => value
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect::<Option<String>>()?,
        _ => return None,
    };
    (!text.contains('\0')).then_some(text)
}

/// A cursor over DER elements with single-byte tags and definite lengths, which is all
/// a Name uses.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element's tag and content, `None` at the end.
    fn next(&mut self) -> Result<Option<(u8, &'a [u8])>, Malformed> {
        let Some((&tag, rest)) = self.0.split_first() else {
            return Ok(None);
        };
        if tag & 0x1f == 0x1f {
            return Err(Malformed); // multi-byte tag numbers do not occur in a Name
        }
        let (&first, rest) = rest.split_first().ok_or(Malformed)?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(Malformed);
            }
            let (bytes, rest) = rest.split_at(count);
            let length = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            (length, rest)
        };
        if rest.len() < length {
            return Err(Malformed);
        }
        let (content, rest) = rest.split_at(length);
        self.0 = rest;
        Ok(Some((tag, content)))
    }

    /// The next element's content, which must have `tag`; `None` at the end.
    fn expect(&mut self, tag: u8) -> Result<Option<&'a [u8]>, Malformed> {
        match self.next()? {
            None => Ok(None),
            Some((found, content)) if found == tag => Ok(Some(content)),
            Some(_) => Err(Malformed),
        }
    }
}

/// The integration tests' PKI, shared so both kinds of test make certificates alike.
#[cfg(test)]
#[path = "../../tests/common/pki.rs"]
#[allow(dead_code)]
mod test_pki;

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_pki::Pki;

    fn settings(pki: &Pki) -> TlsConfig {
        TlsConfig {
            cafile: Some(pki.ca_file()),
            certfile: Some(pki.server_cert()),
            keyfile: Some(pki.server_key()),
            ..TlsConfig::default()
        }
    }

    /// Builds and returns the error message, which must name every `needle`.
    fn refused(config: &TlsConfig, needles: &[&str]) -> TlsError {
        let error = TlsAcceptor::new(config).expect_err("settings should be refused");
        let message = error.to_string();
        for needle in needles {
            assert!(
                message.contains(needle),
                "{message:?} does not name {needle:?}"
            );
        }
        assert!(!error.is_handshake());
        error
    }

    #[test]
    fn good_settings_build() {
        let pki = Pki::new();
        let client = pki.client("sensor-1");
        let crl = pki.write_crl(&[&client]);
        let mut config = settings(&pki);
        config.require_certificate = true;
        config.crlfile = Some(crl);
        config.tls_version = Some("tlsv1.3".into());
        let acceptor = TlsAcceptor::new(&config).expect("valid settings");
        acceptor.reload().expect("the same files reload");
        assert!(acceptor.requires_certificate());
    }

    #[test]
    fn missing_file_names_the_setting_and_path() {
        let pki = Pki::new();
        let missing = pki.dir().join("nowhere.pem");
        for key in ["certfile", "keyfile", "cafile", "crlfile"] {
            let mut config = settings(&pki);
            let slot = match key {
                "certfile" => &mut config.certfile,
                "keyfile" => &mut config.keyfile,
                "cafile" => &mut config.cafile,
                _ => &mut config.crlfile,
            };
            *slot = Some(missing.clone());
            let path = missing.display().to_string();
            refused(&config, &[key, &path, "cannot read"]);
        }
    }

    #[test]
    fn bad_pem_names_the_file() {
        let pki = Pki::new();
        let junk = pki.dir().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let truncated = pki.dir().join("truncated.pem");
        std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        for key in ["certfile", "keyfile", "cafile", "crlfile"] {
            for path in [&junk, &truncated] {
                let mut config = settings(&pki);
                let slot = match key {
                    "certfile" => &mut config.certfile,
                    "keyfile" => &mut config.keyfile,
                    "cafile" => &mut config.cafile,
                    _ => &mut config.crlfile,
                };
                *slot = Some(path.clone());
                let shown = path.display().to_string();
                refused(&config, &[key, &shown]);
            }
        }
        // A certificate where a CRL belongs is named as such.
        let mut config = settings(&pki);
        config.crlfile = Some(pki.ca_file());
        refused(&config, &["crlfile", "no X509 CRL block found"]);
    }

    #[test]
    fn key_that_does_not_match_the_certificate() {
        let pki = Pki::new();
        let other = pki.client("someone-else");
        let mut config = settings(&pki);
        config.keyfile = Some(other.key.clone());
        let keyfile = other.key.display().to_string();
        let certfile = pki.server_cert().display().to_string();
        refused(&config, &["keyfile", &keyfile, "does not match", &certfile]);
    }

    #[test]
    fn encrypted_key_is_explained() {
        let pki = Pki::new();
        let key = pki.dir().join("encrypted.key");
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let mut config = settings(&pki);
        config.keyfile = Some(key);
        refused(&config, &["keyfile", "encrypted", "openssl pkey"]);
    }

    #[test]
    fn old_and_unknown_tls_versions_are_refused() {
        let pki = Pki::new();
        for version in ["tlsv1.1", "tlsv1", "tlsv1.0"] {
            let mut config = settings(&pki);
            config.tls_version = Some(version.into());
            refused(&config, &["tls_version", version, "tlsv1.2", "tlsv1.3"]);
        }
        let mut config = settings(&pki);
        config.tls_version = Some("sslv3".into());
        refused(&config, &["tls_version", "unknown version", "sslv3"]);
        for version in ["tlsv1.2", "tlsv1.3"] {
            let mut config = settings(&pki);
            config.tls_version = Some(version.into());
            TlsAcceptor::new(&config).expect("a supported minimum");
        }
    }

    #[test]
    fn require_certificate_needs_cafile() {
        let pki = Pki::new();
        let mut config = settings(&pki);
        config.cafile = None;
        config.require_certificate = true;
        refused(&config, &["cafile", "require_certificate"]);
        // Without require_certificate no CA is needed.
        config.require_certificate = false;
        TlsAcceptor::new(&config).expect("server-only TLS");
    }

    #[test]
    fn certfile_and_keyfile_go_together() {
        let pki = Pki::new();
        let mut config = settings(&pki);
        config.keyfile = None;
        refused(&config, &["keyfile", "not set"]);
        let mut config = settings(&pki);
        config.certfile = None;
        refused(&config, &["certfile", "not set"]);
    }

    #[test]
    fn failed_reload_keeps_the_old_configuration() {
        let pki = Pki::new();
        let config = settings(&pki);
        let acceptor = TlsAcceptor::new(&config).unwrap();
        let before = acceptor.current();
        std::fs::write(pki.server_key(), "broken\n").unwrap();
        let error = acceptor.reload().expect_err("a broken key does not load");
        assert!(error.to_string().contains("keyfile"), "{error}");
        assert!(Arc::ptr_eq(&before, &acceptor.current()));
    }

    #[test]
    fn common_name_of_generated_certificates() {
        let pki = Pki::new();
        let client = pki.client("kitchen sensor");
        let der = CertificateDer::from_pem_file(&client.cert).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("kitchen sensor"));
        // The server certificate has a Common Name too.
        let der = CertificateDer::from_pem_file(pki.server_cert()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("localhost"));
    }

    /// DER by hand: `len` must fit one byte.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, u8::try_from(content.len()).unwrap()];
        out.extend_from_slice(content);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        tlv(
            TAG_SET,
            &tlv(TAG_SEQUENCE, &[tlv(TAG_OID, oid), tlv(tag, value)].concat()),
        )
    }

    #[test]
    fn common_name_from_names() {
        const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
        let check = |name: Vec<u8>, expect: Option<&str>| {
            assert_eq!(
                subject_common_name(&name).ok().flatten().as_deref(),
                expect,
                "{name:02x?}"
            );
        };
        // O before CN; the first CN wins.
        check(
            [
                attribute(ORGANIZATION, 0x0c, b"acme"),
                attribute(COMMON_NAME, 0x13, b"first"),
                attribute(COMMON_NAME, 0x0c, b"second"),
            ]
            .concat(),
            Some("first"),
        );
        check(attribute(ORGANIZATION, 0x0c, b"acme"), None);
        check(Vec::new(), None);
        check(attribute(COMMON_NAME, 0x16, b"ia5"), Some("ia5"));
        check(
            attribute(COMMON_NAME, 0x1e, &[0, b'h', 0, b'i']),
            Some("hi"),
        );
        check(attribute(COMMON_NAME, 0x1c, &[0, 0, 0, b'x']), Some("x"));
        // Not text, or a NUL inside.
        check(attribute(COMMON_NAME, 0x04, b"octets"), None);
        check(attribute(COMMON_NAME, 0x0c, b"a\0b"), None);
        check(attribute(COMMON_NAME, 0x0c, &[0xff, 0xfe]), None);
        check(attribute(COMMON_NAME, 0x1e, &[0, b'h', 0]), None);
    }

    #[test]
    fn malformed_names_are_refused_without_panic() {
        let good = attribute(COMMON_NAME, 0x0c, b"name");
        // Every truncation and every single-byte change parses or fails, never panics.
        for end in 0..good.len() {
            let _ = subject_common_name(&good[..end]);
        }
        for index in 0..good.len() {
            for byte in [0x00, 0x1f, 0x7f, 0x80, 0x81, 0x84, 0x85, 0xff] {
                let mut changed = good.clone();
                changed[index] = byte;
                let _ = subject_common_name(&changed);
            }
        }
        assert!(subject_common_name(&[TAG_SET, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(subject_common_name(&[TAG_SEQUENCE, 0x00]).is_err());
    }

    #[test]
    fn installing_the_provider_twice_is_harmless() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
