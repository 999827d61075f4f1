//! The own endpoints of `[auth]` users: a user found by `auth_query` logs in to the server
//! as itself (SCRAM pass-through, see `server::passthrough`), so its server connections go
//! in a pool of their own, keyed by (backend, user), never shared with another user.
//!
//! An endpoint is made at the user's first login, is replaced when a login brings other
//! keys (the password changed), is dropped once no session uses it and it has no
//! connection left, and a reload that changes its backend gives it a new one. Inside it
//! each tenant the user acts as has its own logical pool and a [`TenantRuntime`] that
//! shares the tenant's state SQL, counters and controls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::registry::{Endpoint, TenantRuntime};
use crate::config::{BackendConfig, Config, PassThrough};
use crate::kinds::{ConnectFailure, KindCounts};
use crate::pool::Pool;

/// One user's endpoint on one backend.
struct UserEndpoint {
    backend: Arc<BackendConfig>,
    endpoint: Arc<Endpoint>,
    /// The user's runtime of each tenant it used, with the `state_id` of the tenant
    /// runtime it was made from (another after a reload changed the tenant).
    tenants: HashMap<String, (u64, Arc<TenantRuntime>)>,
}

/// The registry's map of `[auth]` users' endpoints.
#[derive(Default)]
pub struct UserEndpoints {
    map: Mutex<HashMap<(String, String), UserEndpoint>>,
}

impl UserEndpoints {
    /// The map for a reloaded config: entries whose backend is unchanged carry over.
    pub fn carry_over(&self, config: &Config) -> UserEndpoints {
        let mut map = self.lock();
        let kept = map
            .drain()
            .filter(|((backend, _), e)| {
                config
                    .backends
                    .get(backend)
                    .is_some_and(|b| *b == e.backend)
            })
            .collect();
        UserEndpoints {
            map: Mutex::new(kept),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), UserEndpoint>> {
        // Poisoned only if a login panicked while holding it; the map is still whole.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `tenant` as `user` (found by `auth_query`) uses it: on the user's own endpoint of
    /// the tenant's backend, logging in with `pass_through`. `login`: these keys come from
    /// a login just now, and replace other ones (the password changed); otherwise (a
    /// session refreshed after a reload) an existing endpoint of the user is used as it is.
    #[allow(clippy::too_many_arguments)]
    pub fn runtime(
        &self,
        config: &Config,
        tenant: &Arc<TenantRuntime>,
        user: &str,
        pass_through: &PassThrough,
        connect_failures: &Arc<KindCounts<ConnectFailure>>,
        login: bool,
    ) -> Arc<TenantRuntime> {
        let mut map = self.lock();
        let key = (tenant.config.backend.clone(), user.to_string());
        let endpoint_config = {
            let mut ep = config.endpoint_for(&tenant.config);
            // The client's own role, on the tenant's database, with the client's keys.
            ep.user = user.to_string();
            ep.password = None;
            ep.min_pool_size = 0;
            ep.pass_through = Some(pass_through.clone());
            ep
        };
        let current = map
            .get(&key)
            .is_some_and(|e| !login || *e.endpoint.config == endpoint_config);
        if !current {
            let entry = UserEndpoint {
                backend: config.backends[&tenant.config.backend].clone(),
                endpoint: Arc::new(Endpoint {
                    pool: Pool::new(endpoint_config.pool_size),
                    config: Arc::new(endpoint_config),
                    params: tokio::sync::OnceCell::new(),
                    health: crate::server::Health::default(),
                    listen: Default::default(),
                    connect_failures: connect_failures.clone(),
                }),
                tenants: HashMap::new(),
            };
            if let Some(old) = map.insert(key.clone(), entry) {
                old.endpoint.pool.prune_idle(|_, _| false);
            }
        }
        // Just inserted when missing.
        let entry = map.get_mut(&key).expect("user endpoint");
        let name = tenant.name.to_string();
        match entry.tenants.get(&name) {
            Some((state_id, rt)) if *state_id == tenant.state_id => rt.clone(),
            _ => {
                let rt = Arc::new(user_runtime(tenant, entry.endpoint.clone()));
                entry.tenants.insert(name, (tenant.state_id, rt.clone()));
                rt
            }
        }
    }

    /// Every user endpoint (to prune idle connections).
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.lock().values().map(|e| e.endpoint.clone()).collect()
    }

    /// Drops the endpoints no session uses and that have no server connection left.
    pub fn drop_unused(&self) {
        self.lock().retain(|_, e| {
            let in_use = e.tenants.values().any(|(_, rt)| Arc::strong_count(rt) > 1);
            in_use || e.endpoint.pool.counts().0 > 0
        });
    }

    /// How many users have an endpoint now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `tenant`'s runtime on a user's own endpoint: its state SQL, counters and controls, a
/// logical pool of its own there.
fn user_runtime(tenant: &TenantRuntime, endpoint: Arc<Endpoint>) -> TenantRuntime {
    TenantRuntime {
        name: tenant.name.clone(),
        config: tenant.config.clone(),
        pool_id: endpoint
            .pool
            .add_tenant(tenant.config.max_server_connections),
        endpoint,
        state_id: tenant.state_id,
        state_sql: tenant.state_sql.clone(),
        setting_names: tenant.setting_names.clone(),
        settings_verified: AtomicBool::new(tenant.settings_verified.load(Ordering::Relaxed)),
        stats: tenant.stats.clone(),
        control: tenant.control.clone(),
        origin: tenant.origin,
        valid_until_ms: AtomicU64::new(tenant.valid_until_ms.load(Ordering::Relaxed)),
    }
}
