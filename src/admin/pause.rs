//! `PAUSE [tenant]`: new transactions of the tenant (bare: of every tenant loaded now) wait
//! at checkout until `RESUME`; transactions already linked run to their end. The command
//! returns once none is linked any more, or after `shutdown_timeout` with a WARNING saying
//! how many still are (the tenant stays paused either way). Other tenants are unaffected.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{tenants_named, Reply};
use crate::protocol::encode::ErrorInfo;
use crate::shared::Generation;

pub async fn run(generation: &Generation, name: Option<&str>) -> Result<Reply, ErrorInfo> {
    let tenants = tenants_named(generation, name)?;
    for t in &tenants {
        t.control.pause();
    }
    let deadline = Instant::now() + generation.config.proxy.shutdown_timeout;
    let linked = loop {
        let linked: usize = tenants
            .iter()
            .map(|t| t.stats.linked.load(Ordering::SeqCst))
            .sum();
        if linked == 0 || Instant::now() >= deadline {
            break linked;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let what = name.map_or("all tenants".to_string(), |n| format!("tenant \"{n}\""));
    tracing::info!(
        tenant = name.unwrap_or("*"),
        still_linked = linked,
        "paused"
    );
    let notices = if linked == 0 {
        Vec::new()
    } else {
        vec![(
            "WARNING",
            format!("{what} paused, but {linked} transaction(s) are still running"),
        )]
    };
    Ok(Reply::Done {
        tag: "PAUSE",
        notices,
    })
}
