//! The exported NVML functions. Each one runs through [`call`] (no panic crosses the ABI, and the
//! library must be initialised, else `NVML_ERROR_UNINITIALIZED`), or [`answer`] / [`answer_str`]
//! for a value read off the machine; handles are decoded and checked against the machine as it is
//! now, null out-pointers are `NVML_ERROR_INVALID_ARGUMENT`, and short buffers are
//! `NVML_ERROR_INSUFFICIENT_SIZE` (with the needed count written where the call has a count).

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::panic::AssertUnwindSafe;

use gpu_sim::machine::{Device, GpuInstance};
use gpu_sim::profiles::{self, nvml_index};
use gpu_sim::{ComputeMode, Machine, Store};
use nvml_wrapper_sys::bindings::*;

use crate::handle::{Handle, Tag};
use crate::state::{self, EventSet, Lib, Ret};

const SUCCESS: Ret = nvmlReturn_enum_NVML_SUCCESS;
const UNINIT: Ret = nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
const INVALID: Ret = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const NOT_SUPPORTED: Ret = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const NOT_FOUND: Ret = nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
const SHORT: Ret = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
const UNKNOWN: Ret = nvmlReturn_enum_NVML_ERROR_UNKNOWN;
const TIMEOUT: Ret = nvmlReturn_enum_NVML_ERROR_TIMEOUT;

/// The driver version this library reports.
const DRIVER_VERSION: &str = "580.65.06";
const NVML_VERSION: &str = "13.580.65.06";
const CUDA_VERSION: c_int = 13000;
/// Event types the simulated GPUs support: XIDs and double-bit ECC.
const SUPPORTED_EVENTS: u64 =
    (nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError) as u64;
/// `gpuInstanceId`/`computeInstanceId` of a process not on a MIG instance.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

fn guard(f: impl FnOnce() -> Result<(), Ret>) -> Ret {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(r)) => r,
        Err(_) => UNKNOWN,
    }
}

/// Runs `f` on the initialised library.
fn with_lib<R>(f: impl FnOnce(&mut Lib) -> Result<R, Ret>) -> Result<R, Ret> {
    let mut g = state::lock();
    let lib = g.as_mut().filter(|l| l.init_count > 0).ok_or(UNINIT)?;
    f(lib)
}

/// One export's body: `f` on the initialised library (else `UNINITIALIZED`), its error as the
/// return code, no panic across the ABI.
fn call(f: impl FnOnce(&mut Lib) -> Result<(), Ret>) -> Ret {
    guard(|| with_lib(f))
}

/// An export that answers one value read off the machine through the out-pointer `p`.
///
/// # Safety
/// `p` is null or valid for a write of one `T` (the C caller's out-pointer contract).
unsafe fn answer<T>(p: *mut T, f: impl FnOnce(&Machine) -> Result<T, Ret>) -> Ret {
    call(|lib| {
        let v = f(lib.machine()?)?;
        // SAFETY: the caller's contract on `p`.
        unsafe { out(p, v) }
    })
}

/// An export that answers a string read off the machine into `buf` of `len` bytes.
///
/// # Safety
/// `buf` is null or valid for writes of `len` bytes.
unsafe fn answer_str(
    buf: *mut c_char,
    len: c_uint,
    f: impl FnOnce(&Machine) -> Result<String, Ret>,
) -> Ret {
    call(|lib| {
        let s = f(lib.machine()?)?;
        // SAFETY: the caller's contract on `buf` and `len`.
        unsafe { out_str(buf, len, &s) }
    })
}

/// Writes `v` through `p`.
///
/// # Safety
/// `p` is null or valid for a write of one `T` (the C caller's out-pointer contract).
unsafe fn out<T>(p: *mut T, v: T) -> Result<(), Ret> {
    if p.is_null() {
        return Err(INVALID);
    }
    // SAFETY: non-null, and valid for writes by the caller's contract; `write` does not read or
    // drop the old value, which may be uninitialised.
    unsafe { p.write(v) };
    Ok(())
}

/// Copies `s` and a NUL into `buf` of `len` bytes.
///
/// # Safety
/// `buf` is null or valid for writes of `len` bytes.
unsafe fn out_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(INVALID);
    }
    if (len as usize) < s.len() + 1 {
        return Err(SHORT);
    }
    // SAFETY: `buf` has room for `len` >= s.len() + 1 bytes; the regions cannot overlap (`s` is
    // this library's own string).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        buf.add(s.len()).write(0);
    }
    Ok(())
}

/// Reads a NUL-terminated string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn in_str<'a>(p: *const c_char) -> Result<&'a str, Ret> {
    if p.is_null() {
        return Err(INVALID);
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| INVALID)
}

/// What a device handle names: a GPU, or a MIG device (a GPU instance of one).
enum Target<'a> {
    Gpu(&'a Device),
    Mig(&'a Device, &'a GpuInstance),
}

fn target(m: &Machine, h: nvmlDevice_t) -> Result<Target<'_>, Ret> {
    if let Some(d) = Handle::decode(h, Tag::Device) {
        return m
            .devices
            .get(d.gpu as usize)
            .map(Target::Gpu)
            .ok_or(INVALID);
    }
    let d = Handle::decode(h, Tag::MigDevice).ok_or(INVALID)?;
    let dev = m.devices.get(d.gpu as usize).ok_or(INVALID)?;
    let gi = dev.gpu_instance(d.gi).ok_or(INVALID)?;
    Ok(Target::Mig(dev, gi))
}

fn gpu(m: &Machine, h: nvmlDevice_t) -> Result<&Device, Ret> {
    match target(m, h)? {
        Target::Gpu(d) => Ok(d),
        Target::Mig(..) => Err(NOT_SUPPORTED),
    }
}

fn gpu_handle(d: &Device) -> nvmlDevice_t {
    Handle::new(Tag::Device, d.index, 0, 0).encode()
}

fn gi_handle(d: &Device, g: &GpuInstance) -> nvmlGpuInstance_t {
    Handle::new(Tag::GpuInstance, d.index, g.id, g.start).encode()
}

/// The GPU and GPU instance a GPU-instance handle names, if it still exists (same id and start).
fn gi_of(m: &Machine, h: nvmlGpuInstance_t) -> Result<(&Device, &GpuInstance), Ret> {
    let x = Handle::decode(h, Tag::GpuInstance).ok_or(INVALID)?;
    let d = m.devices.get(x.gpu as usize).ok_or(INVALID)?;
    let g = d
        .gpu_instance(x.gi)
        .filter(|g| g.start == x.x)
        .ok_or(INVALID)?;
    Ok((d, g))
}

fn now_us(m: &Machine) -> u64 {
    u64::try_from(m.now_ms).unwrap_or(0) * 1000
}

// ---- init and system ----

fn init() -> Result<(), Ret> {
    let mut g = state::lock();
    let lib = g.get_or_insert_with(Lib::default);
    if lib.init_count == 0 {
        let store = Store::from_env().map_err(|e| {
            eprintln!("libgreenslice_nvml_sim: {e}");
            state::store_err(&e)
        })?;
        lib.store = Some(store);
        lib.read_only = std::env::var(state::ENV_READ_ONLY).is_ok_and(|v| v == "1");
    }
    lib.init_count += 1;
    Ok(())
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Ret {
    guard(init)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> Ret {
    guard(init)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    guard(init)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Ret {
    guard(|| {
        let mut g = state::lock();
        let lib = g.as_mut().filter(|l| l.init_count > 0).ok_or(UNINIT)?;
        lib.init_count -= 1;
        if lib.init_count == 0 {
            lib.store = None;
            lib.event_sets.clear();
            lib.gpm_samples.clear();
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    let s: &'static CStr = match result {
        nvmlReturn_enum_NVML_SUCCESS => c"Success",
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => c"Not Found",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        nvmlReturn_enum_NVML_ERROR_TIMEOUT => c"Timeout",
        nvmlReturn_enum_NVML_ERROR_IN_USE => c"In use by another client",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => c"Insufficient Resources",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: `version` has `length` writable bytes by NVML's contract.
    call(|_| unsafe { out_str(version, length, DRIVER_VERSION) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: `version` has `length` writable bytes by NVML's contract.
    call(|_| unsafe { out_str(version, length, NVML_VERSION) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(v: *mut c_int) -> Ret {
    // SAFETY: `v` is an out-pointer by NVML's contract.
    call(|_| unsafe { out(v, CUDA_VERSION) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> Ret {
    // SAFETY: `v` is an out-pointer by NVML's contract.
    call(|_| unsafe { out(v, CUDA_VERSION) })
}

// ---- devices ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    // SAFETY: `count` is an out-pointer by NVML's contract.
    unsafe { answer(count, |m| Ok(m.devices.len() as c_uint)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> Ret {
    // SAFETY: same contract as the _v2 call.
    unsafe { nvmlDeviceGetCount_v2(count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> Ret {
    // SAFETY: `device` is an out-pointer by NVML's contract.
    unsafe {
        answer(device, |m| {
            m.devices.get(index as usize).map(gpu_handle).ok_or(INVALID)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> Ret {
    // SAFETY: same contract as the _v2 call.
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> Ret {
    // SAFETY: `uuid` is a NUL-terminated string and `device` an out-pointer by NVML's contract.
    unsafe {
        answer(device, |m| {
            let want = in_str(uuid)?;
            if let Some(d) = m.devices.iter().find(|d| d.uuid == want) {
                return Ok(gpu_handle(d));
            }
            m.devices
                .iter()
                .find_map(|d| {
                    d.gpu_instances
                        .iter()
                        .find(|g| g.mig_uuid == want)
                        .map(|g| Handle::new(Tag::MigDevice, d.index, g.id, 0).encode())
                })
                .ok_or(NOT_FOUND)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus: *const c_char,
    device: *mut nvmlDevice_t,
) -> Ret {
    // SAFETY: `bus` is a NUL-terminated string and `device` an out-pointer by NVML's contract.
    unsafe {
        answer(device, |m| {
            let want = in_str(bus)?.to_ascii_uppercase();
            // NVML accepts the 4-digit domain form too ("0000:18:00.0").
            m.devices
                .iter()
                .find(|d| d.pci_bus_id == want || d.pci_bus_id.ends_with(&want) && want.len() >= 12)
                .map(gpu_handle)
                .ok_or(NOT_FOUND)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> Ret {
    // SAFETY: `index` is an out-pointer by NVML's contract.
    unsafe { answer(index, |m| Ok(gpu(m, device)?.index)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> Ret {
    // SAFETY: `name` has `length` writable bytes by NVML's contract.
    unsafe {
        answer_str(name, length, |m| {
            Ok(match target(m, device)? {
                Target::Gpu(d) => d.kind.product_name().to_string(),
                Target::Mig(d, g) => format!("{} MIG {}", d.kind.product_name(), g.profile),
            })
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> Ret {
    // SAFETY: `uuid` has `length` writable bytes by NVML's contract.
    unsafe {
        answer_str(uuid, length, |m| {
            Ok(match target(m, device)? {
                Target::Gpu(d) => d.uuid.clone(),
                Target::Mig(_, g) => g.mig_uuid.clone(),
            })
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSerial(
    device: nvmlDevice_t,
    serial: *mut c_char,
    length: c_uint,
) -> Ret {
    // SAFETY: `serial` has `length` writable bytes by NVML's contract.
    unsafe { answer_str(serial, length, |m| Ok(gpu(m, device)?.serial.clone())) }
}

fn pci_info(d: &Device) -> nvmlPciInfo_t {
    let mut p = nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: 0,
        bus: 0x18 + d.index * 0x10,
        device: 0,
        pciDeviceId: (d.kind.pci_device_id() << 16) | 0x10DE,
        pciSubSystemId: 0x1839_10DE,
        busId: [0; 32],
    };
    for (i, b) in d.pci_bus_id.bytes().take(31).enumerate() {
        p.busId[i] = b as c_char;
    }
    // The legacy field has the 4-digit domain ("0000:18:00.0").
    for (i, b) in d.pci_bus_id.bytes().skip(4).take(15).enumerate() {
        p.busIdLegacy[i] = b as c_char;
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> Ret {
    // SAFETY: `pci` is an out-pointer by NVML's contract.
    unsafe { answer(pci, |m| Ok(pci_info(gpu(m, device)?))) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> Ret {
    // SAFETY: the same layout and contract as _v3.
    unsafe { nvmlDeviceGetPciInfo_v3(device, pci) }
}

fn memory(m: &Machine, device: nvmlDevice_t) -> Result<(u64, u64), Ret> {
    Ok(match target(m, device)? {
        Target::Gpu(d) => (d.memory_total_bytes(), d.memory_used_bytes()),
        Target::Mig(d, g) => {
            let used = d
                .processes
                .iter()
                .filter(|p| p.gpu_instance_id == Some(g.id))
                .map(|p| p.used_memory_bytes)
                .sum();
            (d.gi_memory_bytes(g), used)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    mem: *mut nvmlMemory_t,
) -> Ret {
    // SAFETY: `mem` is an out-pointer by NVML's contract.
    unsafe {
        answer(mem, |m| {
            let (total, used) = memory(m, device)?;
            Ok(nvmlMemory_t {
                total,
                used,
                free: total.saturating_sub(used),
            })
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    mem: *mut nvmlMemory_v2_t,
) -> Ret {
    call(|lib| {
        if mem.is_null() {
            return Err(INVALID);
        }
        let (total, used) = memory(lib.machine()?, device)?;
        // SAFETY: non-null out-pointer to an nvmlMemory_v2_t; its `version` field was set by
        // the caller and is kept.
        let version = unsafe { (*mem).version };
        let v = nvmlMemory_v2_t {
            version,
            total,
            reserved: 0,
            used,
            free: total.saturating_sub(used),
        };
        // SAFETY: as above.
        unsafe { out(mem, v) }
    })
}

/// A read of a GPU (not a MIG device) as one number.
fn gpu_u32(
    device: nvmlDevice_t,
    p: *mut c_uint,
    f: impl FnOnce(&Device) -> Result<u32, Ret>,
) -> Ret {
    // SAFETY: `p` is an out-pointer by NVML's contract.
    unsafe { answer(p, |m| f(gpu(m, device)?)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> Ret {
    gpu_u32(device, power, |d| Ok(d.power_mw()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> Ret {
    gpu_u32(device, limit, |d| Ok(d.power_limit_mw))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> Ret {
    gpu_u32(device, limit, |d| Ok(d.power_limit_mw))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> Ret {
    gpu_u32(device, limit, |d| Ok(d.kind.power_mw().1))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: c_uint,
    temp: *mut c_uint,
) -> Ret {
    gpu_u32(device, temp, |d| {
        if sensor != 0 {
            return Err(INVALID);
        }
        // 30 °C idle, 80 °C at full power.
        let (idle, max) = d.kind.power_mw();
        Ok(30 + 50 * (d.power_mw() - idle) / (max - idle).max(1))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    ty: nvmlClockType_t,
    clock: *mut c_uint,
) -> Ret {
    gpu_u32(device, clock, |d| match ty {
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => {
            Ok(d.sm_clock_mhz())
        }
        nvmlClockType_enum_NVML_CLOCK_MEM => Ok(2619),
        nvmlClockType_enum_NVML_CLOCK_VIDEO => Ok(1755),
        _ => Err(INVALID),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: nvmlDevice_t,
    ty: nvmlClockType_t,
    clock: *mut c_uint,
) -> Ret {
    gpu_u32(device, clock, |d| match ty {
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => {
            Ok(d.kind.max_sm_clock_mhz())
        }
        nvmlClockType_enum_NVML_CLOCK_MEM => Ok(2619),
        nvmlClockType_enum_NVML_CLOCK_VIDEO => Ok(1755),
        _ => Err(INVALID),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> Ret {
    // SAFETY: `energy` is an out-pointer by NVML's contract.
    unsafe { answer(energy, |m| Ok(gpu(m, device)?.energy_mj)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    util: *mut nvmlUtilization_t,
) -> Ret {
    // SAFETY: `util` is an out-pointer by NVML's contract.
    unsafe {
        answer(util, |m| {
            let d = gpu(m, device)?;
            // Not supported on MIG-enabled GPUs, as on a real driver.
            if d.mig_enabled {
                return Err(NOT_SUPPORTED);
            }
            Ok(nvmlUtilization_t {
                gpu: d.sm_util_pct(),
                memory: d.mem_util_pct(),
            })
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> Ret {
    call(|lib| {
        if count.is_null() {
            return Err(INVALID);
        }
        let m = lib.machine()?;
        let list: Vec<nvmlProcessInfo_t> = match target(m, device)? {
            Target::Gpu(d) => d.processes.iter().collect::<Vec<_>>(),
            Target::Mig(d, g) => d
                .processes
                .iter()
                .filter(|p| p.gpu_instance_id == Some(g.id))
                .collect(),
        }
        .into_iter()
        .map(|p| nvmlProcessInfo_t {
            pid: p.pid,
            usedGpuMemory: p.used_memory_bytes,
            gpuInstanceId: p.gpu_instance_id.unwrap_or(NO_INSTANCE),
            computeInstanceId: p.compute_instance_id.unwrap_or(NO_INSTANCE),
        })
        .collect();
        // SAFETY: `count` is a non-null in/out pointer by NVML's contract.
        let cap = unsafe { count.read() } as usize;
        let n = list.len() as c_uint;
        // SAFETY: as above.
        unsafe { count.write(n) };
        if list.is_empty() {
            return Ok(());
        }
        if cap < list.len() || infos.is_null() {
            return Err(SHORT);
        }
        // SAFETY: `infos` has room for `cap` >= list.len() elements by NVML's contract.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), infos, list.len()) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    samples: *mut nvmlProcessUtilizationSample_t,
    count: *mut c_uint,
    last_seen: c_ulonglong,
) -> Ret {
    call(|lib| {
        if count.is_null() {
            return Err(INVALID);
        }
        let m = lib.machine()?;
        let now = now_us(m);
        let d = gpu(m, device)?;
        // Per-process utilization is not supported on MIG-enabled GPUs.
        if d.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        let list: Vec<nvmlProcessUtilizationSample_t> = if now > last_seen {
            d.processes
                .iter()
                .filter(|p| p.sm_util_pct > 0 || p.mem_util_pct > 0)
                .map(|p| nvmlProcessUtilizationSample_t {
                    pid: p.pid,
                    timeStamp: now,
                    smUtil: p.sm_util_pct,
                    memUtil: p.mem_util_pct,
                    encUtil: 0,
                    decUtil: 0,
                })
                .collect()
        } else {
            Vec::new()
        };
        // SAFETY: `count` is a non-null in/out pointer by NVML's contract.
        let cap = unsafe { count.read() } as usize;
        // SAFETY: as above.
        unsafe { count.write(list.len() as c_uint) };
        if list.is_empty() {
            return Err(NOT_FOUND);
        }
        if samples.is_null() || cap < list.len() {
            return Err(SHORT);
        }
        // SAFETY: `samples` has room for `cap` >= list.len() elements by NVML's contract.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), samples, list.len()) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(
    device: nvmlDevice_t,
    mode: *mut nvmlComputeMode_t,
) -> Ret {
    gpu_u32(device, mode, |d| Ok(d.compute_mode as u32))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetComputeMode(device: nvmlDevice_t, mode: nvmlComputeMode_t) -> Ret {
    call(|lib| {
        let i = gpu(lib.machine()?, device)?.index;
        let mode = match mode {
            0 => ComputeMode::Default,
            2 => ComputeMode::Prohibited,
            3 => ComputeMode::ExclusiveProcess,
            _ => return Err(INVALID),
        };
        lib.change(|m| m.set_compute_mode(i, mode))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetPowerManagementLimit(device: nvmlDevice_t, limit: c_uint) -> Ret {
    call(|lib| {
        let i = gpu(lib.machine()?, device)?.index;
        lib.change(|m| m.set_power_limit(i, limit))
    })
}

// ---- MIG ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    call(|lib| {
        let d = gpu(lib.machine()?, device)?;
        if d.kind.mig_profiles().is_empty() {
            return Err(NOT_SUPPORTED);
        }
        let (c, p) = (d.mig_enabled as c_uint, d.mig_pending as c_uint);
        if pending.is_null() {
            return Err(INVALID);
        }
        // SAFETY: `current` and `pending` are out-pointers by NVML's contract.
        unsafe {
            out(current, c)?;
            out(pending, p)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceSetMigMode(
    device: nvmlDevice_t,
    mode: c_uint,
    status: *mut Ret,
) -> Ret {
    call(|lib| {
        if status.is_null() || mode > 1 {
            return Err(INVALID);
        }
        let i = gpu(lib.machine()?, device)?.index;
        let (cur, pending) = lib.change(|m| m.set_mig_mode(i, mode == 1))?;
        let activation = if cur == pending {
            SUCCESS
        } else {
            nvmlReturn_enum_NVML_ERROR_IN_USE
        };
        // SAFETY: `status` is a non-null out-pointer.
        unsafe { out(status, activation) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    is_mig: *mut c_uint,
) -> Ret {
    // SAFETY: `is_mig` is an out-pointer by NVML's contract.
    unsafe {
        answer(is_mig, |m| {
            Ok(matches!(target(m, device)?, Target::Mig(..)) as c_uint)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> Ret {
    gpu_u32(device, count, |d| {
        Ok(if d.kind.mig_profiles().is_empty() {
            0
        } else {
            profiles::COMPUTE_SLICES
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig: *mut nvmlDevice_t,
) -> Ret {
    call(|lib| {
        let d = gpu(lib.machine()?, device)?;
        if !d.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        if index >= profiles::COMPUTE_SLICES {
            return Err(INVALID);
        }
        // One MIG device per GPU instance that has a compute instance, in id order.
        let g = d
            .gpu_instances
            .iter()
            .filter(|g| !g.compute_instances.is_empty())
            .nth(index as usize)
            .ok_or(NOT_FOUND)?;
        let h = Handle::new(Tag::MigDevice, d.index, g.id, 0).encode();
        // SAFETY: `mig` is an out-pointer by NVML's contract.
        unsafe { out(mig, h) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> Ret {
    // SAFETY: `device` is an out-pointer by NVML's contract.
    unsafe {
        answer(device, |m| match target(m, mig)? {
            Target::Mig(d, _) => Ok(gpu_handle(d)),
            Target::Gpu(_) => Err(INVALID),
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(mig: nvmlDevice_t, id: *mut c_uint) -> Ret {
    // SAFETY: `id` is an out-pointer by NVML's contract.
    unsafe {
        answer(id, |m| match target(m, mig)? {
            Target::Mig(_, g) => Ok(g.id),
            Target::Gpu(_) => Err(INVALID),
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(mig: nvmlDevice_t, id: *mut c_uint) -> Ret {
    // SAFETY: `id` is an out-pointer by NVML's contract.
    unsafe {
        answer(id, |m| match target(m, mig)? {
            Target::Mig(_, g) => Ok(g.compute_instances.first().map_or(0, |c| c.id)),
            Target::Gpu(_) => Err(INVALID),
        })
    }
}

fn gi_profile_info(d: &Device, p: &profiles::GiProfile) -> nvmlGpuInstanceProfileInfo_t {
    nvmlGpuInstanceProfileInfo_t {
        id: p.id,
        isP2pSupported: 0,
        sliceCount: p.compute_slices,
        instanceCount: p.max_instances,
        multiprocessorCount: p.sm_count,
        copyEngineCount: p.compute_slices.max(1),
        decoderCount: u32::from(p.compute_slices >= 3 || p.media_extension()),
        encoderCount: 0,
        jpegCount: u32::from(p.media_extension() || p.compute_slices == 7),
        ofaCount: u32::from(p.media_extension() || p.compute_slices == 7),
        memorySizeMB: d.kind.profile_memory_mib(p),
    }
}

/// The MIG-capable GPU a device handle names and the profile with `id`.
fn gi_profile(
    m: &Machine,
    device: nvmlDevice_t,
    id: c_uint,
) -> Result<(&Device, &'static profiles::GiProfile), Ret> {
    let d = gpu(m, device)?;
    if d.kind.mig_profiles().is_empty() {
        return Err(NOT_SUPPORTED);
    }
    let p = d.kind.profile_by_id(id).ok_or(INVALID)?;
    Ok((d, p))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> Ret {
    call(|lib| {
        let d = gpu(lib.machine()?, device)?;
        if profile >= nvml_index::COUNT {
            return Err(INVALID);
        }
        let p = d.kind.profile_by_index(profile).ok_or(NOT_SUPPORTED)?;
        let v = gi_profile_info(d, p);
        // SAFETY: `info` is an out-pointer by NVML's contract.
        unsafe { out(info, v) }
    })
}

/// `nvmlGpuInstanceProfileInfo_v2`: the struct's size and version 2, as `nvml.h` builds it.
const GI_PROFILE_INFO_V2: c_uint =
    (std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as c_uint) | (2 << 24);

/// The versioned profile query NVIDIA's Python bindings (pynvml) call: the caller sets
/// `info->version`; version 2 is answered (with the profile's name), any other is
/// ARGUMENT_VERSION_MISMATCH.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfoV(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_v2_t,
) -> Ret {
    call(|lib| {
        let d = gpu(lib.machine()?, device)?;
        if info.is_null() || profile >= nvml_index::COUNT {
            return Err(INVALID);
        }
        // SAFETY: non-null, and by NVML's contract points at a struct whose version the caller
        // set; only that field is read before the struct is written whole.
        let version = unsafe { std::ptr::addr_of!((*info).version).read() };
        if version != GI_PROFILE_INFO_V2 {
            return Err(nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let p = d.kind.profile_by_index(profile).ok_or(NOT_SUPPORTED)?;
        let v1 = gi_profile_info(d, p);
        let mut name = [0 as c_char; 96];
        for (dst, b) in name.iter_mut().zip(p.name.bytes().take(95)) {
            *dst = b as c_char;
        }
        let v = nvmlGpuInstanceProfileInfo_v2_t {
            version,
            id: v1.id,
            isP2pSupported: v1.isP2pSupported,
            sliceCount: v1.sliceCount,
            instanceCount: v1.instanceCount,
            multiprocessorCount: v1.multiprocessorCount,
            copyEngineCount: v1.copyEngineCount,
            decoderCount: v1.decoderCount,
            encoderCount: v1.encoderCount,
            jpegCount: v1.jpegCount,
            ofaCount: v1.ofaCount,
            memorySizeMB: v1.memorySizeMB,
            name,
        };
        // SAFETY: `info` is a non-null out-pointer by NVML's contract.
        unsafe { out(info, v) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> Ret {
    call(|lib| {
        if count.is_null() {
            return Err(INVALID);
        }
        let (_, p) = gi_profile(lib.machine()?, device, profile_id)?;
        let list: Vec<nvmlGpuInstancePlacement_t> = p
            .starts
            .iter()
            .map(|&s| nvmlGpuInstancePlacement_t {
                start: s,
                size: p.size,
            })
            .collect();
        if !placements.is_null() {
            // SAFETY: NVML's contract: a non-null buffer holds every placement of the profile
            // (at most 7, as its profile info's placements say).
            unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), placements, list.len()) };
        }
        // SAFETY: `count` is a non-null out-pointer.
        unsafe { out(count, list.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceRemainingCapacity(
    device: nvmlDevice_t,
    profile_id: c_uint,
    count: *mut c_uint,
) -> Ret {
    call(|lib| {
        let (d, p) = gi_profile(lib.machine()?, device, profile_id)?;
        if !d.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        // How many more fit, placing greedily at the lowest free start.
        let mut occ = d.occupants();
        let mut n = 0;
        while let Some(&s) = profiles::free_starts(p, &occ).first() {
            occ.push(profiles::Occupant {
                profile: p,
                start: s,
            });
            n += 1;
        }
        // SAFETY: `count` is an out-pointer by NVML's contract.
        unsafe { out(count, n) }
    })
}

fn create_gi(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: Option<(u32, u32)>,
    gi_out: *mut nvmlGpuInstance_t,
) -> Ret {
    call(|lib| {
        if gi_out.is_null() {
            return Err(INVALID);
        }
        let (d, p) = gi_profile(lib.machine()?, device, profile_id)?;
        let (i, index) = (d.index, p.index);
        let id = lib.change(|m| m.create_gpu_instance(i, index, placement))?;
        let m = lib.machine()?;
        let d = m.devices.get(i as usize).ok_or(UNKNOWN)?;
        let g = d.gpu_instance(id).ok_or(UNKNOWN)?;
        // SAFETY: `gi_out` is a non-null out-pointer.
        unsafe { out(gi_out, gi_handle(d, g)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstance(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gi: *mut nvmlGpuInstance_t,
) -> Ret {
    create_gi(device, profile_id, None, gi)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gi: *mut nvmlGpuInstance_t,
) -> Ret {
    if placement.is_null() {
        return call(|_| Err(INVALID));
    }
    // SAFETY: non-null in-pointer to a placement by NVML's contract.
    let pl = match std::panic::catch_unwind(|| unsafe { placement.read() }) {
        Ok(p) => p,
        Err(_) => return UNKNOWN,
    };
    create_gi(device, profile_id, Some((pl.start, pl.size)), gi)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gis: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> Ret {
    call(|lib| {
        if gis.is_null() || count.is_null() {
            return Err(INVALID);
        }
        let (d, _) = gi_profile(lib.machine()?, device, profile_id)?;
        if !d.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        let list: Vec<nvmlGpuInstance_t> = d
            .gpu_instances
            .iter()
            .filter(|g| g.profile_id == profile_id)
            .map(|g| gi_handle(d, g))
            .collect();
        // SAFETY: NVML's contract: `gis` holds the profile's instanceCount handles, and no
        // profile has more instances than that.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), gis, list.len()) };
        // SAFETY: `count` is a non-null out-pointer.
        unsafe { out(count, list.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gi: *mut nvmlGpuInstance_t,
) -> Ret {
    call(|lib| {
        let d = gpu(lib.machine()?, device)?;
        if !d.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        let g = d.gpu_instance(id).ok_or(NOT_FOUND)?;
        // SAFETY: `gi` is an out-pointer by NVML's contract.
        unsafe { out(gi, gi_handle(d, g)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gi: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> Ret {
    call(|lib| {
        let (d, g) = gi_of(lib.machine()?, gi)?;
        let v = nvmlGpuInstanceInfo_t {
            device: gpu_handle(d),
            id: g.id,
            profileId: g.profile_id,
            placement: nvmlGpuInstancePlacement_t {
                start: g.start,
                size: g.size,
            },
        };
        // SAFETY: `info` is an out-pointer by NVML's contract.
        unsafe { out(info, v) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceDestroy(gi: nvmlGpuInstance_t) -> Ret {
    call(|lib| {
        let (d, g) = gi_of(lib.machine()?, gi)?;
        let (i, id) = (d.index, g.id);
        lib.change(|m| m.destroy_gpu_instance(i, id))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gi: nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> Ret {
    call(|lib| {
        let (d, g) = gi_of(lib.machine()?, gi)?;
        if eng_profile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED {
            return Err(INVALID);
        }
        let slices = *profiles::CI_PROFILE_SLICES
            .get(profile as usize)
            .ok_or(INVALID)?;
        let gp = d.kind.profile_by_id(g.profile_id).ok_or(UNKNOWN)?;
        if slices > gp.compute_slices {
            return Err(NOT_SUPPORTED);
        }
        let v = nvmlComputeInstanceProfileInfo_t {
            id: profile,
            sliceCount: slices,
            instanceCount: gp.compute_slices / slices,
            multiprocessorCount: gp.sm_count * slices / gp.compute_slices.max(1),
            sharedCopyEngineCount: gp.compute_slices,
            sharedDecoderCount: 0,
            sharedEncoderCount: 0,
            sharedJpegCount: 0,
            sharedOfaCount: 0,
        };
        // SAFETY: `info` is an out-pointer by NVML's contract.
        unsafe { out(info, v) }
    })
}

fn ci_handle(gpu: u32, gi: u32, ci: u32) -> nvmlComputeInstance_t {
    Handle::new(Tag::ComputeInstance, gpu, gi, ci).encode()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gi: nvmlGpuInstance_t,
    profile_id: c_uint,
    ci: *mut nvmlComputeInstance_t,
) -> Ret {
    call(|lib| {
        if ci.is_null() {
            return Err(INVALID);
        }
        let (d, g) = gi_of(lib.machine()?, gi)?;
        let (i, id) = (d.index, g.id);
        if profile_id as usize >= profiles::CI_PROFILE_SLICES.len() {
            return Err(INVALID);
        }
        let c = lib.change(|m| m.create_compute_instance(i, id, profile_id))?;
        // SAFETY: `ci` is a non-null out-pointer.
        unsafe { out(ci, ci_handle(i, id, c)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gi: nvmlGpuInstance_t,
    profile_id: c_uint,
    cis: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> Ret {
    call(|lib| {
        if cis.is_null() || count.is_null() {
            return Err(INVALID);
        }
        let (d, g) = gi_of(lib.machine()?, gi)?;
        let list: Vec<nvmlComputeInstance_t> = g
            .compute_instances
            .iter()
            .filter(|c| c.profile_index == profile_id)
            .map(|c| ci_handle(d.index, g.id, c.id))
            .collect();
        // SAFETY: NVML's contract: `cis` holds the CI profile's instanceCount handles (at
        // most 7), more than a GPU instance can have of one profile.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), cis, list.len()) };
        // SAFETY: `count` is a non-null out-pointer.
        unsafe { out(count, list.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    ci: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> Ret {
    call(|lib| {
        let x = Handle::decode(ci, Tag::ComputeInstance).ok_or(INVALID)?;
        let m = lib.machine()?;
        let d = m.devices.get(x.gpu as usize).ok_or(INVALID)?;
        let g = d.gpu_instance(x.gi).ok_or(INVALID)?;
        let c = g
            .compute_instances
            .iter()
            .find(|c| c.id == x.x)
            .ok_or(INVALID)?;
        let v = nvmlComputeInstanceInfo_t {
            device: gpu_handle(d),
            gpuInstance: gi_handle(d, g),
            id: c.id,
            profileId: c.profile_index,
            placement: nvmlComputeInstancePlacement_t {
                start: c.start,
                size: c.size,
            },
        };
        // SAFETY: `info` is an out-pointer by NVML's contract.
        unsafe { out(info, v) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlComputeInstanceDestroy(ci: nvmlComputeInstance_t) -> Ret {
    call(|lib| {
        let x = Handle::decode(ci, Tag::ComputeInstance).ok_or(INVALID)?;
        lib.change(|m| m.destroy_compute_instance(x.gpu, x.gi, x.x))
    })
}

// ---- GPM: the machine's activity counters (Hopper and newer), per GPU or per GPU instance ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(
    device: nvmlDevice_t,
    support: *mut nvmlGpmSupport_t,
) -> Ret {
    call(|lib| {
        let d = gpu(lib.machine()?, device)?;
        if support.is_null() {
            return Err(INVALID);
        }
        // SAFETY: non-null out-pointer; the caller set `version`, which is kept.
        unsafe { (*support).isSupportedDevice = c_uint::from(d.kind.has_gpm()) };
        Ok(())
    })
}

/// Most GPM samples allocated at once (a client that never frees cannot grow the library).
const MAX_GPM_SAMPLES: usize = 65_536;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(sample: *mut nvmlGpmSample_t) -> Ret {
    call(|lib| {
        if sample.is_null() {
            return Err(INVALID);
        }
        if lib.gpm_samples.len() >= MAX_GPM_SAMPLES {
            return Err(nvmlReturn_enum_NVML_ERROR_MEMORY);
        }
        let mut n = lib.next_gpm_sample;
        while lib.gpm_samples.contains_key(&n) {
            n = (n + 1) & 0xFF_FFFF;
        }
        lib.next_gpm_sample = (n + 1) & 0xFF_FFFF;
        lib.gpm_samples.insert(n, None);
        // SAFETY: non-null out-pointer by NVML's contract.
        unsafe { out(sample, Handle::new(Tag::GpmSample, 0, 0, n).encode()) }
    })
}

/// The number of an allocated GPM sample.
fn gpm_sample_no(lib: &Lib, sample: nvmlGpmSample_t) -> Result<u32, Ret> {
    let n = Handle::decode(sample, Tag::GpmSample).ok_or(INVALID)?.x;
    lib.gpm_samples.contains_key(&n).then_some(n).ok_or(INVALID)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleFree(sample: nvmlGpmSample_t) -> Ret {
    call(|lib| {
        let n = gpm_sample_no(lib, sample)?;
        lib.gpm_samples.remove(&n);
        Ok(())
    })
}

/// Fills GPM sample `sample` with a reading of `device` (`gi` none) or its GPU instance `gi`.
fn gpm_fill(device: nvmlDevice_t, gi: Option<c_uint>, sample: nvmlGpmSample_t) -> Ret {
    call(|lib| {
        let n = gpm_sample_no(lib, sample)?;
        let m = lib.machine()?;
        let i = gpu(m, device)?.index;
        let r = m.gpm_sample(i, gi).map_err(|e| state::sim_err(&e))?;
        lib.gpm_samples.insert(n, Some(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleGet(device: nvmlDevice_t, sample: nvmlGpmSample_t) -> Ret {
    gpm_fill(device, None, sample)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmMigSampleGet(
    device: nvmlDevice_t,
    gpu_instance_id: c_uint,
    sample: nvmlGpmSample_t,
) -> Ret {
    gpm_fill(device, Some(gpu_instance_id), sample)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmMetricsGet(req: *mut nvmlGpmMetricsGet_t) -> Ret {
    call(|lib| {
        if req.is_null() {
            return Err(INVALID);
        }
        // SAFETY: non-null pointer to the caller's request by NVML's contract; no other reference
        // to it exists during the call.
        let req = unsafe { &mut *req };
        if req.version != NVML_GPM_METRICS_GET_VERSION {
            return Err(nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let count = req.numMetrics as usize;
        if count > req.metrics.len() {
            return Err(INVALID);
        }
        let reading = |s| {
            let n = gpm_sample_no(lib, s)?;
            lib.gpm_samples.get(&n).copied().flatten().ok_or(INVALID)
        };
        let (a, b) = (reading(req.sample1)?, reading(req.sample2)?);
        let r = gpu_sim::machine::gpm_metrics(&a, &b).map_err(|e| state::sim_err(&e))?;
        for metric in &mut req.metrics[..count] {
            let (value, name, long, unit) = match metric.metricId {
                nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_UTIL => {
                    (r.sm_util_pct, c"sm_util", c"SM utilization", c"%")
                }
                nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL => (
                    r.dram_bw_util_pct,
                    c"dram_bw_util",
                    c"DRAM bandwidth utilization",
                    c"%",
                ),
                nvmlGpmMetricId_t_NVML_GPM_METRIC_ANY_TENSOR_UTIL => (
                    r.tensor_util_pct,
                    c"any_tensor_util",
                    c"Percentage of time any tensor pipe is active",
                    c"%",
                ),
                _ => {
                    metric.nvmlReturn = NOT_SUPPORTED;
                    metric.value = 0.0;
                    continue;
                }
            };
            metric.nvmlReturn = SUCCESS;
            metric.value = value;
            // The strings are static; the caller only reads them.
            metric.metricInfo.shortName = name.as_ptr().cast_mut();
            metric.metricInfo.longName = long.as_ptr().cast_mut();
            metric.metricInfo.unit = unit.as_ptr().cast_mut();
        }
        Ok(())
    })
}

// ---- events ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> Ret {
    call(|lib| {
        if set.is_null() {
            return Err(INVALID);
        }
        lib.next_set += 1;
        let n = lib.next_set;
        lib.event_sets.insert(n, EventSet::default());
        // SAFETY: non-null out-pointer.
        unsafe { out(set, Handle::new(Tag::EventSet, 0, 0, n).encode()) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut c_ulonglong,
) -> Ret {
    call(|lib| {
        gpu(lib.machine()?, device)?;
        // SAFETY: `types` is an out-pointer by NVML's contract.
        unsafe { out(types, SUPPORTED_EVENTS) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: c_ulonglong,
    set: nvmlEventSet_t,
) -> Ret {
    call(|lib| {
        let s = Handle::decode(set, Tag::EventSet).ok_or(INVALID)?;
        let d = gpu(lib.machine()?, device)?;
        if types & !SUPPORTED_EVENTS != 0 {
            return Err(NOT_SUPPORTED);
        }
        let seen = d.xids.iter().map(|x| x.seq).max().unwrap_or(0);
        let i = d.index;
        let es = lib.event_sets.get_mut(&s.x).ok_or(INVALID)?;
        es.gpus.insert(i, (types, seen));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> Ret {
    guard(|| {
        if data.is_null() {
            return with_lib(|_| Err(INVALID));
        }
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(timeout_ms.min(10_000)));
        loop {
            let found = with_lib(|lib| {
                let s = Handle::decode(set, Tag::EventSet).ok_or(INVALID)?;
                let regs: Vec<(u32, (u64, u64))> = lib
                    .event_sets
                    .get(&s.x)
                    .ok_or(INVALID)?
                    .gpus
                    .iter()
                    .map(|(g, r)| (*g, *r))
                    .collect();
                let m = lib.machine()?;
                let mut hit = None;
                for (g, (types, seen)) in regs {
                    if types & u64::from(nvmlEventTypeXidCriticalError) == 0 {
                        continue;
                    }
                    let Some(d) = m.devices.get(g as usize) else {
                        continue;
                    };
                    if let Some(x) = d.xids.iter().find(|x| x.seq > seen) {
                        hit = Some((g, x.seq, x.xid, gpu_handle(d)));
                        break;
                    }
                }
                if let Some((g, seq, _, _)) = hit
                    && let Some(es) = lib.event_sets.get_mut(&s.x)
                    && let Some(r) = es.gpus.get_mut(&g)
                {
                    r.1 = seq;
                }
                Ok(hit)
            })?;
            if let Some((_, _, xid, dev)) = found {
                let v = nvmlEventData_t {
                    device: dev,
                    eventType: u64::from(nvmlEventTypeXidCriticalError),
                    eventData: xid,
                    gpuInstanceId: NO_INSTANCE,
                    computeInstanceId: NO_INSTANCE,
                };
                // SAFETY: `data` is a non-null out-pointer.
                return unsafe { out(data, v) };
            }
            if std::time::Instant::now() >= deadline {
                return Err(TIMEOUT);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> Ret {
    call(|lib| {
        let s = Handle::decode(set, Tag::EventSet).ok_or(INVALID)?;
        lib.event_sets.remove(&s.x).map(|_| ()).ok_or(INVALID)
    })
}
