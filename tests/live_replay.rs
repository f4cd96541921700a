//! The live path and the offline replay agree: a seeded sequence of 2,000 requests (whole GPUs,
//! MIG instances and shares, some constrained to a GPU model, most with the host CPU and memory
//! their workload needs, with releases interleaved) sent
//! through the tenant API of a `greenslice controller` process to simulated agents gets, request
//! by request, the placement (node, GPUs, MIG start) that `bench::live_replay::replay` computes
//! offline with the same policy, learning its target workload from the same requests; requests
//! unplaceable in one are unplaceable in the other, for the same reason.
//!
//! The comparison can fail: the replay's unit tests show that another policy (fgd, best-fit,
//! first-fit), or the default policy with its prior workload and no history (a controller that
//! did not observe requests), places most of such a sequence differently. The seed is
//! GREENSLICE_LIVE_REPLAY_SEED (default 2026); GREENSLICE_LIVE_REPLAY_POLICY replays offline with
//! another policy, which makes this test fail at the first request placed differently.

mod common;

use std::time::{Duration, Instant};

use common::*;
use greenslice::harness::{self, NodeSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::bench::live_replay::{
    self, Assigned, Outcome, ReplayNode, Step, idle_view, seeded_steps,
};
use greenslice_controller::placement::policy_by_name;
use greenslice_core::convert::{gpu_from_pb, spec_to_pb};
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use tonic::Code;

const POLICY: &str = "fgd-balanced";
const REQUESTS: usize = 2000;

/// Six nodes of four GPU models; two MIG GPUs on each of the first four.
fn nodes() -> Vec<NodeSpec> {
    let machines = [
        Machine::DgxH100,
        Machine::DgxA100_40,
        Machine::DgxH200,
        Machine::DgxA100_80,
    ];
    (0..6)
        .map(|i| NodeSpec {
            name: format!("node-{i:02}"),
            machine: machines[i % machines.len()],
            gpus: 8,
            mig_gpus: if i < 4 { 2 } else { 0 },
        })
        .collect()
}

/// The nodes as the controller reports them (one page: six nodes).
async fn registered(url: &str) -> Vec<ReplayNode> {
    let inv = OpsServiceClient::connect(url.to_string())
        .await
        .expect("connect")
        .inventory(pb::InventoryRequest::default())
        .await
        .expect("inventory")
        .into_inner();
    assert!(inv.next_page_token.is_empty(), "one page of nodes");
    inv.nodes
        .iter()
        .map(|n| ReplayNode {
            name: n.name.clone(),
            cpu_milli: n.cpu_milli,
            memory_bytes: n.memory_bytes,
            mig_create: n.capabilities.is_none_or(|c| c.mig_manage),
            gpus: n.gpus.iter().map(gpu_from_pb).collect(),
        })
        .collect()
}

fn describe(o: &Outcome) -> String {
    match o {
        Ok(a) => format!("{} {:?} mig start {:?}", a.node, a.gpus, a.mig_start),
        Err(e) => format!("unplaceable: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_placements_match_the_offline_replay_request_by_request() {
    let seed: u64 = std::env::var("GREENSLICE_LIVE_REPLAY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    let offline_policy =
        std::env::var("GREENSLICE_LIVE_REPLAY_POLICY").unwrap_or_else(|_| POLICY.to_string());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("controller.log");
    let config = dir.path().join("controller.toml");
    // No idle reclaim: nothing but the sequence releases slices.
    std::fs::write(
        &config,
        format!("policy = \"{POLICY}\"\nledger = \"memory\"\n[idle]\nenabled = false\n"),
    )
    .unwrap();
    let port = free_port();
    let mut ctl = start_controller(port, &["--config", config.to_str().unwrap()], &log).await;
    let url = ctl.url.clone();
    let specs = nodes();
    let agents = harness::start_agents(std::slice::from_ref(&url), &specs).unwrap();
    wait_settled(&url, specs.len(), Duration::from_secs(30))
        .await
        .unwrap();

    let view = idle_view(&registered(&url).await);
    assert_eq!(view.nodes.len(), specs.len());
    let steps = seeded_steps(&view, seed, REQUESTS);
    let offline = live_replay::replay(
        policy_by_name(&offline_policy).unwrap().as_ref(),
        view,
        &steps,
    );
    assert_eq!(offline.len(), REQUESTS);

    let started = Instant::now();
    let mut c = TenantServiceClient::connect(url.clone()).await.unwrap();
    let mut slice_of: Vec<Option<String>> = Vec::new();
    let mut live: Vec<Outcome> = Vec::new();
    for step in &steps {
        match step {
            Step::Request(req) => {
                let i = live.len();
                let answer = c
                    .request_slice(pb::RequestSliceRequest {
                        tenant: "t".into(),
                        spec: Some(spec_to_pb(&req.spec)),
                        idempotency_key: String::new(),
                        host_cpu_milli: req.cpu_milli,
                        host_memory_bytes: req.memory_bytes,
                    })
                    .await;
                let (outcome, id) = match answer {
                    Ok(r) => {
                        let s = r.into_inner().slice.expect("a slice");
                        let a = Assigned {
                            node: s.node.clone(),
                            gpus: s.gpu_uuids.clone(),
                            mig_start: s.mig.as_ref().map(|m| m.start as u8),
                        };
                        (Ok(a), Some(s.id))
                    }
                    Err(e)
                        if matches!(
                            e.code(),
                            Code::ResourceExhausted | Code::FailedPrecondition
                        ) =>
                    {
                        (Err(e.message().to_string()), None)
                    }
                    Err(e) => panic!(
                        "request {i} ({}): {e}; log {}",
                        req.spec.describe(),
                        log.display()
                    ),
                };
                let expected = &offline[i];
                let same = match (&outcome, expected) {
                    (Ok(a), Ok(b)) => a == b,
                    (Err(m), Err(u)) => *m == u.to_string(),
                    _ => false,
                };
                let live_said = match &outcome {
                    Ok(a) => describe(&Ok(a.clone())),
                    Err(m) => format!("unplaceable: {m}"),
                };
                assert!(
                    same,
                    "request {i} of seed {seed} ({}, model {:?}): live {live_said}; offline ({offline_policy}) {}",
                    req.spec.describe(),
                    req.spec.gpu_model,
                    describe(expected),
                );
                live.push(expected.clone());
                slice_of.push(id);
            }
            Step::Release { request } => {
                if let Some(id) = slice_of[*request].take() {
                    let r = c
                        .release_slice(pb::ReleaseSliceRequest {
                            slice_id: id.clone(),
                        })
                        .await
                        .unwrap_or_else(|e| panic!("release {id}: {e}"))
                        .into_inner();
                    let state = r.slice.map(|s| s.state);
                    assert_eq!(state, Some(pb::SliceState::Released as i32), "{id}");
                }
            }
        }
    }
    let elapsed = started.elapsed();

    // Not a trivial agreement: some requests fit nowhere, placed ones spread over every node, and
    // each kind and the model constraints were placed.
    let failed = live.iter().filter(|o| o.is_err()).count();
    let used: std::collections::BTreeSet<&str> =
        live.iter().flatten().map(|a| a.node.as_str()).collect();
    let placed_mig = live
        .iter()
        .flatten()
        .filter(|a| a.mig_start.is_some())
        .count();
    let placed_multi = live.iter().flatten().filter(|a| a.gpus.len() > 1).count();
    eprintln!(
        "{REQUESTS} requests agreed in {elapsed:?}: {failed} unplaceable, {placed_mig} MIG, {placed_multi} multi-GPU"
    );
    assert!(failed > 50 && failed < REQUESTS / 2, "{failed} unplaceable");
    assert_eq!(used.len(), specs.len());
    assert!(placed_mig > 100 && placed_multi > 50);

    // And the simulated hardware holds exactly what the controller says is live.
    let slices = all_slices(&url).await;
    let (held, gpus) = hardware(&agents);
    check_not_oversubscribed(&gpus).unwrap();
    check_ledger_matches_hardware(&slices, &held).unwrap();
    drop(agents);
    ctl.kill().await;
}
