//! The agent binary driven from outside, as an operator runs it.

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_greenslice-agent"));
    c.env("RUST_LOG", "warn");
    c
}

fn driver_present() -> bool {
    greenslice_agent::backend::nvml::NvmlBackend::new(false, "/tmp", None).is_ok()
}

fn dump(machine: &str, mig_gpus: u32, samples: u32) -> Vec<serde_json::Value> {
    let out = agent()
        .args([
            "--backend",
            "sim",
            "--machine",
            machine,
            "--node",
            "t1",
            "--dump",
        ])
        .args([
            "--mig-gpus",
            &mig_gpus.to_string(),
            "--samples",
            &samples.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn dump_prints_inventory_placements_and_samples_for_each_machine() {
    for (machine, model) in [
        ("dgx-h100", "H100Sxm5_80Gb"),
        ("dgx-a100-40", "A100Sxm4_40Gb"),
    ] {
        let lines = dump(machine, 2, 4);
        assert_eq!(lines[0]["type"], "inventory");
        assert_eq!(lines[0]["backend"], "sim");
        let gpus = lines[0]["gpus"].as_array().unwrap();
        assert_eq!(gpus.len(), 8);
        assert_eq!(gpus[0]["model"], model);
        let profiles: Vec<_> = lines
            .iter()
            .filter(|l| l["type"] == "mig_profiles")
            .collect();
        assert_eq!(profiles.len(), 8, "{machine}: every GPU is MIG-capable");
        let samples: Vec<_> = lines.iter().filter(|l| l["type"] == "sample").collect();
        assert_eq!(samples.len(), 4);
        let mut last = 0;
        for s in &samples {
            let g = &s["sample"]["gpus"][0];
            let e = g["energy_mj"].as_u64().unwrap();
            assert!(e >= last);
            last = e;
            // GPU 0 is in MIG mode: no board utilization, and NVML says so.
            assert!(g["gpu_util_pct"].is_null());
            assert!(
                g["unsupported"]
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!("utilization"))
            );
        }
        assert!(last > 0, "{machine}: energy counted over simulated seconds");
    }
}

#[test]
fn unknown_machine_is_refused_with_the_known_ones() {
    let out = agent()
        .args(["--backend", "sim", "--machine", "dgx-z9", "--dump"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dgx-h100"), "{err}");
}

#[test]
fn nvml_and_auto_without_a_driver_exit_non_zero_and_point_to_the_simulator() {
    if driver_present() {
        eprintln!("an NVIDIA driver is present: no-driver path not exercised");
        return;
    }
    for backend in ["nvml", "auto"] {
        let out = agent()
            .args(["--backend", backend, "--dump"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "--backend {backend}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("libnvidia-ml.so.1"), "{err}");
        assert!(err.contains("--backend sim"), "{err}");
    }
}

fn gpu_check() -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gpu-check.sh");
    let mut c = Command::new("bash");
    c.arg(script).env_remove("LD_LIBRARY_PATH");
    c
}

#[test]
fn gpu_check_fails_clearly_without_a_gpu() {
    if driver_present() || std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("an NVIDIA driver is present: no-GPU path not exercised");
        return;
    }
    let out = gpu_check().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no NVIDIA GPU driver found"), "{err}");
    assert!(err.contains("--backend sim"), "{err}");
}

#[test]
fn gpu_check_reports_an_unloadable_library_from_the_agent() {
    if driver_present() {
        return;
    }
    // A library file that exists but cannot be loaded gets past the script's own check.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libnvidia-ml.so.1"), b"").unwrap();
    let out = gpu_check()
        .env("LD_LIBRARY_PATH", dir.path())
        .env("AGENT_BIN", env!("CARGO_BIN_EXE_greenslice-agent"))
        .env("OUT", dir.path().join("out.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not load NVML"), "{err}");
    assert!(err.contains("--backend sim"), "{err}");
}

#[test]
fn a_bad_node_name_is_refused_at_startup_with_exit_code_2() {
    let out = agent()
        .args(["--backend", "sim", "--node", "bad node", "--dump"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node must be 1-253 characters of [A-Za-z0-9-._]"),
        "{err}"
    );
}
