//! The simulator's only source of randomness: splitmix64, seeded from the scenario.
//!
//! Everything random in a run (link classes, neighbour choice, churn times, the schedulers'
//! own seeds) is drawn from generators derived from the scenario seed, so a seed names one
//! run exactly. Not for cryptography.

use shoal_protocol::rng::SplitMix64;

/// The protocol's splitmix64, with the draws a simulation needs.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// A generator for one purpose (`stream`) derived from `seed`, independent of the others.
    pub fn derived(seed: u64, stream: u64) -> Self {
        let mut rng = Rng::new(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` for `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `[low, high]`.
    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}
