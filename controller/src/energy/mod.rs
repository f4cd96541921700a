//! Per-tenant energy and carbon attribution (issue 6): pure, deterministic functions, no I/O.
//!
//! NVML measures energy only per physical GPU, so every per-tenant figure here is an attribution of a
//! measured total, exact in sum: for every GPU and interval,
//! `sum(slice rows) + unattributed + unallocated idle == measured`, in integer mJ.
//!
//! - [`measure`](mod@measure): the measured energy of one GPU over one interval (counter delta, or a flagged
//!   estimate from power samples), keeping the raw counter readings for audit.
//! - [`attribution`]: the split of that energy into static and dynamic parts and onto the slices
//!   holding the GPU, the unattributed row and unallocated idle.
//! - [`carbon`]: CO2e from energy, PUE and grid carbon intensity (constants or hourly series), with
//!   defaults flagged as estimates with their source.
//! - [`accounting`]: from the agents' sample streams to attributed intervals (the bridge to I/O).
//! - [`fit`]: the activity-vector fit (SM, DRAM, tensor) that weighs dynamic energy better than
//!   SM% alone, with the SM split as its labelled fallback.
//! - [`ledger`]: totals per tenant, per GPU and for the cluster, for reports and metrics.
//!
//! The method, its options and a worked example are in `docs/ENERGY.md`.
//!
//! Tier 0 (a lower room): imports nothing of the engine, API or server.

pub mod accounting;
mod apportion;
pub mod attribution;
pub mod carbon;
pub mod fit;
#[cfg(test)]
mod gap_tests;
pub mod history;
pub mod ledger;
pub mod measure;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use attribution::{
    Attribution, AttributionError, AttributionInput, Capacity, Holder, SliceActivity, SliceEnergy,
    StaticPolicy, attribute,
};
pub use carbon::{
    CarbonError, CarbonFactors, Co2e, CsvError, Factor, FactorSource, HourlySeries, Intensity,
    SiteCarbon,
};
pub use ledger::{EnergyLedger, GpuTotals, LedgerError, TenantTotals};
pub use measure::{
    CounterReading, EstimateReason, MeasureConfig, MeasureError, Measurement, PowerSample, Quality,
    calibrate_idle_power_mw, measure,
};

/// A half-open stretch of time `[start_ms, end_ms)`, in Unix time ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// Start, Unix time in ms.
    pub start_ms: u64,
    /// End, Unix time in ms.
    pub end_ms: u64,
}

impl Interval {
    /// Length in ms (0 when `end_ms <= start_ms`).
    pub fn len_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}
