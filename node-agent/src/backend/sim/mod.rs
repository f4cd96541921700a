//! The simulated backend: DGX-like machines that honour the MIG profile tables and placement rules
//! (refusing illegal layouts the way NVML does), time-sliced shares and whole-GPU assignment, with
//! a power model, an energy counter, seeded sensor noise and a workload per slice.
//!
//! Time comes from an injected [`Clock`]: with a [`greenslice_core::clock::ManualClock`] a day
//! replays in seconds and a run is deterministic for a seed. Whenever the backend is called it first
//! advances its GPUs to the clock's "now": it integrates each board's power over the elapsed time
//! (in [`STEP_MS`] steps while a workload varies, in one step while all are steady).
//!
//! What it reports follows NVML (see `../shared/NVML-FACTS.md`): board utilization and per-process
//! utilization are unsupported on MIG-enabled GPUs; per-MIG-instance activity exists only on Hopper
//! and newer (GPM), so an A100 in MIG mode reports it unsupported; power is a 1 s average.

pub mod power;
pub mod workload;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use greenslice_core::clock::{Clock, SystemClock};
use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance, Share};
use greenslice_core::mig;
use greenslice_core::sample::{
    GpuProcess, GpuSample, MigActivity, NodeSample, ProcessUtil, SampleField,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use power::{EnergyMeter, board_power_w};
pub use workload::Workload;

use super::{BackendError, GpuBackend, HostInfo, SliceEnv, device_env, share_env};

/// Integration step while a workload varies, ms.
pub const STEP_MS: i64 = 100;

/// A simulated machine kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    DgxA100_40,
    DgxA100_80,
    DgxH100,
    DgxH200,
}

impl Machine {
    pub const ALL: [Machine; 4] = [
        Machine::DgxA100_40,
        Machine::DgxA100_80,
        Machine::DgxH100,
        Machine::DgxH200,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Machine::DgxA100_40 => "dgx-a100-40",
            Machine::DgxA100_80 => "dgx-a100-80",
            Machine::DgxH100 => "dgx-h100",
            Machine::DgxH200 => "dgx-h200",
        }
    }

    pub fn gpu_model(self) -> GpuModel {
        match self {
            Machine::DgxA100_40 => GpuModel::A100Sxm4_40Gb,
            Machine::DgxA100_80 => GpuModel::A100Sxm4_80Gb,
            Machine::DgxH100 => GpuModel::H100Sxm5_80Gb,
            Machine::DgxH200 => GpuModel::H200Sxm5_141Gb,
        }
    }

    /// Host CPU (milli-cores) and memory (bytes) of the DGX system.
    pub fn host(self) -> HostInfo {
        let (cores, mem_gib) = match self {
            Machine::DgxA100_40 => (128, 1024),
            Machine::DgxA100_80 => (128, 2048),
            Machine::DgxH100 | Machine::DgxH200 => (112, 2048),
        };
        HostInfo {
            cpu_milli: cores * 1000,
            memory_bytes: mem_gib * greenslice_core::GIB,
        }
    }
}

impl FromStr for Machine {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Machine::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Machine::ALL.iter().map(|m| m.name()).collect();
                BackendError::Config(format!(
                    "unknown machine {s:?}; known: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Node name; also seeds the GPU UUIDs so they are stable across restarts.
    pub node: String,
    pub machine: Machine,
    /// GPUs in the node (a DGX has 8).
    pub gpus: u32,
    /// How many of them (the first ones) are in MIG mode.
    pub mig_gpus: u32,
    /// MPS pipe folder given to share slices.
    pub mps_pipe_dir: String,
    /// Source of time (default: the system clock).
    pub clock: Arc<dyn Clock>,
    /// Seed of the sensor noise and the bursts (default: derived from the node name).
    pub seed: u64,
    /// Power sensor noise: each reading is off by up to this fraction (triangular, zero mean).
    pub power_noise: f64,
    /// Workload of a slice nobody set one for.
    pub default_workload: Workload,
    /// Device memory a slice's process holds, as a fraction of the slice's memory.
    pub process_memory_fraction: f64,
    /// Fields to report unsupported on every GPU, to emulate older devices.
    pub unsupported: Vec<SampleField>,
}

impl SimConfig {
    pub fn new(node: &str, machine: Machine) -> Self {
        SimConfig {
            node: node.to_string(),
            machine,
            gpus: 8,
            mig_gpus: 0,
            mps_pipe_dir: "/tmp/nvidia-mps".to_string(),
            clock: Arc::new(SystemClock),
            seed: fnv1a(node) as u64,
            power_noise: 0.02,
            default_workload: Workload::default(),
            process_memory_fraction: 0.75,
            unsupported: Vec::new(),
        }
    }

    /// The same settings on another clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same settings with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// The job running in a slice.
#[derive(Debug, Clone)]
struct SliceLoad {
    workload: Workload,
    /// When the workload was set, ms.
    since_ms: i64,
    /// Its process, when it has one.
    pid: Option<u32>,
    /// Seeds the bursts of this slice.
    key: u64,
}

/// Where a slice lives on a GPU, as the simulator needs it.
#[derive(Debug, Clone)]
struct Placement {
    slice_id: String,
    /// Share of the board's compute (0..=1).
    compute: f64,
    /// Memory of the slice, bytes.
    memory_bytes: u64,
    /// MIG GPU instance id, in MIG mode.
    gpu_instance_id: Option<u32>,
}

/// A simulated node.
#[derive(Debug)]
pub struct SimBackend {
    config: SimConfig,
    gpus: Vec<Gpu>,
    /// Energy counter per GPU.
    meters: Vec<EnergyMeter>,
    /// Largest per-process sample timestamp already reported, per GPU (µs).
    last_seen_us: Vec<u64>,
    /// Workloads by slice id (set before or after the slice exists).
    loads: BTreeMap<String, SliceLoad>,
    next_pid: u32,
    noise: ChaCha8Rng,
}

/// FNV-1a over a string.
fn fnv1a(name: &str) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

/// A stable pseudo-UUID from a name: FNV-1a, then a finalizer so that names differing in their last
/// character (GPUs 0..7 of one node) differ in every digit, as real UUIDs look.
fn stable_uuid(prefix: &str, name: &str) -> String {
    let h = fnv1a(name);
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (hi, lo) = ((h >> 64) as u64, h as u64);
    let x = format!("{:016x}{:016x}", mix(hi ^ lo.rotate_left(17)), mix(lo ^ hi));
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

impl SimBackend {
    pub fn new(config: SimConfig) -> Result<Self, BackendError> {
        if config.gpus == 0 || config.gpus > 16 {
            return Err(BackendError::Config(format!(
                "gpus must be 1..=16, got {}",
                config.gpus
            )));
        }
        if config.mig_gpus > config.gpus {
            return Err(BackendError::Config(format!(
                "mig_gpus ({}) exceeds gpus ({})",
                config.mig_gpus, config.gpus
            )));
        }
        let model = config.machine.gpu_model();
        let gpus = (0..config.gpus)
            .map(|i| Gpu {
                uuid: stable_uuid("GPU", &format!("{}/{i}", config.node)),
                index: i,
                model: model.clone(),
                memory_bytes: model.memory_bytes(),
                mig_capable: model.mig_capable(),
                mig_enabled: i < config.mig_gpus,
                pci_bus_id: format!("0000:{:02x}:00.0", 0x18 + i * 0x10),
                power_limit_mw: (model.power_w().1 * 1000.0) as u32,
                healthy: true,
                mig_instances: Vec::new(),
                shares: Vec::new(),
                whole_slice_id: None,
            })
            .collect();
        if !(0.0..1.0).contains(&config.power_noise) {
            return Err(BackendError::Config(format!(
                "power_noise must be within 0..1, got {}",
                config.power_noise
            )));
        }
        if !(0.0..=1.0).contains(&config.process_memory_fraction) {
            return Err(BackendError::Config(format!(
                "process_memory_fraction must be within 0..=1, got {}",
                config.process_memory_fraction
            )));
        }
        config
            .default_workload
            .validate()
            .map_err(|e| BackendError::Config(format!("default workload: {e}")))?;
        let now = config.clock.now_ms();
        let n = config.gpus as usize;
        Ok(SimBackend {
            meters: vec![EnergyMeter::new(now); n],
            last_seen_us: vec![0; n],
            loads: BTreeMap::new(),
            next_pid: 4_000,
            noise: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            gpus,
        })
    }

    /// The clock the simulator runs on.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.config.clock.clone()
    }

    /// Sets what the job in `slice_id` does from now on. The slice may not exist yet; its workload
    /// starts counting from this call. A new process (new PID) starts unless one is running already;
    /// [`Workload::Finished`] ends it while the slice stays allocated.
    pub fn set_workload(&mut self, slice_id: &str, workload: Workload) -> Result<(), BackendError> {
        workload
            .validate()
            .map_err(|e| BackendError::Config(format!("workload of {slice_id}: {e}")))?;
        self.advance();
        let now = self.config.clock.now_ms();
        let old_pid = self.loads.get(slice_id).and_then(|l| l.pid);
        let pid = match (workload.has_process(), old_pid) {
            (false, _) => None,
            (true, Some(p)) => Some(p),
            (true, None) => Some(self.new_pid()),
        };
        let key = self.config.seed ^ fnv1a(slice_id) as u64;
        self.loads.insert(
            slice_id.to_string(),
            SliceLoad {
                workload,
                since_ms: now,
                pid,
                key,
            },
        );
        Ok(())
    }

    /// The workload of `slice_id`, if one is set or the slice exists.
    pub fn workload(&self, slice_id: &str) -> Option<&Workload> {
        self.loads.get(slice_id).map(|l| &l.workload)
    }

    /// A driver reload: every GPU's energy counter restarts from zero (consumers must notice the
    /// counter going backwards) and the per-process sample history is forgotten.
    pub fn reload_driver(&mut self) {
        self.advance();
        for m in &mut self.meters {
            m.reset();
        }
        self.last_seen_us.iter_mut().for_each(|t| *t = 0);
    }

    fn new_pid(&mut self) -> u32 {
        let pid = self.next_pid;
        self.next_pid = self.next_pid.wrapping_add(1).max(4_000);
        pid
    }

    /// Gives a newly applied slice the default workload unless one was set beforehand.
    fn slice_started(&mut self, slice_id: &str) {
        if !self.loads.contains_key(slice_id) {
            let w = self.config.default_workload.clone();
            // The default was validated in `new`.
            let _ = self.set_workload(slice_id, w);
        }
    }

    /// Forgets the job of a slice that was removed.
    fn slice_ended(&mut self, slice_id: &str) {
        self.loads.remove(slice_id);
    }

    /// The slices on GPU `i`.
    fn placements(&self, i: usize) -> Vec<Placement> {
        let g = &self.gpus[i];
        let mut out = Vec::new();
        for m in &g.mig_instances {
            let Some(slice_id) = &m.slice_id else {
                continue;
            };
            let p = mig::profile(&g.model, &m.profile);
            out.push(Placement {
                slice_id: slice_id.clone(),
                compute: p.map_or(0.0, |p| {
                    f64::from(p.compute_slices) / f64::from(mig::COMPUTE_SLICES)
                }),
                memory_bytes: p.map_or(0, |p| p.memory_bytes(g.memory_bytes)),
                gpu_instance_id: Some(m.gpu_instance_id),
            });
        }
        for s in &g.shares {
            out.push(Placement {
                slice_id: s.slice_id.clone(),
                compute: s.compute_fraction.clamp(0.0, 1.0),
                memory_bytes: s.memory_bytes,
                gpu_instance_id: None,
            });
        }
        if let Some(w) = &g.whole_slice_id {
            out.push(Placement {
                slice_id: w.clone(),
                compute: 1.0,
                memory_bytes: g.memory_bytes,
                gpu_instance_id: None,
            });
        }
        out
    }

    /// Utilization (0..=1 of its own compute) of a slice's job at `at_ms`.
    fn slice_util(&self, slice_id: &str, at_ms: i64) -> f64 {
        self.loads
            .get(slice_id)
            .map_or(0.0, |l| l.workload.util_at(at_ms - l.since_ms, l.key))
    }

    fn has_process(&self, slice_id: &str) -> bool {
        self.loads.get(slice_id).is_some_and(|l| l.pid.is_some())
    }

    /// Board activity (0..=1) of a GPU at `at_ms` and whether any context is open.
    fn activity(&self, placements: &[Placement], at_ms: i64) -> (f64, bool) {
        let a: f64 = placements
            .iter()
            .map(|p| p.compute * self.slice_util(&p.slice_id, at_ms))
            .sum();
        let ctx = placements.iter().any(|p| self.has_process(&p.slice_id));
        (a.clamp(0.0, 1.0), ctx)
    }

    /// Integrates every board's power up to the clock's now.
    fn advance(&mut self) {
        let now = self.config.clock.now_ms();
        for i in 0..self.gpus.len() {
            let from = self.meters[i].last_ms();
            if now <= from {
                continue;
            }
            let placements = self.placements(i);
            let steady = placements.iter().all(|p| {
                self.loads
                    .get(&p.slice_id)
                    .is_none_or(|l| l.workload.is_steady())
            });
            let model = self.gpus[i].model.clone();
            if steady {
                let (a, ctx) = self.activity(&placements, now);
                self.meters[i].accumulate(now, board_power_w(&model, a, ctx));
                continue;
            }
            let mut t = from;
            while t < now {
                let next = (t + STEP_MS).min(now);
                let (a, ctx) = self.activity(&placements, t + (next - t) / 2);
                self.meters[i].accumulate(next, board_power_w(&model, a, ctx));
                t = next;
            }
        }
    }

    /// A zero-mean sensor error factor, 1 ± up to `power_noise` (triangular).
    fn noise_factor(&mut self) -> f64 {
        let n = self.config.power_noise;
        let u: f64 = self.noise.random::<f64>() + self.noise.random::<f64>() - 1.0;
        1.0 + n * u
    }

    /// Measures GPU `i` now.
    fn sample_gpu(&mut self, i: usize, now_ms: i64) -> GpuSample {
        let placements = self.placements(i);
        let g = &self.gpus[i];
        let mut s = GpuSample::empty(&g.uuid);
        let mig_mode = g.mig_enabled;
        let gpm = matches!(g.model, GpuModel::H100Sxm5_80Gb | GpuModel::H200Sxm5_141Gb);
        let (activity, _) = self.activity(&placements, now_ms);
        let now_us = u64::try_from(now_ms).unwrap_or(0) * 1_000;

        let mut procs = Vec::new();
        let mut putil = Vec::new();
        let mut mig_act = Vec::new();
        for p in &placements {
            let util = self.slice_util(&p.slice_id, now_ms);
            if let Some(gi) = p.gpu_instance_id
                && gpm
            {
                mig_act.push(MigActivity {
                    gpu_instance_id: gi,
                    sm_util_pct: Some(util * 100.0),
                    dram_bw_util_pct: Some(util * 60.0),
                });
            }
            let Some(pid) = self.loads.get(&p.slice_id).and_then(|l| l.pid) else {
                continue;
            };
            let mem = (p.memory_bytes as f64 * self.config.process_memory_fraction) as u64;
            procs.push(GpuProcess {
                pid,
                used_memory_bytes: Some(mem & !((1 << 20) - 1)),
                gpu_instance_id: p.gpu_instance_id,
                compute_instance_id: p.gpu_instance_id.map(|_| 0),
            });
            let sm = (util * p.compute * 100.0).round() as u32;
            if sm > 0 && now_us > self.last_seen_us[i] {
                putil.push(ProcessUtil {
                    pid,
                    sm_pct: sm,
                    mem_pct: (f64::from(sm) * 0.6).round() as u32,
                    last_seen_us: now_us,
                });
            }
        }
        procs.sort_by_key(|p| p.pid);

        if mig_mode {
            s.mark_unsupported(SampleField::Utilization);
            s.mark_unsupported(SampleField::ProcessUtilization);
            if gpm {
                s.mig = mig_act;
            } else {
                s.mark_unsupported(SampleField::MigActivity);
            }
        } else {
            let pct = (activity * 100.0).round() as u32;
            s.gpu_util_pct = Some(pct);
            s.mem_util_pct = Some((f64::from(pct) * 0.6).round() as u32);
            if !putil.is_empty() {
                self.last_seen_us[i] = now_us;
            }
            s.process_util = Some(putil);
        }
        s.memory_used_bytes = Some(procs.iter().filter_map(|p| p.used_memory_bytes).sum());
        s.processes = Some(procs);
        // Before any time has passed, the reading is the instantaneous power.
        let watts = self.meters[i].average_power_w().unwrap_or_else(|| {
            let (a, ctx) = self.activity(&placements, now_ms);
            board_power_w(&self.gpus[i].model, a, ctx)
        });
        s.power_mw = Some((watts * 1_000.0 * self.noise_factor()).max(0.0).round() as u32);
        s.energy_mj = Some(self.meters[i].energy_mj() as u64);

        for f in self.config.unsupported.clone() {
            match f {
                SampleField::Utilization => {
                    s.gpu_util_pct = None;
                    s.mem_util_pct = None;
                }
                SampleField::ProcessUtilization => s.process_util = None,
                SampleField::Processes => s.processes = None,
                SampleField::Power => s.power_mw = None,
                SampleField::Energy => s.energy_mj = None,
                SampleField::MemoryUsed => s.memory_used_bytes = None,
                SampleField::MigActivity => s.mig.clear(),
            }
            s.mark_unsupported(f);
        }
        s
    }

    fn gpu_index(&self, uuid: &str) -> Result<usize, BackendError> {
        self.gpus
            .iter()
            .position(|g| g.uuid == uuid)
            .ok_or_else(|| BackendError::UnknownGpu(uuid.to_string()))
    }

    /// Marks a GPU healthy or not (as an XID event would).
    pub fn set_healthy(&mut self, uuid: &str, healthy: bool) -> Result<(), BackendError> {
        let i = self.gpu_index(uuid)?;
        self.gpus[i].healthy = healthy;
        Ok(())
    }

    fn non_mig(&mut self, uuid: &str) -> Result<&mut Gpu, BackendError> {
        let i = self.gpu_index(uuid)?;
        let g = &mut self.gpus[i];
        if g.mig_enabled {
            return Err(BackendError::MigMode {
                gpu: uuid.to_string(),
            });
        }
        Ok(g)
    }
}

impl GpuBackend for SimBackend {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn host(&self) -> HostInfo {
        self.config.machine.host()
    }

    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError> {
        self.advance();
        Ok(self.gpus.clone())
    }

    fn as_sim_mut(&mut self) -> Option<&mut SimBackend> {
        Some(self)
    }

    fn process_owner(&self, pid: u32) -> Option<String> {
        self.loads
            .iter()
            .find(|(_, l)| l.pid == Some(pid))
            .map(|(s, _)| s.clone())
    }

    fn sample(&mut self) -> Result<NodeSample, BackendError> {
        self.advance();
        let at_ms = self.config.clock.now_ms();
        let gpus = (0..self.gpus.len())
            .map(|i| self.sample_gpu(i, at_ms))
            .collect();
        Ok(NodeSample { at_ms, gpus })
    }

    fn create_mig(
        &mut self,
        gpu: &str,
        profile: &str,
        start: u8,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        self.advance();
        let i = self.gpu_index(gpu)?;
        let g = &mut self.gpus[i];
        if !g.mig_enabled {
            return Err(BackendError::NotMigMode {
                gpu: gpu.to_string(),
            });
        }
        let size = hardware_mig_check(gpu, &g.model, &g.mig_instances, profile, start)?;
        // The driver hands out the lowest free GPU-instance id, reusing destroyed ones.
        let gi = (1..)
            .find(|id| g.mig_instances.iter().all(|m| m.gpu_instance_id != *id))
            .unwrap_or(1);
        let inst = MigInstance {
            gpu_instance_id: gi,
            profile: profile.to_string(),
            start,
            size,
            mig_uuid: stable_uuid("MIG", &format!("{gpu}/{gi}/{slice_id}")),
            slice_id: Some(slice_id.to_string()),
        };
        g.mig_instances.push(inst.clone());
        let env = device_env(&inst.mig_uuid);
        self.slice_started(slice_id);
        Ok((inst, env))
    }

    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError> {
        self.advance();
        let i = self.gpu_index(gpu)?;
        let g = &mut self.gpus[i];
        let Some(pos) = g
            .mig_instances
            .iter()
            .position(|m| m.gpu_instance_id == gpu_instance_id)
        else {
            return Err(BackendError::NoSuchInstance {
                gpu: gpu.to_string(),
                gi: gpu_instance_id,
            });
        };
        let gone = g.mig_instances.remove(pos);
        if let Some(slice) = gone.slice_id {
            self.slice_ended(&slice);
        }
        Ok(())
    }

    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        compute_fraction: f64,
        memory_bytes: u64,
    ) -> Result<SliceEnv, BackendError> {
        self.advance();
        let pipe = self.config.mps_pipe_dir.clone();
        let g = self.non_mig(gpu)?;
        if g.whole_slice_id.is_some() {
            return Err(BackendError::NoRoom {
                gpu: gpu.to_string(),
                why: "held whole by another slice".into(),
            });
        }
        let others: Vec<&Share> = g.shares.iter().filter(|s| s.slice_id != slice_id).collect();
        let used_milli: u32 = others
            .iter()
            .map(|s| greenslice_core::slice::share_milli(s.compute_fraction))
            .sum();
        let used_mem: u64 = others.iter().map(|s| s.memory_bytes).sum();
        if used_milli + greenslice_core::slice::share_milli(compute_fraction) > 1000
            || used_mem + memory_bytes > g.memory_bytes
        {
            return Err(BackendError::NoRoom {
                gpu: gpu.to_string(),
                why: format!("{used_milli} milli and {used_mem} bytes already shared"),
            });
        }
        g.shares.retain(|s| s.slice_id != slice_id);
        g.shares.push(Share {
            slice_id: slice_id.to_string(),
            compute_fraction,
            memory_bytes,
        });
        self.slice_started(slice_id);
        Ok(share_env(gpu, compute_fraction, memory_bytes, &pipe))
    }

    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.advance();
        let g = self.non_mig(gpu)?;
        let before = g.shares.len();
        g.shares.retain(|s| s.slice_id != slice_id);
        if g.shares.len() == before {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        self.slice_ended(slice_id);
        Ok(())
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        self.advance();
        let g = self.non_mig(gpu)?;
        match &g.whole_slice_id {
            Some(s) if s == slice_id => {}
            Some(s) => {
                return Err(BackendError::NoRoom {
                    gpu: gpu.to_string(),
                    why: format!("held whole by {s}"),
                });
            }
            None if !g.shares.is_empty() => {
                return Err(BackendError::NoRoom {
                    gpu: gpu.to_string(),
                    why: format!("{} shares applied", g.shares.len()),
                });
            }
            None => g.whole_slice_id = Some(slice_id.to_string()),
        }
        self.slice_started(slice_id);
        Ok(device_env(gpu))
    }

    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.advance();
        let g = self.non_mig(gpu)?;
        if g.whole_slice_id.as_deref() != Some(slice_id) {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        g.whole_slice_id = None;
        self.slice_ended(slice_id);
        Ok(())
    }
}

/// The simulated hardware's own answer to "may `profile` be created at `start`?": gpu-sim's MIG
/// tables and placement rules, written from NVIDIA's guide apart from greenslice-core's (which the
/// controller places with), so the simulator can disagree with the controller as a driver could.
/// Errors are given in core's terms, as the NVML backend reports a driver's refusal. Returns the
/// placement's size in memory slices.
fn hardware_mig_check(
    gpu: &str,
    model: &GpuModel,
    existing: &[MigInstance],
    profile: &str,
    start: u8,
) -> Result<u8, BackendError> {
    use gpu_sim::DeviceKind;
    use gpu_sim::profiles::{Occupant, PlacementError, check_placement};
    let kind = match model {
        GpuModel::A100Sxm4_40Gb => DeviceKind::A100Sxm4_40Gb,
        GpuModel::A100Sxm4_80Gb => DeviceKind::A100Sxm4_80Gb,
        GpuModel::H100Sxm5_80Gb => DeviceKind::H100Sxm5_80Gb,
        GpuModel::H100Pcie80Gb => DeviceKind::H100Pcie80Gb,
        GpuModel::H200Sxm5_141Gb => DeviceKind::H200Sxm5_141Gb,
        // The simulator has no other MIG-capable product.
        _ => return Err(BackendError::NotMigMode { gpu: gpu.into() }),
    };
    let table = kind.mig_profiles();
    let named = |name: &str| table.iter().find(|p| p.name == name);
    let p = named(profile).ok_or_else(|| {
        let valid: Vec<&str> = table.iter().map(|p| p.name).collect();
        mig::MigError::UnknownProfile {
            model: model.name().to_string(),
            profile: profile.to_string(),
            valid: valid.join(", "),
        }
    })?;
    let occupants = existing
        .iter()
        .map(|m| {
            let profile =
                named(&m.profile).ok_or(mig::MigError::CorruptLayout(m.profile.clone()))?;
            Ok(Occupant {
                profile,
                start: u32::from(m.start),
            })
        })
        .collect::<Result<Vec<_>, mig::MigError>>()?;
    let to_u8 = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
    check_placement(p, u32::from(start), p.size, &occupants).map_err(|e| match e {
        PlacementError::BadStart { .. } | PlacementError::BadSize { .. } => {
            BackendError::Mig(mig::MigError::InvalidStart {
                profile: profile.into(),
                start,
                legal: p.starts.iter().map(|&s| to_u8(s)).collect(),
            })
        }
        PlacementError::Occupied { .. } => {
            let other = occupants.iter().find(|o| {
                o.start < u32::from(start) + p.size && u32::from(start) < o.start + o.profile.size
            });
            BackendError::Mig(mig::MigError::Overlap {
                profile: profile.into(),
                start,
                other: other.map_or_else(String::new, |o| o.profile.name.to_string()),
                other_start: other.map_or(0, |o| to_u8(o.start)),
            })
        }
        PlacementError::TooMany { max, .. } => BackendError::Mig(mig::MigError::MaxInstances {
            profile: profile.into(),
            max: to_u8(max),
        }),
        PlacementError::MediaEngines => BackendError::Mig(mig::MigError::MediaEnginesTaken {
            other: occupants
                .iter()
                .find(|o| o.profile.media_extension())
                .map_or_else(String::new, |o| o.profile.name.to_string()),
        }),
        e @ PlacementError::Compute { .. } => BackendError::NoRoom {
            gpu: gpu.into(),
            why: e.to_string(),
        },
    })?;
    Ok(to_u8(p.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100(mig_gpus: u32) -> SimBackend {
        let mut c = SimConfig::new("n1", Machine::DgxH100);
        c.mig_gpus = mig_gpus;
        SimBackend::new(c).unwrap()
    }

    #[test]
    fn uuids_are_stable_and_distinct() {
        let mut a = h100(0);
        let mut b = h100(0);
        let ia = a.inventory().unwrap();
        assert_eq!(ia, b.inventory().unwrap());
        let mut u: Vec<_> = ia.iter().map(|g| g.uuid.clone()).collect();
        u.dedup();
        assert_eq!(u.len(), 8);
        // Like real UUIDs, they differ from their first digits on (a table can cut them short).
        let firsts: std::collections::BTreeSet<_> = u.iter().map(|x| x[..12].to_string()).collect();
        assert_eq!(firsts.len(), 8, "{u:?}");
    }

    #[test]
    fn gpu_instance_ids_are_reused_as_a_driver_does() {
        let mut b = h100(1);
        let g = b.inventory().unwrap()[0].uuid.clone();
        let (a, _) = b.create_mig(&g, "1g.10gb", 0, "s1").unwrap();
        let (c, _) = b.create_mig(&g, "1g.10gb", 1, "s2").unwrap();
        assert_eq!((a.gpu_instance_id, c.gpu_instance_id), (1, 2));
        b.destroy_mig(&g, 1).unwrap();
        let (d, _) = b.create_mig(&g, "1g.10gb", 2, "s3").unwrap();
        assert_eq!(d.gpu_instance_id, 1);
    }

    #[test]
    fn refuses_illegal_mig_layouts_like_nvml() {
        let mut b = h100(1);
        let g = b.inventory().unwrap()[0].uuid.clone();
        b.create_mig(&g, "4g.40gb", 0, "s1").unwrap();
        let e = b.create_mig(&g, "4g.40gb", 0, "s2").unwrap_err();
        assert!(
            matches!(e, BackendError::Mig(mig::MigError::MaxInstances { .. })),
            "{e}"
        );
        let e = b.create_mig(&g, "3g.40gb", 2, "s3").unwrap_err();
        assert!(matches!(
            e,
            BackendError::Mig(mig::MigError::InvalidStart { .. })
        ));
        b.create_mig(&g, "3g.40gb", 4, "s4").unwrap();
        assert_eq!(b.inventory().unwrap()[0].mig_instances.len(), 2);
    }

    #[test]
    fn mig_only_on_mig_gpus_and_shares_only_off_them() {
        let mut b = h100(1);
        let inv = b.inventory().unwrap();
        assert!(matches!(
            b.create_mig(&inv[1].uuid, "1g.10gb", 0, "s"),
            Err(BackendError::NotMigMode { .. })
        ));
        assert!(matches!(
            b.set_share(&inv[0].uuid, "s", 0.5, 1 << 30),
            Err(BackendError::MigMode { .. })
        ));
    }

    #[test]
    fn shares_cannot_oversubscribe() {
        let mut b = h100(0);
        let g = b.inventory().unwrap()[0].uuid.clone();
        let env = b.set_share(&g, "a", 0.6, 10 << 30).unwrap();
        assert_eq!(env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "60");
        assert_eq!(env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=10240M");
        assert!(b.set_share(&g, "b", 0.5, 1 << 30).is_err());
        b.set_share(&g, "b", 0.4, 1 << 30).unwrap();
        assert!(b.assign_whole(&g, "w").is_err());
        b.clear_share(&g, "a").unwrap();
        b.clear_share(&g, "b").unwrap();
        b.assign_whole(&g, "w").unwrap();
        assert!(b.set_share(&g, "c", 0.1, 1).is_err());
    }

    #[test]
    fn destroy_unknown_instance_is_an_error() {
        let mut b = h100(1);
        let g = b.inventory().unwrap()[0].uuid.clone();
        assert!(matches!(
            b.destroy_mig(&g, 42),
            Err(BackendError::NoSuchInstance { .. })
        ));
    }

    use greenslice_core::clock::ManualClock;
    use greenslice_core::sample::energy_delta_mj;

    const T0: i64 = 1_700_000_000_000;

    fn sim_on(machine: Machine, mig_gpus: u32, seed: u64) -> (SimBackend, ManualClock) {
        let clock = ManualClock::new(T0);
        let mut c = SimConfig::new("n1", machine)
            .with_clock(Arc::new(clock.clone()))
            .with_seed(seed);
        c.mig_gpus = mig_gpus;
        (SimBackend::new(c).unwrap(), clock)
    }

    /// The profile of `model` with `compute` compute slices and the most memory (not `+me`).
    fn profile_by_compute(model: &GpuModel, compute: u8) -> &'static str {
        mig::profiles(model)
            .iter()
            .filter(|p| p.compute_slices == compute && !p.media_extension())
            .max_by_key(|p| p.memory_slices)
            .map(|p| p.name)
            .unwrap()
    }

    #[test]
    fn mig_legality_holds_on_every_machine() {
        for machine in Machine::ALL {
            let model = machine.gpu_model();
            let (g1, g3, g4, g7) = (
                mig::profiles(&model)[0].name,
                profile_by_compute(&model, 3),
                profile_by_compute(&model, 4),
                profile_by_compute(&model, 7),
            );
            let (mut b, _) = sim_on(machine, 4, 1);
            let gpus: Vec<String> = b
                .inventory()
                .unwrap()
                .iter()
                .map(|g| g.uuid.clone())
                .collect();
            // Two 3g halves at slices 0 and 4.
            b.create_mig(&gpus[0], g3, 0, "a").unwrap();
            b.create_mig(&gpus[0], g3, 4, "b").unwrap();
            // 4g plus 4g does not fit.
            b.create_mig(&gpus[1], g4, 0, "c").unwrap();
            assert!(b.create_mig(&gpus[1], g4, 4, "d").is_err(), "{machine:?}");
            // Seven 1g fit, an eighth does not.
            for s in 0..7u8 {
                b.create_mig(&gpus[2], g1, s, &format!("e{s}")).unwrap();
            }
            assert!(b.create_mig(&gpus[2], g1, 7, "e7").is_err(), "{machine:?}");
            // 7g excludes everything else, both ways.
            b.create_mig(&gpus[3], g7, 0, "f").unwrap();
            for p in mig::profiles(&model) {
                assert!(b.create_mig(&gpus[3], p.name, p.starts[0], "x").is_err());
            }
            b.destroy_mig(&gpus[3], 1).unwrap();
            b.create_mig(&gpus[3], g1, 0, "g").unwrap();
            assert!(b.create_mig(&gpus[3], g7, 0, "h").is_err(), "{machine:?}");
        }
    }

    #[test]
    fn energy_counter_is_monotonic_and_matches_the_power_integral() {
        for machine in [Machine::DgxH100, Machine::DgxA100_40] {
            let (mut b, clock) = sim_on(machine, 0, 42);
            let gpus: Vec<String> = b
                .inventory()
                .unwrap()
                .iter()
                .map(|g| g.uuid.clone())
                .collect();
            b.assign_whole(&gpus[0], "w").unwrap();
            b.set_workload(
                "w",
                Workload::Bursty {
                    peak: 0.9,
                    duty: 0.4,
                    burst_ms: 3_000,
                },
            )
            .unwrap();
            b.set_share(&gpus[1], "s1", 0.5, 8 << 30).unwrap();
            b.set_workload(
                "s1",
                Workload::IdleStretches {
                    util: 1.0,
                    busy_ms: 60_000,
                    idle_ms: 120_000,
                },
            )
            .unwrap();
            let first = b.sample().unwrap();
            let mut prev: Vec<u64> = first.gpus.iter().map(|g| g.energy_mj.unwrap()).collect();
            let start = prev.clone();
            let mut integral_mj = vec![0.0f64; gpus.len()];
            for _ in 0..3_600 {
                clock.advance(1_000);
                let s = b.sample().unwrap();
                for (i, g) in s.gpus.iter().enumerate() {
                    let e = g.energy_mj.unwrap();
                    assert!(e >= prev[i], "energy went backwards on GPU {i}");
                    prev[i] = e;
                    // Each reading is the average over the last second: W = mJ/ms, over 1000 ms.
                    integral_mj[i] += f64::from(g.power_mw.unwrap()) / 1_000.0 * 1_000.0;
                }
            }
            let mut worst = 0.0f64;
            for i in 0..gpus.len() {
                let counted = (prev[i] - start[i]) as f64;
                let err = (integral_mj[i] - counted).abs() / counted;
                worst = worst.max(err);
                assert!(
                    err < 0.01,
                    "{machine:?} GPU {i}: integral {integral_mj:?} vs counter {counted} ({err})"
                );
            }
            eprintln!("{machine:?}: worst |power integral - counter| / counter = {worst:.5}");
            let (idle, max) = machine.gpu_model().power_w();
            let busy_avg_w = (prev[0] - start[0]) as f64 / 3_600_000.0;
            let idle_avg_w = (prev[7] - start[7]) as f64 / 3_600_000.0;
            assert!((idle_avg_w - idle).abs() < 1e-3, "{idle_avg_w}");
            assert!(
                busy_avg_w > idle_avg_w + 50.0 && busy_avg_w < max,
                "{busy_avg_w}"
            );
        }
    }

    #[test]
    fn power_rises_with_utilization() {
        let (mut b, clock) = sim_on(Machine::DgxH100, 0, 3);
        let gpus: Vec<String> = b
            .inventory()
            .unwrap()
            .iter()
            .map(|g| g.uuid.clone())
            .collect();
        let mut last = 0.0;
        for (i, util) in [0.0, 0.25, 0.5, 0.75, 1.0].into_iter().enumerate() {
            b.assign_whole(&gpus[i], &format!("w{i}")).unwrap();
            b.set_workload(&format!("w{i}"), Workload::Busy { util })
                .unwrap();
        }
        clock.advance(5_000);
        let s = b.sample().unwrap();
        for i in 0..5 {
            let w = f64::from(s.gpus[i].power_mw.unwrap()) / 1_000.0;
            assert!(w > last, "GPU {i}: {w} W not above {last} W");
            last = w;
        }
        assert!(last > 650.0 && last < 720.0, "{last}");
    }

    #[test]
    fn sensor_noise_is_reproducible_by_seed() {
        let run = |seed: u64| -> Vec<u32> {
            let (mut b, clock) = sim_on(Machine::DgxH200, 0, seed);
            let g = b.inventory().unwrap()[0].uuid.clone();
            b.assign_whole(&g, "w").unwrap();
            (0..50)
                .map(|_| {
                    clock.advance(1_000);
                    b.sample().unwrap().gpus[0].power_mw.unwrap()
                })
                .collect()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        // Steady load, so the spread is the noise alone: within ±2% and not constant.
        let (lo, hi) = (a.iter().min().unwrap(), a.iter().max().unwrap());
        assert!(lo < hi);
        assert!(f64::from(*hi) / f64::from(*lo) < 1.041, "{lo}..{hi}");
    }

    #[test]
    fn mig_gpus_report_unsupported_fields_like_nvml() {
        let (mut a100, _) = sim_on(Machine::DgxA100_40, 1, 1);
        let g = a100.inventory().unwrap()[0].uuid.clone();
        a100.create_mig(&g, "3g.20gb", 0, "m").unwrap();
        let s = a100.sample().unwrap();
        let mig_gpu = &s.gpus[0];
        assert_eq!(
            mig_gpu.unsupported,
            vec![
                SampleField::Utilization,
                SampleField::ProcessUtilization,
                SampleField::MigActivity
            ]
        );
        assert_eq!(mig_gpu.gpu_util_pct, None);
        assert_eq!(mig_gpu.process_util, None);
        assert!(mig_gpu.mig.is_empty());
        assert!(mig_gpu.power_mw.is_some() && mig_gpu.energy_mj.is_some());
        assert_eq!(
            mig_gpu.processes.as_ref().unwrap()[0].gpu_instance_id,
            Some(1)
        );
        assert!(s.gpus[1].unsupported.is_empty());
        assert!(s.gpus[1].gpu_util_pct.is_some());

        let (mut h100, _) = sim_on(Machine::DgxH100, 1, 1);
        let g = h100.inventory().unwrap()[0].uuid.clone();
        h100.create_mig(&g, "3g.40gb", 4, "m").unwrap();
        h100.set_workload("m", Workload::Busy { util: 0.5 })
            .unwrap();
        let s = h100.sample().unwrap();
        assert!(!s.gpus[0].is_unsupported(SampleField::MigActivity));
        assert_eq!(s.gpus[0].mig[0].gpu_instance_id, 1);
        assert_eq!(s.gpus[0].mig[0].sm_util_pct, Some(50.0));
    }

    #[test]
    fn configured_unsupported_fields_are_none_and_listed() {
        let mut c = SimConfig::new("old", Machine::DgxA100_80);
        c.unsupported = vec![SampleField::Energy, SampleField::ProcessUtilization];
        let mut b = SimBackend::new(c).unwrap();
        let s = b.sample().unwrap();
        for g in &s.gpus {
            assert_eq!(g.energy_mj, None);
            assert_eq!(g.process_util, None);
            assert!(g.power_mw.is_some());
            assert_eq!(
                g.unsupported,
                vec![SampleField::ProcessUtilization, SampleField::Energy]
            );
        }
    }

    #[test]
    fn processes_follow_the_workload() {
        let (mut b, clock) = sim_on(Machine::DgxH100, 0, 5);
        let g = b.inventory().unwrap()[0].uuid.clone();
        b.set_share(&g, "s1", 0.5, 10 << 30).unwrap();
        b.set_share(&g, "s2", 0.25, 8 << 30).unwrap();
        b.set_workload("s2", Workload::Idle).unwrap();
        clock.advance(2_000);
        let s = b.sample().unwrap();
        let procs = s.gpus[0].processes.clone().unwrap();
        assert_eq!(procs.len(), 2);
        assert_ne!(procs[0].pid, procs[1].pid);
        assert_eq!(procs[0].used_memory_bytes, Some(7_680 << 20));
        assert_eq!(s.gpus[0].memory_used_bytes, Some((7_680 + 6_144) << 20));
        // Only the working process has a utilization sample: s1 at 80% of half the GPU.
        let pu = s.gpus[0].process_util.clone().unwrap();
        assert_eq!(pu.len(), 1);
        assert_eq!((pu[0].pid, pu[0].sm_pct), (procs[0].pid, 40));
        assert_eq!(pu[0].last_seen_us, (T0 + 2_000) as u64 * 1_000);
        // Nothing newer until time moves.
        assert_eq!(b.sample().unwrap().gpus[0].process_util, Some(vec![]));

        // Finished but still allocated: the process is gone, the share stays.
        b.set_workload("s1", Workload::Finished).unwrap();
        clock.advance(2_000);
        let s = b.sample().unwrap();
        assert_eq!(s.gpus[0].processes.as_ref().unwrap().len(), 1);
        assert_eq!(b.inventory().unwrap()[0].shares.len(), 2);
        // A new job gets a new PID.
        b.set_workload("s1", Workload::Busy { util: 1.0 }).unwrap();
        let pids: Vec<u32> = b.sample().unwrap().gpus[0]
            .processes
            .clone()
            .unwrap()
            .iter()
            .map(|p| p.pid)
            .collect();
        assert_eq!(pids.len(), 2);
        assert!(!pids.contains(&procs[0].pid));
        // An idle context draws more than a GPU nobody holds.
        b.clear_share(&g, "s1").unwrap();
        clock.advance(2_000);
        let s = b.sample().unwrap();
        assert!(s.gpus[0].power_mw.unwrap() > s.gpus[1].power_mw.unwrap());
    }

    #[test]
    fn driver_reload_resets_the_energy_counter() {
        let (mut b, clock) = sim_on(Machine::DgxH100, 0, 9);
        clock.advance(60_000);
        let before = b.sample().unwrap().gpus[0].energy_mj.unwrap();
        assert_eq!(before, 70 * 60_000);
        b.reload_driver();
        clock.advance(1_000);
        let after = b.sample().unwrap().gpus[0].energy_mj.unwrap();
        assert_eq!(after, 70_000);
        assert_eq!(energy_delta_mj(before, after), None);
    }

    #[test]
    fn a_day_replays_in_seconds() {
        let (mut b, clock) = sim_on(Machine::DgxH100, 4, 11);
        let gpus: Vec<String> = b
            .inventory()
            .unwrap()
            .iter()
            .map(|g| g.uuid.clone())
            .collect();
        for (i, g) in gpus.iter().enumerate().skip(4) {
            b.assign_whole(g, &format!("w{i}")).unwrap();
            b.set_workload(
                &format!("w{i}"),
                Workload::Bursty {
                    peak: 1.0,
                    duty: 0.5,
                    burst_ms: 10_000,
                },
            )
            .unwrap();
        }
        b.create_mig(&gpus[0], "3g.40gb", 0, "m").unwrap();
        let started = std::time::Instant::now();
        let mut last = 0;
        for _ in 0..(24 * 360) {
            clock.advance(10_000);
            let e = b.sample().unwrap().gpus[4].energy_mj.unwrap();
            assert!(e >= last);
            last = e;
        }
        let secs = started.elapsed().as_secs_f64();
        // A generous bound for unoptimised test builds on a loaded machine.
        assert!(secs < 60.0, "a simulated day took {secs} s");
        let avg_w = last as f64 / 86_400_000.0;
        assert!(avg_w > 300.0 && avg_w < 450.0, "{avg_w}");
    }

    #[test]
    fn workloads_can_be_set_through_the_trait_object() {
        let (b, clock) = sim_on(Machine::DgxH100, 0, 2);
        let mut boxed: Box<dyn GpuBackend> = Box::new(b);
        let g = boxed.inventory().unwrap()[0].uuid.clone();
        boxed.assign_whole(&g, "w").unwrap();
        boxed
            .as_sim_mut()
            .unwrap()
            .set_workload("w", Workload::Busy { util: 1.0 })
            .unwrap();
        clock.advance(2_000);
        let s = boxed.sample().unwrap();
        assert_eq!(s.gpus[0].gpu_util_pct, Some(100));
    }

    #[test]
    fn bad_workloads_are_refused() {
        let (mut b, _) = sim_on(Machine::DgxH100, 0, 1);
        assert!(matches!(
            b.set_workload("x", Workload::Busy { util: 2.0 }),
            Err(BackendError::Config(_))
        ));
    }

    #[test]
    fn unknown_machine_lists_known_ones() {
        let e = "dgx-z9".parse::<Machine>().unwrap_err().to_string();
        assert!(e.contains("dgx-h100") && e.contains("dgx-a100-40"), "{e}");
    }
}
