//! Backpressure and overload: a client that does not read a 400 MB result, the client caps
//! (whole proxy and per tenant), and a noisy tenant beside a quiet one on a pool of 2.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{eventually, percentile, rss_kib_of, superuser};
use crate::support::wire::{query, Wire};
use crate::support::{describe, simple_value, ConnectError, Naming, ProxyOptions, TestProxy};

const ROWS: u64 = 400_000;
/// One DataRow of `repeat('x', 1000)`: header, column count, value length, value.
const ROW_BYTES: u64 = 5 + 2 + 4 + 1000;
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_400_mb_result_holds_the_server_back() {
    // In a process of its own, so the RSS measured is the proxy's alone (tests run in
    // parallel in this one).
    let proxy = crate::hostile::IsolatedProxy::start(ProxyOptions::default().auth("trust"));
    let pid = proxy.pid();
    let rss_kib = move || rss_kib_of(pid);
    let mut raw = Wire::login(proxy.addr(), "t1", "").await;
    let admin = superuser().await;
    let before = rss_kib();
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let sql = format!("SELECT repeat('x', 1000) FROM generate_series(1, {ROWS})");
    raw.send(&query(&sql)).await;
    // Not reading: the server must end up blocked writing to the proxy.
    let blocked = eventually(
        Duration::from_secs(10),
        "the server blocks writing",
        || async {
            let waits = admin
                .query(
                    "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE query = $1",
                    &[&sql],
                )
                .await
                .expect("pg_stat_activity");
            waits.iter().any(|r| r.get::<_, &str>(0) == "ClientWrite")
        },
    )
    .await;
    // A fixed sleep on purpose: the proxy's memory must not grow while it lasts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled_growth = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!(
        "not reading: server blocked in ClientWrite after {blocked:?}; RSS {before} KiB, \
         growth {stalled_growth} KiB"
    );

    let started = Instant::now();
    let (rows, bytes, status) = raw.count_rows_until_ready().await;
    sampling.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let growth = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!(
        "read {rows} rows, {bytes} bytes in {:?}; peak RSS growth {growth} KiB",
        started.elapsed()
    );
    assert_eq!(rows, ROWS);
    assert_eq!(bytes, ROWS * ROW_BYTES);
    assert_eq!(status, b"I");
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "RSS grew by {growth} KiB with a {} MB result",
        bytes >> 20
    );
    // The connection is still good for the next statement.
    raw.send(&query("SELECT 1")).await;
    raw.read_until(b'Z').await;
}

/// Runs `n` `SELECT tenant FROM whoami` on `client`, checking the tenant; returns errors.
async fn work(client: &tokio_postgres::Client, tenant: &str, n: usize) -> Vec<String> {
    let mut errors = Vec::new();
    for _ in 0..n {
        match simple_value(client, "SELECT tenant FROM whoami").await {
            Ok(Some(seen)) if seen == tenant => {}
            Ok(other) => errors.push(format!("{tenant} read {other:?}")),
            Err(e) => errors.push(describe(&e)),
        }
    }
    errors
}

/// Connects as `tenant`, retrying while the proxy still counts a client that just left.
async fn connect_soon(proxy: &TestProxy, tenant: &str) -> tokio_postgres::Client {
    let started = Instant::now();
    loop {
        match proxy.connect("app", Naming::Options, tenant).await {
            Ok(c) => return c,
            Err(e) if started.elapsed() < Duration::from_secs(3) => {
                assert_eq!(e.code(), Some("53300"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a freed slot was never reused: {e}"),
        }
    }
}

fn assert_refused(result: Result<tokio_postgres::Client, ConnectError>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: admitted over the cap"),
        Err(e) => assert_eq!(e.code(), Some("53300"), "{what}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_connections_refuses_the_excess_and_serves_the_admitted() {
    let proxy = Arc::new(TestProxy::start_with(
        ProxyOptions::default().proxy_line("max_client_connections = 3"),
    ));
    let mut admitted = Vec::new();
    for tenant in ["t1", "t2", "t3"] {
        let c = proxy
            .connect("app", Naming::Options, tenant)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        admitted.push((tenant, Arc::new(c)));
    }
    let workers: Vec<_> = admitted
        .iter()
        .map(|(tenant, c)| {
            let (tenant, c) = (tenant.to_string(), c.clone());
            tokio::spawn(async move { work(&c, &tenant, 100).await })
        })
        .collect();
    let floods: Vec<_> = (0..30)
        .map(|i| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let tenant = ["t1", "t2", "t4"][i % 3];
                proxy
                    .connect("app", Naming::Options, tenant)
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for f in floods {
        match f.await.expect("flood task") {
            Ok(()) => panic!("a client over max_client_connections was admitted"),
            Err(e) => assert_eq!(e.code(), Some("53300"), "{e}"),
        }
    }
    for w in workers {
        let errors = w.await.expect("worker");
        assert!(errors.is_empty(), "an admitted client was hurt: {errors:?}");
    }
    // A client that leaves frees its slot.
    admitted.pop();
    let again = connect_soon(&proxy, "t4").await;
    assert!(work(&again, "t4", 3).await.is_empty());
    assert_refused(proxy.connect("app", Naming::Options, "t4").await, "4th");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_max_client_connections_refuses_only_that_tenant() {
    let proxy = TestProxy::start_with(ProxyOptions::default().extra(
        "[tenants.capped]\nbackend = \"main\"\nsearch_path = [\"t1\", \"public\"]\n\
         max_client_connections = 2\n",
    ));
    let a = proxy.connect("app", Naming::Options, "capped").await;
    let b = proxy.connect("app", Naming::Options, "capped").await;
    let (a, b) = (a.expect("first capped"), b.expect("second capped"));
    let third = proxy.connect("app", Naming::Options, "capped").await;
    match &third {
        Err(e) => {
            assert_eq!(e.code(), Some("53300"), "{e}");
            assert!(e.message().unwrap_or("").contains("capped"), "{e}");
        }
        Ok(_) => panic!("a third client of a tenant capped at 2 was admitted"),
    }
    // Other tenants are not affected, and the admitted keep working.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(
            proxy
                .connect("app", Naming::Options, "t2")
                .await
                .expect("t2"),
        );
    }
    for c in &others {
        assert!(work(c, "t2", 3).await.is_empty());
    }
    assert!(work(&a, "t1", 10).await.is_empty());
    assert!(work(&b, "t1", 10).await.is_empty());
    drop(a);
    let c = connect_soon(&proxy, "capped").await;
    assert!(work(&c, "t1", 3).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_cannot_starve_a_quiet_one() {
    let proxy = Arc::new(TestProxy::start_with(ProxyOptions::default().pool_size(2)));
    let stop = Arc::new(AtomicBool::new(false));
    // Transactions the noisy tenant has completed.
    let done = Arc::new(AtomicU64::new(0));
    let mut noisy = Vec::new();
    for _ in 0..20 {
        let c = proxy
            .connect("app", Naming::Options, "t1")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = stop.clone();
        let done = done.clone();
        noisy.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                if let Err(e) = c.simple_query("SELECT pg_sleep(0.005)").await {
                    panic!("noisy client: {}", describe(&e));
                }
                latencies.push(started.elapsed());
                done.fetch_add(1, Ordering::SeqCst);
            }
            latencies
        }));
    }
    let quiet = proxy
        .connect("app", Naming::Options, "t2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The flood is on: every noisy client has had a turn, the rest of the time they queue.
    eventually(
        Duration::from_secs(30),
        "the noisy tenant floods",
        || async { done.load(Ordering::SeqCst) >= 40 },
    )
    .await;
    let mut quiet_latencies = Vec::new();
    // For each quiet query: how many noisy transactions completed meanwhile. An ordering
    // fact, not a latency: with round-robin hand-off between tenants' queues, the quiet
    // client gets one of the two connections as soon as one is released, after at most the
    // two noisy transactions that held them (a few more for counting at the edges); behind a
    // single FIFO it would wait for most of the ~18 noisy clients queued ahead of it.
    let mut overtaken = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let before = done.load(Ordering::SeqCst);
        let seen = simple_value(&quiet, "SELECT tenant FROM whoami")
            .await
            .unwrap_or_else(|e| panic!("quiet client: {}", describe(&e)));
        overtaken.push(done.load(Ordering::SeqCst) - before);
        quiet_latencies.push(started.elapsed());
        assert_eq!(seen.as_deref(), Some("t2"));
    }
    stop.store(true, Ordering::SeqCst);
    let mut noisy_latencies = Vec::new();
    for n in noisy {
        noisy_latencies.extend(n.await.expect("noisy task"));
    }
    let q50 = percentile(&mut quiet_latencies, 50);
    let q99 = percentile(&mut quiet_latencies, 99);
    let n50 = percentile(&mut noisy_latencies, 50);
    let n99 = percentile(&mut noisy_latencies, 99);
    eprintln!(
        "quiet tenant (1 client, 50 queries): p50 {q50:?}, p99 {q99:?}, max {:?}; \
         noisy tenant (20 clients, {} queries): p50 {n50:?}, p99 {n99:?}",
        quiet_latencies.last().copied().unwrap_or_default(),
        noisy_latencies.len()
    );
    overtaken.sort();
    eprintln!("noisy transactions completed during each quiet one (sorted): {overtaken:?}");
    let median = overtaken[overtaken.len() / 2];
    assert!(
        median <= 4,
        "the quiet tenant waited behind the noisy tenant's queue: {overtaken:?}"
    );
}
