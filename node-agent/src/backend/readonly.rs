//! `mig.manage = false` for any backend: MIG layouts are left as they are.
//!
//! [`ReadOnlyMig`] wraps a backend and refuses to create or destroy MIG instances
//! ([`BackendError::ReadOnly`]). Instead it lends existing instances that no slice owns (made by an
//! operator, or left free) to slices: [`GpuBackend::claim_mig`] records the owner and
//! [`GpuBackend::release_mig`] forgets it, and [`GpuBackend::inventory`] shows each lent instance
//! with its slice, so usage is attributed to it. Lendings are kept in the node checkpoint
//! (`crate::checkpoint`) and taken back after an agent restart ([`GpuBackend::adopt`]); an agent
//! without a checkpoint reports them free, and the controller, which recorded the instance id with
//! the slice, lends them again.

use std::collections::BTreeMap;

use greenslice_core::inventory::{Gpu, MigInstance};
use greenslice_core::sample::NodeSample;

use super::{BackendError, GpuBackend, HostInfo, ProfilePlacements, SliceEnv, device_env, sim};

/// A backend whose MIG layout is not changed (see the module docs).
pub struct ReadOnlyMig {
    inner: Box<dyn GpuBackend>,
    /// (GPU UUID, GPU instance id) to the slice it is lent to.
    lent: BTreeMap<(String, u32), String>,
}

impl ReadOnlyMig {
    pub fn new(inner: Box<dyn GpuBackend>) -> Self {
        ReadOnlyMig {
            inner,
            lent: BTreeMap::new(),
        }
    }

    /// The owner the hardware (or the wrapped backend) names, if any.
    fn hardware_owner(i: &MigInstance) -> Option<&str> {
        i.slice_id.as_deref().filter(|s| !s.is_empty())
    }
}

impl GpuBackend for ReadOnlyMig {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn host(&self) -> HostInfo {
        self.inner.host()
    }

    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError> {
        let mut gpus = self.inner.inventory()?;
        // Forget lendings of instances that are gone (destroyed by an operator).
        self.lent.retain(|(g, gi), _| {
            gpus.iter()
                .any(|x| x.uuid == *g && x.mig_instances.iter().any(|m| m.gpu_instance_id == *gi))
        });
        for g in &mut gpus {
            for i in &mut g.mig_instances {
                if Self::hardware_owner(i).is_none() {
                    i.slice_id = self.lent.get(&(g.uuid.clone(), i.gpu_instance_id)).cloned();
                }
            }
        }
        Ok(gpus)
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
        false
    }

    fn mps_available(&self) -> bool {
        self.inner.mps_available()
    }

    fn adopt(
        &mut self,
        owned: &crate::checkpoint::Owned,
        complete: bool,
    ) -> Result<(), BackendError> {
        // This wrapper creates nothing: every owned instance is lent.
        self.lent = owned
            .mig
            .iter()
            .map(|m| ((m.gpu.clone(), m.gpu_instance_id), m.slice_id.clone()))
            .collect();
        self.inner.adopt(
            &crate::checkpoint::Owned {
                mig: Vec::new(),
                ..owned.clone()
            },
            complete,
        )
    }

    fn claim_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        let gpus = self.inventory()?;
        let g = gpus
            .iter()
            .find(|g| g.uuid == gpu)
            .ok_or_else(|| BackendError::UnknownGpu(gpu.to_string()))?;
        let mut inst = g
            .mig_instances
            .iter()
            .find(|i| i.gpu_instance_id == gpu_instance_id)
            .cloned()
            .ok_or_else(|| BackendError::NoSuchInstance {
                gpu: gpu.to_string(),
                gi: gpu_instance_id,
            })?;
        match Self::hardware_owner(&inst) {
            Some(owner) if owner != slice_id => {
                return Err(BackendError::InstanceOwned {
                    gpu: gpu.to_string(),
                    gi: gpu_instance_id,
                    owner: owner.to_string(),
                });
            }
            _ => {}
        }
        self.lent
            .insert((gpu.to_string(), gpu_instance_id), slice_id.to_string());
        inst.slice_id = Some(slice_id.to_string());
        let env = device_env(&inst.mig_uuid);
        Ok((inst, env))
    }

    fn release_mig(
        &mut self,
        gpu: &str,
        gpu_instance_id: u32,
        slice_id: &str,
    ) -> Result<(), BackendError> {
        let key = (gpu.to_string(), gpu_instance_id);
        match self.lent.get(&key) {
            Some(s) if s == slice_id => {
                self.lent.remove(&key);
                Ok(())
            }
            _ => Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            }),
        }
    }

    fn create_mig(
        &mut self,
        _: &str,
        _: &str,
        _: u8,
        _: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        Err(BackendError::ReadOnly)
    }

    fn destroy_mig(&mut self, _: &str, _: u32) -> Result<(), BackendError> {
        Err(BackendError::ReadOnly)
    }

    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        compute_fraction: f64,
        memory_bytes: u64,
    ) -> Result<SliceEnv, BackendError> {
        self.inner
            .set_share(gpu, slice_id, compute_fraction, memory_bytes)
    }

    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.inner.clear_share(gpu, slice_id)
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        self.inner.assign_whole(gpu, slice_id)
    }

    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        self.inner.unassign_whole(gpu, slice_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::{Machine, SimBackend, SimConfig};

    /// An H100 node with GPU 0 in MIG mode holding a 3g.40gb that no slice owns, read-only.
    fn node() -> (ReadOnlyMig, String, u32) {
        let mut c = SimConfig::new("n", Machine::DgxH100);
        c.gpus = 2;
        c.mig_gpus = 1;
        let mut sim = SimBackend::new(c).unwrap();
        let gpu = sim.inventory().unwrap()[0].uuid.clone();
        // Made "outside greenslice": no owner.
        let (inst, _) = sim.create_mig(&gpu, "3g.40gb", 0, "").unwrap();
        (ReadOnlyMig::new(Box::new(sim)), gpu, inst.gpu_instance_id)
    }

    fn owner(b: &mut ReadOnlyMig, gpu: &str, gi: u32) -> Option<String> {
        let gpus = b.inventory().unwrap();
        let g = gpus.iter().find(|g| g.uuid == gpu).unwrap();
        let i = g
            .mig_instances
            .iter()
            .find(|i| i.gpu_instance_id == gi)
            .unwrap();
        i.slice_id.clone().filter(|s| !s.is_empty())
    }

    #[test]
    fn creating_and_destroying_instances_is_refused() {
        let (mut b, gpu, gi) = node();
        assert!(!b.may_manage_mig());
        assert!(matches!(
            b.create_mig(&gpu, "1g.10gb", 4, "s1"),
            Err(BackendError::ReadOnly)
        ));
        assert!(matches!(
            b.destroy_mig(&gpu, gi),
            Err(BackendError::ReadOnly)
        ));
        assert_eq!(
            b.inventory().unwrap()[0].mig_instances.len(),
            1,
            "layout unchanged"
        );
    }

    #[test]
    fn a_free_instance_is_lent_shown_with_its_slice_and_given_back() {
        let (mut b, gpu, gi) = node();
        let (inst, env) = b.claim_mig(&gpu, gi, "s1").unwrap();
        assert_eq!(inst.slice_id.as_deref(), Some("s1"));
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], inst.mig_uuid);
        assert_eq!(owner(&mut b, &gpu, gi).as_deref(), Some("s1"));
        // Claiming again for the same slice is a no-op; for another slice it is refused.
        assert!(b.claim_mig(&gpu, gi, "s1").is_ok());
        let e = b.claim_mig(&gpu, gi, "s2").unwrap_err();
        assert!(matches!(e, BackendError::InstanceOwned { .. }), "{e}");
        // Only its slice gives it back; afterwards it is free and still there.
        assert!(matches!(
            b.release_mig(&gpu, gi, "s2"),
            Err(BackendError::NoSuchSlice { .. })
        ));
        b.release_mig(&gpu, gi, "s1").unwrap();
        assert_eq!(owner(&mut b, &gpu, gi), None);
        assert_eq!(b.inventory().unwrap()[0].mig_instances.len(), 1);
    }

    #[test]
    fn unknown_instances_and_gpus_are_named() {
        let (mut b, gpu, gi) = node();
        assert!(matches!(
            b.claim_mig(&gpu, gi + 7, "s1"),
            Err(BackendError::NoSuchInstance { .. })
        ));
        assert!(matches!(
            b.claim_mig("GPU-nope", gi, "s1"),
            Err(BackendError::UnknownGpu(_))
        ));
    }

    #[test]
    fn an_instance_owned_on_the_hardware_is_not_lent() {
        let mut c = SimConfig::new("n", Machine::DgxH100);
        c.gpus = 1;
        c.mig_gpus = 1;
        let mut sim = SimBackend::new(c).unwrap();
        let gpu = sim.inventory().unwrap()[0].uuid.clone();
        let (inst, _) = sim.create_mig(&gpu, "1g.10gb", 0, "s-old").unwrap();
        let mut b = ReadOnlyMig::new(Box::new(sim));
        let e = b.claim_mig(&gpu, inst.gpu_instance_id, "s1").unwrap_err();
        assert!(e.to_string().contains("owned by s-old"), "{e}");
    }
}
