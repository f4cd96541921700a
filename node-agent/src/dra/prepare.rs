//! NodePrepareResources and NodeUnprepareResources, behind the gRPC edge: read the claim from the
//! API server, decide what it asks ([`super::claims::plan`]), have the controller make it
//! (`KubeletService.PrepareClaim`: pinned slices, MIG instance created, share limits set), write
//! the claim's CDI spec, record the claim in the node checkpoint, answer the CDI ids.
//!
//! Idempotent both ways (the kubelet retries): a claim already prepared is answered from the
//! checkpoint; the controller answers a repeated PrepareClaim with the slices of the first, so a
//! prepare whose answer was lost (an agent restart in between) finds them again; unprepare of a
//! claim not prepared here still asks the controller, which has nothing to release or releases
//! what a lost prepare made. Calls for one claim run one at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_core::clock::Clock;
use greenslice_proto::v1 as pb;
use k8s_openapi::api::resource::v1::ResourceClaim;
use tracing::{info, warn};

use super::cdi;
use super::claims::{Planned, plan};
use super::devices::DeviceRef;
use crate::checkpoint::{PreparedClaim, PreparedDevice};
use crate::kubelet::InventoryFn;

/// The claim the kubelet names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub uid: String,
    pub name: String,
}

/// Reads ResourceClaims (the API server; tests use fakes of it).
#[tonic::async_trait]
pub trait ClaimSource: Send + Sync {
    /// The claim, `None` when there is none of that name.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String>;
}

/// The API server's ResourceClaims through kube-rs.
pub struct KubeClaims(pub kube::Client);

#[tonic::async_trait]
impl ClaimSource for KubeClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String> {
        kube::Api::<ResourceClaim>::namespaced(self.0.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read ResourceClaim {namespace}/{name}: {e}"))
    }
}

/// Makes and releases a claim's slices (the controller; tests use fakes of it).
#[tonic::async_trait]
pub trait SliceMaker: Send + Sync {
    async fn prepare(&self, req: pb::PrepareClaimRequest) -> Result<Vec<pb::Slice>, String>;
    async fn unprepare(&self, req: pb::UnprepareClaimRequest) -> Result<(), String>;
}

/// The controller's KubeletService, with a deadline; with several replicas, each in turn until
/// one answers (only the leader does).
pub struct ControllerSlices {
    pub replicas: Vec<crate::kubelet::choose::ControllerChooser>,
    pub timeout: Duration,
}

impl ControllerSlices {
    async fn each<T, F, Fut>(&self, what: &str, call: F) -> Result<T, String>
    where
        F: Fn(pb::kubelet_service_client::KubeletServiceClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = format!("no controller to {what}");
        for r in &self.replicas {
            match tokio::time::timeout(self.timeout, call(r.client())).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(s)) => {
                    last = format!("controller: {:?}: {}", s.code(), s.message());
                    // Not the leader, or not reachable: another replica may answer. Any other
                    // refusal is the answer.
                    if s.code() != tonic::Code::Unavailable {
                        return Err(last);
                    }
                }
                Err(_) => {
                    last = format!("controller did not answer {what} within {:?}", self.timeout)
                }
            }
        }
        Err(last)
    }
}

#[tonic::async_trait]
impl SliceMaker for ControllerSlices {
    async fn prepare(&self, req: pb::PrepareClaimRequest) -> Result<Vec<pb::Slice>, String> {
        self.each("prepare", |mut c| {
            let req = req.clone();
            async move { c.prepare_claim(req).await }
        })
        .await
        .map(|r| r.slices)
    }

    async fn unprepare(&self, req: pb::UnprepareClaimRequest) -> Result<(), String> {
        self.each("unprepare", |mut c| {
            let req = req.clone();
            async move { c.unprepare_claim(req).await }
        })
        .await
        .map(|_| ())
    }
}

/// Where prepared claims are kept: the node checkpoint, or memory.
pub type PersistFn = Arc<dyn Fn(&[PreparedClaim]) -> Result<(), String> + Send + Sync>;

/// The prepared claims of the node.
pub struct ClaimBook {
    claims: Mutex<Vec<PreparedClaim>>,
    persist: Option<PersistFn>,
}

impl ClaimBook {
    /// A book kept only in memory.
    pub fn in_memory() -> Arc<ClaimBook> {
        Arc::new(ClaimBook {
            claims: Mutex::new(Vec::new()),
            persist: None,
        })
    }

    /// A book starting from `initial`, every change written with `persist` before it counts.
    pub fn persisted(initial: Vec<PreparedClaim>, persist: PersistFn) -> Arc<ClaimBook> {
        Arc::new(ClaimBook {
            claims: Mutex::new(initial),
            persist: Some(persist),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PreparedClaim>> {
        // Plain data replaced whole: a panic elsewhere leaves it consistent.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, uid: &str) -> Option<PreparedClaim> {
        self.lock().iter().find(|c| c.uid == uid).cloned()
    }

    pub fn all(&self) -> Vec<PreparedClaim> {
        self.lock().clone()
    }

    fn change(&self, f: impl FnOnce(&mut Vec<PreparedClaim>)) -> Result<(), String> {
        let mut g = self.lock();
        let mut next = g.clone();
        f(&mut next);
        if let Some(p) = &self.persist {
            p(&next)?;
        }
        *g = next;
        Ok(())
    }
}

/// Everything prepare needs.
pub struct Driver {
    pub node: String,
    pub inventory: InventoryFn,
    pub claims: Arc<dyn ClaimSource>,
    pub slices: Arc<dyn SliceMaker>,
    pub book: Arc<ClaimBook>,
    /// Where the claims' CDI specs go.
    pub cdi_dir: PathBuf,
    /// Where NVIDIA's CDI specs are looked for.
    pub nvidia_cdi_dirs: Vec<PathBuf>,
    pub clock: Arc<dyn Clock>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: String,
        inventory: InventoryFn,
        claims: Arc<dyn ClaimSource>,
        slices: Arc<dyn SliceMaker>,
        book: Arc<ClaimBook>,
        cdi_dir: PathBuf,
        nvidia_cdi_dirs: Vec<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Driver {
        Driver {
            node,
            inventory,
            claims,
            slices,
            book,
            cdi_dir,
            nvidia_cdi_dirs,
            clock,
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn claim_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(uid.to_string()).or_default().clone()
    }

    /// Prepares a claim; answers its devices, or what is wrong.
    pub async fn prepare(&self, c: &ClaimRef) -> Result<Vec<PreparedDevice>, String> {
        let lock = self.claim_lock(&c.uid);
        let _held = lock.lock().await;
        if let Some(done) = self.book.get(&c.uid)
            && PathBuf::from(&done.cdi_spec).exists()
        {
            return Ok(done.devices);
        }
        let claim = self
            .claims
            .get(&c.namespace, &c.name)
            .await?
            .ok_or_else(|| format!("ResourceClaim {}/{} not found", c.namespace, c.name))?;
        let inv = self.inventory.clone();
        let gpus = tokio::task::spawn_blocking(move || inv())
            .await
            .map_err(|e| format!("inventory read failed: {e}"))?
            .map_err(|e| format!("cannot read the GPUs: {e}"))?;
        let planned = plan(&claim, &c.uid, &self.node, &gpus).map_err(|e| e.to_string())?;
        let req = pb::PrepareClaimRequest {
            node: self.node.clone(),
            claim_uid: c.uid.clone(),
            namespace: c.namespace.clone(),
            claim_name: c.name.clone(),
            devices: planned
                .iter()
                .map(|p| pb::ClaimDevice {
                    request: p.request.clone(),
                    device: p.device.clone(),
                    spec: Some(p.spec.clone()),
                    gpu_uuid: p.gpu_uuid.clone(),
                    mig_start: p.mig_start,
                })
                .collect(),
        };
        let slices = self.slices.prepare(req).await?;
        if slices.len() != planned.len() {
            return Err(format!(
                "the controller answered {} slices for {} devices",
                slices.len(),
                planned.len()
            ));
        }
        let known = cdi::nvidia_devices(&self.nvidia_cdi_dirs);
        let mut edits = Vec::with_capacity(planned.len());
        let mut devices = Vec::with_capacity(planned.len());
        for (i, (p, s)) in planned.iter().zip(&slices).enumerate() {
            let name = format!("{}-{i}", c.uid);
            let env: BTreeMap<String, String> =
                s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mounts = env
                .get("CUDA_MPS_PIPE_DIRECTORY")
                .filter(|_| matches!(p.kind, DeviceRef::Share { .. }))
                .cloned()
                .into_iter()
                .collect();
            let mut ids = vec![cdi::device_id(&name)];
            ids.extend(nvidia_id(&known, p, s));
            edits.push(cdi::DeviceEdits {
                name,
                gpu_index: p.gpu_index,
                env,
                mounts,
            });
            devices.push(PreparedDevice {
                request: p.request.clone(),
                pool: p.pool.clone(),
                device: p.device.clone(),
                share_id: p.share_id.clone(),
                cdi_device_ids: ids,
                slice_id: s.id.clone(),
            });
        }
        let path = cdi::write(&self.cdi_dir, &cdi::spec_file(&c.uid), &cdi::spec(&edits)).map_err(
            |e| {
                format!(
                    "cannot write the claim's CDI spec in {}: {e}",
                    self.cdi_dir.display()
                )
            },
        )?;
        let record = PreparedClaim {
            uid: c.uid.clone(),
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            devices: devices.clone(),
            cdi_spec: path.display().to_string(),
            at_ms: self.clock.now_ms(),
        };
        self.book
            .change(|v| {
                v.retain(|x| x.uid != c.uid);
                v.push(record);
            })
            .map_err(|e| format!("cannot record the claim in the node checkpoint: {e}"))?;
        info!(claim = %c.uid, namespace = %c.namespace, name = %c.name, devices = devices.len(), "ResourceClaim prepared");
        Ok(devices)
    }

    /// Unprepares a claim: its slices released, its CDI spec removed, its record dropped.
    pub async fn unprepare(&self, c: &ClaimRef) -> Result<(), String> {
        let lock = self.claim_lock(&c.uid);
        let _held = lock.lock().await;
        self.slices
            .unprepare(pb::UnprepareClaimRequest {
                node: self.node.clone(),
                claim_uid: c.uid.clone(),
            })
            .await?;
        let spec = self
            .book
            .get(&c.uid)
            .map(|r| PathBuf::from(r.cdi_spec))
            .unwrap_or_else(|| self.cdi_dir.join(cdi::spec_file(&c.uid)));
        cdi::remove(&spec).map_err(|e| format!("cannot remove {}: {e}", spec.display()))?;
        self.book
            .change(|v| v.retain(|x| x.uid != c.uid))
            .map_err(|e| format!("cannot update the node checkpoint: {e}"))?;
        info!(claim = %c.uid, namespace = %c.namespace, name = %c.name, "ResourceClaim unprepared");
        Ok(())
    }

    /// Claims recorded as prepared whose CDI spec is gone are logged (the runtime cannot start
    /// their containers again); the kubelet's next prepare rewrites it.
    pub fn check_specs(&self) {
        for c in self.book.all() {
            if !PathBuf::from(&c.cdi_spec).exists() {
                warn!(claim = %c.uid, spec = %c.cdi_spec, "a prepared claim's CDI spec is missing");
            }
        }
    }
}

/// NVIDIA's CDI id of a planned device's GPU or MIG device, where the node's NVIDIA spec has it.
fn nvidia_id(
    known: &std::collections::BTreeSet<String>,
    p: &Planned,
    s: &pb::Slice,
) -> Option<String> {
    match &p.kind {
        DeviceRef::Mig { .. } => {
            let uuid = s.mig.as_ref().map(|m| m.mig_uuid.as_str()).unwrap_or("");
            (!uuid.is_empty())
                .then(|| cdi::nvidia_id(known, uuid, None))
                .flatten()
        }
        _ => cdi::nvidia_id(known, &p.gpu_uuid, Some(&p.gpu_index.to_string())),
    }
}
