//! The report an auditor reads: a period with estimated intervals (some in stored hours),
//! market-based factors and reclaimed slices shows each of them in the headline and in the
//! methodology, and a held previous period gives per-tenant trends.

use super::*;
use crate::energy::history::tests::{T0, fold_all, record};

const MIN: u64 = 60_000;

/// alice busy (0.1 kWh static + `dyn_kwh` dynamic), bob idle (0.05 kWh static), 1 kWh = 3.6e9 mJ.
fn at(start_ms: u64, dyn_kwh: f64, estimated: bool) -> IntervalRecord {
    let dy = (dyn_kwh * MJ_PER_KWH) as u64;
    let slices = vec![
        ("alice", 0.5, MIN, 0.5 * 80.0 * MIN as f64, 360_000_000, dy),
        ("bob", 0.5, MIN, 0.0, 180_000_000, 0),
    ];
    record(
        "g0", start_ms, slices, 36_000_000, 72_000_000, estimated, true,
    )
}

/// Two hours from T0: the first only in the stored history (two of its four intervals
/// estimated), the second in memory (one estimated); every interval has a market-based factor.
fn period() -> (Vec<IntervalRecord>, Vec<HourRollup>, Vec<IntervalRecord>) {
    let first: Vec<_> = (0..4).map(|i| at(T0 + i * 15 * MIN, 0.2, i < 2)).collect();
    let second: Vec<_> = (0..4)
        .map(|i| at(T0 + HOUR_MS + i * 15 * MIN, 0.2, i == 3))
        .collect();
    let hours = vec![fold_all(T0, &first), fold_all(T0 + HOUR_MS, &second)];
    (first, hours, second)
}

fn audited() -> (Report, Vec<IntervalRecord>) {
    let (first, hours, second) = period();
    let (from, to) = (T0, T0 + 2 * HOUR_MS);
    let s = Sources::split(second, hours, from, to, StaticPolicy::ByCapacity, 0);
    let mut r = build_from(&s, from, to, None, 5.0);
    add_reclaimed(&mut r, &[("bob".into(), 0.5, 2)]);
    // The previous two hours, in memory: alice drew half the dynamic energy.
    let before: Vec<_> = (0..8)
        .map(|i| at(T0 - 2 * HOUR_MS + i * 15 * MIN, 0.1, false))
        .collect();
    let p = Sources::split(
        before,
        Vec::new(),
        from - 2 * HOUR_MS,
        from,
        StaticPolicy::ByCapacity,
        0,
    );
    add_previous(&mut r, &p, 5.0);
    let mut all = first;
    all.extend(period().2);
    (r, all)
}

/// The exact value the HTML gives a headline figure, and the text shown for it.
fn headline_in(page: &str, key: &str) -> (String, String) {
    let tag = format!(r#"data-headline="{key}" data-value=""#);
    let rest = page
        .split(&tag)
        .nth(1)
        .unwrap_or_else(|| panic!("no headline figure {key}"));
    let value = rest.split('"').next().unwrap().to_string();
    let text = rest
        .split('>')
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    (value, text)
}

fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!(r#"<section id="{id}">"#))
        .unwrap_or_else(|| panic!("no section {id}"));
    let len = page[start..].find("</section>").unwrap();
    &page[start..start + len]
}

#[test]
fn estimated_hours_market_factors_and_reclaim_reach_the_headline() {
    let (r, all) = audited();
    let measured_mj: u64 = all.iter().map(|x| x.measured_mj).sum();
    let h = &r.headline;
    assert_eq!(
        r.hourly.as_ref().map(|p| p.hours),
        Some(1),
        "the first hour is stored"
    );
    assert_eq!((h.intervals, h.estimated_intervals), (8, 3));
    let estimated_mj: u64 = all
        .iter()
        .filter(|x| x.quality.is_estimated())
        .map(|x| x.measured_mj)
        .sum();
    assert_eq!(h.estimated_kwh, estimated_mj as f64 / 3.6e9);
    assert_eq!(h.measured_kwh, measured_mj as f64 / 3.6e9);
    // Market-based: 100 g/kWh x PUE 1.56 on every interval; location-based: 475 g/kWh.
    let market = measured_mj as f64 / 3.6e9 * 1.56 * 100.0 / 1000.0;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert!(
        close(h.co2e_market_kg.unwrap(), market),
        "{:?} vs {market}",
        h.co2e_market_kg
    );
    assert!(close(h.co2e_location_kg, market * 4.75));
    assert_eq!((h.gpu_hours_reclaimed, h.reclaimed_slices), (0.5, 2));
    // bob's slice is idle in every interval: 8 minutes of half a GPU.
    assert!(close(h.idle_allocated_gpu_hours, 8.0 * 0.5 / 60.0));
    assert!(h.idle_allocated_kwh_records_only);
    assert!(
        close(h.idle_allocated_kwh, 4.0 * 0.05),
        "{}",
        h.idle_allocated_kwh
    );

    let page = html::render(&r, &Zone::utc());
    let head = section(&page, "headline");
    for (key, want) in [
        ("co2e_market_kg", h.co2e_market_kg.unwrap()),
        ("co2e_location_kg", h.co2e_location_kg),
        ("estimated_intervals", 3.0),
        ("gpu_hours_reclaimed", 0.5),
        ("reclaimed_slices", 2.0),
        ("measured_kwh", h.measured_kwh),
    ] {
        let (value, text) = headline_in(head, key);
        assert_eq!(value.parse::<f64>().unwrap(), want, "{key}: exact value");
        let shown: f64 = text.parse().unwrap_or_else(|_| panic!("{key}: {text:?}"));
        assert!(
            (shown - want).abs() <= 0.005 * want.abs(),
            "{key}: {text} for {want}"
        );
    }
    assert!(head.contains("reclaim"), "{head}");
}

#[test]
fn the_methodology_names_the_estimates_the_factors_and_the_reclaim() {
    let (r, _) = audited();
    let page = html::render(&r, &Zone::utc());
    let m = section(&page, "methodology");
    assert!(m.contains("<b>3 of 8 intervals</b>"), "{m}");
    // One estimated in memory with its reason, two in the stored hour whose reason is not kept.
    assert!(
        m.contains(r#"data-reason="counter_unsupported" data-count="1""#)
            && m.contains(reason_text("counter_unsupported")),
        "{m}"
    );
    assert!(
        m.contains(r#"data-reason="stored_hours" data-count="2""#),
        "{m}"
    );
    // Market-based factor with its source and the time it applied, in dates.
    let market = m
        .split(r#"data-factor="market_g_per_kwh""#)
        .nth(1)
        .expect("market factor row")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(market.contains("configured: contract"), "{market}");
    assert!(
        market.contains("2025-01-01T00:00:00Z .. 2025-01-01T01:46:00Z"),
        "{market}"
    );
    assert!(m.contains("configured market-based intensity for every interval"));
    assert!(m.contains("PUE scope") && m.contains("GPU energy only"));
    assert!(m.contains("by_capacity") && m.contains("under 5% of the capacity"));
    assert!(
        m.contains(r#"data-reclaimed-slices="2""#) && m.contains("gave back 2 slices"),
        "{m}"
    );
    // Dates, not Unix ms, wherever a person reads a time.
    assert!(!page.contains("Unix ms"));
    assert!(!to_table(&r, &Zone::utc()).contains(&T0.to_string()));
}

#[test]
fn a_held_previous_period_gives_each_tenant_a_trend() {
    let (r, _) = audited();
    let p = r.previous.as_ref().unwrap();
    assert!(p.held);
    assert_eq!((p.from_ms, p.to_ms), (T0 - 2 * HOUR_MS, T0));
    let alice = r.tenants.iter().find(|t| t.tenant == "alice").unwrap();
    // Now 0.1 + 0.2 kWh an interval, before 0.1 + 0.1: +50%.
    assert_eq!(alice.previous_energy_mj, Some(8 * 720_000_000));
    assert_eq!(trend_text(alice), "+50.0%");
    let bob = r.tenants.iter().find(|t| t.tenant == "bob").unwrap();
    assert_eq!(trend_text(bob), "0%");
    let page = html::render(&r, &Zone::utc());
    assert!(page.contains(r#"data-held="true""#));
    assert!(
        page.contains(
            r#"<td data-previous-energy-mj="5760000000">+50.0% <small>(was 1.60 kWh)</small></td>"#
        ),
        "{page}"
    );
}

#[test]
fn a_previous_period_the_history_only_partly_holds_gives_no_trend() {
    let (_, hours, second) = period();
    let (from, to) = (T0, T0 + 2 * HOUR_MS);
    let s = Sources::split(second, hours, from, to, StaticPolicy::ByCapacity, 0);
    let mut r = build_from(&s, from, to, None, 5.0);
    // Data only from the last half hour of the previous period.
    let late: Vec<_> = (0..2)
        .map(|i| at(T0 - 30 * MIN + i * 15 * MIN, 0.1, false))
        .collect();
    let p = Sources::split(
        late,
        Vec::new(),
        from - 2 * HOUR_MS,
        from,
        StaticPolicy::ByCapacity,
        0,
    );
    add_previous(&mut r, &p, 5.0);
    assert!(!r.previous.as_ref().unwrap().held);
    assert!(r.tenants.iter().all(|t| t.previous_energy_mj.is_none()));
    let page = html::render(&r, &Zone::utc());
    assert!(page.contains("No trend: the history does not hold the previous period"));
    assert!(page.contains("its data start only at 2024-12-31T23:30:00Z"));
    // A report from the beginning of the history has no previous period at all.
    assert_eq!(previous_period(0, to), None);
}

#[test]
fn csv_keeps_exact_values_and_gives_the_period_as_dates_and_unix_seconds() {
    let (r, _) = audited();
    let csv = to_csv(&r, &Zone::parse("+02:00").unwrap());
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let alice: Vec<&str> = lines
        .find(|l| l.starts_with("tenant,alice,"))
        .unwrap()
        .split(',')
        .collect();
    let row = r.tenants.iter().find(|t| t.tenant == "alice").unwrap();
    assert_eq!(alice[col("energy_mj")], row.energy_mj.to_string());
    assert_eq!(alice[col("period_from")], "2025-01-01T02:00:00+02:00");
    assert_eq!(alice[col("period_from_unix_s")], (T0 / 1000).to_string());
    assert_eq!(
        alice[col("period_to_unix_s")],
        ((T0 + 2 * HOUR_MS) / 1000).to_string()
    );
    assert!(!alice[col("co2e_market_kg")].is_empty());
}

#[test]
fn a_tenant_scoped_headline_is_the_tenants_with_cluster_waste_named_as_such() {
    let (_, hours, second) = period();
    let (from, to) = (T0, T0 + 2 * HOUR_MS);
    let s = Sources::split(second, hours, from, to, StaticPolicy::ByCapacity, 0);
    let r = build_from(&s, from, to, Some("alice"), 5.0);
    let alice = &r.tenants[0];
    let h = &r.headline;
    assert_eq!((r.tenants.len(), h.measured_kwh), (1, alice.energy_kwh));
    assert_eq!(h.gpu_hours, alice.gpu_hours_allocated);
    assert_eq!(h.idle_allocated_gpu_hours, 0.0, "alice is busy");
    assert!(h.co2e_market_kg.is_some());
    assert_eq!(
        h.unallocated_idle_kwh,
        r.cluster.unallocated_idle_mj as f64 / 3.6e9
    );
    let page = html::render(&r, &Zone::utc());
    assert!(
        page.contains("of the cluster's measured") && page.contains("attributed to this tenant")
    );
}
