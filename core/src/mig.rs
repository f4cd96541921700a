//! MIG profile tables and the layout rules NVML enforces.
//!
//! The tables encode `../shared/data/mig-profiles.csv` (NVIDIA's MIG user guide and the
//! `nvidia-smi mig -lgipp` placement listing). A GPU has 7 compute slices and 8 memory slices; an
//! instance of a profile covers `size` memory slices starting at one of the profile's legal `starts`.
//! Two instances may not overlap, a profile has a maximum instance count, and at most one `+me`
//! profile (which owns the media engines) can exist per GPU. [`check_create`] refuses an illegal
//! layout with the error NVML gives for it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gpu::GpuModel;

/// Compute slices of a MIG-capable GPU.
pub const COMPUTE_SLICES: u8 = 7;
/// Memory slices of a MIG-capable GPU.
pub const MEMORY_SLICES: u8 = 8;

/// One MIG GPU-instance profile of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigProfile {
    /// Name as nvidia-smi prints it, e.g. "3g.40gb".
    pub name: &'static str,
    /// NVML profile index (GPU_INSTANCE_PROFILE_*), used with nvmlDeviceGetGpuInstanceProfileInfo.
    pub nvml_index: u32,
    /// Profile id nvidia-smi prints (differs from the NVML index).
    pub smi_id: u32,
    /// Compute slices of 7.
    pub compute_slices: u8,
    /// Memory slices of 8.
    pub memory_slices: u8,
    /// Most instances of this profile on one GPU.
    pub max_instances: u8,
    /// Legal first memory slices.
    pub starts: &'static [u8],
    /// Memory slices one placement covers.
    pub size: u8,
}

impl MigProfile {
    /// Whether the profile owns the media engines (`+me`).
    pub fn media_extension(&self) -> bool {
        self.name.ends_with("+me")
    }

    /// Memory in bytes of an instance on a GPU of `gpu_memory_bytes`.
    pub fn memory_bytes(&self, gpu_memory_bytes: u64) -> u64 {
        gpu_memory_bytes / u64::from(MEMORY_SLICES) * u64::from(self.memory_slices)
    }

    /// Compute share of the GPU in milli-GPU (1000 = whole GPU).
    pub fn compute_milli(&self) -> u32 {
        u32::from(self.compute_slices) * 1000 / u32::from(COMPUTE_SLICES)
    }
}

const S7: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const S4: &[u8] = &[0, 2, 4, 6];
const S3: &[u8] = &[0, 2, 4];
const S2: &[u8] = &[0, 4];
const S1: &[u8] = &[0];

macro_rules! profiles {
    ($( ($name:literal, $idx:literal, $smi:literal, $c:literal, $m:literal, $max:literal, $starts:ident, $size:literal) ),* $(,)?) => {
        &[$(MigProfile { name: $name, nvml_index: $idx, smi_id: $smi, compute_slices: $c,
            memory_slices: $m, max_instances: $max, starts: $starts, size: $size }),*]
    };
}

const A100_40: &[MigProfile] = profiles![
    ("1g.5gb", 0, 19, 1, 1, 7, S7, 1),
    ("1g.5gb+me", 7, 20, 1, 1, 1, S7, 1),
    ("1g.10gb", 9, 15, 1, 2, 4, S4, 2),
    ("2g.10gb", 1, 14, 2, 2, 3, S3, 2),
    ("3g.20gb", 2, 9, 3, 4, 2, S2, 4),
    ("4g.20gb", 3, 5, 4, 4, 1, S1, 4),
    ("7g.40gb", 4, 0, 7, 8, 1, S1, 8),
];
const A100_80: &[MigProfile] = profiles![
    ("1g.10gb", 0, 19, 1, 1, 7, S7, 1),
    ("1g.10gb+me", 7, 20, 1, 1, 1, S7, 1),
    ("1g.20gb", 9, 15, 1, 2, 4, S4, 2),
    ("2g.20gb", 1, 14, 2, 2, 3, S3, 2),
    ("3g.40gb", 2, 9, 3, 4, 2, S2, 4),
    ("4g.40gb", 3, 5, 4, 4, 1, S1, 4),
    ("7g.80gb", 4, 0, 7, 8, 1, S1, 8),
];
const H100_80: &[MigProfile] = profiles![
    ("1g.10gb", 0, 19, 1, 1, 7, S7, 1),
    ("1g.10gb+me", 7, 20, 1, 1, 1, S7, 1),
    ("1g.20gb", 9, 15, 1, 2, 4, S4, 2),
    ("2g.20gb", 1, 14, 2, 2, 3, S3, 2),
    ("3g.40gb", 2, 9, 3, 4, 2, S2, 4),
    ("4g.40gb", 3, 5, 4, 4, 1, S1, 4),
    ("7g.80gb", 4, 0, 7, 8, 1, S1, 8),
];
const H200_141: &[MigProfile] = profiles![
    ("1g.18gb", 0, 19, 1, 1, 7, S7, 1),
    ("1g.18gb+me", 7, 20, 1, 1, 1, S7, 1),
    ("1g.35gb", 9, 15, 1, 2, 4, S4, 2),
    ("2g.35gb", 1, 14, 2, 2, 3, S3, 2),
    ("3g.71gb", 2, 9, 3, 4, 2, S2, 4),
    ("4g.71gb", 3, 5, 4, 4, 1, S1, 4),
    ("7g.141gb", 4, 0, 7, 8, 1, S1, 8),
];

/// The MIG profiles of a model (empty for models without MIG).
pub fn profiles(model: &GpuModel) -> &'static [MigProfile] {
    match model {
        GpuModel::A100Sxm4_40Gb => A100_40,
        GpuModel::A100Sxm4_80Gb => A100_80,
        GpuModel::H100Sxm5_80Gb => H100_80,
        GpuModel::H200Sxm5_141Gb => H200_141,
        GpuModel::Other(_) => &[],
    }
}

/// Looks a profile up by name on a model.
pub fn profile(model: &GpuModel, name: &str) -> Option<&'static MigProfile> {
    profiles(model).iter().find(|p| p.name == name)
}

/// Whether any known model has a profile of this name.
pub fn profile_exists_anywhere(name: &str) -> bool {
    GpuModel::KNOWN.iter().any(|m| profile(m, name).is_some())
}

/// Every profile name of every known model, sorted and deduplicated (for error messages).
pub fn all_profile_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = GpuModel::KNOWN
        .iter()
        .flat_map(|m| profiles(m).iter().map(|p| p.name))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A MIG instance in a layout: which profile, where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// Profile name.
    pub profile: String,
    /// First memory slice.
    pub start: u8,
}

/// Why NVML would refuse to create an instance. Names follow NVML's return codes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MigError {
    /// The model has no such profile (NVML_ERROR_NOT_SUPPORTED / invalid argument).
    #[error("profile {profile} does not exist on {model}; valid profiles: {valid}")]
    UnknownProfile {
        model: String,
        profile: String,
        valid: String,
    },
    /// The start slot is not one of the profile's legal placements (NVML_ERROR_INVALID_ARGUMENT).
    #[error("profile {profile} cannot start at memory slice {start}; legal starts: {legal:?}")]
    InvalidStart {
        profile: String,
        start: u8,
        legal: Vec<u8>,
    },
    /// The placement overlaps an existing instance (NVML_ERROR_INSUFFICIENT_RESOURCES).
    #[error(
        "profile {profile} at slice {start} overlaps the existing {other} at slice {other_start}"
    )]
    Overlap {
        profile: String,
        start: u8,
        other: String,
        other_start: u8,
    },
    /// The profile's maximum instance count is reached (NVML_ERROR_INSUFFICIENT_RESOURCES).
    #[error("profile {profile} allows at most {max} instances per GPU")]
    MaxInstances { profile: String, max: u8 },
    /// A second `+me` profile: the media engines are already owned (NVML_ERROR_INSUFFICIENT_RESOURCES).
    #[error("the media engines are already owned by {other}")]
    MediaEnginesTaken { other: String },
    /// The existing layout names a profile this model lacks (corrupt input).
    #[error("existing layout holds unknown profile {0}")]
    CorruptLayout(String),
}

fn range(p: &MigProfile, start: u8) -> (u8, u8) {
    (start, start + p.size)
}

/// Checks that `name` at `start` can be created on a GPU of `model` whose current layout is
/// `existing`, with the checks NVML makes and in its order.
pub fn check_create(
    model: &GpuModel,
    existing: &[Placed],
    name: &str,
    start: u8,
) -> Result<&'static MigProfile, MigError> {
    let p = profile(model, name).ok_or_else(|| MigError::UnknownProfile {
        model: model.name().to_string(),
        profile: name.to_string(),
        valid: profiles(model)
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    if !p.starts.contains(&start) {
        return Err(MigError::InvalidStart {
            profile: name.to_string(),
            start,
            legal: p.starts.to_vec(),
        });
    }
    let same = existing.iter().filter(|e| e.profile == name).count();
    if same >= usize::from(p.max_instances) {
        return Err(MigError::MaxInstances {
            profile: name.to_string(),
            max: p.max_instances,
        });
    }
    let (a0, a1) = range(p, start);
    for e in existing {
        let ep =
            profile(model, &e.profile).ok_or_else(|| MigError::CorruptLayout(e.profile.clone()))?;
        let (b0, b1) = range(ep, e.start);
        if a0 < b1 && b0 < a1 {
            return Err(MigError::Overlap {
                profile: name.to_string(),
                start,
                other: e.profile.clone(),
                other_start: e.start,
            });
        }
        if p.media_extension() && ep.media_extension() {
            return Err(MigError::MediaEnginesTaken {
                other: e.profile.clone(),
            });
        }
    }
    Ok(p)
}

/// Legal starts at which `name` could be created now, in ascending order.
pub fn free_starts(model: &GpuModel, existing: &[Placed], name: &str) -> Vec<u8> {
    match profile(model, name) {
        Some(p) => p
            .starts
            .iter()
            .copied()
            .filter(|s| check_create(model, existing, name, *s).is_ok())
            .collect(),
        None => Vec::new(),
    }
}

/// Memory slices used by a layout, as a bitmask (bit i = slice i).
pub fn used_mask(model: &GpuModel, existing: &[Placed]) -> u8 {
    existing
        .iter()
        .fold(0u8, |m, e| match profile(model, &e.profile) {
            Some(p) => {
                let (a, b) = range(p, e.start);
                (a..b).fold(m, |m, i| m | (1 << i))
            }
            None => m,
        })
}

/// Compute slices used by a layout.
pub fn used_compute(model: &GpuModel, existing: &[Placed]) -> u8 {
    existing
        .iter()
        .filter_map(|e| profile(model, &e.profile))
        .map(|p| p.compute_slices)
        .sum()
}

/// Profiles that could be created now on this layout (at least one free legal start).
pub fn placeable_profiles(model: &GpuModel, existing: &[Placed]) -> Vec<&'static str> {
    profiles(model)
        .iter()
        .filter(|p| !free_starts(model, existing, p.name).is_empty())
        .map(|p| p.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(profile: &str, start: u8) -> Placed {
        Placed {
            profile: profile.to_string(),
            start,
        }
    }

    const H100: GpuModel = GpuModel::H100Sxm5_80Gb;

    #[test]
    fn h100_two_3g_fit_at_0_and_4() {
        check_create(&H100, &[], "3g.40gb", 0).unwrap();
        check_create(&H100, &[at("3g.40gb", 0)], "3g.40gb", 4).unwrap();
    }

    #[test]
    fn h100_two_4g_do_not_fit() {
        let e = check_create(&H100, &[at("4g.40gb", 0)], "4g.40gb", 0).unwrap_err();
        assert!(matches!(e, MigError::MaxInstances { .. }), "{e}");
        assert!(free_starts(&H100, &[at("4g.40gb", 0)], "4g.40gb").is_empty());
    }

    #[test]
    fn h100_seven_1g_fit_and_no_eighth() {
        let mut layout = Vec::new();
        for s in 0..7 {
            check_create(&H100, &layout, "1g.10gb", s).unwrap();
            layout.push(at("1g.10gb", s));
        }
        assert!(free_starts(&H100, &layout, "1g.10gb").is_empty());
        assert_eq!(used_compute(&H100, &layout), 7);
    }

    #[test]
    fn h100_7g_excludes_everything_else() {
        let full = [at("7g.80gb", 0)];
        for p in profiles(&H100) {
            assert!(
                free_starts(&H100, &full, p.name).is_empty(),
                "{} fits beside 7g",
                p.name
            );
        }
        let one = [at("1g.10gb", 6)];
        assert!(matches!(
            check_create(&H100, &one, "7g.80gb", 0),
            Err(MigError::Overlap { .. })
        ));
    }

    #[test]
    fn wrong_start_is_refused_like_nvml() {
        let e = check_create(&H100, &[], "3g.40gb", 2).unwrap_err();
        assert_eq!(
            e,
            MigError::InvalidStart {
                profile: "3g.40gb".into(),
                start: 2,
                legal: vec![0, 4]
            }
        );
    }

    #[test]
    fn only_one_media_extension_per_gpu() {
        let e = check_create(&H100, &[at("1g.10gb+me", 0)], "1g.10gb+me", 3).unwrap_err();
        assert!(matches!(e, MigError::MaxInstances { .. }));
    }

    #[test]
    fn unknown_profile_lists_valid_ones() {
        let e = check_create(&GpuModel::A100Sxm4_40Gb, &[], "3g.40gb", 0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("3g.20gb") && msg.contains("7g.40gb"), "{msg}");
    }

    #[test]
    fn every_model_has_the_csv_shape() {
        for m in GpuModel::KNOWN {
            let ps = profiles(&m);
            assert_eq!(ps.len(), 7, "{m}");
            for p in ps {
                for s in p.starts {
                    assert!(s + p.size <= MEMORY_SLICES, "{m} {} at {s}", p.name);
                }
            }
        }
        assert_eq!(
            profile(&GpuModel::H200Sxm5_141Gb, "3g.71gb")
                .unwrap()
                .nvml_index,
            2
        );
        assert_eq!(
            profile(&GpuModel::A100Sxm4_40Gb, "1g.10gb").unwrap().smi_id,
            15
        );
    }

    #[test]
    fn a100_layouts() {
        let m = GpuModel::A100Sxm4_40Gb;
        // 4g + 2g + 1g fills 7 compute slices.
        let l = [at("4g.20gb", 0), at("2g.10gb", 4)];
        check_create(&m, &l, "1g.5gb", 6).unwrap();
        assert_eq!(free_starts(&m, &l, "1g.5gb"), vec![6]);
        assert_eq!(used_mask(&m, &l), 0b0011_1111);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any sequence of accepted creations yields a layout with no overlap and no profile over its
            /// maximum: the checker never accepts an illegal layout.
            #[test]
            fn accepted_layouts_are_legal(ops in proptest::collection::vec((0usize..7, 0u8..8), 0..20), mi in 0usize..4) {
                let model = GpuModel::KNOWN[mi].clone();
                let ps = profiles(&model);
                let mut layout: Vec<Placed> = Vec::new();
                for (pi, s) in ops {
                    let p = &ps[pi];
                    if check_create(&model, &layout, p.name, s).is_ok() {
                        layout.push(Placed { profile: p.name.to_string(), start: s });
                    }
                }
                let mut mask = 0u16;
                for e in &layout {
                    let p = profile(&model, &e.profile).unwrap();
                    for i in e.start..e.start + p.size {
                        prop_assert_eq!(mask & (1 << i), 0);
                        mask |= 1 << i;
                    }
                    prop_assert!(layout.iter().filter(|x| x.profile == e.profile).count() <= usize::from(p.max_instances));
                }
                prop_assert!(used_compute(&model, &layout) <= COMPUTE_SLICES);
            }
        }
    }
}
