//! Fuzz-style properties over every request the controller takes, through the real handlers of an
//! in-process controller with simulated agents (the harness): arbitrary field values (huge strings,
//! control characters, NaN and infinite floats, negative and overflowing numbers, huge repeated
//! fields) give Ok or a client-error status, never a panic or an INTERNAL, and a refused call leaves
//! the slice table and the nodes as they were.
//!
//! Case counts are small on purpose: the suite runs in seconds on CI's two cores.

use std::time::Duration;

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::api::kubelet::KubeletApi;
use greenslice_controller::api::ops::OpsApi;
use greenslice_controller::api::tenant::TenantApi;
use greenslice_controller::engine::Controller;
use greenslice_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::kubelet_service_server::KubeletService;
use pb::ops_service_server::OpsService;
use pb::tenant_service_server::TenantService;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_stream::StreamExt;
use tonic::Code;

const CASES: u32 = 48;

/// Strings that are sometimes plausible, sometimes arbitrary Unicode with control characters, and
/// sometimes far past any limit.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9-]{1,12}",
        3 => ".{0,40}",
        1 => "[\\x00-\\x1f\\x7f]{1,8}",
        1 => (1usize..4).prop_map(|k| "x".repeat(k * 100_000)),
    ]
    .boxed()
}

fn float() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        0.0..=1.0f64,
    ]
    .boxed()
}

fn time() -> BoxedStrategy<i64> {
    prop_oneof![
        any::<i64>(),
        Just(0i64),
        Just(i64::MIN),
        Just(i64::MAX),
        0..2_000_000_000_000i64
    ]
    .boxed()
}

fn spec() -> BoxedStrategy<Option<pb::SliceSpec>> {
    use pb::slice_spec::Kind;
    let kind = prop_oneof![
        Just(None),
        any::<u32>().prop_map(|count| Some(Kind::Whole(pb::WholeGpus { count }))),
        prop_oneof![text(), Just("1g.10gb".to_string())]
            .prop_map(|profile| Some(Kind::Mig(pb::MigSlice { profile }))),
        (float(), any::<u64>()).prop_map(|(compute_fraction, memory_bytes)| {
            Some(Kind::Share(pb::ShareSlice {
                compute_fraction,
                memory_bytes,
            }))
        }),
    ];
    prop::option::of(
        (kind, text(), text()).prop_map(|(kind, gpu_model, slice_class)| pb::SliceSpec {
            kind,
            gpu_model,
            slice_class,
        }),
    )
    .boxed()
}

/// What a refused call must leave alone: every slice and each node's drain state and, with
/// `gpus`, each node's GPUs (a request that finds no room may first re-lay out free MIG instances,
/// so only an invalid request is held to that).
fn state(c: &Controller, gpus: bool) -> String {
    let slices = c.list("", "", true);
    let (mut nodes, _, _) = c.snapshot();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.drained, gpus.then(|| n.gpus.clone())))
        .collect();
    format!("{slices:?}\n{nodes:?}")
}

/// Discards a handler's answer.
fn ok<T>(_: T) {}

/// Codes a client error may have; anything else (INTERNAL, UNKNOWN) means a handler broke.
/// A request as the auth gate hands it to a handler: from a caller allowed everything (the
/// handlers' validation is what is fuzzed here; tests/security.rs covers who may call what).
fn authed<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.extensions_mut()
        .insert(greenslice_controller::auth::Principal::Anyone);
    r
}

fn client_error(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unavailable
    )
}

/// Runs `cases` arbitrary requests through `call`; on an error, the state must be unchanged.
fn check<T: std::fmt::Debug>(
    c: &Controller,
    name: &str,
    strategy: impl Strategy<Value = T>,
    call: impl Fn(T) -> Result<(), tonic::Status>,
) {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |req| {
            let before = (state(c, false), state(c, true));
            if let Err(s) = call(req) {
                prop_assert!(client_error(&s), "{name}: {:?} {}", s.code(), s.message());
                let after = if s.code() == Code::InvalidArgument {
                    (&before.1, state(c, true))
                } else {
                    (&before.0, state(c, false))
                };
                prop_assert_eq!(
                    after.0,
                    &after.1,
                    "{} changed state on {:?}",
                    name,
                    s.code()
                );
                prop_assert!(s.message().len() <= 2048, "{name}: error text not bounded");
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

#[test]
fn every_request_through_the_real_handlers_gives_a_status_and_leaves_state_alone_on_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(harness::start(ClusterSpec::new(harness::nodes(
            1,
            &[Machine::DgxH100],
            2,
        ))))
        .unwrap();
    let c = cluster.controller.clone();
    let tenant = TenantApi {
        controller: c.clone(),
    };
    let ops = OpsApi {
        controller: c.clone(),
    };
    let kubelet = KubeletApi {
        controller: c.clone(),
        policy: c.policy(),
    };
    // One live slice, so lookups, releases and keeps have something real next to the garbage.
    rt.block_on(tenant.request_slice(authed(pb::RequestSliceRequest {
        tenant: "team-a".into(),
        spec: Some(pb::SliceSpec {
            kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
            ..Default::default()
        }),
        idempotency_key: String::new(),
        ..Default::default()
    })))
    .unwrap();

    check(
        &c,
        "RequestSlice",
        (text(), spec(), text()),
        |(tenant_name, spec, idempotency_key)| {
            rt.block_on(tenant.request_slice(authed(pb::RequestSliceRequest {
                tenant: tenant_name,
                spec,
                idempotency_key,
                ..Default::default()
            })))
            .map(ok)
        },
    );
    check(&c, "GetSlice", text(), |slice_id| {
        rt.block_on(tenant.get_slice(authed(pb::GetSliceRequest { slice_id })))
            .map(ok)
    });
    check(&c, "ReleaseSlice", text(), |slice_id| {
        rt.block_on(tenant.release_slice(authed(pb::ReleaseSliceRequest { slice_id })))
            .map(ok)
    });
    check(
        &c,
        "ListSlices",
        (
            (text(), text(), any::<bool>()),
            (text(), any::<i32>(), any::<i32>(), time()),
        ),
        |((tenant_name, node, include_terminal), (page_token, page_size, state, after))| {
            rt.block_on(tenant.list_slices(authed(pb::ListSlicesRequest {
                tenant: tenant_name,
                node,
                include_terminal,
                page_token,
                page_size,
                state,
                created_after_unix_ms: after,
            })))
            .map(ok)
        },
    );
    check(
        &c,
        "KeepSlice",
        (text(), text(), any::<u64>()),
        |(slice_id, tenant_name, duration_s)| {
            rt.block_on(tenant.keep_slice(authed(pb::KeepSliceRequest {
                slice_id,
                tenant: tenant_name,
                duration_s,
            })))
            .map(ok)
        },
    );
    check(
        &c,
        "WatchSlices",
        (text(), any::<u64>()),
        |(tenant_name, from)| {
            rt.block_on(tenant.watch_slices(authed(pb::WatchSlicesRequest {
                tenant: tenant_name,
                start_revision: from,
                bookmarks: false,
            })))
            .map(ok)
        },
    );
    check(
        &c,
        "Usage",
        (text(), text(), text(), time(), time(), 0..3usize),
        |(slice_id, tenant_name, node, from_unix_ms, to_unix_ms, keep)| {
            // Often exactly one selector, as the API wants; sometimes all three.
            let pick = |i: usize, v: String| {
                if keep == i || keep > 2 {
                    v
                } else {
                    String::new()
                }
            };
            rt.block_on(ops.usage(authed(pb::UsageRequest {
                slice_id: pick(0, slice_id),
                tenant: pick(1, tenant_name),
                node: pick(2, node),
                from_unix_ms,
                to_unix_ms,
            })))
            .map(ok)
        },
    );
    check(
        &c,
        "EnergyReport",
        (time(), time(), text()),
        |(from_unix_ms, to_unix_ms, tenant_name)| {
            rt.block_on(ops.energy_report(authed(pb::EnergyReportRequest {
                from_unix_ms,
                to_unix_ms,
                tenant: tenant_name,
            })))
            .map(ok)
        },
    );
    // Random names never hit node-00, so a drain that answers Ok found nothing to drain: an error.
    check(&c, "DrainNode", text(), |node| {
        rt.block_on(ops.drain_node(authed(pb::DrainNodeRequest { node })))
            .map(ok)
    });
    check(&c, "UndrainNode", text(), |node| {
        rt.block_on(ops.undrain_node(authed(pb::UndrainNodeRequest { node })))
            .map(ok)
    });
    let candidate = (text(), any::<u32>()).prop_map(|(gpu_uuid, free_milli)| pb::GpuCandidate {
        gpu_uuid,
        free_milli,
    });
    let candidates = prop_oneof![
        prop::collection::vec(candidate, 0..8),
        Just(vec![pb::GpuCandidate::default(); 10_000]),
    ];
    check(
        &c,
        "ChooseDevices",
        (
            prop_oneof![text(), Just("node-00".to_string())],
            text(),
            spec(),
            candidates,
        ),
        |(node, resource, spec, candidates)| {
            rt.block_on(kubelet.choose_devices(authed(pb::ChooseDevicesRequest {
                node,
                resource,
                spec,
                candidates,
            })))
            .map(ok)
        },
    );
    rt.block_on(cluster.shutdown());
}

// ---- The agent stream ------------------------------------------------------------------------------

fn gpu_info() -> BoxedStrategy<pb::GpuInfo> {
    let mig = (text(), any::<u32>(), any::<u32>(), text()).prop_map(
        |(profile, start, size, slice_id)| pb::MigInstance {
            gpu_instance_id: 1,
            profile,
            start,
            size,
            mig_uuid: "MIG-1".into(),
            slice_id,
        },
    );
    let share =
        (text(), float(), any::<u64>()).prop_map(|(slice_id, compute_fraction, memory_bytes)| {
            pb::ShareLimit {
                slice_id,
                compute_fraction,
                memory_bytes,
            }
        });
    (
        text(),
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec(mig, 0..3),
        prop_oneof![
            prop::collection::vec(share, 0..3),
            Just(vec![pb::ShareLimit::default(); 5000]),
        ],
        text(),
    )
        .prop_map(
            |(uuid, index, memory_bytes, mig_instances, shares, whole_slice_id)| pb::GpuInfo {
                uuid,
                index,
                model: "H100-SXM5-80GB".into(),
                memory_bytes,
                healthy: true,
                mig_instances,
                shares,
                whole_slice_id,
                ..Default::default()
            },
        )
        .boxed()
}

fn agent_message() -> BoxedStrategy<pb::AgentMessage> {
    use pb::agent_message::Msg;
    let result = (
        any::<u64>(),
        text(),
        prop::collection::hash_map(text(), text(), 0..3),
    )
        .prop_map(|(command_id, error, env)| {
            Msg::Result(pb::CommandResult {
                command_id,
                ok: false,
                error,
                mig: None,
                env,
            })
        });
    let state = prop_oneof![
        prop::collection::vec(gpu_info(), 0..3),
        Just(vec![pb::GpuInfo::default(); 10_000]),
    ]
    .prop_map(|gpus| Msg::State(pb::StateReport { gpus }));
    let activity = (text(), float(), any::<u64>()).prop_map(|(slice_id, sm_pct, memory_bytes)| {
        pb::SliceActivity {
            slice_id,
            sm_pct,
            memory_bytes,
            processes: 1,
            activity_known: true,
            ..Default::default()
        }
    });
    let sample = (
        time(),
        text(),
        prop::option::of(any::<u32>()),
        float(),
        prop::collection::vec(activity, 0..3),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(at_unix_ms, gpu_uuid, gpu_util_pct, unattributed_sm_pct, slices, unsupported)| {
                pb::GpuSample {
                    at_unix_ms,
                    gpu_uuid,
                    gpu_util_pct,
                    unattributed_sm_pct,
                    slices,
                    unsupported,
                    ..Default::default()
                }
            },
        );
    let samples = prop_oneof![
        prop::collection::vec(sample, 0..4),
        Just(vec![pb::GpuSample::default(); 5000]),
    ]
    .prop_map(|samples| Msg::Samples(pb::SampleBatch { samples }));
    let allocation = (
        text(),
        text(),
        text(),
        spec(),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(slice_id, tenant, pod, spec, gpu_uuids)| pb::KubeletAllocation {
                slice_id,
                tenant,
                namespace: "ns".into(),
                pod,
                container: "c".into(),
                resource: "greenslice.io/gpu".into(),
                device_ids: gpu_uuids.clone(),
                spec,
                gpu_uuids,
                mig: None,
            },
        );
    let kubelet = (prop::collection::vec(allocation, 0..3), time()).prop_map(
        |(allocations, observed_unix_ms)| {
            Msg::Kubelet(pb::KubeletAllocations {
                allocations,
                eviction_allowed: false,
                observed_unix_ms,
            })
        },
    );
    prop_oneof![
        result,
        state,
        samples,
        kubelet,
        Just(Msg::Register(pb::Register::default())),
    ]
    .prop_map(|m| pb::AgentMessage { msg: Some(m) })
    .boxed()
}

/// Registers a fake node "fuzz-node", sends `msg`, closes its side, and returns the status the
/// controller ended the stream with (None when it ended cleanly).
async fn session_with(url: &str, msg: pb::AgentMessage) -> Option<tonic::Status> {
    let mut client = AgentServiceClient::connect(url.to_string()).await.unwrap();
    let register = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            node: "fuzz-node".into(),
            backend: "sim".into(),
            gpus: vec![pb::GpuInfo {
                uuid: "GPU-fuzz-0".into(),
                model: "H100-SXM5-80GB".into(),
                memory_bytes: 80 << 30,
                healthy: true,
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    let outbound = tokio_stream::iter(vec![register, msg]);
    let mut inbound = client.session(outbound).await.unwrap().into_inner();
    let mut ended = None;
    while let Some(m) = inbound.next().await {
        if let Err(s) = m {
            ended = Some(s);
            break;
        }
    }
    ended
}

#[test]
fn arbitrary_agent_messages_end_only_their_own_session_and_keep_other_nodes_slices() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(harness::start(ClusterSpec::new(harness::nodes(
            1,
            &[Machine::DgxH100],
            0,
        ))))
        .unwrap();
    let c = cluster.controller.clone();
    rt.block_on(
        TenantApi {
            controller: c.clone(),
        }
        .request_slice(authed(pb::RequestSliceRequest {
            tenant: "team-a".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })),
    )
    .unwrap();
    let node_00 = |c: &Controller| format!("{:?}", c.list("", "node-00", true));
    let before = node_00(&c);
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&agent_message(), |msg| {
            let malformed = greenslice_controller::api::validate::agent_message(&msg).is_err();
            let ended = rt.block_on(session_with(&cluster.url, msg));
            match &ended {
                Some(s) => {
                    // OUT_OF_RANGE: past the agent stream's byte cap, refused before decoding.
                    prop_assert!(
                        matches!(s.code(), Code::InvalidArgument | Code::OutOfRange),
                        "{:?} {}",
                        s.code(),
                        s.message()
                    );
                    prop_assert!(malformed, "a well-formed message ended the session: {s}");
                }
                None => prop_assert!(!malformed, "a malformed message was accepted"),
            }
            // The session loop survived the message: the node is marked disconnected once its
            // stream ends (a panicked loop would leave it connected).
            let gone = rt.block_on(async {
                for _ in 0..250 {
                    let (nodes, _, _) = c.snapshot();
                    if nodes.iter().any(|n| n.name == "fuzz-node" && !n.connected) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            });
            prop_assert!(gone, "fuzz-node still connected after its stream ended");
            prop_assert_eq!(&before, &node_00(&c), "another node's slices changed");
            Ok(())
        })
        .unwrap();
    rt.block_on(cluster.shutdown());
}
