//! GPU backends: the one seam between the agent and the hardware.
//!
//! [`GpuBackend`] is implemented by the NVML backend (real NVIDIA GPUs) and the simulator (everywhere
//! else, and in tests). The agent talks only to this trait.

// kill(2): the one unsafe call outside NVML, with its SAFETY note.
pub mod nvml;
pub mod readonly;
#[allow(unsafe_code)]
pub mod signal;
pub mod sim;

use std::collections::BTreeMap;

use greenslice_core::inventory::{Gpu, MigInstance};
use greenslice_core::sample::NodeSample;
use serde::Serialize;
use thiserror::Error;

/// What went wrong in a backend. Messages are shown to operators and sent to the controller.
#[derive(Debug, Error)]
pub enum BackendError {
    /// No NVIDIA driver / NVML library (libnvidia-ml.so.1) on this machine.
    #[error(
        "the NVIDIA driver library libnvidia-ml.so.1 could not be loaded ({0}); install the NVIDIA driver, or run on simulated GPUs with --backend sim"
    )]
    NoDriver(String),
    #[error("unknown GPU {0}")]
    UnknownGpu(String),
    #[error(transparent)]
    Mig(#[from] greenslice_core::mig::MigError),
    #[error("GPU {gpu} is not in MIG mode")]
    NotMigMode { gpu: String },
    #[error("GPU {gpu} is in MIG mode; whole-GPU and share slices need MIG mode off")]
    MigMode { gpu: String },
    #[error("no MIG instance {gi} on GPU {gpu}")]
    NoSuchInstance { gpu: String, gi: u32 },
    #[error("GPU {gpu} has no room: {why}")]
    NoRoom { gpu: String, why: String },
    #[error("slice {slice} holds nothing on GPU {gpu}")]
    NoSuchSlice { gpu: String, slice: String },
    #[error("MIG changes are disabled (set mig.manage = true in the agent config to allow them)")]
    ReadOnly,
    #[error("MIG instance {gi} on GPU {gpu} is owned by {owner}")]
    InstanceOwned { gpu: String, gi: u32, owner: String },
    #[error(
        "this agent creates its own MIG instances and lends none (claims need mig.manage = false)"
    )]
    ClaimUnsupported,
    #[error("NVML call {call} failed: {msg}")]
    Nvml { call: &'static str, msg: String },
    /// The simulated hardware (gpu-sim) refused a change, as a driver would.
    #[error("simulated GPU {gpu}: {err}")]
    Sim { gpu: String, err: gpu_sim::SimError },
    #[error("invalid backend configuration: {0}")]
    Config(String),
    /// The node checkpoint could not be written: the change is applied on the hardware but not
    /// recorded, so it is not acknowledged.
    #[error("node checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A signal to a slice's process could not be sent (the agent may lack hostPID or the right
    /// to signal it).
    #[error("cannot signal process {pid}: {msg}")]
    Signal { pid: u32, msg: String },
    /// The slice's processes still run on the GPU (being stopped): the teardown waits for them.
    #[error("in use: slice {slice} still has processes on {gpu} (pids {pids:?}): {what}")]
    InUse {
        gpu: String,
        slice: String,
        pids: Vec<u32>,
        what: String,
    },
}

/// The host a backend runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// CPU capacity in milli-cores.
    pub cpu_milli: u64,
    /// Host memory in bytes.
    pub memory_bytes: u64,
}

/// Where instances of one MIG profile may start on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfilePlacements {
    /// Profile name, e.g. "3g.40gb".
    pub profile: String,
    /// NVML profile id (the id nvidia-smi prints).
    pub profile_id: u32,
    /// Memory slices one instance covers.
    pub size: u8,
    /// Most instances of the profile on the GPU.
    pub max_instances: u32,
    /// Legal first memory slices, ascending.
    pub starts: Vec<u8>,
    /// "driver" (asked of the driver: NVML, or the simulated machine's) or "table" (greenslice's
    /// profile table).
    pub source: &'static str,
}

/// The profile table's placements for `model`.
pub fn table_placements(model: &greenslice_core::gpu::GpuModel) -> Vec<ProfilePlacements> {
    greenslice_core::mig::profiles(model)
        .iter()
        .map(|p| ProfilePlacements {
            profile: p.name.to_string(),
            profile_id: p.smi_id,
            size: p.size,
            max_instances: u32::from(p.max_instances),
            starts: p.starts.to_vec(),
            source: "table",
        })
        .collect()
}

/// GPM samples closer than this are not compared (NVML needs more than 100 ms between them); the
/// first sample of a GPU instance, and the first after its GPU's layout changed, have nothing to be
/// compared with, so they report no activity for it.
pub const GPM_MIN_INTERVAL_MS: u64 = 150;

/// Environment a process needs to use an applied slice (NVIDIA_VISIBLE_DEVICES, MPS limits...).
pub type SliceEnv = BTreeMap<String, String>;

/// The hardware seam. Methods are synchronous: NVML is a blocking C library and the simulator is
/// in-memory; the agent calls them from a blocking-safe context.
pub trait GpuBackend: Send {
    /// "sim" or "nvml".
    fn kind(&self) -> &'static str;
    /// Host CPU and memory.
    fn host(&self) -> HostInfo;
    /// Every GPU with its actual MIG instances, shares and whole-GPU holder.
    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError>;
    /// Measures every GPU now: utilization, processes, power (mW) and the energy counter (mJ).
    /// Fields the device does not give are `None` and listed in `GpuSample::unsupported`.
    fn sample(&mut self) -> Result<NodeSample, BackendError>;
    /// The compute processes on `gpu` now (with their MIG instance in MIG mode), without taking a
    /// sample: sampling keeps state between passes (per-process utilization, GPM) that a second
    /// reader would disturb.
    fn compute_processes(
        &mut self,
        gpu: &str,
    ) -> Result<Vec<greenslice_core::sample::GpuProcess>, BackendError>;
    /// The slice that launched process `pid`, if known. By default read from the process's
    /// environment (`GREENSLICE_SLICE_ID`, which every slice's environment carries); this needs the
    /// agent to see the host's processes (hostPID in Kubernetes).
    fn process_owner(&self, pid: u32) -> Option<String> {
        slice_id_from_environ(&std::fs::read(format!("/proc/{pid}/environ")).ok()?)
    }
    /// Sends `signal` to a slice's process `pid` (limit enforcement, reclaim). By default a real
    /// signal (kill(2)), which needs the agent to see and be allowed to signal the host's
    /// processes (hostPID and root in Kubernetes). A process already gone is not an error.
    fn signal_process(
        &mut self,
        pid: u32,
        signal: crate::enforce::StopSignal,
    ) -> Result<(), BackendError> {
        signal::send(pid, signal)
    }
    /// The simulator behind this backend, if it is one: lets a demo, replay or test that holds a
    /// `Box<dyn GpuBackend>` set workloads, reload the driver or mark GPUs unhealthy.
    fn as_sim_mut(&mut self) -> Option<&mut sim::SimBackend> {
        None
    }
    /// The MIG profiles of `gpu` and their legal starts. By default from the profile table; the NVML
    /// backend asks the driver (nvmlDeviceGetGpuInstancePossiblePlacements_v2).
    fn mig_profiles(&mut self, gpu: &str) -> Result<Vec<ProfilePlacements>, BackendError> {
        let g = self
            .inventory()?
            .into_iter()
            .find(|g| g.uuid == gpu)
            .ok_or_else(|| BackendError::UnknownGpu(gpu.to_string()))?;
        Ok(table_placements(&g.model))
    }
    /// Whether the backend may create and destroy MIG instances. By default yes: the simulator's
    /// hardware is simulated. The NVML backend answers its `mig.manage`, [`readonly::ReadOnlyMig`]
    /// no. Reported to the controller, which then places new instances only where they may be made.
    fn may_manage_mig(&self) -> bool {
        true
    }
    /// Whether MPS is available, so share limits are enforced. By default yes (the simulator
    /// simulates MPS); the NVML backend answers what the agent found or was configured with.
    fn mps_available(&self) -> bool {
        true
    }
    /// Lends the existing GPU instance `gpu_instance_id`, which no slice owns, to `slice_id`, without
    /// changing the layout. Only backends that may not manage MIG lend ([`readonly::ReadOnlyMig`]).
    fn claim_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        let _ = (gpu, gpu_instance_id, slice_id);
        Err(BackendError::ClaimUnsupported)
    }
    /// Gives a claimed instance back: it stays, owned by no slice.
    fn release_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(), BackendError> {
        let _ = (gpu, gpu_instance_id, slice_id);
        Err(BackendError::ClaimUnsupported)
    }
    /// Creates a GPU instance (and its full compute instance) of `profile` at `start` for `slice_id`.
    fn create_mig(
        &mut self,
        gpu: &str,
        profile: &str,
        start: u8,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError>;
    /// Destroys a GPU instance and its compute instances.
    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError>;
    /// Applies a time-sliced share with enforced limits.
    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        compute_fraction: f64,
        memory_bytes: u64,
    ) -> Result<SliceEnv, BackendError>;
    /// Removes a share.
    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError>;
    /// Dedicates a whole GPU to a slice.
    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError>;
    /// Frees a whole GPU.
    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError>;
    /// Takes back what the agent owned before it restarted, already checked against the hardware
    /// ([`crate::checkpoint::restore`]): MIG instance owners (lendings, behind
    /// [`readonly::ReadOnlyMig`]), shares with their limits, whole-GPU holders. Replaces what the
    /// backend held; the MIG layout is not changed. `complete`: `owned` is everything the agent
    /// owns (a checkpoint read, or the controller's ledger answered), so hardware settings no
    /// slice needs any more go back to their defaults (a whole GPU's compute mode set by an
    /// assignment whose record a crash lost); false while a rebuild waits for the ledger.
    fn adopt(
        &mut self,
        owned: &crate::checkpoint::Owned,
        complete: bool,
    ) -> Result<(), BackendError>;
    /// Whether the agent has no trustworthy record of what it owns and asks the controller's
    /// ledger (`Register.ownership_rebuilt`). Only [`crate::checkpoint::backend::Checkpointed`]
    /// keeps a record.
    fn ownership_rebuilt(&self) -> bool {
        false
    }
    /// Takes back the ledger's slices the hardware still holds, after a registration that said
    /// [`GpuBackend::ownership_rebuilt`]. Returns whether the ownership changed.
    fn adopt_from_ledger(
        &mut self,
        ledger: &[crate::checkpoint::restore::LedgerSlice],
    ) -> Result<bool, BackendError> {
        let _ = ledger;
        Ok(false)
    }
    /// The kubelet grants kept in the node checkpoint ([`crate::kubelet::grants`]); none for a
    /// backend without one.
    fn kubelet_grants(&self) -> Vec<crate::checkpoint::KubeletGrant> {
        Vec::new()
    }
    /// Records the kubelet grants in the node checkpoint before Allocate answers; a backend
    /// without a checkpoint keeps them nowhere (they live in the agent's memory).
    fn record_kubelet_grants(
        &mut self,
        grants: &[crate::checkpoint::KubeletGrant],
    ) -> Result<(), BackendError> {
        let _ = grants;
        Ok(())
    }
    /// The ResourceClaims prepared through DRA kept in the node checkpoint ([`crate::dra`]); none
    /// for a backend without one.
    fn dra_claims(&self) -> Vec<crate::checkpoint::PreparedClaim> {
        Vec::new()
    }
    /// Records the prepared ResourceClaims in the node checkpoint before the kubelet is answered;
    /// a backend without a checkpoint keeps them nowhere (they live in the agent's memory).
    fn record_dra_claims(
        &mut self,
        claims: &[crate::checkpoint::PreparedClaim],
    ) -> Result<(), BackendError> {
        let _ = claims;
        Ok(())
    }
}

/// Environment for MPS-enforced shares: the thread percentage and the pinned memory limit.
pub fn share_env(
    gpu_uuid: &str,
    compute_fraction: f64,
    memory_bytes: u64,
    mps_pipe_dir: &str,
) -> SliceEnv {
    let pct = ((compute_fraction * 100.0).ceil() as u32).clamp(1, 100);
    let mib = memory_bytes.div_ceil(1 << 20);
    SliceEnv::from([
        ("NVIDIA_VISIBLE_DEVICES".to_string(), gpu_uuid.to_string()),
        (
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_string(),
            pct.to_string(),
        ),
        (
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".to_string(),
            format!("0={mib}M"),
        ),
        (
            "CUDA_MPS_PIPE_DIRECTORY".to_string(),
            mps_pipe_dir.to_string(),
        ),
    ])
}

/// Whether a share of `fraction` and `memory_bytes` fits on `gpu` beside the shares `others`:
/// not on a GPU held whole, compute within the whole GPU (in milli-GPU, as the controller counts),
/// memory within `total_bytes`. One rule for every backend, so they refuse alike.
pub fn share_fits(
    gpu: &str,
    held_whole: bool,
    others: &[&greenslice_core::inventory::Share],
    fraction: f64,
    memory_bytes: u64,
    total_bytes: u64,
) -> Result<(), BackendError> {
    if held_whole {
        return Err(BackendError::NoRoom {
            gpu: gpu.to_string(),
            why: "held whole by another slice".into(),
        });
    }
    let used_milli: u32 = others
        .iter()
        .map(|s| greenslice_core::slice::share_milli(s.compute_fraction))
        .sum();
    let used_mem: u64 = others.iter().map(|s| s.memory_bytes).sum();
    if used_milli + greenslice_core::slice::share_milli(fraction) > 1000
        || used_mem.saturating_add(memory_bytes) > total_bytes
    {
        return Err(BackendError::NoRoom {
            gpu: gpu.to_string(),
            why: format!("{used_milli} milli and {used_mem} bytes already shared"),
        });
    }
    Ok(())
}

/// Whether `slice_id` may hold `gpu` whole: nobody else holds it whole and it holds no share
/// (`holder` is its current whole holder, `shares` how many shares it holds).
pub fn whole_fits(
    gpu: &str,
    holder: Option<&str>,
    shares: usize,
    slice_id: &str,
) -> Result<(), BackendError> {
    match holder {
        Some(s) if s == slice_id => Ok(()),
        Some(s) => Err(BackendError::NoRoom {
            gpu: gpu.to_string(),
            why: format!("held whole by {s}"),
        }),
        None if shares > 0 => Err(BackendError::NoRoom {
            gpu: gpu.to_string(),
            why: format!("{shares} shares applied"),
        }),
        None => Ok(()),
    }
}

/// Environment variable naming the slice a process belongs to.
pub const SLICE_ID_ENV: &str = "GREENSLICE_SLICE_ID";

/// Finds `GREENSLICE_SLICE_ID` in a NUL-separated environment block (as in /proc/PID/environ).
pub fn slice_id_from_environ(environ: &[u8]) -> Option<String> {
    let prefix = format!("{SLICE_ID_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty() && v.len() <= 253)
        .map(str::to_string)
}

/// Whether an executable `name` is in one of the folders of `path` (a PATH value).
pub fn on_path(name: &str, path: &std::ffi::OsStr) -> bool {
    std::env::split_paths(path).any(|dir| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    })
}

/// The MPS control daemon's executable, looked for on PATH.
pub const MPS_CONTROL: &str = "nvidia-cuda-mps-control";

/// Environment for a device (a GPU or MIG UUID).
pub fn device_env(uuid: &str) -> SliceEnv {
    SliceEnv::from([("NVIDIA_VISIBLE_DEVICES".to_string(), uuid.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mps_control_daemon_is_found_only_as_an_executable_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert!(!on_path(MPS_CONTROL, &path));
        let exe = b.path().join(MPS_CONTROL);
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        assert!(!on_path(MPS_CONTROL, &path), "not executable");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(on_path(MPS_CONTROL, &path));
        assert!(!on_path(MPS_CONTROL, std::ffi::OsStr::new("")));
    }
}
