//! Draining and undraining nodes through OpsService and the `greenslice drain`/`undrain` commands,
//! against a controller and simulated agents in one process (the harness).

use std::process::Command;
use std::time::Duration;

use greenslice::harness::{self, ClusterSpec, NodeSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::engine::CoreConfig;
use greenslice_core::slice::SliceState;
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use tonic::Code;

fn node(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        machine: Machine::DgxH100,
        gpus: 2,
        mig_gpus: 0,
    }
}

fn fast() -> CoreConfig {
    CoreConfig {
        command_timeout: Duration::from_secs(2),
        orphan_grace: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(50),
        ..CoreConfig::default()
    }
}

fn whole(n: u32) -> pb::RequestSliceRequest {
    pb::RequestSliceRequest {
        tenant: "team-a".into(),
        spec: Some(pb::SliceSpec {
            kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: n })),
            ..Default::default()
        }),
        idempotency_key: String::new(),
        ..Default::default()
    }
}

async fn request(url: &str, n: u32) -> Result<pb::Slice, tonic::Status> {
    let r = TenantServiceClient::connect(url.to_string())
        .await
        .unwrap()
        .request_slice(whole(n))
        .await?;
    Ok(r.into_inner().slice.unwrap())
}

async fn ops(url: &str) -> OpsServiceClient<tonic::transport::Channel> {
    OpsServiceClient::connect(url.to_string()).await.unwrap()
}

async fn drain(url: &str, node: &str) -> Result<pb::DrainNodeResponse, tonic::Status> {
    ops(url)
        .await
        .drain_node(pb::DrainNodeRequest { node: node.into() })
        .await
        .map(|r| r.into_inner())
}

async fn undrain(url: &str, node: &str) -> Result<pb::UndrainNodeResponse, tonic::Status> {
    ops(url)
        .await
        .undrain_node(pb::UndrainNodeRequest { node: node.into() })
        .await
        .map(|r| r.into_inner())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_connected_node_keeps_its_slices_and_places_nothing_new_there() {
    let cluster = harness::start_with(
        ClusterSpec::new(vec![node("node-a"), node("node-b")]),
        fast(),
    )
    .await
    .unwrap();
    let url = cluster.url.clone();
    let s = request(&url, 1).await.unwrap();
    let busy = s.node.clone();
    let other = if busy == "node-a" { "node-b" } else { "node-a" };

    let r = drain(&url, &busy).await.unwrap();
    assert_eq!(r.node, busy);
    assert!(r.connected && !r.was_drained);
    assert_eq!(r.kept_slice_ids, vec![s.id.clone()]);
    assert!(r.lost_slice_ids.is_empty());
    assert_eq!(
        cluster.controller.get(&s.id).unwrap().state,
        SliceState::Active
    );
    let inv = ops(&url)
        .await
        .inventory(pb::InventoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let drained: Vec<(&str, bool)> = inv
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.drained))
        .collect();
    assert!(drained.contains(&(busy.as_str(), true)), "{drained:?}");
    assert!(drained.contains(&(other, false)), "{drained:?}");

    // New slices go to the other node; draining it too leaves no room anywhere.
    for _ in 0..2 {
        assert_eq!(request(&url, 1).await.unwrap().node, other);
    }
    assert!(drain(&url, other).await.unwrap().kept_slice_ids.len() == 2);
    let e = request(&url, 1).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::ResourceExhausted),
        "{e}"
    );
    // Draining again is allowed and says it was drained already.
    assert!(drain(&url, &busy).await.unwrap().was_drained);

    let u = undrain(&url, &busy).await.unwrap();
    assert!(u.was_drained && u.connected);
    assert_eq!(request(&url, 1).await.unwrap().node, busy);
    assert!(!undrain(&url, &busy).await.unwrap().was_drained);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_unreachable_node_marks_its_slices_lost_until_undrained() {
    let mut cluster = harness::start_with(ClusterSpec::new(vec![node("node-a")]), fast())
        .await
        .unwrap();
    let url = cluster.url.clone();
    let s = request(&url, 1).await.unwrap();
    cluster.kill_agent("node-a");
    until("node unreachable", || !connected(&cluster, "node-a")).await;
    // Kept while merely unreachable.
    assert_eq!(
        cluster.controller.get(&s.id).unwrap().state,
        SliceState::Active
    );
    let r = drain(&url, "node-a").await.unwrap();
    assert!(!r.connected);
    assert_eq!(r.lost_slice_ids, vec![s.id.clone()]);
    assert!(r.kept_slice_ids.is_empty());
    let lost = cluster.controller.get(&s.id).unwrap();
    assert_eq!(lost.state, SliceState::Failed);
    assert!(lost.reason.contains("drained"), "{}", lost.reason);

    // The node comes back but stays drained until the operator says otherwise.
    cluster.restart_agent("node-a");
    until("node back", || connected(&cluster, "node-a")).await;
    let e = request(&url, 1).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::ResourceExhausted),
        "{e}"
    );
    // What the lost slice left on the GPU is torn down as an orphan.
    let b = cluster.backends[0].1.clone();
    until("orphan torn down", || {
        let inv = b.lock().unwrap().inventory().unwrap();
        inv.iter()
            .all(|g| g.whole_slice_id.as_deref() != Some(s.id.as_str()))
    })
    .await;
    assert!(undrain(&url, "node-a").await.unwrap().was_drained);
    assert_eq!(request(&url, 2).await.unwrap().node, "node-a");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_errors_have_precise_codes() {
    let cluster = harness::start(ClusterSpec::new(vec![node("node-a")]))
        .await
        .unwrap();
    let url = cluster.url.clone();
    let e = drain(&url, "node-z").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("node-z"), "{e}");
    assert_eq!(
        undrain(&url, "node-z").await.unwrap_err().code(),
        Code::NotFound
    );
    for bad in ["", "two words", "tab\there", &"n".repeat(300)] {
        let e = drain(&url, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e}");
        assert!(e.message().starts_with("node "), "{e}");
        assert_eq!(
            undrain(&url, bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let (nodes, _, _) = cluster.controller.snapshot();
    assert!(nodes.iter().all(|n| !n.drained), "a refused drain drained");
    cluster.shutdown().await;
}

/// Runs the CLI against `url`; returns exit code, stdout and stderr.
async fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_greenslice"));
    c.args(["--controller", url]).args(args);
    let out = tokio::task::spawn_blocking(move || c.output().expect("run greenslice"))
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drain_and_undrain_print_what_happened_with_the_usual_exit_codes() {
    let cluster = harness::start(ClusterSpec::new(vec![node("node-a")]))
        .await
        .unwrap();
    let url = cluster.url.clone();
    let s = request(&url, 1).await.unwrap();

    let (code, out, err) = cli(&url, &["-o", "json", "drain", "node-a"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["drained"], true);
    assert_eq!(v["kept_slice_ids"][0], s.id.as_str());
    assert_eq!(v["lost_slice_ids"].as_array().map(Vec::len), Some(0));

    let (code, out, _) = cli(&url, &["drain", "node-a"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("node node-a drained (already)") && out.contains(&s.id),
        "{out}"
    );
    let (code, out, _) = cli(&url, &["undrain", "node-a"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("schedulable again"), "{out}");

    // Unknown node: exit 3 (not found); bad name: exit 2 (invalid); the message says why.
    let (code, _, err) = cli(&url, &["drain", "node-z"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("node-z is not known"), "{err}");
    let (code, _, err) = cli(&url, &["undrain", "bad name"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node must be 1-253 characters"), "{err}");
    cluster.shutdown().await;
}
