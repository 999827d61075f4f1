//! Tenants: working out which tenant a client names ([`identify`]), the registry of
//! loaded tenants with their pools ([`registry`]), tenants made on demand from
//! `[tenant_template]` or a `[directory]` table ([`dynamic`], [`directory`]), their
//! counters and controls ([`stats`]), and the own endpoints of users found by `auth_query`
//! ([`user_endpoints`]).

pub mod directory;
mod directory_row;
pub mod dynamic;
pub mod identify;
pub mod registry;
pub mod snapshot;
pub mod stats;
pub mod user_endpoints;

pub use dynamic::ResolveError;
pub use identify::{identify, IdentifyError, Identity};
pub use registry::{Endpoint, Origin, Registry, TenantRuntime};
pub use stats::{LoginFailure, TenantControl, TenantStats};
