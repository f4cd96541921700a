//! The controller's in-memory cluster state: nodes as their agents report them, and slices as the
//! ledger holds them. Capacity in use is always derived from the live slices, never kept twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use greenslice_core::inventory::{Gpu, NodeCapabilities};
use greenslice_core::mig;
use greenslice_core::slice::{SliceKind, share_milli};

use crate::model::slice::SliceRecord;
use crate::placement::{ClusterView, GpuView, NodeView};

/// A node as its agent last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub backend: String,
    /// Reported GPUs, kept in step with the commands the agent confirmed.
    pub gpus: Vec<Gpu>,
    pub connected: bool,
    /// When the agent's session ended (ms since the Unix epoch); None while connected. Its slices
    /// are kept (the hardware may still run them) and nothing new is placed there.
    pub unreachable_since_ms: Option<i64>,
    /// Drained by an operator: nothing new is placed there even when its agent is connected.
    pub drained: bool,
    /// What the node may do, as its agent reported; None from an agent older than capability
    /// reporting (see [`NodeRecord::may_create_mig`] and [`NodeRecord::mps`]).
    pub capabilities: Option<NodeCapabilities>,
    /// Whether the node's agent lets idle pods be evicted (its kubelet report's
    /// `eviction_allowed`, `kubelet.pod_reclaim = "evict"`); false until it reports.
    pub pod_eviction: bool,
}

impl NodeRecord {
    /// Whether new MIG instances may be created there. An agent that reports nothing is treated
    /// as before capabilities existed: it may (and fails with ReadOnly if it may not), since it
    /// could not lend an existing instance either.
    pub fn may_create_mig(&self) -> bool {
        self.capabilities.is_none_or(|c| c.mig_manage)
    }

    /// Whether share limits are enforced there (MPS available; assumed for older agents).
    pub fn mps(&self) -> bool {
        self.capabilities.is_none_or(|c| c.mps)
    }
}

/// Nodes and slices.
///
/// Slices change only through [`ClusterState::put`], [`ClusterState::update`] and
/// [`ClusterState::remove_slice`], which keep every slice index in step. Code that changes a node
/// directly (through the public map) must call [`ClusterState::touch`] for it, so the cached
/// placement view stays true.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Boxed so growing the map moves pointers, not 344-byte records: with tens of thousands of
    /// finished slices kept, a resize of unboxed records stalled every request for 60-240 ms.
    slices: HashMap<String, Box<SliceRecord>>,
    /// (tenant, idempotency key) -> slice id.
    pub idempotency: HashMap<(String, String), String>,
    /// PENDING slices loaded from the ledger at startup (the previous controller crashed between
    /// committing them and the agent's confirmation); resolved when their node registers.
    pub recovering: HashSet<String>,
    /// Every slice id in order (ids sort by creation time): pages of a list are ranges of it.
    ordered: BTreeSet<String>,
    /// Live slice ids by node.
    live: HashMap<String, BTreeSet<String>>,
    /// Ids of every slice kept in memory (live or finished) by GPU UUID: energy attribution asks
    /// which slices held a GPU in an interval, and finished slices far outnumber any GPU's.
    by_gpu: HashMap<String, BTreeSet<String>>,
    /// Finished slices in the order retention forgets them.
    finished: Finished,
    /// The placement view, kept between requests; nodes in `dirty` are rebuilt before use.
    cached: Option<ClusterView>,
    dirty: HashSet<String>,
    /// Rebuild the whole cached view (nodes were added or replaced).
    rebuild: bool,
    /// Version of each node of the cached view (see [`crate::placement::Policy::place_versioned`]).
    versions: Vec<u64>,
}

/// Node view versions, unique in the process: a version never names two different node views,
/// even across controllers (tests run several in one process).
static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_version() -> u64 {
    NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A finished slice's place in the retention order: when it finished (its last update, ms since
/// the Unix epoch), then its id.
type FinishedKey = (i64, String);

/// Finished (RELEASED, FAILED) slices, so pruning finds the oldest without scanning every slice.
/// Each finished slice is in `queue` or in `held`, never both.
#[derive(Debug, Default)]
struct Finished {
    /// Oldest first: what pruning walks.
    queue: BTreeSet<FinishedKey>,
    /// Slices pruning would have forgotten but an energy interval not yet attributed needs, by the
    /// GPU of that interval. Kept out of `queue` so later passes do not walk them again; they go
    /// back when that GPU's interval has moved past them.
    held: HashMap<String, BTreeSet<FinishedKey>>,
    held_count: usize,
}

impl Finished {
    fn key(r: &SliceRecord) -> FinishedKey {
        (r.updated_ms, r.id.clone())
    }

    fn insert(&mut self, r: &SliceRecord) {
        if !r.is_live() {
            self.queue.insert(Self::key(r));
        }
    }

    fn remove(&mut self, r: &SliceRecord) {
        if r.is_live() {
            return;
        }
        let key = Self::key(r);
        if self.queue.remove(&key) {
            return;
        }
        // Held under one of its GPUs.
        for g in &r.gpus {
            if let Some(set) = self.held.get_mut(g)
                && set.remove(&key)
            {
                self.held_count -= 1;
                if set.is_empty() {
                    self.held.remove(g);
                }
                return;
            }
        }
    }

    fn len(&self) -> usize {
        self.queue.len() + self.held_count
    }

    /// Moves held slices whose GPU's open energy interval now starts at or after their end back
    /// into the queue (all of a GPU's when it has no open interval).
    fn release_held(&mut self, open_since: &dyn Fn(&str) -> Option<i64>) {
        let gpus: Vec<String> = self.held.keys().cloned().collect();
        for g in gpus {
            let Some(set) = self.held.get_mut(&g) else {
                continue;
            };
            let done = match open_since(&g) {
                None => std::mem::take(set),
                Some(since) => {
                    let needed = set.split_off(&(since.saturating_add(1), String::new()));
                    std::mem::replace(set, needed)
                }
            };
            if set.is_empty() {
                self.held.remove(&g);
            }
            self.held_count -= done.len();
            self.queue.extend(done);
        }
    }
}

/// How far one pruning pass goes (see [`ClusterState::prune_finished`]).
#[derive(Debug, Clone, Copy)]
pub struct PruneLimits {
    /// Forget finished slices whose last update is older than this (ms since the Unix epoch).
    pub older_than_ms: i64,
    /// Forget the oldest finished slices beyond this many.
    pub keep_at_most: usize,
    /// Look at no more finished slices than this in one pass (bounds the time the state is held).
    pub examine_at_most: usize,
}

/// Why a finished slice was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Older than the retention time.
    Age,
    /// Beyond the retention count.
    Count,
}

impl Expiry {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Age => "age",
            Expiry::Count => "count",
        }
    }
}

/// What one pruning pass did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Slices forgotten, oldest first, and why.
    pub forgotten: Vec<(SliceRecord, Expiry)>,
    /// Finished slices looked at (forgotten or held for energy): a pass that reached
    /// [`PruneLimits::examine_at_most`] may have left work for the next.
    pub examined: usize,
}

impl ClusterState {
    /// Adds or replaces a slice record, keeping the idempotency and node indexes in step.
    pub fn put(&mut self, r: SliceRecord) {
        if let Some(k) = &r.idempotency_key {
            self.idempotency
                .insert((r.tenant.clone(), k.clone()), r.id.clone());
        }
        let id = r.id.clone();
        for g in &r.gpus {
            self.by_gpu.entry(g.clone()).or_default().insert(id.clone());
        }
        self.ordered.insert(id.clone());
        if let Some(old) = self.slices.insert(id.clone(), Box::new(r)) {
            self.finished.remove(&old);
            // A replaced record that named other GPUs (a kubelet slice re-reported) leaves them.
            let new_gpus = &self.slices[&id].gpus;
            for g in old.gpus.iter().filter(|g| !new_gpus.contains(g)) {
                if let Some(set) = self.by_gpu.get_mut(g) {
                    set.remove(&id);
                }
            }
        }
        self.reindex(&id);
    }

    /// Changes slice `id` in place, keeping the indexes in step; None when there is no such slice.
    /// `f` must not change the slice's id or GPUs (replace the record with [`Self::put`] for that).
    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut SliceRecord)) -> Option<&SliceRecord> {
        let r = self.slices.get_mut(id)?;
        self.finished.remove(r);
        f(r);
        self.reindex(id);
        self.slice(id)
    }

    /// Brings the node and finished indexes and the cached view in step with slice `id` after it
    /// changed (its old entry in the finished index already removed).
    fn reindex(&mut self, id: &str) {
        let Some(r) = self.slices.get(id) else {
            return;
        };
        let (node, live) = (r.node.clone(), r.is_live());
        self.finished.insert(r);
        let set = self.live.entry(node.clone()).or_default();
        if live {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
        self.dirty.insert(node);
    }

    /// Removes a slice record and its index entries.
    pub fn remove_slice(&mut self, id: &str) -> Option<SliceRecord> {
        let r = *self.slices.remove(id)?;
        self.ordered.remove(id);
        if let Some(k) = &r.idempotency_key
            && self.idempotency.get(&(r.tenant.clone(), k.clone())) == Some(&r.id)
        {
            self.idempotency.remove(&(r.tenant.clone(), k.clone()));
        }
        if let Some(set) = self.live.get_mut(&r.node) {
            set.remove(id);
        }
        self.finished.remove(&r);
        for g in &r.gpus {
            if let Some(set) = self.by_gpu.get_mut(g) {
                set.remove(id);
                if set.is_empty() {
                    self.by_gpu.remove(g);
                }
            }
        }
        self.recovering.remove(id);
        self.dirty.insert(r.node.clone());
        Some(r)
    }

    /// Marks a node changed (its record or hardware): its placement view is rebuilt before use.
    pub fn touch(&mut self, node: &str) {
        self.dirty.insert(node.to_string());
    }

    /// Marks the set of nodes changed: the whole cached view is rebuilt before use.
    pub fn touch_all(&mut self) {
        self.rebuild = true;
    }

    /// Every slice record in memory.
    pub fn all(&self) -> impl Iterator<Item = &SliceRecord> + '_ {
        self.slices.values().map(|b| b.as_ref())
    }

    /// One page of the slices `filter` matches, in id order, strictly after `after` (from the
    /// first when None). Walks the id index from the cursor, so a page costs the slices it looks
    /// at, not a sort of all of them.
    pub fn page_slices(
        &self,
        filter: &crate::model::page::SliceFilter,
        after: Option<&str>,
        size: usize,
    ) -> crate::model::page::Page<SliceRecord> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        let matching = self
            .ordered
            .range::<String, _>((from, Bound::Unbounded))
            .filter_map(|id| self.slices.get(id))
            .filter(|s| filter.matches(s))
            .map(|s| (s.id.as_str(), s.as_ref().clone()));
        crate::model::page::take_page(matching, size)
    }

    /// One page of node names, in order, strictly after `after` (from the first when None).
    pub fn page_nodes(&self, after: Option<&str>, size: usize) -> crate::model::page::Page<String> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        let names = self
            .nodes
            .range::<String, _>((from, Bound::Unbounded))
            .map(|(k, _)| (k.as_str(), k.clone()));
        crate::model::page::take_page(names, size)
    }

    /// How many slice records are in memory (live and finished).
    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Whether a slice with this id is in memory.
    pub fn contains(&self, id: &str) -> bool {
        self.slices.contains_key(id)
    }

    /// How many finished (RELEASED, FAILED) slices are kept.
    pub fn finished_count(&self) -> usize {
        self.finished.len()
    }

    /// How many finished slices are kept past their retention only because an energy interval not
    /// yet attributed needs them.
    pub fn held_for_energy_count(&self) -> usize {
        self.finished.held_count
    }

    /// Forgets finished slices, oldest first, while the oldest is older than
    /// `limits.older_than_ms` or more than `limits.keep_at_most` are kept, looking at no more than
    /// `limits.examine_at_most`. Work is in proportion to the slices looked at, not to the slices
    /// kept.
    ///
    /// A slice that held a GPU after the start of that GPU's open energy interval
    /// (`open_since(gpu)`, ms; None when the GPU has none) is needed to attribute it, so it is not
    /// forgotten: it is held aside, and only goes back in line once the interval has moved past
    /// its end. Failed slices never held anything and are never needed.
    pub fn prune_finished(
        &mut self,
        limits: &PruneLimits,
        open_since: &dyn Fn(&str) -> Option<i64>,
    ) -> Pruned {
        self.finished.release_held(open_since);
        let mut out = Pruned::default();
        while out.examined < limits.examine_at_most {
            let Some((ended, _)) = self.finished.queue.first() else {
                break;
            };
            let expiry = if *ended < limits.older_than_ms {
                Expiry::Age
            } else if self.finished.len() > limits.keep_at_most {
                Expiry::Count
            } else {
                break;
            };
            let Some((ended, id)) = self.finished.queue.pop_first() else {
                break;
            };
            out.examined += 1;
            let needed_by = self.slices.get(&id).and_then(|r| {
                let (_, until) = r.held_ms()?;
                r.gpus
                    .iter()
                    .find(|g| open_since(g).is_some_and(|since| until > since))
                    .cloned()
            });
            match needed_by {
                Some(gpu) => {
                    self.finished
                        .held
                        .entry(gpu)
                        .or_default()
                        .insert((ended, id));
                    self.finished.held_count += 1;
                }
                None => {
                    if let Some(r) = self.remove_slice(&id) {
                        out.forgotten.push((r, expiry));
                    }
                }
            }
        }
        out
    }

    /// Every live slice (PENDING, ACTIVE, RELEASING), through the live index: cheaper than
    /// [`Self::all`] filtered, since finished slices kept for a while outnumber live ones.
    pub fn live_slices(&self) -> impl Iterator<Item = &SliceRecord> + '_ {
        self.live
            .values()
            .flatten()
            .filter_map(|id| self.slice(id))
            .filter(|s| s.is_live())
    }

    /// One slice record.
    pub fn slice(&self, id: &str) -> Option<&SliceRecord> {
        self.slices.get(id).map(|b| b.as_ref())
    }

    /// Every slice in memory (live or finished) that names GPU `uuid`.
    pub fn slices_on_gpu<'a>(&'a self, uuid: &str) -> impl Iterator<Item = &'a SliceRecord> + 'a {
        self.by_gpu
            .get(uuid)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slice(id))
    }

    /// Live slices on a node.
    pub fn live_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a SliceRecord> + 'a {
        self.live
            .get(node)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.slice(id))
            .filter(|s| s.is_live())
    }

    /// The placement view of one GPU: reported hardware plus what live slices hold.
    pub fn gpu_view(&self, node: &NodeRecord, g: &Gpu) -> GpuView {
        let on_node: Vec<&SliceRecord> = self.live_on_node(&node.name).collect();
        Self::gpu_view_of(g, &on_node)
    }

    /// [`ClusterState::gpu_view`] given the node's live slices (found once per node).
    fn gpu_view_of(g: &Gpu, on_node: &[&SliceRecord]) -> GpuView {
        let mut v = GpuView {
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            healthy: g.healthy,
            mig_enabled: g.mig_enabled,
            memory_bytes: g.memory_bytes,
            used_milli: 0,
            used_memory_bytes: 0,
            exclusive: false,
            mig_layout: Vec::new(),
            free_instances: Vec::new(),
        };
        let live: Vec<&SliceRecord> = on_node
            .iter()
            .copied()
            .filter(|s| s.gpus.contains(&g.uuid))
            .collect();
        for s in &live {
            match &s.spec.kind {
                SliceKind::Whole { .. } => {
                    v.exclusive = true;
                    v.used_milli = greenslice_core::MILLI_PER_GPU;
                }
                SliceKind::Share {
                    compute_fraction,
                    memory_bytes,
                } => {
                    v.used_milli += share_milli(*compute_fraction);
                    v.used_memory_bytes += memory_bytes;
                }
                SliceKind::Mig { .. } => {
                    if let Some(m) = &s.mig {
                        v.mig_layout.push(mig::Placed {
                            profile: m.profile.clone(),
                            start: m.start,
                        });
                    }
                }
            }
        }
        // Instances on the hardware that no live slice accounts for (made outside greenslice, or
        // not yet cleaned up) still occupy their slices.
        for inst in &g.mig_instances {
            let owned = live.iter().any(|s| {
                s.mig.as_ref().is_some_and(|m| {
                    m.gpu_instance_id == Some(inst.gpu_instance_id)
                        || (m.gpu_instance_id.is_none() && m.start == inst.start)
                })
            });
            if !owned {
                let placed = mig::Placed {
                    profile: inst.profile.clone(),
                    start: inst.start,
                };
                // One no slice names on the hardware either may be lent (made outside greenslice,
                // or left free); one naming a finished slice waits for the orphan sweep.
                if inst.slice_id.is_none() {
                    v.free_instances.push(placed.clone());
                }
                v.mig_layout.push(placed);
            }
        }
        // Shares or whole assignments on the hardware that no live slice accounts for.
        for sh in &g.shares {
            if !live.iter().any(|s| s.id == sh.slice_id) {
                v.used_milli += share_milli(sh.compute_fraction);
                v.used_memory_bytes += sh.memory_bytes;
            }
        }
        if let Some(w) = &g.whole_slice_id
            && !live.iter().any(|s| s.id == *w)
        {
            v.exclusive = true;
        }
        v
    }

    fn node_view(&self, n: &NodeRecord) -> NodeView {
        let on_node: Vec<&SliceRecord> = self.live_on_node(&n.name).collect();
        NodeView {
            name: n.name.clone(),
            schedulable: n.connected && !n.drained,
            mig_create: n.may_create_mig(),
            cpu_milli: n.cpu_milli,
            // What the live slices there said their workloads need.
            cpu_used_milli: on_node
                .iter()
                .fold(0, |a, s| a.saturating_add(s.host.cpu_milli)),
            memory_bytes: n.memory_bytes,
            memory_used_bytes: on_node
                .iter()
                .fold(0, |a, s| a.saturating_add(s.host.memory_bytes)),
            gpus: n
                .gpus
                .iter()
                .map(|g| Self::gpu_view_of(g, &on_node))
                .collect(),
        }
    }

    /// The placement view of the cluster. Node order is by name (deterministic).
    pub fn view(&self) -> ClusterView {
        ClusterView {
            nodes: self.nodes.values().map(|n| self.node_view(n)).collect(),
        }
    }

    /// The same view as [`ClusterState::view`], kept between calls: only nodes changed since the
    /// last call are rebuilt (a request changes one node, so placing does not cost a walk over
    /// every GPU of a large cluster).
    pub fn view_cached(&mut self) -> &ClusterView {
        self.refresh_view();
        self.cached.get_or_insert_with(ClusterView::default)
    }

    /// The cached view with the version of each node: a node's version changes whenever its view
    /// is rebuilt, so a placement policy may reuse what it computed for an unchanged node.
    pub fn view_versioned(&mut self) -> (&ClusterView, &[u64]) {
        self.refresh_view();
        let view = self.cached.get_or_insert_with(ClusterView::default);
        (view, &self.versions)
    }

    /// Brings the cached view (and its versions) in step with the nodes and slices.
    fn refresh_view(&mut self) {
        let usable = !self.rebuild
            && self
                .cached
                .as_ref()
                .is_some_and(|v| v.nodes.len() == self.nodes.len());
        if !usable {
            self.rebuild_view();
        } else if !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            let fresh: Vec<NodeView> = dirty
                .iter()
                .filter_map(|name| self.nodes.get(name))
                .map(|n| self.node_view(n))
                .collect();
            if let Some(v) = self.cached.as_mut() {
                for nv in fresh {
                    // The view is in node-name order, like `nodes`.
                    match v.nodes.binary_search_by(|x| x.name.cmp(&nv.name)) {
                        Ok(i) => {
                            v.nodes[i] = nv;
                            if let Some(ver) = self.versions.get_mut(i) {
                                *ver = new_version();
                            }
                        }
                        Err(_) => self.rebuild = true,
                    }
                }
            }
            if self.rebuild {
                self.rebuild_view();
            }
        }
        self.rebuild = false;
        self.dirty.clear();
    }

    fn rebuild_view(&mut self) {
        let view = self.view();
        self.versions = view.nodes.iter().map(|_| new_version()).collect();
        self.cached = Some(view);
    }

    /// Updates the mirror of a node's hardware after a confirmed MIG creation.
    pub fn mirror_mig_created(
        &mut self,
        node: &str,
        gpu: &str,
        inst: greenslice_core::inventory::MigInstance,
    ) {
        if let Some(g) = self.gpu_mut(node, gpu) {
            g.mig_instances
                .retain(|i| i.gpu_instance_id != inst.gpu_instance_id);
            g.mig_instances.push(inst);
        }
    }

    /// Updates the mirror after a confirmed MIG destruction.
    pub fn mirror_mig_destroyed(&mut self, node: &str, gpu: &str, gi: u32) {
        if let Some(g) = self.gpu_mut(node, gpu) {
            g.mig_instances.retain(|i| i.gpu_instance_id != gi);
        }
    }

    /// Updates the mirror after a lent MIG instance was given back: it stays, owned by no slice.
    pub fn mirror_mig_returned(&mut self, node: &str, gpu: &str, gi: u32) {
        if let Some(g) = self.gpu_mut(node, gpu) {
            for i in g
                .mig_instances
                .iter_mut()
                .filter(|i| i.gpu_instance_id == gi)
            {
                i.slice_id = None;
            }
        }
    }

    /// Updates the mirror after a share or whole assignment was cleared.
    pub fn mirror_cleared(&mut self, node: &str, gpu: &str, slice: &str) {
        if let Some(g) = self.gpu_mut(node, gpu) {
            g.shares.retain(|s| s.slice_id != slice);
            if g.whole_slice_id.as_deref() == Some(slice) {
                g.whole_slice_id = None;
            }
        }
    }

    fn gpu_mut(&mut self, node: &str, gpu: &str) -> Option<&mut Gpu> {
        self.dirty.insert(node.to_string());
        self.nodes
            .get_mut(node)?
            .gpus
            .iter_mut()
            .find(|g| g.uuid == gpu)
    }
}

#[cfg(test)]
mod tests;
