//! Unit tests of `live_replay`: the replay is deterministic, and it tells policies and target
//! workloads apart, so a live path that placed with another policy or without the history would
//! disagree with it.

use super::*;
use crate::placement::policies::{PolicyKind, ScoredPolicy, live_default_workload};
use crate::placement::{default_policy, policy_by_name};

fn node(i: usize, model: GpuModel, mig_gpus: u32) -> ReplayNode {
    let name = format!("node-{i:02}");
    ReplayNode {
        cpu_milli: 112_000,
        memory_bytes: 2048 * GIB,
        mig_create: true,
        gpus: (0..8u32)
            .map(|g| Gpu {
                uuid: format!("GPU-{name}-{g}"),
                index: g,
                model: model.clone(),
                memory_bytes: model.memory_bytes(),
                mig_capable: true,
                mig_enabled: g < mig_gpus,
                pci_bus_id: String::new(),
                power_limit_mw: 0,
                healthy: true,
                mig_instances: Vec::new(),
                shares: Vec::new(),
                whole_slice_id: None,
            })
            .collect(),
        name,
    }
}

/// Six nodes of four models, two MIG GPUs on four of them (listed out of name order).
fn cluster() -> ClusterView {
    let models = [
        GpuModel::H100Sxm5_80Gb,
        GpuModel::A100Sxm4_40Gb,
        GpuModel::H200Sxm5_141Gb,
        GpuModel::A100Sxm4_80Gb,
    ];
    let nodes: Vec<ReplayNode> = (0..6)
        .rev()
        .map(|i| node(i, models[i % 4].clone(), if i < 4 { 2 } else { 0 }))
        .collect();
    idle_view(&nodes)
}

fn outcomes(policy: &dyn Policy, seed: u64) -> Vec<Outcome> {
    let view = cluster();
    let steps = seeded_steps(&view, seed, 2000);
    replay(policy, view, &steps)
}

/// Requests on which two runs disagree.
fn differences(a: &[Outcome], b: &[Outcome]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn the_idle_view_is_in_node_name_order() {
    let names: Vec<String> = cluster().nodes.iter().map(|n| n.name.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn sequences_are_seeded_and_mix_every_kind() {
    let view = cluster();
    let steps = seeded_steps(&view, 7, 2000);
    assert_eq!(steps, seeded_steps(&view, 7, 2000));
    assert_ne!(steps, seeded_steps(&view, 8, 2000));
    let reqs: Vec<&Request> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Request(r) => Some(r),
            Step::Release { .. } => None,
        })
        .collect();
    assert_eq!(reqs.len(), 2000);
    let count = |f: &dyn Fn(&Request) -> bool| reqs.iter().filter(|r| f(r)).count();
    let whole = count(&|r| matches!(r.spec.kind, SliceKind::Whole { .. }));
    let mig = count(&|r| matches!(r.spec.kind, SliceKind::Mig { .. }));
    let share = count(&|r| matches!(r.spec.kind, SliceKind::Share { .. }));
    assert!(
        whole > 400 && mig > 400 && share > 600,
        "{whole} {mig} {share}"
    );
    assert!(count(&|r| r.spec.gpu_model.is_some()) > 100);
    assert!(count(&|r| r.cpu_milli > 0) > 1000);
    let releases = steps.len() - reqs.len();
    assert!(releases > 800, "{releases}");
}

#[test]
fn releasing_everything_leaves_the_idle_view() {
    let view = cluster();
    let mut steps = seeded_steps(&view, 3, 300);
    let n = steps
        .iter()
        .filter(|s| matches!(s, Step::Request(_)))
        .count();
    // Everything, again: a second release of one request does nothing.
    steps.extend((0..n).map(|request| Step::Release { request }));
    let policy = default_policy();
    let mut held: Vec<Option<(Request, Placement)>> = Vec::new();
    let mut v = view.clone();
    for s in &steps {
        match s {
            Step::Request(r) => {
                let p = policy.place(&v, r).ok();
                if let Some(p) = &p {
                    hold(&mut v, r, p);
                }
                held.push(p.map(|p| (r.clone(), p)));
            }
            Step::Release { request } => {
                if let Some((r, p)) = held[*request].take() {
                    free(&mut v, &r, &p);
                }
            }
        }
    }
    assert!(held.iter().all(Option::is_none));
    assert_eq!(v, view);
}

#[test]
fn the_same_policy_and_sequence_give_the_same_placements() {
    let a = outcomes(default_policy().as_ref(), 11);
    let b = outcomes(default_policy().as_ref(), 11);
    assert_eq!(differences(&a, &b), 0);
    // Not trivial: some requests fit nowhere, and the placed ones spread over every node.
    let failed = a.iter().filter(|o| o.is_err()).count();
    eprintln!("{failed} of 2000 unplaceable");
    assert!(failed > 100 && failed < 1500, "{failed} unplaceable");
    let nodes: std::collections::BTreeSet<&str> =
        a.iter().flatten().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes.len(), 6);
}

#[test]
fn another_policy_places_differently() {
    let default = outcomes(default_policy().as_ref(), 11);
    for name in ["fgd", "best-fit", "first-fit"] {
        let other = outcomes(policy_by_name(name).unwrap().as_ref(), 11);
        let d = differences(&default, &other);
        eprintln!("{name}: {d} of 2000 placed differently");
        assert!(
            d > 100,
            "{name}: only {d} of 2000 requests placed differently"
        );
    }
}

#[test]
fn an_unobserved_history_places_differently() {
    // The default policy measuring against its prior for ever, as if no request were observed.
    let fixed = ScoredPolicy::with_workload(PolicyKind::DEFAULT, live_default_workload());
    let learnt = ScoredPolicy::new(PolicyKind::DEFAULT);
    let d = differences(&outcomes(&learnt, 11), &outcomes(&fixed, 11));
    eprintln!("{d} of 2000 placed differently");
    assert!(d > 20, "only {d} of 2000 requests placed differently");
}

#[test]
fn the_host_cpu_of_requests_changes_placements() {
    // A live path that dropped the requests' CPU (as the controller did before the API carried
    // it) would place such a sequence differently.
    let view = cluster();
    let steps = seeded_steps(&view, 11, 2000);
    let without: Vec<Step> = steps
        .iter()
        .map(|s| match s {
            Step::Request(r) => Step::Request(Request {
                cpu_milli: 0,
                memory_bytes: 0,
                ..r.clone()
            }),
            other => other.clone(),
        })
        .collect();
    let a = replay(default_policy().as_ref(), view.clone(), &steps);
    let b = replay(default_policy().as_ref(), view, &without);
    let d = differences(&a, &b);
    eprintln!("{d} of 2000 placed differently");
    assert!(d > 20, "only {d} of 2000 requests placed differently");
}

#[test]
fn versioned_placement_agrees_with_the_plain_replay() {
    // What the controller calls (place_versioned, reusing unchanged nodes' work) and what the
    // offline replay calls (place) give the same answers on a larger, busier cluster.
    let view = idle_view(&dgx_nodes(40));
    let steps = seeded_steps_held(&view, 5, 3000, 700);
    let plain = replay(default_policy().as_ref(), view.clone(), &steps);
    let (versioned, times) = replay_timed(default_policy().as_ref(), view, &steps);
    assert_eq!(times.len(), plain.len());
    assert_eq!(differences(&plain, &versioned), 0);
    let failed = plain.iter().filter(|o| o.is_err()).count();
    assert!(failed > 100, "{failed}: the cluster fills");
}
