//! Device-plugin grants: the slice id each Allocate hands a container, kept from the moment Allocate
//! answers until the pod that holds the devices ends.
//!
//! The kubelet's Allocate does not say which pod it is for, and pod-resources names the pod only
//! once the kubelet has recorded the allocation. So Allocate mints a slice id
//! ([`GrantBook::mint`]) and gives it to the container as `GREENSLICE_SLICE_ID`; every pod-resources
//! read is matched with the grants by resource and device ids ([`GrantBook::reconcile`]), so the
//! slice the controller records carries the id the container's processes carry, and their energy
//! is attributed to the pod's namespace. A grant no pod is listed with yet is reported as a slice of
//! [`PENDING_TENANT`]: its devices are reserved in the controller (no tenant placement, no
//! re-layout) from the moment Allocate answers, not at the next pod-resources read. A grant never
//! listed within [`PENDING_GRACE_MS`] (the kubelet failed the container before recording it) is
//! dropped; a grant listed once and then no longer listed ended with its pod.
//!
//! [`GrantBook`] is pure; [`Grants`] shares it between the plugin and the pod-resources reader and
//! records every change in the node checkpoint before Allocate answers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use greenslice_proto::podresources::v1 as pr;
use greenslice_proto::v1 as pb;
use tokio::sync::Notify;

use crate::checkpoint::KubeletGrant;
pub use greenslice_core::kubelet::PENDING_TENANT;

/// How long a grant may wait for pod-resources to list its pod, ms.
pub const PENDING_GRACE_MS: i64 = 60_000;

/// Container name of a pending grant's allocation (its pod is named after the slice id).
pub const PENDING_CONTAINER: &str = "allocated";

/// The grants of one node (pure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrantBook {
    grants: Vec<KubeletGrant>,
    minted: u64,
}

/// What a pod-resources read did to the grants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    /// Grants no pod is listed with yet, within their grace: reported as [`PENDING_TENANT`] slices.
    pub pending: Vec<KubeletGrant>,
    /// Grants dropped because their pod was listed and now is not.
    pub ended: Vec<KubeletGrant>,
    /// Grants dropped because no pod was listed with them within [`PENDING_GRACE_MS`].
    pub expired: Vec<KubeletGrant>,
    /// Whether the book changed (and must be recorded).
    pub changed: bool,
}

fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl GrantBook {
    /// The book as the checkpoint left it.
    pub fn new(grants: Vec<KubeletGrant>) -> Self {
        GrantBook { grants, minted: 0 }
    }

    pub fn grants(&self) -> &[KubeletGrant] {
        &self.grants
    }

    /// A new grant of `device_ids` of `resource` at `now_ms`, returning its slice id ("k-" + 16
    /// hex). Grants of the same resource that share a device are dropped: the kubelet gives a
    /// device again only once its holder is gone.
    pub fn mint(
        &mut self,
        node: &str,
        resource: &str,
        device_ids: &[String],
        now_ms: i64,
    ) -> String {
        let mut ids: Vec<String> = device_ids.to_vec();
        ids.sort();
        self.grants
            .retain(|g| g.resource != resource || !g.device_ids.iter().any(|d| ids.contains(d)));
        let mut n = self.minted;
        let slice_id = loop {
            n += 1;
            let (at, seq) = (now_ms.to_string(), n.to_string());
            let mut parts = vec![node, "allocate", resource, at.as_str(), seq.as_str()];
            parts.extend(ids.iter().map(String::as_str));
            let id = format!("k-{:016x}", fnv(&parts));
            if !self.grants.iter().any(|g| g.slice_id == id) {
                break id;
            }
        };
        self.minted = n;
        self.grants.push(KubeletGrant {
            resource: resource.to_string(),
            device_ids: ids,
            slice_id: slice_id.clone(),
            at_ms: now_ms,
            seen_ms: None,
        });
        slice_id
    }

    /// Gives each grant's slice id to the allocation it stands for: the first (by device id) of
    /// `allocs` of the grant's resource whose devices are all the grant's. Returns the slice ids of
    /// the grants that matched.
    pub fn assign(&self, allocs: &mut [pb::KubeletAllocation]) -> BTreeSet<String> {
        let mut matched = BTreeSet::new();
        let mut taken = vec![false; allocs.len()];
        for g in &self.grants {
            let best = allocs
                .iter()
                .enumerate()
                .filter(|(i, a)| {
                    !taken[*i]
                        && a.resource == g.resource
                        && !a.device_ids.is_empty()
                        && a.device_ids.iter().all(|d| g.device_ids.contains(d))
                })
                .min_by(|(_, a), (_, b)| a.device_ids.cmp(&b.device_ids))
                .map(|(i, _)| i);
            if let Some(i) = best {
                taken[i] = true;
                allocs[i].slice_id = g.slice_id.clone();
                matched.insert(g.slice_id.clone());
            }
        }
        matched
    }

    /// Folds one pod-resources read (`allocs`, made by [`super::podresources::allocations`]) into
    /// the book: matched grants give their ids and are marked seen, grants whose pod ended or that
    /// waited past `grace_ms` are dropped, the rest are returned as pending.
    pub fn reconcile(
        &mut self,
        allocs: &mut [pb::KubeletAllocation],
        now_ms: i64,
        grace_ms: i64,
    ) -> Reconciled {
        let matched = self.assign(allocs);
        let mut out = Reconciled::default();
        let mut kept = Vec::with_capacity(self.grants.len());
        for mut g in std::mem::take(&mut self.grants) {
            if matched.contains(&g.slice_id) {
                if g.seen_ms.is_none() {
                    g.seen_ms = Some(now_ms);
                    out.changed = true;
                }
                kept.push(g);
            } else if g.seen_ms.is_some() {
                out.changed = true;
                out.ended.push(g);
            } else if now_ms.saturating_sub(g.at_ms) > grace_ms {
                out.changed = true;
                out.expired.push(g);
            } else {
                out.pending.push(g.clone());
                kept.push(g);
            }
        }
        self.grants = kept;
        out
    }
}

/// Pending grants as pod-resources entries, so they become allocations by the same rules as pods'
/// (namespace [`PENDING_TENANT`], the pod named after the slice id).
pub fn pending_pods(pending: &[KubeletGrant]) -> pr::ListPodResourcesResponse {
    pr::ListPodResourcesResponse {
        pod_resources: pending
            .iter()
            .map(|g| pr::PodResources {
                name: g.slice_id.clone(),
                namespace: PENDING_TENANT.to_string(),
                containers: vec![pr::ContainerResources {
                    name: PENDING_CONTAINER.to_string(),
                    devices: vec![pr::ContainerDevices {
                        resource_name: g.resource.clone(),
                        device_ids: g.device_ids.clone(),
                        topology: None,
                    }],
                    ..Default::default()
                }],
            })
            .collect(),
    }
}

/// Records the grants in the node checkpoint (an error message when it cannot).
pub type PersistFn = Arc<dyn Fn(&[KubeletGrant]) -> Result<(), String> + Send + Sync>;

/// The node's grant book, shared by the plugins (which mint) and the pod-resources reader (which
/// reconciles), recorded through `persist` on every change.
pub struct Grants {
    book: Mutex<GrantBook>,
    persist: Option<PersistFn>,
    allocated: Notify,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("book", &self.book)
            .field("persisted", &self.persist.is_some())
            .finish()
    }
}

impl Grants {
    /// Grants kept in memory only (an agent without a node checkpoint).
    pub fn in_memory() -> Arc<Self> {
        Arc::new(Grants {
            book: Mutex::new(GrantBook::default()),
            persist: None,
            allocated: Notify::new(),
        })
    }

    /// Grants taken back from the checkpoint, recorded through `persist`.
    pub fn persisted(initial: Vec<KubeletGrant>, persist: PersistFn) -> Arc<Self> {
        Arc::new(Grants {
            book: Mutex::new(GrantBook::new(initial)),
            persist: Some(persist),
            allocated: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GrantBook> {
        // The book is plain data: a panic while it was held leaves it usable.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The grants now.
    pub fn snapshot(&self) -> Vec<KubeletGrant> {
        self.lock().grants().to_vec()
    }

    /// Applies `change` and records the result; when it cannot be recorded the book is left as
    /// it was and the error returned. Blocking (the checkpoint is written and synced).
    fn change<T>(&self, change: impl FnOnce(&mut GrantBook) -> (T, bool)) -> Result<T, String> {
        let mut book = self.lock();
        let before = book.clone();
        let (v, changed) = change(&mut book);
        if changed
            && let Some(p) = &self.persist
            && let Err(e) = p(book.grants())
        {
            *book = before;
            return Err(e);
        }
        Ok(v)
    }

    /// Mints the grants of one Allocate (one per container: resource and device ids) and records
    /// them, all or none. Blocking.
    pub fn mint_all(
        &self,
        node: &str,
        resource: &str,
        containers: &[Vec<String>],
        now_ms: i64,
    ) -> Result<Vec<String>, String> {
        let ids = self.change(|b| {
            let ids: Vec<String> = containers
                .iter()
                .map(|devs| b.mint(node, resource, devs, now_ms))
                .collect();
            (ids, true)
        })?;
        self.allocated.notify_one();
        Ok(ids)
    }

    /// [`GrantBook::reconcile`], recorded when it changed the book. Blocking.
    pub fn reconcile(
        &self,
        allocs: &mut [pb::KubeletAllocation],
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Reconciled, String> {
        self.change(|b| {
            let r = b.reconcile(allocs, now_ms, grace_ms);
            let changed = r.changed;
            (r, changed)
        })
    }

    /// [`GrantBook::assign`] (no change to the book).
    pub fn assign(&self, allocs: &mut [pb::KubeletAllocation]) {
        self.lock().assign(allocs);
    }

    /// Resolves after the next Allocate was granted.
    pub async fn allocated(&self) {
        self.allocated.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(resource: &str, ids: &[&str], slice_id: &str) -> pb::KubeletAllocation {
        pb::KubeletAllocation {
            slice_id: slice_id.into(),
            resource: resource.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn minted_ids_are_distinct_even_for_the_same_devices_at_the_same_time() {
        let mut b = GrantBook::default();
        let a = b.mint("n", "greenslice.io/gpu", &ids(&["GPU-1"]), 5);
        let c = b.mint("n", "greenslice.io/gpu", &ids(&["GPU-2"]), 5);
        assert_ne!(a, c);
        assert!(a.starts_with("k-") && a.len() == 18, "{a}");
        // The same device again: the kubelet gave it to a new container, the old grant is gone.
        let d = b.mint("n", "greenslice.io/gpu", &ids(&["GPU-1"]), 5);
        assert_ne!(a, d);
        let held: Vec<&str> = b.grants().iter().map(|g| g.slice_id.as_str()).collect();
        assert_eq!(held, [c.as_str(), d.as_str()]);
    }

    #[test]
    fn a_listed_pod_takes_its_grants_id_and_its_end_drops_the_grant() {
        let mut b = GrantBook::default();
        let id = b.mint("n", "greenslice.io/gpu", &ids(&["GPU-2", "GPU-1"]), 0);
        // Not listed yet: pending.
        let r = b.reconcile(&mut [], 10, PENDING_GRACE_MS);
        assert_eq!(r.pending.len(), 1);
        assert!(!r.changed);
        // Listed: the pod's allocation carries the grant's id; another resource's does not.
        let mut listed = vec![
            alloc("greenslice.io/gpu", &["GPU-1", "GPU-2"], "k-derived"),
            alloc("greenslice.io/gpu-share", &["GPU-1::0"], "k-other"),
        ];
        let r = b.reconcile(&mut listed, 20, PENDING_GRACE_MS);
        assert!(r.pending.is_empty() && r.changed);
        assert_eq!(listed[0].slice_id, id);
        assert_eq!(listed[1].slice_id, "k-other");
        assert_eq!(b.grants()[0].seen_ms, Some(20));
        // Listed again: nothing changes.
        let r = b.reconcile(&mut listed, 30, PENDING_GRACE_MS);
        assert!(!r.changed);
        // The pod ended.
        let r = b.reconcile(&mut [], 40, PENDING_GRACE_MS);
        assert_eq!(r.ended.len(), 1);
        assert!(b.grants().is_empty());
    }

    #[test]
    fn a_grant_never_listed_expires_after_the_grace() {
        let mut b = GrantBook::default();
        b.mint("n", "greenslice.io/gpu", &ids(&["GPU-1"]), 1_000);
        assert_eq!(
            b.reconcile(&mut [], 1_000 + PENDING_GRACE_MS, PENDING_GRACE_MS)
                .pending
                .len(),
            1
        );
        let r = b.reconcile(&mut [], 1_001 + PENDING_GRACE_MS, PENDING_GRACE_MS);
        assert_eq!(r.expired.len(), 1);
        assert!(r.changed && b.grants().is_empty());
    }

    #[test]
    fn a_container_with_several_mig_instances_gives_its_id_to_the_first() {
        let mut b = GrantBook::default();
        let id = b.mint(
            "n",
            "greenslice.io/mig-1g.10gb",
            &ids(&["MIG-b", "MIG-a"]),
            0,
        );
        let mut listed = vec![
            alloc("greenslice.io/mig-1g.10gb", &["MIG-b"], "k-2"),
            alloc("greenslice.io/mig-1g.10gb", &["MIG-a"], "k-1"),
        ];
        b.reconcile(&mut listed, 1, PENDING_GRACE_MS);
        assert_eq!(listed[1].slice_id, id);
        assert_eq!(listed[0].slice_id, "k-2");
        // A pod holding a device the grant does not name is not the grant's.
        let mut other = vec![alloc(
            "greenslice.io/mig-1g.10gb",
            &["MIG-a", "MIG-c"],
            "k-3",
        )];
        assert!(b.assign(&mut other).is_empty());
    }

    #[test]
    fn a_failed_record_leaves_the_book_as_it_was() {
        let fail = std::sync::atomic::AtomicBool::new(true);
        let fail = Arc::new(fail);
        let f = fail.clone();
        let g = Grants::persisted(
            Vec::new(),
            Arc::new(move |_| {
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    Err("disk full".into())
                } else {
                    Ok(())
                }
            }),
        );
        let e = g
            .mint_all("n", "greenslice.io/gpu", &[ids(&["GPU-1"])], 0)
            .unwrap_err();
        assert_eq!(e, "disk full");
        assert!(g.snapshot().is_empty());
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        let minted = g
            .mint_all(
                "n",
                "greenslice.io/gpu",
                &[ids(&["GPU-1"]), ids(&["GPU-2"])],
                0,
            )
            .unwrap();
        assert_eq!(minted.len(), 2);
        assert_eq!(g.snapshot().len(), 2);
    }
}
