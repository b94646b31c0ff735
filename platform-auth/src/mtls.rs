//! Client certificates (feature `mtls`): TLS with a rustls client-certificate verifier,
//! and [`Mtls`], the method that makes a principal of the certificate a client proved.
//!
//! ```rust,ignore
//! let verifier = mtls::client_verifier(&std::fs::read("clients-ca.pem")?, true)?; // fails startup when unusable
//! let tls = mtls::server_config(&cert_pem, &key_pem, verifier)?;
//! let chain = AuthChain::new().with(Arc::new(Mtls::from_san()));
//! let app = router.layer(axum::middleware::from_fn_with_state(Arc::new(chain), layer::authenticate));
//! mtls::serve(listener, tls, app).await?;
//! ```
//!
//! The chain is checked in the handshake, by rustls against the configured CA: a
//! client whose certificate is not issued by it never gets a request through, and with a
//! required verifier neither does one without a certificate. [`serve`] puts the
//! certificates of each connection in its requests ([`PeerCertificates`]); [`Mtls`] takes
//! the subject from the leaf's first URI SAN (a SPIFFE id), else its first DNS SAN, or
//! maps the SHA-256 of its public key (SPKI) to a principal ([`Mtls::pin`]). A verifier
//! that cannot be built (no CA, an unreadable one) is an error, never a server that
//! quietly takes everyone.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use platform_core::{Error, Result};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};

use crate::{AuthOutcome, Authenticator, PeerCertificates, Principal, RequestParts, unauthenticated};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid_input(format!("{what}: {e}")).with_detail("mtls", what.to_owned())
}

/// A verifier of client certificates issued by the CAs in `ca_pem`. `required`: a
/// client without a certificate fails the handshake; otherwise it connects and another
/// method must authenticate it. No CA in `ca_pem`, or one rustls refuses, is an error.
pub fn client_verifier(ca_pem: &[u8], required: bool) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| bad("the client CA is not PEM", e))?).map_err(|e| bad("the client CA", e))?;
    }
    if roots.is_empty() {
        return Err(bad("the client CA", "no certificate in it"));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required { builder } else { builder.allow_unauthenticated() };
    builder.build().map_err(|e| bad("the client certificate verifier", e))
}

/// A TLS server configuration: the server's certificate chain and key (PEM), clients
/// checked by `verifier`; HTTP/1.1 and HTTP/2.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("the server certificate is not PEM", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("the server key is not PEM", e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("the server certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener`, each request carrying the certificates its
/// client presented. A failed handshake (no certificate where one is required, one of
/// an unknown CA) ends that connection only.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    router: axum::Router,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "a TLS handshake failed");
                    return;
                }
            };
            let certs: Vec<Vec<u8>> =
                tls.get_ref().1.peer_certificates().unwrap_or_default().iter().map(|c| c.as_ref().to_vec()).collect();
            let router = router.layer(axum::Extension(PeerCertificates(Arc::new(certs))));
            let service = hyper_util::service::TowerToHyperService::new(router);
            let io = hyper_util::rt::TokioIo::new(tls);
            let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = server.serve_connection_with_upgrades(io, service).await {
                tracing::debug!(%peer, error = %e, "a TLS connection ended with an error");
            }
        });
    }
}

/// The SHA-256 of a certificate's public key (its SubjectPublicKeyInfo), in hex: what
/// [`Mtls::pin`] maps.
pub fn spki_sha256(cert_der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| bad("the certificate", e))?;
    let digest = Sha256::digest(cert.public_key().raw);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The mTLS method.
#[derive(Debug, Default)]
pub struct Mtls {
    pins: HashMap<String, Principal>,
    pinned_only: bool,
}

impl Mtls {
    /// The subject from the leaf's SAN (URI first, then DNS).
    pub fn from_san() -> Self {
        Self::default()
    }

    /// Only certificates whose key is pinned; any other is 401.
    pub fn pinned_only() -> Self {
        Self { pins: HashMap::new(), pinned_only: true }
    }

    /// A certificate whose public key hashes to `spki_sha256` (hex, see
    /// [`spki_sha256`]) is `principal`.
    #[must_use]
    pub fn pin(mut self, spki_sha256: &str, principal: Principal) -> Self {
        self.pins.insert(spki_sha256.to_ascii_lowercase(), principal);
        self
    }
}

#[async_trait]
impl Authenticator for Mtls {
    fn method(&self) -> &'static str {
        "mtls"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let Some(leaf) = request.peer_certs.and_then(|c| c.first()) else {
            return Ok(AuthOutcome::Absent);
        };
        let refused = |why: &str| unauthenticated(&format!("the client certificate {why}"));
        if let Some(p) = self.pins.get(&spki_sha256(leaf)?) {
            let mut p = p.clone();
            p.method = "mtls";
            return Ok(AuthOutcome::Authenticated(p));
        }
        if self.pinned_only {
            return Err(refused("is not pinned"));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|_| refused("does not parse"))?;
        let san = cert.subject_alternative_name().map_err(|_| refused("has a malformed SAN"))?;
        let names = san.map(|s| s.value.general_names.clone()).unwrap_or_default();
        use x509_parser::extensions::GeneralName;
        let uri = names.iter().find_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None });
        let dns = names.iter().find_map(|n| if let GeneralName::DNSName(d) = n { Some(*d) } else { None });
        let subject = uri.or(dns).ok_or_else(|| refused("names no URI or DNS SAN"))?;
        Ok(AuthOutcome::Authenticated(Principal::new(subject, "mtls")))
    }
}
