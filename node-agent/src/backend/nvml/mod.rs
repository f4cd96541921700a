//! The NVML backend: real NVIDIA GPUs through nvml-wrapper.
//!
//! This first version discovers GPUs read-only; MIG changes, sampling and health events are added
//! with the backend issue. Without a driver, [`NvmlBackend::new`] fails with
//! [`BackendError::NoDriver`], which tells the operator how to use the simulator instead.

use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance};
use nvml_wrapper::Nvml;

use super::{BackendError, GpuBackend, HostInfo, SliceEnv, device_env, share_env};

/// NVML-backed GPUs of this host.
pub struct NvmlBackend {
    nvml: Nvml,
    /// Whether MIG changes are allowed (`mig.manage` in the agent config; default false).
    manage_mig: bool,
    mps_pipe_dir: String,
    shares: Vec<(String, greenslice_core::inventory::Share)>,
    whole: Vec<(String, String)>,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend")
            .field("manage_mig", &self.manage_mig)
            .finish()
    }
}

fn nvml_err(call: &'static str) -> impl Fn(nvml_wrapper::error::NvmlError) -> BackendError {
    move |e| BackendError::Nvml {
        call,
        msg: e.to_string(),
    }
}

impl NvmlBackend {
    /// Loads NVML. Fails with [`BackendError::NoDriver`] when the library cannot be loaded.
    pub fn new(manage_mig: bool, mps_pipe_dir: &str) -> Result<Self, BackendError> {
        let nvml = Nvml::init().map_err(|e| BackendError::NoDriver(e.to_string()))?;
        Ok(NvmlBackend {
            nvml,
            manage_mig,
            mps_pipe_dir: mps_pipe_dir.to_string(),
            shares: Vec::new(),
            whole: Vec::new(),
        })
    }
}

impl GpuBackend for NvmlBackend {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn host(&self) -> HostInfo {
        HostInfo {
            cpu_milli: std::thread::available_parallelism().map_or(0, |n| n.get() as u64 * 1000),
            memory_bytes: 0,
        }
    }

    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError> {
        let n = self.nvml.device_count().map_err(nvml_err("device_count"))?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let d = self
                .nvml
                .device_by_index(i)
                .map_err(nvml_err("device_by_index"))?;
            let uuid = d.uuid().map_err(nvml_err("uuid"))?;
            let name = d.name().map_err(nvml_err("name"))?;
            let model = GpuModel::from_name(&name);
            let mig_enabled = d.mig_mode().map(|m| m.current == 1).unwrap_or(false);
            out.push(Gpu {
                memory_bytes: d
                    .memory_info()
                    .map(|m| m.total)
                    .unwrap_or_else(|_| model.memory_bytes()),
                mig_capable: d.mig_mode().is_ok(),
                mig_enabled,
                pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                power_limit_mw: d.enforced_power_limit().unwrap_or(0),
                healthy: true,
                mig_instances: Vec::new(),
                shares: self
                    .shares
                    .iter()
                    .filter(|(g, _)| *g == uuid)
                    .map(|(_, s)| s.clone())
                    .collect(),
                whole_slice_id: self
                    .whole
                    .iter()
                    .find(|(g, _)| *g == uuid)
                    .map(|(_, s)| s.clone()),
                uuid,
                index: i,
                model,
            });
        }
        Ok(out)
    }

    fn sample(&mut self) -> Result<greenslice_core::sample::NodeSample, BackendError> {
        Err(BackendError::Config("todo".into()))
    }

    fn create_mig(
        &mut self,
        _: &str,
        _: &str,
        _: u8,
        _: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        if !self.manage_mig {
            return Err(BackendError::ReadOnly);
        }
        Err(BackendError::Nvml {
            call: "nvmlDeviceCreateGpuInstanceWithPlacement",
            msg: "not implemented in this build".into(),
        })
    }

    fn destroy_mig(&mut self, _: &str, _: u32) -> Result<(), BackendError> {
        if !self.manage_mig {
            return Err(BackendError::ReadOnly);
        }
        Err(BackendError::Nvml {
            call: "nvmlGpuInstanceDestroy",
            msg: "not implemented in this build".into(),
        })
    }

    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        f: f64,
        mem: u64,
    ) -> Result<SliceEnv, BackendError> {
        self.shares.retain(|(_, s)| s.slice_id != slice_id);
        self.shares.push((
            gpu.to_string(),
            greenslice_core::inventory::Share {
                slice_id: slice_id.to_string(),
                compute_fraction: f,
                memory_bytes: mem,
            },
        ));
        Ok(share_env(gpu, f, mem, &self.mps_pipe_dir))
    }

    fn clear_share(&mut self, _: &str, slice_id: &str) -> Result<(), BackendError> {
        self.shares.retain(|(_, s)| s.slice_id != slice_id);
        Ok(())
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        self.whole.retain(|(g, _)| g != gpu);
        self.whole.push((gpu.to_string(), slice_id.to_string()));
        Ok(device_env(gpu))
    }

    fn unassign_whole(&mut self, gpu: &str, _: &str) -> Result<(), BackendError> {
        self.whole.retain(|(g, _)| g != gpu);
        Ok(())
    }
}
