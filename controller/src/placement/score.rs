//! Node scores of every policy, over a compact view of one node. One home for each score: the live
//! policies ([`super::policies`]) and the openb replay ([`super::replay`]) both call these functions.
//!
//! Units: CPU in milli-cores, GPU compute in milli-GPU (1000 = one whole GPU). A higher score is a
//! better node. Scores are integers, as in the FGD artifact: ties go to the node of lowest rank.

use greenslice_core::mig;

/// Most GPUs one node may have in a [`NodeRef`] fit mask (bit i = GPU i).
pub const MAX_GPUS: usize = 32;

/// CPU normalisation of the artifact's scores: 128 cores in milli-cores.
pub const CPU_NORM_MILLI: f64 = 128_000.0;
/// GPU normalisation of the artifact's scores: 8 GPUs in milli-GPU.
pub const GPU_NORM_MILLI: f64 = 8_000.0;
/// One whole GPU in milli-GPU.
pub const FULL: u16 = 1000;

/// A set of GPU models, bit i = model id i (ids are local to a cluster, see [`ModelIds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelMask(pub u64);

impl ModelMask {
    /// Every model.
    pub const ANY: ModelMask = ModelMask(u64::MAX);

    /// Whether model `id` is in the set.
    pub fn allows(self, id: u8) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }
}

/// Interns GPU model names into the small ids a [`ModelMask`] holds (at most 64).
#[derive(Debug, Clone, Default)]
pub struct ModelIds {
    names: Vec<String>,
}

impl ModelIds {
    /// The id of `name`, added if new; `None` past 64 models.
    pub fn intern(&mut self, name: &str) -> Option<u8> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return u8::try_from(i).ok();
        }
        if self.names.len() >= 64 {
            return None;
        }
        self.names.push(name.to_string());
        u8::try_from(self.names.len() - 1).ok()
    }

    /// The id of a known name.
    pub fn get(&self, name: &str) -> Option<u8> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// The mask of the known names among `names` (unknown names allow nothing).
    pub fn mask<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> ModelMask {
        ModelMask(
            names
                .into_iter()
                .filter_map(|n| self.get(n))
                .fold(0, |m, i| m | (1 << i)),
        )
    }
}

/// What a request needs, as the scores see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Demand {
    /// Host CPU, milli-cores.
    pub cpu: u32,
    /// GPUs wanted: 0 = CPU only, 1 = one GPU (a share when `milli` < 1000), k > 1 = k whole GPUs.
    pub gpus: u8,
    /// Compute per GPU, milli-GPU (1..=1000; 0 when `gpus` = 0).
    pub milli: u16,
    /// GPU models allowed.
    pub models: ModelMask,
}

impl Demand {
    /// Total GPU demand, milli-GPU.
    pub fn gpu_total(&self) -> u32 {
        u32::from(self.gpus) * u32::from(self.milli)
    }

    /// Whether the demand is a share of one GPU (not a whole GPU).
    pub fn is_share(&self) -> bool {
        self.gpus == 1 && self.milli < FULL
    }

    /// The GpuClustering tag: bit 0 = share, bit k = k whole GPUs (0 for CPU-only).
    pub fn tag(&self) -> u16 {
        match self.gpus {
            0 => 0,
            _ if self.is_share() => 1,
            k => 1u16 << k.min(15),
        }
    }
}

/// A node as the scores see it.
#[derive(Debug, Clone, Copy)]
pub struct NodeRef<'a> {
    /// Free host CPU, milli-cores.
    pub cpu_free: u32,
    /// Free compute of each GPU, milli-GPU (0 for a GPU the scores must not use).
    pub gpu_free: &'a [u16],
    /// GPU model id (see [`ModelIds`]).
    pub model: u8,
    /// GpuClustering tags of the GPU tasks on the node (see [`Demand::tag`]).
    pub tags: u16,
}

impl NodeRef<'_> {
    /// Total free GPU compute, milli-GPU.
    pub fn gpu_free_total(&self) -> u32 {
        self.gpu_free.iter().map(|&f| u32::from(f)).sum()
    }

    /// The GPUs that can take `d` by compute alone, as a mask.
    pub fn fit_mask(&self, d: &Demand) -> u32 {
        let need = if d.gpus > 1 { FULL } else { d.milli };
        self.gpu_free
            .iter()
            .enumerate()
            .take(MAX_GPUS)
            .filter(|(_, f)| **f >= need && d.gpus > 0)
            .fold(0, |m, (i, _)| m | (1 << i))
    }
}

fn fully_free(node: &NodeRef, fit: u32) -> impl Iterator<Item = usize> {
    let free = node.gpu_free;
    (0..free.len().min(MAX_GPUS)).filter(move |&i| fit & (1 << i) != 0 && free[i] == FULL)
}

/// GPUs for `d` on a chosen node, by the artifact's rule shared by all but FGD and Random: a share
/// takes the fitting GPU with the least free compute (lowest index on ties); whole GPUs are the
/// lowest-index fully free ones. `fit` is the mask of GPUs allowed to take it. Empty for CPU-only
/// or when nothing fits.
pub fn pick_least_free(node: &NodeRef, d: &Demand, fit: u32) -> Vec<usize> {
    match d.gpus {
        0 => Vec::new(),
        1 if d.is_share() => (0..node.gpu_free.len().min(MAX_GPUS))
            .filter(|&i| fit & (1 << i) != 0 && node.gpu_free[i] >= d.milli)
            .min_by_key(|&i| (node.gpu_free[i], i))
            .into_iter()
            .collect(),
        k => {
            let v: Vec<usize> = fully_free(node, fit).take(usize::from(k)).collect();
            if v.len() == usize::from(k) {
                v
            } else {
                Vec::new()
            }
        }
    }
}

/// BestFit: prefer the node left with the least free CPU and GPU.
/// `trunc(100 * (1 - ((cpu_free - cpu)/128000 * 0.5 + (gpu_free - gpu)/8000 * 0.5)))`.
pub fn best_fit(node: &NodeRef, d: &Demand) -> i64 {
    let cpu = (f64::from(node.cpu_free) - f64::from(d.cpu)) / CPU_NORM_MILLI;
    let gpu = (f64::from(node.gpu_free_total()) - f64::from(d.gpu_total())) / GPU_NORM_MILLI;
    (100.0 * (1.0 - (cpu * 0.5 + gpu * 0.5))).trunc() as i64
}

/// DotProduct: prefer the node whose free vector is least aligned with the demand.
/// `trunc(100 * (1 - (cpu_free/128000 * cpu/128000 + gpu_free/8000 * gpu/8000) / 2))`.
pub fn dot_product(node: &NodeRef, d: &Demand) -> i64 {
    let c = f64::from(node.cpu_free) / CPU_NORM_MILLI * f64::from(d.cpu) / CPU_NORM_MILLI;
    let g = f64::from(node.gpu_free_total()) / GPU_NORM_MILLI * f64::from(d.gpu_total())
        / GPU_NORM_MILLI;
    (100.0 * (1.0 - (c + g) / 2.0)).trunc() as i64
}

/// GpuPacking: prefer partly used GPUs, then partly used nodes, then idle nodes (small ones first).
/// 0 for CPU-only; idle node: `max(33 - n_gpu, n_gpu)`; else the GPUs [`pick_least_free`] takes: `c`
/// fully free among them gives `max(50 - c, 33)`, none gives
/// `max(100 - floor(sum(floor(free * 100 / 1000)) / 10), 50)`.
pub fn gpu_packing(node: &NodeRef, d: &Demand, fit: u32) -> i64 {
    if d.gpus == 0 {
        return 0;
    }
    let n = node.gpu_free.len() as i64;
    if node.gpu_free.iter().all(|&f| f == FULL) {
        return (33 - n).max(n);
    }
    let chosen = pick_least_free(node, d, fit);
    let c = chosen.iter().filter(|&&i| node.gpu_free[i] == FULL).count() as i64;
    if c >= 1 {
        (50 - c).max(33)
    } else {
        let pct: i64 = chosen
            .iter()
            .map(|&i| i64::from(node.gpu_free[i]) * 100 / 1000)
            .sum();
        (100 - pct / 10).max(50)
    }
}

/// GpuClustering: keep tasks of one kind together. 0 for CPU-only; else
/// `floor(25 * (8000 - gpu_free)/8000)` plus 75 (node hosts only this kind), 50 (this kind among
/// others), 25 (no GPU task) or 0 (only other kinds).
pub fn gpu_clustering(node: &NodeRef, d: &Demand) -> i64 {
    let tag = d.tag();
    if tag == 0 {
        return 0;
    }
    let base = 25 * (8000 - i64::from(node.gpu_free_total())) / 8000;
    base + if node.tags & tag != 0 {
        if node.tags == tag { 75 } else { 50 }
    } else if node.tags == 0 {
        25
    } else {
        0
    }
}

/// One class of the FGD target workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadClass {
    /// The class's demand.
    pub demand: Demand,
    /// How many tasks of the trace fall in it (its weight).
    pub count: u64,
}

/// The FGD target workload: the request classes fragmentation is measured against, with weights.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workload {
    classes: Vec<WorkloadClass>,
    total: u64,
    cpu_per_gpu_milli: f64,
    /// Per model id: weight of the model-constrained GPU classes that allow it.
    constrained_on: Vec<u64>,
    /// Per model id present in the cluster: the share (0..=1) of its compute that the
    /// model-constrained classes will ask for by full arrival (see [`Workload::with_supply`]).
    pressure: Vec<(u8, f64)>,
}

impl Workload {
    /// Builds the workload from task demands as FGD does: group equal demands, sort groups by count
    /// (descending; equal counts: larger key first), keep them until they cover `coverage` (0..=1)
    /// of the tasks. Weights are the counts (renormalised by their sum).
    pub fn from_demands(demands: impl IntoIterator<Item = Demand>, coverage: f64) -> Workload {
        let mut groups: std::collections::HashMap<Demand, u64> = Default::default();
        for d in demands {
            *groups.entry(d).or_default() += 1;
        }
        Workload::from_counts(groups, coverage)
    }

    /// Like [`Workload::from_demands`], from demands already grouped: (demand, count), each demand
    /// once.
    pub fn from_counts(groups: impl IntoIterator<Item = (Demand, u64)>, coverage: f64) -> Workload {
        let groups: Vec<(Demand, u64)> = groups.into_iter().collect();
        let n: u64 = groups.iter().map(|g| g.1).sum();
        let key = |d: &Demand| (d.cpu, d.milli, d.gpus, d.models);
        let mut v: Vec<WorkloadClass> = groups
            .into_iter()
            .map(|(demand, count)| WorkloadClass { demand, count })
            .collect();
        v.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| key(&b.demand).cmp(&key(&a.demand)))
        });
        let goal = coverage * n as f64;
        let mut classes = Vec::new();
        let mut cum = 0u64;
        for c in v {
            if cum as f64 >= goal {
                break;
            }
            cum += c.count;
            classes.push(c);
        }
        Workload::new(classes)
    }

    /// A workload of explicit classes.
    pub fn new(classes: Vec<WorkloadClass>) -> Workload {
        let total = classes.iter().map(|c| c.count).sum();
        let (mut cpu, mut gpu) = (0.0, 0.0);
        for c in classes.iter().filter(|c| c.demand.gpus > 0) {
            cpu += c.count as f64 * f64::from(c.demand.cpu);
            gpu += c.count as f64 * f64::from(c.demand.gpu_total());
        }
        let constrained_on = (0..64u8)
            .map(|m| {
                classes
                    .iter()
                    .filter(|c| {
                        c.demand.gpus > 0
                            && c.demand.models != ModelMask::ANY
                            && c.demand.models.allows(m)
                    })
                    .map(|c| c.count)
                    .sum()
            })
            .collect();
        Workload {
            classes,
            total,
            cpu_per_gpu_milli: if gpu > 0.0 { cpu / gpu } else { 0.0 },
            constrained_on,
            pressure: Vec::new(),
        }
    }

    /// The workload on a cluster with `supply[m]` milli-GPU of model id `m`: sets each model's
    /// pressure, the share of its compute the model-constrained classes will want when the
    /// workload's demand has arrived at the cluster's size. A constrained class's demand is spread
    /// over the models it allows in proportion to their supply; the workload's demand is scaled to
    /// the cluster's total (the packing protocol's 100% arrival). Capped at 1: past it, the model
    /// is full whatever else goes there.
    pub fn with_supply(mut self, supply: &[u64]) -> Workload {
        let capacity: u64 = supply.iter().sum();
        let demand: f64 = self
            .classes
            .iter()
            .map(|c| c.count as f64 * f64::from(c.demand.gpu_total()))
            .sum();
        let mut wanted = vec![0.0f64; supply.len()];
        for c in self
            .classes
            .iter()
            .filter(|c| c.demand.gpus > 0 && c.demand.models != ModelMask::ANY)
        {
            let allowed = |m: usize| m < 64 && c.demand.models.allows(m as u8) && supply[m] > 0;
            let s: u64 = (0..supply.len())
                .filter(|&m| allowed(m))
                .map(|m| supply[m])
                .sum();
            if s == 0 {
                continue;
            }
            let d = c.count as f64 * f64::from(c.demand.gpu_total());
            for m in (0..supply.len()).filter(|&m| allowed(m)) {
                wanted[m] += d * supply[m] as f64 / s as f64;
            }
        }
        let scale = if demand > 0.0 {
            capacity as f64 / demand
        } else {
            0.0
        };
        self.pressure = (0..supply.len().min(64))
            .filter(|&m| supply[m] > 0)
            .map(|m| (m as u8, (wanted[m] * scale / supply[m] as f64).min(1.0)))
            .collect();
        self
    }

    /// The expected compute lost to model-constrained work per milli-GPU a demand takes on model
    /// `model`, beyond what it would lose on the least-pressed model it may use: the pressure of
    /// `model` minus the least pressure over its allowed models (0 without
    /// [`Workload::with_supply`], and 0 for a demand whose models are all equally pressed, e.g.
    /// one allowed model).
    pub fn excess_pressure(&self, models: ModelMask, model: u8) -> f64 {
        let mut here = None;
        let mut least = f64::INFINITY;
        for &(m, p) in &self.pressure {
            if m == model {
                here = Some(p);
            }
            if models.allows(m) {
                least = least.min(p);
            }
        }
        match here {
            Some(p) if least.is_finite() => (p - least).max(0.0),
            _ => 0.0,
        }
    }

    /// Host CPU the GPU classes ask per milli-GPU of their demand (weighted by count), milli-cores
    /// per milli-GPU; 0 without GPU classes.
    pub fn cpu_per_gpu_milli(&self) -> f64 {
        self.cpu_per_gpu_milli
    }

    /// Share (0..=1) of the workload's weight held by model-constrained GPU classes that allow GPU
    /// model `model`.
    pub fn constrained_share_on(&self, model: u8) -> f64 {
        let c = self
            .constrained_on
            .get(usize::from(model))
            .copied()
            .unwrap_or(0);
        c as f64 / self.total.max(1) as f64
    }

    /// Whether any GPU class is constrained to GPU models.
    pub fn has_constraints(&self) -> bool {
        self.constrained_on.iter().any(|&c| c > 0)
    }

    /// The classes, heaviest first.
    pub fn classes(&self) -> &[WorkloadClass] {
        &self.classes
    }

    /// Sum of the class counts: fragmentation values from [`Workload::frag_scaled`] are this many
    /// times the expected fragmentation.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// FGD node fragmentation times [`Workload::total`], in milli-GPU: for each class, the free
    /// compute it cannot use (all of it when the class cannot run on the node at all; else the free
    /// shares smaller than its share), weighted by its count. Integer, so equal states compare
    /// exactly.
    pub fn frag_scaled(&self, cpu_free: u32, gpu_free: &[u16], model: u8) -> u64 {
        let u: u64 = gpu_free.iter().map(|&f| u64::from(f)).sum();
        let mut f = 0u64;
        for c in &self.classes {
            let d = &c.demand;
            f += c.count * class_frag(d, u, cpu_free, gpu_free, model);
        }
        f
    }
}

/// The free compute of a node that class `d` cannot use, milli-GPU (`u` = total free).
fn class_frag(d: &Demand, u: u64, cpu_free: u32, gpu_free: &[u16], model: u8) -> u64 {
    if d.gpus == 0 || !d.models.allows(model) || cpu_free < d.cpu {
        return u;
    }
    let share = if d.gpus > 1 { FULL } else { d.milli };
    let mut fit = 0u8;
    let mut small = 0u64;
    for &g in gpu_free {
        if g >= share {
            fit += 1;
        } else {
            small += u64::from(g);
        }
    }
    if fit < d.gpus { u } else { small }
}

/// FGD's integer score of a fragmentation change: `trunc(100 / (1 + exp(-(before - after)/1000)))`,
/// with `delta_scaled = (before - after) * total`. An exact zero change scores exactly 50.
pub fn fgd_sigmoid(delta_scaled: i64, total: u64) -> i64 {
    let d = delta_scaled as f64 / total.max(1) as f64;
    (100.0 / (1.0 + (-d / 1000.0).exp())).trunc() as i64
}

/// FGD on one node: the best score over the ways `d` can go on it, and the GPUs of the first way
/// (lowest index) reaching it. Whole GPUs: the lowest-index fully free ones (any fully free GPUs
/// leave the same state). `fit` masks the GPUs allowed to take it. `None` when nothing fits.
pub fn fgd(w: &Workload, node: &NodeRef, d: &Demand, fit: u32) -> Option<(i64, Vec<usize>)> {
    fgd_detail(w, node, d, fit).map(|c| (c.score, c.gpus))
}

/// One candidate way of placing a demand on a node, as FGD and the default policy see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FgdChoice {
    /// FGD's integer score.
    pub score: i64,
    /// Fragmentation after minus before, times [`Workload::total`], milli-GPU.
    pub increase_scaled: i64,
    /// Free compute of the chosen GPU before placing (shares; 1000 for whole GPUs), milli-GPU.
    pub gpu_free_before: u16,
    /// The GPUs taken.
    pub gpus: Vec<usize>,
}

/// Like [`fgd`], with the fragmentation increase and the chosen GPU's free compute. Among GPUs of
/// equal score, the lowest index.
pub fn fgd_detail(w: &Workload, node: &NodeRef, d: &Demand, fit: u32) -> Option<FgdChoice> {
    let before = w.frag_scaled(node.cpu_free, node.gpu_free, node.model) as i64;
    let cpu_after = node.cpu_free.saturating_sub(d.cpu);
    let mut buf = [0u16; MAX_GPUS];
    let n = node.gpu_free.len().min(MAX_GPUS);
    buf[..n].copy_from_slice(&node.gpu_free[..n]);
    let eval = |buf: &[u16]| {
        let inc = w.frag_scaled(cpu_after, buf, node.model) as i64 - before;
        (fgd_sigmoid(-inc, w.total()), inc)
    };
    if d.gpus == 0 {
        let (score, inc) = eval(&buf[..n]);
        return Some(FgdChoice {
            score,
            increase_scaled: inc,
            gpu_free_before: 0,
            gpus: Vec::new(),
        });
    }
    if !d.is_share() {
        let gpus = pick_least_free(node, d, fit);
        if gpus.is_empty() {
            return None;
        }
        for &g in &gpus {
            buf[g] -= d.milli;
        }
        let (score, inc) = eval(&buf[..n]);
        return Some(FgdChoice {
            score,
            increase_scaled: inc,
            gpu_free_before: FULL,
            gpus,
        });
    }
    let mut best: Option<FgdChoice> = None;
    for g in 0..n {
        let free = node.gpu_free[g];
        if fit & (1 << g) == 0 || free < d.milli {
            continue;
        }
        buf[g] = free - d.milli;
        let (score, inc) = eval(&buf[..n]);
        buf[g] = free;
        if best.as_ref().is_none_or(|b| score > b.score) {
            best = Some(FgdChoice {
                score,
                increase_scaled: inc,
                gpu_free_before: free,
                gpus: vec![g],
            });
        }
    }
    best
}

/// The default policy's node score ("fgd-balanced"): FGD's expected fragmentation increase plus
/// two costs FGD does not see, all in expected milli-GPU, through FGD's integer sigmoid (ties to the
/// lowest rank, which keeps filling the same nodes):
/// - CPU starvation: the free GPU compute a node could no longer feed with CPU at the workload's
///   CPU-per-GPU ratio ([`Workload::cpu_per_gpu_milli`]), `max(0, gpu_free - cpu_free / ratio)`.
///   FGD only checks each class alone against the free CPU; several tasks drain it together.
/// - Scarce models: GPU compute taken on a model beyond the least-pressed model the demand may
///   use, times the difference in pressure ([`scarce_cost`], [`Workload::with_supply`]): the share
///   of that model's compute the model-constrained classes will want, from the workload's demand
///   and the cluster's supply of each model. Zero without constraints, and zero for a demand whose
///   allowed models are equally pressed, so its choice among them is FGD's.
///
/// The GPU inside the node is FGD's. Returns the score and the GPUs; `None` when nothing fits.
pub fn fgd_balanced(
    w: &Workload,
    node: &NodeRef,
    d: &Demand,
    fit: u32,
) -> Option<(i64, Vec<usize>)> {
    let c = fgd_detail(w, node, d, fit)?;
    let inc = c.increase_scaled as f64 / w.total().max(1) as f64
        + starvation_increase(w, node, d)
        + scarce_cost(w, node, d);
    Some((sigmoid_score(-inc), c.gpus))
}

/// The scarce-models cost of `d` on `node`, expected milli-GPU: the compute it takes times
/// [`Workload::excess_pressure`] of the node's model.
pub fn scarce_cost(w: &Workload, node: &NodeRef, d: &Demand) -> f64 {
    if d.gpus == 0 {
        return 0.0;
    }
    f64::from(d.gpu_total()) * w.excess_pressure(d.models, node.model)
}

/// `trunc(100 / (1 + exp(-decrease / 1000)))` for a fragmentation decrease in milli-GPU.
fn sigmoid_score(decrease: f64) -> i64 {
    (100.0 / (1.0 + (-decrease / 1000.0).exp())).trunc() as i64
}

/// Increase of the GPU compute a node cannot feed with CPU when `d` is placed, milli-GPU.
pub fn starvation_increase(w: &Workload, node: &NodeRef, d: &Demand) -> f64 {
    let ratio = w.cpu_per_gpu_milli();
    if ratio <= 0.0 {
        return 0.0;
    }
    let u0 = f64::from(node.gpu_free_total());
    let u1 = u0 - f64::from(d.gpu_total());
    let c0 = f64::from(node.cpu_free);
    let c1 = c0 - f64::from(d.cpu);
    (u1 - c1 / ratio).max(0.0) - (u0 - c0 / ratio).max(0.0)
}

/// Memory slices `[start, start + size)` of a MIG instance, as a mask.
pub fn mig_range_mask(start: u8, size: u8) -> u8 {
    let bits = ((1u16 << size) - 1) << start;
    bits as u8
}

/// Free compute slices of a MIG GPU that the largest profile still placeable there cannot use, by
/// geometry (memory slices `mask` taken, `used_compute` compute slices held). 0 on an empty GPU.
pub fn mig_waste(profiles: &[mig::MigProfile], mask: u8, used_compute: u8) -> u8 {
    let free = mig::COMPUTE_SLICES.saturating_sub(used_compute);
    let largest = profiles
        .iter()
        .filter(|p| p.compute_slices <= free && mig_free_start(p, mask).is_some())
        .map(|p| p.compute_slices)
        .max()
        .unwrap_or(0);
    free - largest
}

fn mig_free_start(p: &mig::MigProfile, mask: u8) -> Option<u8> {
    p.starts
        .iter()
        .copied()
        .find(|&s| mask & mig_range_mask(s, p.size) == 0)
}

/// Score of creating `p` at `start` on a MIG GPU (higher is better): first the smallest increase
/// of [`mig_waste`], then the fewest free compute slices left (pack GPUs already in use), then the
/// most (profile, start) pairs still placeable on it (keep large profiles placeable).
pub fn mig_score(
    profiles: &[mig::MigProfile],
    mask: u8,
    used_compute: u8,
    p: &mig::MigProfile,
    start: u8,
) -> i64 {
    let after = mask | mig_range_mask(start, p.size);
    let used_after = used_compute + p.compute_slices;
    let dw = i64::from(mig_waste(profiles, after, used_after))
        - i64::from(mig_waste(profiles, mask, used_compute));
    let free_after = i64::from(mig::COMPUTE_SLICES.saturating_sub(used_after));
    let pairs: i64 = profiles
        .iter()
        .map(|q| {
            q.starts
                .iter()
                .filter(|&&s| after & mig_range_mask(s, q.size) == 0)
                .count() as i64
        })
        .sum();
    -dw * 10_000 - free_after * 100 + pairs
}

#[cfg(test)]
mod tests;
