//! Tests across the energy modules: the worked example of `docs/ENERGY.md`, and properties of the
//! whole pipeline (readings -> measurement -> attribution -> ledger).

use proptest::prelude::*;

use super::*;

/// 2025-01-01T00:00:00Z in Unix ms: the worked example's start.
const T0: u64 = 1_735_689_600_000;
const S: u64 = 1_000;

fn reading(at_ms: u64, total_mj: u64) -> CounterReading {
    CounterReading {
        at_ms,
        total_mj: Some(total_mj),
    }
}

fn holder(slice_id: &str, tenant: &str, milli: u32, held_ms: u64) -> Holder {
    Holder {
        slice_id: slice_id.to_string(),
        tenant: tenant.to_string(),
        claim: None,
        capacity: Capacity::from_milli(milli).expect("valid capacity"),
        held_ms,
    }
}

fn act(slice_id: &str, activity: u64) -> SliceActivity {
    SliceActivity {
        slice_id: slice_id.to_string(),
        activity,
    }
}

fn row(a: &Attribution, slice_id: &str) -> (u64, u64) {
    a.slices
        .iter()
        .find(|s| s.slice_id == slice_id)
        .map(|s| (s.static_mj, s.dynamic_mj))
        .expect("slice row")
}

struct ExampleInterval {
    interval: Interval,
    counter: Vec<CounterReading>,
    power: Vec<PowerSample>,
    holders: Vec<Holder>,
    activity: Vec<SliceActivity>,
    unattributed_activity: u64,
}

/// The worked example of docs/ENERGY.md: one GPU with 60 W idle power, four 60 s intervals, three
/// tenants on time-sliced shares (alice 0.5, bob 0.25, carol 0.25). Activity is SM % x ms.
fn worked_example() -> Vec<ExampleInterval> {
    let iv = |k: u64| Interval {
        start_ms: T0 + k * 60 * S,
        end_ms: T0 + (k + 1) * 60 * S,
    };
    // Counter readings every 15 s (the default maximum gap).
    let readings = |k: u64, values: [u64; 5]| -> Vec<CounterReading> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| reading(iv(k).start_ms + i as u64 * 15 * S, v))
            .collect()
    };
    vec![
        // 1: alice and bob work; carol has no slice yet.
        ExampleInterval {
            interval: iv(0),
            counter: readings(
                0,
                [
                    5_000_000_000,
                    5_003_000_000,
                    5_006_000_000,
                    5_009_000_000,
                    5_012_000_000,
                ],
            ),
            power: vec![],
            holders: vec![
                holder("alice-1", "alice", 500, 60 * S),
                holder("bob-1", "bob", 250, 60 * S),
            ],
            activity: vec![act("alice-1", 60 * 60 * S), act("bob-1", 20 * 60 * S)],
            unattributed_activity: 0,
        },
        // 2: carol's slice starts 20 s in; a process nobody owns runs at 10%.
        ExampleInterval {
            interval: iv(1),
            counter: readings(
                1,
                [
                    5_012_000_000,
                    5_015_000_000,
                    5_018_000_000,
                    5_021_000_000,
                    5_024_600_001,
                ],
            ),
            power: vec![],
            holders: vec![
                holder("alice-1", "alice", 500, 60 * S),
                holder("bob-1", "bob", 250, 60 * S),
                holder("carol-1", "carol", 250, 40 * S),
            ],
            activity: vec![
                act("alice-1", 20 * 60 * S),
                act("bob-1", 20 * 60 * S),
                act("carol-1", 30 * 40 * S),
            ],
            unattributed_activity: 10 * 60 * S,
        },
        // 3: all idle, below the idle power; bob releases 30 s in.
        ExampleInterval {
            interval: iv(2),
            counter: readings(
                2,
                [
                    5_024_600_001,
                    5_025_350_001,
                    5_026_100_001,
                    5_026_850_001,
                    5_027_600_001,
                ],
            ),
            power: vec![],
            holders: vec![
                holder("alice-1", "alice", 500, 60 * S),
                holder("bob-1", "bob", 250, 30 * S),
                holder("carol-1", "carol", 250, 60 * S),
            ],
            activity: vec![],
            unattributed_activity: 0,
        },
        // 4: the driver reloads 30 s in; energy comes from power samples and the utilization samples
        // were lost with the reload.
        ExampleInterval {
            interval: iv(3),
            counter: readings(
                3,
                [
                    5_027_600_001,
                    5_030_000_000,
                    1_500_000,
                    3_000_000,
                    4_500_000,
                ],
            ),
            power: vec![
                PowerSample {
                    at_ms: iv(3).start_ms,
                    power_mw: 100_000,
                },
                PowerSample {
                    at_ms: iv(3).start_ms + 30 * S,
                    power_mw: 200_000,
                },
                PowerSample {
                    at_ms: iv(3).end_ms,
                    power_mw: 100_000,
                },
            ],
            holders: vec![
                holder("alice-1", "alice", 500, 60 * S),
                holder("carol-1", "carol", 250, 60 * S),
            ],
            activity: vec![],
            unattributed_activity: 0,
        },
    ]
}

const EXAMPLE_IDLE_MW: u64 = 60_000;

fn run_example(policy: StaticPolicy) -> (Vec<(Measurement, Attribution)>, EnergyLedger) {
    let mut ledger = EnergyLedger::new(policy);
    let factors = SiteCarbon::unconfigured("dc1")
        .factors_at(T0)
        .expect("defaults");
    let mut out = Vec::new();
    for e in worked_example() {
        let m = measure(e.interval, &e.counter, &e.power, &MeasureConfig::default())
            .expect("measurable");
        let a = attribute(&AttributionInput {
            measured_mj: m.energy_mj,
            interval_ms: e.interval.len_ms(),
            idle_power_mw: EXAMPLE_IDLE_MW,
            holders: e.holders,
            activity: e.activity,
            unattributed_activity: e.unattributed_activity,
            policy,
        })
        .expect("valid");
        ledger.add("gpu-0", &m, &a, &factors).expect("fits");
        out.push((m, a));
    }
    (out, ledger)
}

#[test]
fn worked_example_matches_the_hand_computation_in_docs_energy_md() {
    let (intervals, ledger) = run_example(StaticPolicy::ByCapacity);
    let [(m1, a1), (m2, a2), (m3, a3), (m4, a4)] = &intervals[..] else {
        panic!("four intervals");
    };

    // Interval 1: 12 000 J measured, 3 600 J static.
    assert_eq!(m1.quality, Quality::Measured);
    assert_eq!(m1.energy_mj, 12_000_000);
    assert_eq!((a1.static_mj, a1.dynamic_mj), (3_600_000, 8_400_000));
    assert_eq!(row(a1, "alice-1"), (1_800_000, 6_300_000));
    assert_eq!(row(a1, "bob-1"), (900_000, 2_100_000));
    assert_eq!((a1.unattributed_mj, a1.unallocated_idle_mj), (0, 900_000));
    assert_eq!(a1.slices.len(), 2, "carol holds nothing yet");

    // Interval 2: largest remainder gives the three 6/7 remainders one mJ each.
    assert_eq!(m2.energy_mj, 12_600_001);
    assert_eq!((a2.static_mj, a2.dynamic_mj), (3_600_000, 9_000_001));
    assert_eq!(row(a2, "alice-1"), (1_800_000, 2_571_429));
    assert_eq!(row(a2, "bob-1"), (900_000, 2_571_429));
    assert_eq!(row(a2, "carol-1"), (600_000, 2_571_429));
    assert_eq!(
        (a2.unattributed_mj, a2.unallocated_idle_mj),
        (1_285_714, 300_000)
    );

    // Interval 3: measured below idle power x time, so all static, no dynamic for anyone.
    assert_eq!(m3.energy_mj, 3_000_000);
    assert_eq!((a3.static_mj, a3.dynamic_mj), (3_000_000, 0));
    assert_eq!(row(a3, "alice-1"), (1_500_000, 0));
    assert_eq!(row(a3, "bob-1"), (375_000, 0));
    assert_eq!(row(a3, "carol-1"), (750_000, 0));
    assert_eq!((a3.unattributed_mj, a3.unallocated_idle_mj), (0, 375_000));

    // Interval 4: counter reset, trapezoid estimate; no activity, so dynamic is unattributed.
    assert_eq!(
        m4.quality,
        Quality::Estimated {
            reason: EstimateReason::CounterDecreased {
                at_ms: T0 + 210 * S,
                before_mj: 5_030_000_000,
                after_mj: 1_500_000,
            }
        }
    );
    assert_eq!(m4.energy_mj, 9_000_000);
    assert_eq!(m4.counter_readings.len(), 5, "raw readings kept for audit");
    assert_eq!((a4.static_mj, a4.dynamic_mj), (3_600_000, 5_400_000));
    assert_eq!(row(a4, "alice-1"), (1_800_000, 0));
    assert_eq!(row(a4, "carol-1"), (900_000, 0));
    assert_eq!(
        (a4.unattributed_mj, a4.unallocated_idle_mj),
        (5_400_000, 900_000)
    );

    for (_, a) in &intervals {
        assert_eq!(a.rows_total_mj(), u128::from(a.measured_mj));
    }

    // Totals.
    let t = |name: &str| ledger.tenants.get(name).expect("tenant");
    assert_eq!(
        (t("alice").static_mj, t("alice").dynamic_mj),
        (6_900_000, 8_871_429)
    );
    assert_eq!(
        (t("bob").static_mj, t("bob").dynamic_mj),
        (2_175_000, 4_671_429)
    );
    assert_eq!(
        (t("carol").static_mj, t("carol").dynamic_mj),
        (2_250_000, 2_571_429)
    );
    assert_eq!(t("alice").estimated_mj, 1_800_000);
    assert_eq!(t("carol").estimated_mj, 900_000);
    assert_eq!(t("bob").estimated_mj, 0);
    let g = ledger.gpus.get("gpu-0").expect("gpu");
    assert_eq!(g, &ledger.cluster);
    assert_eq!(g.measured_mj, 36_600_001);
    assert_eq!((g.static_mj, g.dynamic_mj), (13_800_000, 22_800_001));
    assert_eq!(g.tenants_mj, 27_439_287);
    assert_eq!(g.unattributed_mj, 6_685_714);
    assert_eq!(g.unallocated_idle_mj, 2_475_000);
    assert_eq!(
        (g.intervals, g.estimated_intervals, g.estimated_mj),
        (4, 1, 9_000_000)
    );

    // CO2e at the default factors: g = mJ / 3.6e9 x 1.56 x 475.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(t("alice").co2e.location_g, 3.246_285_802_5));
    assert!(close(t("bob").co2e.location_g, 1.409_223_302_5));
    assert!(close(t("carol").co2e.location_g, 0.992_410_802_5));
    assert!(close(g.co2e.location_g, 7.533_500_205_833));
    assert_eq!(g.co2e.market_g, None);
    assert!(ledger.factor_sources.uses_default_estimates());
}

#[test]
fn worked_example_under_the_unallocated_policy_charges_only_dynamic_energy() {
    let (intervals, ledger) = run_example(StaticPolicy::Unallocated);
    let (_, a1) = &intervals[0];
    assert_eq!(row(a1, "alice-1"), (0, 6_300_000));
    assert_eq!(row(a1, "bob-1"), (0, 2_100_000));
    assert_eq!(a1.unallocated_idle_mj, 3_600_000);
    assert_eq!(ledger.cluster.unallocated_idle_mj, 13_800_000);
    assert_eq!(ledger.cluster.tenants_mj, 8_871_429 + 4_671_429 + 2_571_429);
}

#[test]
fn ledger_serializes_for_reports() {
    let (_, ledger) = run_example(StaticPolicy::ByCapacity);
    let json = serde_json::to_value(&ledger).expect("serializable");
    assert_eq!(json["policy"], "by_capacity");
    assert_eq!(json["cluster"]["measured_mj"], 36_600_001);
    assert_eq!(json["tenants"]["alice"]["dynamic_mj"], 8_871_429);
    assert_eq!(json["factor_sources"]["pue"][0]["kind"], "default_estimate");
    let back: EnergyLedger = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, ledger);
}

#[test]
fn ledger_rejects_a_mismatched_interval_and_stays_unchanged() {
    let (intervals, mut ledger) = run_example(StaticPolicy::ByCapacity);
    let before = ledger.clone();
    let factors = CarbonFactors::defaults();
    let (m, a) = &intervals[0];
    let mut other = a.clone();
    other.policy = StaticPolicy::Unallocated;
    assert!(matches!(
        ledger.add("gpu-0", m, &other, &factors),
        Err(LedgerError::PolicyMismatch { .. })
    ));
    assert!(matches!(
        ledger.add("gpu-0", m, &intervals[1].1, &factors),
        Err(LedgerError::MeasurementMismatch { .. })
    ));
    let mut broken = a.clone();
    broken.unattributed_mj += 1;
    assert!(matches!(
        ledger.add("gpu-0", m, &broken, &factors),
        Err(LedgerError::NotConserved { .. })
    ));
    assert_eq!(ledger, before);
}

#[test]
fn ledger_keeps_market_based_totals_only_when_every_interval_has_them() {
    let (intervals, _) = run_example(StaticPolicy::ByCapacity);
    let market = SiteCarbon::new("green", None, None, Some(Intensity::Constant(50.0)))
        .expect("valid")
        .factors_at(T0)
        .expect("constant");
    let mut ledger = EnergyLedger::new(StaticPolicy::ByCapacity);
    let (m, a) = &intervals[0];
    ledger.add("gpu-0", m, a, &market).expect("fits");
    assert!(ledger.cluster.co2e.market_g.is_some());
    let (m, a) = &intervals[1];
    ledger
        .add("gpu-1", m, a, &CarbonFactors::defaults())
        .expect("fits");
    assert_eq!(ledger.cluster.co2e.market_g, None);
    assert!(ledger.gpus["gpu-0"].co2e.market_g.is_some());
    assert_eq!(ledger.gpus["gpu-1"].co2e.market_g, None);
}

/// One step of a GPU's raw sample stream: time advance, energy used, and what happened.
#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    energy_mj: u64,
    power_mw: u64,
    /// 0: driver reload, 1: unsupported reading, 2: reading lost, else a normal reading.
    event: u8,
}

/// A GPU interval's layout: which slices of the pool hold it, and activity including slices of
/// other GPUs.
#[derive(Debug, Clone)]
struct Layout {
    holders: Vec<(usize, u32, u64)>,
    activity: Vec<(usize, u64)>,
    unattributed: u64,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (1u64..20_000, 0u64..10_000_000, 0u64..700_000, 0u8..30).prop_map(
        |(dt_ms, energy_mj, power_mw, event)| Step {
            dt_ms,
            energy_mj,
            power_mw,
            event,
        },
    )
}

fn arb_layout() -> impl Strategy<Value = Layout> {
    (
        prop::collection::vec((0usize..5, 0u32..=1000, 0u64..=1000), 0..5),
        prop::collection::vec((0usize..10, 0u64..1_000_000), 0..8),
        prop_oneof![Just(0u64), 0u64..100_000],
    )
        .prop_map(|(holders, activity, unattributed)| Layout {
            holders,
            activity,
            unattributed,
        })
}

/// Per GPU: intervals, each a list of steps and a layout.
type GpuStream = Vec<(Vec<Step>, Layout)>;

fn arb_cluster() -> impl Strategy<Value = (Vec<GpuStream>, u64, bool)> {
    (
        prop::collection::vec(
            prop::collection::vec(
                (prop::collection::vec(arb_step(), 1..6), arb_layout()),
                1..6,
            ),
            1..4,
        ),
        0u64..400_000,
        any::<bool>(),
    )
}

proptest! {
    /// Random sample streams (counter resets, unsupported readings, lost readings, gaps), random
    /// layouts, several GPUs: every GPU interval and the totals conserve measured energy exactly,
    /// no tenant is charged on a GPU it did not hold, and intervals without activity charge tenants
    /// no dynamic energy.
    #[test]
    fn pipeline_conserves_energy_and_charges_only_holders((gpus, idle_mw, unalloc) in arb_cluster()) {
        let policy = if unalloc { StaticPolicy::Unallocated } else { StaticPolicy::ByCapacity };
        let mut ledger = EnergyLedger::new(policy);
        let factors = CarbonFactors::defaults();
        let mut measured_total: u128 = 0;
        for (g, stream) in gpus.iter().enumerate() {
            let (mut t, mut counter) = (T0, 1_000_000_000u64);
            let mut boundary = reading(t, counter);
            for (steps, layout) in stream {
                let start = t;
                let mut readings = vec![boundary];
                let mut power = vec![PowerSample { at_ms: t, power_mw: steps[0].power_mw }];
                for s in steps {
                    t += s.dt_ms;
                    power.push(PowerSample { at_ms: t, power_mw: s.power_mw });
                    match s.event {
                        0 => { counter = s.energy_mj; readings.push(reading(t, counter)); }
                        1 => readings.push(CounterReading { at_ms: t, total_mj: None }),
                        2 => {}
                        _ => { counter += s.energy_mj; readings.push(reading(t, counter)); }
                    }
                }
                boundary = readings.last().copied().filter(|r| r.at_ms == t).unwrap_or(reading(t, counter));
                let interval = Interval { start_ms: start, end_ms: t };
                let m = measure(interval, &readings, &power, &MeasureConfig::default())
                    .expect("power samples always exist");
                measured_total += u128::from(m.energy_mj);

                let len = interval.len_ms();
                let mut seen = std::collections::BTreeSet::new();
                let holders: Vec<Holder> = layout.holders.iter()
                    .filter(|(s, ..)| seen.insert(*s))
                    .map(|&(s, milli, held_permille)| holder(
                        &format!("g{g}-s{s}"), &format!("t{s}"), milli, len * held_permille / 1000))
                    .collect();
                // Activity may name slices of other GPUs (g{g+1}-...): never charged here.
                let activity: Vec<SliceActivity> = layout.activity.iter()
                    .map(|&(s, a)| act(&format!("g{}-s{}", g + s / 5, s % 5), a))
                    .collect();
                let input = AttributionInput {
                    measured_mj: m.energy_mj,
                    interval_ms: len,
                    idle_power_mw: idle_mw,
                    holders: holders.clone(),
                    activity,
                    unattributed_activity: layout.unattributed,
                    policy,
                };
                let a = attribute(&input).expect("valid");
                prop_assert_eq!(a.rows_total_mj(), u128::from(m.energy_mj));
                for r in &a.slices {
                    let h = holders.iter().find(|h| h.slice_id == r.slice_id);
                    prop_assert!(h.is_some_and(|h| h.tenant == r.tenant), "charged non-holder {}", r.slice_id);
                    let prefix = format!("g{g}-");
                    prop_assert!(r.slice_id.starts_with(&prefix));
                    if h.is_some_and(|h| h.held_ms == 0) {
                        prop_assert_eq!(r.total_mj(), 0);
                    }
                }
                let idle_only = input.activity.iter().all(|x| x.activity == 0);
                if idle_only {
                    prop_assert!(a.slices.iter().all(|r| r.dynamic_mj == 0));
                }
                ledger.add(&format!("gpu-{g}"), &m, &a, &factors).expect("fits");
            }
        }
        for totals in ledger.gpus.values().chain(std::iter::once(&ledger.cluster)) {
            prop_assert_eq!(
                u128::from(totals.tenants_mj) + u128::from(totals.unattributed_mj) + u128::from(totals.unallocated_idle_mj),
                u128::from(totals.measured_mj)
            );
            prop_assert_eq!(totals.static_mj + totals.dynamic_mj, totals.measured_mj);
        }
        prop_assert_eq!(u128::from(ledger.cluster.measured_mj), measured_total);
        let tenant_sum: u64 = ledger.tenants.values().map(TenantTotals::total_mj).sum();
        prop_assert_eq!(tenant_sum, ledger.cluster.tenants_mj);
    }
}
