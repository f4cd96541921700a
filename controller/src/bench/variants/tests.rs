use super::*;

fn task(name: &str, cpu: u32, num_gpu: u8, milli: u16) -> TraceTask {
    TraceTask {
        name: name.to_string(),
        cpu_milli: cpu,
        memory_mib: 1024,
        num_gpu,
        gpu_milli: if num_gpu == 0 { 0 } else { milli },
        models: Vec::new(),
    }
}

/// A small trace shaped like `default`: CPU-only, shares, whole GPUs and a few multi-GPU tasks.
fn base() -> Vec<TraceTask> {
    let mut v = Vec::new();
    for i in 0..2000 {
        let name = format!("t{i:05}");
        v.push(match i % 20 {
            0..=2 => task(&name, 8000, 0, 0),
            3..=10 => task(&name, 4000, 1, 250 + 50 * (i % 7) as u16),
            11..=18 => task(&name, 8000, 1, 1000),
            _ => task(&name, 32000, 1 + (i % 4) as u8 * 2 + 1, 1000),
        });
    }
    v
}

fn donor() -> SpecDonor {
    let mut spec = base();
    for (i, t) in spec.iter_mut().enumerate() {
        if t.num_gpu > 0 && i % 3 == 0 {
            t.models = if is_share(t) {
                vec!["T4".to_string()]
            } else {
                vec!["V100M16".to_string(), "V100M32".to_string()]
            };
        }
    }
    SpecDonor::from_tasks(&spec)
}

fn v(s: &str) -> Variant {
    s.parse().unwrap()
}

#[test]
fn parses_family_and_level() {
    assert_eq!(
        v("gpuspec:25"),
        Variant {
            family: Family::GpuSpec,
            level: 25
        }
    );
    assert_eq!(v("cpu:40").to_string(), "cpu:40");
    assert!(matches!(
        "gpuspec".parse::<Variant>(),
        Err(VariantError::Syntax(_))
    ));
    assert!(matches!(
        "gpu:5".parse::<Variant>(),
        Err(VariantError::UnknownFamily(_))
    ));
    assert!(matches!(
        "cpu:99".parse::<Variant>(),
        Err(VariantError::Level { .. })
    ));
    assert!(matches!(
        "gpushare:x".parse::<Variant>(),
        Err(VariantError::Syntax(_))
    ));
}

#[test]
fn gpuspec_constrains_the_level_of_gpu_tasks_and_nothing_else() {
    let b = base();
    let out = generate(&b, v("gpuspec:25"), 7, &donor()).unwrap();
    assert_eq!(out.len(), b.len());
    let s = TraceStats::of(&out);
    assert!((s.constrained_pct - 25.0).abs() < 0.1, "{s}");
    for (o, t) in out.iter().zip(&b) {
        // Only the constraint changes, and only on GPU tasks.
        assert_eq!(
            (&o.name, o.cpu_milli, o.num_gpu),
            (&t.name, t.cpu_milli, t.num_gpu)
        );
        if o.num_gpu == 0 {
            assert!(o.models.is_empty());
        }
        // Constraints follow the task's kind in the donor.
        if !o.models.is_empty() {
            assert_eq!(o.models == ["T4"], is_share(o), "{o:?}");
        }
    }
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let b = base();
    let d = donor();
    for fam in [
        "gpuspec:20",
        "gpushare:40",
        "multigpu:30",
        "cpu:5",
        "cpu:30",
    ] {
        let a = generate(&b, v(fam), 3, &d).unwrap();
        assert_eq!(a, generate(&b, v(fam), 3, &d).unwrap(), "{fam}");
        assert_ne!(a, generate(&b, v(fam), 4, &d).unwrap(), "{fam}");
    }
}

#[test]
fn gpushare_keeps_task_counts_and_sets_the_share_of_demand() {
    let b = base();
    let before = TraceStats::of(&b);
    for level in [5, 20, 60] {
        let out = generate(
            &b,
            Variant {
                family: Family::GpuShare,
                level,
            },
            1,
            &donor(),
        )
        .unwrap();
        let s = TraceStats::of(&out);
        assert_eq!(s.tasks, before.tasks);
        assert!((s.cpu_only_pct - before.cpu_only_pct).abs() < 1e-9);
        assert!(
            (s.share_demand_pct - f64::from(level)).abs() < 0.5,
            "{level}: {s}"
        );
        let mut names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), out.len(), "names are unique");
    }
}

#[test]
fn multigpu_adds_or_drops_multi_gpu_tasks_only() {
    let b = base();
    let before = TraceStats::of(&b);
    let up = generate(&b, v("multigpu:60"), 1, &donor()).unwrap();
    let s = TraceStats::of(&up);
    assert!((s.multi_demand_pct - 60.0).abs() < 1.0, "{s}");
    assert_eq!(
        &up[..b.len()],
        &b[..],
        "the base tasks come first, unchanged"
    );
    assert!(up[b.len()..].iter().all(|t| t.num_gpu > 1));
    let down = generate(&b, v("multigpu:5"), 1, &donor()).unwrap();
    let s = TraceStats::of(&down);
    assert!(s.multi_demand_pct <= 5.0 && s.multi_demand_pct > 3.0, "{s}");
    assert!(before.multi_demand_pct > 5.0);
    assert_eq!(
        down.iter().filter(|t| t.num_gpu <= 1).count(),
        b.iter().filter(|t| t.num_gpu <= 1).count()
    );
}

#[test]
fn cpu_sets_the_share_of_cpu_only_tasks() {
    let b = base();
    for level in [5u32, 10, 30, 40] {
        let out = generate(
            &b,
            Variant {
                family: Family::Cpu,
                level,
            },
            2,
            &donor(),
        )
        .unwrap();
        let s = TraceStats::of(&out);
        assert!(
            (s.cpu_only_pct - f64::from(level)).abs() < 0.1,
            "{level}: {s}"
        );
        assert_eq!(
            out.iter().filter(|t| t.num_gpu > 0).count(),
            b.iter().filter(|t| t.num_gpu > 0).count(),
            "GPU tasks unchanged"
        );
    }
}

#[test]
fn gpuspec_without_a_donor_says_where_the_donor_is() {
    let e = generate(&base(), v("gpuspec:10"), 1, &SpecDonor::default()).unwrap_err();
    assert!(e.to_string().contains("gpuspec10"), "{e}");
    // Level 0 needs no donor.
    assert_eq!(
        generate(&base(), v("gpuspec:0"), 1, &SpecDonor::default()).unwrap(),
        base()
    );
}
