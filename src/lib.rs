//! # pgtenant — a tenant-aware PostgreSQL connection pooler
//!
//! # Layout
//! - [`config`]: `proxy.toml` -> raw serde structs -> validated [`config::Config`].
//! - [`cli`]: the command line (clap derive).
//! - [`protocol`]: the wire protocol as bytes: framing, typed views of the messages the proxy
//!   inspects, encoders. No I/O.
//! - [`auth`]: verifying clients (SCRAM-SHA-256, md5, trust) and logging in to servers.
//! - [`tenant`]: working out which tenant a client names; the registry of tenants and their
//!   pools; per-tenant counters, pause and removal.
//! - [`pool`]: endpoints, per-tenant logical pools, fair waiting. Knows nothing of the protocol.
//! - [`server`]: one server connection: connect, log in, the state it carries.
//! - [`session`]: one client's life: handshake, auth, idle/linked state machine; parking
//!   idle clients (no task, socket in one shared epoll set).
//! - [`admission`]: logins in progress (`max_pending_logins`, oldest dropped first) counted
//!   apart from logged-in clients (`max_client_connections`).
//! - [`listener`]: accepting clients, the client cap, graceful shutdown; [`Proxy`] and the
//!   [`ProxyHandle`] that reloads or stops it.
//! - [`shared`]: state every session sees: the config generation (swapped on reload), the
//!   client list, login failure counters.
//! - [`reload`]: hot reload (SIGHUP, `RELOAD`): validate, rebuild the registry, swap.
//! - [`admin`]: the admin console (database `pgtenant`), one file per command.
//! - [`metrics`]: Prometheus text at `/metrics`.
//! - [`localpg`]: starting a throwaway local PostgreSQL (demo, tests, benchmarks).
//! - [`demo`]: `pgtenant demo`.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod cancel;
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
pub mod transport;

pub use listener::{run, Proxy, ProxyHandle};
