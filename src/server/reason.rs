//! Why a server connection could not be opened, as a class a client may be told.
//!
//! A client whose transaction needs a new server connection that cannot be made gets
//! `08006 could not connect to backend "NAME"`; the HINT carries [`FailureReason::hint`]:
//! the class of the reason (authentication failed, connection refused, timed out, ...) and
//! what to check. It never carries the server's own message, host names or anything from
//! the config beyond key names: the client may be anyone, the details are in the proxy's
//! log (`server connection failed`, with the full error).

use std::io;

use super::ServerError;

/// The class of a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The server rejected the backend's password (28P01) or the SCRAM exchange failed.
    Authentication,
    /// The server's `pg_hba.conf` has no entry that lets the proxy in (28000).
    NotAllowed,
    /// The server asks for a password and the backend has none.
    NoPassword,
    /// An `[auth]` user's own endpoint cannot log in the way the server asks (a cleartext
    /// password; md5 for a SCRAM-stored password or SCRAM for an md5-stored one).
    PassThrough,
    /// Nothing listens on the backend's host and port.
    ConnectionRefused,
    /// The host does not resolve or cannot be reached.
    Unreachable,
    /// No login within `server_connect_timeout`.
    TimedOut,
    /// TLS with the server failed: refused, a failed handshake, or a certificate that does
    /// not verify (the client's message names which).
    Tls,
    /// The server refused the login for another reason (SQLSTATE kept: 3D000, 53300, 57P03...).
    ServerError(Sqlstate),
    /// The connection broke or the server said something unexpected during login.
    Protocol,
}

/// A five-character SQLSTATE, kept without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sqlstate([u8; 5]);

impl Sqlstate {
    fn parse(code: &str) -> Option<Sqlstate> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Sqlstate(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Five ASCII alphanumerics, checked in `parse`.
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }
}

impl FailureReason {
    pub fn of(e: &ServerError) -> FailureReason {
        match e {
            ServerError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => FailureReason::ConnectionRefused,
                io::ErrorKind::TimedOut => FailureReason::TimedOut,
                _ => FailureReason::Unreachable,
            },
            ServerError::Timeout { .. } => FailureReason::TimedOut,
            ServerError::Tls { .. } => FailureReason::Tls,
            ServerError::NoPassword => FailureReason::NoPassword,
            ServerError::PassThrough(_) => FailureReason::PassThrough,
            ServerError::Scram(_) => FailureReason::Authentication,
            ServerError::Refused { code, .. } => refused(code),
            ServerError::Protocol(_) | ServerError::Io(_) => FailureReason::Protocol,
        }
    }

    /// The HINT for the client: the class first, then what to look at.
    pub fn hint(&self) -> String {
        match self {
            FailureReason::Authentication => "authentication failed: the server rejected the \
                backend's login; check user and password (or password_env) in proxy.toml"
                .into(),
            FailureReason::NotAllowed => "authentication failed: the server's pg_hba.conf has \
                no entry for the proxy's connection (a hostssl-only entry needs the backend's sslmode)"
                .into(),
            FailureReason::NoPassword => "authentication failed: the server asks for a \
                password and the backend has none; set password or password_env in proxy.toml"
                .into(),
            FailureReason::PassThrough => "authentication failed: the user's login cannot be \
                passed through to the server (it asks for a cleartext password, or for md5 or \
                SCRAM while the password is stored the other way); see docs/OPERATIONS.md"
                .into(),
            FailureReason::ConnectionRefused => "connection refused: is PostgreSQL running \
                and listening on the backend's host and port?"
                .into(),
            FailureReason::Unreachable => {
                "could not reach the server: the backend's host does not resolve or is unreachable"
                    .into()
            }
            FailureReason::TimedOut => "timed out: no login within server_connect_timeout".into(),
            FailureReason::Tls => "TLS failed: check the backend's sslmode, sslrootcert and \
                sslcert/sslkey against the server's certificate and ssl settings"
                .into(),
            FailureReason::ServerError(code) => format!(
                "server error: the server refused the login with SQLSTATE {}",
                code.as_str()
            ),
            FailureReason::Protocol => "server error: the connection failed during login".into(),
        }
    }
}

/// The class of an ErrorResponse the server answered the login with.
fn refused(code: &str) -> FailureReason {
    match code {
        "28P01" => FailureReason::Authentication,
        "28000" => FailureReason::NotAllowed,
        _ => FailureReason::ServerError(Sqlstate::parse(code).unwrap_or(Sqlstate(*b"XX000"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error(kind: io::ErrorKind) -> ServerError {
        ServerError::Connect {
            addr: "db:5432".into(),
            source: io::Error::from(kind),
        }
    }

    #[test]
    fn classes() {
        let of = |e: ServerError| FailureReason::of(&e);
        assert_eq!(
            of(connect_error(io::ErrorKind::ConnectionRefused)),
            FailureReason::ConnectionRefused
        );
        assert_eq!(
            of(connect_error(io::ErrorKind::Other)),
            FailureReason::Unreachable
        );
        assert_eq!(
            of(ServerError::Timeout {
                addr: "db:5432".into()
            }),
            FailureReason::TimedOut
        );
        assert_eq!(of(ServerError::NoPassword), FailureReason::NoPassword);
        assert_eq!(
            of(ServerError::Refused {
                code: "28P01".into(),
                message: "password authentication failed for user \"app\"".into()
            }),
            FailureReason::Authentication
        );
        assert_eq!(
            of(ServerError::Scram(io::Error::other(
                "invalid server signature"
            ))),
            FailureReason::Authentication
        );
        assert_eq!(
            of(ServerError::Refused {
                code: "28000".into(),
                message: "no pg_hba.conf entry for host \"10.0.0.1\"".into()
            }),
            FailureReason::NotAllowed
        );
        let db = of(ServerError::Refused {
            code: "3D000".into(),
            message: "database \"x\" does not exist".into(),
        });
        assert_eq!(db, FailureReason::ServerError(Sqlstate(*b"3D000")));
        assert!(db.hint().ends_with("SQLSTATE 3D000"), "{}", db.hint());
    }

    /// The hint never repeats what the server or the config said (names, hosts, passwords).
    #[test]
    fn hints_carry_no_details() {
        let e = ServerError::Refused {
            code: "28P01".into(),
            message: "password authentication failed for user \"secret_user\"".into(),
        };
        let hint = FailureReason::of(&e).hint();
        assert!(hint.starts_with("authentication failed"), "{hint}");
        assert!(!hint.contains("secret_user"), "{hint}");
    }
}
