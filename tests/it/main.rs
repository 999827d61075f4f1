//! The integration test binary: everything here runs the proxy in-process against a real
//! PostgreSQL started by [`support`] (one server for the whole binary).

mod support;

mod collision;
mod login;
mod prepared;
