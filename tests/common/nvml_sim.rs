//! The simulated NVML machine for end-to-end tests: the library and CLI built beside the tests,
//! and the machine as the `greenslice-gpu-sim` CLI shows it (nothing shared with the agent's view).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use serde_json::Value;

use super::procs::bin;

static BUILD: Once = Once::new();

/// The simulated library and CLI. `cargo test --workspace` builds both beside this test's binaries
/// (their packages have tests). When only this test was asked for, they are built here, into a
/// target folder of their own: the running `cargo test` holds the lock on the main one.
pub fn sim_artifacts() -> (PathBuf, PathBuf) {
    let dir = bin("greenslice")
        .parent()
        .expect("profile dir")
        .to_path_buf();
    // A clean `cargo test` leaves the cdylib only in deps/ (the root package depends on nvml-sim).
    let lib = [
        dir.join("libgreenslice_nvml_sim.so"),
        dir.join("deps/libgreenslice_nvml_sim.so"),
    ]
    .into_iter()
    .find(|p| p.exists());
    let cli = dir.join("greenslice-gpu-sim");
    if let Some(lib) = lib
        && cli.exists()
    {
        return (lib, cli);
    }
    let target = dir.parent().expect("target dir").join("nvml-sim-for-tests");
    BUILD.call_once(|| {
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "nvml-sim", "-p", "gpu-sim"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build -p nvml-sim -p gpu-sim failed");
    });
    let built = target.join("debug");
    let found = (
        built.join("libgreenslice_nvml_sim.so"),
        built.join("greenslice-gpu-sim"),
    );
    assert!(
        found.0.exists() && found.1.exists(),
        "{} missing",
        found.0.display()
    );
    found
}

/// Runs the simulator's CLI on `state` and returns its stdout.
pub fn gpu_sim(cli: &Path, state: &Path, args: &[&str]) -> String {
    let out = Command::new(cli)
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run greenslice-gpu-sim");
    assert!(
        out.status.success(),
        "greenslice-gpu-sim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn machine(cli: &Path, state: &Path) -> Value {
    serde_json::from_str(&gpu_sim(cli, state, &["state"])).expect("state JSON")
}

/// The simulated GPU instances of GPU `uuid`: (id, profile, start).
pub fn instances(m: &Value, uuid: &str) -> Vec<(u64, String, u64)> {
    let d = m["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["uuid"] == uuid))
        .unwrap_or_else(|| panic!("GPU {uuid} is not on the simulated machine"));
    d["gpu_instances"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    (
                        g["id"].as_u64().unwrap_or(0),
                        g["profile"].as_str().unwrap_or("").to_string(),
                        g["start"].as_u64().unwrap_or(99),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The index of GPU `uuid` on the simulated machine.
pub fn gpu_index(m: &Value, uuid: &str) -> u64 {
    m["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["uuid"] == uuid))
        .and_then(|d| d["index"].as_u64())
        .unwrap_or_else(|| panic!("GPU {uuid} is not on the simulated machine"))
}

/// The real agent binary on the simulated NVML machine `state` (as the file says; a new file is a
/// DGX H100 of 8 GPUs, none in MIG mode): node `node`, `config` as its TOML file, its checkpoint and log (`agent.log`) in `dir`,
/// `extra` flags after the others.
pub fn start_nvml_agent(
    url: &str,
    node: &str,
    (lib, state): (&Path, &Path),
    dir: &Path,
    config: &str,
    extra: &[&str],
) -> super::procs::Proc {
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, config).expect("agent config");
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let child = Command::new(bin("greenslice-agent"))
        .args(["--controller", url, "--node", node, "--backend", "nvml"])
        .arg("--nvml-library")
        .arg(lib)
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.join("agent-state"))
        .args(extra)
        .env("GREENSLICE_NVML_SIM_STATE", state)
        .env("GREENSLICE_NVML_SIM_MACHINE", "dgx-h100")
        .env("GREENSLICE_NVML_SIM_MIG_GPUS", "0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start greenslice-agent");
    super::procs::Proc(child, None)
}

/// The agent's log so far (for failure messages).
pub fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

/// The stand-in `nvidia-cuda-mps-control` (gpu-sim's), built like [`sim_artifacts`]: beside the
/// tests by `cargo test --workspace`, else here into a target folder of its own.
pub fn mps_control_standin() -> PathBuf {
    let (_, cli) = sim_artifacts();
    let beside = cli.with_file_name("nvidia-cuda-mps-control");
    if beside.exists() {
        return beside;
    }
    let dir = bin("greenslice")
        .parent()
        .expect("profile dir")
        .to_path_buf();
    let target = dir.parent().expect("target dir").join("nvml-sim-for-tests");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "gpu-sim", "--bins"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p gpu-sim --bins failed");
    let built = target.join("debug/nvidia-cuda-mps-control");
    assert!(built.exists(), "{} missing", built.display());
    built
}

/// The compute mode of GPU `uuid` on the simulated machine ("default", "exclusive_process").
pub fn compute_mode(m: &Value, uuid: &str) -> String {
    m["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["uuid"] == uuid))
        .and_then(|d| d["compute_mode"].as_str())
        .unwrap_or_else(|| panic!("GPU {uuid} is not on the simulated machine"))
        .to_string()
}

/// A job on the simulated machine: a real process (`sh -c script`, its environment naming `slice`
/// when given, as a slice's job's does), registered on GPU `gpu` of the machine with `memory_mib` of
/// device memory and `sm` percent of its SMs. Killed when dropped.
pub struct Job {
    pub child: std::process::Child,
    pub started: std::time::Instant,
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Job {
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

pub fn job(
    (cli, state): (&Path, &Path),
    gpu: &str,
    slice: Option<&str>,
    script: &str,
    (memory_mib, sm): (u32, u32),
) -> Job {
    let mut c = Command::new("sh");
    c.args(["-c", script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(id) = slice {
        c.env("GREENSLICE_SLICE_ID", id);
    }
    let child = c.spawn().expect("start a job");
    let index = gpu_index(&machine(cli, state), gpu);
    gpu_sim(
        cli,
        state,
        &[
            "start",
            "--pid",
            &child.id().to_string(),
            "--gpu",
            &index.to_string(),
            "--memory-mib",
            &memory_mib.to_string(),
            "--sm",
            &sm.to_string(),
        ],
    );
    Job {
        child,
        started: std::time::Instant::now(),
    }
}
