//! `RELOAD`: reads the config file again (as SIGHUP does). A bad file is an ERROR
//! (SQLSTATE F0000, naming the file, key and problem) and the running config stays.

use super::Reply;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::shared::Shared;

pub async fn run(shared: &Shared) -> Result<Reply, ErrorInfo> {
    match crate::reload::reload(shared).await {
        Ok(summary) => Ok(Reply::Done {
            tag: "RELOAD",
            notices: vec![("NOTICE", summary.to_string())],
        }),
        Err(e) => Err(ErrorInfo::error(
            sqlstate::CONFIG_FILE_ERROR,
            format!("reload refused, configuration unchanged: {e}"),
        )),
    }
}
