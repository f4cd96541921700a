//! From sample streams to attributed intervals: the I/O-free bridge between the agents' samples and
//! [`measure`](super::measure)/[`attribute`](super::attribute).
//!
//! Per GPU, samples are collected until the attribution window (default 60 s; NVML's power sensors
//! sample only part of the time, so never attribute single samples) has passed; the interval then
//! closes at that sample's time (a counter reading, so intervals are cut at readings). Each closed
//! interval is measured, attributed to the slices that held the GPU during it, priced in CO2e, and
//! kept as an [`IntervalRecord`] (bounded, newest kept) from which reports are computed.

use std::collections::{BTreeMap, VecDeque};

use greenslice_core::sample::AttributedSample;
use serde::{Deserialize, Serialize};

use super::attribution::{
    self, AttributionInput, Holder, SliceActivity, SliceEnergy, StaticPolicy,
};
use super::carbon::{CarbonFactors, SiteCarbon};
use super::fit::Method;
use super::measure::{self, CounterReading, MeasureConfig, PowerSample, Quality};
use super::{EnergyLedger, Interval};

/// Settings of the accountant.
#[derive(Debug, Clone)]
pub struct AccountingConfig {
    /// Attribution window, ms.
    pub window_ms: u64,
    pub policy: StaticPolicy,
    pub measure: MeasureConfig,
    pub site: SiteCarbon,
    /// Idle power used until a GPU has calibration samples, by model name, mW.
    pub default_idle_power_mw: BTreeMap<String, u64>,
    /// Interval records kept (oldest dropped first).
    pub max_records: usize,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        let default_idle_power_mw = greenslice_core::gpu::GpuModel::KNOWN
            .iter()
            .map(|m| (m.name().to_string(), (m.power_w().0 * 1000.0) as u64))
            .collect();
        AccountingConfig {
            window_ms: 60_000,
            policy: StaticPolicy::ByCapacity,
            measure: MeasureConfig::default(),
            site: SiteCarbon::unconfigured("default"),
            default_idle_power_mw,
            max_records: 200_000,
        }
    }
}

/// One slice's share of one interval: what it held, what it did, what it was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceInterval {
    pub slice_id: String,
    pub tenant: String,
    /// Fraction of the GPU held (0..=1).
    pub capacity: f64,
    /// ms of the interval it was held.
    pub held_ms: u64,
    /// Activity as "percent of the whole GPU x ms" (100 x interval ms = the GPU fully busy).
    pub activity_pct_ms: f64,
    pub static_mj: u64,
    pub dynamic_mj: u64,
}

/// One GPU over one attributed interval. `sum(slices) + unattributed + unallocated_idle == measured`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    pub gpu: String,
    pub node: String,
    pub model: String,
    pub interval: Interval,
    pub measured_mj: u64,
    /// Counter delta, or an estimate from power and why.
    pub quality: Quality,
    /// Raw counter readings (audit).
    pub counter_readings: Vec<CounterReading>,
    pub idle_power_mw: u64,
    /// Whether `idle_power_mw` was calibrated from this GPU's samples (else the model default).
    pub idle_power_calibrated: bool,
    pub static_mj: u64,
    pub dynamic_mj: u64,
    pub unattributed_mj: u64,
    pub unallocated_idle_mj: u64,
    pub slices: Vec<SliceInterval>,
    /// Board activity in "percent x ms" (from board utilization where given, else the mapped sum).
    pub gpu_activity_pct_ms: f64,
    pub factors: CarbonFactors,
    /// How the dynamic energy was split among the slices (the live path: the SM split).
    #[serde(default)]
    pub method: Method,
}

/// Per-GPU state between interval boundaries.
#[derive(Debug, Default)]
struct GpuAcc {
    node: String,
    model: String,
    start_ms: Option<u64>,
    last_ms: u64,
    readings: Vec<CounterReading>,
    power: Vec<PowerSample>,
    activity: BTreeMap<String, f64>,
    unattributed: f64,
    gpu_activity: f64,
    /// Power of recent samples with no compute process, mW (calibrates idle power).
    idle_samples: VecDeque<u64>,
}

/// Why an interval could not be accounted (it is then skipped and counted).
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error(transparent)]
    Measure(#[from] measure::MeasureError),
    #[error(transparent)]
    Attribution(#[from] attribution::AttributionError),
    #[error(transparent)]
    Carbon(#[from] super::carbon::CarbonError),
    #[error(transparent)]
    Ledger(#[from] super::ledger::LedgerError),
}

/// Idle-power calibration samples kept per GPU.
const IDLE_SAMPLES: usize = 256;

/// Turns sample streams into attributed intervals.
#[derive(Debug)]
pub struct Accountant {
    config: AccountingConfig,
    gpus: BTreeMap<String, GpuAcc>,
    records: VecDeque<IntervalRecord>,
    /// Running totals since start.
    pub totals: EnergyLedger,
    /// Intervals that could not be accounted, with the last reason.
    pub skipped: u64,
    pub last_error: Option<String>,
    /// Intervals whose carbon factor stood in for an hour the configured series lacks.
    pub gap_estimated: u64,
    /// Start (ms) of the hour of the last interval with a gap estimate, to warn once per gap.
    last_gap_hour_ms: Option<u64>,
    /// For GPUs with no open interval: the latest end (ms) of a slice that held the GPU and was
    /// forgotten since (see [`Accountant::holder_forgotten`]). The GPU's first interval does not
    /// start before it.
    forgotten_until: BTreeMap<String, u64>,
}

impl Accountant {
    pub fn new(config: AccountingConfig) -> Self {
        Accountant {
            totals: EnergyLedger::new(config.policy),
            config,
            gpus: BTreeMap::new(),
            records: VecDeque::new(),
            skipped: 0,
            last_error: None,
            gap_estimated: 0,
            last_gap_hour_ms: None,
            forgotten_until: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &AccountingConfig {
        &self.config
    }

    /// Start of `gpu`'s open interval (ms): its energy is attributed up to here, and every
    /// interval still to come starts here or later, so a slice that stopped holding the GPU at or
    /// before it is no longer needed. None while the GPU has sent no samples.
    pub fn unattributed_since(&self, gpu: &str) -> Option<u64> {
        self.gpus.get(gpu).and_then(|a| a.start_ms)
    }

    /// Tells the accountant that a slice which held `gpu` until `until_ms` is forgotten, so it can
    /// no longer be named as a holder. A GPU with an open interval never needs it again (the
    /// controller keeps slices that interval needs); for one with none yet, its first interval is
    /// made to start no earlier than `until_ms`, and samples before that are not accounted.
    pub fn holder_forgotten(&mut self, gpu: &str, until_ms: u64) {
        if self.unattributed_since(gpu).is_some() {
            return;
        }
        let at = self.forgotten_until.entry(gpu.to_string()).or_default();
        *at = (*at).max(until_ms);
    }

    /// Takes samples of one node (any GPUs, time-ordered per GPU). `holders(gpu, interval)` names
    /// the slices that held the GPU during the interval, with their capacity and time held.
    /// Returns the intervals closed by these samples.
    pub fn ingest(
        &mut self,
        node: &str,
        model_of: &dyn Fn(&str) -> String,
        samples: &[AttributedSample],
        holders: &dyn Fn(&str, Interval) -> Vec<Holder>,
    ) -> Vec<IntervalRecord> {
        let mut closed = Vec::new();
        for s in samples {
            let Ok(at) = u64::try_from(s.at_unix_ms) else {
                continue;
            };
            let window = self.config.window_ms;
            let acc = self.gpus.entry(s.gpu_uuid.clone()).or_default();
            acc.node = node.to_string();
            if acc.model.is_empty() {
                acc.model = model_of(&s.gpu_uuid);
            }
            if s.no_compute_processes
                && let Some(p) = s.power_mw
            {
                if acc.idle_samples.len() == IDLE_SAMPLES {
                    acc.idle_samples.pop_front();
                }
                acc.idle_samples.push_back(u64::from(p));
            }
            let reading = CounterReading {
                at_ms: at,
                total_mj: s.energy_mj,
            };
            let power = s.power_mw.map(|p| PowerSample {
                at_ms: at,
                power_mw: u64::from(p),
            });
            let Some(start) = acc.start_ms else {
                if self
                    .forgotten_until
                    .get(&s.gpu_uuid)
                    .is_some_and(|until| at < *until)
                {
                    // Slices that held the GPU then are forgotten: start no interval before them.
                    continue;
                }
                self.forgotten_until.remove(&s.gpu_uuid);
                acc.start_ms = Some(at);
                acc.last_ms = at;
                acc.readings = vec![reading];
                acc.power = power.into_iter().collect();
                continue;
            };
            if at <= acc.last_ms {
                continue; // out of order or repeated: ignore
            }
            let dt = (at - acc.last_ms) as f64;
            for a in &s.slices {
                *acc.activity.entry(a.slice_id.clone()).or_default() += a.sm_pct.max(0.0) * dt;
            }
            acc.unattributed += s.unattributed_sm_pct.max(0.0) * dt;
            let board = s.gpu_util_pct.map(f64::from).unwrap_or_else(|| {
                s.slices.iter().map(|a| a.sm_pct).sum::<f64>() + s.unattributed_sm_pct
            });
            acc.gpu_activity += board.clamp(0.0, 100.0) * dt;
            acc.readings.push(reading);
            acc.power.extend(power);
            acc.last_ms = at;
            if at - start >= window {
                let interval = Interval {
                    start_ms: start,
                    end_ms: at,
                };
                let gpu = s.gpu_uuid.clone();
                let result = close(&self.config, &gpu, acc, interval, holders(&gpu, interval));
                // The next interval starts at this reading.
                acc.start_ms = Some(at);
                acc.readings = vec![reading];
                acc.power = power.into_iter().collect();
                acc.activity.clear();
                acc.unattributed = 0.0;
                acc.gpu_activity = 0.0;
                match result {
                    Ok((rec, m, a)) => match self.totals.add(&gpu, &m, &a, &rec.factors) {
                        Ok(()) => {
                            self.note_gap(&rec);
                            if self.records.len() == self.config.max_records {
                                self.records.pop_front();
                            }
                            self.records.push_back(rec.clone());
                            closed.push(rec);
                        }
                        Err(e) => self.skip(e.into()),
                    },
                    Err(e) => self.skip(e),
                }
            }
        }
        closed
    }

    /// Counts an interval whose factors stood in for a gap in the configured series, warning once
    /// per gap (a run of consecutive hours).
    fn note_gap(&mut self, rec: &IntervalRecord) {
        let Some(gap) = rec.factors.gap() else {
            return;
        };
        self.gap_estimated += 1;
        let hour =
            rec.interval.start_ms / greenslice_core::time::HOUR_MS * greenslice_core::time::HOUR_MS;
        let known = self
            .last_gap_hour_ms
            .is_some_and(|h| h == hour || h + greenslice_core::time::HOUR_MS == hour);
        self.last_gap_hour_ms = Some(hour);
        if !known {
            let why = match &gap.source {
                super::carbon::FactorSource::GapEstimate { gap } => gap.as_str(),
                _ => "",
            };
            tracing::warn!(
                hour_start_ms = hour,
                "carbon factors: {why}; energy is attributed, its CO2e estimated"
            );
        }
    }

    fn skip(&mut self, e: AccountingError) {
        self.skipped += 1;
        self.last_error = Some(e.to_string());
        tracing::warn!(error = %e, "energy interval skipped");
    }

    /// Interval records overlapping `[from_ms, to_ms)`, oldest first.
    pub fn records(&self, from_ms: u64, to_ms: u64) -> Vec<IntervalRecord> {
        self.records
            .iter()
            .filter(|r| r.interval.end_ms > from_ms && r.interval.start_ms < to_ms)
            .cloned()
            .collect()
    }
}

/// Activity units handed to [`attribution::attribute`]: "percent x ms", scaled to integers.
const ACTIVITY_SCALE: f64 = 100.0;

fn close(
    config: &AccountingConfig,
    gpu: &str,
    acc: &GpuAcc,
    interval: Interval,
    holders: Vec<Holder>,
) -> Result<
    (
        IntervalRecord,
        measure::Measurement,
        attribution::Attribution,
    ),
    AccountingError,
> {
    let m = measure::measure(interval, &acc.readings, &acc.power, &config.measure)?;
    let idle_samples: Vec<u64> = acc.idle_samples.iter().copied().collect();
    let calibrated = measure::calibrate_idle_power_mw(&idle_samples);
    let idle_power_mw = calibrated
        .or_else(|| config.default_idle_power_mw.get(&acc.model).copied())
        .unwrap_or(0);
    let activity: Vec<SliceActivity> = acc
        .activity
        .iter()
        .map(|(slice_id, a)| SliceActivity {
            slice_id: slice_id.clone(),
            activity: (a * ACTIVITY_SCALE).round() as u64,
        })
        .collect();
    let a = attribution::attribute(&AttributionInput {
        measured_mj: m.energy_mj,
        interval_ms: interval.len_ms(),
        idle_power_mw,
        holders: holders.clone(),
        activity,
        unattributed_activity: (acc.unattributed * ACTIVITY_SCALE).round() as u64,
        policy: config.policy,
    })?;
    let factors = config.site.factors_at(interval.start_ms)?;
    let energy_of = |id: &str| -> (u64, u64) {
        a.slices
            .iter()
            .find(|s: &&SliceEnergy| s.slice_id == id)
            .map_or((0, 0), |s| (s.static_mj, s.dynamic_mj))
    };
    let slices = holders
        .iter()
        .map(|h| {
            let (st, dy) = energy_of(&h.slice_id);
            SliceInterval {
                slice_id: h.slice_id.clone(),
                tenant: h.tenant.clone(),
                capacity: h.capacity.as_fraction(),
                held_ms: h.held_ms,
                activity_pct_ms: acc.activity.get(&h.slice_id).copied().unwrap_or(0.0),
                static_mj: st,
                dynamic_mj: dy,
            }
        })
        .collect();
    let rec = IntervalRecord {
        gpu: gpu.to_string(),
        node: acc.node.clone(),
        model: acc.model.clone(),
        interval,
        measured_mj: m.energy_mj,
        quality: m.quality,
        counter_readings: m.counter_readings.clone(),
        idle_power_mw,
        idle_power_calibrated: calibrated.is_some(),
        static_mj: a.static_mj,
        dynamic_mj: a.dynamic_mj,
        unattributed_mj: a.unattributed_mj,
        unallocated_idle_mj: a.unallocated_idle_mj,
        slices,
        gpu_activity_pct_ms: acc.gpu_activity,
        factors,
        method: Method::SmSplit,
    };
    Ok((rec, m, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::Capacity;

    fn sample(at: i64, energy_mj: u64, power_mw: u32, slices: &[(&str, f64)]) -> AttributedSample {
        AttributedSample {
            at_unix_ms: at,
            gpu_uuid: "GPU-1".into(),
            power_mw: Some(power_mw),
            energy_mj: Some(energy_mj),
            slices: slices
                .iter()
                .map(|(id, sm)| greenslice_core::sample::SliceActivity {
                    slice_id: id.to_string(),
                    sm_pct: *sm,
                    activity_known: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn closes_intervals_at_the_window_and_conserves_energy() {
        let mut acc = Accountant::new(AccountingConfig {
            window_ms: 10_000,
            ..Default::default()
        });
        // 200 W for 30 s, sampled each second; slice a busy at 40%, b idle.
        let samples: Vec<_> = (0..=30)
            .map(|i| {
                sample(
                    1_000_000 + i * 1000,
                    (i as u64) * 200_000,
                    200_000,
                    &[("a", 40.0), ("b", 0.0)],
                )
            })
            .collect();
        let holders = |_: &str, iv: Interval| {
            vec![
                Holder {
                    slice_id: "a".into(),
                    tenant: "ta".into(),
                    capacity: Capacity::from_fraction(0.5).unwrap(),
                    held_ms: iv.len_ms(),
                },
                Holder {
                    slice_id: "b".into(),
                    tenant: "tb".into(),
                    capacity: Capacity::from_fraction(0.25).unwrap(),
                    held_ms: iv.len_ms(),
                },
            ]
        };
        let closed = acc.ingest("n", &|_| "H100-SXM5-80GB".into(), &samples, &holders);
        assert_eq!(closed.len(), 3);
        for r in &closed {
            assert_eq!(r.measured_mj, 2_000_000, "200 W x 10 s");
            let rows: u64 = r.slices.iter().map(|s| s.static_mj + s.dynamic_mj).sum();
            assert_eq!(
                rows + r.unattributed_mj + r.unallocated_idle_mj,
                r.measured_mj
            );
            // Idle power 70 W (H100 default): static 700 J, a quarter unheld.
            assert_eq!(r.static_mj, 700_000);
            assert_eq!(r.unallocated_idle_mj, 175_000);
            let b = r.slices.iter().find(|s| s.slice_id == "b").unwrap();
            assert_eq!(
                b.dynamic_mj, 0,
                "an idle slice is charged no dynamic energy"
            );
            assert!(!r.idle_power_calibrated);
        }
        assert_eq!(acc.records(0, u64::MAX).len(), 3);
        assert_eq!(acc.totals.cluster.measured_mj, 6_000_000);
    }

    #[test]
    fn a_first_interval_never_starts_before_a_forgotten_holder_ended() {
        let mut acc = Accountant::new(AccountingConfig {
            window_ms: 5_000,
            ..Default::default()
        });
        assert_eq!(acc.unattributed_since("GPU-1"), None);
        // A slice that held GPU-1 until 3 s was forgotten before the GPU sent any sample.
        acc.holder_forgotten("GPU-1", 3_000);
        let samples: Vec<_> = (0..=10)
            .map(|i| sample(i * 1000, i as u64 * 100_000, 100_000, &[]))
            .collect();
        let closed = acc.ingest("n", &|_| "x".into(), &samples, &|_, _| Vec::new());
        assert_eq!(closed[0].interval.start_ms, 3_000, "{closed:?}");
        assert_eq!(acc.unattributed_since("GPU-1"), Some(8_000));
        // Once the GPU has an open interval, forgetting slices that ended before it changes nothing.
        acc.holder_forgotten("GPU-1", 7_000);
        let more = [sample(13_000, 1_300_000, 100_000, &[])];
        let closed = acc.ingest("n", &|_| "x".into(), &more, &|_, _| Vec::new());
        assert_eq!(closed[0].interval.start_ms, 8_000);
    }

    #[test]
    fn a_counter_reset_is_estimated_from_power_and_flagged() {
        let mut acc = Accountant::new(AccountingConfig {
            window_ms: 5_000,
            ..Default::default()
        });
        let mut samples: Vec<_> = (0..=3)
            .map(|i| sample(i * 1000, 10_000_000 + i as u64 * 100_000, 100_000, &[]))
            .collect();
        samples
            .extend((4..=6).map(|i| sample(i * 1000, i as u64 * 100_000 - 400_000, 100_000, &[])));
        let closed = acc.ingest("n", &|_| "x".into(), &samples, &|_, _| Vec::new());
        assert_eq!(closed.len(), 1);
        assert!(closed[0].quality.is_estimated());
        assert_eq!(closed[0].measured_mj, 500_000, "100 W x 5 s from power");
        assert_eq!(
            closed[0].unallocated_idle_mj + closed[0].unattributed_mj,
            500_000
        );
    }
}
