//! Benchmarks and trace replays, behind the `bench` cargo feature (the `greenslice bench` command
//! enables it; the controller binary does not carry them).
//!
//! - [`openb`]: the openb production trace (nodes and pods CSVs) as typed records.
//! - [`replay`]: the FGD artifact's packing protocol over a trace; [`mig_replay`]: the same with MIG.
//! - [`variants`]: seeded trace families (gpuspec, gpushare, multigpu, cpu) made from a base trace.
//! - [`packing`]: `greenslice bench packing`, comparing placement policies on the replays.
//! - [`reclaim`]: `greenslice bench reclaim`, idle reclaim at virtual time over openb arrivals.
//!
//! Imports placement, reclaim's decisions, telemetry and the model; never the engine or above.

pub mod mig_replay;
pub mod openb;
pub mod packing;
pub mod reclaim;
pub mod replay;
pub mod variants;
