use proptest::prelude::*;

use super::*;
use crate::energy::accounting::SliceInterval;
use crate::energy::carbon::Factor;
use crate::energy::measure::{EstimateReason, Quality};

pub(crate) const T0: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z

/// The rollup of one interval in which `tenants` tenants held `gpu` and drew `mj` mJ each.
pub(crate) fn one_interval_hour(start_ms: u64, gpu: &str, tenants: usize, mj: u64) -> HourRollup {
    let names: Vec<String> = (0..tenants).map(|i| format!("tenant-{i:05}")).collect();
    let slices = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                1.0 / tenants as f64,
                60_000,
                500.0,
                mj / 2,
                mj - mj / 2,
            )
        })
        .collect();
    fold_all(
        hour_of(start_ms),
        &[record(gpu, start_ms, slices, 1, 2, false, false)],
    )
}

/// A record whose rows add up to its measured energy, as attribution makes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    gpu: &str,
    start_ms: u64,
    slices: Vec<(&str, f64, u64, f64, u64, u64)>,
    unattributed_mj: u64,
    unallocated_idle_mj: u64,
    estimated: bool,
    market: bool,
) -> IntervalRecord {
    let slices: Vec<SliceInterval> = slices
        .into_iter()
        .enumerate()
        .map(
            |(i, (tenant, capacity, held_ms, activity_pct_ms, st, dy))| SliceInterval {
                slice_id: format!("{gpu}-{i}"),
                tenant: tenant.to_string(),
                claim: None,
                capacity,
                held_ms,
                activity_pct_ms,
                static_mj: st,
                dynamic_mj: dy,
            },
        )
        .collect();
    let static_mj = slices.iter().map(|s| s.static_mj).sum::<u64>() + unallocated_idle_mj;
    let dynamic_mj = slices.iter().map(|s| s.dynamic_mj).sum::<u64>() + unattributed_mj;
    let mut factors = CarbonFactors::defaults();
    if market {
        factors.market_g_per_kwh = Some(Factor {
            value: 100.0,
            source: FactorSource::Configured {
                note: "contract".into(),
            },
        });
    }
    IntervalRecord {
        gpu: gpu.to_string(),
        node: "n".into(),
        model: "H100-SXM5-80GB".into(),
        interval: Interval {
            start_ms,
            end_ms: start_ms + 60_000,
        },
        measured_mj: static_mj + dynamic_mj,
        quality: if estimated {
            Quality::Estimated {
                reason: EstimateReason::CounterUnsupported,
            }
        } else {
            Quality::Measured
        },
        counter_readings: Vec::new(),
        idle_power_mw: 70_000,
        idle_power_calibrated: false,
        static_mj,
        dynamic_mj,
        unattributed_mj,
        unallocated_idle_mj,
        slices,
        gpu_activity_pct_ms: 1_234_567.5,
        factors,
        method: Default::default(),
    }
}

pub(crate) fn fold_all(hour: u64, records: &[IntervalRecord]) -> HourRollup {
    let mut h = HourRollup::new(hour, StaticPolicy::ByCapacity, 5.0);
    for r in records {
        h.fold(r);
    }
    h
}

/// Equal up to the rounding of f64 sums (CO2e) taken in another order; everything else exactly.
fn assert_same(a: &HourRollup, b: &HourRollup) {
    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
    }
    fn same_co2e(x: &crate::energy::Co2e, y: &crate::energy::Co2e) -> bool {
        close(x.location_g, y.location_g)
            && match (x.market_g, y.market_g) {
                (Some(p), Some(q)) => close(p, q),
                (p, q) => p == q,
            }
    }
    fn without_co2e(h: &HourRollup) -> HourRollup {
        let mut h = h.clone();
        let zero = |c: &mut crate::energy::Co2e| {
            c.location_g = 0.0;
            c.market_g = c.market_g.map(|_| 0.0);
        };
        h.tenants
            .values_mut()
            .for_each(|t| zero(&mut t.energy.co2e));
        zero(&mut h.cluster.energy.co2e);
        h
    }
    assert_eq!(without_co2e(a), without_co2e(b));
    assert!(
        same_co2e(&a.cluster.energy.co2e, &b.cluster.energy.co2e),
        "{a:?} {b:?}"
    );
    for (name, t) in &a.tenants {
        assert!(
            same_co2e(&t.energy.co2e, &b.tenants[name].energy.co2e),
            "{name}"
        );
    }
}

fn arb_record() -> impl Strategy<Value = IntervalRecord> {
    let slice = (
        prop::sample::select(vec!["alice", "bob", "carol"]),
        0.0f64..=1.0,
        0u64..=60_000,
        0.0f64..6_000_000.0,
        0u64..5_000_000,
        0u64..20_000_000,
    );
    (
        prop::sample::select(vec!["g0", "g1", "g2"]),
        0u64..3_599_999,
        prop::collection::vec(slice, 0..4),
        0u64..10_000_000,
        0u64..10_000_000,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(gpu, offset, slices, un, idle, est, market)| {
            record(gpu, T0 + offset, slices, un, idle, est, market)
        })
}

proptest! {
    #[test]
    fn every_hour_keeps_the_energy_identity(records in prop::collection::vec(arb_record(), 0..40)) {
        let h = fold_all(T0, &records);
        let c = &h.cluster.energy;
        prop_assert_eq!(c.tenants_mj + c.unattributed_mj + c.unallocated_idle_mj, c.measured_mj);
        prop_assert_eq!(c.static_mj + c.dynamic_mj, c.measured_mj);
        let tenants: u64 = h.tenants.values().map(|t| t.energy.total_mj()).sum();
        prop_assert_eq!(tenants, c.tenants_mj);
        prop_assert_eq!(c.measured_mj, records.iter().map(|r| r.measured_mj).sum::<u64>());
        prop_assert_eq!(c.intervals, records.len() as u64);
    }

    #[test]
    fn folding_does_not_depend_on_the_order(
        records in prop::collection::vec(arb_record(), 0..30),
        seed in any::<u64>(),
    ) {
        let mut shuffled = records.clone();
        // A deterministic shuffle from the seed.
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        assert_same(&fold_all(T0, &records), &fold_all(T0, &shuffled));
    }

    #[test]
    fn merging_partial_rollups_equals_folding_all(
        records in prop::collection::vec(arb_record(), 0..30),
        cut in 0usize..30,
    ) {
        let cut = cut.min(records.len());
        let mut a = fold_all(T0, &records[..cut]);
        a.merge(&fold_all(T0, &records[cut..]));
        assert_same(&a, &fold_all(T0, &records));
    }
}

#[test]
fn records_fold_into_the_utc_hour_they_start_in() {
    let mut r = Rollups::new(StaticPolicy::ByCapacity);
    let a = record(
        "g0",
        T0 + HOUR_MS - 30_000,
        vec![("alice", 1.0, 60_000, 0.0, 10, 20)],
        0,
        0,
        false,
        false,
    );
    let b = record(
        "g0",
        T0 + HOUR_MS + 30_000,
        vec![("alice", 1.0, 60_000, 0.0, 1, 2)],
        0,
        0,
        false,
        false,
    );
    r.fold(&[a, b], 5.0);
    let hours = r.overlay(Vec::new(), 0, u64::MAX);
    assert_eq!(
        hours
            .iter()
            .map(|h| (h.hour_start_ms, h.tenants["alice"].energy.total_mj()))
            .collect::<Vec<_>>(),
        vec![(T0, 30), (T0 + HOUR_MS, 3)],
        "an interval crossing the hour counts whole in the hour it starts in"
    );
    assert_eq!(hour_at_or_after(T0), T0);
    assert_eq!(hour_at_or_after(T0 + 1), T0 + HOUR_MS);
}

#[test]
fn tenant_gpu_time_and_whole_gpu_energy_follow_the_report_definitions() {
    // alice: half a GPU for 60 s at 1% of the GPU (under 5% x 0.5): idle-allocated.
    // bob: a quarter for 30 s, busy at 20%.
    let r = record(
        "g0",
        T0,
        vec![
            ("alice", 0.5, 60_000, 1.0 * 60_000.0, 100, 200),
            ("bob", 0.25, 30_000, 20.0 * 30_000.0, 300, 400),
        ],
        50,
        60,
        true,
        true,
    );
    let h = fold_all(T0, &[r]);
    let alice = &h.tenants["alice"];
    assert_eq!(alice.allocated_gpu_us, 30_000_000, "0.5 x 60 s");
    assert_eq!(alice.idle_allocated_gpu_us, 30_000_000);
    assert_eq!(alice.used_gpu_us, 600_000, "1% x 60 s");
    assert_eq!(alice.whole_gpu_mj, 70_000 * 60_000 / 1000 + 200);
    assert_eq!(alice.energy.estimated_mj, 300);
    assert!(alice.energy.co2e.market_g.is_some());
    let bob = &h.tenants["bob"];
    assert_eq!(bob.allocated_gpu_us, 7_500_000);
    assert_eq!(bob.idle_allocated_gpu_us, 0, "20% is over 5% x 0.25");
    assert_eq!(
        h.cluster.energy.measured_mj,
        100 + 200 + 300 + 400 + 50 + 60
    );
    assert_eq!(h.cluster.energy.estimated_intervals, 1);
    assert_eq!(
        h.cluster.whole_gpus_mj,
        alice.whole_gpu_mj + bob.whole_gpu_mj + 50,
        "unattributed energy counts on the dedicated side too"
    );
    assert!(h.factors["location_g_per_kwh"].estimate);
    assert!(!h.factors["market_g_per_kwh"].estimate);
}

#[test]
fn market_co2e_is_dropped_for_a_tenant_once_an_interval_has_none() {
    let with = record(
        "g0",
        T0,
        vec![("alice", 1.0, 60_000, 0.0, 10, 0)],
        0,
        0,
        false,
        true,
    );
    let without = record(
        "g1",
        T0,
        vec![("alice", 1.0, 60_000, 0.0, 10, 0)],
        0,
        0,
        false,
        false,
    );
    let mut a = fold_all(T0, std::slice::from_ref(&with));
    let empty = HourRollup::new(T0, StaticPolicy::ByCapacity, 5.0);
    a.merge(&empty);
    assert!(
        a.tenants["alice"].energy.co2e.market_g.is_some(),
        "an empty part keeps it"
    );
    a.merge(&fold_all(T0, &[without]));
    assert_eq!(a.tenants["alice"].energy.co2e.market_g, None);
    assert_eq!(a.cluster.energy.co2e.market_g, None);
}

#[test]
fn a_flush_never_replaces_a_stored_hour_with_less() {
    let stored = fold_all(
        T0,
        &[record(
            "g0",
            T0,
            vec![("alice", 1.0, 60_000, 0.0, 10, 0)],
            0,
            0,
            false,
            false,
        )],
    );
    let later = record(
        "g0",
        T0 + 60_000,
        vec![("alice", 1.0, 60_000, 0.0, 5, 0)],
        0,
        0,
        false,
        false,
    );

    // Loaded at start: folding continues from it.
    let mut r = Rollups::new(StaticPolicy::ByCapacity);
    r.load(vec![stored.clone()]);
    assert!(r.to_flush().is_empty(), "nothing new to store");
    r.fold(std::slice::from_ref(&later), 5.0);
    let out = r.to_flush();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tenants["alice"].energy.total_mj(), 15);

    // Not loaded (an older hour): it must be rebased before it is stored.
    let mut r = Rollups::new(StaticPolicy::ByCapacity);
    r.fold(std::slice::from_ref(&later), 5.0);
    assert!(r.to_flush().is_empty());
    assert_eq!(r.unbased_dirty(), vec![T0]);
    assert_eq!(
        r.overlay(vec![stored.clone()], 0, u64::MAX)[0].tenants["alice"]
            .energy
            .total_mj(),
        15,
        "a report merges what is held with what is stored"
    );
    r.rebase(stored);
    let out = r.to_flush();
    assert_eq!(out[0].tenants["alice"].energy.total_mj(), 15);

    // Once stored and unchanged, the hour is clean and old clean hours are forgotten.
    r.flushed(&out, T0 + 2 * HOUR_MS);
    assert!(r.is_empty());
}

#[test]
fn an_hour_changed_during_its_flush_stays_dirty() {
    let mut r = Rollups::new(StaticPolicy::ByCapacity);
    r.load(Vec::new());
    r.fold(&[record("g0", T0, vec![], 7, 0, false, false)], 5.0);
    r.mark_based(T0);
    let out = r.to_flush();
    r.fold(&[record("g1", T0, vec![], 8, 0, false, false)], 5.0);
    r.flushed(&out, 0);
    assert_eq!(r.to_flush()[0].cluster.energy.measured_mj, 15);
}

#[test]
fn an_hour_rollup_takes_about_260_bytes_per_tenant() {
    // Measured: `cargo test -p greenslice-controller --lib an_hour_rollup -- --nocapture`.
    let bytes = |tenants| {
        serde_json::to_vec(&one_interval_hour(T0, "g", tenants, 1_000_000))
            .unwrap()
            .len()
    };
    let (one, hundred, thousand) = (bytes(1), bytes(100), bytes(1000));
    let per_tenant = (thousand - hundred) / 900;
    eprintln!(
        "hour rollup JSON: 1 tenant {one} B, 100 tenants {hundred} B, 1000 tenants {thousand} B, {per_tenant} B per tenant"
    );
    assert!(
        (200..=400).contains(&per_tenant),
        "{per_tenant} B per tenant: update docs/ENERGY.md"
    );
    assert!(
        bytes(5_000) < MAX_HOUR_BYTES,
        "docs/DURABILITY.md promises about 5,000 tenants fit"
    );
}
