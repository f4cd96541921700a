//! MPS supervision (`[mps] supervise = true`): the agent runs one MPS control daemon per GPU that
//! holds shares.
//!
//! - Each daemon serves its GPU only (`CUDA_VISIBLE_DEVICES` = the GPU's UUID), with its own pipe
//!   folder `<pipe_dir>/<GPU UUID>` and log folder `<log_dir>/<GPU UUID>`; each share is handed its
//!   GPU's pipe folder (`CUDA_MPS_PIPE_DIRECTORY`) with its limits.
//! - The GPU is in EXCLUSIVE_PROCESS mode while it holds shares (the backend sets it, see
//!   [`crate::backend::nvml::NvmlBackend::with_exclusive_shares`]), so only the MPS server opens it,
//!   and back in DEFAULT when the last share goes.
//! - The daemons are checked every `check_interval_ms` ([`watch`]): one that died is started again;
//!   the daemon of a GPU that holds no share any more is told `quit`.
//! - After an agent restart, a daemon still running for a share taken back is kept; one whose GPU
//!   holds no share is stopped once the agent knows everything it owns.
//!
//! [`plan`] decides (pure); [`daemon`] runs the processes. [`Supervised`] wraps the backend so
//! that applying and clearing shares drives the supervisor.
//!
//! Not done: static SM partitioning (`-S`, `CUDA_MPS_SM_PARTITION`); per-client limits are set by
//! the client's environment (by agreement), not by `set_active_thread_percentage`.

pub mod daemon;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_core::inventory::{Gpu, MigInstance};
use greenslice_core::sample::NodeSample;
use tracing::{info, warn};

use crate::backend::{BackendError, GpuBackend, HostInfo, ProfilePlacements, SliceEnv, sim};
use plan::{Action, Daemon};

/// The daemons of this node and the GPUs that need one.
#[derive(Debug)]
pub struct Supervisor {
    control: daemon::Control,
    wanted: BTreeSet<String>,
    /// Whether every share the agent holds is known (daemons of other GPUs may be stopped).
    ownership_known: bool,
    /// Daemons started again after they died, since the agent started.
    pub restarts: u64,
}

/// A supervisor shared by the backend wrapper and the watch thread.
pub type Shared = Arc<Mutex<Supervisor>>;

impl Supervisor {
    pub fn new(control: daemon::Control) -> Self {
        Supervisor {
            control,
            wanted: BTreeSet::new(),
            ownership_known: false,
            restarts: 0,
        }
    }

    /// The pipe folder of `gpu`'s daemon, as its shares are given it.
    pub fn pipe_dir(&self, gpu: &str) -> PathBuf {
        self.control.pipe_dir(gpu)
    }

    /// The GPUs that need a daemon now; `ownership_known` once everything owned is known.
    pub fn set_wanted(&mut self, wanted: BTreeSet<String>, ownership_known: bool) {
        self.wanted = wanted;
        self.ownership_known |= ownership_known;
    }

    /// Looks at the daemons and starts, restarts or stops what [`plan::plan`] says. Returns the
    /// actions taken with their errors.
    pub fn reconcile(&mut self) -> Vec<(Action, Result<(), String>)> {
        let mut seen: BTreeMap<String, Daemon> = BTreeMap::new();
        let gpus = self.wanted.iter().cloned().chain(self.control.folders());
        for gpu in gpus {
            let d = self.control.observe(&gpu);
            seen.insert(gpu, d);
        }
        let actions = plan::plan(&self.wanted, &seen, self.ownership_known);
        actions
            .into_iter()
            .map(|a| {
                let r = self.act(&a);
                (a, r)
            })
            .collect()
    }

    fn act(&mut self, a: &Action) -> Result<(), String> {
        let r = match a {
            Action::Start { gpu } => self.control.start(gpu).map(|pid| {
                info!(gpu = %gpu, pid, pipe = %self.control.pipe_dir(gpu).display(), "MPS control daemon started");
            }),
            Action::Restart { gpu, dead_pid } => self.control.start(gpu).map(|pid| {
                self.restarts += 1;
                warn!(gpu = %gpu, dead_pid, pid, "MPS control daemon had died; started again");
            }),
            Action::Stop { gpu, pid } => self.control.stop(gpu, *pid).map(|()| {
                info!(gpu = %gpu, pid, "MPS control daemon stopped: the GPU holds no share");
            }),
            Action::Forget { gpu } => {
                self.control.forget(gpu);
                Ok(())
            }
        };
        if let Err(e) = &r {
            warn!(action = ?a, error = %e, "MPS supervision");
        }
        r
    }

    /// Sends control commands to `gpu`'s daemon (see [`daemon::Control::send`]).
    pub fn send(&self, gpu: &str, commands: &[&str]) -> Result<String, String> {
        self.control.send(gpu, commands)
    }
}

/// Checks the daemons every `interval` on a thread of its own, for the life of the process.
pub fn watch(shared: Shared, interval: Duration) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("mps-supervisor".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Ok(mut s) = shared.lock() else { return };
                s.reconcile();
            }
        })
        .expect("spawn the MPS supervisor thread")
}

/// A backend whose shares drive the [`Supervisor`]: a share's GPU gets a daemon before the share's
/// environment is handed out, with that daemon's pipe folder in it; the last share of a GPU going
/// stops its daemon.
pub struct Supervised {
    inner: Box<dyn GpuBackend>,
    sup: Shared,
    /// Slice id to the GPU of its share.
    shares: BTreeMap<String, String>,
}

impl Supervised {
    pub fn new(inner: Box<dyn GpuBackend>, sup: Shared) -> Self {
        Supervised {
            inner,
            sup,
            shares: BTreeMap::new(),
        }
    }

    fn sync(&self, ownership_known: bool) {
        let wanted = plan::wanted(self.shares.values().map(String::as_str));
        if let Ok(mut s) = self.sup.lock() {
            s.set_wanted(wanted, ownership_known);
            s.reconcile();
        }
    }
}

impl GpuBackend for Supervised {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn host(&self) -> HostInfo {
        self.inner.host()
    }
    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError> {
        self.inner.inventory()
    }
    fn sample(&mut self) -> Result<NodeSample, BackendError> {
        self.inner.sample()
    }
    fn compute_processes(
        &mut self,
        gpu: &str,
    ) -> Result<Vec<greenslice_core::sample::GpuProcess>, BackendError> {
        self.inner.compute_processes(gpu)
    }
    fn process_owner(&self, pid: u32) -> Option<String> {
        self.inner.process_owner(pid)
    }
    fn signal_process(
        &mut self,
        pid: u32,
        signal: crate::enforce::StopSignal,
    ) -> Result<(), BackendError> {
        self.inner.signal_process(pid, signal)
    }
    fn as_sim_mut(&mut self) -> Option<&mut sim::SimBackend> {
        self.inner.as_sim_mut()
    }
    fn mig_profiles(&mut self, gpu: &str) -> Result<Vec<ProfilePlacements>, BackendError> {
        self.inner.mig_profiles(gpu)
    }
    fn may_manage_mig(&self) -> bool {
        self.inner.may_manage_mig()
    }
    fn mps_available(&self) -> bool {
        self.inner.mps_available()
    }
    fn claim_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        self.inner.claim_mig(gpu, gpu_instance_id, slice_id)
    }
    fn release_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(), BackendError> {
        self.inner.release_mig(gpu, gpu_instance_id, slice_id)
    }
    fn create_mig(
        &mut self,
        gpu: &str,
        profile: &str,
        start: u8,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        self.inner.create_mig(gpu, profile, start, slice_id)
    }
    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError> {
        self.inner.destroy_mig(gpu, gpu_instance_id)
    }
    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        compute_fraction: f64,
        memory_bytes: u64,
    ) -> Result<SliceEnv, BackendError> {
        let mut env = self
            .inner
            .set_share(gpu, slice_id, compute_fraction, memory_bytes)?;
        self.shares.insert(slice_id.to_string(), gpu.to_string());
        self.sync(false);
        let pipe = self
            .sup
            .lock()
            .map(|s| s.pipe_dir(gpu))
            .map_err(|_| BackendError::Config("MPS supervisor poisoned".into()))?;
        env.insert(
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            pipe.to_string_lossy().into_owned(),
        );
        Ok(env)
    }
    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.inner.clear_share(gpu, slice_id)?;
        self.shares.remove(slice_id);
        self.sync(false);
        Ok(())
    }
    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        self.inner.assign_whole(gpu, slice_id)
    }
    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.inner.unassign_whole(gpu, slice_id)
    }
    fn adopt(
        &mut self,
        owned: &crate::checkpoint::Owned,
        complete: bool,
    ) -> Result<(), BackendError> {
        self.inner.adopt(owned, complete)?;
        self.shares = owned
            .shares
            .iter()
            .map(|s| (s.slice_id.clone(), s.gpu.clone()))
            .collect();
        self.sync(complete);
        Ok(())
    }
    fn ownership_rebuilt(&self) -> bool {
        self.inner.ownership_rebuilt()
    }
    fn adopt_from_ledger(
        &mut self,
        ledger: &[crate::checkpoint::restore::LedgerSlice],
    ) -> Result<bool, BackendError> {
        self.inner.adopt_from_ledger(ledger)
    }
    fn kubelet_grants(&self) -> Vec<crate::checkpoint::KubeletGrant> {
        self.inner.kubelet_grants()
    }
    fn record_kubelet_grants(
        &mut self,
        grants: &[crate::checkpoint::KubeletGrant],
    ) -> Result<(), BackendError> {
        self.inner.record_kubelet_grants(grants)
    }
}
