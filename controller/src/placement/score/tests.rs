//! Unit tests of `score`.

use super::*;

fn share(cpu: u32, milli: u16) -> Demand {
    Demand {
        cpu,
        gpus: 1,
        milli,
        models: ModelMask::ANY,
    }
}

fn whole(cpu: u32, k: u8) -> Demand {
    Demand {
        cpu,
        gpus: k,
        milli: 1000,
        models: ModelMask::ANY,
    }
}

fn node(cpu_free: u32, gpu_free: &[u16]) -> NodeRef<'_> {
    NodeRef {
        cpu_free,
        gpu_free,
        model: 0,
        tags: 0,
    }
}

#[test]
fn best_fit_prefers_the_fuller_node() {
    let full = [1000u16; 8];
    let part = [1000, 1000, 500, 0, 0, 0, 0, 0];
    let d = share(4000, 500);
    // idle: 1 - (60000/128000*0.5 + 7500/8000*0.5) = 0.296875 -> 29
    assert_eq!(best_fit(&node(64_000, &full), &d), 29);
    // 1 - (0 + 2000/8000*0.5) = 0.875 -> 87
    assert_eq!(best_fit(&node(4_000, &part), &d), 87);
}

#[test]
fn dot_product_penalises_aligned_free_space() {
    let full = [1000u16; 8];
    let d = whole(64_000, 8);
    // 1 - (1*0.5 + 1*1)/2 = 0.25 -> 25
    assert_eq!(dot_product(&node(128_000, &full), &d), 25);
    let cpu_only = Demand {
        cpu: 64_000,
        gpus: 0,
        milli: 0,
        models: ModelMask::ANY,
    };
    // 1 - (1*0.5 + 0)/2 = 0.75 -> 75
    assert_eq!(dot_product(&node(128_000, &[]), &cpu_only), 75);
}

#[test]
fn gpu_packing_ranks_partial_gpu_then_partial_node_then_idle_node() {
    let d = share(1000, 300);
    let idle8 = [1000u16; 8];
    let idle2 = [1000u16; 2];
    let n = node(0, &idle8);
    assert_eq!(gpu_packing(&n, &d, n.fit_mask(&d)), 25);
    let n = node(0, &idle2);
    assert_eq!(gpu_packing(&n, &d, n.fit_mask(&d)), 31);
    let used = [1000u16, 0];
    let n = node(0, &used);
    assert_eq!(gpu_packing(&n, &d, n.fit_mask(&d)), 49);
    // least free fitting GPU has 450 free: 100 - floor(45/10) = 96
    let part = [1000u16, 450, 800];
    let n = node(0, &part);
    assert_eq!(gpu_packing(&n, &d, n.fit_mask(&d)), 96);
    assert_eq!(pick_least_free(&n, &d, n.fit_mask(&d)), vec![1]);
    let d4 = whole(0, 4);
    let part8 = [1000u16, 1000, 1000, 1000, 1000, 0, 0, 0];
    let n = node(0, &part8);
    assert_eq!(gpu_packing(&n, &d4, n.fit_mask(&d4)), 46);
    assert_eq!(pick_least_free(&n, &d4, n.fit_mask(&d4)), vec![0, 1, 2, 3]);
}

#[test]
fn gpu_clustering_groups_by_kind() {
    let d = share(0, 500);
    let free = [1000u16, 500];
    let mut n = node(0, &free);
    // base = floor(25 * 6500 / 8000) = 20
    assert_eq!(gpu_clustering(&n, &d), 20 + 25);
    n.tags = d.tag();
    assert_eq!(gpu_clustering(&n, &d), 20 + 75);
    n.tags = d.tag() | whole(0, 1).tag();
    assert_eq!(gpu_clustering(&n, &d), 20 + 50);
    n.tags = whole(0, 2).tag();
    assert_eq!(gpu_clustering(&n, &d), 20);
    assert_eq!(gpu_clustering(&n, &share(0, 0).with_gpus(0)), 0);
}

impl Demand {
    fn with_gpus(mut self, k: u8) -> Demand {
        self.gpus = k;
        self
    }
}

#[test]
fn workload_keeps_the_heaviest_classes_to_coverage() {
    let mut ds = vec![share(1000, 500); 6];
    ds.extend(vec![whole(2000, 1); 3]);
    ds.push(share(1000, 100));
    let w = Workload::from_demands(ds, 0.9);
    assert_eq!(w.classes().len(), 2);
    assert_eq!(w.total(), 9);
}

#[test]
fn fragmentation_counts_what_each_class_cannot_use() {
    let w = Workload::new(vec![
        WorkloadClass {
            demand: share(0, 500),
            count: 1,
        },
        WorkloadClass {
            demand: whole(0, 2),
            count: 1,
        },
    ]);
    // share 500: 300 is too small; 2 whole GPUs: no two fully free -> all 1300 counts
    assert_eq!(w.frag_scaled(0, &[1000, 300], 0), 300 + 1300);
    // CPU short for a class with CPU demand: everything counts
    let wc = Workload::new(vec![WorkloadClass {
        demand: share(4000, 500),
        count: 2,
    }]);
    assert_eq!(wc.frag_scaled(1000, &[1000], 0), 2 * 1000);
    assert_eq!(wc.frag_scaled(4000, &[1000], 0), 0);
}

#[test]
fn fgd_prefers_the_gpu_that_fragments_least() {
    let w = Workload::new(vec![WorkloadClass {
        demand: share(0, 500),
        count: 1,
    }]);
    let free = [1000u16, 700];
    let n = node(0, &free);
    let d = share(0, 200);
    // on GPU 1 (700 -> 500): no change, exactly 50; on GPU 0 (1000 -> 800): no change either.
    let (s, gpus) = fgd(&w, &n, &d, n.fit_mask(&d)).unwrap();
    assert_eq!((s, gpus), (50, vec![0]));
    let d = share(0, 300);
    // GPU 1: 700 -> 400, 400 unusable by 500-shares: increase 400 -> trunc(100/(1+e^0.4)) = 40
    // GPU 0: 1000 -> 700: no increase -> 50
    let (s, gpus) = fgd(&w, &n, &d, n.fit_mask(&d)).unwrap();
    assert_eq!((s, gpus), (50, vec![0]));
    assert_eq!(fgd_sigmoid(-400, 1), 40);
    assert_eq!(fgd_sigmoid(0, 7), 50);
}

#[test]
fn starvation_counts_gpu_compute_left_without_cpu() {
    // One class: half a GPU with 8 cores, so 16 CPU milli per GPU milli.
    let w = Workload::new(vec![WorkloadClass {
        demand: share(8000, 500),
        count: 1,
    }]);
    assert_eq!(w.cpu_per_gpu_milli(), 16.0);
    let free = [1000u16, 1000];
    let n = node(16_000, &free);
    let cpu_only = Demand {
        cpu: 8000,
        gpus: 0,
        milli: 0,
        models: ModelMask::ANY,
    };
    // before: 2000 - 16000/16 = 1000 starved; after: 2000 - 8000/16 = 1500.
    assert_eq!(starvation_increase(&w, &n, &cpu_only), 500.0);
    // A CPU-rich node absorbs it without starving anything.
    let rich = node(64_000, &free);
    assert_eq!(starvation_increase(&w, &rich, &cpu_only), 0.0);
    let (poor_score, _) = fgd_balanced(&w, &n, &cpu_only, 0).unwrap();
    let (rich_score, _) = fgd_balanced(&w, &rich, &cpu_only, 0).unwrap();
    assert!(rich_score > poor_score, "{rich_score} vs {poor_score}");
}

#[test]
fn fgd_balanced_keeps_unconstrained_work_off_scarce_models() {
    // Half the workload can only run on model 1.
    let only1 = Demand {
        models: ModelMask(0b10),
        ..whole(0, 1)
    };
    let w = Workload::new(vec![
        WorkloadClass {
            demand: whole(0, 1),
            count: 1,
        },
        WorkloadClass {
            demand: only1,
            count: 1,
        },
    ]);
    assert_eq!(w.constrained_share_on(1), 0.5);
    assert_eq!(w.constrained_share_on(0), 0.0);
    // Without the cluster's supply there is no pressure, so no cost.
    assert_eq!(w.excess_pressure(ModelMask::ANY, 1), 0.0);
    // 8 GPUs of model 0, 2 of model 1: by full arrival the constrained half wants 5 of model 1.
    let w = w.with_supply(&[8000, 2000]);
    assert_eq!(w.excess_pressure(ModelMask::ANY, 1), 1.0);
    assert_eq!(w.excess_pressure(ModelMask::ANY, 0), 0.0);
    // A demand that may only use model 1 loses nothing there beyond what it must.
    assert_eq!(w.excess_pressure(only1.models, 1), 0.0);
    let free = [1000u16, 1000];
    let m0 = node(0, &free);
    let m1 = NodeRef { model: 1, ..m0 };
    let d = whole(0, 1);
    let (s0, g0) = fgd_balanced(&w, &m0, &d, m0.fit_mask(&d)).unwrap();
    let (s1, _) = fgd_balanced(&w, &m1, &d, m1.fit_mask(&d)).unwrap();
    assert!(s0 > s1, "{s0} vs {s1}");
    assert_eq!(g0, vec![0]);
}

#[test]
fn pressure_spreads_a_class_over_its_models_by_supply() {
    // One class of 1 GPU allowed on models 0 and 1, a tenth of the demand; the rest anywhere.
    let both = Demand {
        models: ModelMask(0b11),
        ..whole(0, 1)
    };
    let w = Workload::new(vec![
        WorkloadClass {
            demand: whole(0, 1),
            count: 9,
        },
        WorkloadClass {
            demand: both,
            count: 1,
        },
    ])
    .with_supply(&[3000, 1000, 6000]);
    // Scaled to the cluster (10 GPUs), the class wants 1 GPU: 0.75 on model 0, 0.25 on model 1.
    let p0 = w.excess_pressure(ModelMask(0b001), 0);
    assert_eq!(p0, 0.0, "one allowed model: no excess");
    let e0 = w.excess_pressure(ModelMask::ANY, 0);
    let e1 = w.excess_pressure(ModelMask::ANY, 1);
    assert!(
        (e0 - 0.25).abs() < 1e-9 && (e1 - 0.25).abs() < 1e-9,
        "{e0} {e1}"
    );
    assert_eq!(w.excess_pressure(ModelMask::ANY, 2), 0.0);
    // A demand allowed on models 0 and 1 pays nothing for either: they are equally pressed.
    assert_eq!(w.excess_pressure(both.models, 1), 0.0);
}
