//! [`Checkpointed`]: any backend, with what it owns kept in the node checkpoint.
//!
//! Every change a command makes is written to the checkpoint before the command is answered, so
//! what the controller was told is applied is on disk. A MIG create is recorded as an intent before
//! the driver is asked (a crash after the driver's create and before the answer leaves an instance
//! only the intent names). At start ([`Checkpointed::open`]) the file is read and checked against
//! the hardware; a missing or refused file is rebuilt from the hardware and, once the controller
//! answers the registration, from its ledger ([`GpuBackend::adopt_from_ledger`]).

use greenslice_core::inventory::{Gpu, MigInstance};
use greenslice_core::sample::NodeSample;
use tracing::{info, warn};

use super::restore::{self, LedgerSlice, ProcessEvidence};
use super::store::CheckpointFile;
use super::{CheckpointError, KubeletGrant, MigIntent, NodeState, Owned};
use crate::backend::{BackendError, GpuBackend, HostInfo, ProfilePlacements, SliceEnv, sim};

/// A backend whose ownership is kept in a checkpoint file (see the module docs).
pub struct Checkpointed {
    inner: Box<dyn GpuBackend>,
    file: CheckpointFile,
    state: NodeState,
}

/// How the checkpoint was found at start, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Read and checked: `kept` things taken back, `dropped` whose hardware is gone.
    Restored { kept: usize, dropped: usize },
    /// Not usable (missing, or refused for the reason given): rebuilt from the hardware, `kept`
    /// things found there; the controller's ledger is asked at registration.
    Rebuilt { why: String, kept: usize },
}

/// The processes of `sample` whose environment names a slice.
fn evidence(b: &dyn GpuBackend, sample: &NodeSample) -> Vec<ProcessEvidence> {
    sample
        .gpus
        .iter()
        .flat_map(|g| {
            g.processes.iter().flatten().filter_map(|p| {
                Some(ProcessEvidence {
                    gpu: g.gpu_uuid.clone(),
                    gpu_instance_id: p.gpu_instance_id,
                    slice_id: b.process_owner(p.pid)?,
                })
            })
        })
        .collect()
}

impl Checkpointed {
    /// Reads the checkpoint of `node` from `file`, takes back what the hardware still holds, and
    /// writes the checkpoint again. A missing or refused file is logged, kept beside as
    /// `agent-checkpoint.refused` when refused, and rebuilt. Fails only when the hardware cannot
    /// be read or the checkpoint cannot be written.
    pub fn open(
        mut inner: Box<dyn GpuBackend>,
        file: CheckpointFile,
        node: &str,
    ) -> Result<(Self, Opened), BackendError> {
        let gpus = inner.inventory()?;
        let path = file.path();
        let (state, opened) = match file.read(node) {
            Ok(st) => {
                let r = restore::against_hardware(&st, &gpus);
                for d in &r.dropped {
                    warn!(checkpoint = %path.display(), "not taken back, its hardware is gone: {d}");
                }
                inner.adopt(&r.owned, true)?;
                let opened = Opened::Restored {
                    kept: r.owned.count(),
                    dropped: r.dropped.len(),
                };
                info!(checkpoint = %path.display(), ?opened, "node checkpoint read");
                let state = NodeState {
                    node: node.to_string(),
                    owned: r.owned,
                    intents: Vec::new(),
                    kubelet: st.kubelet,
                    dra: st.dra,
                    ledger_adoption_pending: st.ledger_adoption_pending,
                };
                (state, opened)
            }
            Err(e @ CheckpointError::Io { .. }) => return Err(e.into()),
            Err(e) => {
                match &e {
                    CheckpointError::Missing(_) => info!(
                        checkpoint = %path.display(),
                        "no node checkpoint (first start here, or it was removed): rebuilding from the hardware and the controller's ledger"
                    ),
                    _ => {
                        let kept = path.with_extension("refused");
                        let _ = std::fs::rename(&path, &kept);
                        warn!(
                            checkpoint = %path.display(),
                            kept_as = %kept.display(),
                            "node checkpoint refused: {e}; rebuilding from the hardware and the controller's ledger"
                        );
                    }
                }
                let sample = inner.sample()?;
                let found = evidence(inner.as_ref(), &sample);
                let owned = restore::from_hardware(&gpus, &found);
                // Not complete: the ledger gives back the rest at registration.
                inner.adopt(&owned, false)?;
                let opened = Opened::Rebuilt {
                    why: e.to_string(),
                    kept: owned.count(),
                };
                let state = NodeState {
                    node: node.to_string(),
                    owned,
                    ledger_adoption_pending: true,
                    ..Default::default()
                };
                (state, opened)
            }
        };
        let mut me = Checkpointed { inner, file, state };
        me.persist()?;
        Ok((me, opened))
    }

    /// What the checkpoint holds now.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// Records the backend's ownership and writes the file.
    fn persist(&mut self) -> Result<(), BackendError> {
        let gpus = self.inner.inventory()?;
        self.state.owned = Owned::from_inventory(&gpus);
        self.file.write(&self.state)?;
        Ok(())
    }

    /// Records a change the hardware took: a failed write fails the command (the controller does
    /// not count it as applied; what was made is an orphan its sweep removes).
    fn after<T>(&mut self, r: Result<T, BackendError>) -> Result<T, BackendError> {
        let v = r?;
        if let Err(e) = self.persist() {
            warn!(error = %e, "applied on the hardware but not recorded in the node checkpoint");
            return Err(e);
        }
        Ok(v)
    }
}

impl GpuBackend for Checkpointed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn host(&self) -> HostInfo {
        self.inner.host()
    }

    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError> {
        self.inner.inventory()
    }

    fn compute_processes(
        &mut self,
        gpu: &str,
    ) -> Result<Vec<greenslice_core::sample::GpuProcess>, BackendError> {
        self.inner.compute_processes(gpu)
    }

    fn sample(&mut self) -> Result<NodeSample, BackendError> {
        self.inner.sample()
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
        let r = self.inner.claim_mig(gpu, gpu_instance_id, slice_id);
        self.after(r)
    }

    fn release_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(), BackendError> {
        let r = self.inner.release_mig(gpu, gpu_instance_id, slice_id);
        self.after(r)
    }

    fn create_mig(
        &mut self,
        gpu: &str,
        profile: &str,
        start: u8,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        let intent = MigIntent {
            gpu: gpu.to_string(),
            profile: profile.to_string(),
            start,
            slice_id: slice_id.to_string(),
        };
        self.state.intents.push(intent.clone());
        if let Err(e) = self.file.write(&self.state) {
            self.state.intents.retain(|i| *i != intent);
            return Err(e.into());
        }
        let r = self.inner.create_mig(gpu, profile, start, slice_id);
        self.state.intents.retain(|i| *i != intent);
        match r {
            Ok(v) => self.after(Ok(v)),
            Err(e) => {
                if let Err(w) = self.persist() {
                    // The intent left in the file names no instance: dropped at the next start.
                    warn!(error = %w, "could not clear a failed create from the node checkpoint");
                }
                Err(e)
            }
        }
    }

    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError> {
        let r = self.inner.destroy_mig(gpu, gpu_instance_id);
        self.after(r)
    }

    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        compute_fraction: f64,
        memory_bytes: u64,
    ) -> Result<SliceEnv, BackendError> {
        let r = self
            .inner
            .set_share(gpu, slice_id, compute_fraction, memory_bytes);
        self.after(r)
    }

    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        let r = self.inner.clear_share(gpu, slice_id);
        self.after(r)
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        let r = self.inner.assign_whole(gpu, slice_id);
        self.after(r)
    }

    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        let r = self.inner.unassign_whole(gpu, slice_id);
        self.after(r)
    }

    fn adopt(&mut self, owned: &Owned, complete: bool) -> Result<(), BackendError> {
        let r = self.inner.adopt(owned, complete);
        self.after(r)
    }

    fn ownership_rebuilt(&self) -> bool {
        self.state.ledger_adoption_pending
    }

    fn kubelet_grants(&self) -> Vec<KubeletGrant> {
        self.state.kubelet.clone()
    }

    fn record_kubelet_grants(&mut self, grants: &[KubeletGrant]) -> Result<(), BackendError> {
        let before = std::mem::replace(&mut self.state.kubelet, grants.to_vec());
        if let Err(e) = self.file.write(&self.state) {
            self.state.kubelet = before;
            return Err(e.into());
        }
        Ok(())
    }

    fn dra_claims(&self) -> Vec<super::PreparedClaim> {
        self.state.dra.clone()
    }

    fn record_dra_claims(&mut self, claims: &[super::PreparedClaim]) -> Result<(), BackendError> {
        let before = std::mem::replace(&mut self.state.dra, claims.to_vec());
        if let Err(e) = self.file.write(&self.state) {
            self.state.dra = before;
            return Err(e.into());
        }
        Ok(())
    }

    fn adopt_from_ledger(&mut self, ledger: &[LedgerSlice]) -> Result<bool, BackendError> {
        if !self.state.ledger_adoption_pending {
            return Ok(false);
        }
        let gpus = self.inner.inventory()?;
        let r = restore::from_ledger(&Owned::from_inventory(&gpus), &gpus, ledger);
        for d in &r.dropped {
            warn!("ledger slice not taken back, its hardware is gone: {d}");
        }
        self.inner.adopt(&r.owned, true)?;
        self.state.ledger_adoption_pending = false;
        self.persist()?;
        info!(
            taken_back = r.owned.count(),
            dropped = r.dropped.len(),
            "node checkpoint rebuilt with the controller's ledger"
        );
        Ok(true)
    }
}
