//! The built `libgreenslice_nvml_sim.so`, loaded as any NVML client loads NVML (dlopen through
//! nvml-wrapper-sys's bindgen table, and nvml-wrapper itself), answers bad input as NVML
//! documents it. The library has one process-wide state, so the tests take turns.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_uint};
use std::path::PathBuf;
use std::sync::Mutex;

use gpu_sim::machine::Process;
use gpu_sim::{InitSpec, Store, TimeMode};
use nvml_wrapper_sys::bindings::*;

static TURN: Mutex<()> = Mutex::new(());

/// The cdylib cargo builds with the crate's rlib: in the deps folder beside this test (a clean
/// `cargo test` leaves it only there), or uplifted into the profile folder above it.
fn lib_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let candidates = [
        deps.to_path_buf(),
        deps.parent().expect("profile dir").to_path_buf(),
    ];
    candidates
        .iter()
        .map(|d| d.join("libgreenslice_nvml_sim.so"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("libgreenslice_nvml_sim.so not built in {candidates:?}"))
}

struct Sim {
    lib: NvmlLib,
    _dir: tempfile::TempDir,
    state: PathBuf,
}

/// A fresh machine (manual time, 8 H100, 2 in MIG mode) and the library loaded over it.
fn sim(read_only: bool) -> Sim {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("machine.json");
    let init = InitSpec {
        mig_gpus: 2,
        time_mode: TimeMode::Manual,
        ..InitSpec::default()
    };
    Store::open(&state, &init).expect("state file");
    // SAFETY: tests take turns (TURN), so no other thread reads the environment meanwhile.
    unsafe {
        std::env::set_var("GREENSLICE_NVML_SIM_STATE", &state);
        if read_only {
            std::env::set_var("GREENSLICE_NVML_SIM_READ_ONLY", "1");
        } else {
            std::env::remove_var("GREENSLICE_NVML_SIM_READ_ONLY");
        }
    }
    // SAFETY: loading our own library, whose initialisers do nothing.
    let lib = unsafe { NvmlLib::new(lib_path()) }.expect("load library");
    Sim {
        lib,
        _dir: dir,
        state,
    }
}

impl Sim {
    fn init(&self) {
        // SAFETY: NVML functions without arguments.
        assert_eq!(
            unsafe { self.lib.nvmlInit_v2() },
            nvmlReturn_enum_NVML_SUCCESS
        );
    }
    fn shutdown_all(&self) {
        // SAFETY: as above; shuts down until the library says it is not initialised.
        while unsafe { self.lib.nvmlShutdown() } == nvmlReturn_enum_NVML_SUCCESS {}
    }
    fn device(&self, i: u32) -> nvmlDevice_t {
        let mut d: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        assert_eq!(
            unsafe { self.lib.nvmlDeviceGetHandleByIndex_v2(i, &mut d) },
            0
        );
        d
    }
    fn store(&self) -> Store {
        Store::open(&self.state, &InitSpec::default()).expect("state")
    }
}

fn process(pid: u32) -> Process {
    Process {
        pid,
        gpu_instance_id: None,
        compute_instance_id: None,
        used_memory_bytes: 1 << 30,
        sm_util_pct: 40,
        mem_util_pct: 10,
        env: Default::default(),
        started_ms: 0,
        ..Default::default()
    }
}

#[test]
fn calls_before_init_and_after_the_last_shutdown_are_uninitialized() {
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(false);
    s.shutdown_all();
    let mut n: c_uint = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { s.lib.nvmlDeviceGetCount_v2(&mut n) },
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
    );
    // SAFETY: no arguments.
    assert_eq!(
        unsafe { s.lib.nvmlShutdown() },
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
    );
    // Init and shutdown are reference-counted.
    s.init();
    s.init();
    // SAFETY: no arguments.
    assert_eq!(unsafe { s.lib.nvmlShutdown() }, 0);
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { s.lib.nvmlDeviceGetCount_v2(&mut n) }, 0);
    assert_eq!(n, 8);
    // SAFETY: no arguments.
    assert_eq!(unsafe { s.lib.nvmlShutdown() }, 0);
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { s.lib.nvmlDeviceGetCount_v2(&mut n) },
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
    );
}

#[test]
fn bad_handles_indexes_and_null_pointers_are_invalid_arguments() {
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(false);
    s.init();
    let mut d: nvmlDevice_t = std::ptr::null_mut();
    let mut name = [0 as c_char; 96];
    // SAFETY (all calls below): the pointers are valid locals or deliberately null; the library
    // must refuse, not dereference, bad handles.
    unsafe {
        assert_eq!(
            s.lib.nvmlDeviceGetHandleByIndex_v2(8, &mut d),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            s.lib.nvmlDeviceGetHandleByIndex_v2(0, std::ptr::null_mut()),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            s.lib.nvmlDeviceGetCount_v2(std::ptr::null_mut()),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        let bogus = 0x1234usize as nvmlDevice_t;
        assert_eq!(
            s.lib.nvmlDeviceGetName(bogus, name.as_mut_ptr(), 96),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            s.lib
                .nvmlDeviceGetName(std::ptr::null_mut(), name.as_mut_ptr(), 96),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        let dev = s.device(0);
        assert_eq!(
            s.lib.nvmlDeviceGetName(dev, std::ptr::null_mut(), 96),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        let mut gi_info: nvmlGpuInstanceInfo_t = std::mem::zeroed();
        // A device handle is not a GPU-instance handle.
        assert_eq!(
            s.lib.nvmlGpuInstanceGetInfo(dev.cast(), &mut gi_info),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        let mut info: nvmlGpuInstanceProfileInfo_t = std::mem::zeroed();
        assert_eq!(
            s.lib
                .nvmlDeviceGetGpuInstanceProfileInfo(dev, 99, &mut info),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        // Unknown UUIDs are not found.
        assert_eq!(
            s.lib
                .nvmlDeviceGetHandleByUUID(c"GPU-nope".as_ptr(), &mut d),
            nvmlReturn_enum_NVML_ERROR_NOT_FOUND
        );
        // Board utilization is not supported on a MIG-enabled GPU (GPU 0), as on a real driver.
        let mut u: nvmlUtilization_t = std::mem::zeroed();
        assert_eq!(
            s.lib.nvmlDeviceGetUtilizationRates(dev, &mut u),
            nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        );
        assert_eq!(s.lib.nvmlDeviceGetUtilizationRates(s.device(5), &mut u), 0);
    }
    s.shutdown_all();
}

#[test]
fn short_buffers_are_insufficient_size_with_the_needed_count() {
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(false);
    s.store()
        .update(|m| {
            m.start_process(5, None, process(100))?;
            m.start_process(5, None, process(101))
        })
        .expect("processes");
    s.init();
    let dev = s.device(5);
    let mut name = [0 as c_char; 96];
    // SAFETY (all below): valid local buffers whose lengths are the lengths passed.
    unsafe {
        assert_eq!(
            s.lib.nvmlDeviceGetName(dev, name.as_mut_ptr(), 4),
            nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
        );
        assert_eq!(s.lib.nvmlDeviceGetName(dev, name.as_mut_ptr(), 96), 0);
        assert_eq!(
            CStr::from_ptr(name.as_ptr()).to_str().unwrap(),
            "NVIDIA H100 80GB HBM3"
        );
        let mut count: c_uint = 1;
        let mut infos = [std::mem::zeroed::<nvmlProcessInfo_t>(); 4];
        assert_eq!(
            s.lib
                .nvmlDeviceGetComputeRunningProcesses_v3(dev, &mut count, infos.as_mut_ptr()),
            nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
        );
        assert_eq!(count, 2);
        count = 4;
        assert_eq!(
            s.lib
                .nvmlDeviceGetComputeRunningProcesses_v3(dev, &mut count, infos.as_mut_ptr()),
            0
        );
        assert_eq!((count, infos[0].pid, infos[1].pid), (2, 100, 101));
        let mut v = [0 as c_char; 80];
        assert_eq!(
            s.lib.nvmlSystemGetDriverVersion(v.as_mut_ptr(), 3),
            nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
        );
    }
    s.shutdown_all();
}

/// Creates a GPU instance of profile index `index` at `start` and a full compute instance.
fn create(
    s: &Sim,
    dev: nvmlDevice_t,
    index: u32,
    start: u32,
) -> Result<(nvmlGpuInstance_t, u32), u32> {
    // SAFETY (all below): valid out-pointers; handles from the library.
    unsafe {
        let mut info: nvmlGpuInstanceProfileInfo_t = std::mem::zeroed();
        assert_eq!(
            s.lib
                .nvmlDeviceGetGpuInstanceProfileInfo(dev, index, &mut info),
            0
        );
        let size = match info.sliceCount {
            1 => 1,
            2 => 2,
            3 | 4 => 4,
            _ => 8,
        };
        let size = if index == NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2 {
            2
        } else {
            size
        };
        let pl = nvmlGpuInstancePlacement_t { start, size };
        let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
        let r = s
            .lib
            .nvmlDeviceCreateGpuInstanceWithPlacement(dev, info.id, &pl, &mut gi);
        if r != 0 {
            return Err(r);
        }
        let mut gi_info: nvmlGpuInstanceInfo_t = std::mem::zeroed();
        assert_eq!(s.lib.nvmlGpuInstanceGetInfo(gi, &mut gi_info), 0);
        Ok((gi, gi_info.id))
    }
}

#[test]
fn mig_instances_reuse_ids_refuse_occupied_placements_and_are_in_use_with_processes() {
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(false);
    s.init();
    let dev = s.device(0);
    let (g3, id3) = create(&s, dev, NVML_GPU_INSTANCE_PROFILE_3_SLICE, 4).expect("3g");
    let (g1, id1) = create(&s, dev, NVML_GPU_INSTANCE_PROFILE_1_SLICE, 0).expect("1g");
    assert_eq!((id3, id1), (1, 2));
    assert_eq!(
        create(&s, dev, NVML_GPU_INSTANCE_PROFILE_1_SLICE, 5).err(),
        Some(nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES)
    );
    assert_eq!(
        create(&s, dev, NVML_GPU_INSTANCE_PROFILE_1_SLICE, 7).err(),
        Some(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)
    );
    // SAFETY (all below): handles from the library, valid out-pointers.
    unsafe {
        let mut ci_info: nvmlComputeInstanceProfileInfo_t = std::mem::zeroed();
        assert_eq!(
            s.lib.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                g3,
                NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
                NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                &mut ci_info
            ),
            0
        );
        let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
        assert_eq!(
            s.lib
                .nvmlGpuInstanceCreateComputeInstance(g3, ci_info.id, &mut ci),
            0
        );
        // The workload starts a process on the 3g instance.
        s.store()
            .update(|m| m.start_process(0, Some(id3), process(77)))
            .expect("process");
        assert_eq!(
            s.lib.nvmlComputeInstanceDestroy(ci),
            nvmlReturn_enum_NVML_ERROR_IN_USE
        );
        assert_eq!(
            s.lib.nvmlGpuInstanceDestroy(g3),
            nvmlReturn_enum_NVML_ERROR_IN_USE
        );
        s.store().update(|m| m.stop_process(77)).expect("stop");
        assert_eq!(s.lib.nvmlComputeInstanceDestroy(ci), 0);
        assert_eq!(s.lib.nvmlGpuInstanceDestroy(g3), 0);
        // A stale handle is refused; the freed id is the next one given.
        assert_eq!(
            s.lib.nvmlGpuInstanceDestroy(g3),
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        let (_, again) = create(&s, dev, NVML_GPU_INSTANCE_PROFILE_2_SLICE, 2).expect("2g");
        assert_eq!(again, 1);
        assert_eq!(s.lib.nvmlGpuInstanceDestroy(g1), 0);
    }
    s.shutdown_all();
}

#[test]
fn a_read_only_caller_may_not_change_mig() {
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(true);
    s.init();
    let dev = s.device(0);
    assert_eq!(
        create(&s, dev, NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0).err(),
        Some(nvmlReturn_enum_NVML_ERROR_NO_PERMISSION)
    );
    // SAFETY: device handle from the library.
    assert_eq!(
        unsafe { s.lib.nvmlDeviceSetComputeMode(dev, 3) },
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION
    );
    s.shutdown_all();
}

#[test]
fn nvml_wrapper_works_unchanged() {
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(false);
    s.store()
        .update(|m| m.start_process(6, None, process(9)))
        .expect("process");
    s.shutdown_all();
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(lib_path().as_os_str())
        .init()
        .expect("init");
    assert_eq!(nvml.device_count().unwrap(), 8);
    let d = nvml.device_by_index(6).unwrap();
    assert_eq!(d.name().unwrap(), "NVIDIA H100 80GB HBM3");
    let uuid = d.uuid().unwrap();
    assert_eq!(
        nvml.device_by_uuid(uuid.as_str()).unwrap().index().unwrap(),
        6
    );
    assert_eq!(d.memory_info().unwrap().used, 1 << 30);
    let p = d.running_compute_processes().unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].pid, 9);
    assert_eq!(d.pci_info().unwrap().pci_device_id, (0x2330 << 16) | 0x10DE);
    assert!(d.mig_mode().is_ok());
    assert!(!nvml.sys_driver_version().unwrap().is_empty());
    drop(nvml);
}

#[test]
fn gpm_through_nvml_wrapper_gives_mean_utilization_between_samples() {
    use nvml_wrapper::enums::gpm::GpmMetricId;
    let _t = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let s = sim(false);
    s.shutdown_all();
    let mut store = s.store();
    let gi = store
        .update(|m| {
            let gi = m.create_gpu_instance(0, NVML_GPU_INSTANCE_PROFILE_3_SLICE, Some((4, 4)))?;
            m.create_compute_instance(0, gi, NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)?;
            let mut p = process(11);
            p.sm_util_pct = 90;
            m.start_process(0, Some(gi), p)?;
            m.start_process(6, None, process(12))?;
            Ok(gi)
        })
        .expect("layout");
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(lib_path().as_os_str())
        .init()
        .expect("init");
    let (mig_gpu, board) = (
        nvml.device_by_index(0).unwrap(),
        nvml.device_by_index(6).unwrap(),
    );
    assert!(mig_gpu.gpm_support().unwrap());
    let (a, ab) = (
        mig_gpu.gpm_mig_sample(gi).unwrap(),
        board.gpm_sample().unwrap(),
    );
    let advance = |store: &mut Store, ms| {
        store
            .update(|m| {
                m.advance_to(m.now_ms + ms);
                Ok(())
            })
            .expect("advance")
    };
    advance(&mut store, 1_000);
    store
        .update(|m| m.set_process_util(11, 30, 0))
        .expect("util");
    advance(&mut store, 1_000);
    let (b, bb) = (
        mig_gpu.gpm_mig_sample(gi).unwrap(),
        board.gpm_sample().unwrap(),
    );
    let ids = [
        GpmMetricId::SmUtil,
        GpmMetricId::DramBwUtil,
        GpmMetricId::AnyTensorUtil,
        GpmMetricId::SmOccupancy,
    ];
    let r = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &a, &b, &ids).expect("metrics");
    let sm = r[0].as_ref().expect("SM utilization");
    // 1 s at 90%, 1 s at 30%: the instance's mean.
    assert_eq!((sm.value, sm.metric_info.unit.as_str()), (60.0, "%"));
    // Memory: 10% for 1 s, then 0%.
    assert_eq!(r[1].as_ref().expect("DRAM").value, 5.0);
    // No tensor work was running.
    assert_eq!(r[2].as_ref().expect("tensor").value, 0.0);
    assert!(r[3].is_err(), "a metric the simulator lacks is unsupported");
    let r = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &ab, &bb, &ids[..1]).expect("metrics");
    assert_eq!(r[0].as_ref().expect("board SM").value, 40.0);
    // Samples of different instances, too close or in the wrong order are refused.
    assert!(nvml_wrapper::gpm::gpm_metrics_get(&nvml, &a, &bb, &ids[..1]).is_err());
    assert!(nvml_wrapper::gpm::gpm_metrics_get(&nvml, &b, &a, &ids[..1]).is_err());
    // No instance 9; GPU 6 is not in MIG mode.
    assert!(mig_gpu.gpm_mig_sample(9).is_err());
    assert!(board.gpm_mig_sample(1).is_err());
    drop((a, b, ab, bb));
    drop(nvml);
}
