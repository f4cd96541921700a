//! `greenslice bench reclaim`: replays a workload with arrivals and departures at virtual time and
//! compares no reclaim with the idle policy. Runs the pure core directly (placement through
//! [`crate::placement::Policy::place`] on a [`ClusterView`], and the idle decision through
//! [`crate::reclaim::decide::decide`]), not the gRPC services: a simulated day takes milliseconds.
//!
//! Workload: the openb trace's GPU tasks with their creation and deletion times (a task's lifetime is
//! kept; it starts when placed, so queued tasks end later). A stated share of the slices (`--idle-share`,
//! drawn with `--seed`) go idle after working for a random 10-50% of their lifetime and stay idle
//! until the tenant deletes them (a notebook left open). Requests that do not fit wait in a FIFO queue;
//! every departure or reclaim retries the queue (first `--retry` waiting requests, in order).
//!
//! Simplifications, stated: GPUs are non-MIG (whole GPUs and shares, as in the trace); GPU model
//! constraints are ignored (every GPU is alike); CPU is checked, host memory is not; a reclaimed
//! tenant does not resubmit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::{Path, PathBuf};

use greenslice_core::gpu::GpuModel;
use greenslice_core::slice::{SliceKind, SliceSpec, SliceState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::model::slice::SliceRecord;
use crate::placement::{ClusterView, GpuView, NodeView, Policy, Request, policy_by_name};
use crate::reclaim::decide::{self, Action, Candidate, Marks, UsageView, Warning};
use crate::reclaim::policy::IdlePolicy;
use crate::telemetry::IdleTest;

/// Arguments of `greenslice bench reclaim`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Node list CSV (openb format).
    #[arg(long, default_value = crate::bench::openb::DEFAULT_NODES)]
    pub nodes: PathBuf,
    /// Pod list CSV (openb format, with creation_time and deletion_time in seconds).
    #[arg(long, default_value = crate::bench::openb::DEFAULT_PODS)]
    pub pods: PathBuf,
    /// Keep every Nth node only (a smaller cluster for the same workload: more contention).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub node_stride: u32,
    /// Arrivals come this many times faster than in the trace (lifetimes unchanged): the trace spans
    /// 149 days with little overlap; compressing arrivals makes the cluster contended.
    #[arg(long, default_value_t = 50.0)]
    pub speedup: f64,
    /// Share of slices that go idle and stay idle until deleted (0..1).
    #[arg(long, default_value_t = 0.3)]
    pub idle_share: f64,
    /// Share of slices of the exempt class "serving" (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub serving_share: f64,
    /// Placement policy.
    #[arg(long, default_value = "first-fit")]
    pub policy: String,
    /// Idle window, seconds.
    #[arg(long, default_value_t = 1800)]
    pub window_s: u64,
    /// Grace period after the warning, seconds.
    #[arg(long, default_value_t = 600)]
    pub grace_s: u64,
    /// Waiting requests retried on every departure.
    #[arg(long, default_value_t = 64)]
    pub retry: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also replay 10,000 slices over a simulated week through the controller's telemetry and
    /// report the memory its utilization history holds.
    #[arg(long)]
    pub history: bool,
    /// Seconds between samples in the history replay.
    #[arg(long, default_value_t = 5)]
    pub history_sample_s: i64,
}

/// One task with times.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedTask {
    pub cpu_milli: u64,
    pub num_gpu: u32,
    pub gpu_milli: u32,
    /// Arrival, s.
    pub arrive_s: i64,
    /// Lifetime, s.
    pub life_s: i64,
}

/// Reads GPU tasks with creation and deletion times from an openb pod list.
pub fn load_timed_tasks(path: &Path) -> anyhow::Result<Vec<TimedTask>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} is empty", path.display()))?
        .trim_start_matches('\u{feff}')
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| anyhow::anyhow!("{} has no column {name}", path.display()))
    };
    let (cpu, ng, gm, ct, dt) = (
        col("cpu_milli")?,
        col("num_gpu")?,
        col("gpu_milli")?,
        col("creation_time")?,
        col("deletion_time")?,
    );
    let mut out = Vec::new();
    for (i, l) in lines.enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        let get = |c: usize| -> anyhow::Result<i64> {
            f.get(c)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| anyhow::anyhow!("{} line {}: bad column {c}", path.display(), i + 2))
        };
        let num_gpu = get(ng)?;
        if num_gpu <= 0 {
            continue;
        }
        let (c, d) = (get(ct)?, get(dt)?);
        if d <= c {
            continue;
        }
        out.push(TimedTask {
            cpu_milli: u64::try_from(get(cpu)?).unwrap_or(0),
            num_gpu: u32::try_from(num_gpu.min(8)).unwrap_or(1),
            gpu_milli: u32::try_from(get(gm)?.clamp(1, 1000)).unwrap_or(1000),
            arrive_s: c,
            life_s: d - c,
        });
    }
    out.sort_by_key(|t| t.arrive_s);
    Ok(out)
}

/// Results of one run. GPU-hours and hours are of virtual time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub mode: &'static str,
    pub requests: usize,
    pub admitted: usize,
    pub never_admitted: usize,
    pub mean_wait_h: f64,
    pub p95_wait_h: f64,
    pub allocated_gpu_h: f64,
    pub idle_allocated_gpu_h: f64,
    pub reclaimed_slices: usize,
    pub warnings: usize,
    /// GPUs held by slices none of which is working, averaged from the first to the last arrival.
    pub held_gpus_with_no_work_avg: f64,
    /// GPUs with at least one working slice, averaged from the first to the last arrival.
    pub working_gpus_avg: f64,
    /// From the first to the last arrival, hours.
    pub arrival_window_h: f64,
    pub span_h: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Order within one instant: departures first, then checks, then idleness, then arrivals.
    Depart(usize),
    Check(usize),
    IdleStart(usize),
    Arrive(usize),
}

struct Live {
    node: usize,
    gpus: Vec<usize>,
    /// Per GPU, milli-GPU.
    milli: u32,
    cpu: u64,
    idle: bool,
    idle_since_ms: i64,
    warned: Option<Warning>,
    record: SliceRecord,
}

/// Usage the bench knows exactly: idle since a time, sampled "now".
struct KnownUsage {
    idle_since: Option<i64>,
    now: i64,
}

impl UsageView for KnownUsage {
    fn idle_since(&self, _: &str, _: &IdleTest) -> Option<i64> {
        self.idle_since
    }
    fn latest_ms(&self, _: &str) -> Option<i64> {
        Some(self.now)
    }
}

fn spec_of(t: &TimedTask, serving: bool) -> SliceSpec {
    SliceSpec {
        kind: if t.num_gpu == 1 && t.gpu_milli < 1000 {
            SliceKind::Share {
                compute_fraction: f64::from(t.gpu_milli) / 1000.0,
                memory_bytes: 0,
            }
        } else {
            SliceKind::Whole { count: t.num_gpu }
        },
        gpu_model: None,
        slice_class: serving.then(|| "serving".to_string()),
    }
}

/// One replay: `reclaim` false = no reclaim, true = the idle policy.
pub fn replay(
    base: &ClusterView,
    tasks: &[TimedTask],
    args: &Args,
    policy: &dyn Policy,
    reclaim: bool,
) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    // Per task: (goes idle, fraction of lifetime busy first, serving class). Same draws in both modes.
    let plan: Vec<(bool, f64, bool)> = tasks
        .iter()
        .map(|_| {
            (
                rng.random_bool(args.idle_share.clamp(0.0, 1.0)),
                rng.random_range(0.1..0.5),
                rng.random_bool(args.serving_share.clamp(0.0, 1.0)),
            )
        })
        .collect();
    let idle_policy = IdlePolicy {
        window_s: args.window_s,
        grace_s: args.grace_s,
        enabled: reclaim,
        ..Default::default()
    };
    let mut view = base.clone();
    // Per node, per GPU: (slices held, slices working).
    let mut held: Vec<Vec<(u16, u16)>> = view
        .nodes
        .iter()
        .map(|n| vec![(0, 0); n.gpus.len()])
        .collect();
    let mut events: BinaryHeap<Reverse<(i64, Ev)>> = BinaryHeap::new();
    for (i, t) in tasks.iter().enumerate() {
        events.push(Reverse((t.arrive_s * 1000, Ev::Arrive(i))));
    }
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut live: BTreeMap<usize, Live> = BTreeMap::new();
    let mut waits: Vec<f64> = Vec::new();
    let mut out = Outcome {
        mode: if reclaim { "idle policy" } else { "no reclaim" },
        requests: tasks.len(),
        ..Default::default()
    };
    let (mut no_work, mut working, mut alloc_gpus, mut idle_gpus) = (0i64, 0i64, 0.0f64, 0.0f64);
    let mut last_t = tasks.first().map_or(0, |t| t.arrive_s * 1000);
    let start_t = last_t;
    let horizon = tasks.last().map_or(0, |t| t.arrive_s * 1000);
    let gpu_state = |h: (u16, u16)| (h.0 > 0 && h.1 == 0, h.1 > 0);

    while let Some(Reverse((t, ev))) = events.pop() {
        let dt_h = (t - last_t) as f64 / 3_600_000.0;
        out.allocated_gpu_h += alloc_gpus * dt_h;
        out.idle_allocated_gpu_h += idle_gpus * dt_h;
        let in_window_h = (t.min(horizon) - last_t.min(horizon)) as f64 / 3_600_000.0;
        out.held_gpus_with_no_work_avg += no_work as f64 * in_window_h;
        out.working_gpus_avg += working as f64 * in_window_h;
        last_t = t;
        let mut freed = false;
        match ev {
            Ev::Arrive(i) => queue.push_back(i),
            Ev::IdleStart(i) => {
                if let Some(l) = live.get_mut(&i) {
                    l.idle = true;
                    l.idle_since_ms = t;
                    let frac = f64::from(l.milli) / 1000.0;
                    idle_gpus += frac * l.gpus.len() as f64;
                    for g in &l.gpus {
                        let h = &mut held[l.node][*g];
                        let (a0, b0) = gpu_state(*h);
                        h.1 -= 1;
                        let (a1, b1) = gpu_state(*h);
                        no_work += i64::from(a1) - i64::from(a0);
                        working += i64::from(b1) - i64::from(b0);
                    }
                    if reclaim {
                        events.push(Reverse((
                            t + idle_policy.window_s as i64 * 1000,
                            Ev::Check(i),
                        )));
                    }
                }
            }
            Ev::Check(i) => {
                let Some(l) = live.get_mut(&i) else { continue };
                let usage = KnownUsage {
                    idle_since: l.idle.then_some(l.idle_since_ms),
                    now: t,
                };
                let mut marks = Marks::default();
                if let Some(w) = l.warned {
                    marks.warned.insert(l.record.id.clone(), w);
                }
                let c = [Candidate {
                    slice: &l.record,
                    allocated_gpus: f64::from(l.milli) / 1000.0 * l.gpus.len() as f64,
                }];
                let mut reclaim_now = false;
                for a in decide::decide(&c, &usage, &idle_policy, &marks, t) {
                    match a {
                        Action::Warn {
                            idle_since_ms,
                            deadline_ms,
                            ..
                        } => {
                            out.warnings += 1;
                            l.warned = Some(Warning {
                                at_ms: t,
                                deadline_ms,
                                idle_since_ms,
                            });
                            events.push(Reverse((deadline_ms, Ev::Check(i))));
                        }
                        Action::Reclaim { .. } => reclaim_now = true,
                        _ => {}
                    }
                }
                if reclaim_now {
                    out.reclaimed_slices += 1;
                    events.push(Reverse((t, Ev::Depart(i))));
                }
            }
            Ev::Depart(i) => {
                let Some(l) = live.remove(&i) else { continue };
                let frac = f64::from(l.milli) / 1000.0;
                alloc_gpus -= frac * l.gpus.len() as f64;
                if l.idle {
                    idle_gpus -= frac * l.gpus.len() as f64;
                }
                let node = &mut view.nodes[l.node];
                node.cpu_used_milli = node.cpu_used_milli.saturating_sub(l.cpu);
                for g in &l.gpus {
                    let gv = &mut node.gpus[*g];
                    if l.milli >= 1000 {
                        gv.exclusive = false;
                        gv.used_milli = 0;
                    } else {
                        gv.used_milli = gv.used_milli.saturating_sub(l.milli);
                    }
                    let h = &mut held[l.node][*g];
                    let (a0, b0) = gpu_state(*h);
                    h.0 -= 1;
                    if !l.idle {
                        h.1 -= 1;
                    }
                    let (a1, b1) = gpu_state(*h);
                    no_work += i64::from(a1) - i64::from(a0);
                    working += i64::from(b1) - i64::from(b0);
                }
                freed = true;
            }
        }
        if !(freed || matches!(ev, Ev::Arrive(_))) {
            continue;
        }
        // Try waiting requests in order (bounded per event).
        let mut tried = 0;
        let mut k = 0;
        while k < queue.len() && tried < args.retry {
            let i = queue[k];
            tried += 1;
            let task = &tasks[i];
            let (_, _, serving) = plan[i];
            let req = Request {
                spec: spec_of(task, serving),
                cpu_milli: task.cpu_milli,
                memory_bytes: 0,
            };
            let Ok(p) = policy.place(&view, &req) else {
                k += 1;
                continue;
            };
            queue.remove(k);
            let milli = if task.num_gpu == 1 {
                task.gpu_milli
            } else {
                1000
            };
            let node = &mut view.nodes[p.node];
            node.cpu_used_milli += task.cpu_milli;
            for g in &p.gpus {
                let gv = &mut node.gpus[*g];
                if milli >= 1000 {
                    gv.exclusive = true;
                    gv.used_milli = 1000;
                } else {
                    gv.used_milli += milli;
                }
                let h = &mut held[p.node][*g];
                let (a0, b0) = gpu_state(*h);
                h.0 += 1;
                h.1 += 1;
                let (a1, b1) = gpu_state(*h);
                no_work += i64::from(a1) - i64::from(a0);
                working += i64::from(b1) - i64::from(b0);
            }
            alloc_gpus += f64::from(milli) / 1000.0 * p.gpus.len() as f64;
            waits.push((t - task.arrive_s * 1000) as f64 / 3_600_000.0);
            let (goes_idle, busy_frac, _) = plan[i];
            let life_ms = task.life_s * 1000;
            if goes_idle {
                let at = t + (life_ms as f64 * busy_frac) as i64;
                events.push(Reverse((at, Ev::IdleStart(i))));
            }
            events.push(Reverse((t + life_ms, Ev::Depart(i))));
            live.insert(
                i,
                Live {
                    node: p.node,
                    gpus: p.gpus.clone(),
                    milli,
                    cpu: task.cpu_milli,
                    idle: false,
                    idle_since_ms: 0,
                    warned: None,
                    record: SliceRecord {
                        id: format!("s-{i}"),
                        tenant: "t".into(),
                        spec: req.spec.clone(),
                        state: SliceState::Active,
                        node: view.nodes[p.node].name.clone(),
                        gpus: Vec::new(),
                        mig: None,
                        env: Default::default(),
                        reason: String::new(),
                        idempotency_key: None,
                        created_ms: t,
                        updated_ms: t,
                        kept_until_ms: None,
                        claim: None,
                        host: Default::default(),
                    },
                },
            );
        }
    }
    let span_h = (last_t - start_t) as f64 / 3_600_000.0;
    out.span_h = span_h;
    out.admitted = waits.len();
    out.never_admitted = queue.len();
    waits.sort_by(f64::total_cmp);
    out.mean_wait_h = waits.iter().sum::<f64>() / waits.len().max(1) as f64;
    out.p95_wait_h = waits
        .get((waits.len() as f64 * 0.95) as usize)
        .copied()
        .unwrap_or(0.0);
    out.arrival_window_h = (horizon - start_t) as f64 / 3_600_000.0;
    if out.arrival_window_h > 0.0 {
        out.held_gpus_with_no_work_avg /= out.arrival_window_h;
        out.working_gpus_avg /= out.arrival_window_h;
    }
    out
}

/// The cluster of the trace's GPU nodes (every `stride`-th), as placement sees it.
pub fn cluster(nodes: &[crate::bench::openb::TraceNode], stride: usize) -> ClusterView {
    ClusterView {
        nodes: nodes
            .iter()
            .filter(|n| n.gpus > 0)
            .step_by(stride.max(1))
            .map(|n| NodeView {
                name: n.name.clone(),
                schedulable: true,
                mig_create: true,
                cpu_milli: u64::from(n.cpu_milli),
                cpu_used_milli: 0,
                memory_bytes: 0,
                memory_used_bytes: 0,
                gpus: (0..n.gpus)
                    .map(|i| GpuView {
                        uuid: format!("{}-{i}", n.name),
                        model: GpuModel::A100Sxm4_80Gb,
                        healthy: true,
                        mig_enabled: false,
                        memory_bytes: 80 << 30,
                        used_milli: 0,
                        used_memory_bytes: 0,
                        exclusive: false,
                        mig_layout: Vec::new(),
                        free_instances: Vec::new(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Memory of the utilization history in a replay of `slices` slices arriving uniformly over `days`
/// days (lifetimes exponential, mean 4 h, at most 2 days), each sampled every `sample_s` seconds
/// through the controller's own [`crate::telemetry::Telemetry`] path, with the controller's
/// retention (histories of slices ended over an hour ago are dropped).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReplay {
    pub slices: usize,
    pub days: i64,
    pub sample_s: i64,
    pub points: u64,
    pub peak_tracked_slices: usize,
    pub peak_history_bytes: usize,
    pub end_history_bytes: usize,
    pub bytes_per_series: usize,
    pub rss_before_bytes: u64,
    pub rss_peak_bytes: u64,
    pub seconds: f64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the history replay.
pub fn history_replay(slices: usize, days: i64, sample_s: i64, seed: u64) -> HistoryReplay {
    use crate::telemetry::{IdleTest, SliceInfo, Telemetry};
    use greenslice_core::sample::{AttributedSample, SliceActivity};
    let started = std::time::Instant::now();
    let rss_before = rss_bytes();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let week_ms = days * 86_400_000;
    let step = sample_s.max(1) * 1000;
    // (start, end) per slice.
    let spans: Vec<(i64, i64)> = (0..slices)
        .map(|_| {
            let s = rng.random_range(0..week_ms);
            let u: f64 = rng.random_range(1e-9..1.0);
            let life = ((-u.ln()) * 4.0 * 3_600_000.0).min(2.0 * 86_400_000.0) as i64;
            (s, s + life.max(step))
        })
        .collect();
    let tel = Telemetry::default();
    let info = SliceInfo {
        tenant: "t".into(),
        node: "n".into(),
        allocated_gpus: 1.0,
        idle: IdleTest {
            allocated_gpus: 1.0,
            threshold_pct: 5.0,
            memory_threshold_pct: 5.0,
        },
    };
    let (mut points, mut peak_tracked, mut peak_bytes, mut rss_peak) = (0u64, 0, 0, rss_before);
    let mut order: Vec<usize> = (0..slices).collect();
    order.sort_by_key(|i| spans[*i].0);
    let mut t = 0;
    let mut active: Vec<usize> = Vec::new();
    let mut next = 0;
    while t < week_ms + 2 * 86_400_000 {
        while next < order.len() && spans[order[next]].0 <= t {
            active.push(order[next]);
            next += 1;
        }
        active.retain(|i| spans[*i].1 > t);
        // One sample per active slice, each on its own GPU (one batch per instant).
        let samples: Vec<AttributedSample> = active
            .iter()
            .map(|i| AttributedSample {
                at_unix_ms: t,
                gpu_uuid: format!("g{}", i % 256),
                gpu_util_pct: Some((i % 100) as u32),
                slices: vec![SliceActivity {
                    slice_id: format!("s{i}"),
                    sm_pct: (i % 100) as f64,
                    memory_bytes: 1 << 30,
                    processes: 1,
                    activity_known: true,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        points += samples.len() as u64;
        tel.record_usage("n", &samples, &|_| Some(info.clone()));
        if t % 600_000 == 0 {
            // The controller's retention, run at its check interval.
            tel.retain_slices(|id| {
                id[1..]
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| spans.get(i))
                    .is_some_and(|(_, e)| t - e < crate::reclaim::KEEP_RELEASED_HISTORY_MS)
            });
            peak_tracked = peak_tracked.max(tel.tracked_slices().len());
            peak_bytes = peak_bytes.max(tel.history_bytes());
            rss_peak = rss_peak.max(rss_bytes());
        }
        t += step;
    }
    HistoryReplay {
        slices,
        days,
        sample_s,
        points,
        peak_tracked_slices: peak_tracked,
        peak_history_bytes: peak_bytes,
        end_history_bytes: tel.history_bytes(),
        bytes_per_series: crate::telemetry::history::SeriesHistory::BYTES,
        rss_before_bytes: rss_before,
        rss_peak_bytes: rss_peak,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Runs the benchmark and prints the comparison.
pub fn run(args: Args, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.idle_share) && (0.0..=1.0).contains(&args.serving_share),
        "--idle-share and --serving-share must be within 0..=1"
    );
    let nodes = crate::bench::openb::load_nodes(&args.nodes)?;
    anyhow::ensure!(args.speedup >= 1.0, "--speedup must be at least 1");
    let mut tasks = load_timed_tasks(&args.pods)?;
    for t in &mut tasks {
        t.arrive_s = (t.arrive_s as f64 / args.speedup) as i64;
    }
    let policy = policy_by_name(&args.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = cluster(&nodes, args.node_stride as usize);
    let gpus: usize = base.nodes.iter().map(|n| n.gpus.len()).sum();
    let started = std::time::Instant::now();
    let a = replay(&base, &tasks, &args, policy.as_ref(), false);
    let b = replay(&base, &tasks, &args, policy.as_ref(), true);
    let secs = started.elapsed().as_secs_f64();
    let hist = args
        .history
        .then(|| history_replay(10_000, 7, args.history_sample_s, args.seed));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "nodes": base.nodes.len(), "gpus": gpus, "tasks": tasks.len(),
                "speedup": args.speedup, "idle_share": args.idle_share, "window_s": args.window_s, "grace_s": args.grace_s,
                "policy": args.policy, "seed": args.seed, "runs": [a, b], "seconds": secs,
                "history": hist,
            }))?
        );
        return Ok(());
    }
    println!(
        "reclaim: {} nodes ({} GPUs, 1 of every {} openb GPU nodes), {} GPU tasks from {} arriving {}x faster, {:.0}% go idle, window {} s + grace {} s, policy {}, seed {} ({secs:.1} s)",
        base.nodes.len(),
        gpus,
        args.node_stride,
        tasks.len(),
        args.pods.display(),
        args.speedup,
        args.idle_share * 100.0,
        args.window_s,
        args.grace_s,
        args.policy,
        args.seed
    );
    let row = |name: &str, f: &dyn Fn(&Outcome) -> String| vec![name.to_string(), f(&a), f(&b)];
    let rows = vec![
        row("requests admitted", &|o| {
            format!("{} of {}", o.admitted, o.requests)
        }),
        row("never admitted", &|o| o.never_admitted.to_string()),
        row("mean queueing delay (h)", &|o| {
            format!("{:.2}", o.mean_wait_h)
        }),
        row("p95 queueing delay (h)", &|o| {
            format!("{:.2}", o.p95_wait_h)
        }),
        row("allocated GPU-hours", &|o| {
            format!("{:.0}", o.allocated_gpu_h)
        }),
        row("idle-allocated GPU-hours", &|o| {
            format!("{:.0}", o.idle_allocated_gpu_h)
        }),
        row("held GPUs with no work (avg while arriving)", &|o| {
            format!("{:.1}", o.held_gpus_with_no_work_avg)
        }),
        row("GPUs with work (avg while arriving)", &|o| {
            format!("{:.1}", o.working_gpus_avg)
        }),
        row("warnings / reclaims", &|o| {
            format!("{} / {}", o.warnings, o.reclaimed_slices)
        }),
        row("replay span (days)", &|o| format!("{:.1}", o.span_h / 24.0)),
    ];
    let mut w = [0usize; 3];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    println!(
        "{:<w0$}  {:>w1$}  {:>w2$}",
        "",
        "no reclaim",
        "idle policy",
        w0 = w[0],
        w1 = w[1].max(10),
        w2 = w[2].max(11)
    );
    for r in &rows {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}",
            r[0],
            r[1],
            r[2],
            w0 = w[0],
            w1 = w[1].max(10),
            w2 = w[2].max(11)
        );
    }
    if let Some(h) = hist {
        println!(
            "history memory: {} slices over {} days sampled every {} s ({} points, {:.1} s): peak {} tracked slices, peak {:.1} MiB of history ({} B per series), {:.1} MiB at the end; process RSS {:.1} MiB before, {:.1} MiB peak",
            h.slices,
            h.days,
            h.sample_s,
            h.points,
            h.seconds,
            h.peak_tracked_slices,
            h.peak_history_bytes as f64 / 1048576.0,
            h.bytes_per_series,
            h.end_history_bytes as f64 / 1048576.0,
            h.rss_before_bytes as f64 / 1048576.0,
            h.rss_peak_bytes as f64 / 1048576.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
