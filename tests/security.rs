//! Authentication, authorization and quotas, over real TLS against simulated nodes: tenants are
//! kept apart, tokens are required, agents need a client certificate naming their node, and
//! quotas refuse requests with RESOURCE_EXHAUSTED.

mod common;

use std::time::Duration;

use greenslice::harness::{self, Cluster, ClusterSpec, Secure};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::auth::tokens::{self, TokenRole, TokenStore};
use greenslice_controller::engine::CoreConfig;
use greenslice_proto::client::{Authed, ClientTls, Conn};
use greenslice_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::slice_spec::Kind;
use pb::tenant_service_client::TenantServiceClient;
use tonic::Code;

struct Env {
    cluster: Cluster,
    secure: Secure,
    alice: String,
    bob: String,
    ops: String,
}

async fn start(core: CoreConfig) -> Env {
    start_with(core, |_| {}).await
}

async fn start_with(core: CoreConfig, tune: impl FnOnce(&mut ClusterSpec)) -> Env {
    let (alice, ea) = tokens::mint("alice", TokenRole::Tenant, Some("team-a")).unwrap();
    let (bob, eb) = tokens::mint("bob", TokenRole::Tenant, Some("team-b")).unwrap();
    let (ops, eo) = tokens::mint("ops", TokenRole::Ops, None).unwrap();
    let store = TokenStore::parse(&tokens::to_toml(&[ea, eb, eo]), "test").unwrap();
    let nodes = harness::nodes(2, &[Machine::DgxH100], 2);
    let secure = Secure::for_nodes(&nodes, store).unwrap();
    let mut spec = ClusterSpec::new(nodes);
    spec.security = Some(secure.clone());
    tune(&mut spec);
    let cluster = harness::start_with(spec, core).await.unwrap();
    Env {
        cluster,
        secure,
        alice,
        bob,
        ops,
    }
}

impl Env {
    fn conn(&self, token: Option<&str>) -> Conn {
        Conn {
            url: self.cluster.url.clone(),
            tls: self.cluster.tls.clone(),
            token: token.map(str::to_string),
        }
    }

    async fn tenant(&self, token: Option<&str>) -> TenantServiceClient<Authed> {
        self.conn(token).tenant().await.unwrap()
    }
}

fn share(tenant: &str, f: f64) -> pb::RequestSliceRequest {
    pb::RequestSliceRequest {
        tenant: tenant.into(),
        spec: Some(pb::SliceSpec {
            kind: Some(Kind::Share(pb::ShareSlice {
                compute_fraction: f,
                memory_bytes: 1 << 30,
            })),
            gpu_model: String::new(),
            slice_class: String::new(),
        }),
        idempotency_key: String::new(),
        ..Default::default()
    }
}

/// Requests a slice that must be granted; returns it.
async fn granted(c: &mut TenantServiceClient<Authed>, r: pb::RequestSliceRequest) -> pb::Slice {
    c.request_slice(r)
        .await
        .expect("request granted")
        .into_inner()
        .slice
        .expect("a slice")
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_changes_only_its_own_slices() {
    let env = start(CoreConfig::default()).await;
    let mut a = env.tenant(Some(&env.alice)).await;
    let mut b = env.tenant(Some(&env.bob)).await;

    // An empty tenant means the token's own; naming another tenant is refused.
    let sa = granted(&mut a, share("", 0.25)).await;
    assert_eq!(sa.tenant, "team-a");
    assert_eq!(
        code(a.request_slice(share("team-b", 0.25)).await),
        Code::PermissionDenied
    );
    let sb = granted(&mut b, share("team-b", 0.25)).await;

    // Bob cannot get, keep or release Alice's slice...
    let get = b
        .get_slice(pb::GetSliceRequest {
            slice_id: sa.id.clone(),
        })
        .await;
    assert_eq!(code(get), Code::PermissionDenied);
    let keep = b
        .keep_slice(pb::KeepSliceRequest {
            slice_id: sa.id.clone(),
            tenant: String::new(),
            duration_s: 60,
        })
        .await;
    assert_eq!(code(keep), Code::PermissionDenied);
    let release = b
        .release_slice(pb::ReleaseSliceRequest {
            slice_id: sa.id.clone(),
        })
        .await;
    assert_eq!(code(release), Code::PermissionDenied);
    // ...and the refused release changed nothing.
    let still = a
        .get_slice(pb::GetSliceRequest {
            slice_id: sa.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .slice
        .unwrap();
    assert_eq!(still.state, pb::SliceState::Active as i32);

    // Listing shows only the caller's own slices; asking for another tenant's is refused.
    let listed = b
        .list_slices(pb::ListSlicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .slices;
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [sb.id.as_str()]
    );
    let other = b
        .list_slices(pb::ListSlicesRequest {
            tenant: "team-a".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(other), Code::PermissionDenied);
    let watch = b
        .watch_slices(pb::WatchSlicesRequest {
            tenant: "team-a".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(watch), Code::PermissionDenied);

    // Ops sees everyone's and may release any.
    let mut ops = env.tenant(Some(&env.ops)).await;
    let all = ops
        .list_slices(pb::ListSlicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .slices;
    assert_eq!(all.len(), 2);
    ops.release_slice(pb::ReleaseSliceRequest {
        slice_id: sb.id.clone(),
    })
    .await
    .unwrap();
    // Alice releases her own.
    a.release_slice(pb::ReleaseSliceRequest { slice_id: sa.id })
        .await
        .unwrap();
    env.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_watch_carries_only_its_own_events() {
    let env = start(CoreConfig::default()).await;
    let mut b = env.tenant(Some(&env.bob)).await;
    let mut events = b
        .watch_slices(pb::WatchSlicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut a = env.tenant(Some(&env.alice)).await;
    a.request_slice(share("", 0.25)).await.unwrap();
    let mine = granted(&mut b, share("", 0.25)).await;
    // Bob's first event is about his own slice, although Alice's came first.
    let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.slice.unwrap().tenant, "team-b");
    assert_eq!(mine.tenant, "team-b");
    env.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_tokens_are_unauthenticated_and_tenants_cannot_use_ops() {
    let env = start(CoreConfig::default()).await;
    for token in [None, Some("gst_0000"), Some("not-a-token")] {
        let mut c = env.tenant(token).await;
        let r = c.list_slices(pb::ListSlicesRequest::default()).await;
        assert_eq!(code(r), Code::Unauthenticated, "token {token:?}");
        let r = c.request_slice(share("team-a", 0.25)).await;
        assert_eq!(code(r), Code::Unauthenticated, "token {token:?}");
    }
    let inv = env
        .conn(Some(&env.alice))
        .ops()
        .await
        .unwrap()
        .inventory(pb::InventoryRequest::default())
        .await;
    assert_eq!(code(inv), Code::PermissionDenied);
    let inv = env
        .conn(Some(&env.ops))
        .ops()
        .await
        .unwrap()
        .inventory(pb::InventoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.gpus_total, 16);
    // Nothing was allocated by the refused calls, and ops can see they happened.
    assert!(inv.slices.is_empty());
    let refused = |surface: &str, code: &str| {
        env.cluster
            .controller
            .metrics
            .auth_refusals
            .get_or_create(&greenslice_controller::obs::RefusalLabels {
                surface: surface.into(),
                code: code.into(),
            })
            .get()
    };
    assert_eq!(refused("tenant", "unauthenticated"), 6);
    assert_eq!(refused("ops", "permission_denied"), 1);
    assert_eq!(env.cluster.controller.metrics.insecure.get(), 0);
    // The TLS settings' metrics are served, valid for Prometheus: the server certificate's expiry
    // (a year from now for the harness's `pki` certificates), no rotation failing.
    let text = env.cluster.controller.metrics.encode();
    common::promtool_check(
        "controller /metrics with TLS",
        // What /metrics serves a scraper that does not ask for OpenMetrics.
        &greenslice_core::expfmt::openmetrics_to_prometheus_text(&text),
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = value("greenslice_tls_certificate_expiry_timestamp_seconds");
    assert!(
        expiry > now_s + 300.0 * 86_400.0 && expiry < now_s + 400.0 * 86_400.0,
        "{expiry}"
    );
    assert_eq!(value("greenslice_tls_files_invalid"), 0.0);
    assert_eq!(value("greenslice_tls_reloads_total"), 0.0);
    // Plaintext to the TLS port fails.
    let plain = Conn::insecure(env.cluster.url.replace("https://", "http://"));
    let r = match plain.tenant().await {
        Ok(mut c) => c
            .list_slices(pb::ListSlicesRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(r.is_err());
    env.cluster.shutdown().await;
}

/// Opens an agent session with `tls` and registers as `node`; returns the status it ends with.
async fn register_as(url: &str, tls: &ClientTls, node: &str) -> Result<(), tonic::Status> {
    let ch = greenslice_proto::client::connect(url, tls)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut c = AgentServiceClient::new(ch);
    let reg = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            node: node.into(),
            backend: "sim".into(),
            ..Default::default()
        })),
    };
    let mut inbound = c
        .session(tokio_stream::iter(vec![reg]).chain(tokio_stream::pending()))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(_) => Ok(()),
        None => Err(tonic::Status::aborted("stream closed")),
    }
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_need_a_client_certificate_that_names_their_node() {
    let env = start(CoreConfig::default()).await;
    let url = env.cluster.url.clone();
    // No client certificate: refused.
    let r = register_as(&url, &env.secure.client_tls(), "node-00").await;
    assert_eq!(code(r), Code::Unauthenticated);
    // A tenant or ops token does not make an agent.
    let r = async {
        let ch = env.conn(Some(&env.ops)).channel().await.unwrap();
        let mut c = AgentServiceClient::new(ch);
        c.session(tokio_stream::pending::<pb::AgentMessage>())
            .await
            .map(|_| ())
    }
    .await;
    assert_eq!(code(r), Code::Unauthenticated);
    // A certificate from another CA fails the TLS handshake.
    let rogue =
        greenslice_controller::auth::pki::generate(&["x".into()], &["node-00".into()]).unwrap();
    let mut tls = env.secure.client_tls();
    tls.identity = Some((
        rogue.agents[0].1.cert.clone().into_bytes(),
        rogue.agents[0].1.key.clone().into_bytes(),
    ));
    let r = register_as(&url, &tls, "node-00").await;
    assert!(r.is_err(), "a certificate from another CA was accepted");
    // node-00's certificate may not register node-01.
    let r = register_as(&url, &env.secure.agent_tls("node-00"), "node-01").await;
    assert_eq!(code(r), Code::PermissionDenied);
    // The real agents registered with their own certificates and serve slices.
    let mut a = env.tenant(Some(&env.alice)).await;
    a.request_slice(share("", 0.5)).await.unwrap();
    env.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_requests_over_the_limit_with_resource_exhausted() {
    let quotas: greenslice_controller::quota::Quotas =
        toml::from_str("[tenant.team-a]\nshare = 0.5\ngpus = 1\n").unwrap();
    let env = start(CoreConfig {
        quotas,
        ..CoreConfig::default()
    })
    .await;
    let mut a = env.tenant(Some(&env.alice)).await;
    let first = granted(&mut a, share("", 0.25)).await;
    a.request_slice(share("", 0.25)).await.unwrap();
    let over = a
        .request_slice(share("", 0.25))
        .await
        .expect_err("third share is over the 0.5 quota");
    assert_eq!(over.code(), Code::ResourceExhausted);
    assert!(
        over.message().contains("quota") && over.message().contains("team-a"),
        "{}",
        over.message()
    );
    let whole = |n| pb::RequestSliceRequest {
        spec: Some(pb::SliceSpec {
            kind: Some(Kind::Whole(pb::WholeGpus { count: n })),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        code(a.request_slice(whole(2)).await),
        Code::ResourceExhausted
    );
    a.request_slice(whole(1)).await.unwrap();
    // Bob has no quota.
    let mut b = env.tenant(Some(&env.bob)).await;
    b.request_slice(share("", 0.75)).await.unwrap();
    // Releasing gives quota back.
    a.release_slice(pb::ReleaseSliceRequest { slice_id: first.id })
        .await
        .unwrap();
    a.request_slice(share("", 0.25)).await.unwrap();
    env.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_its_own_usage_and_energy_but_no_other_ops_data() {
    // Simulated time runs 600x so energy intervals (60 s) close within the test.
    let speedup = 600.0;
    let env = start_with(CoreConfig::default(), |spec| {
        spec.clock = std::sync::Arc::new(greenslice_core::clock::ScaledClock::new(
            1_800_000_000_000,
            speedup,
        ));
        spec.sample_interval = Duration::from_secs_f64(5.0 / speedup);
        spec.batch_interval = Duration::from_secs_f64(30.0 / speedup);
    })
    .await;
    let mut a = env.tenant(Some(&env.alice)).await;
    let mut b = env.tenant(Some(&env.bob)).await;
    let sa = granted(&mut a, share("", 0.25)).await;
    let sb = granted(&mut b, share("", 0.25)).await;
    let mut ops_a = env.conn(Some(&env.alice)).ops().await.unwrap();
    let usage = |slice: &str, tenant: &str, node: &str| pb::UsageRequest {
        slice_id: slice.into(),
        tenant: tenant.into(),
        node: node.into(),
        ..Default::default()
    };
    // Ops sees per-GPU rows once intervals have closed.
    let mut ops = env.conn(Some(&env.ops)).ops().await.unwrap();
    let mut full = serde_json::Value::Null;
    for _ in 0..200 {
        let doc = ops
            .energy_report(pb::EnergyReportRequest::default())
            .await
            .unwrap()
            .into_inner()
            .report_json;
        full = serde_json::from_str(&doc).unwrap();
        if full["gpus"].as_array().is_some_and(|g| g.len() == 16)
            && full["tenants"].as_array().is_some_and(|t| t.len() == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        full["gpus"].as_array().unwrap().len(),
        16,
        "GPU rows: {full}"
    );
    ops_a.usage(usage(&sa.id, "", "")).await.unwrap();
    ops_a.usage(usage("", "team-a", "")).await.unwrap();
    for (req, what) in [
        (usage(&sb.id, "", ""), "bob's slice"),
        (usage("", "team-b", ""), "bob's tenant"),
        (usage("", "", &sa.node), "a node"),
    ] {
        assert_eq!(
            code(ops_a.usage(req).await),
            Code::PermissionDenied,
            "{what}"
        );
    }
    // Her energy report holds her rows only, and no per-GPU detail.
    let doc = ops_a
        .energy_report(pb::EnergyReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .report_json;
    let report: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(report["tenant_filter"], "team-a");
    assert_eq!(report["gpus"], serde_json::json!([]));
    let rows = report["tenants"].as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|t| t["tenant"] == "team-a"),
        "{rows:?}"
    );
    let other = ops_a
        .energy_report(pb::EnergyReportRequest {
            tenant: "team-b".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(other), Code::PermissionDenied);
    // Every other ops method stays closed to tenants.
    assert_eq!(
        code(ops_a.inventory(pb::InventoryRequest::default()).await),
        Code::PermissionDenied
    );
    let drain = ops_a
        .drain_node(pb::DrainNodeRequest {
            node: sa.node.clone(),
        })
        .await;
    assert_eq!(code(drain), Code::PermissionDenied);
    let undrain = ops_a
        .undrain_node(pb::UndrainNodeRequest { node: sa.node })
        .await;
    assert_eq!(code(undrain), Code::PermissionDenied);
    env.cluster.shutdown().await;
}
