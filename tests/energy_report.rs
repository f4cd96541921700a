//! The energy report of a live run: intervals conserve energy, the HTML is self-contained and its
//! numbers equal the JSON report's.

mod common;

use std::sync::Arc;
use std::time::Duration;

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::{Machine, Workload};
use greenslice_controller::api::ops::energy_report;
use greenslice_controller::report::{self, html};
use greenslice_core::clock::ScaledClock;
use greenslice_proto::v1 as pb;
use pb::tenant_service_client::TenantServiceClient;

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let i = tag.find(&key)? + key.len();
    Some(tag[i..].split('"').next()?.to_string())
}

/// Held by each test for its whole run: two clusters at 600x speed on a 2-core machine delay each
/// other's RPCs past several samples (a new slice works at 80% until its workload is set).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_report_conserves_energy_and_html_matches_json() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let speedup = 600.0;
    let mut spec = ClusterSpec::new(harness::nodes(2, &[Machine::DgxH100], 2));
    let clock = Arc::new(ScaledClock::new(1_800_000_000_000, speedup));
    spec.clock = clock.clone();
    spec.sample_interval = Duration::from_secs_f64(5.0 / speedup);
    spec.batch_interval = Duration::from_secs_f64(30.0 / speedup);
    let cluster = harness::start(spec).await.unwrap();
    let specs = [
        (
            "alpha",
            pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 }),
            Workload::Busy { util: 0.9 },
        ),
        (
            "beta",
            pb::slice_spec::Kind::Mig(pb::MigSlice {
                profile: "3g.40gb".into(),
            }),
            Workload::Busy { util: 0.5 },
        ),
        (
            "gamma",
            pb::slice_spec::Kind::Share(pb::ShareSlice {
                compute_fraction: 0.5,
                memory_bytes: 8 << 30,
            }),
            Workload::Idle,
        ),
    ];
    for (tenant, kind, w) in specs {
        let s = common::request_slice(&cluster.url, tenant, kind).await;
        cluster
            .with_sim(&s.node, |sim| sim.set_workload(&s.id, w).unwrap())
            .unwrap();
    }
    // A new simulated slice runs its default workload until set above: the report starts after
    // the workloads are set, so every interval in it saw only them (under CPU load the gap between
    // a request and its set_workload spans several simulated samples).
    let from = greenslice_core::clock::Clock::now_ms(clock.as_ref());
    // About 30 simulated minutes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = energy_report(&cluster.controller, from, 0, "")
        .await
        .unwrap();
    assert!(
        r.intervals >= 16 * 10,
        "expected many intervals, got {}",
        r.intervals
    );

    // Conservation per GPU and for the cluster.
    for g in r.gpus.iter().chain(std::iter::once(&r.cluster)) {
        assert_eq!(
            g.tenants_mj + g.unattributed_mj + g.unallocated_idle_mj,
            g.measured_mj,
            "{}",
            g.gpu
        );
    }
    let tenants_total: u64 = r.tenants.iter().map(|t| t.energy_mj).sum();
    assert_eq!(tenants_total, r.cluster.tenants_mj);
    let by = |t: &str| r.tenants.iter().find(|x| x.tenant == t).unwrap().clone();
    let (alpha, beta, gamma) = (by("alpha"), by("beta"), by("gamma"));
    // Busy whole GPU draws more than a busy 3/7 MIG slice; an idle share gets static energy only.
    assert!(alpha.energy_mj > beta.energy_mj);
    assert_eq!(
        gamma.dynamic_mj, 0,
        "an idle share is charged no dynamic energy"
    );
    assert!(gamma.static_mj > 0);
    assert!(alpha.gpu_hours_used > beta.gpu_hours_used);
    assert!(gamma.gpu_hours_idle_allocated > 0.0 && gamma.gpu_hours_used < 1e-9);
    // Defaults are flagged as estimates with their sources.
    assert!(r.co2e_is_estimate);
    assert!(
        r.factors
            .iter()
            .any(|f| f.name == "pue" && f.min == 1.56 && f.sources[0].contains("Uptime"))
    );

    // HTML: self-contained, and its numbers equal the JSON.
    let page = html::render(&r, &report::Zone::utc());
    // The savings are a model, and every output says so beside them.
    assert!(page.contains("Savings are modelled, not measured"), "HTML");
    assert!(
        report::to_table(&r, &report::Zone::utc()).contains(report::SAVINGS_BASIS),
        "table"
    );
    let as_json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(
        as_json["comparison"]["basis"],
        report::SAVINGS_BASIS,
        "JSON"
    );
    for forbidden in ["<script src", "<link", "http://", "https://", "@import"] {
        assert!(
            !page.contains(forbidden),
            "HTML must not fetch anything: found {forbidden}"
        );
    }
    // `url(...)` only for the SVG patterns and gradients in the page itself (`url(#id)`).
    assert!(
        page.split("url(").skip(1).all(|rest| rest.starts_with('#')),
        "HTML must not fetch anything: a url() that is not a fragment of the page"
    );
    let json: report::Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    let mut seen = 0;
    for tag in page.split("<tr ").skip(1) {
        let tag = tag.split('>').next().unwrap();
        if let Some(t) = attr(tag, "data-tenant") {
            let row = json.tenants.iter().find(|x| x.tenant == t).unwrap();
            assert_eq!(
                attr(tag, "data-energy-mj").unwrap(),
                row.energy_mj.to_string()
            );
            assert_eq!(
                attr(tag, "data-static-mj").unwrap(),
                row.static_mj.to_string()
            );
            assert_eq!(
                attr(tag, "data-dynamic-mj").unwrap(),
                row.dynamic_mj.to_string()
            );
            seen += 1;
        }
        if let Some(g) = attr(tag, "data-gpu") {
            let row = json
                .gpus
                .iter()
                .chain(std::iter::once(&json.cluster))
                .find(|x| x.gpu == g)
                .unwrap();
            assert_eq!(
                attr(tag, "data-measured-mj").unwrap(),
                row.measured_mj.to_string()
            );
            assert_eq!(
                attr(tag, "data-unallocated-idle-mj").unwrap(),
                row.unallocated_idle_mj.to_string()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, json.tenants.len() + json.gpus.len() + 1);
    // The embedded document is the JSON report itself.
    let embedded = page
        .split("id=\"report-data\">")
        .nth(1)
        .unwrap()
        .split("</script>")
        .next()
        .unwrap();
    let parsed: report::Report = serde_json::from_str(&embedded.replace("<\\/", "</")).unwrap();
    assert_eq!(parsed, json);

    // Prometheus energy counters agree with the report and pass promtool.
    let om = cluster.controller.metrics.encode();
    let text = greenslice_core::expfmt::openmetrics_to_prometheus_text(&om);
    common::promtool_check("controller energy metrics", &text);
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let alpha_j = value("greenslice_tenant_energy_joules_total{tenant=\"alpha\"}");
    // The counters also include intervals that closed after the report was built.
    assert!(
        alpha_j >= alpha.energy_mj as f64 / 1000.0 - 1e-6,
        "{alpha_j} J vs {} mJ",
        alpha.energy_mj
    );
    let gpu_j = value("greenslice_gpu_energy_joules_total{");
    assert!(gpu_j >= r.cluster.measured_mj as f64 / 1000.0 - 1e-6);
    assert!(text.contains("greenslice_tenant_co2e_grams_total{tenant=\"alpha\"}"));
    assert!(text.contains("greenslice_gpu_unallocated_idle_energy_joules_total{"));

    // A tenant filter keeps only that tenant's rows.
    let only = energy_report(&cluster.controller, 0, 0, "beta")
        .await
        .unwrap();
    assert_eq!(only.tenants.len(), 1);
    // Bad periods are refused.
    assert!(energy_report(&cluster.controller, 10, 5, "").await.is_err());
    assert!(
        energy_report(&cluster.controller, 0, 0, "Not A Tenant")
            .await
            .is_err()
    );
    cluster.shutdown().await;
}

/// Requests a whole GPU for `tenant` and sets its simulated job to work at `util`.
async fn busy_whole_gpu(cluster: &harness::Cluster, tenant: &str, util: f64) -> pb::Slice {
    let kind = pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 });
    let s = common::request_slice(&cluster.url, tenant, kind).await;
    cluster
        .with_sim(&s.node, |sim| {
            sim.set_workload(&s.id, Workload::Busy { util }).unwrap()
        })
        .unwrap();
    s
}

/// A controller restarted on the same redb file still reports the energy attributed before the
/// restart: simulated agents, real gRPC, the energy history flushed by the housekeeping task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_attributed_before_a_controller_restart_is_still_reported() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    use greenslice_controller::engine::CoreConfig;
    use greenslice_controller::ledger::redb::RedbLedger;
    const START: i64 = 1_799_996_400_000; // an hour start
    let speedup = 600.0;
    let dir = tempfile::tempdir().unwrap();
    let spec = |clock_at: i64, ledger: RedbLedger| {
        let mut spec = ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0));
        spec.clock = Arc::new(ScaledClock::new(clock_at, speedup));
        spec.sample_interval = Duration::from_secs_f64(5.0 / speedup);
        spec.batch_interval = Duration::from_secs_f64(30.0 / speedup);
        spec.ledger = Arc::new(ledger);
        spec
    };
    // Flush every 0.2 s of real time (2 simulated minutes).
    let core = || CoreConfig {
        energy_flush_interval: Duration::from_millis(200),
        ..CoreConfig::default()
    };
    let open = || async {
        // The stopped controller's ledger may hold the file for a moment.
        for _ in 0..500 {
            if let Ok(l) = RedbLedger::open(dir.path()) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ledger still in use");
    };
    let (alpha_mj, stopped_at) = {
        let cluster = harness::start_with(spec(START, open().await), core())
            .await
            .unwrap();
        let s = busy_whole_gpu(&cluster, "alpha", 0.9).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // about 10 simulated minutes
        let mut c = TenantServiceClient::connect(cluster.url.clone())
            .await
            .unwrap();
        c.release_slice(pb::ReleaseSliceRequest { slice_id: s.id })
            .await
            .unwrap();
        // Past alpha's last interval and the next flushes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = energy_report(&cluster.controller, START, 0, "alpha")
            .await
            .unwrap();
        let alpha = r.tenants.iter().find(|t| t.tenant == "alpha").unwrap();
        assert!(alpha.energy_mj > 0);
        let stopped_at = cluster.controller.now_ms();
        cluster.shutdown().await;
        (alpha.energy_mj, stopped_at)
    };

    // Restarted later on the same file; beta works now.
    let cluster = harness::start_with(spec(stopped_at + 60_000, open().await), core())
        .await
        .unwrap();
    busy_whole_gpu(&cluster, "beta", 0.5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = energy_report(&cluster.controller, START, 0, "")
        .await
        .unwrap();
    let mj = |t: &str| {
        r.tenants
            .iter()
            .find(|x| x.tenant == t)
            .map(|x| x.energy_mj)
    };
    assert_eq!(
        mj("alpha"),
        Some(alpha_mj),
        "alpha's energy survived the restart"
    );
    assert!(mj("beta").unwrap_or(0) > 0);
    let c = &r.cluster;
    assert_eq!(
        c.tenants_mj + c.unattributed_mj + c.unallocated_idle_mj,
        c.measured_mj
    );
    assert!(
        r.hourly.is_some(),
        "the hour of the restart comes from the history: {:?}",
        r.hourly
    );
    cluster.shutdown().await;
}
