//! The `greenslice` package: the command-line binary, and [`harness`], which starts a controller and
//! simulated node agents in one process (used by `greenslice demo`, the benchmarks and tests).

pub mod bench;
pub mod harness;
