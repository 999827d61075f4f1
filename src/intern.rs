//! Sharing values that many clients hold alike, by content. A fleet of one app's clients
//! sends the same startup parameters, logs in as the same user and leaves the same settings
//! behind: thousands of idle clients then point at one copy instead of each keeping its own
//! (docs/BENCHMARKS.md, memory per idle client).
//!
//! An [`Interner`] keeps only weak references: it never holds a value alive, so a value no
//! client holds any more is freed as usual, and what the interner keeps of it (one map
//! slot, the `Arc`'s counts) goes at the next prune.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, Weak};

/// A set of shared values, by content (see the module docs).
pub struct Interner<T: ?Sized> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T: ?Sized> {
    /// By hash of the content. Two live values with the same hash (a 64-bit collision) are
    /// not both kept: the second stays unshared, which is only a missed saving.
    by_hash: HashMap<u64, Weak<T>>,
    hasher: RandomState,
    /// Dead references are dropped when the map reaches this size (twice the live ones at
    /// the last prune): amortised constant work per call.
    prune_at: usize,
}

/// The map never prunes below this many entries.
const MIN_PRUNE: usize = 64;

impl<T: ?Sized + Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            inner: Mutex::new(Inner {
                by_hash: HashMap::new(),
                hasher: RandomState::new(),
                prune_at: MIN_PRUNE,
            }),
        }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    /// The shared copy of `value`'s content: an equal value some holder still has, else
    /// `value` itself (remembered for the next caller).
    pub fn intern(&self, value: Arc<T>) -> Arc<T> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let hash = inner.hasher.hash_one(&*value);
        if let Some(known) = inner.by_hash.get(&hash).and_then(Weak::upgrade) {
            return if known == value { known } else { value };
        }
        inner.by_hash.insert(hash, Arc::downgrade(&value));
        if inner.by_hash.len() >= inner.prune_at {
            inner.by_hash.retain(|_, v| v.strong_count() > 0);
            inner.prune_at = (inner.by_hash.len() * 2).max(MIN_PRUNE);
            inner.by_hash.shrink_to_fit();
        }
        value
    }

    /// How many values the interner remembers (live or not yet pruned).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.inner.lock().unwrap().by_hash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let names: Interner<str> = Interner::default();
        let a = names.intern(Arc::from("app"));
        let b = names.intern(Arc::from(String::from("app")));
        assert!(Arc::ptr_eq(&a, &b), "equal content: one copy");
        let c = names.intern(Arc::from("other"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, "other");
    }

    #[test]
    fn holds_nothing_alive_and_prunes_the_dead() {
        let sets: Interner<Vec<u32>> = Interner::default();
        let kept = sets.intern(Arc::new(vec![0]));
        for i in 1..1000 {
            // Each dropped at once: the interner must not keep it.
            let v = sets.intern(Arc::new(vec![i]));
            assert_eq!(Arc::strong_count(&v), 1);
        }
        assert!(
            sets.remembered() < 2 * MIN_PRUNE,
            "dead references pruned: {} left",
            sets.remembered()
        );
        let again = sets.intern(Arc::new(vec![0]));
        assert!(Arc::ptr_eq(&kept, &again), "a live value survives pruning");
        drop((kept, again));
        let fresh = sets.intern(Arc::new(vec![0]));
        assert_eq!(Arc::strong_count(&fresh), 1, "a dead value is not revived");
    }
}
