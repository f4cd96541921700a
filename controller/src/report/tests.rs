//! Unit tests of the report document and its text renderers.

use super::*;

fn empty() -> Report {
    build(&[], 0, 10, None, StaticPolicy::ByCapacity, 5.0, 0)
}

#[test]
fn reclaimed_hours_fill_tenant_rows_and_the_total() {
    let mut r = empty();
    r.tenants.push(TenantRow {
        tenant: "b".into(),
        energy_mj: 7,
        ..Default::default()
    });
    add_reclaimed(
        &mut r,
        &[
            ("a".into(), 1.5, 1),
            ("b".into(), 0.5, 2),
            ("c".into(), 0.0, 0),
        ],
    );
    let names: Vec<&str> = r.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(
        names,
        ["a", "b"],
        "a reclaimed tenant without energy gets a row; c had nothing"
    );
    assert_eq!(
        (
            r.tenants[0].gpu_hours_reclaimed,
            r.tenants[0].reclaimed_slices
        ),
        (1.5, 1)
    );
    assert_eq!(r.tenants[1].energy_mj, 7);
    assert_eq!(r.gpu_hours_reclaimed, 2.0);
}

mod history {
    use super::super::*;
    use crate::energy::history::tests::{T0, fold_all, record};

    /// One record of `mj` mJ for alice starting `min` minutes after T0.
    fn at(min: u64, mj: u64) -> IntervalRecord {
        let slices = vec![("alice", 1.0, 60_000, 0.0, mj, 0)];
        record("g0", T0 + min * 60_000, slices, 0, 0, false, false)
    }

    fn report(records: Vec<IntervalRecord>, hours: Vec<HourRollup>, from: u64, to: u64) -> Report {
        let s = Sources::split(records, hours, from, to, StaticPolicy::ByCapacity, 0);
        build_from(&s, from, to, None, 5.0)
    }

    #[test]
    fn records_in_memory_serve_an_hour_they_cover_even_for_part_of_it() {
        let recs: Vec<_> = (0..4).map(|i| at(i * 15, 1 << i)).collect();
        let hour = fold_all(T0, &recs);
        // To 20 minutes in: the records of 0 and 15 minutes, with per-GPU rows.
        let r = report(recs, vec![hour], T0, T0 + 20 * 60_000);
        assert_eq!(r.hourly, None);
        assert_eq!(r.cluster.measured_mj, 1 + 2);
        assert_eq!(r.gpus.len(), 1);
    }

    #[test]
    fn an_hour_memory_does_not_fully_hold_comes_from_its_rollup_once() {
        // The interval at 0 minutes was attributed before a restart: only in the rollup.
        let before = at(0, 1);
        let after: Vec<_> = (1..4).map(|i| at(i * 15, 1 << i)).collect();
        let next = at(60, 100);
        let mut all = vec![before];
        all.extend(after.iter().cloned());
        let hours = vec![
            fold_all(T0, &all),
            fold_all(T0 + HOUR_MS, std::slice::from_ref(&next)),
        ];
        let mut memory = after;
        memory.push(next);
        let r = report(memory, hours, T0, T0 + 2 * HOUR_MS);
        let hourly = r.hourly.clone().unwrap();
        assert_eq!(
            (hourly.from_ms, hourly.to_ms, hourly.intervals),
            (T0, T0 + HOUR_MS, 4)
        );
        assert_eq!(
            r.cluster.measured_mj,
            1 + 2 + 4 + 8 + 100,
            "each interval once"
        );
        assert_eq!(r.intervals, 5);
        assert_eq!(r.tenants[0].energy_mj, 115);
        assert_eq!(
            r.gpus[0].measured_mj, 100,
            "per-GPU rows: records after the cut only"
        );
    }
}

#[test]
fn a_tenant_filter_keeps_other_tenants_reclaims_out() {
    let mut r = build(&[], 0, 10, Some("a"), StaticPolicy::ByCapacity, 5.0, 0);
    add_reclaimed(&mut r, &[("a".into(), 1.0, 1), ("b".into(), 3.0, 1)]);
    assert_eq!(r.tenants.len(), 1);
    assert_eq!(r.gpu_hours_reclaimed, 1.0);
}

#[test]
fn the_report_counts_intervals_by_how_their_dynamic_energy_was_split() {
    use crate::energy::fit::{Fallback, Method};
    use crate::energy::history::tests::{T0, record};
    let slices = || vec![("alice", 1.0, 60_000, 50.0 * 60_000.0, 1_000, 2_000)];
    let mut recs: Vec<IntervalRecord> = (0..3)
        .map(|i| record("g0", T0 + i * 60_000, slices(), 0, 0, false, false))
        .collect();
    recs[1].method = Method::ActivityFit;
    recs[2].method = Method::SmSplitFallback(Fallback::NoDramSignal);
    let r = build(
        &recs,
        T0,
        T0 + 3 * 60_000,
        None,
        StaticPolicy::ByCapacity,
        5.0,
        0,
    );
    let want: BTreeMap<String, u64> = [
        ("activity_fit".to_string(), 1),
        ("sm_split".to_string(), 1),
        ("sm_split (no per-slice DRAM signal)".to_string(), 1),
    ]
    .into();
    assert_eq!(r.dynamic_methods, want);
    let zone = zone::Zone::utc();
    let table = to_table(&r, &zone);
    assert!(
        table.contains("Dynamic energy split (intervals): 1 by activity_fit, 1 by sm_split, 1 by sm_split (no per-slice DRAM signal)"),
        "{table}"
    );
    let page = html::render(&r, &zone);
    assert!(page.contains(r#"data-method="activity_fit" data-count="1""#));
    // The method survives the JSON round trip; records without one read as the SM split.
    let json = serde_json::to_value(&recs[1]).expect("json");
    let mut old = json.clone();
    old.as_object_mut().expect("object").remove("method");
    let back: IntervalRecord = serde_json::from_value(json).expect("back");
    assert_eq!(back.method, Method::ActivityFit);
    let old: IntervalRecord = serde_json::from_value(old).expect("old record");
    assert_eq!(old.method, Method::SmSplit);
}

#[test]
fn claims_get_rows_that_add_up_to_their_part_of_the_namespaces_energy() {
    use crate::energy::history::tests::{T0, record};
    let slices = || {
        vec![
            ("team-a", 0.5, 60_000, 10.0 * 60_000.0, 1_000, 2_000),
            ("team-a", 0.25, 60_000, 5.0 * 60_000.0, 500, 700),
            ("team-b", 0.25, 60_000, 0.0, 400, 0),
        ]
    };
    let mut recs: Vec<IntervalRecord> = (0..2)
        .map(|i| record("g0", T0 + i * 60_000, slices(), 0, 0, false, false))
        .collect();
    for r in &mut recs {
        // Slice 0 is claim team-a/train, slice 2 claim team-b/serve; slice 1 is no claim's.
        r.slices[0].claim = Some("team-a/train".into());
        r.slices[2].claim = Some("team-b/serve".into());
    }
    let r = build(
        &recs,
        T0,
        T0 + 2 * 60_000,
        None,
        StaticPolicy::ByCapacity,
        5.0,
        0,
    );
    let by: BTreeMap<&str, &ClaimRow> = r.claims.iter().map(|c| (c.claim.as_str(), c)).collect();
    assert_eq!(by.len(), 2);
    assert_eq!(by["team-a/train"].tenant, "team-a");
    assert_eq!(by["team-a/train"].energy_mj, 2 * 3_000);
    assert_eq!(by["team-b/serve"].energy_mj, 2 * 400);
    let a = r
        .tenants
        .iter()
        .find(|t| t.tenant == "team-a")
        .expect("team-a");
    assert_eq!(
        a.energy_mj,
        2 * (3_000 + 1_200),
        "the claim is part of its namespace"
    );
    // A tenant filter keeps other namespaces' claims out.
    let only_b = build(
        &recs,
        T0,
        T0 + 2 * 60_000,
        Some("team-b"),
        StaticPolicy::ByCapacity,
        5.0,
        0,
    );
    assert_eq!(only_b.claims.len(), 1);
    assert_eq!(only_b.claims[0].claim, "team-b/serve");
    let table = to_table(&r, &zone::Zone::utc());
    assert!(table.contains("team-a/train"), "{table}");
}
