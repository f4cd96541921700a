//! Compute modes of share GPUs under MPS supervision, on the NVML backend over
//! `libgreenslice_nvml_sim.so`, read from the simulated hardware's state file (not through the
//! backend). A GPU that serves shares through its supervised MPS daemon must be in
//! EXCLUSIVE_PROCESS mode (only the MPS server opens it), and every other GPU that no slice holds
//! whole must be DEFAULT, or it would serve one process only. What could go wrong: a restart
//! clean-up that resets the device plugin's share GPUs, a released whole GPU that leaves a share
//! GPU DEFAULT, a share moved to another GPU that leaves the old one EXCLUSIVE.
//!
//! One test function: the simulated library keeps its state per process, and the state file is
//! named by an environment variable read at `nvmlInit`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gpu_sim::{ComputeMode, MachineKind, TimeMode};
use greenslice_agent::backend::GpuBackend;
use greenslice_agent::backend::nvml::NvmlBackend;
use greenslice_agent::checkpoint::Owned;

const T0: i64 = 1_750_000_000_000;
const GIB: u64 = 1 << 30;

fn nvml_sim_library() -> PathBuf {
    common::nvml_sim::sim_artifacts().0
}

/// Each GPU's compute mode as the hardware has it: "E" exclusive process, "D" default.
fn modes(state: &Path) -> String {
    let m: gpu_sim::Machine =
        serde_json::from_slice(&std::fs::read(state).expect("state file")).expect("machine JSON");
    m.devices
        .iter()
        .map(|d| match d.compute_mode {
            ComputeMode::ExclusiveProcess => 'E',
            ComputeMode::Default => 'D',
            _ => '?',
        })
        .collect()
}

#[test]
fn share_gpus_stay_exclusive_and_every_other_gpu_returns_to_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("machine.json");
    // No GPU in MIG mode; GPU 4 left EXCLUSIVE by an assignment whose record was lost.
    let mut hw = gpu_sim::Machine::new(MachineKind::DgxH100, 8, 0, "modes", T0);
    hw.time_mode = TimeMode::Manual;
    hw.devices[4].compute_mode = ComputeMode::ExclusiveProcess;
    std::fs::write(&state, serde_json::to_vec(&hw).expect("JSON")).expect("write state");
    let uuid = |i: usize| hw.devices[i].uuid.clone();

    // SAFETY: this test binary has one test, and nothing else reads the environment concurrently.
    unsafe { std::env::set_var("GREENSLICE_NVML_SIM_STATE", &state) };
    // GPU 5 is one of the device plugin's share GPUs.
    let mut b = NvmlBackend::new(true, "/tmp/nvidia-mps", Some(&nvml_sim_library()))
        .expect("NVML backend")
        .with_exclusive_shares(true)
        .with_share_gpus(BTreeSet::from([uuid(5)]));

    // The start: everything owned is known and nothing is held. The share GPU is EXCLUSIVE, the
    // stray EXCLUSIVE GPU 4 is reset.
    b.adopt(&Owned::default(), true).expect("adopt");
    assert_eq!(modes(&state), "DDDDDEDD", "after the start");

    // A tenant share on GPU 3, then moved to GPU 4: GPU 3 goes back to DEFAULT.
    b.set_share(&uuid(3), "a", 0.5, GIB)
        .expect("share on GPU 3");
    assert_eq!(modes(&state), "DDDEDEDD");
    b.set_share(&uuid(4), "a", 0.5, GIB)
        .expect("share moved to GPU 4");
    assert_eq!(modes(&state), "DDDDEEDD", "the GPU the share left");
    b.clear_share(&uuid(4), "a").expect("clear");
    assert_eq!(modes(&state), "DDDDDEDD");

    // A tenant share on the share GPU comes and goes: the GPU stays EXCLUSIVE for pods.
    b.set_share(&uuid(5), "p", 0.25, GIB)
        .expect("share on GPU 5");
    b.clear_share(&uuid(5), "p").expect("clear");
    assert_eq!(
        modes(&state),
        "DDDDDEDD",
        "the share GPU after its last tenant share"
    );

    // A whole GPU released: an ordinary GPU returns to DEFAULT, the share GPU to EXCLUSIVE.
    b.assign_whole(&uuid(2), "w").expect("whole GPU 2");
    b.assign_whole(&uuid(5), "v").expect("whole GPU 5");
    assert_eq!(modes(&state), "DDEDDEDD");
    b.unassign_whole(&uuid(2), "w").expect("release GPU 2");
    b.unassign_whole(&uuid(5), "v").expect("release GPU 5");
    assert_eq!(modes(&state), "DDDDDEDD", "after the whole GPUs");

    // A restart: a new backend over the same hardware, nothing owned. Nothing changes.
    drop(b);
    let mut again = NvmlBackend::new(true, "/tmp/nvidia-mps", Some(&nvml_sim_library()))
        .expect("NVML backend")
        .with_exclusive_shares(true)
        .with_share_gpus(BTreeSet::from([uuid(5)]));
    again.adopt(&Owned::default(), true).expect("adopt");
    assert_eq!(modes(&state), "DDDDDEDD", "after a restart");
    // Without supervision nothing is EXCLUSIVE for shares.
    drop(again);
    let mut plain = NvmlBackend::new(true, "/tmp/nvidia-mps", Some(&nvml_sim_library()))
        .expect("NVML backend")
        .with_share_gpus(BTreeSet::from([uuid(5)]));
    plain.adopt(&Owned::default(), true).expect("adopt");
    assert_eq!(modes(&state), "DDDDDDDD", "unsupervised");
}
