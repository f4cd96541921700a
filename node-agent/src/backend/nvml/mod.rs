//! The NVML backend: real NVIDIA GPUs through nvml-wrapper.
//!
//! - Discovery: UUID, name, PCI bus id, memory, power limit, MIG capability and mode, existing GPU
//!   instances with their profiles and placements; [`GpuBackend::mig_profiles`] gives the driver's
//!   own possible placements.
//! - Sampling: utilization, per-process utilization (with the last-seen timestamp kept per GPU),
//!   running processes, power, the energy counter and, on Hopper and newer in MIG mode, GPM activity
//!   per GPU instance. What the device refuses with `NotSupported` is listed as unsupported.
//! - MIG changes go through [`mig_raw`] (the only `unsafe` code) and only when `mig.manage = true`;
//!   otherwise they fail with [`BackendError::ReadOnly`].
//! - Health: critical XID and double-bit ECC events, polled at every call, feed [`health`].
//!
//! Without a driver, [`NvmlBackend::new`] fails with [`BackendError::NoDriver`], which names the
//! library and tells the operator how to use the simulator instead.

pub mod convert;
pub mod health;
#[allow(unsafe_code)]
pub mod mig_raw;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use greenslice_core::clock::{Clock, SystemClock};
use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance, Share};
use greenslice_core::mig;
use greenslice_core::sample::{GpuSample, NodeSample, SampleField};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock as NvmlClock, ComputeMode};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, GpmSample, Nvml};
use tracing::{debug, info, warn};

use self::convert::{DeviceFacts, Reading, read};
use self::health::{HealthEvent, HealthPolicy, HealthTracker};
use super::{
    BackendError, GpuBackend, HostInfo, ProfilePlacements, SliceEnv, device_env, share_env,
};

/// The library names tried, in order: nvml-wrapper's default, then the name the driver package
/// always installs (the unversioned link often comes only with development packages).
pub const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so", "libnvidia-ml.so.1"];

/// GPM samples closer than this are not compared ([`super::GPM_MIN_INTERVAL_MS`]).
const GPM_MIN_INTERVAL: Duration = Duration::from_millis(super::GPM_MIN_INTERVAL_MS);

fn nvml_err(call: &'static str) -> impl Fn(NvmlError) -> BackendError {
    move |e| BackendError::Nvml {
        call,
        msg: e.to_string(),
    }
}

/// Loads NVML from `library`, or else tries each of [`NVML_LIBRARIES`]; [`BackendError::NoDriver`]
/// when none loads.
pub fn load_nvml(library: Option<&Path>) -> Result<Nvml, BackendError> {
    let mut last = String::new();
    let candidates: Vec<&OsStr> = match library {
        Some(p) => vec![p.as_os_str()],
        None => NVML_LIBRARIES.iter().map(OsStr::new).collect(),
    };
    for lib in candidates {
        let shown = lib.to_string_lossy();
        match Nvml::builder().lib_path(lib).init() {
            Ok(n) => {
                debug!(library = %shown, "NVML loaded");
                return Ok(n);
            }
            Err(NvmlError::LibloadingError(e)) => last = e.to_string(),
            Err(e) if convert::is_no_driver(&e) => last = format!("{shown}: {e}"),
            Err(e) => return Err(nvml_err("nvmlInit_v2")(e)),
        }
    }
    // The last attempt is the library every driver installs: its error is the one to show.
    Err(BackendError::NoDriver(last))
}

/// NVML-backed GPUs of this host.
pub struct NvmlBackend {
    /// One NVML handle for the life of the process (leaked so the event set can borrow it).
    nvml: &'static Nvml,
    events: Option<EventSet<'static>>,
    /// Whether MIG changes are allowed (`mig.manage` in the agent config; default false).
    manage_mig: bool,
    mps_pipe_dir: String,
    /// Whether MPS is available (see [`NvmlBackend::with_mps`]).
    mps: bool,
    /// Whether a GPU holding shares is put in EXCLUSIVE_PROCESS mode (see
    /// [`NvmlBackend::with_exclusive_shares`]).
    exclusive_shares: bool,
    /// GPUs that serve shares whether or not one is held now (see
    /// [`NvmlBackend::with_share_gpus`]).
    share_gpus: BTreeSet<String>,
    shares: Vec<(String, Share)>,
    whole: Vec<(String, String)>,
    /// Slices owning the MIG instances greenslice made: (GPU UUID, GPU instance id) to slice id.
    mig_owners: BTreeMap<(String, u32), String>,
    /// Largest per-process sample timestamp seen, per GPU UUID (µs).
    last_seen_us: BTreeMap<String, u64>,
    /// Previous GPM sample per (GPU UUID, GPU instance id, start slice).
    gpm_prev: BTreeMap<(String, u32, u8), (GpmSample<'static>, Instant)>,
    health: HealthTracker,
    clock: SystemClock,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend")
            .field("manage_mig", &self.manage_mig)
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// Registers every GPU for critical XID and double-bit ECC events where it supports them.
fn register_events(nvml: &'static Nvml) -> Option<EventSet<'static>> {
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    let count = nvml.device_count().ok()?;
    let mut set = nvml
        .create_event_set()
        .map_err(|e| warn!(error = %e, "no NVML event set: GPU health events are off"))
        .ok()?;
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else {
            continue;
        };
        let types = d.supported_event_types().unwrap_or(EventTypes::empty()) & wanted;
        if types.is_empty() {
            warn!(
                gpu = i,
                "GPU supports no critical events; its health is not watched"
            );
            continue;
        }
        set = match d.register_events(types, set) {
            Ok(s) => s,
            Err(e) => {
                warn!(gpu = i, error = %e, "cannot watch events of GPU");
                // The failed registration released the set: start a new one for the others.
                nvml.create_event_set().ok()?
            }
        };
    }
    Some(set)
}

impl NvmlBackend {
    /// Loads NVML. Fails with [`BackendError::NoDriver`] when the library cannot be loaded.
    pub fn new(
        manage_mig: bool,
        mps_pipe_dir: &str,
        library: Option<&Path>,
    ) -> Result<Self, BackendError> {
        let nvml: &'static Nvml = Box::leak(Box::new(load_nvml(library)?));
        let events = register_events(nvml);
        Ok(NvmlBackend {
            nvml,
            events,
            manage_mig,
            mps_pipe_dir: mps_pipe_dir.to_string(),
            mps: false,
            exclusive_shares: false,
            share_gpus: BTreeSet::new(),
            shares: Vec::new(),
            whole: Vec::new(),
            mig_owners: BTreeMap::new(),
            last_seen_us: BTreeMap::new(),
            gpm_prev: BTreeMap::new(),
            health: HealthTracker::new(HealthPolicy::default()),
            clock: SystemClock,
        })
    }

    /// Says whether MPS is available on this node (the agent looks for the control daemon).
    pub fn with_mps(mut self, available: bool) -> Self {
        self.mps = available;
        self
    }

    /// Puts a GPU that holds shares in EXCLUSIVE_PROCESS mode, and back in DEFAULT when its last
    /// share goes: the agent runs an MPS control daemon per share GPU (`crate::mps`), whose server
    /// is then the only process that opens the GPU.
    pub fn with_exclusive_shares(mut self, on: bool) -> Self {
        self.exclusive_shares = on;
        self
    }

    /// GPUs that serve shares even while they hold none: the device plugin's share GPUs
    /// (`kubelet.share_gpus`), whose pods reach the GPU's MPS daemon at any time. With
    /// [`NvmlBackend::with_exclusive_shares`] they stay in EXCLUSIVE_PROCESS mode for the life of
    /// the agent, as a GPU holding tenant shares does while it holds them.
    pub fn with_share_gpus(mut self, uuids: BTreeSet<String>) -> Self {
        self.share_gpus = uuids;
        self
    }

    /// Whether `gpu` serves shares: it holds one, or it is one of the device plugin's share GPUs.
    fn serves_shares(&self, gpu: &str) -> bool {
        self.share_gpus.contains(gpu) || self.shares.iter().any(|(g, _)| g == gpu)
    }

    /// The compute mode `gpu` goes back to when no slice holds it whole: EXCLUSIVE_PROCESS while
    /// it serves shares through a supervised MPS daemon (whose server is then its one process),
    /// else DEFAULT.
    fn shared_mode(&self, gpu: &str) -> ComputeMode {
        if self.exclusive_shares && self.serves_shares(gpu) {
            ComputeMode::ExclusiveProcess
        } else {
            ComputeMode::Default
        }
    }

    /// Sets `gpu`'s compute mode to `mode` unless it is already.
    fn ensure_mode(
        gpu: &str,
        d: &mut Device<'static>,
        mode: ComputeMode,
    ) -> Result<(), BackendError> {
        if d.compute_mode().is_ok_and(|m| m == mode) {
            return Ok(());
        }
        d.set_compute_mode(mode)
            .map_err(nvml_err("nvmlDeviceSetComputeMode"))?;
        info!(gpu, ?mode, "compute mode set for the GPU's shares");
        Ok(())
    }

    /// Drains pending NVML events into the health tracker.
    fn poll_events(&mut self) {
        let Some(set) = &self.events else {
            return;
        };
        loop {
            match set.wait(0) {
                Ok(ev) => {
                    let uuid = ev.device.uuid().unwrap_or_default();
                    let event = if ev.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                        HealthEvent::DoubleBitEcc
                    } else {
                        HealthEvent::Xid(match ev.event_data {
                            Some(XidError::Value(x)) => Some(x),
                            _ => None,
                        })
                    };
                    if self.health.record(&uuid, event, self.clock.now_ms()) {
                        warn!(gpu = %uuid, ?event, "GPU fault: marked unhealthy");
                    } else {
                        info!(gpu = %uuid, ?event, "application XID; GPU stays healthy");
                    }
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => {
                    debug!(error = %e, "NVML event wait");
                    break;
                }
            }
        }
    }

    fn note_failure(&mut self, uuid: &str, what: &str, e: &NvmlError) {
        if matches!(e, NvmlError::GpuLost) {
            self.health
                .record(uuid, HealthEvent::Lost, self.clock.now_ms());
        }
        debug!(gpu = %uuid, error = %e, "NVML {what} failed");
    }

    /// Puts GPUs in EXCLUSIVE_PROCESS mode that no slice holds whole back to DEFAULT: an
    /// assignment whose record a crash lost leaves the mode behind, and the GPU would serve one
    /// process only.
    fn free_exclusive_gpus(&mut self) -> Result<(), BackendError> {
        let n = self.nvml.device_count().map_err(nvml_err("device_count"))?;
        for i in 0..n {
            let mut d = self
                .nvml
                .device_by_index(i)
                .map_err(nvml_err("device_by_index"))?;
            let uuid = d.uuid().map_err(nvml_err("uuid"))?;
            if self.whole_holder(&uuid).is_none()
                && self.shared_mode(&uuid) == ComputeMode::Default
                && d.compute_mode()
                    .is_ok_and(|m| m == ComputeMode::ExclusiveProcess)
            {
                d.set_compute_mode(ComputeMode::Default)
                    .map_err(nvml_err("nvmlDeviceSetComputeMode"))?;
                info!(gpu = %uuid, "compute mode back to DEFAULT: no slice holds the GPU whole");
            }
        }
        Ok(())
    }

    /// The slice holding `gpu` whole, if any.
    fn whole_holder(&self, gpu: &str) -> Option<&str> {
        self.whole
            .iter()
            .find(|(g, _)| g == gpu)
            .map(|(_, s)| s.as_str())
    }

    /// A GPU that may hold shares and whole-GPU slices: out of MIG mode.
    fn non_mig(&self, gpu: &str) -> Result<Device<'static>, BackendError> {
        let d = self.device(gpu)?;
        if d.mig_mode().is_ok_and(|m| m.current == 1) {
            return Err(BackendError::MigMode { gpu: gpu.into() });
        }
        Ok(d)
    }

    fn device(&self, uuid: &str) -> Result<Device<'static>, BackendError> {
        self.nvml.device_by_uuid(uuid).map_err(|e| match e {
            NvmlError::NotFound | NvmlError::InvalidArg => BackendError::UnknownGpu(uuid.into()),
            e => nvml_err("nvmlDeviceGetHandleByUUID")(e),
        })
    }

    /// GPU instance id to MIG device UUID, for the MIG devices of `d`.
    fn mig_uuids(&self, d: &Device<'static>) -> BTreeMap<u32, String> {
        let n = d.mig_device_count().unwrap_or(0);
        (0..n)
            .filter_map(|j| {
                let md = d.mig_device_by_index(j).ok()?;
                let gi = mig_raw::mig_device_gi_id(self.nvml, &md).ok()?;
                Some((gi, md.uuid().ok()?))
            })
            .collect()
    }

    /// The GPU instances of a MIG-enabled GPU as domain instances.
    fn mig_instances(&self, d: &Device<'static>, uuid: &str, model: &GpuModel) -> Vec<MigInstance> {
        let raws = match mig_raw::gpu_instances(self.nvml, d) {
            Ok(r) => r,
            Err(e) => {
                warn!(gpu = %uuid, error = %e, "cannot list GPU instances");
                return Vec::new();
            }
        };
        let uuids = self.mig_uuids(d);
        raws.iter()
            .map(|raw| {
                let mig_uuid = uuids.get(&raw.id).cloned().unwrap_or_default();
                let owner = self.mig_owners.get(&(uuid.to_string(), raw.id)).cloned();
                convert::mig_instance(model, raw, mig_uuid.clone(), owner.clone()).unwrap_or_else(
                    |e| {
                        // Keep it visible so nothing is placed over it; the unknown profile name
                        // makes placement refuse this GPU rather than guess.
                        warn!(gpu = %uuid, error = %e, "unrecognised GPU instance");
                        MigInstance {
                            gpu_instance_id: raw.id,
                            profile: format!("nvml-profile-{}", raw.profile_id),
                            start: u8::try_from(raw.start).unwrap_or(u8::MAX),
                            size: u8::try_from(raw.size).unwrap_or(u8::MAX),
                            mig_uuid,
                            slice_id: owner,
                        }
                    },
                )
            })
            .collect()
    }

    fn facts(&mut self, i: u32, d: &Device<'static>, uuid: String) -> DeviceFacts {
        let name = d.name().ok();
        let pci = d.pci_info().ok();
        let pci_device_id = pci.as_ref().map(|p| p.pci_device_id);
        let model = convert::model(pci_device_id, name.as_deref());
        let mig_mode = d.mig_mode().ok().map(|m| (m.current, m.pending));
        let memory_total_bytes = match d.memory_info() {
            Ok(m) => Some(m.total),
            Err(e) => {
                self.note_failure(&uuid, "memory_info", &e);
                None
            }
        };
        let mig_instances = if mig_mode.is_some_and(|(c, _)| c == 1) {
            self.mig_instances(d, &uuid, &model)
        } else {
            Vec::new()
        };
        let now = self.clock.now_ms();
        DeviceFacts {
            index: i,
            name,
            memory_total_bytes,
            mig_mode,
            pci_bus_id: pci.map(|p| p.bus_id),
            pci_device_id,
            power_limit_mw: d.enforced_power_limit().ok(),
            healthy: self.health.is_healthy(&uuid, now),
            mig_instances,
            shares: self
                .shares
                .iter()
                .filter(|(g, _)| *g == uuid)
                .map(|(_, s)| s.clone())
                .collect(),
            whole_slice_id: self
                .whole
                .iter()
                .find(|(g, _)| *g == uuid)
                .map(|(_, s)| s.clone()),
            uuid,
        }
    }

    fn sample_gpu(&mut self, d: &Device<'static>, uuid: &str) -> GpuSample {
        let mut s = GpuSample::empty(uuid);
        match read(d.utilization_rates(), SampleField::Utilization, &mut s) {
            Reading::Value(u) => {
                s.gpu_util_pct = Some(u.gpu);
                s.mem_util_pct = Some(u.memory);
            }
            Reading::Unsupported => {}
            Reading::Failed(e) => self.note_failure(uuid, "utilization_rates", &e),
        }
        match read(d.power_usage(), SampleField::Power, &mut s) {
            Reading::Value(v) => s.power_mw = Some(v),
            Reading::Unsupported => {}
            Reading::Failed(e) => self.note_failure(uuid, "power_usage", &e),
        }
        match read(d.total_energy_consumption(), SampleField::Energy, &mut s) {
            Reading::Value(v) => s.energy_mj = Some(v),
            Reading::Unsupported => {}
            Reading::Failed(e) => self.note_failure(uuid, "total_energy_consumption", &e),
        }
        match read(d.memory_info(), SampleField::MemoryUsed, &mut s) {
            Reading::Value(m) => s.memory_used_bytes = Some(m.used),
            Reading::Unsupported => {}
            Reading::Failed(e) => self.note_failure(uuid, "memory_info", &e),
        }
        match read(
            d.running_compute_processes(),
            SampleField::Processes,
            &mut s,
        ) {
            Reading::Value(p) => s.processes = Some(p.iter().map(convert::process).collect()),
            Reading::Unsupported => {}
            Reading::Failed(e) => self.note_failure(uuid, "running_compute_processes", &e),
        }
        // The SM clock and its maximum: an optional signal for the controller's energy fit
        // (clocks drop when the power limit holds the board back); no field is marked for them.
        s.sm_clock_mhz = d.clock_info(NvmlClock::SM).ok();
        s.max_sm_clock_mhz = d.max_clock_info(NvmlClock::SM).ok();
        let after = self.last_seen_us.get(uuid).copied().unwrap_or(0);
        // NotFound means no process was active since `after`: supported, nothing new.
        let stats = match d.process_utilization_stats(after) {
            Err(NvmlError::NotFound) => Ok(Vec::new()),
            r => r,
        };
        match read(stats, SampleField::ProcessUtilization, &mut s) {
            Reading::Value(v) => {
                let u = convert::process_utils(&v, after);
                if let Some(max) = u.iter().map(|p| p.last_seen_us).max() {
                    self.last_seen_us.insert(uuid.to_string(), max);
                }
                s.process_util = Some(u);
            }
            Reading::Unsupported => {}
            Reading::Failed(e) => self.note_failure(uuid, "process_utilization_stats", &e),
        }
        if d.mig_mode().is_ok_and(|m| m.current == 1) {
            self.sample_gpm(d, uuid, &mut s);
        }
        s
    }

    /// Per-GPU-instance activity through GPM (Hopper and newer); unsupported elsewhere.
    fn sample_gpm(&mut self, d: &Device<'static>, uuid: &str, s: &mut GpuSample) {
        if !d.gpm_support().unwrap_or(false) {
            s.mark_unsupported(SampleField::MigActivity);
            return;
        }
        let instances = match mig_raw::gpu_instances(self.nvml, d) {
            Ok(v) => v,
            Err(e) => {
                self.note_failure(uuid, "gpu instances", &e);
                return;
            }
        };
        // GPU-instance ids are reused after a re-layout: forget samples of instances now gone.
        let live: Vec<(u32, u8)> = instances
            .iter()
            .map(|r| (r.id, u8::try_from(r.start).unwrap_or(u8::MAX)))
            .collect();
        self.gpm_prev
            .retain(|(g, gi, st), _| g != uuid || live.contains(&(*gi, *st)));
        for (gi, start) in live {
            let key = (uuid.to_string(), gi, start);
            let cur = match d.gpm_mig_sample(gi) {
                Ok(c) => c,
                Err(e) => {
                    self.note_failure(uuid, "gpm_mig_sample", &e);
                    continue;
                }
            };
            match self.gpm_prev.get(&key) {
                Some((_, at)) if at.elapsed() < GPM_MIN_INTERVAL => continue,
                Some((prev, _)) => {
                    match nvml_wrapper::gpm::gpm_metrics_get(
                        self.nvml,
                        prev,
                        &cur,
                        &convert::GPM_METRICS,
                    ) {
                        Ok(results) => s.mig.push(convert::mig_activity(gi, &results)),
                        Err(e) => self.note_failure(uuid, "gpm_metrics_get", &e),
                    }
                }
                // The first sample of an instance has nothing to compare with yet.
                None => {}
            }
            self.gpm_prev.insert(key, (cur, Instant::now()));
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn may_manage_mig(&self) -> bool {
        self.manage_mig
    }

    fn mps_available(&self) -> bool {
        self.mps
    }

    fn host(&self) -> HostInfo {
        HostInfo {
            cpu_milli: std::thread::available_parallelism().map_or(0, |n| n.get() as u64 * 1000),
            memory_bytes: host_memory_bytes().unwrap_or(0),
        }
    }

    fn inventory(&mut self) -> Result<Vec<Gpu>, BackendError> {
        self.poll_events();
        let n = self.nvml.device_count().map_err(nvml_err("device_count"))?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let d = self
                .nvml
                .device_by_index(i)
                .map_err(nvml_err("device_by_index"))?;
            let uuid = d.uuid().map_err(nvml_err("uuid"))?;
            let facts = self.facts(i, &d, uuid);
            out.push(convert::gpu(facts));
        }
        // Forget owners of instances that no longer exist.
        self.mig_owners.retain(|(g, gi), _| {
            out.iter()
                .any(|x| x.uuid == *g && x.mig_instances.iter().any(|m| m.gpu_instance_id == *gi))
        });
        Ok(out)
    }

    fn compute_processes(
        &mut self,
        gpu: &str,
    ) -> Result<Vec<greenslice_core::sample::GpuProcess>, BackendError> {
        let d = self.device(gpu)?;
        let procs = d
            .running_compute_processes()
            .map_err(nvml_err("running_compute_processes"))?;
        Ok(procs.iter().map(convert::process).collect())
    }

    fn sample(&mut self) -> Result<NodeSample, BackendError> {
        self.poll_events();
        let at_ms = self.clock.now_ms();
        let n = self.nvml.device_count().map_err(nvml_err("device_count"))?;
        let mut gpus = Vec::with_capacity(n as usize);
        for i in 0..n {
            let d = self
                .nvml
                .device_by_index(i)
                .map_err(nvml_err("device_by_index"))?;
            let uuid = d.uuid().map_err(nvml_err("uuid"))?;
            gpus.push(self.sample_gpu(&d, &uuid));
        }
        Ok(NodeSample { at_ms, gpus })
    }

    fn mig_profiles(&mut self, gpu: &str) -> Result<Vec<ProfilePlacements>, BackendError> {
        let d = self.device(gpu)?;
        let model = device_model(&d)?;
        let mut out = Vec::new();
        for info in mig_raw::gi_profiles(self.nvml, &d) {
            let Some(p) = convert::profile_by_id(&model, info.id) else {
                debug!(
                    gpu,
                    profile_id = info.id,
                    "driver profile without a table entry"
                );
                continue;
            };
            let ranges = mig_raw::possible_placements(self.nvml, &d, info.id)
                .map_err(nvml_err("nvmlDeviceGetGpuInstancePossiblePlacements_v2"))?;
            out.push(ProfilePlacements {
                profile: p.name.to_string(),
                profile_id: info.id,
                size: p.size,
                max_instances: info.instance_count,
                starts: convert::placement_starts(&ranges),
                source: "driver",
            });
        }
        Ok(out)
    }

    fn create_mig(
        &mut self,
        gpu: &str,
        profile: &str,
        start: u8,
        slice_id: &str,
    ) -> Result<(MigInstance, SliceEnv), BackendError> {
        if !self.manage_mig {
            return Err(BackendError::ReadOnly);
        }
        let d = self.device(gpu)?;
        if !d.mig_mode().is_ok_and(|m| m.current == 1) {
            return Err(BackendError::NotMigMode { gpu: gpu.into() });
        }
        let model = device_model(&d)?;
        let existing = self.mig_instances(&d, gpu, &model);
        let layout: Vec<mig::Placed> = existing
            .iter()
            .map(|m| mig::Placed {
                profile: m.profile.clone(),
                start: m.start,
            })
            .collect();
        // The table gives NVML's errors before the driver is asked; the driver stays the judge.
        let p = mig::check_create(&model, &layout, profile, start)?;
        let info = mig_raw::gi_profile_info(self.nvml, &d, p.nvml_index)
            .map_err(nvml_err("nvmlDeviceGetGpuInstanceProfileInfo"))?;
        if info.id != p.smi_id {
            warn!(
                gpu,
                profile,
                table = p.smi_id,
                driver = info.id,
                "profile id differs from the table; using the driver's"
            );
        }
        let gi = mig_raw::create(
            self.nvml,
            &d,
            info.id,
            u32::from(start),
            u32::from(p.size),
            u32::from(p.compute_slices),
        )
        .map_err(nvml_err("nvmlDeviceCreateGpuInstanceWithPlacement"))?;
        self.mig_owners
            .insert((gpu.to_string(), gi), slice_id.to_string());
        self.gpm_prev.retain(|(g, _, _), _| g != gpu);
        let inst = self
            .mig_instances(&d, gpu, &model)
            .into_iter()
            .find(|m| m.gpu_instance_id == gi)
            .ok_or_else(|| BackendError::Nvml {
                call: "nvmlDeviceGetGpuInstances",
                msg: format!("created GPU instance {gi} is not listed"),
            })?;
        info!(
            gpu,
            profile,
            start,
            gi,
            slice = slice_id,
            "MIG instance created"
        );
        let env = device_env(&inst.mig_uuid);
        Ok((inst, env))
    }

    fn destroy_mig(&mut self, gpu: &str, gpu_instance_id: u32) -> Result<(), BackendError> {
        if !self.manage_mig {
            return Err(BackendError::ReadOnly);
        }
        let d = self.device(gpu)?;
        mig_raw::destroy(self.nvml, &d, gpu_instance_id).map_err(|e| match e {
            NvmlError::NotFound | NvmlError::InvalidArg => BackendError::NoSuchInstance {
                gpu: gpu.into(),
                gi: gpu_instance_id,
            },
            e => nvml_err("nvmlGpuInstanceDestroy")(e),
        })?;
        self.mig_owners.remove(&(gpu.to_string(), gpu_instance_id));
        self.gpm_prev.retain(|(g, _, _), _| g != gpu);
        info!(gpu, gi = gpu_instance_id, "MIG instance destroyed");
        Ok(())
    }

    fn adopt(
        &mut self,
        owned: &crate::checkpoint::Owned,
        complete: bool,
    ) -> Result<(), BackendError> {
        self.mig_owners = owned
            .mig
            .iter()
            .map(|m| ((m.gpu.clone(), m.gpu_instance_id), m.slice_id.clone()))
            .collect();
        self.shares = owned
            .shares
            .iter()
            .map(|s| {
                (
                    s.gpu.clone(),
                    Share {
                        slice_id: s.slice_id.clone(),
                        compute_fraction: s.compute_fraction,
                        memory_bytes: s.memory_bytes,
                    },
                )
            })
            .collect();
        self.whole = owned
            .whole
            .iter()
            .map(|w| (w.gpu.clone(), w.slice_id.clone()))
            .collect();
        for w in &owned.whole {
            // Set again, as on assign: an operator may have changed it while the agent was away.
            self.device(&w.gpu)?
                .set_compute_mode(ComputeMode::ExclusiveProcess)
                .map_err(nvml_err("nvmlDeviceSetComputeMode"))?;
        }
        if self.exclusive_shares {
            let gpus: BTreeSet<String> = self
                .shares
                .iter()
                .map(|(g, _)| g.clone())
                .chain(self.share_gpus.iter().cloned())
                .collect();
            for g in gpus {
                Self::ensure_mode(&g, &mut self.device(&g)?, ComputeMode::ExclusiveProcess)?;
            }
        }
        if complete {
            self.free_exclusive_gpus()?;
        }
        Ok(())
    }

    fn set_share(
        &mut self,
        gpu: &str,
        slice_id: &str,
        f: f64,
        mem: u64,
    ) -> Result<SliceEnv, BackendError> {
        let mut d = self.non_mig(gpu)?;
        let total = d
            .memory_info()
            .map_err(nvml_err("nvmlDeviceGetMemoryInfo"))?
            .total;
        let others: Vec<&Share> = self
            .shares
            .iter()
            .filter(|(g, s)| g == gpu && s.slice_id != slice_id)
            .map(|(_, s)| s)
            .collect();
        super::share_fits(
            gpu,
            self.whole_holder(gpu).is_some(),
            &others,
            f,
            mem,
            total,
        )?;
        if self.exclusive_shares {
            Self::ensure_mode(gpu, &mut d, ComputeMode::ExclusiveProcess)?;
        }
        let moved_from: Option<String> = self
            .shares
            .iter()
            .find(|(g, s)| s.slice_id == slice_id && g != gpu)
            .map(|(g, _)| g.clone());
        self.shares.retain(|(_, s)| s.slice_id != slice_id);
        self.shares.push((
            gpu.to_string(),
            Share {
                slice_id: slice_id.to_string(),
                compute_fraction: f,
                memory_bytes: mem,
            },
        ));
        // A share moved off a GPU: that GPU goes back to DEFAULT once it serves no share.
        if let Some(old) =
            moved_from.filter(|old| self.exclusive_shares && self.whole_holder(old).is_none())
        {
            let mode = self.shared_mode(&old);
            Self::ensure_mode(&old, &mut self.device(&old)?, mode)?;
        }
        Ok(share_env(gpu, f, mem, &self.mps_pipe_dir))
    }

    fn clear_share(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        let mut d = self.non_mig(gpu)?;
        let before = self.shares.len();
        self.shares
            .retain(|(g, s)| !(g == gpu && s.slice_id == slice_id));
        if self.shares.len() == before {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        if self.exclusive_shares {
            let mode = self.shared_mode(gpu);
            Self::ensure_mode(gpu, &mut d, mode)?;
        }
        Ok(())
    }

    fn assign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<SliceEnv, BackendError> {
        let mut d = self.non_mig(gpu)?;
        let shares = self.shares.iter().filter(|(g, _)| g == gpu).count();
        super::whole_fits(gpu, self.whole_holder(gpu), shares, slice_id)?;
        // Only one process may hold a context on the GPU: nobody else's work lands on it.
        d.set_compute_mode(ComputeMode::ExclusiveProcess)
            .map_err(nvml_err("nvmlDeviceSetComputeMode"))?;
        if self.whole_holder(gpu).is_none() {
            self.whole.push((gpu.to_string(), slice_id.to_string()));
        }
        Ok(device_env(gpu))
    }

    fn unassign_whole(&mut self, gpu: &str, slice_id: &str) -> Result<(), BackendError> {
        let mut d = self.non_mig(gpu)?;
        if self.whole_holder(gpu) != Some(slice_id) {
            return Err(BackendError::NoSuchSlice {
                gpu: gpu.to_string(),
                slice: slice_id.to_string(),
            });
        }
        // A share GPU of the device plugin goes back to serving its MPS daemon.
        let mode = self.shared_mode(gpu);
        d.set_compute_mode(mode)
            .map_err(nvml_err("nvmlDeviceSetComputeMode"))?;
        self.whole.retain(|(g, _)| g != gpu);
        Ok(())
    }
}

/// The model of a device, by PCI device id, else by name (see [`convert::model`]).
fn device_model(d: &Device<'static>) -> Result<GpuModel, BackendError> {
    let pci_device_id = d.pci_info().ok().map(|p| p.pci_device_id);
    if let Some(m) = pci_device_id.and_then(GpuModel::from_pci_device_id) {
        return Ok(m);
    }
    let name = d.name().map_err(nvml_err("name"))?;
    Ok(convert::model(pci_device_id, Some(&name)))
}

/// Host memory from /proc/meminfo, bytes.
fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine has no NVIDIA driver; on one that has, the test checks nothing.
    #[test]
    fn without_a_driver_new_fails_with_no_driver_naming_the_library() {
        match NvmlBackend::new(false, "/tmp/nvidia-mps", None) {
            Err(BackendError::NoDriver(msg)) => {
                assert!(msg.contains("libnvidia-ml.so.1"), "{msg}");
                let shown = BackendError::NoDriver(msg).to_string();
                assert!(shown.contains("--backend sim"), "{shown}");
                assert!(shown.contains("libnvidia-ml"), "{shown}");
            }
            Err(e) => panic!("expected NoDriver, got {e}"),
            Ok(_) => eprintln!("an NVIDIA driver is present: no-driver path not exercised"),
        }
    }

    #[test]
    fn a_named_library_that_does_not_load_is_no_driver_naming_its_path() {
        let path = Path::new("/nonexistent/libgreenslice_nvml_sim.so");
        match NvmlBackend::new(false, "/tmp/nvidia-mps", Some(path)) {
            Err(BackendError::NoDriver(msg)) => {
                assert!(
                    msg.contains("/nonexistent/libgreenslice_nvml_sim.so"),
                    "{msg}"
                )
            }
            Err(e) => panic!("expected NoDriver, got {e}"),
            Ok(_) => panic!("a library that does not exist loaded"),
        }
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let t = "MemTotal:       131072 kB\nMemFree:        1024 kB\n";
        assert_eq!(parse_meminfo_total(t), Some(131_072 * 1024));
        assert_eq!(parse_meminfo_total("nothing"), None);
    }
}
