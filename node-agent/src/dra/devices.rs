//! How the node's devices are named in its DRA ResourceSlices, and how a claim's allocation names
//! them back. One home for the scheme: the publisher ([`super::slices`]) writes these names and
//! prepare ([`super::prepare`]) parses them, so the two cannot drift apart.
//!
//! Every device name is a DNS label (at most 63 characters of `[a-z0-9-]`), as the
//! `resource.k8s.io/v1` API requires:
//! - `gpu-<index>`: a whole non-MIG GPU (NVML index).
//! - `gpu-<index>-share`: time-sliced shares of a non-MIG GPU, through consumable capacity
//!   ([`CAPACITY_COMPUTE`] in milli-GPU, [`CAPACITY_MEMORY`] in bytes).
//! - `gpu-<index>-mig-<profile>-<start>`: a MIG partition of a GPU in MIG mode, profile with `.`
//!   and `+` turned into `-` (`1g.10gb+me` is `1g-10gb-me`) and `start` its first memory slice.
//!
//! The pool of a node's devices is named after the node.

use greenslice_core::mig;
use thiserror::Error;

/// The driver name the agent registers with the kubelet and publishes its ResourceSlices under.
pub const DRIVER: &str = "gpu.greenslice.io";
/// Consumable capacity of a share device: compute in milli-GPU (1000 = the whole GPU).
pub const CAPACITY_COMPUTE: &str = "compute";
/// Consumable capacity of a share device: GPU memory in bytes.
pub const CAPACITY_MEMORY: &str = "memory";
/// Longest DNS label (device names, pool name parts).
pub const MAX_NAME_LEN: usize = 63;

/// A device of this driver, as its name says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceRef {
    /// A whole GPU.
    Whole { gpu: u32 },
    /// Shares of a GPU (consumable capacity).
    Share { gpu: u32 },
    /// A MIG partition: `profile` as nvidia-smi prints it, `start` its first memory slice.
    Mig {
        gpu: u32,
        profile: String,
        start: u8,
    },
}

/// Why a device name is not one of this driver's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceNameError {
    #[error("device name {0:?} does not start with \"gpu-<index>\"")]
    NoGpu(String),
    #[error(
        "device name {0:?} has an unknown form (expected gpu-N, gpu-N-share or gpu-N-mig-<profile>-<start>)"
    )]
    Form(String),
    #[error("device name {name:?} names an unknown MIG profile {label:?}")]
    UnknownProfile { name: String, label: String },
}

/// A MIG profile as it appears in a device name: `.` and `+` become `-`.
pub fn profile_label(profile: &str) -> String {
    profile
        .chars()
        .map(|c| match c {
            '.' | '+' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl DeviceRef {
    /// The GPU (NVML index) the device lives on.
    pub fn gpu(&self) -> u32 {
        match self {
            DeviceRef::Whole { gpu } | DeviceRef::Share { gpu } | DeviceRef::Mig { gpu, .. } => {
                *gpu
            }
        }
    }

    /// The device's name in a ResourceSlice.
    pub fn name(&self) -> String {
        match self {
            DeviceRef::Whole { gpu } => format!("gpu-{gpu}"),
            DeviceRef::Share { gpu } => format!("gpu-{gpu}-share"),
            DeviceRef::Mig {
                gpu,
                profile,
                start,
            } => format!("gpu-{gpu}-mig-{}-{start}", profile_label(profile)),
        }
    }

    /// Parses a device name this driver published. MIG profiles are checked against every known
    /// profile; whether the node's GPU has it is for the caller to check.
    pub fn parse(name: &str) -> Result<DeviceRef, DeviceNameError> {
        let rest = name
            .strip_prefix("gpu-")
            .ok_or_else(|| DeviceNameError::NoGpu(name.to_string()))?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        // No leading zeros: one name per device.
        if digits == 0 || (digits > 1 && rest.starts_with('0')) {
            return Err(DeviceNameError::NoGpu(name.to_string()));
        }
        let gpu: u32 = rest[..digits]
            .parse()
            .map_err(|_| DeviceNameError::NoGpu(name.to_string()))?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Ok(DeviceRef::Whole { gpu });
        }
        if tail == "-share" {
            return Ok(DeviceRef::Share { gpu });
        }
        let Some(mig_part) = tail.strip_prefix("-mig-") else {
            return Err(DeviceNameError::Form(name.to_string()));
        };
        let (label, start) = mig_part
            .rsplit_once('-')
            .ok_or_else(|| DeviceNameError::Form(name.to_string()))?;
        if start.is_empty()
            || !start.bytes().all(|b| b.is_ascii_digit())
            || (start.len() > 1 && start.starts_with('0'))
        {
            return Err(DeviceNameError::Form(name.to_string()));
        }
        let start: u8 = start
            .parse()
            .map_err(|_| DeviceNameError::Form(name.to_string()))?;
        let profile = mig::all_profile_names()
            .into_iter()
            .find(|p| profile_label(p) == label)
            .ok_or_else(|| DeviceNameError::UnknownProfile {
                name: name.to_string(),
                label: label.to_string(),
            })?;
        Ok(DeviceRef::Mig {
            gpu,
            profile: profile.to_string(),
            start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_profile_round_trips_and_labels_are_unique() {
        let names = mig::all_profile_names();
        let mut labels: Vec<String> = names.iter().map(|p| profile_label(p)).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), names.len(), "two profiles share a label");
        for p in names {
            for start in [0u8, 4, 6] {
                let d = DeviceRef::Mig {
                    gpu: 7,
                    profile: p.to_string(),
                    start,
                };
                let n = d.name();
                assert!(n.len() <= MAX_NAME_LEN, "{n}");
                assert!(
                    n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{n} is not a DNS label"
                );
                assert_eq!(DeviceRef::parse(&n), Ok(d));
            }
        }
        for d in [DeviceRef::Whole { gpu: 0 }, DeviceRef::Share { gpu: 12 }] {
            assert_eq!(DeviceRef::parse(&d.name()), Ok(d));
        }
        assert_eq!(
            DeviceRef::parse("gpu-3-mig-1g-10gb-me-6"),
            Ok(DeviceRef::Mig {
                gpu: 3,
                profile: "1g.10gb+me".into(),
                start: 6
            })
        );
    }

    #[test]
    fn foreign_and_malformed_names_are_refused() {
        for bad in [
            "",
            "gpu",
            "gpu-",
            "gpu-x",
            "gpu-01",
            "gpu-1-",
            "gpu-1-whole",
            "gpu-1-share-2",
            "gpu-1-mig-",
            "gpu-1-mig-3g-40gb",
            "gpu-1-mig-3g-40gb-",
            "gpu-1-mig-3g-40gb-01",
            "gpu-1-mig-3g-40gb-999",
            "nic-0",
            "gpu-99999999999",
        ] {
            assert!(DeviceRef::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            DeviceRef::parse("gpu-0-mig-9g-1tb-0"),
            Err(DeviceNameError::UnknownProfile { .. })
        ));
    }
}
