//! Publishing the node's ResourceSlices ([`super::slices`]) through the API server: the API
//! server's slices of driver [`DRIVER`] on this node are made equal to the desired set.
//!
//! [`Publisher::sync`] lists the slices with the field selector
//! `spec.nodeName=<node>,spec.driver=gpu.greenslice.io` (both are selectable fields of
//! ResourceSlices, as is `spec.pool.name`), then creates the missing ones, replaces the changed
//! ones (with the resourceVersion it read, so a concurrent writer makes it fail and retry rather
//! than be overwritten) and deletes the rest. New and replaced slices are written before stale ones
//! are deleted: the scheduler uses the slices of a pool's highest generation and waits while fewer
//! than `resourceSliceCount` of them exist, so it never mixes two layouts.
//!
//! The pool generation changes with every change of the slices and never goes backwards: a
//! publisher starts from the highest generation the API server holds for the node (an agent restart
//! continues from there) and writes `max + 1` whenever the content differs. An unchanged layout is
//! not rewritten. Every slice is owned by the Node object (an owner reference, read once; without
//! `nodes get` or a Node the slices are published without it), so deleting the Node deletes them.
//!
//! [`run`] republishes whenever the inventory (or the set of DRA's own slices) changes, retrying
//! failed syncs with exponential backoff, and resyncs periodically so slices deleted behind its
//! back come back.

use std::collections::BTreeMap;
use std::time::Duration;

use greenslice_core::inventory::Gpu;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice, ResourceSliceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::devices::DRIVER;
use super::slices::{self, SliceError, SliceOptions};

/// Why the slices could not be published.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("cannot build the ResourceSlices: {0}")]
    Build(#[from] SliceError),
    #[error("the ResourceSlices built are invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("listing ResourceClaims (for the devices allocated on node {node}): {source}")]
    Claims { node: String, source: kube::Error },
    #[error("listing ResourceSlices of node {node}: {source}")]
    List { node: String, source: kube::Error },
    #[error("{verb} ResourceSlice {name}: {source}")]
    Write {
        verb: &'static str,
        name: String,
        source: kube::Error,
    },
}

/// What one [`Publisher::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The pool generation the API server now holds.
    pub generation: i64,
    /// Slice names created, replaced and deleted.
    pub created: Vec<String>,
    pub replaced: Vec<String>,
    pub deleted: Vec<String>,
}

impl SyncReport {
    /// Whether nothing was written.
    pub fn unchanged(&self) -> bool {
        self.created.is_empty() && self.replaced.is_empty() && self.deleted.is_empty()
    }
}

/// What the node publishes from: its GPUs, and the greenslice slices DRA claims hold
/// ([`SliceOptions::dra_slices`] is taken from here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeDevices {
    pub gpus: Vec<Gpu>,
    pub dra_slices: std::collections::BTreeSet<String>,
}

/// Publishes one node's slices; keeps the last generation written.
pub struct Publisher {
    api: Api<ResourceSlice>,
    claims: Api<ResourceClaim>,
    nodes: Api<Node>,
    node: String,
    opts: SliceOptions,
    /// Highest generation this publisher wrote or saw.
    generation: i64,
    owner: Option<OwnerReference>,
    owner_read: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("node", &self.node)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A spec with the generation left out: what decides whether a slice changed.
fn content(spec: &ResourceSliceSpec) -> ResourceSliceSpec {
    let mut s = spec.clone();
    s.pool.generation = 0;
    s
}

impl Publisher {
    /// A publisher of `node`'s slices, built with `opts` (its `dra_slices` is replaced by each
    /// sync's).
    pub fn new(client: kube::Client, node: &str, opts: SliceOptions) -> Publisher {
        Publisher {
            api: Api::all(client.clone()),
            claims: Api::all(client.clone()),
            nodes: Api::all(client),
            node: node.to_string(),
            opts,
            generation: 0,
            owner: None,
            owner_read: false,
        }
    }

    /// The highest pool generation written or seen so far.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    async fn owner(&mut self) -> Option<OwnerReference> {
        if !self.owner_read {
            self.owner_read = true;
            match self.nodes.get_opt(&self.node).await {
                Ok(Some(n)) => {
                    self.owner = n.metadata.uid.map(|uid| OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: self.node.clone(),
                        uid,
                        controller: Some(true),
                        block_owner_deletion: None,
                    });
                }
                Ok(None) => {
                    // Looked for again on the next sync: the Node may be registered later.
                    self.owner_read = false;
                    warn!(node = %self.node, "no Node object: ResourceSlices published without an owner");
                }
                Err(e) => {
                    // Retried on the next sync.
                    self.owner_read = false;
                    warn!(node = %self.node, error = %e, "cannot read the Node: ResourceSlices published without an owner for now");
                }
            }
        }
        self.owner.clone()
    }

    /// The API server's slices of this driver on this node.
    pub async fn current(&self) -> Result<Vec<ResourceSlice>, PublishError> {
        let lp = ListParams::default()
            .fields(&format!("spec.nodeName={},spec.driver={DRIVER}", self.node));
        let list = self
            .api
            .list(&lp)
            .await
            .map_err(|source| PublishError::List {
                node: self.node.clone(),
                source,
            })?;
        Ok(list.items)
    }

    /// The names of this pool's devices that ResourceClaims have allocated (all namespaces).
    pub async fn allocated(&self) -> Result<std::collections::BTreeSet<String>, PublishError> {
        let list = self
            .claims
            .list(&ListParams::default())
            .await
            .map_err(|source| PublishError::Claims {
                node: self.node.clone(),
                source,
            })?;
        Ok(list
            .items
            .iter()
            .filter_map(|c| c.status.as_ref()?.allocation.as_ref()?.devices.as_ref())
            .flat_map(|d| d.results.iter().flatten())
            .filter(|r| r.driver == DRIVER && r.pool == self.node)
            .map(|r| r.device.clone())
            .collect())
    }

    /// Makes the API server's slices of this node equal to those of `devices`. When steering
    /// ([`SliceOptions::steer`]), the claims' allocations are read first, so steering keeps
    /// publishing every allocated device.
    pub async fn sync(&mut self, devices: &NodeDevices) -> Result<SyncReport, PublishError> {
        let mut opts = self.opts.clone();
        opts.dra_slices = devices.dra_slices.clone();
        if opts.steer != slices::Steering::Off {
            opts.allocated = self.allocated().await?;
        }
        let existing = self.current().await?;
        let seen = existing
            .iter()
            .map(|s| s.spec.pool.generation)
            .max()
            .unwrap_or(0);
        self.generation = self.generation.max(seen);

        // Same content at one generation, nothing else: nothing to write.
        let probe = slices::build(&self.node, &devices.gpus, 0, &opts)?;
        let by_name: BTreeMap<String, &ResourceSlice> = existing
            .iter()
            .filter_map(|s| s.metadata.name.clone().map(|n| (n, s)))
            .collect();
        let gens: std::collections::BTreeSet<i64> =
            existing.iter().map(|s| s.spec.pool.generation).collect();
        let same = gens.len() == 1
            && existing.len() == probe.len()
            && probe.iter().all(|p| {
                p.metadata
                    .name
                    .as_ref()
                    .and_then(|n| by_name.get(n))
                    .is_some_and(|e| content(&e.spec) == content(&p.spec))
            });
        if same {
            // Same devices; only a Node that appeared since may need to become the owner. A
            // metadata change needs no new generation.
            let mut report = SyncReport {
                generation: seen,
                ..Default::default()
            };
            if let Some(owner) = self.owner().await {
                for old in existing.iter().filter(|e| {
                    e.metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(|o| !o.contains(&owner))
                }) {
                    let name = old.metadata.name.clone().unwrap_or_default();
                    let mut s = old.clone();
                    s.metadata.owner_references = Some(vec![owner.clone()]);
                    self.api
                        .replace(&name, &PostParams::default(), &s)
                        .await
                        .map_err(|source| PublishError::Write {
                            verb: "replacing",
                            name: name.clone(),
                            source,
                        })?;
                    report.replaced.push(name);
                }
            }
            return Ok(report);
        }

        let generation = self.generation + 1;
        let desired = slices::build(&self.node, &devices.gpus, generation, &opts)?;
        slices::validate(&desired).map_err(PublishError::Invalid)?;
        let owner = self.owner().await;
        let mut report = SyncReport {
            generation,
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some("greenslice-agent".into()),
            ..Default::default()
        };
        for mut s in desired.iter().cloned() {
            let name = s.metadata.name.clone().unwrap_or_default();
            s.metadata.owner_references = owner.clone().map(|o| vec![o]);
            match by_name.get(&name) {
                Some(old) => {
                    s.metadata.resource_version = old.metadata.resource_version.clone();
                    self.api.replace(&name, &pp, &s).await.map_err(|source| {
                        PublishError::Write {
                            verb: "replacing",
                            name: name.clone(),
                            source,
                        }
                    })?;
                    report.replaced.push(name);
                }
                None => {
                    self.api
                        .create(&pp, &s)
                        .await
                        .map_err(|source| PublishError::Write {
                            verb: "creating",
                            name: name.clone(),
                            source,
                        })?;
                    report.created.push(name);
                }
            }
        }
        // The generation is on the API server now, whatever happens below.
        self.generation = generation;
        let keep: std::collections::BTreeSet<&str> = desired
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        for name in by_name.keys().filter(|n| !keep.contains(n.as_str())) {
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(PublishError::Write {
                        verb: "deleting",
                        name: name.clone(),
                        source,
                    });
                }
            }
            report.deleted.push(name.clone());
        }
        Ok(report)
    }

    /// Deletes every slice of this driver on this node (the driver is going away for good).
    pub async fn remove_all(&self) -> Result<usize, PublishError> {
        let existing = self.current().await?;
        let mut n = 0;
        for name in existing.iter().filter_map(|s| s.metadata.name.as_deref()) {
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => n += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(PublishError::Write {
                        verb: "deleting",
                        name: name.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(n)
    }
}

/// How [`run`] retries and resyncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// First delay after a failed sync; doubled per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Resync this often even without a change (repairs slices others deleted or edited).
    pub resync: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            resync: Duration::from_secs(300),
        }
    }
}

/// Publishes `node`'s slices until `devices`' sender is dropped: at start, on every change of
/// the value, and every `run.resync`; a failed sync is retried after a backoff (a change that
/// arrives meanwhile is published instead). Returns the last generation written.
pub async fn run(
    client: kube::Client,
    node: &str,
    opts: SliceOptions,
    run: RunOptions,
    mut devices: watch::Receiver<NodeDevices>,
) -> i64 {
    let mut publisher = Publisher::new(client, node, opts);
    let mut backoff = run.backoff_min;
    loop {
        let current = devices.borrow_and_update().clone();
        let wait = match publisher.sync(&current).await {
            Ok(r) => {
                backoff = run.backoff_min;
                if r.unchanged() {
                    debug!(node, generation = r.generation, "ResourceSlices up to date");
                } else {
                    info!(
                        node,
                        generation = r.generation,
                        created = r.created.len(),
                        replaced = r.replaced.len(),
                        deleted = r.deleted.len(),
                        "ResourceSlices published"
                    );
                }
                run.resync
            }
            Err(e) => {
                warn!(node, error = %e, retry_in_ms = backoff.as_millis() as u64, "publishing ResourceSlices failed");
                let w = backoff;
                backoff = (backoff * 2).min(run.backoff_max);
                w
            }
        };
        tokio::select! {
            changed = devices.changed() => {
                if changed.is_err() {
                    return publisher.generation();
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
