//! Refusals a program can act on: each kind carries its google.rpc detail (BadRequest field
//! violation, QuotaFailure, ResourceInfo, PreconditionFailure) and an ErrorInfo with a stable
//! reason, through a plain gRPC client; and the CLI prints them (`-o json` as a document).

use std::collections::BTreeMap;
use std::process::Command;

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::engine::CoreConfig;
use greenslice_controller::quota::{Quota, Quotas};
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::slice_spec::Kind;
use pb::tenant_service_client::TenantServiceClient;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

fn req(tenant: &str, kind: Kind) -> pb::RequestSliceRequest {
    pb::RequestSliceRequest {
        tenant: tenant.into(),
        spec: Some(pb::SliceSpec {
            kind: Some(kind),
            ..Default::default()
        }),
        idempotency_key: String::new(),
        ..Default::default()
    }
}

fn reason(d: &ErrorDetails) -> &str {
    d.error_info().map_or("", |i| i.reason.as_str())
}

fn field(d: &ErrorDetails) -> &str {
    d.bad_request()
        .and_then(|b| b.field_violations.first())
        .map_or("", |v| v.field.as_str())
}

/// Runs the greenslice CLI against `url`: its exit code and stderr.
async fn cli(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_greenslice"));
    c.args(["--controller", url]).args(args);
    let out = tokio::task::spawn_blocking(move || c.output().expect("run greenslice"))
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The refusal of `r`, its code and details.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, ErrorDetails, String) {
    let s = r.expect_err("a refusal");
    (s.code(), s.get_error_details(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_kind_carries_its_detail_and_a_stable_reason_and_the_cli_prints_them() {
    let core = CoreConfig {
        quotas: Quotas {
            default: None,
            tenant: BTreeMap::from([(
                "capped".to_string(),
                Quota {
                    gpus: Some(1),
                    ..Default::default()
                },
            )]),
        },
        ..CoreConfig::default()
    };
    let mut cluster = harness::start_with(
        ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 2)),
        core,
    )
    .await
    .unwrap();
    let mut t = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let mut ops = OpsServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();

    // BadRequest: the field and its limit; the message stays for people.
    let (code, d, msg) = refused(
        t.request_slice(req("team-a", Kind::Whole(pb::WholeGpus { count: 9 })))
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(field(&d), "spec.whole.count");
    assert_eq!(reason(&d), "INVALID_FIELD");
    assert!(msg.contains("1..=8"), "{msg}");
    let (_, d, _) = refused(
        t.request_slice(req("Not A Tenant", Kind::Whole(pb::WholeGpus { count: 1 })))
            .await,
    );
    assert_eq!(field(&d), "tenant");

    // A MIG profile that does not exist.
    let (code, d, _) = refused(
        t.request_slice(req(
            "team-a",
            Kind::Mig(pb::MigSlice {
                profile: "5g.99gb".into(),
            }),
        ))
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(reason(&d), "MIG_PROFILE_UNKNOWN");
    assert_eq!(field(&d), "spec.mig.profile");

    // NOT_FOUND names the resource.
    let (code, d, _) = refused(
        t.get_slice(pb::GetSliceRequest {
            slice_id: "s-nope".into(),
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    assert_eq!(reason(&d), "SLICE_NOT_FOUND");
    let ri = d.resource_info().expect("ResourceInfo");
    assert_eq!(
        (ri.resource_type.as_str(), ri.resource_name.as_str()),
        ("greenslice.v1.Slice", "s-nope")
    );
    let (code, d, _) = refused(
        ops.drain_node(pb::DrainNodeRequest {
            node: "no-such-node".into(),
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    assert_eq!(reason(&d), "NODE_NOT_FOUND");
    assert_eq!(d.resource_info().unwrap().resource_name, "no-such-node");

    // QuotaFailure: the tenant over its limit.
    t.request_slice(req("capped", Kind::Whole(pb::WholeGpus { count: 1 })))
        .await
        .unwrap();
    let (code, d, _) = refused(
        t.request_slice(req("capped", Kind::Whole(pb::WholeGpus { count: 1 })))
            .await,
    );
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(reason(&d), "QUOTA_EXCEEDED");
    assert_eq!(
        d.quota_failure().expect("QuotaFailure").violations[0].subject,
        "tenant:capped"
    );

    // No room: valid, but nothing fits now (6 non-MIG GPUs, one held).
    let (code, d, _) = refused(
        t.request_slice(req("team-a", Kind::Whole(pb::WholeGpus { count: 8 })))
            .await,
    );
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(reason(&d), "NO_CAPACITY");

    // PreconditionFailure: keeping a released slice.
    let s = t
        .request_slice(req("team-a", Kind::Whole(pb::WholeGpus { count: 1 })))
        .await
        .unwrap()
        .into_inner()
        .slice
        .unwrap();
    t.release_slice(pb::ReleaseSliceRequest {
        slice_id: s.id.clone(),
    })
    .await
    .unwrap();
    let (code, d, _) = refused(
        t.keep_slice(pb::KeepSliceRequest {
            slice_id: s.id.clone(),
            tenant: String::new(),
            duration_s: 60,
        })
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(reason(&d), "WRONG_STATE");
    assert_eq!(
        d.precondition_failure()
            .expect("PreconditionFailure")
            .violations[0]
            .subject,
        format!("slice/{}", s.id)
    );

    // The CLI: the details under the message, and as a document with -o json.
    let (code, err) = cli(&cluster.url, &["get", "s-nope"]).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("reason: SLICE_NOT_FOUND"), "{err}");
    assert!(
        err.contains("resource: greenslice.v1.Slice s-nope"),
        "{err}"
    );
    let (code, err) = cli(
        &cluster.url,
        &[
            "-o", "json", "request", "--tenant", "team-a", "--whole", "9",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    let doc: serde_json::Value = serde_json::from_str(err.trim()).expect(&err);
    assert_eq!(doc["error"]["reason"], "INVALID_FIELD");
    assert_eq!(doc["error"]["code"], "InvalidArgument");
    assert_eq!(
        doc["error"]["field_violations"][0]["field"],
        "spec.whole.count"
    );

    // The CLI follows pages; --limit stops early.
    let list_json = |out: std::process::Output| -> Vec<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .expect("a JSON list")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let run = |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_greenslice"))
            .args(args)
            .output()
            .expect("run greenslice")
    };
    let base: Vec<String> = ["--controller", &cluster.url, "-o", "json", "list", "--all"]
        .map(String::from)
        .to_vec();
    let (all, one) = {
        let (a, b) = (
            base.clone(),
            [base.clone(), vec!["--limit".into(), "1".into()]].concat(),
        );
        tokio::task::spawn_blocking(move || (list_json(run(a)), list_json(run(b))))
            .await
            .unwrap()
    };
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(one.len(), 1);

    // No node at all: the agent gone.
    assert!(cluster.kill_agent("node-00"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, d, _) = refused(
        t.request_slice(req("team-a", Kind::Whole(pb::WholeGpus { count: 1 })))
            .await,
    );
    assert_eq!(code, Code::Unavailable);
    assert_eq!(reason(&d), "NO_NODES");
    cluster.shutdown().await;
}
