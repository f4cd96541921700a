//! Building the report document from attributed intervals and stored hours, and its headline.

use std::collections::BTreeMap;

use greenslice_core::time::HOUR_MS;

use crate::energy::StaticPolicy;
use crate::energy::accounting::IntervalRecord;
use crate::energy::carbon::{CarbonFactors, Factor};
use crate::energy::history::{FactorRange, fold_factors, merge_factors, source_name};
use crate::energy::measure::EstimateReason;

use super::*;

pub(super) fn kwh(mj: u64) -> f64 {
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
    let mut claims: BTreeMap<String, super::ClaimRow> = BTreeMap::new();
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
    let mut dynamic_methods: BTreeMap<String, u64> = BTreeMap::new();
    let mut cluster_market = Some(0.0);
    let mut util_acc: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    let mut estimated_intervals = 0;

    for r in &recs {
        let len = r.interval.len_ms();
        let estimated = r.quality.is_estimated();
        estimated_intervals += u64::from(estimated);
        *dynamic_methods
            .entry(r.method.label().to_string())
            .or_default() += 1;
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
            if let Some(name) = &s.claim {
                let c = claims
                    .entry(name.clone())
                    .or_insert_with(|| super::ClaimRow {
                        claim: name.clone(),
                        tenant: s.tenant.clone(),
                        ..Default::default()
                    });
                c.gpu_hours_allocated += s.capacity * held_h;
                c.energy_mj += mj;
                c.static_mj += s.static_mj;
                c.dynamic_mj += s.dynamic_mj;
                if estimated {
                    c.estimated_mj += mj;
                }
                c.co2e_kg += loc;
            }
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
        claims: claims
            .into_values()
            .map(|mut c| {
                c.energy_kwh = kwh(c.energy_mj);
                c
            })
            .collect(),
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
        dynamic_methods,
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
