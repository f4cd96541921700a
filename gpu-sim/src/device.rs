//! GPU models the simulator builds machines of, with the figures NVML reports for them.

use serde::{Deserialize, Serialize};

use crate::profiles::{self, GiProfile};

/// A simulated GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    A100Sxm4_40Gb,
    A100Sxm4_80Gb,
    H100Sxm5_80Gb,
    H100Pcie80Gb,
    H200Sxm5_141Gb,
    /// An L40S: no MIG.
    L40s,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 6] = [
        DeviceKind::A100Sxm4_40Gb,
        DeviceKind::A100Sxm4_80Gb,
        DeviceKind::H100Sxm5_80Gb,
        DeviceKind::H100Pcie80Gb,
        DeviceKind::H200Sxm5_141Gb,
        DeviceKind::L40s,
    ];

    /// The product name `nvmlDeviceGetName` answers, as the real driver spells it.
    pub fn product_name(self) -> &'static str {
        match self {
            DeviceKind::A100Sxm4_40Gb => "NVIDIA A100-SXM4-40GB",
            DeviceKind::A100Sxm4_80Gb => "NVIDIA A100-SXM4-80GB",
            DeviceKind::H100Sxm5_80Gb => "NVIDIA H100 80GB HBM3",
            DeviceKind::H100Pcie80Gb => "NVIDIA H100 PCIe",
            DeviceKind::H200Sxm5_141Gb => "NVIDIA H200",
            DeviceKind::L40s => "NVIDIA L40S",
        }
    }

    /// The normalised name (as in `../shared/data/mig-profiles.csv`).
    pub fn model_name(self) -> &'static str {
        match self {
            DeviceKind::A100Sxm4_40Gb => "A100-SXM4-40GB",
            DeviceKind::A100Sxm4_80Gb => "A100-SXM4-80GB",
            DeviceKind::H100Sxm5_80Gb => "H100-SXM5-80GB",
            DeviceKind::H100Pcie80Gb => "H100-PCIE-80GB",
            DeviceKind::H200Sxm5_141Gb => "H200-SXM5-141GB",
            DeviceKind::L40s => "L40S",
        }
    }

    /// The PCI device id (upper 16 bits of `nvmlPciInfo_t::pciDeviceId`; the lower are NVIDIA's
    /// vendor id 0x10DE).
    pub fn pci_device_id(self) -> u32 {
        match self {
            DeviceKind::A100Sxm4_40Gb => 0x20B0,
            DeviceKind::A100Sxm4_80Gb => 0x20B2,
            DeviceKind::H100Sxm5_80Gb => 0x2330,
            DeviceKind::H100Pcie80Gb => 0x2331,
            DeviceKind::H200Sxm5_141Gb => 0x2335,
            DeviceKind::L40s => 0x26B9,
        }
    }

    /// Board memory in MiB as the driver reports it (nominal).
    pub fn memory_mib(self) -> u64 {
        match self {
            DeviceKind::A100Sxm4_40Gb => 40 * 1024,
            DeviceKind::A100Sxm4_80Gb | DeviceKind::H100Sxm5_80Gb | DeviceKind::H100Pcie80Gb => {
                80 * 1024
            }
            DeviceKind::H200Sxm5_141Gb => 141 * 1024,
            DeviceKind::L40s => 48 * 1024,
        }
    }

    /// Idle and maximum (default power limit) board power in mW.
    pub fn power_mw(self) -> (u32, u32) {
        match self {
            DeviceKind::A100Sxm4_40Gb | DeviceKind::A100Sxm4_80Gb => (50_000, 400_000),
            DeviceKind::H100Sxm5_80Gb | DeviceKind::H200Sxm5_141Gb => (70_000, 700_000),
            DeviceKind::H100Pcie80Gb => (50_000, 350_000),
            DeviceKind::L40s => (35_000, 350_000),
        }
    }

    /// SM clock at full speed, MHz.
    pub fn max_sm_clock_mhz(self) -> u32 {
        match self {
            DeviceKind::A100Sxm4_40Gb | DeviceKind::A100Sxm4_80Gb => 1410,
            DeviceKind::H100Sxm5_80Gb | DeviceKind::H200Sxm5_141Gb => 1980,
            DeviceKind::H100Pcie80Gb => 1755,
            DeviceKind::L40s => 2520,
        }
    }

    /// Streaming multiprocessors of the whole GPU.
    pub fn sm_count(self) -> u32 {
        match self {
            DeviceKind::A100Sxm4_40Gb | DeviceKind::A100Sxm4_80Gb => 108,
            DeviceKind::H100Sxm5_80Gb | DeviceKind::H200Sxm5_141Gb => 132,
            DeviceKind::H100Pcie80Gb => 114,
            DeviceKind::L40s => 142,
        }
    }

    /// Whether GPM (GPU performance monitoring) exists: Hopper and newer.
    pub fn has_gpm(self) -> bool {
        matches!(
            self,
            DeviceKind::H100Sxm5_80Gb | DeviceKind::H100Pcie80Gb | DeviceKind::H200Sxm5_141Gb
        )
    }

    /// The MIG GPU-instance profiles; empty without MIG.
    pub fn mig_profiles(self) -> &'static [GiProfile] {
        match self {
            DeviceKind::A100Sxm4_40Gb => &profiles::A100_40GB,
            DeviceKind::A100Sxm4_80Gb => &profiles::A100_80GB,
            DeviceKind::H100Sxm5_80Gb => &profiles::H100_80GB,
            DeviceKind::H100Pcie80Gb => &profiles::H100_PCIE_80GB,
            DeviceKind::H200Sxm5_141Gb => &profiles::H200_141GB,
            DeviceKind::L40s => &[],
        }
    }

    /// The profile with NVML index `index`.
    pub fn profile_by_index(self, index: u32) -> Option<&'static GiProfile> {
        self.mig_profiles().iter().find(|p| p.index == index)
    }

    /// The profile with profile id `id`.
    pub fn profile_by_id(self, id: u32) -> Option<&'static GiProfile> {
        self.mig_profiles().iter().find(|p| p.id == id)
    }

    /// Memory of a GPU instance of `p`, MiB.
    pub fn profile_memory_mib(self, p: &GiProfile) -> u64 {
        self.memory_mib() / u64::from(profiles::MEMORY_SLICES) * u64::from(p.memory_slices)
    }
}

/// A machine kind: which devices, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineKind {
    DgxH100,
    DgxA100_40,
    DgxA100_80,
    DgxH200,
    HgxH100Pcie,
    /// One of each model (two H100 SXM5, two L40S without MIG): 8 GPUs.
    Mixed,
}

impl MachineKind {
    pub const ALL: [MachineKind; 6] = [
        MachineKind::DgxH100,
        MachineKind::DgxA100_40,
        MachineKind::DgxA100_80,
        MachineKind::DgxH200,
        MachineKind::HgxH100Pcie,
        MachineKind::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MachineKind::DgxH100 => "dgx-h100",
            MachineKind::DgxA100_40 => "dgx-a100-40",
            MachineKind::DgxA100_80 => "dgx-a100-80",
            MachineKind::DgxH200 => "dgx-h200",
            MachineKind::HgxH100Pcie => "hgx-h100-pcie",
            MachineKind::Mixed => "mixed",
        }
    }

    /// The devices of a machine with `gpus` GPUs (the kind's model repeated; `mixed` cycles).
    pub fn devices(self, gpus: u32) -> Vec<DeviceKind> {
        let one = |k| vec![k; gpus as usize];
        match self {
            MachineKind::DgxH100 => one(DeviceKind::H100Sxm5_80Gb),
            MachineKind::DgxA100_40 => one(DeviceKind::A100Sxm4_40Gb),
            MachineKind::DgxA100_80 => one(DeviceKind::A100Sxm4_80Gb),
            MachineKind::DgxH200 => one(DeviceKind::H200Sxm5_141Gb),
            MachineKind::HgxH100Pcie => one(DeviceKind::H100Pcie80Gb),
            MachineKind::Mixed => {
                const CYCLE: [DeviceKind; 8] = [
                    DeviceKind::H100Sxm5_80Gb,
                    DeviceKind::H100Sxm5_80Gb,
                    DeviceKind::A100Sxm4_40Gb,
                    DeviceKind::A100Sxm4_80Gb,
                    DeviceKind::H100Pcie80Gb,
                    DeviceKind::H200Sxm5_141Gb,
                    DeviceKind::L40s,
                    DeviceKind::L40s,
                ];
                (0..gpus as usize).map(|i| CYCLE[i % CYCLE.len()]).collect()
            }
        }
    }
}

impl std::str::FromStr for MachineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MachineKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = MachineKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown machine kind {s:?}; known: {}", names.join(", "))
            })
    }
}
