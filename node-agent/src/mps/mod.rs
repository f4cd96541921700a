//! MPS supervision (`[mps] supervise`, on by default): the agent runs one MPS control daemon per GPU
//! that holds shares, and one for each of the device plugin's share GPUs for the agent's whole life
//! ([`Supervised::with_share_gpus`]).
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
//! - Each daemon's defaults, for a client that sets no limits of its own, are the tightest of its
//!   GPU's shares ([`plan::defaults`]), told again to a daemon started again.
//!
//! Not done: static SM partitioning (`-S`, `CUDA_MPS_SM_PARTITION`); a share's own limits are set by
//! its environment (by agreement), not by `set_active_thread_percentage` on a server of its own.

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
    /// The defaults each wanted GPU's daemon is to have.
    defaults: BTreeMap<String, plan::Defaults>,
    /// The defaults each running daemon was told, by GPU.
    told: BTreeMap<String, plan::Defaults>,
    /// Whether every share the agent holds is known (daemons of other GPUs may be stopped).
    ownership_known: bool,
    /// GPUs wanted at some time since the agent started.
    was_wanted: BTreeSet<String>,
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
            defaults: BTreeMap::new(),
            told: BTreeMap::new(),
            ownership_known: false,
            was_wanted: BTreeSet::new(),
            restarts: 0,
        }
    }

    /// The pipe folder of `gpu`'s daemon, as its shares are given it.
    pub fn pipe_dir(&self, gpu: &str) -> PathBuf {
        self.control.pipe_dir(gpu)
    }

    /// The GPUs that need a daemon now, with the defaults their daemons are to have;
    /// `ownership_known` once everything owned is known.
    pub fn set_wanted(
        &mut self,
        defaults: BTreeMap<String, plan::Defaults>,
        ownership_known: bool,
    ) {
        let wanted: BTreeSet<String> = defaults.keys().cloned().collect();
        self.defaults = defaults;
        self.was_wanted.extend(wanted.iter().cloned());
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
        let actions = plan::plan(&self.wanted, &seen, self.ownership_known, &self.was_wanted);
        let done = actions
            .into_iter()
            .map(|a| {
                let r = self.act(&a);
                (a, r)
            })
            .collect();
        self.tell_defaults();
        done
    }

    /// Tells each running daemon the defaults it is to have, where it was not told them yet (a
    /// daemon started again has forgotten them).
    fn tell_defaults(&mut self) {
        let due: Vec<(String, plan::Defaults)> = self
            .defaults
            .iter()
            .filter(|(g, d)| self.told.get(*g) != Some(d))
            .map(|(g, d)| (g.clone(), *d))
            .collect();
        for (gpu, d) in due {
            if !matches!(self.control.observe(&gpu), Daemon::Alive(_)) {
                continue;
            }
            let cmds = plan::default_commands(&d);
            let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
            match self.control.send(&gpu, &cmds) {
                Ok(_) => {
                    self.told.insert(gpu, d);
                }
                Err(e) => warn!(gpu = %gpu, error = %e, "cannot set the MPS daemon's defaults"),
            }
        }
    }

    fn act(&mut self, a: &Action) -> Result<(), String> {
        let r = match a {
            Action::Start { gpu } => self.control.start(gpu).map(|pid| {
                self.told.remove(gpu);
                info!(gpu = %gpu, pid, pipe = %self.control.pipe_dir(gpu).display(), "MPS control daemon started");
            }),
            Action::Restart { gpu, dead_pid } => self.control.start(gpu).map(|pid| {
                self.told.remove(gpu);
                self.restarts += 1;
                warn!(gpu = %gpu, dead_pid, pid, "MPS control daemon had died; started again");
            }),
            Action::Stop { gpu, pid } => self.control.stop(gpu, *pid).map(|()| {
                self.told.remove(gpu);
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
    /// Slice id to its share: GPU, compute fraction, memory bytes.
    shares: BTreeMap<String, (String, f64, u64)>,
    /// The device plugin's share GPUs (see [`Supervised::with_share_gpus`]): GPU to the limits of
    /// the smallest share a pod can hold there (compute fraction, memory bytes).
    share_gpus: BTreeMap<String, (f64, u64)>,
}

impl Supervised {
    pub fn new(inner: Box<dyn GpuBackend>, sup: Shared) -> Self {
        Supervised {
            inner,
            sup,
            shares: BTreeMap::new(),
            share_gpus: BTreeMap::new(),
        }
    }

    /// GPUs the device plugin offers as `greenslice.io/gpu-share` units, given as (UUID, memory
    /// bytes): each keeps a daemon for the life of the agent, since a pod may be given units there
    /// at any time and Allocate hands it the GPU's pipe folder. Pod shares do not pass through the
    /// agent's backend, so such a daemon's defaults are the smallest share a pod can hold there
    /// (one unit), or tighter where a tenant share is: a container that drops the environment
    /// Allocate gave it gains nothing. The daemons start at once.
    pub fn with_share_gpus(mut self, gpus: &[(String, u64)]) -> Self {
        use crate::kubelet::devices::{SHARE_UNITS_PER_GPU, share_memory_bytes};
        self.share_gpus = gpus
            .iter()
            .map(|(g, mem)| {
                let unit = (
                    1.0 / f64::from(SHARE_UNITS_PER_GPU),
                    share_memory_bytes(*mem, 1),
                );
                (g.clone(), unit)
            })
            .collect();
        self.sync(false);
        self
    }

    fn sync(&self, ownership_known: bool) {
        let pinned = self
            .share_gpus
            .iter()
            .map(|(g, (f, m))| (g.as_str(), *f, *m));
        let defaults = plan::defaults(
            self.shares
                .values()
                .map(|(g, f, m)| (g.as_str(), *f, *m))
                .chain(pinned),
        );
        if let Ok(mut s) = self.sup.lock() {
            s.set_wanted(defaults, ownership_known);
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
        self.shares.insert(
            slice_id.to_string(),
            (gpu.to_string(), compute_fraction, memory_bytes),
        );
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
            .map(|s| {
                (
                    s.slice_id.clone(),
                    (s.gpu.clone(), s.compute_fraction, s.memory_bytes),
                )
            })
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
    fn dra_claims(&self) -> Vec<crate::checkpoint::PreparedClaim> {
        self.inner.dra_claims()
    }
    fn record_dra_claims(
        &mut self,
        claims: &[crate::checkpoint::PreparedClaim],
    ) -> Result<(), BackendError> {
        self.inner.record_dra_claims(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::{SimBackend, SimConfig};
    use std::os::unix::fs::PermissionsExt;

    /// A fake control binary in `sh` (not the gpu-sim stand-in, which the agent's package does not
    /// build): `-d` leaves a `sleep` running as the daemon and writes its pid file; the client
    /// appends each command to `commands` in the pipe folder and kills the daemon on `quit`.
    const FAKE: &str = r#"#!/bin/sh
p="$CUDA_MPS_PIPE_DIRECTORY"
if [ "$1" = "-d" ]; then
  mkdir -p "$p"
  sleep 600 </dev/null >/dev/null 2>&1 &
  echo $! > "$p/nvidia-cuda-mps-control.pid"
  echo "$CUDA_VISIBLE_DEVICES" > "$p/devices"
  exit 0
fi
[ -f "$p/nvidia-cuda-mps-control.pid" ] || { echo "no daemon" >&2; exit 1; }
while read -r c; do
  echo "$c" >> "$p/commands"
  if [ "$c" = quit ]; then kill "$(cat "$p/nvidia-cuda-mps-control.pid")"; rm -f "$p/nvidia-cuda-mps-control.pid"; fi
done
"#;

    fn supervised(dir: &std::path::Path) -> (Supervised, Shared, String) {
        let bin = dir.join("fake-mps-control");
        std::fs::write(&bin, FAKE).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sup = Arc::new(Mutex::new(Supervisor::new(daemon::Control {
            binary: bin,
            pipe_base: dir.join("pipes"),
            log_base: dir.join("logs"),
        })));
        let mut c = SimConfig::new("n1", "dgx-h100".parse().unwrap());
        c.mig_gpus = 0;
        let mut inner = SimBackend::new(c).unwrap();
        let gpu = inner.inventory().unwrap()[0].uuid.clone();
        (Supervised::new(Box::new(inner), sup.clone()), sup, gpu)
    }

    fn observe(sup: &Shared, gpu: &str) -> Daemon {
        sup.lock().unwrap().control.observe(gpu)
    }

    #[test]
    fn two_shares_of_a_gpu_share_one_daemon_which_goes_with_the_last() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut b, sup, gpu) = supervised(tmp.path());
        let pipe = tmp.path().join("pipes").join(&gpu);
        let env = b.set_share(&gpu, "s-1", 0.25, 1 << 30).unwrap();
        assert_eq!(env["CUDA_MPS_PIPE_DIRECTORY"], pipe.to_string_lossy());
        let Daemon::Alive(pid) = observe(&sup, &gpu) else {
            panic!("no daemon for the share's GPU");
        };
        assert_eq!(
            std::fs::read_to_string(pipe.join("devices"))
                .unwrap()
                .trim(),
            gpu,
            "the daemon serves its GPU only"
        );
        // A tighter share: the daemon's defaults (for a client that sets none) follow it.
        b.set_share(&gpu, "s-2", 0.1, 512 << 20).unwrap();
        assert_eq!(
            observe(&sup, &gpu),
            Daemon::Alive(pid),
            "one daemon per GPU"
        );
        b.clear_share(&gpu, "s-1").unwrap();
        assert_eq!(observe(&sup, &gpu), Daemon::Alive(pid), "a share is left");
        b.clear_share(&gpu, "s-2").unwrap();
        assert_eq!(observe(&sup, &gpu), Daemon::Absent);
        assert_eq!(
            std::fs::read_to_string(pipe.join("commands")).unwrap(),
            "set_default_active_thread_percentage 25\n\
             set_default_device_pinned_mem_limit 0 1024M\n\
             set_default_active_thread_percentage 10\n\
             set_default_device_pinned_mem_limit 0 512M\n\
             quit\n"
        );
        assert!(!daemon::process_runs(pid));
    }

    #[test]
    fn a_killed_daemon_is_started_again_at_the_next_check() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut b, sup, gpu) = supervised(tmp.path());
        b.set_share(&gpu, "s-1", 0.5, 1 << 30).unwrap();
        let Daemon::Alive(pid) = observe(&sup, &gpu) else {
            panic!("no daemon");
        };
        crate::backend::signal::send(pid, crate::enforce::StopSignal::Kill).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while daemon::process_runs(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(observe(&sup, &gpu), Daemon::Dead(pid));
        let done = sup.lock().unwrap().reconcile();
        assert!(
            matches!(&done[..], [(Action::Restart { dead_pid, .. }, Ok(()))] if *dead_pid == pid),
            "{done:?}"
        );
        assert!(matches!(observe(&sup, &gpu), Daemon::Alive(p) if p != pid));
        assert_eq!(sup.lock().unwrap().restarts, 1);
        b.clear_share(&gpu, "s-1").unwrap();
        assert_eq!(observe(&sup, &gpu), Daemon::Absent);
    }

    #[test]
    fn a_pid_file_naming_another_live_process_is_a_dead_daemon_and_is_restarted() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut b, sup, gpu) = supervised(tmp.path());
        let pipe = tmp.path().join("pipes").join(&gpu);
        std::fs::create_dir_all(&pipe).unwrap();
        // The daemon died and its pid went to another process (this test's).
        let me = std::process::id();
        std::fs::write(pipe.join(daemon::PID_FILE), format!("{me}\n")).unwrap();
        assert_eq!(observe(&sup, &gpu), Daemon::Dead(me));
        b.set_share(&gpu, "s-1", 0.5, 1 << 30).unwrap();
        assert!(matches!(observe(&sup, &gpu), Daemon::Alive(p) if p != me));
        b.clear_share(&gpu, "s-1").unwrap();
        assert_eq!(observe(&sup, &gpu), Daemon::Absent);
    }

    #[test]
    fn without_the_binary_the_share_is_applied_and_the_start_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, sup, gpu) = supervised(tmp.path());
        sup.lock().unwrap().control.binary = tmp.path().join("missing");
        let mut b = b;
        assert!(b.set_share(&gpu, "s-1", 0.5, 1 << 30).is_ok());
        let done = sup.lock().unwrap().reconcile();
        assert!(
            matches!(&done[..], [(Action::Start { .. }, Err(e))] if e.contains("cannot run")),
            "{done:?}"
        );
        assert!(!daemon::found(&tmp.path().join("missing")));
    }
}
