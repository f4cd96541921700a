//! Unit tests of `policies`.

use super::*;
use crate::placement::GpuView;
use greenslice_core::GIB;
use greenslice_core::gpu::GpuModel;
use greenslice_core::slice::SliceSpec;
use proptest::prelude::*;

const H100: GpuModel = GpuModel::H100Sxm5_80Gb;

fn gpu(used_milli: u32, used_gib: u64) -> GpuView {
    GpuView {
        uuid: String::new(),
        model: H100,
        healthy: true,
        mig_enabled: false,
        memory_bytes: 80 * GIB,
        used_milli,
        used_memory_bytes: used_gib * GIB,
        exclusive: false,
        mig_layout: Vec::new(),
        free_instances: Vec::new(),
    }
}

fn mig_gpu(layout: &[(&str, u8)]) -> GpuView {
    GpuView {
        mig_enabled: true,
        mig_layout: layout
            .iter()
            .map(|(p, s)| mig::Placed {
                profile: p.to_string(),
                start: *s,
            })
            .collect(),
        ..gpu(0, 0)
    }
}

fn node(name: &str, gpus: Vec<GpuView>) -> NodeView {
    NodeView {
        name: name.into(),
        schedulable: true,
        mig_create: true,
        cpu_milli: 0,
        cpu_used_milli: 0,
        memory_bytes: 0,
        memory_used_bytes: 0,
        gpus,
    }
}

fn req(kind: SliceKind) -> Request {
    Request {
        spec: SliceSpec {
            kind,
            gpu_model: None,
            slice_class: None,
        },
        cpu_milli: 0,
        memory_bytes: 0,
    }
}

fn share(f: f64, gib: u64) -> Request {
    req(SliceKind::Share {
        compute_fraction: f,
        memory_bytes: gib * GIB,
    })
}

fn mig(profile: &str) -> Request {
    req(SliceKind::Mig {
        profile: profile.into(),
    })
}

/// A node that may not create MIG instances, whose one MIG GPU holds `free` (free instances).
fn read_only(name: &str, free: &[(&str, u8)]) -> NodeView {
    let mut g = mig_gpu(free);
    g.free_instances = g.mig_layout.clone();
    NodeView {
        mig_create: false,
        ..node(name, vec![g])
    }
}

fn every_policy() -> Vec<Box<dyn Policy>> {
    policy_names()
        .into_iter()
        .map(|n| policy_by_name(n).unwrap())
        .collect()
}

#[test]
fn a_read_only_node_lends_its_free_instance_of_the_profile() {
    let view = ClusterView {
        nodes: vec![read_only("ro", &[("1g.10gb", 0), ("3g.40gb", 4)])],
    };
    for p in every_policy() {
        let got = p.place(&view, &mig("3g.40gb")).unwrap();
        assert_eq!((got.node, got.mig_start), (0, Some(4)), "{}", p.name());
        let got = p.place(&view, &mig("1g.10gb")).unwrap();
        assert_eq!(got.mig_start, Some(0), "{}", p.name());
    }
}

#[test]
fn a_new_instance_is_never_placed_on_a_read_only_node() {
    // The read-only node has room for a 2g.20gb but no free one: only the managing node fits.
    let view = ClusterView {
        nodes: vec![
            read_only("a-ro", &[("3g.40gb", 4)]),
            node("b-managed", vec![mig_gpu(&[("4g.40gb", 0)])]),
        ],
    };
    for p in every_policy() {
        let got = p.place(&view, &mig("2g.20gb")).unwrap();
        assert_eq!(got.node, 1, "{}", p.name());
    }
    // Without the managing node it is refused, and the message says why.
    let view = ClusterView {
        nodes: vec![read_only("a-ro", &[("3g.40gb", 4)])],
    };
    for p in every_policy() {
        let e = p.place(&view, &mig("2g.20gb")).unwrap_err();
        assert!(
            matches!(e, Unplaceable::ReadOnlyMig { .. }),
            "{}: {e}",
            p.name()
        );
        let msg = e.to_string();
        assert!(
            msg.contains("a-ro") && msg.contains("mig.manage = false"),
            "{msg}"
        );
        assert!(
            msg.contains("3g.40gb on 1 GPUs"),
            "free shows what may be lent: {msg}"
        );
    }
}

#[test]
fn an_instance_held_by_a_slice_is_not_lent() {
    // In the layout but not free: a live slice holds it.
    let mut g = mig_gpu(&[("3g.40gb", 0), ("3g.40gb", 4)]);
    g.free_instances = vec![mig::Placed {
        profile: "3g.40gb".into(),
        start: 4,
    }];
    let view = ClusterView {
        nodes: vec![NodeView {
            mig_create: false,
            ..node("ro", vec![g])
        }],
    };
    for p in every_policy() {
        assert_eq!(
            p.place(&view, &mig("3g.40gb")).unwrap().mig_start,
            Some(4),
            "{}",
            p.name()
        );
    }
    let mut g = mig_gpu(&[("3g.40gb", 0)]);
    g.free_instances.clear();
    let view = ClusterView {
        nodes: vec![NodeView {
            mig_create: false,
            ..node("ro", vec![g])
        }],
    };
    assert!(FirstFit.place(&view, &mig("3g.40gb")).is_err());
}

#[test]
fn names_round_trip_and_unknown_lists_them() {
    for n in policy_names() {
        assert_eq!(policy_by_name(n).unwrap().name(), n);
    }
    let e = policy_by_name("tetris").err().unwrap();
    assert!(e.to_string().contains("fgd-balanced, random"), "{e}");
    assert_eq!(default_policy().name(), "fgd-balanced");
}

#[test]
fn default_fills_a_partly_used_gpu_before_breaking_an_idle_one() {
    let view = ClusterView {
        nodes: vec![
            node("idle", vec![gpu(0, 0), gpu(0, 0)]),
            node("busy", vec![gpu(500, 10), gpu(1000, 80)]),
        ],
    };
    let p = default_policy().place(&view, &share(0.5, 10)).unwrap();
    assert_eq!((p.node, p.gpus), (1, vec![0]));
}

#[test]
fn shares_respect_gpu_memory() {
    // GPU 0 has compute but no memory left: only the idle node fits.
    let view = ClusterView {
        nodes: vec![
            node("busy", vec![gpu(500, 75)]),
            node("idle", vec![gpu(0, 0)]),
        ],
    };
    for k in PolicyKind::ALL {
        let p = ScoredPolicy::new(k).place(&view, &share(0.25, 10)).unwrap();
        assert_eq!(p.node, 1, "{}", k.name());
    }
}

#[test]
fn whole_gpus_take_fully_free_gpus_on_one_node() {
    let view = ClusterView {
        nodes: vec![
            node("a", vec![gpu(100, 1), gpu(0, 0)]),
            node("b", vec![gpu(0, 0), gpu(0, 0), gpu(0, 0)]),
        ],
    };
    for k in PolicyKind::ALL {
        let p = ScoredPolicy::new(k)
            .place(&view, &req(SliceKind::Whole { count: 2 }))
            .unwrap();
        assert_eq!(p.node, 1, "{}", k.name());
        assert_eq!(p.gpus.len(), 2);
    }
    let e = default_policy()
        .place(&view, &req(SliceKind::Whole { count: 4 }))
        .unwrap_err();
    assert!(matches!(e, Unplaceable::NoRoom { .. }), "{e}");
}

#[test]
fn mig_prefers_starts_that_keep_large_profiles_placeable() {
    // An empty H100: a 1g at slice 6 keeps 4g.40gb (start 0) placeable; at 0 it would not.
    let view = ClusterView {
        nodes: vec![node("m", vec![mig_gpu(&[])])],
    };
    let p = default_policy()
        .place(
            &view,
            &req(SliceKind::Mig {
                profile: "1g.10gb".into(),
            }),
        )
        .unwrap();
    assert_eq!(p.mig_start, Some(6));
    // A GPU already holding a 3g gets the next 3g before an empty GPU does.
    let view = ClusterView {
        nodes: vec![
            node("empty", vec![mig_gpu(&[])]),
            node("half", vec![mig_gpu(&[("3g.40gb", 0)])]),
        ],
    };
    let p = default_policy()
        .place(
            &view,
            &req(SliceKind::Mig {
                profile: "3g.40gb".into(),
            }),
        )
        .unwrap();
    assert_eq!((p.node, p.mig_start), (1, Some(4)));
}

#[test]
fn mig_score_counts_waste() {
    let ps = mig::profiles(&H100);
    assert_eq!(score::mig_waste(ps, 0, 0), 0);
    // 1g at 0: 6 compute free, largest placeable is 3g (start 4): waste 3.
    assert_eq!(score::mig_waste(ps, 0b1, 1), 3);
    // 1g at 6: 4g at 0 still fits: waste 2.
    assert_eq!(score::mig_waste(ps, 0b0100_0000, 1), 2);
}

fn arb_gpu() -> impl Strategy<Value = GpuView> {
    prop_oneof![
        (0u32..=1000, 0u64..=80, any::<bool>(), any::<bool>()).prop_map(|(m, g, excl, healthy)| {
            let mut v = gpu(m, g.min(80));
            v.exclusive = excl && m == 1000;
            v.healthy = healthy || m > 0;
            v
        }),
        proptest::collection::vec((0usize..6, 0u8..8), 0..6).prop_map(|ops| {
            let ps = mig::profiles(&H100);
            let mut layout: Vec<mig::Placed> = Vec::new();
            for (pi, s) in ops {
                if mig::check_create(&H100, &layout, ps[pi].name, s).is_ok() {
                    layout.push(mig::Placed {
                        profile: ps[pi].name.to_string(),
                        start: s,
                    });
                }
            }
            GpuView {
                mig_enabled: true,
                mig_layout: layout,
                ..gpu(0, 0)
            }
        }),
    ]
}

fn arb_view() -> impl Strategy<Value = ClusterView> {
    proptest::collection::vec(
        (
            proptest::collection::vec(arb_gpu(), 1..5),
            0u64..4,
            any::<bool>(),
        ),
        1..5,
    )
    .prop_map(|ns| ClusterView {
        nodes: ns
            .into_iter()
            .enumerate()
            .map(|(i, (gpus, cpu, sched))| NodeView {
                schedulable: sched || i == 0,
                cpu_milli: cpu * 8000,
                cpu_used_milli: cpu * 3000,
                ..node(&format!("n{i}"), gpus)
            })
            .collect(),
    })
}

fn arb_req() -> impl Strategy<Value = Request> {
    let profiles: Vec<String> = mig::profiles(&H100)
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    (
        prop_oneof![
            (1u32..=4).prop_map(|count| SliceKind::Whole { count }),
            proptest::sample::select(profiles).prop_map(|profile| SliceKind::Mig { profile }),
            (1u32..=1000, 1u64..=80).prop_map(|(m, g)| SliceKind::Share {
                compute_fraction: f64::from(m) / 1000.0,
                memory_bytes: g * GIB,
            }),
        ],
        0u64..6000,
    )
        .prop_map(|(kind, cpu)| Request {
            cpu_milli: cpu,
            ..req(kind)
        })
}

proptest! {
    /// `place_versioned` gives `place`'s answer, whether the memo is cold, warm for the same
    /// versions, or warm for a view in which some nodes changed (new versions).
    #[test]
    fn versioned_placement_matches_place(
        a in arb_view(),
        b in arb_view(),
        r in arb_req(),
        changed in proptest::collection::vec(any::<bool>(), 5),
    ) {
        for k in PolicyKind::ALL.into_iter().filter(|k| *k != PolicyKind::Random) {
            let pol = ScoredPolicy::new(k);
            let va: Vec<u64> = (1..=a.nodes.len() as u64).collect();
            for _ in 0..2 {
                prop_assert_eq!(pol.place_versioned(&a, &va, &r), pol.place(&a, &r));
            }
            // Nodes of `b` take `a`'s place where not changed (same content, same version);
            // changed ones get their own content and a new version.
            let mut view = a.clone();
            let mut vs = va.clone();
            for (i, n) in view.nodes.iter_mut().enumerate() {
                if changed[i % changed.len()] && let Some(bn) = b.nodes.get(i) {
                    *n = NodeView { name: n.name.clone(), ..bn.clone() };
                    vs[i] += 100;
                }
            }
            prop_assert_eq!(pol.place_versioned(&view, &vs, &r), pol.place(&view, &r));
        }
    }

    /// No policy ever oversubscribes a GPU's compute, memory or MIG slices, a node's CPU, or
    /// places on an unschedulable node; every MIG placement passes NVML's checks.
    #[test]
    fn placements_never_oversubscribe(view in arb_view(), r in arb_req(), seed in 0u64..4) {
        let mut policies: Vec<Box<dyn Policy>> = PolicyKind::ALL
            .iter()
            .map(|k| Box::new(ScoredPolicy::new(*k).with_seed(seed)) as Box<dyn Policy>)
            .collect();
        policies.push(Box::new(FirstFit));
        for pol in &policies {
            let Ok(p) = pol.place(&view, &r) else { continue };
            let node = &view.nodes[p.node];
            prop_assert!(node.schedulable);
            prop_assert!(node.cpu_milli == 0 || node.cpu_used_milli + r.cpu_milli <= node.cpu_milli);
            let mut seen = p.gpus.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), p.gpus.len());
            prop_assert_eq!(p.gpus.len(), gpus_needed(&r.spec));
            for &gi in &p.gpus {
                let g = &node.gpus[gi];
                prop_assert!(g.healthy);
                match &r.spec.kind {
                    SliceKind::Whole { .. } => prop_assert!(g.fits_whole(), "{}", pol.name()),
                    SliceKind::Share { compute_fraction, memory_bytes } => {
                        prop_assert!(!g.mig_enabled && !g.exclusive);
                        prop_assert!(g.used_milli + share_milli(*compute_fraction) <= 1000, "{}", pol.name());
                        prop_assert!(g.used_memory_bytes + memory_bytes <= g.memory_bytes, "{}", pol.name());
                    }
                    SliceKind::Mig { profile } => {
                        let start = p.mig_start.expect("MIG placement has a start");
                        prop_assert!(mig::check_create(&g.model, &g.mig_layout, profile, start).is_ok(), "{}", pol.name());
                    }
                }
            }
        }
    }
}

#[test]
fn the_live_policy_learns_its_target_workload_from_observed_requests() {
    let pol = ScoredPolicy::new(PolicyKind::DEFAULT);
    assert_eq!(
        pol.workload().classes(),
        live_default_workload().classes(),
        "the prior at start"
    );
    let view = ClusterView {
        nodes: vec![node("a", vec![gpu(0, 0), gpu(0, 0)])],
    };
    let pod = Request {
        cpu_milli: 4000,
        ..share(0.25, 1)
    };
    for _ in 0..2000 {
        pol.observe(&pod);
        let _ = pol.place(&view, &pod);
    }
    let w = pol.workload();
    let top = w.classes()[0].demand;
    assert_eq!((top.gpus, top.milli, top.cpu), (1, 250, 4000));
    // The pods' CPU now feeds the CPU-starvation cost: 4000 milli-cores per 250 milli-GPU.
    assert!(
        (w.cpu_per_gpu_milli() - 16.0).abs() < 0.5,
        "{}",
        w.cpu_per_gpu_milli()
    );
    // A fixed workload does not learn.
    let fixed = ScoredPolicy::with_workload(PolicyKind::DEFAULT, live_default_workload());
    fixed.observe(&pod);
    assert_eq!(
        fixed.workload().classes(),
        live_default_workload().classes()
    );
}

#[test]
fn versioned_placement_follows_a_new_target_workload() {
    let pol = ScoredPolicy::new(PolicyKind::DEFAULT);
    let view = ClusterView {
        nodes: vec![
            node("a", vec![gpu(500, 0), gpu(0, 0)]),
            node("b", vec![gpu(250, 0), gpu(750, 0)]),
            node("c", vec![gpu(0, 0), gpu(0, 0)]),
        ],
    };
    let versions = [1, 2, 3];
    let quarter = share(0.25, 1);
    let half = share(0.5, 1);
    for round in 0..6 {
        let r = if round % 2 == 0 { &quarter } else { &half };
        for _ in 0..(LIVE_REFRESH * 3) {
            pol.observe(r);
        }
        for q in [&quarter, &half] {
            assert_eq!(
                pol.place_versioned(&view, &versions, q),
                pol.place(&view, q),
                "round {round}"
            );
        }
    }
}
