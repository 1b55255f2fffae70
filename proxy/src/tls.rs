//! TLS toward clients: the rustls server configuration built from
//! `listen.tls_cert`, `listen.tls_key` and `listen.min_tls_version`.

use std::sync::Arc;

use pgwarden_config::Listen;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptor for `listen`, or `None` when TLS is off. Errors name the file
/// and never include key material.
pub fn acceptor(listen: &Listen) -> Result<Option<TlsAcceptor>, String> {
    if listen.tls_cert.is_empty() {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&listen.tls_cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("listen.tls_cert {}: {e}", listen.tls_cert))?;
    if certs.is_empty() {
        return Err(format!("listen.tls_cert {}: no certificate found", listen.tls_cert));
    }
    let key = PrivateKeyDer::from_pem_file(&listen.tls_key)
        .map_err(|_| format!("listen.tls_key {}: no usable private key found", listen.tls_key))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if listen.min_tls_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .map_err(|e| format!("TLS configuration: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("listen.tls_cert/tls_key: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
