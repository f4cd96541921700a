//! MIG GPU-instance profile tables, written from NVIDIA's MIG user guide ("Supported MIG Profiles"
//! and the `nvidia-smi mig -lgipp` placement listings), on their own: greenslice-core has its own
//! tables, and a test (`tests/tables_agree.rs`) checks that the two and `../shared/data` agree.
//!
//! A placement is a range of memory slices `[start, start + size)` of the 8 a GPU has; two GPU
//! instances may not overlap, their compute slices may not exceed 7, a profile has a most number of
//! instances, and only one `+me` instance (it owns the media engines) may exist at a time.

/// `NVML_GPU_INSTANCE_PROFILE_*` constants of `nvml.h` (the index passed to
/// `nvmlDeviceGetGpuInstanceProfileInfo`).
pub mod nvml_index {
    pub const P1_SLICE: u32 = 0;
    pub const P2_SLICE: u32 = 1;
    pub const P3_SLICE: u32 = 2;
    pub const P4_SLICE: u32 = 3;
    pub const P7_SLICE: u32 = 4;
    pub const P8_SLICE: u32 = 5;
    pub const P6_SLICE: u32 = 6;
    pub const P1_SLICE_REV1: u32 = 7;
    pub const P2_SLICE_REV1: u32 = 8;
    pub const P1_SLICE_REV2: u32 = 9;
    /// `NVML_GPU_INSTANCE_PROFILE_COUNT`.
    pub const COUNT: u32 = 15;
}

/// Memory slices of a MIG-capable GPU.
pub const MEMORY_SLICES: u32 = 8;
/// Compute slices of a MIG-capable GPU.
pub const COMPUTE_SLICES: u32 = 7;

/// One GPU-instance profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiProfile {
    /// Name as nvidia-smi prints it ("3g.40gb").
    pub name: &'static str,
    /// The `NVML_GPU_INSTANCE_PROFILE_*` index.
    pub index: u32,
    /// The profile id (`nvmlGpuInstanceProfileInfo_t::id`, what nvidia-smi prints as "ID").
    pub id: u32,
    /// Compute slices of 7.
    pub compute_slices: u32,
    /// Memory slices of 8 the instance gets.
    pub memory_slices: u32,
    /// Most instances of this profile on one GPU.
    pub max_instances: u32,
    /// Legal first memory slices.
    pub starts: &'static [u32],
    /// Memory slices one placement covers.
    pub size: u32,
    /// Streaming multiprocessors of the instance.
    pub sm_count: u32,
}

impl GiProfile {
    /// Whether the profile owns the media engines (`+me`).
    pub fn media_extension(&self) -> bool {
        self.name.ends_with("+me")
    }
}

const ALL7: &[u32] = &[0, 1, 2, 3, 4, 5, 6];
const EVEN: &[u32] = &[0, 2, 4, 6];
const EVEN3: &[u32] = &[0, 2, 4];
const HALVES: &[u32] = &[0, 4];
const FIRST: &[u32] = &[0];

/// The seven profiles every A100/H100/H200 has, with this model's memory names and SMs per slice.
/// `names`: 1g small, 1g small+me, 1g large, 2g, 3g, 4g, 7g. `sms`: SMs of 1g, 2g, 3g, 4g, 7g.
const fn seven(names: [&'static str; 7], sms: [u32; 5]) -> [GiProfile; 7] {
    use nvml_index::*;
    [
        GiProfile {
            name: names[0],
            index: P1_SLICE,
            id: 19,
            compute_slices: 1,
            memory_slices: 1,
            max_instances: 7,
            starts: ALL7,
            size: 1,
            sm_count: sms[0],
        },
        GiProfile {
            name: names[1],
            index: P1_SLICE_REV1,
            id: 20,
            compute_slices: 1,
            memory_slices: 1,
            max_instances: 1,
            starts: ALL7,
            size: 1,
            sm_count: sms[0],
        },
        GiProfile {
            name: names[2],
            index: P1_SLICE_REV2,
            id: 15,
            compute_slices: 1,
            memory_slices: 2,
            max_instances: 4,
            starts: EVEN,
            size: 2,
            sm_count: sms[0],
        },
        GiProfile {
            name: names[3],
            index: P2_SLICE,
            id: 14,
            compute_slices: 2,
            memory_slices: 2,
            max_instances: 3,
            starts: EVEN3,
            size: 2,
            sm_count: sms[1],
        },
        GiProfile {
            name: names[4],
            index: P3_SLICE,
            id: 9,
            compute_slices: 3,
            memory_slices: 4,
            max_instances: 2,
            starts: HALVES,
            size: 4,
            sm_count: sms[2],
        },
        GiProfile {
            name: names[5],
            index: P4_SLICE,
            id: 5,
            compute_slices: 4,
            memory_slices: 4,
            max_instances: 1,
            starts: FIRST,
            size: 4,
            sm_count: sms[3],
        },
        GiProfile {
            name: names[6],
            index: P7_SLICE,
            id: 0,
            compute_slices: 7,
            memory_slices: 8,
            max_instances: 1,
            starts: FIRST,
            size: 8,
            sm_count: sms[4],
        },
    ]
}

pub static A100_40GB: [GiProfile; 7] = seven(
    [
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
    ],
    [14, 28, 42, 56, 98],
);
pub static A100_80GB: [GiProfile; 7] = seven(
    [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ],
    [14, 28, 42, 56, 98],
);
pub static H100_80GB: [GiProfile; 7] = seven(
    [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ],
    [16, 32, 60, 64, 132],
);
pub static H100_PCIE_80GB: [GiProfile; 7] = seven(
    [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ],
    [14, 28, 42, 56, 114],
);
pub static H200_141GB: [GiProfile; 7] = seven(
    [
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    ],
    [16, 32, 60, 64, 132],
);

/// Compute-instance profile indexes (`NVML_COMPUTE_INSTANCE_PROFILE_*`) and the compute slices
/// each spans: 1, 2, 3, 4, 7, 8, 6 for indexes 0..=6.
pub const CI_PROFILE_SLICES: [u32; 7] = [1, 2, 3, 4, 7, 8, 6];

/// Why a GPU instance cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("start {start} is not a legal placement of {profile} (legal: {legal:?})")]
    BadStart {
        profile: &'static str,
        start: u32,
        legal: &'static [u32],
    },
    #[error("size {size} does not match {profile} (covers {expected} memory slices)")]
    BadSize {
        profile: &'static str,
        size: u32,
        expected: u32,
    },
    #[error("memory slices {start}..{end} overlap an existing GPU instance")]
    Occupied { start: u32, end: u32 },
    #[error("{profile} already has its most instances ({max})")]
    TooMany { profile: &'static str, max: u32 },
    #[error("only one +me instance may exist on a GPU")]
    MediaEngines,
    #[error("not enough compute slices left ({free} free, {profile} needs {need})")]
    Compute {
        profile: &'static str,
        free: u32,
        need: u32,
    },
}

/// An existing GPU instance as far as placement cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupant {
    pub profile: &'static GiProfile,
    pub start: u32,
}

/// Checks that `profile` fits at `start` (covering `size` slices) beside `existing`.
pub fn check_placement(
    profile: &'static GiProfile,
    start: u32,
    size: u32,
    existing: &[Occupant],
) -> Result<(), PlacementError> {
    if !profile.starts.contains(&start) {
        return Err(PlacementError::BadStart {
            profile: profile.name,
            start,
            legal: profile.starts,
        });
    }
    if size != profile.size {
        return Err(PlacementError::BadSize {
            profile: profile.name,
            size,
            expected: profile.size,
        });
    }
    // The profile's instance count first (through NVML both answer INSUFFICIENT_RESOURCES).
    let same = existing
        .iter()
        .filter(|o| o.profile.id == profile.id)
        .count() as u32;
    if same >= profile.max_instances {
        return Err(PlacementError::TooMany {
            profile: profile.name,
            max: profile.max_instances,
        });
    }
    let end = start + size;
    if existing
        .iter()
        .any(|o| o.start < end && start < o.start + o.profile.size)
    {
        return Err(PlacementError::Occupied { start, end });
    }
    if profile.media_extension() && existing.iter().any(|o| o.profile.media_extension()) {
        return Err(PlacementError::MediaEngines);
    }
    let used: u32 = existing.iter().map(|o| o.profile.compute_slices).sum();
    let free = COMPUTE_SLICES.saturating_sub(used);
    if profile.compute_slices > free {
        return Err(PlacementError::Compute {
            profile: profile.name,
            free,
            need: profile.compute_slices,
        });
    }
    Ok(())
}

/// Starts where `profile` could be placed now, in ascending order.
pub fn free_starts(profile: &'static GiProfile, existing: &[Occupant]) -> Vec<u32> {
    profile
        .starts
        .iter()
        .copied()
        .filter(|&s| check_placement(profile, s, profile.size, existing).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: &'static GiProfile, start: u32) -> Occupant {
        Occupant { profile: p, start }
    }

    #[test]
    fn a_3g_and_a_4g_fill_a_gpu_and_nothing_else_fits() {
        let g3 = &H100_80GB[4];
        let g4 = &H100_80GB[5];
        let one = &H100_80GB[0];
        assert!(check_placement(g4, 0, 4, &[]).is_ok());
        let layout = [at(g4, 0), at(g3, 4)];
        assert_eq!(free_starts(one, &layout), Vec::<u32>::new());
        assert!(matches!(check_placement(g3, 0, 4, &[at(g3, 4)]), Ok(())));
        assert!(matches!(
            check_placement(g3, 4, 4, &[at(g3, 4)]),
            Err(PlacementError::Occupied { .. })
        ));
    }

    #[test]
    fn seven_1g_use_every_compute_slice() {
        let one = &A100_40GB[0];
        let layout: Vec<Occupant> = (0..7).map(|s| at(one, s)).collect();
        // The eighth memory slice is free, but no compute slice is left (and 7 is not a start).
        assert!(check_placement(&A100_40GB[2], 6, 2, &layout[..6]).is_ok());
        assert!(check_placement(one, 7, 1, &layout[..6]).is_err());
        assert!(matches!(
            check_placement(&A100_40GB[2], 6, 2, &layout),
            Err(PlacementError::Occupied { .. })
        ));
    }

    #[test]
    fn only_one_media_extension_instance() {
        let me = &A100_80GB[1];
        assert_eq!(
            check_placement(me, 3, 1, &[at(me, 0)]),
            Err(PlacementError::TooMany {
                profile: me.name,
                max: 1
            })
        );
        assert!(check_placement(me, 3, 1, &[at(&A100_80GB[0], 0)]).is_ok());
    }
}
