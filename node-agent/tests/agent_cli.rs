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

/// Kills the agent when the test ends, passing or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from `addr`: the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn metrics_listen_serves_the_agents_metrics_and_listen_is_no_flag() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = agent()
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(["--backend", "sim", "--node", "t1"])
        // Nothing listens there: the agent retries while its metrics endpoint answers.
        .args(["--controller", "http://127.0.0.1:1"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _running = Running(child);
    let mut addr = None;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("metrics at /metrics") {
            let at = line.find("127.0.0.1:").unwrap();
            let port: String = line[at + 10..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            addr = Some(format!("127.0.0.1:{port}"));
            break;
        }
    }
    // Keep reading its log: a closed pipe would fail the agent's next write to stderr.
    std::thread::spawn(move || lines.for_each(drop));
    let addr = addr.expect("the agent says where its metrics are");
    let (status, body) = http_get(&addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("greenslice_agent_samples"), "{body}");
    let (status, _) = http_get(&addr, "/nothing");
    assert!(status.contains(" 404 "), "{status}");

    // The old --listen, which served nothing, is gone: a usage error, exit code 2.
    let out = agent()
        .args(["--backend", "sim", "--listen", "127.0.0.1:0", "--dump"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
