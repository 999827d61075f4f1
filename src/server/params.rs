//! Reported run-time parameters (ParameterStatus) of a session.

/// Parameters PostgreSQL reports that a client may change and the proxy re-applies at
/// checkout (per client). Others (server_version, is_superuser, ...) are the server's.
pub const TRACKED_PARAMS: [&str; 6] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
];

/// A small ordered map of parameter name -> value (a few dozen entries at most).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets `name`; returns true when the value changed.
    pub fn set(&mut self, name: &str, value: &[u8]) -> bool {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) if v.as_slice() == value => false,
            Some((_, v)) => {
                *v = value.to_vec();
                true
            }
            None => {
                self.0.push((name.to_string(), value.to_vec()));
                true
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

/// True when `name` is one of [`TRACKED_PARAMS`] (PostgreSQL matches names
/// case-insensitively).
pub fn tracked_name(name: &str) -> Option<&'static str> {
    TRACKED_PARAMS
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}
