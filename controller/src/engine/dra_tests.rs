//! ResourceClaims through the engine: pinned slices land exactly where the allocation says,
//! retries answer the first preparation, a taken place is refused and nothing is left half made,
//! unprepare releases, and only the claim may release its slices.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use greenslice_core::clock::ManualClock;
use greenslice_core::inventory::MigInstance;
use greenslice_core::slice::{SliceKind, SliceSpec, SliceState};
use greenslice_proto::v1 as pb;

use super::retention_tests::{T0, controller, registration, retention, serve_commands};
use super::{ClaimDevice, Controller};
use crate::agents::{AgentAction, CommandOutcome};
use crate::ledger::MemoryLedger;
use crate::placement::Pin;

const UID: &str = "5f0c9a64-1b7e-4a57-9d43-2f1d7b0c8e11";

/// Node `n1`: GPU 0 in MIG mode, GPUs 1 and 2 not, all H100. The fake agent creates MIG instances
/// as asked (size from the profile table), fails creation at memory slice 6 (when `fail_at_6`),
/// and records every command.
fn node(c: &Arc<Controller>) -> Arc<Mutex<Vec<String>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    c.agents.connect("n1", tx);
    c.register_node(&registration(pb::Register {
        node: "n1".into(),
        gpus: (0..3u32)
            .map(|i| pb::GpuInfo {
                uuid: format!("GPU-{i}"),
                index: i,
                model: "H100-SXM5-80GB".into(),
                memory_bytes: 80 << 30,
                mig_capable: true,
                mig_enabled: i == 0,
                healthy: true,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let gi = Arc::new(AtomicU32::new(1));
    serve_commands(c, rx, move |action| {
        let mut out = CommandOutcome {
            ok: true,
            ..Default::default()
        };
        let line = match action {
            AgentAction::CreateMig {
                profile,
                start,
                slice_id,
                ..
            } => {
                if *start == 6 {
                    out.ok = false;
                    out.error = "the driver refused".into();
                } else {
                    let model = greenslice_core::gpu::GpuModel::H100Sxm5_80Gb;
                    let size = greenslice_core::mig::profile(&model, profile).map_or(1, |p| p.size);
                    let id = gi.fetch_add(1, Ordering::Relaxed);
                    out.mig = Some(MigInstance {
                        gpu_instance_id: id,
                        profile: profile.clone(),
                        start: u8::try_from(*start).unwrap_or(0),
                        size,
                        mig_uuid: format!("MIG-{id}"),
                        slice_id: Some(slice_id.clone()),
                    });
                }
                format!("create {profile}@{start}")
            }
            AgentAction::DestroyMig {
                gpu_instance_id, ..
            } => format!("destroy {gpu_instance_id}"),
            AgentAction::AssignGpu { gpu_uuid, .. } => format!("assign {gpu_uuid}"),
            AgentAction::UnassignGpu { gpu_uuid, .. } => format!("unassign {gpu_uuid}"),
            AgentAction::SetShare { gpu_uuid, .. } => format!("share {gpu_uuid}"),
            AgentAction::ClearShare { gpu_uuid, .. } => format!("clear {gpu_uuid}"),
            other => format!("{other:?}"),
        };
        log.lock().unwrap().push(line);
        out
    });
    seen
}

fn device(kind: SliceKind, gpu: &str, start: Option<u8>) -> ClaimDevice {
    ClaimDevice {
        spec: SliceSpec {
            kind,
            gpu_model: None,
            slice_class: None,
        },
        pin: Pin {
            node: "n1".into(),
            gpu_uuid: gpu.into(),
            mig_start: start,
        },
    }
}

fn mig(profile: &str, start: u8) -> ClaimDevice {
    device(
        SliceKind::Mig {
            profile: profile.into(),
        },
        "GPU-0",
        Some(start),
    )
}

fn share(gpu: &str, fraction: f64) -> ClaimDevice {
    device(
        SliceKind::Share {
            compute_fraction: fraction,
            memory_bytes: 20 << 30,
        },
        gpu,
        None,
    )
}

async fn setup() -> (Arc<Controller>, Arc<Mutex<Vec<String>>>) {
    let clock = ManualClock::new(T0);
    let c = controller(
        Arc::new(MemoryLedger::default()),
        &clock,
        retention(std::time::Duration::from_secs(3600), 1000),
    )
    .await;
    let seen = node(&c);
    (c, seen)
}

#[tokio::test]
async fn a_claim_lands_where_its_allocation_says_and_a_retry_answers_the_same() {
    let (c, seen) = setup().await;
    let devices = vec![
        mig("3g.40gb", 4),
        device(SliceKind::Whole { count: 1 }, "GPU-2", None),
        share("GPU-1", 0.25),
    ];
    let first = c.prepare_claim(UID, "team-a", "c", &devices).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(
        first
            .iter()
            .all(|s| s.state == SliceState::Active && s.tenant == "team-a")
    );
    // Exactly where the scheduler put them, not where the policy would have (3g.40gb at 0).
    assert_eq!(first[0].mig.as_ref().map(|m| m.start), Some(4));
    assert_eq!(first[1].gpus, vec!["GPU-2".to_string()]);
    assert_eq!(first[2].gpus, vec!["GPU-1".to_string()]);
    let again = c.prepare_claim(UID, "team-a", "c", &devices).await.unwrap();
    let ids =
        |v: &[crate::model::slice::SliceRecord]| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&first), "a retry makes nothing new");
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("create"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_taken_place_is_refused_and_nothing_is_left_half_made() {
    let (c, seen) = setup().await;
    c.prepare_claim(UID, "team-a", "c", &[mig("4g.40gb", 0)])
        .await
        .unwrap();
    // Another claim: a share that fits, then a partition overlapping the first claim's.
    let other = "9d2e7c55-0000-4000-8000-000000000002";
    let err = c
        .prepare_claim(
            other,
            "team-b",
            "c",
            &[share("GPU-1", 0.5), mig("3g.40gb", 0)],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no room"), "{err}");
    let live: Vec<_> = c.list("team-b", "", false);
    assert!(live.is_empty(), "the share was undone: {live:?}");
    assert!(seen.lock().unwrap().iter().any(|l| l == "clear GPU-1"));
    // A device the agent cannot make fails the claim the same way.
    let third = "9d2e7c55-0000-4000-8000-000000000003";
    let err = c
        .prepare_claim(
            third,
            "team-c",
            "c",
            &[share("GPU-1", 0.5), mig("1g.10gb", 6)],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(c.list("team-c", "", false).is_empty());
    // The whole-GPU place of a share is taken while the share lives.
    c.prepare_claim(third, "team-c", "c", &[share("GPU-1", 0.5)])
        .await
        .unwrap();
    let fourth = "9d2e7c55-0000-4000-8000-000000000004";
    let whole = device(SliceKind::Whole { count: 1 }, "GPU-1", None);
    assert!(
        c.prepare_claim(fourth, "team-d", "c", &[whole])
            .await
            .is_err()
    );
    // A GPU of another node, or none at all.
    let ghost = device(SliceKind::Whole { count: 1 }, "GPU-9", None);
    let err = c
        .prepare_claim(fourth, "team-d", "c", &[ghost])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not on node n1"), "{err}");
}

#[tokio::test]
async fn unprepare_releases_and_only_the_claim_may() {
    let (c, seen) = setup().await;
    let made = c
        .prepare_claim(
            UID,
            "team-a",
            "c",
            &[mig("2g.20gb", 2), share("GPU-1", 0.1)],
        )
        .await
        .unwrap();
    let err = c.release(&made[0].id, "tenant asked").await.unwrap_err();
    assert!(err.to_string().contains("ResourceClaim"), "{err}");
    let released = c.unprepare_claim("n1", UID).await.unwrap();
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|s| s.state == SliceState::Released));
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("destroy"))
    );
    // Idempotent.
    assert!(c.unprepare_claim("n1", UID).await.unwrap().is_empty());
    // Prepared again (the same allocation): new slices, not the released ones.
    let again = c
        .prepare_claim(
            UID,
            "team-a",
            "c",
            &[mig("2g.20gb", 2), share("GPU-1", 0.1)],
        )
        .await
        .unwrap();
    assert!(again.iter().all(|s| s.state == SliceState::Active));
    assert!(again.iter().all(|s| made.iter().all(|m| m.id != s.id)));
}
