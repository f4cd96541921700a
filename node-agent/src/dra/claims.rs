//! What a ResourceClaim's allocation asks of this node, decided without I/O: which of the
//! allocation's results are this driver's on this node, what each device amounts to as a slice
//! (a whole GPU, a MIG partition at its start, a share of the consumed capacity) and which
//! configuration applies to it. Every problem is a [`ClaimError`] naming it; a claim with one bad
//! device is refused whole, before anything is made.

use greenslice_core::inventory::Gpu;
use greenslice_core::mig;
use greenslice_proto::v1 as pb;
use k8s_openapi::api::resource::v1::{DeviceAllocationConfiguration, ResourceClaim};
use thiserror::Error;

use super::config::{ConfigError, GpuConfig, Strategy};
use super::devices::{CAPACITY_COMPUTE, CAPACITY_MEMORY, DRIVER, DeviceNameError, DeviceRef};
use super::quantity;

/// Most devices of one claim on one node (the controller's limit too).
pub const MAX_DEVICES: usize = 32;

/// Why a claim cannot be prepared here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    #[error(
        "ResourceClaim {namespace}/{name} has uid {found}, not {expected} (deleted and made again?)"
    )]
    OtherUid {
        namespace: String,
        name: String,
        expected: String,
        found: String,
    },
    #[error("ResourceClaim {0} is not allocated")]
    NotAllocated(String),
    #[error("ResourceClaim {0} has no device of driver {DRIVER} (a claim of another driver)")]
    NotOurs(String),
    #[error("device {device} of pool {pool} is not on this node ({node})")]
    OtherPool {
        device: String,
        pool: String,
        node: String,
    },
    #[error("device {device}: {source}")]
    Name {
        device: String,
        source: DeviceNameError,
    },
    #[error("device {device} is not on this node: {why}")]
    NoSuchDevice { device: String, why: String },
    #[error("share device {device}: {why}")]
    Share { device: String, why: String },
    #[error("configuration of request {request:?}: {source}")]
    Config {
        request: String,
        source: ConfigError,
    },
    #[error("request {request:?}: {why}")]
    Strategy { request: String, why: String },
    #[error("ResourceClaim {claim} has {count} devices on this node; at most {MAX_DEVICES}")]
    TooMany { claim: String, count: usize },
}

/// One of the claim's devices to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub share_id: Option<String>,
    pub kind: DeviceRef,
    pub gpu_uuid: String,
    pub gpu_index: u32,
    /// The slice it becomes (`slice_class` from the configuration).
    pub spec: pb::SliceSpec,
    pub mig_start: Option<u32>,
    pub strategy: Strategy,
}

/// Whether configuration `c` applies to result request `request` (a sub-request `r/s` of a
/// prioritized list is covered by a configuration of `r`).
fn covers(c: &DeviceAllocationConfiguration, request: &str) -> bool {
    match c.requests.as_deref() {
        None | Some([]) => true,
        Some(rs) => rs.iter().any(|r| {
            r == request
                || request
                    .strip_prefix(r.as_str())
                    .is_some_and(|t| t.starts_with('/'))
        }),
    }
}

/// The configuration for `request`: this driver's opaque configurations, the class's first, the
/// claim's over them, each in order.
fn config_for(
    configs: &[DeviceAllocationConfiguration],
    request: &str,
) -> Result<GpuConfig, ClaimError> {
    let mut out = GpuConfig::default();
    for source in ["FromClass", "FromClaim"] {
        for c in configs.iter().filter(|c| c.source == source) {
            let Some(o) = &c.opaque else { continue };
            if o.driver != DRIVER || !covers(c, request) {
                continue;
            }
            let parsed =
                GpuConfig::parse(&o.parameters.0).map_err(|source| ClaimError::Config {
                    request: request.to_string(),
                    source,
                })?;
            out = out.merged(&parsed);
        }
    }
    Ok(out)
}

/// The devices of `claim` this node must make, in the allocation's order. `uid` is the claim the
/// kubelet named; `node` this node (its pool).
pub fn plan(
    claim: &ResourceClaim,
    uid: &str,
    node: &str,
    gpus: &[Gpu],
) -> Result<Vec<Planned>, ClaimError> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let full = format!("{ns}/{name}");
    let found = claim.metadata.uid.clone().unwrap_or_default();
    if found != uid {
        return Err(ClaimError::OtherUid {
            namespace: ns,
            name,
            expected: uid.to_string(),
            found,
        });
    }
    let devices = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .ok_or_else(|| ClaimError::NotAllocated(full.clone()))?;
    let configs = devices.config.as_deref().unwrap_or_default();
    let ours: Vec<_> = devices
        .results
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.driver == DRIVER)
        .collect();
    if ours.is_empty() {
        return Err(ClaimError::NotOurs(full));
    }
    if ours.len() > MAX_DEVICES {
        return Err(ClaimError::TooMany {
            claim: full,
            count: ours.len(),
        });
    }
    let mut out = Vec::with_capacity(ours.len());
    for r in ours {
        if r.pool != node {
            return Err(ClaimError::OtherPool {
                device: r.device.clone(),
                pool: r.pool.clone(),
                node: node.to_string(),
            });
        }
        let kind = DeviceRef::parse(&r.device).map_err(|source| ClaimError::Name {
            device: r.device.clone(),
            source,
        })?;
        let no_such = |why: String| ClaimError::NoSuchDevice {
            device: r.device.clone(),
            why,
        };
        let g = gpus
            .iter()
            .find(|g| g.index == kind.gpu())
            .ok_or_else(|| no_such(format!("the node has no GPU {}", kind.gpu())))?;
        let config = config_for(configs, &r.request)?;
        let strategy = config.strategy.unwrap_or_default();
        let (kind_pb, mig_start) = match &kind {
            DeviceRef::Whole { .. } => {
                if g.mig_enabled {
                    return Err(no_such(format!("GPU {} is in MIG mode", g.index)));
                }
                (
                    pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 }),
                    None,
                )
            }
            DeviceRef::Mig { profile, start, .. } => {
                if !g.mig_enabled {
                    return Err(no_such(format!("GPU {} is not in MIG mode", g.index)));
                }
                let p = mig::profile(&g.model, profile).ok_or_else(|| {
                    no_such(format!("a {} has no MIG profile {profile}", g.model.name()))
                })?;
                if !p.starts.contains(start) {
                    return Err(no_such(format!(
                        "{profile} cannot start at memory slice {start} (legal: {:?})",
                        p.starts
                    )));
                }
                (
                    pb::slice_spec::Kind::Mig(pb::MigSlice {
                        profile: profile.clone(),
                    }),
                    Some(u32::from(*start)),
                )
            }
            DeviceRef::Share { .. } => {
                if g.mig_enabled {
                    return Err(no_such(format!("GPU {} is in MIG mode", g.index)));
                }
                if strategy == Strategy::TimeSlicing {
                    return Err(ClaimError::Strategy {
                        request: r.request.clone(),
                        why: format!(
                            "sharing strategy TimeSlicing cannot enforce the limits of share device {}; use MPS (the default)",
                            r.device
                        ),
                    });
                }
                let share = |why: String| ClaimError::Share {
                    device: r.device.clone(),
                    why,
                };
                let consumed = r.consumed_capacity.as_ref().ok_or_else(|| {
                    share("the allocation consumed no capacity (is consumable capacity, DRAConsumableCapacity, on?)".into())
                })?;
                let read = |key: &str| -> Result<u64, ClaimError> {
                    let q = consumed
                        .get(key)
                        .ok_or_else(|| share(format!("no consumed {key} capacity")))?;
                    quantity::parse(&q.0).map_err(|e| share(format!("{key}: {e}")))
                };
                let milli = read(CAPACITY_COMPUTE)?;
                let memory = read(CAPACITY_MEMORY)?;
                if !(1..=u64::from(greenslice_core::MILLI_PER_GPU)).contains(&milli) {
                    return Err(share(format!(
                        "compute {milli} milli-GPU is outside 1-{}",
                        greenslice_core::MILLI_PER_GPU
                    )));
                }
                if memory == 0 || memory > g.memory_bytes {
                    return Err(share(format!(
                        "memory {memory} bytes is outside 1-{} (the GPU's)",
                        g.memory_bytes
                    )));
                }
                (
                    pb::slice_spec::Kind::Share(pb::ShareSlice {
                        compute_fraction: milli as f64 / f64::from(greenslice_core::MILLI_PER_GPU),
                        memory_bytes: memory,
                    }),
                    None,
                )
            }
        };
        out.push(Planned {
            request: r.request.clone(),
            pool: r.pool.clone(),
            device: r.device.clone(),
            share_id: r.share_id.clone(),
            kind,
            gpu_uuid: g.uuid.clone(),
            gpu_index: g.index,
            spec: pb::SliceSpec {
                kind: Some(kind_pb),
                gpu_model: String::new(),
                slice_class: config.slice_class.unwrap_or_default(),
            },
            mig_start,
            strategy,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenslice_core::gpu::GpuModel;
    use serde_json::{Value, json};

    pub(crate) const UID: &str = "3e1f5c2a-7d4b-4c3e-9a1f-0b2c3d4e5f60";

    fn gpu(index: u32, mig: bool) -> Gpu {
        Gpu {
            uuid: format!("GPU-{index}"),
            index,
            model: GpuModel::H100Sxm5_80Gb,
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: mig,
            pci_bus_id: String::new(),
            power_limit_mw: 700_000,
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        }
    }

    fn node() -> Vec<Gpu> {
        vec![gpu(0, true), gpu(1, false), gpu(2, false)]
    }

    fn result(device: &str, request: &str) -> Value {
        json!({"driver": DRIVER, "pool": "n1", "device": device, "request": request})
    }

    fn claim(results: Vec<Value>, config: Vec<Value>) -> ResourceClaim {
        serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "c", "namespace": "team-a", "uid": UID},
            "spec": {},
            "status": {"allocation": {"devices": {"results": results, "config": config}}}
        }))
        .unwrap()
    }

    fn gpu_config(source: &str, requests: Option<Vec<&str>>, params: Value) -> Value {
        let mut c = json!({"source": source, "opaque": {"driver": DRIVER, "parameters": params}});
        if let Some(r) = requests {
            c["requests"] = json!(r);
        }
        c
    }

    #[test]
    fn each_kind_of_device_becomes_its_slice_with_its_configuration() {
        let mut share = result("gpu-1-share", "small");
        share["consumedCapacity"] = json!({"compute": "250", "memory": "20Gi"});
        share["shareID"] = json!("a1b2");
        let c = claim(
            vec![
                result("gpu-0-mig-3g-40gb-4", "part"),
                result("gpu-2", "big"),
                share,
                json!({"driver": "other.example.com", "pool": "n1", "device": "nic-0", "request": "net"}),
            ],
            vec![
                gpu_config(
                    "FromClass",
                    None,
                    json!({"apiVersion": "resource.greenslice.io/v1alpha1", "kind": "GpuConfig", "sliceClass": "batch"}),
                ),
                gpu_config(
                    "FromClaim",
                    Some(vec!["big"]),
                    json!({"apiVersion": "resource.greenslice.io/v1alpha1", "kind": "GpuConfig", "sliceClass": "serving", "sharing": {"strategy": "TimeSlicing"}}),
                ),
            ],
        );
        let p = plan(&c, UID, "n1", &node()).unwrap();
        assert_eq!(p.len(), 3, "the other driver's device is not ours");
        assert_eq!(p[0].mig_start, Some(4));
        assert_eq!(p[0].gpu_uuid, "GPU-0");
        assert!(
            matches!(&p[0].spec.kind, Some(pb::slice_spec::Kind::Mig(m)) if m.profile == "3g.40gb")
        );
        assert_eq!(p[0].spec.slice_class, "batch");
        assert!(matches!(&p[1].spec.kind, Some(pb::slice_spec::Kind::Whole(w)) if w.count == 1));
        assert_eq!(
            p[1].spec.slice_class, "serving",
            "the claim's configuration wins for its request"
        );
        assert_eq!(p[1].strategy, Strategy::TimeSlicing);
        match &p[2].spec.kind {
            Some(pb::slice_spec::Kind::Share(s)) => {
                assert!((s.compute_fraction - 0.25).abs() < 1e-9);
                assert_eq!(s.memory_bytes, 20 << 30);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p[2].share_id.as_deref(), Some("a1b2"));
        assert_eq!(p[2].strategy, Strategy::Mps);
    }

    #[test]
    fn every_bad_claim_is_refused_naming_its_problem() {
        let ok = || result("gpu-1", "r");
        let mut no_cap = result("gpu-1-share", "r");
        no_cap["consumedCapacity"] = json!({"compute": "250"});
        let mut too_much = result("gpu-1-share", "r");
        too_much["consumedCapacity"] = json!({"compute": "1500", "memory": "1Gi"});
        let mut bad_q = result("gpu-1-share", "r");
        bad_q["consumedCapacity"] = json!({"compute": "lots", "memory": "1Gi"});
        let bad_cfg = gpu_config(
            "FromClaim",
            None,
            json!({"apiVersion": "resource.greenslice.io/v1alpha1", "kind": "GpuConfig", "sharing": {"strategy": "Fast"}}),
        );
        let ts = gpu_config(
            "FromClaim",
            None,
            json!({"apiVersion": "resource.greenslice.io/v1alpha1", "kind": "GpuConfig", "sharing": {"strategy": "TimeSlicing"}}),
        );
        let mut share = result("gpu-1-share", "r");
        share["consumedCapacity"] = json!({"compute": "100", "memory": "1Gi"});
        let cases: Vec<(ResourceClaim, &str)> = vec![
            (
                claim(
                    vec![
                        json!({"driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-0", "request": "r"}),
                    ],
                    vec![],
                ),
                "another driver",
            ),
            (claim(vec![result("gpu-7", "r")], vec![]), "no GPU 7"),
            (claim(vec![result("gpu-0", "r")], vec![]), "MIG mode"),
            (
                claim(vec![result("gpu-1-mig-1g-10gb-0", "r")], vec![]),
                "not in MIG mode",
            ),
            (
                claim(vec![result("gpu-0-mig-3g-40gb-2", "r")], vec![]),
                "cannot start",
            ),
            (
                claim(vec![result("gpu-0-mig-4g-99gb-0", "r")], vec![]),
                "unknown MIG profile",
            ),
            (claim(vec![result("nic-0", "r")], vec![]), "gpu-<index>"),
            (
                claim(
                    vec![
                        json!({"driver": DRIVER, "pool": "n2", "device": "gpu-1", "request": "r"}),
                    ],
                    vec![],
                ),
                "pool n2",
            ),
            (claim(vec![no_cap], vec![]), "no consumed memory"),
            (claim(vec![too_much], vec![]), "outside 1-1000"),
            (claim(vec![bad_q], vec![]), "not a Kubernetes quantity"),
            (claim(vec![ok()], vec![bad_cfg]), "Fast"),
            (claim(vec![share], vec![ts]), "TimeSlicing cannot enforce"),
        ];
        for (c, says) in cases {
            let e = plan(&c, UID, "n1", &node()).unwrap_err().to_string();
            assert!(e.contains(says), "expected {says:?} in: {e}");
        }
        let e = plan(&claim(vec![ok()], vec![]), "another-uid", "n1", &node()).unwrap_err();
        assert!(matches!(e, ClaimError::OtherUid { .. }), "{e}");
        let mut unallocated = claim(vec![], vec![]);
        unallocated.status = None;
        assert!(matches!(
            plan(&unallocated, UID, "n1", &node()),
            Err(ClaimError::NotAllocated(_))
        ));
        let many: Vec<Value> = (0..33).map(|_| ok()).collect();
        assert!(matches!(
            plan(&claim(many, vec![]), UID, "n1", &node()),
            Err(ClaimError::TooMany { .. })
        ));
    }
}
