//! Cancel keys: the key the proxy gives each client (as a server's BackendKeyData), where a
//! cancel for that key goes while the client is linked, and forwarding it to that server.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use crate::config::EndpointConfig;

/// A (process id, secret) pair as BackendKeyData and CancelRequest carry it.
pub type CancelKey = (i32, i32);

/// A linked server connection's address and its own cancel key.
pub type CancelTarget = (Arc<EndpointConfig>, CancelKey);

/// A fresh client key for which `taken` is false. The process id is positive, as a real
/// backend's is (drivers print it).
pub fn issue(taken: impl Fn(&CancelKey) -> bool) -> CancelKey {
    loop {
        let key = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
        if !taken(&key) {
            return key;
        }
    }
}

/// Where a cancel for one client should go while it is linked.
#[derive(Default)]
pub struct CancelSlot {
    linked: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.linked.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    pub fn get(&self) -> Option<CancelTarget> {
        self.linked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Sends the cancel to the server `target` names; failures are logged, never returned (the
/// client that asked gets no answer either way, as with PostgreSQL).
pub async fn forward(target: Option<CancelTarget>) {
    match target {
        Some((endpoint, server_key)) => {
            if let Err(e) = send(&endpoint, server_key).await {
                tracing::warn!(backend = %endpoint.backend, error = %e, "forwarding cancel failed");
            }
        }
        None => tracing::debug!("cancel request for a client that is not linked (ignored)"),
    }
}

/// Sends a CancelRequest for `key` to the server at `endpoint`.
pub async fn send(endpoint: &EndpointConfig, key: CancelKey) -> std::io::Result<()> {
    let mut stream =
        tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    let mut buf = bytes::BytesMut::with_capacity(16);
    crate::protocol::encode::cancel_request(&mut buf, key.0, key.1);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn issued_keys_avoid_taken_ones_and_have_a_positive_pid() {
        let first = super::issue(|_| false);
        assert!(first.0 >= 0);
        let second = super::issue(|k| *k == first);
        assert_ne!(first, second);
    }
}
