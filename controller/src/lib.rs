//! The greenslice controller: the cluster view, placement, the slice lifecycle and the gRPC services.
//!
//! - [`engine`]: the `Controller`, split by operation: it validates, places, commits and applies
//!   slices, recovers nodes, sweeps, and keeps the energy book.
//! - [`state`]: nodes and slices in memory; capacity in use is derived from live slices.
//! - [`placement`]: pure placement policies.
//! - [`ledger`]: where desired state is committed before it is acknowledged (memory, redb, etcd),
//!   with group commit; [`standby`]: what a non-leader replica serves.
//! - [`cli`]: the controller's flags and main loop (ledger choice, etcd leader election).
//! - [`agents`]: connected node agents and commands in flight.
//! - [`energy`]: measured energy per GPU, its exact attribution to tenants, and CO2e.
//! - [`telemetry`]: utilization, power and energy samples from the agents.
//! - [`reclaim`]: the idle policy, idle reclaim and MIG re-layout; [`metrics`]: Prometheus.
//! - [`report`]: the ops energy and carbon report (table, JSON, CSV, HTML).
//! - [`auth`]: who is calling (tokens, agent certificates, insecure mode) and what they may do;
//!   [`quota`]: per-tenant limits.
//! - [`api`]: the gRPC services; [`server`] serves them.
//! - `bench` (feature `bench`): benchmarks and trace replays for `greenslice bench`.

pub mod agents;
pub mod api;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod energy;
pub mod engine;
pub mod error;
pub mod ledger;
pub mod model;
pub mod obs;
pub mod placement;
pub mod quota;
pub mod reclaim;
pub mod report;
pub mod server;
pub mod telemetry;
