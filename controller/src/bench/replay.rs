//! The packing replay: the FGD artifact's published protocol on the openb trace (see
//! `../shared/data/openb/README.md`), over a compact cluster state. Node scores come from
//! [`super::score`], the same functions the live policies use.
//!
//! Per seed: tasks sorted by name then shuffled; inflated by drawing with replacement from the
//! name-sorted list up to the arrival limit (with the artifact's quirk: the stop test adds the
//! per-GPU share, the running total the full demand); nodes shuffled to give each a rank, the
//! tie-break for the whole run. Each task is placed once or fails; nothing leaves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::openb::{MAX_NODE_GPUS, TraceNode, TraceTask};
use crate::placement::policies::PolicyKind;
use crate::placement::score::{Demand, FULL, ModelIds, ModelMask, NodeRef, Workload};

/// Share of the original tasks the FGD target workload covers.
pub const FGD_COVERAGE: f64 = 0.95;

/// A trace ready to replay: nodes and tasks sorted by name, in compact form.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub(super) nodes: Vec<SimNode>,
    pub(super) tasks: Vec<SimTask>,
    shapes: usize,
    workload: Workload,
    pub(super) total_gpus: u64,
    /// Sum of the tasks' GPU demand, milli-GPU.
    pub(super) trace_demand: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SimTask {
    pub(super) demand: Demand,
    pub(super) memory_mib: u64,
    shape: u32,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SimNode {
    pub(super) cpu_free: u32,
    pub(super) mem_free: u64,
    model: u8,
    pub(super) n: u8,
    free: [u16; MAX_NODE_GPUS],
    tags: u16,
    max_free: u16,
    n_full: u8,
    /// Interned state id (see [`Interner`]).
    state: u32,
    /// FGD fragmentation times the workload total.
    frag: u64,
}

impl SimNode {
    fn view(&self) -> NodeRef<'_> {
        NodeRef {
            cpu_free: self.cpu_free,
            gpu_free: &self.free[..usize::from(self.n)],
            model: self.model,
            tags: self.tags,
        }
    }

    fn refresh(&mut self) {
        let g = &self.free[..usize::from(self.n)];
        self.max_free = g.iter().copied().max().unwrap_or(0);
        self.n_full = g.iter().filter(|&&f| f == FULL).count() as u8;
    }

    fn feasible(&self, t: &SimTask) -> bool {
        let d = &t.demand;
        self.cpu_free >= d.cpu
            && self.mem_free >= t.memory_mib
            && (d.gpus == 0
                || (d.models.allows(self.model)
                    && if d.gpus == 1 {
                        self.max_free >= d.milli
                    } else {
                        self.n_full >= d.gpus
                    }))
    }

    fn key(&self) -> StateKey {
        let mut free = self.free;
        free[..usize::from(self.n)].sort_unstable();
        StateKey {
            cpu_free: self.cpu_free,
            model: self.model,
            n: self.n,
            free,
        }
    }
}

/// What a memoised score depends on: GPU order does not matter to FGD's node score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StateKey {
    cpu_free: u32,
    model: u8,
    n: u8,
    free: [u16; MAX_NODE_GPUS],
}

/// Interns node states and memoises node scores per (state, task shape): identical nodes are
/// scored once, and a node's scores are recomputed only after it changes.
struct Interner {
    ids: HashMap<StateKey, u32>,
    memo: Vec<Vec<i64>>,
    shapes: usize,
}

const UNKNOWN: i64 = i64::MIN;

impl Interner {
    fn new(shapes: usize) -> Interner {
        Interner {
            ids: HashMap::new(),
            memo: Vec::new(),
            shapes,
        }
    }

    fn intern(&mut self, key: StateKey) -> u32 {
        let next = self.memo.len() as u32;
        let id = *self.ids.entry(key).or_insert(next);
        if id == next {
            self.memo.push(vec![UNKNOWN; self.shapes]);
        }
        id
    }
}

/// Builds the replay's compact form of a trace. Nodes and tasks are sorted by name here.
pub fn prepare(nodes: &[TraceNode], tasks: &[TraceTask]) -> Prepared {
    let mut nodes: Vec<&TraceNode> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tasks: Vec<&TraceTask> = tasks.iter().collect();
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    let mut models = ModelIds::default();
    let sim_nodes: Vec<SimNode> = nodes
        .iter()
        .map(|n| {
            let n_gpu = usize::from(n.gpus).min(MAX_NODE_GPUS);
            let mut free = [0u16; MAX_NODE_GPUS];
            free[..n_gpu].fill(FULL);
            let mut s = SimNode {
                cpu_free: n.cpu_milli,
                mem_free: n.memory_mib,
                // Past 64 models, a model no mask allows.
                model: models.intern(&n.model).unwrap_or(u8::MAX),
                n: n_gpu as u8,
                free,
                tags: 0,
                max_free: 0,
                n_full: 0,
                state: 0,
                frag: 0,
            };
            s.refresh();
            s
        })
        .collect();
    let mut shape_ids: HashMap<Demand, u32> = HashMap::new();
    let sim_tasks: Vec<SimTask> = tasks
        .iter()
        .map(|t| {
            let demand = Demand {
                cpu: t.cpu_milli,
                gpus: t.num_gpu,
                milli: t.gpu_milli,
                models: if t.models.is_empty() {
                    ModelMask::ANY
                } else {
                    models.mask(t.models.iter().map(String::as_str))
                },
            };
            let next = shape_ids.len() as u32;
            let shape = *shape_ids.entry(demand).or_insert(next);
            SimTask {
                demand,
                memory_mib: t.memory_mib,
                shape,
            }
        })
        .collect();
    let mut supply = vec![0u64; 64];
    for n in &sim_nodes {
        if let Some(s) = supply.get_mut(usize::from(n.model)) {
            *s += u64::from(n.n) * u64::from(FULL);
        }
    }
    let workload = Workload::from_demands(sim_tasks.iter().map(|t| t.demand), FGD_COVERAGE)
        .with_supply(&supply);
    Prepared {
        total_gpus: sim_nodes.iter().map(|n| u64::from(n.n)).sum(),
        trace_demand: sim_tasks
            .iter()
            .map(|t| u64::from(t.demand.gpu_total()))
            .sum(),
        nodes: sim_nodes,
        tasks: sim_tasks,
        shapes: shape_ids.len(),
        workload,
    }
}

impl Prepared {
    /// GPUs in the cluster.
    pub fn total_gpus(&self) -> u64 {
        self.total_gpus
    }

    /// Tasks in the trace.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The FGD target workload of the trace.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }
}

/// The arrival order of one seed: indices into the name-sorted tasks (the shuffled trace, then the
/// inflation draws), and the node order by rank (lowest rank first).
pub fn arrival_order(p: &Prepared, seed: u64, max_arrival_pct: u32) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seq: Vec<usize> = (0..p.tasks.len()).collect();
    seq.shuffle(&mut rng);
    let limit = f64::from(max_arrival_pct) / 100.0 * (p.total_gpus * u64::from(FULL)) as f64;
    let mut total = p.trace_demand;
    // Without any GPU task the artifact's loop would never stop: no inflation then.
    if p.tasks.iter().any(|t| t.demand.milli > 0) {
        loop {
            let i = rng.random_range(0..p.tasks.len());
            let d = &p.tasks[i].demand;
            // The artifact's quirk: the test adds the per-GPU share, the total the full demand.
            if (total + u64::from(d.milli)) as f64 > limit {
                break;
            }
            seq.push(i);
            total += u64::from(d.gpu_total());
        }
    }
    let mut order: Vec<usize> = (0..p.nodes.len()).collect();
    order.shuffle(&mut rng);
    (seq, order)
}

/// Allocation and fragmentation at one arrival level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalPoint {
    /// Arrived GPU demand, % of cluster GPUs.
    pub arrival_pct: u32,
    /// Allocated GPU compute, % of cluster GPUs.
    pub allocated_pct: f64,
    /// GPU compute the target workload cannot use (FGD's fragmentation), % of cluster GPUs.
    pub fragmented_pct: f64,
}

/// The outcome of one replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayResult {
    pub policy: PolicyKind,
    pub seed: u64,
    /// One point per arrival % from 1 to the limit (levels without events are left out).
    pub points: Vec<ArrivalPoint>,
    /// Tasks placed and failed.
    pub placed: usize,
    pub failed: usize,
    /// Time per placement decision, ns: median and 99th percentile.
    pub decision_median_ns: u64,
    pub decision_p99_ns: u64,
    /// Whole replay (after the arrival order is drawn).
    pub wall: Duration,
}

impl ReplayResult {
    /// Unallocated GPU % at `arrival_pct` (100 - allocated), if reached.
    pub fn unallocated_at(&self, arrival_pct: u32) -> Option<f64> {
        self.point(arrival_pct).map(|p| 100.0 - p.allocated_pct)
    }

    /// The point at `arrival_pct`, if reached.
    pub fn point(&self, arrival_pct: u32) -> Option<&ArrivalPoint> {
        self.points.iter().find(|p| p.arrival_pct == arrival_pct)
    }
}

#[derive(Default, Clone, Copy)]
struct Bucket {
    n: u64,
    u: f64,
    f: f64,
}

/// The artifact's metric: after every task, the arrival level `round(arrived / gpus / 10)` (%)
/// and the allocation `round(allocated / gpus / 10, 2)` (%), plus one more figure (`extra`, in %);
/// the value at X% is the mean over the events at level X (or X-1..=X+1 when none).
pub(super) struct Metric {
    buckets: Vec<Bucket>,
    gpus: f64,
}

impl Metric {
    pub(super) fn new(total_gpus: u64, max_arrival_pct: u32) -> Metric {
        Metric {
            buckets: vec![Bucket::default(); max_arrival_pct as usize + 3],
            gpus: total_gpus.max(1) as f64,
        }
    }

    /// Records one event: `arrived` and `allocated` in milli-GPU, `extra` in %.
    pub(super) fn record(&mut self, arrived: u64, allocated: u64, extra: f64) {
        let a = (arrived as f64 / self.gpus / 10.0).round_ties_even();
        let u = (allocated as f64 / self.gpus / 10.0 * 100.0).round_ties_even() / 100.0;
        if let Some(b) = self.buckets.get_mut(a as usize) {
            b.n += 1;
            b.u += u;
            b.f += extra;
        }
    }

    /// `extra` as a % of the cluster's GPUs for an amount in milli-GPU.
    pub(super) fn pct(&self, milli: f64) -> f64 {
        milli / self.gpus / 10.0
    }

    /// (arrival %, mean allocation %, mean extra) for 1..=max, leaving out levels never reached.
    pub(super) fn points(&self, max_arrival_pct: u32) -> Vec<(u32, f64, f64)> {
        let bs = &self.buckets;
        (1..=max_arrival_pct as usize)
            .filter_map(|x| {
                let b = if bs[x].n > 0 {
                    bs[x]
                } else {
                    bs[x - 1..=x + 1]
                        .iter()
                        .fold(Bucket::default(), |s, b| Bucket {
                            n: s.n + b.n,
                            u: s.u + b.u,
                            f: s.f + b.f,
                        })
                };
                (b.n > 0).then(|| (x as u32, b.u / b.n as f64, b.f / b.n as f64))
            })
            .collect()
    }
}

/// Median and 99th percentile of decision times, ns.
pub(super) fn median_p99(mut times: Vec<u64>) -> (u64, u64) {
    times.sort_unstable();
    let q = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    (q(0.5), q(0.99))
}

/// Replays one seed of the protocol with one policy.
pub fn replay(p: &Prepared, policy: PolicyKind, seed: u64, max_arrival_pct: u32) -> ReplayResult {
    let (seq, order) = arrival_order(p, seed, max_arrival_pct);
    // Random's own stream, so the arrival order is the same for every policy.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let mut nodes = p.nodes.clone();
    let mut interner = Interner::new(p.shapes);
    let w = &p.workload;
    let mut cluster_frag = 0u64;
    for n in &mut nodes {
        n.state = interner.intern(n.key());
        n.frag = w.frag_scaled(n.cpu_free, &n.free[..usize::from(n.n)], n.model);
        cluster_frag += n.frag;
    }
    let mut metric = Metric::new(p.total_gpus, max_arrival_pct);
    let mut times = Vec::with_capacity(seq.len());
    let (mut arrived, mut allocated) = (0u64, 0u64);
    let (mut placed, mut failed) = (0usize, 0usize);
    let mut feasible = Vec::with_capacity(nodes.len());
    for &ti in &seq {
        let t0 = Instant::now();
        let task = &p.tasks[ti];
        let d = &task.demand;
        arrived += u64::from(d.gpu_total());
        let chosen = if policy == PolicyKind::Random {
            feasible.clear();
            feasible.extend(order.iter().copied().filter(|&ni| nodes[ni].feasible(task)));
            (!feasible.is_empty()).then(|| feasible[rng.random_range(0..feasible.len())])
        } else {
            let mut best: Option<(i64, usize)> = None;
            for &ni in &order {
                let n = &nodes[ni];
                if !n.feasible(task) {
                    continue;
                }
                let s = if policy.memoisable() {
                    let m = &mut interner.memo[n.state as usize][task.shape as usize];
                    if *m == UNKNOWN {
                        *m = node_score(policy, w, &n.view(), d);
                    }
                    *m
                } else {
                    node_score(policy, w, &n.view(), d)
                };
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, ni));
                }
            }
            best.map(|(_, ni)| ni)
        };
        match chosen {
            Some(ni) => {
                let n = &mut nodes[ni];
                let view = n.view();
                let fit = view.fit_mask(d);
                let gpus = match policy {
                    PolicyKind::Random => random_gpus(&view, d, fit, &mut rng),
                    _ => policy
                        .score(w, &view, d, fit)
                        .map(|c| c.1)
                        .unwrap_or_default(),
                };
                n.cpu_free -= d.cpu;
                n.mem_free -= task.memory_mib;
                for &g in &gpus {
                    n.free[g] -= d.milli;
                }
                n.tags |= d.tag();
                n.refresh();
                n.state = interner.intern(n.key());
                cluster_frag -= n.frag;
                n.frag = w.frag_scaled(n.cpu_free, &n.free[..usize::from(n.n)], n.model);
                cluster_frag += n.frag;
                allocated += u64::from(d.gpu_total());
                placed += 1;
            }
            None => failed += 1,
        }
        times.push(t0.elapsed().as_nanos() as u64);
        let frag = metric.pct(cluster_frag as f64 / w.total().max(1) as f64);
        metric.record(arrived, allocated, frag);
    }
    let wall = started.elapsed();
    let (median, p99) = median_p99(times);
    let points = metric
        .points(max_arrival_pct)
        .into_iter()
        .map(|(x, u, f)| ArrivalPoint {
            arrival_pct: x,
            allocated_pct: u,
            fragmented_pct: f,
        })
        .collect();
    ReplayResult {
        policy,
        seed,
        points,
        placed,
        failed,
        decision_median_ns: median,
        decision_p99_ns: p99,
        wall,
    }
}

/// A node's score under `policy` (higher is better; Random is not scored).
fn node_score(policy: PolicyKind, w: &Workload, n: &NodeRef, d: &Demand) -> i64 {
    policy
        .score(w, n, d, n.fit_mask(d))
        .map_or(i64::MIN + 1, |c| c.0)
}

fn random_gpus(n: &NodeRef, d: &Demand, fit: u32, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let need = if d.gpus > 1 { FULL } else { d.milli };
    let mut c: Vec<usize> = (0..n.gpu_free.len())
        .filter(|&i| fit & (1 << i) != 0 && n.gpu_free[i] >= need)
        .collect();
    if d.gpus == 0 || c.len() < usize::from(d.gpus) {
        return Vec::new();
    }
    c.shuffle(rng);
    c.truncate(usize::from(d.gpus));
    c.sort_unstable();
    c
}

#[cfg(test)]
mod tests;
