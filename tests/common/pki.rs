//! A throw-away test PKI: a trusted CA, a server certificate for `localhost` and
//! 127.0.0.1, client certificates with chosen Common Names, a second CA nobody trusts,
//! and CRLs, written as PEM files into a temporary directory.
//!
//! Every file and the directory are world-readable, because Mosquitto started as root
//! drops to its own user before it reads them. Keys are ECDSA P-256.
//!
//! ```ignore
//! let pki = Pki::new();
//! let alice = pki.client("alice");
//! // mosquitto_pub --cafile {pki.ca_file()} --cert {alice.cert} --key {alice.key} ...
//! pki.write_crl(&[&alice]); // alice is now revoked in pki.crl_file()
//! ```

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

/// A certificate and its key, as two PEM files.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The subject Common Name.
    pub common_name: String,
    /// The certificate (PEM), for `--cert` / `-cert`.
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8), for `--key` / `-key`.
    pub key: PathBuf,
    /// The serial number, which a CRL names to revoke it.
    pub serial: u64,
}

/// The test PKI in its temporary directory; removed when dropped.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA whose certificate is `ca.pem`: the one servers and clients trust.
    ca: Issuer<'static, KeyPair>,
    /// A second CA (`untrusted-ca.pem`) that nobody is told to trust.
    untrusted: Issuer<'static, KeyPair>,
    /// The next serial number to give out (unique across both CAs).
    next_serial: AtomicU64,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// Makes both CAs and a server certificate, and writes `ca.pem`,
    /// `untrusted-ca.pem`, `server.pem` and `server.key`. No CRL is written until
    /// [`Pki::write_crl`].
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let ca = make_ca(dir.path(), "Headwater test CA", "ca.pem", 1);
        let untrusted = make_ca(dir.path(), "Untrusted test CA", "untrusted-ca.pem", 2);
        let pki = Pki {
            dir,
            ca,
            untrusted,
            next_serial: AtomicU64::new(100),
        };
        pki.write_server_cert(false);
        pki
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The trusted CA's certificate: `cafile` for a server, `--cafile` for a client.
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    /// The untrusted CA's certificate.
    pub fn untrusted_ca_file(&self) -> PathBuf {
        self.dir().join("untrusted-ca.pem")
    }

    /// The server certificate, for `localhost` and 127.0.0.1 (`certfile`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir().join("server.pem")
    }

    /// The server's private key (`keyfile`).
    pub fn server_key(&self) -> PathBuf {
        self.dir().join("server.key")
    }

    /// Where [`Pki::write_crl`] writes (`crlfile`).
    pub fn crl_file(&self) -> PathBuf {
        self.dir().join("crl.pem")
    }

    /// Replaces `server.pem` and `server.key` with a new pair, signed by the untrusted
    /// CA when `by_untrusted_ca` (so a client that trusts only `ca.pem` refuses it;
    /// one that trusts `untrusted-ca.pem` accepts it). For reload tests.
    pub fn write_server_cert(&self, by_untrusted_ca: bool) {
        let mut params = leaf_params("localhost", self.serial());
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("an IA5 name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = if by_untrusted_ca {
            &self.untrusted
        } else {
            &self.ca
        };
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, issuer)
            .expect("sign the server certificate");
        write_pem(&self.server_key(), &key.serialize_pem());
        write_pem(&self.server_cert(), &cert.pem());
    }

    /// A client certificate with subject `CN=common_name`, signed by the trusted CA.
    pub fn client(&self, common_name: &str) -> ClientCert {
        self.issue_client(common_name, false)
    }

    /// A client certificate with subject `CN=common_name`, signed by the untrusted CA.
    pub fn untrusted_client(&self, common_name: &str) -> ClientCert {
        self.issue_client(common_name, true)
    }

    /// (Re)writes `crl.pem`, signed by the trusted CA, revoking exactly `revoked`;
    /// valid from 2020 to 2999. Returns its path.
    pub fn write_crl(&self, revoked: &[&ClientCert]) -> PathBuf {
        self.write_crl_until(revoked, 2999)
    }

    /// Like [`Pki::write_crl`], but the CRL's next update passed in 2020: a server
    /// that refuses expired CRLs refuses every client with it.
    pub fn write_expired_crl(&self, revoked: &[&ClientCert]) -> PathBuf {
        self.write_crl_until(revoked, 2020)
    }

    /// Writes `crl.pem` with its next update due on 1 February of `year`.
    fn write_crl_until(&self, revoked: &[&ClientCert], year: i32) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(year, 2, 1),
            crl_number: SerialNumber::from(self.serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|client| RevokedCertParams {
                    serial_number: SerialNumber::from(client.serial),
                    revocation_time: date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).expect("sign the CRL");
        let path = self.crl_file();
        write_pem(&path, &crl.pem().expect("CRL as PEM"));
        path
    }

    fn issue_client(&self, common_name: &str, by_untrusted_ca: bool) -> ClientCert {
        let serial = self.serial();
        let mut params = leaf_params(common_name, serial);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = if by_untrusted_ca {
            &self.untrusted
        } else {
            &self.ca
        };
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, issuer)
            .expect("sign a client certificate");
        // The serial keeps names apart when two clients share a Common Name.
        let stem: String = common_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let stem = format!("client-{stem}-{serial}");
        let cert_path = self.dir().join(format!("{stem}.pem"));
        let key_path = self.dir().join(format!("{stem}.key"));
        write_pem(&cert_path, &cert.pem());
        write_pem(&key_path, &key.serialize_pem());
        ClientCert {
            common_name: common_name.to_string(),
            cert: cert_path,
            key: key_path,
            serial,
        }
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }
}

/// A self-signed CA allowed to sign certificates and CRLs, written to `dir/file`.
fn make_ca(dir: &Path, common_name: &str, file: &str, serial: u64) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Headwater tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("self-sign the CA");
    write_pem(&dir.join(file), &cert.pem());
    Issuer::new(params, key)
}

/// An end-entity certificate's parameters: `CN=common_name`, no SAN, signature use.
fn leaf_params(common_name: &str, serial: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from(serial));
    params
}

/// Writes `text` to `path` atomically (a reader never sees half a file) and
/// world-readable.
fn write_pem(path: &Path, text: &str) {
    let staging = path.with_extension("staging");
    fs::write(&staging, text).expect("write a PEM file");
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o644)).expect("chmod a PEM file");
    fs::rename(&staging, path).expect("move a PEM file into place");
}
