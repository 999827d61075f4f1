//! The first packets: SSLRequest/GSSENCRequest (answered `N`: no TLS yet), CancelRequest
//! (forwarded to the linked server, if any), then the StartupMessage.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Shared;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, StartupRequest};
use crate::transport::stream::{ClientStream, StreamError};

/// What the first packets asked for.
pub enum Opening {
    Startup(Vec<(String, String)>),
    /// A cancel request was handled; close the connection.
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Startup(#[from] startup::StartupError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl HandshakeError {
    pub fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            HandshakeError::Startup(e) => Some(ErrorInfo::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
            )),
            HandshakeError::Stream(_) => None,
        }
    }
}

pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientStream<S>,
    shared: &Shared,
) -> Result<Opening, HandshakeError> {
    loop {
        let Some((request, len)) = startup::decode(&client.rbuf)? else {
            if client.fill().await.map_err(StreamError::from)? == 0 {
                return Err(StreamError::Closed.into());
            }
            continue;
        };
        let _ = client.rbuf.split_to(len);
        match request {
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                // Bytes sent after the request but before our answer would be a protocol
                // violation (and a known injection vector): refuse them.
                if !client.rbuf.is_empty() {
                    return Err(
                        startup::StartupError::Malformed("data after encryption request").into(),
                    );
                }
                client.io.write_all(b"N").await.map_err(StreamError::from)?;
            }
            StartupRequest::Cancel { pid, secret } => {
                shared.forward_cancel((pid, secret), false).await;
                return Ok(Opening::Cancelled);
            }
            StartupRequest::PeerCancel { pid, secret } => {
                shared.forward_cancel((pid, secret), true).await;
                return Ok(Opening::Cancelled);
            }
            StartupRequest::Startup { params, minor } => {
                // Like PostgreSQL: a newer minor version or protocol options are answered
                // with what this side speaks (3.0, no options), and the login goes on.
                let options: Vec<&str> = params
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| n.starts_with("_pq_."))
                    .collect();
                if minor > 0 || !options.is_empty() {
                    crate::protocol::encode::negotiate_protocol_version(
                        &mut client.wbuf,
                        startup::PROTOCOL_3_0,
                        &options,
                    );
                }
                return Ok(Opening::Startup(params));
            }
        }
    }
}
