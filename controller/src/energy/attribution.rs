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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn holder(slice_id: &str, tenant: &str, capacity: Capacity, held_ms: u64) -> Holder {
        Holder {
            slice_id: slice_id.to_string(),
            tenant: tenant.to_string(),
            capacity,
            held_ms,
        }
    }

    fn act(slice_id: &str, activity: u64) -> SliceActivity {
        SliceActivity {
            slice_id: slice_id.to_string(),
            activity,
        }
    }

    fn half() -> Capacity {
        Capacity::from_milli(500).expect("valid")
    }

    fn input(
        measured_mj: u64,
        holders: Vec<Holder>,
        activity: Vec<SliceActivity>,
    ) -> AttributionInput {
        AttributionInput {
            measured_mj,
            interval_ms: 10_000,
            idle_power_mw: 50_000, // 50 W x 10 s = 500 J static
            holders,
            activity,
            unattributed_activity: 0,
            policy: StaticPolicy::ByCapacity,
        }
    }

    #[test]
    fn splits_static_by_capacity_and_dynamic_by_activity() {
        let a = attribute(&input(
            2_000_000,
            vec![
                holder("a", "ta", half(), 10_000),
                holder("b", "tb", half(), 10_000),
            ],
            vec![act("a", 3), act("b", 1)],
        ))
        .expect("valid");
        assert_eq!((a.static_mj, a.dynamic_mj), (500_000, 1_500_000));
        assert_eq!(a.slices[0].static_mj, 250_000);
        assert_eq!(a.slices[0].dynamic_mj, 1_125_000);
        assert_eq!(a.slices[1].static_mj, 250_000);
        assert_eq!(a.slices[1].dynamic_mj, 375_000);
        assert_eq!((a.unattributed_mj, a.unallocated_idle_mj), (0, 0));
    }

    #[test]
    fn charges_capacity_nobody_held_as_unallocated_idle() {
        let a = attribute(&input(
            500_000,
            vec![holder("a", "ta", half(), 5_000)],
            vec![],
        ))
        .expect("valid");
        // Held a quarter of the GPU-time.
        assert_eq!(a.slices[0].static_mj, 125_000);
        assert_eq!(a.unallocated_idle_mj, 375_000);
    }

    #[test]
    fn caps_static_energy_at_the_measurement() {
        let a = attribute(&input(
            300_000,
            vec![holder("a", "ta", Capacity::WHOLE, 10_000)],
            vec![act("a", 9)],
        ))
        .expect("valid");
        assert_eq!((a.static_mj, a.dynamic_mj), (300_000, 0));
        assert_eq!(a.slices[0].total_mj(), 300_000);
    }

    #[test]
    fn never_invents_dynamic_energy_for_a_tenant_without_activity() {
        let a = attribute(&input(
            900_000,
            vec![holder("a", "ta", Capacity::WHOLE, 10_000)],
            vec![],
        ))
        .expect("valid");
        assert_eq!(a.slices[0].dynamic_mj, 0);
        assert_eq!(a.unattributed_mj, 400_000);
    }

    #[test]
    fn sends_activity_of_non_holders_to_unattributed() {
        let a = attribute(&input(
            900_000,
            vec![
                holder("a", "ta", half(), 10_000),
                holder("z", "tz", half(), 0),
            ],
            vec![act("a", 1), act("gone", 1), act("z", 2)],
        ))
        .expect("valid");
        assert_eq!(a.slices[0].dynamic_mj, 100_000);
        assert_eq!(a.slices[1].dynamic_mj, 0);
        assert_eq!(a.unattributed_mj, 300_000);
        assert_eq!(a.unattributed_activity, 3);
    }

    #[test]
    fn adds_up_several_activity_entries_of_one_slice() {
        let a = attribute(&input(
            900_000,
            vec![
                holder("a", "ta", half(), 10_000),
                holder("b", "tb", half(), 10_000),
            ],
            vec![act("a", 1), act("b", 1), act("a", 2)],
        ))
        .expect("valid");
        assert_eq!(a.slices[0].dynamic_mj, 300_000);
        assert_eq!(a.slices[1].dynamic_mj, 100_000);
    }

    #[test]
    fn unallocated_policy_charges_tenants_no_static_energy() {
        let mut i = input(
            900_000,
            vec![holder("a", "ta", Capacity::WHOLE, 10_000)],
            vec![act("a", 1)],
        );
        i.policy = StaticPolicy::Unallocated;
        let a = attribute(&i).expect("valid");
        assert_eq!(a.slices[0].static_mj, 0);
        assert_eq!(a.slices[0].dynamic_mj, 400_000);
        assert_eq!(a.unallocated_idle_mj, 500_000);
        assert_eq!(a.policy, StaticPolicy::Unallocated);
    }

    #[test]
    fn splits_oversubscribed_static_energy_among_holders_only() {
        let a = attribute(&input(
            500_000,
            vec![
                holder("a", "ta", Capacity::WHOLE, 10_000),
                holder("b", "tb", Capacity::WHOLE, 10_000),
            ],
            vec![],
        ))
        .expect("valid");
        assert_eq!(a.slices[0].static_mj, 250_000);
        assert_eq!(a.slices[1].static_mj, 250_000);
        assert_eq!(a.unallocated_idle_mj, 0);
    }

    #[test]
    fn mig_slices_are_exact_sevenths() {
        let a = attribute(&input(
            700_000,
            vec![
                holder(
                    "4g",
                    "ta",
                    Capacity::mig_compute_slices(4, 7).expect("valid"),
                    10_000,
                ),
                holder(
                    "3g",
                    "tb",
                    Capacity::mig_compute_slices(3, 7).expect("valid"),
                    10_000,
                ),
            ],
            vec![],
        ))
        .expect("valid");
        // 500 J static: 3/7 and 4/7, nothing unallocated when the GPU is full.
        assert_eq!(a.slices[0].static_mj, 214_286); // "3g": 214285.71
        assert_eq!(a.slices[1].static_mj, 285_714); // "4g": 285714.29
        assert_eq!(a.unallocated_idle_mj, 0);
    }

    #[test]
    fn rejects_invalid_input_with_typed_errors() {
        // Capacity's own bounds are tested in greenslice_core::capacity.
        let mut i = input(1, vec![holder("a", "ta", half(), 20_000)], vec![]);
        assert!(matches!(
            attribute(&i),
            Err(AttributionError::HeldLongerThanInterval { .. })
        ));
        i.holders = vec![holder("a", "ta", half(), 1), holder("a", "tb", half(), 1)];
        assert!(matches!(
            attribute(&i),
            Err(AttributionError::DuplicateHolder { .. })
        ));
        i.holders.clear();
        i.interval_ms = 0;
        assert_eq!(attribute(&i), Err(AttributionError::EmptyInterval));
        i.interval_ms = u64::MAX;
        assert!(matches!(
            attribute(&i),
            Err(AttributionError::IntervalTooLong { .. })
        ));
        i.interval_ms = 10;
        i.activity = vec![act("x", u64::MAX)];
        i.unattributed_activity = 1;
        assert!(matches!(
            attribute(&i),
            Err(AttributionError::ActivityOverflow { .. })
        ));
    }

    #[test]
    fn does_not_depend_on_input_order() {
        let holders = vec![
            holder("c", "tc", Capacity::from_milli(250).expect("valid"), 7_000),
            holder("a", "ta", half(), 10_000),
            holder("b", "tb", Capacity::from_milli(250).expect("valid"), 3_333),
        ];
        let activity = vec![act("b", 5), act("a", 7), act("c", 11)];
        let one = attribute(&input(1_234_567, holders.clone(), activity.clone())).expect("valid");
        let mut rh = holders;
        rh.reverse();
        let mut ra = activity;
        ra.reverse();
        let two = attribute(&input(1_234_567, rh, ra)).expect("valid");
        assert_eq!(one, two);
    }

    /// A random GPU interval: holders drawn from a pool of slices (some not holding this GPU),
    /// activity for holders and non-holders, random idle power and measurement.
    fn arb_input() -> impl Strategy<Value = AttributionInput> {
        (1u64..3_600_000).prop_flat_map(|interval_ms| {
            (
                any::<u64>(),
                prop_oneof![0u64..2_000_000, any::<u64>()],
                prop::collection::vec(
                    (
                        0usize..6,
                        0u32..=1000,
                        prop_oneof![Just(interval_ms), Just(0), 0..=interval_ms],
                        any::<bool>(),
                    ),
                    0..6,
                ),
                prop::collection::vec(
                    (
                        0usize..8,
                        prop_oneof![
                            Just(0u64),
                            0u64..1_000_000,
                            any::<u32>().prop_map(u64::from)
                        ],
                    ),
                    0..10,
                ),
                prop_oneof![Just(0u64), 0u64..1_000_000],
                any::<bool>(),
            )
                .prop_map(move |(measured, idle, hs, acts, unattributed, unalloc)| {
                    let mut seen = std::collections::BTreeSet::new();
                    let holders = hs
                        .into_iter()
                        .filter(|(s, ..)| seen.insert(*s))
                        .map(|(s, milli, held, whole)| Holder {
                            slice_id: format!("s{s}"),
                            tenant: format!("t{}", s % 3),
                            capacity: if whole {
                                Capacity::WHOLE
                            } else {
                                Capacity::from_milli(milli).expect("in range")
                            },
                            held_ms: held,
                        })
                        .collect();
                    AttributionInput {
                        measured_mj: measured,
                        interval_ms,
                        idle_power_mw: idle,
                        holders,
                        activity: acts
                            .into_iter()
                            .map(|(s, a)| act(&format!("s{s}"), a))
                            .collect(),
                        unattributed_activity: unattributed,
                        policy: if unalloc {
                            StaticPolicy::Unallocated
                        } else {
                            StaticPolicy::ByCapacity
                        },
                    }
                })
        })
    }

    proptest! {
        #[test]
        fn conserves_measured_energy_exactly(input in arb_input()) {
            let a = attribute(&input).expect("valid input");
            prop_assert_eq!(a.rows_total_mj(), u128::from(input.measured_mj));
            prop_assert_eq!(a.static_mj + a.dynamic_mj, input.measured_mj);
            let static_rows: u128 = a.slices.iter().map(|s| u128::from(s.static_mj)).sum::<u128>()
                + u128::from(a.unallocated_idle_mj);
            prop_assert_eq!(static_rows, u128::from(a.static_mj));
        }

        #[test]
        fn charges_no_tenant_for_a_gpu_it_did_not_hold(input in arb_input()) {
            let a = attribute(&input).expect("valid input");
            prop_assert_eq!(a.slices.len(), input.holders.len());
            for row in &a.slices {
                let h = input.holders.iter().find(|h| h.slice_id == row.slice_id);
                prop_assert!(h.is_some(), "row for non-holder {}", row.slice_id);
                let h = h.expect("checked");
                prop_assert_eq!(&row.tenant, &h.tenant);
                if h.held_ms == 0 {
                    prop_assert_eq!(row.total_mj(), 0);
                }
                if h.capacity.units() == 0 || input.policy == StaticPolicy::Unallocated {
                    prop_assert_eq!(row.static_mj, 0);
                }
            }
        }

        #[test]
        fn charges_no_dynamic_energy_to_tenants_in_idle_only_intervals(mut input in arb_input()) {
            for a in &mut input.activity {
                a.activity = 0;
            }
            let a = attribute(&input).expect("valid input");
            for row in &a.slices {
                prop_assert_eq!(row.dynamic_mj, 0);
            }
            prop_assert_eq!(a.unattributed_mj, a.dynamic_mj);
        }
    }
}
