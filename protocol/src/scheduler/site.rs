//! One copy per site: when this node and some of its peers share a site (a LAN behind a slow
//! link), a bounded number of the site-mates fetching the blob are its *fetchers* — the
//! `fetchers_max` highest rank keys (a hash of peer id and blob) — and each chunk has one
//! *owner* among them, the one with the highest `mix64(rank key ^ mix64(chunk))`: the same
//! answer on every node of the site, with no coordinator. Only the owner asks peers outside the
//! site for that chunk; the others wait for it to appear on a site-mate and take it from there,
//! while it is still arriving on the site. Few fetchers keep the requests queued on the site's
//! link few (each fetcher's own in-flight limits then adapt to the link, as one host's would),
//! and more than one keeps a slow fetcher from setting the pace alone.
//!
//! Take-over: a site-mate that leaves stops counting as soon as the node reports it
//! (`PeerLeft`), so its chunks pass to the next-ranked mate. If the site as a whole makes no
//! progress for `patience` (an owner is stuck, or cannot reach outside), every node may fetch
//! any chunk from outside until it does again: a stalled owner costs duplicates, never a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::rng::mix64;

#[derive(Debug, Clone)]
pub(super) struct Site<P> {
    own_key: u64,
    /// Site-mates and their rank keys, whether or not they take part in this transfer yet.
    members: BTreeMap<P, u64>,
    fetchers_max: usize,
    patience: Duration,
    /// When a site-mate last gained a chunk, as far as this node can see (this node's own
    /// gains from outside do not count: they say nothing about the owners).
    progress_at: Duration,
}

fn score(key: u64, chunk: u32) -> u64 {
    mix64(key ^ mix64(u64::from(chunk)))
}

impl<P: Ord + Clone> Site<P> {
    pub(super) fn new(
        own_key: u64,
        fetchers_max: usize,
        patience: Duration,
        now: Duration,
    ) -> Self {
        Site {
            own_key,
            members: BTreeMap::new(),
            fetchers_max: fetchers_max.max(1),
            patience,
            progress_at: now,
        }
    }

    pub(super) fn add_member(&mut self, peer: P, key: u64) {
        self.members.insert(peer, key);
    }

    pub(super) fn is_member(&self, peer: &P) -> bool {
        self.members.contains_key(peer)
    }

    pub(super) fn progressed(&mut self, now: Duration) {
        self.progress_at = self.progress_at.max(now);
    }

    /// Whether the site has gone without progress long enough that anyone may fetch anything.
    pub(super) fn stalled(&self, now: Duration) -> bool {
        now.saturating_sub(self.progress_at) > self.patience
    }

    /// The site's fetchers among this node and the mates for which `taking_part` holds: their
    /// rank keys, or nothing when this node is not one of them.
    pub(super) fn fetchers(&self, taking_part: impl Fn(&P) -> bool) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .members
            .iter()
            .filter(|(peer, _)| taking_part(peer))
            .map(|(_, &key)| key)
            .chain([self.own_key])
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.truncate(self.fetchers_max);
        if keys.contains(&self.own_key) {
            keys
        } else {
            Vec::new()
        }
    }

    /// Whether this node owns `chunk` among `fetchers` (from [`Site::fetchers`]).
    pub(super) fn owns(&self, chunk: u32, fetchers: &[u64]) -> bool {
        let own = score(self.own_key, chunk);
        fetchers.contains(&self.own_key)
            && fetchers
                .iter()
                .all(|&key| key == self.own_key || score(key, chunk) < own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_has_exactly_one_owner_among_the_mates_and_shares_are_even() {
        let keys = [11u64, 22, 33];
        let sites: Vec<Site<u64>> = keys
            .iter()
            .map(|&own| {
                let mut site = Site::new(own, 3, Duration::from_secs(5), Duration::ZERO);
                for &other in keys.iter().filter(|&&k| k != own) {
                    site.add_member(other, other);
                }
                site
            })
            .collect();
        let mut shares = [0u32; 3];
        for chunk in 0..3000 {
            let owners: Vec<usize> = (0..3)
                .filter(|&i| sites[i].owns(chunk, &sites[i].fetchers(|_| true)))
                .collect();
            assert_eq!(owners.len(), 1, "chunk {chunk}: {owners:?}");
            shares[owners[0]] += 1;
        }
        assert!(
            shares.iter().all(|&share| (800..1200).contains(&share)),
            "{shares:?}"
        );
        // A mate that left no longer owns anything: the others split its share.
        let without_33 = sites[0].fetchers(|peer| *peer != 33);
        let owned_without_33 = (0..3000)
            .filter(|&chunk| sites[0].owns(chunk, &without_33))
            .count();
        assert!(owned_without_33 > shares[0] as usize + 300);
    }

    #[test]
    fn only_the_top_ranked_mates_fetch() {
        let mut low: Site<u64> = Site::new(1, 2, Duration::from_secs(5), Duration::ZERO);
        let mut high: Site<u64> = Site::new(30, 2, Duration::from_secs(5), Duration::ZERO);
        for (peer, key) in [(20u64, 20u64), (30, 30), (1, 1)] {
            low.add_member(peer, key);
            high.add_member(peer, key);
        }
        assert!(low.fetchers(|_| true).is_empty());
        assert!((0..100).all(|chunk| !low.owns(chunk, &low.fetchers(|_| true))));
        assert_eq!(high.fetchers(|peer| *peer != 30), vec![30, 20]);
        // When a fetcher leaves, the next-ranked mate becomes one.
        assert_eq!(low.fetchers(|peer| *peer != 30), vec![20, 1]);
    }

    #[test]
    fn a_site_without_progress_for_its_patience_is_stalled() {
        let mut site: Site<u64> = Site::new(1, 2, Duration::from_secs(5), Duration::ZERO);
        assert!(!site.stalled(Duration::from_secs(5)));
        assert!(site.stalled(Duration::from_secs(6)));
        site.progressed(Duration::from_secs(6));
        assert!(!site.stalled(Duration::from_secs(10)));
    }
}
