//! One machine, two backends: the in-process `sim` backend over a `gpu_sim::Machine`, and the NVML
//! backend loading `libgreenslice_nvml_sim.so` over a state file holding the same machine. The same
//! slices are applied through both, the same processes run on both machines, the same time passes;
//! then inventory and samples must agree field by field (power exactly: the sim backend's sensor
//! noise is off). The NVML side reads the hardware only through NVML's C interface.
//!
//! One test function: the simulated library keeps its state per process (as NVML does), and the
//! state file is named by an environment variable read at `nvmlInit`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpu_sim::machine::Process;
use gpu_sim::store::{InitSpec, Store};
use gpu_sim::{MachineKind, TimeMode};
use greenslice_agent::backend::GpuBackend;
use greenslice_agent::backend::nvml::NvmlBackend;
use greenslice_agent::backend::sim::{Machine, SimBackend, SimConfig, Workload};
use greenslice_core::clock::{Clock, ManualClock};
use greenslice_core::inventory::Gpu;
use greenslice_core::sample::{NodeSample, SampleField};

const T0: i64 = 1_750_000_000_000;

/// The simulated NVML library: beside this test binary's folder or in it (a clean `cargo test`
/// leaves the cdylib in deps/, the root package depending on nvml-sim).
fn nvml_sim_library() -> PathBuf {
    common::nvml_sim::sim_artifacts().0
}

fn uuids(inv: &[Gpu]) -> Vec<String> {
    inv.iter().map(|g| g.uuid.clone()).collect()
}

/// Inventories agree GPU by GPU, field by field (so a failure names the field).
fn assert_same_inventory(sim: &[Gpu], nvml: &[Gpu]) {
    assert_eq!(sim.len(), nvml.len(), "GPU count");
    for (s, n) in sim.iter().zip(nvml) {
        let at = format!("GPU {} ({})", s.index, s.model);
        assert_eq!(s.uuid, n.uuid, "{at}: uuid");
        assert_eq!(s.index, n.index, "{at}: index");
        assert_eq!(s.model, n.model, "{at}: model");
        assert_eq!(s.memory_bytes, n.memory_bytes, "{at}: memory");
        assert_eq!(s.mig_capable, n.mig_capable, "{at}: mig_capable");
        assert_eq!(s.mig_enabled, n.mig_enabled, "{at}: mig_enabled");
        assert_eq!(s.pci_bus_id, n.pci_bus_id, "{at}: pci_bus_id");
        assert_eq!(s.power_limit_mw, n.power_limit_mw, "{at}: power limit");
        assert_eq!(s.healthy, n.healthy, "{at}: healthy");
        assert_eq!(s.mig_instances, n.mig_instances, "{at}: MIG instances");
        assert_eq!(s.shares, n.shares, "{at}: shares");
        assert_eq!(s.whole_slice_id, n.whole_slice_id, "{at}: whole");
        assert_eq!(s, n, "{at}");
    }
}

/// Samples agree GPU by GPU, field by field; `at_ms` is each backend's own clock.
fn assert_same_samples(sim: &NodeSample, nvml: &NodeSample, hw: &gpu_sim::Machine) {
    assert_eq!(sim.gpus.len(), nvml.gpus.len());
    for ((s, n), d) in sim.gpus.iter().zip(&nvml.gpus).zip(&hw.devices) {
        let at = format!("GPU {} ({:?})", d.index, d.kind);
        assert_eq!(s.gpu_uuid, n.gpu_uuid, "{at}: uuid");
        assert_eq!(s.gpu_util_pct, n.gpu_util_pct, "{at}: utilization");
        assert_eq!(s.mem_util_pct, n.mem_util_pct, "{at}: memory utilization");
        assert_eq!(s.power_mw, n.power_mw, "{at}: power");
        assert_eq!(s.energy_mj, n.energy_mj, "{at}: energy");
        assert_eq!(
            s.memory_used_bytes, n.memory_used_bytes,
            "{at}: memory used"
        );
        assert_eq!(s.processes, n.processes, "{at}: processes");
        assert_eq!(s.process_util, n.process_util, "{at}: process utilization");
        assert_eq!(s.mig, n.mig, "{at}: MIG activity (GPM)");
        assert_eq!(s.unsupported, n.unsupported, "{at}: unsupported");
        assert_eq!(s, n, "{at}");
    }
}

/// Moves time on both machines; GPM samples are compared only when more than
/// `GPM_MIN_INTERVAL_MS` apart, which the NVML backend measures in real time.
fn advance(clock: &ManualClock, store: &mut Store, ms: i64) {
    clock.advance(ms);
    let to = clock.now_ms();
    store
        .update(|m| {
            m.advance_to(to);
            Ok(())
        })
        .expect("advance");
    std::thread::sleep(std::time::Duration::from_millis(
        greenslice_agent::backend::GPM_MIN_INTERVAL_MS + 50,
    ));
}

/// Starts on the state file every process the sim backend's machine runs that the file lacks, as
/// a workload does through `greenslice-gpu-sim start`.
fn mirror_processes(sim: &mut SimBackend, store: &mut Store) {
    let want: Vec<(u32, Process)> = sim
        .machine()
        .devices
        .iter()
        .flat_map(|d| d.processes.iter().map(|p| (d.index, p.clone())))
        .collect();
    store
        .update(|m| {
            for (gpu, p) in want {
                let known = m
                    .devices
                    .iter()
                    .any(|d| d.processes.iter().any(|q| q.pid == p.pid));
                if !known {
                    let gi = p.gpu_instance_id;
                    m.start_process(gpu, gi, p)?;
                }
            }
            Ok(())
        })
        .expect("mirror processes");
}

fn open_store(path: &Path) -> Store {
    Store::open(
        path,
        &InitSpec {
            time_mode: TimeMode::Manual,
            ..InitSpec::default()
        },
    )
    .expect("open state file")
}

#[test]
fn sim_and_nvml_backends_on_one_machine_report_the_same_inventory_placements_and_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("machine.json");
    // Every model: two H100 SXM5 and an A100 40GB in MIG mode; A100 80GB, H100 PCIe, H200 and two
    // L40S (no MIG) without.
    let mut hw = gpu_sim::Machine::new(MachineKind::Mixed, 8, 3, "parity", T0);
    hw.time_mode = TimeMode::Manual;
    std::fs::write(&state, serde_json::to_vec(&hw).expect("JSON")).expect("write state");

    let clock = ManualClock::new(T0);
    let mut config = SimConfig::new("parity", Machine::DgxH100).with_clock(Arc::new(clock.clone()));
    config.power_noise = 0.0;
    let mut sim = SimBackend::on_machine(config, hw).expect("sim backend");

    // SAFETY: this test binary has one test, and nothing else reads the environment concurrently.
    unsafe { std::env::set_var("GREENSLICE_NVML_SIM_STATE", &state) };
    let mut nvml =
        NvmlBackend::new(true, "/tmp/nvidia-mps", Some(&nvml_sim_library())).expect("NVML backend");
    let mut store = open_store(&state);

    let inv = sim.inventory().expect("inventory");
    assert_same_inventory(&inv, &nvml.inventory().expect("inventory"));
    let g = uuids(&inv);
    // The driver's MIG profiles and possible placements, on every MIG-capable model, in MIG mode
    // or not.
    for gpu in inv.iter().filter(|g| g.mig_capable) {
        let a = sim.mig_profiles(&gpu.uuid).expect("sim profiles");
        let b = nvml.mig_profiles(&gpu.uuid).expect("nvml profiles");
        assert!(a.len() >= 5, "GPU {}: {a:?}", gpu.index);
        assert_eq!(a, b, "GPU {} ({}): MIG profiles", gpu.index, gpu.model);
    }

    // The same slices through both backends; each answers the same instance and environment.
    let migs = [
        (0, "3g.40gb", 4, "s-a"),
        (0, "1g.10gb", 0, "s-b"),
        (0, "1g.10gb", 1, "s-c"),
        (1, "7g.80gb", 0, "s-d"),
        (2, "2g.10gb", 2, "s-e"),
        (2, "3g.20gb", 4, "s-f"),
    ];
    for (gpu, profile, start, slice) in migs {
        let a = sim.create_mig(&g[gpu], profile, start, slice);
        let b = nvml.create_mig(&g[gpu], profile, start, slice);
        let (a, b) = (a.expect("sim create"), b.expect("nvml create"));
        assert_eq!(a, b, "{profile} at {start} on GPU {gpu}");
    }
    assert_eq!(
        sim.set_share(&g[3], "s-g", 0.5, 10 << 30).expect("share"),
        nvml.set_share(&g[3], "s-g", 0.5, 10 << 30).expect("share")
    );
    assert_eq!(
        sim.set_share(&g[3], "s-h", 0.25, 8 << 30).expect("share"),
        nvml.set_share(&g[3], "s-h", 0.25, 8 << 30).expect("share")
    );
    for (gpu, slice) in [(4, "s-i"), (5, "s-j"), (6, "s-k")] {
        assert_eq!(
            sim.assign_whole(&g[gpu], slice).expect("whole"),
            nvml.assign_whole(&g[gpu], slice).expect("whole")
        );
    }
    // What the tenants' jobs do; the machine then runs their processes.
    for (slice, w) in [
        ("s-a", Workload::Busy { util: 0.9 }),
        ("s-b", Workload::Idle),
        ("s-c", Workload::Busy { util: 0.35 }),
        ("s-e", Workload::Busy { util: 0.5 }),
        ("s-g", Workload::Busy { util: 0.6 }),
        ("s-h", Workload::Idle),
        ("s-i", Workload::Busy { util: 1.0 }),
        ("s-j", Workload::Finished),
        ("s-k", Workload::Busy { util: 0.25 }),
    ] {
        sim.set_workload(slice, w).expect("workload");
    }
    // A process of no slice on the second L40S.
    let stray = Process {
        pid: 99,
        gpu_instance_id: None,
        compute_instance_id: None,
        used_memory_bytes: 3 << 30,
        sm_util_pct: 15,
        mem_util_pct: 5,
        env: Default::default(),
        started_ms: 0,
        ..Default::default()
    };
    sim.machine_mut()
        .start_process(7, None, stray)
        .expect("stray process");
    mirror_processes(&mut sim, &mut store);

    // Time passes alike on both machines.
    advance(&clock, &mut store, 90_000);

    let inv = sim.inventory().expect("inventory");
    assert_same_inventory(&inv, &nvml.inventory().expect("inventory"));
    assert_eq!(inv[0].mig_instances.len(), 3);
    let (a, b) = (
        sim.sample().expect("sample"),
        nvml.sample().expect("sample"),
    );
    let hw = sim.machine().clone();
    assert_same_samples(&a, &b, &hw);
    // The workloads show: busy, idle and finished jobs, energy above idle where work was done.
    assert!(a.gpus[4].gpu_util_pct == Some(100) && a.gpus[5].processes == Some(vec![]));
    assert_eq!(a.gpus[3].gpu_util_pct, Some(30));
    assert!(a.gpus[4].energy_mj > a.gpus[5].energy_mj);
    // Nothing newer per process until time moves: both answer an empty list.
    let (a, b) = (
        sim.sample().expect("sample"),
        nvml.sample().expect("sample"),
    );
    assert_eq!(a.gpus[3].process_util, Some(vec![]));
    assert_same_samples(&a, &b, &hw);

    // A teardown, as each side's tenant ends its job: the sim backend ends the slice's job itself;
    // on the file the workload stops the process first (else the driver answers IN_USE).
    let pid_b = hw.devices[0]
        .processes
        .iter()
        .find(|p| p.env.get("GREENSLICE_SLICE_ID").map(String::as_str) == Some("s-b"))
        .map(|p| p.pid)
        .expect("s-b's process");
    let gi_b = inv[0]
        .mig_instances
        .iter()
        .find(|m| m.slice_id.as_deref() == Some("s-b"))
        .map(|m| m.gpu_instance_id)
        .expect("s-b's instance");
    assert!(
        nvml.destroy_mig(&g[0], gi_b).is_err(),
        "destroying an instance with a process is IN_USE"
    );
    store.update(|m| m.stop_process(pid_b)).expect("stop");
    sim.destroy_mig(&g[0], gi_b).expect("sim destroy");
    nvml.destroy_mig(&g[0], gi_b).expect("nvml destroy");
    sim.clear_share(&g[3], "s-h").expect("clear");
    nvml.clear_share(&g[3], "s-h").expect("clear");
    store
        .update(|m| {
            let pid = m.devices[3]
                .processes
                .iter()
                .find(|p| p.env.get("GREENSLICE_SLICE_ID").map(String::as_str) == Some("s-h"))
                .map(|p| p.pid)
                .ok_or(gpu_sim::SimError::NoProcess(0))?;
            m.stop_process(pid)
        })
        .expect("stop s-h's process");
    // The freed id is reused, lowest first, on both.
    let (a, b) = (
        sim.create_mig(&g[0], "1g.10gb", 0, "s-l")
            .expect("sim create"),
        nvml.create_mig(&g[0], "1g.10gb", 0, "s-l")
            .expect("nvml create"),
    );
    assert_eq!(a, b);
    assert_eq!(a.0.gpu_instance_id, gi_b);
    mirror_processes(&mut sim, &mut store);
    advance(&clock, &mut store, 5_000);
    let inv = sim.inventory().expect("inventory");
    assert_same_inventory(&inv, &nvml.inventory().expect("inventory"));
    let (a, b) = (
        sim.sample().expect("sample"),
        nvml.sample().expect("sample"),
    );
    assert_same_samples(&a, &b, &sim.machine().clone());
    // GPM: the H100 whose layout stayed reports its instance's mean over the 5 s (the default
    // job, 80%); the one re-laid-out starts over; the A100 has no GPM.
    assert_eq!(a.gpus[1].mig.len(), 1);
    assert_eq!(a.gpus[1].mig[0].sm_util_pct, Some(80.0));
    assert!(a.gpus[0].mig.is_empty() && !a.gpus[0].is_unsupported(SampleField::MigActivity));
    assert!(a.gpus[2].is_unsupported(SampleField::MigActivity));
    advance(&clock, &mut store, 2_000);
    let (a, b) = (
        sim.sample().expect("sample"),
        nvml.sample().expect("sample"),
    );
    assert_same_samples(&a, &b, &sim.machine().clone());
    // s-a at 90%, s-c at 35%, s-l's default job at 80%.
    let mut busy: Vec<f64> = a.gpus[0].mig.iter().filter_map(|m| m.sm_util_pct).collect();
    busy.sort_by(f64::total_cmp);
    assert_eq!(busy, vec![35.0, 80.0, 90.0]);
    // And the two machines are the same machine.
    let file = store.read().expect("read").clone();
    let mine = sim.machine().clone();
    assert_eq!(mine.devices, file.devices);
}
