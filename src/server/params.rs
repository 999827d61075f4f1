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

/// A small ordered map of parameter name -> value (a few dozen entries at most). Clones
/// share one copy until one of them changes a value (most clients never do), so thousands
/// of idle clients do not each carry their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(std::sync::Arc<Vec<(String, Vec<u8>)>>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets `name`; returns true when the value changed.
    pub fn set(&mut self, name: &str, value: &[u8]) -> bool {
        match self.0.iter().position(|(n, _)| n == name) {
            Some(i) if self.0[i].1.as_slice() == value => false,
            Some(i) => {
                std::sync::Arc::make_mut(&mut self.0)[i].1 = value.to_vec();
                true
            }
            None => {
                std::sync::Arc::make_mut(&mut self.0).push((name.to_string(), value.to_vec()));
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
