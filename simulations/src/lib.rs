//! Shoal's simulator: the node's own exchange machines (`shoal_protocol::Fetch` with its
//! scheduler, `shoal_protocol::Serving`, the have-feed rule) on thousands of simulated hosts,
//! with simulated links, time and randomness.
//!
//! Deterministic discrete-event simulation: a virtual clock in microseconds, one event
//! [`queue`], every random choice drawn from the scenario's seed ([`rng`]), no wall clock and
//! no threads. A scenario (TOML, [`scenario`]) becomes a [`topology`] (hosts, sites, links,
//! neighbours, churn), which [`sim`] runs — driving one fetch machine per host as the node's
//! `exchange/fetch/transfer.rs` does — over in-order, work-conserving [`link`]s. [`report`]
//! adds the Kumar–Ross [`bound`] and the naive [`baseline`]s, and renders JSON, Markdown and
//! an [`svg`] CDF plot.
//!
//! Not for: predicting absolute times of a real fleet (see `README.md` for what the model
//! leaves out), nor testing the node's networking (the end-to-end tests do that).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod baseline;
pub mod bound;
pub mod link;
pub mod queue;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod stats;
pub mod svg;
pub mod topology;
pub mod trace;

pub use report::{Report, run};
pub use scenario::Scenario;
