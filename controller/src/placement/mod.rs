//! Placement: pure, deterministic functions from (cluster view, request) to a placement or the reason
//! it cannot be placed. The running controller builds a [`ClusterView`] from its state and calls
//! [`Policy::place`] for every request.
//!
//! Tier 0 (a lower room): imports the model's views; nothing of the engine, API or server.

use greenslice_core::gpu::GpuModel;
use greenslice_core::mig;
use greenslice_core::slice::{SliceKind, SliceSpec, share_milli};
use thiserror::Error;

pub mod history;
pub mod policies;
pub mod relayout;
pub mod score;

pub use policies::{
    PolicyKind, ScoredPolicy, UnknownPolicy, default_policy, policy_by_name, policy_names,
};

/// One GPU as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuView {
    pub uuid: String,
    pub model: GpuModel,
    pub healthy: bool,
    /// MIG mode on: the GPU hosts only MIG instances.
    pub mig_enabled: bool,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Compute held by shares and whole-GPU slices, milli-GPU.
    pub used_milli: u32,
    /// Memory held by shares, bytes.
    pub used_memory_bytes: u64,
    /// Held whole by one slice.
    pub exclusive: bool,
    /// MIG instances that exist (held or not).
    pub mig_layout: Vec<mig::Placed>,
    /// Instances of `mig_layout` that nothing holds: a node that may not create instances lends
    /// these to MIG slices of their profile.
    pub free_instances: Vec<mig::Placed>,
}

impl GpuView {
    /// Whether the GPU can take a share of `milli` compute and `memory` bytes.
    pub fn fits_share(&self, milli: u32, memory: u64) -> bool {
        self.healthy
            && !self.mig_enabled
            && !self.exclusive
            && self.used_milli + milli <= greenslice_core::MILLI_PER_GPU
            && self.used_memory_bytes + memory <= self.memory_bytes
    }

    /// Whether the GPU is entirely free for a whole-GPU slice.
    pub fn fits_whole(&self) -> bool {
        self.healthy
            && !self.mig_enabled
            && !self.exclusive
            && self.used_milli == 0
            && self.used_memory_bytes == 0
    }

    /// Legal starts for a new instance of a MIG profile now (empty if none or not a MIG GPU).
    pub fn mig_starts(&self, profile: &str) -> Vec<u8> {
        if !self.healthy || !self.mig_enabled {
            return Vec::new();
        }
        mig::free_starts(&self.model, &self.mig_layout, profile)
    }

    /// Starts of the free existing instances of a MIG profile, ascending (see `free_instances`).
    pub fn free_instance_starts(&self, profile: &str) -> Vec<u8> {
        if !self.healthy || !self.mig_enabled {
            return Vec::new();
        }
        let mut v: Vec<u8> = self
            .free_instances
            .iter()
            .filter(|p| p.profile == profile)
            .map(|p| p.start)
            .collect();
        v.sort_unstable();
        v
    }

    /// Where a MIG slice of `profile` could go on this GPU: new instances where they may be
    /// created (`create`), else the free existing instances of the profile.
    pub fn mig_candidates(&self, profile: &str, create: bool) -> Vec<u8> {
        if create {
            self.mig_starts(profile)
        } else {
            self.free_instance_starts(profile)
        }
    }

    /// The layout without the instance at `start`: what a lent instance's score is computed on,
    /// as if it were created there.
    pub fn layout_without(&self, start: u8) -> Vec<mig::Placed> {
        self.mig_layout
            .iter()
            .filter(|p| p.start != start)
            .cloned()
            .collect()
    }

    /// Free compute in milli-GPU (for MIG GPUs: free compute slices x 1000 / 7).
    pub fn free_milli(&self) -> u32 {
        if self.mig_enabled {
            let used = u32::from(mig::used_compute(&self.model, &self.mig_layout));
            let all = u32::from(mig::compute_slices(&self.model));
            all.saturating_sub(used) * 1000 / all
        } else if self.exclusive {
            0
        } else {
            greenslice_core::MILLI_PER_GPU.saturating_sub(self.used_milli)
        }
    }
}

/// One node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    /// False when the node's agent is gone or it is drained: nothing new goes there.
    pub schedulable: bool,
    /// Whether new MIG instances may be created there; when not, MIG slices go only to its free
    /// existing instances (the agent's `mig.manage = false`).
    pub mig_create: bool,
    /// CPU capacity and use in milli-cores (capacity 0 = unknown, not checked).
    pub cpu_milli: u64,
    pub cpu_used_milli: u64,
    /// Host memory capacity and use in bytes (capacity 0 = unknown, not checked).
    pub memory_bytes: u64,
    pub memory_used_bytes: u64,
    pub gpus: Vec<GpuView>,
}

/// The cluster as placement sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
}

/// What to place.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub spec: SliceSpec,
    /// Host CPU in milli-cores the slice's workload needs (0 = not checked).
    pub cpu_milli: u64,
    /// Host memory in bytes the slice's workload needs (0 = not checked).
    pub memory_bytes: u64,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index into `ClusterView::nodes`.
    pub node: usize,
    /// Indices into that node's `gpus`.
    pub gpus: Vec<usize>,
    /// For MIG requests: the first memory slice of the new instance.
    pub mig_start: Option<u8>,
}

/// Why a request cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unplaceable {
    #[error("no schedulable node is connected")]
    NoNodes,
    #[error("no GPU of model {0} in the cluster")]
    NoSuchModel(String),
    #[error("no room for {wanted}; free now: {free}")]
    NoRoom { wanted: String, free: String },
    #[error(
        "no room for {wanted}: it needs a new MIG instance, and the nodes with room for one ({nodes}) may not create MIG instances (their agents run with mig.manage = false; only their existing free instances are used); free now: {free}"
    )]
    ReadOnlyMig {
        wanted: String,
        nodes: String,
        free: String,
    },
}

/// A placement policy.
pub trait Policy: Send + Sync {
    /// Short name ("first-fit", "fgd", ...).
    fn name(&self) -> &'static str;
    /// Chooses where `req` goes, or says why it cannot.
    fn place(&self, view: &ClusterView, req: &Request) -> Result<Placement, Unplaceable>;
    /// Tells the policy a request arrived (before it is placed), so a policy that plans for the
    /// workload it sees can learn from it. The default ignores it.
    fn observe(&self, req: &Request) {
        let _ = req;
    }
    /// Like [`Policy::place`], for a view whose nodes carry versions: `versions[i]` names the
    /// content of `view.nodes[i]`, and one version is never given to different content. A policy
    /// may reuse work it did for the same request on a node of the same version (a request changes
    /// one node, so most of a large cluster is as it was). The answer is the one `place` gives.
    /// The default ignores the versions.
    fn place_versioned(
        &self,
        view: &ClusterView,
        versions: &[u64],
        req: &Request,
    ) -> Result<Placement, Unplaceable> {
        let _ = versions;
        self.place(view, req)
    }
}

/// Candidate GPUs of a node for a request, in index order, with the MIG start where relevant.
/// Node-level checks (schedulable, CPU, memory, model) included. Empty when the node cannot host it.
pub fn feasible_on_node(node: &NodeView, req: &Request) -> Vec<(usize, Option<u8>)> {
    if !node.schedulable {
        return Vec::new();
    }
    if node.cpu_milli > 0 && node.cpu_used_milli.saturating_add(req.cpu_milli) > node.cpu_milli {
        return Vec::new();
    }
    if node.memory_bytes > 0
        && node.memory_used_bytes.saturating_add(req.memory_bytes) > node.memory_bytes
    {
        return Vec::new();
    }
    let model_ok = |g: &GpuView| req.spec.gpu_model.as_ref().is_none_or(|m| *m == g.model);
    let gpus = node.gpus.iter().enumerate().filter(|(_, g)| model_ok(g));
    match &req.spec.kind {
        SliceKind::Whole { .. } => gpus
            .filter(|(_, g)| g.fits_whole())
            .map(|(i, _)| (i, None))
            .collect(),
        SliceKind::Mig { profile } => gpus
            .filter_map(|(i, g)| {
                g.mig_candidates(profile, node.mig_create)
                    .first()
                    .map(|s| (i, Some(*s)))
            })
            .collect(),
        SliceKind::Share {
            compute_fraction,
            memory_bytes,
        } => {
            let milli = share_milli(*compute_fraction);
            gpus.filter(|(_, g)| g.fits_share(milli, *memory_bytes))
                .map(|(i, _)| (i, None))
                .collect()
        }
    }
}

/// GPUs a request needs.
pub fn gpus_needed(spec: &SliceSpec) -> usize {
    match spec.kind {
        SliceKind::Whole { count } => count as usize,
        _ => 1,
    }
}

/// The reason a request could not be placed anywhere, with a summary of what is free.
pub fn unplaceable(view: &ClusterView, req: &Request) -> Unplaceable {
    if !view.nodes.iter().any(|n| n.schedulable) {
        return Unplaceable::NoNodes;
    }
    if let Some(m) = &req.spec.gpu_model
        && !view
            .nodes
            .iter()
            .flat_map(|n| &n.gpus)
            .any(|g| g.model == *m)
    {
        return Unplaceable::NoSuchModel(m.name().to_string());
    }
    if let SliceKind::Mig { profile } = &req.spec.kind {
        // Would a read-only node have had room for a new instance? Then say that is why.
        let model_ok = |g: &GpuView| req.spec.gpu_model.as_ref().is_none_or(|m| *m == g.model);
        let read_only: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| n.schedulable && !n.mig_create)
            .filter(|n| {
                n.gpus
                    .iter()
                    .any(|g| model_ok(g) && !g.mig_starts(profile).is_empty())
            })
            .map(|n| n.name.clone())
            .collect();
        if !read_only.is_empty() {
            return Unplaceable::ReadOnlyMig {
                wanted: req.spec.describe(),
                nodes: read_only.join(", "),
                free: free_summary(view),
            };
        }
    }
    Unplaceable::NoRoom {
        wanted: describe_request(req),
        free: if req.cpu_milli > 0 || req.memory_bytes > 0 {
            format!("{}; {}", free_summary(view), host_free_summary(view))
        } else {
            free_summary(view)
        },
    }
}

/// The request's spec, and the host CPU and memory it said it needs, e.g. "1 whole GPU with 8
/// CPU cores and 64.0 GiB host memory".
pub fn describe_request(req: &Request) -> String {
    let mut said = Vec::new();
    if req.cpu_milli > 0 {
        said.push(format!("{} CPU cores", req.cpu_milli as f64 / 1000.0));
    }
    if req.memory_bytes > 0 {
        said.push(format!(
            "{:.1} GiB host memory",
            req.memory_bytes as f64 / f64::from(1u32 << 30)
        ));
    }
    if said.is_empty() {
        req.spec.describe()
    } else {
        format!("{} with {}", req.spec.describe(), said.join(" and "))
    }
}

/// "most host CPU free on one node: 12 cores; most host memory: 100.0 GiB" over the schedulable
/// nodes that report them.
pub fn host_free_summary(view: &ClusterView) -> String {
    let nodes = view.nodes.iter().filter(|n| n.schedulable);
    let cpu = nodes
        .clone()
        .filter(|n| n.cpu_milli > 0)
        .map(|n| n.cpu_milli.saturating_sub(n.cpu_used_milli))
        .max();
    let mem = nodes
        .filter(|n| n.memory_bytes > 0)
        .map(|n| n.memory_bytes.saturating_sub(n.memory_used_bytes))
        .max();
    let cpu = cpu.map_or("not reported".to_string(), |c| {
        format!("{} cores", c as f64 / 1000.0)
    });
    let mem = mem.map_or("not reported".to_string(), |m| {
        format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30))
    });
    format!("most host CPU free on one node: {cpu}; most host memory: {mem}")
}

/// "3 whole GPUs, 2 share GPUs with >= 500 milli free, MIG: 3g.40gb x2, 1g.10gb x5" style summary.
pub fn free_summary(view: &ClusterView) -> String {
    let mut whole = 0;
    let mut best_share = 0u32;
    let mut profiles: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let gpus = view
        .nodes
        .iter()
        .filter(|n| n.schedulable)
        .flat_map(|n| n.gpus.iter().map(move |g| (n.mig_create, g)))
        .filter(|(_, g)| g.healthy);
    for (create, g) in gpus {
        if g.mig_enabled {
            for p in placeable_mig(g, create) {
                *profiles.entry(p).or_default() += 1;
            }
        } else if g.fits_whole() {
            whole += 1;
        } else {
            best_share = best_share.max(g.free_milli());
        }
    }
    let mig: Vec<String> = profiles
        .iter()
        .map(|(p, n)| format!("{p} on {n} GPUs"))
        .collect();
    format!(
        "{whole} whole GPUs; largest partial share {:.3} GPU; MIG: {}",
        f64::from(best_share) / 1000.0,
        if mig.is_empty() {
            "none".to_string()
        } else {
            mig.join(", ")
        }
    )
}

/// MIG profiles a slice could get on `g` now: new instances where they may be created (`create`),
/// else the profiles of its free existing instances.
pub fn placeable_mig(g: &GpuView, create: bool) -> Vec<&'static str> {
    if !g.healthy || !g.mig_enabled {
        return Vec::new();
    }
    if create {
        return mig::placeable_profiles(&g.model, &g.mig_layout);
    }
    mig::profiles(&g.model)
        .iter()
        .filter(|p| g.free_instances.iter().any(|f| f.profile == p.name))
        .map(|p| p.name)
        .collect()
}

/// The simplest policy: first node, first GPUs that fit. Kept as a baseline.
#[derive(Debug, Default, Clone, Copy)]
pub struct FirstFit;

impl Policy for FirstFit {
    fn name(&self) -> &'static str {
        "first-fit"
    }

    fn place(&self, view: &ClusterView, req: &Request) -> Result<Placement, Unplaceable> {
        let need = gpus_needed(&req.spec);
        for (ni, node) in view.nodes.iter().enumerate() {
            let cands = feasible_on_node(node, req);
            if cands.len() >= need {
                return Ok(Placement {
                    node: ni,
                    gpus: cands.iter().take(need).map(|c| c.0).collect(),
                    mig_start: cands[0].1,
                });
            }
        }
        Err(unplaceable(view, req))
    }
}

/// A placement the caller fixed: a DRA allocation the Kubernetes scheduler made from the node's
/// ResourceSlices. The controller checks it against its own view of the node, never moves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub node: String,
    pub gpu_uuid: String,
    /// For MIG: the first memory slice of the instance.
    pub mig_start: Option<u8>,
}

/// The placement `pin` names for `req`, if it is free in `view`: the node is connected and
/// schedulable, the GPU is its and healthy, and the GPU has room for the request there (a whole
/// GPU entirely free; a share's compute and memory; a MIG instance creatable at the start, or a free
/// instance of the profile there). Host CPU and memory are the kubelet's business and not checked.
pub fn pinned(view: &ClusterView, req: &Request, pin: &Pin) -> Result<Placement, Unplaceable> {
    let wanted = req.spec.describe();
    let no_room = |why: String| Unplaceable::NoRoom {
        wanted: wanted.clone(),
        free: why,
    };
    let (ni, node) = view
        .nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.name == pin.node)
        .ok_or_else(|| no_room(format!("node {} is not connected", pin.node)))?;
    if !node.schedulable {
        return Err(no_room(format!("node {} is drained", node.name)));
    }
    let (gi, g) = node
        .gpus
        .iter()
        .enumerate()
        .find(|(_, g)| g.uuid == pin.gpu_uuid)
        .ok_or_else(|| no_room(format!("GPU {} is not on node {}", pin.gpu_uuid, node.name)))?;
    if req.spec.gpu_model.as_ref().is_some_and(|m| *m != g.model) {
        return Err(no_room(format!("GPU {} is a {}", g.uuid, g.model.name())));
    }
    if !g.healthy {
        return Err(no_room(format!("GPU {} is unhealthy", g.uuid)));
    }
    let ok = match (&req.spec.kind, pin.mig_start) {
        (SliceKind::Whole { count: 1 }, None) => g.fits_whole(),
        (SliceKind::Whole { count }, _) => {
            return Err(no_room(format!(
                "a pinned whole-GPU slice holds one GPU, not {count}"
            )));
        }
        (
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            },
            None,
        ) => g.fits_share(share_milli(*compute_fraction), *memory_bytes),
        (SliceKind::Mig { profile }, Some(start)) => {
            g.mig_candidates(profile, node.mig_create).contains(&start)
                || g.free_instance_starts(profile).contains(&start)
        }
        (SliceKind::Mig { .. }, None) => {
            return Err(no_room("a pinned MIG slice needs its start".into()));
        }
        (_, Some(_)) => return Err(no_room("only a MIG slice has a start".into())),
    };
    if !ok {
        return Err(no_room(format!(
            "GPU {} on {} has no room for it{} (free: {} milli-GPU)",
            g.uuid,
            node.name,
            pin.mig_start
                .map(|s| format!(" at memory slice {s}"))
                .unwrap_or_default(),
            g.free_milli()
        )));
    }
    Ok(Placement {
        node: ni,
        gpus: vec![gi],
        mig_start: pin.mig_start,
    })
}
