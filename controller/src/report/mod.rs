//! The ops energy and carbon report: pure functions from attributed intervals to a report document,
//! and renderers for it (table, JSON, CSV, self-contained HTML).
//!
//! An interval belongs to the report when it starts inside `[from, to)` (intervals are at most one
//! attribution window long, 60 s by default). Per-tenant figures are attributions of measured GPU
//! energy (see `docs/ENERGY.md`); carbon factors that were not configured are labelled as estimates
//! with their source.
//!
//! Tier 0 (a lower room): imports energy; nothing of the engine, API or server.

mod build;
pub mod chart;
pub mod html;
pub mod round;
mod text;
pub mod zone;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use greenslice_core::time::HOUR_MS;

use crate::energy::StaticPolicy;
use crate::energy::accounting::IntervalRecord;
use crate::energy::history::{HourRollup, hour_at_or_after, hour_of};

pub use build::{build, build_from, reason_text};
pub use text::{data_span_text, hourly_line, period_text, to_csv, to_table, trend_text};
pub use zone::Zone;

/// mJ in a kWh.
pub const MJ_PER_KWH: f64 = 3.6e9;
/// ms in an hour.
pub const MS_PER_HOUR: f64 = 3.6e6;
/// GPU-µs in a GPU-hour.
const GPU_US_PER_HOUR: f64 = 3.6e9;
/// Buckets in the report's time series.
pub const SERIES_BUCKETS: usize = 48;

/// One Kubernetes ResourceClaim's line (DRA slices).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimRow {
    /// `namespace/name` of the ResourceClaim.
    pub claim: String,
    /// Its namespace, the tenant it is part of.
    pub tenant: String,
    pub gpu_hours_allocated: f64,
    pub energy_mj: u64,
    pub static_mj: u64,
    pub dynamic_mj: u64,
    /// Part of `energy_mj` from intervals whose energy was estimated from power samples.
    pub estimated_mj: u64,
    pub energy_kwh: f64,
    /// CO2e (location-based), kg, including PUE.
    pub co2e_kg: f64,
}

/// One tenant's line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantRow {
    pub tenant: String,
    /// GPU-hours held (capacity fraction x hours).
    pub gpu_hours_allocated: f64,
    /// GPU-hours used (activity-weighted).
    pub gpu_hours_used: f64,
    /// GPU-hours held in intervals where the slice's activity was under the idle threshold.
    pub gpu_hours_idle_allocated: f64,
    /// Energy attributed, mJ (exact), and its parts.
    pub energy_mj: u64,
    pub static_mj: u64,
    pub dynamic_mj: u64,
    /// Part of `energy_mj` from intervals whose energy was estimated from power samples.
    pub estimated_mj: u64,
    pub energy_kwh: f64,
    /// CO2e (location-based), kg, including PUE.
    pub co2e_kg: f64,
    /// CO2e (market-based), kg, when configured for every interval.
    pub co2e_market_kg: Option<f64>,
    /// Energy the same work would have drawn on dedicated whole GPUs, mJ.
    pub whole_gpu_mj: u64,
    /// GPU-hours given back by idle reclaim in the period (capacity x time left of the period after
    /// the reclaim), and the slices reclaimed; filled from the reclaim accounting.
    #[serde(default)]
    pub gpu_hours_reclaimed: f64,
    #[serde(default)]
    pub reclaimed_slices: u32,
    /// Energy of the slice intervals counted as idle-allocated (activity under the idle
    /// threshold), mJ; interval records only (stored hours do not keep it).
    #[serde(default)]
    pub idle_allocated_mj: u64,
    /// The same tenant's energy (mJ) and location-based CO2e (kg) in the previous period of the
    /// same length, when the history holds that period ([`Report::previous`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_energy_mj: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_co2e_kg: Option<f64>,
}

/// One GPU's line (also used for the cluster total).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRow {
    pub gpu: String,
    pub node: String,
    pub model: String,
    /// Measured energy, mJ: `tenants_mj + unattributed_mj + unallocated_idle_mj`.
    pub measured_mj: u64,
    pub tenants_mj: u64,
    pub unattributed_mj: u64,
    pub unallocated_idle_mj: u64,
    pub measured_kwh: f64,
    /// CO2e (location-based), kg, including PUE.
    pub co2e_kg: f64,
    /// CO2e (market-based), kg, when a market-based factor was configured for every interval.
    #[serde(default)]
    pub co2e_market_kg: Option<f64>,
    pub intervals: u64,
    pub estimated_intervals: u64,
    /// Length of the intervals summed, ms (GPU time accounted).
    #[serde(default)]
    pub interval_ms: u64,
    /// Measured energy of the intervals estimated from power samples, mJ.
    #[serde(default)]
    pub estimated_mj: u64,
    /// Mean board utilization over the report, percent.
    pub mean_util_pct: f64,
    /// Idle power used for the static split, mW, and whether it was calibrated from samples.
    pub idle_power_mw: u64,
    pub idle_power_calibrated: bool,
}

/// A carbon factor as used, with its source; `estimate` when it is a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorUsed {
    pub name: String,
    /// Value range over the report (equal when constant).
    pub min: f64,
    pub max: f64,
    pub unit: String,
    pub sources: Vec<String>,
    pub estimate: bool,
    /// When each source applied: one span per source, with the values it gave.
    #[serde(default)]
    pub spans: Vec<FactorSpan>,
}

/// The time range over which one source of a factor was used (interval or hour starts and ends,
/// Unix ms) and the values it gave there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorSpan {
    pub source: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub min: f64,
    pub max: f64,
}

/// What the sharing comparison is: a model, not a measurement. Shown wherever the savings are.
pub const SAVINGS_BASIS: &str = "modelled, not measured: the same work with each slice on its own whole GPU, drawing that GPU's idle power while held plus the slice's own measured dynamic energy";

/// Sharing against dedicated whole GPUs for the same work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// How the comparison is made ([`SAVINGS_BASIS`]).
    #[serde(default)]
    pub basis: String,
    /// Energy of held capacity and its work with sharing, mJ (measured minus unallocated idle).
    pub shared_mj: u64,
    /// The same work with each slice on its own whole GPU (that GPU's idle power while held, plus
    /// the same dynamic energy), mJ.
    pub whole_gpus_mj: u64,
    pub saved_kwh: f64,
    pub saved_pct: f64,
    pub saved_co2e_kg: f64,
}

/// Time series for the charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub bucket_ms: u64,
    /// Bucket starts, Unix ms.
    pub starts: Vec<u64>,
    /// Energy by tenant per bucket, kWh.
    pub tenant_kwh: BTreeMap<String, Vec<f64>>,
    /// Mean board utilization per GPU per bucket, percent (None: no data).
    pub gpu_util_pct: BTreeMap<String, Vec<Option<f64>>>,
    /// Waste per bucket, kWh: unallocated idle and unattributed energy.
    pub unallocated_idle_kwh: Vec<f64>,
    pub unattributed_kwh: Vec<f64>,
    /// Energy of idle-allocated slice intervals per bucket, kWh.
    #[serde(default)]
    pub idle_allocated_kwh: Vec<f64>,
    /// CO2e (location-based) by tenant per bucket, kg.
    #[serde(default)]
    pub tenant_co2e_kg: BTreeMap<String, Vec<f64>>,
}

/// The figures a report leads with. Each is computed from the rest of the report
/// ([`Report::refresh_headline`]); the HTML headline shows exactly these values, rounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// Measured GPU energy, kWh (GPU boards only: PUE enters CO2e, not this figure).
    pub measured_kwh: f64,
    /// CO2e location-based, kg (energy x PUE x grid intensity).
    pub co2e_location_kg: f64,
    /// CO2e market-based, kg, when configured for every interval of the period.
    pub co2e_market_kg: Option<f64>,
    /// GPU time measured (each GPU's accounted intervals summed), hours.
    pub gpu_hours: f64,
    /// Measured energy per measured GPU-hour, kWh (the mean board power, in kW).
    pub kwh_per_gpu_hour: f64,
    /// Capacity held by tenants x time, GPU-hours.
    pub gpu_hours_allocated: f64,
    /// Waste: capacity held while its activity was under the idle threshold, GPU-hours, its share
    /// of allocated GPU-hours (%), its energy (kWh) and that energy's share of measured (%).
    pub idle_allocated_gpu_hours: f64,
    pub idle_allocated_gpu_hours_pct: f64,
    pub idle_allocated_kwh: f64,
    pub idle_allocated_pct: f64,
    /// True when part of the period comes from stored hours, which keep the idle-allocated
    /// GPU-hours but not their energy: then `idle_allocated_kwh` covers the interval records only.
    pub idle_allocated_kwh_records_only: bool,
    /// Waste: idle power of GPUs nobody held, kWh and share of measured (%).
    pub unallocated_idle_kwh: f64,
    pub unallocated_idle_pct: f64,
    /// Waste: energy of activity no slice accounts for, kWh and share of measured (%).
    pub unattributed_kwh: f64,
    pub unattributed_pct: f64,
    /// Sharing against dedicated whole GPUs ([`SAVINGS_BASIS`]).
    pub saved_kwh: f64,
    pub saved_pct: f64,
    pub saved_co2e_kg: f64,
    /// Capacity given back by idle reclaim, GPU-hours, and the slices reclaimed.
    pub gpu_hours_reclaimed: f64,
    pub reclaimed_slices: u32,
    /// Intervals, those estimated from power samples, and the estimated energy (kWh, % of
    /// measured).
    pub intervals: u64,
    pub estimated_intervals: u64,
    pub estimated_kwh: f64,
    pub estimated_pct: f64,
}

/// The previous period of the same length, as far as the report compares with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreviousPeriod {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Whether the history holds it (its data starts at its start); without that, no trend.
    pub held: bool,
    /// Where its data start, Unix ms (none: no data).
    #[serde(default)]
    pub data_from_ms: Option<u64>,
    pub measured_kwh: f64,
    pub co2e_kg: f64,
}

/// The report document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub from_ms: u64,
    pub to_ms: u64,
    pub tenant_filter: Option<String>,
    /// Static energy policy: "by_capacity" (default) or "unallocated".
    pub policy: String,
    pub method: String,
    pub idle_threshold_pct: f64,
    pub tenants: Vec<TenantRow>,
    /// Kubernetes ResourceClaims (DRA), each a part of its namespace's tenant row. From the
    /// interval records only: the stored hourly history keeps tenants, not claims.
    #[serde(default)]
    pub claims: Vec<ClaimRow>,
    pub gpus: Vec<GpuRow>,
    pub cluster: GpuRow,
    pub factors: Vec<FactorUsed>,
    /// True when any factor is a default estimate (then every figure in CO2e is an estimate).
    pub co2e_is_estimate: bool,
    pub comparison: Comparison,
    pub series: Series,
    pub intervals: u64,
    pub estimated_intervals: u64,
    /// Intervals the controller could not account (bad data), over its lifetime.
    pub skipped_intervals: u64,
    /// GPU-hours given back by idle reclaim in the period, all tenants.
    #[serde(default)]
    pub gpu_hours_reclaimed: f64,
    /// The part of the period taken from the stored hourly energy history (absent when the
    /// interval records in memory cover the whole period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<HourlyPart>,
    /// Start of the first interval (or stored hour) in the report and end of the last, Unix ms.
    #[serde(default)]
    pub data_from_ms: Option<u64>,
    #[serde(default)]
    pub data_to_ms: Option<u64>,
    /// Estimated intervals by why the energy counter was not used (`counter_unsupported`,
    /// `missing_boundary_reading`, `counter_decreased`, `counter_gap`; `stored_hours` for those in
    /// stored hours, which keep the count but not the reason).
    #[serde(default)]
    pub estimated_reasons: BTreeMap<String, u64>,
    /// Interval records by how their dynamic energy was split among slices (`sm_split`,
    /// `activity_fit`, or the SM split with why the fit was not used); stored hours do not keep it.
    #[serde(default)]
    pub dynamic_methods: BTreeMap<String, u64>,
    /// The previous period of the same length, for per-tenant trends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousPeriod>,
    /// The headline figures, from the data above.
    #[serde(default)]
    pub headline: Headline,
}

/// The part of a report taken from hourly rollups (the energy history) instead of interval records.
///
/// Tenant rows, cluster totals, `intervals`, the comparison and the factors cover the whole period;
/// per-GPU rows (`gpus`), the time series and per-GPU utilization cover only the interval records,
/// those starting in `[to_ms, report end)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HourlyPart {
    /// The hours starting in `[from_ms, to_ms)` (Unix ms, whole UTC hours) come from rollups. An
    /// hour belongs to the report when it starts inside the report's period, so give hour-aligned
    /// bounds for exact coverage.
    pub from_ms: u64,
    pub to_ms: u64,
    /// Hours that had energy.
    pub hours: u64,
    /// Intervals in them.
    pub intervals: u64,
    /// Where this part comes from.
    pub note: String,
}

/// What a report is built from: interval records (in memory, the last few hours) and hour
/// rollups (stored), split at a whole hour so that no interval is counted twice.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Interval records from the cut on.
    pub records: Vec<IntervalRecord>,
    /// Rollups of the hours before the cut.
    pub hours: Vec<HourRollup>,
    pub hourly: Option<HourlyPart>,
    pub policy: StaticPolicy,
    /// Intervals the controller could not account, over its lifetime.
    pub skipped_intervals: u64,
}

impl Sources {
    /// Splits a report over `[from_ms, to_ms)` between `records` (the interval records in memory
    /// overlapping the whole hours around the period) and `hours` (every rollup of those hours,
    /// each holding every interval of its hour that was attributed, by this controller or an
    /// earlier one). An hour's records in memory are complete when there are as many as its
    /// rollup has intervals (the rollup holds every record in memory). The cut is the end of the
    /// latest hour where they are not: rollups before it, records from it on.
    pub fn split(
        records: Vec<IntervalRecord>,
        hours: Vec<HourRollup>,
        from_ms: u64,
        to_ms: u64,
        policy: StaticPolicy,
        skipped_intervals: u64,
    ) -> Sources {
        let mut in_memory: BTreeMap<u64, u64> = BTreeMap::new();
        for r in &records {
            *in_memory.entry(hour_of(r.interval.start_ms)).or_default() += 1;
        }
        let cut = hours
            .iter()
            .filter(|h| {
                h.cluster.energy.intervals != in_memory.get(&h.hour_start_ms).copied().unwrap_or(0)
            })
            .map(|h| h.hour_start_ms + HOUR_MS)
            .max()
            .unwrap_or(0);
        let first = hour_at_or_after(from_ms);
        if cut <= first {
            return Sources {
                records,
                policy,
                skipped_intervals,
                ..Default::default()
            };
        }
        let hours: Vec<HourRollup> = hours
            .into_iter()
            .filter(|h| h.hour_start_ms >= first && h.hour_start_ms < cut.min(to_ms))
            .collect();
        let hourly = HourlyPart {
            from_ms: first,
            to_ms: cut.min(hour_at_or_after(to_ms)),
            hours: hours.len() as u64,
            intervals: hours.iter().map(|h| h.cluster.energy.intervals).sum(),
            note: "tenant rows and cluster totals include these hours from the stored hourly \
                   energy history; per-GPU rows and series cover only the interval records after \
                   them"
                .to_string(),
        };
        Sources {
            records: records
                .into_iter()
                .filter(|r| r.interval.start_ms >= cut)
                .collect(),
            hours,
            hourly: Some(hourly),
            policy,
            skipped_intervals,
        }
    }
}

/// Adds idle-reclaim figures (per tenant: GPU-hours reclaimed, slices reclaimed) to a report.
/// Tenants that were reclaimed but drew no energy in the period get a row of their own.
pub fn add_reclaimed(r: &mut Report, reclaimed: &[(String, f64, u32)]) {
    for (tenant, gpu_h, slices) in reclaimed {
        if r.tenant_filter.as_deref().is_some_and(|t| t != tenant)
            || (*gpu_h == 0.0 && *slices == 0)
        {
            continue;
        }
        match r.tenants.iter_mut().find(|t| t.tenant == *tenant) {
            Some(t) => {
                t.gpu_hours_reclaimed = *gpu_h;
                t.reclaimed_slices = *slices;
            }
            None => r.tenants.push(TenantRow {
                tenant: tenant.clone(),
                gpu_hours_reclaimed: *gpu_h,
                reclaimed_slices: *slices,
                ..Default::default()
            }),
        }
        r.gpu_hours_reclaimed += gpu_h;
    }
    r.tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    r.refresh_headline();
}

/// The previous period of the same length as `[from_ms, to_ms)`; none for a report from the
/// beginning of the history (`from_ms` 0) or one longer than the time before it.
pub fn previous_period(from_ms: u64, to_ms: u64) -> Option<(u64, u64)> {
    let len = to_ms.checked_sub(from_ms).filter(|l| *l > 0)?;
    (from_ms > 0 && from_ms >= len).then(|| (from_ms - len, from_ms))
}

/// Adds the previous period of the same length, built from `prev` (the sources over
/// [`previous_period`]), for per-tenant trends. The history holds the period when its data start
/// within one series bucket (at least five minutes) of its start; otherwise the report says so and
/// shows no trend, since a part-covered period would read as growth.
pub fn add_previous(r: &mut Report, prev: &Sources, idle_threshold_pct: f64) {
    let Some((pf, pt)) = previous_period(r.from_ms, r.to_ms) else {
        return;
    };
    let p = build_from(prev, pf, pt, r.tenant_filter.as_deref(), idle_threshold_pct);
    let tolerance = ((pt - pf) / SERIES_BUCKETS as u64).max(5 * 60_000);
    let held = p.data_from_ms.is_some_and(|d| d <= pf + tolerance);
    if held {
        for t in &mut r.tenants {
            let before = p.tenants.iter().find(|x| x.tenant == t.tenant);
            t.previous_energy_mj = Some(before.map_or(0, |b| b.energy_mj));
            t.previous_co2e_kg = Some(before.map_or(0.0, |b| b.co2e_kg));
        }
    }
    r.previous = Some(PreviousPeriod {
        from_ms: pf,
        to_ms: pt,
        held,
        data_from_ms: p.data_from_ms,
        measured_kwh: p.headline.measured_kwh,
        co2e_kg: p.headline.co2e_location_kg,
    });
}

#[cfg(test)]
mod audit_tests;

#[cfg(test)]
mod tests;
