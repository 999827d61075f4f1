//! Tenants that are not `[tenants]` blocks: `[tenant_template]` (any name matching a
//! pattern, its strings with `{tenant}` replaced) and `[directory]` (looked up in a table).
//! The typed configuration of both; the runtime side is `crate::tenant::dynamic`.

use std::time::Duration;

use super::TenantConfig;

/// What `{tenant}` in a template's strings is replaced with.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// `[tenant_template]`, validated.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    pub backend: String,
    pub search_path: Vec<String>,
    pub settings: Vec<(String, String)>,
    /// `""` in the file: the backend's database.
    pub database: Option<String>,
    pub max_server_connections: Option<usize>,
    pub max_client_connections: Option<usize>,
    /// The pattern as written (compared on reload).
    pub tenant_name_pattern: String,
    pub name_regex: regex::Regex,
}

impl PartialEq for TemplateConfig {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend
            && self.search_path == other.search_path
            && self.settings == other.settings
            && self.database == other.database
            && self.max_server_connections == other.max_server_connections
            && self.max_client_connections == other.max_client_connections
            && self.tenant_name_pattern == other.tenant_name_pattern
    }
}

impl TemplateConfig {
    /// Whether the template serves `name`.
    pub fn serves(&self, name: &str) -> bool {
        self.name_regex.is_match(name)
    }

    /// The tenant `name` (which must match the pattern): every `{tenant}` replaced by the
    /// name as it is. It is quoted where it is used (identifiers, literals), never here.
    pub fn tenant(&self, name: &str) -> TenantConfig {
        let fill = |s: &str| s.replace(TENANT_PLACEHOLDER, name);
        TenantConfig {
            name: name.to_string(),
            backend: self.backend.clone(),
            search_path: self.search_path.iter().map(|s| fill(s)).collect(),
            settings: self
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), fill(v)))
                .collect(),
            database: self.database.as_deref().map(fill),
            user: None,
            password: None,
            max_server_connections: self.max_server_connections,
            max_client_connections: self.max_client_connections,
        }
    }
}

/// `[directory]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// The backend the query runs on (its own connection), and the default backend of the
    /// tenants it finds.
    pub backend: String,
    /// One parameter, `$1`: the tenant's name.
    pub query: String,
    pub ttl: Duration,
    pub negative_ttl: Duration,
}
