//! Dynamic MIG re-layout without draining: when a MIG request fits nowhere, but destroying some free
//! instances on one GPU (instances no live slice owns and nothing runs on) would make room, destroy
//! exactly those and let placement create the requested profile. An instance in use is never touched:
//! only instances in the free list are candidates, and the controller checks again, under its state
//! lock, that no live slice owns an instance before it sends the destroy command.
//!
//! This is the pure part (what to destroy); the engine's `make_room` carries it out.

use greenslice_core::gpu::GpuModel;
use greenslice_core::mig::{self, Placed};
use greenslice_core::sample::AttributedSample;

use crate::model::state::ClusterState;

/// An instance that may be destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeInstance {
    pub gpu_instance_id: u32,
    pub placed: Placed,
}

/// One MIG GPU as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MigGpu {
    pub node: String,
    pub uuid: String,
    pub model: GpuModel,
    /// Healthy, on a schedulable node.
    pub usable: bool,
    /// Instances owned by live slices or in use: never destroyed.
    pub kept: Vec<Placed>,
    /// Instances that may be destroyed.
    pub free: Vec<FreeInstance>,
}

/// Instances to destroy on one GPU so that the profile fits at `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub node: String,
    pub gpu: String,
    /// GPU instance ids to destroy (all from the GPU's free list).
    pub destroy: Vec<u32>,
    pub start: u8,
}

fn overlaps(model: &GpuModel, a: &Placed, start: u8, size: u8) -> bool {
    mig::profile(model, &a.profile)
        .is_some_and(|p| a.start < start + size && start < a.start + p.size)
}

/// The cheapest plan (fewest instances destroyed, then first GPU in order) to fit `profile`, or None.
/// Pure.
pub fn plan(gpus: &[MigGpu], profile: &str, model: Option<&GpuModel>) -> Option<Plan> {
    let mut best: Option<Plan> = None;
    for g in gpus {
        if !g.usable || g.free.is_empty() || model.is_some_and(|m| *m != g.model) {
            continue;
        }
        let Some(p) = mig::profile(&g.model, profile) else {
            continue;
        };
        for &start in p.starts {
            // First try destroying only the free instances in the way; then all free ones.
            let in_way: Vec<&FreeInstance> = g
                .free
                .iter()
                .filter(|f| overlaps(&g.model, &f.placed, start, p.size))
                .collect();
            let others = g
                .free
                .iter()
                .filter(|f| !overlaps(&g.model, &f.placed, start, p.size))
                .map(|f| f.placed.clone());
            let with_others: Vec<Placed> = g.kept.iter().cloned().chain(others).collect();
            let destroy: Vec<u32> =
                if mig::check_create(&g.model, &with_others, profile, start).is_ok() {
                    in_way.iter().map(|f| f.gpu_instance_id).collect()
                } else if mig::check_create(&g.model, &g.kept, profile, start).is_ok() {
                    g.free.iter().map(|f| f.gpu_instance_id).collect()
                } else {
                    continue;
                };
            if destroy.is_empty() {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| destroy.len() < b.destroy.len())
            {
                best = Some(Plan {
                    node: g.node.clone(),
                    gpu: g.uuid.clone(),
                    destroy,
                    start,
                });
            }
        }
    }
    best
}

/// Longest age of a GPU's newest sample for its instances to be judged free, ms.
pub const FRESH_SAMPLE_MS: i64 = 2 * 60_000;

/// The planner's view of the cluster's MIG GPUs. An instance is free when no live slice owns it and
/// the GPU's newest sample (at most [`FRESH_SAMPLE_MS`] old) shows nothing running on it: for an
/// instance greenslice made, no process and no activity of its slice id; for one it did not make
/// (no slice id, so its processes cannot be told apart), no compute process on the GPU at all.
pub fn mig_gpus(
    st: &ClusterState,
    latest: &dyn Fn(&str) -> Option<AttributedSample>,
    now_ms: i64,
) -> Vec<MigGpu> {
    let mut out = Vec::new();
    // A node that may not destroy instances is never re-laid out.
    for n in st.nodes.values().filter(|n| n.may_create_mig()) {
        for g in n.gpus.iter().filter(|g| g.mig_enabled) {
            let live: Vec<_> = st
                .live_on_node(&n.name)
                .filter(|s| s.gpus.contains(&g.uuid))
                .filter_map(|s| s.mig.as_ref())
                .collect();
            let sample = latest(&g.uuid).filter(|s| now_ms - s.at_unix_ms <= FRESH_SAMPLE_MS);
            let mut kept: Vec<Placed> = live
                .iter()
                .map(|m| Placed {
                    profile: m.profile.clone(),
                    start: m.start,
                })
                .collect();
            let mut free = Vec::new();
            for inst in &g.mig_instances {
                let owned = live.iter().any(|m| {
                    m.gpu_instance_id == Some(inst.gpu_instance_id)
                        || (m.gpu_instance_id.is_none() && m.start == inst.start)
                });
                if owned {
                    continue;
                }
                let idle = sample.as_ref().is_some_and(|s| match &inst.slice_id {
                    Some(id) => !s
                        .slices
                        .iter()
                        .any(|a| a.slice_id == *id && (a.processes > 0 || a.sm_pct > 0.0)),
                    None => s.no_compute_processes,
                });
                let placed = Placed {
                    profile: inst.profile.clone(),
                    start: inst.start,
                };
                if idle {
                    free.push(FreeInstance {
                        gpu_instance_id: inst.gpu_instance_id,
                        placed,
                    });
                } else {
                    kept.push(placed);
                }
            }
            out.push(MigGpu {
                node: n.name.clone(),
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                usable: g.healthy && n.connected,
                kept,
                free,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: GpuModel = GpuModel::H100Sxm5_80Gb;

    fn at(profile: &str, start: u8) -> Placed {
        Placed {
            profile: profile.into(),
            start,
        }
    }

    fn free(gi: u32, profile: &str, start: u8) -> FreeInstance {
        FreeInstance {
            gpu_instance_id: gi,
            placed: at(profile, start),
        }
    }

    fn gpu(kept: Vec<Placed>, free: Vec<FreeInstance>) -> MigGpu {
        MigGpu {
            node: "n".into(),
            uuid: "g".into(),
            model: H100,
            usable: true,
            kept,
            free,
        }
    }

    #[test]
    fn destroys_only_the_free_instances_in_the_way() {
        // In use: 3g at 4. Free: 1g at 0, 1g at 1, 1g at 2, 1g at 3. A 2g fits at 0 or 2.
        let g = gpu(
            vec![at("3g.40gb", 4)],
            vec![
                free(1, "1g.10gb", 0),
                free(2, "1g.10gb", 1),
                free(3, "1g.10gb", 2),
                free(4, "1g.10gb", 3),
            ],
        );
        let p = plan(&[g], "2g.20gb", None).unwrap();
        assert_eq!(p.destroy, vec![1, 2]);
        assert_eq!(p.start, 0);
    }

    #[test]
    fn never_plans_over_kept_instances() {
        let g = gpu(vec![at("4g.40gb", 0)], vec![free(5, "3g.40gb", 4)]);
        assert!(plan(std::slice::from_ref(&g), "7g.80gb", None).is_none());
        assert_eq!(plan(&[g], "2g.20gb", None).unwrap().destroy, vec![5]);
    }

    #[test]
    fn no_plan_without_free_instances_or_for_another_model() {
        let g = gpu(vec![at("7g.80gb", 0)], vec![]);
        assert!(plan(&[g], "1g.10gb", None).is_none());
        let g = gpu(vec![], vec![free(1, "7g.80gb", 0)]);
        assert!(
            plan(
                std::slice::from_ref(&g),
                "1g.10gb",
                Some(&GpuModel::A100Sxm4_40Gb)
            )
            .is_none()
        );
        assert!(plan(&[g], "1g.10gb", Some(&H100)).is_some());
    }
}
