//! Validation of the TLS keys, with certificates made at run time.
use std::path::Path;

use crate::config::{ClientTls, Config, SslMode};

/// A CA and a certificate for `localhost` signed by it, as PEM files in `dir`:
/// `ca.crt`, `server.crt`, `server.key`.
fn write_certs(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

fn config(dir: &Path, proxy: &str, backend: &str) -> Result<Config, String> {
    let text = format!(
        r#"
[proxy]
{proxy}
[backends.main]
host = "localhost"
database = "app"
user = "app"
password = "pw"
{backend}
[users.app]
password = "secret"
[tenants.acme]
backend = "main"
"#
    );
    let text = text.replace("DIR", &dir.display().to_string());
    Config::from_toml_str(&text, "proxy.toml").map_err(|e| e.to_string())
}

fn error(dir: &Path, proxy: &str, backend: &str) -> String {
    config(dir, proxy, backend).expect_err("should be refused")
}

#[test]
fn client_tls_keys() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let d = dir.path();
    let cert = r#"tls_cert = "DIR/server.crt"
tls_key = "DIR/server.key""#;

    let plain = config(d, "", "").unwrap();
    assert!(plain.proxy.tls.is_none(), "no certificate, no TLS");
    assert_eq!(plain.proxy.client_tls, ClientTls::Allow);

    let tls = config(d, cert, "").unwrap();
    let loaded = tls.proxy.tls.as_ref().expect("loaded");
    assert!(
        loaded.channel_binding.is_some(),
        "SCRAM-SHA-256-PLUS offered"
    );
    assert!(!loaded.verifies_clients);

    let off = config(d, &format!("{cert}\nclient_tls = \"disable\""), "").unwrap();
    assert!(off.proxy.tls.is_none());

    let ca = format!("{cert}\ntls_client_ca = \"DIR/ca.crt\"\nclient_tls = \"require\"");
    let verifying = config(d, &ca, "").unwrap();
    assert!(verifying.proxy.tls.as_ref().unwrap().verifies_clients);
    assert_eq!(verifying.proxy.client_tls, ClientTls::Require);

    let sni = format!("{cert}\ntenant_from = [\"sni\", \"user\"]\nsni_suffix = \".db.test\"");
    assert_eq!(config(d, &sni, "").unwrap().proxy.sni_suffix, ".db.test");

    for (proxy, expected) in [
        (
            r#"client_tls = "require""#,
            r#"proxy.client_tls: "require" needs tls_cert and tls_key"#,
        ),
        (
            r#"client_tls = "always""#,
            r#"proxy.client_tls: "always" is not one of "disable", "allow", "require""#,
        ),
        (
            r#"tls_cert = "DIR/server.crt""#,
            "proxy.tls_key: required with tls_cert",
        ),
        (
            r#"tls_key = "DIR/server.key""#,
            "proxy.tls_cert: required with tls_key",
        ),
        (
            r#"tls_client_ca = "DIR/ca.crt""#,
            "proxy.tls_client_ca: needs tls_cert and tls_key",
        ),
        (
            r#"tenant_from = ["sni"]"#,
            r#"proxy.tenant_from: "sni" needs client TLS"#,
        ),
        (
            "tls_cert = \"DIR/missing.crt\"\ntls_key = \"DIR/server.key\"",
            "proxy.tls_cert: cannot read",
        ),
        (
            "tls_cert = \"DIR/server.key\"\ntls_key = \"DIR/server.key\"",
            "no certificate in the file",
        ),
        (
            "tls_cert = \"DIR/server.crt\"\ntls_key = \"DIR/server.crt\"",
            "no private key in the file",
        ),
    ] {
        let e = error(d, proxy, "");
        assert!(e.contains(expected), "{expected:?} not in: {e}");
        assert!(e.starts_with("proxy.toml: "), "{e}");
    }
}

#[test]
fn backend_tls_keys() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let d = dir.path();
    let backend = |c: &Config| c.backends["main"].tls.clone();

    let default = config(d, "", "").unwrap();
    assert_eq!(backend(&default).mode, SslMode::Disable);
    assert!(backend(&default).client.is_none());

    let full = "sslmode = \"verify-full\"\nsslrootcert = \"DIR/ca.crt\"";
    let verified = config(d, "", full).unwrap();
    assert_eq!(backend(&verified).mode, SslMode::VerifyFull);
    assert!(backend(&verified).client.is_some());
    let tenant = verified.tenants["acme"].clone();
    assert_eq!(verified.endpoint_for(&tenant).tls, backend(&verified));

    let prefer = config(d, "", "sslmode = \"prefer\"").unwrap();
    assert!(backend(&prefer).client.is_some());
    let with_cert =
        "sslmode = \"require\"\nsslcert = \"DIR/server.crt\"\nsslkey = \"DIR/server.key\"";
    assert!(config(d, "", with_cert).is_ok());

    // New file contents: another endpoint (a reload connects with the new files).
    write_certs(d);
    let again = config(d, "", full).unwrap();
    assert_ne!(backend(&again), backend(&verified));

    for (keys, expected) in [
        (
            r#"sslmode = "verify-full""#,
            r#"backends.main.sslrootcert: sslmode "verify-full" needs the CA"#,
        ),
        (
            r#"sslmode = "verify-ca""#,
            r#"backends.main.sslrootcert: sslmode "verify-ca" needs the CA"#,
        ),
        (
            r#"sslmode = "on""#,
            r#"backends.main.sslmode: "on" is not one of "disable", "prefer", "require", "verify-ca", "verify-full""#,
        ),
        (
            "sslmode = \"require\"\nsslcert = \"DIR/server.crt\"",
            "backends.main.sslkey: required with sslcert",
        ),
        (
            "sslmode = \"verify-ca\"\nsslrootcert = \"DIR/nope.crt\"",
            "backends.main: cannot read",
        ),
    ] {
        let e = error(d, "", keys);
        assert!(e.contains(expected), "{expected:?} not in: {e}");
    }
}

#[test]
fn check_summarizes_tls() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let config = config(
        dir.path(),
        "tls_cert = \"DIR/server.crt\"\ntls_key = \"DIR/server.key\"\nclient_tls = \"require\"",
        "sslmode = \"verify-full\"\nsslrootcert = \"DIR/ca.crt\"",
    )
    .unwrap();
    let summary = config.summary();
    assert!(
        summary.contains("client_tls require  tls_cert "),
        "{summary}"
    );
    assert!(summary.contains("(SCRAM-SHA-256-PLUS)"), "{summary}");
    assert!(
        summary.contains("sslmode verify-full  sslrootcert "),
        "{summary}"
    );
}
