//! Energy history through the controller: hours stored by the flush, kept across a restart on the
//! same ledger, and reports that combine stored hours with the records in memory, counting every
//! interval once.

use std::sync::Arc;
use std::time::Duration;

use greenslice_core::clock::ManualClock;

use super::retention_tests::{NODE, T0, controller, fake_node, request, retention, samples};
use crate::api::ops::energy_report;
use crate::ledger::redb::RedbLedger;
use crate::ledger::{Ledger, LedgerError, MemoryLedger};
use greenslice_core::time::{HOUR_MS, HOUR_MS_I64};

const H0: u64 = T0 as u64;

/// Samples every `step_s` seconds from `from_s` to `to_s` (seconds after T0), the clock following.
fn sample(c: &super::Controller, clock: &ManualClock, from_s: i64, to_s: i64, step_s: i64) {
    for s in (from_s..=to_s).step_by(step_s as usize) {
        clock.set(T0 + s * 1_000);
        c.ingest_samples(NODE, &samples(c, T0 + s * 1_000, 1));
    }
}

fn tenant_mj(r: &crate::report::Report, tenant: &str) -> u64 {
    r.tenants
        .iter()
        .find(|t| t.tenant == tenant)
        .map_or(0, |t| t.energy_mj)
}

async fn open(dir: &std::path::Path) -> Arc<dyn Ledger> {
    // The ledger of a dropped controller may hold the file for a moment.
    loop {
        match RedbLedger::open(dir) {
            Ok(l) => return Arc::new(l),
            Err(LedgerError::Config(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn energy_attributed_before_a_restart_is_in_the_report_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let config = || retention(Duration::from_secs(600), 100_000);
    let (alice_mj, lost_mj) = {
        let c = controller(open(dir.path()).await, &clock, config()).await;
        fake_node(&c, 1);
        let alice = request(&c, "alice", "").await.slice.id;
        // Ten minutes of samples: intervals of 60 s, flushed.
        sample(&c, &clock, 1, 600, 1);
        assert_eq!(
            c.flush_energy_history().await.unwrap(),
            1,
            "one hour changed"
        );
        assert_eq!(c.metrics.history_hours_stored.get(), 1);
        assert_eq!(c.metrics.history_hours_unstored.get(), 0);
        let flushed = energy_report(&c, T0, T0 + HOUR_MS_I64, "alice")
            .await
            .unwrap();
        let alice_mj = tenant_mj(&flushed, "alice");
        assert!(alice_mj > 0);
        // Two more minutes, not flushed before the "crash": the loss window.
        sample(&c, &clock, 601, 720, 1);
        let all = energy_report(&c, T0, T0 + HOUR_MS_I64, "alice")
            .await
            .unwrap();
        // Alice leaves (durably) before the crash.
        c.release(&alice, "done").await.unwrap();
        (alice_mj, tenant_mj(&all, "alice") - alice_mj)
    };
    assert!(lost_mj > 0);

    // Restarted on the same file, later in the same hour; bob works now.
    let ledger = open(dir.path()).await;
    let c = controller(ledger.clone(), &clock, config()).await;
    fake_node(&c, 1);
    request(&c, "bob", "").await;
    sample(&c, &clock, 900, 1500, 1);
    let r = energy_report(&c, T0, T0 + 2 * HOUR_MS_I64, "")
        .await
        .unwrap();
    assert_eq!(
        tenant_mj(&r, "alice"),
        alice_mj,
        "the flushed energy survives; the {lost_mj} mJ never flushed are lost"
    );
    let bob_mj = tenant_mj(&r, "bob");
    assert!(bob_mj > 0);
    let hourly = r
        .hourly
        .clone()
        .expect("the hour of the restart comes from the history");
    assert_eq!((hourly.from_ms, hourly.to_ms), (H0, H0 + HOUR_MS));
    assert!(
        r.gpus.is_empty(),
        "per-GPU rows cover only records after the hourly part"
    );
    assert_eq!(
        r.cluster.measured_mj,
        r.cluster.tenants_mj + r.cluster.unattributed_mj + r.cluster.unallocated_idle_mj
    );
    // A tenant sees its own row with the history too.
    let only = energy_report(&c, T0, T0 + 2 * HOUR_MS_I64, "alice")
        .await
        .unwrap();
    assert_eq!(
        only.tenants
            .iter()
            .map(|t| (t.tenant.as_str(), t.energy_mj))
            .collect::<Vec<_>>(),
        vec![("alice", alice_mj)]
    );

    // The next flush stores the hour with both controllers' intervals, never less.
    c.flush_energy_history().await.unwrap();
    let stored = ledger.load_hours(H0, H0 + HOUR_MS).await.unwrap();
    let t = &stored[0].tenants;
    assert_eq!(t["alice"].energy.total_mj(), alice_mj);
    assert_eq!(t["bob"].energy.total_mj(), bob_mj);
}

#[tokio::test]
async fn a_report_counts_every_interval_once_across_stored_hours_and_records() {
    let ledger = Arc::new(MemoryLedger::default());
    let clock = ManualClock::new(T0);
    let c = controller(
        ledger.clone(),
        &clock,
        retention(Duration::from_secs(600), 100_000),
    )
    .await;
    // Few records in memory, so most of three hours is only in the history.
    c.configure_energy(crate::energy::accounting::AccountingConfig {
        max_records: 40,
        ..Default::default()
    });
    fake_node(&c, 1);
    request(&c, "alice", "").await;
    sample(&c, &clock, 1, 3 * 3600 + 1200, 5);
    c.flush_energy_history().await.unwrap();
    request(&c, "bob", "").await;
    sample(&c, &clock, 3 * 3600 + 1205, 3 * 3600 + 1800, 5);
    let totals = c.energy_lock().totals.clone();

    let r = energy_report(&c, 0, 0, "").await.unwrap();
    let hourly = r
        .hourly
        .clone()
        .expect("evicted records come from the history");
    assert_eq!((hourly.to_ms, hourly.hours), (H0 + 3 * HOUR_MS, 3));
    assert_eq!(r.cluster.measured_mj, totals.cluster.measured_mj);
    assert_eq!(r.cluster.tenants_mj, totals.cluster.tenants_mj);
    assert_eq!(
        r.cluster.unallocated_idle_mj,
        totals.cluster.unallocated_idle_mj
    );
    assert_eq!(r.cluster.intervals, totals.cluster.intervals);
    assert_eq!(r.intervals, totals.cluster.intervals);
    for (tenant, t) in &totals.tenants {
        assert_eq!(tenant_mj(&r, tenant), t.total_mj(), "{tenant}");
    }
    // Per-GPU rows: only the records from the cut on, all of them in memory.
    let in_memory: u64 = c
        .energy_records(0, u64::MAX)
        .0
        .iter()
        .filter(|x| x.interval.start_ms >= hourly.to_ms)
        .map(|x| x.measured_mj)
        .sum();
    assert_eq!(r.gpus.iter().map(|g| g.measured_mj).sum::<u64>(), in_memory);
    assert!(in_memory > 0);

    // A period ending inside the last hour: that hour's records in memory serve it (its rollup
    // would count intervals after the end).
    let to = H0 + 3 * HOUR_MS + 10 * 60_000;
    let part = energy_report(&c, 0, to as i64, "").await.unwrap();
    assert_eq!(part.hourly.unwrap().to_ms, H0 + 3 * HOUR_MS);
    let until_to: u64 = c
        .energy_records(0, u64::MAX)
        .0
        .iter()
        .filter(|x| x.interval.start_ms >= H0 + 3 * HOUR_MS && x.interval.start_ms < to)
        .map(|x| x.measured_mj)
        .sum();
    assert_eq!(
        part.gpus.iter().map(|g| g.measured_mj).sum::<u64>(),
        until_to
    );

    // A report of the last hour alone needs no history.
    let last = energy_report(&c, (H0 + 3 * HOUR_MS) as i64, 0, "")
        .await
        .unwrap();
    assert_eq!(last.hourly, None);
    assert_eq!(last.cluster.measured_mj, in_memory);
}

#[tokio::test]
async fn stored_hours_older_than_the_retention_are_deleted_at_most_once_an_hour() {
    use crate::energy::history::tests::one_interval_hour;
    use crate::ledger::Op;
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::default());
    // Hours stored 3, 2 and 1 days before T0.
    let day = 24 * HOUR_MS;
    let stored: Vec<u64> = vec![H0 - 3 * day, H0 - 2 * day, H0 - day];
    for &h in &stored {
        ledger
            .submit(vec![Op::PutHour(Box::new(one_interval_hour(h, "g", 1, 5)))])
            .await
            .unwrap();
    }
    let clock = ManualClock::new(T0);
    let config = super::CoreConfig {
        energy_history_retention: Some(Duration::from_millis(2 * day + HOUR_MS)),
        ..retention(Duration::from_secs(600), 100_000)
    };
    let c = controller(ledger.clone(), &clock, config).await;
    let starts = |hours: Vec<crate::energy::history::HourRollup>| -> Vec<u64> {
        hours.iter().map(|h| h.hour_start_ms).collect()
    };
    c.flush_energy_history().await.unwrap();
    assert_eq!(
        starts(ledger.load_hours(0, u64::MAX).await.unwrap()),
        vec![H0 - 2 * day, H0 - day],
        "the hour older than 2 days and 1 hour is gone"
    );
    // Half an hour later the next day's hour is past the retention too, but pruning waits an hour.
    clock.set(T0 + day as i64);
    c.flush_energy_history().await.unwrap();
    clock.set(T0 + day as i64 + HOUR_MS_I64 / 2);
    ledger
        .submit(vec![Op::PutHour(Box::new(one_interval_hour(
            H0 - 3 * day,
            "g",
            1,
            5,
        )))])
        .await
        .unwrap();
    c.flush_energy_history().await.unwrap();
    assert_eq!(
        starts(ledger.load_hours(0, u64::MAX).await.unwrap()),
        vec![H0 - 3 * day, H0 - day],
        "pruned once at T0 + 1 day, not again half an hour later"
    );
}
