//! TLS settings: `[proxy]` `tls_cert`/`tls_key`/`client_tls`/`tls_client_ca` and each
//! backend's `sslmode`/`sslrootcert`/`sslcert`/`sslkey`, with the PEM files they name loaded
//! into rustls configurations. Loading happens with the rest of the config, so `pgtenant
//! check` reads the files and every reload (SIGHUP, `RELOAD`) reads them again: new
//! certificate files take effect for new connections, connected ones keep their sessions.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgwire::api::auth::sasl::scram::ScramServerAuth;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// The ALPN protocol PostgreSQL 17+ speaks over TLS (required with direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// `[proxy] client_tls`: whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// SSLRequest is answered `N`.
    Disable,
    /// TLS when the client asks (and a certificate is configured); plaintext also accepted.
    Allow,
    /// A plaintext login is refused (28000).
    Require,
}

impl ClientTls {
    pub const ALL: [ClientTls; 3] = [ClientTls::Disable, ClientTls::Allow, ClientTls::Require];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientTls::Disable => "disable",
            ClientTls::Allow => "allow",
            ClientTls::Require => "require",
        }
    }
}

/// `[backends.X] sslmode`, as libpq's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, plaintext otherwise; the certificate is not checked.
    Prefer,
    /// TLS or fail; the certificate is checked against `sslrootcert` only if one is given.
    Require,
    /// TLS, and a certificate signed by `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the backend's host.
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The proxy's certificate for clients, loaded from `tls_cert`/`tls_key`.
#[derive(Debug)]
pub struct TlsAcceptorConfig {
    pub server: Arc<ServerConfig>,
    /// SCRAM with this certificate's `tls-server-end-point` binding (SCRAM-SHA-256-PLUS);
    /// `None` when its signature algorithm defines no hash for it (RFC 5929), e.g. Ed25519.
    pub channel_binding: Option<ScramServerAuth>,
    /// Whether client certificates are verified (`tls_client_ca`).
    pub verifies_clients: bool,
}

/// A backend's TLS settings, and their rustls configuration (`None` with `disable`).
/// Equal when the settings and the files' contents are: a reload that changes a file makes
/// a new endpoint (its connections are made with the new files).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub mode: SslMode,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client: Option<Arc<ClientConfig>>,
    /// A hash of the files' contents.
    fingerprint: u64,
}

impl ServerTls {
    /// Plaintext only.
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: SslMode::Disable,
            rootcert: None,
            cert: None,
            key: None,
            client: None,
            fingerprint: 0,
        }
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        (
            self.mode,
            &self.rootcert,
            &self.cert,
            &self.key,
            self.fingerprint,
        ) == (
            other.mode,
            &other.rootcert,
            &other.cert,
            &other.key,
            other.fingerprint,
        )
    }
}

impl Eq for ServerTls {}

impl Hash for ServerTls {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (
            self.mode,
            &self.rootcert,
            &self.cert,
            &self.key,
            self.fingerprint,
        )
            .hash(state);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("{}: no private key in the file: {e}", path.display()))
}

fn roots(path: &Path) -> Result<(RootCertStore, Vec<u8>), String> {
    let pem = read(path)?;
    let mut store = RootCertStore::empty();
    for cert in certs(path, &pem)? {
        store
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((store, pem))
}

/// Loads the proxy's certificate (and the client CA, if any) for client connections.
pub fn acceptor(
    cert_path: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptorConfig, String> {
    let cert_pem = read(cert_path)?;
    let chain = certs(cert_path, &cert_pem)?;
    let key = key(key_path, &read(key_path)?)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let (store, _) = roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(store.into(), provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", cert_path.display(), key_path.display()))?;
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // As PostgreSQL: no session tickets, no session cache (libpq never resumes a session;
    // issuing tickets would cost every handshake a write and their encryption).
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut scram = ScramServerAuth::new();
    let channel_binding = scram.configure_certificate(&cert_pem).ok().map(|()| scram);
    Ok(TlsAcceptorConfig {
        server: Arc::new(server),
        channel_binding,
        verifies_clients: client_ca.is_some(),
    })
}

/// A backend's TLS settings, with its files loaded.
pub fn server_tls(
    mode: SslMode,
    rootcert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key_path: Option<PathBuf>,
) -> Result<ServerTls, String> {
    if mode == SslMode::Disable {
        return Ok(ServerTls {
            mode,
            rootcert,
            cert,
            key: key_path,
            client: None,
            fingerprint: 0,
        });
    }
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    let verifier: Arc<dyn ServerCertVerifier> = match &rootcert {
        Some(path) => {
            let (store, pem) = roots(path)?;
            pem.hash(&mut fingerprint);
            let webpki = WebPkiServerVerifier::builder_with_provider(store.into(), provider())
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            match mode {
                SslMode::VerifyFull => webpki,
                // As libpq: `require` with a root certificate checks the chain too.
                _ => Arc::new(ChainOnly(webpki)),
            }
        }
        None => Arc::new(Unverified(provider())),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut client = match (&cert, &key_path) {
        (Some(cert_path), Some(key_path)) => {
            let cert_pem = read(cert_path)?;
            let key_pem = read(key_path)?;
            cert_pem.hash(&mut fingerprint);
            key_pem.hash(&mut fingerprint);
            builder
                .with_client_auth_cert(certs(cert_path, &cert_pem)?, key(key_path, &key_pem)?)
                .map_err(|e| format!("{}: {e}", cert_path.display()))?
        }
        _ => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ServerTls {
        mode,
        rootcert,
        cert,
        key: key_path,
        client: Some(Arc::new(client)),
        fingerprint: fingerprint.finish(),
    })
}

/// `verify-ca` (and `require` with a root certificate): the chain must lead to a trusted
/// root; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
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

/// `prefer` and `require` without a root certificate: encryption without authentication,
/// as libpq's (the handshake's signatures are still checked).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
