//! Tenants: working out which tenant a client names ([`identify`]), the registry of
//! loaded tenants with their pools ([`registry`]), and their counters and controls
//! ([`stats`]), and the own endpoints of users found by `auth_query` ([`user_endpoints`]).

pub mod identify;
pub mod registry;
pub mod snapshot;
pub mod stats;
pub mod user_endpoints;

pub use identify::{identify, IdentifyError, Identity};
pub use registry::{Endpoint, Registry, TenantRuntime};
pub use stats::{LoginFailure, TenantControl, TenantStats};
