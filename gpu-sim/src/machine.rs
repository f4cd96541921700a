//! The simulated machine: its devices and everything on them, and the operations NVML and the
//! workload perform. Pure: time is passed in (`now_ms`), nothing here does I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceKind, MachineKind};
use crate::power::{self, BoardPower, Load, Workload};
use crate::profiles::{self, GiProfile, Occupant, PlacementError};

/// Share of the idle-to-maximum power range, ‰, that a board draws while a process holds a CUDA
/// context on it but runs no kernels.
pub const CONTEXT_PERMILLE: u64 = 50;

/// Compute mode (`nvmlComputeMode_t` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeMode {
    Default = 0,
    Prohibited = 2,
    ExclusiveProcess = 3,
}

/// A compute instance inside a GPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeInstance {
    pub id: u32,
    /// `NVML_COMPUTE_INSTANCE_PROFILE_*` index.
    pub profile_index: u32,
    pub start: u32,
    pub size: u32,
}

/// A GPU instance (MIG).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInstance {
    pub id: u32,
    /// The profile id (`nvmlGpuInstanceProfileInfo_t::id`).
    pub profile_id: u32,
    pub profile: String,
    pub start: u32,
    pub size: u32,
    pub compute_instances: Vec<ComputeInstance>,
    /// The MIG device UUID (`MIG-...`), stable for this instance's life.
    pub mig_uuid: String,
    /// GPM's counters: SM and DRAM activity integrated since the instance was made, %·ms.
    #[serde(default)]
    pub gpm: GpmCounters,
}

/// Activity integrated over time, as GPM's hardware counters keep it: two readings give the mean
/// utilization between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpmCounters {
    /// SM utilization × time, %·ms.
    pub sm_pct_ms: u64,
    /// DRAM bandwidth utilization × time, %·ms.
    pub dram_pct_ms: u64,
    /// Tensor-core activity × time, %·ms.
    #[serde(default)]
    pub tensor_pct_ms: u64,
}

/// One GPM sample (`nvmlGpmSampleGet` / `nvmlGpmMigSampleGet`): what it is of, when, the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpmReading {
    pub gpu: u32,
    /// (GPU-instance id, start) of a MIG sample; none for the whole GPU.
    pub gpu_instance: Option<(u32, u32)>,
    pub at_ms: i64,
    pub counters: GpmCounters,
}

/// Mean utilizations between two GPM readings, %.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpmMetrics {
    pub sm_util_pct: f64,
    pub dram_bw_util_pct: f64,
    /// Any tensor-core activity, % (GPM's `ANY_TENSOR_UTIL`).
    pub tensor_util_pct: f64,
}

/// GPM samples closer than this cannot be compared (NVML asks for more than 100 ms).
pub const GPM_MIN_INTERVAL_MS: i64 = 100;

/// The metrics between two readings of the same GPU or GPU instance, `a` the earlier.
pub fn gpm_metrics(a: &GpmReading, b: &GpmReading) -> Result<GpmMetrics, SimError> {
    if (a.gpu, a.gpu_instance) != (b.gpu, b.gpu_instance) {
        return Err(SimError::Invalid(
            "GPM samples of different GPUs or instances".into(),
        ));
    }
    let dt = b.at_ms - a.at_ms;
    if dt <= GPM_MIN_INTERVAL_MS {
        return Err(SimError::Invalid(format!(
            "GPM samples {dt} ms apart; they must be more than {GPM_MIN_INTERVAL_MS} ms apart, the first one first"
        )));
    }
    let d = |x: u64, y: u64| {
        y.checked_sub(x).ok_or_else(|| {
            SimError::Invalid("GPM counters went backwards: the instance was made again".into())
        })
    };
    let dt = dt as f64;
    Ok(GpmMetrics {
        sm_util_pct: d(a.counters.sm_pct_ms, b.counters.sm_pct_ms)? as f64 / dt,
        dram_bw_util_pct: d(a.counters.dram_pct_ms, b.counters.dram_pct_ms)? as f64 / dt,
        tensor_util_pct: d(a.counters.tensor_pct_ms, b.counters.tensor_pct_ms)? as f64 / dt,
    })
}

/// A process using a GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// GPU instance it runs on (MIG), or none for the whole GPU.
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
    pub used_memory_bytes: u64,
    /// SM utilization of its GPU or instance, %.
    pub sm_util_pct: u32,
    /// Memory (controller) utilization, %: the DRAM bandwidth it uses, of its GPU or instance.
    pub mem_util_pct: u32,
    /// Tensor-core activity of its GPU or instance, %.
    #[serde(default)]
    pub tensor_pct: u32,
    /// What it runs: picks the coefficients of its power ([`crate::power`]).
    #[serde(default)]
    pub workload: Workload,
    pub env: BTreeMap<String, String>,
    pub started_ms: i64,
    /// Its true energy since it started, mJ: the ground truth attribution is measured against.
    /// Only the machine's state (the CLI's `state`) shows it; no NVML call does.
    #[serde(default)]
    pub true_energy_mj: u64,
    /// Sub-mJ remainder of `true_energy_mj`, µJ.
    #[serde(default)]
    pub true_energy_rem_uj: u64,
}

/// An XID event waiting to be read through an event set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidEvent {
    pub xid: u64,
    pub at_ms: i64,
    /// Sequence number; event sets read each once.
    pub seq: u64,
}

/// One simulated GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub index: u32,
    pub kind: DeviceKind,
    pub uuid: String,
    pub pci_bus_id: String,
    pub serial: String,
    pub mig_enabled: bool,
    /// MIG mode after the next GPU reset (pending change).
    pub mig_pending: bool,
    pub compute_mode: ComputeMode,
    pub power_limit_mw: u32,
    /// Energy since the driver was loaded, mJ.
    pub energy_mj: u64,
    /// Sub-mJ remainder of the energy integration, µJ.
    pub energy_rem_uj: u64,
    pub gpu_instances: Vec<GpuInstance>,
    pub processes: Vec<Process>,
    pub xids: Vec<XidEvent>,
    /// GPM's counters of the whole GPU since the driver was loaded.
    #[serde(default)]
    pub gpm: GpmCounters,
}

/// How simulated time moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// With the wall clock.
    Wall,
    /// Only when driven (`advance`): tests.
    Manual,
}

/// The whole machine: what outlives any process that uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kind: MachineKind,
    pub devices: Vec<Device>,
    pub time_mode: TimeMode,
    /// Simulated time the state was last advanced to, ms since the Unix epoch.
    pub now_ms: i64,
    /// When the driver was last loaded (energy counters start there), ms.
    pub driver_loaded_ms: i64,
    pub next_xid_seq: u64,
    /// Bumped on every change; readers cache by it.
    pub generation: u64,
}

/// What the machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no GPU {0}")]
    NoDevice(u32),
    #[error("GPU {0} has no MIG")]
    NoMig(u32),
    #[error("GPU {0} is not in MIG mode")]
    NotMigMode(u32),
    #[error("GPU {0} has no GPM (Hopper and newer have)")]
    NoGpm(u32),
    #[error("GPU {gpu} has no MIG profile index {index}")]
    NoProfile { gpu: u32, index: u32 },
    #[error("GPU {gpu}: {err}")]
    Placement { gpu: u32, err: PlacementError },
    #[error("GPU {gpu} has no GPU instance {gi}")]
    NoGpuInstance { gpu: u32, gi: u32 },
    #[error("GPU instance {gi} of GPU {gpu} has no compute instance {ci}")]
    NoComputeInstance { gpu: u32, gi: u32, ci: u32 },
    #[error("GPU instance {gi} of GPU {gpu} has no room for that compute instance")]
    NoComputeRoom { gpu: u32, gi: u32 },
    #[error("{what} on GPU {gpu} is in use by processes {pids:?}")]
    InUse {
        gpu: u32,
        what: String,
        pids: Vec<u32>,
    },
    #[error("GPU {gpu} has GPU instances; destroy them before changing MIG mode")]
    InstancesExist { gpu: u32 },
    #[error("pid {0} is already running on a GPU")]
    PidTaken(u32),
    #[error("no process {0}")]
    NoProcess(u32),
    #[error("{0}")]
    Invalid(String),
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A 64-bit finaliser (splitmix64's): seeds that differ in one character differ in every digit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A UUID-shaped string stable for `seed`; like real UUIDs, those of one machine's GPUs differ from
/// their first digits (a table that cuts them short still tells them apart).
fn uuid_from(prefix: &str, seed: &str) -> String {
    let a = mix(fnv1a(seed));
    let b = mix(fnv1a(&format!("{seed}/2")));
    format!(
        "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

impl Machine {
    /// A freshly booted machine: `gpus` devices of `kind`, the first `mig_gpus` MIG-capable ones
    /// in MIG mode (no instances), `seed` naming it (UUIDs derive from it, so two machines differ).
    pub fn new(kind: MachineKind, gpus: u32, mig_gpus: u32, seed: &str, now_ms: i64) -> Machine {
        let mut mig_left = mig_gpus;
        let devices = kind
            .devices(gpus)
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let i = i as u32;
                let mig = !k.mig_profiles().is_empty() && mig_left > 0;
                if mig {
                    mig_left -= 1;
                }
                Device {
                    index: i,
                    kind: k,
                    uuid: uuid_from("GPU", &format!("{seed}/{i}")),
                    pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + i * 0x10),
                    serial: format!(
                        "{:013}",
                        fnv1a(&format!("{seed}/{i}/sn")) % 10_000_000_000_000
                    ),
                    mig_enabled: mig,
                    mig_pending: mig,
                    compute_mode: ComputeMode::Default,
                    power_limit_mw: k.power_mw().1,
                    energy_mj: 0,
                    energy_rem_uj: 0,
                    gpu_instances: Vec::new(),
                    processes: Vec::new(),
                    xids: Vec::new(),
                    gpm: GpmCounters::default(),
                }
            })
            .collect();
        Machine {
            kind,
            devices,
            time_mode: TimeMode::Wall,
            now_ms,
            driver_loaded_ms: now_ms,
            next_xid_seq: 1,
            generation: 1,
        }
    }

    pub fn device(&self, gpu: u32) -> Result<&Device, SimError> {
        self.devices
            .get(gpu as usize)
            .ok_or(SimError::NoDevice(gpu))
    }

    fn device_mut(&mut self, gpu: u32) -> Result<&mut Device, SimError> {
        self.devices
            .get_mut(gpu as usize)
            .ok_or(SimError::NoDevice(gpu))
    }

    fn changed(&mut self) {
        self.generation += 1;
    }

    /// Moves simulated time to `now_ms` (never backwards), integrating every board's energy.
    pub fn advance_to(&mut self, now_ms: i64) {
        if now_ms <= self.now_ms {
            return;
        }
        let dt_ms = (now_ms - self.now_ms) as u64;
        for d in &mut self.devices {
            let bp = d.board_power();
            // mW × ms = µJ. The board's power is the floor plus its processes' powers, so the
            // board's energy is the floor's plus theirs.
            let uj = bp.total_mw() * dt_ms + d.energy_rem_uj;
            d.energy_mj += uj / 1000;
            d.energy_rem_uj = uj % 1000;
            for (p, mw) in d.processes.iter_mut().zip(&bp.process_mw) {
                let uj = mw * dt_ms + p.true_energy_rem_uj;
                p.true_energy_mj += uj / 1000;
                p.true_energy_rem_uj = uj % 1000;
            }
            let board = (
                u64::from(d.sm_util_pct()),
                u64::from(d.mem_util_pct()),
                u64::from(d.tensor_pct()),
            );
            d.gpm.sm_pct_ms += board.0 * dt_ms;
            d.gpm.dram_pct_ms += board.1 * dt_ms;
            d.gpm.tensor_pct_ms += board.2 * dt_ms;
            let per_gi: Vec<(u64, u64, u64)> = d
                .gpu_instances
                .iter()
                .map(|g| {
                    (
                        u64::from(d.gi_sm_util_pct(g.id)),
                        u64::from(d.gi_mem_util_pct(g.id)),
                        u64::from(d.gi_tensor_pct(g.id)),
                    )
                })
                .collect();
            for (g, (sm, dram, tensor)) in d.gpu_instances.iter_mut().zip(per_gi) {
                g.gpm.sm_pct_ms += sm * dt_ms;
                g.gpm.dram_pct_ms += dram * dt_ms;
                g.gpm.tensor_pct_ms += tensor * dt_ms;
            }
        }
        self.now_ms = now_ms;
        self.changed();
    }

    /// A driver reload: energy counters restart at 0, MIG instances are gone (they do not survive
    /// it), processes were killed, a pending MIG mode takes effect.
    pub fn reload_driver(&mut self) {
        for d in &mut self.devices {
            d.energy_mj = 0;
            d.energy_rem_uj = 0;
            d.gpm = GpmCounters::default();
            d.gpu_instances.clear();
            d.processes.clear();
            d.xids.clear();
            d.mig_enabled = d.mig_pending;
        }
        self.driver_loaded_ms = self.now_ms;
        self.changed();
    }

    /// Sets the MIG mode; it applies at once when the GPU is idle (as after the reset `nvidia-smi
    /// -mig` does), else it stays pending. Returns the (current, pending) mode.
    pub fn set_mig_mode(&mut self, gpu: u32, on: bool) -> Result<(bool, bool), SimError> {
        let d = self.device_mut(gpu)?;
        if d.kind.mig_profiles().is_empty() {
            return Err(SimError::NoMig(gpu));
        }
        if !d.gpu_instances.is_empty() {
            return Err(SimError::InstancesExist { gpu });
        }
        d.mig_pending = on;
        if d.processes.is_empty() {
            d.mig_enabled = on;
        }
        let r = (d.mig_enabled, d.mig_pending);
        self.changed();
        Ok(r)
    }

    pub fn set_compute_mode(&mut self, gpu: u32, mode: ComputeMode) -> Result<(), SimError> {
        self.device_mut(gpu)?.compute_mode = mode;
        self.changed();
        Ok(())
    }

    pub fn set_power_limit(&mut self, gpu: u32, mw: u32) -> Result<(), SimError> {
        let d = self.device_mut(gpu)?;
        let (idle, max) = d.kind.power_mw();
        if mw < idle * 2 || mw > max {
            return Err(SimError::Invalid(format!(
                "power limit {mw} mW is outside {}..={max} mW",
                idle * 2
            )));
        }
        d.power_limit_mw = mw;
        self.changed();
        Ok(())
    }

    /// Creates a GPU instance of the profile with NVML index `index`. `placement`: `Some((start,
    /// size))` as `nvmlDeviceCreateGpuInstanceWithPlacement`, or `None` to take the first free start
    /// as `nvmlDeviceCreateGpuInstance` does. The id is the lowest free one, as the driver reuses ids.
    pub fn create_gpu_instance(
        &mut self,
        gpu: u32,
        index: u32,
        placement: Option<(u32, u32)>,
    ) -> Result<u32, SimError> {
        let d = self.device_mut(gpu)?;
        let p = d.mig_check(gpu, index)?;
        let occupants = d.occupants();
        let (start, size) = match placement {
            Some(pl) => pl,
            None => {
                let s = profiles::free_starts(p, &occupants)
                    .first()
                    .copied()
                    .ok_or(SimError::Placement {
                        gpu,
                        err: PlacementError::Occupied { start: 0, end: 8 },
                    })?;
                (s, p.size)
            }
        };
        profiles::check_placement(p, start, size, &occupants)
            .map_err(|err| SimError::Placement { gpu, err })?;
        let id = lowest_free(d.gpu_instances.iter().map(|g| g.id), 1);
        let mig_uuid = uuid_from("MIG", &format!("{}/{id}/{start}/{}", d.uuid, d.energy_mj));
        d.gpu_instances.push(GpuInstance {
            id,
            profile_id: p.id,
            profile: p.name.to_string(),
            start,
            size,
            compute_instances: Vec::new(),
            mig_uuid,
            gpm: GpmCounters::default(),
        });
        d.gpu_instances.sort_by_key(|g| g.id);
        self.changed();
        Ok(id)
    }

    /// Destroys a GPU instance; IN_USE while it has compute instances or processes.
    pub fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<(), SimError> {
        let d = self.device_mut(gpu)?;
        let pos = d
            .gpu_instances
            .iter()
            .position(|g| g.id == gi)
            .ok_or(SimError::NoGpuInstance { gpu, gi })?;
        let pids = d.pids_on(gi);
        if !pids.is_empty() {
            return Err(SimError::InUse {
                gpu,
                what: format!("GPU instance {gi}"),
                pids,
            });
        }
        if !d.gpu_instances[pos].compute_instances.is_empty() {
            return Err(SimError::InUse {
                gpu,
                what: format!("GPU instance {gi} (it has compute instances)"),
                pids,
            });
        }
        d.gpu_instances.remove(pos);
        self.changed();
        Ok(())
    }

    /// Creates a compute instance of CI profile index `ci_index` in GPU instance `gi`.
    pub fn create_compute_instance(
        &mut self,
        gpu: u32,
        gi: u32,
        ci_index: u32,
    ) -> Result<u32, SimError> {
        let d = self.device_mut(gpu)?;
        let kind = d.kind;
        let g = d
            .gpu_instances
            .iter_mut()
            .find(|g| g.id == gi)
            .ok_or(SimError::NoGpuInstance { gpu, gi })?;
        let gp = kind
            .profile_by_id(g.profile_id)
            .ok_or(SimError::NoGpuInstance { gpu, gi })?;
        let slices = ci_slices(ci_index, gp).ok_or(SimError::Invalid(format!(
            "compute instance profile {ci_index} does not fit a {}",
            gp.name
        )))?;
        let used: u32 = g.compute_instances.iter().map(|c| c.size).sum();
        if used + slices > gp.compute_slices {
            return Err(SimError::NoComputeRoom { gpu, gi });
        }
        let id = lowest_free(g.compute_instances.iter().map(|c| c.id), 0);
        g.compute_instances.push(ComputeInstance {
            id,
            profile_index: ci_index,
            start: used,
            size: slices,
        });
        g.compute_instances.sort_by_key(|c| c.id);
        self.changed();
        Ok(id)
    }

    /// Destroys a compute instance; IN_USE while processes run on it.
    pub fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), SimError> {
        let d = self.device_mut(gpu)?;
        let pids: Vec<u32> = d
            .processes
            .iter()
            .filter(|p| p.gpu_instance_id == Some(gi) && p.compute_instance_id == Some(ci))
            .map(|p| p.pid)
            .collect();
        let g = d
            .gpu_instances
            .iter_mut()
            .find(|g| g.id == gi)
            .ok_or(SimError::NoGpuInstance { gpu, gi })?;
        let pos = g
            .compute_instances
            .iter()
            .position(|c| c.id == ci)
            .ok_or(SimError::NoComputeInstance { gpu, gi, ci })?;
        if !pids.is_empty() {
            return Err(SimError::InUse {
                gpu,
                what: format!("compute instance {ci} of GPU instance {gi}"),
                pids,
            });
        }
        g.compute_instances.remove(pos);
        self.changed();
        Ok(())
    }

    /// Starts a process on a GPU (`gi` None) or on GPU instance `gi` (its first compute instance).
    pub fn start_process(
        &mut self,
        gpu: u32,
        gi: Option<u32>,
        mut p: Process,
    ) -> Result<(), SimError> {
        if self
            .devices
            .iter()
            .any(|d| d.processes.iter().any(|q| q.pid == p.pid))
        {
            return Err(SimError::PidTaken(p.pid));
        }
        if p.sm_util_pct > 100 || p.mem_util_pct > 100 || p.tensor_pct > 100 {
            return Err(SimError::Invalid("utilization must be 0-100 %".into()));
        }
        let now = self.now_ms;
        let d = self.device_mut(gpu)?;
        match gi {
            Some(gi) => {
                if !d.mig_enabled {
                    return Err(SimError::NotMigMode(gpu));
                }
                let g = d
                    .gpu_instances
                    .iter()
                    .find(|g| g.id == gi)
                    .ok_or(SimError::NoGpuInstance { gpu, gi })?;
                let ci = g
                    .compute_instances
                    .first()
                    .ok_or(SimError::NoComputeInstance { gpu, gi, ci: 0 })?;
                p.gpu_instance_id = Some(gi);
                p.compute_instance_id = Some(ci.id);
            }
            None => {
                if d.mig_enabled {
                    return Err(SimError::Invalid(format!(
                        "GPU {gpu} is in MIG mode: a process runs on a GPU instance (--gi)"
                    )));
                }
                p.gpu_instance_id = None;
                p.compute_instance_id = None;
            }
        }
        let total = d.kind.memory_mib() * 1024 * 1024;
        if d.memory_used_bytes() + p.used_memory_bytes > total {
            return Err(SimError::Invalid(format!(
                "GPU {gpu} has only {} bytes free",
                total - d.memory_used_bytes()
            )));
        }
        p.started_ms = now;
        p.true_energy_mj = 0;
        p.true_energy_rem_uj = 0;
        d.processes.push(p);
        self.changed();
        Ok(())
    }

    /// Changes a running process's SM and memory utilization (%), as its work changes.
    pub fn set_process_util(
        &mut self,
        pid: u32,
        sm_pct: u32,
        mem_pct: u32,
    ) -> Result<(), SimError> {
        if sm_pct > 100 || mem_pct > 100 {
            return Err(SimError::Invalid("utilization must be 0-100 %".into()));
        }
        let p = self
            .devices
            .iter_mut()
            .flat_map(|d| d.processes.iter_mut())
            .find(|p| p.pid == pid)
            .ok_or(SimError::NoProcess(pid))?;
        if (p.sm_util_pct, p.mem_util_pct) != (sm_pct, mem_pct) {
            p.sm_util_pct = sm_pct;
            p.mem_util_pct = mem_pct;
            self.changed();
        }
        Ok(())
    }

    /// Changes a running process's whole activity vector: SM, memory (DRAM bandwidth) and
    /// tensor-core utilization, %.
    pub fn set_process_activity(
        &mut self,
        pid: u32,
        sm_pct: u32,
        mem_pct: u32,
        tensor_pct: u32,
    ) -> Result<(), SimError> {
        if tensor_pct > 100 {
            return Err(SimError::Invalid("utilization must be 0-100 %".into()));
        }
        self.set_process_util(pid, sm_pct, mem_pct)?;
        let p = self
            .devices
            .iter_mut()
            .flat_map(|d| d.processes.iter_mut())
            .find(|p| p.pid == pid)
            .ok_or(SimError::NoProcess(pid))?;
        if p.tensor_pct != tensor_pct {
            p.tensor_pct = tensor_pct;
            self.changed();
        }
        Ok(())
    }

    /// Ends process `pid` wherever it runs.
    pub fn stop_process(&mut self, pid: u32) -> Result<(), SimError> {
        for d in &mut self.devices {
            if let Some(pos) = d.processes.iter().position(|p| p.pid == pid) {
                d.processes.remove(pos);
                self.generation += 1;
                return Ok(());
            }
        }
        Err(SimError::NoProcess(pid))
    }

    /// A GPM sample of GPU `gpu`, or of its GPU instance `gi`: Hopper and newer only.
    pub fn gpm_sample(&self, gpu: u32, gi: Option<u32>) -> Result<GpmReading, SimError> {
        let d = self.device(gpu)?;
        if !d.kind.has_gpm() {
            return Err(SimError::NoGpm(gpu));
        }
        let (gpu_instance, counters) = match gi {
            None => (None, d.gpm),
            Some(gi) => {
                if !d.mig_enabled {
                    return Err(SimError::NotMigMode(gpu));
                }
                let g = d
                    .gpu_instance(gi)
                    .ok_or(SimError::NoGpuInstance { gpu, gi })?;
                (Some((g.id, g.start)), g.gpm)
            }
        };
        Ok(GpmReading {
            gpu,
            gpu_instance,
            at_ms: self.now_ms,
            counters,
        })
    }

    /// Raises XID `xid` on `gpu`.
    pub fn inject_xid(&mut self, gpu: u32, xid: u64) -> Result<(), SimError> {
        let seq = self.next_xid_seq;
        let now = self.now_ms;
        let d = self.device_mut(gpu)?;
        d.xids.push(XidEvent {
            xid,
            at_ms: now,
            seq,
        });
        // Keep the queue bounded: a reader that never reads must not grow the file forever.
        if d.xids.len() > 64 {
            d.xids.remove(0);
        }
        self.next_xid_seq += 1;
        self.changed();
        Ok(())
    }
}

/// Compute slices of CI profile `index` in a GPU instance of `gp`, if it fits at all.
fn ci_slices(index: u32, gp: &GiProfile) -> Option<u32> {
    let s = *profiles::CI_PROFILE_SLICES.get(index as usize)?;
    (s <= gp.compute_slices).then_some(s)
}

fn lowest_free(used: impl Iterator<Item = u32>, from: u32) -> u32 {
    let used: Vec<u32> = used.collect();
    (from..).find(|i| !used.contains(i)).unwrap_or(from)
}

impl Device {
    fn mig_check(&self, gpu: u32, index: u32) -> Result<&'static GiProfile, SimError> {
        if self.kind.mig_profiles().is_empty() {
            return Err(SimError::NoMig(gpu));
        }
        if !self.mig_enabled {
            return Err(SimError::NotMigMode(gpu));
        }
        self.kind
            .profile_by_index(index)
            .ok_or(SimError::NoProfile { gpu, index })
    }

    /// The GPU instances as placement sees them.
    pub fn occupants(&self) -> Vec<Occupant> {
        self.gpu_instances
            .iter()
            .filter_map(|g| {
                Some(Occupant {
                    profile: self.kind.profile_by_id(g.profile_id)?,
                    start: g.start,
                })
            })
            .collect()
    }

    pub fn pids_on(&self, gi: u32) -> Vec<u32> {
        self.processes
            .iter()
            .filter(|p| p.gpu_instance_id == Some(gi))
            .map(|p| p.pid)
            .collect()
    }

    pub fn gpu_instance(&self, gi: u32) -> Option<&GpuInstance> {
        self.gpu_instances.iter().find(|g| g.id == gi)
    }

    pub fn memory_total_bytes(&self) -> u64 {
        self.kind.memory_mib() * 1024 * 1024
    }

    pub fn memory_used_bytes(&self) -> u64 {
        self.processes.iter().map(|p| p.used_memory_bytes).sum()
    }

    /// Memory of GPU instance `g`, bytes.
    pub fn gi_memory_bytes(&self, g: &GpuInstance) -> u64 {
        self.kind
            .profile_by_id(g.profile_id)
            .map_or(0, |p| self.kind.profile_memory_mib(p) * 1024 * 1024)
    }

    /// SM activity of the whole board, % (each instance's processes weighted by its share of the
    /// GPU's compute slices; on a GPU without MIG the busiest process, capped at 100).
    pub fn sm_util_pct(&self) -> u32 {
        if self.mig_enabled {
            let total: u32 = self
                .gpu_instances
                .iter()
                .map(|g| {
                    let busy = self.gi_sm_util_pct(g.id);
                    let cs = self
                        .kind
                        .profile_by_id(g.profile_id)
                        .map_or(0, |p| p.compute_slices);
                    busy * cs
                })
                .sum();
            total / profiles::COMPUTE_SLICES
        } else {
            self.processes
                .iter()
                .map(|p| p.sm_util_pct)
                .sum::<u32>()
                .min(100)
        }
    }

    /// SM activity of one GPU instance, % of the instance.
    pub fn gi_sm_util_pct(&self, gi: u32) -> u32 {
        self.processes
            .iter()
            .filter(|p| p.gpu_instance_id == Some(gi))
            .map(|p| p.sm_util_pct)
            .sum::<u32>()
            .min(100)
    }

    /// Memory utilization of GPU instance `gi`'s processes, %.
    pub fn gi_mem_util_pct(&self, gi: u32) -> u32 {
        self.processes
            .iter()
            .filter(|p| p.gpu_instance_id == Some(gi))
            .map(|p| p.mem_util_pct)
            .sum::<u32>()
            .min(100)
    }

    pub fn mem_util_pct(&self) -> u32 {
        self.processes
            .iter()
            .map(|p| p.mem_util_pct)
            .sum::<u32>()
            .min(100)
    }

    /// Tensor-core activity of the whole board, % (as SM activity is weighted).
    pub fn tensor_pct(&self) -> u32 {
        if self.mig_enabled {
            let total: u32 = self
                .gpu_instances
                .iter()
                .map(|g| {
                    let cs = self
                        .kind
                        .profile_by_id(g.profile_id)
                        .map_or(0, |p| p.compute_slices);
                    self.gi_tensor_pct(g.id) * cs
                })
                .sum();
            total / profiles::COMPUTE_SLICES
        } else {
            self.processes
                .iter()
                .map(|p| p.tensor_pct)
                .sum::<u32>()
                .min(100)
        }
    }

    /// Tensor-core activity of one GPU instance, % of the instance.
    pub fn gi_tensor_pct(&self, gi: u32) -> u32 {
        self.processes
            .iter()
            .filter(|p| p.gpu_instance_id == Some(gi))
            .map(|p| p.tensor_pct)
            .sum::<u32>()
            .min(100)
    }

    /// Each process's activity as fractions of the whole board, in the order of `processes`:
    /// a MIG instance's process scaled by the instance's compute slices (SM, tensor) and memory
    /// slices (DRAM); processes sharing a GPU or an instance, whose utilizations add past 100%,
    /// scaled down together (they time-slice).
    fn loads(&self) -> Vec<Load> {
        let sums = |gi: Option<u32>| {
            self.processes
                .iter()
                .filter(|p| p.gpu_instance_id == gi)
                .fold((0u32, 0u32, 0u32), |a, p| {
                    (
                        a.0 + p.sm_util_pct,
                        a.1 + p.mem_util_pct,
                        a.2 + p.tensor_pct,
                    )
                })
        };
        let share = |pct: u32, sum: u32| f64::from(pct) / f64::from(sum.max(100));
        self.processes
            .iter()
            .map(|p| {
                let (cf, mf) = match p.gpu_instance_id {
                    Some(gi) => self.gpu_instance(gi).map_or((0.0, 0.0), |g| {
                        let cs = self
                            .kind
                            .profile_by_id(g.profile_id)
                            .map_or(0, |pr| pr.compute_slices);
                        (
                            f64::from(cs) / f64::from(profiles::COMPUTE_SLICES),
                            f64::from(g.size) / 8.0,
                        )
                    }),
                    None => (1.0, 1.0),
                };
                let (s, d, t) = sums(p.gpu_instance_id);
                Load {
                    sm: share(p.sm_util_pct, s) * cf,
                    dram: share(p.mem_util_pct, d) * mf,
                    tensor: share(p.tensor_pct, t) * cf,
                    workload: p.workload,
                }
            })
            .collect()
    }

    /// The board's power now, process by process ([`crate::power`]): a floor (idle, or idle plus
    /// [`CONTEXT_PERMILLE`] of the range while any process holds a context, which keeps the
    /// clocks up) plus each process's dynamic power, throttled to the power limit.
    pub fn board_power(&self) -> BoardPower {
        let (idle, max) = self.kind.power_mw();
        let range = u64::from(max - idle);
        let floor = if self.processes.is_empty() {
            u64::from(idle)
        } else {
            u64::from(idle) + range * CONTEXT_PERMILLE / 1000
        };
        power::board_power(
            floor,
            u64::from(max).saturating_sub(floor),
            u64::from(self.power_limit_mw).max(floor),
            &self.loads(),
        )
    }

    /// The power the board would draw now without a limit, mW.
    pub fn power_demand_mw(&self) -> u32 {
        u32::try_from(self.board_power().demand_mw).unwrap_or(u32::MAX)
    }

    /// Board power now, mW: the floor plus its processes' (throttled) powers.
    pub fn power_mw(&self) -> u32 {
        u32::try_from(self.board_power().total_mw()).unwrap_or(u32::MAX)
    }

    /// SM clock now, MHz: full speed unless the power limit holds the board back.
    pub fn sm_clock_mhz(&self) -> u32 {
        let max = self.kind.max_sm_clock_mhz();
        (f64::from(max) * self.board_power().clock_factor).round() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> Machine {
        Machine::new(MachineKind::DgxH100, 8, 4, "t", 1_000)
    }

    fn proc(pid: u32, sm: u32) -> Process {
        Process {
            pid,
            gpu_instance_id: None,
            compute_instance_id: None,
            used_memory_bytes: 1 << 30,
            sm_util_pct: sm,
            mem_util_pct: 0,
            env: BTreeMap::new(),
            started_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn gpu_instance_ids_are_reused_lowest_first() {
        let mut m = h100();
        let a = m.create_gpu_instance(0, 0, Some((0, 1))).unwrap();
        let b = m.create_gpu_instance(0, 0, Some((1, 1))).unwrap();
        assert_eq!((a, b), (1, 2));
        m.destroy_gpu_instance(0, a).unwrap();
        assert_eq!(m.create_gpu_instance(0, 0, Some((2, 1))).unwrap(), 1);
    }

    #[test]
    fn an_instance_with_a_process_is_in_use_until_it_exits() {
        let mut m = h100();
        let gi = m.create_gpu_instance(0, 2, Some((4, 4))).unwrap();
        m.create_compute_instance(0, gi, 2).unwrap();
        m.start_process(0, Some(gi), proc(42, 50)).unwrap();
        assert!(matches!(
            m.destroy_compute_instance(0, gi, 0),
            Err(SimError::InUse { .. })
        ));
        assert!(matches!(
            m.destroy_gpu_instance(0, gi),
            Err(SimError::InUse { .. })
        ));
        m.stop_process(42).unwrap();
        m.destroy_compute_instance(0, gi, 0).unwrap();
        m.destroy_gpu_instance(0, gi).unwrap();
    }

    #[test]
    fn occupied_placement_and_non_mig_gpus_are_refused() {
        let mut m = h100();
        m.create_gpu_instance(0, 2, Some((0, 4))).unwrap();
        assert!(matches!(
            m.create_gpu_instance(0, 0, Some((2, 1))),
            Err(SimError::Placement {
                err: PlacementError::Occupied { .. },
                ..
            })
        ));
        assert_eq!(
            m.create_gpu_instance(5, 0, None),
            Err(SimError::NotMigMode(5))
        );
        let mut mixed = Machine::new(MachineKind::Mixed, 8, 8, "t", 0);
        assert_eq!(
            mixed.create_gpu_instance(6, 0, None),
            Err(SimError::NoMig(6))
        );
    }

    #[test]
    fn energy_integrates_power_and_a_driver_reload_resets_it() {
        let mut m = h100();
        m.start_process(5, None, proc(7, 100)).unwrap();
        m.advance_to(11_000);
        // 700 W for 10 s on GPU 5; 70 W idle on GPU 6.
        assert_eq!(m.devices[5].energy_mj, 7_000_000);
        assert_eq!(m.devices[6].energy_mj, 700_000);
        m.reload_driver();
        assert_eq!(m.devices[5].energy_mj, 0);
        assert!(m.devices[5].processes.is_empty());
    }

    #[test]
    fn a_context_draws_above_idle_and_work_raises_power_linearly() {
        let mut m = h100();
        // H100: 70 W idle, 700 W max; a context alone costs 5% of the range.
        assert_eq!(m.devices[5].power_mw(), 70_000);
        m.start_process(5, None, proc(7, 0)).unwrap();
        assert_eq!(m.devices[5].power_mw(), 101_500);
        m.set_process_util(7, 50, 30).unwrap();
        assert_eq!(m.devices[5].power_mw(), 400_750);
        assert_eq!(m.devices[5].mem_util_pct(), 30);
        assert!(m.set_process_util(7, 101, 0).is_err());
        assert_eq!(m.set_process_util(8, 1, 0), Err(SimError::NoProcess(8)));
        m.stop_process(7).unwrap();
        assert_eq!(m.devices[5].power_mw(), 70_000);
    }

    #[test]
    fn gpm_gives_each_instances_mean_utilization_between_two_samples() {
        let mut m = h100();
        let gi = m.create_gpu_instance(0, 2, Some((4, 4))).unwrap();
        m.create_compute_instance(0, gi, 2).unwrap();
        let mut p = proc(42, 80);
        p.mem_util_pct = 40;
        m.start_process(0, Some(gi), p).unwrap();
        let a = m.gpm_sample(0, Some(gi)).unwrap();
        m.advance_to(2_000);
        m.set_process_util(42, 20, 10).unwrap();
        m.advance_to(3_000);
        let b = m.gpm_sample(0, Some(gi)).unwrap();
        // 1 s at 80%, 1 s at 20%.
        let r = gpm_metrics(&a, &b).unwrap();
        assert_eq!((r.sm_util_pct, r.dram_bw_util_pct), (50.0, 25.0));
        // Too close, other instances, the wrong order, no GPM, no MIG: refused.
        assert!(gpm_metrics(&b, &b).is_err());
        assert!(gpm_metrics(&b, &a).is_err());
        assert!(gpm_metrics(&a, &m.gpm_sample(0, None).unwrap()).is_err());
        assert_eq!(m.gpm_sample(5, Some(1)), Err(SimError::NotMigMode(5)));
        let a100 = Machine::new(MachineKind::DgxA100_40, 1, 1, "t", 0);
        assert_eq!(a100.gpm_sample(0, None), Err(SimError::NoGpm(0)));
    }

    #[test]
    fn uuids_of_one_machine_differ_from_their_first_digits() {
        let m = h100();
        let firsts: std::collections::BTreeSet<&str> =
            m.devices.iter().map(|d| &d.uuid[..12]).collect();
        assert_eq!(firsts.len(), 8);
    }

    #[test]
    fn power_limit_caps_power_and_lowers_clocks() {
        let mut m = h100();
        m.start_process(5, None, proc(7, 100)).unwrap();
        m.set_power_limit(5, 350_000).unwrap();
        assert_eq!(m.devices[5].power_mw(), 350_000);
        assert!(m.devices[5].sm_clock_mhz() < 1980);
        assert!(m.set_power_limit(5, 1).is_err());
    }

    #[test]
    fn each_process_keeps_its_true_energy_and_the_board_is_the_floor_plus_theirs() {
        let mut m = h100();
        let mut a = proc(1, 30);
        a.mem_util_pct = 90;
        a.workload = Workload::MemoryBound;
        let mut b = proc(2, 60);
        b.mem_util_pct = 5;
        b.workload = Workload::ComputeBound;
        m.start_process(5, None, a).unwrap();
        m.start_process(5, None, b).unwrap();
        let before = m.devices[5].energy_mj;
        m.advance_to(61_000);
        let d = &m.devices[5];
        let truth: Vec<u64> = d.processes.iter().map(|p| p.true_energy_mj).collect();
        // 60 s of the floor (70 W idle + 5% of the 630 W range) is 6 090 000 mJ.
        let floor_mj = 101_500 * 60;
        let board = d.energy_mj - before;
        assert!(
            board.abs_diff(floor_mj + truth[0] + truth[1]) <= 2,
            "{board} vs {truth:?}"
        );
        // The memory-bound process at half the SM% of the other draws more.
        assert!(truth[0] > truth[1], "{truth:?}");
        // The tensor counter moves only with tensor work; GPM sees it.
        assert_eq!(d.gpm.tensor_pct_ms, 0);
        m.set_process_activity(2, 60, 5, 40).unwrap();
        assert!(m.set_process_activity(2, 60, 5, 101).is_err());
        m.advance_to(62_000);
        assert_eq!(m.devices[5].gpm.tensor_pct_ms, 40 * 1_000);
    }

    #[test]
    fn a_mig_instance_process_draws_by_its_instance_size() {
        let mut m = h100();
        let gi = m.create_gpu_instance(0, 2, Some((4, 4))).unwrap();
        m.create_compute_instance(0, gi, 2).unwrap();
        let mut p = proc(42, 100);
        p.workload = Workload::ComputeBound;
        m.start_process(0, Some(gi), p).unwrap();
        let bp = m.devices[0].board_power();
        // A 3g instance: 3/7 of the SMs busy, 4/8 of the memory.
        let range = 598_500.0;
        let want = range * (0.60 * 3.0 / 7.0);
        assert!((bp.process_mw[0] as f64 - want).abs() < 2.0, "{bp:?}");
    }
}
