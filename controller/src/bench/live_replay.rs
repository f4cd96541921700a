//! The offline replay of live requests: a sequence of slice requests and releases placed one by one
//! by a [`Policy`] on a [`ClusterView`] this module keeps itself, with no controller, ledger or
//! agent. `tests/live_replay.rs` sends the same sequence through the tenant API of a controller
//! process to simulated agents and asserts that every request gets the same placement (node, GPUs,
//! MIG start), or is unplaceable with the same reason, in both.
//!
//! The replay does what the live request path does with the policy (see
//! `engine/lifecycle.rs`): [`Policy::observe`] every request, then place it on the view of what is
//! held now; a placed request holds its GPUs (and its host CPU and memory) until its release.
//! Views are in node-name order, as the controller's are, since ties go to the first node. It does
//! not re-partition free MIG instances (the controller's `make_room`): on nodes that create their
//! own instances none is ever free, so that path never runs in a replay of this kind.

use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::Gpu;
use greenslice_core::mig;
use greenslice_core::slice::{SliceKind, SliceSpec, share_milli};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::placement::{ClusterView, GpuView, NodeView, Placement, Policy, Request, Unplaceable};

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A request for a slice.
    Request(Request),
    /// The release of the slice of request number `request` (0-based, counting requests only),
    /// if it was placed; nothing otherwise.
    Release { request: usize },
}

/// Where a request went, by name: the node, the GPU UUIDs in the order the slice lists them, and
/// the first memory slice of a MIG instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub node: String,
    pub gpus: Vec<String>,
    pub mig_start: Option<u8>,
}

/// What became of one request.
pub type Outcome = Result<Assigned, Unplaceable>;

/// A node as its agent registers it: name, host CPU (milli-cores) and memory (bytes), whether it
/// may create MIG instances, and its GPUs.
#[derive(Debug, Clone)]
pub struct ReplayNode {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub mig_create: bool,
    pub gpus: Vec<Gpu>,
}

/// The placement view of nodes on which no slice is held, in node-name order. MIG instances the
/// GPUs already have are in their layout and free to lend.
pub fn idle_view(nodes: &[ReplayNode]) -> ClusterView {
    let mut nodes: Vec<&ReplayNode> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterView {
        nodes: nodes
            .into_iter()
            .map(|n| NodeView {
                name: n.name.clone(),
                schedulable: true,
                mig_create: n.mig_create,
                cpu_milli: n.cpu_milli,
                cpu_used_milli: 0,
                memory_bytes: n.memory_bytes,
                memory_used_bytes: 0,
                gpus: n
                    .gpus
                    .iter()
                    .map(|g| GpuView {
                        uuid: g.uuid.clone(),
                        model: g.model.clone(),
                        healthy: g.healthy,
                        mig_enabled: g.mig_enabled,
                        memory_bytes: g.memory_bytes,
                        used_milli: 0,
                        used_memory_bytes: 0,
                        exclusive: false,
                        mig_layout: g.mig_layout(),
                        free_instances: g.mig_layout(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Replays `steps` on `view` with `policy` (which should be fresh: a learning policy's target
/// workload is part of what is replayed). One outcome per request, in order.
pub fn replay(policy: &dyn Policy, view: ClusterView, steps: &[Step]) -> Vec<Outcome> {
    run(policy, view, steps, None)
}

/// [`replay`] placing as the controller does, with [`Policy::place_versioned`] (a node's version
/// changes whenever what it holds does); with the time of each decision (observe and place), ns.
pub fn replay_timed(
    policy: &dyn Policy,
    view: ClusterView,
    steps: &[Step],
) -> (Vec<Outcome>, Vec<u64>) {
    let mut times = Vec::new();
    let out = run(policy, view, steps, Some(&mut times));
    (out, times)
}

fn run(
    policy: &dyn Policy,
    mut view: ClusterView,
    steps: &[Step],
    mut times: Option<&mut Vec<u64>>,
) -> Vec<Outcome> {
    let mut held: Vec<Option<(Request, Placement)>> = Vec::new();
    let mut out = Vec::new();
    let mut versions: Vec<u64> = (0..view.nodes.len() as u64).collect();
    let mut next_version = versions.len() as u64;
    for step in steps {
        match step {
            Step::Request(req) => {
                let t0 = std::time::Instant::now();
                policy.observe(req);
                let placed = if times.is_some() {
                    policy.place_versioned(&view, &versions, req)
                } else {
                    policy.place(&view, req)
                };
                if let Some(t) = times.as_deref_mut() {
                    t.push(t0.elapsed().as_nanos() as u64);
                }
                match placed {
                    Ok(p) => {
                        let node = &view.nodes[p.node];
                        out.push(Ok(Assigned {
                            node: node.name.clone(),
                            gpus: p.gpus.iter().map(|&g| node.gpus[g].uuid.clone()).collect(),
                            mig_start: p.mig_start,
                        }));
                        hold(&mut view, req, &p);
                        versions[p.node] = next_version;
                        next_version += 1;
                        held.push(Some((req.clone(), p)));
                    }
                    Err(e) => {
                        out.push(Err(e));
                        held.push(None);
                    }
                }
            }
            Step::Release { request } => {
                if let Some((req, p)) = held.get_mut(*request).and_then(Option::take) {
                    free(&mut view, &req, &p);
                    versions[p.node] = next_version;
                    next_version += 1;
                }
            }
        }
    }
    out
}

/// `n` simulated DGX nodes as their agents register them: 8 GPUs each, the models cycling through
/// H100-80GB, A100-40GB, H200 and A100-80GB, two MIG GPUs on every other node; 112 cores and 2
/// TiB of host memory.
pub fn dgx_nodes(n: usize) -> Vec<ReplayNode> {
    let models = [
        GpuModel::H100Sxm5_80Gb,
        GpuModel::A100Sxm4_40Gb,
        GpuModel::H200Sxm5_141Gb,
        GpuModel::A100Sxm4_80Gb,
    ];
    (0..n)
        .map(|i| {
            let model = &models[i % models.len()];
            let name = format!("node-{i:05}");
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
                        mig_enabled: i % 2 == 0 && g < 2,
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
        })
        .collect()
}

/// Marks what a placed request holds.
fn hold(view: &mut ClusterView, req: &Request, p: &Placement) {
    let node = &mut view.nodes[p.node];
    node.cpu_used_milli += req.cpu_milli;
    node.memory_used_bytes += req.memory_bytes;
    for &gi in &p.gpus {
        let g = &mut node.gpus[gi];
        match &req.spec.kind {
            SliceKind::Whole { .. } => {
                g.exclusive = true;
                g.used_milli = greenslice_core::MILLI_PER_GPU;
            }
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            } => {
                g.used_milli += share_milli(*compute_fraction);
                g.used_memory_bytes += memory_bytes;
            }
            SliceKind::Mig { profile } => {
                let start = p.mig_start.unwrap_or_default();
                if node.mig_create {
                    g.mig_layout.push(mig::Placed {
                        profile: profile.clone(),
                        start,
                    });
                } else {
                    g.free_instances
                        .retain(|i| !(i.start == start && i.profile == *profile));
                }
            }
        }
    }
}

/// Gives back what [`hold`] marked.
fn free(view: &mut ClusterView, req: &Request, p: &Placement) {
    let node = &mut view.nodes[p.node];
    node.cpu_used_milli -= req.cpu_milli;
    node.memory_used_bytes -= req.memory_bytes;
    for &gi in &p.gpus {
        let g = &mut node.gpus[gi];
        match &req.spec.kind {
            SliceKind::Whole { .. } => {
                g.exclusive = false;
                g.used_milli = 0;
            }
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            } => {
                g.used_milli -= share_milli(*compute_fraction);
                g.used_memory_bytes -= memory_bytes;
            }
            SliceKind::Mig { profile } => {
                let start = p.mig_start.unwrap_or_default();
                let placed = mig::Placed {
                    profile: profile.clone(),
                    start,
                };
                if node.mig_create {
                    g.mig_layout.retain(|i| *i != placed);
                } else {
                    g.free_instances.push(placed);
                }
            }
        }
    }
}

/// Share fractions the seeded sequences draw from.
const FRACTIONS: [f64; 8] = [0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9];
/// Host CPU of a request, milli-cores (0: not said).
const CPUS: [u64; 6] = [0, 0, 2000, 8000, 16_000, 32_000];
const GIB: u64 = 1 << 30;

/// A seeded sequence of `requests` requests for the GPUs of `view`, with releases interleaved:
/// each request is released after 10 to 110 more requests (drawn uniformly), or never when the
/// sequence ends first. Requests: 40% shares (0.1 to 0.9 of a GPU, 1 to 16 GiB), 30% whole GPUs (1, 2, 4
/// or 8), 30% MIG instances (a profile of a MIG-enabled model of the view; none when the view has
/// none); one in ten constrained to a GPU model of the view; two in three carry host CPU (up to 32
/// cores) and memory (2 GiB per core).
pub fn seeded_steps(view: &ClusterView, seed: u64, requests: usize) -> Vec<Step> {
    seeded_steps_held(view, seed, requests, 110)
}

/// [`seeded_steps`] with each request held for 10 to `max_held` more requests (at least 10).
pub fn seeded_steps_held(
    view: &ClusterView,
    seed: u64,
    requests: usize,
    max_held: usize,
) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gpus = || view.nodes.iter().flat_map(|n| &n.gpus);
    let mut models: Vec<GpuModel> = Vec::new();
    let mut mig_models: Vec<GpuModel> = Vec::new();
    for g in gpus() {
        let list = if g.mig_enabled {
            &mut mig_models
        } else {
            &mut models
        };
        if !list.contains(&g.model) {
            list.push(g.model.clone());
        }
    }
    // Releases by the request they come before: each slice is held for 10 to `max_held` requests.
    let mut due: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    let mut steps = Vec::with_capacity(requests * 2);
    for i in 0..requests {
        for request in due.remove(&i).unwrap_or_default() {
            steps.push(Step::Release { request });
        }
        due.entry(i + rng.random_range(10..=max_held.max(10)))
            .or_default()
            .push(i);
        let constrained = rng.random_bool(0.1);
        let kind = rng.random_range(0..10);
        let mig = if kind < 3 {
            mig_models.choose(&mut rng).cloned()
        } else {
            None
        }
        .and_then(|m| mig::profiles(&m).choose(&mut rng).map(|p| (m, p.name)));
        let (kind, model) = if let Some((m, profile)) = mig {
            (
                SliceKind::Mig {
                    profile: profile.to_string(),
                },
                Some(m).filter(|_| constrained),
            )
        } else if kind < 6 {
            let count = *[1, 1, 1, 1, 1, 1, 2, 2, 4, 8]
                .choose(&mut rng)
                .unwrap_or(&1);
            (
                SliceKind::Whole { count },
                models.choose(&mut rng).cloned().filter(|_| constrained),
            )
        } else {
            let f = *FRACTIONS.choose(&mut rng).unwrap_or(&0.5);
            (
                SliceKind::Share {
                    compute_fraction: f,
                    memory_bytes: GIB << rng.random_range(0..5),
                },
                models.choose(&mut rng).cloned().filter(|_| constrained),
            )
        };
        let cpu_milli = *CPUS.choose(&mut rng).unwrap_or(&0);
        steps.push(Step::Request(Request {
            spec: SliceSpec {
                kind,
                gpu_model: model,
                slice_class: None,
            },
            cpu_milli,
            memory_bytes: cpu_milli / 1000 * 2 * GIB,
        }));
    }
    steps
}

#[cfg(test)]
mod tests;
