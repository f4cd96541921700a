//! The device-id scheme and the pure decisions of the device plugin: which devices each resource
//! offers, which of them a container should get (GetPreferredAllocation), and what a container needs
//! to use them (Allocate). No I/O here; the gRPC edges live in [`super::plugin`].
//!
//! Resources and device ids:
//! - `greenslice.io/gpu`: one device per whole non-MIG GPU, id = the GPU UUID (`GPU-...`).
//! - `greenslice.io/mig-<profile>`: one device per MIG instance that exists and no greenslice slice
//!   owns, id = the MIG UUID (`MIG-...`). `+` in a profile name becomes `.` (`1g.10gb+me` is
//!   `mig-1g.10gb.me`): resource names allow only `[A-Za-z0-9-_.]`. The names and that rule live in
//!   `greenslice_core::kubelet`, which the controller's metrics use too.
//! - `greenslice.io/gpu-share`: [`SHARE_UNITS_PER_GPU`] devices per GPU listed in `kubelet.share_gpus`,
//!   id = `<GPU UUID>::<unit>`. One unit is 1% of the GPU's compute and 1% of its memory; a container
//!   asking for `greenslice.io/gpu-share: 25` gets a quarter of one GPU. All units of a container must
//!   lie on one GPU: Allocate refuses units that span GPUs.
//!
//! A GPU the controller has given to a greenslice slice (a whole-GPU slice or a share made through the
//! tenant API) is marked Unhealthy for the kubelet, so the two never hand out the same capacity.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use greenslice_core::inventory::Gpu;
use greenslice_core::limits;
use greenslice_proto::deviceplugin::v1beta1 as dp;
use greenslice_proto::v1 as pb;
use thiserror::Error;

pub use greenslice_core::kubelet::{
    GPU_RESOURCE, MIG_RESOURCE_PREFIX, RESOURCE_PREFIX, SHARE_RESOURCE,
    SLICE_CLASS as KUBELET_SLICE_CLASS, mig_resource,
};

/// Share units per GPU: one unit is 1% of the GPU's compute and memory.
pub const SHARE_UNITS_PER_GPU: u32 = 100;
/// Longest device id the kubelet accepts, characters.
pub const MAX_DEVICE_ID_LEN: usize = limits::MAX_DEVICE_ID_LEN;
/// CDI kind of NVIDIA GPUs (nvidia-ctk `cdi generate --device-name-strategy=uuid` names devices
/// `nvidia.com/gpu=<UUID>`, for GPUs and MIG instances alike).
pub const CDI_KIND: &str = "nvidia.com/gpu";

/// The three kinds of resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// `greenslice.io/gpu`.
    Gpu,
    /// `greenslice.io/mig-<profile>`, with the profile as nvidia-smi names it.
    Mig { profile: String },
    /// `greenslice.io/gpu-share`.
    Share,
}

/// What one device stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The whole GPU.
    Gpu,
    /// A MIG instance of the GPU.
    Mig {
        mig_uuid: String,
        profile: String,
        /// First memory slice.
        start: u8,
        /// Memory slices covered.
        size: u8,
        gpu_instance_id: u32,
    },
    /// Share unit number `unit` (0-based) of the GPU.
    ShareUnit { unit: u32 },
}

/// One device the plugin offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Device id as the kubelet sees it.
    pub id: String,
    /// UUID of the physical GPU.
    pub gpu_uuid: String,
    /// Index of the GPU on the node.
    pub gpu_index: u32,
    /// Memory of the physical GPU, bytes.
    pub gpu_memory_bytes: u64,
    /// False when the GPU is unhealthy or held by a greenslice slice outside the kubelet.
    pub healthy: bool,
    pub target: Target,
}

/// The devices of one resource, in GPU-index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDevices {
    pub kind: ResourceKind,
    devices: Vec<Device>,
    by_id: HashMap<String, usize>,
}

impl ResourceDevices {
    fn new(kind: ResourceKind) -> Self {
        ResourceDevices {
            kind,
            devices: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    fn push(&mut self, d: Device) {
        self.by_id.insert(d.id.clone(), self.devices.len());
        self.devices.push(d);
    }

    /// Every device, in GPU-index order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// A device by id.
    pub fn get(&self, id: &str) -> Option<&Device> {
        self.by_id.get(id).map(|&i| &self.devices[i])
    }

    /// The list ListAndWatch sends.
    pub fn to_pb(&self) -> Vec<dp::Device> {
        self.devices
            .iter()
            .map(|d| dp::Device {
                id: d.id.clone(),
                health: if d.healthy {
                    dp::HEALTHY
                } else {
                    dp::UNHEALTHY
                }
                .to_string(),
                topology: None,
            })
            .collect()
    }
}

/// Every resource of the node and its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTable {
    resources: BTreeMap<String, ResourceDevices>,
}

impl DeviceTable {
    /// The table for a node's GPUs. `share_gpus` are indices of non-MIG GPUs offered as
    /// `greenslice.io/gpu-share` units rather than whole. Returns the table and warnings for
    /// anything skipped.
    pub fn build(gpus: &[Gpu], share_gpus: &[u32]) -> (DeviceTable, Vec<String>) {
        let mut warnings = Vec::new();
        let mut resources: BTreeMap<String, ResourceDevices> = BTreeMap::new();
        for &i in share_gpus {
            match gpus.iter().find(|g| g.index == i) {
                None => warnings.push(format!("share_gpus lists GPU index {i}, which is absent")),
                Some(g) if g.mig_enabled => warnings.push(format!(
                    "share_gpus lists GPU {i} ({}), which is in MIG mode: it offers MIG devices",
                    g.uuid
                )),
                Some(_) => {}
            }
        }
        let mut sorted: Vec<&Gpu> = gpus.iter().collect();
        sorted.sort_by_key(|g| g.index);
        for g in sorted {
            let held_by_slice = g.whole_slice_id.is_some() || !g.shares.is_empty();
            let base = |id: String, healthy: bool, target: Target| Device {
                id,
                gpu_uuid: g.uuid.clone(),
                gpu_index: g.index,
                gpu_memory_bytes: g.memory_bytes,
                healthy,
                target,
            };
            if g.mig_enabled {
                let mut instances: Vec<_> = g.mig_instances.iter().collect();
                instances.sort_by_key(|m| m.start);
                for m in instances {
                    if m.slice_id.is_some() || m.mig_uuid.is_empty() {
                        continue;
                    }
                    let Some(resource) = mig_resource(&m.profile) else {
                        warnings.push(format!(
                            "MIG profile {:?} cannot be a resource name",
                            m.profile
                        ));
                        continue;
                    };
                    if m.mig_uuid.len() > MAX_DEVICE_ID_LEN {
                        warnings.push(format!(
                            "MIG UUID {} is too long for a device id",
                            m.mig_uuid
                        ));
                        continue;
                    }
                    resources
                        .entry(resource)
                        .or_insert_with(|| {
                            ResourceDevices::new(ResourceKind::Mig {
                                profile: m.profile.clone(),
                            })
                        })
                        .push(base(
                            m.mig_uuid.clone(),
                            g.healthy,
                            Target::Mig {
                                mig_uuid: m.mig_uuid.clone(),
                                profile: m.profile.clone(),
                                start: m.start,
                                size: m.size,
                                gpu_instance_id: m.gpu_instance_id,
                            },
                        ));
                }
                continue;
            }
            let healthy = g.healthy && !held_by_slice;
            if share_gpus.contains(&g.index) {
                let res = resources
                    .entry(SHARE_RESOURCE.to_string())
                    .or_insert_with(|| ResourceDevices::new(ResourceKind::Share));
                if share_unit_id(&g.uuid, SHARE_UNITS_PER_GPU - 1).len() > MAX_DEVICE_ID_LEN {
                    warnings.push(format!(
                        "GPU UUID {} is too long for share unit ids",
                        g.uuid
                    ));
                    continue;
                }
                for unit in 0..SHARE_UNITS_PER_GPU {
                    res.push(base(
                        share_unit_id(&g.uuid, unit),
                        healthy,
                        Target::ShareUnit { unit },
                    ));
                }
            } else {
                if g.uuid.len() > MAX_DEVICE_ID_LEN {
                    warnings.push(format!("GPU UUID {} is too long for a device id", g.uuid));
                    continue;
                }
                resources
                    .entry(GPU_RESOURCE.to_string())
                    .or_insert_with(|| ResourceDevices::new(ResourceKind::Gpu))
                    .push(base(g.uuid.clone(), healthy, Target::Gpu));
            }
        }
        (DeviceTable { resources }, warnings)
    }

    /// The same devices, all Unhealthy (the inventory could not be read: the GPUs' state is unknown).
    pub fn all_unhealthy(&self) -> DeviceTable {
        let mut t = self.clone();
        for r in t.resources.values_mut() {
            for d in &mut r.devices {
                d.healthy = false;
            }
        }
        t
    }

    /// Resource names, sorted.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// The devices of one resource.
    pub fn resource(&self, name: &str) -> Option<&ResourceDevices> {
        self.resources.get(name)
    }
}

/// The device id of share unit `unit` of a GPU.
pub fn share_unit_id(gpu_uuid: &str, unit: u32) -> String {
    format!("{gpu_uuid}::{unit}")
}

/// Why a kubelet request cannot be answered. Every variant is the kubelet's (or the pod's) input
/// being wrong or impossible; the plugin answers with an error status, never a guess.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    #[error("the request names no containers")]
    NoContainers,
    #[error("{0}")]
    Limit(#[from] greenslice_core::limits::LimitError),
    #[error("a container asks for no devices")]
    EmptyRequest,
    #[error("allocation size {0} is not a positive device count")]
    BadSize(i64),
    #[error("unknown device id {id:?} for resource {resource}")]
    UnknownDevice { resource: String, id: String },
    #[error("device id {0:?} is listed twice")]
    Duplicate(String),
    #[error("{wanted} devices asked for, but {resource} has only {have} to choose from")]
    TooMany {
        resource: String,
        wanted: usize,
        have: usize,
    },
    #[error("{must} devices must be included, more than the {size} asked for")]
    MustExceedsSize { must: usize, size: usize },
    #[error("device {0} is unhealthy or held by a greenslice slice")]
    Unhealthy(String),
    #[error(
        "greenslice.io/gpu-share units of one container must lie on one GPU; these span {0} GPUs"
    )]
    SpansGpus(usize),
    #[error(
        "no GPU has {wanted} free greenslice.io/gpu-share units (1 unit = 1% of a GPU); the most free on one GPU is {largest}"
    )]
    NoSingleGpu { wanted: usize, largest: usize },
}

/// A checked GetPreferredAllocation request for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferredRequest {
    /// Devices to choose from (available and must-include, without repeats), in the kubelet's order.
    pub candidates: Vec<String>,
    /// Devices the answer must contain.
    pub must: Vec<String>,
    /// Devices to answer with.
    pub size: usize,
}

fn check_known(resource: &str, devs: &ResourceDevices, ids: &[String]) -> Result<(), DeviceError> {
    match ids.iter().find(|id| devs.get(id).is_none()) {
        Some(id) => Err(DeviceError::UnknownDevice {
            resource: resource.to_string(),
            id: id.chars().take(80).collect(),
        }),
        None => Ok(()),
    }
}

/// Checks a list of device ids from the kubelet against the limits: at most
/// [`limits::MAX_DEVICES_PER_REQUEST`] ids of at most [`MAX_DEVICE_ID_LEN`] printable characters.
/// Runs before anything is looked up or copied.
pub fn check_ids(field: &str, ids: &[String]) -> Result<(), DeviceError> {
    limits::check_count(field, ids.len(), 0, limits::MAX_DEVICES_PER_REQUEST)?;
    limits::check_each(field, ids, |f, id| {
        limits::check_str(f, id, 1, MAX_DEVICE_ID_LEN, limits::Alphabet::Graphic)
    })?;
    Ok(())
}

fn check_unique(ids: &[String]) -> Result<(), DeviceError> {
    let mut seen = BTreeSet::new();
    match ids.iter().find(|id| !seen.insert(id.as_str())) {
        Some(id) => Err(DeviceError::Duplicate(id.chars().take(80).collect())),
        None => Ok(()),
    }
}

/// Checks a container's GetPreferredAllocation request against the resource's devices.
pub fn check_preferred(
    resource: &str,
    devs: &ResourceDevices,
    available: &[String],
    must: &[String],
    size: i32,
) -> Result<PreferredRequest, DeviceError> {
    if size <= 0 {
        return Err(DeviceError::BadSize(i64::from(size)));
    }
    let size = size as usize;
    check_ids("available_device_ids", available)?;
    check_ids("must_include_device_ids", must)?;
    check_unique(available)?;
    check_unique(must)?;
    check_known(resource, devs, available)?;
    check_known(resource, devs, must)?;
    // The kubelet lists must-include devices among the available ones; accept them either way.
    let mut candidates = available.to_vec();
    for m in must {
        if !available.contains(m) {
            candidates.push(m.clone());
        }
    }
    if size > candidates.len() {
        return Err(DeviceError::TooMany {
            resource: resource.to_string(),
            wanted: size,
            have: candidates.len(),
        });
    }
    if must.len() > size {
        return Err(DeviceError::MustExceedsSize {
            must: must.len(),
            size,
        });
    }
    Ok(PreferredRequest {
        candidates,
        must: must.to_vec(),
        size,
    })
}

/// Free candidate units per GPU for a share request, in GPU-index order: (GPU UUID, unit ids).
fn units_by_gpu<'a>(
    devs: &'a ResourceDevices,
    req: &'a PreferredRequest,
) -> Vec<(&'a str, Vec<&'a Device>)> {
    let mut by_gpu: BTreeMap<(u32, &str), Vec<&Device>> = BTreeMap::new();
    for id in &req.candidates {
        if req.must.contains(id) {
            continue;
        }
        if let Some(d) = devs.get(id) {
            by_gpu
                .entry((d.gpu_index, d.gpu_uuid.as_str()))
                .or_default()
                .push(d);
        }
    }
    by_gpu
        .into_iter()
        .map(|((_, uuid), mut units)| {
            units.sort_by_key(|d| match d.target {
                Target::ShareUnit { unit } => unit,
                _ => 0,
            });
            (uuid, units)
        })
        .collect()
}

/// The local choice for a checked request: must-include devices first, then
/// - whole GPUs and MIG instances: the next candidates in GPU-index order;
/// - share units: all on one GPU, the GPU of the must-include units if any, else the GPU whose free
///   units fit most tightly (best fit, which keeps large holes for large shares).
pub fn choose_local(
    devs: &ResourceDevices,
    req: &PreferredRequest,
) -> Result<Vec<String>, DeviceError> {
    let mut out = req.must.clone();
    let need = req.size - req.must.len();
    if need == 0 {
        return Ok(out);
    }
    match devs.kind {
        ResourceKind::Gpu | ResourceKind::Mig { .. } => {
            let mut rest: Vec<&Device> = req
                .candidates
                .iter()
                .filter(|id| !req.must.contains(id))
                .filter_map(|id| devs.get(id))
                .collect();
            // Healthy first, then GPU order; stable, so the kubelet's order breaks ties.
            rest.sort_by_key(|d| (!d.healthy, d.gpu_index));
            out.extend(rest.iter().take(need).map(|d| d.id.clone()));
            Ok(out)
        }
        ResourceKind::Share => {
            let groups = units_by_gpu(devs, req);
            let must_gpu = req
                .must
                .iter()
                .filter_map(|id| devs.get(id))
                .fold(BTreeMap::<&str, usize>::new(), |mut m, d| {
                    *m.entry(d.gpu_uuid.as_str()).or_default() += 1;
                    m
                })
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(g, _)| g);
            let chosen = match must_gpu {
                Some(g) => groups.iter().find(|(u, _)| *u == g),
                None => groups
                    .iter()
                    .filter(|(_, units)| units.len() >= need)
                    .min_by_key(|(_, units)| units.len()),
            };
            let Some((_, units)) = chosen else {
                if must_gpu.is_some() {
                    // The must-include GPU has no free units left: the answer is only what must be.
                    return Err(DeviceError::NoSingleGpu {
                        wanted: req.size,
                        largest: req.must.len(),
                    });
                }
                return Err(DeviceError::NoSingleGpu {
                    wanted: need,
                    largest: groups.iter().map(|(_, u)| u.len()).max().unwrap_or(0),
                });
            };
            if units.len() < need {
                return Err(DeviceError::NoSingleGpu {
                    wanted: req.size,
                    largest: req.must.len() + units.len(),
                });
            }
            out.extend(units.iter().take(need).map(|d| d.id.clone()));
            Ok(out)
        }
    }
}

/// What to ask the controller's placement for, or `None` when there is nothing to choose there
/// (MIG instances exist already; must-include devices decide a share's GPU; all devices are
/// must-include).
pub fn choose_request(
    node: &str,
    resource: &str,
    devs: &ResourceDevices,
    req: &PreferredRequest,
) -> Option<pb::ChooseDevicesRequest> {
    let need = req.size - req.must.len();
    if need == 0 {
        return None;
    }
    let (spec, candidates) = match devs.kind {
        ResourceKind::Mig { .. } => return None,
        ResourceKind::Gpu => {
            let cands = req
                .candidates
                .iter()
                .filter(|id| !req.must.contains(id))
                .filter_map(|id| devs.get(id))
                .map(|d| pb::GpuCandidate {
                    gpu_uuid: d.gpu_uuid.clone(),
                    free_milli: greenslice_core::MILLI_PER_GPU,
                })
                .collect();
            let count = u32::try_from(need).ok()?;
            (pb::slice_spec::Kind::Whole(pb::WholeGpus { count }), cands)
        }
        ResourceKind::Share => {
            if !req.must.is_empty() {
                return None;
            }
            let groups = units_by_gpu(devs, req);
            let memory = groups.first().map(|(_, u)| u[0].gpu_memory_bytes)?;
            let cands = groups
                .iter()
                .filter(|(_, units)| units.len() >= need)
                .map(|(uuid, units)| pb::GpuCandidate {
                    gpu_uuid: uuid.to_string(),
                    free_milli: units.len() as u32 * 1000 / SHARE_UNITS_PER_GPU,
                })
                .collect();
            let units = need as u64;
            (
                pb::slice_spec::Kind::Share(pb::ShareSlice {
                    compute_fraction: need as f64 / f64::from(SHARE_UNITS_PER_GPU),
                    memory_bytes: share_memory_bytes(memory, units),
                }),
                cands,
            )
        }
    };
    Some(pb::ChooseDevicesRequest {
        node: node.to_string(),
        resource: resource.to_string(),
        spec: Some(pb::SliceSpec {
            kind: Some(spec),
            gpu_model: String::new(),
            slice_class: KUBELET_SLICE_CLASS.to_string(),
        }),
        candidates,
    })
}

/// The answer built from the GPUs the controller chose, or `None` when its choice does not fit the
/// request (then the caller falls back to [`choose_local`]).
pub fn choose_from_gpus(
    devs: &ResourceDevices,
    req: &PreferredRequest,
    gpus: &[String],
) -> Option<Vec<String>> {
    let need = req.size - req.must.len();
    let mut out = req.must.clone();
    match devs.kind {
        ResourceKind::Mig { .. } => None,
        ResourceKind::Gpu => {
            if gpus.len() != need {
                return None;
            }
            for g in gpus {
                let ok = req.candidates.contains(g)
                    && !req.must.contains(g)
                    && !out.contains(g)
                    && devs.get(g).is_some();
                if !ok {
                    return None;
                }
                out.push(g.clone());
            }
            Some(out)
        }
        ResourceKind::Share => {
            let [gpu] = gpus else { return None };
            let (_, units) = units_by_gpu(devs, req)
                .into_iter()
                .find(|(u, _)| *u == gpu.as_str())?;
            if units.len() < need {
                return None;
            }
            out.extend(units.iter().take(need).map(|d| d.id.clone()));
            Some(out)
        }
    }
}

/// Settings that shape Allocate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateOptions {
    /// MPS pipe folder, when shares are enforced through MPS (`None`: plain time-slicing, limits
    /// not enforced).
    pub mps_pipe_dir: Option<String>,
    /// Whether the agent supervises one MPS control daemon per GPU (`[mps] supervise`): a share is
    /// then handed its GPU's own folder under `mps_pipe_dir` ([`crate::mps::plan::gpu_dir`]), not
    /// `mps_pipe_dir` itself.
    pub mps_per_gpu: bool,
}

/// What one container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerGrant {
    pub envs: BTreeMap<String, String>,
    /// Fully qualified CDI device names.
    pub cdi_devices: Vec<String>,
    /// Host folders to mount read-write at the same path in the container.
    pub mounts: Vec<String>,
}

impl ContainerGrant {
    /// As the kubelet's message.
    pub fn to_pb(&self) -> dp::ContainerAllocateResponse {
        dp::ContainerAllocateResponse {
            envs: self
                .envs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mounts: self
                .mounts
                .iter()
                .map(|p| dp::Mount {
                    container_path: p.clone(),
                    host_path: p.clone(),
                    read_only: false,
                })
                .collect(),
            devices: Vec::new(),
            annotations: Default::default(),
            cdi_devices: self
                .cdi_devices
                .iter()
                .map(|n| dp::CdiDevice { name: n.clone() })
                .collect(),
        }
    }
}

/// Memory of `units` share units of a GPU with `gpu_memory_bytes`, bytes (rounded down, so the
/// shares of one GPU never sum past its memory).
pub fn share_memory_bytes(gpu_memory_bytes: u64, units: u64) -> u64 {
    (u128::from(gpu_memory_bytes) * u128::from(units) / u128::from(SHARE_UNITS_PER_GPU)) as u64
}

/// What a container needs to use `ids` of one resource. Checks every id: known, listed once,
/// healthy, and for shares all on one GPU.
pub fn allocate(
    resource: &str,
    devs: &ResourceDevices,
    ids: &[String],
    opts: &AllocateOptions,
) -> Result<ContainerGrant, DeviceError> {
    if ids.is_empty() {
        return Err(DeviceError::EmptyRequest);
    }
    check_ids("devices_ids", ids)?;
    if ids.len() > devs.devices.len() {
        return Err(DeviceError::TooMany {
            resource: resource.to_string(),
            wanted: ids.len(),
            have: devs.devices.len(),
        });
    }
    check_unique(ids)?;
    check_known(resource, devs, ids)?;
    let mut chosen: Vec<&Device> = ids.iter().filter_map(|id| devs.get(id)).collect();
    if let Some(d) = chosen.iter().find(|d| !d.healthy) {
        return Err(DeviceError::Unhealthy(d.id.clone()));
    }
    chosen.sort_by(|a, b| (a.gpu_index, &a.id).cmp(&(b.gpu_index, &b.id)));
    let mut grant = ContainerGrant::default();
    let visible: Vec<String> = match devs.kind {
        ResourceKind::Gpu => chosen.iter().map(|d| d.gpu_uuid.clone()).collect(),
        ResourceKind::Mig { .. } => chosen
            .iter()
            .filter_map(|d| match &d.target {
                Target::Mig { mig_uuid, .. } => Some(mig_uuid.clone()),
                _ => None,
            })
            .collect(),
        ResourceKind::Share => {
            let gpus: BTreeSet<&str> = chosen.iter().map(|d| d.gpu_uuid.as_str()).collect();
            if gpus.len() != 1 {
                return Err(DeviceError::SpansGpus(gpus.len()));
            }
            let units = chosen.len() as u64;
            let memory = share_memory_bytes(chosen[0].gpu_memory_bytes, units);
            grant
                .envs
                .insert("GREENSLICE_SHARE_PERCENT".into(), units.to_string());
            grant
                .envs
                .insert("GREENSLICE_SHARE_MEMORY_BYTES".into(), memory.to_string());
            if let Some(pipe) = &opts.mps_pipe_dir {
                grant.envs.insert(
                    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
                    units.to_string(),
                );
                // Device 0 is the one GPU the container sees.
                grant.envs.insert(
                    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                    format!("0={}M", memory >> 20),
                );
                let pipe = if opts.mps_per_gpu {
                    crate::mps::plan::gpu_dir(std::path::Path::new(pipe), &chosen[0].gpu_uuid)
                        .to_string_lossy()
                        .into_owned()
                } else {
                    pipe.clone()
                };
                grant
                    .envs
                    .insert("CUDA_MPS_PIPE_DIRECTORY".into(), pipe.clone());
                grant.mounts.push(pipe);
            }
            vec![chosen[0].gpu_uuid.clone()]
        }
    };
    grant
        .envs
        .insert("NVIDIA_VISIBLE_DEVICES".into(), visible.join(","));
    grant.cdi_devices = visible.iter().map(|u| format!("{CDI_KIND}={u}")).collect();
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenslice_core::gpu::GpuModel;
    use greenslice_core::inventory::{MigInstance, Share};

    fn gpu(index: u32, mig: bool) -> Gpu {
        Gpu {
            uuid: format!("GPU-0000000{index}-0000-0000-0000-000000000000"),
            index,
            model: GpuModel::H100Sxm5_80Gb,
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: mig,
            pci_bus_id: String::new(),
            power_limit_mw: 0,
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        }
    }

    fn mig(g: &mut Gpu, profile: &str, start: u8, size: u8, owned: bool) {
        let gi = g.mig_instances.len() as u32 + 1;
        g.mig_instances.push(MigInstance {
            gpu_instance_id: gi,
            profile: profile.into(),
            start,
            size,
            mig_uuid: format!("MIG-{}-{gi}", g.index),
            slice_id: owned.then(|| "s-1".to_string()),
        });
    }

    fn node() -> Vec<Gpu> {
        let mut g0 = gpu(0, true);
        mig(&mut g0, "3g.40gb", 0, 4, false);
        mig(&mut g0, "1g.10gb+me", 4, 1, false);
        mig(&mut g0, "1g.10gb", 6, 1, true);
        vec![
            g0,
            gpu(1, false),
            gpu(2, false),
            gpu(3, false),
            gpu(4, false),
        ]
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builds_one_resource_per_kind_and_profile() {
        let (t, w) = DeviceTable::build(&node(), &[3, 4]);
        assert!(w.is_empty(), "{w:?}");
        let names: Vec<&str> = t.resources().collect();
        assert_eq!(
            names,
            [
                "greenslice.io/gpu",
                "greenslice.io/gpu-share",
                "greenslice.io/mig-1g.10gb.me",
                "greenslice.io/mig-3g.40gb"
            ]
        );
        assert_eq!(t.resource(GPU_RESOURCE).unwrap().devices().len(), 2);
        assert_eq!(t.resource(SHARE_RESOURCE).unwrap().devices().len(), 200);
        // The instance owned by a greenslice slice is not offered.
        assert!(t.resource("greenslice.io/mig-1g.10gb").is_none());
        assert!(
            t.resources()
                .flat_map(|r| t.resource(r).unwrap().devices())
                .all(|d| d.id.len() <= MAX_DEVICE_ID_LEN)
        );
    }

    #[test]
    fn gpu_held_by_a_slice_or_unhealthy_is_unhealthy_for_the_kubelet() {
        let mut gpus = node();
        gpus[1].whole_slice_id = Some("s-9".into());
        gpus[3].shares.push(Share {
            slice_id: "s-8".into(),
            compute_fraction: 0.5,
            memory_bytes: 1,
        });
        gpus[0].healthy = false;
        let (t, _) = DeviceTable::build(&gpus, &[3]);
        let g = t.resource(GPU_RESOURCE).unwrap();
        assert!(!g.get(&gpus[1].uuid).unwrap().healthy);
        assert!(g.get(&gpus[2].uuid).unwrap().healthy);
        let s = t.resource(SHARE_RESOURCE).unwrap();
        assert!(s.devices().iter().all(|d| !d.healthy));
        let m = t.resource("greenslice.io/mig-3g.40gb").unwrap();
        assert_eq!(m.to_pb()[0].health, "Unhealthy");
    }

    #[test]
    fn warns_about_share_gpus_that_cannot_share() {
        let (_, w) = DeviceTable::build(&node(), &[0, 9]);
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn share_units_stay_on_the_tightest_gpu() {
        let gpus = node();
        let (t, _) = DeviceTable::build(&gpus, &[3, 4]);
        let s = t.resource(SHARE_RESOURCE).unwrap();
        // GPU 3 has 60 free units, GPU 4 has 30: a request for 25 goes on GPU 4 (best fit).
        let mut avail: Vec<String> = (40..100).map(|u| share_unit_id(&gpus[3].uuid, u)).collect();
        avail.extend((70..100).map(|u| share_unit_id(&gpus[4].uuid, u)));
        let req = check_preferred(SHARE_RESOURCE, s, &avail, &[], 25).unwrap();
        let got = choose_local(s, &req).unwrap();
        assert_eq!(got.len(), 25);
        assert!(got.iter().all(|id| id.starts_with(&gpus[4].uuid)));
        // 50 units only fit on GPU 3.
        let req = check_preferred(SHARE_RESOURCE, s, &avail, &[], 50).unwrap();
        let got = choose_local(s, &req).unwrap();
        assert!(got.iter().all(|id| id.starts_with(&gpus[3].uuid)));
        // 70 units fit nowhere.
        let req = check_preferred(SHARE_RESOURCE, s, &avail, &[], 70).unwrap();
        assert_eq!(
            choose_local(s, &req),
            Err(DeviceError::NoSingleGpu {
                wanted: 70,
                largest: 60
            })
        );
    }

    #[test]
    fn must_include_units_pick_the_gpu() {
        let gpus = node();
        let (t, _) = DeviceTable::build(&gpus, &[3, 4]);
        let s = t.resource(SHARE_RESOURCE).unwrap();
        let mut avail: Vec<String> = (0..100).map(|u| share_unit_id(&gpus[3].uuid, u)).collect();
        avail.extend((90..100).map(|u| share_unit_id(&gpus[4].uuid, u)));
        let must = vec![share_unit_id(&gpus[3].uuid, 7)];
        let req = check_preferred(SHARE_RESOURCE, s, &avail, &must, 10).unwrap();
        let got = choose_local(s, &req).unwrap();
        assert_eq!(got[0], must[0]);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|id| id.starts_with(&gpus[3].uuid)));
        assert!(choose_request("n", SHARE_RESOURCE, s, &req).is_none());
    }

    #[test]
    fn whole_gpus_honour_must_include() {
        let gpus = node();
        let (t, _) = DeviceTable::build(&gpus, &[]);
        let g = t.resource(GPU_RESOURCE).unwrap();
        let avail = ids(&[&gpus[1].uuid, &gpus[2].uuid, &gpus[3].uuid]);
        let must = ids(&[&gpus[3].uuid]);
        let req = check_preferred(GPU_RESOURCE, g, &avail, &must, 2).unwrap();
        assert_eq!(
            choose_local(g, &req).unwrap(),
            ids(&[&gpus[3].uuid, &gpus[1].uuid])
        );
        // The controller's choice is used when it fits, refused when it does not.
        let c = choose_request("n", GPU_RESOURCE, g, &req).unwrap();
        assert_eq!(c.candidates.len(), 2);
        assert_eq!(
            choose_from_gpus(g, &req, &ids(&[&gpus[2].uuid])).unwrap(),
            ids(&[&gpus[3].uuid, &gpus[2].uuid])
        );
        assert!(choose_from_gpus(g, &req, &ids(&[&gpus[3].uuid])).is_none());
        assert!(choose_from_gpus(g, &req, &ids(&[&gpus[4].uuid])).is_none());
        assert!(choose_from_gpus(g, &req, &ids(&[&gpus[1].uuid, &gpus[2].uuid])).is_none());
    }

    #[test]
    fn bad_preferred_requests_are_errors() {
        let gpus = node();
        let (t, _) = DeviceTable::build(&gpus, &[]);
        let g = t.resource(GPU_RESOURCE).unwrap();
        let avail = ids(&[&gpus[1].uuid, &gpus[2].uuid]);
        assert_eq!(
            check_preferred(GPU_RESOURCE, g, &avail, &[], 0),
            Err(DeviceError::BadSize(0))
        );
        assert!(matches!(
            check_preferred(GPU_RESOURCE, g, &avail, &[], 3),
            Err(DeviceError::TooMany {
                wanted: 3,
                have: 2,
                ..
            })
        ));
        assert!(matches!(
            check_preferred(GPU_RESOURCE, g, &ids(&["GPU-nope"]), &[], 1),
            Err(DeviceError::UnknownDevice { .. })
        ));
        assert!(matches!(
            check_preferred(GPU_RESOURCE, g, &avail, &avail, 1),
            Err(DeviceError::MustExceedsSize { .. })
        ));
        let twice = ids(&[&gpus[1].uuid, &gpus[1].uuid]);
        assert!(matches!(
            check_preferred(GPU_RESOURCE, g, &twice, &[], 1),
            Err(DeviceError::Duplicate(_))
        ));
    }

    #[test]
    fn allocate_gives_uuids_cdi_names_and_mps_limits() {
        let gpus = node();
        let (t, _) = DeviceTable::build(&gpus, &[3]);
        let opts = AllocateOptions {
            mps_pipe_dir: Some("/run/nvidia-mps".into()),
            mps_per_gpu: false,
        };
        let g = t.resource(GPU_RESOURCE).unwrap();
        let grant = allocate(
            GPU_RESOURCE,
            g,
            &ids(&[&gpus[2].uuid, &gpus[1].uuid]),
            &opts,
        )
        .unwrap();
        assert_eq!(
            grant.envs["NVIDIA_VISIBLE_DEVICES"],
            format!("{},{}", gpus[1].uuid, gpus[2].uuid)
        );
        assert_eq!(
            grant.cdi_devices[0],
            format!("nvidia.com/gpu={}", gpus[1].uuid)
        );
        assert!(grant.mounts.is_empty());

        let m = t.resource("greenslice.io/mig-3g.40gb").unwrap();
        let grant = allocate("m", m, &ids(&["MIG-0-1"]), &opts).unwrap();
        assert_eq!(grant.envs["NVIDIA_VISIBLE_DEVICES"], "MIG-0-1");
        assert_eq!(grant.cdi_devices, ["nvidia.com/gpu=MIG-0-1"]);

        let s = t.resource(SHARE_RESOURCE).unwrap();
        let units: Vec<String> = (0..7).map(|u| share_unit_id(&gpus[3].uuid, u)).collect();
        let grant = allocate(SHARE_RESOURCE, s, &units, &opts).unwrap();
        assert_eq!(grant.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "7");
        // 7% of 80 GiB = 5734.4 MiB, rounded down.
        assert_eq!(grant.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=5734M");
        assert_eq!(grant.envs["CUDA_MPS_PIPE_DIRECTORY"], "/run/nvidia-mps");
        assert_eq!(grant.envs["NVIDIA_VISIBLE_DEVICES"], gpus[3].uuid);
        assert_eq!(grant.mounts, ["/run/nvidia-mps"]);
        // Supervised: the GPU's own daemon folder, mounted, not the parent.
        let per_gpu = AllocateOptions {
            mps_per_gpu: true,
            ..opts.clone()
        };
        let own = format!("/run/nvidia-mps/{}", gpus[3].uuid);
        let grant = allocate(SHARE_RESOURCE, s, &units, &per_gpu).unwrap();
        assert_eq!(grant.envs["CUDA_MPS_PIPE_DIRECTORY"], own);
        assert_eq!(grant.mounts, [own]);
        assert_eq!(grant.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "7");
        let plain = allocate(
            SHARE_RESOURCE,
            s,
            &units,
            &AllocateOptions {
                mps_pipe_dir: None,
                mps_per_gpu: false,
            },
        )
        .unwrap();
        assert!(!plain.envs.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    }

    #[test]
    fn bad_allocate_requests_are_errors() {
        let mut gpus = node();
        gpus[2].healthy = false;
        let (t, _) = DeviceTable::build(&gpus, &[3, 4]);
        let opts = AllocateOptions {
            mps_pipe_dir: None,
            mps_per_gpu: false,
        };
        let g = t.resource(GPU_RESOURCE).unwrap();
        assert_eq!(
            allocate(GPU_RESOURCE, g, &[], &opts),
            Err(DeviceError::EmptyRequest)
        );
        // Ids past the limits are refused before any lookup, naming the field and the limit.
        let e = allocate(GPU_RESOURCE, g, &ids(&[&"x".repeat(300)]), &opts).unwrap_err();
        assert!(matches!(e, DeviceError::Limit(_)), "{e}");
        assert!(e.to_string().contains("devices_ids[0]") && e.to_string().contains("63"));
        let many: Vec<String> = (0..=limits::MAX_DEVICES_PER_REQUEST)
            .map(|i| i.to_string())
            .collect();
        assert!(matches!(
            allocate(GPU_RESOURCE, g, &many, &opts),
            Err(DeviceError::Limit(_))
        ));
        assert!(matches!(
            check_preferred(GPU_RESOURCE, g, &many, &[], 1),
            Err(DeviceError::Limit(_))
        ));
        assert!(matches!(
            allocate(GPU_RESOURCE, g, &ids(&["GPU-x"]), &opts),
            Err(DeviceError::UnknownDevice { .. })
        ));
        assert!(matches!(
            allocate(
                GPU_RESOURCE,
                g,
                &ids(&[&gpus[1].uuid, &gpus[2].uuid, "a"]),
                &opts
            ),
            Err(DeviceError::TooMany { .. })
        ));
        assert_eq!(
            allocate(GPU_RESOURCE, g, &ids(&[&gpus[2].uuid]), &opts),
            Err(DeviceError::Unhealthy(gpus[2].uuid.clone()))
        );
        let s = t.resource(SHARE_RESOURCE).unwrap();
        let split = vec![
            share_unit_id(&gpus[3].uuid, 0),
            share_unit_id(&gpus[4].uuid, 0),
        ];
        assert_eq!(
            allocate(SHARE_RESOURCE, s, &split, &opts),
            Err(DeviceError::SpansGpus(2))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever device ids the kubelet sends (real ones, repeats, garbage, control characters,
        /// ids past the length limit, any size), every resource's checks answer Ok or an error,
        /// never a panic, and an Ok answer names only the resource's own devices.
        #[test]
        fn kubelet_device_requests_never_panic(
            picks in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Strategy::prop_map(0usize..512, Ok),
                    proptest::strategy::Strategy::prop_map(".{0,80}", Err),
                ],
                0..12,
            ),
            size in proptest::prelude::any::<i32>(),
            must_n in 0usize..3,
        ) {
            use proptest::prop_assert;
            let (t, _) = DeviceTable::build(&node(), &[3, 4]);
            let opts = AllocateOptions { mps_pipe_dir: Some("/tmp/mps".into()), mps_per_gpu: false };
            for r in t.resources().map(str::to_string).collect::<Vec<_>>() {
                let devs = t.resource(&r).unwrap();
                let ids: Vec<String> = picks
                    .iter()
                    .map(|p| match p {
                        Ok(i) => devs.devices()[i % devs.devices().len()].id.clone(),
                        Err(s) => s.clone(),
                    })
                    .collect();
                let must = &ids[..must_n.min(ids.len())];
                if let Ok(req) = check_preferred(&r, devs, &ids, must, size) {
                    prop_assert!(req.candidates.iter().all(|id| devs.get(id).is_some()));
                    if let Ok(chosen) = choose_local(devs, &req) {
                        prop_assert!(chosen.iter().all(|id| devs.get(id).is_some()));
                    }
                }
                if allocate(&r, devs, &ids, &opts).is_ok() {
                    prop_assert!(ids.iter().all(|id| devs.get(id).is_some()));
                }
            }
        }
    }
}
