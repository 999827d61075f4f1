//! Hot reload (SIGHUP and the console's `RELOAD`): read the config file again, validate it,
//! and swap in a new [`Generation`] without dropping anyone it does not concern.
//!
//! - A bad file changes nothing; the error (file, key, problem) is logged and returned.
//! - Endpoints and tenants that did not change keep their pools, idle connections and
//!   state identity ([`Registry::rebuild`]). A changed tenant gets a new state identity, so
//!   its clients' next checkout applies the new `search_path`/settings. Sessions look their
//!   tenant up afresh at each checkout after a reload.
//! - A removed tenant's clients finish the transaction they are in and are then closed
//!   (57P01); idle ones at once.
//! - A user removed, or no longer allowed its tenant, is closed at its next checkout.
//! - `listen`, `metrics_listen`, `max_client_connections` and `workers` need a restart: a changed value
//!   is logged and the running one kept.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Config, ConfigError, ProxyConfig, UserConfig, UserSecret};
use crate::shared::{Generation, Shared};
use crate::tenant::registry::same_tenant;
use crate::tenant::Registry;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (the proxy was started from an in-memory config)")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the config file failed: {0}")]
    Task(String),
}

/// Names added, removed and changed in one section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    fn between<T>(
        old: &BTreeMap<String, T>,
        new: &BTreeMap<String, T>,
        same: impl Fn(&T, &T) -> bool,
    ) -> Changes {
        let mut c = Changes::default();
        for (name, value) in new {
            match old.get(name) {
                None => c.added.push(name.clone()),
                Some(before) if !same(before, value) => c.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        c
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("unchanged");
        }
        let mut parts = Vec::new();
        for (sign, names) in [
            ("+", &self.added),
            ("-", &self.removed),
            ("~", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{sign}{}", names.join(",")));
            }
        }
        f.write_str(&parts.join(" "))
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// The generation now in force.
    pub generation: u64,
    pub tenants: Changes,
    pub backends: Changes,
    pub users: Changes,
    /// `[proxy]` keys that changed but need a restart (their running values are kept).
    pub needs_restart: Vec<&'static str>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generation {}: tenants {}; backends {}; users {}",
            self.generation, self.tenants, self.backends, self.users
        )?;
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; needs a restart to change: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Reads the config file again and applies it. A bad file keeps the old configuration.
pub async fn reload(shared: &Shared) -> Result<ReloadSummary, ReloadError> {
    let Some(path) = shared.config_path.clone() else {
        tracing::warn!("reload refused: {}", ReloadError::NoFile);
        return Err(ReloadError::NoFile);
    };
    let shown = path.display().to_string();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
    let result = match loaded {
        Ok(Ok(config)) => return Ok(apply(shared, config)),
        Ok(Err(e)) => Err(ReloadError::Config(e)),
        Err(e) => Err(ReloadError::Task(e.to_string())),
    };
    shared.reload_failures.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = &result {
        tracing::warn!(config = %shown, error = %e, "reload refused; keeping the current configuration");
    }
    result
}

/// Swaps in `config` (already validated) as the next generation.
pub fn apply(shared: &Shared, mut config: Config) -> ReloadSummary {
    let _serialised = shared.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
    let old = shared.current();
    let needs_restart = keep_restart_only(&old.config.proxy, &mut config.proxy);
    let registry = Registry::rebuild(&config, &old.registry);
    let summary = ReloadSummary {
        generation: old.id + 1,
        tenants: Changes::between(&old.config.tenants, &config.tenants, |a, b| {
            same_tenant(a, b)
        }),
        backends: Changes::between(&old.config.backends, &config.backends, |a, b| a == b),
        users: Changes::between(&old.config.users, &config.users, |a, b| same_user(a, b)),
        needs_restart,
    };
    let retired: Vec<_> = old
        .registry
        .endpoints
        .iter()
        .filter(|e| !registry.endpoints.iter().any(|n| Arc::ptr_eq(n, e)))
        .cloned()
        .collect();
    shared.install(Generation {
        id: old.id + 1,
        config: Arc::new(config),
        registry,
        loaded_at: SystemTime::now(),
    });
    // After the swap, so that woken sessions see the new generation.
    for name in &summary.tenants.removed {
        if let Some(t) = old.registry.tenants.get(name) {
            t.control.remove();
        }
    }
    if !summary.tenants.removed.is_empty() {
        for client in shared.clients.iter() {
            if summary
                .tenants
                .removed
                .iter()
                .any(|t| **t == *client.tenant)
            {
                client.remove();
            }
        }
    }
    for endpoint in &retired {
        // Idle connections of a pool nobody will check out from again. Connections in use
        // close when their pool is dropped, after their clients moved on.
        let closed = endpoint.pool.prune_idle(|_, _| false);
        tracing::info!(backend = %endpoint.config.backend, database = %endpoint.config.database,
            closed, "endpoint retired by reload");
    }
    for key in &summary.needs_restart {
        tracing::warn!(
            key,
            "changed in the config file; takes effect after a restart"
        );
    }
    tracing::info!(%summary, "configuration reloaded");
    summary
}

/// Puts the running values back for keys a reload cannot change; returns their names.
fn keep_restart_only(running: &ProxyConfig, new: &mut ProxyConfig) -> Vec<&'static str> {
    let mut kept = Vec::new();
    if new.listen != running.listen {
        new.listen = running.listen;
        kept.push("listen");
    }
    if new.metrics_listen != running.metrics_listen {
        new.metrics_listen = running.metrics_listen;
        kept.push("metrics_listen");
    }
    if new.workers != running.workers {
        new.workers = running.workers;
        kept.push("workers");
    }
    if new.max_client_connections != running.max_client_connections {
        new.max_client_connections = running.max_client_connections;
        kept.push("max_client_connections");
    }
    kept
}

fn same_user(a: &UserConfig, b: &UserConfig) -> bool {
    let same_secret = match (&a.secret, &b.secret) {
        (UserSecret::Plain { password: x, .. }, UserSecret::Plain { password: y, .. }) => x == y,
        (UserSecret::Scram(x), UserSecret::Scram(y)) => x == y,
        (UserSecret::Md5(x), UserSecret::Md5(y)) => x == y,
        _ => false,
    };
    a.name == b.name && a.tenants == b.tenants && same_secret
}
