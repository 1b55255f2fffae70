//! TLS toward clients: the rustls server configuration built from
//! `listen.tls_cert`, `listen.tls_key`, `listen.min_tls_version` and
//! `listen.client_ca`, and what a client's certificate says about it.

use std::sync::Arc;

use pgwarden_config::Listen;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;

/// What a client's TLS session established, for the connection policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The common name (CN) of the certificate the client presented, verified
    /// against `listen.client_ca`; `None` without one (or with several CNs,
    /// which no role could match unambiguously).
    pub cert_cn: Option<String>,
}

impl ClientTls {
    /// What `conn` established once its handshake completed.
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        let cert_cn =
            conn.peer_certificates().and_then(|chain| chain.first()).and_then(common_name);
        Self { cert_cn }
    }
}

/// The subject's common name of a DER certificate, if it has exactly one that
/// is a string.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next()?.as_str().ok()?.to_string();
    names.next().is_none().then_some(first)
}

/// PEM certificates from `path`; `key` names the setting in errors.
pub(crate) fn read_certs(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{key} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key} {path}: no certificate found"));
    }
    Ok(certs)
}

/// The CA certificates of `path` as trust anchors.
pub(crate) fn read_roots(path: &str, key: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, key)? {
        roots.add(cert).map_err(|e| format!("{key} {path}: {e}"))?;
    }
    Ok(roots)
}

/// The acceptor for `listen`, or `None` when TLS is off. Errors name the file
/// and never include key material.
pub fn acceptor(listen: &Listen) -> Result<Option<TlsAcceptor>, String> {
    if listen.tls_cert.is_empty() {
        return Ok(None);
    }
    let certs = read_certs(&listen.tls_cert, "listen.tls_cert")?;
    let key = PrivateKeyDer::from_pem_file(&listen.tls_key)
        .map_err(|_| format!("listen.tls_key {}: no usable private key found", listen.tls_key))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if listen.min_tls_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = if listen.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        // Without allow_unauthenticated: a client without a certificate from
        // these CAs fails the handshake.
        let roots = read_roots(&listen.client_ca, "listen.client_ca")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("listen.client_ca {}: {e}", listen.client_ca))?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("listen.tls_cert/tls_key: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
