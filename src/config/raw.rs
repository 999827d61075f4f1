//! Raw serde structs mirroring `proxy.toml` one to one (`deny_unknown_fields`).
