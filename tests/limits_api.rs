//! The errors a user sees for input past the limits, over real gRPC against simulated nodes: the
//! status code, and a message naming the field and the limit. A malformed message on an agent's
//! stream ends that session without losing the node's slices.

mod common;

use std::time::Duration;

use greenslice::harness::{self, ClusterSpec, NodeSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_core::slice::SliceState;
use greenslice_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;

fn one_node() -> Vec<NodeSpec> {
    vec![NodeSpec {
        name: "node-a".into(),
        machine: Machine::DgxH100,
        gpus: 2,
        mig_gpus: 0,
    }]
}

async fn tenant(url: &str) -> TenantServiceClient<tonic::transport::Channel> {
    TenantServiceClient::connect(url.to_string()).await.unwrap()
}

async fn whole(url: &str) -> pb::Slice {
    common::request_slice(
        url,
        "team-a",
        pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 }),
    )
    .await
}

/// Opens an agent session sending `msgs`; returns how the controller ended it.
async fn session(url: &str, msgs: Vec<pb::AgentMessage>) -> Result<(), tonic::Status> {
    let mut client = AgentServiceClient::connect(url.to_string()).await.unwrap();
    let mut inbound = client.session(tokio_stream::iter(msgs)).await?.into_inner();
    while let Some(m) = inbound.next().await {
        m?;
    }
    Ok(())
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_past_their_limits_are_refused_naming_the_field_and_the_limit() {
    let cluster = harness::start(ClusterSpec::new(one_node())).await.unwrap();
    let url = cluster.url.clone();
    let mut t = tenant(&url).await;

    // A 300-character slice id.
    let e = t
        .get_slice(pb::GetSliceRequest {
            slice_id: "s".repeat(300),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("slice_id must be 1-64 characters") && e.message().contains("300"),
        "{}",
        e.message()
    );
    // Control characters in a tenant filter.
    let e = t
        .list_slices(pb::ListSlicesRequest {
            tenant: "team\u{0}a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The field is named once ("tenant must be ...", not "tenant tenant must be ...").
    assert!(
        e.message().starts_with("tenant must be 1-63 characters"),
        "{}",
        e.message()
    );
    // A keep of u64::MAX seconds.
    let e = t
        .keep_slice(pb::KeepSliceRequest {
            slice_id: "s-1".into(),
            tenant: String::new(),
            duration_s: u64::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("duration_s must be at most"),
        "{}",
        e.message()
    );
    // A time range that used to overflow.
    let e = OpsServiceClient::connect(url.clone())
        .await
        .unwrap()
        .usage(pb::UsageRequest {
            node: "node-a".into(),
            to_unix_ms: i64::MIN,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("to_unix_ms"), "{}", e.message());

    // A registration with 10,000 GPUs.
    let gpus = (0..10_000)
        .map(|i| pb::GpuInfo {
            uuid: format!("GPU-{i}"),
            model: "H100-SXM5-80GB".into(),
            memory_bytes: 80 << 30,
            healthy: true,
            ..Default::default()
        })
        .collect();
    let e = session(
        &url,
        vec![pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(pb::Register {
                node: "big-node".into(),
                backend: "sim".into(),
                gpus,
                ..Default::default()
            })),
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("register.gpus must have at most 64 entries, got 10000"),
        "{}",
        e.message()
    );
    let (nodes, _, _) = cluster.controller.snapshot();
    assert!(
        nodes.iter().all(|n| n.name != "big-node"),
        "refused node stored"
    );

    // A message past the service's byte cap: refused by tonic before decoding.
    let e = t
        .get_slice(pb::GetSliceRequest {
            slice_id: "s".repeat(100 << 10),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{}", e.message());
    assert!(e.message().contains("too large"), "{}", e.message());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_agent_message_ends_the_session_and_the_node_keeps_its_slices() {
    let mut cluster = harness::start(ClusterSpec::new(one_node())).await.unwrap();
    let url = cluster.url.clone();
    let s = whole(&url).await;
    // The agent goes; a buggy one takes its place with the real inventory, then reports garbage.
    cluster.kill_agent("node-a");
    let connected = |c: &harness::Cluster| {
        let (nodes, _, _) = c.controller.snapshot();
        nodes.iter().any(|n| n.name == "node-a" && n.connected)
    };
    until("node unreachable", || !connected(&cluster)).await;
    let backend = cluster.backends[0].1.clone();
    let register = greenslice_agent::session::register_message("node-a", &backend).unwrap();
    let garbage = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::State(pb::StateReport {
            gpus: vec![pb::GpuInfo {
                uuid: "GPU-\u{7}".repeat(100),
                ..Default::default()
            }],
        })),
    };
    let e = session(&url, vec![register, garbage]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("state.gpus[0].uuid must be 1-128 characters"),
        "{}",
        e.message()
    );
    until("node unreachable again", || !connected(&cluster)).await;
    // Nothing of the garbage was stored, and the slice is kept.
    let (nodes, _, _) = cluster.controller.snapshot();
    assert!(
        nodes[0]
            .gpus
            .iter()
            .all(|g| g.uuid.starts_with("GPU-") && g.uuid.len() < 64)
    );
    assert_eq!(
        cluster.controller.get(&s.id).unwrap().state,
        SliceState::Active
    );
    // The real agent comes back: the slice is still there and still active.
    cluster.restart_agent("node-a");
    until("node back", || connected(&cluster)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cluster.controller.get(&s.id).unwrap().state,
        SliceState::Active
    );
    cluster.shutdown().await;
}
