//! Idle reclaim and MIG re-layout on the virtual clock: a controller and simulated agents in one
//! process (real gRPC on loopback), the simulators and the controller on one manual clock. Agents
//! sample every few real milliseconds; each sample carries the manual clock's time, so the tests
//! move time in 30 s steps and let one sample through per step.

mod common;
use common::promtool_check;

use std::sync::Arc;
use std::time::Duration;

use greenslice::harness::{self, Cluster, ClusterSpec, NodeSpec};
use greenslice_agent::backend::sim::{Machine, Workload};
use greenslice_controller::model::events::{EventKind, SliceEvent};
use greenslice_controller::reclaim::{Action, IdlePolicy};
use greenslice_core::clock::ManualClock;
use greenslice_core::slice::SliceState;
use greenslice_proto::v1 as pb;
use pb::tenant_service_client::TenantServiceClient;
use tokio::sync::broadcast;

const MIN: i64 = 60_000;
const STEP: i64 = 30_000;
/// 2025-01-01T00:00:00Z: any fixed start keeps the rollup boundaries the same on every run.
const T0: i64 = 1_735_689_600_000;

struct Env {
    cluster: Cluster,
    clock: ManualClock,
    events: broadcast::Receiver<Arc<SliceEvent>>,
}

async fn env(policy: IdlePolicy, machine: Machine, gpus: u32, mig_gpus: u32) -> Env {
    let clock = ManualClock::new(T0);
    let mut spec = ClusterSpec::new(vec![NodeSpec {
        name: "n1".into(),
        machine,
        gpus,
        mig_gpus,
    }]);
    spec.clock = Arc::new(clock.clone());
    spec.sample_interval = Duration::from_millis(5);
    spec.batch_interval = Duration::from_millis(5);
    let cluster = harness::start(spec).await.expect("cluster starts");
    cluster
        .controller
        .reclaim
        .set_policy(policy)
        .expect("valid policy");
    let events = cluster.controller.subscribe();
    Env {
        cluster,
        clock,
        events,
    }
}

impl Env {
    async fn request(&self, spec: pb::slice_spec::Kind, class: &str) -> pb::Slice {
        let mut c = TenantServiceClient::connect(self.cluster.url.clone())
            .await
            .unwrap();
        c.request_slice(pb::RequestSliceRequest {
            tenant: "team-a".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(spec),
                gpu_model: String::new(),
                slice_class: class.into(),
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().slice.unwrap())
        .unwrap_or_else(|e| panic!("request refused: {e}"))
    }

    fn set_workload(&self, slice: &str, w: Workload) {
        let mut b = self.cluster.backends[0].1.lock().unwrap();
        b.as_sim_mut().unwrap().set_workload(slice, w).unwrap();
    }

    /// Waits until a sample taken at the clock's current time reached the controller's history.
    async fn sampled(&self, slice: &str) {
        let now = self.clock.now();
        for _ in 0..400 {
            let latest = self
                .cluster
                .controller
                .telemetry
                .with_slice(slice, |s| s.history.latest().map(|p| p.at_ms));
            if latest.flatten().is_some_and(|t| t >= now) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no sample of {slice} at {now} reached the controller");
    }

    /// Moves the clock `steps` x 30 s, letting a sample of `slice` through and running the idle check
    /// after each step, until the slice is reclaimed. Returns every action taken.
    async fn run(&self, slice: &str, steps: usize) -> Vec<Action> {
        let mut all = Vec::new();
        for _ in 0..steps {
            self.clock.advance(STEP);
            self.sampled(slice).await;
            let a = self.cluster.controller.reclaim_tick().await;
            let reclaimed = a.iter().any(|a| matches!(a, Action::Reclaim { .. }));
            all.extend(a);
            if reclaimed {
                break;
            }
        }
        all
    }

    fn state(&self, slice: &str) -> SliceState {
        self.cluster.controller.get(slice).unwrap().state
    }

    /// The events of `kind` delivered since the last call (others are dropped). An event goes out
    /// once its commit is durable, just after the change is in memory, so this first waits until
    /// none has arrived for 300 ms.
    async fn events(&mut self, kind: EventKind) -> Vec<Arc<SliceEvent>> {
        let mut out = Vec::new();
        loop {
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(300), self.events.recv())
                    .await;
            match next {
                Ok(Ok(ev)) if ev.kind == kind => out.push(ev),
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                // Quiet for 300 ms, or the feed closed.
                _ => return out,
            }
        }
    }
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for ManualClock {
    fn now(&self) -> i64 {
        use greenslice_core::clock::Clock;
        self.now_ms()
    }
}

fn whole(count: u32) -> pb::slice_spec::Kind {
    pb::slice_spec::Kind::Whole(pb::WholeGpus { count })
}

fn mig(profile: &str) -> pb::slice_spec::Kind {
    pb::slice_spec::Kind::Mig(pb::MigSlice {
        profile: profile.into(),
    })
}

fn warned(a: &[Action]) -> bool {
    a.iter().any(|a| matches!(a, Action::Warn { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaims_a_slice_idle_past_window_and_grace_and_its_capacity_is_placeable_again() {
    let mut e = env(IdlePolicy::default(), Machine::DgxH100, 8, 0).await;
    let s = e.request(whole(8), "").await;
    e.set_workload(&s.id, Workload::Idle);
    // 29.5 minutes idle: nothing yet.
    assert!(e.run(&s.id, 59).await.is_empty());
    // The window (30 min, on whole minutes of samples) ends: a warning with the deadline.
    let a = e.run(&s.id, 3).await;
    assert!(warned(&a), "{a:?}");
    let w = e.events(EventKind::IdleWarning).await;
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].deadline_unix_ms, w[0].at_unix_ms + 10 * MIN);
    // The node is full meanwhile.
    let mut c = TenantServiceClient::connect(e.cluster.url.clone())
        .await
        .unwrap();
    let full = c
        .request_slice(pb::RequestSliceRequest {
            tenant: "team-b".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(whole(1)),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted);
    // Grace (10 min) passes: reclaimed, with the reason recorded.
    let a = e.run(&s.id, 21).await;
    assert!(
        a.iter().any(|a| matches!(a, Action::Reclaim { .. })),
        "{a:?}"
    );
    let r = e.cluster.controller.get(&s.id).unwrap();
    assert_eq!(r.state, SliceState::Released);
    assert!(
        r.reason.starts_with("reclaimed: idle under 5%"),
        "{}",
        r.reason
    );
    assert_eq!(e.events(EventKind::Reclaimed).await.len(), 1);
    // The capacity is placeable again.
    let again = e.request(whole(8), "").await;
    assert_eq!(again.gpu_uuids.len(), 8);
    // Accounting saw it: idle-allocated hours and one reclaimed slice.
    let w = e.cluster.controller.waste(T0, e.clock.now() + 1);
    let t = w.tenants.iter().find(|t| t.tenant == "team-a").unwrap();
    assert_eq!(t.reclaimed_slices, 1);
    assert!(t.idle_allocated_gpu_h > 0.0 && t.allocated_gpu_h > t.idle_allocated_gpu_h);
    // The ops energy report carries the reclaim too.
    let report = greenslice_controller::api::ops::energy_report(
        &e.cluster.controller,
        T0,
        e.clock.now() + 1,
        "team-a",
    )
    .await
    .unwrap();
    let row = report
        .tenants
        .iter()
        .find(|t| t.tenant == "team-a")
        .unwrap();
    assert_eq!(row.reclaimed_slices, 1);
    assert!((row.gpu_hours_reclaimed - t.reclaimed_gpu_h).abs() < 1e-9);
    assert!(report.gpu_hours_reclaimed > 0.0);
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reclaims_a_busy_slice() {
    let mut e = env(IdlePolicy::default(), Machine::DgxH100, 8, 0).await;
    let s = e.request(whole(1), "").await;
    e.set_workload(&s.id, Workload::Busy { util: 0.3 });
    assert!(e.run(&s.id, 240).await.is_empty(), "2 hours busy");
    assert_eq!(e.state(&s.id), SliceState::Active);
    assert!(e.events(EventKind::IdleWarning).await.is_empty());
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warned_slice_used_again_is_not_reclaimed() {
    let e = env(IdlePolicy::default(), Machine::DgxH100, 8, 0).await;
    let s = e.request(whole(1), "").await;
    e.set_workload(&s.id, Workload::Idle);
    assert!(warned(&e.run(&s.id, 62).await));
    e.set_workload(&s.id, Workload::Busy { util: 0.5 });
    let a = e.run(&s.id, 60).await;
    assert!(
        !a.iter().any(|a| matches!(a, Action::Reclaim { .. })),
        "{a:?}"
    );
    assert!(a.iter().any(|a| matches!(a, Action::Withdraw { .. })));
    assert_eq!(e.state(&s.id), SliceState::Active);
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_slice_is_not_reclaimed_and_keeps_are_limited_by_policy() {
    let e = env(IdlePolicy::default(), Machine::DgxH100, 8, 0).await;
    let s = e.request(whole(1), "").await;
    e.set_workload(&s.id, Workload::Idle);
    assert!(warned(&e.run(&s.id, 62).await));
    let mut c = TenantServiceClient::connect(e.cluster.url.clone())
        .await
        .unwrap();
    let keep = |d: u64, t: &str| pb::KeepSliceRequest {
        slice_id: s.id.clone(),
        tenant: t.into(),
        duration_s: d,
    };
    let too_long = c.keep_slice(keep(9 * 3600, "team-a")).await.unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    let not_mine = c.keep_slice(keep(3600, "team-b")).await.unwrap_err();
    assert_eq!(not_mine.code(), tonic::Code::PermissionDenied);
    let k = c
        .keep_slice(keep(2 * 3600, "team-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(k.kept_until_unix_ms, e.clock.now() + 2 * 3600 * 1000);
    // Past the old deadline, and most of the keep: still active, never warned again.
    let a = e.run(&s.id, 200).await;
    assert!(
        a.iter()
            .all(|a| !matches!(a, Action::Reclaim { .. } | Action::Warn { .. })),
        "{a:?}"
    );
    assert_eq!(e.state(&s.id), SliceState::Active);
    // The keep ends: warned afresh, with a full grace period.
    assert!(warned(&e.run(&s.id, 50).await));
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_slice_is_never_reclaimed() {
    let mut e = env(IdlePolicy::default(), Machine::DgxH100, 8, 0).await;
    let s = e.request(whole(1), "serving").await;
    e.set_workload(&s.id, Workload::Idle);
    assert!(e.run(&s.id, 240).await.is_empty());
    assert_eq!(e.state(&s.id), SliceState::Active);
    assert!(e.events(EventKind::IdleWarning).await.is_empty());
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_what_would_be_reclaimed_and_changes_nothing() {
    let policy = IdlePolicy {
        dry_run: true,
        ..Default::default()
    };
    let mut e = env(policy, Machine::DgxH100, 8, 0).await;
    let s = e.request(whole(2), "").await;
    e.set_workload(&s.id, Workload::Idle);
    let a = e.run(&s.id, 120).await;
    assert!(
        a.iter().all(|a| matches!(a, Action::WouldReclaim { .. })),
        "{a:?}"
    );
    assert!(!a.is_empty());
    assert_eq!(e.state(&s.id), SliceState::Active);
    assert!(e.events(EventKind::IdleWarning).await.is_empty());
    assert!(e.events(EventKind::Reclaimed).await.is_empty());
    assert_eq!(e.cluster.controller.reclaim.would_reclaim().len(), 1);
    // The usage query shows it.
    let u = greenslice_controller::api::usage::usage(
        &e.cluster.controller,
        &pb::UsageRequest {
            slice_id: s.id.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(u.dry_run);
    let series = &u.series[0];
    assert!(series.reclaim_at_unix_ms > 0 && series.idle_since_unix_ms > 0);
    assert_eq!(series.allocated_gpus, 2.0);
    assert!(!series.points.is_empty());
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reclaim_completes_after_reconnect_without_leaking_the_mig_instance() {
    let mut e = env(IdlePolicy::default(), Machine::DgxH100, 2, 2).await;
    let s = e.request(mig("3g.40gb"), "").await;
    let gpu = s.gpu_uuids[0].clone();
    let gi = s.mig.as_ref().unwrap().gpu_instance_id;
    e.set_workload(&s.id, Workload::Idle);
    assert!(warned(&e.run(&s.id, 62).await));
    // Up to one step (30 s) before the deadline. Then the agent goes away.
    let deadline = e.cluster.controller.reclaim.marks_snapshot().warned[&s.id].deadline_ms;
    let steps = (deadline - e.clock.now()) / STEP - 1;
    assert!(e.run(&s.id, steps as usize).await.is_empty());
    assert!(e.cluster.kill_agent("n1"));
    for _ in 0..400 {
        if !e.cluster.controller.agents.is_connected("n1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!e.cluster.controller.agents.is_connected("n1"));
    e.clock.advance(STEP);
    let a = e.cluster.controller.reclaim_tick().await;
    assert!(
        a.iter().any(|a| matches!(a, Action::Reclaim { .. })),
        "{a:?}"
    );
    // Committed as releasing; the instance still exists on the node.
    assert_eq!(e.state(&s.id), SliceState::Releasing);
    let has_instance = |e: &Env| {
        let mut b = e.cluster.backends[0].1.lock().unwrap();
        b.inventory()
            .unwrap()
            .iter()
            .find(|g| g.uuid == gpu)
            .unwrap()
            .mig_instances
            .iter()
            .any(|i| i.gpu_instance_id == gi)
    };
    assert!(has_instance(&e));
    // The agent returns: the release is driven to the end and the instance is destroyed.
    assert!(e.cluster.restart_agent("n1"));
    for _ in 0..1000 {
        if e.state(&s.id) == SliceState::Released {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(e.state(&s.id), SliceState::Released);
    assert!(!has_instance(&e), "the MIG instance leaked");
    assert_eq!(e.events(EventKind::Reclaimed).await.len(), 1);
    // And its space is placeable again.
    let again = e.request(mig("3g.40gb"), "").await;
    assert_eq!(again.gpu_uuids[0], gpu);
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayout_repartitions_free_instances_and_never_touches_one_in_use() {
    use greenslice_core::mig;
    let mut e = env(IdlePolicy::default(), Machine::DgxH100, 1, 1).await;
    // A slice in use: a 3g instance with a running process.
    let a = e.request(mig("3g.40gb"), "").await;
    let gpu = a.gpu_uuids[0].clone();
    let a_mig = a.mig.clone().unwrap();
    e.set_workload(&a.id, Workload::Busy { util: 0.9 });
    let backend = e.cluster.backends[0].1.clone();
    let pid_of = |gi: u32| {
        let mut b = backend.lock().unwrap();
        b.sample().unwrap().gpus[0]
            .processes
            .clone()
            .unwrap_or_default()
            .iter()
            .find(|p| p.gpu_instance_id == Some(gi))
            .map(|p| p.pid)
    };
    let a_pid = pid_of(a_mig.gpu_instance_id).expect("slice A runs a process");
    // Leftover 1g instances fill the rest of the GPU (made outside this controller's slices): the
    // last one runs a process, the others are free.
    let leftovers: Vec<(String, u32, u8)> = {
        let mut b = e.cluster.backends[0].1.lock().unwrap();
        let mut out = Vec::new();
        loop {
            let g = b.inventory().unwrap().remove(0);
            let Some(&start) = mig::free_starts(&g.model, &g.mig_layout(), "1g.10gb").first()
            else {
                break;
            };
            let id = format!("s-leftover-{start}");
            let (inst, _) = b.create_mig(&gpu, "1g.10gb", start, &id).unwrap();
            out.push((id, inst.gpu_instance_id, start));
        }
        let sim = b.as_sim_mut().unwrap();
        for (i, (id, _, _)) in out.iter().enumerate() {
            let w = if i + 1 == out.len() {
                Workload::Busy { util: 0.5 }
            } else {
                Workload::Finished
            };
            sim.set_workload(id, w).unwrap();
        }
        out
    };
    assert!(leftovers.len() >= 3, "{leftovers:?}");
    // The agent re-registers with the new layout, and a fresh sample shows what runs where.
    e.cluster.kill_agent("n1");
    e.cluster.restart_agent("n1");
    e.clock.advance(1_000);
    for _ in 0..1000 {
        let fresh = e
            .cluster
            .controller
            .telemetry
            .latest(&gpu)
            .is_some_and(|s| s.at_unix_ms >= e.clock.now());
        let seen = e
            .cluster
            .controller
            .with_state(|st| st.nodes["n1"].gpus[0].mig_instances.len() == leftovers.len() + 1);
        if fresh && seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A 2g instance fits nowhere as things are; the controller destroys free instances to fit it.
    let b2 = e.request(mig("2g.20gb"), "").await;
    assert_eq!(b2.gpu_uuids[0], gpu);
    let inv = {
        let mut b = e.cluster.backends[0].1.lock().unwrap();
        b.inventory().unwrap().remove(0)
    };
    // The instance in use keeps its UUID and its process.
    let a_now = inv
        .mig_instances
        .iter()
        .find(|i| i.gpu_instance_id == a_mig.gpu_instance_id)
        .expect("slice A's instance survives");
    assert_eq!(a_now.mig_uuid, a_mig.mig_uuid);
    assert_eq!(pid_of(a_mig.gpu_instance_id), Some(a_pid));
    // The busy leftover survives; only free ones in the way were destroyed.
    // Instances are told apart by their owner, not their GPU-instance id: the driver (and the
    // simulator) give a destroyed instance's id to the next one made.
    let held = |slice: &str| {
        inv.mig_instances
            .iter()
            .any(|i| i.slice_id.as_deref() == Some(slice))
    };
    let (busy, _, _) = leftovers.last().unwrap();
    assert!(held(busy));
    let destroyed = leftovers.iter().filter(|(id, _, _)| !held(id)).count();
    assert_eq!(destroyed, 2, "{:?}", inv.mig_instances);
    assert_eq!(e.state(&a.id), SliceState::Active);
    e.cluster.shutdown().await;
}

/// GET http://addr/metrics with a plain HTTP/1.0 request; returns the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_pass_promtool() {
    let e = env(IdlePolicy::default(), Machine::DgxH100, 8, 2).await;
    let s = e.request(whole(1), "").await;
    let m = e.request(mig("1g.10gb"), "").await;
    e.set_workload(&s.id, Workload::Idle);
    e.set_workload(&m.id, Workload::Busy { util: 0.5 });
    let a = e.run(&s.id, 90).await;
    assert!(
        a.iter().any(|a| matches!(a, Action::Reclaim { .. })),
        "{a:?}"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(greenslice_controller::server::http::serve_controller(
        e.cluster.controller.clone(),
        listener,
        std::future::pending(),
    ));
    let body = scrape(addr).await;
    for want in [
        "greenslice_gpu_utilization_ratio{",
        "greenslice_slice_utilization_ratio{",
        "greenslice_idle_allocated_gpus{",
        "greenslice_idle_warnings_total{reason=\"idle\"} 1",
        "greenslice_reclaims_total{reason=\"idle\"} 1",
        "greenslice_agent_sample_lag_seconds{node=\"n1\"}",
        "greenslice_telemetry_history_bytes",
        "greenslice_finished_slices 1",
        "greenslice_finished_slices_held_for_energy 0",
        "greenslice_energy_history_flush_failures_total 0",
        "greenslice_energy_history_rollups_unstored 0",
        "greenslice_leading 1",
    ] {
        assert!(body.contains(want), "missing {want} in\n{body}");
    }
    promtool_check("controller /metrics", &body);

    // The agent's metrics, after a few sampling passes.
    let am = Arc::new(greenslice_agent::metrics::AgentMetrics::default());
    let mut cfg = greenslice_agent::session::SessionConfig::new(&e.cluster.url, "n2");
    cfg.sample_interval = Duration::from_millis(5);
    cfg.batch_interval = Duration::from_millis(20);
    cfg.metrics = Some(am.clone());
    let backend = greenslice_agent::backend::sim::SimBackend::new(
        greenslice_agent::backend::sim::SimConfig::new("n2", Machine::DgxA100_40),
    )
    .unwrap();
    let agent = tokio::spawn(greenslice_agent::session::run_with(
        cfg,
        Arc::new(std::sync::Mutex::new(Box::new(backend))),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(greenslice_agent::metrics::serve(
        am.clone(),
        listener,
        std::future::pending(),
    ));
    for _ in 0..400 {
        if am.batches_sent.get() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let body = scrape(addr).await;
    assert!(body.contains("greenslice_agent_samples_total "), "{body}");
    assert!(
        body.contains("greenslice_agent_sample_lag_seconds "),
        "{body}"
    );
    promtool_check("agent /metrics", &body);
    agent.abort();
    e.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_is_committed_and_survives_a_controller_restart() {
    use greenslice_controller::engine::{Controller, CoreConfig};
    use greenslice_controller::ledger::{Ledger, MemoryLedger};
    // One ledger outlives the first controller, as the redb file or etcd does.
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::default());
    let clock = ManualClock::new(T0);
    let mut spec = ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0));
    spec.clock = Arc::new(clock.clone());
    spec.ledger = ledger.clone();
    let cluster = harness::start(spec).await.unwrap();
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let s = c
        .request_slice(pb::RequestSliceRequest {
            tenant: "team-a".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .slice
        .unwrap();
    let kept = c
        .keep_slice(pb::KeepSliceRequest {
            slice_id: s.id.clone(),
            tenant: String::new(),
            duration_s: 2 * 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.kept_until_unix_ms, T0 + 2 * 3600 * 1000);
    cluster.shutdown().await;

    // A new controller on the same ledger knows the keep without being told again.
    let restarted = Controller::new(
        ledger,
        greenslice_controller::placement::default_policy(),
        Arc::new(clock.clone()),
        CoreConfig::default(),
    )
    .await
    .unwrap();
    let marks = restarted.reclaim.marks_snapshot();
    assert_eq!(marks.kept.get(&s.id), Some(&(T0 + 2 * 3600 * 1000)));
    assert_eq!(
        restarted.get(&s.id).unwrap().kept_until_ms,
        Some(T0 + 2 * 3600 * 1000)
    );
}
