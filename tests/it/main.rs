//! The integration test binary: everything here runs the proxy in-process against a real
//! PostgreSQL started by [`support`] (one server for the whole binary).

mod support;

mod admin;
mod auth_query;
mod collision;
mod diagnose;
mod directory;
mod faults;
mod features;
mod flood;
mod heavy;
mod hostile;
mod instances;
mod login;
mod metrics;
mod park;
mod pinning;
mod prepared;
mod protocol;
mod reliability;
mod reload;
mod security;
mod selfcheck;
mod sessions;
mod takeover;
pub mod template;
mod tls;
mod vsession;
