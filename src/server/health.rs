//! Which endpoints are down. After [`MARK_AFTER`] connection attempts in a row have failed
//! an endpoint is marked down for a short, growing interval: checkouts that need a new
//! connection then fail at once (08006 naming the backend) instead of each waiting out
//! `server_connect_timeout` behind the others, and the server is not hammered with
//! reconnects. The first attempt after the interval goes through; success clears the mark,
//! failure doubles the interval (up to [`RETRY_MAX`]). PgBouncer's `server_login_retry`
//! behaves the same way; needing two failures keeps one slow login on a loaded server from
//! failing everybody else's for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::FailureReason;
use crate::config::EndpointConfig;

/// Failed attempts in a row (no success between) that mark an endpoint down.
pub const MARK_AFTER: u32 = 2;
/// The first interval once marked down.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest interval (short: clients get errors for at most this long after the server
/// is back).
pub const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Down {
    /// Failed attempts since the last success.
    failures: u32,
    retry_at: Instant,
    interval: Duration,
    /// Why the last attempt failed (for the hint of clients refused while marked down).
    reason: Option<FailureReason>,
}

/// Down marks by endpoint (host, port, database, user).
#[derive(Debug, Default)]
pub struct Health {
    down: Mutex<HashMap<(String, u16, String, String), Down>>,
}

fn key(endpoint: &EndpointConfig) -> (String, u16, String, String) {
    (
        endpoint.host.clone(),
        endpoint.port,
        endpoint.database.clone(),
        endpoint.user.clone(),
    )
}

impl Health {
    /// `Err(remaining)` while `endpoint` is marked down: do not try to connect.
    pub fn check(&self, endpoint: &EndpointConfig) -> Result<(), Duration> {
        let down = self.lock();
        match down.get(&key(endpoint)) {
            Some(d) if d.failures >= MARK_AFTER => {
                let now = Instant::now();
                if now < d.retry_at {
                    Err(d.retry_at - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// A connection attempt failed: count it; at [`MARK_AFTER`] in a row the endpoint is
    /// marked down, and each failed retry after an interval doubles it. Failures of attempts
    /// that were under way together do not stretch the interval.
    pub fn failed(&self, endpoint: &EndpointConfig) {
        self.failed_with(endpoint, None);
    }

    /// [`Health::failed`], remembering why (see [`Health::last_failure`]).
    pub fn failed_because(&self, endpoint: &EndpointConfig, reason: FailureReason) {
        self.failed_with(endpoint, Some(reason));
    }

    /// Why the last attempt failed, while attempts are failing.
    pub fn last_failure(&self, endpoint: &EndpointConfig) -> Option<FailureReason> {
        self.lock().get(&key(endpoint)).and_then(|d| d.reason)
    }

    fn failed_with(&self, endpoint: &EndpointConfig, reason: Option<FailureReason>) {
        let mut down = self.lock();
        let now = Instant::now();
        let d = down.entry(key(endpoint)).or_insert(Down {
            failures: 0,
            retry_at: now,
            interval: RETRY_FIRST,
            reason: None,
        });
        d.reason = reason.or(d.reason);
        d.failures = d.failures.saturating_add(1);
        if d.failures == MARK_AFTER {
            d.interval = RETRY_FIRST;
            d.retry_at = now + RETRY_FIRST;
        } else if d.failures > MARK_AFTER && now >= d.retry_at {
            d.interval = (d.interval * 2).min(RETRY_MAX);
            d.retry_at = now + d.interval;
        }
    }

    /// A connection attempt succeeded: the endpoint is up.
    pub fn succeeded(&self, endpoint: &EndpointConfig) {
        let mut down = self.lock();
        if !down.is_empty() {
            down.remove(&key(endpoint));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16, String, String), Down>> {
        // Every update is a single insert/assignment: a panic elsewhere leaves it consistent.
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointConfig {
        EndpointConfig {
            tls: crate::config::ServerTls::disabled(),
            pass_through: None,
            backend: "main".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            user: "app".into(),
            password: None,
            pool_size: 1,
            min_pool_size: 0,
        }
    }

    #[test]
    fn failures_in_a_row_mark_down_until_the_interval_passes_and_success_clears() {
        let health = Health::default();
        let ep = endpoint();
        assert!(health.check(&ep).is_ok());
        health.failed(&ep);
        assert!(
            health.check(&ep).is_ok(),
            "one failure alone does not mark it down"
        );
        health.succeeded(&ep);
        health.failed(&ep);
        assert!(health.check(&ep).is_ok(), "a success resets the count");
        health.failed(&ep);
        let remaining = health
            .check(&ep)
            .expect_err("down after two failures in a row");
        assert!(remaining <= RETRY_FIRST);
        // Failures of attempts that started together do not stretch the interval.
        health.failed(&ep);
        assert!(health.check(&ep).expect_err("still down") <= RETRY_FIRST);
        health.succeeded(&ep);
        assert!(health.check(&ep).is_ok());
    }

    #[test]
    fn a_failed_retry_doubles_the_interval_up_to_the_cap() {
        let health = Health::default();
        let ep = endpoint();
        health.failed(&ep);
        health.failed(&ep);
        for _ in 0..6 {
            // Pretend the interval has passed, then the retry fails too.
            if let Some(d) = health.lock().get_mut(&key(&ep)) {
                d.retry_at = Instant::now();
            }
            health.failed(&ep);
        }
        let d = health.lock()[&key(&ep)];
        assert_eq!(d.interval, RETRY_MAX);
    }
}
