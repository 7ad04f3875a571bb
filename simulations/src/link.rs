//! The bandwidth model: every link is a FIFO server at its full rate.
//!
//! A host's uplink, its downlink, and a site's shared uplink and downlink are each a
//! [`Link`]: a chunk occupies it for `bytes / rate`, after whatever it already carries. This
//! is exactly the node's token-bucket limiters (`--max-egress`, `--max-ingress`, `exchange/rate.rs`),
//! which serve requests in order. A chunk crossing several links is reserved on each in path
//! order, each reservation starting no earlier than the previous link's (cut-through); it
//! arrives when the last reservation ends, plus the one-way latency. Each link is occupied
//! for the chunk at its own full rate, so a chunk is not slowed on one link by its
//! bottleneck being another (links joined by unbounded buffers).
//!
//! A link keeps its reservations as busy intervals, so a chunk reserved on a downstream link
//! for later (its upstream link is queued) leaves the gap before it to other chunks: the link
//! is work-conserving, as a real one is.
//!
//! Why not max-min fair flows: with 10,000 hosts and ~100 chunks in flight per host,
//! recomputing shares on every start and end is quadratic; a FIFO link is O(1) per chunk and
//! never carries more than its capacity, so a node's uplink is never counted twice. The cost is
//! that a link reserved for a chunk whose other link is slower sits idle meanwhile (pessimistic
//! by at most the rate ratio for that chunk), and that chunks are served in arrival order
//! rather than interleaved (which finishes the first ones sooner, as the node's limiter does).

/// Virtual time in microseconds.
use std::collections::VecDeque;

use crate::topology::SiteLinks;

/// Each site's shared uplink and downlink, in site order.
pub fn site_links(sites: &[SiteLinks]) -> (Vec<Link>, Vec<Link>) {
    let up = sites.iter().map(|s| Link::new(s.up_mbps)).collect();
    let down = sites.iter().map(|s| Link::new(s.down_mbps)).collect();
    (up, down)
}

pub type Micros = u64;

pub const MICROS_PER_SECOND: f64 = 1e6;

#[derive(Debug, Clone)]
pub struct Link {
    /// Bytes per microsecond.
    rate: f64,
    /// Reserved `[start, end)` intervals, sorted, disjoint, not touching, none ended before
    /// the last `now` seen. Downstream links of a path get reservations that start in the
    /// future (when the upstream link gets to the chunk); the gaps before them stay usable.
    busy: VecDeque<(Micros, Micros)>,
    bytes: u64,
}

impl Link {
    pub fn new(mbps: f64) -> Self {
        Link {
            rate: mbps / 8.0,
            busy: VecDeque::new(),
            bytes: 0,
        }
    }

    /// How long until everything reserved so far has been sent: the wait a chunk offered now
    /// would have behind the queue (what the node's `Busy` threshold measures).
    pub fn backlog(&self, now: Micros) -> Micros {
        self.busy
            .back()
            .map_or(0, |&(_, end)| end.saturating_sub(now))
    }

    /// Reserves the link for `bytes` in the first gap at or after `earliest` long enough for
    /// them; returns when they start and when they have been sent. `now` (the current event
    /// time, never after `earliest`) lets past intervals be forgotten.
    pub fn reserve(&mut self, now: Micros, earliest: Micros, bytes: u64) -> (Micros, Micros) {
        while self.busy.front().is_some_and(|&(_, end)| end <= now) {
            self.busy.pop_front();
        }
        let duration = ((bytes as f64 / self.rate).ceil() as Micros).max(1);
        // Most chunks go after everything reserved: no search then.
        let first = if self.busy.back().is_none_or(|&(_, end)| end <= earliest) {
            self.busy.len()
        } else {
            self.busy.partition_point(|&(_, end)| end <= earliest)
        };
        let mut start = earliest;
        let mut at = first;
        while at < self.busy.len() {
            let (s, e) = self.busy[at];
            if start + duration <= s {
                break;
            }
            start = start.max(e);
            at += 1;
        }
        let end = start + duration;
        self.insert(at, start, end);
        self.bytes += bytes;
        (start, end)
    }

    /// Inserts `[start, end)` before index `at`, merging with neighbours it touches.
    fn insert(&mut self, at: usize, start: Micros, end: Micros) {
        let joins_previous = at > 0 && self.busy[at - 1].1 == start;
        let joins_next = at < self.busy.len() && self.busy[at].0 == end;
        match (joins_previous, joins_next) {
            (true, true) => {
                let next_end = self.busy[at].1;
                self.busy[at - 1].1 = next_end;
                self.busy.remove(at);
            }
            (true, false) => self.busy[at - 1].1 = end,
            (false, true) => self.busy[at].0 = start,
            (false, false) => self.busy.insert(at, (start, end)),
        }
    }

    /// Reserves `bytes` on each link of a path in order, each starting no earlier than the
    /// one before it did (cut-through: bytes cannot be on a link before they left the
    /// previous one); returns when the last byte has crossed them all.
    pub fn reserve_path(
        path: &mut [&mut Link],
        now: Micros,
        earliest: Micros,
        bytes: u64,
    ) -> Micros {
        let mut start = earliest;
        let mut end = earliest;
        for link in path.iter_mut() {
            let (s, e) = link.reserve(now, start, bytes);
            start = s;
            end = end.max(e);
        }
        end
    }

    /// Bytes carried so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

pub fn seconds(t: Micros) -> f64 {
    t as f64 / MICROS_PER_SECOND
}

pub fn micros(seconds: f64) -> Micros {
    (seconds * MICROS_PER_SECOND).round().max(0.0) as Micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_serves_in_order_at_its_rate() {
        // 8 Mbit/s is one byte per microsecond.
        let mut link = Link::new(8.0);
        assert_eq!(link.reserve(0, 0, 1000), (0, 1000));
        assert_eq!(link.backlog(500), 500);
        assert_eq!(link.reserve(500, 500, 1000), (1000, 2000));
        assert_eq!(link.reserve(5000, 5000, 10), (5000, 5010));
        assert_eq!(link.bytes(), 2010);
    }

    #[test]
    fn a_future_reservation_leaves_the_gap_before_it_usable() {
        let mut link = Link::new(8.0);
        assert_eq!(link.reserve(0, 3000, 1000), (3000, 4000));
        // Fits before it.
        assert_eq!(link.reserve(0, 0, 2000), (0, 2000));
        // Does not fit in the 1000 µs left: goes after.
        assert_eq!(link.reserve(0, 0, 1500), (4000, 5500));
        assert_eq!(link.reserve(0, 0, 1000), (2000, 3000));
        assert_eq!(link.busy.len(), 1, "touching intervals merge");
        assert_eq!(link.backlog(0), 5500);
    }

    #[test]
    fn a_path_starts_each_link_after_the_previous_one_started() {
        let mut up = Link::new(8.0);
        let mut down = Link::new(16.0);
        up.reserve(0, 0, 4000);
        // Queued 4000 µs on the uplink: the downlink cannot start before then.
        let end = Link::reserve_path(&mut [&mut up, &mut down], 0, 0, 1000);
        assert_eq!(end, 5000);
        assert_eq!(down.backlog(0), 4500);
        // The downlink's gap before that is still free for a chunk from an idle sender.
        let mut idle = Link::new(16.0);
        assert_eq!(
            Link::reserve_path(&mut [&mut idle, &mut down], 0, 0, 1000),
            500
        );
    }
}
