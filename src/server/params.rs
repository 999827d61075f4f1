//! Reported run-time parameters (ParameterStatus) of a session.

use std::sync::{Arc, LazyLock};

use crate::intern::Interner;

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
/// of idle clients do not each carry their own. Names and values are shared too, so the
/// copy a change makes (every client that sets `application_name` at login) is one list of
/// pointers, not a fresh string per parameter. The [`TRACKED_PARAMS`] are also indexed, and
/// kept together in one byte string, so the check at every checkout is one comparison when
/// nothing differs ([`Params::same_tracked`]) and six slice comparisons when something does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Arc<Entries>);

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Entries {
    all: Vec<(Arc<str>, Arc<[u8]>)>,
    /// Position in `all` of each of [`TRACKED_PARAMS`], if present.
    tracked: [Option<u8>; TRACKED_PARAMS.len()],
    /// The tracked values in order, each absent (`0`) or present (`1`, `u32` length, bytes):
    /// equal keys mean equal tracked values. Empty while none is present.
    tracked_key: Vec<u8>,
}

impl Entries {
    fn rebuild_tracked_key(&mut self) {
        let mut key = std::mem::take(&mut self.tracked_key);
        key.clear();
        for at in self.tracked {
            match at {
                None => key.push(0),
                Some(at) => {
                    let value = &self.all[usize::from(at)].1;
                    key.push(1);
                    key.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    key.extend_from_slice(value);
                }
            }
        }
        self.tracked_key = key;
    }
}

/// Every client's parameter set, by content: clients that asked for the same values (a
/// fleet of one app sends the same `application_name`) share one copy ([`Params::shared`]).
static SETS: LazyLock<Interner<Entries>> = LazyLock::new(Interner::default);

impl Params {
    /// The copy of these values that every client holding the same shares (a fresh one
    /// loses its spare capacity first). Changing a shared set copies it, as for any clone.
    pub fn shared(self) -> Params {
        let mut entries = self.0;
        if let Some(fresh) = Arc::get_mut(&mut entries) {
            fresh.all.shrink_to_fit();
            fresh.tracked_key.shrink_to_fit();
        }
        Params(SETS.intern(entries))
    }

    /// Whether both are the same copy (not just equal values).
    pub fn same_copy(&self, other: &Params) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .all
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// The value of `TRACKED_PARAMS[i]`.
    pub fn tracked(&self, i: usize) -> Option<&[u8]> {
        let at = self.0.tracked[i]?;
        Some(&self.0.all[usize::from(at)].1)
    }

    /// Whether both hold the same [`TRACKED_PARAMS`] (present or not, and values).
    pub fn same_tracked(&self, other: &Params) -> bool {
        self.0.tracked_key == other.0.tracked_key
    }

    /// Sets `name`; returns true when the value changed.
    pub fn set(&mut self, name: &str, value: &[u8]) -> bool {
        match self.0.all.iter().position(|(n, _)| &**n == name) {
            Some(i) if *self.0.all[i].1 == *value => false,
            Some(i) => {
                let entries = Arc::make_mut(&mut self.0);
                entries.all[i].1 = value.into();
                if entries.tracked.contains(&u8::try_from(i).ok()) {
                    entries.rebuild_tracked_key();
                }
                true
            }
            None => {
                let entries = Arc::make_mut(&mut self.0);
                let at = entries.all.len();
                entries.all.push((name.into(), value.into()));
                if let (Some(t), Ok(at)) = (
                    TRACKED_PARAMS.iter().position(|t| *t == name),
                    u8::try_from(at),
                ) {
                    entries.tracked[t] = Some(at);
                    entries.rebuild_tracked_key();
                }
                true
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.all.iter().map(|(n, v)| (&**n, &**v))
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
        assert!(!p.same_tracked(&shared));
        let mut q = Params::default();
        q.set("TimeZone", b"Europe/Paris");
        assert!(p.same_tracked(&q), "untracked entries do not count");
        q.set("client_encoding", b"UTF8");
        assert!(!p.same_tracked(&q), "a tracked value one side lacks");
        let mut r = Params::default();
        r.set("client_encoding", b"UTF8");
        r.set("TimeZone", b"Europe/Paris");
        assert!(
            q.same_tracked(&r),
            "the order values were set in does not count"
        );
        assert!(Params::default().same_tracked(&Params::default()));
        assert_eq!(p.get("server_version"), Some(&b"18"[..]));
    }

    #[test]
    fn equal_sets_are_one_copy_and_stay_copy_on_write() {
        let mut server = Params::default();
        server.set("server_version", b"18.0");
        server.set("application_name", b"");
        let login = |app: &[u8]| {
            let mut p = server.clone();
            p.set("application_name", app);
            p.shared()
        };
        let (a, b, other) = (login(b"orders"), login(b"orders"), login(b"billing"));
        assert!(
            a.same_copy(&b),
            "two clients that asked for the same values"
        );
        assert!(!a.same_copy(&other));
        assert!(!a.same_copy(&server), "a changed set is a copy of its own");
        assert!(login(b"").same_copy(&server.clone().shared()));
        // A client that changes a value later gets its own copy; the others keep theirs.
        let mut a = a;
        assert!(a.set("TimeZone", b"UTC"));
        assert_eq!(b.get("TimeZone"), None);
        assert_eq!(a.get("application_name"), Some(&b"orders"[..]));
        let c = login(b"orders");
        assert!(c.same_copy(&b) && !c.same_copy(&a));
    }
}
