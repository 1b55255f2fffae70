//! TLS toward Postgres (`upstream.tls`, `upstream.ca`): the rustls client
//! configuration for each of libpq's modes, and a tokio-postgres connector so
//! that the proxy's own connection uses the same setting.
//!
//! | mode | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` | if offered | as `require` | |
//! | `require` | yes | checked only when `upstream.ca` is set (as libpq) | no |
//! | `verify-ca` | yes | against `upstream.ca` | no |
//! | `verify-full` | yes | against `upstream.ca` | `upstream.host` |
//!
//! Every mode checks the handshake's signatures, so a session is bound to the
//! certificate's key even when the certificate itself is not checked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pgwarden_config::{Upstream, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

/// How the proxy reaches Postgres over TLS: the mode, and what it connects with.
#[derive(Clone)]
pub struct UpstreamTlsSetup {
    pub mode: UpstreamTls,
    pub connector: TlsConnector,
    /// `upstream.host`, as rustls checks it (and sends it as SNI).
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsSetup").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// The setup for `upstream`, `None` for `disable`. Errors name the setting.
pub fn setup(upstream: &Upstream) -> Result<Option<UpstreamTlsSetup>, String> {
    if upstream.tls == UpstreamTls::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = || -> Result<Arc<WebPkiServerVerifier>, String> {
        let roots = crate::tls::read_roots(&upstream.ca, "upstream.ca")?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("upstream.ca {}: {e}", upstream.ca))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match upstream.tls {
        UpstreamTls::VerifyFull => chain()?,
        UpstreamTls::VerifyCa => Arc::new(ChainOnly(chain()?)),
        UpstreamTls::Require | UpstreamTls::Prefer if !upstream.ca.is_empty() => {
            Arc::new(ChainOnly(chain()?))
        }
        _ => Arc::new(AnyCertificate(provider.clone())),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream.tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from(upstream.host.clone())
        .map_err(|_| format!("upstream.host {:?} is not a host name or address", upstream.host))?;
    Ok(Some(UpstreamTlsSetup {
        mode: upstream.tls,
        connector: TlsConnector::from(Arc::new(config)),
        name,
    }))
}

/// `require` without `upstream.ca`: any certificate, as libpq.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `upstream.ca`; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity dates) before the name, so a
        // name error means everything else held.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `upstream.tls` for tokio-postgres (the proxy's own connection): the same
/// rustls configuration. Use with `ssl_mode` from [`postgres_ssl_mode`].
#[derive(Clone)]
pub struct PostgresTls(pub UpstreamTlsSetup);

/// tokio-postgres' `sslmode` for `mode`: the verify modes are `require` to
/// it, the certificate checks being the connector's.
pub fn postgres_ssl_mode(mode: UpstreamTls) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode;
    match mode {
        UpstreamTls::Disable => SslMode::Disable,
        UpstreamTls::Prefer => SslMode::Prefer,
        UpstreamTls::Require | UpstreamTls::VerifyCa | UpstreamTls::VerifyFull => SslMode::Require,
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTls;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<PostgresTls, std::io::Error> {
        Ok(self.clone())
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<PostgresTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = self.0.connector.connect(self.0.name, stream).await?;
            Ok(PostgresTlsStream(s))
        })
    }
}

/// A TLS stream tokio-postgres can use. No channel binding: the proxy's
/// login uses SCRAM-SHA-256 or md5 without it.
pub struct PostgresTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}
