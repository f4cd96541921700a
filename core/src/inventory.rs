//! The actual state of a node's GPUs, as an agent discovers and reports it.

use serde::{Deserialize, Serialize};

use crate::gpu::GpuModel;
use crate::mig;

/// A MIG GPU instance that exists on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    /// GPU instance id the driver gave.
    pub gpu_instance_id: u32,
    /// Profile name.
    pub profile: String,
    /// First memory slice.
    pub start: u8,
    /// Memory slices covered.
    pub size: u8,
    /// MIG device UUID.
    pub mig_uuid: String,
    /// Owning slice, if greenslice made it.
    pub slice_id: Option<String>,
}

/// A time-sliced share applied on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub slice_id: String,
    /// Compute fraction in (0, 1].
    pub compute_fraction: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub uuid: String,
    pub index: u32,
    pub model: GpuModel,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    pub mig_capable: bool,
    pub mig_enabled: bool,
    pub pci_bus_id: String,
    /// Power limit in mW (0 if unknown).
    pub power_limit_mw: u32,
    pub healthy: bool,
    pub mig_instances: Vec<MigInstance>,
    pub shares: Vec<Share>,
    /// Slice holding the whole GPU.
    pub whole_slice_id: Option<String>,
}

impl Gpu {
    /// The MIG layout as placement rules see it.
    pub fn mig_layout(&self) -> Vec<mig::Placed> {
        self.mig_instances
            .iter()
            .map(|i| mig::Placed {
                profile: i.profile.clone(),
                start: i.start,
            })
            .collect()
    }
}

/// What a node's agent may do (reported in Register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapabilities {
    /// May create and destroy MIG instances (the agent's `mig.manage`).
    pub mig_manage: bool,
    /// MPS is available, so share limits are enforced; without it they are advisory.
    pub mps: bool,
}

/// What an agent says about its node when it (re)connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Node name, unique in the cluster.
    pub node: String,
    /// CPU capacity in milli-cores (0 if unknown).
    pub cpu_milli: u64,
    /// Host memory in bytes (0 if unknown).
    pub memory_bytes: u64,
    /// Backend in use: "sim" or "nvml".
    pub backend: String,
    /// Every GPU with its actual MIG instances and shares.
    pub gpus: Vec<Gpu>,
    /// What the node may do; `None` from agents too old to say.
    pub capabilities: Option<NodeCapabilities>,
    /// The agent has no trustworthy record of what it owns: `gpus` names only what the hardware
    /// showed (see the wire message `Register.ownership_rebuilt`).
    pub ownership_rebuilt: bool,
}
