//! The agent binary's own behaviour at its edges.

use std::process::Command;

#[test]
fn nvml_backend_without_a_driver_exits_with_a_clear_message() {
    // These machines have no NVIDIA driver; on one that has, this test does not apply.
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        eprintln!("NVIDIA driver present: skipping the no-driver check");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_greenslice-agent"))
        .args(["--backend", "nvml", "--controller", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NVML") && err.contains("--backend sim"),
        "{err}"
    );
}

#[test]
fn unknown_machine_is_refused_listing_known_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_greenslice-agent"))
        .args([
            "--backend",
            "sim",
            "--machine",
            "dgx-z9",
            "--controller",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dgx-h100"), "{err}");
}
