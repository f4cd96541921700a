//! GPU models known to greenslice and their nominal figures.

use serde::{Deserialize, Serialize};

use crate::GIB;

/// A GPU model with a MIG profile table and a power model.
///
/// Figures are nominal (vendor datasheets; idle power from public captures, approximate). Models
/// greenslice has no table for still work as whole GPUs and shares: see [`GpuModel::Other`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GpuModel {
    A100Sxm4_40Gb,
    A100Sxm4_80Gb,
    H100Sxm5_80Gb,
    H200Sxm5_141Gb,
    /// Any other model, by its normalised name; no MIG table.
    Other(String),
}

impl GpuModel {
    /// All models with a MIG table.
    pub const KNOWN: [GpuModel; 4] = [
        GpuModel::A100Sxm4_40Gb,
        GpuModel::A100Sxm4_80Gb,
        GpuModel::H100Sxm5_80Gb,
        GpuModel::H200Sxm5_141Gb,
    ];

    /// Normalised name, as used on the wire and in `../shared/data/mig-profiles.csv`.
    pub fn name(&self) -> &str {
        match self {
            GpuModel::A100Sxm4_40Gb => "A100-SXM4-40GB",
            GpuModel::A100Sxm4_80Gb => "A100-SXM4-80GB",
            GpuModel::H100Sxm5_80Gb => "H100-SXM5-80GB",
            GpuModel::H200Sxm5_141Gb => "H200-SXM5-141GB",
            GpuModel::Other(n) => n,
        }
    }

    /// Parses a normalised name or an NVML product name ("NVIDIA H100 80GB HBM3").
    pub fn from_name(name: &str) -> GpuModel {
        let n = name.to_ascii_uppercase();
        for m in Self::KNOWN {
            if n == m.name() {
                return m;
            }
        }
        // NVML product names: "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA H200".
        if n.contains("A100") && n.contains("40GB") {
            GpuModel::A100Sxm4_40Gb
        } else if n.contains("A100") && n.contains("80GB") {
            GpuModel::A100Sxm4_80Gb
        } else if n.contains("H100") && (n.contains("80GB") || n.contains("SXM")) {
            GpuModel::H100Sxm5_80Gb
        } else if n.contains("H200") {
            GpuModel::H200Sxm5_141Gb
        } else {
            GpuModel::Other(name.trim().to_string())
        }
    }

    /// Board memory in bytes (nominal; the driver reports the exact figure).
    pub fn memory_bytes(&self) -> u64 {
        match self {
            GpuModel::A100Sxm4_40Gb => 40 * GIB,
            GpuModel::A100Sxm4_80Gb | GpuModel::H100Sxm5_80Gb => 80 * GIB,
            GpuModel::H200Sxm5_141Gb => 141 * GIB,
            GpuModel::Other(_) => 16 * GIB,
        }
    }

    /// Nominal idle and maximum board power in W.
    pub fn power_w(&self) -> (f64, f64) {
        match self {
            GpuModel::A100Sxm4_40Gb | GpuModel::A100Sxm4_80Gb => (50.0, 400.0),
            GpuModel::H100Sxm5_80Gb | GpuModel::H200Sxm5_141Gb => (70.0, 700.0),
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

    #[test]
    fn parses_nvml_product_names() {
        assert_eq!(
            GpuModel::from_name("NVIDIA H100 80GB HBM3"),
            GpuModel::H100Sxm5_80Gb
        );
        assert_eq!(
            GpuModel::from_name("NVIDIA A100-SXM4-40GB"),
            GpuModel::A100Sxm4_40Gb
        );
        assert_eq!(
            GpuModel::from_name("NVIDIA A100-SXM4-80GB"),
            GpuModel::A100Sxm4_80Gb
        );
        assert_eq!(GpuModel::from_name("NVIDIA H200"), GpuModel::H200Sxm5_141Gb);
        assert_eq!(
            GpuModel::from_name("h100-sxm5-80gb"),
            GpuModel::H100Sxm5_80Gb
        );
        assert_eq!(
            GpuModel::from_name("Tesla T4"),
            GpuModel::Other("Tesla T4".to_string())
        );
    }
}
