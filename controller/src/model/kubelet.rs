//! Slices the kubelet granted: which records are kubelet slices, and what a node's grants change
//! (pure; the API checks the report, the engine commits the changes).

use std::collections::{BTreeMap, HashSet};

use greenslice_core::slice::{SliceSpec, SliceState};

use super::slice::{MigAssignment, SliceRecord};

pub use greenslice_core::kubelet::SLICE_CLASS as KUBELET_SLICE_CLASS;

/// One device allocation the kubelet made for a pod's container, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeletGrant {
    /// `k-...`, from the agent.
    pub slice_id: String,
    /// The pod's tenant.
    pub tenant: String,
    /// Its slice class is [`KUBELET_SLICE_CLASS`].
    pub spec: SliceSpec,
    pub gpus: Vec<String>,
    pub mig: Option<MigAssignment>,
    /// Which pod and container hold it, for the slice's reason.
    pub reason: String,
}

/// Whether a slice stands for a kubelet allocation.
pub fn is_kubelet_slice(s: &SliceRecord) -> bool {
    s.spec.slice_class.as_deref() == Some(KUBELET_SLICE_CLASS)
}

/// What a node's kubelet grants change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeletSliceChanges {
    /// New or changed slices (state Active).
    pub upsert: Vec<SliceRecord>,
    /// Slices whose pod is gone (state Released).
    pub released: Vec<SliceRecord>,
}

/// The slice changes a node's kubelet `grants` make, given the live kubelet slices the controller
/// holds (see [`is_kubelet_slice`]). Level-triggered: the grants are the whole truth for the node,
/// so a live kubelet slice of the node missing from them is released (its pod ended).
pub fn kubelet_slice_changes(
    node: &str,
    existing: &[SliceRecord],
    grants: &[KubeletGrant],
    now_ms: i64,
) -> KubeletSliceChanges {
    let by_id: BTreeMap<&str, &SliceRecord> = existing
        .iter()
        .filter(|s| s.node == node && s.is_live() && is_kubelet_slice(s))
        .map(|s| (s.id.as_str(), s))
        .collect();
    let mut seen = HashSet::new();
    let mut out = KubeletSliceChanges::default();
    for g in grants {
        seen.insert(g.slice_id.as_str());
        let prior = by_id.get(g.slice_id.as_str());
        let record = SliceRecord {
            id: g.slice_id.clone(),
            tenant: g.tenant.clone(),
            spec: g.spec.clone(),
            state: SliceState::Active,
            node: node.to_string(),
            gpus: g.gpus.clone(),
            mig: g.mig.clone(),
            env: Default::default(),
            reason: g.reason.clone(),
            idempotency_key: None,
            created_ms: prior.map_or(now_ms, |p| p.created_ms),
            updated_ms: now_ms,
            kept_until_ms: prior.and_then(|p| p.kept_until_ms),
            claim: None,
            host: Default::default(),
        };
        let unchanged = prior.is_some_and(|p| {
            p.tenant == record.tenant
                && p.spec == record.spec
                && p.gpus == record.gpus
                && p.mig == record.mig
                && p.state == SliceState::Active
        });
        if !unchanged {
            out.upsert.push(record);
        }
    }
    for (id, s) in by_id {
        if !seen.contains(id) {
            let mut r = (*s).clone();
            r.state = SliceState::Released;
            r.reason = "pod no longer holds the devices (kubelet pod-resources)".into();
            r.updated_ms = now_ms;
            out.released.push(r);
        }
    }
    out
}
