//! Tenants: working out which tenant a client names ([`identify`]) and the registry of
//! loaded tenants with their pools ([`registry`]).

pub mod identify;
pub mod registry;

pub use identify::{identify, IdentifyError, Identity};
pub use registry::{Endpoint, Registry, TenantRuntime};
