//! The ops energy and carbon report: pure functions from attributed intervals to a report document,
//! and renderers for it (table, JSON, CSV, self-contained HTML).
//!
//! An interval belongs to the report when it starts inside `[from, to)` (intervals are at most one
//! attribution window long, 60 s by default). Per-tenant figures are attributions of measured GPU
//! energy (see `docs/ENERGY.md`); carbon factors that were not configured are labelled as estimates
//! with their source.

pub mod chart;
pub mod html;
pub mod round;
pub mod zone;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use greenslice_core::time::HOUR_MS;

use crate::energy::StaticPolicy;
use crate::energy::accounting::IntervalRecord;
use crate::energy::carbon::{CarbonFactors, Factor};
use crate::energy::history::{
    FactorRange, HourRollup, fold_factors, hour_at_or_after, hour_of, merge_factors, source_name,
};
use crate::energy::measure::EstimateReason;

pub use zone::Zone;

/// mJ in a kWh.
pub const MJ_PER_KWH: f64 = 3.6e9;
/// ms in an hour.
pub const MS_PER_HOUR: f64 = 3.6e6;
/// GPU-µs in a GPU-hour.
const GPU_US_PER_HOUR: f64 = 3.6e9;
/// Buckets in the report's time series.
pub const SERIES_BUCKETS: usize = 48;

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

fn kwh(mj: u64) -> f64 {
    mj as f64 / MJ_PER_KWH
}

/// CO2e in kg of `mj` with the interval's factors: energy x PUE x intensity.
fn co2e_kg(r: &IntervalRecord, mj: u64) -> (f64, Option<f64>) {
    let c = r.factors.co2e(mj);
    (c.location_g / 1000.0, c.market_g.map(|g| g / 1000.0))
}

/// Builds the report from interval records.
pub fn build(
    records: &[IntervalRecord],
    from_ms: u64,
    to_ms: u64,
    tenant: Option<&str>,
    policy: StaticPolicy,
    idle_threshold_pct: f64,
    skipped_intervals: u64,
) -> Report {
    let sources = Sources {
        records: records.to_vec(),
        policy,
        skipped_intervals,
        ..Default::default()
    };
    build_from(&sources, from_ms, to_ms, tenant, idle_threshold_pct)
}

/// Builds the report from interval records and hour rollups ([`Sources::split`]).
pub fn build_from(
    sources: &Sources,
    from_ms: u64,
    to_ms: u64,
    tenant: Option<&str>,
    idle_threshold_pct: f64,
) -> Report {
    let (policy, skipped_intervals) = (sources.policy, sources.skipped_intervals);
    use crate::energy::measure::Quality;
    let recs: Vec<&IntervalRecord> = sources
        .records
        .iter()
        .filter(|r| r.interval.start_ms >= from_ms && r.interval.start_ms < to_ms)
        .collect();
    let mut tenants: BTreeMap<String, TenantRow> = BTreeMap::new();
    let mut market_complete: BTreeMap<String, bool> = BTreeMap::new();
    let mut gpus: BTreeMap<String, (GpuRow, f64, u64)> = BTreeMap::new();
    let mut cluster = GpuRow {
        gpu: "cluster".into(),
        ..Default::default()
    };
    let mut cluster_util = (0.0, 0u64);
    let mut comparison = Comparison::default();
    let mut factor_ranges: BTreeMap<String, FactorRange> = BTreeMap::new();
    let (first, last) = recs.iter().fold((u64::MAX, 0), |(a, b), r| {
        (a.min(r.interval.start_ms), b.max(r.interval.end_ms))
    });
    let span_from = if recs.is_empty() { from_ms } else { first };
    let span_to = if recs.is_empty() { from_ms } else { last };
    let bucket_ms = (span_to.saturating_sub(span_from) / SERIES_BUCKETS as u64).max(1);
    let nb = if recs.is_empty() { 0 } else { SERIES_BUCKETS };
    let mut series = Series {
        bucket_ms,
        starts: (0..nb).map(|i| span_from + i as u64 * bucket_ms).collect(),
        unallocated_idle_kwh: vec![0.0; nb],
        unattributed_kwh: vec![0.0; nb],
        idle_allocated_kwh: vec![0.0; nb],
        ..Default::default()
    };
    let mut spans: BTreeMap<(String, String), FactorSpan> = BTreeMap::new();
    let mut estimated_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut cluster_market = Some(0.0);
    let mut util_acc: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    let mut estimated_intervals = 0;

    for r in &recs {
        let len = r.interval.len_ms();
        let estimated = r.quality.is_estimated();
        estimated_intervals += u64::from(estimated);
        if let Quality::Estimated { reason } = &r.quality {
            *estimated_reasons
                .entry(reason_name(reason).to_string())
                .or_default() += 1;
        }
        let b = if nb == 0 {
            0
        } else {
            (((r.interval.start_ms - span_from) / bucket_ms) as usize).min(nb - 1)
        };
        fold_factors(&mut factor_ranges, &r.factors);
        for (name, f) in named_factors(&r.factors) {
            widen_span(
                &mut spans,
                name,
                source_name(&f.source),
                (r.interval.start_ms, r.interval.end_ms),
                (f.value, f.value),
            );
        }
        // Tenants.
        for s in &r.slices {
            if tenant.is_some_and(|t| t != s.tenant) {
                continue;
            }
            let t = tenants
                .entry(s.tenant.clone())
                .or_insert_with(|| TenantRow {
                    tenant: s.tenant.clone(),
                    ..Default::default()
                });
            let mj = s.static_mj + s.dynamic_mj;
            let held_h = s.held_ms as f64 / MS_PER_HOUR;
            t.gpu_hours_allocated += s.capacity * held_h;
            t.gpu_hours_used += s.activity_pct_ms / 100.0 / MS_PER_HOUR;
            let mean_activity_pct = if s.held_ms > 0 {
                s.activity_pct_ms / s.held_ms as f64
            } else {
                0.0
            };
            let idle = mean_activity_pct < idle_threshold_pct * s.capacity;
            if idle {
                t.gpu_hours_idle_allocated += s.capacity * held_h;
                t.idle_allocated_mj += mj;
            }
            t.energy_mj += mj;
            t.static_mj += s.static_mj;
            t.dynamic_mj += s.dynamic_mj;
            if estimated {
                t.estimated_mj += mj;
            }
            let (loc, market) = co2e_kg(r, mj);
            t.co2e_kg += loc;
            let complete = market_complete.entry(s.tenant.clone()).or_insert(true);
            match market {
                Some(m) if *complete => *t.co2e_market_kg.get_or_insert(0.0) += m,
                _ => *complete = false,
            }
            let whole = r.idle_power_mw.saturating_mul(s.held_ms) / 1000 + s.dynamic_mj;
            t.whole_gpu_mj += whole;
            if nb > 0 {
                series
                    .tenant_kwh
                    .entry(s.tenant.clone())
                    .or_insert_with(|| vec![0.0; nb])[b] += kwh(mj);
                series
                    .tenant_co2e_kg
                    .entry(s.tenant.clone())
                    .or_insert_with(|| vec![0.0; nb])[b] += loc;
                if idle {
                    series.idle_allocated_kwh[b] += kwh(mj);
                }
            }
        }
        // Whole-GPU comparison over all slices (cluster view).
        for s in &r.slices {
            comparison.whole_gpus_mj +=
                r.idle_power_mw.saturating_mul(s.held_ms) / 1000 + s.dynamic_mj;
        }
        comparison.shared_mj += r.measured_mj - r.unallocated_idle_mj;
        comparison.whole_gpus_mj += r.unattributed_mj;
        // GPUs.
        let tenants_mj: u64 = r.slices.iter().map(|s| s.static_mj + s.dynamic_mj).sum();
        let (loc, market) = co2e_kg(r, r.measured_mj);
        cluster_market = cluster_market.zip(market).map(|(a, m)| a + m);
        let g = gpus.entry(r.gpu.clone()).or_insert_with(|| {
            (
                GpuRow {
                    gpu: r.gpu.clone(),
                    node: r.node.clone(),
                    model: r.model.clone(),
                    ..Default::default()
                },
                0.0,
                0,
            )
        });
        for row in [&mut g.0, &mut cluster] {
            row.measured_mj += r.measured_mj;
            row.tenants_mj += tenants_mj;
            row.unattributed_mj += r.unattributed_mj;
            row.unallocated_idle_mj += r.unallocated_idle_mj;
            row.co2e_kg += loc;
            row.intervals += 1;
            row.estimated_intervals += u64::from(estimated);
            row.interval_ms += len;
            if estimated {
                row.estimated_mj += r.measured_mj;
            }
        }
        g.0.idle_power_mw = r.idle_power_mw;
        g.0.idle_power_calibrated = r.idle_power_calibrated;
        g.1 += r.gpu_activity_pct_ms;
        g.2 += len;
        cluster_util.0 += r.gpu_activity_pct_ms;
        cluster_util.1 += len;
        if nb > 0 {
            series.unallocated_idle_kwh[b] += kwh(r.unallocated_idle_mj);
            series.unattributed_kwh[b] += kwh(r.unattributed_mj);
            let u = util_acc
                .entry(r.gpu.clone())
                .or_insert_with(|| vec![(0.0, 0); nb]);
            u[b].0 += r.gpu_activity_pct_ms;
            u[b].1 += len;
        }
    }
    // Whole hours before the records, from the stored history: tenants and cluster totals.
    let mut hourly_intervals = 0;
    let mut hour_span = (u64::MAX, 0);
    for h in &sources.hours {
        for (name, th) in &h.tenants {
            if tenant.is_some_and(|t| t != name) {
                continue;
            }
            let t = tenants.entry(name.clone()).or_insert_with(|| TenantRow {
                tenant: name.clone(),
                ..Default::default()
            });
            let e = &th.energy;
            t.gpu_hours_allocated += th.allocated_gpu_us as f64 / GPU_US_PER_HOUR;
            t.gpu_hours_used += th.used_gpu_us as f64 / GPU_US_PER_HOUR;
            t.gpu_hours_idle_allocated += th.idle_allocated_gpu_us as f64 / GPU_US_PER_HOUR;
            t.energy_mj += e.total_mj();
            t.static_mj += e.static_mj;
            t.dynamic_mj += e.dynamic_mj;
            t.estimated_mj += e.estimated_mj;
            t.co2e_kg += e.co2e.location_g / 1000.0;
            let complete = market_complete.entry(name.clone()).or_insert(true);
            match e.co2e.market_g {
                Some(m) if *complete => *t.co2e_market_kg.get_or_insert(0.0) += m / 1000.0,
                _ => *complete = false,
            }
            t.whole_gpu_mj += th.whole_gpu_mj;
        }
        let c = &h.cluster;
        let e = &c.energy;
        cluster.measured_mj += e.measured_mj;
        cluster.tenants_mj += e.tenants_mj;
        cluster.unattributed_mj += e.unattributed_mj;
        cluster.unallocated_idle_mj += e.unallocated_idle_mj;
        cluster.co2e_kg += e.co2e.location_g / 1000.0;
        cluster.intervals += e.intervals;
        cluster.estimated_intervals += e.estimated_intervals;
        cluster.interval_ms += c.interval_ms;
        cluster.estimated_mj += e.estimated_mj;
        cluster_util.0 += c.activity_pct_ms as f64;
        cluster_util.1 += c.interval_ms;
        comparison.shared_mj += e.measured_mj - e.unallocated_idle_mj;
        comparison.whole_gpus_mj += c.whole_gpus_mj;
        merge_factors(&mut factor_ranges, &h.factors);
        for (name, f) in &h.factors {
            for src in &f.sources {
                widen_span(
                    &mut spans,
                    name,
                    src.clone(),
                    (h.hour_start_ms, h.hour_start_ms + HOUR_MS),
                    (f.min, f.max),
                );
            }
        }
        cluster_market = cluster_market
            .zip(e.co2e.market_g)
            .map(|(a, m)| a + m / 1000.0);
        if e.estimated_intervals > 0 {
            *estimated_reasons.entry("stored_hours".into()).or_default() += e.estimated_intervals;
        }
        if e.intervals > 0 {
            hour_span.0 = hour_span.0.min(h.hour_start_ms);
            hour_span.1 = hour_span.1.max(h.hour_start_ms + HOUR_MS);
        }
        estimated_intervals += e.estimated_intervals;
        hourly_intervals += e.intervals;
    }
    for t in tenants.values_mut() {
        t.energy_kwh = kwh(t.energy_mj);
    }
    let gpus: Vec<GpuRow> = gpus
        .into_values()
        .map(|(mut g, act, ms)| {
            g.measured_kwh = kwh(g.measured_mj);
            g.mean_util_pct = if ms > 0 { act / ms as f64 } else { 0.0 };
            g
        })
        .collect();
    cluster.measured_kwh = kwh(cluster.measured_mj);
    cluster.co2e_market_kg = if cluster.intervals > 0 {
        cluster_market
    } else {
        None
    };
    cluster.mean_util_pct = if cluster_util.1 > 0 {
        cluster_util.0 / cluster_util.1 as f64
    } else {
        0.0
    };
    series.gpu_util_pct = util_acc
        .into_iter()
        .map(|(g, v)| {
            (
                g,
                v.into_iter()
                    .map(|(a, ms)| (ms > 0).then(|| a / ms as f64))
                    .collect(),
            )
        })
        .collect();
    let saved_mj = comparison
        .whole_gpus_mj
        .saturating_sub(comparison.shared_mj);
    comparison.basis = SAVINGS_BASIS.to_string();
    comparison.saved_kwh = kwh(saved_mj);
    comparison.saved_pct = if comparison.whole_gpus_mj > 0 {
        100.0 * saved_mj as f64 / comparison.whole_gpus_mj as f64
    } else {
        0.0
    };
    // CO2e of the saving at the report's mean effective factor.
    comparison.saved_co2e_kg = if cluster.measured_mj > 0 {
        cluster.co2e_kg * saved_mj as f64 / cluster.measured_mj as f64
    } else {
        0.0
    };
    let factors: Vec<FactorUsed> = factor_ranges
        .into_iter()
        .map(|(name, f)| FactorUsed {
            unit: if name == "pue" { "ratio" } else { "gCO2e/kWh" }.to_string(),
            min: f.min,
            max: f.max,
            sources: f.sources.into_iter().collect(),
            estimate: f.estimate,
            spans: spans
                .iter()
                .filter(|((n, _), _)| *n == name)
                .map(|(_, s)| s.clone())
                .collect(),
            name,
        })
        .collect();
    let (data_from_ms, data_to_ms) = if recs.is_empty() && hour_span.1 == 0 {
        (None, None)
    } else {
        let from = if recs.is_empty() { u64::MAX } else { first };
        let to = if recs.is_empty() { 0 } else { last };
        (Some(from.min(hour_span.0)), Some(to.max(hour_span.1)))
    };
    let mut report = Report {
        from_ms,
        to_ms,
        tenant_filter: tenant.map(str::to_string),
        policy: policy.as_str().to_string(),
        method: "measured GPU energy (driver counter delta, or power integral flagged as estimate) split into static \
                 (idle power x time, by capacity held) and dynamic (by measured activity); integer mJ, largest \
                 remainder; CO2e = energy x PUE x grid intensity. See docs/ENERGY.md."
            .to_string(),
        idle_threshold_pct,
        co2e_is_estimate: factors.iter().any(|f| f.estimate),
        tenants: tenants.into_values().collect(),
        gpus,
        cluster,
        factors,
        comparison,
        series,
        intervals: recs.len() as u64 + hourly_intervals,
        estimated_intervals,
        skipped_intervals,
        gpu_hours_reclaimed: 0.0,
        hourly: sources.hourly.clone(),
        data_from_ms,
        data_to_ms,
        estimated_reasons,
        previous: None,
        headline: Headline::default(),
    };
    report.refresh_headline();
    report
}

/// The name of why an interval was estimated, as the report counts it.
fn reason_name(r: &EstimateReason) -> &'static str {
    match r {
        EstimateReason::CounterUnsupported => "counter_unsupported",
        EstimateReason::MissingBoundaryReading { .. } => "missing_boundary_reading",
        EstimateReason::CounterDecreased { .. } => "counter_decreased",
        EstimateReason::CounterGap { .. } => "counter_gap",
    }
}

/// What each reason means, for the methodology section.
pub fn reason_text(name: &str) -> &'static str {
    match name {
        "counter_unsupported" => "the GPU has no energy counter",
        "missing_boundary_reading" => "no counter reading at the interval's start or end",
        "counter_decreased" => "the counter went down (driver reload or GPU reset)",
        "counter_gap" => "counter readings too far apart to trust (agent away or samples missed)",
        "stored_hours" => "in stored hours, which keep the count but not the reason",
        _ => "other",
    }
}

/// The factors of one interval by report name.
fn named_factors(f: &CarbonFactors) -> impl Iterator<Item = (&'static str, &Factor)> {
    [
        ("pue", &f.pue),
        ("location_g_per_kwh", &f.location_g_per_kwh),
    ]
    .into_iter()
    .chain(f.market_g_per_kwh.as_ref().map(|m| ("market_g_per_kwh", m)))
}

fn widen_span(
    spans: &mut BTreeMap<(String, String), FactorSpan>,
    name: &str,
    source: String,
    (from_ms, to_ms): (u64, u64),
    (min, max): (f64, f64),
) {
    spans
        .entry((name.to_string(), source.clone()))
        .and_modify(|s| {
            s.from_ms = s.from_ms.min(from_ms);
            s.to_ms = s.to_ms.max(to_ms);
            s.min = s.min.min(min);
            s.max = s.max.max(max);
        })
        .or_insert(FactorSpan {
            source,
            from_ms,
            to_ms,
            min,
            max,
        });
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

impl Report {
    /// Recomputes [`Report::headline`] from the rest of the report (after the reclaim figures or
    /// the previous period were added).
    ///
    /// A tenant-scoped report's headline is the tenant's: its energy, CO2e, allocated GPU-hours
    /// (energy per GPU-hour is per allocated GPU-hour) and idle-allocated waste; unallocated idle,
    /// unattributed energy, the sharing comparison and estimated intervals stay cluster-wide (no
    /// tenant owns them), with shares of the cluster's measured energy.
    pub fn refresh_headline(&mut self) {
        let c = &self.cluster;
        let cluster_kwh = c.measured_kwh;
        let alloc: f64 = self.tenants.iter().map(|t| t.gpu_hours_allocated).sum();
        let idle_h: f64 = self
            .tenants
            .iter()
            .map(|t| t.gpu_hours_idle_allocated)
            .sum();
        let idle_kwh = kwh(self.tenants.iter().map(|t| t.idle_allocated_mj).sum());
        let est_kwh = kwh(c.estimated_mj);
        let unalloc = kwh(c.unallocated_idle_mj);
        let unattr = kwh(c.unattributed_mj);
        let (measured, co2e_location, co2e_market, gpu_hours) = if self.tenant_filter.is_some() {
            let market = self
                .tenants
                .iter()
                .map(|t| t.co2e_market_kg)
                .sum::<Option<f64>>()
                .filter(|_| !self.tenants.is_empty());
            (
                self.tenants.iter().map(|t| t.energy_kwh).sum(),
                self.tenants.iter().map(|t| t.co2e_kg).sum(),
                market,
                alloc,
            )
        } else {
            (
                cluster_kwh,
                c.co2e_kg,
                c.co2e_market_kg,
                self.gpu_hours_measured(),
            )
        };
        self.headline = Headline {
            measured_kwh: measured,
            co2e_location_kg: co2e_location,
            co2e_market_kg: co2e_market,
            gpu_hours,
            kwh_per_gpu_hour: if gpu_hours > 0.0 {
                measured / gpu_hours
            } else {
                0.0
            },
            gpu_hours_allocated: alloc,
            idle_allocated_gpu_hours: idle_h,
            idle_allocated_gpu_hours_pct: pct(idle_h, alloc),
            idle_allocated_kwh: idle_kwh,
            idle_allocated_pct: pct(idle_kwh, measured),
            idle_allocated_kwh_records_only: self.hourly.is_some(),
            unallocated_idle_kwh: unalloc,
            unallocated_idle_pct: pct(unalloc, cluster_kwh),
            unattributed_kwh: unattr,
            unattributed_pct: pct(unattr, cluster_kwh),
            saved_kwh: self.comparison.saved_kwh,
            saved_pct: self.comparison.saved_pct,
            saved_co2e_kg: self.comparison.saved_co2e_kg,
            gpu_hours_reclaimed: self.gpu_hours_reclaimed,
            reclaimed_slices: self.tenants.iter().map(|t| t.reclaimed_slices).sum(),
            intervals: self.intervals,
            estimated_intervals: self.estimated_intervals,
            estimated_kwh: est_kwh,
            estimated_pct: pct(est_kwh, cluster_kwh),
        };
    }

    /// GPU time accounted, hours: every GPU's interval lengths summed (records and stored hours).
    fn gpu_hours_measured(&self) -> f64 {
        self.cluster.interval_ms as f64 / MS_PER_HOUR
    }
}

/// The period as a person reads it: `2026-12-02T12:00:00Z .. 2026-12-02T15:00:00Z`, with "the
/// beginning of the history" for a report from 0.
pub fn period_text(r: &Report, zone: &Zone) -> String {
    let from = if r.from_ms == 0 {
        "the beginning of the history".to_string()
    } else {
        zone.iso(r.from_ms)
    };
    format!("{from} .. {}", zone.iso(r.to_ms))
}

/// Where the report's data begin and end, and how long that is: `2026-12-02T12:00:00Z ..
/// 2026-12-02T15:00:00Z (3.0 h)`.
pub fn data_span_text(r: &Report, zone: &Zone) -> Option<String> {
    let (a, b) = (r.data_from_ms?, r.data_to_ms?);
    Some(format!(
        "{} .. {} ({})",
        zone.iso(a),
        zone.iso(b),
        round::duration(b.saturating_sub(a))
    ))
}

/// The report as CSV: one row per tenant, then one per GPU, then the cluster. Values are exact;
/// each row ends with the report's period as ISO 8601 in `zone` and as Unix seconds.
pub fn to_csv(r: &Report, zone: &Zone) -> String {
    let mut out = String::from(
        "row,name,node,model,gpu_hours_allocated,gpu_hours_used,gpu_hours_idle_allocated,energy_mj,static_mj,dynamic_mj,estimated_mj,unattributed_mj,unallocated_idle_mj,energy_kwh,co2e_kg,co2e_is_estimate,co2e_market_kg,gpu_hours_reclaimed,idle_allocated_mj,period_from,period_to,period_from_unix_s,period_to_unix_s\n",
    );
    let esc = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let period = format!(
        "{},{},{},{}",
        zone.iso(r.from_ms),
        zone.iso(r.to_ms),
        r.from_ms / 1000,
        r.to_ms / 1000
    );
    let opt = |v: Option<f64>| v.map(|m| format!("{m:.6}")).unwrap_or_default();
    for t in &r.tenants {
        out.push_str(&format!(
            "tenant,{},,,{:.6},{:.6},{:.6},{},{},{},{},,,{:.9},{:.6},{},{},{:.6},{},{period}\n",
            esc(&t.tenant),
            t.gpu_hours_allocated,
            t.gpu_hours_used,
            t.gpu_hours_idle_allocated,
            t.energy_mj,
            t.static_mj,
            t.dynamic_mj,
            t.estimated_mj,
            t.energy_kwh,
            t.co2e_kg,
            r.co2e_is_estimate,
            opt(t.co2e_market_kg),
            t.gpu_hours_reclaimed,
            t.idle_allocated_mj,
        ));
    }
    for g in r.gpus.iter().chain(std::iter::once(&r.cluster)) {
        out.push_str(&format!(
            "{},{},{},{},,,,{},,,,{},{},{:.9},{:.6},{},{},,,{period}\n",
            if g.gpu == "cluster" { "cluster" } else { "gpu" },
            esc(&g.gpu),
            esc(&g.node),
            esc(&g.model),
            g.measured_mj,
            g.unattributed_mj,
            g.unallocated_idle_mj,
            g.measured_kwh,
            g.co2e_kg,
            r.co2e_is_estimate,
            opt(g.co2e_market_kg),
        ));
    }
    out
}

/// One line saying which part of the period came from the hourly history.
pub fn hourly_line(h: &HourlyPart, zone: &Zone) -> String {
    format!(
        "Hours {} .. {}: {} hours, {} intervals from the stored hourly history; per-GPU rows and series cover only the records from {} on.",
        zone.iso(h.from_ms),
        zone.iso(h.to_ms),
        h.hours,
        h.intervals,
        zone.iso(h.to_ms)
    )
}

/// The per-tenant trend against the previous period: `+12.3%`, `-4.00%`, `new`, or empty when
/// the report has no previous period held.
pub fn trend_text(t: &TenantRow) -> String {
    match t.previous_energy_mj {
        None => String::new(),
        Some(0) if t.energy_mj == 0 => "0%".into(),
        Some(0) => "new".into(),
        Some(p) => {
            let d = 100.0 * (t.energy_mj as f64 - p as f64) / p as f64;
            format!("{}{}", if d > 0.0 { "+" } else { "" }, round::pct(d))
        }
    }
}

/// The report as terminal tables: kWh and CO2e rounded to 3 significant figures, times as ISO 8601
/// in `zone`.
pub fn to_table(r: &Report, zone: &Zone) -> String {
    let h = &r.headline;
    let mut out = format!(
        "Energy report {} ({}); static policy {}{}\n",
        period_text(r, zone),
        zone.label(r.to_ms),
        r.policy,
        if r.co2e_is_estimate {
            "; CO2e uses DEFAULT ESTIMATES, see factors"
        } else {
            ""
        }
    );
    if let Some(d) = data_span_text(r, zone) {
        out.push_str(&format!("Data: {d}\n"));
    }
    out.push_str(&format!(
        "Measured {}; CO2e {} location-based{}; {} per GPU-hour over {}\n",
        round::kwh(h.measured_kwh),
        round::co2e(h.co2e_location_kg),
        h.co2e_market_kg
            .map(|m| format!(", {} market-based", round::co2e(m)))
            .unwrap_or_else(|| ", market-based not configured".into()),
        round::kwh(h.kwh_per_gpu_hour),
        round::gpu_h(h.gpu_hours),
    ));
    out.push_str(&format!(
        "Waste: idle-allocated {} ({} of allocated), {} ({}){}; unallocated idle {} ({}); unattributed {} ({})\n\n",
        round::gpu_h(h.idle_allocated_gpu_hours),
        round::pct(h.idle_allocated_gpu_hours_pct),
        round::kwh(h.idle_allocated_kwh),
        round::pct(h.idle_allocated_pct),
        if h.idle_allocated_kwh_records_only {
            " [energy: interval records only]"
        } else {
            ""
        },
        round::kwh(h.unallocated_idle_kwh),
        round::pct(h.unallocated_idle_pct),
        round::kwh(h.unattributed_kwh),
        round::pct(h.unattributed_pct),
    ));
    let rows: Vec<[String; 10]> = r
        .tenants
        .iter()
        .map(|t| {
            [
                t.tenant.clone(),
                format!("{:.3}", t.gpu_hours_allocated),
                format!("{:.3}", t.gpu_hours_used),
                format!("{:.3}", t.gpu_hours_idle_allocated),
                format!("{:.3}", t.gpu_hours_reclaimed),
                round::sig(t.energy_kwh, 3),
                format!(
                    "{:.1}%",
                    if t.energy_mj > 0 {
                        100.0 * t.static_mj as f64 / t.energy_mj as f64
                    } else {
                        0.0
                    }
                ),
                round::co2e(t.co2e_kg),
                round::sig(kwh(t.estimated_mj), 3),
                trend_text(t),
            ]
        })
        .collect();
    let header = [
        "TENANT",
        "GPU_H_ALLOC",
        "GPU_H_USED",
        "GPU_H_IDLE",
        "GPU_H_RECL",
        "ENERGY_KWH",
        "STATIC%",
        "CO2E",
        "EST_KWH",
        "TREND",
    ];
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                l.push_str(&format!("{c:<width$}", width = w[0]));
            } else {
                l.push_str(&format!("  {c:>width$}", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.to_vec()));
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    let c = &r.cluster;
    out.push_str(&format!(
        "\nCluster: measured {} = tenants {} + unattributed {} + unallocated idle {}; {} CO2e; mean utilization {:.1}%; {} intervals ({} estimated)\n",
        round::kwh(c.measured_kwh),
        round::kwh(kwh(c.tenants_mj)),
        round::kwh(kwh(c.unattributed_mj)),
        round::kwh(kwh(c.unallocated_idle_mj)),
        round::co2e(c.co2e_kg),
        c.mean_util_pct,
        r.intervals,
        r.estimated_intervals
    ));
    if let Some(p) = &r.previous {
        out.push_str(&format!(
            "Previous period {} .. {}: {}\n",
            zone.iso(p.from_ms),
            zone.iso(p.to_ms),
            if p.held {
                format!(
                    "{} measured, {} CO2e (TREND compares tenant energy with it)",
                    round::kwh(p.measured_kwh),
                    round::co2e(p.co2e_kg)
                )
            } else {
                "not held by the history, no trend".to_string()
            }
        ));
    }
    if let Some(hp) = &r.hourly {
        out.push_str(&hourly_line(hp, zone));
        out.push('\n');
    }
    out.push_str(&format!(
        "Sharing vs dedicated whole GPUs for the same work: {} vs {}, saved {} ({}), {} CO2e; GPU-hours reclaimed {} ({} slices) ({SAVINGS_BASIS})\n",
        round::kwh(kwh(r.comparison.shared_mj)),
        round::kwh(kwh(r.comparison.whole_gpus_mj)),
        round::kwh(r.comparison.saved_kwh),
        round::pct(r.comparison.saved_pct),
        round::co2e(r.comparison.saved_co2e_kg),
        round::sig(h.gpu_hours_reclaimed, 3),
        h.reclaimed_slices,
    ));
    out.push_str("Factors:\n");
    for f in &r.factors {
        out.push_str(&format!(
            "  {} = {}{} {} [{}]{}\n",
            f.name,
            f.min,
            if f.max != f.min {
                format!("..{}", f.max)
            } else {
                String::new()
            },
            f.unit,
            f.sources.join("; "),
            if f.estimate { " (ESTIMATE)" } else { "" }
        ));
        for s in &f.spans {
            out.push_str(&format!(
                "    {} .. {}: {}\n",
                zone.iso(s.from_ms),
                zone.iso(s.to_ms),
                s.source
            ));
        }
    }
    out
}

#[cfg(test)]
mod audit_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Report {
        build(&[], 0, 10, None, StaticPolicy::ByCapacity, 5.0, 0)
    }

    #[test]
    fn reclaimed_hours_fill_tenant_rows_and_the_total() {
        let mut r = empty();
        r.tenants.push(TenantRow {
            tenant: "b".into(),
            energy_mj: 7,
            ..Default::default()
        });
        add_reclaimed(
            &mut r,
            &[
                ("a".into(), 1.5, 1),
                ("b".into(), 0.5, 2),
                ("c".into(), 0.0, 0),
            ],
        );
        let names: Vec<&str> = r.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b"],
            "a reclaimed tenant without energy gets a row; c had nothing"
        );
        assert_eq!(
            (
                r.tenants[0].gpu_hours_reclaimed,
                r.tenants[0].reclaimed_slices
            ),
            (1.5, 1)
        );
        assert_eq!(r.tenants[1].energy_mj, 7);
        assert_eq!(r.gpu_hours_reclaimed, 2.0);
    }

    mod history {
        use super::super::*;
        use crate::energy::history::tests::{T0, fold_all, record};

        /// One record of `mj` mJ for alice starting `min` minutes after T0.
        fn at(min: u64, mj: u64) -> IntervalRecord {
            let slices = vec![("alice", 1.0, 60_000, 0.0, mj, 0)];
            record("g0", T0 + min * 60_000, slices, 0, 0, false, false)
        }

        fn report(
            records: Vec<IntervalRecord>,
            hours: Vec<HourRollup>,
            from: u64,
            to: u64,
        ) -> Report {
            let s = Sources::split(records, hours, from, to, StaticPolicy::ByCapacity, 0);
            build_from(&s, from, to, None, 5.0)
        }

        #[test]
        fn records_in_memory_serve_an_hour_they_cover_even_for_part_of_it() {
            let recs: Vec<_> = (0..4).map(|i| at(i * 15, 1 << i)).collect();
            let hour = fold_all(T0, &recs);
            // To 20 minutes in: the records of 0 and 15 minutes, with per-GPU rows.
            let r = report(recs, vec![hour], T0, T0 + 20 * 60_000);
            assert_eq!(r.hourly, None);
            assert_eq!(r.cluster.measured_mj, 1 + 2);
            assert_eq!(r.gpus.len(), 1);
        }

        #[test]
        fn an_hour_memory_does_not_fully_hold_comes_from_its_rollup_once() {
            // The interval at 0 minutes was attributed before a restart: only in the rollup.
            let before = at(0, 1);
            let after: Vec<_> = (1..4).map(|i| at(i * 15, 1 << i)).collect();
            let next = at(60, 100);
            let mut all = vec![before];
            all.extend(after.iter().cloned());
            let hours = vec![
                fold_all(T0, &all),
                fold_all(T0 + HOUR_MS, std::slice::from_ref(&next)),
            ];
            let mut memory = after;
            memory.push(next);
            let r = report(memory, hours, T0, T0 + 2 * HOUR_MS);
            let hourly = r.hourly.clone().unwrap();
            assert_eq!(
                (hourly.from_ms, hourly.to_ms, hourly.intervals),
                (T0, T0 + HOUR_MS, 4)
            );
            assert_eq!(
                r.cluster.measured_mj,
                1 + 2 + 4 + 8 + 100,
                "each interval once"
            );
            assert_eq!(r.intervals, 5);
            assert_eq!(r.tenants[0].energy_mj, 115);
            assert_eq!(
                r.gpus[0].measured_mj, 100,
                "per-GPU rows: records after the cut only"
            );
        }
    }

    #[test]
    fn a_tenant_filter_keeps_other_tenants_reclaims_out() {
        let mut r = build(&[], 0, 10, Some("a"), StaticPolicy::ByCapacity, 5.0, 0);
        add_reclaimed(&mut r, &[("a".into(), 1.0, 1), ("b".into(), 3.0, 1)]);
        assert_eq!(r.tenants.len(), 1);
        assert_eq!(r.gpu_hours_reclaimed, 1.0);
    }
}
