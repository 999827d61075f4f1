//! Cancel keys: the key the proxy gives each client (as a server's BackendKeyData), where a
//! cancel for that key goes while the client is linked, and forwarding it to that server or,
//! for a client of another instance, to that peer.
//!
//! With an `instance_id`, a key's process id is `instance_id << 20` plus 20 random bits (a
//! positive `i32`, as a real backend's pid): any instance can tell whose client a key
//! belongs to, as PgBouncer's `peer_id` does.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use crate::config::EndpointConfig;

/// A (process id, secret) pair as BackendKeyData and CancelRequest carry it.
pub type CancelKey = (i32, i32);

/// A linked server connection's address and its own cancel key.
pub type CancelTarget = (Arc<EndpointConfig>, CancelKey);

/// Random bits of a key's process id when the instance has an id.
const RANDOM_PID_BITS: u32 = 20;

/// A fresh client key of instance `instance_id` (0: a lone instance) for which `taken` is
/// false. The process id is positive, as a real backend's is (drivers print it).
pub fn issue(instance_id: u16, taken: impl Fn(&CancelKey) -> bool) -> CancelKey {
    loop {
        let random = rand::random::<i32>() & i32::MAX;
        let pid = match instance_id {
            0 => random,
            id => (i32::from(id) << RANDOM_PID_BITS) | (random & ((1 << RANDOM_PID_BITS) - 1)),
        };
        let key = (pid, rand::random::<i32>());
        if !taken(&key) {
            return key;
        }
    }
}

/// The instance that issued `key` (meaningful among instances that all have an id).
pub fn instance_of(key: CancelKey) -> u16 {
    (key.0 >> RANDOM_PID_BITS) as u16
}

/// Passes a CancelRequest for a client of peer `peer` on to it, marked as coming from a
/// peer (so it is never forwarded again).
pub async fn to_peer(peer: &crate::config::PeerConfig, key: CancelKey) {
    let sent = async {
        let mut stream = tokio::net::TcpStream::connect((peer.host.as_str(), peer.port)).await?;
        let mut buf = bytes::BytesMut::with_capacity(20);
        crate::protocol::encode::peer_cancel_request(&mut buf, key.0, key.1);
        stream.write_all(&buf).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), sent).await {
        Ok(Ok(())) => tracing::debug!(peer = %peer.host, "cancel request passed to a peer"),
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer.host, error = %e, "passing a cancel to a peer failed")
        }
        Err(_) => tracing::warn!(peer = %peer.host, "passing a cancel to a peer timed out"),
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
        let first = super::issue(0, |_| false);
        assert!(first.0 >= 0);
        let second = super::issue(0, |k| *k == first);
        assert_ne!(first, second);
    }

    #[test]
    fn keys_name_the_instance_that_issued_them() {
        for id in [1, 2, 77, crate::config::MAX_INSTANCE_ID] {
            for _ in 0..100 {
                let key = super::issue(id, |_| false);
                assert!(key.0 > 0, "{key:?}");
                assert_eq!(super::instance_of(key), id);
            }
        }
    }
}
