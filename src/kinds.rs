//! Error kinds as fixed metric label sets (after neon's `ReportableError`): every error a
//! session ends with, and every failed server connection attempt, has one kind; the kinds
//! are counted and exported as `pgtenant_session_errors_total{kind}` and
//! `pgtenant_server_connect_failures_total{kind}`. The error types map themselves to a kind
//! (`SessionError::kind`, `ServerError::kind`); the label sets live here, below both.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed set of label values.
pub trait Kind: Copy + 'static {
    const ALL: &'static [Self];
    fn index(self) -> usize;
    fn label(self) -> &'static str;
}

/// One counter per kind.
pub struct KindCounts<K: Kind> {
    counts: Box<[AtomicU64]>,
    _kind: std::marker::PhantomData<K>,
}

impl<K: Kind> Default for KindCounts<K> {
    fn default() -> Self {
        KindCounts {
            counts: K::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            _kind: std::marker::PhantomData,
        }
    }
}

impl<K: Kind> KindCounts<K> {
    pub fn record(&self, kind: K) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: K) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Every kind with its count (zeros included: a fixed set of series).
    pub fn iter(&self) -> impl Iterator<Item = (K, u64)> + '_ {
        K::ALL.iter().map(|k| (*k, self.get(*k)))
    }
}

macro_rules! kinds {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl Kind for $name {
            const ALL: &'static [Self] = &[$($name::$variant,)+];
            fn index(self) -> usize {
                self as usize
            }
            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

kinds! {
    /// Why a session ended with an error.
    SessionErrorKind {
        /// The client broke the protocol (08P01).
        ClientProtocol => "client_protocol",
        /// The server connection went away or sent a FATAL.
        ServerLost => "server_lost",
        /// The server sent something the proxy cannot follow.
        ServerProtocol => "server_protocol",
        /// The client's session state could not be applied on a server connection.
        StateFailed => "state_failed",
        /// `idle_transaction_timeout`.
        IdleInTransaction => "idle_in_transaction",
        /// No server connection: the wait timed out, the backend is down or refused.
        NoServer => "no_server",
        /// `KILL`.
        Killed => "killed",
        /// A reload removed the client's tenant.
        Removed => "removed",
        /// A reload no longer lets the client's user use its tenant.
        Forbidden => "forbidden",
        /// The proxy is shutting down.
        Shutdown => "shutdown",
    }
}

kinds! {
    /// Why an attempt to open a server connection failed.
    ConnectFailure {
        /// TCP connect failed (refused, unreachable).
        Connect => "connect",
        /// `server_connect_timeout` passed.
        Timeout => "timeout",
        /// The server rejected the login's credentials, or the backend has no password.
        Auth => "auth",
        /// The server refused the login for another reason (no such database, too many
        /// connections, shutting down).
        Refused => "refused",
        /// The server spoke in a way the proxy cannot follow (or asked for an
        /// authentication method it does not support).
        Protocol => "protocol",
        /// The connection broke during login.
        Io => "io",
        /// TLS with the server failed (`sslmode`: declined, handshake, certificate).
        Tls => "tls",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_labels_are_distinct() {
        fn check<K: Kind + std::fmt::Debug>() {
            for (i, k) in K::ALL.iter().enumerate() {
                assert_eq!(k.index(), i, "{k:?}");
            }
            let mut labels: Vec<_> = K::ALL.iter().map(|k| k.label()).collect();
            labels.sort();
            labels.dedup();
            assert_eq!(labels.len(), K::ALL.len());
        }
        check::<SessionErrorKind>();
        check::<ConnectFailure>();
        let counts = KindCounts::<ConnectFailure>::default();
        counts.record(ConnectFailure::Auth);
        assert_eq!(counts.get(ConnectFailure::Auth), 1);
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 1);
    }
}
