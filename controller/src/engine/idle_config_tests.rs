//! One idle threshold: `[idle] threshold_pct` in the controller's configuration decides both which
//! slices idle reclaim warns about and which held GPU time energy accounting counts as idle.

use std::sync::Arc;
use std::time::Duration;

use greenslice_core::clock::ManualClock;
use greenslice_core::sample::{AttributedSample, SliceActivity};
use greenslice_core::time::{HOUR_MS, HOUR_MS_I64};

use super::retention_tests::{NODE, T0, controller, fake_node, request, retention};
use crate::api::ops::energy_report;
use crate::config::ControllerConfig;
use crate::ledger::{Ledger, MemoryLedger};
use crate::reclaim::decide::Action;

/// What one run saw: whether reclaim warned about the slice, the GPU-hours the report counts as
/// idle-allocated, and the threshold the stored hour was judged with.
#[derive(Debug)]
struct Seen {
    warned: bool,
    idle_gpu_h: f64,
    stored_threshold_pct: f64,
}

/// A controller configured from `toml`, one 0.2 share running at 4% of its GPU (20% of its own
/// capacity) for five minutes, then a reclaim check, a report and a history flush.
async fn run(toml: &str) -> Seen {
    let cfg: ControllerConfig = toml::from_str(toml).unwrap();
    let ledger = Arc::new(MemoryLedger::default());
    let clock = ManualClock::new(T0);
    let c = controller(
        ledger.clone(),
        &clock,
        retention(Duration::from_secs(600), 100),
    )
    .await;
    crate::cli::configure(&c, &cfg, cfg.carbon.site_carbon().unwrap()).unwrap();
    fake_node(&c, 1);
    let id = request(&c, "alice", "").await.slice.id;
    for s in 1..=300 {
        let at = T0 + s * 1_000;
        clock.set(at);
        let batch = vec![AttributedSample {
            at_unix_ms: at,
            gpu_uuid: format!("GPU-{NODE}-0"),
            power_mw: Some(300_000),
            energy_mj: Some(u64::try_from(s).unwrap() * 300_000),
            slices: vec![SliceActivity {
                slice_id: id.clone(),
                sm_pct: 4.0,
                activity_known: true,
                ..Default::default()
            }],
            ..Default::default()
        }];
        c.ingest_samples(NODE, &batch);
    }
    let warned = c
        .reclaim_tick()
        .await
        .iter()
        .any(|a| matches!(a, Action::Warn { slice, .. } if *slice == id));
    let report = energy_report(&c, T0, T0 + HOUR_MS_I64, "alice")
        .await
        .unwrap();
    let idle_gpu_h = report
        .tenants
        .iter()
        .find(|t| t.tenant == "alice")
        .map(|t| t.gpu_hours_idle_allocated)
        .unwrap();
    c.flush_energy_history().await.unwrap();
    let h0 = u64::try_from(T0).unwrap();
    let stored = ledger.load_hours(h0, h0 + HOUR_MS).await.unwrap();
    Seen {
        warned,
        idle_gpu_h,
        stored_threshold_pct: stored[0].idle_threshold_pct,
    }
}

#[tokio::test]
async fn the_configured_idle_threshold_decides_reclaim_and_energy_accounting_alike() {
    let window = "[idle]\nwindow_s = 60\ngrace_s = 60\n";
    // Default 5%: a slice at 20% of its capacity is busy for reclaim and for the report.
    let busy = run(window).await;
    assert!(!busy.warned, "{busy:?}");
    assert_eq!(busy.idle_gpu_h, 0.0, "{busy:?}");
    assert_eq!(busy.stored_threshold_pct, 5.0);
    // 50%: the same slice is idle for both.
    let idle = run(&format!("{window}threshold_pct = 50\n")).await;
    assert!(idle.warned, "{idle:?}");
    assert!(idle.idle_gpu_h > 0.0, "{idle:?}");
    assert_eq!(idle.stored_threshold_pct, 50.0);
}
