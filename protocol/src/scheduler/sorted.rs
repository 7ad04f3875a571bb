//! A map kept as one vector sorted by key: the scheduler's peers (tens) and each peer's
//! requests in flight (at most `requests_per_peer_max`).
//!
//! The scheduler visits every peer several times per event (polls due, who has spare
//! capacity, the next wakeup); over a vector that is a pass through contiguous memory instead
//! of a walk over tree nodes. It iterates in key order, as a `BTreeMap` does, so every
//! decision that depends on peer order is the same. Insertion and removal move the tail: fine
//! for maps of this size, where entries change far less often than they are read.

#[derive(Debug, Clone)]
pub(super) struct SortedMap<K, V> {
    /// The keys, sorted, kept apart from the values: a lookup's binary search reads a line or two of keys
    /// instead of one line of each entry it passes (a peer's state is a few hundred bytes, and
    /// at 10,000 simulated hosts every host's is cold when its event comes).
    keys: Vec<K>,
    /// `values[i]` belongs to `keys[i]`.
    values: Vec<V>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    fn find(&self, key: &K) -> Result<usize, usize> {
        self.keys.binary_search(key)
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        let at = self.find(key).ok()?;
        Some(&self.values[at])
    }

    /// Where `key` is: valid for [`SortedMap::value_at`] until the next insert or removal.
    pub(super) fn position(&self, key: &K) -> Option<usize> {
        self.find(key).ok()
    }

    pub(super) fn value_at(&self, at: usize) -> &V {
        &self.values[at]
    }

    pub(super) fn value_at_mut(&mut self, at: usize) -> &mut V {
        &mut self.values[at]
    }

    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let at = self.find(key).ok()?;
        Some(&mut self.values[at])
    }

    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the value replaced.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.values[at], value)),
            Err(at) => {
                self.keys.insert(at, key);
                self.values.insert(at, value);
                None
            }
        }
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.find(key).ok()?;
        self.keys.remove(at);
        Some(self.values.remove(at))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.keys.iter().zip(&self.values)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.keys.iter().zip(&mut self.values)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.keys.iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.values.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn behaves_as_a_btree_map() {
        let mut rng = SplitMix64::new(3);
        let mut ours: SortedMap<u32, u64> = SortedMap::default();
        let mut theirs: BTreeMap<u32, u64> = BTreeMap::new();
        for step in 0..5_000u64 {
            let key = rng.below(40) as u32;
            match rng.below(4) {
                0 | 1 => assert_eq!(ours.insert(key, step), theirs.insert(key, step)),
                2 => assert_eq!(ours.remove(&key), theirs.remove(&key)),
                _ => {
                    if let Some(value) = ours.get_mut(&key) {
                        *value += 1;
                    }
                    if let Some(value) = theirs.get_mut(&key) {
                        *value += 1;
                    }
                }
            }
            assert_eq!(ours.get(&key), theirs.get(&key));
            assert_eq!(ours.contains_key(&key), theirs.contains_key(&key));
            assert_eq!(ours.len(), theirs.len());
            assert!(ours.iter().eq(theirs.iter()));
        }
    }
}
