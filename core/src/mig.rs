//! MIG profile tables and the layout rules NVML enforces.
//!
//! A GPU of the 7-slice models (A100, H100, H200, GH200, H20, B200) has 7 compute slices and 8
//! memory slices; an A30 has 4 of each. An instance of a profile covers `size` memory slices
//! starting at one of the profile's legal `starts`. Two instances may not overlap, a profile has a
//! maximum instance count, and at most one `+me` profile (which owns the media engines) can exist per
//! GPU. [`check_create`] refuses an illegal layout with the error NVML gives for it.
//!
//! Each model's [`MigTable`] says where it comes from and whether a published NVIDIA document
//! confirms it ([`MigTable::confirmed`]): the A100, A30, H100-80GB and H200 tables are NVIDIA's MIG
//! user guide ("Supported MIG Profiles"; the A100/H100/H200 ones are also
//! `../shared/data/mig-profiles.csv`, a test compares them). The H100 NVL, H800, H20, GH200 and
//! B200 tables take their profile names from NVIDIA's default mig-parted configuration (per PCI
//! device id) and assume the H100 layout (placements, maximum counts, NVML indices and ids): they
//! are marked unconfirmed until checked on hardware. On real hardware the NVML backend asks the
//! driver for the placements anyway.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gpu::GpuModel;

/// Compute slices of a 7-slice MIG GPU (A30: 4; see [`MigTable::compute_slices`]).
pub const COMPUTE_SLICES: u8 = 7;
/// Memory slices of a MIG GPU at most (A30: 4; see [`MigTable::memory_slices`]).
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
    /// Compute slices of the GPU's [`MigProfile::gpu_compute_slices`].
    pub compute_slices: u8,
    /// Memory slices of the GPU's [`MigProfile::gpu_memory_slices`].
    pub memory_slices: u8,
    /// Most instances of this profile on one GPU.
    pub max_instances: u8,
    /// Legal first memory slices.
    pub starts: &'static [u8],
    /// Memory slices one placement covers.
    pub size: u8,
    /// Compute slices of the whole GPU (7, or 4 on an A30).
    pub gpu_compute_slices: u8,
    /// Memory slices of the whole GPU (8, or 4 on an A30).
    pub gpu_memory_slices: u8,
}

impl MigProfile {
    /// Whether the profile owns the media engines (`+me`).
    pub fn media_extension(&self) -> bool {
        self.name.ends_with("+me")
    }

    /// Memory in bytes of an instance on a GPU of `gpu_memory_bytes`.
    pub fn memory_bytes(&self, gpu_memory_bytes: u64) -> u64 {
        gpu_memory_bytes / u64::from(self.gpu_memory_slices) * u64::from(self.memory_slices)
    }

    /// Compute share of the GPU in milli-GPU (1000 = whole GPU).
    pub fn compute_milli(&self) -> u32 {
        u32::from(self.compute_slices) * 1000 / u32::from(self.gpu_compute_slices)
    }

    /// Compute share of the GPU as a fraction in (0, 1].
    pub fn compute_fraction(&self) -> f64 {
        f64::from(self.compute_slices) / f64::from(self.gpu_compute_slices)
    }
}

/// The MIG profile table of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigTable {
    pub profiles: &'static [MigProfile],
    /// Compute slices of the GPU.
    pub compute_slices: u8,
    /// Memory slices of the GPU.
    pub memory_slices: u8,
    /// Whether a published NVIDIA document (the MIG user guide) gives this table. An unconfirmed
    /// table is a best reading of NVIDIA's configuration files, to be checked on hardware.
    pub confirmed: bool,
    /// Where the table comes from.
    pub source: &'static str,
}

const S7: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const S4: &[u8] = &[0, 2, 4, 6];
const S3: &[u8] = &[0, 2, 4];
const S2: &[u8] = &[0, 4];
const S1: &[u8] = &[0];
// A30: 4 memory slices.
const A4: &[u8] = &[0, 1, 2, 3];
const A2: &[u8] = &[0, 2];

macro_rules! profiles {
    ($gc:literal, $gm:literal; $( ($name:literal, $idx:literal, $smi:literal, $c:literal, $m:literal, $max:literal, $starts:ident, $size:literal) ),* $(,)?) => {
        &[$(MigProfile { name: $name, nvml_index: $idx, smi_id: $smi, compute_slices: $c,
            memory_slices: $m, max_instances: $max, starts: $starts, size: $size,
            gpu_compute_slices: $gc, gpu_memory_slices: $gm }),*]
    };
}

/// The 7-slice layout every A100/Hopper/B200 table shares, with its memory sizes in the names.
macro_rules! seven_slice {
    ($g1:literal, $g1me:literal, $g1x2:literal, $g2:literal, $g3:literal, $g4:literal, $g7:literal) => {
        profiles![7, 8;
            ($g1, 0, 19, 1, 1, 7, S7, 1),
            ($g1me, 7, 20, 1, 1, 1, S7, 1),
            ($g1x2, 9, 15, 1, 2, 4, S4, 2),
            ($g2, 1, 14, 2, 2, 3, S3, 2),
            ($g3, 2, 9, 3, 4, 2, S2, 4),
            ($g4, 3, 5, 4, 4, 1, S1, 4),
            ($g7, 4, 0, 7, 8, 1, S1, 8),
        ]
    };
}

const GUIDE: &str = "NVIDIA MIG user guide, Supported MIG Profiles";
const MIG_PARTED: &str =
    "profile names from NVIDIA's default mig-parted configuration; H100 layout assumed";

const fn mig_table(
    profiles: &'static [MigProfile],
    confirmed: bool,
    source: &'static str,
) -> MigTable {
    MigTable {
        profiles,
        compute_slices: profiles[0].gpu_compute_slices,
        memory_slices: profiles[0].gpu_memory_slices,
        confirmed,
        source,
    }
}

const A100_40: MigTable = mig_table(
    seven_slice![
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb"
    ],
    true,
    GUIDE,
);
const A100_80: MigTable = mig_table(
    seven_slice![
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb"
    ],
    true,
    GUIDE,
);
// A30-24GB: 4 compute and 4 memory slices; NVML indices GPU_INSTANCE_PROFILE_1_SLICE (0),
// _2_SLICE (1), _4_SLICE (3), _1_SLICE_REV1 (7), _2_SLICE_REV1 (8); ids as `nvidia-smi mig -lgip`
// prints them in the guide's A30 example.
const A30_24: MigTable = mig_table(
    profiles![4, 4;
        ("1g.6gb", 0, 14, 1, 1, 4, A4, 1),
        ("1g.6gb+me", 7, 21, 1, 1, 1, A4, 1),
        ("2g.12gb", 1, 5, 2, 2, 2, A2, 2),
        ("2g.12gb+me", 8, 6, 2, 2, 1, A2, 2),
        ("4g.24gb", 3, 0, 4, 4, 1, S1, 4),
    ],
    true,
    GUIDE,
);
const H100_80: MigTable = A100_80;
const H800_80: MigTable = mig_table(A100_80.profiles, false, MIG_PARTED);
const H100_94: MigTable = mig_table(
    seven_slice![
        "1g.12gb",
        "1g.12gb+me",
        "1g.24gb",
        "2g.24gb",
        "3g.47gb",
        "4g.47gb",
        "7g.94gb"
    ],
    false,
    MIG_PARTED,
);
const H100_96: MigTable = mig_table(
    seven_slice![
        "1g.12gb",
        "1g.12gb+me",
        "1g.24gb",
        "2g.24gb",
        "3g.48gb",
        "4g.48gb",
        "7g.96gb"
    ],
    false,
    MIG_PARTED,
);
const GH200_144: MigTable = mig_table(
    seven_slice![
        "1g.18gb",
        "1g.18gb+me",
        "1g.36gb",
        "2g.36gb",
        "3g.72gb",
        "4g.72gb",
        "7g.144gb"
    ],
    false,
    MIG_PARTED,
);
const H200_141: MigTable = mig_table(
    seven_slice![
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb"
    ],
    true,
    GUIDE,
);
const H200_NVL: MigTable = mig_table(H200_141.profiles, false, MIG_PARTED);
const B200_180: MigTable = mig_table(
    seven_slice![
        "1g.23gb",
        "1g.23gb+me",
        "1g.45gb",
        "2g.45gb",
        "3g.90gb",
        "4g.90gb",
        "7g.180gb"
    ],
    false,
    MIG_PARTED,
);

/// The MIG table of a model (`None` for models without MIG).
pub fn table(model: &GpuModel) -> Option<&'static MigTable> {
    Some(match model {
        GpuModel::A100Sxm4_40Gb | GpuModel::A100Pcie40Gb => &A100_40,
        GpuModel::A100Sxm4_80Gb | GpuModel::A100Pcie80Gb => &A100_80,
        GpuModel::A30_24Gb => &A30_24,
        GpuModel::H100Sxm5_80Gb | GpuModel::H100Pcie80Gb => &H100_80,
        GpuModel::H800_80Gb => &H800_80,
        GpuModel::H100Nvl94Gb => &H100_94,
        GpuModel::H20_96Gb | GpuModel::Gh200_96Gb => &H100_96,
        GpuModel::Gh200_144Gb => &GH200_144,
        GpuModel::H200Sxm5_141Gb => &H200_141,
        GpuModel::H200Nvl141Gb => &H200_NVL,
        GpuModel::B200_180Gb => &B200_180,
        GpuModel::Other(_) => return None,
    })
}

/// The MIG profiles of a model (empty for models without MIG).
pub fn profiles(model: &GpuModel) -> &'static [MigProfile] {
    table(model).map_or(&[], |t| t.profiles)
}

/// Compute slices of a MIG GPU of `model` ([`COMPUTE_SLICES`] for models without a table).
pub fn compute_slices(model: &GpuModel) -> u8 {
    table(model).map_or(COMPUTE_SLICES, |t| t.compute_slices)
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

/// Free compute slices of a GPU with layout `existing` that the largest profile still creatable
/// there cannot use (0 on an empty GPU): the fragmentation greenslice's placement minimises.
pub fn waste(model: &GpuModel, existing: &[Placed]) -> u8 {
    let free = compute_slices(model).saturating_sub(used_compute(model, existing));
    let largest = profiles(model)
        .iter()
        .filter(|p| p.compute_slices <= free && !free_starts(model, existing, p.name).is_empty())
        .map(|p| p.compute_slices)
        .max()
        .unwrap_or(0);
    free - largest
}

/// How good creating `name` at `start` on a GPU with layout `existing` is for greenslice's
/// placement (higher is better; `None` when it cannot be created there): first the least increase
/// of [`waste`], then the fewest free compute slices left (pack GPUs already in use), then the
/// most (profile, start) pairs still creatable (keep large profiles placeable). The same order as
/// the controller's MIG score (`placement::score::mig_score`); the DRA publisher steers the
/// scheduler with it.
pub fn placement_score(
    model: &GpuModel,
    existing: &[Placed],
    name: &str,
    start: u8,
) -> Option<i64> {
    let p = check_create(model, existing, name, start).ok()?;
    let mut after = existing.to_vec();
    after.push(Placed {
        profile: name.to_string(),
        start,
    });
    let dw = i64::from(waste(model, &after)) - i64::from(waste(model, existing));
    let free_after = i64::from(
        compute_slices(model).saturating_sub(used_compute(model, existing) + p.compute_slices),
    );
    let pairs: i64 = profiles(model)
        .iter()
        .map(|q| free_starts(model, &after, q.name).len() as i64)
        .sum();
    Some(-dw * 10_000 - free_after * 100 + pairs)
}

/// The start at which greenslice's placement would create `name` on a GPU with layout `existing`
/// (`None` when it fits nowhere): the best [`placement_score`], the lowest start on a tie.
pub fn best_start(model: &GpuModel, existing: &[Placed], name: &str) -> Option<u8> {
    let mut best: Option<(i64, u8)> = None;
    for start in free_starts(model, existing, name) {
        if let Some(score) = placement_score(model, existing, name, start)
            && best.is_none_or(|(s, _)| score > s)
        {
            best = Some((score, start));
        }
    }
    best.map(|(_, s)| s)
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
    fn every_table_is_consistent() {
        for m in GpuModel::KNOWN {
            let t = table(&m).unwrap();
            let ps = profiles(&m);
            assert_eq!(ps.len(), if t.compute_slices == 4 { 5 } else { 7 }, "{m}");
            for p in ps {
                assert_eq!(
                    (p.gpu_compute_slices, p.gpu_memory_slices),
                    (t.compute_slices, t.memory_slices),
                    "{m}"
                );
                assert!(p.compute_slices <= t.compute_slices, "{m} {}", p.name);
                for s in p.starts {
                    assert!(s + p.size <= t.memory_slices, "{m} {} at {s}", p.name);
                }
            }
            // The largest profile takes the whole GPU, and its name says the model's memory.
            let whole = ps.iter().max_by_key(|p| p.compute_slices).unwrap();
            assert_eq!(whole.compute_milli(), 1000, "{m}");
            let gb = m.memory_bytes() / crate::GIB;
            assert!(
                whole.name.ends_with(&format!(".{gb}gb")),
                "{m}: {}",
                whole.name
            );
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
    fn a30_has_its_own_four_slice_table() {
        let a30 = GpuModel::A30_24Gb;
        let t = table(&a30).unwrap();
        assert_eq!(
            (t.compute_slices, t.memory_slices, t.confirmed),
            (4, 4, true)
        );
        let p = profile(&a30, "2g.12gb").unwrap();
        assert_eq!(p.compute_milli(), 500);
        assert_eq!(p.memory_bytes(24 * crate::GIB), 12 * crate::GIB);
        // Two 2g fill it; 4g then has no room; four 1g fit and no fifth.
        let l = [at("2g.12gb", 0), at("2g.12gb", 2)];
        assert!(free_starts(&a30, &l, "1g.6gb").is_empty());
        assert!(check_create(&a30, &[], "4g.24gb", 0).is_ok());
        let ones: Vec<Placed> = (0..4).map(|s| at("1g.6gb", s)).collect();
        assert!(free_starts(&a30, &ones[..3], "1g.6gb") == vec![3]);
        assert!(free_starts(&a30, &ones, "1g.6gb").is_empty());
        assert!(profile(&a30, "3g.40gb").is_none());
    }

    #[test]
    fn unconfirmed_tables_are_marked() {
        for m in [
            GpuModel::H800_80Gb,
            GpuModel::H20_96Gb,
            GpuModel::Gh200_96Gb,
            GpuModel::Gh200_144Gb,
            GpuModel::H100Nvl94Gb,
            GpuModel::H200Nvl141Gb,
            GpuModel::B200_180Gb,
        ] {
            assert!(!table(&m).unwrap().confirmed, "{m}");
        }
        for m in [
            GpuModel::A100Sxm4_40Gb,
            GpuModel::A100Pcie80Gb,
            GpuModel::A30_24Gb,
            GpuModel::H100Sxm5_80Gb,
            GpuModel::H100Pcie80Gb,
            GpuModel::H200Sxm5_141Gb,
        ] {
            assert!(table(&m).unwrap().confirmed, "{m}");
        }
        // GH200's table is not the H200's.
        assert!(profile(&GpuModel::Gh200_96Gb, "3g.71gb").is_none());
        assert!(profile(&GpuModel::Gh200_96Gb, "3g.48gb").is_some());
    }

    /// `../shared/data/mig-profiles.csv` (NVIDIA's guide and `nvidia-smi mig -lgipp`), read from the
    /// workspace's sibling `shared/` folder, must agree with every table it covers. Without the
    /// file the test says so and checks nothing, unless GREENSLICE_REQUIRE_SHARED_DATA is set.
    #[test]
    fn tables_agree_with_the_shared_mig_profiles_csv() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/mig-profiles.csv");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!(
                    "{} not readable ({e}): MIG tables NOT compared",
                    path.display()
                );
                assert!(
                    std::env::var_os("GREENSLICE_REQUIRE_SHARED_DATA").is_none(),
                    "{msg}"
                );
                eprintln!("SKIPPED: {msg}");
                return;
            }
        };
        let mut covered: std::collections::BTreeMap<String, usize> = Default::default();
        for (n, line) in text.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 9, "line {}: {line}", n + 1);
            let model = GpuModel::from_name(f[0]);
            assert!(model.mig_capable(), "CSV model {} is unknown", f[0]);
            let t = table(&model).unwrap();
            assert!(
                t.confirmed,
                "{model}: the CSV is NVIDIA's guide; mark it confirmed"
            );
            let p = profile(&model, f[1]).unwrap_or_else(|| panic!("{model} lacks {}", f[1]));
            let num = |s: &str| s.parse::<u32>().unwrap();
            let starts: Vec<u8> = f[7].split(';').map(|s| s.parse().unwrap()).collect();
            assert_eq!(
                (
                    p.nvml_index,
                    p.smi_id,
                    u32::from(p.compute_slices),
                    u32::from(p.memory_slices),
                    u32::from(p.max_instances),
                    p.starts.to_vec(),
                    u32::from(p.size)
                ),
                (
                    num(f[2]),
                    num(f[3]),
                    num(f[4]),
                    num(f[5]),
                    num(f[6]),
                    starts,
                    num(f[8])
                ),
                "{model} {}",
                f[1]
            );
            *covered.entry(model.name().to_string()).or_default() += 1;
        }
        for (m, n) in &covered {
            assert_eq!(
                *n,
                profiles(&GpuModel::from_name(m)).len(),
                "{m}: profile count"
            );
        }
        eprintln!("mig-profiles.csv covers: {covered:?}");
        assert_eq!(covered.len(), 4, "{covered:?}");
    }

    #[test]
    fn best_start_keeps_large_profiles_placeable() {
        // A 1g on an empty H100 goes to the end (slice 6), leaving 0..6 for a 4g and a 2g; a 2g
        // beside that 1g goes to 4, keeping 0..4 whole for a 4g.
        assert_eq!(best_start(&H100, &[], "1g.10gb"), Some(6));
        assert_eq!(best_start(&H100, &[at("4g.40gb", 0)], "1g.10gb"), Some(6));
        assert_eq!(best_start(&H100, &[at("1g.10gb", 6)], "2g.20gb"), Some(4));
        assert_eq!(best_start(&H100, &[at("7g.80gb", 0)], "1g.10gb"), None);
        assert_eq!(waste(&H100, &[]), 0);
        // A 1g in the middle (slice 2) leaves room for no 4g and a single 3g: waste 7-1-3 = 3.
        assert_eq!(waste(&H100, &[at("1g.10gb", 2)]), 3);
        for p in profiles(&H100) {
            if let Some(s) = best_start(&H100, &[], p.name) {
                assert!(check_create(&H100, &[], p.name, s).is_ok(), "{}", p.name);
            }
        }
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
            fn accepted_layouts_are_legal(ops in proptest::collection::vec((0usize..7, 0u8..8), 0..20), mi in 0usize..GpuModel::KNOWN.len()) {
                let model = GpuModel::KNOWN[mi].clone();
                let ps = profiles(&model);
                let mut layout: Vec<Placed> = Vec::new();
                for (pi, s) in ops {
                    let p = &ps[pi % ps.len()];
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
                prop_assert!(used_compute(&model, &layout) <= compute_slices(&model));
            }
        }
    }
}
