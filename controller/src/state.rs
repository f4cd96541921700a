//! The controller's in-memory cluster state: nodes as their agents report them, and slices as the
//! ledger holds them. Capacity in use is always derived from the live slices, never kept twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use greenslice_core::inventory::Gpu;
use greenslice_core::mig;
use greenslice_core::slice::{SliceKind, share_milli};

use crate::placement::{ClusterView, GpuView, NodeView};
use crate::slice::SliceRecord;

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
}

/// Nodes and slices.
///
/// Code that changes a node or a slice directly (through the public maps) must call
/// [`ClusterState::touch`] for that node (or [`ClusterState::reindex`] for a slice), so the cached
/// placement view and the per-node index stay true.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Boxed so growing the map moves pointers, not 344-byte records: with tens of thousands of
    /// finished slices kept, a resize of unboxed records stalled every request for 60-240 ms.
    pub slices: HashMap<String, Box<SliceRecord>>,
    /// (tenant, idempotency key) -> slice id.
    pub idempotency: HashMap<(String, String), String>,
    /// PENDING slices loaded from the ledger at startup (the previous controller crashed between
    /// committing them and the agent's confirmation); resolved when their node registers.
    pub recovering: HashSet<String>,
    /// Live slice ids by node.
    live: HashMap<String, BTreeSet<String>>,
    /// Ids of every slice kept in memory (live or finished) by GPU UUID: energy attribution asks
    /// which slices held a GPU in an interval, and finished slices far outnumber any GPU's.
    by_gpu: HashMap<String, BTreeSet<String>>,
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
        if let Some(old) = self.slices.insert(id.clone(), Box::new(r)) {
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

    /// Brings the node index and the cached view in step with slice `id` after it changed.
    pub fn reindex(&mut self, id: &str) {
        let Some(r) = self.slice(id) else {
            return;
        };
        let (node, live) = (r.node.clone(), r.is_live());
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
        if let Some(k) = &r.idempotency_key
            && self.idempotency.get(&(r.tenant.clone(), k.clone())) == Some(&r.id)
        {
            self.idempotency.remove(&(r.tenant.clone(), k.clone()));
        }
        if let Some(set) = self.live.get_mut(&r.node) {
            set.remove(id);
        }
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
                v.mig_layout.push(mig::Placed {
                    profile: inst.profile.clone(),
                    start: inst.start,
                });
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
        NodeView {
            name: n.name.clone(),
            schedulable: n.connected && !n.drained,
            cpu_milli: n.cpu_milli,
            cpu_used_milli: 0,
            memory_bytes: n.memory_bytes,
            memory_used_bytes: 0,
            gpus: {
                let on_node: Vec<&SliceRecord> = self.live_on_node(&n.name).collect();
                n.gpus
                    .iter()
                    .map(|g| Self::gpu_view_of(g, &on_node))
                    .collect()
            },
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
mod tests {
    use greenslice_core::slice::SliceState;

    use super::*;

    fn rec(id: &str, gpus: &[&str], state: SliceState) -> SliceRecord {
        let mut r = crate::ledger::tests::record(id, state);
        r.gpus = gpus.iter().map(|g| g.to_string()).collect();
        r
    }

    fn on(st: &ClusterState, gpu: &str) -> Vec<String> {
        let mut v: Vec<String> = st.slices_on_gpu(gpu).map(|s| s.id.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_gpu_index_follows_puts_replacements_and_removals() {
        let mut st = ClusterState::default();
        st.put(rec("a", &["G1", "G2"], SliceState::Active));
        st.put(rec("b", &["G1"], SliceState::Released));
        assert_eq!(on(&st, "G1"), ["a", "b"], "finished slices stay indexed");
        assert_eq!(on(&st, "G2"), ["a"]);
        // Re-put with other GPUs (a kubelet slice re-reported): it leaves the GPU it no longer names.
        st.put(rec("a", &["G2", "G3"], SliceState::Active));
        assert_eq!(on(&st, "G1"), ["b"]);
        assert_eq!(on(&st, "G3"), ["a"]);
        st.remove_slice("b");
        assert!(on(&st, "G1").is_empty());
        assert!(on(&st, "nope").is_empty());
    }

    #[test]
    fn live_slices_are_exactly_the_live_records() {
        let mut st = ClusterState::default();
        st.put(rec("a", &["G1"], SliceState::Active));
        st.put(rec("b", &["G1"], SliceState::Pending));
        st.put(rec("c", &["G2"], SliceState::Released));
        st.put(rec("b", &["G1"], SliceState::Failed));
        let mut live: Vec<&str> = st.live_slices().map(|s| s.id.as_str()).collect();
        live.sort();
        let mut want: Vec<&str> = st
            .all()
            .filter(|s| s.is_live())
            .map(|s| s.id.as_str())
            .collect();
        want.sort();
        assert_eq!(live, want);
        assert_eq!(live, ["a"]);
    }
}
