//! `greenslice bench attribution`: how close each attribution method's per-tenant energy comes to
//! the simulated machine's ground truth.
//!
//! Each seeded mix puts compute-bound, memory-bound, tensor-heavy and idle tenants on one GPU of
//! `gpu-sim`'s machine (in memory, manual time), as time-sliced shares or as MIG instances, some
//! under a lowered power limit. Every second the benchmark reads what the agent would through
//! NVML: the board's energy counter, per-process SM and memory utilization on a shared GPU, GPM
//! per MIG instance (SM, DRAM bandwidth, tensor) on Hopper; an A100 in MIG mode gives none of
//! them per instance. Every 60 s it attributes the interval with each method
//! (`greenslice_controller::energy`) from those signals alone, and compares each tenant's dynamic
//! energy with the truth: the processes' own energy (`Process::true_energy_mj`, which only the
//! machine's state holds), with the interval's remaining dynamic energy (the context floor, mJ
//! rounding) shared in proportion to it. The attribution code sees none of the machine's
//! coefficients or true energies: it is in `greenslice-controller`, which does not depend on
//! `gpu-sim`.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use gpu_sim::machine::Process;
use gpu_sim::{Machine, MachineKind, Workload};
use greenslice_controller::energy::fit::{
    self, ActivityFit, ActivityVector, Fallback, FitConfig, Method, Observation,
};
use greenslice_controller::energy::{AttributionInput, Capacity, Holder, StaticPolicy, attribute};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Arguments of `greenslice bench attribution`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seed of the mixes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of mixes.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mixes: u32,
    /// Simulated minutes per mix (60 s intervals).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub minutes: u32,
}

const SAMPLE_MS: i64 = 1_000;
const OBSERVE_EVERY: u32 = 5;
const INTERVAL_S: u32 = 60;

/// What one tenant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Compute,
    Memory,
    Tensor,
    Idle,
}

impl Kind {
    fn workload(self) -> Workload {
        match self {
            Kind::Compute => Workload::ComputeBound,
            Kind::Memory => Workload::MemoryBound,
            Kind::Tensor => Workload::TensorHeavy,
            Kind::Idle => Workload::Generic,
        }
    }

    /// A new (SM, memory, tensor) utilization, %, for the next stretch.
    fn draw(self, rng: &mut ChaCha8Rng) -> (u32, u32, u32) {
        // A running job pauses now and then (data loading, a barrier).
        if self != Kind::Idle && rng.random_bool(0.12) {
            return (0, 0, 0);
        }
        match self {
            Kind::Compute => (rng.random_range(45..=100), rng.random_range(2..=20), 0),
            Kind::Memory => (rng.random_range(12..=40), rng.random_range(55..=95), 0),
            Kind::Tensor => (
                rng.random_range(55..=95),
                rng.random_range(20..=50),
                rng.random_range(35..=90),
            ),
            Kind::Idle => (0, 0, 0),
        }
    }
}

/// How the tenants hold the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Shares,
    Mig,
}

/// One tenant's result in one mix.
#[derive(Debug, Clone, Serialize)]
pub struct TenantResult {
    pub tenant: String,
    pub kind: Kind,
    /// Capacity held, fraction of the GPU.
    pub capacity: f64,
    /// True dynamic energy, mJ (its processes' own, plus its share of the floor and rounding).
    pub true_mj: u64,
    /// Attributed dynamic energy by method, mJ.
    pub attributed_mj: BTreeMap<String, u64>,
    /// |attributed - true| / true, % (none for a tenant with no true dynamic energy).
    pub error_pct: BTreeMap<String, Option<f64>>,
}

/// One mix's result.
#[derive(Debug, Clone, Serialize)]
pub struct MixResult {
    pub mix: u32,
    pub model: String,
    pub layout: Layout,
    pub power_limit_w: u32,
    /// Intervals in which the board was held at its power limit at some sample.
    pub throttled_intervals: u32,
    /// Whether per-slice signals exist (all but an A100 in MIG mode).
    pub per_slice_signals: bool,
    pub tenants: Vec<TenantResult>,
    /// Dynamic energy of the mix, mJ.
    pub dynamic_mj: u64,
    /// Unattributed dynamic energy by method, mJ.
    pub unattributed_mj: BTreeMap<String, u64>,
    /// Intervals by the method actually used for the "activity_fit" column.
    pub fit_methods: BTreeMap<String, u32>,
    /// Interval attributions (per method) whose rows summed exactly to the measured energy: all
    /// of them (the run fails otherwise).
    pub conserved_intervals: u32,
}

/// Error statistics of one method over a set of mixes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodSummary {
    pub tenants: usize,
    pub mean_abs_error_pct: f64,
    pub worst_error_pct: f64,
    /// Unattributed dynamic energy, % of the dynamic energy of the mixes.
    pub unattributed_pct: f64,
    /// Dynamic energy charged to idle tenants, mJ.
    pub idle_tenants_mj: u64,
}

/// The benchmark's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub minutes: u32,
    pub mixes: Vec<MixResult>,
    /// By method, over the mixes with per-slice signals.
    pub with_signals: BTreeMap<String, MethodSummary>,
    /// By method, over the mixes with per-slice signals where the SM split's worst tenant error
    /// exceeds 20%.
    pub sm_split_off: BTreeMap<String, MethodSummary>,
    pub sm_split_off_mixes: usize,
    /// By method, over the mixes without per-slice signals (A100 MIG).
    pub without_signals: BTreeMap<String, MethodSummary>,
}

pub const SM_SPLIT: &str = "sm_split";
pub const FIT: &str = "activity_fit";
const METHODS: [&str; 2] = [SM_SPLIT, FIT];

struct Tenant {
    name: String,
    slice: String,
    kind: Kind,
    capacity: Capacity,
    pid: Option<u32>,
    /// MIG: (GPU-instance id, compute-slice share, memory-slice share).
    gi: Option<(u32, f64, f64)>,
}

impl Tenant {
    /// The next stretch's utilization, %: on a time-sliced share, of the GPU's time the share
    /// gets (its utilizations are of the whole GPU, and the shares' add up to at most 100%).
    fn draw(&self, rng: &mut ChaCha8Rng) -> (u32, u32, u32) {
        let (sm, mem, tensor) = self.kind.draw(rng);
        if self.gi.is_some() {
            return (sm, mem, tensor);
        }
        let c = self.capacity.as_fraction();
        let f = |x: u32| (f64::from(x) * c).round() as u32;
        (f(sm), f(mem), f(tensor))
    }
}

/// Runs every mix and summarises.
pub fn run(a: &Args) -> anyhow::Result<Report> {
    let mut mixes = Vec::new();
    for i in 0..a.mixes {
        mixes.push(run_mix(a.seed, i, a.minutes).with_context(|| format!("mix {i}"))?);
    }
    let pick = |f: &dyn Fn(&MixResult) -> bool| {
        let chosen: Vec<&MixResult> = mixes.iter().filter(|m| f(m)).collect();
        METHODS
            .iter()
            .map(|m| (m.to_string(), summarise(&chosen, m)))
            .collect::<BTreeMap<_, _>>()
    };
    let off = |m: &MixResult| {
        m.per_slice_signals
            && m.tenants
                .iter()
                .filter_map(|t| t.error_pct.get(SM_SPLIT).copied().flatten())
                .any(|e| e > 20.0)
    };
    Ok(Report {
        seed: a.seed,
        minutes: a.minutes,
        with_signals: pick(&|m| m.per_slice_signals),
        sm_split_off: pick(&off),
        sm_split_off_mixes: mixes.iter().filter(|m| off(m)).count(),
        without_signals: pick(&|m| !m.per_slice_signals),
        mixes,
    })
}

fn summarise(mixes: &[&MixResult], method: &str) -> MethodSummary {
    let errors: Vec<f64> = mixes
        .iter()
        .flat_map(|m| &m.tenants)
        .filter_map(|t| t.error_pct.get(method).copied().flatten())
        .collect();
    let dynamic: u64 = mixes.iter().map(|m| m.dynamic_mj).sum();
    let unattributed: u64 = mixes
        .iter()
        .map(|m| m.unattributed_mj.get(method).copied().unwrap_or(0))
        .sum();
    MethodSummary {
        tenants: errors.len(),
        mean_abs_error_pct: if errors.is_empty() {
            0.0
        } else {
            errors.iter().sum::<f64>() / errors.len() as f64
        },
        worst_error_pct: errors.iter().copied().fold(0.0, f64::max),
        unattributed_pct: if dynamic == 0 {
            0.0
        } else {
            100.0 * unattributed as f64 / dynamic as f64
        },
        idle_tenants_mj: mixes
            .iter()
            .flat_map(|m| &m.tenants)
            .filter(|t| t.kind == Kind::Idle)
            .map(|t| t.attributed_mj.get(method).copied().unwrap_or(0))
            .sum(),
    }
}

/// Per-interval accumulation of one tenant's signals and truth.
#[derive(Default, Clone)]
struct Acc {
    activity: ActivityVector,
    true_mj: u64,
}

/// One mix: the GPU, how it is shared, its power limit and what each tenant runs.
#[derive(Debug, Clone, PartialEq)]
pub struct MixSpec {
    /// An H100 (GPM), else an A100 40 GB (no GPM).
    pub hopper: bool,
    pub layout: Layout,
    /// Power limit as a share of the model's maximum (none: the maximum).
    pub limit_fraction: Option<f64>,
    /// 1 to 4 tenants.
    pub kinds: Vec<Kind>,
}

fn run_mix(seed: u64, mix: u32, minutes: u32) -> anyhow::Result<MixResult> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(mix)));
    let hopper = mix % 3 != 2;
    let layout = if mix.is_multiple_of(2) {
        Layout::Shares
    } else {
        Layout::Mig
    };
    let limit_fraction = rng.random_bool(0.35).then(|| rng.random_range(0.45..0.7));
    // Tenants: compute-bound, memory-bound, tensor-heavy or idle, at least one busy.
    let count = rng.random_range(2..=4usize);
    let mut kinds: Vec<Kind> = (0..count)
        .map(|_| match rng.random_range(0..10) {
            0..=2 => Kind::Compute,
            3..=5 => Kind::Memory,
            6..=8 => Kind::Tensor,
            _ => Kind::Idle,
        })
        .collect();
    if kinds.iter().all(|k| *k == Kind::Idle) {
        kinds[0] = Kind::Memory;
    }
    let spec = MixSpec {
        hopper,
        layout,
        limit_fraction,
        kinds,
    };
    run_spec(&spec, &mut rng, mix, minutes)
}

/// Runs one mix for `minutes`, its activity drawn from `rng`.
pub fn run_spec(
    spec: &MixSpec,
    rng: &mut ChaCha8Rng,
    mix: u32,
    minutes: u32,
) -> anyhow::Result<MixResult> {
    let (hopper, layout) = (spec.hopper, spec.layout);
    let count = spec.kinds.len();
    if !(1..=4).contains(&count) {
        return Err(anyhow!("a mix has 1 to 4 tenants, not {count}"));
    }
    let kinds = &spec.kinds;
    let kind = if hopper {
        MachineKind::DgxH100
    } else {
        MachineKind::DgxA100_40
    };
    let mig = layout == Layout::Mig;
    let mut m = Machine::new(kind, 1, u32::from(mig), &format!("bench-{mix}"), 0);
    m.time_mode = gpu_sim::TimeMode::Manual;
    let model = m.device(0)?.kind;
    let (idle_mw, max_mw) = model.power_mw();
    // Some mixes run near or past the power limit.
    let limit_mw = match spec.limit_fraction {
        Some(f) => {
            let l = ((f64::from(max_mw) * f) as u32).clamp(idle_mw * 2, max_mw);
            m.set_power_limit(0, l)?;
            l
        }
        None => max_mw,
    };
    // The idle power the agent calibrates: the board with no process.
    let idle_power_mw = u64::from(m.device(0)?.power_mw());

    let mut tenants = Vec::new();
    // MIG layouts (profile index, start, memory slices, compute slices): up to three tenants on
    // 3g @0, 2g @4, 1g @6; four on 2g @0, 2g @2, 2g @4, 1g @6.
    let mig_plan: &[(u32, u32, u32, u32)] = if count <= 3 {
        &[(2, 0, 4, 3), (1, 4, 2, 2), (0, 6, 1, 1)]
    } else {
        &[(1, 0, 2, 2), (1, 2, 2, 2), (1, 4, 2, 2), (0, 6, 1, 1)]
    };
    let share_caps = [
        [1000, 0, 0, 0],
        [500, 500, 0, 0],
        [400, 300, 300, 0],
        [250, 250, 250, 250],
    ];
    for (i, k) in kinds.iter().enumerate() {
        let name = format!("t{i}-{}", kind_name(*k));
        let slice = format!("s-{i}");
        let (capacity, gi) = if mig {
            let (index, start, size, cs) = mig_plan[i];
            let gi = m.create_gpu_instance(0, index, Some((start, size)))?;
            m.create_compute_instance(0, gi, index)?;
            (
                Capacity::mig_compute_slices(cs as u8, 7).map_err(|e| anyhow!("{e}"))?,
                Some((gi, f64::from(cs) / 7.0, f64::from(size) / 8.0)),
            )
        } else {
            (
                Capacity::from_milli(share_caps[count - 1][i]).map_err(|e| anyhow!("{e}"))?,
                None,
            )
        };
        tenants.push(Tenant {
            name,
            slice,
            kind: *k,
            capacity,
            pid: None,
            gi,
        });
    }
    // Start every tenant's process (idle tenants hold a context and do nothing).
    for (i, t) in tenants.iter_mut().enumerate() {
        let pid = 1000 + i as u32;
        let (sm, mem, tensor) = t.draw(rng);
        m.start_process(
            0,
            t.gi.map(|g| g.0),
            Process {
                pid,
                used_memory_bytes: 1 << 30,
                sm_util_pct: sm,
                mem_util_pct: mem,
                tensor_pct: tensor,
                workload: t.kind.workload(),
                ..Process::default()
            },
        )?;
        t.pid = Some(pid);
    }

    let per_slice_signals = !mig || model.has_gpm();
    let mut fit_state = ActivityFit::new(FitConfig::default());
    let mut attributed: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    let mut unattributed: BTreeMap<String, u64> = BTreeMap::new();
    let mut fit_methods: BTreeMap<String, u32> = BTreeMap::new();
    let mut dynamic_total: u64 = 0;
    let mut throttled_intervals = 0;
    let mut conserved_intervals = 0;

    let mut now = m.now_ms;
    let mut counter = m.device(0)?.energy_mj;
    let mut true_before: BTreeMap<u32, u64> = true_energies(&m);
    let mut gpm_prev: BTreeMap<u32, gpu_sim::machine::GpmReading> = BTreeMap::new();
    if per_slice_signals && mig {
        for t in &tenants {
            if let Some((gi, ..)) = t.gi {
                gpm_prev.insert(gi, m.gpm_sample(0, Some(gi))?);
            }
        }
    }
    // Board tensor activity on a shared Hopper GPU: (this interval, this second, this batch,
    // this interval clock-weighted),
    // each slice's SM activity in this batch, and the fit that splits the board's figure.
    let mut board_tensor = (0.0f64, 0.0f64, 0.0f64, ActivityVector::default());
    let mut batch_sm: BTreeMap<String, f64> = BTreeMap::new();
    let mut tensor_split = fit::BoardShareFit::new(FitConfig::default());
    // Activity, context ms and dynamic mJ of the sample batch being gathered, and each slice's
    // part of the activity.
    let mut buf = (ActivityVector::default(), 0.0f64, 0.0f64);
    let mut buf_slices: BTreeMap<String, ActivityVector> = BTreeMap::new();
    let mut board_tensor_batch = ActivityVector::default();
    for _minute in 0..minutes {
        let interval_start_counter = counter;
        let mut accs: BTreeMap<String, Acc> = BTreeMap::new();
        let mut throttled = false;
        for second in 0..INTERVAL_S {
            if second.is_multiple_of(OBSERVE_EVERY) {
                for t in &tenants {
                    if let Some(pid) = t.pid {
                        let (sm, mem, tensor) = t.draw(rng);
                        m.set_process_activity(pid, sm, mem, tensor)?;
                    }
                }
            }
            let obs_counter = counter;
            // Signals as the agent reads them over the next second: per-process utilization on
            // a shared GPU (NVML's per-process samples).
            let mut step: BTreeMap<String, ActivityVector> = BTreeMap::new();
            if !mig {
                let d = m.device(0)?;
                for t in &tenants {
                    if let Some(p) = d.processes.iter().find(|p| Some(p.pid) == t.pid) {
                        step.insert(
                            t.slice.clone(),
                            ActivityVector {
                                sm_pct_ms: f64::from(p.sm_util_pct) * SAMPLE_MS as f64,
                                dram_pct_ms: f64::from(p.mem_util_pct) * SAMPLE_MS as f64,
                                tensor_pct_ms: 0.0,
                                ..ActivityVector::default()
                            },
                        );
                    }
                }
            }
            // The SM clock over the next second (NVML's clock reading), as a share of its maximum.
            let clock = m.device(0)?.sm_clock_mhz();
            throttled |= clock < model.max_sm_clock_mhz();
            let clock = f64::from(clock) / f64::from(model.max_sm_clock_mhz().max(1));
            let board_gpm_before = if hopper && !mig {
                Some(m.gpm_sample(0, None)?)
            } else {
                None
            };
            now += SAMPLE_MS;
            m.advance_to(now);
            counter = m.device(0)?.energy_mj;
            // MIG on Hopper: GPM per instance, weighted by the instance's share of the GPU.
            if mig && per_slice_signals {
                for t in &tenants {
                    let Some((gi, cf, mf)) = t.gi else { continue };
                    let cur = m.gpm_sample(0, Some(gi))?;
                    if let Some(prev) = gpm_prev.get(&gi) {
                        let r = gpu_sim::machine::gpm_metrics(prev, &cur)?;
                        let dt = (cur.at_ms - prev.at_ms) as f64;
                        step.insert(
                            t.slice.clone(),
                            ActivityVector {
                                sm_pct_ms: r.sm_util_pct * cf * dt,
                                dram_pct_ms: r.dram_bw_util_pct * mf * dt,
                                tensor_pct_ms: r.tensor_util_pct * cf * dt,
                                ..ActivityVector::default()
                            },
                        );
                    }
                    gpm_prev.insert(gi, cur);
                }
            }
            // A shared Hopper GPU: tensor activity only for the board (GPM; NVML has no
            // per-process tensor figure), split among the slices at the interval's end.
            if let Some(before) = board_gpm_before {
                let after = m.gpm_sample(0, None)?;
                let board_t = after
                    .counters
                    .tensor_pct_ms
                    .saturating_sub(before.counters.tensor_pct_ms)
                    as f64;
                board_tensor.0 += board_t;
                board_tensor.1 += board_t;
                board_tensor.2 += board_t;
                board_tensor
                    .3
                    .add(&ActivityVector::at_clock(0.0, 0.0, board_t, clock));
                for (slice, a) in &step {
                    *batch_sm.entry(slice.clone()).or_default() += a.sm_pct_ms;
                }
            }
            let mut board = ActivityVector::default();
            for (slice, a) in step.iter_mut() {
                *a = ActivityVector::at_clock(a.sm_pct_ms, a.dram_pct_ms, a.tensor_pct_ms, clock);
                let acc = accs.entry(slice.clone()).or_default();
                let part = buf_slices.entry(slice.clone()).or_default();
                for into in [&mut acc.activity, &mut board, part] {
                    into.add(a);
                }
            }
            let dyn_mj =
                (counter - obs_counter) as f64 - (idle_power_mw * SAMPLE_MS as u64) as f64 / 1000.0;
            // The fit gets one observation per sample batch (5 s), as the agent sends them.
            buf.0.add(&board);
            buf.1 += SAMPLE_MS as f64;
            let bt = ActivityVector::at_clock(0.0, 0.0, board_tensor.1, clock);
            buf.0.add(&bt);
            board_tensor_batch.add(&bt);
            board_tensor.1 = 0.0;
            buf.2 += dyn_mj;
            if (second + 1).is_multiple_of(OBSERVE_EVERY) {
                // The batch's board tensor activity, split among the slices as the interval's
                // will be, so the slices' vectors in the fit are the ones it weighs.
                if !batch_sm.is_empty() {
                    let v: Vec<(String, f64)> =
                        batch_sm.iter().map(|(k, x)| (k.clone(), *x)).collect();
                    let per_unit = board_tensor_batch.tensor_pct_ms.max(f64::MIN_POSITIVE);
                    for (slice, t) in tensor_split.split(&v, board_tensor.2) {
                        let mut part = board_tensor_batch;
                        part.sub_scaled(&board_tensor_batch, 1.0 - t / per_unit);
                        buf_slices.entry(slice).or_default().add(&part);
                    }
                }
                board_tensor_batch = ActivityVector::default();
                if per_slice_signals {
                    fit_state.observe(Observation {
                        activity: buf.0,
                        context_ms: buf.1,
                        dynamic_mj: buf.2,
                        slices: std::mem::take(&mut buf_slices).into_iter().collect(),
                    });
                }
                buf_slices.clear();
                buf = (ActivityVector::default(), 0.0, 0.0);
                if !batch_sm.is_empty() {
                    let v: Vec<(String, f64)> = std::mem::take(&mut batch_sm).into_iter().collect();
                    tensor_split.observe(&v, board_tensor.2);
                }
                board_tensor.2 = 0.0;
            }
        }
        // A shared Hopper GPU: the interval's board tensor activity split among the slices.
        if hopper && !mig {
            let v: Vec<(String, f64)> = accs
                .iter()
                .map(|(s, a)| (s.clone(), a.activity.sm_pct_ms))
                .collect();
            // Each slice's part carries the interval's clock weighting of the board's figure.
            let per_unit = |x: f64| {
                if board_tensor.0 > 0.0 {
                    x / board_tensor.0
                } else {
                    1.0
                }
            };
            let b = board_tensor.3;
            for (slice, t) in tensor_split.split(&v, board_tensor.0) {
                if let Some(a) = accs.get_mut(&slice) {
                    a.activity.tensor_pct_ms = t;
                    a.activity.tensor_clock_pct_ms = t * per_unit(b.tensor_clock_pct_ms);
                    a.activity.tensor_clock3_pct_ms = t * per_unit(b.tensor_clock3_pct_ms);
                }
            }
        }
        board_tensor.0 = 0.0;
        board_tensor.3 = ActivityVector::default();
        // Truth over the interval, per tenant.
        let now_true = true_energies(&m);
        for t in &tenants {
            if let Some(pid) = t.pid {
                let e = now_true.get(&pid).copied().unwrap_or(0)
                    - true_before.get(&pid).copied().unwrap_or(0);
                accs.entry(t.slice.clone()).or_default().true_mj = e;
            }
        }
        true_before = now_true;
        throttled_intervals += u32::from(throttled);

        let measured = counter - interval_start_counter;
        let holders: Vec<Holder> = tenants
            .iter()
            .map(|t| Holder {
                slice_id: t.slice.clone(),
                tenant: t.name.clone(),
                claim: None,
                capacity: t.capacity,
                held_ms: u64::from(INTERVAL_S) * 1000,
            })
            .collect();
        let vectors: Vec<(String, ActivityVector)> =
            accs.iter().map(|(s, a)| (s.clone(), a.activity)).collect();
        let none = ActivityVector::default();
        let base = AttributionInput {
            measured_mj: measured,
            interval_ms: u64::from(INTERVAL_S) * 1000,
            idle_power_mw,
            holders,
            activity: Vec::new(),
            unattributed_activity: 0,
            policy: StaticPolicy::ByCapacity,
        };
        // The SM split.
        let (act, un) = fit::sm_activity(&vectors, &none);
        let sm = attribute(&AttributionInput {
            activity: act,
            unattributed_activity: un,
            ..base.clone()
        })?;
        // The fit, or its labelled fallback.
        let (method, act, un) = if !per_slice_signals {
            let (a, u) = fit::sm_activity(&vectors, &none);
            (Method::SmSplitFallback(Fallback::NoDramSignal), a, u)
        } else if let Some(c) = fit_state.model() {
            let (a, u) = fit::fitted_activity(&c, &vectors, &none);
            (Method::ActivityFit, a, u)
        } else {
            let (a, u) = fit::sm_activity(&vectors, &none);
            (Method::SmSplitFallback(Fallback::FitNotReady), a, u)
        };
        *fit_methods.entry(method.label().to_string()).or_default() += 1;
        let fitted = attribute(&AttributionInput {
            activity: act,
            unattributed_activity: un,
            ..base
        })?;
        // Truth: each tenant's own energy, plus the rest of the dynamic energy in proportion.
        let own: u64 = accs.values().map(|a| a.true_mj).sum();
        let dynamic = sm.dynamic_mj;
        dynamic_total += dynamic;
        for t in &tenants {
            let e = accs.get(&t.slice).map_or(0, |a| a.true_mj);
            let share = if own == 0 {
                0
            } else {
                (u128::from(dynamic) * u128::from(e) / u128::from(own)) as u64
            };
            *truth.entry(t.slice.clone()).or_default() += share;
        }
        for (name, a) in [(SM_SPLIT, &sm), (FIT, &fitted)] {
            // Conservation, exact per GPU and interval, whatever the method.
            if a.rows_total_mj() != u128::from(measured) {
                return Err(anyhow!(
                    "{name}: rows sum to {} mJ, measured {measured} mJ",
                    a.rows_total_mj()
                ));
            }
            conserved_intervals += 1;
            *unattributed.entry(name.to_string()).or_default() += a.unattributed_mj;
            let by = attributed.entry(name).or_default();
            for s in &a.slices {
                *by.entry(s.slice_id.clone()).or_default() += s.dynamic_mj;
            }
        }
    }

    let results = tenants
        .iter()
        .map(|t| {
            let true_mj = truth.get(&t.slice).copied().unwrap_or(0);
            let mut attributed_mj = BTreeMap::new();
            let mut error_pct = BTreeMap::new();
            for name in METHODS {
                let a = attributed
                    .get(name)
                    .and_then(|b| b.get(&t.slice))
                    .copied()
                    .unwrap_or(0);
                attributed_mj.insert(name.to_string(), a);
                error_pct.insert(
                    name.to_string(),
                    (true_mj > 0).then(|| 100.0 * a.abs_diff(true_mj) as f64 / true_mj as f64),
                );
            }
            TenantResult {
                tenant: t.name.clone(),
                kind: t.kind,
                capacity: t.capacity.as_fraction(),
                true_mj,
                attributed_mj,
                error_pct,
            }
        })
        .collect();
    Ok(MixResult {
        mix,
        model: format!("{model:?}"),
        layout,
        power_limit_w: limit_mw / 1000,
        throttled_intervals,
        per_slice_signals,
        tenants: results,
        dynamic_mj: dynamic_total,
        unattributed_mj: unattributed,
        fit_methods,
        conserved_intervals,
    })
}

fn true_energies(m: &Machine) -> BTreeMap<u32, u64> {
    m.devices
        .iter()
        .flat_map(|d| &d.processes)
        .map(|p| (p.pid, p.true_energy_mj))
        .collect()
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Compute => "compute",
        Kind::Memory => "memory",
        Kind::Tensor => "tensor",
        Kind::Idle => "idle",
    }
}

impl Report {
    /// The report as a terminal table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Attribution vs simulated ground truth: {} mixes x {} min (seed {})\n\n",
            self.mixes.len(),
            self.minutes,
            self.seed
        );
        out.push_str(
            "mix model          layout  limit_W thr  tenant            true_kJ  sm_split_err%  fit_err%\n",
        );
        for m in &self.mixes {
            for t in &m.tenants {
                let e = |k: &str| {
                    t.error_pct.get(k).copied().flatten().map_or_else(
                        || format!("{} mJ", t.attributed_mj.get(k).copied().unwrap_or(0)),
                        |e| format!("{e:.1}"),
                    )
                };
                out.push_str(&format!(
                    "{:<3} {:<14} {:<7} {:>7} {:>4}  {:<16} {:>8.1} {:>14} {:>9}\n",
                    m.mix,
                    m.model,
                    format!("{:?}", m.layout).to_lowercase(),
                    m.power_limit_w,
                    m.throttled_intervals,
                    t.tenant,
                    t.true_mj as f64 / 1e6,
                    e(SM_SPLIT),
                    e(FIT)
                ));
            }
        }
        let table = |title: &str, s: &BTreeMap<String, MethodSummary>| {
            let mut o = format!(
                "\n{title}\n  method         tenants  mean_err%  worst_err%  unattributed%  idle_tenants_mJ\n"
            );
            for (name, x) in s {
                o.push_str(&format!(
                    "  {:<14} {:>7} {:>10.2} {:>11.2} {:>14.2} {:>16}\n",
                    name,
                    x.tenants,
                    x.mean_abs_error_pct,
                    x.worst_error_pct,
                    x.unattributed_pct,
                    x.idle_tenants_mj
                ));
            }
            o
        };
        out.push_str(&table("Mixes with per-slice signals:", &self.with_signals));
        out.push_str(&table(
            &format!(
                "Mixes where the SM split is off by more than 20% for some tenant ({} mixes):",
                self.sm_split_off_mixes
            ),
            &self.sm_split_off,
        ));
        out.push_str(&table(
            "Mixes without per-slice signals (A100 MIG, no GPM; the fit falls back to the SM split):",
            &self.without_signals,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: MixSpec, minutes: u32) -> MixResult {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        run_spec(&spec, &mut rng, 0, minutes).expect("mix runs")
    }

    fn err(r: &MixResult, tenant: usize, method: &str) -> f64 {
        r.tenants[tenant].error_pct[method].expect("a busy tenant")
    }

    #[test]
    fn a_memory_bound_tenant_at_low_sm_is_charged_within_10_percent_of_its_true_energy() {
        for layout in [Layout::Shares, Layout::Mig] {
            let r = run(
                MixSpec {
                    hopper: true,
                    layout,
                    limit_fraction: None,
                    kinds: vec![Kind::Memory, Kind::Compute, Kind::Idle],
                },
                20,
            );
            let (fit, sm) = (err(&r, 0, FIT), err(&r, 0, SM_SPLIT));
            assert!(fit < 10.0, "{layout:?}: fit off by {fit:.1}%");
            // The SM split undercharges it: the case the fit exists for.
            assert!(sm > 10.0, "{layout:?}: SM split off by only {sm:.1}%");
            assert!(
                r.tenants[0].attributed_mj[FIT] < r.tenants[0].true_mj * 11 / 10
                    && r.tenants[0].attributed_mj[FIT] > r.tenants[0].true_mj * 9 / 10
            );
        }
    }

    #[test]
    fn on_an_a100_share_without_a_tensor_signal_the_tensor_tenant_is_charged_within_10_percent() {
        // An A100 has no GPM: NVML gives per-process SM and memory utilization, no tensor
        // figure. The tensor work's cost is learnt per slice from how the board's energy follows
        // each slice's own activity.
        let r = run(
            MixSpec {
                hopper: false,
                layout: Layout::Shares,
                limit_fraction: None,
                kinds: vec![Kind::Tensor, Kind::Compute, Kind::Memory],
            },
            30,
        );
        for i in 0..3 {
            let (fit, sm) = (err(&r, i, FIT), err(&r, i, SM_SPLIT));
            assert!(
                fit < 10.0,
                "{}: fit off by {fit:.1}% (SM split {sm:.1}%)",
                r.tenants[i].tenant
            );
        }
    }

    #[test]
    fn a_tenant_whose_slice_is_idle_pays_no_dynamic_energy() {
        for (hopper, layout) in [
            (true, Layout::Shares),
            (true, Layout::Mig),
            (false, Layout::Shares),
            (false, Layout::Mig),
        ] {
            let r = run(
                MixSpec {
                    hopper,
                    layout,
                    limit_fraction: Some(0.5),
                    kinds: vec![Kind::Idle, Kind::Tensor, Kind::Memory],
                },
                5,
            );
            assert_eq!(r.tenants[0].true_mj, 0);
            for m in METHODS {
                assert_eq!(r.tenants[0].attributed_mj[m], 0, "{hopper} {layout:?} {m}");
            }
            // Busy tenants did pay (where signals exist), so the check above is not vacuous.
            if r.per_slice_signals {
                assert!(r.tenants[1].attributed_mj[FIT] > 0);
            }
        }
    }

    #[test]
    fn every_interval_is_conserved_exactly_and_a100_mig_falls_back_labelled() {
        let a100 = run(
            MixSpec {
                hopper: false,
                layout: Layout::Mig,
                limit_fraction: None,
                kinds: vec![Kind::Compute, Kind::Memory],
            },
            3,
        );
        assert_eq!(a100.conserved_intervals, 3 * 2);
        assert!(!a100.per_slice_signals);
        assert_eq!(
            a100.fit_methods.keys().collect::<Vec<_>>(),
            vec![Method::SmSplitFallback(Fallback::NoDramSignal).label()]
        );
        let h100 = run(
            MixSpec {
                hopper: true,
                layout: Layout::Shares,
                limit_fraction: Some(0.45),
                kinds: vec![Kind::Tensor, Kind::Compute, Kind::Memory, Kind::Tensor],
            },
            4,
        );
        assert_eq!(h100.conserved_intervals, 4 * 2);
        assert!(
            h100.throttled_intervals > 0,
            "the limit holds the board back"
        );
        // Twelve 5 s batches a minute: the fit is ready from the first interval.
        assert_eq!(h100.fit_methods.get(Method::ActivityFit.label()), Some(&4));
    }
}
