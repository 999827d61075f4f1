//! Tenants made on demand, from `[tenant_template]` or a `[directory]` row.
//!
//! A name is resolved at login (after authentication) and, for directory tenants, again at
//! the first checkout after its row's `ttl` ([`super::TenantRuntime::needs_recheck`]).
//! Its [`TenantRuntime`] behaves as a configured tenant's (stats, `SHOW`, `PAUSE`, state
//! identity) and lives in the active map while in use. [`Dynamic::sweep`] drops the ones
//! that have had no client and no server connection checked out for `server_idle_timeout`:
//! memory follows the tenants in use, not the tenants that exist. A dropped runtime gives
//! its logical pool back ([`crate::pool::Pool::remove_tenant`]); the next use makes a new
//! one with a fresh `state_id`, so no connection's cached state can match it.
//!
//! One `Dynamic` is shared by successive generations while the template, the directory
//! and the backends stay the same; otherwise a reload starts a new one and clients of the
//! old one resolve their tenant again at their next checkout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::directory::{Directory, DirectoryError};
use super::registry::{now_ms, on_demand_runtime, same_endpoint, Endpoint, Origin, TenantRuntime};
use crate::config::{Config, EndpointConfig, TemplateConfig, TenantConfig};
use crate::kinds::{ConnectFailure, KindCounts};
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;

/// Why a name is not a tenant (now).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown tenant")]
    Unknown,
    #[error(transparent)]
    Directory(DirectoryError),
}

impl ResolveError {
    /// What the client is told: `3D000` for an unknown name or an unusable row (as for a
    /// name no block defines), `08006` naming the directory when it cannot be asked.
    pub fn to_client(&self, name: &str) -> ErrorInfo {
        match self {
            ResolveError::Unknown | ResolveError::Directory(DirectoryError::Unknown) => {
                ErrorInfo::fatal(
                    sqlstate::INVALID_CATALOG_NAME,
                    format!("tenant \"{name}\" does not exist"),
                )
            }
            ResolveError::Directory(DirectoryError::Invalid(_)) => ErrorInfo::fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!("tenant \"{name}\" does not exist"),
            )
            .with_hint("its row in the tenant directory is invalid; the proxy's log says why"),
            ResolveError::Directory(DirectoryError::Down(_)) => ErrorInfo::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("could not look up tenant \"{name}\": the tenant directory is unavailable"),
            )
            .with_hint("the proxy's log says why; tenants looked up before keep working"),
        }
    }
}

struct Active {
    runtime: Arc<TenantRuntime>,
    /// When the sweep first found it unused (no client, nothing checked out).
    idle_since: Option<Instant>,
}

pub struct Dynamic {
    pub template: Option<Arc<TemplateConfig>>,
    pub directory: Option<Directory>,
    backends: Config,
    active: Mutex<HashMap<Arc<str>, Active>>,
    /// Endpoints of tenants made on demand that no configured tenant uses (a template's
    /// `database = "app_{tenant}"`): alive while a runtime holds them.
    endpoints: Mutex<HashMap<EndpointConfig, Weak<Endpoint>>>,
    connect_failures: Arc<KindCounts<ConnectFailure>>,
}

impl Dynamic {
    /// For a (re)loaded `config`: `old` when it serves the same template, directory and
    /// backends; a new one when they changed; none when neither is configured.
    pub fn for_config(
        config: &Config,
        old: Option<&Arc<Dynamic>>,
        connect_failures: &Arc<KindCounts<ConnectFailure>>,
    ) -> Option<Arc<Dynamic>> {
        if config.tenant_template.is_none() && config.directory.is_none() {
            return None;
        }
        if let Some(old) = old.filter(|o| o.serves_same(config)) {
            return Some(old.clone());
        }
        let directory = config.directory.as_ref().map(|d| {
            let backend = config.backends[&d.backend].clone();
            let probe = TenantConfig::plain("", &backend.name, Vec::new());
            Directory::new(d.clone(), config.endpoint_for(&probe))
        });
        Some(Arc::new(Dynamic {
            template: config.tenant_template.clone(),
            directory,
            backends: Config {
                tenants: Default::default(),
                users: Default::default(),
                peers: Default::default(),
                ..config.clone()
            },
            active: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            connect_failures: connect_failures.clone(),
        }))
    }

    fn serves_same(&self, config: &Config) -> bool {
        self.template.as_deref() == config.tenant_template.as_deref()
            && self.directory.as_ref().map(|d| &*d.config) == config.directory.as_deref()
            && self.backends.backends == config.backends
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant `name` if it is in use.
    pub fn get(&self, name: &str) -> Option<Arc<TenantRuntime>> {
        self.lock().get(name).map(|a| a.runtime.clone())
    }

    /// The tenants in use.
    pub fn active(&self) -> Vec<Arc<TenantRuntime>> {
        self.lock().values().map(|a| a.runtime.clone()).collect()
    }

    /// How many tenants are in use.
    pub fn active_count(&self) -> usize {
        self.lock().len()
    }

    /// The endpoints of the tenants in use that no configured tenant shares.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| e.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// Directory first, then the template (SPEC's order after `[tenants]`).
    pub async fn resolve(
        &self,
        name: &str,
        config: &Config,
        statics: &[Arc<Endpoint>],
    ) -> Result<Arc<TenantRuntime>, ResolveError> {
        if let Some(directory) = &self.directory {
            match directory.find(name, config, &config.proxy).await {
                Ok(tenant) => {
                    let until = now_ms().saturating_add(directory.config.ttl.as_millis() as u64);
                    return Ok(self.install(&tenant, Origin::Directory, until, statics));
                }
                Err(DirectoryError::Unknown) if self.template.is_some() => {}
                Err(e) => {
                    if !matches!(e, DirectoryError::Down(_)) {
                        self.forget(name, Origin::Directory);
                    }
                    return Err(ResolveError::Directory(e));
                }
            }
        }
        match &self.template {
            Some(template) if template.serves(name) => {
                if let Some(t) = self.get(name).filter(|t| t.origin == Origin::Template) {
                    return Ok(t);
                }
                let tenant = Arc::new(template.tenant(name));
                Ok(self.install(&tenant, Origin::Template, u64::MAX, statics))
            }
            _ => Err(ResolveError::Unknown),
        }
    }

    /// The runtime for `tenant`: the one in use when its configuration is the same (its
    /// validity extended), else a new one (a new `state_id`) in its place.
    fn install(
        &self,
        tenant: &Arc<TenantConfig>,
        origin: Origin,
        valid_until_ms: u64,
        statics: &[Arc<Endpoint>],
    ) -> Arc<TenantRuntime> {
        let mut active = self.lock();
        let previous = active.get(tenant.name.as_str()).map(|a| a.runtime.clone());
        if let Some(p) = previous
            .as_ref()
            .filter(|p| p.origin == origin && *p.config == **tenant)
        {
            p.valid_until_ms
                .store(valid_until_ms, std::sync::atomic::Ordering::Relaxed);
            return p.clone();
        }
        let endpoint = self.endpoint_for(tenant, statics);
        let runtime = Arc::new(on_demand_runtime(
            tenant,
            endpoint,
            previous.as_deref(),
            origin,
            valid_until_ms,
        ));
        if previous.is_none() {
            tracing::info!(tenant = %tenant.name, origin = origin.as_str(), "tenant in use");
        }
        active.insert(
            tenant.name.as_str().into(),
            Active {
                runtime: runtime.clone(),
                idle_since: None,
            },
        );
        runtime
    }

    /// A configured tenant's endpoint when it is the same server, database and login; else
    /// one shared by the tenants made on demand that need it.
    fn endpoint_for(&self, tenant: &TenantConfig, statics: &[Arc<Endpoint>]) -> Arc<Endpoint> {
        let ep = self.backends.endpoint_for(tenant);
        if let Some(e) = statics.iter().find(|e| same_endpoint(&e.config, &ep)) {
            return e.clone();
        }
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(&ep).and_then(Weak::upgrade) {
            return e;
        }
        let e = super::registry::new_endpoint(ep.clone(), &self.connect_failures);
        map.insert(ep, Arc::downgrade(&e));
        e
    }

    /// Drops `name`'s runtime of that origin from the active map (its row is gone): its
    /// clients find out at their next checkout.
    fn forget(&self, name: &str, origin: Origin) {
        let mut active = self.lock();
        if active.get(name).is_some_and(|a| a.runtime.origin == origin) {
            active.remove(name);
        }
    }

    /// Drops the tenants unused (no client holds their runtime, nothing is checked out)
    /// for `idle_after`; returns how many.
    pub fn sweep(&self, idle_after: Duration) -> usize {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut active = self.lock();
        active.retain(|_, a| {
            let unused = Arc::strong_count(&a.runtime) == 1
                && a.runtime
                    .endpoint
                    .pool
                    .tenant_stats(a.runtime.pool_id)
                    .in_use
                    == 0;
            if !unused {
                a.idle_since = None;
                return true;
            }
            let since = *a.idle_since.get_or_insert(now);
            if now.duration_since(since) < idle_after {
                return true;
            }
            dropped.push(a.runtime.clone());
            false
        });
        drop(active);
        let n = dropped.len();
        if n > 0 {
            tracing::debug!(tenants = n, "dropped idle tenants made on demand");
        }
        n
    }
}
