//! The tenant API's answers to good and bad requests, over real gRPC against simulated nodes.

use std::time::Duration;

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::slice_spec::Kind;
use pb::tenant_service_client::TenantServiceClient;
use tonic::Code;

fn req(tenant: &str, kind: Kind, model: &str, key: &str) -> pb::RequestSliceRequest {
    pb::RequestSliceRequest {
        tenant: tenant.into(),
        spec: Some(pb::SliceSpec {
            kind: Some(kind),
            gpu_model: model.into(),
            slice_class: String::new(),
        }),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn share(f: f64, mem: u64) -> Kind {
    Kind::Share(pb::ShareSlice {
        compute_fraction: f,
        memory_bytes: mem,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_an_idempotency_key_returns_the_same_slice() {
    let cluster = harness::start(ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 2)))
        .await
        .unwrap();
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let k = Kind::Mig(pb::MigSlice {
        profile: "1g.10gb".into(),
    });
    let a = c
        .request_slice(req("t", k.clone(), "", "job-7"))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .request_slice(req("t", k.clone(), "", "job-7"))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.replayed && b.replayed);
    assert_eq!(a.slice.as_ref().unwrap().id, b.slice.as_ref().unwrap().id);
    // Another tenant's identical key is its own request.
    let other = c
        .request_slice(req("u", k, "", "job-7"))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.replayed);
    assert_ne!(other.slice.unwrap().id, a.slice.unwrap().id);
    let inv = OpsServiceClient::connect(cluster.url.clone())
        .await
        .unwrap()
        .inventory(pb::InventoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        inv.slices.len(),
        2,
        "no second allocation for the replayed key"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_status_codes() {
    let mut cluster = harness::start(ClusterSpec::new(harness::nodes(
        1,
        &[Machine::DgxA100_40],
        2,
    )))
    .await
    .unwrap();
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let code_msg = |r: Result<tonic::Response<pb::RequestSliceResponse>, tonic::Status>| {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    };
    // Unknown profile: InvalidArgument listing valid ones.
    let (code, msg) = code_msg(
        c.request_slice(req(
            "t",
            Kind::Mig(pb::MigSlice {
                profile: "5g.50gb".into(),
            }),
            "",
            "",
        ))
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("3g.20gb"), "{msg}");
    // A profile the model lacks: InvalidArgument listing the model's profiles.
    let (code, msg) = code_msg(
        c.request_slice(req(
            "t",
            Kind::Mig(pb::MigSlice {
                profile: "3g.40gb".into(),
            }),
            "A100-SXM4-40GB",
            "",
        ))
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        msg.contains("3g.20gb") && msg.contains("A100-SXM4-40GB"),
        "{msg}"
    );
    // A profile no GPU in the cluster has (only A100-40GB here): InvalidArgument with the valid ones.
    let (code, msg) = code_msg(
        c.request_slice(req(
            "t",
            Kind::Mig(pb::MigSlice {
                profile: "3g.40gb".into(),
            }),
            "",
            "",
        ))
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("3g.20gb"), "{msg}");
    // Share outside (0, 1] or without memory.
    for f in [0.0, -0.5, 1.5, f64::NAN] {
        let (code, _) = code_msg(c.request_slice(req("t", share(f, 1 << 30), "", "")).await);
        assert_eq!(code, Code::InvalidArgument, "fraction {f}");
    }
    let (code, msg) = code_msg(c.request_slice(req("t", share(0.5, 0), "", "")).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("memory"), "{msg}");
    // Host CPU or memory beyond what any node may report.
    let mut r = req("t", share(0.5, 1 << 30), "", "");
    r.host_cpu_milli = u64::MAX;
    let e = c.request_slice(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("host_cpu_milli"), "{}", e.message());
    let mut r = req("t", share(0.5, 1 << 30), "", "");
    r.host_memory_bytes = u64::MAX;
    let e = c.request_slice(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("host_memory_bytes"), "{}", e.message());
    // Missing spec and bad tenant.
    let mut r = req("t", share(0.5, 1), "", "");
    r.spec = None;
    assert_eq!(
        c.request_slice(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.request_slice(req("Bad Tenant", share(0.5, 1), "", ""))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Unknown slice: NotFound.
    let e = c
        .get_slice(pb::GetSliceRequest {
            slice_id: "s-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .release_slice(pb::ReleaseSliceRequest {
            slice_id: "s-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // No room: ResourceExhausted, saying what is free.
    let (code, msg) = code_msg(
        c.request_slice(req("t", Kind::Whole(pb::WholeGpus { count: 7 }), "", ""))
            .await,
    );
    assert_eq!(code, Code::ResourceExhausted);
    assert!(
        msg.contains("free now") && msg.contains("6 whole GPUs"),
        "{msg}"
    );
    // A model the cluster lacks.
    let (code, _) = code_msg(
        c.request_slice(req("t", share(0.5, 1 << 30), "H100-SXM5-80GB", ""))
            .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    // Nothing was allocated by any of the refused requests.
    assert!(cluster.controller.list("", "", false).is_empty());

    // Agent gone: Unavailable.
    cluster.kill_agent("node-00");
    let gone = async {
        loop {
            let (nodes, _, _) = cluster.controller.snapshot();
            if nodes.iter().all(|n| !n.connected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("agent disconnect noticed");
    let (code, msg) = code_msg(c.request_slice(req("t", share(0.5, 1 << 30), "", "")).await);
    assert_eq!(code, Code::Unavailable, "{msg}");
    cluster.shutdown().await;
}
