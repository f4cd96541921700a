//! Unit tests of `attribution`.

use super::*;
use proptest::prelude::*;

fn holder(slice_id: &str, tenant: &str, capacity: Capacity, held_ms: u64) -> Holder {
    Holder {
        slice_id: slice_id.to_string(),
        tenant: tenant.to_string(),
        claim: None,
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

fn input(measured_mj: u64, holders: Vec<Holder>, activity: Vec<SliceActivity>) -> AttributionInput {
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
                        claim: None,
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
