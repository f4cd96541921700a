//! Attribution of one GPU's measured energy over one interval to the slices that held it.
//!
//! Method (the default, [`StaticPolicy::ByCapacity`]); `docs/ENERGY.md` has a worked example:
//! 1. Static energy = min(idle power x interval length, measured); dynamic energy = the rest.
//! 2. Dynamic energy goes to the slices holding the GPU in proportion to their activity. Activity
//!    that is not mapped to a slice holding the GPU in this interval (including activity of a slice
//!    that is not a holder, or held it for 0 ms) goes to the unattributed row. When there is no
//!    activity at all, all dynamic energy goes to the unattributed row: it is never invented for a
//!    tenant.
//! 3. Static energy goes to the holders in proportion to capacity x time held; the capacity-time
//!    nobody held is unallocated idle. If holders' capacity-time exceeds the GPU's (an oversubscribed
//!    share), static energy is split among them by the same weights and nothing is unallocated.
//!    [`StaticPolicy::Unallocated`] puts all static energy in unallocated idle instead.
//! 4. Each split is rounded to integer mJ by largest remainder (ties to the lower slice id, then the
//!    unattributed / unallocated row), so for every GPU and interval
//!    `sum(slices) + unattributed + unallocated idle == measured` exactly.
//!
//! The output does not depend on the order of holders or activities.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::apportion::largest_remainder;

pub use greenslice_core::capacity::{CAPACITY_UNITS_PER_GPU, Capacity};

/// Where static (idle) energy goes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum StaticPolicy {
    /// To the holders in proportion to capacity x time held; the rest is unallocated idle.
    #[default]
    ByCapacity,
    /// All of it to unallocated idle; tenants pay only dynamic energy.
    Unallocated,
}

impl StaticPolicy {
    /// Name used in reports and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            StaticPolicy::ByCapacity => "by_capacity",
            StaticPolicy::Unallocated => "unallocated",
        }
    }
}

/// A slice that held (part of) the GPU during the interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub slice_id: String,
    pub tenant: String,
    /// The ResourceClaim (`namespace/name`) the slice stands for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// The share of the GPU held.
    pub capacity: Capacity,
    /// How long within the interval it was held, in ms.
    pub held_ms: u64,
}

/// Activity of one slice (or one of its processes) on the GPU during the interval.
///
/// Activity is any non-negative integer measure proportional to the compute used, consistent within
/// one GPU interval. Recommended: on a time-sliced GPU, the sum over samples of a process's SM
/// utilization % x sample period in ms; on a MIG GPU, the instance's SM activity % x its compute
/// slices x sample period in ms. Several entries for one slice are added up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceActivity {
    pub slice_id: String,
    /// Activity units (see above).
    pub activity: u64,
}

/// Everything [`attribute`] needs about one GPU and one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributionInput {
    /// Measured (or estimated) energy of the GPU over the interval, in mJ.
    pub measured_mj: u64,
    /// Length of the interval in ms.
    pub interval_ms: u64,
    /// Idle power of the GPU in mW (calibrated or configured).
    pub idle_power_mw: u64,
    /// Slices holding the GPU during the interval.
    pub holders: Vec<Holder>,
    /// Activity mapped to slices.
    pub activity: Vec<SliceActivity>,
    /// Activity not mapped to any slice (activity units).
    pub unattributed_activity: u64,
    pub policy: StaticPolicy,
}

/// One slice's share of one GPU interval's energy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEnergy {
    pub slice_id: String,
    pub tenant: String,
    /// Static (idle) energy in mJ.
    pub static_mj: u64,
    /// Dynamic energy in mJ.
    pub dynamic_mj: u64,
}

impl SliceEnergy {
    /// Static plus dynamic energy in mJ.
    pub fn total_mj(&self) -> u64 {
        // Both are parts of one u64 measured total, so the sum fits.
        self.static_mj + self.dynamic_mj
    }
}

/// One GPU interval's energy, split exactly:
/// `sum(slices) + unattributed_mj + unallocated_idle_mj == measured_mj`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// Policy used for static energy.
    pub policy: StaticPolicy,
    /// Measured energy in mJ.
    pub measured_mj: u64,
    /// Static (idle) part in mJ.
    pub static_mj: u64,
    /// Dynamic part in mJ.
    pub dynamic_mj: u64,
    /// One row per holder, sorted by slice id (rows may be 0).
    pub slices: Vec<SliceEnergy>,
    /// Dynamic energy not attributed to any slice, in mJ.
    pub unattributed_mj: u64,
    /// Static energy of capacity nobody held (or all static energy under
    /// [`StaticPolicy::Unallocated`]), in mJ.
    pub unallocated_idle_mj: u64,
    /// Activity units that went to the unattributed row (unmapped, or of non-holders), for audit.
    pub unattributed_activity: u64,
}

impl Attribution {
    /// Sum of all rows in mJ; equals `measured_mj` by construction.
    pub fn rows_total_mj(&self) -> u128 {
        self.slices
            .iter()
            .map(|s| u128::from(s.total_mj()))
            .sum::<u128>()
            + u128::from(self.unattributed_mj)
            + u128::from(self.unallocated_idle_mj)
    }
}

/// Why an interval could not be attributed (invalid input).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttributionError {
    #[error("interval length must be more than 0 ms")]
    EmptyInterval,
    #[error("interval of {interval_ms} ms is too long to attribute (at most {max_ms} ms)")]
    IntervalTooLong { interval_ms: u64, max_ms: u64 },
    #[error("slice {slice_id} is listed twice as a holder")]
    DuplicateHolder { slice_id: String },
    #[error("slice {slice_id} held the GPU {held_ms} ms in an interval of {interval_ms} ms")]
    HeldLongerThanInterval {
        slice_id: String,
        held_ms: u64,
        interval_ms: u64,
    },
    #[error("activity of {row} exceeds {max} units", max = u64::MAX)]
    ActivityOverflow { row: String },
}

/// Longest interval [`attribute`] accepts, in ms (about 83 years): capacity-time must fit in u64.
pub const MAX_INTERVAL_MS: u64 = u64::MAX / CAPACITY_UNITS_PER_GPU as u64;

/// Splits one GPU interval's measured energy exactly (see the module docs for the method).
pub fn attribute(input: &AttributionInput) -> Result<Attribution, AttributionError> {
    let interval_ms = input.interval_ms;
    if interval_ms == 0 {
        return Err(AttributionError::EmptyInterval);
    }
    if interval_ms > MAX_INTERVAL_MS {
        return Err(AttributionError::IntervalTooLong {
            interval_ms,
            max_ms: MAX_INTERVAL_MS,
        });
    }

    let mut holders: Vec<&Holder> = input.holders.iter().collect();
    holders.sort_by(|a, b| a.slice_id.cmp(&b.slice_id));
    for pair in holders.windows(2) {
        if pair[0].slice_id == pair[1].slice_id {
            return Err(AttributionError::DuplicateHolder {
                slice_id: pair[0].slice_id.clone(),
            });
        }
    }
    if let Some(h) = holders.iter().find(|h| h.held_ms > interval_ms) {
        return Err(AttributionError::HeldLongerThanInterval {
            slice_id: h.slice_id.clone(),
            held_ms: h.held_ms,
            interval_ms,
        });
    }

    // Static: idle power x time (mW x ms = µJ, rounded half up to mJ), at most the measurement.
    let idle_mj = (u128::from(input.idle_power_mw) * u128::from(interval_ms) + 500) / 1000;
    let static_mj = u64::try_from(idle_mj).map_or(input.measured_mj, |i| i.min(input.measured_mj));
    let dynamic_mj = input.measured_mj - static_mj;

    // Static weights: capacity x time held per holder, then unallocated capacity-time last.
    let mut static_weights: Vec<u64> = Vec::with_capacity(holders.len() + 1);
    match input.policy {
        StaticPolicy::ByCapacity => {
            let mut held: u128 = 0;
            for h in &holders {
                // <= 7e6 x MAX_INTERVAL_MS <= u64::MAX.
                let w = u64::from(h.capacity.units()) * h.held_ms;
                held += u128::from(w);
                static_weights.push(w);
            }
            let gpu = u128::from(CAPACITY_UNITS_PER_GPU) * u128::from(interval_ms);
            // <= gpu <= u64::MAX.
            static_weights.push(gpu.saturating_sub(held) as u64);
        }
        StaticPolicy::Unallocated => {
            static_weights.extend(std::iter::repeat_n(0, holders.len()));
            static_weights.push(1);
        }
    }
    let unallocated_row = holders.len();
    let static_parts = largest_remainder(static_mj, &static_weights, unallocated_row);

    // Dynamic weights: activity per holder that held the GPU for some time, then unattributed.
    let mut per_slice: BTreeMap<&str, u128> = BTreeMap::new();
    for a in &input.activity {
        *per_slice.entry(a.slice_id.as_str()).or_default() += u128::from(a.activity);
    }
    let mut unattributed_activity = u128::from(input.unattributed_activity);
    let mut dynamic_weights: Vec<u64> = Vec::with_capacity(holders.len() + 1);
    for h in &holders {
        let activity = per_slice.remove(h.slice_id.as_str()).unwrap_or(0);
        let activity = if h.held_ms == 0 {
            unattributed_activity += activity;
            0
        } else {
            activity
        };
        dynamic_weights.push(u64::try_from(activity).map_err(|_| {
            AttributionError::ActivityOverflow {
                row: format!("slice {}", h.slice_id),
            }
        })?);
    }
    // Activity of slices that did not hold this GPU is not charged to them.
    unattributed_activity += per_slice.values().sum::<u128>();
    let unattributed_activity =
        u64::try_from(unattributed_activity).map_err(|_| AttributionError::ActivityOverflow {
            row: "unattributed".to_string(),
        })?;
    dynamic_weights.push(unattributed_activity);
    let unattributed_row = holders.len();
    let dynamic_parts = largest_remainder(dynamic_mj, &dynamic_weights, unattributed_row);

    let slices = holders
        .iter()
        .enumerate()
        .map(|(i, h)| SliceEnergy {
            slice_id: h.slice_id.clone(),
            tenant: h.tenant.clone(),
            static_mj: static_parts[i],
            dynamic_mj: dynamic_parts[i],
        })
        .collect();
    Ok(Attribution {
        policy: input.policy,
        measured_mj: input.measured_mj,
        static_mj,
        dynamic_mj,
        slices,
        unattributed_mj: dynamic_parts[unattributed_row],
        unallocated_idle_mj: static_parts[unallocated_row],
        unattributed_activity,
    })
}

#[cfg(test)]
mod tests;
