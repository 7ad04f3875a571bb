//! Placeholder until the simulation issue: the simulator will drive the scheduler in `shoal-protocol`.
