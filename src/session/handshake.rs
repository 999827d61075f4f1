//! The first packets: SSLRequest (answered `S` and TLS started when clients may use TLS,
//! else `N`), a TLS ClientHello first (PostgreSQL 17's direct TLS), GSSENCRequest (`N`),
//! CancelRequest (forwarded to the linked server, if any), then the StartupMessage.

use tokio::io::AsyncWriteExt;

use super::Shared;
use crate::config::ClientTls;
use crate::protocol::encode::ErrorInfo;
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, StartupRequest};
use crate::transport::stream::{ClientStream, StreamError};
use crate::transport::tls::{TlsError, TLS_HANDSHAKE};
use crate::transport::ClientIo;

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
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `client_tls = "require"` and a plaintext startup packet.
    #[error("TLS is required")]
    TlsRequired,
}

impl HandshakeError {
    pub fn to_client(&self) -> Option<ErrorInfo> {
        match self {
            HandshakeError::Startup(e) => Some(ErrorInfo::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
            )),
            HandshakeError::Stream(_) | HandshakeError::Tls(_) => None,
            HandshakeError::TlsRequired => Some(ErrorInfo::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "TLS is required: connect with sslmode=require (or stronger)",
            )),
        }
    }
}

pub async fn open<S: ClientIo>(
    client: &mut ClientStream<S>,
    shared: &Shared,
) -> Result<Opening, HandshakeError> {
    let (tls, client_tls) = {
        let generation = shared.current();
        let proxy = &generation.config.proxy;
        (proxy.tls.clone(), proxy.client_tls)
    };
    let tls = tls.filter(|_| client.io.can_start_tls());
    loop {
        if let (Some(config), Some(&TLS_HANDSHAKE)) = (&tls, client.rbuf.first()) {
            if client.io.can_start_tls() {
                let prefix = client.rbuf.split();
                start_tls(client, config.clone(), &prefix, true).await?;
                continue;
            }
        }
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
                match &tls {
                    Some(config)
                        if matches!(request, StartupRequest::Ssl) && client.io.can_start_tls() =>
                    {
                        client.io.write_all(b"S").await.map_err(StreamError::from)?;
                        start_tls(client, config.clone(), &[], false).await?;
                    }
                    _ => client.io.write_all(b"N").await.map_err(StreamError::from)?,
                }
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
                if client_tls == ClientTls::Require && client.io.tls().is_none() {
                    return Err(HandshakeError::TlsRequired);
                }
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

/// The TLS handshake; a failure is logged here (the client cannot be told anything).
async fn start_tls<S: ClientIo>(
    client: &mut ClientStream<S>,
    config: std::sync::Arc<crate::config::TlsAcceptorConfig>,
    prefix: &[u8],
    direct: bool,
) -> Result<(), HandshakeError> {
    let result = client.io.start_tls(config, prefix, direct).await;
    if let Err(e) = &result {
        tracing::info!(peer = ?client.io.peer(), error = %e, direct, "TLS handshake failed");
    }
    Ok(result?)
}
