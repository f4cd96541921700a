//! What a node may do, through the controller: an agent that reports no capabilities (older than
//! them) is treated as before, and shares on a node without MPS say their limits are advisory.

use std::sync::{Arc, Mutex};

use greenslice_core::clock::ManualClock;
use greenslice_core::inventory::MigInstance;
use greenslice_proto::v1 as pb;

use super::Controller;
use super::retention_tests::spec;
use super::retention_tests::{T0, controller, registration, retention, serve_commands};
use crate::agents::{AgentAction, CommandOutcome};
use crate::ledger::MemoryLedger;

/// The commands a fake node received, by kind.
type Seen = Arc<Mutex<Vec<&'static str>>>;

/// Registers node `n1` (one H100, in MIG mode when `mig`) with `caps`, answering every command as
/// an agent would (a created instance is described), and recording what it was asked.
fn node(c: &Arc<Controller>, mig: bool, caps: Option<pb::NodeCapabilities>) -> Seen {
    node_with(c, mig, caps, Vec::new()).1
}

/// [`node`] whose GPU holds `instances`; also returns the reconcile plan of the registration.
fn node_with(
    c: &Arc<Controller>,
    mig: bool,
    caps: Option<pb::NodeCapabilities>,
    instances: Vec<pb::MigInstance>,
) -> (super::Reconcile, Seen) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    c.agents.connect("n1", tx);
    let plan = c.register_node(&registration(pb::Register {
        node: "n1".into(),
        gpus: vec![pb::GpuInfo {
            uuid: "GPU-n1-0".into(),
            model: "H100-SXM5-80GB".into(),
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: mig,
            healthy: true,
            mig_instances: instances,
            ..Default::default()
        }],
        capabilities: caps,
        ..Default::default()
    }));
    let seen: Seen = Arc::default();
    let log = seen.clone();
    serve_commands(c, rx, move |action| {
        let mut result = CommandOutcome {
            ok: true,
            ..Default::default()
        };
        let kind = match action {
            AgentAction::CreateMig {
                profile,
                start,
                slice_id,
                ..
            } => {
                result.mig = Some(MigInstance {
                    gpu_instance_id: 1,
                    profile: profile.clone(),
                    start: u8::try_from(*start).unwrap(),
                    size: 1,
                    mig_uuid: "MIG-1".into(),
                    slice_id: Some(slice_id.clone()),
                });
                "create_mig"
            }
            AgentAction::ClaimMig {
                gpu_instance_id,
                slice_id,
                ..
            } => {
                result.mig = Some(MigInstance {
                    gpu_instance_id: *gpu_instance_id,
                    profile: "3g.40gb".into(),
                    start: 4,
                    size: 4,
                    mig_uuid: "MIG-free".into(),
                    slice_id: Some(slice_id.clone()),
                });
                "claim_mig"
            }
            AgentAction::ReleaseMig { .. } => "release_mig",
            AgentAction::DestroyMig { .. } => "destroy_mig",
            AgentAction::SetShare { .. } => "set_share",
            _ => "other",
        };
        log.lock().unwrap().push(kind);
        result
    });
    (plan, seen)
}

async fn started() -> Arc<Controller> {
    let clock = ManualClock::new(T0);
    controller(
        Arc::new(MemoryLedger::default()),
        &clock,
        retention(std::time::Duration::from_secs(600), 1000),
    )
    .await
}

fn mig(profile: &str) -> pb::SliceSpec {
    pb::SliceSpec {
        kind: Some(pb::slice_spec::Kind::Mig(pb::MigSlice {
            profile: profile.into(),
        })),
        ..Default::default()
    }
}

fn share() -> pb::SliceSpec {
    pb::SliceSpec {
        kind: Some(pb::slice_spec::Kind::Share(pb::ShareSlice {
            compute_fraction: 0.25,
            memory_bytes: 1 << 30,
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_agent_without_capabilities_is_treated_as_before() {
    let c = started().await;
    let seen = node(&c, true, None);
    let n = c.with_state(|st| st.nodes["n1"].clone());
    assert_eq!(n.capabilities, None);
    assert!(n.may_create_mig() && n.mps());
    let s = c
        .request("team-a", &spec(mig("1g.10gb")), "")
        .await
        .unwrap();
    assert_eq!(s.slice.mig.unwrap().gpu_instance_id, Some(1));
    assert_eq!(*seen.lock().unwrap(), vec!["create_mig"]);
    let inv = crate::api::ops::inventory(&c, &Default::default()).expect("inventory");
    assert_eq!(inv.nodes[0].capabilities, None, "shown as unknown");
}

#[tokio::test]
async fn a_read_only_node_is_asked_for_no_new_instance() {
    let c = started().await;
    let seen = node(
        &c,
        true,
        Some(pb::NodeCapabilities {
            mig_manage: false,
            mps: true,
        }),
    );
    let e = c
        .request("team-a", &spec(mig("1g.10gb")), "")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::ResourceExhausted
    );
    assert!(
        msg.contains("n1") && msg.contains("mig.manage = false"),
        "{msg}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing was sent to the node"
    );
    assert_eq!(c.with_state(|st| st.live_slices().count()), 0);
}

#[tokio::test]
async fn shares_on_a_node_without_mps_say_their_limits_are_advisory() {
    let c = started().await;
    node(
        &c,
        false,
        Some(pb::NodeCapabilities {
            mig_manage: true,
            mps: false,
        }),
    );
    let s = c.request("team-a", &spec(share()), "").await.unwrap().slice;
    assert_eq!(
        s.env.get("GREENSLICE_SHARE_LIMITS").map(String::as_str),
        Some("advisory")
    );

    let c = started().await;
    node(
        &c,
        false,
        Some(pb::NodeCapabilities {
            mig_manage: true,
            mps: true,
        }),
    );
    let s = c.request("team-a", &spec(share()), "").await.unwrap().slice;
    assert_eq!(s.env.get("GREENSLICE_SHARE_LIMITS"), None);
}

/// A free 3g.40gb at slice 4, GPU instance 3, as a read-only node reports it.
fn free_3g() -> pb::MigInstance {
    pb::MigInstance {
        gpu_instance_id: 3,
        profile: "3g.40gb".into(),
        start: 4,
        size: 4,
        mig_uuid: "MIG-free".into(),
        slice_id: String::new(),
    }
}

const READ_ONLY: Option<pb::NodeCapabilities> = Some(pb::NodeCapabilities {
    mig_manage: false,
    mps: true,
});

#[tokio::test]
async fn a_lent_instance_is_lent_again_after_the_agent_forgot_it_and_given_back_on_release() {
    let c = started().await;
    let (_, seen) = node_with(&c, true, READ_ONLY, vec![free_3g()]);
    let s = c
        .request("team-a", &spec(mig("3g.40gb")), "")
        .await
        .unwrap()
        .slice;
    let m = s.mig.clone().unwrap();
    assert!(m.lent);
    assert_eq!(m.gpu_instance_id, Some(3));
    assert_eq!(*seen.lock().unwrap(), vec!["claim_mig"]);

    // The agent restarts: lendings live in its memory, so it reports the instance unowned.
    let (plan, seen) = node_with(&c, true, READ_ONLY, vec![free_3g()]);
    assert_eq!(plan.relend, vec![s.id.clone()]);
    assert!(plan.lost.is_empty(), "the slice still has its instance");
    c.reconcile(plan).await;
    assert_eq!(*seen.lock().unwrap(), vec!["claim_mig"]);

    // Released: given back, never destroyed.
    c.release(&s.id, "done").await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["claim_mig", "release_mig"]);
    // The mirror shows it free again, so the next request is lent it.
    let again = c
        .request("team-a", &spec(mig("3g.40gb")), "")
        .await
        .unwrap()
        .slice;
    assert_eq!(again.mig.unwrap().gpu_instance_id, Some(3));
}
