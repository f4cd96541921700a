//! `greenslice bench packing`: replays the openb trace under the FGD artifact's protocol for each
//! policy and seed, prints unallocated GPU % at 100% and 130% arrival, and writes a CSV and an SVG
//! chart. The binary's CLI embeds [`Args`] and calls [`run`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;

use super::mig_replay::{self, MigMode, MigResult};
use super::openb;
use super::replay::{self, ReplayResult};
use super::variants::{self, Family, SpecDonor, TraceStats, Variant};
use crate::placement::policies::{PolicyKind, policy_names};

/// Arguments of `greenslice bench packing`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Node list CSV (openb format).
    #[arg(long, default_value = openb::DEFAULT_NODES)]
    pub nodes: PathBuf,
    /// Pod list CSV (openb format).
    #[arg(long, default_value = openb::DEFAULT_PODS)]
    pub pods: PathBuf,
    /// Policy name, a comma-separated list, or "all".
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Replay a seeded variant of `--pods` instead of the file itself: FAMILY:PERCENT with family
    /// gpuspec, gpushare, multigpu or cpu (see `bench::variants`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Seed of the variant generator (the replay seeds are `--seeds`).
    #[arg(long, default_value_t = 1)]
    pub variant_seed: u64,
    /// The trace whose GPU-model constraints `gpuspec` draws from.
    #[arg(long, default_value = variants::DEFAULT_DONOR)]
    pub donor: PathBuf,
    /// Sweep every family at `--levels` (the development set) instead of one trace; writes
    /// sweep.csv (and sweep.md) to `--out`.
    #[arg(long)]
    pub sweep: bool,
    /// Levels (%) of the sweep, comma-separated.
    #[arg(long, default_value = "5,10,20,30,40", value_delimiter = ',')]
    pub levels: Vec<u32>,
    /// Replays run at once in a sweep (decision times are only reported by single-trace runs).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Seeds 42..42+N-1.
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// Inflate arrivals up to this % of cluster GPUs.
    #[arg(long, default_value_t = 130, value_parser = clap::value_parser!(u32).range(100..=1000))]
    pub max_arrival: u32,
    /// Folder for packing.csv and packing.svg (and packing_mig.csv with --mig).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also replay on H100-80GB nodes comparing MIG-only, shares-only and mixed sharing.
    #[arg(long)]
    pub mig: bool,
    /// Replay on a cluster of this many nodes made from `--nodes` (see [`openb::scale_nodes`];
    /// seeded by `--variant-seed`), e.g. 1280 for decision times at that size.
    #[arg(long)]
    pub cluster_nodes: Option<usize>,
    /// Instead of a trace replay, time the live policy (`--policy`, one of the scored ones) as the
    /// controller runs it (`ScoredPolicy::place_versioned` over the cluster view) on this many
    /// simulated DGX nodes, over a seeded sequence of requests and releases (see
    /// `bench::live_replay`).
    #[arg(long)]
    pub live_nodes: Option<usize>,
}

/// First seed of the protocol.
pub const FIRST_SEED: u64 = 42;

/// Mean and population standard deviation.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

/// One policy's summary over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub policy: String,
    /// Unallocated GPU % at 100% and at the maximum arrival: (mean, sd).
    pub unallocated_100: (f64, f64),
    pub unallocated_max: (f64, f64),
    /// Fragmented GPU % at 100% arrival: (mean, sd).
    pub fragmented_100: (f64, f64),
    /// Mean wall time of one replay, s.
    pub replay_s: f64,
    /// Decision time over all seeds' medians and p99s (the largest of each), ns.
    pub decision_median_ns: u64,
    pub decision_p99_ns: u64,
}

/// Summarises one policy's replays.
pub fn summarize(results: &[ReplayResult], max_arrival: u32) -> Option<Summary> {
    let first = results.first()?;
    let at = |x: u32| -> Vec<f64> { results.iter().filter_map(|r| r.unallocated_at(x)).collect() };
    let frag: Vec<f64> = results
        .iter()
        .filter_map(|r| r.point(100).map(|p| p.fragmented_pct))
        .collect();
    Some(Summary {
        policy: first.policy.name().to_string(),
        unallocated_100: mean_sd(&at(100)),
        unallocated_max: mean_sd(&at(max_arrival)),
        fragmented_100: mean_sd(&frag),
        replay_s: results.iter().map(|r| r.wall.as_secs_f64()).sum::<f64>() / results.len() as f64,
        decision_median_ns: results
            .iter()
            .map(|r| r.decision_median_ns)
            .max()
            .unwrap_or(0),
        decision_p99_ns: results.iter().map(|r| r.decision_p99_ns).max().unwrap_or(0),
    })
}

/// The CSV: `policy,seed,arrival_pct,allocated_gpu_pct,fragmented_gpu_pct`, one row per point.
pub fn to_csv(results: &[ReplayResult]) -> String {
    let mut s = String::from("policy,seed,arrival_pct,allocated_gpu_pct,fragmented_gpu_pct\n");
    for r in results {
        for p in &r.points {
            let _ = writeln!(
                s,
                "{},{},{},{:.4},{:.4}",
                r.policy.name(),
                r.seed,
                p.arrival_pct,
                p.allocated_pct,
                p.fragmented_pct
            );
        }
    }
    s
}

/// The MIG CSV: `mode,seed,arrival_pct,allocated_gpu_pct,held_gpu_pct`.
pub fn mig_to_csv(results: &[MigResult]) -> String {
    let mut s = String::from("mode,seed,arrival_pct,allocated_gpu_pct,held_gpu_pct\n");
    for r in results {
        for p in &r.points {
            let _ = writeln!(
                s,
                "{},{},{},{:.4},{:.4}",
                r.mode.name(),
                r.seed,
                p.arrival_pct,
                p.allocated_pct,
                p.held_pct
            );
        }
    }
    s
}

const COLORS: [&str; 8] = [
    "#999999", "#1f77b4", "#9467bd", "#8c564b", "#ff7f0e", "#2ca02c", "#d62728", "#17becf",
];

/// An SVG line chart of mean allocated GPU % against arrival %, one line per series.
/// `series`: (name, points (arrival %, allocated %)).
pub fn svg_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, l, r, t, b) = (820.0, 500.0, 60.0, 190.0, 40.0, 50.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(100.0f64, f64::max);
    let ymin = 0.0;
    let ymax = 100.0;
    let x = |v: f64| l + (v / xmax) * (w - l - r);
    let y = |v: f64| t + (1.0 - (v - ymin) / (ymax - ymin)) * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (w - r + l) / 2.0,
        escape(title)
    );
    for i in 0..=10 {
        let v = ymin + (ymax - ymin) * f64::from(i) / 10.0;
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{v:.0}</text>"##,
            y(v),
            w - r,
            l - 6.0,
            y(v) + 4.0
        );
    }
    let mut xv = 0.0;
    while xv <= xmax + 0.1 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{t}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{xv:.0}</text>"##,
            x(xv),
            h - b,
            h - b + 16.0
        );
        xv += 10.0;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="#333"/><line x1="{l}" y1="{t}" x2="{l}" y2="{0}" stroke="#333"/>"##,
        h - b,
        w - r
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">arrived GPU demand (% of cluster GPUs)</text>"#,
        (w - r + l) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">allocated GPU (% of cluster GPUs)</text>"#,
        (h - b + t) / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(a, u)| format!("{:.1},{:.1}", x(*a), y(*u)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.6" points="{}"/>"#,
            path.join(" ")
        );
        let ly = t + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            w - r + 12.0,
            w - r + 36.0,
            w - r + 42.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Mean allocation per arrival % over seeds, for the chart.
pub fn mean_curve(results: &[ReplayResult]) -> Vec<(f64, f64)> {
    let mut acc: std::collections::BTreeMap<u32, (f64, u32)> = Default::default();
    for r in results {
        for p in &r.points {
            let e = acc.entry(p.arrival_pct).or_default();
            e.0 += p.allocated_pct;
            e.1 += 1;
        }
    }
    acc.into_iter()
        .map(|(a, (s, n))| (f64::from(a), s / f64::from(n)))
        .collect()
}

/// The policies `name` selects ("all", one name or a comma-separated list).
pub fn select_policies(name: &str) -> anyhow::Result<Vec<PolicyKind>> {
    if name == "all" {
        return Ok(PolicyKind::ALL.to_vec());
    }
    name.split(',').map(|n| select_one(n.trim())).collect()
}

fn select_one(name: &str) -> anyhow::Result<PolicyKind> {
    PolicyKind::from_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown policy {name:?}; use all or one of: {}",
            policy_names()
                .into_iter()
                .filter(|n| *n != "first-fit")
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn fmt_ms((m, sd): (f64, f64)) -> String {
    format!("{m:6.2} ± {sd:4.2}")
}

/// Runs the benchmark: prints a table per policy, writes `--out` files.
pub fn run(args: Args) -> anyhow::Result<()> {
    let policies = select_policies(&args.policy)?;
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    if let Some(n) = args.live_nodes {
        return run_live(&args.policy, n, args.seeds);
    }
    let mut nodes = openb::load_nodes(&args.nodes)?;
    if let Some(n) = args.cluster_nodes {
        anyhow::ensure!(n >= 1, "--cluster-nodes must be at least 1");
        nodes = openb::scale_nodes(&nodes, n, args.variant_seed);
    }
    let base = openb::load_tasks(&args.pods)?;
    if args.sweep {
        return run_sweep(&args, &policies, &nodes, &base);
    }
    let (tasks, label) = match &args.variant {
        Some(v) => {
            let v: Variant = v.parse()?;
            let donor = load_donor(&args, v.family)?;
            let t = variants::generate(&base, v, args.variant_seed, &donor)?;
            let label = format!(
                "{} of {}, variant seed {}",
                v,
                args.pods.display(),
                args.variant_seed
            );
            (t, label)
        }
        None => (base, args.pods.display().to_string()),
    };
    println!("trace: {}", TraceStats::of(&tasks));
    let prepared = replay::prepare(&nodes, &tasks);
    println!(
        "packing: {} nodes, {} GPUs, {} tasks ({}), seeds {}..={}, arrival up to {}%",
        nodes.len(),
        prepared.total_gpus(),
        prepared.task_count(),
        label,
        FIRST_SEED,
        FIRST_SEED + args.seeds - 1,
        args.max_arrival
    );
    println!(
        "{:<15} {:>17} {:>17} {:>17} {:>10} {:>11} {:>9}",
        "policy",
        "unalloc% @100",
        format!("unalloc% @{}", args.max_arrival),
        "frag% @100",
        "replay s",
        "median ns",
        "p99 ns"
    );
    let mut all = Vec::new();
    let mut series = Vec::new();
    for k in policies {
        let t0 = Instant::now();
        let results: Vec<ReplayResult> = (0..args.seeds)
            .map(|i| replay::replay(&prepared, k, FIRST_SEED + i, args.max_arrival))
            .collect();
        let total = t0.elapsed().as_secs_f64();
        if let Some(s) = summarize(&results, args.max_arrival) {
            println!(
                "{:<15} {:>17} {:>17} {:>17} {:>10.3} {:>11} {:>9}   ({total:.1} s in all)",
                s.policy,
                fmt_ms(s.unallocated_100),
                fmt_ms(s.unallocated_max),
                fmt_ms(s.fragmented_100),
                s.replay_s,
                s.decision_median_ns,
                s.decision_p99_ns
            );
        }
        series.push((k.name().to_string(), mean_curve(&results)));
        all.extend(results);
    }
    let mig = if args.mig {
        Some(run_mig(&prepared, &args))
    } else {
        None
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        write(&out.join("packing.csv"), &to_csv(&all))?;
        let title = format!(
            "Allocation vs arrival, {}{} ({} seeds)",
            args.pods.file_name().unwrap_or_default().to_string_lossy(),
            args.variant
                .as_deref()
                .map(|v| format!(" as {v}"))
                .unwrap_or_default(),
            args.seeds
        );
        write(&out.join("packing.svg"), &svg_chart(&title, &series))?;
        if let Some(m) = &mig {
            write(&out.join("packing_mig.csv"), &mig_to_csv(m))?;
        }
        println!("wrote packing.csv, packing.svg to {}", out.display());
    }
    Ok(())
}

/// `--live-nodes`: the live policy's decision times on `n` simulated DGX nodes, one sequence per
/// seed, about four requests per GPU, each held long enough that the cluster fills.
fn run_live(policy: &str, n: usize, seeds: u64) -> anyhow::Result<()> {
    use super::live_replay::{dgx_nodes, idle_view, replay_timed, seeded_steps_held};
    anyhow::ensure!(n >= 1, "--live-nodes must be at least 1");
    let names: Vec<&str> = if policy == "all" {
        vec![crate::placement::PolicyKind::DEFAULT.name()]
    } else {
        policy.split(',').collect()
    };
    let view = idle_view(&dgx_nodes(n));
    let gpus = n * 8;
    println!(
        "live policy: {n} simulated DGX nodes, {gpus} GPUs, {} requests per seed",
        gpus * 4
    );
    println!(
        "{:<15} {:>6} {:>10} {:>11} {:>9} {:>9}   p99 ns of whole / share / MIG requests",
        "policy", "seed", "placed", "unplaceable", "median ns", "p99 ns"
    );
    for name in names {
        for seed in FIRST_SEED..FIRST_SEED + seeds {
            let policy = crate::placement::policy_by_name(name)?;
            let steps = seeded_steps_held(&view, seed, gpus * 4, gpus * 2);
            let (out, times) = replay_timed(policy.as_ref(), view.clone(), &steps);
            let failed = out.iter().filter(|o| o.is_err()).count();
            // Times by kind of request, in request order.
            let kinds: Vec<u8> = steps
                .iter()
                .filter_map(|s| match s {
                    super::live_replay::Step::Request(r) => Some(match r.spec.kind {
                        greenslice_core::slice::SliceKind::Whole { .. } => 0,
                        greenslice_core::slice::SliceKind::Share { .. } => 1,
                        greenslice_core::slice::SliceKind::Mig { .. } => 2,
                    }),
                    super::live_replay::Step::Release { .. } => None,
                })
                .collect();
            let by_kind: Vec<String> = (0..3u8)
                .map(|k| {
                    let t: Vec<u64> = times
                        .iter()
                        .zip(&kinds)
                        .filter(|(_, x)| **x == k)
                        .map(|(t, _)| *t)
                        .collect();
                    replay::median_p99(t).1.to_string()
                })
                .collect();
            let (median, p99) = replay::median_p99(times);
            println!(
                "{name:<15} {seed:>6} {:>10} {failed:>11} {median:>9} {p99:>9}   {}",
                out.len() - failed,
                by_kind.join(" / ")
            );
        }
    }
    Ok(())
}

fn run_mig(prepared: &replay::Prepared, args: &Args) -> Vec<MigResult> {
    println!(
        "\nMIG mode: the same tasks on H100-80GB GPUs (same nodes and GPU counts, no model constraints)"
    );
    println!(
        "{:<12} {:>17} {:>17} {:>15} {:>12} {:>10}",
        "mode",
        "unalloc% @100",
        format!("unalloc% @{}", args.max_arrival),
        "held% @100",
        "instances",
        "replay s"
    );
    let mut all = Vec::new();
    for mode in MigMode::ALL {
        let rs: Vec<MigResult> = (0..args.seeds)
            .map(|i| mig_replay::replay_mig(prepared, mode, FIRST_SEED + i, args.max_arrival))
            .collect();
        let at = |x: u32| -> Vec<f64> { rs.iter().filter_map(|r| r.unallocated_at(x)).collect() };
        let held: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.points.iter().find(|p| p.arrival_pct == 100))
            .map(|p| p.held_pct)
            .collect();
        let inst = rs.iter().map(|r| r.instances).sum::<usize>() / rs.len().max(1);
        let wall = rs.iter().map(|r| r.wall.as_secs_f64()).sum::<f64>() / rs.len().max(1) as f64;
        println!(
            "{:<12} {:>17} {:>17} {:>15} {:>12} {:>10.3}",
            mode.name(),
            fmt_ms(mean_sd(&at(100))),
            fmt_ms(mean_sd(&at(args.max_arrival))),
            fmt_ms(mean_sd(&held)),
            inst,
            wall
        );
        all.extend(rs);
    }
    all
}

/// The donor of `gpuspec`'s constraints (read only for that family).
fn load_donor(args: &Args, family: Family) -> anyhow::Result<SpecDonor> {
    if family != Family::GpuSpec {
        return Ok(SpecDonor::default());
    }
    Ok(SpecDonor::from_tasks(&openb::load_tasks(&args.donor)?))
}

/// One variant's replays under one policy, for the sweep.
#[derive(Debug, Clone)]
pub struct SweepCell {
    pub variant: Variant,
    pub policy: PolicyKind,
    /// Unallocated GPU % at 100% and at the maximum arrival, per seed (seed order).
    pub at_100: Vec<f64>,
    pub at_max: Vec<f64>,
}

/// `f` over `items` on up to `jobs` threads, results in item order.
fn par_map<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut out);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_iter().flatten().collect()
}

/// Paired comparison of `a` against `b` over the same seeds: (mean of a - b, the larger of the
/// two seed sds). A positive mean is `a` leaving more GPUs unallocated.
pub fn margin(a: &[f64], b: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    (mean_sd(&d).0, mean_sd(a).1.max(mean_sd(b).1))
}

/// The sweep CSV: `variant,policy,seed,unallocated_100,unallocated_max`.
pub fn sweep_csv(cells: &[SweepCell]) -> String {
    let mut s = String::from("variant,policy,seed,unallocated_100,unallocated_max\n");
    for c in cells {
        for (i, (u, m)) in c.at_100.iter().zip(&c.at_max).enumerate() {
            let _ = writeln!(
                s,
                "{},{},{},{u:.4},{m:.4}",
                c.variant,
                c.policy.name(),
                FIRST_SEED + i as u64
            );
        }
    }
    s
}

/// The sweep's Markdown table: one row per variant, one column per policy (mean ± sd at 100%),
/// and the default's paired margin against FGD (negative: the default leaves fewer GPUs idle).
pub fn sweep_markdown(cells: &[SweepCell], policies: &[PolicyKind]) -> String {
    let mut s = String::from("| variant |");
    for p in policies {
        let _ = write!(s, " {} |", p.name());
    }
    let compare = policies.contains(&PolicyKind::DEFAULT) && policies.contains(&PolicyKind::Fgd);
    if compare {
        s.push_str(" default - fgd | noise (larger sd) |");
    }
    s.push_str("\n|---|");
    for _ in policies {
        s.push_str("---|");
    }
    if compare {
        s.push_str("---|---|");
    }
    s.push('\n');
    let mut variants: Vec<Variant> = Vec::new();
    for c in cells {
        if !variants.contains(&c.variant) {
            variants.push(c.variant);
        }
    }
    let find = |v: Variant, p: PolicyKind| cells.iter().find(|c| c.variant == v && c.policy == p);
    for v in variants {
        let _ = write!(s, "| {v} |");
        for &p in policies {
            match find(v, p) {
                Some(c) => {
                    let (m, sd) = mean_sd(&c.at_100);
                    let _ = write!(s, " {m:.2}±{sd:.2} |");
                }
                None => s.push_str(" |"),
            }
        }
        if compare
            && let (Some(d), Some(f)) = (find(v, PolicyKind::DEFAULT), find(v, PolicyKind::Fgd))
        {
            let (m, noise) = margin(&d.at_100, &f.at_100);
            let _ = write!(s, " {m:+.2} | {noise:.2} |");
        }
        s.push('\n');
    }
    s
}

/// `--sweep`: every family at every level, each policy, each seed.
fn run_sweep(
    args: &Args,
    policies: &[PolicyKind],
    nodes: &[openb::TraceNode],
    base: &[openb::TraceTask],
) -> anyhow::Result<()> {
    let donor = load_donor(args, Family::GpuSpec)?;
    let mut cells = Vec::new();
    println!(
        "sweep over {}: levels {:?}, variant seed {}, replay seeds {}..={}, unallocated GPU % at 100%",
        args.pods.display(),
        args.levels,
        args.variant_seed,
        FIRST_SEED,
        FIRST_SEED + args.seeds - 1
    );
    for family in Family::ALL {
        for &level in &args.levels {
            let v: Variant = format!("{}:{level}", family.name()).parse()?;
            let tasks = variants::generate(base, v, args.variant_seed, &donor)?;
            let prepared = replay::prepare(nodes, &tasks);
            let jobs: Vec<(PolicyKind, u64)> = policies
                .iter()
                .flat_map(|&p| (0..args.seeds).map(move |i| (p, FIRST_SEED + i)))
                .collect();
            let results = par_map(&jobs, args.jobs, |&(p, seed)| {
                replay::replay(&prepared, p, seed, args.max_arrival)
            });
            let mut line = format!("{:<12}", v.to_string());
            for &p in policies {
                let rs: Vec<&ReplayResult> = results.iter().filter(|r| r.policy == p).collect();
                let cell = SweepCell {
                    variant: v,
                    policy: p,
                    at_100: rs.iter().filter_map(|r| r.unallocated_at(100)).collect(),
                    at_max: rs
                        .iter()
                        .filter_map(|r| r.unallocated_at(args.max_arrival))
                        .collect(),
                };
                let _ = write!(line, " {}={}", p.name(), fmt_ms(mean_sd(&cell.at_100)));
                cells.push(cell);
            }
            println!("{line}   [{}]", TraceStats::of(&tasks));
        }
    }
    let md = sweep_markdown(&cells, policies);
    println!("\n{md}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        write(&out.join("sweep.csv"), &sweep_csv(&cells))?;
        write(&out.join("sweep.md"), &md)?;
        println!("wrote sweep.csv, sweep.md to {}", out.display());
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sd_is_population() {
        let (m, sd) = mean_sd(&[1.0, 3.0]);
        assert_eq!((m, sd), (2.0, 1.0));
    }

    #[test]
    fn unknown_policy_lists_names() {
        let e = select_policies("nope").unwrap_err().to_string();
        assert!(e.contains("fgd-balanced") && e.contains("best-fit"), "{e}");
        assert_eq!(select_policies("all").unwrap().len(), PolicyKind::ALL.len());
    }

    #[test]
    fn chart_is_svg_with_one_line_per_series() {
        let svg = svg_chart(
            "t <x>",
            &[
                ("a".into(), vec![(1.0, 1.0), (100.0, 90.0)]),
                ("b".into(), vec![(1.0, 1.0), (130.0, 95.0)]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;x&gt;"));
    }
}
