//! Why a server connection could not be opened, as a class a client may be told.
//!
//! A client whose transaction needs a new server connection that cannot be made gets
//! `08006 could not connect to backend "NAME"`; the HINT carries [`ConnectFailure::hint`]:
//! the class of the reason (authentication failed, connection refused, timed out, ...) and
//! what to check. It never carries the server's own message, host names or anything from
//! the config beyond key names: the client may be anyone, the details are in the proxy's
//! log (`server connection failed`, with the full error).

use std::io;

use super::ServerError;

/// The class of a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server rejected the backend's password (28P01) or the SCRAM exchange failed.
    Authentication,
    /// The server's `pg_hba.conf` has no entry that lets the proxy in (28000).
    NotAllowed,
    /// The server asks for a password and the backend has none.
    NoPassword,
    /// Nothing listens on the backend's host and port.
    ConnectionRefused,
    /// The host does not resolve or cannot be reached.
    Unreachable,
    /// No login within `server_connect_timeout`.
    TimedOut,
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

impl ConnectFailure {
    pub fn of(e: &ServerError) -> ConnectFailure {
        match e {
            ServerError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => ConnectFailure::ConnectionRefused,
                io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
                _ => ConnectFailure::Unreachable,
            },
            ServerError::Timeout(_) => ConnectFailure::TimedOut,
            ServerError::NoPassword => ConnectFailure::NoPassword,
            ServerError::Refused(text) => refused(text),
            ServerError::Protocol(_) | ServerError::Io(_) => ConnectFailure::Protocol,
        }
    }

    /// The HINT for the client: the class first, then what to look at.
    pub fn hint(&self) -> String {
        match self {
            ConnectFailure::Authentication => "authentication failed: the server rejected the \
                backend's login; check user and password (or password_env) in proxy.toml"
                .into(),
            ConnectFailure::NotAllowed => "authentication failed: the server's pg_hba.conf has \
                no entry for the proxy's connection (pgtenant connects to servers without TLS)"
                .into(),
            ConnectFailure::NoPassword => "authentication failed: the server asks for a \
                password and the backend has none; set password or password_env in proxy.toml"
                .into(),
            ConnectFailure::ConnectionRefused => "connection refused: is PostgreSQL running \
                and listening on the backend's host and port?"
                .into(),
            ConnectFailure::Unreachable => {
                "could not reach the server: the backend's host does not resolve or is unreachable"
                    .into()
            }
            ConnectFailure::TimedOut => "timed out: no login within server_connect_timeout".into(),
            ConnectFailure::ServerError(code) => format!(
                "server error: the server refused the login with SQLSTATE {}",
                code.as_str()
            ),
            ConnectFailure::Protocol => "server error: the connection failed during login".into(),
        }
    }
}

/// `ServerError::Refused` holds `message (SQLSTATE)` for an ErrorResponse at login, or the
/// SCRAM library's text when the server's proof did not check out.
fn refused(text: &str) -> ConnectFailure {
    let code = text
        .strip_suffix(')')
        .and_then(|t| t.rsplit_once(" ("))
        .and_then(|(_, code)| Sqlstate::parse(code));
    match code.as_ref().map(Sqlstate::as_str) {
        None | Some("28P01") => ConnectFailure::Authentication,
        Some("28000") => ConnectFailure::NotAllowed,
        Some(_) => ConnectFailure::ServerError(code.unwrap_or(Sqlstate(*b"XX000"))),
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
        let of = |e: ServerError| ConnectFailure::of(&e);
        assert_eq!(
            of(connect_error(io::ErrorKind::ConnectionRefused)),
            ConnectFailure::ConnectionRefused
        );
        assert_eq!(
            of(connect_error(io::ErrorKind::Other)),
            ConnectFailure::Unreachable
        );
        assert_eq!(
            of(ServerError::Timeout("db:5432".into())),
            ConnectFailure::TimedOut
        );
        assert_eq!(of(ServerError::NoPassword), ConnectFailure::NoPassword);
        assert_eq!(
            of(ServerError::Refused(
                "password authentication failed for user \"app\" (28P01)".into()
            )),
            ConnectFailure::Authentication
        );
        assert_eq!(
            of(ServerError::Refused("invalid server signature".into())),
            ConnectFailure::Authentication
        );
        assert_eq!(
            of(ServerError::Refused(
                "no pg_hba.conf entry for host \"10.0.0.1\" (28000)".into()
            )),
            ConnectFailure::NotAllowed
        );
        let db = of(ServerError::Refused(
            "database \"x\" does not exist (3D000)".into(),
        ));
        assert_eq!(db, ConnectFailure::ServerError(Sqlstate(*b"3D000")));
        assert!(db.hint().ends_with("SQLSTATE 3D000"), "{}", db.hint());
    }

    /// The hint never repeats what the server or the config said (names, hosts, passwords).
    #[test]
    fn hints_carry_no_details() {
        let e = ServerError::Refused(
            "password authentication failed for user \"secret_user\" (28P01)".into(),
        );
        let hint = ConnectFailure::of(&e).hint();
        assert!(hint.starts_with("authentication failed"), "{hint}");
        assert!(!hint.contains("secret_user"), "{hint}");
    }
}
