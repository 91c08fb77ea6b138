//! TLS towards a bridge's remote broker (`bridge_cafile`, `bridge_certfile`,
//! `bridge_keyfile`, `bridge_insecure`): a rustls client on the `ring` provider, built
//! again on every connection attempt so replaced certificate files are picked up.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::broker::BridgeConfig;

/// The client configuration for `config`, or `None` when the bridge does not use TLS
/// (no `bridge_cafile`). An error names the file and what to do.
pub fn client_config(config: &BridgeConfig) -> Result<Option<Arc<ClientConfig>>, String> {
    let Some(cafile) = &config.bridge_cafile else {
        return Ok(None);
    };
    // Installed explicitly: rustls panics when it has to pick between two providers.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in read_certs(cafile)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", cafile.display()))?;
    }
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if config.bridge_insecure {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", cafile.display()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName { inner: verifier }))
    } else {
        builder.with_root_certificates(roots)
    };
    let tls = match (&config.bridge_certfile, &config.bridge_keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let chain = read_certs(certfile)?;
            let key = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
                format!(
                    "{}: no usable private key ({e}); give a PEM key (PKCS#8, PKCS#1 or SEC1)",
                    keyfile.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "{} and {}: the key does not fit the certificate: {e}",
                    certfile.display(),
                    keyfile.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(tls)))
}

/// The name the remote's certificate is checked against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("`{host}` cannot be checked against a certificate: {e}"))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate found; give the CA certificate in PEM",
            path.display()
        ));
    }
    Ok(certs)
}

/// `bridge_insecure`: the chain is verified as usual, only the host name is not.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
