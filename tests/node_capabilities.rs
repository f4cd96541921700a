//! What a node may do: a node whose agent runs with `mig.manage = false` gets MIG slices only on
//! its existing free instances (lent, and given back on release, never destroyed), a request that
//! needs a new instance goes to a node that may create one or is refused saying why, and the
//! inventory shows each node's capabilities. Controller and simulated agents in one process (the
//! harness), talking real gRPC.

use std::process::Command;

use greenslice::harness::{self, ClusterSpec, NodeSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use tonic::Code;

/// An H100 node with one GPU, in MIG mode.
fn mig_node(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        machine: Machine::DgxH100,
        gpus: 1,
        mig_gpus: 1,
    }
}

async fn request_mig(url: &str, profile: &str) -> Result<pb::Slice, tonic::Status> {
    let r = TenantServiceClient::connect(url.to_string())
        .await
        .unwrap()
        .request_slice(pb::RequestSliceRequest {
            tenant: "team-a".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Mig(pb::MigSlice {
                    profile: profile.into(),
                })),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().slice.unwrap())
}

async fn release(url: &str, id: &str) -> pb::Slice {
    TenantServiceClient::connect(url.to_string())
        .await
        .unwrap()
        .release_slice(pb::ReleaseSliceRequest {
            slice_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .slice
        .unwrap()
}

async fn inventory(url: &str) -> pb::InventoryResponse {
    OpsServiceClient::connect(url.to_string())
        .await
        .unwrap()
        .inventory(pb::InventoryRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// The MIG instances on a node's GPU 0 as its simulator holds them: (gi, profile, start, owner).
fn hardware(cluster: &harness::Cluster, node: &str) -> Vec<(u32, String, u8, Option<String>)> {
    let (_, b) = cluster.backends.iter().find(|(n, _)| n == node).unwrap();
    let mut b = b.lock().unwrap();
    let gpus = b.inventory().unwrap();
    gpus[0]
        .mig_instances
        .iter()
        .map(|i| {
            (
                i.gpu_instance_id,
                i.profile.clone(),
                i.start,
                i.slice_id.clone().filter(|s| !s.is_empty()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_node_lends_its_free_instance_and_gets_it_back_on_release() {
    let mut spec = ClusterSpec::new(vec![mig_node("ro")]);
    spec.read_only_mig = vec!["ro".into()];
    spec.premade_mig = vec![("ro".into(), 0, "3g.40gb".into(), 4)];
    let cluster = harness::start(spec).await.unwrap();
    let url = cluster.url.clone();
    let before = hardware(&cluster, "ro");
    assert_eq!(before.len(), 1);
    let (gi, _, _, owner) = before[0].clone();
    assert_eq!(owner, None);

    let s = request_mig(&url, "3g.40gb").await.unwrap();
    assert_eq!(s.state, pb::SliceState::Active as i32, "{}", s.reason);
    assert_eq!(s.node, "ro");
    let m = s.mig.clone().unwrap();
    assert_eq!(
        (m.start, m.gpu_instance_id),
        (4, gi),
        "the existing instance"
    );
    assert_eq!(s.env["NVIDIA_VISIBLE_DEVICES"], m.mig_uuid);
    // The layout is unchanged; the instance now names the slice.
    assert_eq!(
        hardware(&cluster, "ro"),
        vec![(gi, "3g.40gb".into(), 4, Some(s.id.clone()))]
    );

    // Nothing else is free: a second request has nowhere to go, and says why.
    let e = request_mig(&url, "3g.40gb").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("mig.manage = false"),
        "{}",
        e.message()
    );

    let r = release(&url, &s.id).await;
    assert_eq!(r.state, pb::SliceState::Released as i32, "{}", r.reason);
    // Given back, not destroyed.
    assert_eq!(
        hardware(&cluster, "ro"),
        vec![(gi, "3g.40gb".into(), 4, None)]
    );
    // And lent again to the next request.
    let again = request_mig(&url, "3g.40gb").await.unwrap();
    assert_eq!(again.mig.unwrap().gpu_instance_id, gi);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_new_instance_goes_to_a_node_that_may_create_it() {
    let mut spec = ClusterSpec::new(vec![mig_node("a-ro"), mig_node("b-managed")]);
    spec.read_only_mig = vec!["a-ro".into()];
    spec.premade_mig = vec![("a-ro".into(), 0, "3g.40gb".into(), 4)];
    let cluster = harness::start(spec).await.unwrap();
    let url = cluster.url.clone();
    // a-ro has room for a new 4g.40gb beside its free 3g.40gb, but may not create one.
    let s = request_mig(&url, "4g.40gb").await.unwrap();
    assert_eq!(s.node, "b-managed", "{s:?}");
    assert_eq!(s.state, pb::SliceState::Active as i32, "{}", s.reason);
    for _ in 0..2 {
        let s = request_mig(&url, "1g.10gb").await.unwrap();
        assert_eq!(s.node, "b-managed", "{s:?}");
    }
    assert_eq!(
        hardware(&cluster, "a-ro").len(),
        1,
        "a-ro's layout untouched"
    );
    // b-managed holds its one 4g.40gb: a second goes nowhere, and the refusal names a-ro.
    let e = request_mig(&url, "4g.40gb").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("a-ro") && e.message().contains("mig.manage = false"),
        "{}",
        e.message()
    );
    // The free 3g.40gb is still lent where asked for.
    assert_eq!(request_mig(&url, "3g.40gb").await.unwrap().node, "a-ro");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_shows_what_each_node_may_do() {
    let mut spec = ClusterSpec::new(vec![mig_node("a-ro"), mig_node("b-managed")]);
    spec.read_only_mig = vec!["a-ro".into()];
    spec.premade_mig = vec![("a-ro".into(), 0, "3g.40gb".into(), 4)];
    let cluster = harness::start(spec).await.unwrap();
    let url = cluster.url.clone();

    let inv = inventory(&url).await;
    let caps = |name: &str| {
        inv.nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.capabilities)
            .unwrap()
    };
    assert!(!caps("a-ro").mig_manage && caps("a-ro").mps);
    assert!(caps("b-managed").mig_manage);
    // A read-only GPU offers only what it can lend.
    let placeable = |name: &str| {
        inv.capacity
            .iter()
            .find(|c| c.node == name)
            .unwrap()
            .placeable_profiles
            .clone()
    };
    assert_eq!(placeable("a-ro"), vec!["3g.40gb".to_string()]);
    assert!(placeable("b-managed").contains(&"1g.10gb".to_string()));

    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_greenslice"))
            .args(["--controller", &url, "inventory"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("mig-lend-only,mps") && text.contains("mig-create,mps"),
        "{text}"
    );
    let url = cluster.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_greenslice"))
            .args(["--controller", &url, "-o", "json", "inventory"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = |name: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(node("a-ro")["capabilities"]["mig_manage"], false);
    assert_eq!(node("b-managed")["capabilities"]["mig_manage"], true);
    assert_eq!(node("a-ro")["capabilities"]["share_limits"], "enforced");
    cluster.shutdown().await;
}
