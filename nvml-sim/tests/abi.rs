//! The library's answers to bad input, through its C functions: calls before init, double init and
//! shutdown, invalid handles, out-of-range indices, null pointers, short buffers, occupied
//! placements, instances in use, missing privilege. One test: the library's state is per process.

use std::ffi::c_char;
use std::ptr::{null, null_mut};

use gpu_sim::{MachineSpec, Store};
use greenslice_nvml_sim::*;
use nvml_wrapper_sys::bindings::*;

const OK: nvmlReturn_t = nvmlReturn_enum_NVML_SUCCESS;

fn handle(i: u32) -> nvmlDevice_t {
    let mut d = null_mut();
    assert_eq!(nvmlDeviceGetHandleByIndex_v2(i, &mut d), OK);
    d
}

fn profile_id(d: nvmlDevice_t, index: u32) -> u32 {
    // SAFETY: all-zero bytes are a valid value of this plain C struct of integers.
    let mut info: nvmlGpuInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(nvmlDeviceGetGpuInstanceProfileInfo(d, index, &mut info), OK);
    info.id
}

#[test]
fn bad_input_gets_nvml_return_codes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("machine.json");
    let mut count = 0u32;

    // Before init.
    assert_eq!(
        nvmlDeviceGetCount_v2(&mut count),
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
    );
    assert_eq!(nvmlShutdown(), nvmlReturn_enum_NVML_ERROR_UNINITIALIZED);
    // SAFETY: this test binary has one test, so no other thread reads the environment.
    unsafe { std::env::remove_var(gpu_sim::STATE_ENV) };
    assert_eq!(nvmlInit_v2(), nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED);

    // The hardware exists before the library is loaded: GPU 0 in MIG mode, GPU 1 not.
    let spec = MachineSpec {
        mig_gpus: 1,
        ..MachineSpec::default()
    };
    let mut store = Store::open(&state, &spec).unwrap();
    // SAFETY: as above, no other thread.
    unsafe { std::env::set_var(gpu_sim::STATE_ENV, &state) };

    // Init is counted: two inits need two shutdowns.
    assert_eq!(nvmlInit_v2(), OK);
    assert_eq!(nvmlInitWithFlags(0), OK);
    assert_eq!(nvmlShutdown(), OK);
    assert_eq!(nvmlDeviceGetCount_v2(&mut count), OK);
    assert_eq!(count, 8);

    // Null pointers, out-of-range indices, forged handles.
    assert_eq!(
        nvmlDeviceGetCount_v2(null_mut()),
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
    );
    let mut d = null_mut();
    assert_eq!(
        nvmlDeviceGetHandleByIndex_v2(8, &mut d),
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
    );
    let mut name = [0 as c_char; 96];
    let forged = 0x1234usize as nvmlDevice_t;
    for bad in [forged, null_mut()] {
        assert_eq!(
            nvmlDeviceGetName(bad, name.as_mut_ptr(), 96),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
    }
    assert_eq!(
        nvmlDeviceGetHandleByUUID(null(), &mut d),
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
    );
    assert_eq!(
        nvmlDeviceGetHandleByUUID(c"GPU-nope".as_ptr(), &mut d),
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND
    );

    // Short buffers.
    let g0 = handle(0);
    let g1 = handle(1);
    assert_eq!(
        nvmlDeviceGetName(g0, name.as_mut_ptr(), 4),
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
    );
    assert_eq!(nvmlDeviceGetName(g0, name.as_mut_ptr(), 96), OK);
    let pid = store
        .update(|m, now| m.start_process(1, None, 512, 40, 10, Default::default(), now))
        .unwrap();
    let mut n = 0u32;
    assert_eq!(
        nvmlDeviceGetComputeRunningProcesses_v3(g1, &mut n, null_mut()),
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
    );
    assert_eq!(n, 1, "the needed count comes back with INSUFFICIENT_SIZE");
    // SAFETY: all-zero bytes are valid for this struct of integers.
    let mut procs: [nvmlProcessInfo_t; 2] = unsafe { std::mem::zeroed() };
    n = 2;
    assert_eq!(
        nvmlDeviceGetComputeRunningProcesses_v3(g1, &mut n, procs.as_mut_ptr()),
        OK
    );
    assert_eq!(
        (n, procs[0].pid, procs[0].usedGpuMemory),
        (1, pid, 512 << 20)
    );

    // What a mode lacks.
    let mut util = nvmlUtilization_t { gpu: 0, memory: 0 };
    assert_eq!(
        nvmlDeviceGetUtilizationRates(g0, &mut util),
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
        "no board utilization in MIG mode"
    );
    assert_eq!(nvmlDeviceGetUtilizationRates(g1, &mut util), OK);
    assert_eq!(util.gpu, 40);
    let three_g = profile_id(g0, NVML_GPU_INSTANCE_PROFILE_3_SLICE);
    let mut gi = null_mut();
    let at = |start| nvmlGpuInstancePlacement_t { start, size: 4 };
    assert_eq!(
        nvmlDeviceCreateGpuInstanceWithPlacement(g1, three_g, &at(0), &mut gi),
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
        "GPU 1 is not in MIG mode"
    );

    // Placements: illegal start, occupied placement, reuse of a destroyed instance's id.
    assert_eq!(
        nvmlDeviceCreateGpuInstanceWithPlacement(g0, three_g, &at(2), &mut gi),
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
    );
    assert_eq!(
        nvmlDeviceCreateGpuInstanceWithPlacement(g0, three_g, &at(4), &mut gi),
        OK
    );
    let mut other = null_mut();
    assert_eq!(
        nvmlDeviceCreateGpuInstanceWithPlacement(g0, three_g, &at(4), &mut other),
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES
    );
    let mut placements = [nvmlGpuInstancePlacement_t { start: 0, size: 0 }; 1];
    n = 1;
    let one_g = profile_id(g0, NVML_GPU_INSTANCE_PROFILE_1_SLICE);
    assert_eq!(
        nvmlDeviceGetGpuInstancePossiblePlacements_v2(g0, one_g, placements.as_mut_ptr(), &mut n),
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
    );
    assert_eq!(n, 7);

    // A full compute instance, a process on it: destroying answers IN_USE until it ends.
    // SAFETY: all-zero bytes are valid for this struct of integers.
    let mut ci_info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi,
            NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
            NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            &mut ci_info
        ),
        OK
    );
    let mut ci = null_mut();
    assert_eq!(
        nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id, &mut ci),
        OK
    );
    // SAFETY: all-zero bytes are valid (null handles and integers).
    let mut gi_info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(nvmlGpuInstanceGetInfo(gi, &mut gi_info), OK);
    let gi_id = gi_info.id;
    let on_mig = store
        .update(|m, now| m.start_process(0, Some(gi_id), 1024, 80, 10, Default::default(), now))
        .unwrap();
    assert_eq!(
        nvmlComputeInstanceDestroy(ci),
        nvmlReturn_enum_NVML_ERROR_IN_USE
    );
    assert_eq!(
        nvmlGpuInstanceDestroy(gi),
        nvmlReturn_enum_NVML_ERROR_IN_USE
    );
    assert_eq!(
        store.machine().unwrap().gpus[0].gpu_instances.len(),
        1,
        "a refused destroy changes nothing"
    );
    store.update(|m, now| m.stop_process(on_mig, now)).unwrap();
    assert_eq!(nvmlComputeInstanceDestroy(ci), OK);
    assert_eq!(nvmlGpuInstanceDestroy(gi), OK);
    assert_eq!(
        nvmlGpuInstanceGetInfo(gi, &mut gi_info),
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
        "a destroyed instance's handle is stale"
    );
    let mut again = null_mut();
    assert_eq!(
        nvmlDeviceCreateGpuInstanceWithPlacement(g0, three_g, &at(0), &mut again),
        OK
    );
    assert_eq!(nvmlGpuInstanceGetInfo(again, &mut gi_info), OK);
    assert_eq!(gi_info.id, gi_id, "the driver reuses the lowest free id");
    assert_eq!(nvmlGpuInstanceDestroy(again), OK);

    // Shut down fully; an unprivileged caller may read but not change.
    assert_eq!(nvmlShutdown(), OK);
    assert_eq!(nvmlShutdown(), nvmlReturn_enum_NVML_ERROR_UNINITIALIZED);
    // SAFETY: as above, no other thread.
    unsafe { std::env::set_var(UNPRIVILEGED_ENV, "1") };
    assert_eq!(nvmlInit_v2(), OK);
    let g0 = handle(0);
    assert_eq!(
        nvmlDeviceCreateGpuInstanceWithPlacement(g0, three_g, &at(0), &mut gi),
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION
    );
    assert_eq!(
        nvmlDeviceSetComputeMode(g0, nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_PROCESS),
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION
    );
    assert_eq!(nvmlShutdown(), OK);
}
