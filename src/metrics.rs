//! Prometheus metrics: the text exposition format at `/metrics` on `metrics_listen`, served
//! by a deliberately tiny HTTP/1.1 responder (one request per connection, `GET`/`HEAD`),
//! which also answers `/health` (`200 ok` while the process runs) for liveness checks.
//!
//! Per-tenant series carry a `tenant` label. With `metrics_tenant_labels = false` the same
//! metric names are emitted once, summed over all tenants (so `sum(...)` queries work in
//! both modes) and the per-tenant-only families are left out. Cardinality, per tenant:
//! 21 series (7 counters and gauges, 2 server-connection states, 1 paused flag, a histogram
//! of 9 buckets + sum + count), plus one per non-zero login-failure reason. Measured with
//! 10,000 tenants (28-character names): 210,014 series, 15.7 MB per scrape, ~60 ms to
//! render (release build); without tenant labels: 34 series, 3 KB. Turn the labels off
//! there, or drop `pgtenant_checkout_wait_seconds_bucket` with `metric_relabel_configs`.
//! Tenants made on demand (`[tenant_template]`, `[directory]`) get series of their own only
//! for the [`DYNAMIC_TENANT_SERIES`] with the most clients (then transactions); the rest are
//! summed under `tenant="_other"`, so a directory of 100,000 tenants cannot blow up a
//! scrape. See `docs/OPERATIONS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::kinds::{Kind, KindCounts};
use crate::shared::Shared;
use crate::tenant::snapshot::{tenant_snapshots, TenantSnapshot};
use crate::tenant::stats::{HistogramSnapshot, LoginFailure, WAIT_BUCKETS_MICROS};

/// Largest request head the responder reads.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listener` until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "serving /metrics, /health and /ready");
    }
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(respond(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers one HTTP request and closes the connection.
async fn respond(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render(&shared)),
        ("GET" | "HEAD", "/health") => ("200 OK", "ok\n".to_string()),
        ("GET" | "HEAD", "/ready") => match readiness(&shared).await {
            Ok(()) => ("200 OK", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", why),
        },
        (_, "/metrics" | "/health" | "/ready") => {
            ("405 Method Not Allowed", "use GET\n".to_string())
        }
        _ => (
            "404 Not Found",
            "pgtenant serves /metrics, /health and /ready\n".to_string(),
        ),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// How long `/ready` waits for a backend to accept a TCP connection.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// `/ready`: the proxy accepts clients (not shutting down) and every backend is reachable:
/// not marked down by failed connection attempts, and accepting a TCP connection now.
/// `Err`: why not, one line per problem.
async fn readiness(shared: &Shared) -> Result<(), String> {
    if shared.shutdown.is_cancelled() {
        return Err("shutting down\n".into());
    }
    let generation = shared.current();
    let mut problems = String::new();
    let mut seen = std::collections::HashSet::new();
    for endpoint in &generation.registry.all_endpoints() {
        let config = &endpoint.config;
        if endpoint.health.check(config).is_err() {
            let _ = writeln!(problems, "backend {:?} is marked down", config.backend);
            continue;
        }
        if !seen.insert((config.host.clone(), config.port)) {
            continue;
        }
        let connect = TcpStream::connect((config.host.as_str(), config.port));
        match tokio::time::timeout(READY_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = writeln!(problems, "backend {:?} is unreachable: {e}", config.backend);
            }
            Err(_) => {
                let _ = writeln!(problems, "backend {:?} did not answer", config.backend);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// How many tenants made on demand get a `tenant` label of their own (the busiest).
pub const DYNAMIC_TENANT_SERIES: usize = 100;

/// The label of the series that sums the other tenants made on demand.
pub const OTHER_TENANTS: &str = "_other";

/// Configured tenants, then the [`DYNAMIC_TENANT_SERIES`] busiest tenants made on demand,
/// then (if any are left) their sum as [`OTHER_TENANTS`].
fn bounded(tenants: Vec<TenantSnapshot>) -> Vec<TenantSnapshot> {
    let (mut dynamic, mut shown): (Vec<_>, Vec<_>) =
        tenants.into_iter().partition(|t| t.origin != "config");
    if dynamic.len() <= DYNAMIC_TENANT_SERIES {
        shown.extend(dynamic);
        return shown;
    }
    dynamic.sort_by_key(|t| std::cmp::Reverse((t.clients, t.transactions)));
    let rest = dynamic.split_off(DYNAMIC_TENANT_SERIES);
    let mut other = rest[0].clone();
    other.name = OTHER_TENANTS.to_string();
    other.paused = false;
    for t in &rest[1..] {
        other.add(t);
    }
    shown.extend(dynamic);
    shown.push(other);
    shown
}

/// The metrics text, as `/metrics` answers it now.
pub fn render(shared: &Shared) -> String {
    let generation = shared.current();
    let tenants = tenant_snapshots(&generation.registry);
    let tenants = if generation.config.proxy.metrics_tenant_labels {
        bounded(tenants)
    } else {
        tenants
    };
    let mut w = Writer::default();
    render_proxy(&mut w, shared, generation.id);
    render_servers(&mut w, &generation.registry);
    render_pinned(
        &mut w,
        &generation.registry,
        generation.config.proxy.metrics_tenant_labels,
    );
    if generation.config.proxy.metrics_tenant_labels {
        render_tenants(&mut w, &tenants);
    } else {
        render_totals(&mut w, &tenants);
    }
    w.out
}

fn render_proxy(w: &mut Writer, shared: &Shared, generation: u64) {
    w.family("pgtenant_info", "gauge", "Build information.");
    w.sample(
        "pgtenant_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    w.family(
        "pgtenant_config_generation",
        "gauge",
        "Configuration generation in force (1 at start, +1 per reload).",
    );
    w.sample("pgtenant_config_generation", &[], generation);
    w.family(
        "pgtenant_config_reload_failures_total",
        "counter",
        "Reloads refused because the file was bad.",
    );
    w.sample(
        "pgtenant_config_reload_failures_total",
        &[],
        shared.reload_failures.load(Ordering::Relaxed),
    );
    w.family(
        "pgtenant_clients_parked",
        "gauge",
        "Idle clients parked (no task; their sockets wait in one epoll set).",
    );
    let parked = shared.clients_parked.load(Ordering::Relaxed);
    w.sample("pgtenant_clients_parked", &[], parked as u64);
    w.family(
        "pgtenant_logins_pending",
        "gauge",
        "Connections still logging in (at most max_pending_logins; not counted as clients).",
    );
    let pending = shared.admission.pending();
    w.sample("pgtenant_logins_pending", &[], pending as u64);
    w.family(
        "pgtenant_login_failures_total",
        "counter",
        "Failed client logins by reason (any tenant or none).",
    );
    for reason in LoginFailure::ALL {
        let n = shared.login_failures.get(reason);
        w.sample(
            "pgtenant_login_failures_total",
            &[("reason", reason.as_str())],
            n,
        );
    }
    render_kinds(
        w,
        "pgtenant_session_errors_total",
        "Client sessions that ended with an error, by kind.",
        &shared.session_errors,
    );
    render_kinds(
        w,
        "pgtenant_server_connect_failures_total",
        "Failed attempts to open a server connection, by kind.",
        &shared.current().registry.connect_failures,
    );
}

/// A counter family with one series per kind (a fixed set: zeros included).
fn render_kinds<K: Kind>(w: &mut Writer, name: &str, help: &str, counts: &KindCounts<K>) {
    w.family(name, "counter", help);
    for (kind, n) in counts.iter() {
        w.sample(name, &[("kind", kind.label())], n);
    }
}

/// Pinned clients per tenant and reason (the clients, not the reasons, are few: every
/// tenant and reason is listed, so a pin that ends shows as 0).
fn render_pinned(w: &mut Writer, registry: &crate::tenant::Registry, by_tenant: bool) {
    use crate::protocol::sql::pin;
    w.family(
        "pgtenant_clients_pinned",
        "gauge",
        "Clients kept on their server connection by session objects, by tenant and reason.",
    );
    let mut tenants = registry.all_tenants();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    let count = |t: &crate::tenant::TenantRuntime, i: usize| {
        t.stats.pinned_by[i].load(Ordering::Relaxed) as u64
    };
    // Bounded as the other per-tenant series: configured tenants, and tenants made on demand
    // only while few (else summed under `_other`).
    let dynamic = tenants
        .iter()
        .filter(|t| t.origin != crate::tenant::Origin::Configured)
        .count();
    let own_series = |t: &crate::tenant::TenantRuntime| {
        t.origin == crate::tenant::Origin::Configured || dynamic <= DYNAMIC_TENANT_SERIES
    };
    for (i, reason) in pin::NAMES.iter().enumerate() {
        if by_tenant {
            for t in tenants.iter().filter(|t| own_series(t)) {
                let labels = [("tenant", &*t.name), ("reason", *reason)];
                w.sample("pgtenant_clients_pinned", &labels, count(t, i));
            }
            if dynamic > DYNAMIC_TENANT_SERIES {
                let other = tenants
                    .iter()
                    .filter(|t| !own_series(t))
                    .map(|t| count(t, i));
                let labels = [("tenant", OTHER_TENANTS), ("reason", *reason)];
                w.sample("pgtenant_clients_pinned", &labels, other.sum());
            }
        } else {
            let total = tenants.iter().map(|t| count(t, i)).sum();
            w.sample("pgtenant_clients_pinned", &[("reason", reason)], total);
        }
    }
}

/// Server connections per backend and state (summed over the backend's endpoints).
fn render_servers(w: &mut Writer, registry: &crate::tenant::Registry) {
    let endpoints = registry.all_endpoints();
    let mut by_backend: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for endpoint in &endpoints {
        let (open, idle) = endpoint.pool.counts();
        let e = by_backend
            .entry(endpoint.config.backend.as_str())
            .or_default();
        e.0 += open - idle;
        e.1 += idle;
    }
    w.family(
        "pgtenant_server_connections",
        "gauge",
        "Server connections by backend and state (active includes ones being opened).",
    );
    for (backend, (active, idle)) in by_backend {
        w.sample(
            "pgtenant_server_connections",
            &[("backend", backend), ("state", "active")],
            active as u64,
        );
        w.sample(
            "pgtenant_server_connections",
            &[("backend", backend), ("state", "idle")],
            idle as u64,
        );
    }
}

/// The families that exist with and without the tenant label: name, type, help, value.
type Simple = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TenantSnapshot) -> u64,
);

const SIMPLE: [Simple; 8] = [
    ("pgtenant_clients", "gauge", "Connected clients.", |t| {
        t.clients
    }),
    (
        "pgtenant_clients_waiting",
        "gauge",
        "Clients waiting for a server connection or for RESUME.",
        |t| t.waiting + t.paused_waiting,
    ),
    (
        "pgtenant_paused",
        "gauge",
        "1 while the tenant is paused (without tenant labels: paused tenants).",
        |t| u64::from(t.paused),
    ),
    (
        "pgtenant_transactions_total",
        "counter",
        "Transactions finished (ReadyForQuery idle relayed).",
        |t| t.transactions,
    ),
    (
        "pgtenant_queries_total",
        "counter",
        "Simple queries and extended-protocol Executes.",
        |t| t.queries,
    ),
    (
        "pgtenant_bytes_received_total",
        "counter",
        "Bytes received from clients after login.",
        |t| t.bytes_received,
    ),
    (
        "pgtenant_bytes_sent_total",
        "counter",
        "Bytes sent to clients after login.",
        |t| t.bytes_sent,
    ),
    (
        "pgtenant_sets_injected_total",
        "counter",
        "Checkouts that sent a state prelude (SET search_path ...).",
        |t| t.preludes,
    ),
];

const WAIT: &str = "pgtenant_checkout_wait_seconds";
const WAIT_HELP: &str =
    "Time from wanting a server connection to holding one (not counting pauses).";

fn render_tenants(w: &mut Writer, tenants: &[TenantSnapshot]) {
    for (name, kind, help, value) in SIMPLE {
        w.family(name, kind, help);
        for t in tenants {
            w.sample(name, &[("tenant", &t.name)], value(t));
        }
    }
    let name = "pgtenant_tenant_server_connections";
    w.family(
        name,
        "gauge",
        "Server connections of the tenant: in use, and idle holding its state.",
    );
    for t in tenants {
        w.sample(
            name,
            &[("tenant", &t.name), ("state", "active")],
            t.server_in_use,
        );
        w.sample(
            name,
            &[("tenant", &t.name), ("state", "idle")],
            t.server_idle,
        );
    }
    w.family(WAIT, "histogram", WAIT_HELP);
    for t in tenants {
        w.histogram(WAIT, Some(&t.name), &t.checkout_wait);
    }
    let name = "pgtenant_tenant_login_failures_total";
    w.family(
        name,
        "counter",
        "Failed logins naming the tenant, by reason (non-zero only).",
    );
    for t in tenants {
        for (reason, n) in &t.login_failures {
            w.sample(
                name,
                &[("tenant", &t.name), ("reason", reason.as_str())],
                *n,
            );
        }
    }
}

fn render_totals(w: &mut Writer, tenants: &[TenantSnapshot]) {
    for (name, kind, help, value) in SIMPLE {
        w.family(name, kind, help);
        w.sample(name, &[], tenants.iter().map(value).sum());
    }
    let mut total = HistogramSnapshot {
        cumulative: vec![0; WAIT_BUCKETS_MICROS.len() + 1],
        ..Default::default()
    };
    for t in tenants {
        for (sum, n) in total.cumulative.iter_mut().zip(&t.checkout_wait.cumulative) {
            *sum += n;
        }
        total.sum_micros += t.checkout_wait.sum_micros;
        total.count += t.checkout_wait.count;
    }
    w.family(WAIT, "histogram", WAIT_HELP);
    w.histogram(WAIT, None, &total);
}

/// Builds exposition text.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn histogram(&mut self, name: &str, tenant: Option<&str>, h: &HistogramSnapshot) {
        let bounds: Vec<String> = WAIT_BUCKETS_MICROS
            .iter()
            .map(|&us| format!("{}", us as f64 / 1e6))
            .chain(std::iter::once("+Inf".to_string()))
            .collect();
        let bucket = format!("{name}_bucket");
        for (le, n) in bounds.iter().zip(&h.cumulative) {
            match tenant {
                Some(t) => self.sample(&bucket, &[("tenant", t), ("le", le)], *n),
                None => self.sample(&bucket, &[("le", le)], *n),
            }
        }
        let labels: Vec<(&str, &str)> = tenant.map(|t| ("tenant", t)).into_iter().collect();
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(&labels);
        let _ = writeln!(self.out, " {}", h.sum_micros as f64 / 1e6);
        self.sample(&format!("{name}_count"), &labels, h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut w = Writer::default();
        w.sample("m", &[("tenant", "a\"b\\c\nd")], 3);
        assert_eq!(w.out, "m{tenant=\"a\\\"b\\\\c\\nd\"} 3\n");
    }

    #[test]
    fn histogram_lines() {
        let mut w = Writer::default();
        let h = HistogramSnapshot {
            cumulative: vec![1, 1, 1, 1, 1, 1, 1, 1, 2],
            sum_micros: 1_500_000,
            count: 2,
        };
        w.histogram("x", Some("t"), &h);
        assert!(
            w.out.starts_with("x_bucket{tenant=\"t\",le=\"0.001\"} 1\n"),
            "{}",
            w.out
        );
        assert!(w.out.contains("x_bucket{tenant=\"t\",le=\"+Inf\"} 2\n"));
        assert!(w.out.contains("x_sum{tenant=\"t\"} 1.5\n"));
        assert!(w.out.ends_with("x_count{tenant=\"t\"} 2\n"));
    }
}
