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
/// of idle clients do not each carry their own. The [`TRACKED_PARAMS`] are also indexed, so
/// the check at every checkout is six slice comparisons, not name lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(std::sync::Arc<Entries>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entries {
    all: Vec<(String, Vec<u8>)>,
    /// Position in `all` of each of [`TRACKED_PARAMS`], if present.
    tracked: [Option<u8>; TRACKED_PARAMS.len()],
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .all
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `TRACKED_PARAMS[i]`.
    pub fn tracked(&self, i: usize) -> Option<&[u8]> {
        let at = self.0.tracked[i]?;
        Some(self.0.all[usize::from(at)].1.as_slice())
    }

    /// Sets `name`; returns true when the value changed.
    pub fn set(&mut self, name: &str, value: &[u8]) -> bool {
        match self.0.all.iter().position(|(n, _)| n == name) {
            Some(i) if self.0.all[i].1.as_slice() == value => false,
            Some(i) => {
                std::sync::Arc::make_mut(&mut self.0).all[i].1 = value.to_vec();
                true
            }
            None => {
                let entries = std::sync::Arc::make_mut(&mut self.0);
                let at = entries.all.len();
                entries.all.push((name.to_string(), value.to_vec()));
                if let (Some(t), Ok(at)) = (
                    TRACKED_PARAMS.iter().position(|t| *t == name),
                    u8::try_from(at),
                ) {
                    entries.tracked[t] = Some(at);
                }
                true
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.all.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_values_follow_set() {
        let mut p = Params::default();
        p.set("server_version", b"18");
        p.set("TimeZone", b"UTC");
        let tz = TRACKED_PARAMS
            .iter()
            .position(|n| *n == "TimeZone")
            .unwrap();
        assert_eq!(p.tracked(tz), Some(&b"UTC"[..]));
        let shared = p.clone();
        assert!(p.set("TimeZone", b"Europe/Paris"));
        assert_eq!(p.tracked(tz), Some(&b"Europe/Paris"[..]));
        assert_eq!(
            shared.tracked(tz),
            Some(&b"UTC"[..]),
            "clones are copy-on-write"
        );
        assert_eq!(p.tracked(0), None);
        assert_eq!(p.get("server_version"), Some(&b"18"[..]));
    }
}
