//! A clean stop of the agent, with real processes: the real controller and agent binaries (NVML
//! backend on the simulated library, a fake kubelet on the real protos). SIGTERM, as Kubernetes
//! sends it on every rollout.
//!
//! What users rely on: the agent exits promptly and cleanly (exit 0), leaves the node as it was
//! (every MIG instance, share and whole GPU in place, its compute mode unchanged, the checkpoint
//! holding them), the kubelet sees its plugins gone, the controller keeps the slices ACTIVE, and the
//! next agent takes them back without rebuilding anything.

mod common;

use std::time::{Duration, Instant};

use common::fake_kubelet::FakeKubelet;
use common::nvml_sim::*;
use common::procs::*;

/// Each GPU's MIG instances and compute mode (what a stop must not change; energy moves on).
fn layout(m: &serde_json::Value) -> Vec<(String, String, String)> {
    m["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["uuid"].to_string(),
                d["gpu_instances"].to_string(),
                d["compute_mode"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_at_once_and_leaves_the_node_as_it_was() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "2", "state"]);
    let mut kubelet = FakeKubelet::start(dir);
    let (_ctl, url) = start_controller(&[]);
    let config = format!(
        "[mig]\nmanage = true\n{}kubelet_poll_ms = 100\ncontroller_placement = false\n",
        kubelet.agent_config()
    );
    let mut agent = start_nvml_agent(&url, "n1", (&lib, &state), dir, &config, &[]);
    let _plugin = kubelet
        .plugin("greenslice.io/gpu", Duration::from_secs(20))
        .await;
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "the agent did not register"
    );
    let slices: Vec<serde_json::Value> = [
        vec!["--share", "0.25", "--memory", "4GiB"],
        vec!["--profile", "1g.10gb"],
        vec!["--whole", "1"],
    ]
    .into_iter()
    .map(|k| {
        let mut args = vec!["request", "--tenant", "team-a"];
        args.extend(k);
        let s = cli_json(&url, &args);
        assert_eq!(s["state"], "active", "{s}");
        s
    })
    .collect();
    let before = machine(&sim_cli, &state);
    let sockets = |d: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("greenslice-"))
            .collect()
    };
    assert!(!sockets(&kubelet.plugins_dir).is_empty());

    let t = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
    let exit = loop {
        if let Some(s) = agent.0.try_wait().expect("wait for the agent") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the agent still runs 5 s after SIGTERM\n{}",
            agent_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        exit.success(),
        "a clean stop exits 0: {exit:?}\n{}",
        agent_log(dir)
    );
    assert!(agent_log(dir).contains("stopped"), "{}", agent_log(dir));

    // The node as it was: the same MIG instances and compute modes.
    let after = machine(&sim_cli, &state);
    assert_eq!(
        layout(&before),
        layout(&after),
        "the stop changed the hardware"
    );
    assert!(
        layout(&after)
            .iter()
            .any(|(_, _, mode)| mode == "exclusive_process"),
        "the whole GPU is still held exclusively"
    );
    // The kubelet sees the plugins gone.
    assert_eq!(
        sockets(&kubelet.plugins_dir),
        Vec::<String>::new(),
        "plugin endpoints left behind"
    );
    // The controller keeps the slices (the node is away, not its hardware).
    for s in &slices {
        let now = cli_json(&url, &["get", s["id"].as_str().unwrap()]);
        assert_eq!(now["state"], "active", "{now}");
    }

    // The next agent takes them back from its checkpoint, rebuilding nothing.
    let _next = start_nvml_agent(&url, "n1", (&lib, &state), dir, &config, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["nodes"][0]["connected"] == true
        }),
        "the next agent did not register"
    );
    // (start_nvml_agent starts a new log.)
    let log = agent_log(dir);
    assert!(
        log.contains("node checkpoint read") && !log.contains("rebuilding from the hardware"),
        "the checkpoint a clean stop left was not used:\n{log}"
    );
    for s in &slices {
        let now = cli_json(&url, &["get", s["id"].as_str().unwrap()]);
        assert_eq!(now["state"], "active", "{now}");
    }
    assert_eq!(
        layout(&machine(&sim_cli, &state)),
        layout(&after),
        "the next agent changed the hardware"
    );
}
