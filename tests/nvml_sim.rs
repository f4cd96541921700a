//! The real NVML path end to end: the real controller and agent binaries, the agent on
//! `--backend nvml` with the simulated NVML library, the workload acting through the simulator's
//! CLI on the same state file. What the controller chose is checked against what the simulated
//! hardware holds, and the hardware outlives the agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::*;
use serde_json::Value;

/// The simulated NVML library, built by `cargo test --workspace` (nvml-sim is a member).
fn nvml_library() -> PathBuf {
    let me = bin("greenslice");
    let dir = me.parent().expect("target dir");
    [
        dir.join("libgreenslice_nvml_sim.so"),
        dir.join("deps/libgreenslice_nvml_sim.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| {
        panic!(
            "libgreenslice_nvml_sim.so is missing in {}: run `cargo test --workspace`",
            dir.display()
        )
    })
}

/// A simulated machine's state file and the environment that points at it.
struct Machine {
    _dir: tempfile::TempDir,
    state: PathBuf,
}

impl Machine {
    fn new(kind: &str, mig_gpus: u32) -> Machine {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("machine.json");
        let m = Machine { _dir: dir, state };
        let out = m.sim(&[
            "--machine",
            kind,
            "--mig-gpus",
            &mig_gpus.to_string(),
            "init",
        ]);
        assert!(out.0, "init failed: {}", out.1);
        m
    }

    /// Runs greenslice-gpu-sim; (success, stdout or stderr).
    fn sim(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("greenslice-gpu-sim"))
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run greenslice-gpu-sim");
        let text = if out.status.success() {
            out.stdout
        } else {
            out.stderr
        };
        (
            out.status.success(),
            String::from_utf8_lossy(&text).into_owned(),
        )
    }

    fn state(&self) -> Value {
        let (ok, text) = self.sim(&["state"]);
        assert!(ok, "state failed: {text}");
        serde_json::from_str(&text).expect("state JSON")
    }

    fn agent(&self, url: &str, node: &str) -> Proc {
        start_nvml_agent(url, node, &self.state)
    }
}

fn start_nvml_agent(url: &str, node: &str, state: &Path) -> Proc {
    let child = Command::new(bin("greenslice-agent"))
        .args(["--controller", url, "--node", node, "--backend", "nvml"])
        .arg("--nvml-library")
        .arg(nvml_library())
        .args(["--mig-manage", "true"])
        .env("GREENSLICE_NVML_SIM_STATE", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start greenslice-agent");
    Proc(child, None)
}

fn connected(url: &str, node: &str) -> bool {
    let inv = cli_json(url, &["inventory"]);
    inv["nodes"].as_array().is_some_and(|n| {
        n.iter()
            .any(|n| n["name"] == node && n["connected"] == true)
    })
}

/// The GPU instances the simulated hardware holds: (GPU uuid, profile, start, MIG uuid).
fn instances(state: &Value) -> Vec<(String, String, u64, String)> {
    let mut out = Vec::new();
    for g in state["gpus"].as_array().into_iter().flatten() {
        for i in g["gpu_instances"].as_array().into_iter().flatten() {
            out.push((
                g["uuid"].as_str().unwrap_or("").to_string(),
                i["profile"].as_str().unwrap_or("").to_string(),
                i["start"].as_u64().unwrap_or(99),
                i["uuid"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn request(url: &str, args: &[&str]) -> Value {
    let mut a = vec!["request", "--tenant", "team-a"];
    a.extend_from_slice(args);
    let s = cli_json(url, &a);
    assert_eq!(s["state"], "active", "{args:?}: {s}");
    s
}

fn slice(url: &str, id: &str) -> Value {
    let list = cli_json(url, &["list", "--all"]);
    list.as_array()
        .or_else(|| list["slices"].as_array())
        .and_then(|l| l.iter().find(|s| s["id"] == id).cloned())
        .unwrap_or_else(|| panic!("slice {id} not listed: {list}"))
}

#[test]
fn the_nvml_path_places_mig_whole_and_share_on_simulated_hardware_and_tears_them_down() {
    let machine = Machine::new("dgx-h100", 2);
    let (_ctl, url) = start_controller(&[]);
    let _agent = machine.agent(&url, "h100-n");
    assert!(
        wait_until(Duration::from_secs(20), || connected(&url, "h100-n")),
        "the NVML agent did not register"
    );
    let inv = cli_json(&url, &["inventory"]);
    assert_eq!(inv["gpus_total"], 8, "{inv}");

    let whole = request(&url, &["--whole", "1"]);
    let big = request(&url, &["--profile", "3g.40gb"]);
    let small = request(&url, &["--profile", "1g.10gb"]);
    let share = request(&url, &["--share", "0.25", "--memory", "10GiB"]);

    // The hardware holds the instances where the controller placed them.
    let hw = instances(&machine.state());
    for s in [&big, &small] {
        let want = (
            s["gpu_uuids"][0].as_str().unwrap().to_string(),
            s["mig"]["profile"].as_str().unwrap_or_default().to_string(),
            s["mig"]["start"].as_u64().unwrap(),
            s["mig"]["mig_uuid"].as_str().unwrap().to_string(),
        );
        assert!(hw.contains(&want), "{want:?} not on the hardware: {hw:?}");
    }
    assert_eq!(hw.len(), 2, "{hw:?}");
    // Whole GPU and share sit on GPUs outside MIG mode, not on each other.
    let mig_gpus: Vec<String> = machine.state()["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["mig_enabled"] == true)
        .map(|g| g["uuid"].as_str().unwrap().to_string())
        .collect();
    let w = whole["gpu_uuids"][0].as_str().unwrap();
    let sh = share["gpu_uuids"][0].as_str().unwrap();
    assert!(!mig_gpus.iter().any(|g| g == w || g == sh));
    assert_ne!(w, sh);

    // A process on the 1g.10gb instance: its teardown is refused by the hardware (IN_USE).
    let mig_uuid = small["mig"]["mig_uuid"].as_str().unwrap();
    let slice_id = small["id"].as_str().unwrap();
    let (ok, pid) = machine.sim(&[
        "start",
        "--mig",
        mig_uuid,
        "--memory",
        "2048",
        "--env",
        &format!("GREENSLICE_SLICE_ID={slice_id}"),
    ]);
    assert!(ok, "start failed: {pid}");
    let out = cli(&url, &["release", slice_id]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let s = slice(&url, slice_id);
    assert_eq!(s["state"], "releasing", "{s} ({text})");
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("in use") || r.contains("process")),
        "the reason says what blocks the teardown: {s}"
    );
    assert_eq!(
        instances(&machine.state()).len(),
        2,
        "the instance is still there"
    );
    // Once the process exits, the teardown completes by itself.
    assert!(machine.sim(&["stop", pid.trim()]).0);
    assert!(
        wait_until(Duration::from_secs(30), || slice(&url, slice_id)["state"]
            == "released"),
        "teardown did not complete after the process ended: {}",
        slice(&url, slice_id)
    );

    for s in [&whole, &big, &share] {
        let r = cli_json(&url, &["release", s["id"].as_str().unwrap()]);
        assert_eq!(r["state"], "released", "{r}");
    }
    assert_eq!(
        instances(&machine.state()),
        vec![],
        "releasing removed the instances"
    );
}
