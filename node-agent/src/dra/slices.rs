//! The node's ResourceSlices (`resource.k8s.io/v1`) for driver [`DRIVER`]: what the scheduler may
//! allocate on this node, built from the inventory alone (pure; [`super::publish`] writes them).
//!
//! # What is published
//! One pool per node, named after the node. Device names are [`DeviceRef`]'s.
//! - A non-MIG GPU: the whole GPU, `gpu-<i>`. With consumable capacity on and the GPU listed in
//!   `share_gpus`, also `gpu-<i>-share`: `allowMultipleAllocations` with consumable capacities
//!   [`CAPACITY_COMPUTE`] (milli-GPU, 1000 = the GPU) and [`CAPACITY_MEMORY`] (bytes), each with a
//!   request policy ([`share_policy`]). The whole GPU and its share device exclude each other
//!   through the GPU's counter set: both consume all of it. The scheduler charges an
//!   `allowMultipleAllocations` device's counters once, when its first share is allocated, not per
//!   share (kubernetes issue 134100, fixed with PRs 139040 and 140437 in 2026), so any number of
//!   shares coexist, never with the whole GPU. Without partitionable devices there are no counters:
//!   a GPU in `share_gpus` then offers only its share device, as the device plugin offers such a
//!   GPU only as share units.
//! - A GPU in MIG mode, partitionable devices on (KEP-4815): every legal placement of every profile
//!   (`gpu-<i>-mig-<profile>-<start>`, [`greenslice_core::mig`]'s tables) as a device that consumes
//!   from the GPU's counter set `gpu-<i>-counters`: one counter per memory slice it covers
//!   (`memory-slice-<k>`, value 1), its compute slices (`compute-slices`, the GPU's 7 or 4) and,
//!   for `+me` profiles, `media-engines` (1). Those three counters say exactly what the MIG rules
//!   say: placements may not overlap, compute slices do not exceed the GPU's, one `+me` per GPU;
//!   each profile's instance limit follows from them. The scheduler can therefore pick any
//!   placement; the agent creates the instance when the claim is prepared. This is how NVIDIA's DRA
//!   driver models dynamic MIG too (a counter per memory slice, one counter set per GPU).
//! - A GPU in MIG mode, partitionable devices off: its existing MIG instances as plain devices.
//!
//! Withheld: GPUs and MIG instances held by greenslice slices that are not DRA's own (slices made
//! through the tenant API, the device plugin's pods: [`SliceOptions::dra_slices`] names DRA's). A
//! MIG GPU with such instances publishes only the placements that fit beside them, and its counter
//! set lacks what they hold. Unhealthy GPUs are not published.
//!
//! # Attributes and capacities
//! Unqualified names are the driver's (`device.attributes["gpu.greenslice.io"].<name>` in CEL):
//! `type` (`"gpu"`, `"share"`, `"mig"`), `index` (NVML index), `uuid` (the GPU's), `model`
//! (greenslice's model name, e.g. `H100-SXM5-80GB`, which serves as the product name); MIG devices
//! add `profile` (`"3g.40gb"`), `migStart`, `memorySlices`, `computeSlices`.
//! `resource.kubernetes.io/pciBusID` (the standard attribute, extended BDF `0000:3b:00.0`) where
//! the inventory's bus id is one. NUMA is not in the inventory, so not published. Every device has
//! capacities `memory` (bytes) and `compute` (milli-GPU): memory is a capacity rather than an
//! attribute so CEL compares it as a quantity
//! (`device.capacity["gpu.greenslice.io"].memory.compareTo(quantity("40Gi")) >= 0`).
//!
//! # Limits and layout (v1.35+)
//! A ResourceSlice holds devices or shared counters, never both (since v1.35; before, with
//! partitionable devices alpha since v1.33, one slice could hold both): counter sets go in their
//! own slice(s), at most [`MAX_COUNTER_SETS`] per slice, [`MAX_COUNTERS`] counters each. Devices go
//! in slices of at most [`MAX_DEVICES_WITH_COUNTERS`] when any consumes counters, else
//! [`MAX_DEVICES`]; a GPU's devices stay in one slice. Every slice of the pool carries the same
//! generation and `resourceSliceCount`. [`validate`] checks all of it.
//!
//! # Steering
//! The scheduler takes the first feasible device in the published order. [`SliceOptions::steer`]
//! narrows what it can take to what greenslice's fragmentation-aware placement would choose on the
//! current layout ([`Steering`]): per GPU and profile the best start ([`mig::best_start`]), or per
//! profile the best placement of the whole node ([`mig::placement_score`]); placements DRA already
//! holds, and those ResourceClaims have allocated ([`SliceOptions::allocated`], not yet prepared),
//! stay published. The layout is republished after every prepare, so the next choice is made on the
//! new layout; until then a steered GPU offers no second placement of that profile. See
//! docs/KUBERNETES.md ("DRA", "Placement keeps its say") for the measurement.

use std::collections::{BTreeMap, BTreeSet};

use greenslice_core::inventory::Gpu;
use greenslice_core::mig::{self, Placed};
use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Counter, CounterSet, Device,
    DeviceAttribute, DeviceCapacity, DeviceCounterConsumption, ResourcePool, ResourceSlice,
    ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use thiserror::Error;

use super::devices::{CAPACITY_COMPUTE, CAPACITY_MEMORY, DRIVER, DeviceRef, MAX_NAME_LEN};
use super::quantity;

/// Most devices in one ResourceSlice.
pub const MAX_DEVICES: usize = 128;
/// Most devices in one ResourceSlice when any of them consumes counters or has taints.
pub const MAX_DEVICES_WITH_COUNTERS: usize = 64;
/// Most counter sets in one ResourceSlice.
pub const MAX_COUNTER_SETS: usize = 8;
/// Most counters in one counter set, and in one device's consumption of a set.
pub const MAX_COUNTERS: usize = 32;
/// Most counter consumptions (counter sets) of one device.
pub const MAX_CONSUMPTIONS_PER_DEVICE: usize = 2;
/// Most attributes and capacities of one device, together.
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// Longest string attribute value.
pub const MAX_ATTRIBUTE_STRING: usize = 64;
/// Most entries of a request policy's `validValues`.
pub const MAX_VALID_VALUES: usize = 10;
/// Longest DNS subdomain (object names, driver, each part of a pool name).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// The standard attribute of a PCI device's address (extended BDF).
pub const ATTR_PCI_BUS_ID: &str = "resource.kubernetes.io/pciBusID";
/// Counter of a memory slice `<k>` in a MIG GPU's counter set.
pub const COUNTER_MEMORY_SLICE_PREFIX: &str = "memory-slice-";
/// Counter of a MIG GPU's compute slices.
pub const COUNTER_COMPUTE_SLICES: &str = "compute-slices";
/// Counter of a MIG GPU's media engines (one `+me` profile at a time).
pub const COUNTER_MEDIA_ENGINES: &str = "media-engines";
/// Counter of a non-MIG GPU: what its whole device and its share device both take all of.
pub const COUNTER_GPU: &str = "gpu";

/// Share request policy: compute step and minimum, milli-GPU (1% of the GPU).
pub const SHARE_COMPUTE_STEP: u64 = 10;
/// Share request policy: compute a request that names none gets, milli-GPU.
pub const SHARE_COMPUTE_DEFAULT: u64 = 100;
/// Share request policy: memory step and minimum, bytes.
pub const SHARE_MEMORY_STEP: u64 = 256 << 20;

/// What to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceOptions {
    /// NVML indices of non-MIG GPUs that offer a share device (`[dra] share_gpus`).
    pub share_gpus: Vec<u32>,
    /// Publish MIG placements as partitionable devices with counters (KEP-4815); off: existing
    /// MIG instances only, and no counters anywhere (`[dra] partitionable`).
    pub partitionable: bool,
    /// Publish share devices with consumable capacity (KEP-5075) (`[dra] consumable_capacity`).
    pub consumable_capacity: bool,
    /// Ids of the greenslice slices DRA claims hold; devices held by any other slice are withheld.
    pub dra_slices: BTreeSet<String>,
    /// Which MIG placements to publish (see the module docs).
    pub steer: Steering,
    /// Device names that ResourceClaims have allocated (the publisher reads them when steering):
    /// steering never drops them, or the scheduler would stop counting what they consume.
    pub allocated: BTreeSet<String>,
}

/// How the published MIG placements steer the scheduler, which takes the first feasible device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Steering {
    /// Every legal placement (the scheduler's first fit: the lowest GPU index and start).
    #[default]
    Off,
    /// Per GPU and profile, only the placement greenslice's placement would choose on that GPU
    /// ([`mig::best_start`]).
    PerGpu,
    /// Per profile, only the one placement on the whole node greenslice's placement would choose
    /// (the best [`mig::placement_score`] over every GPU: it also packs GPUs already in use).
    Node,
}

/// Why no slices can be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SliceError {
    #[error("node name {0:?} cannot name a pool (a DNS subdomain of at most 253 characters)")]
    NodeName(String),
    #[error("pool generation {0} is negative")]
    Generation(i64),
}

/// The name of the `index`-th ResourceSlice of `node`'s pool.
pub fn slice_name(node: &str, index: usize) -> String {
    format!("{node}-{}-{index}", DRIVER.replace('.', "-"))
}

/// The counter set of GPU `gpu`.
pub fn counter_set_name(gpu: u32) -> String {
    format!("gpu-{gpu}-counters")
}

/// The share device's request policies: compute from 10 milli-GPU in steps of 10 (default 100),
/// memory from 256 MiB in steps of 256 MiB (default the same fraction of memory as the compute
/// default, 10%), each at most the GPU. Min equals step, so "a multiple of step" reads the same
/// whether counted from zero or from min.
pub fn share_policy(capacity: u64, step: u64, default: u64) -> Option<CapacityRequestPolicy> {
    let max = capacity / step * step;
    if max < step {
        return None;
    }
    let default = (default / step * step).clamp(step, max);
    Some(CapacityRequestPolicy {
        default: Some(q(default, true)),
        valid_range: Some(CapacityRequestPolicyRange {
            min: q(step, true),
            max: Some(q(max, true)),
            step: Some(q(step, true)),
        }),
        valid_values: None,
    })
}

fn q(v: u64, binary: bool) -> Quantity {
    Quantity(quantity::format(v, binary))
}

fn s_attr(v: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(v.into()),
        ..Default::default()
    }
}

fn i_attr(v: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(v),
        ..Default::default()
    }
}

/// A PCI bus id in the standard attribute's form (`0000:3b:00.0`): NVML writes an 8-digit domain
/// (`00000000:3B:00.0`). `None` when it is not a bus id.
pub fn pci_bus_id(raw: &str) -> Option<String> {
    let lower = raw.trim().to_ascii_lowercase();
    let (domain, rest) = lower.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    // A 32-bit domain fits the 4-digit form when its upper half is zero.
    let domain = match domain.len() {
        8 if domain.starts_with("0000") => &domain[4..],
        _ => domain,
    };
    let ok = hex(domain, 4)
        && hex(bus, 2)
        && hex(dev, 2)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7')
        && u8::from_str_radix(dev, 16).is_ok_and(|d| d < 32);
    ok.then(|| format!("{domain}:{bus}:{dev}.{func}"))
}

fn common_attributes(g: &Gpu, kind: &str) -> BTreeMap<String, DeviceAttribute> {
    let mut a = BTreeMap::new();
    a.insert("type".to_string(), s_attr(kind));
    a.insert("index".to_string(), i_attr(i64::from(g.index)));
    if !g.uuid.is_empty() && g.uuid.len() <= MAX_ATTRIBUTE_STRING {
        a.insert("uuid".to_string(), s_attr(g.uuid.clone()));
    }
    let model = g.model.name();
    if !model.is_empty() && model.len() <= MAX_ATTRIBUTE_STRING {
        a.insert("model".to_string(), s_attr(model));
    }
    if let Some(bdf) = pci_bus_id(&g.pci_bus_id) {
        a.insert(ATTR_PCI_BUS_ID.to_string(), s_attr(bdf));
    }
    a
}

fn capacities(memory: u64, compute_milli: u64) -> BTreeMap<String, DeviceCapacity> {
    BTreeMap::from([
        (
            CAPACITY_MEMORY.to_string(),
            DeviceCapacity {
                value: q(memory, true),
                request_policy: None,
            },
        ),
        (
            CAPACITY_COMPUTE.to_string(),
            DeviceCapacity {
                value: q(compute_milli, false),
                request_policy: None,
            },
        ),
    ])
}

fn counters(items: impl IntoIterator<Item = (String, u64)>) -> BTreeMap<String, Counter> {
    items
        .into_iter()
        .map(|(k, v)| (k, Counter { value: q(v, false) }))
        .collect()
}

fn consumes(gpu: u32, c: BTreeMap<String, Counter>) -> Option<Vec<DeviceCounterConsumption>> {
    Some(vec![DeviceCounterConsumption {
        counter_set: counter_set_name(gpu),
        counters: c,
        compatibility_groups: None,
    }])
}

/// Whether a slice id is held outside DRA.
fn foreign(id: &Option<String>, opts: &SliceOptions) -> bool {
    id.as_ref().is_some_and(|s| !opts.dra_slices.contains(s))
}

/// What one slice holds: counter sets or devices.
type SliceContent = (Option<Vec<CounterSet>>, Option<Vec<Device>>);

/// The devices of one GPU and its counter set (if any).
struct GpuDevices {
    devices: Vec<Device>,
    counters: Option<CounterSet>,
}

fn non_mig_gpu(g: &Gpu, opts: &SliceOptions) -> GpuDevices {
    let held = foreign(&g.whole_slice_id, opts)
        || g.shares
            .iter()
            .any(|s| !opts.dra_slices.contains(&s.slice_id));
    if held {
        return GpuDevices {
            devices: Vec::new(),
            counters: None,
        };
    }
    let share = opts.consumable_capacity && opts.share_gpus.contains(&g.index);
    // Both only when counters can keep them apart.
    let whole = !share || opts.partitionable;
    let use_counters = share && whole;
    let gpu_counters = || counters([(COUNTER_GPU.to_string(), 1)]);
    let mut devices = Vec::new();
    if whole {
        devices.push(Device {
            name: DeviceRef::Whole { gpu: g.index }.name(),
            attributes: Some(common_attributes(g, "gpu")),
            capacity: Some(capacities(g.memory_bytes, 1000)),
            consumes_counters: use_counters
                .then(|| consumes(g.index, gpu_counters()))
                .flatten(),
            ..Default::default()
        });
    }
    if share {
        let mut caps = capacities(g.memory_bytes, 1000);
        if let Some(c) = caps.get_mut(CAPACITY_COMPUTE) {
            c.request_policy = share_policy(1000, SHARE_COMPUTE_STEP, SHARE_COMPUTE_DEFAULT);
        }
        if let Some(c) = caps.get_mut(CAPACITY_MEMORY) {
            c.request_policy = share_policy(
                g.memory_bytes,
                SHARE_MEMORY_STEP,
                u64::try_from(
                    u128::from(g.memory_bytes) * u128::from(SHARE_COMPUTE_DEFAULT) / 1000,
                )
                .unwrap_or(u64::MAX),
            );
        }
        devices.push(Device {
            name: DeviceRef::Share { gpu: g.index }.name(),
            attributes: Some(common_attributes(g, "share")),
            capacity: Some(caps),
            allow_multiple_allocations: Some(true),
            consumes_counters: use_counters
                .then(|| consumes(g.index, gpu_counters()))
                .flatten(),
            ..Default::default()
        });
    }
    GpuDevices {
        devices,
        counters: use_counters.then(|| CounterSet {
            name: counter_set_name(g.index),
            counters: gpu_counters(),
        }),
    }
}

fn mig_device(
    g: &Gpu,
    p: &mig::MigProfile,
    start: u8,
    counters: Option<BTreeMap<String, Counter>>,
) -> Device {
    let mut a = common_attributes(g, "mig");
    a.insert("profile".to_string(), s_attr(p.name));
    a.insert("migStart".to_string(), i_attr(i64::from(start)));
    a.insert(
        "memorySlices".to_string(),
        i_attr(i64::from(p.memory_slices)),
    );
    a.insert(
        "computeSlices".to_string(),
        i_attr(i64::from(p.compute_slices)),
    );
    Device {
        name: DeviceRef::Mig {
            gpu: g.index,
            profile: p.name.to_string(),
            start,
        }
        .name(),
        attributes: Some(a),
        capacity: Some(capacities(
            p.memory_bytes(g.memory_bytes),
            u64::from(p.compute_milli()),
        )),
        consumes_counters: counters.and_then(|c| consumes(g.index, c)),
        ..Default::default()
    }
}

/// The layout steering scores on: every instance that exists except unowned ones, which a
/// prepare may replace.
fn occupied(g: &Gpu) -> Vec<Placed> {
    g.mig_instances
        .iter()
        .filter(|m| m.slice_id.is_some())
        .map(|m| Placed {
            profile: m.profile.clone(),
            start: m.start,
        })
        .collect()
}

/// [`Steering::Node`]: keeps, per profile, the one best placement of the node (and every
/// placement DRA holds).
fn steer_node(gpus: &[&Gpu], per_gpu: &mut [GpuDevices], opts: &SliceOptions) {
    // profile -> (score, gpu index, start) of the best free placement.
    let mut best: BTreeMap<String, (i64, std::cmp::Reverse<u32>, std::cmp::Reverse<u8>)> =
        BTreeMap::new();
    for (g, d) in gpus.iter().zip(per_gpu.iter()) {
        if !g.mig_enabled {
            continue;
        }
        let layout = occupied(g);
        for dev in &d.devices {
            let Ok(DeviceRef::Mig { profile, start, .. }) = DeviceRef::parse(&dev.name) else {
                continue;
            };
            let Some(score) = mig::placement_score(&g.model, &layout, &profile, start) else {
                continue;
            };
            let cand = (score, std::cmp::Reverse(g.index), std::cmp::Reverse(start));
            let e = best.entry(profile).or_insert(cand);
            if cand > *e {
                *e = cand;
            }
        }
    }
    for (g, d) in gpus.iter().zip(per_gpu.iter_mut()) {
        if !g.mig_enabled {
            continue;
        }
        let held: BTreeSet<(String, u8)> = g
            .mig_instances
            .iter()
            .filter(|m| {
                m.slice_id
                    .as_ref()
                    .is_some_and(|s| opts.dra_slices.contains(s))
            })
            .map(|m| (m.profile.clone(), m.start))
            .collect();
        d.devices.retain(|dev| match DeviceRef::parse(&dev.name) {
            Ok(DeviceRef::Mig { profile, start, .. }) => {
                opts.allocated.contains(&dev.name)
                    || held.contains(&(profile.clone(), start))
                    || best
                        .get(&profile)
                        .is_some_and(|&(_, gi, st)| gi.0 == g.index && st.0 == start)
            }
            _ => true,
        });
    }
}

fn mig_gpu(g: &Gpu, opts: &SliceOptions) -> GpuDevices {
    let Some(table) = mig::table(&g.model) else {
        return GpuDevices {
            devices: Vec::new(),
            counters: None,
        };
    };
    if !opts.partitionable {
        // Existing instances, as plain devices.
        let mut inst: Vec<_> = g
            .mig_instances
            .iter()
            .filter(|m| !foreign(&m.slice_id, opts))
            .collect();
        inst.sort_by_key(|m| m.start);
        let devices = inst
            .into_iter()
            .filter_map(|m| mig::profile(&g.model, &m.profile).map(|p| (m, p)))
            .map(|(m, p)| mig_device(g, p, m.start, None))
            .collect();
        return GpuDevices {
            devices,
            counters: None,
        };
    }
    // What slices outside DRA hold: placements must fit beside it, and the counters lack it.
    let held: Vec<Placed> = g
        .mig_instances
        .iter()
        .filter(|m| foreign(&m.slice_id, opts))
        .map(|m| Placed {
            profile: m.profile.clone(),
            start: m.start,
        })
        .collect();
    let held_mask = mig::used_mask(&g.model, &held);
    let held_compute = mig::used_compute(&g.model, &held);
    let held_me = held
        .iter()
        .filter_map(|h| mig::profile(&g.model, &h.profile))
        .any(|p| p.media_extension());
    let mut set = Vec::new();
    for k in 0..table.memory_slices {
        if held_mask & (1 << k) == 0 {
            set.push((format!("{COUNTER_MEMORY_SLICE_PREFIX}{k}"), 1));
        }
    }
    let free_compute = table.compute_slices.saturating_sub(held_compute);
    if free_compute > 0 {
        set.push((COUNTER_COMPUTE_SLICES.to_string(), u64::from(free_compute)));
    }
    if !held_me {
        set.push((COUNTER_MEDIA_ENGINES.to_string(), 1));
    }
    // Placements DRA holds now (instances of DRA's slices): always published, so an allocated
    // device never vanishes from the pool.
    let dra_held: BTreeSet<(String, u8)> = g
        .mig_instances
        .iter()
        .filter(|m| {
            m.slice_id
                .as_ref()
                .is_some_and(|s| opts.dra_slices.contains(s))
        })
        .map(|m| (m.profile.clone(), m.start))
        .collect();
    let occupied = occupied(g);
    let mut devices = Vec::new();
    for p in table.profiles {
        let steered =
            (opts.steer == Steering::PerGpu).then(|| mig::best_start(&g.model, &occupied, p.name));
        for &start in p.starts {
            if mig::check_create(&g.model, &held, p.name, start).is_err() {
                continue;
            }
            let mine = dra_held.contains(&(p.name.to_string(), start))
                || opts.allocated.contains(
                    &DeviceRef::Mig {
                        gpu: g.index,
                        profile: p.name.to_string(),
                        start,
                    }
                    .name(),
                );
            if let Some(best) = steered
                && best != Some(start)
                && !mine
            {
                continue;
            }
            let mut c: Vec<(String, u64)> = (start..start + p.size)
                .map(|k| (format!("{COUNTER_MEMORY_SLICE_PREFIX}{k}"), 1))
                .collect();
            c.push((
                COUNTER_COMPUTE_SLICES.to_string(),
                u64::from(p.compute_slices),
            ));
            if p.media_extension() {
                c.push((COUNTER_MEDIA_ENGINES.to_string(), 1));
            }
            devices.push(mig_device(g, p, start, Some(counters(c))));
        }
    }
    GpuDevices {
        devices,
        counters: Some(CounterSet {
            name: counter_set_name(g.index),
            counters: counters(set),
        }),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBDOMAIN_LEN
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// The node's ResourceSlices at pool generation `generation`: counter slices first, then device
/// slices, named [`slice_name`]`(node, 0..)`. A node with nothing to publish gets one empty slice,
/// so the pool (and its generation) stays visible.
pub fn build(
    node: &str,
    gpus: &[Gpu],
    generation: i64,
    opts: &SliceOptions,
) -> Result<Vec<ResourceSlice>, SliceError> {
    if !is_dns_subdomain(node) || !is_dns_subdomain(&slice_name(node, 999)) {
        return Err(SliceError::NodeName(node.to_string()));
    }
    if generation < 0 {
        return Err(SliceError::Generation(generation));
    }
    let mut sorted: Vec<&Gpu> = gpus.iter().filter(|g| g.healthy).collect();
    sorted.sort_by_key(|g| g.index);
    let mut per_gpu: Vec<GpuDevices> = sorted
        .iter()
        .map(|g| {
            if g.mig_enabled {
                mig_gpu(g, opts)
            } else {
                non_mig_gpu(g, opts)
            }
        })
        .collect();
    if opts.steer == Steering::Node {
        steer_node(&sorted, &mut per_gpu, opts);
    }

    let mut specs: Vec<SliceContent> = Vec::new();
    let sets: Vec<CounterSet> = per_gpu.iter().filter_map(|d| d.counters.clone()).collect();
    for chunk in sets.chunks(MAX_COUNTER_SETS) {
        specs.push((Some(chunk.to_vec()), None));
    }
    // Device slices: whole GPUs' device lists, packed in order.
    let mut current: Vec<Device> = Vec::new();
    for d in per_gpu.into_iter().filter(|d| !d.devices.is_empty()) {
        let with_counters = |v: &[Device]| v.iter().any(|d| d.consumes_counters.is_some());
        let limit = |v: &[Device]| {
            if with_counters(v) {
                MAX_DEVICES_WITH_COUNTERS
            } else {
                MAX_DEVICES
            }
        };
        let mut merged = current.clone();
        merged.extend(d.devices.iter().cloned());
        if merged.len() <= limit(&merged) {
            current = merged;
            continue;
        }
        if !current.is_empty() {
            specs.push((None, Some(std::mem::take(&mut current))));
        }
        // A GPU with more devices than a slice holds (none today: 25 placements at most) is split.
        let lim = limit(&d.devices);
        let mut rest = d.devices;
        while rest.len() > lim {
            let tail = rest.split_off(lim);
            specs.push((None, Some(rest)));
            rest = tail;
        }
        current = rest;
    }
    if !current.is_empty() {
        specs.push((None, Some(current)));
    }
    if specs.is_empty() {
        specs.push((None, None));
    }
    let count = specs.len() as i64;
    Ok(specs
        .into_iter()
        .enumerate()
        .map(|(i, (shared_counters, devices))| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(node, i)),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: DRIVER.to_string(),
                node_name: Some(node.to_string()),
                pool: ResourcePool {
                    name: node.to_string(),
                    generation,
                    resource_slice_count: count,
                },
                shared_counters,
                devices,
                ..Default::default()
            },
        })
        .collect())
}

/// Every device of the slices, by name.
pub fn devices(slices: &[ResourceSlice]) -> BTreeMap<String, &Device> {
    slices
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .map(|d| (d.name.clone(), d))
        .collect()
}

fn parse_q(v: &Quantity, at: &str, errs: &mut Vec<String>) -> Option<u64> {
    match quantity::parse(&v.0) {
        Ok(n) => Some(n),
        Err(e) => {
            errs.push(format!("{at}: {e}"));
            None
        }
    }
}

/// A qualified name (attribute or capacity): `[<DNS subdomain>/]<C identifier of at most 32>`.
fn is_qualified_name(s: &str) -> bool {
    let (domain, id) = match s.split_once('/') {
        Some((d, i)) => (Some(d), i),
        None => (None, s),
    };
    let id_ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    id_ok && domain.is_none_or(is_dns_subdomain)
}

fn validate_policy(at: &str, cap: u64, p: &CapacityRequestPolicy, errs: &mut Vec<String>) {
    let default = p
        .default
        .as_ref()
        .and_then(|d| parse_q(d, &format!("{at}.default"), errs));
    if let Some(d) = default
        && d > cap
    {
        errs.push(format!("{at}.default: {d} exceeds the capacity {cap}"));
    }
    if p.valid_range.is_some() && p.valid_values.is_some() {
        errs.push(format!("{at}: validRange and validValues are exclusive"));
    }
    if let Some(r) = &p.valid_range {
        let Some(d) = default else {
            errs.push(format!("{at}.default: required with validRange"));
            return;
        };
        let min = parse_q(&r.min, &format!("{at}.validRange.min"), errs).unwrap_or(0);
        if min > cap {
            errs.push(format!(
                "{at}.validRange.min: {min} exceeds the capacity {cap}"
            ));
        }
        if d < min {
            errs.push(format!("{at}.default: {d} is below validRange.min {min}"));
        }
        let max = r
            .max
            .as_ref()
            .and_then(|m| parse_q(m, &format!("{at}.validRange.max"), errs));
        if let Some(max) = max {
            if max > cap {
                errs.push(format!(
                    "{at}.validRange.max: {max} exceeds the capacity {cap}"
                ));
            }
            if min > max || d > max {
                errs.push(format!(
                    "{at}.validRange: min {min} and default {d} must not exceed max {max}"
                ));
            }
        }
        if let Some(step) = r
            .step
            .as_ref()
            .and_then(|s| parse_q(s, &format!("{at}.validRange.step"), errs))
        {
            if step == 0 {
                errs.push(format!("{at}.validRange.step: must be positive"));
            } else {
                let on_step = |v: u64| v >= min && (v - min).is_multiple_of(step);
                if !on_step(d) {
                    errs.push(format!(
                        "{at}.default: {d} is not min {min} plus a multiple of step {step}"
                    ));
                }
                if let Some(max) = max
                    && !on_step(max)
                {
                    errs.push(format!(
                        "{at}.validRange.max: {max} is not min {min} plus a multiple of step {step}"
                    ));
                }
                if min.saturating_add(step) > cap {
                    errs.push(format!(
                        "{at}.validRange: min {min} + step {step} exceeds the capacity {cap}"
                    ));
                }
            }
        }
    }
    if let Some(vv) = &p.valid_values {
        if vv.is_empty() || vv.len() > MAX_VALID_VALUES {
            errs.push(format!(
                "{at}.validValues: 1 to {MAX_VALID_VALUES} entries, not {}",
                vv.len()
            ));
        }
        let vals: Vec<u64> = vv
            .iter()
            .enumerate()
            .filter_map(|(i, v)| parse_q(v, &format!("{at}.validValues[{i}]"), errs))
            .collect();
        if vals.windows(2).any(|w| w[0] >= w[1]) {
            errs.push(format!("{at}.validValues: must be ascending and unique"));
        }
        if vals.iter().any(|&v| v > cap) {
            errs.push(format!(
                "{at}.validValues: a value exceeds the capacity {cap}"
            ));
        }
        match default {
            None => errs.push(format!("{at}.default: required with validValues")),
            Some(d) if !vals.contains(&d) => {
                errs.push(format!("{at}.default: {d} is not one of validValues"))
            }
            _ => {}
        }
    }
}

fn validate_device(at: &str, d: &Device, errs: &mut Vec<String>) {
    if !is_dns_label(&d.name) {
        errs.push(format!("{at}.name: {:?} is not a DNS label", d.name));
    }
    let attrs = d.attributes.as_ref();
    let caps = d.capacity.as_ref();
    let n = attrs.map_or(0, BTreeMap::len) + caps.map_or(0, BTreeMap::len);
    if n > MAX_ATTRIBUTES_AND_CAPACITIES {
        errs.push(format!(
            "{at}: {n} attributes and capacities, at most {MAX_ATTRIBUTES_AND_CAPACITIES}"
        ));
    }
    for (k, v) in attrs.into_iter().flatten() {
        if !is_qualified_name(k) {
            errs.push(format!("{at}.attributes[{k:?}]: not a qualified name"));
        }
        let set = [
            v.bool.is_some(),
            v.int.is_some(),
            v.string.is_some(),
            v.version.is_some(),
            v.bools.is_some(),
            v.ints.is_some(),
            v.strings.is_some(),
            v.versions.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            errs.push(format!(
                "{at}.attributes[{k:?}]: exactly one value must be set, not {set}"
            ));
        }
        if v.string
            .as_ref()
            .is_some_and(|s| s.len() > MAX_ATTRIBUTE_STRING)
        {
            errs.push(format!(
                "{at}.attributes[{k:?}]: string longer than {MAX_ATTRIBUTE_STRING}"
            ));
        }
    }
    let multi = d.allow_multiple_allocations == Some(true);
    for (k, c) in caps.into_iter().flatten() {
        let cat = format!("{at}.capacity[{k:?}]");
        if !is_qualified_name(k) {
            errs.push(format!("{cat}: not a qualified name"));
        }
        let Some(value) = parse_q(&c.value, &format!("{cat}.value"), errs) else {
            continue;
        };
        if let Some(p) = &c.request_policy {
            if !multi {
                errs.push(format!(
                    "{cat}.requestPolicy: only with allowMultipleAllocations"
                ));
            }
            validate_policy(&format!("{cat}.requestPolicy"), value, p, errs);
        }
    }
    let cc = d.consumes_counters.as_deref().unwrap_or_default();
    if cc.len() > MAX_CONSUMPTIONS_PER_DEVICE {
        errs.push(format!(
            "{at}.consumesCounters: {} entries, at most {MAX_CONSUMPTIONS_PER_DEVICE}",
            cc.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for c in cc {
        if !seen.insert(&c.counter_set) {
            errs.push(format!(
                "{at}.consumesCounters: counter set {:?} twice",
                c.counter_set
            ));
        }
        if c.counters.is_empty() || c.counters.len() > MAX_COUNTERS {
            errs.push(format!(
                "{at}.consumesCounters[{:?}]: 1 to {MAX_COUNTERS} counters, not {}",
                c.counter_set,
                c.counters.len()
            ));
        }
    }
}

/// Checks slices against the `resource.k8s.io/v1` validation rules that matter for this driver
/// (apiserver's `ValidateResourceSlice`) and the pool rules the scheduler relies on: names (DNS
/// subdomain slice names and driver, DNS-label device, counter set and counter names, pool
/// name), exactly one node selection, devices or shared counters but not both, the count limits
/// ([`MAX_DEVICES`], [`MAX_DEVICES_WITH_COUNTERS`], [`MAX_COUNTER_SETS`], [`MAX_COUNTERS`],
/// [`MAX_CONSUMPTIONS_PER_DEVICE`], [`MAX_ATTRIBUTES_AND_CAPACITIES`]), attribute values, capacity
/// request policies (only with `allowMultipleAllocations`; default within the range and on a
/// step; `validValues` sorted and holding the default), and per pool: one generation, a
/// `resourceSliceCount` equal to the slices present, device names and counter set names unique,
/// every consumed counter set and counter defined, and no device consuming more of a counter than
/// its set holds. Returns every problem found.
pub fn validate(slices: &[ResourceSlice]) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    // (driver, pool) -> slice indices.
    let mut pools: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (i, s) in slices.iter().enumerate() {
        let at = format!("slices[{i}]");
        let spec = &s.spec;
        match s.metadata.name.as_deref() {
            Some(n) if is_dns_subdomain(n) => {
                if !names.insert(n.to_string()) {
                    errs.push(format!("{at}.metadata.name: {n:?} twice"));
                }
            }
            other => errs.push(format!(
                "{at}.metadata.name: {other:?} is not a DNS subdomain"
            )),
        }
        if !is_dns_subdomain(&spec.driver) {
            errs.push(format!(
                "{at}.spec.driver: {:?} is not a DNS subdomain",
                spec.driver
            ));
        }
        let pool = &spec.pool;
        if pool.name.is_empty()
            || pool.name.len() > MAX_SUBDOMAIN_LEN
            || !pool.name.split('/').all(is_dns_subdomain)
        {
            errs.push(format!(
                "{at}.spec.pool.name: {:?} is not DNS subdomains separated by /",
                pool.name
            ));
        }
        if pool.generation < 0 {
            errs.push(format!("{at}.spec.pool.generation: negative"));
        }
        if pool.resource_slice_count <= 0 {
            errs.push(format!(
                "{at}.spec.pool.resourceSliceCount: must be positive"
            ));
        }
        let selections = [
            spec.node_name.as_ref().is_some_and(|n| !n.is_empty()),
            spec.node_selector.is_some(),
            spec.all_nodes == Some(true),
            spec.per_device_node_selection == Some(true),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if selections != 1 {
            errs.push(format!(
                "{at}.spec: exactly one of nodeName, nodeSelector, allNodes and \
                 perDeviceNodeSelection, not {selections}"
            ));
        }
        let devices = spec.devices.as_deref().unwrap_or_default();
        let sets = spec.shared_counters.as_deref().unwrap_or_default();
        if !devices.is_empty() && !sets.is_empty() {
            errs.push(format!(
                "{at}.spec: devices and sharedCounters in one slice (not allowed since v1.35)"
            ));
        }
        let limited = devices.iter().any(|d| {
            d.consumes_counters.as_ref().is_some_and(|c| !c.is_empty())
                || d.taints.as_ref().is_some_and(|t| !t.is_empty())
        });
        let limit = if limited {
            MAX_DEVICES_WITH_COUNTERS
        } else {
            MAX_DEVICES
        };
        if devices.len() > limit {
            errs.push(format!(
                "{at}.spec.devices: {} devices, at most {limit}",
                devices.len()
            ));
        }
        for (j, d) in devices.iter().enumerate() {
            validate_device(&format!("{at}.spec.devices[{j}]"), d, &mut errs);
        }
        if sets.len() > MAX_COUNTER_SETS {
            errs.push(format!(
                "{at}.spec.sharedCounters: {} sets, at most {MAX_COUNTER_SETS}",
                sets.len()
            ));
        }
        for (j, cs) in sets.iter().enumerate() {
            let cat = format!("{at}.spec.sharedCounters[{j}]");
            if !is_dns_label(&cs.name) {
                errs.push(format!("{cat}.name: {:?} is not a DNS label", cs.name));
            }
            if cs.counters.is_empty() || cs.counters.len() > MAX_COUNTERS {
                errs.push(format!(
                    "{cat}.counters: 1 to {MAX_COUNTERS}, not {}",
                    cs.counters.len()
                ));
            }
            for (k, c) in &cs.counters {
                if !is_dns_label(k) {
                    errs.push(format!("{cat}.counters[{k:?}]: not a DNS label"));
                }
                parse_q(&c.value, &format!("{cat}.counters[{k:?}]"), &mut errs);
            }
        }
        pools
            .entry((spec.driver.clone(), pool.name.clone()))
            .or_default()
            .push(i);
    }
    for ((driver, pool), idx) in &pools {
        let at = format!("pool {driver}/{pool}");
        let gens: BTreeSet<i64> = idx
            .iter()
            .map(|&i| slices[i].spec.pool.generation)
            .collect();
        if gens.len() > 1 {
            errs.push(format!("{at}: slices of several generations {gens:?}"));
        }
        for &i in idx {
            let c = slices[i].spec.pool.resource_slice_count;
            if c != idx.len() as i64 {
                errs.push(format!(
                    "{at}: resourceSliceCount {c} but {} slices",
                    idx.len()
                ));
                break;
            }
        }
        let mut sets: BTreeMap<&str, BTreeMap<&str, Option<u64>>> = BTreeMap::new();
        for &i in idx {
            for cs in slices[i].spec.shared_counters.iter().flatten() {
                let counters = cs
                    .counters
                    .iter()
                    .map(|(k, c)| (k.as_str(), quantity::parse(&c.value.0).ok()))
                    .collect();
                if sets.insert(cs.name.as_str(), counters).is_some() {
                    errs.push(format!("{at}: counter set {:?} twice", cs.name));
                }
            }
        }
        let mut device_names = BTreeSet::new();
        for &i in idx {
            for d in slices[i].spec.devices.iter().flatten() {
                if !device_names.insert(d.name.as_str()) {
                    errs.push(format!("{at}: device {:?} twice", d.name));
                }
                for c in d.consumes_counters.iter().flatten() {
                    let Some(set) = sets.get(c.counter_set.as_str()) else {
                        errs.push(format!(
                            "{at}: device {:?} consumes from counter set {:?}, which the pool lacks",
                            d.name, c.counter_set
                        ));
                        continue;
                    };
                    for (k, v) in &c.counters {
                        let want = parse_q(
                            &v.value,
                            &format!("{at}: device {:?} counter {k:?}", d.name),
                            &mut errs,
                        );
                        match set.get(k.as_str()) {
                            None => errs.push(format!(
                                "{at}: device {:?} consumes counter {k:?}, which set {:?} lacks",
                                d.name, c.counter_set
                            )),
                            Some(have) => {
                                if let (Some(w), Some(h)) = (want, *have)
                                    && w > h
                                {
                                    errs.push(format!(
                                        "{at}: device {:?} consumes {w} of {:?}/{k}, which holds {h}",
                                        d.name, c.counter_set
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenslice_core::gpu::GpuModel;
    use greenslice_core::inventory::{MigInstance, Share};
    use rand::{Rng, SeedableRng};

    fn gpu(index: u32, model: GpuModel, mig: bool) -> Gpu {
        Gpu {
            uuid: format!("GPU-{index:08x}-1111-2222-3333-444444444444"),
            index,
            memory_bytes: model.memory_bytes(),
            model,
            mig_capable: true,
            mig_enabled: mig,
            pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index * 0x10),
            power_limit_mw: 700_000,
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        }
    }

    fn instance(profile: &str, start: u8, slice: Option<&str>) -> MigInstance {
        MigInstance {
            gpu_instance_id: u32::from(start) + 1,
            profile: profile.into(),
            start,
            size: 0,
            mig_uuid: format!("MIG-{profile}-{start}"),
            slice_id: slice.map(str::to_string),
        }
    }

    fn all_on() -> SliceOptions {
        SliceOptions {
            share_gpus: Vec::new(),
            partitionable: true,
            consumable_capacity: true,
            dra_slices: BTreeSet::new(),
            steer: Steering::Off,
            allocated: BTreeSet::new(),
        }
    }

    fn h100_mig_node() -> Vec<Gpu> {
        (0..8)
            .map(|i| gpu(i, GpuModel::H100Sxm5_80Gb, true))
            .collect()
    }

    fn placements(model: &GpuModel) -> usize {
        mig::profiles(model).iter().map(|p| p.starts.len()).sum()
    }

    fn counter_sets(slices: &[ResourceSlice]) -> BTreeMap<String, BTreeMap<String, u64>> {
        slices
            .iter()
            .flat_map(|s| s.spec.shared_counters.iter().flatten())
            .map(|cs| {
                let c = cs
                    .counters
                    .iter()
                    .map(|(k, v)| (k.clone(), quantity::parse(&v.value.0).unwrap()))
                    .collect();
                (cs.name.clone(), c)
            })
            .collect()
    }

    fn consumed(d: &Device) -> BTreeMap<String, u64> {
        d.consumes_counters
            .iter()
            .flatten()
            .flat_map(|c| c.counters.iter())
            .map(|(k, v)| (k.clone(), quantity::parse(&v.value.0).unwrap()))
            .collect()
    }

    fn attr_int(d: &Device, k: &str) -> i64 {
        d.attributes.as_ref().unwrap()[k].int.unwrap()
    }

    #[test]
    fn an_h100_mig_node_publishes_every_placement_in_valid_slices() {
        let slices = build("node-a", &h100_mig_node(), 3, &all_on()).unwrap();
        validate(&slices).unwrap();
        let devs = devices(&slices);
        assert_eq!(devs.len(), 8 * placements(&GpuModel::H100Sxm5_80Gb));
        // One counter slice (8 sets) and device slices of at most 64 devices; one pool.
        let counter_slices = slices
            .iter()
            .filter(|s| s.spec.shared_counters.is_some())
            .count();
        assert_eq!(counter_slices, 1);
        for s in &slices {
            assert_eq!(s.spec.pool.name, "node-a");
            assert_eq!(s.spec.pool.generation, 3);
            assert_eq!(s.spec.pool.resource_slice_count, slices.len() as i64);
            assert_eq!(s.spec.node_name.as_deref(), Some("node-a"));
            assert_eq!(s.spec.driver, DRIVER);
            assert!(s.spec.devices.as_ref().is_none_or(|d| d.len() <= 64));
        }
        for (name, d) in &devs {
            let r = DeviceRef::parse(name).unwrap();
            assert_eq!(i64::from(r.gpu()), attr_int(d, "index"));
            let DeviceRef::Mig { profile, start, .. } = r else {
                panic!("{name} is not a MIG device");
            };
            let a = d.attributes.as_ref().unwrap();
            assert_eq!(a["profile"].string.as_deref(), Some(profile.as_str()));
            assert_eq!(attr_int(d, "migStart"), i64::from(start));
            assert_eq!(a[ATTR_PCI_BUS_ID].string.as_deref().map(str::len), Some(12));
        }
        let d = devs["gpu-2-mig-3g-40gb-4"];
        assert_eq!(
            d.capacity.as_ref().unwrap()[CAPACITY_MEMORY].value.0,
            "40Gi"
        );
        assert_eq!(
            consumed(d),
            BTreeMap::from([
                ("compute-slices".to_string(), 3),
                ("memory-slice-4".to_string(), 1),
                ("memory-slice-5".to_string(), 1),
                ("memory-slice-6".to_string(), 1),
                ("memory-slice-7".to_string(), 1),
            ])
        );
        assert_eq!(
            d.consumes_counters.as_ref().unwrap()[0].counter_set,
            "gpu-2-counters"
        );
    }

    #[test]
    fn a_device_never_consumes_more_than_its_set_holds() {
        for model in GpuModel::KNOWN {
            let g = vec![gpu(0, model.clone(), true)];
            let slices = build("n", &g, 1, &all_on()).unwrap();
            validate(&slices).unwrap_or_else(|e| panic!("{model}: {e:?}"));
            let sets = counter_sets(&slices);
            let set = &sets["gpu-0-counters"];
            let devs = devices(&slices);
            assert_eq!(devs.len(), placements(&model), "{model}");
            for (name, d) in devs {
                for (k, v) in consumed(d) {
                    assert!(
                        set.get(&k).is_some_and(|have| v <= *have),
                        "{model} {name} {k}"
                    );
                }
            }
        }
    }

    /// The counters say what the MIG rules say: a set of placements fits the counters exactly when
    /// NVML would create it. Random placements are added one by one; each is accepted by the
    /// counters iff `check_create` accepts it on the layout so far.
    #[test]
    fn counters_admit_exactly_the_legal_mig_layouts() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for model in [
            GpuModel::H100Sxm5_80Gb,
            GpuModel::A100Sxm4_40Gb,
            GpuModel::A30_24Gb,
        ] {
            let slices = build("n", &[gpu(0, model.clone(), true)], 1, &all_on()).unwrap();
            let sets = counter_sets(&slices);
            let set = &sets["gpu-0-counters"];
            let devs: Vec<&Device> = devices(&slices).into_values().collect();
            for _ in 0..300 {
                let mut left = set.clone();
                let mut layout: Vec<Placed> = Vec::new();
                for _ in 0..12 {
                    let d = devs[rng.random_range(0..devs.len())];
                    let DeviceRef::Mig { profile, start, .. } = DeviceRef::parse(&d.name).unwrap()
                    else {
                        unreachable!()
                    };
                    let want = consumed(d);
                    let fits = want.iter().all(|(k, v)| left[k] >= *v);
                    let legal = mig::check_create(&model, &layout, &profile, start).is_ok();
                    assert_eq!(fits, legal, "{model}: {profile}@{start} on {layout:?}");
                    if fits {
                        for (k, v) in want {
                            *left.get_mut(&k).unwrap() -= v;
                        }
                        layout.push(Placed { profile, start });
                    }
                }
            }
        }
    }

    #[test]
    fn whole_gpus_and_shares_exclude_each_other_through_counters() {
        let node: Vec<Gpu> = (0..4)
            .map(|i| gpu(i, GpuModel::H100Sxm5_80Gb, false))
            .collect();
        let opts = SliceOptions {
            share_gpus: vec![2, 3],
            ..all_on()
        };
        let slices = build("node-b", &node, 1, &opts).unwrap();
        validate(&slices).unwrap();
        let devs = devices(&slices);
        let names: Vec<&str> = devs.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "gpu-0",
                "gpu-1",
                "gpu-2",
                "gpu-2-share",
                "gpu-3",
                "gpu-3-share"
            ]
        );
        let share = devs["gpu-2-share"];
        assert_eq!(share.allow_multiple_allocations, Some(true));
        let caps = share.capacity.as_ref().unwrap();
        assert_eq!(caps[CAPACITY_COMPUTE].value.0, "1000");
        assert_eq!(caps[CAPACITY_MEMORY].value.0, "80Gi");
        let p = caps[CAPACITY_COMPUTE].request_policy.as_ref().unwrap();
        assert_eq!(p.default.as_ref().unwrap().0, "100");
        let m = caps[CAPACITY_MEMORY].request_policy.as_ref().unwrap();
        assert_eq!(quantity::parse(&m.default.as_ref().unwrap().0), Ok(8 << 30));
        // Whole and share take all of the GPU's counter: never both.
        let sets = counter_sets(&slices);
        for gpu in [2, 3] {
            let set = &sets[&counter_set_name(gpu)];
            let w = consumed(devs[&format!("gpu-{gpu}")]);
            let s = consumed(devs[&format!("gpu-{gpu}-share")]);
            assert_eq!(&w, set);
            assert_eq!(&s, set);
        }
        // GPUs without shares need no counters.
        assert!(devs["gpu-0"].consumes_counters.is_none());
        assert_eq!(sets.len(), 2);

        // Without partitionable devices nothing keeps them apart: share GPUs offer shares only.
        let plain = build(
            "node-b",
            &node,
            1,
            &SliceOptions {
                partitionable: false,
                ..opts.clone()
            },
        )
        .unwrap();
        validate(&plain).unwrap();
        let names: Vec<String> = devices(&plain).into_keys().collect();
        assert_eq!(names, ["gpu-0", "gpu-1", "gpu-2-share", "gpu-3-share"]);
        assert!(plain.iter().all(|s| s.spec.shared_counters.is_none()));
        // Without consumable capacity: whole GPUs only.
        let whole = build(
            "node-b",
            &node,
            1,
            &SliceOptions {
                consumable_capacity: false,
                ..opts
            },
        )
        .unwrap();
        let names: Vec<String> = devices(&whole).into_keys().collect();
        assert_eq!(names, ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]);
    }

    #[test]
    fn an_a100_node_with_mig_and_whole_gpus_validates() {
        let mut node: Vec<Gpu> = (0..8)
            .map(|i| gpu(i, GpuModel::A100Sxm4_40Gb, i < 4))
            .collect();
        node[1]
            .mig_instances
            .push(instance("3g.20gb", 0, Some("dra-1")));
        let opts = SliceOptions {
            share_gpus: vec![6, 7],
            dra_slices: BTreeSet::from(["dra-1".to_string()]),
            ..all_on()
        };
        let slices = build("a100-node", &node, 9, &opts).unwrap();
        validate(&slices).unwrap();
        let devs = devices(&slices);
        assert_eq!(devs.len(), 4 * placements(&GpuModel::A100Sxm4_40Gb) + 4 + 2);
        assert!(
            devs.contains_key("gpu-1-mig-3g-20gb-0"),
            "DRA's own instance stays"
        );
        assert!(devs.keys().all(|n| DeviceRef::parse(n).is_ok()));
    }

    #[test]
    fn devices_of_other_greenslice_slices_are_withheld() {
        let mut node: Vec<Gpu> = (0..4)
            .map(|i| gpu(i, GpuModel::H100Sxm5_80Gb, false))
            .collect();
        node[0].whole_slice_id = Some("tenant-1".into());
        node[1].shares.push(Share {
            slice_id: "kubelet-pod".into(),
            compute_fraction: 0.25,
            memory_bytes: 1 << 30,
        });
        node[2].whole_slice_id = Some("dra-2".into());
        node[3].mig_enabled = true;
        node[3]
            .mig_instances
            .push(instance("3g.40gb", 0, Some("tenant-2")));
        node[3].mig_instances.push(instance("1g.10gb", 4, None));
        let opts = SliceOptions {
            share_gpus: vec![1],
            dra_slices: BTreeSet::from(["dra-2".to_string()]),
            ..all_on()
        };
        let slices = build("n", &node, 1, &opts).unwrap();
        validate(&slices).unwrap();
        let devs = devices(&slices);
        assert!(
            !devs
                .keys()
                .any(|n| n.starts_with("gpu-0") || n.starts_with("gpu-1"))
        );
        assert!(devs.contains_key("gpu-2"));
        // GPU 3: nothing overlapping the tenant's 3g at 0..4, no 7g/4g, counters without 0..3.
        for name in devs.keys().filter(|n| n.starts_with("gpu-3-")) {
            let DeviceRef::Mig { profile, start, .. } = DeviceRef::parse(name).unwrap() else {
                panic!()
            };
            let held = [Placed {
                profile: "3g.40gb".into(),
                start: 0,
            }];
            assert!(
                mig::check_create(&node[3].model, &held, &profile, start).is_ok(),
                "{name}"
            );
        }
        assert!(devs.contains_key("gpu-3-mig-3g-40gb-4"));
        assert!(
            devs.contains_key("gpu-3-mig-1g-10gb-4"),
            "an unowned instance's place is free"
        );
        assert!(!devs.contains_key("gpu-3-mig-7g-80gb-0"));
        let set = &counter_sets(&slices)["gpu-3-counters"];
        assert_eq!(set["compute-slices"], 4);
        assert!(!set.contains_key("memory-slice-0") && set.contains_key("memory-slice-7"));

        // The fallback publishes existing instances, without the tenant's.
        let plain = build(
            "n",
            &node,
            1,
            &SliceOptions {
                partitionable: false,
                ..opts
            },
        )
        .unwrap();
        validate(&plain).unwrap();
        let mig: Vec<String> = devices(&plain)
            .into_keys()
            .filter(|n| n.starts_with("gpu-3"))
            .collect();
        assert_eq!(mig, ["gpu-3-mig-1g-10gb-4"]);
    }

    #[test]
    fn unhealthy_gpus_and_empty_nodes() {
        let mut node = h100_mig_node();
        node.truncate(2);
        node[0].healthy = false;
        let slices = build("n", &node, 1, &all_on()).unwrap();
        assert!(devices(&slices).keys().all(|n| n.starts_with("gpu-1-")));
        let empty = build("n", &[], 4, &all_on()).unwrap();
        assert_eq!(empty.len(), 1);
        validate(&empty).unwrap();
        assert_eq!(empty[0].spec.pool.generation, 4);
        assert!(matches!(
            build("Bad_Node", &node, 1, &all_on()),
            Err(SliceError::NodeName(_))
        ));
        assert!(matches!(
            build("n", &node, -1, &all_on()),
            Err(SliceError::Generation(-1))
        ));
    }

    #[test]
    fn steering_publishes_greenslice_s_choice_per_profile() {
        let mut node = h100_mig_node();
        node.truncate(1);
        node[0]
            .mig_instances
            .push(instance("1g.10gb", 6, Some("dra-1")));
        let opts = SliceOptions {
            steer: Steering::PerGpu,
            dra_slices: BTreeSet::from(["dra-1".to_string()]),
            ..all_on()
        };
        let slices = build("n", &node, 1, &opts).unwrap();
        validate(&slices).unwrap();
        let devs = devices(&slices);
        let layout = node[0].mig_layout();
        for p in mig::profiles(&node[0].model) {
            let published: Vec<u8> = devs
                .keys()
                .filter_map(|n| match DeviceRef::parse(n) {
                    Ok(DeviceRef::Mig { profile, start, .. }) if profile == p.name => Some(start),
                    _ => None,
                })
                .collect();
            let mut want: Vec<u8> = mig::best_start(&node[0].model, &layout, p.name)
                .into_iter()
                .collect();
            if p.name == "1g.10gb" {
                want.push(6);
            }
            want.sort();
            want.dedup();
            assert_eq!(published, want, "{}", p.name);
        }
    }

    #[test]
    fn node_steering_publishes_one_placement_per_profile_and_keeps_allocated_ones() {
        let mut node = h100_mig_node();
        node.truncate(3);
        // GPU 1 is in use: node steering packs it (the fewest free compute slices left).
        node[1]
            .mig_instances
            .push(instance("3g.40gb", 0, Some("dra-1")));
        let allocated = "gpu-2-mig-1g-10gb-0".to_string();
        let opts = SliceOptions {
            steer: Steering::Node,
            dra_slices: BTreeSet::from(["dra-1".to_string()]),
            allocated: BTreeSet::from([allocated.clone()]),
            ..all_on()
        };
        let slices = build("n", &node, 1, &opts).unwrap();
        validate(&slices).unwrap();
        let devs = devices(&slices);
        let mut per_profile: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in devs.keys() {
            if let Ok(DeviceRef::Mig { profile, .. }) = DeviceRef::parse(n) {
                per_profile.entry(profile).or_default().push(n.clone());
            }
        }
        assert!(
            devs.contains_key("gpu-1-mig-3g-40gb-0"),
            "DRA's own instance stays"
        );
        assert!(
            devs.contains_key(&allocated),
            "an allocated device is never dropped"
        );
        assert_eq!(
            per_profile["1g.10gb"].len(),
            2,
            "{:?}",
            per_profile["1g.10gb"]
        );
        assert!(
            per_profile["1g.10gb"]
                .iter()
                .any(|n| n.starts_with("gpu-1-"))
        );
        assert_eq!(per_profile["2g.20gb"], ["gpu-1-mig-2g-20gb-4"]);
        assert_eq!(per_profile["7g.80gb"].len(), 1);
        // Steering off publishes every legal placement of every GPU.
        let all = build(
            "n",
            &node,
            1,
            &SliceOptions {
                steer: Steering::Off,
                ..opts
            },
        )
        .unwrap();
        assert!(devices(&all).len() > 3 * devs.len());
    }

    #[test]
    fn pci_bus_ids_take_the_standard_form() {
        assert_eq!(
            pci_bus_id("00000000:3B:00.0").as_deref(),
            Some("0000:3b:00.0")
        );
        assert_eq!(pci_bus_id("0001:c1:1f.7").as_deref(), Some("0001:c1:1f.7"));
        for bad in [
            "",
            "3b:00.0",
            "00010000:3B:00.0",
            "0000:3b:00.8",
            "0000:3b:20.0",
            "0000:3g:00.0",
        ] {
            assert_eq!(pci_bus_id(bad), None, "{bad}");
        }
    }

    // Each rule of `validate` can fail: one valid layout, broken one way at a time.

    fn valid() -> Vec<ResourceSlice> {
        let mut node: Vec<Gpu> = h100_mig_node().into_iter().take(2).collect();
        node.push(gpu(2, GpuModel::H100Sxm5_80Gb, false));
        let opts = SliceOptions {
            share_gpus: vec![2],
            ..all_on()
        };
        let s = build("n", &node, 1, &opts).unwrap();
        validate(&s).unwrap();
        s
    }

    fn fails(what: &str, f: impl FnOnce(&mut Vec<ResourceSlice>)) {
        let mut s = valid();
        f(&mut s);
        let errs = validate(&s).expect_err(what);
        assert!(
            errs.iter().any(|e| e.contains(what)),
            "wanted {what:?} in {errs:?}"
        );
    }

    fn dev(s: &mut [ResourceSlice], name: &str) -> Device {
        s.iter_mut()
            .flat_map(|s| s.spec.devices.iter_mut().flatten())
            .find(|d| d.name == name)
            .unwrap()
            .clone()
    }

    fn dev_mut<'a>(s: &'a mut [ResourceSlice], name: &str) -> &'a mut Device {
        s.iter_mut()
            .flat_map(|s| s.spec.devices.iter_mut().flatten())
            .find(|d| d.name == name)
            .unwrap()
    }

    fn device_slice(s: &mut [ResourceSlice]) -> &mut ResourceSlice {
        s.iter_mut().find(|s| s.spec.devices.is_some()).unwrap()
    }

    #[test]
    fn each_validation_rule_can_fail() {
        fails("metadata.name", |s| {
            s[0].metadata.name = Some("Bad Name".into())
        });
        fails("twice", |s| s[1].metadata.name = s[0].metadata.name.clone());
        fails("spec.driver", |s| s[0].spec.driver = "GPU_driver".into());
        fails("spec.pool.name", |s| s[0].spec.pool.name = "a//b".into());
        fails("resourceSliceCount", |s| {
            s[0].spec.pool.resource_slice_count = 9
        });
        fails("several generations", |s| s[0].spec.pool.generation = 2);
        fails("exactly one of nodeName", |s| {
            s[0].spec.all_nodes = Some(true)
        });
        fails("exactly one of nodeName", |s| s[0].spec.node_name = None);
        fails("devices and sharedCounters", |s| {
            let d = dev(s, "gpu-2");
            s[0].spec.devices = Some(vec![d]);
        });
        fails("at most 64", |s| {
            let d = dev(s, "gpu-0-mig-1g-10gb-0");
            let slice = device_slice(s);
            let v = slice.spec.devices.as_mut().unwrap();
            for i in 0..64 {
                let mut x = d.clone();
                x.name = format!("extra-{i}");
                v.push(x);
            }
        });
        fails("at most 128", |s| {
            let slice = device_slice(s);
            slice.spec.devices = Some(
                (0..129)
                    .map(|i| Device {
                        name: format!("d-{i}"),
                        ..Default::default()
                    })
                    .collect(),
            );
        });
        fails("not a DNS label", |s| {
            dev_mut(s, "gpu-2").name = "GPU.2".into()
        });
        fails("device \"gpu-2\" twice", |s| {
            let d = dev(s, "gpu-2");
            device_slice(s).spec.devices.as_mut().unwrap().push(d);
        });
        fails("attributes and capacities", |s| {
            let a = dev_mut(s, "gpu-2").attributes.as_mut().unwrap();
            for i in 0..40 {
                a.insert(format!("extra{i}"), i_attr(i));
            }
        });
        fails("exactly one value", |s| {
            let a = dev_mut(s, "gpu-2").attributes.as_mut().unwrap();
            a.get_mut("index").unwrap().string = Some("x".into());
        });
        fails("longer than 64", |s| {
            let a = dev_mut(s, "gpu-2").attributes.as_mut().unwrap();
            a.insert("long".into(), s_attr("x".repeat(65)));
        });
        fails("not a qualified name", |s| {
            let a = dev_mut(s, "gpu-2").attributes.as_mut().unwrap();
            a.insert("bad-name".into(), i_attr(1));
        });
        fails("not a Kubernetes quantity", |s| {
            let c = dev_mut(s, "gpu-2").capacity.as_mut().unwrap();
            c.get_mut(CAPACITY_MEMORY).unwrap().value = Quantity("lots".into());
        });
        fails("only with allowMultipleAllocations", |s| {
            dev_mut(s, "gpu-2-share").allow_multiple_allocations = None;
        });
        let policy = |s: &mut Vec<ResourceSlice>| -> CapacityRequestPolicy {
            dev_mut(s, "gpu-2-share").capacity.as_ref().unwrap()[CAPACITY_COMPUTE]
                .request_policy
                .clone()
                .unwrap()
        };
        let set_policy = |s: &mut Vec<ResourceSlice>, p: CapacityRequestPolicy| {
            dev_mut(s, "gpu-2-share")
                .capacity
                .as_mut()
                .unwrap()
                .get_mut(CAPACITY_COMPUTE)
                .unwrap()
                .request_policy = Some(p);
        };
        fails("required with validRange", |s| {
            let mut p = policy(s);
            p.default = None;
            set_policy(s, p);
        });
        fails("exceeds the capacity", |s| {
            let mut p = policy(s);
            p.valid_range.as_mut().unwrap().max = Some(Quantity("2000".into()));
            set_policy(s, p);
        });
        fails("is below validRange.min", |s| {
            let mut p = policy(s);
            p.default = Some(Quantity("5".into()));
            set_policy(s, p);
        });
        fails("multiple of step", |s| {
            let mut p = policy(s);
            p.default = Some(Quantity("105".into()));
            set_policy(s, p);
        });
        fails("exclusive", |s| {
            let mut p = policy(s);
            p.valid_values = Some(vec![Quantity("100".into())]);
            set_policy(s, p);
        });
        fails("ascending", |s| {
            let mut p = policy(s);
            p.valid_range = None;
            p.valid_values = Some(vec![Quantity("500".into()), Quantity("100".into())]);
            set_policy(s, p);
        });
        fails("is not one of validValues", |s| {
            let mut p = policy(s);
            p.valid_range = None;
            p.valid_values = Some(vec![Quantity("200".into()), Quantity("500".into())]);
            set_policy(s, p);
        });
        fails("which the pool lacks", |s| {
            dev_mut(s, "gpu-0-mig-7g-80gb-0")
                .consumes_counters
                .as_mut()
                .unwrap()[0]
                .counter_set = "gpu-9-counters".into();
        });
        fails("which set \"gpu-0-counters\" lacks", |s| {
            dev_mut(s, "gpu-0-mig-7g-80gb-0")
                .consumes_counters
                .as_mut()
                .unwrap()[0]
                .counters
                .insert(
                    "memory-slice-9".into(),
                    Counter {
                        value: Quantity("1".into()),
                    },
                );
        });
        fails("which holds 7", |s| {
            dev_mut(s, "gpu-0-mig-7g-80gb-0")
                .consumes_counters
                .as_mut()
                .unwrap()[0]
                .counters
                .insert(
                    COUNTER_COMPUTE_SLICES.into(),
                    Counter {
                        value: Quantity("8".into()),
                    },
                );
        });
        fails("counter set \"gpu-0-counters\" twice", |s| {
            let d = dev_mut(s, "gpu-0-mig-7g-80gb-0");
            let c = d.consumes_counters.as_ref().unwrap()[0].clone();
            d.consumes_counters.as_mut().unwrap().push(c);
        });
        fails("at most 2", |s| {
            let d = dev_mut(s, "gpu-0-mig-7g-80gb-0");
            let c = d.consumes_counters.as_ref().unwrap()[0].clone();
            let v = d.consumes_counters.as_mut().unwrap();
            for i in 1..3 {
                let mut x = c.clone();
                x.counter_set = format!("set-{i}");
                v.push(x);
            }
        });
        let counters_slice = |s: &mut Vec<ResourceSlice>| -> usize {
            s.iter()
                .position(|s| s.spec.shared_counters.is_some())
                .unwrap()
        };
        fails("sets, at most 8", |s| {
            let i = counters_slice(s);
            let sets = s[i].spec.shared_counters.as_mut().unwrap();
            let first = sets[0].clone();
            for k in 0..8 {
                let mut x = first.clone();
                x.name = format!("more-{k}");
                sets.push(x);
            }
        });
        fails("1 to 32", |s| {
            let i = counters_slice(s);
            let set = &mut s[i].spec.shared_counters.as_mut().unwrap()[0];
            for k in 0..40 {
                set.counters.insert(
                    format!("c-{k}"),
                    Counter {
                        value: Quantity("1".into()),
                    },
                );
            }
        });
        fails("counter set \"gpu-0-counters\" twice", |s| {
            let i = counters_slice(s);
            let sets = s[i].spec.shared_counters.as_mut().unwrap();
            let first = sets[0].clone();
            sets.push(first);
        });
        fails(".name: \"Set_0\" is not a DNS label", |s| {
            let i = counters_slice(s);
            s[i].spec.shared_counters.as_mut().unwrap()[0].name = "Set_0".into();
        });
    }
}
