//! `RESUME [tenant]`: lets a paused tenant (bare: every tenant) run again; the transactions
//! waiting at checkout go on in order.

use super::{tenants_named, Reply};
use crate::protocol::encode::ErrorInfo;
use crate::shared::Generation;

pub fn run(generation: &Generation, name: Option<&str>) -> Result<Reply, ErrorInfo> {
    for t in tenants_named(generation, name)? {
        t.control.resume();
    }
    tracing::info!(tenant = name.unwrap_or("*"), "resumed");
    Ok(Reply::done("RESUME"))
}
