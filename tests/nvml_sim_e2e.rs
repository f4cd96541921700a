//! End to end on the NVML path: the real controller binary and the real agent binary with
//! `--backend nvml --nvml-library libgreenslice_nvml_sim.so` on a simulated DGX H100 whose state
//! lives in a file; the workload's view comes from the `greenslice-gpu-sim` CLI, which reads the
//! same machine. Nothing here shares code with the agent's view of the hardware.

mod common;

use std::time::Duration;

use common::nvml_sim::*;
use common::procs::*;

/// The agent may create and destroy MIG instances here.
const AGENT_CONFIG: &str = "[mig]\nmanage = true\n";

#[test]
fn nvml_backend_on_the_simulated_library_places_whole_mig_and_share_slices_and_releases_them() {
    let (lib, sim_cli) = sim_artifacts();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("machine.json");
    // The machine exists before the agent, as hardware does.
    gpu_sim(
        &sim_cli,
        &state,
        &["--machine", "dgx-h100", "--mig-gpus", "2", "state"],
    );
    let (_ctl, url) = start_controller(&[]);
    let _agent = start_nvml_agent(
        &url,
        "h100-nvml",
        (&lib, &state),
        dir.path(),
        AGENT_CONFIG,
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let inv = cli_json(&url, &["inventory"]);
            inv["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["connected"] == true))
        }),
        "the NVML agent did not register"
    );
    let inv = cli_json(&url, &["inventory"]);
    assert_eq!(inv["gpus_total"], 8, "{inv}");

    let whole = cli_json(&url, &["request", "--tenant", "team-a", "--whole", "1"]);
    let big = cli_json(
        &url,
        &["request", "--tenant", "team-b", "--profile", "3g.40gb"],
    );
    let small = cli_json(
        &url,
        &["request", "--tenant", "team-b", "--profile", "1g.10gb"],
    );
    let share = cli_json(
        &url,
        &[
            "request", "--tenant", "team-c", "--share", "0.25", "--memory", "10GiB",
        ],
    );
    for s in [&whole, &big, &small, &share] {
        assert_eq!(s["state"], "active", "{s}");
    }

    // The simulated hardware holds the instances at the placements the controller chose.
    let m = machine(&sim_cli, &state);
    for s in [&big, &small] {
        let gpu = s["gpu_uuids"][0].as_str().expect("MIG slice GPU");
        let start = s["mig"]["start"].as_u64().expect("start");
        let profile = s["spec"]["profile"].as_str().map(str::to_string);
        let held = instances(&m, gpu);
        assert!(
            held.iter()
                .any(|(_, p, st)| *st == start && profile.as_deref().is_none_or(|want| want == p)),
            "slice {s} not on the simulated GPU: {held:?}"
        );
        assert!(
            s["mig"]["mig_uuid"]
                .as_str()
                .unwrap_or("")
                .starts_with("MIG-")
        );
    }

    for s in [&whole, &big, &small, &share] {
        let r = cli_json(&url, &["release", s["id"].as_str().unwrap()]);
        assert_eq!(r["state"], "released", "{r}");
    }
    let m = machine(&sim_cli, &state);
    for s in [&big, &small] {
        let gpu = s["gpu_uuids"][0].as_str().unwrap();
        assert_eq!(
            instances(&m, gpu),
            vec![],
            "released instances remain on {gpu}"
        );
    }
    let after = cli_json(&url, &["inventory"]);
    assert_eq!(after["allocated_milli"], 0, "{after}");
}

#[test]
fn a_mig_instance_still_in_use_is_released_once_its_process_exits() {
    let (lib, sim_cli) = sim_artifacts();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "2", "state"]);
    let (_ctl, url) = start_controller(&[]);
    let _agent = start_nvml_agent(
        &url,
        "h100-nvml",
        (&lib, &state),
        dir.path(),
        AGENT_CONFIG,
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["connected"] == true))
        }),
        "the NVML agent did not register"
    );
    let s = cli_json(
        &url,
        &["request", "--tenant", "team-b", "--profile", "1g.10gb"],
    );
    let id = s["id"].as_str().expect("slice id").to_string();
    let gpu = s["gpu_uuids"][0].as_str().expect("GPU").to_string();
    let gi = s["mig"]["gpu_instance_id"]
        .as_u64()
        .expect("GPU instance id");
    let index = gpu_index(&machine(&sim_cli, &state), &gpu);
    // The tenant's job runs on the instance.
    gpu_sim(
        &sim_cli,
        &state,
        &[
            "start",
            "--pid",
            "4242",
            "--gpu",
            &index.to_string(),
            "--gi",
            &gi.to_string(),
            "--memory-mib",
            "512",
            "--sm",
            "30",
            "--env",
            &format!("GREENSLICE_SLICE_ID={id}"),
        ],
    );

    // The release is refused by the hardware (IN_USE) and says so; the slice stays RELEASING with
    // a reason naming the node and the refusal, not silently.
    // The release itself is accepted (it is durable and will finish): it answers RELEASING.
    let answered = cli_json(&url, &["release", &id]);
    assert_eq!(answered["state"], "releasing", "{answered}");
    let got = cli_json(&url, &["get", &id]);
    assert_eq!(got["state"], "releasing", "{got}");
    let reason = got["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("teardown refused by node h100-nvml"),
        "{reason}"
    );
    assert_eq!(instances(&machine(&sim_cli, &state), &gpu).len(), 1);

    // Once the process exits, the retried teardown completes.
    gpu_sim(&sim_cli, &state, &["stop", "--pid", "4242"]);
    assert!(
        wait_until(
            Duration::from_secs(20),
            || cli_json(&url, &["get", &id])["state"] == "released"
        ),
        "slice not released after its process exited: {}",
        cli_json(&url, &["get", &id])
    );
    assert_eq!(instances(&machine(&sim_cli, &state), &gpu), vec![]);
}
