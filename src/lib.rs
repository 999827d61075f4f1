//! # pgtenant — a tenant-aware PostgreSQL connection pooler
//!
//! # Layout
//! - [`config`]: `proxy.toml` -> raw serde structs -> validated [`config::Config`].
//! - [`cli`]: the command line (clap derive).
//! - [`protocol`]: the wire protocol as bytes: framing, typed views of the messages the proxy
//!   inspects, encoders. No I/O.
//! - [`auth`]: verifying clients (SCRAM-SHA-256, md5, trust) and logging in to servers.
//! - [`tenant`]: working out which tenant a client names.
//! - [`pool`]: endpoints, per-tenant logical pools, fair waiting. Knows nothing of the protocol.
//! - [`server`]: one server connection: connect, log in, the state it carries.
//! - [`session`]: one client's life: handshake, auth, idle/linked state machine.
//! - [`listener`]: accepting clients, the client cap, graceful shutdown.
//! - [`localpg`]: starting a throwaway local PostgreSQL (demo, tests, benchmarks).
//! - [`demo`]: `pgtenant demo`.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod listener;
pub mod localpg;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;
pub mod shared;
pub mod tenant;

pub use listener::{run, Proxy, ProxyHandle};
