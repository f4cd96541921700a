//! `libgreenslice_nvml_sim.so`: a drop-in NVML library over the simulated GPU machine.
//!
//! It exports NVML's C functions with NVML's ABI (the struct layouts and return codes of `nvml.h`,
//! taken from nvml-wrapper-sys' bindgen output), so any NVML client works against it unchanged:
//! nvml-wrapper with `lib_path`, or NVIDIA's own bindings when the file is named
//! `libnvidia-ml.so.1` on the library path. The machine lives in the state file named by
//! `GREENSLICE_NVML_SIM_STATE` (see `gpu_sim::store`), so it outlives the process that loads this
//! library: an agent killed and restarted finds the hardware as it left it.
//!
//! Layout: [`handles`] turns NVML's opaque handles into (GPU, instance) and back without any
//! unsafe code; [`ffi`] is the only place that touches caller memory; the exports below check
//! every argument, run under one lock, and never let a panic cross the C ABI (each export runs in
//! `catch_unwind` and answers `NVML_ERROR_UNKNOWN` instead). `docs/SIMULATOR.md` lists what is
//! simulated and what differs from a real driver.

#![allow(non_snake_case, non_upper_case_globals)]

mod ffi;
mod handles;

use std::ffi::c_char;
use std::os::raw::{c_int, c_uint, c_ulonglong};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gpu_sim::store::wall_ms;
use gpu_sim::{Gpu, GpuInstance, Machine, MachineSpec, SimError, Store, StoreError};
use nvml_wrapper_sys::bindings::*;

use crate::ffi::{put, read_cstr, write_cstr};
use crate::handles::Handle;

/// An NVML return code.
type Ret = nvmlReturn_t;

const SUCCESS: Ret = nvmlReturn_enum_NVML_SUCCESS;
const UNINITIALIZED: Ret = nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
const INVALID_ARGUMENT: Ret = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const NOT_SUPPORTED: Ret = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const NO_PERMISSION: Ret = nvmlReturn_enum_NVML_ERROR_NO_PERMISSION;
const NOT_FOUND: Ret = nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
const INSUFFICIENT_SIZE: Ret = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
const DRIVER_NOT_LOADED: Ret = nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
const TIMEOUT: Ret = nvmlReturn_enum_NVML_ERROR_TIMEOUT;
const IN_USE: Ret = nvmlReturn_enum_NVML_ERROR_IN_USE;
const INSUFFICIENT_RESOURCES: Ret = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES;
const VERSION_MISMATCH: Ret = nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
const UNKNOWN: Ret = nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// Set to 1 to act as an unprivileged caller: changes answer NO_PERMISSION, as they do for a
/// non-root process on a real driver.
pub const UNPRIVILEGED_ENV: &str = "GREENSLICE_NVML_SIM_UNPRIVILEGED";

/// NVML's "no value" for instance ids of a process outside MIG.
const NO_ID: c_uint = 0xFFFF_FFFF;
/// The event types the simulated devices support (only XIDs are ever raised).
const SUPPORTED_EVENTS: c_ulonglong =
    (nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError) as c_ulonglong;
const MIB: u64 = 1 << 20;

/// One event set: which GPUs it listens to and the last event it handed out.
#[derive(Debug, Clone, Default)]
struct EventSet {
    gpus: Vec<u32>,
    last_seq: u64,
}

/// The library's state between nvmlInit and the last nvmlShutdown.
struct Session {
    store: Store,
    refs: u32,
    privileged: bool,
    sets: Vec<Option<EventSet>>,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn code(e: &SimError) -> Ret {
    match e {
        SimError::InvalidArgument(_) => INVALID_ARGUMENT,
        SimError::NotFound(_) => NOT_FOUND,
        SimError::InUse(_) => IN_USE,
        SimError::InsufficientResources(_) => INSUFFICIENT_RESOURCES,
        SimError::NotSupported(_) => NOT_SUPPORTED,
        SimError::NoPermission(_) => NO_PERMISSION,
    }
}

fn store_code(e: StoreError) -> Ret {
    match e {
        StoreError::Sim(s) => code(&s),
        other => {
            eprintln!("greenslice-nvml-sim: {other}");
            UNKNOWN
        }
    }
}

/// Runs an export: no panic escapes, and nothing runs before nvmlInit.
fn guarded(f: impl FnOnce(&mut Session) -> Result<(), Ret>) -> Ret {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut g = SESSION.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_mut() {
            Some(s) if s.refs > 0 => f(s),
            _ => Err(UNINITIALIZED),
        }
    }));
    match r {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => UNKNOWN,
    }
}

/// Like [`guarded`], with the machine as the state file holds it now and the simulated time.
fn reading(f: impl FnOnce(&Machine, u64) -> Result<(), Ret>) -> Ret {
    guarded(|s| {
        let m = s.store.machine().map_err(store_code)?;
        let now = m.now_ms(wall_ms());
        f(m, now)
    })
}

/// Like [`guarded`], for a change of the hardware: needs privilege, runs under the file's lock.
fn changing<T>(f: impl FnOnce(&mut Machine, u64) -> Result<T, SimError>) -> Result<T, Ret> {
    let mut out = None;
    let r = guarded(|s| {
        if !s.privileged {
            return Err(NO_PERMISSION);
        }
        out = Some(s.store.update(f).map_err(store_code)?);
        Ok(())
    });
    match (r, out) {
        (SUCCESS, Some(v)) => Ok(v),
        (SUCCESS, None) => Err(UNKNOWN),
        (e, _) => Err(e),
    }
}

fn done(r: Result<(), Ret>) -> Ret {
    r.err().unwrap_or(SUCCESS)
}

// ---- resolving handles against the machine ---------------------------------------------------

/// A device handle resolved: a board, or a MIG device (one per GPU instance).
enum Dev<'m> {
    Board(&'m Gpu),
    Mig(&'m Gpu, &'m GpuInstance),
}

fn gpu_at(m: &Machine, i: u32) -> Result<&Gpu, Ret> {
    m.gpus.get(i as usize).ok_or(INVALID_ARGUMENT)
}

fn resolve(m: &Machine, d: nvmlDevice_t) -> Result<Dev<'_>, Ret> {
    match handles::decode(d) {
        Some(Handle::Device(g)) => Ok(Dev::Board(gpu_at(m, g)?)),
        Some(Handle::MigDevice(g, gi)) => {
            let gpu = gpu_at(m, g)?;
            let inst = gpu.instance(gi).map_err(|_| INVALID_ARGUMENT)?;
            Ok(Dev::Mig(gpu, inst))
        }
        _ => Err(INVALID_ARGUMENT),
    }
}

fn board(m: &Machine, d: nvmlDevice_t) -> Result<&Gpu, Ret> {
    match resolve(m, d)? {
        Dev::Board(g) => Ok(g),
        Dev::Mig(..) => Err(NOT_SUPPORTED),
    }
}

fn board_index(d: nvmlDevice_t) -> Result<u32, Ret> {
    match handles::decode(d) {
        Some(Handle::Device(g)) => Ok(g),
        Some(Handle::MigDevice(..)) => Err(NOT_SUPPORTED),
        _ => Err(INVALID_ARGUMENT),
    }
}

fn gpu_instance(m: &Machine, gi: nvmlGpuInstance_t) -> Result<(&Gpu, &GpuInstance), Ret> {
    match handles::decode(gi) {
        Some(Handle::GpuInstance(g, id)) => {
            let gpu = gpu_at(m, g)?;
            Ok((gpu, gpu.instance(id).map_err(|_| INVALID_ARGUMENT)?))
        }
        _ => Err(INVALID_ARGUMENT),
    }
}

// ---- init, shutdown, system -----------------------------------------------------------------

fn init() -> Ret {
    let r = catch_unwind(|| {
        let mut g = SESSION.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            s.refs += 1;
            return SUCCESS;
        }
        let Some(path) = std::env::var_os(gpu_sim::STATE_ENV).filter(|p| !p.is_empty()) else {
            eprintln!(
                "greenslice-nvml-sim: {} is not set: no simulated machine to drive",
                gpu_sim::STATE_ENV
            );
            return DRIVER_NOT_LOADED;
        };
        let opened = MachineSpec::from_env().and_then(|spec| Store::open(path, &spec));
        match opened {
            Ok(store) => {
                *g = Some(Session {
                    store,
                    refs: 1,
                    privileged: std::env::var(UNPRIVILEGED_ENV).map_or(true, |v| v != "1"),
                    sets: Vec::new(),
                });
                SUCCESS
            }
            Err(e) => {
                eprintln!("greenslice-nvml-sim: {e}");
                DRIVER_NOT_LOADED
            }
        }
    });
    r.unwrap_or(UNKNOWN)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Ret {
    init()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> Ret {
    init()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    init()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Ret {
    catch_unwind(|| {
        let mut g = SESSION.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_mut() {
            Some(s) if s.refs > 1 => {
                s.refs -= 1;
                SUCCESS
            }
            Some(_) => {
                *g = None;
                SUCCESS
            }
            None => UNINITIALIZED,
        }
    })
    .unwrap_or(UNKNOWN)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    let s: &'static [u8] = match result {
        SUCCESS => b"Success\0",
        UNINITIALIZED => b"Uninitialized\0",
        INVALID_ARGUMENT => b"Invalid Argument\0",
        NOT_SUPPORTED => b"Not Supported\0",
        NO_PERMISSION => b"Insufficient Permissions\0",
        NOT_FOUND => b"Not Found\0",
        INSUFFICIENT_SIZE => b"Insufficient Size\0",
        DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        TIMEOUT => b"Timeout\0",
        IN_USE => b"In use by another client\0",
        INSUFFICIENT_RESOURCES => b"Insufficient resources\0",
        VERSION_MISMATCH => b"Argument version mismatch\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    reading(|m, _| write_cstr(version, length, &m.driver_version))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Ret {
    reading(|m, _| write_cstr(version, length, &format!("12.{}", m.driver_version)))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlSystemGetCudaDriverVersion(v: *mut c_int) -> Ret {
    reading(|m, _| put(v, m.cuda_driver_version))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> Ret {
    nvmlSystemGetCudaDriverVersion(v)
}

// ---- devices ----------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    reading(|m, _| put(count, m.gpus.len() as c_uint))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> Ret {
    nvmlDeviceGetCount_v2(count)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) -> Ret {
    reading(|m, _| {
        gpu_at(m, index)?;
        put(device, handles::device(index))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut nvmlDevice_t) -> Ret {
    nvmlDeviceGetHandleByIndex_v2(index, device)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) -> Ret {
    reading(|m, _| {
        let uuid = read_cstr(uuid)?;
        for g in &m.gpus {
            if g.uuid == uuid {
                return put(device, handles::device(g.index));
            }
            if let Some(i) = g.gpu_instances.iter().find(|i| i.uuid == uuid) {
                return put(device, handles::mig_device(g.index, i.id));
            }
        }
        Err(NOT_FOUND)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> Ret {
    reading(|m, _| {
        let want = read_cstr(bus_id)?.to_ascii_uppercase();
        let g = m
            .gpus
            .iter()
            .find(|g| g.pci_bus_id == want || g.pci_bus_id.ends_with(&want))
            .ok_or(NOT_FOUND)?;
        put(device, handles::device(g.index))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetHandleByPciBusId(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> Ret {
    nvmlDeviceGetHandleByPciBusId_v2(bus_id, device)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> Ret {
    reading(|m, _| put(index, board(m, device)?.index))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMinorNumber(device: nvmlDevice_t, minor: *mut c_uint) -> Ret {
    reading(|m, _| put(minor, board(m, device)?.index))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> Ret {
    reading(|m, _| {
        let n = match resolve(m, device)? {
            Dev::Board(g) => g.spec().product_name.to_string(),
            Dev::Mig(g, i) => format!("{} MIG {}", g.spec().product_name, i.profile),
        };
        write_cstr(name, length, &n)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> Ret {
    reading(|m, _| {
        let u = match resolve(m, device)? {
            Dev::Board(g) => &g.uuid,
            Dev::Mig(_, i) => &i.uuid,
        };
        write_cstr(uuid, length, u)
    })
}

fn pci_info(g: &Gpu) -> nvmlPciInfo_t {
    let spec = g.spec();
    let bus = u32::from_str_radix(g.pci_bus_id.get(9..11).unwrap_or("0"), 16).unwrap_or(0);
    let mut p = nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: 0,
        bus,
        device: 0,
        pciDeviceId: spec.pci_device_id,
        pciSubSystemId: spec.pci_subsystem_id,
        busId: [0; 32],
    };
    for (dst, src) in p.busId.iter_mut().zip(g.pci_bus_id.bytes()) {
        *dst = src as c_char;
    }
    let legacy = g.pci_bus_id.get(4..).unwrap_or("");
    for (dst, src) in p.busIdLegacy.iter_mut().take(15).zip(legacy.bytes()) {
        *dst = src as c_char;
    }
    p
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetPciInfo_v3(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) -> Ret {
    reading(|m, _| {
        let g = match resolve(m, device)? {
            Dev::Board(g) | Dev::Mig(g, _) => g,
        };
        put(pci, pci_info(g))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetPciInfo_v2(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) -> Ret {
    nvmlDeviceGetPciInfo_v3(device, pci)
}

/// (total, used) memory of a device in bytes.
fn memory(d: &Dev<'_>) -> (u64, u64) {
    match d {
        Dev::Board(g) => (g.spec().memory_mib * MIB, g.used_memory_mib() * MIB),
        Dev::Mig(g, i) => {
            let total = g.profile_of(i).map_or(0, |p| p.memory_mib) * MIB;
            let used: u64 = g
                .processes
                .iter()
                .filter(|p| p.gpu_instance == Some(i.id))
                .map(|p| p.used_memory_mib)
                .sum();
            (total, used * MIB)
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, out: *mut nvmlMemory_t) -> Ret {
    reading(|m, _| {
        let (total, used) = memory(&resolve(m, device)?);
        put(
            out,
            nvmlMemory_t {
                total,
                free: total.saturating_sub(used),
                used,
            },
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    out: *mut nvmlMemory_v2_t,
) -> Ret {
    reading(|m, _| {
        let want = (std::mem::size_of::<nvmlMemory_v2_t>() | (2 << 24)) as c_uint;
        let version = ffi::read_version(out)?;
        if version != want {
            return Err(VERSION_MISMATCH);
        }
        let (total, used) = memory(&resolve(m, device)?);
        put(
            out,
            nvmlMemory_v2_t {
                version,
                total,
                reserved: 0,
                free: total.saturating_sub(used),
                used,
            },
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> Ret {
    reading(|m, _| put(power, board(m, device)?.power_mw()))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> Ret {
    reading(|m, now| put(energy, board(m, device)?.energy_mj(now) as c_ulonglong))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetEnforcedPowerLimit(device: nvmlDevice_t, limit: *mut c_uint) -> Ret {
    reading(|m, _| put(limit, board(m, device)?.power_limit_mw))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> Ret {
    nvmlDeviceGetEnforcedPowerLimit(device, limit)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> Ret {
    reading(|m, _| put(limit, board(m, device)?.spec().power_limit_mw))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    device: nvmlDevice_t,
    min: *mut c_uint,
    max: *mut c_uint,
) -> Ret {
    reading(|m, _| {
        let s = board(m, device)?.spec();
        put(min, s.power_limit_mw / 2)?;
        put(max, s.power_limit_mw)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> Ret {
    reading(|m, _| {
        if sensor != nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(INVALID_ARGUMENT);
        }
        put(temp, board(m, device)?.temperature_c())
    })
}

fn clock(g: &Gpu, kind: nvmlClockType_t, max: bool) -> Result<c_uint, Ret> {
    let s = g.spec();
    match kind {
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => {
            Ok(if max { s.max_sm_mhz } else { g.sm_clock_mhz() })
        }
        nvmlClockType_enum_NVML_CLOCK_MEM => Ok(2619),
        nvmlClockType_enum_NVML_CLOCK_VIDEO => Ok(if max { 1755 } else { 1275 }),
        _ => Err(INVALID_ARGUMENT),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    kind: nvmlClockType_t,
    mhz: *mut c_uint,
) -> Ret {
    reading(|m, _| put(mhz, clock(board(m, device)?, kind, false)?))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: nvmlDevice_t,
    kind: nvmlClockType_t,
    mhz: *mut c_uint,
) -> Ret {
    reading(|m, _| put(mhz, clock(board(m, device)?, kind, true)?))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    util: *mut nvmlUtilization_t,
) -> Ret {
    reading(|m, _| {
        let (gpu, memory) = board(m, device)?.utilization().ok_or(NOT_SUPPORTED)?;
        put(util, nvmlUtilization_t { gpu, memory })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> Ret {
    reading(|m, _| {
        let (g, only) = match resolve(m, device)? {
            Dev::Board(g) => (g, None),
            Dev::Mig(g, i) => (g, Some(i.id)),
        };
        let list: Vec<nvmlProcessInfo_t> = g
            .processes
            .iter()
            .filter(|p| only.is_none() || p.gpu_instance == only)
            .map(|p| nvmlProcessInfo_t {
                pid: p.pid,
                usedGpuMemory: p.used_memory_mib * MIB,
                gpuInstanceId: p.gpu_instance.unwrap_or(NO_ID),
                computeInstanceId: p.compute_instance.unwrap_or(NO_ID),
            })
            .collect();
        ffi::fill(infos, count, &list)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> Ret {
    nvmlDeviceGetComputeRunningProcesses_v3(device, count, infos)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    samples: *mut nvmlProcessUtilizationSample_t,
    count: *mut c_uint,
    last_seen_us: c_ulonglong,
) -> Ret {
    reading(|m, now| {
        let g = board(m, device)?;
        if g.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        let now_us = now * 1000;
        let list: Vec<nvmlProcessUtilizationSample_t> = if last_seen_us >= now_us {
            Vec::new()
        } else {
            g.processes
                .iter()
                .map(|p| nvmlProcessUtilizationSample_t {
                    pid: p.pid,
                    timeStamp: now_us,
                    smUtil: p.sm_util,
                    memUtil: p.mem_util,
                    encUtil: 0,
                    decUtil: 0,
                })
                .collect()
        };
        if list.is_empty() && !samples.is_null() {
            return Err(NOT_FOUND);
        }
        ffi::fill(samples, count, &list)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetComputeMode(
    device: nvmlDevice_t,
    mode: *mut nvmlComputeMode_t,
) -> Ret {
    reading(|m, _| put(mode, board(m, device)?.compute_mode))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetComputeMode(device: nvmlDevice_t, mode: nvmlComputeMode_t) -> Ret {
    done(board_index(device).and_then(|g| changing(|m, _| m.set_compute_mode(g, mode))))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmQueryDeviceSupport(
    device: nvmlDevice_t,
    support: *mut nvmlGpmSupport_t,
) -> Ret {
    reading(|m, _| {
        board(m, device)?;
        let version = ffi::read_version(support)?;
        put(
            support,
            nvmlGpmSupport_t {
                version,
                isSupportedDevice: 0,
            },
        )
    })
}

// ---- MIG ----------------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        if g.spec().mig.is_none() {
            return Err(NOT_SUPPORTED);
        }
        let mode = c_uint::from(g.mig_enabled);
        put(current, mode)?;
        put(pending, mode)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetMigMode(
    device: nvmlDevice_t,
    mode: c_uint,
    activation: *mut nvmlReturn_t,
) -> Ret {
    let r = (|| {
        if mode > 1 || activation.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let g = board_index(device)?;
        changing(|m, _| m.set_mig_mode(g, mode == 1))?;
        Ok(())
    })();
    if r.is_ok() {
        // The guard above proved `activation` non-null.
        let _ = put(activation, SUCCESS);
    }
    done(r)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMaxMigDeviceCount(device: nvmlDevice_t, count: *mut c_uint) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        put(count, g.spec().mig.map_or(0, |s| s.compute_slices))
    })
}

/// MIG devices of a board: its GPU instances that have a compute instance, by id.
fn mig_devices(g: &Gpu) -> impl Iterator<Item = &GpuInstance> {
    g.gpu_instances
        .iter()
        .filter(|i| !i.compute_instances.is_empty())
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig: *mut nvmlDevice_t,
) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        if !g.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        if index >= g.spec().mig.map_or(0, |s| s.compute_slices) {
            return Err(INVALID_ARGUMENT);
        }
        let i = mig_devices(g).nth(index as usize).ok_or(NOT_FOUND)?;
        put(mig, handles::mig_device(g.index, i.id))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceIsMigDeviceHandle(device: nvmlDevice_t, is_mig: *mut c_uint) -> Ret {
    reading(|m, _| {
        let v = matches!(resolve(m, device)?, Dev::Mig(..));
        put(is_mig, c_uint::from(v))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> Ret {
    reading(|m, _| match resolve(m, device)? {
        Dev::Mig(_, i) => put(id, i.id),
        Dev::Board(_) => Err(NOT_SUPPORTED),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetComputeInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> Ret {
    reading(|m, _| match resolve(m, device)? {
        Dev::Mig(_, i) => put(id, i.compute_instances.first().map_or(0, |c| c.id)),
        Dev::Board(_) => Err(NOT_SUPPORTED),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> Ret {
    reading(|m, _| match resolve(m, mig)? {
        Dev::Mig(g, _) => put(device, handles::device(g.index)),
        Dev::Board(_) => Err(INVALID_ARGUMENT),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        if profile >= NVML_GPU_INSTANCE_PROFILE_COUNT {
            return Err(INVALID_ARGUMENT);
        }
        let p = g.spec().profile_by_index(profile).ok_or(NOT_SUPPORTED)?;
        put(
            info,
            nvmlGpuInstanceProfileInfo_t {
                id: p.id,
                isP2pSupported: 0,
                sliceCount: p.compute_slices,
                instanceCount: p.max_instances,
                multiprocessorCount: p.sms,
                copyEngineCount: p.compute_slices.max(1),
                decoderCount: if p.media { 1 } else { 0 },
                encoderCount: 0,
                jpegCount: if p.media { 1 } else { 0 },
                ofaCount: if p.media { 1 } else { 0 },
                memorySizeMB: p.memory_mib,
            },
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        let p = g.spec().profile_by_id(profile_id).ok_or(INVALID_ARGUMENT)?;
        let list: Vec<nvmlGpuInstancePlacement_t> = p
            .starts
            .iter()
            .map(|&start| nvmlGpuInstancePlacement_t {
                start,
                size: p.memory_slices,
            })
            .collect();
        if placements.is_null() {
            return put(count, list.len() as c_uint);
        }
        ffi::fill(placements, count, &list)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetGpuInstanceRemainingCapacity(
    device: nvmlDevice_t,
    profile_id: c_uint,
    count: *mut c_uint,
) -> Ret {
    reading(|m, now| {
        let g = board(m, device)?;
        if !g.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        g.spec().profile_by_id(profile_id).ok_or(INVALID_ARGUMENT)?;
        // Place instances one after another on a copy until none fits.
        let mut copy = m.clone();
        let mut n = 0;
        while copy.create_gpu_instance(g.index, profile_id, None).is_ok() {
            n += 1;
        }
        let _ = now;
        put(count, n)
    })
}

fn create_gi(
    device: nvmlDevice_t,
    profile_id: c_uint,
    start: Option<(u32, u32)>,
    out: *mut nvmlGpuInstance_t,
) -> Ret {
    let r = (|| {
        if out.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let g = board_index(device)?;
        let id = changing(|m, _| {
            let gpu = m.gpu(g)?;
            let p = gpu
                .spec()
                .profile_by_id(profile_id)
                .ok_or_else(|| SimError::InvalidArgument(format!("profile id {profile_id}")))?;
            if let Some((_, size)) = start
                && size != p.memory_slices
            {
                return Err(SimError::InvalidArgument(format!(
                    "a {} placement covers {} memory slices, not {size}",
                    p.name, p.memory_slices
                )));
            }
            m.create_gpu_instance(g, profile_id, start.map(|s| s.0))
        })?;
        put(out, handles::gpu_instance(g, id))
    })();
    done(r)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceCreateGpuInstance(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gi: *mut nvmlGpuInstance_t,
) -> Ret {
    create_gi(device, profile_id, None, gi)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gi: *mut nvmlGpuInstance_t,
) -> Ret {
    match ffi::get(placement) {
        Ok(p) => create_gi(device, profile_id, Some((p.start, p.size)), gi),
        Err(e) => e,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gis: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        if !g.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        let p = g.spec().profile_by_id(profile_id).ok_or(INVALID_ARGUMENT)?;
        if gis.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let list: Vec<nvmlGpuInstance_t> = g
            .gpu_instances
            .iter()
            .filter(|i| i.profile_id == p.id)
            .map(|i| handles::gpu_instance(g.index, i.id))
            .collect();
        // NVML's contract: the buffer holds the profile's instanceCount handles.
        ffi::fill_unsized(gis, count, &list, p.max_instances)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gi: *mut nvmlGpuInstance_t,
) -> Ret {
    reading(|m, _| {
        let g = board(m, device)?;
        if !g.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        g.instance(id).map_err(|_| NOT_FOUND)?;
        put(gi, handles::gpu_instance(g.index, id))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceGetInfo(
    gi: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> Ret {
    reading(|m, _| {
        let (g, i) = gpu_instance(m, gi)?;
        put(
            info,
            nvmlGpuInstanceInfo_t {
                device: handles::device(g.index),
                id: i.id,
                profileId: i.profile_id,
                placement: nvmlGpuInstancePlacement_t {
                    start: i.start,
                    size: i.size,
                },
            },
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceDestroy(gi: nvmlGpuInstance_t) -> Ret {
    let r = match handles::decode(gi) {
        Some(Handle::GpuInstance(g, id)) => changing(|m, _| {
            m.gpu(g)?
                .instance(id)
                .map_err(|_| SimError::InvalidArgument(format!("no GPU instance {id}")))?;
            m.destroy_gpu_instance(g, id)
        }),
        _ => Err(INVALID_ARGUMENT),
    };
    done(r)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gi: nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> Ret {
    reading(|m, _| {
        let (g, i) = gpu_instance(m, gi)?;
        if profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            return Err(INVALID_ARGUMENT);
        }
        if eng_profile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED {
            return Err(NOT_SUPPORTED);
        }
        let gp = g.profile_of(i).ok_or(UNKNOWN)?;
        let slices = gpu_sim::machine::ci_profile_slices(profile).ok_or(NOT_SUPPORTED)?;
        if slices > gp.compute_slices {
            return Err(NOT_SUPPORTED);
        }
        put(
            info,
            nvmlComputeInstanceProfileInfo_t {
                id: profile,
                sliceCount: slices,
                instanceCount: gp.compute_slices / slices,
                multiprocessorCount: gp.sms * slices / gp.compute_slices,
                sharedCopyEngineCount: gp.compute_slices.max(1),
                sharedDecoderCount: 0,
                sharedEncoderCount: 0,
                sharedJpegCount: 0,
                sharedOfaCount: 0,
            },
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gi: nvmlGpuInstance_t,
    profile_id: c_uint,
    ci: *mut nvmlComputeInstance_t,
) -> Ret {
    let r = (|| {
        if ci.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let Some(Handle::GpuInstance(g, id)) = handles::decode(gi) else {
            return Err(INVALID_ARGUMENT);
        };
        let c = changing(|m, _| m.create_compute_instance(g, id, profile_id))?;
        put(ci, handles::compute_instance(g, id, c))
    })();
    done(r)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gi: nvmlGpuInstance_t,
    profile_id: c_uint,
    cis: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> Ret {
    reading(|m, _| {
        let (g, i) = gpu_instance(m, gi)?;
        if cis.is_null() || profile_id >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            return Err(INVALID_ARGUMENT);
        }
        let list: Vec<nvmlComputeInstance_t> = i
            .compute_instances
            .iter()
            .filter(|c| c.profile == profile_id)
            .map(|c| handles::compute_instance(g.index, i.id, c.id))
            .collect();
        let most = g.profile_of(i).map_or(1, |p| p.compute_slices);
        ffi::fill_unsized(cis, count, &list, most)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    gi: nvmlGpuInstance_t,
    id: c_uint,
    ci: *mut nvmlComputeInstance_t,
) -> Ret {
    reading(|m, _| {
        let (g, i) = gpu_instance(m, gi)?;
        i.compute_instances
            .iter()
            .find(|c| c.id == id)
            .ok_or(NOT_FOUND)?;
        put(ci, handles::compute_instance(g.index, i.id, id))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlComputeInstanceGetInfo_v2(
    ci: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> Ret {
    reading(|m, _| {
        let Some(Handle::ComputeInstance(g, gi, id)) = handles::decode(ci) else {
            return Err(INVALID_ARGUMENT);
        };
        let gpu = gpu_at(m, g)?;
        let inst = gpu.instance(gi).map_err(|_| INVALID_ARGUMENT)?;
        let c = inst
            .compute_instances
            .iter()
            .find(|c| c.id == id)
            .ok_or(INVALID_ARGUMENT)?;
        put(
            info,
            nvmlComputeInstanceInfo_t {
                device: handles::device(g),
                gpuInstance: handles::gpu_instance(g, gi),
                id,
                profileId: c.profile,
                placement: nvmlComputeInstancePlacement_t {
                    start: c.start,
                    size: c.size,
                },
            },
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlComputeInstanceDestroy(ci: nvmlComputeInstance_t) -> Ret {
    let r = match handles::decode(ci) {
        Some(Handle::ComputeInstance(g, gi, id)) => changing(|m, _| {
            m.gpu(g)?
                .instance(gi)
                .map_err(|_| SimError::InvalidArgument(format!("no GPU instance {gi}")))?;
            m.destroy_compute_instance(g, gi, id).map_err(|e| match e {
                SimError::NotFound(s) => SimError::InvalidArgument(s),
                e => e,
            })
        }),
        _ => Err(INVALID_ARGUMENT),
    };
    done(r)
}

// ---- events -------------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> Ret {
    guarded(|s| {
        if set.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let slot = match s.sets.iter().position(Option::is_none) {
            Some(i) => i,
            None if s.sets.len() < handles::EVENT_SETS => {
                s.sets.push(None);
                s.sets.len() - 1
            }
            None => return Err(nvmlReturn_enum_NVML_ERROR_MEMORY),
        };
        s.sets[slot] = Some(EventSet::default());
        put(set, handles::event_set(slot))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> Ret {
    guarded(|s| {
        let Some(Handle::EventSet(i)) = handles::decode(set) else {
            return Err(INVALID_ARGUMENT);
        };
        match s.sets.get_mut(i) {
            Some(e @ Some(_)) => {
                *e = None;
                Ok(())
            }
            _ => Err(INVALID_ARGUMENT),
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut c_ulonglong,
) -> Ret {
    reading(|m, _| {
        board(m, device)?;
        put(types, SUPPORTED_EVENTS)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: c_ulonglong,
    set: nvmlEventSet_t,
) -> Ret {
    guarded(|s| {
        let g = board_index(device)?;
        let m = s.store.machine().map_err(store_code)?;
        gpu_at(m, g)?;
        let last = m.next_event_seq.saturating_sub(1);
        if types & !SUPPORTED_EVENTS != 0 {
            return Err(NOT_SUPPORTED);
        }
        let Some(Handle::EventSet(i)) = handles::decode(set) else {
            return Err(INVALID_ARGUMENT);
        };
        let Some(Some(es)) = s.sets.get_mut(i) else {
            return Err(INVALID_ARGUMENT);
        };
        if !es.gpus.contains(&g) {
            es.gpus.push(g);
        }
        es.last_seq = es.last_seq.max(last);
        Ok(())
    })
}

/// The next event of a set, if one is waiting; the set moves past it.
fn next_event(s: &mut Session, set: usize) -> Result<Option<(u32, u64)>, Ret> {
    let m = s.store.machine().map_err(store_code)?;
    let Some(Some(es)) = s.sets.get_mut(set) else {
        return Err(INVALID_ARGUMENT);
    };
    let ev = m
        .events
        .iter()
        .find(|e| e.seq > es.last_seq && es.gpus.contains(&e.gpu))
        .map(|e| (e.seq, e.gpu, e.xid));
    Ok(ev.map(|(seq, gpu, xid)| {
        es.last_seq = seq;
        (gpu, xid)
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> Ret {
    let Some(Handle::EventSet(i)) = handles::decode(set) else {
        return INVALID_ARGUMENT;
    };
    if data.is_null() {
        return INVALID_ARGUMENT;
    }
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        let mut found = None;
        let r = guarded(|s| {
            found = next_event(s, i)?;
            Ok(())
        });
        if r != SUCCESS {
            return r;
        }
        if let Some((gpu, xid)) = found {
            return done(put(
                data,
                nvmlEventData_t {
                    device: handles::device(gpu),
                    eventType: c_ulonglong::from(nvmlEventTypeXidCriticalError),
                    eventData: xid,
                    gpuInstanceId: NO_ID,
                    computeInstanceId: NO_ID,
                },
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return TIMEOUT;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetWait(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> Ret {
    nvmlEventSetWait_v2(set, data, timeout_ms)
}
