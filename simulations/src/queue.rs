//! The event queue: events ordered by virtual time, ties in the order they were pushed, so a
//! run never depends on anything but its inputs.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::link::Micros;

#[derive(Debug)]
struct Queued<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Queued<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Queued<E> {}
impl<E> PartialOrd for Queued<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Queued<E> {
    /// Reversed: the max-heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// How many microseconds one bucket of the calendar spans: 128 µs holds a few hundred events
/// at 10,000 hosts, so the heap of the bucket being drained stays in cache.
const BUCKET_SHIFT: u32 = 7;

/// Buckets in the calendar: 8,192 × 128 µs ≈ 1 s ahead, past the node's 500 ms peer refresh
/// and a queued uplink's 150 ms, so that nearly every event goes straight to its bucket.
const BUCKETS: u64 = 1 << 13;

/// A calendar queue: events within about a second of the bucket being drained wait unsorted
/// in a ring of buckets (O(1) to push), the bucket being drained is a small heap, and events
/// further ahead wait in a heap of their own until the ring reaches them. A single heap of
/// every pending event (millions at 10,000 hosts) costs a cache miss per level on every pop.
#[derive(Debug)]
pub struct EventQueue<E> {
    /// The events of bucket `current`, earliest on top.
    current: BinaryHeap<Queued<E>>,
    current_bucket: u64,
    /// Bucket `b` in `(current_bucket, current_bucket + BUCKETS)` at `b % BUCKETS`.
    ring: Vec<Vec<Queued<E>>>,
    /// Events in the ring.
    ring_len: usize,
    /// Events of buckets from `current_bucket + BUCKETS` on.
    far: BinaryHeap<Queued<E>>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            current: BinaryHeap::new(),
            current_bucket: 0,
            ring: (0..BUCKETS).map(|_| Vec::new()).collect(),
            ring_len: 0,
            far: BinaryHeap::new(),
            seq: 0,
        }
    }
}

fn bucket(at: Micros) -> u64 {
    at >> BUCKET_SHIFT
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at: Micros, event: E) {
        self.seq += 1;
        let queued = Queued {
            at,
            seq: self.seq,
            event,
        };
        let b = bucket(at);
        if b <= self.current_bucket {
            self.current.push(queued);
        } else if b < self.current_bucket + BUCKETS {
            self.ring[(b % BUCKETS) as usize].push(queued);
            self.ring_len += 1;
        } else {
            self.far.push(queued);
        }
    }

    /// The earliest event, first pushed first among equals.
    pub fn pop(&mut self) -> Option<(Micros, E)> {
        loop {
            if let Some(q) = self.current.pop() {
                return Some((q.at, q.event));
            }
            if self.ring_len == 0 {
                // Nothing within the ring: skip to the bucket before the earliest far event.
                let next = self.far.peek()?;
                self.current_bucket = self.current_bucket.max(bucket(next.at) - 1);
            }
            self.advance();
        }
    }

    /// Makes the next bucket the current one (the current heap is empty).
    fn advance(&mut self) {
        self.current_bucket += 1;
        let horizon = self.current_bucket + BUCKETS;
        while self.far.peek().is_some_and(|q| bucket(q.at) < horizon) {
            if let Some(q) = self.far.pop() {
                let b = bucket(q.at);
                if b <= self.current_bucket {
                    self.current.push(q);
                } else {
                    self.ring[(b % BUCKETS) as usize].push(q);
                    self.ring_len += 1;
                }
            }
        }
        let slot = &mut self.ring[(self.current_bucket % BUCKETS) as usize];
        if slot.is_empty() {
            return;
        }
        self.ring_len -= slot.len();
        // Swap the bucket's events into the heap and keep the spent heap's allocation as the
        // slot's next vector.
        let mut events = std::mem::take(slot);
        let mut spent = std::mem::take(&mut self.current).into_vec();
        events.append(&mut spent);
        self.current = BinaryHeap::from(events);
        self.ring[(self.current_bucket % BUCKETS) as usize] = spent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_in_push_order() {
        let mut queue = EventQueue::default();
        queue.push(5, 'a');
        queue.push(1, 'b');
        queue.push(5, 'c');
        queue.push(1, 'd');
        let order: Vec<char> = std::iter::from_fn(|| queue.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, vec!['b', 'd', 'a', 'c']);
    }

    #[test]
    fn the_calendar_pops_what_one_heap_would() {
        // Times within a bucket, across buckets, beyond the ring and far beyond it, pushed
        // while popping as the simulator does; the order must equal a plain sort.
        let mut queue = EventQueue::default();
        let mut expected = Vec::new();
        let mut rng = crate::rng::Rng::new(7);
        let mut now = 0;
        let mut seq = 0u64;
        let mut popped = Vec::new();
        for round in 0..20_000u64 {
            for _ in 0..(round % 3) {
                let ahead = match rng.below(4) {
                    0 => rng.below(200),
                    1 => rng.below(20_000),
                    2 => rng.below(2_000_000),
                    _ => rng.below(50_000_000),
                } as Micros;
                let at = now + ahead;
                seq += 1;
                queue.push(at, seq);
                expected.push((at, seq));
            }
            if round % 2 == 0
                && let Some((at, e)) = queue.pop()
            {
                assert!(at >= now);
                now = at;
                popped.push((at, e));
            }
        }
        while let Some(event) = queue.pop() {
            popped.push(event);
        }
        expected.sort_unstable();
        assert_eq!(popped, expected);
    }
}
