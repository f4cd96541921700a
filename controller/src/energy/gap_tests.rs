//! A configured hourly carbon series with a gap, and one that ends before the energy does: no
//! energy is dropped, the missing hours get an estimate labelled as one, and the report says
//! which hours used which factor.

use greenslice_core::sample::{AttributedSample, SliceActivity};

use super::accounting::{Accountant, AccountingConfig};
use super::carbon::{HourlySeries, Intensity, SiteCarbon};
use super::{Capacity, Holder, Interval, StaticPolicy};

const HOUR: u64 = 3_600_000;

/// 200 W on one GPU from 0 for `hours`, sampled every 10 s, one slice holding it at 50% SM.
fn run(site: SiteCarbon, hours: u64) -> Accountant {
    let mut acc = Accountant::new(AccountingConfig {
        window_ms: 600_000,
        site,
        ..Default::default()
    });
    let step_ms = 10_000u64;
    let samples: Vec<AttributedSample> = (0..=hours * HOUR / step_ms)
        .map(|i| AttributedSample {
            at_unix_ms: (i * step_ms) as i64,
            gpu_uuid: "GPU-1".into(),
            power_mw: Some(200_000),
            // 200 W = 200 mJ per ms.
            energy_mj: Some(i * step_ms * 200),
            slices: vec![SliceActivity {
                slice_id: "a".into(),
                sm_pct: 50.0,
                activity_known: true,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let holders = |_: &str, iv: Interval| {
        vec![Holder {
            slice_id: "a".into(),
            tenant: "ta".into(),
            claim: None,
            capacity: Capacity::WHOLE,
            held_ms: iv.len_ms(),
        }]
    };
    acc.ingest("n", &|_| "H100-SXM5-80GB".into(), &samples, &holders);
    acc
}

fn site(csv: &str) -> SiteCarbon {
    let series = HourlySeries::parse_csv(csv).expect("valid CSV");
    SiteCarbon::new("dc1", None, Some(Intensity::Hourly(series)), None).expect("valid site")
}

#[test]
fn a_gap_and_an_early_end_of_the_series_lose_no_energy() {
    // Hours 0 and 2 covered; hour 1 is a gap; the series ends before hour 3.
    let acc = run(site("0,100\n7200,300\n"), 4);
    assert_eq!(acc.skipped, 0, "{:?}", acc.last_error);
    // Every window of the 4 hours is recorded: 200 W x 4 h.
    assert_eq!(acc.totals.cluster.measured_mj, 200 * 4 * HOUR);
    let records = acc.records(0, u64::MAX);
    assert_eq!(records.len(), 24);
    let hour_of = |r: &super::accounting::IntervalRecord| r.interval.start_ms / HOUR;
    for r in &records {
        let f = &r.factors.location_g_per_kwh;
        match hour_of(r) {
            0 => assert!(f.value == 100.0 && !f.is_estimate()),
            // The gap: hour 0's value stands in, labelled.
            1 => assert!(f.value == 100.0 && f.is_gap(), "{f:?}"),
            2 => assert!(f.value == 300.0 && !f.is_estimate()),
            // After the end: hour 2's value stands in, labelled.
            _ => assert!(f.value == 300.0 && f.is_gap(), "{f:?}"),
        }
    }
    assert_eq!(acc.gap_estimated, 12, "hours 1 and 3, six windows each");

    // The report names the factor each hour used, with its time range.
    let report = crate::report::build(
        &records,
        0,
        4 * HOUR,
        None,
        StaticPolicy::ByCapacity,
        5.0,
        acc.skipped,
    );
    let location = report
        .factors
        .iter()
        .find(|f| f.name.contains("location"))
        .expect("location-based factor listed");
    assert!(location.estimate, "gap hours make the factor an estimate");
    let gap_spans: Vec<_> = location
        .spans
        .iter()
        .filter(|s| s.source.contains("lacks this hour"))
        .collect();
    assert_eq!(gap_spans.len(), 2, "{:?}", location.spans);
    assert!(
        gap_spans
            .iter()
            .any(|s| s.from_ms == HOUR && s.to_ms == 2 * HOUR)
    );
    assert!(
        gap_spans
            .iter()
            .any(|s| s.from_ms == 3 * HOUR && s.to_ms == 4 * HOUR)
    );
}

#[test]
fn a_series_that_starts_late_uses_the_labelled_default_before_it() {
    let acc = run(site("3600,50\n"), 2);
    assert_eq!(acc.skipped, 0);
    assert_eq!(acc.totals.cluster.measured_mj, 200 * 2 * HOUR);
    let first = &acc.records(0, HOUR)[0].factors.location_g_per_kwh;
    assert!(first.is_gap() && first.value == 475.0, "{first:?}");
}
