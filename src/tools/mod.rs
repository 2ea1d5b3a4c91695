//! The command-line tools around the core: the demo (`baton demo`), the
//! benchmarks (`baton bench`, `baton bench stall`), the soak (`baton soak`)
//! and their shared report ending. Only the demo is built without the `cli` feature.

#[cfg(feature = "cli")]
pub mod bench;
pub mod demo;
#[cfg(feature = "cli")]
pub mod report;
pub mod scenario;
#[cfg(feature = "cli")]
pub mod soak;
#[cfg(feature = "cli")]
pub mod stall_bench;
