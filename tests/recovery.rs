//! Reconciliation of the ledger with the hardware, in one process (controller and simulated agents
//! from the harness): lost slices, orphans, unreachable nodes and drains. Crash-left PENDING slices
//! are covered by `crash_recovery.rs`, which kills a real controller process.

mod common;

use std::time::Duration;

use greenslice::harness::{self, ClusterSpec, NodeSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::engine::CoreConfig;
use greenslice_controller::model::events::EventKind;
use greenslice_core::slice::SliceState;
use greenslice_proto::v1 as pb;
use pb::tenant_service_client::TenantServiceClient;

fn one_node() -> Vec<NodeSpec> {
    vec![NodeSpec {
        name: "node-a".into(),
        machine: Machine::DgxH100,
        gpus: 2,
        mig_gpus: 0,
    }]
}

fn fast() -> CoreConfig {
    CoreConfig {
        orphan_grace: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(50),
        command_timeout: Duration::from_secs(2),
        ..CoreConfig::default()
    }
}

async fn share(cluster: &harness::Cluster) -> pb::Slice {
    common::request_slice(
        &cluster.url,
        "team-a",
        pb::slice_spec::Kind::Share(pb::ShareSlice {
            compute_fraction: 0.5,
            memory_bytes: 1 << 30,
        }),
    )
    .await
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn connected(cluster: &harness::Cluster, node: &str) -> bool {
    let (nodes, _, _) = cluster.controller.snapshot();
    nodes.iter().any(|n| n.name == node && n.connected)
}

#[tokio::test]
async fn active_slice_whose_hardware_is_gone_is_marked_lost_and_its_tenant_told() {
    let mut cluster = harness::start_with(ClusterSpec::new(one_node()), fast())
        .await
        .unwrap();
    let s = share(&cluster).await;
    let mut events = cluster.controller.subscribe();
    // The node reboots: the agent goes away and comes back without the share.
    cluster.kill_agent("node-a");
    until("node unreachable", || !connected(&cluster, "node-a")).await;
    let b = cluster.backends[0].1.clone();
    b.lock()
        .unwrap()
        .clear_share(&s.gpu_uuids[0], &s.id)
        .unwrap();
    cluster.restart_agent("node-a");
    until("slice lost", || {
        cluster
            .controller
            .get(&s.id)
            .is_ok_and(|r| r.state == SliceState::Failed)
    })
    .await;
    let r = cluster.controller.get(&s.id).unwrap();
    assert!(r.reason.starts_with("lost:"), "{}", r.reason);
    let lost = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ev) = events.recv().await
                && ev.kind == EventKind::Lost
            {
                return ev;
            }
        }
    })
    .await
    .expect("a LOST event");
    assert_eq!(lost.slice.id, s.id);
    cluster.shutdown().await;
}

#[tokio::test]
async fn orphan_on_hardware_is_torn_down_after_the_grace_period() {
    let mut cluster = harness::start_with(ClusterSpec::new(one_node()), fast())
        .await
        .unwrap();
    let b = cluster.backends[0].1.clone();
    let gpu = b.lock().unwrap().inventory().unwrap()[0].uuid.clone();
    // Something greenslice made for a slice the ledger does not know (a lost ledger, another
    // controller): reported at the next registration.
    cluster.kill_agent("node-a");
    until("node unreachable", || !connected(&cluster, "node-a")).await;
    b.lock()
        .unwrap()
        .set_share(&gpu, "s-orphan", 0.25, 1 << 30)
        .unwrap();
    cluster.restart_agent("node-a");
    until("node back", || connected(&cluster, "node-a")).await;
    let held = |b: &greenslice_agent::session::SharedBackend| {
        b.lock().unwrap().inventory().unwrap()[0]
            .shares
            .iter()
            .any(|s| s.slice_id == "s-orphan")
    };
    // Not before the grace period...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(held(&b), "orphan torn down before its grace period");
    // ...but after it.
    until("orphan torn down", || !held(&b)).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn unreachable_node_keeps_its_slices_gets_nothing_new_and_drain_marks_them_lost() {
    let mut cluster = harness::start_with(ClusterSpec::new(one_node()), fast())
        .await
        .unwrap();
    let s = share(&cluster).await;
    cluster.kill_agent("node-a");
    until("node unreachable", || !connected(&cluster, "node-a")).await;
    let (nodes, _, _) = cluster.controller.snapshot();
    assert!(nodes[0].unreachable_since_ms.is_some());
    // Kept, not re-placed.
    assert_eq!(
        cluster.controller.get(&s.id).unwrap().state,
        SliceState::Active
    );
    // Nothing new goes there.
    let err = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap()
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
        .expect_err("no schedulable node");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
        ),
        "{err}"
    );
    // The operator drains it: its slices are lost, their capacity forgotten.
    let lost = cluster.controller.drain_node("node-a").await.unwrap();
    assert_eq!(lost, vec![s.id.clone()]);
    let r = cluster.controller.get(&s.id).unwrap();
    assert_eq!(r.state, SliceState::Failed);
    assert!(r.reason.contains("drained"), "{}", r.reason);
    cluster.shutdown().await;
}

#[tokio::test]
async fn returning_agent_keeps_its_active_slices() {
    let mut cluster = harness::start_with(ClusterSpec::new(one_node()), fast())
        .await
        .unwrap();
    let s = share(&cluster).await;
    cluster.kill_agent("node-a");
    until("node unreachable", || !connected(&cluster, "node-a")).await;
    cluster.restart_agent("node-a");
    until("node back", || connected(&cluster, "node-a")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cluster.controller.get(&s.id).unwrap().state,
        SliceState::Active
    );
    let b = cluster.backends[0].1.clone();
    assert!(
        b.lock().unwrap().inventory().unwrap()[0]
            .shares
            .iter()
            .any(|x| x.slice_id == s.id)
    );
    cluster.shutdown().await;
}
