//! `KILL tenant`: disconnects every client of the tenant at once: FATAL 57P01 to each one
//! idle or idle in a transaction; one whose query is running is cut off with nothing sent
//! (its reply may be half relayed). A transaction is lost with its server connection, which
//! is closed. New clients may connect again right away: `PAUSE` first to keep them waiting.

use super::Reply;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::shared::{Generation, Shared};

pub fn run(shared: &Shared, generation: &Generation, name: &str) -> Result<Reply, ErrorInfo> {
    let mut killed = 0;
    for client in shared.clients.iter().filter(|c| &*c.tenant == name) {
        client.kill();
        killed += 1;
    }
    if killed == 0 && generation.registry.get(name).is_none() {
        return Err(ErrorInfo::error(
            sqlstate::INVALID_CATALOG_NAME,
            format!("tenant \"{name}\" does not exist"),
        ));
    }
    tracing::info!(tenant = name, clients = killed, "killed clients");
    Ok(Reply::Done {
        tag: "KILL",
        notices: vec![(
            "NOTICE",
            format!("{killed} client connection(s) of tenant \"{name}\" closed"),
        )],
    })
}
