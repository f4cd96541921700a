//! The scored policies behind [`Policy`], for the live controller. The scores are those of
//! [`super::score`], the same functions the openb replay runs.
//!
//! Live requests map onto the scores' compact node view: share GPUs offer `1000 - used` milli
//! (exclusive, MIG-mode and unhealthy GPUs offer 0), GPU memory and model are checked by
//! [`feasible_on_node`] and passed as the mask of GPUs that may take the request. MIG requests go
//! through [`score::mig_score`] for every policy but Random.

use std::sync::Mutex;

use greenslice_core::mig;
use greenslice_core::slice::{SliceKind, share_milli};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use super::history::DemandHistory;
use super::score::{
    self, Demand, FULL, MAX_GPUS, ModelIds, ModelMask, NodeRef, Workload, WorkloadClass,
};
use super::{
    ClusterView, FirstFit, NodeView, Placement, Policy, Request, Unplaceable, feasible_on_node,
    gpus_needed, unplaceable,
};

/// The scored policies, by their CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Random,
    DotProduct,
    GpuPacking,
    GpuClustering,
    BestFit,
    Fgd,
    /// greenslice's default: see [`score::fgd_balanced`].
    FgdBalanced,
}

impl PolicyKind {
    /// Every scored policy, baselines first, the default last.
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Random,
        PolicyKind::DotProduct,
        PolicyKind::GpuClustering,
        PolicyKind::GpuPacking,
        PolicyKind::BestFit,
        PolicyKind::Fgd,
        PolicyKind::FgdBalanced,
    ];

    /// The default policy.
    pub const DEFAULT: PolicyKind = PolicyKind::FgdBalanced;

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Random => "random",
            PolicyKind::DotProduct => "dot-product",
            PolicyKind::GpuPacking => "gpu-packing",
            PolicyKind::GpuClustering => "gpu-clustering",
            PolicyKind::BestFit => "best-fit",
            PolicyKind::Fgd => "fgd",
            PolicyKind::FgdBalanced => "fgd-balanced",
        }
    }

    /// Looks a scored policy up by CLI name.
    pub fn from_name(name: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether the node score depends only on (CPU free, GPU free as a multiset, model), so the
    /// replay may memoise it per node state.
    pub fn memoisable(self) -> bool {
        matches!(self, PolicyKind::Fgd | PolicyKind::FgdBalanced)
    }

    /// The node score and the GPUs this policy takes there (Random: score 0, least-free GPUs; the
    /// callers draw Random's choices themselves). `None` when nothing fits.
    pub fn score(
        self,
        w: &Workload,
        n: &NodeRef,
        d: &Demand,
        fit: u32,
    ) -> Option<(i64, Vec<usize>)> {
        let gpus = || score::pick_least_free(n, d, fit);
        let simple = |s: i64| {
            let g = gpus();
            (d.gpus == 0 || !g.is_empty()).then_some((s, g))
        };
        match self {
            PolicyKind::Random => simple(0),
            PolicyKind::DotProduct => simple(score::dot_product(n, d)),
            PolicyKind::GpuPacking => simple(score::gpu_packing(n, d, fit)),
            PolicyKind::GpuClustering => simple(score::gpu_clustering(n, d)),
            PolicyKind::BestFit => simple(score::best_fit(n, d)),
            PolicyKind::Fgd => score::fgd(w, n, d, fit),
            PolicyKind::FgdBalanced => score::fgd_balanced(w, n, d, fit),
        }
    }
}

/// Names accepted by [`policy_by_name`], the default first.
pub fn policy_names() -> Vec<&'static str> {
    let mut v = vec![PolicyKind::DEFAULT.name()];
    v.extend(
        PolicyKind::ALL
            .iter()
            .filter(|k| **k != PolicyKind::DEFAULT)
            .map(|k| k.name()),
    );
    v.push(FirstFit.name());
    v
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown placement policy {name:?}; known policies: {known}")]
pub struct UnknownPolicy {
    pub name: String,
    pub known: String,
}

/// The policy of this name (see [`policy_names`]), with the live default workload and seed 42.
pub fn policy_by_name(name: &str) -> Result<Box<dyn Policy>, UnknownPolicy> {
    if name == FirstFit.name() {
        return Ok(Box::new(FirstFit));
    }
    PolicyKind::from_name(name)
        .map(|k| Box::new(ScoredPolicy::new(k)) as Box<dyn Policy>)
        .ok_or_else(|| UnknownPolicy {
            name: name.chars().take(64).collect(),
            known: policy_names().join(", "),
        })
}

/// The default policy ([`PolicyKind::DEFAULT`]).
pub fn default_policy() -> Box<dyn Policy> {
    Box::new(ScoredPolicy::new(PolicyKind::DEFAULT))
}

/// A workload for live clusters without history: mostly whole GPUs and halves, some quarter and
/// three-quarter shares, a few multi-GPU jobs (weights in per mille).
pub fn live_default_workload() -> Workload {
    let class = |gpus: u8, milli: u16, count: u64| WorkloadClass {
        demand: Demand {
            cpu: 0,
            gpus,
            milli,
            models: ModelMask::ANY,
        },
        count,
    };
    Workload::new(vec![
        class(1, 1000, 400),
        class(1, 500, 200),
        class(1, 250, 150),
        class(1, 750, 100),
        class(2, 1000, 60),
        class(4, 1000, 50),
        class(8, 1000, 40),
    ])
}

/// The workload of a history of live requests (MIG requests left out: they never use share GPUs),
/// grouped as FGD groups a trace, covering 95% of them; model constraints are left out.
pub fn workload_of_requests(reqs: &[Request]) -> Workload {
    Workload::from_demands(reqs.iter().filter_map(live_demand), 0.95)
}

/// The live target workload's history: the prior ([`live_default_workload`]) weighs this many
/// requests at start.
pub const LIVE_PRIOR_WEIGHT: f64 = 64.0;
/// Requests after which a live request's weight in the target workload has halved.
pub const LIVE_HALF_LIFE: u32 = 512;
/// Observed requests between two rebuilds of the live target workload.
pub const LIVE_REFRESH: u32 = 16;

/// A request as the scores see it (`None` for MIG requests), with any model constraint through
/// `models` (the constraint's id, interned there).
pub fn live_demand_in(req: &Request, models: &mut ModelIds) -> Option<Demand> {
    let mut d = live_demand(req)?;
    if let Some(m) = &req.spec.gpu_model {
        d.models = models
            .intern(m.name())
            .map_or(ModelMask(0), |id| ModelMask(1 << id));
    }
    Some(d)
}

/// A request as the scores see it (`None` for MIG requests), model constraints left out (the
/// fit mask of [`feasible_on_node`] carries them).
pub fn live_demand(req: &Request) -> Option<Demand> {
    let (gpus, milli) = match &req.spec.kind {
        SliceKind::Whole { count } => (u8::try_from(*count).unwrap_or(u8::MAX), FULL),
        SliceKind::Share {
            compute_fraction, ..
        } => (1, share_milli(*compute_fraction) as u16),
        SliceKind::Mig { .. } => return None,
    };
    Some(Demand {
        cpu: u32::try_from(req.cpu_milli).unwrap_or(u32::MAX),
        gpus,
        milli,
        models: ModelMask::ANY,
    })
}

/// Free compute of a live GPU for shares and whole GPUs, milli-GPU.
fn live_free(g: &super::GpuView) -> u16 {
    if !g.healthy || g.mig_enabled || g.exclusive {
        0
    } else {
        greenslice_core::MILLI_PER_GPU.saturating_sub(g.used_milli) as u16
    }
}

/// GpuClustering tags of a live node, from its GPUs: partly used share GPUs mark shares, exclusive
/// GPUs mark whole-GPU work (the view does not say how many GPUs each slice holds).
fn live_tags(node: &NodeView) -> u16 {
    node.gpus.iter().fold(0, |t, g| {
        if g.exclusive {
            t | 1 << 1
        } else if !g.mig_enabled && g.used_milli > 0 {
            t | 1
        } else {
            t
        }
    })
}

/// A scored policy for the live controller. Deterministic but for Random, which draws from its
/// own seeded generator.
///
/// Its target workload is either fixed ([`ScoredPolicy::with_workload`]) or learnt
/// ([`ScoredPolicy::new`]): a [`DemandHistory`] of the observed requests (with their CPU and model
/// constraints), with [`live_default_workload`] as the prior, rebuilt every [`LIVE_REFRESH`]
/// requests against the cluster's supply of each GPU model. Placement is a pure function of the
/// view, the request and the current target.
#[derive(Debug)]
pub struct ScoredPolicy {
    kind: PolicyKind,
    target: Mutex<Target>,
    rng: Mutex<ChaCha8Rng>,
    /// Per-node choices of recent requests, for [`Policy::place_versioned`].
    memo: Mutex<NodeMemo>,
}

/// What a node offers a request: its score, the GPUs the policy takes there and, for MIG, the
/// instance's first memory slice; None when the request does not fit.
type NodeChoice = Option<(i64, Vec<usize>, Option<u8>)>;

/// Per node (by index in the view): the version a choice was computed on, and the choice.
type NodeChoices = Vec<Option<(u64, NodeChoice)>>;

/// Per-node choices for recent distinct requests, each tagged with the node version it was
/// computed on (see [`Policy::place_versioned`]). A node's choice depends only on the node's view,
/// the request and (but for MIG requests) the policy's target workload, so a choice of the same
/// version and workload generation is the same.
#[derive(Debug, Default)]
struct NodeMemo {
    /// By the request's debug form (every field, floats exactly).
    requests: std::collections::HashMap<String, MemoEntry>,
    /// Counts lookups, for evicting the least recently used request.
    tick: u64,
}

#[derive(Debug)]
struct MemoEntry {
    /// The target workload's generation the choices were measured against (None: MIG requests,
    /// whose scores do not depend on it).
    generation: Option<u64>,
    last_used: u64,
    nodes: NodeChoices,
}

/// What one placement measures against: the target workload, its generation, the request's
/// demand and each node's model id.
struct Prepared {
    workload: std::sync::Arc<Workload>,
    generation: u64,
    demand: Option<Demand>,
    node_models: Vec<u8>,
}

impl NodeMemo {
    /// Distinct requests remembered.
    const REQUESTS: usize = 64;

    /// The choices remembered for `req` under `generation`, sized for `nodes` nodes (made empty
    /// when new or measured against another generation).
    fn slot(&mut self, req: &Request, generation: Option<u64>, nodes: usize) -> &mut NodeChoices {
        self.tick += 1;
        let key = format!("{req:?}");
        if !self.requests.contains_key(&key)
            && self.requests.len() >= Self::REQUESTS
            && let Some(old) = self
                .requests
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        {
            self.requests.remove(&old);
        }
        let e = self.requests.entry(key).or_insert_with(|| MemoEntry {
            generation,
            last_used: 0,
            nodes: Vec::new(),
        });
        if e.generation != generation {
            e.nodes.clear();
            e.generation = generation;
        }
        e.last_used = self.tick;
        e.nodes.resize(nodes, None);
        &mut e.nodes
    }
}

/// What the target workload needs to know of a node besides its view: its model id (by its first
/// GPU) and the compute it offers shares and whole GPUs, milli-GPU by model id.
#[derive(Debug, Clone)]
struct NodeFacts {
    model: u8,
    supply: Vec<(u8, u64)>,
}

impl NodeFacts {
    fn of(models: &mut ModelIds, n: &NodeView) -> NodeFacts {
        let model = n
            .gpus
            .first()
            .and_then(|g| models.intern(g.model.name()))
            .unwrap_or(0);
        let mut supply: Vec<(u8, u64)> = Vec::new();
        if n.schedulable {
            for g in n.gpus.iter().filter(|g| g.healthy && !g.mig_enabled) {
                if let Some(id) = models.intern(g.model.name()) {
                    match supply.iter_mut().find(|(m, _)| *m == id) {
                        Some(e) => e.1 += u64::from(FULL),
                        None => supply.push((id, u64::from(FULL))),
                    }
                }
            }
        }
        NodeFacts { model, supply }
    }
}

/// The target workload a [`ScoredPolicy`] measures against, and what it learns it from.
#[derive(Debug)]
struct Target {
    /// None: the workload is fixed.
    history: Option<DemandHistory>,
    /// Model names of the constraints and nodes seen, as the scores' ids.
    models: ModelIds,
    /// Observed requests since the last rebuild.
    pending: u32,
    /// The current workload, and a number that changes with it (memoised choices are kept only
    /// for the same number).
    workload: std::sync::Arc<Workload>,
    generation: u64,
    /// Each node's facts by the version they were read at (versioned views only).
    facts: Vec<Option<(u64, NodeFacts)>>,
}

impl ScoredPolicy {
    /// The policy learning its target workload from the requests it observes (prior
    /// [`live_default_workload`]), seed 42.
    pub fn new(kind: PolicyKind) -> ScoredPolicy {
        let prior = live_default_workload();
        let history = DemandHistory::new(&prior, LIVE_PRIOR_WEIGHT, LIVE_HALF_LIFE, 0.95);
        let mut p = ScoredPolicy::with_workload(kind, prior);
        p.target
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .history = Some(history);
        p
    }

    /// The policy measuring fragmentation against a fixed `workload` (FGD and the default use it).
    pub fn with_workload(kind: PolicyKind, workload: Workload) -> ScoredPolicy {
        ScoredPolicy {
            kind,
            target: Mutex::new(Target {
                history: None,
                models: ModelIds::default(),
                pending: 0,
                workload: std::sync::Arc::new(workload),
                generation: 0,
                facts: Vec::new(),
            }),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(42)),
            memo: Mutex::default(),
        }
    }

    /// The target workload now.
    pub fn workload(&self) -> std::sync::Arc<Workload> {
        self.lock_target().workload.clone()
    }

    fn lock_target(&self) -> std::sync::MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workload to place against, rebuilt first when requests are pending; with the model ids
    /// of the view's nodes (by their first GPU) and the request's demand. With `versions`, each
    /// node's facts are read again only when its version changed.
    fn prepare(&self, view: &ClusterView, versions: Option<&[u64]>, req: &Request) -> Prepared {
        let mut t = self.lock_target();
        let t = &mut *t;
        let fresh: Vec<NodeFacts>;
        let facts: Vec<&NodeFacts> = match versions {
            Some(vs) if vs.len() == view.nodes.len() => {
                t.facts.resize(view.nodes.len(), None);
                for ((slot, n), &v) in t.facts.iter_mut().zip(&view.nodes).zip(vs) {
                    if slot.as_ref().is_none_or(|(sv, _)| *sv != v) {
                        *slot = Some((v, NodeFacts::of(&mut t.models, n)));
                    }
                }
                t.facts.iter().flatten().map(|(_, f)| f).collect()
            }
            _ => {
                fresh = view
                    .nodes
                    .iter()
                    .map(|n| NodeFacts::of(&mut t.models, n))
                    .collect();
                fresh.iter().collect()
            }
        };
        if t.pending >= LIVE_REFRESH
            && let Some(h) = &t.history
        {
            let mut supply = vec![0u64; 64];
            for f in &facts {
                for &(m, milli) in &f.supply {
                    supply[usize::from(m)] += milli;
                }
            }
            let next = h.workload().with_supply(&supply);
            // The same target (a steady workload) keeps its generation, and with it the memo.
            if next != *t.workload {
                t.workload = std::sync::Arc::new(next);
                t.generation += 1;
            }
            t.pending = 0;
        }
        // Model ids matter only to a workload with model-constrained classes.
        let node_models = if t.workload.has_constraints() {
            facts.iter().map(|f| f.model).collect()
        } else {
            vec![0; view.nodes.len()]
        };
        Prepared {
            workload: t.workload.clone(),
            generation: t.generation,
            demand: live_demand_in(req, &mut t.models),
            node_models,
        }
    }

    /// Reseeds Random's generator.
    pub fn with_seed(self, seed: u64) -> ScoredPolicy {
        ScoredPolicy {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            ..self
        }
    }

    /// Which policy this is.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    fn draw(&self, n: usize) -> usize {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        rng.random_range(0..n)
    }

    fn place_mig(
        &self,
        view: &ClusterView,
        req: &Request,
        profile: &str,
    ) -> Result<Placement, Unplaceable> {
        // (score, node, gpu, start); first seen wins ties: lowest node, GPU, start.
        let mut cands: Vec<(i64, usize, usize, u8)> = Vec::new();
        for (ni, node) in view.nodes.iter().enumerate() {
            mig_candidates(node, req, profile, |score, gi, s| {
                cands.push((score, ni, gi, s))
            });
        }
        let pick = if self.kind == PolicyKind::Random && !cands.is_empty() {
            Some(cands[self.draw(cands.len())])
        } else {
            cands
                .iter()
                .copied()
                .reduce(|b, c| if c.0 > b.0 { c } else { b })
        };
        pick.map(|(_, node, gpu, start)| Placement {
            node,
            gpus: vec![gpu],
            mig_start: Some(start),
        })
        .ok_or_else(|| unplaceable(view, req))
    }
}

/// Every way a MIG instance of `profile` can go on `node` for `req`, in order (GPU, then start),
/// with its score: `f(score, gpu, start)`.
fn mig_candidates(
    node: &NodeView,
    req: &Request,
    profile: &str,
    mut f: impl FnMut(i64, usize, u8),
) {
    for (gi, _) in feasible_on_node(node, req) {
        let g = &node.gpus[gi];
        let Some(p) = mig::profile(&g.model, profile) else {
            continue;
        };
        let profiles = mig::profiles(&g.model);
        for s in g.mig_candidates(profile, node.mig_create) {
            // A lent instance is scored as if it were created where it is.
            let layout = if node.mig_create {
                std::borrow::Cow::Borrowed(&g.mig_layout)
            } else {
                std::borrow::Cow::Owned(g.layout_without(s))
            };
            let mask = mig::used_mask(&g.model, &layout);
            let used = mig::used_compute(&g.model, &layout);
            f(score::mig_score(profiles, mask, used, p, s), gi, s);
        }
    }
}

/// The best MIG candidate on `node` (the first of the highest score), as a [`NodeChoice`].
fn mig_node_choice(node: &NodeView, req: &Request, profile: &str) -> NodeChoice {
    let mut best: NodeChoice = None;
    mig_candidates(node, req, profile, |score, gi, s| {
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, vec![gi], Some(s)));
        }
    });
    best
}

/// The mask of GPUs of `node` that may take `req` (which needs `need` GPUs); None when the node
/// cannot host it.
fn node_fit(node: &NodeView, req: &Request, need: usize) -> Option<u32> {
    let cands = feasible_on_node(node, req);
    if cands.len() < need || (need == 0 && !node.schedulable) {
        return None;
    }
    Some(
        cands
            .iter()
            .filter(|c| c.0 < MAX_GPUS)
            .fold(0u32, |m, c| m | 1 << c.0),
    )
}

impl ScoredPolicy {
    /// What `node` (model id `model`) offers a non-MIG request (demand `d`, `need` GPUs) under a
    /// scored policy other than Random, measured against `w`: a pure function of these.
    fn node_choice(
        &self,
        w: &Workload,
        node: &NodeView,
        model: u8,
        req: &Request,
        d: &Demand,
        need: usize,
    ) -> NodeChoice {
        let fit = node_fit(node, req, need)?;
        let free: Vec<u16> = node.gpus.iter().map(live_free).collect();
        let cpu_free = if node.cpu_milli > 0 {
            node.cpu_milli.saturating_sub(node.cpu_used_milli)
        } else {
            req.cpu_milli
        };
        let nref = NodeRef {
            cpu_free: u32::try_from(cpu_free).unwrap_or(u32::MAX),
            gpu_free: &free[..free.len().min(MAX_GPUS)],
            model,
            tags: live_tags(node),
        };
        self.kind
            .score(w, &nref, d, fit)
            .filter(|(_, gpus)| gpus.len() == need)
            .map(|(s, gpus)| (s, gpus, None))
    }
}

impl Policy for ScoredPolicy {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn place_versioned(
        &self,
        view: &ClusterView,
        versions: &[u64],
        req: &Request,
    ) -> Result<Placement, Unplaceable> {
        if self.kind == PolicyKind::Random || versions.len() != view.nodes.len() {
            // Random's draws and unversioned views: nothing to reuse.
            return self.place(view, req);
        }
        // MIG scores do not depend on the target workload; other requests measure against it.
        enum Scoring<'a> {
            Mig(&'a str),
            Target(Prepared, Demand),
        }
        let scoring = match &req.spec.kind {
            SliceKind::Mig { profile } => Scoring::Mig(profile),
            _ => {
                let pre = self.prepare(view, Some(versions), req);
                let Some(d) = pre.demand else {
                    return self.place(view, req);
                };
                Scoring::Target(pre, d)
            }
        };
        let generation = match &scoring {
            Scoring::Mig(_) => None,
            Scoring::Target(pre, _) => Some(pre.generation),
        };
        let need = gpus_needed(&req.spec);
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        let slot = memo.slot(req, generation, view.nodes.len());
        // The same scan as `place`: the highest score wins, the first node seen wins ties.
        let mut best: Option<(i64, usize)> = None;
        for (ni, (node, &version)) in view.nodes.iter().zip(versions).enumerate() {
            let cached = &mut slot[ni];
            if cached.as_ref().is_none_or(|(v, _)| *v != version) {
                let choice = match &scoring {
                    Scoring::Target(pre, d) => {
                        self.node_choice(&pre.workload, node, pre.node_models[ni], req, d, need)
                    }
                    Scoring::Mig(profile) => mig_node_choice(node, req, profile),
                };
                *cached = Some((version, choice));
            }
            if let Some((_, Some((s, _, _)))) = cached
                && best.is_none_or(|b| *s > b.0)
            {
                best = Some((*s, ni));
            }
        }
        best.and_then(|(_, ni)| match &slot[ni] {
            Some((_, Some((_, gpus, mig_start)))) => Some(Placement {
                node: ni,
                gpus: gpus.clone(),
                mig_start: *mig_start,
            }),
            _ => None,
        })
        .ok_or_else(|| unplaceable(view, req))
    }

    fn observe(&self, req: &Request) {
        let mut t = self.lock_target();
        let t = &mut *t;
        if t.history.is_none() {
            return;
        }
        if let Some(d) = live_demand_in(req, &mut t.models)
            && let Some(h) = &mut t.history
        {
            h.record(d);
            t.pending += 1;
        }
    }

    fn place(&self, view: &ClusterView, req: &Request) -> Result<Placement, Unplaceable> {
        if live_demand(req).is_none() {
            let SliceKind::Mig { profile } = &req.spec.kind else {
                return Err(unplaceable(view, req));
            };
            return self.place_mig(view, req, profile);
        }
        let pre = self.prepare(view, None, req);
        let Some(d) = pre.demand else {
            return Err(unplaceable(view, req));
        };
        let need = gpus_needed(&req.spec);
        let mut best: Option<(i64, usize, Vec<usize>)> = None;
        let mut feasible: Vec<(usize, u32)> = Vec::new();
        for (ni, node) in view.nodes.iter().enumerate() {
            if self.kind == PolicyKind::Random {
                if let Some(fit) = node_fit(node, req, need) {
                    feasible.push((ni, fit));
                }
                continue;
            }
            if let Some((s, gpus, _)) =
                self.node_choice(&pre.workload, node, pre.node_models[ni], req, &d, need)
                && best.as_ref().is_none_or(|b| s > b.0)
            {
                best = Some((s, ni, gpus));
            }
        }
        if self.kind == PolicyKind::Random && !feasible.is_empty() {
            let (ni, fit) = feasible[self.draw(feasible.len())];
            let mut gpus: Vec<usize> = (0..MAX_GPUS).filter(|i| fit & (1 << i) != 0).collect();
            {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                gpus.shuffle(&mut *rng);
            }
            gpus.truncate(need);
            gpus.sort_unstable();
            best = Some((0, ni, gpus));
        }
        best.map(|(_, node, gpus)| Placement {
            node,
            gpus,
            mig_start: None,
        })
        .ok_or_else(|| unplaceable(view, req))
    }
}

#[cfg(test)]
mod tests;
