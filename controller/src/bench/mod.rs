//! Benchmarks and trace replays, behind the `bench` cargo feature (the `greenslice bench` command
//! enables it; the controller binary does not carry them).
//!
//! - [`openb`]: the openb production trace (nodes and pods CSVs) as typed records.
//! - [`replay`]: the FGD artifact's packing protocol over a trace; [`mig_replay`]: the same with MIG.
//! - [`live_replay`]: a sequence of live requests and releases placed offline, as the controller
//!   places them (tests/live_replay.rs checks it against a running controller).
//! - [`variants`]: seeded trace families (gpuspec, gpushare, multigpu, cpu) made from a base trace.
//! - [`packing`]: `greenslice bench packing`, comparing placement policies on the replays.
//! - [`reclaim`]: `greenslice bench reclaim`, idle reclaim at virtual time over openb arrivals.
//!
//! Imports placement, reclaim's decisions, telemetry and the model; never the engine or above.

pub mod live_replay;
pub mod mig_replay;
pub mod openb;
pub mod packing;
pub mod reclaim;
pub mod replay;
pub mod variants;
