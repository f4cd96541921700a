//! The simulated backend: DGX-like machines that honour the MIG profile tables and placement rules
//! (refusing illegal layouts the way NVML does), time-sliced shares and whole-GPU assignment.

use std::str::FromStr;

use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance, Share};
use greenslice_core::mig;

use super::{BackendError, GpuBackend, HostInfo, SliceEnv, device_env, share_env};

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
}

impl SimConfig {
    pub fn new(node: &str, machine: Machine) -> Self {
        SimConfig {
            node: node.to_string(),
            machine,
            gpus: 8,
            mig_gpus: 0,
            mps_pipe_dir: "/tmp/nvidia-mps".to_string(),
        }
    }
}

/// A simulated node.
#[derive(Debug)]
pub struct SimBackend {
    config: SimConfig,
    gpus: Vec<Gpu>,
    /// Next GPU instance id per GPU (the driver hands out small integers).
    next_gi: Vec<u32>,
}

/// A stable pseudo-UUID from a name (FNV-1a, formatted like a UUID).
fn stable_uuid(prefix: &str, name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let x = format!("{h:032x}");
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
        Ok(SimBackend {
            next_gi: vec![1; config.gpus as usize],
            config,
            gpus,
        })
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
        Ok(self.gpus.clone())
    }

    fn create_mig(
        &mut self,
        gpu: &str,
        profile: &str,
        start: u8,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        let i = self.gpu_index(gpu)?;
        let g = &mut self.gpus[i];
        if !g.mig_enabled {
            return Err(BackendError::NotMigMode {
                gpu: gpu.to_string(),
            });
        }
        let p = mig::check_create(&g.model, &g.mig_layout(), profile, start)?;
        let gi = self.next_gi[i];
        self.next_gi[i] += 1;
        let inst = MigInstance {
            gpu_instance_id: gi,
            profile: profile.to_string(),
            start,
            size: p.size,
            mig_uuid: stable_uuid("MIG", &format!("{gpu}/{gi}/{slice_id}")),
            slice_id: Some(slice_id.to_string()),
        };
        g.mig_instances.push(inst.clone());
        let env = device_env(&inst.mig_uuid);
        Ok((inst, env))
    }

    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError> {
        let i = self.gpu_index(gpu)?;
        let g = &mut self.gpus[i];
        let before = g.mig_instances.len();
        g.mig_instances
            .retain(|m| m.gpu_instance_id != gpu_instance_id);
        if g.mig_instances.len() == before {
            return Err(BackendError::NoSuchInstance {
                gpu: gpu.to_string(),
                gi: gpu_instance_id,
            });
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
        Ok(share_env(gpu, compute_fraction, memory_bytes, &pipe))
    }

    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        let g = self.non_mig(gpu)?;
        let before = g.shares.len();
        g.shares.retain(|s| s.slice_id != slice_id);
        if g.shares.len() == before {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        Ok(())
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
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
        Ok(device_env(gpu))
    }

    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        let g = self.non_mig(gpu)?;
        if g.whole_slice_id.as_deref() != Some(slice_id) {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        g.whole_slice_id = None;
        Ok(())
    }
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

    #[test]
    fn unknown_machine_lists_known_ones() {
        let e = "dgx-z9".parse::<Machine>().unwrap_err().to_string();
        assert!(e.contains("dgx-h100") && e.contains("dgx-a100-40"), "{e}");
    }
}
