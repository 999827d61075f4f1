use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

struct Fake {
    id: u32,
    state: Option<&'static str>,
    broken: Arc<AtomicBool>,
}

impl Poolable for Fake {
    type State = &'static str;
    fn state(&self) -> Option<&&'static str> {
        self.state.as_ref()
    }
    fn reusable(&mut self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }
}

fn fake(id: u32, state: &'static str) -> Fake {
    Fake {
        id,
        state: Some(state),
        broken: Arc::new(AtomicBool::new(false)),
    }
}

const T: Duration = Duration::from_secs(5);

async fn take(pool: &Arc<Pool<Fake>>, t: TenantId, want: &'static str, id: u32) -> Pooled<Fake> {
    match pool.checkout(t, &want, T).await.unwrap() {
        Lease::Ready(c) => c,
        Lease::Connect(p) => p.fulfil(fake(id, want)),
    }
}

/// A task waiting for a connection (a new one gets id 9).
fn waiter(
    pool: &Arc<Pool<Fake>>,
    t: TenantId,
    want: &'static str,
) -> tokio::task::JoinHandle<Pooled<Fake>> {
    let pool = pool.clone();
    tokio::spawn(async move { take(&pool, t, want, 9).await })
}

#[tokio::test]
async fn prefers_idle_connection_with_same_state() {
    let pool = Pool::<Fake>::new(3);
    let a = pool.add_tenant(None);
    let b = pool.add_tenant(None);
    let ca = take(&pool, a, "a", 1).await;
    let cb = take(&pool, b, "b", 2).await;
    drop(ca);
    drop(cb);
    let again = take(&pool, a, "a", 9).await;
    assert_eq!(
        again.id, 1,
        "affinity picks the connection carrying a's state"
    );
    assert_eq!(pool.tenant_stats(a).affinity_hits, 1);
    let other = take(&pool, b, "x", 9).await;
    assert_eq!(other.id, 2, "else any idle connection, not a new one");
    assert_eq!(pool.counts(), (2, 0));
}

#[tokio::test]
async fn caps_pool_and_tenant_and_times_out() {
    let pool = Pool::<Fake>::new(2);
    let a = pool.add_tenant(Some(1));
    let b = pool.add_tenant(None);
    let _ca = take(&pool, a, "a", 1).await;
    let err = pool
        .checkout(a, &"a", Duration::from_millis(20))
        .await
        .err();
    assert_eq!(err, Some(PoolError::Timeout), "tenant cap of 1");
    let _cb = take(&pool, b, "b", 2).await;
    let err = pool
        .checkout(b, &"b", Duration::from_millis(20))
        .await
        .err();
    assert_eq!(err, Some(PoolError::Timeout), "pool size of 2");
    assert_eq!(
        pool.tenant_stats(b).waiting,
        0,
        "a timed-out waiter is not counted"
    );
}

/// Waits end at their own deadline, also one shorter than a wait already queued (after a
/// reload shortened the timeout), and waits keep timing out after the pool had none. The
/// clock is tokio's paused one: nothing here depends on real time.
#[tokio::test(start_paused = true)]
async fn waits_expire_at_their_own_deadline() {
    let pool = Pool::<Fake>::new(1);
    let a = pool.add_tenant(None);
    let held = take(&pool, a, "a", 1).await;
    let start = tokio::time::Instant::now();
    let long = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(a, &"a", Duration::from_secs(60)).await.err() })
    };
    tokio::task::yield_now().await;
    let short = pool.checkout(a, &"a", Duration::from_secs(1)).await.err();
    assert_eq!(short, Some(PoolError::Timeout));
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the short wait ended first"
    );
    assert!(!long.is_finished());
    assert_eq!(long.await.unwrap(), Some(PoolError::Timeout));
    assert!(
        start.elapsed() >= Duration::from_secs(60),
        "the long wait ran its course"
    );
    let again = pool.checkout(a, &"a", Duration::from_secs(1)).await.err();
    assert_eq!(again, Some(PoolError::Timeout), "a new expiry task");
    drop(held);
    assert!(pool.checkout(a, &"a", Duration::from_secs(1)).await.is_ok());
}

#[tokio::test]
async fn released_connections_go_round_robin_across_tenants() {
    let pool = Pool::<Fake>::new(1);
    let noisy = pool.add_tenant(None);
    let quiet = pool.add_tenant(None);
    let held = take(&pool, noisy, "n", 1).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Five noisy waiters queue first, then one quiet waiter.
    for (i, t) in [noisy, noisy, noisy, noisy, noisy, quiet]
        .into_iter()
        .enumerate()
    {
        let pool = pool.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let c = take(&pool, t, "x", 10 + i as u32).await;
            order.lock().unwrap().push(t);
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(c);
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let quiet_at = order.iter().position(|&t| t == quiet).unwrap();
    assert!(
        quiet_at <= 1,
        "quiet tenant served second at the latest, got order {order:?}"
    );
}

#[tokio::test]
async fn a_released_connection_stays_with_its_tenant_up_to_a_fair_share() {
    let pool = Pool::<Fake>::new(2);
    let a = pool.add_tenant(None);
    let b = pool.add_tenant(None);
    let held_a = take(&pool, a, "a", 1).await;
    let held_b = take(&pool, b, "b", 2).await;
    // b's waiter queues first, then a's.
    let wait_b = waiter(&pool, b, "b");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let wait_a = waiter(&pool, a, "a");
    tokio::time::sleep(Duration::from_millis(10)).await;
    // a holds 0 of its share of 1 once it releases: its own waiter gets the connection
    // (already in a's state), although b's waiter came first.
    drop(held_a);
    let got_a = wait_a.await.unwrap();
    assert_eq!(got_a.id, 1);
    drop(held_b);
    assert_eq!(wait_b.await.unwrap().id, 2, "and b's to b's");
    drop(got_a);

    // Over its share, a tenant's released connection goes round-robin: a holds both,
    // b waits (first), then a; a's release goes to b.
    let pool = Pool::<Fake>::new(2);
    let a = pool.add_tenant(None);
    let b = pool.add_tenant(None);
    let first = take(&pool, a, "a", 1).await;
    let _second = take(&pool, a, "a", 2).await;
    let wait_b = waiter(&pool, b, "b");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _wait_a = waiter(&pool, a, "a");
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(first);
    assert_eq!(
        wait_b.await.unwrap().id,
        1,
        "b gets a's connection: a has its share"
    );
}

#[tokio::test]
async fn broken_connections_are_dropped_and_free_their_slot() {
    let pool = Pool::<Fake>::new(1);
    let a = pool.add_tenant(None);
    let c = take(&pool, a, "a", 1).await;
    let flag = c.broken.clone();
    drop(c);
    flag.store(true, Ordering::Relaxed);
    let c = take(&pool, a, "a", 2).await;
    assert_eq!(c.id, 2, "the broken idle connection is never handed out");
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { take(&pool, a, "a", 3).await.id })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.discard();
    assert_eq!(
        waiter.await.unwrap(),
        3,
        "a discarded connection's slot goes to the waiter"
    );
}

#[tokio::test]
async fn unused_permit_returns_its_slot() {
    let pool = Pool::<Fake>::new(1);
    let a = pool.add_tenant(None);
    match pool.checkout(a, &"a", T).await.unwrap() {
        Lease::Connect(p) => drop(p),
        Lease::Ready(_) => panic!("empty pool has nothing ready"),
    }
    assert_eq!(pool.counts(), (0, 0));
    assert!(matches!(
        pool.checkout(a, &"a", T).await.unwrap(),
        Lease::Connect(_)
    ));
}

#[tokio::test]
async fn prune_drops_idle_connections() {
    let pool = Pool::<Fake>::new(2);
    let a = pool.add_tenant(None);
    let c1 = take(&pool, a, "a", 1).await;
    drop(c1);
    assert_eq!(pool.prune_idle(|_, _| false), 1);
    assert_eq!(pool.counts(), (0, 0));
}

#[tokio::test]
async fn warm_connections_are_idle_and_capped() {
    let pool = Pool::<Fake>::new(1);
    let a = pool.add_tenant(None);
    assert!(pool.add_idle(fake(1, "x")).is_ok());
    assert!(pool.add_idle(fake(2, "x")).is_err(), "the pool is full");
    assert_eq!(pool.counts(), (1, 1));
    assert_eq!(take(&pool, a, "a", 9).await.id, 1);
}

#[tokio::test]
async fn a_released_connection_goes_to_a_waiter_wanting_its_state_within_bounds() {
    let pool = Pool::<Fake>::new(1);
    let t = pool.add_tenant(None);
    let held = take(&pool, t, "x", 1).await;
    // Queue: wants "y", then "x", then "y", then "x".
    let mut waiters = Vec::new();
    for want in ["y", "x", "y", "x"] {
        waiters.push((want, waiter(&pool, t, want)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    // The connection carries "x": the second waiter gets it, passing the first once.
    let (_, second) = waiters.remove(1);
    let conn = second.await.unwrap();
    assert_eq!(conn.id, 1);
    drop(conn);
    // Still "x": the next "x" waiter (passing "y" once more: twice in all).
    let (_, fourth) = waiters.remove(2);
    let conn = fourth.await.unwrap();
    drop(conn);
    // The front waiter has been passed over twice: it is served now, whatever it wants.
    let (want, first) = waiters.remove(0);
    assert_eq!(want, "y");
    let conn = tokio::time::timeout(T, first).await.unwrap().unwrap();
    assert_eq!(conn.id, 1);
    drop(conn);
    let (_, last) = waiters.remove(0);
    tokio::time::timeout(T, last).await.unwrap().unwrap();
}

/// A removed tenant's slot is reused only once nothing is checked out through it: a guard
/// that comes back late must never count against the tenant that took the slot over.
#[tokio::test]
async fn a_removed_slot_is_reused_only_when_quiet() {
    let pool: Arc<Pool<Fake>> = Pool::new(4);
    let a = pool.add_tenant(Some(1));
    let held = take(&pool, a, "a", 1).await;
    pool.remove_tenant(a);
    let b = pool.add_tenant(Some(1));
    assert_ne!(a, b, "a still has a connection out: its slot is not free");
    drop(held);
    let c = pool.add_tenant(Some(1));
    assert_eq!(a, c, "quiet now: reused");
    assert_eq!(
        pool.tenant_stats(c),
        TenantStats::default(),
        "fresh counters"
    );
    let _c1 = take(&pool, c, "c", 2).await;
    assert_eq!(pool.tenant_stats(c).in_use, 1);
    assert_eq!(pool.tenant_slots(), (2, 0));
}
