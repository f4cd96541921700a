//! The MIG calls nvml-wrapper does not wrap, made on the raw nvml-wrapper-sys table (`nvml.lib()`).
//!
//! This is the only module of the agent with `unsafe`. Every call follows one pattern: look the
//! symbol up first (a missing symbol is an error, never the panic of the sys crate's convenience
//! methods), pass handles that come from live nvml-wrapper objects or from NVML itself in this
//! process, pass out-pointers to initialised locals or to buffers whose length is the count passed,
//! and check the return code before reading any output.
//!
//! Profile ids here are NVML's `nvmlGpuInstanceProfileInfo_t::id` (the id `nvidia-smi` prints),
//! not the `NVML_GPU_INSTANCE_PROFILE_*` index; [`gi_profile_info`] turns an index into an id.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::os::raw::c_uint;

use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_COMPUTE_INSTANCE_PROFILE_COUNT,
    NVML_GPU_INSTANCE_PROFILE_COUNT, nvmlComputeInstance_t, nvmlComputeInstanceProfileInfo_t,
    nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
    nvmlGpuInstanceProfileInfo_t,
};

/// Most GPU instances of one profile on a GPU (7 one-slice instances; headroom for newer chips).
const MAX_INSTANCES: usize = 16;

/// Looks a symbol up in the loaded table, as an error when the driver lacks it.
macro_rules! sym {
    ($nvml:expr, $name:ident) => {
        $nvml
            .lib()
            .$name
            .as_ref()
            .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?
    };
}

/// A GPU-instance profile as the driver describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiProfileInfo {
    /// `NVML_GPU_INSTANCE_PROFILE_*` index asked for.
    pub index: u32,
    /// Profile id (what nvidia-smi prints).
    pub id: u32,
    /// Compute slices.
    pub slice_count: u32,
    /// Most instances of it on the GPU.
    pub instance_count: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// An existing GPU instance (nvmlGpuInstanceInfo_t without the handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawGpuInstance {
    pub id: u32,
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
}

/// The driver's description of GPU-instance profile `index`; `NotSupported` or `InvalidArg` when the
/// GPU has no such profile.
pub fn gi_profile_info(
    nvml: &Nvml,
    device: &Device<'_>,
    index: u32,
) -> Result<GiProfileInfo, NvmlError> {
    let f = sym!(nvml, nvmlDeviceGetGpuInstanceProfileInfo);
    // SAFETY: all-zero bytes are a valid value of this plain C struct of integers.
    let mut info: nvmlGpuInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `device.handle()` is a live device handle of this NVML instance (the Device borrows
    // it); `info` is a valid, writable out-pointer for the duration of the call.
    nvml_try(unsafe { f(device.handle(), index, &mut info) })?;
    Ok(GiProfileInfo {
        index,
        id: info.id,
        slice_count: info.sliceCount,
        instance_count: info.instanceCount,
        memory_mib: info.memorySizeMB,
    })
}

/// Every GPU-instance profile the driver knows for this GPU (skipping the indexes it refuses).
pub fn gi_profiles(nvml: &Nvml, device: &Device<'_>) -> Vec<GiProfileInfo> {
    (0..NVML_GPU_INSTANCE_PROFILE_COUNT)
        .filter_map(|i| gi_profile_info(nvml, device, i).ok())
        .collect()
}

/// Possible placements of a profile (`nvmlDeviceGetGpuInstancePossiblePlacements_v2`), as
/// (start, size) memory-slice ranges. (nvml-wrapper 0.13's `possible_placements` returns an empty
/// list: it reads a Vec whose length was never set.)
pub fn possible_placements(
    nvml: &Nvml,
    device: &Device<'_>,
    profile_id: u32,
) -> Result<Vec<(u32, u32)>, NvmlError> {
    let f = sym!(nvml, nvmlDeviceGetGpuInstancePossiblePlacements_v2);
    let mut count: c_uint = 0;
    // SAFETY: live device handle; a null buffer asks only for the count, written to `count`.
    nvml_try(unsafe {
        f(
            device.handle(),
            profile_id,
            std::ptr::null_mut(),
            &mut count,
        )
    })?;
    let mut buf = vec![nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    // SAFETY: live device handle; `buf` holds `count` initialised elements and NVML writes at most
    // `count` of them, updating `count` to how many it wrote.
    nvml_try(unsafe { f(device.handle(), profile_id, buf.as_mut_ptr(), &mut count) })?;
    buf.truncate(count as usize);
    Ok(buf.into_iter().map(|p| (p.start, p.size)).collect())
}

/// Handles of the GPU instances of one profile.
fn gi_handles(
    nvml: &Nvml,
    device: &Device<'_>,
    profile_id: u32,
) -> Result<Vec<nvmlGpuInstance_t>, NvmlError> {
    let f = sym!(nvml, nvmlDeviceGetGpuInstances);
    let mut buf: Vec<nvmlGpuInstance_t> = vec![std::ptr::null_mut(); MAX_INSTANCES];
    let mut count: c_uint = 0;
    // SAFETY: live device handle; `buf` has MAX_INSTANCES writable slots, more than any profile's
    // instance count, and NVML writes `count` handles into it.
    nvml_try(unsafe { f(device.handle(), profile_id, buf.as_mut_ptr(), &mut count) })?;
    buf.truncate((count as usize).min(MAX_INSTANCES));
    Ok(buf)
}

fn gi_info(nvml: &Nvml, gi: nvmlGpuInstance_t) -> Result<RawGpuInstance, NvmlError> {
    let f = sym!(nvml, nvmlGpuInstanceGetInfo);
    // SAFETY: all-zero bytes are valid for this struct (a null device pointer and integers).
    let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `gi` was returned by NVML for a GPU instance that exists now (listed in this pass);
    // `info` is a valid out-pointer.
    nvml_try(unsafe { f(gi, &mut info) })?;
    Ok(RawGpuInstance {
        id: info.id,
        profile_id: info.profileId,
        start: info.placement.start,
        size: info.placement.size,
    })
}

/// Every GPU instance on a MIG-enabled GPU, sorted by id.
pub fn gpu_instances(nvml: &Nvml, device: &Device<'_>) -> Result<Vec<RawGpuInstance>, NvmlError> {
    let mut out = Vec::new();
    for p in gi_profiles(nvml, device) {
        for h in gi_handles(nvml, device, p.id)? {
            out.push(gi_info(nvml, h)?);
        }
    }
    out.sort_by_key(|g| g.id);
    Ok(out)
}

/// Creates a GPU instance of profile id `profile_id` at `start` (covering `size` memory slices),
/// with one compute instance spanning all of it (as `nvidia-smi mig -cgi ... -C` does). Returns the
/// new GPU instance id. If the compute instance fails, the GPU instance is destroyed again.
pub fn create(
    nvml: &Nvml,
    device: &Device<'_>,
    profile_id: u32,
    start: u32,
    size: u32,
    compute_slices: u32,
) -> Result<u32, NvmlError> {
    let create_gi = sym!(nvml, nvmlDeviceCreateGpuInstanceWithPlacement);
    let placement = nvmlGpuInstancePlacement_t { start, size };
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: live device handle; `placement` is a valid in-pointer and `gi` a valid out-pointer,
    // both locals that outlive the call.
    nvml_try(unsafe { create_gi(device.handle(), profile_id, &placement, &mut gi) })?;
    let info = gi_info(nvml, gi)?;
    if let Err(e) = create_full_ci(nvml, gi, compute_slices) {
        // Undo the half-made instance; the compute-instance error is the one worth reporting.
        let _ = destroy_gi_handle(nvml, gi);
        return Err(e);
    }
    Ok(info.id)
}

/// The compute-instance profile index spanning `slices` compute slices.
fn ci_profile_index(slices: u32) -> Option<u32> {
    // NVML_COMPUTE_INSTANCE_PROFILE_{1,2,3,4,7,8,6}_SLICE are 0..=6 in this order.
    [1, 2, 3, 4, 7, 8, 6]
        .iter()
        .position(|&s| s == slices)
        .map(|i| i as u32)
        .filter(|&i| i < NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
}

fn create_full_ci(nvml: &Nvml, gi: nvmlGpuInstance_t, slices: u32) -> Result<(), NvmlError> {
    let index = ci_profile_index(slices).ok_or(NvmlError::InvalidArg)?;
    let info_fn = sym!(nvml, nvmlGpuInstanceGetComputeInstanceProfileInfo);
    let create_ci = sym!(nvml, nvmlGpuInstanceCreateComputeInstance);
    // SAFETY: all-zero bytes are valid for this plain C struct of integers.
    let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `gi` is a GPU instance handle NVML returned and that exists; `info` is a valid
    // out-pointer.
    nvml_try(unsafe {
        info_fn(
            gi,
            index,
            NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            &mut info,
        )
    })?;
    let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
    // SAFETY: as above; `ci` is a valid out-pointer. The handle is not kept: instances are found
    // again by listing.
    nvml_try(unsafe { create_ci(gi, info.id, &mut ci) })
}

/// Destroys every compute instance of a GPU instance, then the GPU instance.
fn destroy_gi_handle(nvml: &Nvml, gi: nvmlGpuInstance_t) -> Result<(), NvmlError> {
    let list = sym!(nvml, nvmlGpuInstanceGetComputeInstances);
    let destroy_ci = sym!(nvml, nvmlComputeInstanceDestroy);
    let destroy_gi = sym!(nvml, nvmlGpuInstanceDestroy);
    for profile in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        let info_fn = sym!(nvml, nvmlGpuInstanceGetComputeInstanceProfileInfo);
        // SAFETY: all-zero bytes are valid for this plain C struct of integers.
        let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `gi` is a live GPU instance handle; `info` a valid out-pointer.
        let known = nvml_try(unsafe {
            info_fn(
                gi,
                profile,
                NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                &mut info,
            )
        });
        if known.is_err() {
            continue;
        }
        let mut buf: Vec<nvmlComputeInstance_t> = vec![std::ptr::null_mut(); MAX_INSTANCES];
        let mut count: c_uint = 0;
        // SAFETY: live GPU instance handle; `buf` has MAX_INSTANCES slots, more than a GPU
        // instance can hold (at most 7 compute instances).
        nvml_try(unsafe { list(gi, info.id, buf.as_mut_ptr(), &mut count) })?;
        for ci in buf.into_iter().take(count as usize) {
            // SAFETY: `ci` was just listed by NVML for this GPU instance and is destroyed once.
            nvml_try(unsafe { destroy_ci(ci) })?;
        }
    }
    // SAFETY: `gi` is a live GPU instance handle with no compute instances left.
    nvml_try(unsafe { destroy_gi(gi) })
}

/// Destroys GPU instance `gi_id` and its compute instances; `NotFound` when there is none.
pub fn destroy(nvml: &Nvml, device: &Device<'_>, gi_id: u32) -> Result<(), NvmlError> {
    let by_id = sym!(nvml, nvmlDeviceGetGpuInstanceById);
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: live device handle; `gi` is a valid out-pointer.
    nvml_try(unsafe { by_id(device.handle(), gi_id, &mut gi) })?;
    destroy_gi_handle(nvml, gi)
}

/// The GPU instance id of a MIG device handle (`nvmlDeviceGetGpuInstanceId`).
pub fn mig_device_gi_id(nvml: &Nvml, mig_device: &Device<'_>) -> Result<u32, NvmlError> {
    let f = sym!(nvml, nvmlDeviceGetGpuInstanceId);
    let mut id: c_uint = 0;
    // SAFETY: `mig_device.handle()` is a live MIG device handle NVML returned; `id` a valid
    // out-pointer.
    nvml_try(unsafe { f(mig_device.handle(), &mut id) })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_compute_instance_profiles_match_nvml_constants() {
        use nvml_wrapper_sys::bindings::*;
        assert_eq!(
            ci_profile_index(1),
            Some(NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
        );
        assert_eq!(
            ci_profile_index(3),
            Some(NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
        );
        assert_eq!(
            ci_profile_index(7),
            Some(NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE)
        );
        assert_eq!(ci_profile_index(5), None);
    }
}
