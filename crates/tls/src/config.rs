//! rustls configurations over a [`Material`]: each handshake takes the
//! material current at that moment, so reloads apply to new connections.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::der;
use crate::error::{Error, Result};
use crate::identity::{Identity, identity_of};
use crate::material::Material;

/// HTTP/2, then HTTP/1.1.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// A server presenting the material's certificate and requiring a client
/// certificate that chains to the material's trust bundle. Which identity
/// a client must have is the route's business (see [`crate::require`]).
///
/// Sessions are not resumed: a resumed session skips the certificate
/// checks, and a retired CA or a replaced certificate would still pass.
pub fn server_config(material: Arc<Material>) -> Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(material.provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_client_cert_verifier(Arc::new(ClientVerifier(material.clone())))
        .with_cert_resolver(Arc::new(Own(material)));
    cfg.alpn_protocols = alpn();
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client presenting the material's certificate and accepting a server
/// whose certificate chains to the trust bundle and presents one of
/// `expect`. The name in the URL plays no part, so a server can be
/// reached by its address. No session resumption (see [`server_config`]).
pub fn client_config(
    material: Arc<Material>,
    expect: Vec<Identity>,
) -> Result<Arc<rustls::ClientConfig>> {
    if expect.is_empty() {
        return Err(Error::NoExpectedIdentity);
    }
    let expect = expect
        .into_iter()
        .map(|who| {
            let name = DnsName::try_from(who.dns_name()).map_err(|_| Error::BadName {
                name: who.name.clone(),
                reason: "not usable in a DNS name",
            })?;
            Ok((who, ServerName::DnsName(name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(material.provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            material: material.clone(),
            expect,
        }))
        .with_client_cert_resolver(Arc::new(Own(material)));
    // HTTP/1.1: a copy between agents sends 16 MiB batches on several
    // connections at once, and over HTTP/2's flow control the same copy
    // ran at 65 % of plain HTTP's speed (`scripts/bench-agents`).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A reqwest client over [`client_config`], from the caller's builder
/// (timeouts, pool, proxies: `standby_http::builder(Reach::Internal)`).
/// HTTPS only: a plain `http://` URL is an error, not a way around TLS.
pub fn reqwest_client(
    material: Arc<Material>,
    expect: Vec<Identity>,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client> {
    let cfg = client_config(material, expect)?;
    // reqwest takes a `rustls::ClientConfig` by value (any other type is
    // "an unknown TLS backend" when the client is built).
    builder
        .tls_backend_preconfigured(rustls::ClientConfig::clone(&cfg))
        .https_only(true)
        .build()
        .map_err(Error::Client)
}

/// The material's own certificate, for both ends of a handshake.
#[derive(Debug)]
struct Own(Arc<Material>);

impl ResolvesServerCert for Own {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl ResolvesClientCert for Own {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The webpki client verifier of the current trust bundle.
#[derive(Debug)]
struct ClientVerifier(Arc<Material>);

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// None: the list changes with the bundle and a client has one
    /// certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client_verifier.supported_verify_schemes()
    }
}

/// The webpki server verifier of the current trust bundle, asked about
/// the expected identities instead of the URL's name.
#[derive(Debug)]
struct ServerVerifier {
    material: Arc<Material>,
    expect: Vec<(Identity, ServerName<'static>)>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = self.material.current().server_verifier.clone();
        let mut refused = None;
        for (_, name) in &self.expect {
            match verifier.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
                // One name per certificate, as `presents` has it.
                Ok(ok) if der::dns_names(end_entity).len() == 1 => return Ok(ok),
                Ok(_) => break,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        Err(refused.unwrap_or_else(|| {
            let wrong = WrongServer {
                presented: identity_of(std::slice::from_ref(end_entity)),
                expected: self.expect.iter().map(|(who, _)| who.clone()).collect(),
            };
            tracing::debug!("{wrong}");
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong))))
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material
            .current()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material
            .current()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material
            .current()
            .server_verifier
            .supported_verify_schemes()
    }
}

/// A server certificate of the right CA for the wrong identity.
struct WrongServer {
    presented: Option<Identity>,
    expected: Vec<Identity>,
}

impl fmt::Display for WrongServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.presented {
            Some(p) => write!(f, "server certificate is {}", p.describe())?,
            None => f.write_str("server certificate is no standby identity")?,
        }
        let expected: Vec<String> = self.expected.iter().map(Identity::dns_name).collect();
        write!(f, ", expected one of: {}", expected.join(", "))
    }
}

/// As Display: rustls shows an `OtherError` with `{:?}`.
impl fmt::Debug for WrongServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WrongServer {}
