//! The machine's state and every change the hardware allows, as pure functions over [`Machine`].
//!
//! Time is passed in (`now_ms`): the store reads it from the machine's [`Clock`]. Power is constant
//! between two changes, so the energy counter is the energy settled at the last change plus the
//! present power times the time since ([`Gpu::energy_mj`]); reading it writes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::devices::{DeviceKind, DeviceSpec, GiProfile, MachineKind};

/// What the hardware refuses, named as NVML names it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SimError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("in use: {0}")]
    InUse(String),
    #[error("insufficient resources: {0}")]
    InsufficientResources(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("no permission: {0}")]
    NoPermission(String),
}

/// Where simulated time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Clock {
    /// The wall clock (Unix ms).
    Wall,
    /// Driven by hand (tests): stays at `now_ms` until moved.
    Manual { now_ms: u64 },
}

/// A compute instance inside a GPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeInstance {
    pub id: u32,
    /// `NVML_COMPUTE_INSTANCE_PROFILE_*` index, which is also its profile id.
    pub profile: u32,
    pub start: u32,
    pub size: u32,
}

/// A GPU instance (MIG).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInstance {
    pub id: u32,
    pub profile_id: u32,
    pub profile: String,
    pub start: u32,
    pub size: u32,
    /// The MIG device UUID (`MIG-...`), new for every instance created.
    pub uuid: String,
    pub compute_instances: Vec<ComputeInstance>,
}

/// A process using a GPU, started by the workload (the simulator's CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// GPU instance id when it runs on a MIG instance.
    pub gpu_instance: Option<u32>,
    pub compute_instance: Option<u32>,
    pub used_memory_mib: u64,
    /// SM utilization of the device (or of its MIG instance) it causes, 0..=100.
    pub sm_util: u32,
    /// Memory-controller utilization, 0..=100.
    pub mem_util: u32,
    /// The environment it was started with (e.g. GREENSLICE_SLICE_ID).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub started_ms: u64,
}

/// One GPU board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub kind: DeviceKind,
    pub uuid: String,
    /// PCI bus id as NVML prints it, `00000000:18:00.0`.
    pub pci_bus_id: String,
    pub mig_enabled: bool,
    /// NVML_COMPUTEMODE_*: 0 default, 2 exclusive process, 3 prohibited.
    pub compute_mode: u32,
    pub power_limit_mw: u32,
    pub gpu_instances: Vec<GpuInstance>,
    pub processes: Vec<Process>,
    /// Energy since driver load up to `settled_ms`, mJ.
    pub energy_settled_mj: f64,
    pub settled_ms: u64,
}

/// An XID event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidEvent {
    pub seq: u64,
    pub gpu: u32,
    pub xid: u64,
    pub at_ms: u64,
}

/// The whole machine, as the state file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub machine: MachineKind,
    pub driver_version: String,
    /// CUDA driver version as NVML encodes it (1000 * major + 10 * minor).
    pub cuda_driver_version: i32,
    pub driver_loaded_ms: u64,
    /// How many times the driver was (re)loaded.
    pub driver_loads: u64,
    pub clock: Clock,
    pub gpus: Vec<Gpu>,
    pub events: Vec<XidEvent>,
    pub next_event_seq: u64,
    pub next_pid: u32,
    /// Counter mixed into MIG UUIDs, so a re-created instance gets a new UUID.
    pub instances_created: u64,
    pub seed: u64,
}

/// How many events the machine keeps (older ones are dropped).
const EVENTS_KEPT: usize = 256;

/// splitmix64: a fixed, seeded source for UUIDs that look random.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uuid_from(a: u64, b: u64) -> String {
    let (x, y) = (mix(a ^ mix(b)), mix(mix(a) ^ b ^ 0x5555_5555));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xFFFF,
        x & 0xFFFF,
        y >> 48,
        y & 0xFFFF_FFFF_FFFF
    )
}

/// PCI buses of the boards, in the order of a DGX H100's.
const BUSES: [u8; 8] = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB];

impl Machine {
    /// A freshly booted machine of `kind`, its first `mig_gpus` MIG-capable GPUs in MIG mode.
    pub fn new(kind: MachineKind, mig_gpus: u32, seed: u64, clock: Clock, now_ms: u64) -> Machine {
        let gpus = kind
            .devices()
            .into_iter()
            .enumerate()
            .map(|(i, dk)| {
                let spec = dk.spec();
                let i = i as u32;
                Gpu {
                    index: i,
                    kind: dk,
                    uuid: format!("GPU-{}", uuid_from(seed, u64::from(i))),
                    pci_bus_id: format!("00000000:{:02X}:00.0", BUSES[i as usize % BUSES.len()]),
                    mig_enabled: spec.mig.is_some() && i < mig_gpus,
                    compute_mode: 0,
                    power_limit_mw: spec.power_limit_mw,
                    gpu_instances: Vec::new(),
                    processes: Vec::new(),
                    energy_settled_mj: 0.0,
                    settled_ms: now_ms,
                }
            })
            .collect();
        Machine {
            machine: kind,
            driver_version: "570.133.20".to_string(),
            cuda_driver_version: 12080,
            driver_loaded_ms: now_ms,
            driver_loads: 1,
            clock,
            gpus,
            events: Vec::new(),
            next_event_seq: 1,
            next_pid: 40_000,
            instances_created: 0,
            seed,
        }
    }

    /// Simulated time now, given the wall clock's Unix ms.
    pub fn now_ms(&self, wall_ms: u64) -> u64 {
        match self.clock {
            Clock::Wall => wall_ms,
            Clock::Manual { now_ms } => now_ms,
        }
    }

    pub fn gpu(&self, index: u32) -> Result<&Gpu, SimError> {
        self.gpus
            .get(index as usize)
            .ok_or_else(|| SimError::InvalidArgument(format!("no GPU {index}")))
    }

    fn gpu_mut(&mut self, index: u32) -> Result<&mut Gpu, SimError> {
        self.gpus
            .get_mut(index as usize)
            .ok_or_else(|| SimError::InvalidArgument(format!("no GPU {index}")))
    }

    /// Folds every GPU's energy up to `now_ms`: called before any change of what draws power.
    pub fn settle(&mut self, now_ms: u64) {
        for g in &mut self.gpus {
            g.energy_settled_mj = g.energy_mj(now_ms);
            g.settled_ms = now_ms.max(g.settled_ms);
        }
    }

    /// Moves a manual clock forward (a wall clock cannot be moved).
    pub fn advance(&mut self, by_ms: u64) -> Result<(), SimError> {
        match &mut self.clock {
            Clock::Manual { now_ms } => {
                *now_ms = now_ms.saturating_add(by_ms);
                Ok(())
            }
            Clock::Wall => Err(SimError::InvalidArgument(
                "the machine follows the wall clock; set a manual clock first".into(),
            )),
        }
    }

    /// Creates a GPU instance of profile id `profile_id` at `start` (None: the first legal start)
    /// on GPU `gpu`; returns its id, the lowest free one (a real driver reuses ids too).
    pub fn create_gpu_instance(
        &mut self,
        gpu: u32,
        profile_id: u32,
        start: Option<u32>,
    ) -> Result<u32, SimError> {
        let seed = self.seed;
        let serial = self.instances_created;
        let g = self.gpu_mut(gpu)?;
        let spec = g.spec();
        let mig = spec
            .mig
            .ok_or_else(|| SimError::NotSupported(format!("{} has no MIG", spec.product_name)))?;
        if !g.mig_enabled {
            return Err(SimError::NotSupported(format!(
                "GPU {gpu} is not in MIG mode"
            )));
        }
        let p = spec.profile_by_id(profile_id).ok_or_else(|| {
            SimError::InvalidArgument(format!(
                "no GPU instance profile id {profile_id} on {}",
                spec.product_name
            ))
        })?;
        if !g.processes.iter().all(|pr| pr.gpu_instance.is_some()) {
            return Err(SimError::InUse(format!(
                "GPU {gpu} has processes outside MIG instances"
            )));
        }
        let start = match start {
            Some(s) => {
                if !p.starts.contains(&s) {
                    return Err(SimError::InvalidArgument(format!(
                        "{} cannot start at memory slice {s} (legal: {:?})",
                        p.name, p.starts
                    )));
                }
                g.check_placement(p, s, mig.compute_slices)?;
                s
            }
            None => p
                .starts
                .iter()
                .copied()
                .find(|&s| g.check_placement(p, s, mig.compute_slices).is_ok())
                .ok_or_else(|| {
                    SimError::InsufficientResources(format!("no room for {} on GPU {gpu}", p.name))
                })?,
        };
        let id = (1..)
            .find(|id| g.gpu_instances.iter().all(|gi| gi.id != *id))
            .unwrap_or(1);
        g.gpu_instances.push(GpuInstance {
            id,
            profile_id,
            profile: p.name.to_string(),
            start,
            size: p.memory_slices,
            uuid: format!("MIG-{}", uuid_from(seed ^ 0xA11CE, serial)),
            compute_instances: Vec::new(),
        });
        g.gpu_instances.sort_by_key(|gi| gi.id);
        self.instances_created += 1;
        Ok(id)
    }

    /// Destroys a GPU instance; refused while it has compute instances (as NVML does).
    pub fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<(), SimError> {
        let g = self.gpu_mut(gpu)?;
        let inst = g.instance(gi)?;
        if !inst.compute_instances.is_empty() {
            return Err(SimError::InUse(format!(
                "GPU instance {gi} still has compute instances"
            )));
        }
        if g.processes.iter().any(|p| p.gpu_instance == Some(gi)) {
            return Err(SimError::InUse(format!(
                "GPU instance {gi} has running processes"
            )));
        }
        g.gpu_instances.retain(|x| x.id != gi);
        Ok(())
    }

    /// Creates a compute instance of CI profile `profile` (its slice count from the index) in a GPU
    /// instance; returns its id.
    pub fn create_compute_instance(
        &mut self,
        gpu: u32,
        gi: u32,
        profile: u32,
    ) -> Result<u32, SimError> {
        let g = self.gpu_mut(gpu)?;
        let spec = g.spec();
        let inst = g.instance_mut(gi)?;
        let slices = ci_profile_slices(profile).ok_or_else(|| {
            SimError::InvalidArgument(format!("no compute instance profile {profile}"))
        })?;
        let gi_slices = spec
            .profile_by_id(inst.profile_id)
            .map_or(0, |p| p.compute_slices);
        if slices > gi_slices {
            return Err(SimError::InvalidArgument(format!(
                "a {slices}-slice compute instance does not fit a {gi_slices}-slice GPU instance"
            )));
        }
        let used: u32 = inst.compute_instances.iter().map(|c| c.size).sum();
        if used + slices > gi_slices {
            return Err(SimError::InsufficientResources(format!(
                "GPU instance {gi} has no free compute slices"
            )));
        }
        let id = (0..)
            .find(|id| inst.compute_instances.iter().all(|c| c.id != *id))
            .unwrap_or(0);
        inst.compute_instances.push(ComputeInstance {
            id,
            profile,
            start: used,
            size: slices,
        });
        Ok(id)
    }

    /// Destroys a compute instance; refused while processes run on it.
    pub fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), SimError> {
        let g = self.gpu_mut(gpu)?;
        if g.processes
            .iter()
            .any(|p| p.gpu_instance == Some(gi) && p.compute_instance == Some(ci))
        {
            return Err(SimError::InUse(format!(
                "compute instance {ci} of GPU instance {gi} has running processes"
            )));
        }
        let inst = g.instance_mut(gi)?;
        let before = inst.compute_instances.len();
        inst.compute_instances.retain(|c| c.id != ci);
        if inst.compute_instances.len() == before {
            return Err(SimError::NotFound(format!(
                "no compute instance {ci} in GPU instance {gi}"
            )));
        }
        Ok(())
    }

    /// Turns MIG mode on or off; refused while instances or processes exist.
    pub fn set_mig_mode(&mut self, gpu: u32, on: bool) -> Result<(), SimError> {
        let g = self.gpu_mut(gpu)?;
        if g.spec().mig.is_none() {
            return Err(SimError::NotSupported(format!(
                "{} has no MIG",
                g.spec().product_name
            )));
        }
        if !g.gpu_instances.is_empty() || !g.processes.is_empty() {
            return Err(SimError::InUse(format!(
                "GPU {gpu} has instances or processes"
            )));
        }
        g.mig_enabled = on;
        Ok(())
    }

    pub fn set_compute_mode(&mut self, gpu: u32, mode: u32) -> Result<(), SimError> {
        if !matches!(mode, 0 | 2 | 3) {
            return Err(SimError::InvalidArgument(format!("compute mode {mode}")));
        }
        let g = self.gpu_mut(gpu)?;
        if mode == 2 && g.processes.len() > 1 {
            return Err(SimError::InUse(format!(
                "GPU {gpu} has more than one process"
            )));
        }
        g.compute_mode = mode;
        Ok(())
    }

    /// Starts a process (the workload's side). `mig` is a GPU instance id, or a MIG device UUID
    /// resolved by the caller. Returns its pid.
    #[allow(clippy::too_many_arguments)]
    pub fn start_process(
        &mut self,
        gpu: u32,
        gpu_instance: Option<u32>,
        used_memory_mib: u64,
        sm_util: u32,
        mem_util: u32,
        env: BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<u32, SimError> {
        if sm_util > 100 || mem_util > 100 {
            return Err(SimError::InvalidArgument(
                "utilization is a percentage, 0..=100".into(),
            ));
        }
        self.settle(now_ms);
        let pid = self.next_pid;
        let g = self.gpu_mut(gpu)?;
        let (capacity, ci) = match gpu_instance {
            Some(gi) => {
                let inst = g.instance(gi)?;
                let ci = inst
                    .compute_instances
                    .first()
                    .map(|c| c.id)
                    .ok_or_else(|| {
                        SimError::InvalidArgument(format!(
                            "GPU instance {gi} has no compute instance to run on"
                        ))
                    })?;
                let p = g
                    .spec()
                    .profile_by_id(inst.profile_id)
                    .map_or(0, |p| p.memory_mib);
                (p, Some(ci))
            }
            None if g.mig_enabled => {
                return Err(SimError::InvalidArgument(format!(
                    "GPU {gpu} is in MIG mode: a process runs on one of its MIG instances"
                )));
            }
            None => (g.spec().memory_mib, None),
        };
        let used: u64 = g
            .processes
            .iter()
            .filter(|p| p.gpu_instance == gpu_instance)
            .map(|p| p.used_memory_mib)
            .sum();
        if used + used_memory_mib > capacity {
            return Err(SimError::InsufficientResources(format!(
                "out of memory: {used} of {capacity} MiB in use, {used_memory_mib} MiB asked"
            )));
        }
        if g.compute_mode == 3 {
            return Err(SimError::NoPermission(format!(
                "GPU {gpu} is in PROHIBITED compute mode"
            )));
        }
        if g.compute_mode == 2 && g.processes.iter().any(|p| p.gpu_instance == gpu_instance) {
            return Err(SimError::InUse(format!(
                "GPU {gpu} is EXCLUSIVE_PROCESS and already has a process"
            )));
        }
        g.processes.push(Process {
            pid,
            gpu_instance,
            compute_instance: ci,
            used_memory_mib,
            sm_util,
            mem_util,
            env,
            started_ms: now_ms,
        });
        self.next_pid += 1;
        Ok(pid)
    }

    /// Ends a process.
    pub fn stop_process(&mut self, pid: u32, now_ms: u64) -> Result<(), SimError> {
        self.settle(now_ms);
        for g in &mut self.gpus {
            if let Some(i) = g.processes.iter().position(|p| p.pid == pid) {
                g.processes.remove(i);
                return Ok(());
            }
        }
        Err(SimError::NotFound(format!("no process {pid}")))
    }

    /// Changes what a running process does.
    pub fn set_process_load(
        &mut self,
        pid: u32,
        sm_util: u32,
        mem_util: u32,
        now_ms: u64,
    ) -> Result<(), SimError> {
        if sm_util > 100 || mem_util > 100 {
            return Err(SimError::InvalidArgument(
                "utilization is a percentage, 0..=100".into(),
            ));
        }
        self.settle(now_ms);
        let p = self
            .gpus
            .iter_mut()
            .flat_map(|g| g.processes.iter_mut())
            .find(|p| p.pid == pid)
            .ok_or_else(|| SimError::NotFound(format!("no process {pid}")))?;
        p.sm_util = sm_util;
        p.mem_util = mem_util;
        Ok(())
    }

    /// Raises an XID event on a GPU.
    pub fn inject_xid(&mut self, gpu: u32, xid: u64, now_ms: u64) -> Result<u64, SimError> {
        self.gpu(gpu)?;
        let seq = self.next_event_seq;
        self.events.push(XidEvent {
            seq,
            gpu,
            xid,
            at_ms: now_ms,
        });
        self.next_event_seq += 1;
        if self.events.len() > EVENTS_KEPT {
            let drop = self.events.len() - EVENTS_KEPT;
            self.events.drain(..drop);
        }
        Ok(seq)
    }

    /// A driver reload: processes end, MIG instances are gone (MIG mode stays), energy counters
    /// restart from zero.
    pub fn reload_driver(&mut self, now_ms: u64) {
        for g in &mut self.gpus {
            g.processes.clear();
            g.gpu_instances.clear();
            g.compute_mode = 0;
            g.energy_settled_mj = 0.0;
            g.settled_ms = now_ms;
        }
        self.events.clear();
        self.driver_loaded_ms = now_ms;
        self.driver_loads += 1;
    }
}

/// Compute slices of CI profile index `i` (NVML_COMPUTE_INSTANCE_PROFILE_{1,2,3,4,7,8,6}_SLICE).
pub fn ci_profile_slices(i: u32) -> Option<u32> {
    [1, 2, 3, 4, 7, 8, 6].get(i as usize).copied()
}

impl Gpu {
    pub fn spec(&self) -> &'static DeviceSpec {
        self.kind.spec()
    }

    pub fn instance(&self, gi: u32) -> Result<&GpuInstance, SimError> {
        self.gpu_instances
            .iter()
            .find(|x| x.id == gi)
            .ok_or_else(|| {
                SimError::NotFound(format!("no GPU instance {gi} on GPU {}", self.index))
            })
    }

    fn instance_mut(&mut self, gi: u32) -> Result<&mut GpuInstance, SimError> {
        let index = self.index;
        self.gpu_instances
            .iter_mut()
            .find(|x| x.id == gi)
            .ok_or_else(|| SimError::NotFound(format!("no GPU instance {gi} on GPU {index}")))
    }

    /// The GI profile of an instance.
    pub fn profile_of(&self, inst: &GpuInstance) -> Option<&'static GiProfile> {
        self.spec().profile_by_id(inst.profile_id)
    }

    /// Whether a `p` instance may start at memory slice `start` now (the MIG user guide's rules:
    /// its memory slices free, compute slices left, fewer instances of it than its maximum).
    pub fn check_placement(
        &self,
        p: &GiProfile,
        start: u32,
        compute_total: u32,
    ) -> Result<(), SimError> {
        let end = start + p.memory_slices;
        for gi in &self.gpu_instances {
            if start < gi.start + gi.size && gi.start < end {
                return Err(SimError::InsufficientResources(format!(
                    "memory slices {start}..{end} overlap GPU instance {} ({} at {})",
                    gi.id, gi.profile, gi.start
                )));
            }
        }
        let used: u32 = self
            .gpu_instances
            .iter()
            .filter_map(|gi| self.profile_of(gi))
            .map(|q| q.compute_slices)
            .sum();
        if used + p.compute_slices > compute_total {
            return Err(SimError::InsufficientResources(format!(
                "{used} of {compute_total} compute slices in use, {} asked",
                p.compute_slices
            )));
        }
        let same = self
            .gpu_instances
            .iter()
            .filter(|gi| gi.profile_id == p.id)
            .count() as u32;
        if same >= p.max_instances {
            return Err(SimError::InsufficientResources(format!(
                "{} already has its most instances ({})",
                p.name, p.max_instances
            )));
        }
        if p.media && p.compute_slices < compute_total {
            let media_taken = self
                .gpu_instances
                .iter()
                .filter_map(|gi| self.profile_of(gi))
                .any(|q| q.media);
            if media_taken {
                return Err(SimError::InsufficientResources(format!(
                    "the media engines are taken; {} needs them",
                    p.name
                )));
            }
        }
        Ok(())
    }

    /// Legal placements of `p` now: (start, size).
    pub fn free_placements(&self, p: &GiProfile) -> Vec<(u32, u32)> {
        let total = self.spec().mig.map_or(0, |m| m.compute_slices);
        p.starts
            .iter()
            .filter(|&&s| self.check_placement(p, s, total).is_ok())
            .map(|&s| (s, p.memory_slices))
            .collect()
    }

    /// The load each process puts on the board, 0..=1: SM% scaled by its MIG instance's share.
    fn load(&self) -> f64 {
        let total = f64::from(self.spec().mig.map_or(7, |m| m.compute_slices));
        let l: f64 = self
            .processes
            .iter()
            .map(|p| {
                let share = match p.gpu_instance {
                    Some(gi) => self
                        .instance(gi)
                        .ok()
                        .and_then(|i| self.profile_of(i))
                        .map_or(0.0, |q| f64::from(q.compute_slices) / total),
                    None => 1.0,
                };
                f64::from(p.sm_util) / 100.0 * share
            })
            .sum();
        l.min(1.0)
    }

    /// Board power now, mW: idle plus the load's share of the span to the power limit.
    pub fn power_mw(&self) -> u32 {
        let idle = f64::from(self.spec().idle_mw);
        let limit = f64::from(self.power_limit_mw.max(self.spec().idle_mw));
        (idle + (limit - idle) * self.load()).round() as u32
    }

    /// The energy counter at `now_ms`, mJ since driver load.
    pub fn energy_mj(&self, now_ms: u64) -> f64 {
        let dt_s = now_ms.saturating_sub(self.settled_ms) as f64 / 1000.0;
        self.energy_settled_mj + f64::from(self.power_mw()) * dt_s
    }

    /// Board utilization (SM %, memory %): not given in MIG mode.
    pub fn utilization(&self) -> Option<(u32, u32)> {
        if self.mig_enabled {
            return None;
        }
        let sm: u32 = self.processes.iter().map(|p| p.sm_util).sum();
        let mem: u32 = self.processes.iter().map(|p| p.mem_util).sum();
        Some((sm.min(100), mem.min(100)))
    }

    /// Memory in use, MiB (processes only; the driver's reserve is not modelled).
    pub fn used_memory_mib(&self) -> u64 {
        self.processes.iter().map(|p| p.used_memory_mib).sum()
    }

    /// SM clock now, MHz.
    pub fn sm_clock_mhz(&self) -> u32 {
        let s = self.spec();
        if self.processes.is_empty() {
            s.idle_sm_mhz
        } else {
            s.max_sm_mhz
        }
    }

    /// Temperature now, °C.
    pub fn temperature_c(&self) -> u32 {
        30 + (self.load() * 45.0).round() as u32
    }
}
