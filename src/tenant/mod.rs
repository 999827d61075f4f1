//! Tenants: working out which tenant a client names ([`identify`]), the registry of
//! loaded tenants with their pools ([`registry`]), and their counters and controls
//! ([`stats`]).

pub mod identify;
pub mod registry;
pub mod snapshot;
pub mod stats;

pub use identify::{identify, IdentifyError, Identity};
pub use registry::{Endpoint, Registry, TenantRuntime};
pub use stats::{LoginFailure, TenantControl, TenantStats};
