//! The simulated backend: the agent's side of a simulated DGX-like node, in process (the demo, the
//! harness, in-process tests).
//!
//! The hardware is `gpu-sim`'s [`gpu_sim::Machine`], the same model the NVML library `nvml-sim`
//! serves: devices, MIG GPU and compute instances (ids, placements, the refusals), processes,
//! power, the energy counter and clocks all come from it. This backend holds only what an agent
//! holds: which slice owns which MIG instance, the shares and whole-GPU assignments it applied,
//! and, standing in for the tenants, a synthetic [`Workload`] per slice that acts on the machine
//! as a simulated process (started with the slice's environment, its SM and memory utilization
//! changed as the job's work changes, stopped when the job ends), as a workload does through the
//! `greenslice-gpu-sim` CLI.
//!
//! Time comes from an injected [`Clock`]: the machine is kept in manual time and moved to the
//! clock's "now" whenever the backend is called, so with a [`greenslice_core::clock::ManualClock`]
//! a day replays in seconds and a run is deterministic for a seed. While a workload varies, time
//! moves from one change of a job's utilization to the next, so the machine integrates energy
//! exactly (power is constant between changes).
//!
//! What it reports is read off the machine as NVML reports it (see `../shared/NVML-FACTS.md`):
//! board and per-process utilization are unsupported on MIG-enabled GPUs; per-MIG-instance activity
//! (GPM) exists only on Hopper and newer. Sensor noise on power readings is this backend's own.

pub mod workload;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use gpu_sim::machine::{Device, GpmReading, Process};
use gpu_sim::{MachineKind, SimError, TimeMode};
use greenslice_core::clock::{Clock, SystemClock};
use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance, Share};
use greenslice_core::mig;
use greenslice_core::sample::{
    GpuProcess, GpuSample, MigActivity, NodeSample, ProcessUtil, SampleField,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use workload::Workload;

use super::{
    BackendError, GpuBackend, HostInfo, ProfilePlacements, SLICE_ID_ENV, SliceEnv, device_env,
    share_env,
};

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

    /// The simulated hardware of this kind.
    pub fn hardware(self) -> MachineKind {
        match self {
            Machine::DgxA100_40 => MachineKind::DgxA100_40,
            Machine::DgxA100_80 => MachineKind::DgxA100_80,
            Machine::DgxH100 => MachineKind::DgxH100,
            Machine::DgxH200 => MachineKind::DgxH200,
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
    /// Its processes, one per GPU the slice holds (GPU index to pid), while its workload has a
    /// process and the slice is applied.
    pids: BTreeMap<u32, u32>,
    /// Seeds the bursts of this slice.
    key: u64,
}

/// Where a slice lives on the machine.
#[derive(Debug, Clone, Copy)]
struct Slot {
    gpu: u32,
    /// MIG GPU instance, in MIG mode.
    gi: Option<u32>,
    /// What a job at full work keeps busy, as a fraction of what its process's SM % is of: a
    /// share's compute fraction of the GPU; 1 for a whole GPU or a MIG instance (whose processes'
    /// utilization is of the instance).
    scale: f64,
    /// Memory of the slice, bytes.
    memory_bytes: u64,
}

/// A running job, as time moves.
struct Job {
    pid: u32,
    scale: f64,
    workload: Workload,
    since_ms: i64,
    key: u64,
}

/// A utilization fraction as a whole percent.
fn pct(x: f64) -> u32 {
    (x * 100.0).round().clamp(0.0, 100.0) as u32
}

/// SM and memory utilization (%) of a job working at `util` of its slot.
fn job_util(util: f64, scale: f64) -> (u32, u32) {
    let sm = pct(util * scale);
    (sm, (f64::from(sm) * 0.6).round() as u32)
}

/// A simulated node.
#[derive(Debug)]
pub struct SimBackend {
    config: SimConfig,
    /// The hardware (manual time, moved to the clock's now on every call).
    hw: gpu_sim::Machine,
    healthy: Vec<bool>,
    /// Slice owning each MIG instance this agent made: (GPU index, GPU instance id).
    mig_owners: BTreeMap<(u32, u32), String>,
    /// Shares applied, per GPU index.
    shares: Vec<Vec<Share>>,
    /// The slice holding each GPU whole.
    whole: Vec<Option<String>>,
    /// Largest per-process sample timestamp already reported, per GPU (µs).
    last_seen_us: Vec<u64>,
    /// Workloads by slice id (set before or after the slice exists).
    loads: BTreeMap<String, SliceLoad>,
    next_pid: u32,
    noise: ChaCha8Rng,
    /// Previous GPM reading per (GPU index, GPU instance id, start), as the NVML backend keeps it.
    gpm_prev: BTreeMap<(u32, u32, u32), GpmReading>,
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

/// The core model of a simulated device, by its PCI device id as NVML reports it (the NVML backend
/// does the same), by name as a fallback.
fn core_model(d: &Device) -> GpuModel {
    let pci = (d.kind.pci_device_id() << 16) | u32::from(greenslice_core::gpu::NVIDIA_VENDOR_ID);
    GpuModel::from_pci_device_id(pci).unwrap_or_else(|| GpuModel::from_name(d.kind.product_name()))
}

fn sim_err(gpu: &str) -> impl Fn(SimError) -> BackendError + '_ {
    move |err| BackendError::Sim {
        gpu: gpu.to_string(),
        err,
    }
}

impl SimBackend {
    /// A node on a freshly booted machine of `config.machine` (its GPU UUIDs derive from the node
    /// name, so they are stable across restarts).
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
        let hw = gpu_sim::Machine::new(
            config.machine.hardware(),
            config.gpus,
            config.mig_gpus,
            &config.node,
            config.clock.now_ms(),
        );
        Self::on_machine(config, hw)
    }

    /// A node over an existing machine (as it is: its instances are owned by no slice, its
    /// processes belong to no synthetic job). `config.gpus`, `mig_gpus` and `machine` are not used;
    /// the machine's time moves with `config.clock` from now on (never backwards).
    pub fn on_machine(config: SimConfig, mut hw: gpu_sim::Machine) -> Result<Self, BackendError> {
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
        hw.time_mode = TimeMode::Manual;
        let n = hw.devices.len();
        Ok(SimBackend {
            healthy: vec![true; n],
            mig_owners: BTreeMap::new(),
            shares: vec![Vec::new(); n],
            whole: vec![None; n],
            last_seen_us: vec![0; n],
            loads: BTreeMap::new(),
            next_pid: 4_000,
            noise: ChaCha8Rng::seed_from_u64(config.seed),
            gpm_prev: BTreeMap::new(),
            config,
            hw,
        })
    }

    /// The clock the simulator runs on.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.config.clock.clone()
    }

    /// The simulated machine, moved to the clock's now.
    pub fn machine(&mut self) -> &gpu_sim::Machine {
        self.advance();
        &self.hw
    }

    /// The simulated machine to act on as a workload or an operator would (start a process of no
    /// slice, change a power limit), moved to the clock's now.
    pub fn machine_mut(&mut self) -> &mut gpu_sim::Machine {
        self.advance();
        &mut self.hw
    }

    /// Sets what the job in `slice_id` does from now on. The slice may not exist yet; its workload
    /// starts counting from this call. Its processes (one per GPU the slice holds) keep running,
    /// or start with new PIDs; [`Workload::Finished`] ends them while the slice stays allocated.
    pub fn set_workload(&mut self, slice_id: &str, workload: Workload) -> Result<(), BackendError> {
        workload
            .validate()
            .map_err(|e| BackendError::Config(format!("workload of {slice_id}: {e}")))?;
        self.advance();
        let now = self.hw.now_ms;
        let mut pids = self
            .loads
            .remove(slice_id)
            .map(|l| l.pids)
            .unwrap_or_default();
        if !workload.has_process() {
            for pid in std::mem::take(&mut pids).into_values() {
                self.stop_if_running(pid);
            }
        }
        let key = self.config.seed ^ fnv1a(slice_id) as u64;
        self.loads.insert(
            slice_id.to_string(),
            SliceLoad {
                workload,
                since_ms: now,
                pids,
                key,
            },
        );
        self.sync_processes(slice_id)
    }

    /// The workload of `slice_id`, if one is set or the slice exists.
    pub fn workload(&self, slice_id: &str) -> Option<&Workload> {
        self.loads.get(slice_id).map(|l| &l.workload)
    }

    /// A driver reload on the machine: every GPU's energy counter restarts from zero (consumers
    /// must notice the counter going backwards), MIG instances are gone and processes were killed,
    /// as on a real node. Shares and whole GPUs stay applied (they are the agent's); the jobs keep
    /// their workloads but have no process until their workload is set again.
    pub fn reload_driver(&mut self) {
        self.advance();
        self.hw.reload_driver();
        self.mig_owners.clear();
        self.gpm_prev.clear();
        for l in self.loads.values_mut() {
            l.pids.clear();
        }
        self.last_seen_us.iter_mut().for_each(|t| *t = 0);
    }

    fn new_pid(&mut self) -> u32 {
        loop {
            let pid = self.next_pid;
            self.next_pid = self.next_pid.wrapping_add(1).max(4_000);
            if !self.running(pid) {
                return pid;
            }
        }
    }

    fn running(&self, pid: u32) -> bool {
        self.hw
            .devices
            .iter()
            .any(|d| d.processes.iter().any(|p| p.pid == pid))
    }

    fn stop_if_running(&mut self, pid: u32) {
        if self.running(pid) {
            // It runs, so stopping it cannot fail.
            let _ = self.hw.stop_process(pid);
        }
    }

    /// Gives a newly applied slice (or a new GPU of it) the default workload unless one was set
    /// beforehand, and starts its process there.
    fn slice_started(&mut self, slice_id: &str) -> Result<(), BackendError> {
        if slice_id.is_empty() {
            return Ok(());
        }
        if self.loads.contains_key(slice_id) {
            self.sync_processes(slice_id)
        } else {
            let w = self.config.default_workload.clone();
            self.set_workload(slice_id, w)
        }
    }

    /// `slice_id` no longer holds GPU `gpu` (already removed from the bookkeeping): its process
    /// there stops, and once the slice holds nothing its workload is forgotten.
    fn slice_left(&mut self, slice_id: &str, gpu: u32) {
        let pid = self
            .loads
            .get_mut(slice_id)
            .and_then(|l| l.pids.remove(&gpu));
        if let Some(pid) = pid {
            self.stop_if_running(pid);
        }
        if self.slots(slice_id).is_empty()
            && let Some(l) = self.loads.remove(slice_id)
        {
            for pid in l.pids.into_values() {
                self.stop_if_running(pid);
            }
        }
    }

    /// Where `slice_id` is applied: one slot per GPU it holds.
    fn slots(&self, slice_id: &str) -> Vec<Slot> {
        let mut out = Vec::new();
        for (&(gpu, gi), _) in self.mig_owners.iter().filter(|(_, s)| *s == slice_id) {
            if let Some(d) = self.hw.devices.get(gpu as usize)
                && let Some(g) = d.gpu_instance(gi)
            {
                out.push(Slot {
                    gpu,
                    gi: Some(gi),
                    scale: 1.0,
                    memory_bytes: d.gi_memory_bytes(g),
                });
            }
        }
        for (i, d) in self.hw.devices.iter().enumerate() {
            let gpu = i as u32;
            if let Some(s) = self.shares[i].iter().find(|s| s.slice_id == slice_id) {
                out.push(Slot {
                    gpu,
                    gi: None,
                    scale: s.compute_fraction.clamp(0.0, 1.0),
                    memory_bytes: s.memory_bytes,
                });
            }
            if self.whole[i].as_deref() == Some(slice_id) {
                out.push(Slot {
                    gpu,
                    gi: None,
                    scale: 1.0,
                    memory_bytes: d.memory_total_bytes(),
                });
            }
        }
        out
    }

    /// Brings the processes of `slice_id`'s job in line with its workload now: on each GPU the
    /// slice holds, starts one if its job has a process and none runs there yet, else sets what
    /// the running one does.
    fn sync_processes(&mut self, slice_id: &str) -> Result<(), BackendError> {
        let Some(load) = self.loads.get(slice_id) else {
            return Ok(());
        };
        if !load.workload.has_process() {
            return Ok(());
        }
        let now = self.hw.now_ms;
        let util = load.workload.util_at(now - load.since_ms, load.key);
        for slot in self.slots(slice_id) {
            let (sm, mem) = job_util(util, slot.scale);
            let gpu = self.hw.devices[slot.gpu as usize].uuid.clone();
            let running = self
                .loads
                .get(slice_id)
                .and_then(|l| l.pids.get(&slot.gpu))
                .copied()
                .filter(|p| self.running(*p));
            if let Some(pid) = running {
                self.hw
                    .set_process_util(pid, sm, mem)
                    .map_err(sim_err(&gpu))?;
                continue;
            }
            let pid = self.new_pid();
            let bytes = (slot.memory_bytes as f64 * self.config.process_memory_fraction) as u64;
            let p = Process {
                pid,
                gpu_instance_id: slot.gi,
                compute_instance_id: None,
                used_memory_bytes: bytes & !((1 << 20) - 1),
                sm_util_pct: sm,
                mem_util_pct: mem,
                env: BTreeMap::from([(SLICE_ID_ENV.to_string(), slice_id.to_string())]),
                started_ms: now,
                ..Process::default()
            };
            self.hw
                .start_process(slot.gpu, slot.gi, p)
                .map_err(sim_err(&gpu))?;
            if let Some(l) = self.loads.get_mut(slice_id) {
                l.pids.insert(slot.gpu, pid);
            }
        }
        Ok(())
    }

    /// The jobs' processes that run now.
    fn jobs(&self) -> Vec<Job> {
        let mut out = Vec::new();
        for (slice, l) in &self.loads {
            for slot in self.slots(slice) {
                let Some(&pid) = l.pids.get(&slot.gpu) else {
                    continue;
                };
                if self.running(pid) {
                    out.push(Job {
                        pid,
                        scale: slot.scale,
                        workload: l.workload.clone(),
                        since_ms: l.since_ms,
                        key: l.key,
                    });
                }
            }
        }
        out
    }

    /// Moves the machine to the clock's now, from one change of a job's utilization to the next:
    /// each process does what its job does from the start of each stretch, which lasts until the
    /// next change of any job.
    fn advance(&mut self) {
        let now = self.config.clock.now_ms();
        let from = self.hw.now_ms;
        if now <= from {
            return;
        }
        let jobs = self.jobs();
        let mut t = from;
        while t < now {
            let mut next = now;
            for j in &jobs {
                let elapsed = t - j.since_ms;
                let (sm, mem) = job_util(j.workload.util_at(elapsed, j.key), j.scale);
                // The job's process runs (jobs() checked) and the values are within 0..=100.
                let _ = self.hw.set_process_util(j.pid, sm, mem);
                if let Some(c) = j.workload.next_change_ms(elapsed) {
                    next = next.min(j.since_ms + c);
                }
            }
            self.hw.advance_to(next);
            t = next;
        }
    }

    /// A zero-mean sensor error factor, 1 ± up to `power_noise` (triangular).
    fn noise_factor(&mut self) -> f64 {
        let n = self.config.power_noise;
        let u: f64 = self.noise.random::<f64>() + self.noise.random::<f64>() - 1.0;
        1.0 + n * u
    }

    /// Per-GPU-instance activity of GPU `i` through GPM, as the NVML backend samples it: the mean
    /// between this reading and the previous one of the same instance, when they are far enough
    /// apart; nothing for an instance's first reading.
    fn gpm_activity(&mut self, i: usize) -> Vec<MigActivity> {
        let gpu = i as u32;
        let live: Vec<(u32, u32)> = self.hw.devices[i]
            .gpu_instances
            .iter()
            .map(|g| (g.id, g.start))
            .collect();
        // GPU-instance ids are reused after a re-layout: forget readings of instances now gone.
        self.gpm_prev
            .retain(|(g, gi, st), _| *g != gpu || live.contains(&(*gi, *st)));
        let mut out = Vec::new();
        for (gi, start) in live {
            let Ok(cur) = self.hw.gpm_sample(gpu, Some(gi)) else {
                continue;
            };
            let key = (gpu, gi, start);
            if let Some(prev) = self.gpm_prev.get(&key) {
                if ((cur.at_ms - prev.at_ms) as u64) < super::GPM_MIN_INTERVAL_MS {
                    continue;
                }
                if let Ok(r) = gpu_sim::machine::gpm_metrics(prev, &cur) {
                    out.push(MigActivity {
                        gpu_instance_id: gi,
                        sm_util_pct: Some(r.sm_util_pct.clamp(0.0, 100.0)),
                        dram_bw_util_pct: Some(r.dram_bw_util_pct.clamp(0.0, 100.0)),
                        tensor_util_pct: Some(r.tensor_util_pct.clamp(0.0, 100.0)),
                    });
                }
            }
            self.gpm_prev.insert(key, cur);
        }
        out
    }

    /// Measures GPU `i` now, as the NVML backend reads it from the driver.
    fn sample_gpu(&mut self, i: usize) -> GpuSample {
        let gpm = {
            let d = &self.hw.devices[i];
            d.mig_enabled && d.kind.has_gpm()
        };
        let mig = if gpm {
            self.gpm_activity(i)
        } else {
            Vec::new()
        };
        let d = &self.hw.devices[i];
        let mut s = GpuSample::empty(&d.uuid);
        let now_us = u64::try_from(self.hw.now_ms).unwrap_or(0) * 1_000;
        let procs = gpu_processes(d);
        if d.mig_enabled {
            s.mark_unsupported(SampleField::Utilization);
            s.mark_unsupported(SampleField::ProcessUtilization);
            if gpm {
                s.mig = mig;
            } else {
                s.mark_unsupported(SampleField::MigActivity);
            }
        } else {
            s.gpu_util_pct = Some(d.sm_util_pct());
            s.mem_util_pct = Some(d.mem_util_pct());
            let mut putil: Vec<ProcessUtil> = if now_us > self.last_seen_us[i] {
                d.processes
                    .iter()
                    .filter(|p| p.sm_util_pct > 0 || p.mem_util_pct > 0)
                    .map(|p| ProcessUtil {
                        pid: p.pid,
                        sm_pct: p.sm_util_pct,
                        mem_pct: p.mem_util_pct,
                        last_seen_us: now_us,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            putil.sort_by_key(|p| p.pid);
            if !putil.is_empty() {
                self.last_seen_us[i] = now_us;
            }
            s.process_util = Some(putil);
        }
        s.memory_used_bytes = Some(d.memory_used_bytes());
        s.processes = Some(procs);
        // NVML's clock readings: the SM clock drops when the power limit holds the board back.
        s.sm_clock_mhz = Some(d.sm_clock_mhz());
        s.max_sm_clock_mhz = Some(d.kind.max_sm_clock_mhz());
        let power = f64::from(d.power_mw());
        s.energy_mj = Some(d.energy_mj);
        s.power_mw = Some((power * self.noise_factor()).max(0.0).round() as u32);

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

    /// GPU `i` as the agent sees it: the hardware, with the slices this agent applied.
    fn gpu(&self, i: usize) -> Gpu {
        let d = &self.hw.devices[i];
        let model = core_model(d);
        let mig_instances = if d.mig_enabled {
            d.gpu_instances
                .iter()
                .map(|g| self.mig_instance(i, &model, g))
                .collect()
        } else {
            Vec::new()
        };
        Gpu {
            uuid: d.uuid.clone(),
            index: d.index,
            memory_bytes: d.memory_total_bytes(),
            mig_capable: !d.kind.mig_profiles().is_empty() && model.mig_capable(),
            mig_enabled: d.mig_enabled,
            pci_bus_id: d.pci_bus_id.clone(),
            power_limit_mw: d.power_limit_mw,
            healthy: self.healthy[i],
            mig_instances,
            shares: self.shares[i].clone(),
            whole_slice_id: self.whole[i].clone(),
            model,
        }
    }

    fn mig_instance(
        &self,
        i: usize,
        model: &GpuModel,
        g: &gpu_sim::machine::GpuInstance,
    ) -> MigInstance {
        // Named as the NVML backend names it: core's profile with the id the hardware reports.
        let profile = mig::profiles(model)
            .iter()
            .find(|p| p.smi_id == g.profile_id)
            .map_or_else(|| g.profile.clone(), |p| p.name.to_string());
        MigInstance {
            gpu_instance_id: g.id,
            profile,
            start: u8::try_from(g.start).unwrap_or(u8::MAX),
            size: u8::try_from(g.size).unwrap_or(u8::MAX),
            mig_uuid: g.mig_uuid.clone(),
            slice_id: self.mig_owners.get(&(i as u32, g.id)).cloned(),
        }
    }

    fn gpu_index(&self, uuid: &str) -> Result<usize, BackendError> {
        self.hw
            .devices
            .iter()
            .position(|d| d.uuid == uuid)
            .ok_or_else(|| BackendError::UnknownGpu(uuid.to_string()))
    }

    /// Marks a GPU healthy or not (as an XID event would).
    pub fn set_healthy(&mut self, uuid: &str, healthy: bool) -> Result<(), BackendError> {
        let i = self.gpu_index(uuid)?;
        self.healthy[i] = healthy;
        Ok(())
    }

    /// The index of GPU `uuid`, which must not be in MIG mode.
    fn non_mig(&self, uuid: &str) -> Result<usize, BackendError> {
        let i = self.gpu_index(uuid)?;
        if self.hw.devices[i].mig_enabled {
            return Err(BackendError::MigMode {
                gpu: uuid.to_string(),
            });
        }
        Ok(i)
    }
}

/// A simulated device's compute processes as NVML lists them.
fn gpu_processes(d: &Device) -> Vec<GpuProcess> {
    d.processes
        .iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_memory_bytes: Some(p.used_memory_bytes),
            gpu_instance_id: p.gpu_instance_id,
            compute_instance_id: p.compute_instance_id,
        })
        .collect()
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
        Ok((0..self.hw.devices.len()).map(|i| self.gpu(i)).collect())
    }

    fn as_sim_mut(&mut self) -> Option<&mut SimBackend> {
        Some(self)
    }

    /// From the process's environment on the simulated machine, as from /proc on a real node.
    /// A simulated process exits on either signal.
    fn signal_process(
        &mut self,
        pid: u32,
        _signal: crate::enforce::StopSignal,
    ) -> Result<(), BackendError> {
        self.stop_if_running(pid);
        Ok(())
    }

    fn process_owner(&self, pid: u32) -> Option<String> {
        self.hw
            .devices
            .iter()
            .flat_map(|d| d.processes.iter())
            .find(|p| p.pid == pid)
            .and_then(|p| p.env.get(SLICE_ID_ENV))
            .filter(|s| !s.is_empty())
            .cloned()
    }

    /// The simulated driver's profiles and possible placements, in NVML profile-index order, as the
    /// NVML backend asks them of `nvmlDeviceGetGpuInstancePossiblePlacements_v2` (profiles core has
    /// no table entry for are left out, as there).
    fn mig_profiles(&mut self, gpu: &str) -> Result<Vec<ProfilePlacements>, BackendError> {
        let d = &self.hw.devices[self.gpu_index(gpu)?];
        let model = core_model(d);
        let mut hw: Vec<&gpu_sim::profiles::GiProfile> = d.kind.mig_profiles().iter().collect();
        hw.sort_by_key(|p| p.index);
        Ok(hw
            .into_iter()
            .filter_map(|p| {
                let core = mig::profiles(&model).iter().find(|c| c.smi_id == p.id)?;
                let mut starts: Vec<u8> = p
                    .starts
                    .iter()
                    .filter(|&&s| p.size > 0 && s + p.size <= gpu_sim::profiles::MEMORY_SLICES)
                    .filter_map(|&s| u8::try_from(s).ok())
                    .collect();
                starts.sort_unstable();
                starts.dedup();
                Some(ProfilePlacements {
                    profile: core.name.to_string(),
                    profile_id: p.id,
                    size: core.size,
                    max_instances: p.max_instances,
                    starts,
                    source: "driver",
                })
            })
            .collect())
    }

    fn compute_processes(&mut self, gpu: &str) -> Result<Vec<GpuProcess>, BackendError> {
        let i = self.gpu_index(gpu)?;
        Ok(gpu_processes(&self.hw.devices[i]))
    }

    fn sample(&mut self) -> Result<NodeSample, BackendError> {
        self.advance();
        let at_ms = self.config.clock.now_ms();
        let gpus = (0..self.hw.devices.len())
            .map(|i| self.sample_gpu(i))
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
        let d = &self.hw.devices[i];
        if !d.mig_enabled {
            return Err(BackendError::NotMigMode {
                gpu: gpu.to_string(),
            });
        }
        let model = core_model(d);
        let p = hardware_mig_check(gpu, &model, d, profile, start)?;
        let gpu_ix = i as u32;
        // The driver hands out the lowest free GPU-instance id, reusing destroyed ones.
        let gi = self
            .hw
            .create_gpu_instance(gpu_ix, p.index, Some((u32::from(start), p.size)))
            .map_err(sim_err(gpu))?;
        let ci_index = gpu_sim::profiles::CI_PROFILE_SLICES
            .iter()
            .position(|&s| s == p.compute_slices)
            .map_or(u32::MAX, |x| x as u32);
        if let Err(e) = self.hw.create_compute_instance(gpu_ix, gi, ci_index) {
            // Undo the half-made instance, as the NVML backend does.
            let _ = self.hw.destroy_gpu_instance(gpu_ix, gi);
            return Err(sim_err(gpu)(e));
        }
        if !slice_id.is_empty() {
            self.mig_owners.insert((gpu_ix, gi), slice_id.to_string());
        }
        // The layout changed: no GPM sample of this GPU is compared across it.
        self.gpm_prev.retain(|(g, _, _), _| *g != gpu_ix);
        let g =
            self.hw.devices[i]
                .gpu_instance(gi)
                .ok_or_else(|| BackendError::NoSuchInstance {
                    gpu: gpu.to_string(),
                    gi,
                })?;
        let inst = self.mig_instance(i, &model, g);
        let env = device_env(&inst.mig_uuid);
        self.slice_started(slice_id)?;
        Ok((inst, env))
    }

    /// Ends the owning slice's job, then destroys the compute instances and the GPU instance; a
    /// process of anyone else keeps it IN_USE, as on a real driver.
    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError> {
        self.advance();
        let i = self.gpu_index(gpu)?;
        let gpu_ix = i as u32;
        let Some(g) = self.hw.devices[i].gpu_instance(gpu_instance_id) else {
            return Err(BackendError::NoSuchInstance {
                gpu: gpu.to_string(),
                gi: gpu_instance_id,
            });
        };
        let cis: Vec<u32> = g.compute_instances.iter().map(|c| c.id).collect();
        let owner = self.mig_owners.remove(&(gpu_ix, gpu_instance_id));
        if let Some(owner) = &owner {
            self.slice_left(owner, gpu_ix);
        }
        let destroyed = cis
            .into_iter()
            .try_for_each(|ci| {
                self.hw
                    .destroy_compute_instance(gpu_ix, gpu_instance_id, ci)
            })
            .and_then(|()| self.hw.destroy_gpu_instance(gpu_ix, gpu_instance_id));
        if let Err(e) = destroyed {
            // Still there (another process holds it): still the owner's.
            if let Some(owner) = owner {
                self.mig_owners.insert((gpu_ix, gpu_instance_id), owner);
            }
            return Err(sim_err(gpu)(e));
        }
        self.gpm_prev.retain(|(g, _, _), _| *g != gpu_ix);
        Ok(())
    }

    fn adopt(
        &mut self,
        owned: &crate::checkpoint::Owned,
        _complete: bool,
    ) -> Result<(), BackendError> {
        // The simulated hardware lives in this process: only what it still holds is adopted
        // (checked by checkpoint::restore), and no workload is started for it.
        let n = self.hw.devices.len();
        let mut mig_owners = BTreeMap::new();
        let mut shares = vec![Vec::new(); n];
        let mut whole = vec![None; n];
        for m in &owned.mig {
            let i = self.gpu_index(&m.gpu)? as u32;
            mig_owners.insert((i, m.gpu_instance_id), m.slice_id.clone());
        }
        for s in &owned.shares {
            shares[self.gpu_index(&s.gpu)?].push(Share {
                slice_id: s.slice_id.clone(),
                compute_fraction: s.compute_fraction,
                memory_bytes: s.memory_bytes,
            });
        }
        for w in &owned.whole {
            whole[self.gpu_index(&w.gpu)?] = Some(w.slice_id.clone());
        }
        self.mig_owners = mig_owners;
        self.shares = shares;
        self.whole = whole;
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
        let i = self.non_mig(gpu)?;
        let others: Vec<&Share> = self.shares[i]
            .iter()
            .filter(|s| s.slice_id != slice_id)
            .collect();
        super::share_fits(
            gpu,
            self.whole[i].is_some(),
            &others,
            compute_fraction,
            memory_bytes,
            self.hw.devices[i].memory_total_bytes(),
        )?;
        self.shares[i].retain(|s| s.slice_id != slice_id);
        self.shares[i].push(Share {
            slice_id: slice_id.to_string(),
            compute_fraction,
            memory_bytes,
        });
        self.slice_started(slice_id)?;
        Ok(share_env(
            gpu,
            compute_fraction,
            memory_bytes,
            &self.config.mps_pipe_dir,
        ))
    }

    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.advance();
        let i = self.non_mig(gpu)?;
        let before = self.shares[i].len();
        self.shares[i].retain(|s| s.slice_id != slice_id);
        if self.shares[i].len() == before {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        self.slice_left(slice_id, i as u32);
        Ok(())
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        self.advance();
        let i = self.non_mig(gpu)?;
        super::whole_fits(
            gpu,
            self.whole[i].as_deref(),
            self.shares[i].len(),
            slice_id,
        )?;
        // As the NVML backend does: only the holder's process may open the GPU.
        self.hw
            .set_compute_mode(i as u32, gpu_sim::ComputeMode::ExclusiveProcess)
            .map_err(sim_err(gpu))?;
        self.whole[i] = Some(slice_id.to_string());
        self.slice_started(slice_id)?;
        Ok(device_env(gpu))
    }

    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.advance();
        let i = self.non_mig(gpu)?;
        if self.whole[i].as_deref() != Some(slice_id) {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        self.whole[i] = None;
        self.hw
            .set_compute_mode(i as u32, gpu_sim::ComputeMode::Default)
            .map_err(sim_err(gpu))?;
        self.slice_left(slice_id, i as u32);
        Ok(())
    }
}

/// The simulated hardware's own answer to "may `profile` be created at `start`?": gpu-sim's MIG
/// tables and placement rules, written from NVIDIA's guide apart from greenslice-core's (which the
/// controller places with), so the simulator can disagree with the controller as a driver could.
/// Errors are given in core's terms, as the NVML backend reports a driver's refusal. Returns the
/// hardware's profile.
fn hardware_mig_check(
    gpu: &str,
    model: &GpuModel,
    d: &Device,
    profile: &str,
    start: u8,
) -> Result<&'static gpu_sim::profiles::GiProfile, BackendError> {
    use gpu_sim::profiles::{PlacementError, check_placement};
    let table = d.kind.mig_profiles();
    if table.is_empty() {
        return Err(BackendError::NotMigMode { gpu: gpu.into() });
    }
    let p = table.iter().find(|p| p.name == profile).ok_or_else(|| {
        let valid: Vec<&str> = table.iter().map(|p| p.name).collect();
        mig::MigError::UnknownProfile {
            model: model.name().to_string(),
            profile: profile.to_string(),
            valid: valid.join(", "),
        }
    })?;
    let occupants = d.occupants();
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
    Ok(p)
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
    fn a_teardown_ends_the_slices_job_but_another_process_keeps_the_instance_in_use() {
        let mut b = h100(1);
        let g = b.inventory().unwrap()[0].uuid.clone();
        let (m, _) = b.create_mig(&g, "3g.40gb", 0, "s1").unwrap();
        // The slice's job runs on the machine, with the slice's environment.
        let pid = b.machine().devices[0].pids_on(m.gpu_instance_id)[0];
        assert_eq!(b.process_owner(pid).as_deref(), Some("s1"));
        let (m2, _) = b.create_mig(&g, "3g.40gb", 4, "s2").unwrap();
        let stray = gpu_sim::machine::Process {
            pid: 77,
            gpu_instance_id: None,
            compute_instance_id: None,
            used_memory_bytes: 1 << 30,
            sm_util_pct: 10,
            mem_util_pct: 0,
            env: BTreeMap::new(),
            started_ms: 0,
            ..Default::default()
        };
        b.machine_mut()
            .start_process(0, Some(m2.gpu_instance_id), stray)
            .unwrap();
        let e = b.destroy_mig(&g, m2.gpu_instance_id).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::Sim {
                    err: SimError::InUse { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("77"), "{e}");
        assert_eq!(b.inventory().unwrap()[0].mig_instances.len(), 2);
        b.machine_mut().stop_process(77).unwrap();
        b.destroy_mig(&g, m2.gpu_instance_id).unwrap();
        b.destroy_mig(&g, m.gpu_instance_id).unwrap();
        assert!(b.machine().devices[0].processes.is_empty());
        assert!(b.inventory().unwrap()[0].mig_instances.is_empty());
    }

    #[test]
    fn a_slice_on_several_gpus_runs_a_process_on_each() {
        let (mut b, clock) = sim_on(Machine::DgxH100, 0, 4);
        let g: Vec<String> = b
            .inventory()
            .unwrap()
            .iter()
            .map(|x| x.uuid.clone())
            .collect();
        b.assign_whole(&g[0], "w").unwrap();
        b.assign_whole(&g[1], "w").unwrap();
        b.set_workload("w", Workload::Busy { util: 0.7 }).unwrap();
        clock.advance(1_000);
        let s = b.sample().unwrap();
        assert_eq!(
            (s.gpus[0].gpu_util_pct, s.gpus[1].gpu_util_pct),
            (Some(70), Some(70))
        );
        let (p0, p1) = (
            s.gpus[0].processes.clone().unwrap(),
            s.gpus[1].processes.clone().unwrap(),
        );
        assert_ne!(p0[0].pid, p1[0].pid);
        assert_eq!(b.process_owner(p1[0].pid).as_deref(), Some("w"));
        // Giving one GPU back ends the job's process there only.
        b.unassign_whole(&g[0], "w").unwrap();
        let s = b.sample().unwrap();
        assert_eq!(s.gpus[0].processes, Some(vec![]));
        assert_eq!(s.gpus[1].processes.as_ref().unwrap()[0].pid, p1[0].pid);
        assert_eq!(b.workload("w"), Some(&Workload::Busy { util: 0.7 }));
        b.unassign_whole(&g[1], "w").unwrap();
        assert_eq!(b.workload("w"), None);
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

        let (mut h100, h100_clock) = sim_on(Machine::DgxH100, 1, 1);
        let g = h100.inventory().unwrap()[0].uuid.clone();
        h100.create_mig(&g, "3g.40gb", 4, "m").unwrap();
        h100.set_workload("m", Workload::Busy { util: 0.5 })
            .unwrap();
        // GPM compares two samples: the instance's first has nothing to compare with.
        assert!(h100.sample().unwrap().gpus[0].mig.is_empty());
        h100_clock.advance(1_000);
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
