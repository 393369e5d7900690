//! dcloud-sim: a deterministic, seeded, virtual-time fleet simulator that
//! drives many real [`dcloud_node::engine::Engine`]s in one process.
//!
//! * [`scenario`]: TOML scenarios (fleet, links, faults, load, seed);
//! * [`sim`]: the event queue, the network and node models, the checkers;
//! * [`report`]: figures, table, JSON, CSV and SVG.

pub mod report;
pub mod scenario;
pub mod sim;

pub use report::Report;
pub use scenario::Scenario;
pub use sim::{RunResult, Sim, Violation};

/// Run `scenario` with `seed` (no progress display).
pub fn run(scenario: Scenario, seed: u64) -> RunResult {
    Sim::new(scenario, seed).run(|_| {})
}
