//! The one exact measure of how much of a GPU a slice holds.
//!
//! Placement, quotas, reclaim and energy attribution all ask "how much of this GPU does the slice
//! hold"; [`Capacity`] is the answer, in units of 1 / [`CAPACITY_UNITS_PER_GPU`], so that MIG
//! compute slices (k/7, or k/4 on an A30) and share fractions in millionths are all exact.
//! [`held_per_gpu`] is the one rule from a slice's kind to its capacity.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gpu::GpuModel;
use crate::mig::{self, MigProfile};
use crate::slice::SliceKind;

/// Capacity units in one whole GPU: 7 x 10^6, divisible by 7, 4 and 1000, so MIG compute slices of
/// 7- and 4-slice GPUs, milli-GPU and share fractions in millionths of 7 are all exact.
pub const CAPACITY_UNITS_PER_GPU: u32 = 7_000_000;

/// A capacity outside [0, one GPU].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid capacity: {0}")]
pub struct CapacityError(String);

/// The share of one GPU's compute a slice holds, in [0, 1], stored exactly in units of
/// 1 / [`CAPACITY_UNITS_PER_GPU`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Capacity(u32);

impl TryFrom<u32> for Capacity {
    type Error = CapacityError;

    /// From units of 1 / [`CAPACITY_UNITS_PER_GPU`]; more than one GPU is an error.
    fn try_from(units: u32) -> Result<Capacity, CapacityError> {
        if units > CAPACITY_UNITS_PER_GPU {
            return Err(CapacityError(format!(
                "{units} units (at most {CAPACITY_UNITS_PER_GPU})"
            )));
        }
        Ok(Capacity(units))
    }
}

impl From<Capacity> for u32 {
    fn from(c: Capacity) -> u32 {
        c.0
    }
}

impl Capacity {
    /// The whole GPU.
    pub const WHOLE: Capacity = Capacity(CAPACITY_UNITS_PER_GPU);

    /// `compute_slices` of a MIG GPU's `gpu_compute_slices` (7, or 4 on an A30).
    pub fn mig_compute_slices(
        compute_slices: u8,
        gpu_compute_slices: u8,
    ) -> Result<Capacity, CapacityError> {
        let (k, n) = (u32::from(compute_slices), u32::from(gpu_compute_slices));
        if n == 0 || !CAPACITY_UNITS_PER_GPU.is_multiple_of(n) || k > n {
            return Err(CapacityError(format!(
                "{compute_slices} of {gpu_compute_slices} MIG compute slices"
            )));
        }
        Ok(Capacity(k * (CAPACITY_UNITS_PER_GPU / n)))
    }

    /// An instance of the MIG `profile`: its compute slices over its GPU's.
    pub fn of_mig_profile(profile: &MigProfile) -> Result<Capacity, CapacityError> {
        Capacity::mig_compute_slices(profile.compute_slices, profile.gpu_compute_slices)
    }

    /// A share of `milli` thousandths of the GPU.
    pub fn from_milli(milli: u32) -> Result<Capacity, CapacityError> {
        if milli > 1000 {
            return Err(CapacityError(format!("{milli} milli-GPU (at most 1000)")));
        }
        Ok(Capacity(milli * (CAPACITY_UNITS_PER_GPU / 1000)))
    }

    /// A fraction of the GPU in [0, 1], rounded to the nearest unit.
    pub fn from_fraction(fraction: f64) -> Result<Capacity, CapacityError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(CapacityError(format!(
                "fraction {fraction} (must be in [0, 1])"
            )));
        }
        // In [0, 7e6] after the check, so the cast is exact after rounding.
        Ok(Capacity(
            (fraction * f64::from(CAPACITY_UNITS_PER_GPU)).round() as u32,
        ))
    }

    /// Units of 1 / [`CAPACITY_UNITS_PER_GPU`] of a GPU.
    pub fn units(self) -> u32 {
        self.0
    }

    /// The fraction of the GPU, for display and for sums over several GPUs.
    pub fn as_fraction(self) -> f64 {
        f64::from(self.0) / f64::from(CAPACITY_UNITS_PER_GPU)
    }
}

/// The capacity a slice of `kind` holds on each GPU it holds, on a GPU of `model` where known.
///
/// A whole-GPU slice holds each of its GPUs whole; a share its compute fraction; a MIG instance its
/// profile's compute slices over its GPU's. Where the model is unknown, a profile's name fixes its
/// compute share on every model that has it (`3g.40gb` is 3 of 7 wherever it exists), so the first
/// known model with the profile answers. `None` for a profile no model has or a fraction out of
/// range: the caller decides what an unknown capacity means.
pub fn held_per_gpu(kind: &SliceKind, model: Option<&GpuModel>) -> Option<Capacity> {
    match kind {
        SliceKind::Whole { .. } => Some(Capacity::WHOLE),
        SliceKind::Share {
            compute_fraction, ..
        } => Capacity::from_fraction(*compute_fraction).ok(),
        SliceKind::Mig { profile } => {
            let p = model.and_then(|m| mig::profile(m, profile)).or_else(|| {
                GpuModel::KNOWN
                    .iter()
                    .find_map(|m| mig::profile(m, profile))
            })?;
            Capacity::of_mig_profile(p).ok()
        }
    }
}

/// GPUs' worth of capacity a slice of `kind` holds in all (a whole-GPU slice of `count` GPUs
/// holds `count`), on GPUs of `model` where known; `None` as for [`held_per_gpu`].
pub fn held_gpus(kind: &SliceKind, model: Option<&GpuModel>) -> Option<f64> {
    let per_gpu = held_per_gpu(kind, model)?.as_fraction();
    Some(match kind {
        SliceKind::Whole { count } => f64::from(*count) * per_gpu,
        _ => per_gpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert!(Capacity::from_fraction(1.5).is_err());
        assert!(Capacity::from_fraction(-0.1).is_err());
        assert!(Capacity::from_fraction(f64::NAN).is_err());
        assert!(Capacity::mig_compute_slices(8, 7).is_err());
        assert!(Capacity::mig_compute_slices(1, 0).is_err());
        assert!(Capacity::mig_compute_slices(1, 3).is_err());
        assert!(Capacity::from_milli(1001).is_err());
        assert!(Capacity::try_from(CAPACITY_UNITS_PER_GPU + 1).is_err());
        assert_eq!(
            Capacity::try_from(CAPACITY_UNITS_PER_GPU),
            Ok(Capacity::WHOLE)
        );
        assert!(serde_json::from_str::<Capacity>("7000001").is_err());
    }

    #[test]
    fn mig_capacity_follows_the_gpus_own_slice_count() {
        // 3g.40gb on an H100: 3 of 7. 2g.12gb on an A30: 2 of 4, not 2 of 7.
        let h100 = held_per_gpu(
            &SliceKind::Mig {
                profile: "3g.40gb".into(),
            },
            Some(&GpuModel::H100Sxm5_80Gb),
        );
        assert_eq!(h100, Capacity::try_from(3_000_000).ok());
        let a30 = held_per_gpu(
            &SliceKind::Mig {
                profile: "2g.12gb".into(),
            },
            Some(&GpuModel::A30_24Gb),
        );
        assert_eq!(a30, Capacity::try_from(3_500_000).ok());
        // Without the model, the name still fixes the share.
        let unknown = held_per_gpu(
            &SliceKind::Mig {
                profile: "2g.12gb".into(),
            },
            None,
        );
        assert_eq!(unknown, a30);
        assert_eq!(
            held_per_gpu(
                &SliceKind::Mig {
                    profile: "9g.1tb".into()
                },
                None
            ),
            None
        );
    }

    #[test]
    fn whole_slices_count_every_gpu_and_shares_their_fraction() {
        assert_eq!(held_gpus(&SliceKind::Whole { count: 3 }, None), Some(3.0));
        let share = SliceKind::Share {
            compute_fraction: 0.25,
            memory_bytes: 1 << 30,
        };
        assert_eq!(held_gpus(&share, None), Some(0.25));
        assert_eq!(
            held_per_gpu(&share, None),
            Capacity::try_from(1_750_000).ok()
        );
        // Every MIG profile of every model maps to an exact capacity of at most one GPU.
        for m in GpuModel::KNOWN {
            for p in mig::profiles(&m) {
                let c = Capacity::of_mig_profile(p).expect("exact");
                assert_eq!(
                    u64::from(c.units()) * u64::from(p.gpu_compute_slices),
                    u64::from(p.compute_slices) * u64::from(CAPACITY_UNITS_PER_GPU)
                );
            }
        }
    }
}
