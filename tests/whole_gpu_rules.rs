//! Whole GPUs and shares obey the same rules on both backends: the in-process `sim` backend and the
//! NVML backend on `libgreenslice_nvml_sim.so`, over the same machine. Each refuses a whole GPU or
//! a share on a GPU in MIG mode, a second holder, a share on a GPU held whole, a whole GPU that
//! holds shares, a share past the GPU's compute or memory, with the same typed error; a whole GPU
//! is in EXCLUSIVE_PROCESS compute mode while held and back to DEFAULT once released, as the
//! simulated hardware (read from its state file, not through the backend) shows.
//!
//! One test function: the simulated library keeps its state per process, and the state file is
//! named by an environment variable read at `nvmlInit`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpu_sim::{ComputeMode, MachineKind, TimeMode};
use greenslice_agent::backend::nvml::NvmlBackend;
use greenslice_agent::backend::sim::{Machine, SimBackend, SimConfig};
use greenslice_agent::backend::{BackendError, GpuBackend};
use greenslice_core::clock::ManualClock;

const T0: i64 = 1_750_000_000_000;
const GIB: u64 = 1 << 30;

fn nvml_sim_library() -> PathBuf {
    common::nvml_sim::sim_artifacts().0
}

/// The outcome of one call, as the rule it met.
fn outcome<T>(r: Result<T, BackendError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(BackendError::MigMode { .. }) => "mig-mode",
        Err(BackendError::NoRoom { .. }) => "no-room",
        Err(BackendError::NoSuchSlice { .. }) => "no-such-slice",
        Err(BackendError::UnknownGpu(_)) => "unknown-gpu",
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// How the hardware sees each GPU's compute mode.
type Modes = dyn Fn(&mut dyn GpuBackend) -> Vec<ComputeMode>;

/// Runs the rules on `b`; returns each step's outcome, checking compute modes on the way.
fn rules(b: &mut dyn GpuBackend, modes: &Modes) -> Vec<(&'static str, &'static str)> {
    let inv = b.inventory().expect("inventory");
    let mig = inv[0].uuid.clone();
    assert!(inv[0].mig_enabled, "GPU 0 starts in MIG mode");
    let (g2, g3, g4) = (
        inv[2].uuid.clone(),
        inv[3].uuid.clone(),
        inv[4].uuid.clone(),
    );
    let mut out = Vec::new();
    let mut step = |name: &'static str, r: &'static str| out.push((name, r));
    step("whole on a MIG GPU", outcome(b.assign_whole(&mig, "s-w")));
    step(
        "share on a MIG GPU",
        outcome(b.set_share(&mig, "s-sh", 0.5, GIB)),
    );
    step("whole", outcome(b.assign_whole(&g2, "s-w")));
    assert_eq!(modes(b)[2], ComputeMode::ExclusiveProcess, "{}", b.kind());
    step(
        "whole again, same slice",
        outcome(b.assign_whole(&g2, "s-w")),
    );
    step("whole, another holder", outcome(b.assign_whole(&g2, "s-x")));
    step(
        "share on a GPU held whole",
        outcome(b.set_share(&g2, "s-sh", 0.5, GIB)),
    );
    step(
        "release by a slice that does not hold it",
        outcome(b.unassign_whole(&g2, "s-x")),
    );
    assert_eq!(modes(b)[2], ComputeMode::ExclusiveProcess, "{}", b.kind());
    step("release", outcome(b.unassign_whole(&g2, "s-w")));
    assert_eq!(modes(b)[2], ComputeMode::Default, "{}", b.kind());
    step("share a", outcome(b.set_share(&g3, "a", 0.5, 40 * GIB)));
    step("share b", outcome(b.set_share(&g3, "b", 0.5, 30 * GIB)));
    step(
        "share past the compute",
        outcome(b.set_share(&g3, "c", 0.1, GIB)),
    );
    step(
        "share past the memory",
        outcome(b.set_share(&g4, "d", 0.1, 81 * GIB)),
    );
    step(
        "share b again, larger, within the GPU",
        outcome(b.set_share(&g3, "b", 0.5, 40 * GIB)),
    );
    step(
        "whole on a GPU with shares",
        outcome(b.assign_whole(&g3, "s-y")),
    );
    assert_eq!(modes(b)[3], ComputeMode::Default, "{}", b.kind());
    step(
        "clear a share that is not there",
        outcome(b.clear_share(&g3, "zzz")),
    );
    step("clear a share", outcome(b.clear_share(&g3, "a")));
    step(
        "whole on an unknown GPU",
        outcome(b.assign_whole("GPU-nope", "s-z")),
    );
    out
}

fn file_modes(state: &Path) -> Vec<ComputeMode> {
    let m: gpu_sim::Machine =
        serde_json::from_slice(&std::fs::read(state).expect("state file")).expect("machine JSON");
    m.devices.iter().map(|d| d.compute_mode).collect()
}

#[test]
fn whole_gpus_and_shares_are_refused_alike_by_both_backends_and_held_in_exclusive_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("machine.json");
    let mut hw = gpu_sim::Machine::new(MachineKind::DgxH100, 8, 2, "whole", T0);
    hw.time_mode = TimeMode::Manual;
    std::fs::write(&state, serde_json::to_vec(&hw).expect("JSON")).expect("write state");

    let config =
        SimConfig::new("whole", Machine::DgxH100).with_clock(Arc::new(ManualClock::new(T0)));
    let mut sim = SimBackend::on_machine(config, hw).expect("sim backend");
    let sim_modes = |b: &mut dyn GpuBackend| -> Vec<ComputeMode> {
        let m = b.as_sim_mut().expect("the sim backend").machine();
        m.devices.iter().map(|d| d.compute_mode).collect()
    };
    let from_sim = rules(&mut sim, &sim_modes);

    // SAFETY: this test binary has one test, and nothing else reads the environment concurrently.
    unsafe { std::env::set_var("GREENSLICE_NVML_SIM_STATE", &state) };
    let mut nvml =
        NvmlBackend::new(true, "/tmp/nvidia-mps", Some(&nvml_sim_library())).expect("NVML backend");
    let file = state.clone();
    let nvml_modes = move |_: &mut dyn GpuBackend| file_modes(&file);
    let from_nvml = rules(&mut nvml, &nvml_modes);

    assert_eq!(from_sim, from_nvml, "the backends disagree");
    let expected = [
        "mig-mode",
        "mig-mode",
        "ok",
        "ok",
        "no-room",
        "no-room",
        "no-such-slice",
        "ok",
        "ok",
        "ok",
        "no-room",
        "no-room",
        "ok",
        "no-room",
        "no-such-slice",
        "ok",
        "unknown-gpu",
    ];
    let got: Vec<&str> = from_nvml.iter().map(|(_, r)| *r).collect();
    assert_eq!(got, expected, "{from_nvml:#?}");
}
