//! Logging in to the proxy: the error each failed login gets (SQLSTATE and message, as
//! README's "Naming the tenant" lists them), and a real `psql` naming its tenant in a URL.

use crate::support::clients::{psql_cmd, run_psql};
use crate::support::{connect, simple_value, Naming, ProxyOptions, TestProxy};

#[tokio::test]
async fn wrong_password_is_28p01() {
    let proxy = TestProxy::start("");
    let conn = proxy.connect_str_with_password("app", "wrong", Naming::Options, "t1");
    let err = connect(&conn)
        .await
        .expect_err("a wrong password must not log in");
    assert_eq!(err.code(), Some("28P01"), "{err}");
}

#[tokio::test]
async fn unknown_user_is_28p01() {
    let proxy = TestProxy::start("");
    let err = proxy
        .connect("nobody", Naming::Options, "t1")
        .await
        .expect_err("unknown user");
    assert_eq!(err.code(), Some("28P01"), "{err}");
}

#[tokio::test]
async fn unknown_tenant_is_3d000() {
    let proxy = TestProxy::start("");
    for naming in [Naming::Options, Naming::User] {
        let err = proxy
            .connect("app", naming, "nope")
            .await
            .expect_err("unknown tenant");
        assert_eq!(err.code(), Some("3D000"), "{naming:?}: {err}");
        assert_eq!(
            err.message(),
            Some("tenant \"nope\" does not exist"),
            "{naming:?}: {err}"
        );
    }
}

#[tokio::test]
async fn no_tenant_named_is_28000() {
    let proxy = TestProxy::start("");
    // Database `app` is not a tenant's name, so nothing names one; no default_tenant.
    let err = connect(&proxy.conn_params("app", "secret", "app", None))
        .await
        .expect_err("no tenant named");
    assert_eq!(err.code(), Some("28000"), "{err}");
}

#[tokio::test]
async fn user_limited_to_other_tenants_is_28000() {
    let proxy = TestProxy::start("");
    let err = proxy
        .connect("limited", Naming::Options, "t2")
        .await
        .expect_err("t2 not allowed");
    assert_eq!(err.code(), Some("28000"), "{err}");

    let client = proxy
        .connect("limited", Naming::Options, "t1")
        .await
        .expect("t1 is allowed");
    let tenant = simple_value(&client, "SELECT tenant FROM whoami")
        .await
        .expect("query");
    assert_eq!(tenant.as_deref(), Some("t1"));
}

#[tokio::test]
async fn too_many_clients_is_53300() {
    let proxy =
        TestProxy::start_with(ProxyOptions::default().proxy_line("max_client_connections = 2"));
    let first = proxy
        .connect("app", Naming::Options, "t1")
        .await
        .expect("first client");
    let second = proxy
        .connect("app", Naming::Options, "t2")
        .await
        .expect("second client");
    let err = proxy
        .connect("app", Naming::Options, "t3")
        .await
        .expect_err("third client");
    assert_eq!(err.code(), Some("53300"), "{err}");
    // The two admitted clients still work.
    for (client, tenant) in [(&first, "t1"), (&second, "t2")] {
        let got = simple_value(client, "SELECT tenant FROM whoami")
            .await
            .expect("query");
        assert_eq!(got.as_deref(), Some(tenant));
    }
}

/// The line the README and `pgtenant demo` print, run with the real psql.
#[tokio::test]
async fn psql_names_tenant_in_url_options() {
    let proxy = TestProxy::start("");
    let url = proxy.url("app", Naming::Options, "t2");
    assert!(url.ends_with("/app?options=-c%20tenant%3Dt2"), "{url}");
    let mut cmd = psql_cmd(&url);
    cmd.args(["-At", "-c", "select tenant from whoami"]);
    let output = run_psql(cmd).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "t2",
        "stderr: {stderr}"
    );
}
