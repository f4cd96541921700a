//! The devices the simulated machine can hold, described as hardware: product name, PCI ids, memory,
//! power, SMs, and MIG profile tables with their placements.
//!
//! The MIG tables are written from NVIDIA's MIG user guide ("Supported MIG Profiles" per product and
//! the placement diagrams), on their own: nothing here comes from `greenslice-core`. A test
//! (`tests/tables.rs`) compares them with greenslice-core's tables and with
//! `../shared/data/mig-profiles.csv`, so a discrepancy between the three is found, not hidden.

use serde::{Deserialize, Serialize};

/// NVIDIA's PCI vendor id.
pub const NVIDIA_VENDOR: u32 = 0x10DE;

/// One GPU-instance profile of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiProfile {
    /// Name as nvidia-smi prints it.
    pub name: &'static str,
    /// `NVML_GPU_INSTANCE_PROFILE_*` index (what nvmlDeviceGetGpuInstanceProfileInfo takes).
    pub index: u32,
    /// Profile id (nvmlGpuInstanceProfileInfo_t::id, the id `nvidia-smi mig -lgip` prints).
    pub id: u32,
    /// Compute slices (of 7).
    pub compute_slices: u32,
    /// Memory slices (of 8): the size of each placement.
    pub memory_slices: u32,
    /// Most instances of this profile on one GPU.
    pub max_instances: u32,
    /// Legal first memory slices.
    pub starts: &'static [u32],
    /// Memory of one instance in MiB.
    pub memory_mib: u64,
    /// Streaming multiprocessors of one instance.
    pub sms: u32,
    /// Whether the instance carries the media engines (the `+me` profiles).
    pub media: bool,
}

/// The MIG geometry of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigSpec {
    pub compute_slices: u32,
    pub memory_slices: u32,
    pub profiles: &'static [GiProfile],
}

/// A GPU product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    #[serde(rename = "A100-SXM4-40GB")]
    A100Sxm4_40,
    #[serde(rename = "A100-SXM4-80GB")]
    A100Sxm4_80,
    #[serde(rename = "H100-SXM5-80GB")]
    H100Sxm5_80,
    #[serde(rename = "H100-PCIe-80GB")]
    H100Pcie80,
    #[serde(rename = "H200-SXM5-141GB")]
    H200Sxm5_141,
    /// A GPU without MIG.
    #[serde(rename = "L40S-48GB")]
    L40s,
}

/// Fixed facts of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    pub kind: DeviceKind,
    /// The product name NVML reports (nvmlDeviceGetName).
    pub product_name: &'static str,
    /// PCI device id in the upper 16 bits, vendor in the lower (nvmlPciInfo_t::pciDeviceId).
    pub pci_device_id: u32,
    pub pci_subsystem_id: u32,
    /// Memory NVML reports as total, MiB.
    pub memory_mib: u64,
    /// Board power at rest and the default power limit, mW.
    pub idle_mw: u32,
    pub power_limit_mw: u32,
    pub sms: u32,
    /// SM clock at rest and at most, MHz.
    pub idle_sm_mhz: u32,
    pub max_sm_mhz: u32,
    pub mig: Option<MigSpec>,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 6] = [
        DeviceKind::A100Sxm4_40,
        DeviceKind::A100Sxm4_80,
        DeviceKind::H100Sxm5_80,
        DeviceKind::H100Pcie80,
        DeviceKind::H200Sxm5_141,
        DeviceKind::L40s,
    ];

    /// The product's facts.
    pub fn spec(self) -> &'static DeviceSpec {
        match self {
            DeviceKind::A100Sxm4_40 => &A100_40,
            DeviceKind::A100Sxm4_80 => &A100_80,
            DeviceKind::H100Sxm5_80 => &H100_SXM,
            DeviceKind::H100Pcie80 => &H100_PCIE,
            DeviceKind::H200Sxm5_141 => &H200,
            DeviceKind::L40s => &L40S,
        }
    }
}

impl DeviceSpec {
    /// A GI profile by its `NVML_GPU_INSTANCE_PROFILE_*` index.
    pub fn profile_by_index(&self, index: u32) -> Option<&'static GiProfile> {
        self.mig?.profiles.iter().find(|p| p.index == index)
    }
    /// A GI profile by its id.
    pub fn profile_by_id(&self, id: u32) -> Option<&'static GiProfile> {
        self.mig?.profiles.iter().find(|p| p.id == id)
    }
    /// A GI profile by name.
    pub fn profile_by_name(&self, name: &str) -> Option<&'static GiProfile> {
        self.mig?.profiles.iter().find(|p| p.name == name)
    }
}

// NVML_GPU_INSTANCE_PROFILE_* indices (nvml.h).
const P1: u32 = 0;
const P2: u32 = 1;
const P3: u32 = 2;
const P4: u32 = 3;
const P7: u32 = 4;
const P1_REV1: u32 = 7;
const P1_REV2: u32 = 9;

const ONE_SLICE_STARTS: &[u32] = &[0, 1, 2, 3, 4, 5, 6];
const TWO_SLICE_STARTS: &[u32] = &[0, 2, 4, 6];
const PAIR_STARTS: &[u32] = &[0, 2, 4];
const HALF_STARTS: &[u32] = &[0, 4];
const FIRST: &[u32] = &[0];

/// The seven-profile table the A100 and H100 families share in shape: names and memory differ.
/// `mem` is (1g, 1g-double, 2g, 3g, 4g, 7g) memory in MiB; `sms` the same for SMs (1g, 2g, 3g,
/// 4g, 7g).
macro_rules! seven_slice {
    ($n1:literal, $n1me:literal, $n1d:literal, $n2:literal, $n3:literal, $n4:literal, $n7:literal;
     $m1:expr, $m1d:expr, $m2:expr, $m3:expr, $m4:expr, $m7:expr; $s1:expr, $s2:expr, $s3:expr, $s4:expr, $s7:expr) => {
        &[
            GiProfile {
                name: $n1,
                index: P1,
                id: 19,
                compute_slices: 1,
                memory_slices: 1,
                max_instances: 7,
                starts: ONE_SLICE_STARTS,
                memory_mib: $m1,
                sms: $s1,
                media: false,
            },
            GiProfile {
                name: $n1me,
                index: P1_REV1,
                id: 20,
                compute_slices: 1,
                memory_slices: 1,
                max_instances: 1,
                starts: ONE_SLICE_STARTS,
                memory_mib: $m1,
                sms: $s1,
                media: true,
            },
            GiProfile {
                name: $n1d,
                index: P1_REV2,
                id: 15,
                compute_slices: 1,
                memory_slices: 2,
                max_instances: 4,
                starts: TWO_SLICE_STARTS,
                memory_mib: $m1d,
                sms: $s1,
                media: false,
            },
            GiProfile {
                name: $n2,
                index: P2,
                id: 14,
                compute_slices: 2,
                memory_slices: 2,
                max_instances: 3,
                starts: PAIR_STARTS,
                memory_mib: $m2,
                sms: $s2,
                media: false,
            },
            GiProfile {
                name: $n3,
                index: P3,
                id: 9,
                compute_slices: 3,
                memory_slices: 4,
                max_instances: 2,
                starts: HALF_STARTS,
                memory_mib: $m3,
                sms: $s3,
                media: false,
            },
            GiProfile {
                name: $n4,
                index: P4,
                id: 5,
                compute_slices: 4,
                memory_slices: 4,
                max_instances: 1,
                starts: FIRST,
                memory_mib: $m4,
                sms: $s4,
                media: false,
            },
            GiProfile {
                name: $n7,
                index: P7,
                id: 0,
                compute_slices: 7,
                memory_slices: 8,
                max_instances: 1,
                starts: FIRST,
                memory_mib: $m7,
                sms: $s7,
                media: true,
            },
        ]
    };
}

const A100_40_MIG: MigSpec = MigSpec {
    compute_slices: 7,
    memory_slices: 8,
    profiles: seven_slice!("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb";
        4864, 9856, 9856, 19968, 19968, 40192; 14, 28, 42, 56, 98),
};
const A100_80_MIG: MigSpec = MigSpec {
    compute_slices: 7,
    memory_slices: 8,
    profiles: seven_slice!("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb";
        9728, 19968, 19968, 40192, 40192, 80896; 14, 28, 42, 56, 98),
};
const H100_80_MIG: MigSpec = MigSpec {
    compute_slices: 7,
    memory_slices: 8,
    profiles: seven_slice!("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb";
        9856, 20096, 20096, 40320, 40320, 80896; 16, 32, 60, 64, 132),
};
const H200_MIG: MigSpec = MigSpec {
    compute_slices: 7,
    memory_slices: 8,
    profiles: seven_slice!("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb";
        16384, 32768, 32768, 70144, 70144, 143360; 16, 32, 60, 64, 132),
};

const A100_40: DeviceSpec = DeviceSpec {
    kind: DeviceKind::A100Sxm4_40,
    product_name: "NVIDIA A100-SXM4-40GB",
    pci_device_id: 0x20B0 << 16 | NVIDIA_VENDOR,
    pci_subsystem_id: 0x134F << 16 | NVIDIA_VENDOR,
    memory_mib: 40960,
    idle_mw: 55_000,
    power_limit_mw: 400_000,
    sms: 108,
    idle_sm_mhz: 210,
    max_sm_mhz: 1410,
    mig: Some(A100_40_MIG),
};
const A100_80: DeviceSpec = DeviceSpec {
    kind: DeviceKind::A100Sxm4_80,
    product_name: "NVIDIA A100-SXM4-80GB",
    pci_device_id: 0x20B2 << 16 | NVIDIA_VENDOR,
    pci_subsystem_id: 0x1463 << 16 | NVIDIA_VENDOR,
    memory_mib: 81920,
    idle_mw: 60_000,
    power_limit_mw: 400_000,
    sms: 108,
    idle_sm_mhz: 210,
    max_sm_mhz: 1410,
    mig: Some(A100_80_MIG),
};
const H100_SXM: DeviceSpec = DeviceSpec {
    kind: DeviceKind::H100Sxm5_80,
    product_name: "NVIDIA H100 80GB HBM3",
    pci_device_id: 0x2330 << 16 | NVIDIA_VENDOR,
    pci_subsystem_id: 0x16C1 << 16 | NVIDIA_VENDOR,
    memory_mib: 81559,
    idle_mw: 70_000,
    power_limit_mw: 700_000,
    sms: 132,
    idle_sm_mhz: 345,
    max_sm_mhz: 1980,
    mig: Some(H100_80_MIG),
};
const H100_PCIE: DeviceSpec = DeviceSpec {
    kind: DeviceKind::H100Pcie80,
    product_name: "NVIDIA H100 PCIe",
    pci_device_id: 0x2331 << 16 | NVIDIA_VENDOR,
    pci_subsystem_id: 0x1626 << 16 | NVIDIA_VENDOR,
    memory_mib: 81559,
    idle_mw: 48_000,
    power_limit_mw: 350_000,
    sms: 114,
    idle_sm_mhz: 345,
    max_sm_mhz: 1755,
    mig: Some(H100_80_MIG),
};
const H200: DeviceSpec = DeviceSpec {
    kind: DeviceKind::H200Sxm5_141,
    product_name: "NVIDIA H200",
    pci_device_id: 0x2335 << 16 | NVIDIA_VENDOR,
    pci_subsystem_id: 0x18BE << 16 | NVIDIA_VENDOR,
    memory_mib: 143771,
    idle_mw: 75_000,
    power_limit_mw: 700_000,
    sms: 132,
    idle_sm_mhz: 345,
    max_sm_mhz: 1980,
    mig: Some(H200_MIG),
};
const L40S: DeviceSpec = DeviceSpec {
    kind: DeviceKind::L40s,
    product_name: "NVIDIA L40S",
    pci_device_id: 0x26B9 << 16 | NVIDIA_VENDOR,
    pci_subsystem_id: 0x1851 << 16 | NVIDIA_VENDOR,
    memory_mib: 46068,
    idle_mw: 35_000,
    power_limit_mw: 350_000,
    sms: 142,
    idle_sm_mhz: 210,
    max_sm_mhz: 2520,
    mig: None,
};

/// A machine: which devices it holds, in PCI order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineKind {
    DgxA100_40,
    DgxA100_80,
    DgxH100,
    DgxH200,
    /// Four H100 PCIe boards.
    PcieH100,
    /// Four L40S (no MIG).
    L40s,
    /// One of each product.
    Mixed,
}

impl MachineKind {
    pub const ALL: [MachineKind; 7] = [
        MachineKind::DgxA100_40,
        MachineKind::DgxA100_80,
        MachineKind::DgxH100,
        MachineKind::DgxH200,
        MachineKind::PcieH100,
        MachineKind::L40s,
        MachineKind::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MachineKind::DgxA100_40 => "dgx-a100-40",
            MachineKind::DgxA100_80 => "dgx-a100-80",
            MachineKind::DgxH100 => "dgx-h100",
            MachineKind::DgxH200 => "dgx-h200",
            MachineKind::PcieH100 => "pcie-h100",
            MachineKind::L40s => "l40s",
            MachineKind::Mixed => "mixed",
        }
    }

    /// The devices, in PCI bus order.
    pub fn devices(self) -> Vec<DeviceKind> {
        match self {
            MachineKind::DgxA100_40 => vec![DeviceKind::A100Sxm4_40; 8],
            MachineKind::DgxA100_80 => vec![DeviceKind::A100Sxm4_80; 8],
            MachineKind::DgxH100 => vec![DeviceKind::H100Sxm5_80; 8],
            MachineKind::DgxH200 => vec![DeviceKind::H200Sxm5_141; 8],
            MachineKind::PcieH100 => vec![DeviceKind::H100Pcie80; 4],
            MachineKind::L40s => vec![DeviceKind::L40s; 4],
            MachineKind::Mixed => DeviceKind::ALL.to_vec(),
        }
    }
}

impl std::str::FromStr for MachineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineKind::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = MachineKind::ALL.iter().map(|m| m.name()).collect();
                format!("unknown machine {s:?}; known: {}", names.join(", "))
            })
    }
}
