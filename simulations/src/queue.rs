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

#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Queued<E>>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at: Micros, event: E) {
        self.seq += 1;
        self.heap.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    /// The earliest event, first pushed first among equals.
    pub fn pop(&mut self) -> Option<(Micros, E)> {
        self.heap.pop().map(|q| (q.at, q.event))
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
}
