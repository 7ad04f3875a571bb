//! The rarity order: every chunk that is needed and not in flight, ordered by how many peers
//! have it (availability), then by a fixed tie-break rank. What `pick_rarest` walks from the
//! rarest end and what tells the endgame (no such chunk available from anyone).
//!
//! One bit set per availability level, indexed by rank: a chunk's availability changes on
//! every bitfield a peer reports (tens of chunks per poll at 10 Gbit/s), and with a bit set
//! that is moving one bit, where an ordered tree of keys costs two tree operations. Walking in
//! order is walking the levels upwards and each level's set bits: the same order as sorting
//! the keys `(availability, tie-break, chunk)`, since ranks are assigned in that tie-break
//! order.

/// How a walk of the first members for a peer's chunk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    /// The first member the peer has (and that is allowed), within the steps.
    Found(u32),
    /// The steps were taken without meeting one.
    Walked,
    /// There were fewer members than steps, none of them the peer's.
    Exhausted,
}

/// See the module documentation. Members are named by rank ([`Rarity::ranks`]): the
/// scheduler keeps each chunk's rank in its per-chunk record, which it has read anyway, so a
/// change of level costs no lookup in an array of ranks of its own.
#[derive(Debug, Clone)]
pub(super) struct Rarity {
    /// Rank → chunk.
    chunk_at: Vec<u32>,
    /// 64-bit words per level.
    words: usize,
    /// Level `a` (chunks with availability `a`) is `bits[a * words..(a + 1) * words]`.
    bits: Vec<u64>,
    /// Members per level.
    counts: Vec<u32>,
    len: usize,
}

impl Rarity {
    /// An empty order over chunks `0..tiebreak.len()`, ties broken by `(tiebreak, chunk)`.
    pub(super) fn new(tiebreak: &[u32]) -> Self {
        let mut rarity = Rarity {
            chunk_at: Vec::new(),
            words: tiebreak.len().div_ceil(64),
            bits: Vec::new(),
            counts: Vec::new(),
            len: 0,
        };
        rarity.rank_by(tiebreak);
        rarity
    }

    /// Empties the order and ranks the chunks by a new tie-break.
    pub(super) fn reset(&mut self, tiebreak: &[u32]) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.len = 0;
        self.rank_by(tiebreak);
    }

    fn rank_by(&mut self, tiebreak: &[u32]) {
        let mut chunks: Vec<u32> = (0..tiebreak.len() as u32).collect();
        chunks.sort_unstable_by_key(|&chunk| (tiebreak[chunk as usize], chunk));
        self.chunk_at = chunks;
    }

    /// Chunk → its rank among the tie-breaks: ranks follow `(tiebreak, chunk)`, so comparing
    /// `(availability, rank)` orders chunks as `(availability, tiebreak, chunk)` does.
    pub(super) fn ranks(&self) -> Vec<u32> {
        let mut ranks = vec![0; self.chunk_at.len()];
        for (rank, &chunk) in self.chunk_at.iter().enumerate() {
            ranks[chunk as usize] = rank as u32;
        }
        ranks
    }

    /// Walks the first `steps` members in order, as [`Rarity::iter`] would, for the first
    /// that is in `have_ranked` (a peer's chunks by rank) and `allowed`; but visits only the
    /// members the peer has, counting the others by word.
    pub(super) fn first_held(
        &self,
        have_ranked: &[u64],
        steps: usize,
        allowed: &impl Fn(u32) -> bool,
    ) -> Walk {
        let mut walked = 0;
        for (level, _) in self.counts.iter().enumerate().filter(|&(_, &c)| c > 0) {
            let row = &self.bits[level * self.words..(level + 1) * self.words];
            for (i, (&members, &theirs)) in row.iter().zip(have_ranked).enumerate() {
                let mut candidates = members & theirs;
                while candidates != 0 {
                    let bit = candidates.trailing_zeros();
                    let position = walked + (members & ((1 << bit) - 1)).count_ones() as usize;
                    if position >= steps {
                        return Walk::Walked;
                    }
                    let chunk = self.chunk_at[i * 64 + bit as usize];
                    if allowed(chunk) {
                        return Walk::Found(chunk);
                    }
                    candidates &= candidates - 1;
                }
                walked += members.count_ones() as usize;
                if walked >= steps {
                    return Walk::Walked;
                }
            }
        }
        Walk::Exhausted
    }

    fn position(&self, availability: u32, rank: u32) -> (usize, u64) {
        let (word, bit) = rank_bit(rank);
        (availability as usize * self.words + word, bit)
    }

    pub(super) fn insert(&mut self, availability: u32, rank: u32) {
        let level = availability as usize;
        if level >= self.counts.len() {
            self.counts.resize(level + 1, 0);
            self.bits.resize((level + 1) * self.words, 0);
        }
        let (word, bit) = self.position(availability, rank);
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.counts[level] += 1;
            self.len += 1;
        }
    }

    pub(super) fn remove(&mut self, availability: u32, rank: u32) {
        if availability as usize >= self.counts.len() {
            return;
        }
        let (word, bit) = self.position(availability, rank);
        if self.bits[word] & bit != 0 {
            self.bits[word] &= !bit;
            self.counts[availability as usize] -= 1;
            self.len -= 1;
        }
    }

    #[cfg(test)]
    pub(super) fn contains(&self, availability: u32, rank: u32) -> bool {
        if availability as usize >= self.counts.len() {
            return false;
        }
        let (word, bit) = self.position(availability, rank);
        self.bits[word] & bit != 0
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether no member is available from anyone: every member is at level 0, or there is
    /// none. The scheduler asks on nearly every step of a fill, so it is a comparison, not a
    /// search of the levels.
    pub(super) fn none_available(&self) -> bool {
        self.counts
            .first()
            .is_none_or(|&unavailable| unavailable as usize == self.len)
    }

    /// The availability of the most available member: `None` when there is none.
    #[cfg(test)]
    pub(super) fn max_availability(&self) -> Option<u32> {
        self.counts.iter().rposition(|&c| c > 0).map(|a| a as u32)
    }

    /// The members, rarest first.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .flat_map(move |(level, _)| {
                let row = &self.bits[level * self.words..(level + 1) * self.words];
                row.iter().enumerate().flat_map(move |(i, &word)| {
                    SetBits(word).map(move |bit| self.chunk_at[i * 64 + bit as usize])
                })
            })
    }

    /// Bits set over all levels, for the invariant checks.
    #[cfg(test)]
    pub(super) fn bits_set(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// The word and bit of `rank` in a bit set indexed by rank (such as a peer's `have_ranked`).
pub(super) fn rank_bit(rank: u32) -> (usize, u64) {
    let rank = rank as usize;
    (rank / 64, 1 << (rank % 64))
}

/// The set bits of a word, lowest first.
#[cfg(test)]
struct SetBits(u64);

#[cfg(test)]
impl Iterator for SetBits {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn walks_in_the_order_of_sorted_keys() {
        let mut rng = SplitMix64::new(5);
        let chunks = 300u32;
        // Few distinct tie-breaks, so that ties among them fall to the chunk number.
        let tiebreak: Vec<u32> = (0..chunks).map(|_| rng.below(50) as u32).collect();
        let mut rarity = Rarity::new(&tiebreak);
        let ranks = rarity.ranks();
        let mut keys: BTreeSet<(u32, u32, u32)> = BTreeSet::new();
        let mut availability = vec![0u32; chunks as usize];
        let mut member = vec![false; chunks as usize];
        for _ in 0..20_000 {
            let chunk = rng.below(chunks as usize) as u32;
            let i = chunk as usize;
            let key = |a: u32| (a, tiebreak[i], chunk);
            let rank = ranks[i];
            match rng.below(3) {
                0 => {
                    rarity.insert(availability[i], rank);
                    keys.insert(key(availability[i]));
                    member[i] = true;
                }
                1 => {
                    rarity.remove(availability[i], rank);
                    keys.remove(&key(availability[i]));
                    member[i] = false;
                }
                _ => {
                    let next = if rng.below(2) == 0 {
                        availability[i] + 1
                    } else {
                        availability[i].saturating_sub(1)
                    };
                    if member[i] {
                        rarity.remove(availability[i], rank);
                        keys.remove(&key(availability[i]));
                        rarity.insert(next, rank);
                        keys.insert(key(next));
                    }
                    availability[i] = next;
                }
            }
            assert_eq!(rarity.len(), keys.len());
        }
        let walked: Vec<u32> = rarity.iter().collect();
        let sorted: Vec<u32> = keys.iter().map(|&(_, _, chunk)| chunk).collect();
        assert_eq!(walked, sorted);
        // `first_held` ends as a plain walk of `iter` does, for peers and limits of all sizes.
        for round in 0..200 {
            let have: Vec<u32> = (0..chunks).filter(|_| rng.below(8) < round % 9).collect();
            let mut ranked = vec![0u64; (chunks as usize).div_ceil(64)];
            for &chunk in &have {
                let (word, bit) = rank_bit(ranks[chunk as usize]);
                ranked[word] |= bit;
            }
            let steps = 1 + rng.below(80);
            let allowed = |chunk: u32| !chunk.is_multiple_of(3) || round % 2 == 0;
            let mut expected = Walk::Exhausted;
            for (position, chunk) in rarity.iter().enumerate() {
                if position == steps {
                    expected = Walk::Walked;
                    break;
                }
                if have.contains(&chunk) && allowed(chunk) {
                    expected = Walk::Found(chunk);
                    break;
                }
            }
            if expected == Walk::Exhausted && rarity.len() == steps {
                expected = Walk::Walked;
            }
            assert_eq!(rarity.first_held(&ranked, steps, &allowed), expected);
        }
        assert_eq!(
            rarity.max_availability(),
            keys.last().map(|&(available, _, _)| available)
        );
        assert_eq!(
            rarity.none_available(),
            rarity.max_availability().is_none_or(|a| a == 0)
        );
        rarity.reset(&tiebreak);
        assert_eq!(rarity.len(), 0);
        assert_eq!(rarity.iter().count(), 0);
        assert_eq!(rarity.max_availability(), None);
        assert!(rarity.none_available());
    }
}
