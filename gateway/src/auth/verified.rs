//! Credentials that passed bcrypt recently, so clients that send Basic credentials on every
//! request (docker pulling blobs with Basic, skopeo) pay bcrypt once per [`VERIFIED_TTL`], not
//! once per request. Keys are `sha256(user, password)`: the passwords themselves are never
//! kept.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Short, so a password changed in the htpasswd file stops working soon even without a reload
/// (a reload empties the cache at once).
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Distinct (user, password) pairs remembered; at most a few kilobytes.
pub const VERIFIED_MAX: usize = 1024;

#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

fn key(user: &str, password: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update((user.len() as u64).to_le_bytes())
        .chain_update(user.as_bytes())
        .chain_update(password)
        .finalize()
        .into()
}

impl VerifiedCache {
    pub fn contains(&self, user: &str, password: &[u8], now: Instant) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&key(user, password))
            .is_some_and(|verified| now.duration_since(*verified) < VERIFIED_TTL)
    }

    pub fn insert(&self, user: &str, password: &[u8], now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= VERIFIED_MAX {
            entries.retain(|_, verified| now.duration_since(*verified) < VERIFIED_TTL);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(key(user, password), now);
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_pairs_for_a_while() {
        let cache = VerifiedCache::default();
        let now = Instant::now();
        cache.insert("alice", b"pw", now);
        assert!(cache.contains("alice", b"pw", now));
        assert!(!cache.contains("alice", b"pw2", now));
        assert!(!cache.contains("alic", b"epw", now));
        assert!(!cache.contains("alice", b"pw", now + VERIFIED_TTL));
        for i in 0..(VERIFIED_MAX * 3) {
            cache.insert(&i.to_string(), b"x", now);
        }
        assert!(cache.entries.lock().unwrap().len() <= VERIFIED_MAX);
    }
}
