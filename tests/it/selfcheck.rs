//! The suite checks itself: a panic inside the proxy's tasks fails the test that caused it
//! (see `support::watch`), even where the client only sees a closed connection.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::support::{tenant_of, Naming, ProxyOptions, TestProxy};

/// The text of a caught panic.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Connects once through a proxy told to panic on its next client: the client sees a
/// closed connection with no error message, just as after a correct close.
async fn crash_one_session(proxy: &TestProxy) {
    proxy.handle.panic_next_client();
    let err = proxy
        .connect("app", Naming::Options, "t1")
        .await
        .expect_err("the panicking session cannot log the client in");
    assert_eq!(
        err.code(),
        None,
        "no ErrorResponse, just a closed socket: {err}"
    );
}

#[tokio::test]
async fn a_panicking_session_fails_the_test_when_the_proxy_is_dropped() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    crash_one_session(&proxy).await;
    // The proxy goes on serving others, so only the watch can tell.
    let client = proxy.connect("app", Naming::Options, "t2").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t2"));
    let incidents = proxy.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(incidents[0].contains("injected panic"), "{incidents:?}");

    let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(proxy)));
    let text = panic_text(dropped.expect_err("dropping the proxy must fail the test"));
    assert!(
        text.contains("the proxy failed inside its own tasks") && text.contains("injected panic"),
        "{text}"
    );
}

// Current-thread, as the other injection: a panic in a multi-thread runtime would also be
// charged to any multi-thread test running at the same time (see `support::watch`).
#[tokio::test]
async fn a_panicking_session_fails_the_test_when_the_proxy_is_stopped() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    crash_one_session(&proxy).await;
    let stopped = AssertUnwindSafe(proxy.stop()).catch_unwind().await;
    let text = panic_text(stopped.expect_err("stopping the proxy must fail the test"));
    assert!(text.contains("injected panic"), "{text}");
}

#[tokio::test]
async fn a_clean_run_has_no_incidents() {
    let proxy = TestProxy::start_with(ProxyOptions::default());
    let client = proxy.connect("app", Naming::Options, "t1").await.unwrap();
    assert_eq!(tenant_of(&client).await.as_deref(), Some("t1"));
    drop(client);
    assert_eq!(proxy.incidents(), Vec::<String>::new());
    proxy.stop().await.expect("the proxy stops cleanly");
}
