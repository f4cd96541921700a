//! Which pod holds which greenslice device, from the kubelet's pod-resources API, as slices owned by
//! the pod's tenant.
//!
//! The tenant is the pod's namespace. Pod-resources gives only a pod's name and namespace, never its
//! labels; mapping by label would need a read of the Pod from the API server (see
//! docs/KUBERNETES.md), which the agent does not do.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use greenslice_core::clock::{Clock, SystemClock};
use greenslice_core::limits;
use greenslice_core::slice::validate_tenant;
use greenslice_proto::podresources::v1 as pr;
use greenslice_proto::v1 as pb;
use tokio::sync::watch;
use tracing::{info, warn};

use super::KubeletError;
use super::devices::{
    self, DeviceTable, KUBELET_SLICE_CLASS, RESOURCE_PREFIX, ResourceKind, SHARE_UNITS_PER_GPU,
    Target,
};
use super::grants::{self, Grants};
use super::uds;

/// Deadline of one List call.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads every pod's resources from the kubelet's pod-resources socket.
pub async fn list(socket: &Path) -> Result<pr::ListPodResourcesResponse, KubeletError> {
    let call = async {
        let channel = uds::connect(socket).await?;
        let mut client = pr::pod_resources_lister_client::PodResourcesListerClient::new(channel);
        Ok::<_, KubeletError>(
            client
                .list(pr::ListPodResourcesRequest {})
                .await?
                .into_inner(),
        )
    };
    tokio::time::timeout(LIST_TIMEOUT, call)
        .await
        .map_err(|_| KubeletError::Timeout("pod-resources List"))?
}

/// A stable slice id for one container's devices of one resource on one GPU: "k-" + 16 hex digits of
/// FNV-1a over the parts.
pub fn slice_id(node: &str, namespace: &str, pod: &str, container: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [node, namespace, pod, container, key] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("k-{h:016x}")
}

fn spec(kind: pb::slice_spec::Kind) -> Option<pb::SliceSpec> {
    Some(pb::SliceSpec {
        kind: Some(kind),
        gpu_model: String::new(),
        slice_class: KUBELET_SLICE_CLASS.to_string(),
    })
}

/// The kubelet's answer as slices: one per container and resource (one per MIG instance, one per GPU
/// for shares). Devices not in `table` (gone since, or not greenslice's) and pods whose namespace is
/// not a valid tenant are left out, with a warning each.
pub fn allocations(
    node: &str,
    resp: &pr::ListPodResourcesResponse,
    table: &DeviceTable,
) -> (Vec<pb::KubeletAllocation>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    // Names the controller would refuse (and end the session for) are left out here.
    let name_ok = |field: &str, v: &str| {
        limits::check_str(
            field,
            v,
            1,
            limits::MAX_K8S_NAME_LEN,
            limits::Alphabet::Graphic,
        )
    };
    for pod in &resp.pod_resources {
        let tenant = pod.namespace.clone();
        for c in &pod.containers {
            for cd in &c.devices {
                if !cd.resource_name.starts_with(RESOURCE_PREFIX) {
                    continue;
                }
                if let Err(e) = name_ok("pod", &pod.name)
                    .and_then(|()| name_ok("container", &c.name))
                    .and_then(|()| name_ok("resource", &cd.resource_name))
                {
                    warnings.push(format!(
                        "a pod of namespace {:?}: {e}",
                        tenant.chars().take(63).collect::<String>()
                    ));
                    continue;
                }
                if let Err(e) = validate_tenant(&tenant) {
                    warnings.push(format!("pod {}/{}: {e}", pod.namespace, pod.name));
                    continue;
                }
                let Some(devs) = table.resource(&cd.resource_name) else {
                    warnings.push(format!(
                        "pod {}/{} holds {} which this node no longer offers",
                        pod.namespace, pod.name, cd.resource_name
                    ));
                    continue;
                };
                let mut known = Vec::new();
                for id in &cd.device_ids {
                    match devs.get(id) {
                        Some(d) => known.push(d),
                        None => warnings.push(format!(
                            "pod {}/{} holds unknown device {id:?} of {}",
                            pod.namespace, pod.name, cd.resource_name
                        )),
                    }
                }
                if known.is_empty() {
                    continue;
                }
                let base = |key: &str,
                            ids: Vec<String>,
                            spec: Option<pb::SliceSpec>,
                            gpus: Vec<String>,
                            mig: Option<pb::MigPlacement>| {
                    pb::KubeletAllocation {
                        slice_id: slice_id(node, &pod.namespace, &pod.name, &c.name, key),
                        tenant: tenant.clone(),
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: c.name.clone(),
                        resource: cd.resource_name.clone(),
                        device_ids: ids,
                        spec,
                        gpu_uuids: gpus,
                        mig,
                    }
                };
                match &devs.kind {
                    ResourceKind::Gpu => {
                        let mut gpus: Vec<String> =
                            known.iter().map(|d| d.gpu_uuid.clone()).collect();
                        gpus.sort();
                        out.push(base(
                            &cd.resource_name,
                            known.iter().map(|d| d.id.clone()).collect(),
                            spec(pb::slice_spec::Kind::Whole(pb::WholeGpus {
                                count: gpus.len() as u32,
                            })),
                            gpus,
                            None,
                        ));
                    }
                    ResourceKind::Mig { profile } => {
                        for d in known {
                            let Target::Mig {
                                mig_uuid,
                                start,
                                size,
                                gpu_instance_id,
                                ..
                            } = &d.target
                            else {
                                continue;
                            };
                            out.push(base(
                                mig_uuid,
                                vec![d.id.clone()],
                                spec(pb::slice_spec::Kind::Mig(pb::MigSlice {
                                    profile: profile.clone(),
                                })),
                                vec![d.gpu_uuid.clone()],
                                Some(pb::MigPlacement {
                                    profile: profile.clone(),
                                    start: u32::from(*start),
                                    size: u32::from(*size),
                                    gpu_instance_id: *gpu_instance_id,
                                    mig_uuid: mig_uuid.clone(),
                                }),
                            ));
                        }
                    }
                    ResourceKind::Share => {
                        let mut by_gpu: BTreeMap<&str, Vec<&devices::Device>> = BTreeMap::new();
                        for d in known {
                            by_gpu.entry(d.gpu_uuid.as_str()).or_default().push(d);
                        }
                        for (gpu, units) in by_gpu {
                            let n = units.len() as u64;
                            out.push(base(
                                gpu,
                                units.iter().map(|d| d.id.clone()).collect(),
                                spec(pb::slice_spec::Kind::Share(pb::ShareSlice {
                                    compute_fraction: n as f64 / f64::from(SHARE_UNITS_PER_GPU),
                                    memory_bytes: devices::share_memory_bytes(
                                        units[0].gpu_memory_bytes,
                                        n,
                                    ),
                                })),
                                vec![gpu.to_string()],
                                None,
                            ));
                        }
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.slice_id.cmp(&b.slice_id));
    (out, warnings)
}

/// What the pod-resources reader needs.
#[derive(Debug)]
pub struct Reader {
    pub socket: std::path::PathBuf,
    pub node: String,
    pub table: watch::Receiver<Arc<DeviceTable>>,
    /// How often pod-resources is read.
    pub interval: Duration,
    pub eviction_allowed: bool,
    /// The node's Allocate grants: their ids go to the pods' slices, and grants no pod is listed
    /// with yet are reported as pending slices.
    pub grants: Arc<Grants>,
}

/// Delay between an Allocate answer and the read that should list its pod (the kubelet records
/// the allocation right after Allocate answers).
pub const AFTER_ALLOCATE: Duration = Duration::from_millis(100);
/// Interval of reads while a grant is pending.
pub const WHILE_PENDING: Duration = Duration::from_secs(1);

/// One read's allocations: the pods' (with their grants' slice ids), then the grants no pod is
/// listed with yet as [`grants::PENDING_TENANT`] slices. Blocking (records the grants).
pub fn with_grants(
    node: &str,
    resp: &pr::ListPodResourcesResponse,
    table: &DeviceTable,
    book: &Grants,
    now_ms: i64,
) -> (Vec<pb::KubeletAllocation>, Vec<String>, bool) {
    let (mut allocs, mut warnings) = allocations(node, resp, table);
    let pending = match book.reconcile(&mut allocs, now_ms, grants::PENDING_GRACE_MS) {
        Ok(r) => {
            for g in &r.expired {
                warnings.push(format!(
                    "Allocate granted {} {:?} as slice {}, but no pod was listed with it within {} s: dropped",
                    g.resource,
                    g.device_ids,
                    g.slice_id,
                    grants::PENDING_GRACE_MS / 1000
                ));
            }
            r.pending
        }
        Err(e) => {
            // The book is as it was; the pods' slices keep the ids they had, pending grants are
            // reported from the book unchanged.
            warnings.push(format!(
                "cannot record kubelet grants in the node checkpoint: {e}"
            ));
            book.assign(&mut allocs);
            let seen: std::collections::BTreeSet<&str> =
                allocs.iter().map(|a| a.slice_id.as_str()).collect();
            book.snapshot()
                .into_iter()
                .filter(|g| g.seen_ms.is_none() && !seen.contains(g.slice_id.as_str()))
                .collect()
        }
    };
    let any_pending = !pending.is_empty();
    let (mut held, more) = allocations(node, &grants::pending_pods(&pending), table);
    warnings.extend(more);
    book.assign(&mut held);
    allocs.extend(held);
    allocs.sort_by(|a, b| a.slice_id.cmp(&b.slice_id));
    (allocs, warnings, any_pending)
}

/// Reads pod-resources every `interval` (soon after every Allocate, and every second while a grant
/// is pending) and publishes the node's kubelet allocations on `tx` when they change. A read that
/// fails keeps the last report (the pods did not go away because the kubelet is restarting).
pub async fn run(r: Reader, tx: watch::Sender<Option<pb::KubeletAllocations>>) {
    let mut last_error: Option<String> = None;
    let mut last_warnings: Vec<String> = Vec::new();
    loop {
        let mut pending = false;
        match list(&r.socket).await {
            Ok(resp) => {
                if last_error.take().is_some() {
                    info!(socket = %r.socket.display(), "pod-resources readable again");
                }
                let current = r.table.borrow().clone();
                let (node, book) = (r.node.clone(), r.grants.clone());
                let read = tokio::task::spawn_blocking(move || {
                    with_grants(&node, &resp, &current, &book, SystemClock.now_ms())
                })
                .await;
                match read {
                    Ok((allocs, warnings, any_pending)) => {
                        pending = any_pending;
                        if warnings != last_warnings {
                            for w in &warnings {
                                warn!("{w}");
                            }
                            last_warnings = warnings;
                        }
                        tx.send_if_modified(|cur| {
                            let changed = cur.as_ref().is_none_or(|c| c.allocations != allocs);
                            if changed {
                                info!(slices = allocs.len(), "kubelet allocations changed");
                                *cur = Some(pb::KubeletAllocations {
                                    allocations: allocs,
                                    eviction_allowed: r.eviction_allowed,
                                    observed_unix_ms: SystemClock.now_ms(),
                                });
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        pending = true;
                        warn!(error = %e, "reading the kubelet allocations failed; keeping the last report");
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    warn!(socket = %r.socket.display(), error = %msg, "cannot read pod-resources; keeping the last report");
                    last_error = Some(msg);
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        let wait = if pending {
            r.interval.min(WHILE_PENDING)
        } else {
            r.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = r.grants.allocated() => tokio::time::sleep(AFTER_ALLOCATE).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_ids_are_stable_and_distinct() {
        let a = slice_id("n", "ns", "p", "c", "r");
        assert_eq!(a, slice_id("n", "ns", "p", "c", "r"));
        assert_ne!(a, slice_id("n", "ns", "pc", "", "r"));
        assert_eq!(a.len(), 18);
    }

    #[test]
    fn pods_with_names_past_the_limits_are_left_out_with_a_warning() {
        let gpu = greenslice_core::inventory::Gpu {
            uuid: "GPU-1".into(),
            index: 0,
            model: greenslice_core::gpu::GpuModel::H100Sxm5_80Gb,
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: false,
            pci_bus_id: String::new(),
            power_limit_mw: 0,
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        };
        let (table, _) = DeviceTable::build(&[gpu], &[]);
        let pod = |name: String| pr::PodResources {
            name,
            namespace: "team-a".into(),
            containers: vec![pr::ContainerResources {
                name: "main".into(),
                devices: vec![pr::ContainerDevices {
                    resource_name: devices::GPU_RESOURCE.into(),
                    device_ids: vec!["GPU-1".into()],
                    topology: None,
                }],
                ..Default::default()
            }],
        };
        let resp = pr::ListPodResourcesResponse {
            pod_resources: vec![pod("p".repeat(300)), pod("ok".into())],
        };
        let (out, warnings) = allocations("n1", &resp, &table);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].pod, "ok");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("pod must be 1-253"), "{warnings:?}");
    }
}
