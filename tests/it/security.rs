//! README "Security model", claim by claim: what each tenancy model isolates against a
//! hostile client (one that sends whatever SQL it likes), not only against a buggy app.
//!
//! - A shared login + `search_path` (schema per tenant) is not a boundary: a client reads
//!   another tenant's schema by naming it.
//! - A login per tenant is: the server refuses (42501) what the login may not touch, and the
//!   client cannot become another login.
//! - RLS on a setting the tenant's client can change is not a boundary; neither is RLS on
//!   tables the login owns, nor for a login with BYPASSRLS. RLS on `current_user` with a
//!   login per tenant that owns nothing is.

use std::sync::Once;

use tokio_postgres::Client;

use crate::support::{db_error, pg, tenant_client, value, ProxyOptions, TestProxy};

/// Roles and tables of this module's own (no other test uses these names), created once.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        pg().psql(
            "CREATE ROLE sec_a LOGIN PASSWORD 'sec_a_pw';\n\
             CREATE ROLE sec_b LOGIN PASSWORD 'sec_b_pw';\n\
             CREATE ROLE sec_bypass LOGIN BYPASSRLS PASSWORD 'sec_bypass_pw';\n",
        )
        .expect("security roles");
        pg().psql_db(
            "app",
            // Owned by the superuser: no tenant login owns it. Policy on current_user.
            "CREATE TABLE public.sec_items (owner name NOT NULL, val text NOT NULL);\n\
             INSERT INTO public.sec_items VALUES ('sec_a', 'a1'), ('sec_a', 'a2'), ('sec_b', 'b1');\n\
             ALTER TABLE public.sec_items ENABLE ROW LEVEL SECURITY;\n\
             CREATE POLICY own_rows ON public.sec_items USING (owner = current_user);\n\
             GRANT SELECT ON public.sec_items TO sec_a, sec_b, sec_bypass;\n\
             -- Owned by app, the shared login: RLS forced on it, policy on a setting.\n\
             SET ROLE app;\n\
             CREATE TABLE public.sec_owned (tenant_id int NOT NULL);\n\
             INSERT INTO public.sec_owned SELECT t FROM generate_series(1, 4) t;\n\
             ALTER TABLE public.sec_owned ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE public.sec_owned FORCE ROW LEVEL SECURITY;\n\
             CREATE POLICY by_setting ON public.sec_owned\n\
                 USING (tenant_id = current_setting('app.tenant_id')::int);\n\
             RESET ROLE;\n",
        )
        .expect("security tables");
    });
}

/// Tenants `sec_a`, `sec_b` and `sec_bypass`, each with its own server login.
fn options() -> ProxyOptions {
    let mut extra = String::new();
    for name in ["sec_a", "sec_b", "sec_bypass"] {
        extra += &format!(
            "\n[tenants.{name}]\nbackend = \"main\"\nuser = \"{name}\"\n\
             password = \"{name}_pw\"\nsearch_path = [\"public\"]\n"
        );
    }
    ProxyOptions::default().extra(&extra)
}

async fn sqlstate(client: &Client, sql: &str) -> String {
    let e = client
        .simple_query(sql)
        .await
        .expect_err("the server must refuse this");
    db_error(&e).code().code().to_string()
}

#[tokio::test]
async fn shared_login_search_path_is_not_a_boundary() {
    let proxy = TestProxy::start("");
    let t1 = tenant_client(&proxy, "t1").await;
    // Tenant t1 reads tenant t2's table by naming its schema.
    assert_eq!(
        value(&t1, "SELECT tenant FROM t2.whoami").await.as_deref(),
        Some("t2")
    );
    // ... or by changing its own search_path.
    t1.simple_query("SET search_path TO t3").await.unwrap();
    assert_eq!(
        value(&t1, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t3")
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn own_login_per_tenant_is_a_boundary() {
    setup();
    let proxy = TestProxy::start_with(options());
    // t7 logs in to the server as tenant_t7, which owns only schema t7.
    let t7 = tenant_client(&proxy, "t7").await;
    assert_eq!(
        value(&t7, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t7")
    );
    assert_eq!(sqlstate(&t7, "SELECT * FROM t1.whoami").await, "42501");
    // It cannot become another login either.
    assert_eq!(sqlstate(&t7, "SET ROLE app").await, "42501");
    assert_eq!(
        sqlstate(&t7, "SET SESSION AUTHORIZATION app").await,
        "42501"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn rls_on_a_setting_the_client_can_change_is_not_a_boundary() {
    setup();
    let proxy = TestProxy::start("");
    // r1 runs with app.tenant_id = 1 and sees its one row of sec_owned ...
    let r1 = tenant_client(&proxy, "r1").await;
    assert_eq!(
        value(
            &r1,
            "SELECT string_agg(tenant_id::text, ',') FROM public.sec_owned"
        )
        .await
        .as_deref(),
        Some("1")
    );
    // ... until it sets the setting the policy reads.
    r1.simple_query("SET app.tenant_id = '2'").await.unwrap();
    assert_eq!(
        value(
            &r1,
            "SELECT string_agg(tenant_id::text, ',') FROM public.sec_owned"
        )
        .await
        .as_deref(),
        Some("2")
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn rls_on_tables_the_login_owns_is_not_a_boundary() {
    setup();
    let proxy = TestProxy::start("");
    let r1 = tenant_client(&proxy, "r1").await;
    // The shared login `app` owns sec_owned: even with FORCE ROW LEVEL SECURITY it may
    // turn the policy off (here inside a transaction it rolls back).
    r1.simple_query("BEGIN").await.unwrap();
    r1.simple_query("ALTER TABLE public.sec_owned NO FORCE ROW LEVEL SECURITY")
        .await
        .unwrap();
    assert_eq!(
        value(&r1, "SELECT count(*) FROM public.sec_owned")
            .await
            .as_deref(),
        Some("4")
    );
    r1.simple_query("ROLLBACK").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn rls_on_current_user_with_a_login_per_tenant_is_a_boundary() {
    setup();
    let proxy = TestProxy::start_with(options());
    let a = tenant_client(&proxy, "sec_a").await;
    let rows = "SELECT string_agg(val, ',' ORDER BY val) FROM public.sec_items";
    assert_eq!(value(&a, rows).await.as_deref(), Some("a1,a2"));
    // Nothing the client can set changes current_user; it cannot switch roles, nor turn
    // the policy off on a table it does not own.
    a.simple_query("SET app.tenant_id = 'sec_b'").await.unwrap();
    assert_eq!(value(&a, rows).await.as_deref(), Some("a1,a2"));
    assert_eq!(sqlstate(&a, "SET ROLE sec_b").await, "42501");
    assert_eq!(
        sqlstate(
            &a,
            "ALTER TABLE public.sec_items DISABLE ROW LEVEL SECURITY"
        )
        .await,
        "42501"
    );
    let b = tenant_client(&proxy, "sec_b").await;
    assert_eq!(value(&b, rows).await.as_deref(), Some("b1"));
    // A login with BYPASSRLS sees every row: such a login is no boundary.
    let bypass = tenant_client(&proxy, "sec_bypass").await;
    assert_eq!(value(&bypass, rows).await.as_deref(), Some("a1,a2,b1"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn database_per_tenant_cannot_query_another_database() {
    let proxy = TestProxy::start("");
    // t5 and t6 share the login `app` but each has a database of its own.
    let t5 = tenant_client(&proxy, "t5").await;
    assert_eq!(
        value(&t5, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t5")
    );
    assert_eq!(
        sqlstate(&t5, "SELECT tenant FROM app_t6.public.whoami").await,
        "0A000"
    );
    proxy.stop().await.unwrap();
}

/// Naming another tenant at login is refused only when the proxy user is limited to its
/// own (`tenants = ["t1"]`); with `["*"]` whoever has the password may name any tenant.
#[tokio::test]
async fn a_proxy_user_limited_to_its_tenant_cannot_name_another() {
    let proxy = TestProxy::start("");
    let err = proxy
        .connect("limited", crate::support::Naming::Options, "t2")
        .await
        .expect_err("limited may use t1 only");
    assert_eq!(err.code(), Some("28000"), "{err}");
    let t2 = proxy
        .connect("app", crate::support::Naming::Options, "t2")
        .await
        .expect("app may name any tenant");
    assert_eq!(
        value(&t2, "SELECT tenant FROM whoami").await.as_deref(),
        Some("t2")
    );
    proxy.stop().await.unwrap();
}
