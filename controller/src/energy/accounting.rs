//! From sample streams to attributed intervals: the I/O-free bridge between the agents' samples and
//! [`measure`](super::measure)/[`attribute`](super::attribute).
//!
//! Per GPU, samples are collected until the attribution window (default 60 s; NVML's power sensors
//! sample only part of the time, so never attribute single samples) has passed; the interval then
//! closes at that sample's time (a counter reading, so intervals are cut at readings). Each closed
//! interval is measured, attributed to the slices that held the GPU during it, priced in CO2e, and
//! kept as an [`IntervalRecord`] (bounded, newest kept) from which reports are computed.
//!
//! Dynamic energy is split with each GPU's [`ActivityFit`] when the samples carry per-slice DRAM
//! activity (per-process memory utilization on a shared GPU, GPM per MIG instance on Hopper and
//! newer): the fit learns, from the board's energy counter over short stretches
//! ([`AccountingConfig::fit_observation_ms`]), what a unit of SM, DRAM, tensor and clock-weighted
//! activity costs on that GPU, and each slice's activity vector is weighed with it. Without the
//! DRAM signal, or before the fit has enough observations, the interval is split by SM% x time
//! and labelled with why ([`Method`]). Either way the split is the exact one of
//! [`attribution::attribute`], so conservation holds per GPU and interval.

use std::collections::{BTreeMap, VecDeque};

use greenslice_core::sample::AttributedSample;
use serde::{Deserialize, Serialize};

use super::attribution::{
    self, AttributionInput, Holder, SliceActivity, SliceEnergy, StaticPolicy,
};
use super::carbon::{CarbonFactors, SiteCarbon};
use super::fit::{self, ActivityFit, ActivityVector, Fallback, FitConfig, Method, Observation};
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
    /// The per-GPU activity fit's settings.
    pub fit: FitConfig,
    /// Length of one fit observation, ms: the board's counter delta over at least this much
    /// sampled time against the activity in it. NVML's power sensors sample only part of the
    /// time, so an observation spans several samples (default 5 s, one agent batch).
    pub fit_observation_ms: u64,
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
            fit: FitConfig::default(),
            fit_observation_ms: 5_000,
        }
    }
}

/// One slice's share of one interval: what it held, what it did, what it was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceInterval {
    pub slice_id: String,
    pub tenant: String,
    /// The ResourceClaim (`namespace/name`) the slice stands for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
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
    /// How the dynamic energy was split among the slices: the activity fit, or the SM split with
    /// why the fit was not used.
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
    /// Activity vectors of the open interval: per slice, and of work no slice owns.
    vectors: BTreeMap<String, ActivityVector>,
    unattributed_vec: ActivityVector,
    /// Whether every sample step of the open interval carried the DRAM signal.
    interval_has_dram: bool,
    /// This GPU's activity fit (kept across intervals) and the observation being gathered.
    fit: ActivityFit,
    observing: Option<Observing>,
}

/// A fit observation being gathered: from a counter reading on, the board's activity.
#[derive(Debug, Clone)]
struct Observing {
    start_ms: u64,
    start_mj: u64,
    activity: ActivityVector,
    /// The part of `activity` each slice did.
    slices: BTreeMap<String, ActivityVector>,
    context_ms: f64,
    /// False once a step lacked the DRAM signal: such an observation is dropped.
    has_dram: bool,
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
            let fit_config = self.config.fit;
            let acc = self
                .gpus
                .entry(s.gpu_uuid.clone())
                .or_insert_with(|| GpuAcc {
                    fit: ActivityFit::new(fit_config),
                    interval_has_dram: true,
                    ..GpuAcc::default()
                });
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
                acc.observing = s.energy_mj.map(|mj| Observing::new(at, mj));
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
            let step = step_vectors(s, dt);
            acc.interval_has_dram &= step.has_dram;
            for (id, v) in &step.slices {
                acc.vectors.entry(id.clone()).or_default().add(v);
            }
            acc.unattributed_vec.add(&step.unattributed);
            let idle_now = idle_power_of(&self.config, acc).0;
            observe(&self.config, acc, s, at, dt, &step, idle_now);
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
                acc.vectors.clear();
                acc.unattributed_vec = ActivityVector::default();
                acc.interval_has_dram = true;
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
    let (idle_power_mw, calibrated) = idle_power_of(config, acc);
    let (method, activity, unattributed_activity) = split_weights(acc);
    let a = attribution::attribute(&AttributionInput {
        measured_mj: m.energy_mj,
        interval_ms: interval.len_ms(),
        idle_power_mw,
        holders: holders.clone(),
        activity,
        unattributed_activity,
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
                claim: h.claim.clone(),
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
        idle_power_calibrated: calibrated,
        static_mj: a.static_mj,
        dynamic_mj: a.dynamic_mj,
        unattributed_mj: a.unattributed_mj,
        unallocated_idle_mj: a.unallocated_idle_mj,
        slices,
        gpu_activity_pct_ms: acc.gpu_activity,
        factors,
        method,
    };
    Ok((rec, m, a))
}

/// Idle power of a GPU now, mW, and whether it was calibrated from its samples.
fn idle_power_of(config: &AccountingConfig, acc: &GpuAcc) -> (u64, bool) {
    let idle_samples: Vec<u64> = acc.idle_samples.iter().copied().collect();
    match measure::calibrate_idle_power_mw(&idle_samples) {
        Some(p) => (p, true),
        None => (
            config
                .default_idle_power_mw
                .get(&acc.model)
                .copied()
                .unwrap_or(0),
            false,
        ),
    }
}

/// The activity weights of the open interval and the method that gave them: the fit where the
/// DRAM signal was there throughout and the fit is ready, else the SM split, labelled with why.
fn split_weights(acc: &GpuAcc) -> (Method, Vec<SliceActivity>, u64) {
    let vectors: Vec<(String, ActivityVector)> =
        acc.vectors.iter().map(|(id, v)| (id.clone(), *v)).collect();
    let coefficients = acc.fit.model();
    match (acc.interval_has_dram, coefficients) {
        (true, Some(c)) => {
            let (rows, un) = fit::fitted_activity(&c, &vectors, &acc.unattributed_vec);
            (Method::ActivityFit, rows, un)
        }
        (has_dram, _) => {
            let why = if has_dram {
                Fallback::FitNotReady
            } else {
                Fallback::NoDramSignal
            };
            let rows = acc
                .activity
                .iter()
                .map(|(slice_id, a)| SliceActivity {
                    slice_id: slice_id.clone(),
                    activity: (a * ACTIVITY_SCALE).round() as u64,
                })
                .collect();
            let un = (acc.unattributed * ACTIVITY_SCALE).round() as u64;
            (Method::SmSplitFallback(why), rows, un)
        }
    }
}

/// One sample step's activity vectors ("% of the whole GPU x ms").
#[derive(Debug, Default)]
struct StepVectors {
    slices: Vec<(String, ActivityVector)>,
    unattributed: ActivityVector,
    /// Whether the step carried the DRAM signal: the device gives the figure (the unattributed
    /// DRAM activity is reported) and every slice whose activity is known has one.
    has_dram: bool,
}

/// The activity vectors of the step ending at sample `s`, `dt` ms long. SM and tensor activity
/// are also weighted by the SM clock's share of its maximum (1 where the clocks are not known).
fn step_vectors(s: &AttributedSample, dt: f64) -> StepVectors {
    let clock = match (s.sm_clock_mhz, s.max_sm_clock_mhz) {
        (Some(c), Some(max)) if max > 0 => (f64::from(c) / f64::from(max)).clamp(0.0, 1.0),
        _ => 1.0,
    };
    let vector = |sm: f64, dram: Option<f64>, tensor: Option<f64>| {
        ActivityVector::at_clock(
            sm.max(0.0) * dt,
            dram.unwrap_or(0.0).max(0.0) * dt,
            tensor.unwrap_or(0.0).max(0.0) * dt,
            clock,
        )
    };
    StepVectors {
        slices: s
            .slices
            .iter()
            .map(|a| {
                (
                    a.slice_id.clone(),
                    vector(a.sm_pct, a.dram_pct, a.tensor_pct),
                )
            })
            .collect(),
        unattributed: vector(
            s.unattributed_sm_pct,
            s.unattributed_dram_pct,
            s.unattributed_tensor_pct,
        ),
        has_dram: s.unattributed_dram_pct.is_some()
            && s.slices
                .iter()
                .all(|a| !a.activity_known || a.dram_pct.is_some()),
    }
}

impl Observing {
    fn new(at_ms: u64, mj: u64) -> Observing {
        Observing {
            start_ms: at_ms,
            start_mj: mj,
            activity: ActivityVector::default(),
            slices: BTreeMap::new(),
            context_ms: 0.0,
            has_dram: true,
        }
    }
}

/// Gathers sample `s` (the step of `dt` ms ending at `at`) into the GPU's fit observation, and
/// hands the observation to the fit once it spans [`AccountingConfig::fit_observation_ms`]. An
/// observation is dropped when the counter is missing or went back (a driver reload), when its
/// samples are too far apart to trust (the measurement's gap limit), or when a step lacked the
/// DRAM signal.
fn observe(
    config: &AccountingConfig,
    acc: &mut GpuAcc,
    s: &AttributedSample,
    at: u64,
    dt: f64,
    step: &StepVectors,
    idle_power_mw: u64,
) {
    let Some(mj) = s.energy_mj else {
        acc.observing = None;
        return;
    };
    let gap = dt > config.measure.max_counter_gap_ms as f64;
    let Some(o) = acc.observing.as_mut().filter(|o| mj >= o.start_mj && !gap) else {
        acc.observing = Some(Observing::new(at, mj));
        return;
    };
    o.activity.add(&step.unattributed);
    for (id, v) in &step.slices {
        o.activity.add(v);
        o.slices.entry(id.clone()).or_default().add(v);
    }
    if !s.no_compute_processes {
        o.context_ms += dt;
    }
    o.has_dram &= step.has_dram;
    let span = at.saturating_sub(o.start_ms);
    if span < config.fit_observation_ms.max(1) {
        return;
    }
    if o.has_dram {
        let dynamic_mj = (mj - o.start_mj) as f64 - idle_power_mw as f64 * span as f64 / 1000.0;
        acc.fit.observe(Observation {
            activity: o.activity,
            context_ms: o.context_ms,
            dynamic_mj,
            slices: std::mem::take(&mut o.slices).into_iter().collect(),
        });
    }
    acc.observing = Some(Observing::new(at, mj));
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
                    claim: None,
                    capacity: Capacity::from_fraction(0.5).unwrap(),
                    held_ms: iv.len_ms(),
                },
                Holder {
                    slice_id: "b".into(),
                    tenant: "tb".into(),
                    claim: None,
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

    /// One GPU, sampled each second for `secs`: slice "mem" streams memory at low SM%, "cmp"
    /// computes, "idle" holds its share and does nothing; each busy one pauses in its own rhythm.
    /// Power is 70 W idle plus 2 W per SM % and 1.5 W per DRAM % (of the whole GPU), so the truth
    /// of each slice's dynamic energy is known. `dram` sends the DRAM signal or not.
    fn mixed_gpu(secs: i64, dram: bool) -> (Vec<AttributedSample>, BTreeMap<String, u64>) {
        let mut energy = 0u64;
        let mut truth: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::new();
        for i in 0..=secs {
            // (slice, sm %, dram %) over the second before this sample, as NVML reports it.
            let on = |period: i64| (i / period) % 3 != 2;
            let acts = [
                ("mem", if on(5) { (12.0, 70.0) } else { (0.0, 0.0) }),
                ("cmp", if on(7) { (60.0, 6.0) } else { (0.0, 0.0) }),
                ("idle", (0.0, 0.0)),
            ];
            if i > 0 {
                energy += 70_000; // mJ per second at idle
                for (id, (sm, d)) in acts {
                    let mj = (2_000.0 * sm + 1_500.0 * d) as u64;
                    energy += mj;
                    *truth.entry(id.to_string()).or_default() += mj;
                }
            }
            let mut s = sample(1_000_000 + i * 1000, energy, 70_000, &[]);
            s.slices = acts
                .iter()
                .map(|(id, (sm, d))| greenslice_core::sample::SliceActivity {
                    slice_id: id.to_string(),
                    sm_pct: *sm,
                    activity_known: true,
                    dram_pct: dram.then_some(*d),
                    ..Default::default()
                })
                .collect();
            s.unattributed_dram_pct = dram.then_some(0.0);
            s.sm_clock_mhz = Some(1980);
            s.max_sm_clock_mhz = Some(1980);
            out.push(s);
        }
        (out, truth)
    }

    fn three_shares(_: &str, iv: Interval) -> Vec<Holder> {
        ["mem", "cmp", "idle"]
            .iter()
            .map(|id| Holder {
                slice_id: id.to_string(),
                tenant: format!("t-{id}"),
                claim: None,
                capacity: Capacity::from_milli(300).unwrap(),
                held_ms: iv.len_ms(),
            })
            .collect()
    }

    #[test]
    fn with_the_dram_signal_the_fit_charges_a_memory_bound_slice_its_true_energy() {
        let mut acc = Accountant::new(AccountingConfig {
            window_ms: 30_000,
            ..Default::default()
        });
        let (samples, _) = mixed_gpu(600, true);
        let closed = acc.ingest("n", &|_| "H100-SXM5-80GB".into(), &samples, &three_shares);
        assert_eq!(closed.len(), 20);
        // Twelve 5 s observations are needed: the first 30 s interval is split by SM, labelled
        // so; from the second on, the fit.
        assert_eq!(
            closed[0].method,
            Method::SmSplitFallback(Fallback::FitNotReady)
        );
        assert_eq!(closed[1].method, Method::ActivityFit);
        let (mut fit_mem, mut sm_mem, mut true_mem, mut dyn_total) = (0u64, 0f64, 0f64, 0u64);
        for r in &closed {
            let rows: u64 = r.slices.iter().map(|s| s.static_mj + s.dynamic_mj).sum();
            assert_eq!(
                rows + r.unattributed_mj + r.unallocated_idle_mj,
                r.measured_mj,
                "conserved exactly"
            );
            let by = |id: &str| r.slices.iter().find(|s| s.slice_id == id).unwrap();
            assert_eq!(
                by("idle").dynamic_mj,
                0,
                "an idle slice pays no dynamic energy"
            );
            if r.method != Method::ActivityFit {
                continue;
            }
            fit_mem += by("mem").dynamic_mj;
            dyn_total += r.dynamic_mj;
            // What the SM split would have charged: the interval's dynamic energy by SM activity.
            let sm_all: f64 = r.slices.iter().map(|s| s.activity_pct_ms).sum();
            sm_mem += r.dynamic_mj as f64 * by("mem").activity_pct_ms / sm_all;
        }
        assert!(dyn_total > 0, "later intervals use the fit: {closed:?}");
        // Truth over the fitted intervals: the slices' own energy, in the same proportion.
        let (_, truth) = mixed_gpu(600, true);
        let all: u64 = truth.values().sum();
        true_mem += dyn_total as f64 * truth["mem"] as f64 / all as f64;
        let fit_err = (fit_mem as f64 - true_mem).abs() / true_mem;
        let sm_err = (sm_mem - true_mem).abs() / true_mem;
        assert!(fit_err < 0.05, "fit off by {:.1}%", fit_err * 100.0);
        assert!(
            sm_err > 0.3,
            "the SM split is off by only {:.1}%",
            sm_err * 100.0
        );
    }

    #[test]
    fn without_the_dram_signal_intervals_are_split_by_sm_and_say_so() {
        let mut acc = Accountant::new(AccountingConfig::default());
        let (samples, _) = mixed_gpu(300, false);
        let closed = acc.ingest("n", &|_| "H100-SXM5-80GB".into(), &samples, &three_shares);
        assert_eq!(closed.len(), 5);
        for r in &closed {
            assert_eq!(r.method, Method::SmSplitFallback(Fallback::NoDramSignal));
            // The SM split: mem's dynamic share is its SM share.
            let by = |id: &str| r.slices.iter().find(|s| s.slice_id == id).unwrap();
            let sm_all: f64 = r.slices.iter().map(|s| s.activity_pct_ms).sum();
            let want = r.dynamic_mj as f64 * by("mem").activity_pct_ms / sm_all;
            assert!((by("mem").dynamic_mj as f64 - want).abs() <= 1.0);
        }
        // One sample without the signal in an otherwise measured interval: that interval falls back.
        let mut acc = Accountant::new(AccountingConfig::default());
        let (mut samples, _) = mixed_gpu(600, true);
        samples[550].unattributed_dram_pct = None;
        let closed = acc.ingest("n", &|_| "H100-SXM5-80GB".into(), &samples, &three_shares);
        assert_eq!(closed[8].method, Method::ActivityFit);
        assert_eq!(
            closed[9].method,
            Method::SmSplitFallback(Fallback::NoDramSignal)
        );
    }

    #[test]
    fn a_counter_reset_or_a_missing_reading_never_becomes_a_fit_observation() {
        let mut acc = Accountant::new(AccountingConfig::default());
        let (mut samples, _) = mixed_gpu(60, true);
        // The driver reloads 30 s in: the counter restarts from 0.
        for s in samples.iter_mut().skip(30) {
            s.energy_mj = s.energy_mj.map(|e| e - 30 * 70_000 - 1);
        }
        samples[45].energy_mj = None;
        acc.ingest("n", &|_| "H100-SXM5-80GB".into(), &samples, &three_shares);
        let fit = &acc.gpus["GPU-1"].fit;
        // 60 s of 5 s observations is 12; the one across the reset and the two across the
        // missing reading are dropped.
        assert_eq!(fit.len(), 9);
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
