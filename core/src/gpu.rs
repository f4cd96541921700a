//! GPU models known to greenslice and their nominal figures.
//!
//! A model is identified by its PCI device id ([`GpuModel::from_pci_device_id`], from NVML's
//! `nvmlPciInfo_t.pciDeviceId`), and only when the id is unknown or missing by its product name
//! ([`GpuModel::from_name`]). [`GpuModel::detect`] does both in that order.

use serde::{Deserialize, Serialize};

use crate::GIB;

/// NVIDIA's PCI vendor id: the lower 16 bits of NVML's `pciDeviceId`.
pub const NVIDIA_VENDOR_ID: u16 = 0x10DE;

/// A GPU model with a MIG profile table and a power model.
///
/// Figures are nominal (vendor datasheets; idle power from public captures, approximate). Models
/// greenslice has no table for still work as whole GPUs and shares: see [`GpuModel::Other`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GpuModel {
    A100Sxm4_40Gb,
    A100Sxm4_80Gb,
    A100Pcie40Gb,
    A100Pcie80Gb,
    A30_24Gb,
    H100Sxm5_80Gb,
    H100Pcie80Gb,
    /// H100 NVL, 94 GB (PCIe).
    H100Nvl94Gb,
    /// H800, 80 GB (SXM5 and PCIe boards).
    H800_80Gb,
    H20_96Gb,
    /// GH200 with 96 GB HBM3 (sold as "GH200 480GB" and "GH200 120GB" after the CPU memory).
    Gh200_96Gb,
    /// GH200 with 144 GB HBM3e.
    Gh200_144Gb,
    H200Sxm5_141Gb,
    H200Nvl141Gb,
    B200_180Gb,
    /// Any other model, by its normalised name; no MIG table.
    Other(String),
}

/// PCI device ids (upper 16 bits of `pciDeviceId`) of the models greenslice knows.
///
/// Source: the "Compatible GPUs" list of NVIDIA's open-gpu-kernel-modules README (the driver's
/// supported-products table, "Device PCI ID" column: device id, then subsystem vendor and id), cross
/// checked against the device filters of NVIDIA's default mig-parted configuration (GPU operator).
/// Subsystem ids only tell board variants apart here (GH200 "120GB" and "480GB" differ in CPU
/// memory, not GPU memory; A100 PG509-200 is an A100-SXM4-40GB board), so the device id decides.
const PCI_DEVICE_IDS: &[(u16, GpuModel)] = &[
    (0x20B0, GpuModel::A100Sxm4_40Gb), // NVIDIA A100-SXM4-40GB, A100-PG509-200
    (0x20B1, GpuModel::A100Pcie40Gb),  // NVIDIA A100-PCIE-40GB (10DE 145F)
    (0x20F1, GpuModel::A100Pcie40Gb),  // NVIDIA A100-PCIE-40GB (10DE 145F)
    (0x20B2, GpuModel::A100Sxm4_80Gb), // NVIDIA A100-SXM4-80GB (10DE 1463, 147F, 1622, 1623)
    (0x20B5, GpuModel::A100Pcie80Gb),  // NVIDIA A100 80GB PCIe (10DE 1533, 1642)
    (0x20B7, GpuModel::A30_24Gb),      // NVIDIA A30 (10DE 1532, 1804, 1852)
    (0x2330, GpuModel::H100Sxm5_80Gb), // NVIDIA H100 80GB HBM3 (10DE 16C0, 16C1)
    (0x2331, GpuModel::H100Pcie80Gb),  // NVIDIA H100 PCIe (10DE 1626)
    (0x2321, GpuModel::H100Nvl94Gb),   // NVIDIA H100 NVL (10DE 1839)
    (0x2322, GpuModel::H800_80Gb),     // NVIDIA H800 PCIe (10DE 17A4)
    (0x2324, GpuModel::H800_80Gb),     // NVIDIA H800 (10DE 17A6, 17A8)
    (0x2329, GpuModel::H20_96Gb),      // NVIDIA H20 (10DE 198B, 198C)
    (0x2342, GpuModel::Gh200_96Gb),    // NVIDIA GH200 120GB (10DE 16EB, 1805), 480GB (10DE 1809)
    (0x2348, GpuModel::Gh200_144Gb),   // NVIDIA GH200 144G HBM3e (10DE 18D2)
    (0x2335, GpuModel::H200Sxm5_141Gb), // NVIDIA H200 (10DE 18BE, 18BF)
    (0x233B, GpuModel::H200Nvl141Gb),  // NVIDIA H200 NVL (10DE 1996)
    (0x2901, GpuModel::B200_180Gb),    // NVIDIA B200 (10DE 1999, 199B, 20DA)
];

impl GpuModel {
    /// All models with a MIG table.
    pub const KNOWN: [GpuModel; 15] = [
        GpuModel::A100Sxm4_40Gb,
        GpuModel::A100Sxm4_80Gb,
        GpuModel::A100Pcie40Gb,
        GpuModel::A100Pcie80Gb,
        GpuModel::A30_24Gb,
        GpuModel::H100Sxm5_80Gb,
        GpuModel::H100Pcie80Gb,
        GpuModel::H100Nvl94Gb,
        GpuModel::H800_80Gb,
        GpuModel::H20_96Gb,
        GpuModel::Gh200_96Gb,
        GpuModel::Gh200_144Gb,
        GpuModel::H200Sxm5_141Gb,
        GpuModel::H200Nvl141Gb,
        GpuModel::B200_180Gb,
    ];

    /// Normalised name, as used on the wire and in `../shared/data/mig-profiles.csv`.
    pub fn name(&self) -> &str {
        match self {
            GpuModel::A100Sxm4_40Gb => "A100-SXM4-40GB",
            GpuModel::A100Sxm4_80Gb => "A100-SXM4-80GB",
            GpuModel::A100Pcie40Gb => "A100-PCIE-40GB",
            GpuModel::A100Pcie80Gb => "A100-PCIE-80GB",
            GpuModel::A30_24Gb => "A30-24GB",
            GpuModel::H100Sxm5_80Gb => "H100-SXM5-80GB",
            GpuModel::H100Pcie80Gb => "H100-PCIE-80GB",
            GpuModel::H100Nvl94Gb => "H100-NVL-94GB",
            GpuModel::H800_80Gb => "H800-80GB",
            GpuModel::H20_96Gb => "H20-96GB",
            GpuModel::Gh200_96Gb => "GH200-96GB",
            GpuModel::Gh200_144Gb => "GH200-144GB",
            GpuModel::H200Sxm5_141Gb => "H200-SXM5-141GB",
            GpuModel::H200Nvl141Gb => "H200-NVL-141GB",
            GpuModel::B200_180Gb => "B200-180GB",
            GpuModel::Other(n) => n,
        }
    }

    /// The model of an NVML `pciDeviceId` (device id in the upper 16 bits, vendor in the lower);
    /// `None` for another vendor or a device id greenslice does not know.
    pub fn from_pci_device_id(pci_device_id: u32) -> Option<GpuModel> {
        let vendor = (pci_device_id & 0xFFFF) as u16;
        let device = (pci_device_id >> 16) as u16;
        if vendor != NVIDIA_VENDOR_ID {
            return None;
        }
        PCI_DEVICE_IDS
            .iter()
            .find(|(id, _)| *id == device)
            .map(|(_, m)| m.clone())
    }

    /// The model of a GPU: by PCI device id when it is known, else by name.
    pub fn detect(pci_device_id: Option<u32>, name: &str) -> GpuModel {
        pci_device_id
            .and_then(GpuModel::from_pci_device_id)
            .unwrap_or_else(|| GpuModel::from_name(name))
    }

    /// Parses a normalised name or an NVML product name ("NVIDIA H100 80GB HBM3"). A fallback for
    /// when the PCI device id is unknown: names are matched by whole words, so "GH200" is never an
    /// H200 and "GB200" never a B200; a name that does not say enough is [`GpuModel::Other`].
    pub fn from_name(name: &str) -> GpuModel {
        let upper = name.trim().to_ascii_uppercase();
        if let Some(m) = Self::KNOWN.iter().find(|m| m.name() == upper) {
            return m.clone();
        }
        let words: Vec<&str> = upper
            .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
            .filter(|w| !w.is_empty())
            .collect();
        let has = |w: &str| words.contains(&w);
        let pcie = has("PCIE");
        let model = if has("A100") && has("40GB") {
            Some(if pcie {
                GpuModel::A100Pcie40Gb
            } else {
                GpuModel::A100Sxm4_40Gb
            })
        } else if has("A100") && has("80GB") {
            Some(if pcie {
                GpuModel::A100Pcie80Gb
            } else {
                GpuModel::A100Sxm4_80Gb
            })
        } else if has("A30") {
            Some(GpuModel::A30_24Gb)
        } else if has("H100") && has("NVL") {
            Some(GpuModel::H100Nvl94Gb)
        } else if has("H100") && pcie {
            Some(GpuModel::H100Pcie80Gb)
        } else if has("H100") && (has("80GB") || has("SXM5") || has("SXM")) {
            Some(GpuModel::H100Sxm5_80Gb)
        } else if has("H800") && !has("NVL") {
            Some(GpuModel::H800_80Gb)
        } else if has("H20") {
            // "NVIDIA H20", "H20-96GB"; not "H20-3e" or "H20 NVL16", other memory sizes.
            (!has("3E") && !has("NVL16")).then_some(GpuModel::H20_96Gb)
        } else if has("GH200") {
            Some(if has("144G") || has("144GB") || has("HBM3E") {
                GpuModel::Gh200_144Gb
            } else {
                GpuModel::Gh200_96Gb
            })
        } else if has("H200") {
            Some(if has("NVL") {
                GpuModel::H200Nvl141Gb
            } else {
                GpuModel::H200Sxm5_141Gb
            })
        } else if has("B200") {
            Some(GpuModel::B200_180Gb)
        } else {
            None
        };
        model.unwrap_or_else(|| GpuModel::Other(name.trim().to_string()))
    }

    /// Board memory in bytes (nominal; the driver reports the exact figure).
    pub fn memory_bytes(&self) -> u64 {
        let gb = match self {
            GpuModel::A30_24Gb => 24,
            GpuModel::A100Sxm4_40Gb | GpuModel::A100Pcie40Gb => 40,
            GpuModel::A100Sxm4_80Gb
            | GpuModel::A100Pcie80Gb
            | GpuModel::H100Sxm5_80Gb
            | GpuModel::H100Pcie80Gb
            | GpuModel::H800_80Gb => 80,
            GpuModel::H100Nvl94Gb => 94,
            GpuModel::H20_96Gb | GpuModel::Gh200_96Gb => 96,
            GpuModel::H200Sxm5_141Gb | GpuModel::H200Nvl141Gb => 141,
            GpuModel::Gh200_144Gb => 144,
            GpuModel::B200_180Gb => 180,
            GpuModel::Other(_) => 16,
        };
        gb * GIB
    }

    /// Nominal idle and maximum board power in W (maximum: the datasheet's TDP; for GH200 the
    /// GPU's share of the module is not published, so the module's configurable maximum is used).
    pub fn power_w(&self) -> (f64, f64) {
        match self {
            GpuModel::A100Sxm4_40Gb | GpuModel::A100Sxm4_80Gb => (50.0, 400.0),
            GpuModel::A100Pcie40Gb => (35.0, 250.0),
            GpuModel::A100Pcie80Gb => (40.0, 300.0),
            GpuModel::A30_24Gb => (30.0, 165.0),
            GpuModel::H100Sxm5_80Gb | GpuModel::H800_80Gb | GpuModel::H200Sxm5_141Gb => {
                (70.0, 700.0)
            }
            GpuModel::H100Pcie80Gb => (50.0, 350.0),
            GpuModel::H100Nvl94Gb | GpuModel::H20_96Gb => (55.0, 400.0),
            GpuModel::H200Nvl141Gb => (60.0, 600.0),
            GpuModel::Gh200_96Gb | GpuModel::Gh200_144Gb => (90.0, 1000.0),
            GpuModel::B200_180Gb => (120.0, 1000.0),
            GpuModel::Other(_) => (30.0, 250.0),
        }
    }

    /// Whether the model supports MIG (has a profile table here).
    pub fn mig_capable(&self) -> bool {
        !matches!(self, GpuModel::Other(_))
    }
}

impl std::fmt::Display for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pciDeviceId` as NVML gives it: device id high, vendor low.
    fn nv(device: u32) -> u32 {
        (device << 16) | u32::from(NVIDIA_VENDOR_ID)
    }

    /// (NVML product name, PCI device id, model): names and ids from NVIDIA's driver list.
    const REAL: &[(&str, u32, GpuModel)] = &[
        ("NVIDIA A100-SXM4-40GB", 0x20B0, GpuModel::A100Sxm4_40Gb),
        ("NVIDIA A100-SXM4-80GB", 0x20B2, GpuModel::A100Sxm4_80Gb),
        ("NVIDIA A100-PCIE-40GB", 0x20F1, GpuModel::A100Pcie40Gb),
        ("NVIDIA A100-PCIE-40GB", 0x20B1, GpuModel::A100Pcie40Gb),
        ("NVIDIA A100 80GB PCIe", 0x20B5, GpuModel::A100Pcie80Gb),
        ("NVIDIA A30", 0x20B7, GpuModel::A30_24Gb),
        ("NVIDIA H100 80GB HBM3", 0x2330, GpuModel::H100Sxm5_80Gb),
        ("NVIDIA H100 PCIe", 0x2331, GpuModel::H100Pcie80Gb),
        ("NVIDIA H100 NVL", 0x2321, GpuModel::H100Nvl94Gb),
        ("NVIDIA H800", 0x2324, GpuModel::H800_80Gb),
        ("NVIDIA H800 PCIe", 0x2322, GpuModel::H800_80Gb),
        ("NVIDIA H20", 0x2329, GpuModel::H20_96Gb),
        ("NVIDIA GH200 480GB", 0x2342, GpuModel::Gh200_96Gb),
        ("NVIDIA GH200 120GB", 0x2342, GpuModel::Gh200_96Gb),
        ("NVIDIA GH200 144G HBM3e", 0x2348, GpuModel::Gh200_144Gb),
        ("NVIDIA H200", 0x2335, GpuModel::H200Sxm5_141Gb),
        ("NVIDIA H200 NVL", 0x233B, GpuModel::H200Nvl141Gb),
        ("NVIDIA B200", 0x2901, GpuModel::B200_180Gb),
    ];

    #[test]
    fn each_real_id_maps_to_its_model() {
        for (name, id, model) in REAL {
            assert_eq!(
                GpuModel::from_pci_device_id(nv(*id)).as_ref(),
                Some(model),
                "{name} {id:#06x}"
            );
            assert_eq!(
                GpuModel::detect(Some(nv(*id)), "whatever"),
                *model,
                "{name}"
            );
        }
    }

    #[test]
    fn each_real_name_maps_to_its_model() {
        for (name, id, model) in REAL {
            assert_eq!(GpuModel::from_name(name), *model, "{name} ({id:#06x})");
        }
    }

    #[test]
    fn gh200_is_not_an_h200_and_gb200_is_not_a_b200() {
        assert_eq!(
            GpuModel::from_name("NVIDIA GH200 480GB"),
            GpuModel::Gh200_96Gb
        );
        assert_ne!(
            GpuModel::detect(Some(nv(0x2342)), "NVIDIA GH200 480GB"),
            GpuModel::H200Sxm5_141Gb
        );
        assert_eq!(
            GpuModel::from_name("NVIDIA GB200"),
            GpuModel::Other("NVIDIA GB200".into())
        );
        // "H200" contains "H20": not an H20.
        assert_eq!(GpuModel::from_name("NVIDIA H200"), GpuModel::H200Sxm5_141Gb);
        assert_eq!(
            GpuModel::from_name("NVIDIA H20-3e"),
            GpuModel::Other("NVIDIA H20-3e".into())
        );
    }

    #[test]
    fn the_id_wins_over_the_name() {
        // A renamed board (or a name NVML abbreviates) is still found by its id.
        assert_eq!(
            GpuModel::detect(Some(nv(0x2331)), "NVIDIA H100 80GB HBM3"),
            GpuModel::H100Pcie80Gb
        );
    }

    #[test]
    fn unknown_id_falls_back_to_the_name() {
        // T4 (0x1EB8) has no entry, nor has another vendor's device; no id at all is the same.
        assert_eq!(
            GpuModel::detect(Some(nv(0x1EB8)), "NVIDIA H100 PCIe"),
            GpuModel::H100Pcie80Gb
        );
        assert_eq!(
            GpuModel::detect(Some((0x2330 << 16) | 0x1002), "NVIDIA A30"),
            GpuModel::A30_24Gb
        );
        assert_eq!(GpuModel::detect(None, "NVIDIA B200"), GpuModel::B200_180Gb);
    }

    #[test]
    fn unknown_id_and_name_is_other_without_mig() {
        let m = GpuModel::detect(Some(nv(0x1EB8)), "Tesla T4");
        assert_eq!(m, GpuModel::Other("Tesla T4".to_string()));
        assert!(!m.mig_capable());
        assert!(crate::mig::profiles(&m).is_empty());
        assert!(crate::mig::table(&m).is_none());
        assert_eq!(
            GpuModel::from_name("NVIDIA H100"),
            GpuModel::Other("NVIDIA H100".into()),
            "an H100 of unknown memory size gets no table"
        );
    }

    #[test]
    fn normalised_names_round_trip() {
        for m in GpuModel::KNOWN {
            assert_eq!(GpuModel::from_name(m.name()), m);
            assert_eq!(GpuModel::from_name(&m.name().to_ascii_lowercase()), m);
            assert!(m.mig_capable());
            assert!(m.memory_bytes() >= 24 * GIB);
        }
        assert_eq!(
            GpuModel::from_name("h100-sxm5-80gb"),
            GpuModel::H100Sxm5_80Gb
        );
    }

    #[test]
    fn every_model_has_an_id() {
        for m in GpuModel::KNOWN {
            assert!(
                PCI_DEVICE_IDS.iter().any(|(_, x)| *x == m),
                "{m} has no PCI device id"
            );
        }
    }
}
