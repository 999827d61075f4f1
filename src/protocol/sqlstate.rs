//! The SQLSTATEs pgtenant sends or looks for, by PostgreSQL's names for them
//! (`src/backend/utils/errcodes.txt`), in one place.

pub const SUCCESSFUL_COMPLETION: &str = "00000";
pub const CONNECTION_FAILURE: &str = "08006";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const SYNTAX_ERROR: &str = "42601";
pub const INVALID_NAME: &str = "42602";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
pub const QUERY_CANCELED: &str = "57014";
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CONFIG_FILE_ERROR: &str = "F0000";
