//! # pgtenant — a tenant-aware PostgreSQL connection pooler
//!
//! # Layout (in dependency order: each module uses only those above it; see
//! docs/ARCHITECTURE.md and `tests/module_order.rs`)
//! - [`config`]: `proxy.toml` -> raw serde structs -> validated [`config::Config`].
//! - [`protocol`]: the wire protocol as bytes: framing, typed views of the messages the proxy
//!   inspects, every encoder, SQLSTATEs, the SQL scanner. No I/O.
//! - [`kinds`]: error kinds as fixed metric label sets.
//! - [`cli`]: the command line (clap derive).
//! - [`intern`]: values many clients hold alike (parameter sets, settings, user names),
//!   shared by content.
//! - [`pool`]: endpoints, per-tenant logical pools, fair waiting. Knows nothing of the protocol.
//! - [`cancel`]: client cancel keys and forwarding cancels to the server a client is linked to.
//! - [`server`]: one server connection: connect, log in, the state it carries.
//! - [`tenant`]: working out which tenant a client names; the registry of tenants and their
//!   pools; per-tenant counters, pause and removal.
//! - [`transport`]: the client socket as whole messages, its buffers, its byte counts.
//! - [`auth`]: verifying clients (SCRAM-SHA-256, md5, trust).
//! - [`admission`]: logins in progress (`max_pending_logins`, oldest dropped first) counted
//!   apart from logged-in clients (`max_client_connections`).
//! - [`shared`]: state every session sees: the config generation (swapped on reload), the
//!   client list, login failure and session error counters.
//! - [`reload`]: hot reload (SIGHUP, `RELOAD`): validate, rebuild the registry, swap.
//! - [`admin`]: the admin console (database `pgtenant`), one file per command.
//! - [`session`]: one client's life: handshake, auth, idle/linked state machine; parking
//!   idle clients (no task, socket in one shared epoll set).
//! - [`metrics`]: Prometheus text at `/metrics`.
//! - [`localpg`]: starting a throwaway local PostgreSQL (demo, tests, benchmarks).
//! - [`listener`]: accepting clients, the client cap, graceful shutdown; [`Proxy`] and the
//!   [`ProxyHandle`] that reloads or stops it.
//! - [`demo`]: `pgtenant demo`.
//! - [`check`]: `pgtenant check --connect`: logging in to every backend, checking tenants'
//!   schemas.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod cancel;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod intern;
pub mod kinds;
pub mod listener;
pub mod localpg;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;
pub mod shared;
pub mod takeover;
pub mod tenant;
pub mod transport;

pub use listener::{run, Proxy, ProxyHandle};
