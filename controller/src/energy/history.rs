//! Energy history: hourly rollups of attributed intervals, kept durably so that monthly and
//! quarterly reports survive controller restarts and failovers (the interval records themselves are
//! kept only in memory, the last few hours).
//!
//! Each closed [`IntervalRecord`] is folded into the [`HourRollup`] of the UTC hour its interval
//! starts in. A rollup holds what a report's tenant rows and cluster totals need, in integers where
//! they are summed (mJ, GPU-µs), so folding is exact and order-independent, and two partial rollups
//! of one hour merge into the rollup of all their intervals. For every hour,
//! `tenants_mj + unattributed_mj + unallocated_idle_mj == measured_mj`.
//!
//! Pure: no I/O. The controller folds, the ledger stores (see `docs/ENERGY.md`, "History").

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use greenslice_core::time::HOUR_MS;

use super::accounting::IntervalRecord;
use super::carbon::{CarbonFactors, FactorSource};
use super::ledger::{GpuTotals, TenantTotals, add_co2e};
use super::{Interval, StaticPolicy};

/// Largest hour rollup stored, JSON bytes: under etcd's 1.5 MiB request limit with room for the
/// slice records a group commit may batch with it (at most 127 of about 630 bytes).
pub const MAX_HOUR_BYTES: usize = 1_400_000;

/// Start (Unix ms) of the UTC hour `at_ms` is in.
pub fn hour_of(at_ms: u64) -> u64 {
    at_ms - at_ms % HOUR_MS
}

/// The first hour start at or after `at_ms`.
pub fn hour_at_or_after(at_ms: u64) -> u64 {
    hour_of(at_ms.saturating_add(HOUR_MS - 1))
}

/// One tenant's part of one hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantHour {
    /// Energy (mJ), estimated part, CO2e and slice intervals.
    pub energy: TenantTotals,
    /// Capacity held x time, in GPU-µs (each slice interval rounded to the µs).
    pub allocated_gpu_us: u64,
    /// Activity-weighted GPU time used, in GPU-µs.
    pub used_gpu_us: u64,
    /// Capacity held in slice intervals under the idle threshold, in GPU-µs.
    pub idle_allocated_gpu_us: u64,
    /// Energy the same work would draw on dedicated whole GPUs, mJ.
    pub whole_gpu_mj: u64,
}

/// The cluster's part of one hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterHour {
    /// Measured, tenants, unattributed, unallocated idle (mJ), interval counts, CO2e.
    pub energy: GpuTotals,
    /// Board activity summed over the intervals, percent x ms (each interval rounded).
    pub activity_pct_ms: u64,
    /// Length of the intervals summed, ms (mean utilization = activity / length).
    pub interval_ms: u64,
    /// The comparison's "dedicated whole GPUs" side, mJ: each slice's GPU idle power while held
    /// plus its dynamic energy, plus unattributed energy.
    pub whole_gpus_mj: u64,
}

/// A carbon factor's range and sources over some intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorRange {
    pub min: f64,
    pub max: f64,
    pub sources: BTreeSet<String>,
    /// Whether any value was a default estimate.
    pub estimate: bool,
}

impl FactorRange {
    /// Widens the range to cover `other`.
    pub fn merge(&mut self, other: &FactorRange) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sources.extend(other.sources.iter().cloned());
        self.estimate |= other.estimate;
    }
}

/// How a factor source is named in reports.
pub fn source_name(s: &FactorSource) -> String {
    match s {
        FactorSource::Configured { note } => format!("configured: {note}"),
        FactorSource::DefaultEstimate { source } => format!("default estimate: {source}"),
        FactorSource::GapEstimate { gap } => format!("estimated for a gap: {gap}"),
    }
}

/// Adds the factors of one interval to `ranges` (keys: `pue`, `location_g_per_kwh`,
/// `market_g_per_kwh`).
pub fn fold_factors(ranges: &mut BTreeMap<String, FactorRange>, factors: &CarbonFactors) {
    let named = [
        ("pue", &factors.pue),
        ("location_g_per_kwh", &factors.location_g_per_kwh),
    ]
    .into_iter()
    .chain(
        factors
            .market_g_per_kwh
            .as_ref()
            .map(|f| ("market_g_per_kwh", f)),
    );
    for (name, f) in named {
        let one = FactorRange {
            min: f.value,
            max: f.value,
            sources: BTreeSet::from([source_name(&f.source)]),
            estimate: f.is_estimate(),
        };
        merge_factors(ranges, &BTreeMap::from([(name.to_string(), one)]));
    }
}

/// Totals of the intervals that start in one UTC hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourRollup {
    /// Start of the hour, Unix ms (a multiple of [`HOUR_MS`]).
    pub hour_start_ms: u64,
    /// Static policy of the intervals.
    pub policy: StaticPolicy,
    /// Idle threshold (percent of capacity) the idle-allocated GPU time was judged with.
    pub idle_threshold_pct: f64,
    /// By tenant name.
    pub tenants: BTreeMap<String, TenantHour>,
    pub cluster: ClusterHour,
    /// Carbon factors used, by name.
    pub factors: BTreeMap<String, FactorRange>,
}

fn add(a: &mut u64, b: u64) {
    // Saturates rather than panics: u64 mJ is 5e9 kWh, far beyond one hour of any cluster.
    *a = a.saturating_add(b);
}

/// `x` rounded to a u64 (negative and NaN to 0).
fn round_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

impl HourRollup {
    /// An empty rollup of the hour starting at `hour_start_ms`.
    pub fn new(hour_start_ms: u64, policy: StaticPolicy, idle_threshold_pct: f64) -> Self {
        HourRollup {
            hour_start_ms: hour_of(hour_start_ms),
            policy,
            idle_threshold_pct,
            tenants: BTreeMap::new(),
            cluster: ClusterHour::default(),
            factors: BTreeMap::new(),
        }
    }

    /// The hour as an interval.
    pub fn hour(&self) -> Interval {
        Interval {
            start_ms: self.hour_start_ms,
            end_ms: self.hour_start_ms + HOUR_MS,
        }
    }

    /// Adds one interval record. The caller picks the rollup of the record's hour
    /// (`hour_of(r.interval.start_ms)`).
    pub fn fold(&mut self, r: &IntervalRecord) {
        debug_assert_eq!(hour_of(r.interval.start_ms), self.hour_start_ms);
        let estimated = r.quality.is_estimated();
        let co2e = |mj| r.factors.co2e(mj);
        let mut tenants_mj = 0u64;
        let mut whole_gpus_mj = r.unattributed_mj;
        for s in &r.slices {
            let mj = s.static_mj.saturating_add(s.dynamic_mj);
            add(&mut tenants_mj, mj);
            let whole =
                (r.idle_power_mw.saturating_mul(s.held_ms) / 1000).saturating_add(s.dynamic_mj);
            add(&mut whole_gpus_mj, whole);
            let allocated_us = round_u64(s.capacity * s.held_ms as f64 * 1000.0);
            let mean_activity_pct = if s.held_ms > 0 {
                s.activity_pct_ms / s.held_ms as f64
            } else {
                0.0
            };
            let t = self.tenants.entry(s.tenant.clone()).or_default();
            let e = &mut t.energy;
            e.co2e = add_co2e(e.co2e, e.slice_intervals == 0, co2e(mj));
            add(&mut e.static_mj, s.static_mj);
            add(&mut e.dynamic_mj, s.dynamic_mj);
            if estimated {
                add(&mut e.estimated_mj, mj);
            }
            e.slice_intervals += 1;
            add(&mut t.allocated_gpu_us, allocated_us);
            // activity_pct_ms / 100 is GPU-ms; x 1000 is GPU-µs.
            add(&mut t.used_gpu_us, round_u64(s.activity_pct_ms * 10.0));
            if mean_activity_pct < self.idle_threshold_pct * s.capacity {
                add(&mut t.idle_allocated_gpu_us, allocated_us);
            }
            add(&mut t.whole_gpu_mj, whole);
        }
        let c = &mut self.cluster;
        let e = &mut c.energy;
        e.co2e = add_co2e(e.co2e, e.intervals == 0, co2e(r.measured_mj));
        add(&mut e.measured_mj, r.measured_mj);
        add(&mut e.static_mj, r.static_mj);
        add(&mut e.dynamic_mj, r.dynamic_mj);
        add(&mut e.tenants_mj, tenants_mj);
        add(&mut e.unattributed_mj, r.unattributed_mj);
        add(&mut e.unallocated_idle_mj, r.unallocated_idle_mj);
        e.intervals += 1;
        if estimated {
            e.estimated_intervals += 1;
            add(&mut e.estimated_mj, r.measured_mj);
        }
        add(&mut c.activity_pct_ms, round_u64(r.gpu_activity_pct_ms));
        add(&mut c.interval_ms, r.interval.len_ms());
        add(&mut c.whole_gpus_mj, whole_gpus_mj);
        fold_factors(&mut self.factors, &r.factors);
    }

    /// Adds another partial rollup of the same hour (the intervals of both, each counted once).
    pub fn merge(&mut self, other: &HourRollup) {
        debug_assert_eq!(self.hour_start_ms, other.hour_start_ms);
        for (name, o) in &other.tenants {
            let t = self.tenants.entry(name.clone()).or_default();
            merge_tenant_totals(&mut t.energy, &o.energy);
            add(&mut t.allocated_gpu_us, o.allocated_gpu_us);
            add(&mut t.used_gpu_us, o.used_gpu_us);
            add(&mut t.idle_allocated_gpu_us, o.idle_allocated_gpu_us);
            add(&mut t.whole_gpu_mj, o.whole_gpu_mj);
        }
        let (c, o) = (&mut self.cluster, &other.cluster);
        merge_gpu_totals(&mut c.energy, &o.energy);
        add(&mut c.activity_pct_ms, o.activity_pct_ms);
        add(&mut c.interval_ms, o.interval_ms);
        add(&mut c.whole_gpus_mj, o.whole_gpus_mj);
        merge_factors(&mut self.factors, &other.factors);
    }
}

/// Widens each range in `into` to cover the one of the same name in `from`.
pub fn merge_factors(
    into: &mut BTreeMap<String, FactorRange>,
    from: &BTreeMap<String, FactorRange>,
) {
    for (name, f) in from {
        match into.get_mut(name) {
            Some(r) => r.merge(f),
            None => {
                into.insert(name.clone(), f.clone());
            }
        }
    }
}

fn merge_tenant_totals(a: &mut TenantTotals, b: &TenantTotals) {
    a.co2e = merge_co2e(a.co2e, a.slice_intervals, b.co2e, b.slice_intervals);
    add(&mut a.static_mj, b.static_mj);
    add(&mut a.dynamic_mj, b.dynamic_mj);
    add(&mut a.estimated_mj, b.estimated_mj);
    a.slice_intervals += b.slice_intervals;
}

fn merge_gpu_totals(a: &mut GpuTotals, b: &GpuTotals) {
    a.co2e = merge_co2e(a.co2e, a.intervals, b.co2e, b.intervals);
    add(&mut a.measured_mj, b.measured_mj);
    add(&mut a.static_mj, b.static_mj);
    add(&mut a.dynamic_mj, b.dynamic_mj);
    add(&mut a.tenants_mj, b.tenants_mj);
    add(&mut a.unattributed_mj, b.unattributed_mj);
    add(&mut a.unallocated_idle_mj, b.unallocated_idle_mj);
    add(&mut a.estimated_mj, b.estimated_mj);
    a.intervals += b.intervals;
    a.estimated_intervals += b.estimated_intervals;
}

/// CO2e of two parts with `na` and `nb` intervals: an empty part adds nothing (and does not drop
/// the market-based figure).
fn merge_co2e(a: super::Co2e, na: u64, b: super::Co2e, nb: u64) -> super::Co2e {
    match (na, nb) {
        (0, _) => b,
        (_, 0) => a,
        _ => add_co2e(a, false, b),
    }
}

/// Rollups kept by the controller: every hour it folded into since it started (until flushed and
/// old), each marked dirty until stored.
///
/// An hour is *based* when it started from the stored rollup of that hour (loaded at start, or
/// read before its first flush): then it holds every interval of the hour and is stored whole.
/// An hour that is not based holds only the intervals folded since start; before it is stored, the
/// stored rollup must be merged in ([`Rollups::rebase`]), so a flush never replaces a stored hour
/// with less.
#[derive(Debug, Clone)]
pub struct Rollups {
    policy: StaticPolicy,
    hours: BTreeMap<u64, Held>,
}

#[derive(Debug, Clone)]
struct Held {
    rollup: HourRollup,
    based: bool,
    dirty: bool,
}

impl Rollups {
    pub fn new(policy: StaticPolicy) -> Self {
        Rollups {
            policy,
            hours: BTreeMap::new(),
        }
    }

    /// Changes the static-power policy new hours are folded with.
    pub fn configure(&mut self, policy: StaticPolicy) {
        self.policy = policy;
    }

    /// Takes stored rollups as the base of their hours (at start). An hour already folded into is
    /// merged with it.
    pub fn load(&mut self, stored: Vec<HourRollup>) {
        for s in stored {
            self.rebase(s);
        }
    }

    /// Makes the stored rollup `stored` the base of its hour: merged with what was folded since,
    /// unless the hour is already based.
    pub fn rebase(&mut self, stored: HourRollup) {
        match self.hours.get_mut(&stored.hour_start_ms) {
            Some(h) if h.based => {}
            Some(h) => {
                let mut r = stored;
                r.merge(&h.rollup);
                h.rollup = r;
                h.based = true;
            }
            None => {
                self.hours.insert(
                    stored.hour_start_ms,
                    Held {
                        rollup: stored,
                        based: true,
                        dirty: false,
                    },
                );
            }
        }
    }

    /// Folds closed interval records into their hours, which become dirty. An hour begun here
    /// judges idle-allocated time with `idle_threshold_pct` (the idle policy's threshold, percent
    /// of a slice's capacity); an hour already held keeps the threshold it began with.
    pub fn fold(&mut self, records: &[IntervalRecord], idle_threshold_pct: f64) {
        for r in records {
            let hour = hour_of(r.interval.start_ms);
            let h = self.hours.entry(hour).or_insert_with(|| Held {
                rollup: HourRollup::new(hour, self.policy, idle_threshold_pct),
                based: false,
                dirty: false,
            });
            h.rollup.fold(r);
            h.dirty = true;
        }
    }

    /// Dirty hours that are not based: their stored rollups must be read and passed to
    /// [`Rollups::rebase`] (or found absent, [`Rollups::mark_based`]) before they are stored.
    pub fn unbased_dirty(&self) -> Vec<u64> {
        self.hours
            .iter()
            .filter(|(_, h)| h.dirty && !h.based)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Marks an hour based: nothing was stored for it.
    pub fn mark_based(&mut self, hour_start_ms: u64) {
        if let Some(h) = self.hours.get_mut(&hour_start_ms) {
            h.based = true;
        }
    }

    /// Dirty, based hours to store (whole), oldest first.
    pub fn to_flush(&self) -> Vec<HourRollup> {
        self.hours
            .values()
            .filter(|h| h.dirty && h.based)
            .map(|h| h.rollup.clone())
            .collect()
    }

    /// Marks hours stored, if they did not change since `flushed` was taken, and forgets clean
    /// hours that started before `keep_from_ms`.
    pub fn flushed(&mut self, flushed: &[HourRollup], keep_from_ms: u64) {
        for f in flushed {
            if let Some(h) = self.hours.get_mut(&f.hour_start_ms)
                && h.rollup == *f
            {
                h.dirty = false;
            }
        }
        self.hours
            .retain(|start, h| h.dirty || *start >= hour_of(keep_from_ms));
    }

    /// The rollups held, overlaid on `stored` (rollups read from the ledger): a based hour
    /// replaces the stored one, an unbased one is merged with it. Sorted by hour.
    pub fn overlay(&self, stored: Vec<HourRollup>, from_ms: u64, to_ms: u64) -> Vec<HourRollup> {
        let mut out: BTreeMap<u64, HourRollup> =
            stored.into_iter().map(|r| (r.hour_start_ms, r)).collect();
        for (start, h) in self.hours.range(from_ms..to_ms.max(from_ms)) {
            match out.get_mut(start) {
                Some(s) if !h.based => s.merge(&h.rollup),
                _ => {
                    out.insert(*start, h.rollup.clone());
                }
            }
        }
        out.into_values().collect()
    }

    /// Hours held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.hours.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hours.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests;
