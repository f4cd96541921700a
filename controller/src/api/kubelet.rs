//! The controller's side of kubelet allocations (see proto greenslice/v1/kubelet.proto):
//!
//! - [`KubeletApi`] serves `KubeletService.ChooseDevices`: the placement policy chooses which GPUs of
//!   a node a kubelet allocation should use, over the node as the controller sees it with the
//!   kubelet's free devices laid over it ([`choose_gpus`], pure).
//! - [`grants_from_pb`] checks an agent's `KubeletAllocations` report and turns it into
//!   [`KubeletGrant`]s; `crate::model::kubelet::kubelet_slice_changes` (pure) turns those into slice
//!   records and the engine commits them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use greenslice_core::convert::spec_from_pb;
use greenslice_core::slice::{SliceKind, SliceSpec, validate_tenant};
use greenslice_proto::v1 as pb;
use pb::kubelet_service_server::KubeletService;
use tonic::{Request, Response, Status};

use super::check_id;
use crate::engine::Controller;
use crate::model::kubelet::KubeletGrant;
use crate::model::slice::MigAssignment;
use crate::placement::{ClusterView, NodeView, Policy, Request as PlaceRequest};

/// `slice_class` of slices that stand for kubelet allocations.
use crate::model::kubelet::KUBELET_SLICE_CLASS;
/// Most candidate GPUs in one ChooseDevices request.
pub use greenslice_core::limits::MAX_CANDIDATES;
/// Most allocations one report may carry.
pub use greenslice_core::limits::MAX_KUBELET_ALLOCATIONS;

/// The kubelet API.
pub struct KubeletApi {
    pub controller: Arc<Controller>,
    /// The policy that chooses; the controller's own placement policy.
    pub policy: Arc<dyn Policy>,
}

impl std::fmt::Debug for KubeletApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletApi")
            .field("policy", &self.policy.name())
            .finish()
    }
}

/// The extended resource a kubelet slice was allocated as (see docs/KUBERNETES.md): the name the
/// agent advertised, from `greenslice_core::kubelet`. `None` for a MIG profile that cannot make a
/// resource name, which no agent advertises.
pub fn resource_of(spec: &SliceSpec) -> Option<String> {
    greenslice_core::kubelet::resource_of(&spec.kind)
}
/// The GPUs `policy` chooses on `node` for a ChooseDevices request. GPUs the kubelet offers
/// (candidates) take the free compute the kubelet reports; every other GPU of the node counts as
/// taken, so the policy sees the node's real fragmentation but can only pick candidates.
pub fn choose_gpus(
    policy: &dyn Policy,
    node: &NodeView,
    req: &pb::ChooseDevicesRequest,
) -> Result<pb::ChooseDevicesResponse, Status> {
    let spec =
        spec_from_pb(req.spec.as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if matches!(spec.kind, SliceKind::Mig { .. }) {
        return Err(Status::invalid_argument(
            "ChooseDevices chooses whole GPUs or a share's GPU, not MIG instances",
        ));
    }
    if req.candidates.is_empty() || req.candidates.len() > MAX_CANDIDATES {
        return Err(Status::invalid_argument(format!(
            "1-{MAX_CANDIDATES} candidate GPUs expected, got {}",
            req.candidates.len()
        )));
    }
    let mut free: BTreeMap<&str, u32> = BTreeMap::new();
    for c in &req.candidates {
        check_id("candidate gpu_uuid", &c.gpu_uuid)?;
        if c.free_milli > greenslice_core::MILLI_PER_GPU {
            return Err(Status::invalid_argument(format!(
                "free_milli of {} is {}, more than a whole GPU",
                c.gpu_uuid, c.free_milli
            )));
        }
        if free.insert(c.gpu_uuid.as_str(), c.free_milli).is_some() {
            return Err(Status::invalid_argument(format!(
                "candidate {} listed twice",
                c.gpu_uuid
            )));
        }
    }
    let mut view = node.clone();
    view.schedulable = true;
    // Host CPU and memory are the kubelet's business here.
    view.cpu_milli = 0;
    view.memory_bytes = 0;
    for g in &mut view.gpus {
        match free.get(g.uuid.as_str()) {
            Some(&f) if !g.mig_enabled => {
                let used = greenslice_core::MILLI_PER_GPU - f;
                g.used_milli = used;
                g.used_memory_bytes = (u128::from(g.memory_bytes) * u128::from(used)
                    / u128::from(greenslice_core::MILLI_PER_GPU))
                    as u64;
                g.exclusive = false;
            }
            _ => {
                g.exclusive = true;
                g.used_milli = greenslice_core::MILLI_PER_GPU;
            }
        }
    }
    if !view.gpus.iter().any(|g| free.contains_key(g.uuid.as_str())) {
        return Err(Status::failed_precondition(format!(
            "no candidate GPU is known on node {}",
            node.name
        )));
    }
    let cluster = ClusterView { nodes: vec![view] };
    let place = PlaceRequest {
        spec,
        cpu_milli: 0,
        memory_bytes: 0,
    };
    let p = policy
        .place(&cluster, &place)
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    let gpus = p
        .gpus
        .iter()
        .filter_map(|&i| cluster.nodes[0].gpus.get(i).map(|g| g.uuid.clone()))
        .collect();
    Ok(pb::ChooseDevicesResponse {
        gpu_uuids: gpus,
        policy: policy.name().to_string(),
    })
}

#[tonic::async_trait]
impl KubeletService for KubeletApi {
    async fn choose_devices(
        &self,
        req: Request<pb::ChooseDevicesRequest>,
    ) -> Result<Response<pb::ChooseDevicesResponse>, Status> {
        let req = req.into_inner();
        super::validate::choose_devices(&req)?;
        let (_, view, _) = self.controller.snapshot();
        let node = view
            .nodes
            .iter()
            .find(|n| n.name == req.node)
            .ok_or_else(|| Status::not_found(format!("node {} is not known", req.node)))?;
        choose_gpus(self.policy.as_ref(), node, &req).map(Response::new)
    }

    async fn prepare_claim(
        &self,
        req: Request<pb::PrepareClaimRequest>,
    ) -> Result<Response<pb::PrepareClaimResponse>, Status> {
        let req = req.into_inner();
        let devices = super::validate::prepare_claim(&req)?;
        // Run to completion even if the kubelet gives up waiting: a preparation half done must
        // finish or be undone, and the kubelet's retry then finds it.
        let c = self.controller.clone();
        let slices = tokio::spawn(async move {
            c.prepare_claim(&req.claim_uid, &req.namespace, &req.claim_name, &devices)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("prepare task failed: {e}")))??;
        Ok(Response::new(pb::PrepareClaimResponse {
            slices: slices.iter().map(super::slice_to_pb).collect(),
        }))
    }

    async fn unprepare_claim(
        &self,
        req: Request<pb::UnprepareClaimRequest>,
    ) -> Result<Response<pb::UnprepareClaimResponse>, Status> {
        let req = req.into_inner();
        super::validate::unprepare_claim(&req)?;
        let c = self.controller.clone();
        let slices =
            tokio::spawn(async move { c.unprepare_claim(&req.node, &req.claim_uid).await })
                .await
                .map_err(|e| Status::internal(format!("unprepare task failed: {e}")))??;
        Ok(Response::new(pb::UnprepareClaimResponse {
            slices: slices.iter().map(super::slice_to_pb).collect(),
        }))
    }
}

fn validate_allocation(a: &pb::KubeletAllocation) -> Result<SliceSpec, Status> {
    let bad =
        |m: String| Status::invalid_argument(format!("kubelet allocation {:?}: {m}", a.slice_id));
    check_id("slice_id", &a.slice_id)?;
    if !a.slice_id.starts_with("k-") {
        return Err(bad("slice id must start with \"k-\"".into()));
    }
    validate_tenant(&a.tenant).map_err(|e| bad(e.to_string()))?;
    let spec = spec_from_pb(a.spec.as_ref()).map_err(|e| bad(e.to_string()))?;
    if spec.slice_class.as_deref() != Some(KUBELET_SLICE_CLASS) {
        return Err(bad(format!("slice_class must be {KUBELET_SLICE_CLASS:?}")));
    }
    if a.gpu_uuids.is_empty() {
        return Err(bad("no GPU".into()));
    }
    for g in &a.gpu_uuids {
        check_id("gpu_uuid", g)?;
    }
    if matches!(spec.kind, SliceKind::Mig { .. }) && a.mig.is_none() {
        return Err(bad("a MIG allocation needs its instance".into()));
    }
    Ok(spec)
}

/// The grants of a node's `KubeletAllocations` report, each checked. Refuses the whole report
/// (INVALID_ARGUMENT) when any allocation in it is invalid or listed twice, or when it holds more
/// than [`MAX_KUBELET_ALLOCATIONS`].
pub fn grants_from_pb(report: &pb::KubeletAllocations) -> Result<Vec<KubeletGrant>, Status> {
    if report.allocations.len() > MAX_KUBELET_ALLOCATIONS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_KUBELET_ALLOCATIONS} kubelet allocations per report, got {}",
            report.allocations.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(report.allocations.len());
    for a in &report.allocations {
        let spec = validate_allocation(a)?;
        if !seen.insert(a.slice_id.as_str()) {
            return Err(Status::invalid_argument(format!(
                "kubelet allocation {} listed twice",
                a.slice_id
            )));
        }
        out.push(KubeletGrant {
            slice_id: a.slice_id.clone(),
            tenant: a.tenant.clone(),
            spec,
            gpus: a.gpu_uuids.clone(),
            mig: a.mig.as_ref().map(|m| MigAssignment {
                profile: m.profile.clone(),
                start: u8::try_from(m.start).unwrap_or(u8::MAX),
                size: u8::try_from(m.size).unwrap_or(u8::MAX),
                gpu_instance_id: Some(m.gpu_instance_id),
                mig_uuid: (!m.mig_uuid.is_empty()).then(|| m.mig_uuid.clone()),
                lent: false,
            }),
            reason: format!(
                "kubelet: pod {}/{} container {} ({})",
                a.namespace, a.pod, a.container, a.resource
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kubelet::{is_kubelet_slice, kubelet_slice_changes};
    use crate::placement::{FirstFit, GpuView};
    use greenslice_core::gpu::GpuModel;
    use greenslice_core::slice::SliceState;

    fn gpu(i: u32, used_milli: u32) -> GpuView {
        GpuView {
            uuid: format!("GPU-{i}"),
            model: GpuModel::H100Sxm5_80Gb,
            healthy: true,
            mig_enabled: false,
            memory_bytes: 80 << 30,
            used_milli,
            used_memory_bytes: 0,
            exclusive: false,
            mig_layout: Vec::new(),
            free_instances: Vec::new(),
        }
    }

    fn node() -> NodeView {
        NodeView {
            name: "n1".into(),
            schedulable: true,
            mig_create: true,
            cpu_milli: 0,
            cpu_used_milli: 0,
            memory_bytes: 0,
            memory_used_bytes: 0,
            gpus: vec![gpu(0, 0), gpu(1, 0), gpu(2, 0)],
        }
    }

    fn share_req(fraction: f64, cands: &[(&str, u32)]) -> pb::ChooseDevicesRequest {
        pb::ChooseDevicesRequest {
            node: "n1".into(),
            resource: "greenslice.io/gpu-share".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Share(pb::ShareSlice {
                    compute_fraction: fraction,
                    memory_bytes: 1 << 30,
                })),
                gpu_model: String::new(),
                slice_class: KUBELET_SLICE_CLASS.into(),
            }),
            candidates: cands
                .iter()
                .map(|(u, f)| pb::GpuCandidate {
                    gpu_uuid: u.to_string(),
                    free_milli: *f,
                })
                .collect(),
        }
    }

    #[test]
    fn kubelet_resource_of_a_me_profile_is_the_name_the_agent_advertises() {
        let spec = SliceSpec {
            kind: SliceKind::Mig {
                profile: "1g.10gb+me".into(),
            },
            gpu_model: None,
            slice_class: Some(KUBELET_SLICE_CLASS.into()),
        };
        let r = resource_of(&spec).unwrap();
        assert_eq!(r, "greenslice.io/mig-1g.10gb.me");
        assert!(greenslice_core::kubelet::is_extended_resource_name(&r));
    }

    #[test]
    fn chooses_only_among_candidates_with_room() {
        // GPU-0 is not offered; GPU-1 has 200 milli free, GPU-2 800: a 0.5 share fits only GPU-2.
        let r = choose_gpus(
            &FirstFit,
            &node(),
            &share_req(0.5, &[("GPU-1", 200), ("GPU-2", 800)]),
        )
        .unwrap();
        assert_eq!(r.gpu_uuids, ["GPU-2"]);
        assert_eq!(r.policy, "first-fit");
        let e = choose_gpus(&FirstFit, &node(), &share_req(0.9, &[("GPU-1", 200)])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn refuses_bad_choose_requests() {
        for req in [
            share_req(0.5, &[]),
            share_req(0.5, &[("GPU-1", 2000)]),
            share_req(0.5, &[("GPU-1", 100), ("GPU-1", 100)]),
            share_req(0.0, &[("GPU-1", 100)]),
        ] {
            let e = choose_gpus(&FirstFit, &node(), &req).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        }
        let e = choose_gpus(&FirstFit, &node(), &share_req(0.5, &[("GPU-9", 900)])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }

    fn alloc(id: &str, tenant: &str, gpu: &str) -> pb::KubeletAllocation {
        pb::KubeletAllocation {
            slice_id: id.into(),
            tenant: tenant.into(),
            namespace: tenant.into(),
            pod: "p".into(),
            container: "c".into(),
            resource: "greenslice.io/gpu".into(),
            device_ids: vec![gpu.into()],
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
                gpu_model: String::new(),
                slice_class: KUBELET_SLICE_CLASS.into(),
            }),
            gpu_uuids: vec![gpu.into()],
            mig: None,
        }
    }

    fn report(allocations: Vec<pb::KubeletAllocation>) -> pb::KubeletAllocations {
        pb::KubeletAllocations {
            allocations,
            eviction_allowed: false,
            observed_unix_ms: 0,
        }
    }

    #[test]
    fn reports_become_tenant_slices_and_vanished_pods_release() {
        let first = kubelet_slice_changes(
            "n1",
            &[],
            &grants_from_pb(&report(vec![
                alloc("k-1", "team-a", "GPU-0"),
                alloc("k-2", "team-b", "GPU-1"),
            ]))
            .unwrap(),
            100,
        );
        assert_eq!(first.upsert.len(), 2);
        assert!(first.released.is_empty());
        let a = &first.upsert[0];
        assert_eq!(a.tenant, "team-a");
        assert_eq!(a.state, SliceState::Active);
        assert!(is_kubelet_slice(a));
        // Same report again: nothing to write. k-2 gone: released, k-1 kept with its creation time.
        let again = kubelet_slice_changes(
            "n1",
            &first.upsert,
            &grants_from_pb(&report(vec![alloc("k-1", "team-a", "GPU-0")])).unwrap(),
            200,
        );
        assert!(again.upsert.is_empty());
        assert_eq!(again.released.len(), 1);
        assert_eq!(again.released[0].id, "k-2");
        assert_eq!(again.released[0].state, SliceState::Released);
    }

    #[test]
    fn refuses_bad_reports_whole() {
        let bad_tenant = alloc("k-1", "Team A", "GPU-0");
        let bad_id = alloc("s-1", "team-a", "GPU-0");
        let mut no_gpu = alloc("k-3", "team-a", "GPU-0");
        no_gpu.gpu_uuids.clear();
        let twice = vec![alloc("k-4", "a", "GPU-0"), alloc("k-4", "a", "GPU-1")];
        for r in [
            report(vec![bad_tenant]),
            report(vec![bad_id]),
            report(vec![no_gpu]),
            report(twice),
        ] {
            let e = grants_from_pb(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        }
    }
}
