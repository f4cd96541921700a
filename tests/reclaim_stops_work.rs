//! Idle reclaim stops the work, end to end on real processes: the real controller and agent
//! binaries (NVML backend on the simulated library), each slice's job a real process with its
//! slice's `GREENSLICE_SLICE_ID`, idle on the simulated GPU.
//!
//! What users rely on: a reclaimed share or whole GPU has its processes stopped before its
//! capacity is free again (never a job left running on capacity placed anew), and a slice whose
//! activity cannot be known (a process on its GPU names no slice) is never reclaimed as idle.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use std::time::{Duration, Instant};

use common::nvml_sim::*;
use common::procs::*;

/// A job that does nothing on its GPU: a real process (with `slice`'s environment, or none).
fn idle_job(sim: (&Path, &Path), gpu: &str, slice: Option<&str>) -> Job {
    job(sim, gpu, slice, "exec sleep 300", (256, 0))
}

fn state_of(url: &str, id: &str) -> String {
    cli_json(url, &["get", id])["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits until the slice is released; asserts its job had exited by then, by SIGTERM.
async fn released_after_its_job(
    (cli, state): (&Path, &Path),
    url: &str,
    id: &str,
    j: &mut Job,
    within: Duration,
) {
    let t = Instant::now();
    loop {
        if state_of(url, id) == "released" {
            // Seen released, so the job must have exited already (it may not be reaped yet: a
            // zombie has exited, and `try_wait` reaps it now).
            let st = j
                .child
                .try_wait()
                .expect("wait for the job")
                .unwrap_or_else(|| panic!("slice {id} is released while its job still runs"));
            assert_eq!(st.signal(), Some(15), "the job was stopped with SIGTERM");
            // The driver forgets an exited process; the simulated one is told.
            gpu_sim(cli, state, &["stop", "--pid", &j.pid()]);
            return;
        }
        assert!(
            t.elapsed() < within,
            "slice {id} not reclaimed within {within:?}: {}",
            cli_json(url, &["get", id])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_stops_the_jobs_first_and_never_takes_a_slice_whose_activity_is_unknown() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    // Idle after 4 s, reclaimed 2 s after the warning, checked every second.
    let (_ctl, url) =
        start_controller_with_config("[idle]\nwindow_s = 4\ngrace_s = 2\ncheck_interval_s = 1\n");
    let _agent = start_nvml_agent(
        &url,
        "n1",
        (&lib, &state),
        dir,
        "[enforce]\nterm_grace_ms = 2000\n",
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "the agent did not register"
    );

    // An idle share and an idle whole GPU, each with its job running.
    let share = cli_json(
        &url,
        &[
            "request", "--tenant", "team-a", "--share", "0.25", "--memory", "1GiB",
        ],
    );
    let whole = cli_json(&url, &["request", "--tenant", "team-b", "--whole", "1"]);
    let (share_id, whole_id) = (
        share["id"].as_str().unwrap().to_string(),
        whole["id"].as_str().unwrap().to_string(),
    );
    let share_gpu = share["gpu_uuids"][0].as_str().unwrap().to_string();
    let sim = (sim_cli.as_path(), state.as_path());
    let mut share_job = idle_job(sim, &share_gpu, Some(&share_id));
    let mut whole_job = idle_job(
        sim,
        whole["gpu_uuids"][0].as_str().unwrap(),
        Some(&whole_id),
    );
    let within = Duration::from_secs(45);
    released_after_its_job(sim, &url, &share_id, &mut share_job, within).await;
    released_after_its_job(sim, &url, &whole_id, &mut whole_job, within).await;

    // A share on a GPU where a process names no slice: it may be the share's work, so the share's
    // activity is unknown and it stays, however long it looks idle.
    let unknown = cli_json(
        &url,
        &[
            "request", "--tenant", "team-c", "--share", "0.25", "--memory", "1GiB",
        ],
    );
    let unknown_id = unknown["id"].as_str().unwrap().to_string();
    let gpu = unknown["gpu_uuids"][0].as_str().unwrap().to_string();
    let _own = idle_job(sim, &gpu, Some(&unknown_id));
    let stranger = idle_job(sim, &gpu, None);
    // Well past what took the others (window + grace + batches).
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        state_of(&url, &unknown_id),
        "active",
        "a slice of unknown activity was reclaimed: {}",
        cli_json(&url, &["get", &unknown_id])
    );
    // Once the stranger is gone its activity is known again (idle), and it is reclaimed. Idleness
    // is judged on 1-minute rollups: the minute that saw the stranger is not idle, the next one is
    // (up to 60 s, then the 4 s window, the 2 s grace and a 5 s sample batch).
    let pid = stranger.pid();
    drop(stranger);
    gpu_sim(&sim_cli, &state, &["stop", "--pid", &pid]);
    assert!(
        wait_until(Duration::from_secs(100), || state_of(&url, &unknown_id)
            == "released"),
        "the share was not reclaimed once its activity was known: {}\nusage: {}\nprocesses: {}",
        cli_json(&url, &["get", &unknown_id]),
        String::from_utf8_lossy(&cli(&url, &["usage", &unknown_id]).stdout),
        machine(&sim_cli, &state)["devices"]
            .as_array()
            .map(|d| d
                .iter()
                .map(|d| d["processes"].to_string())
                .collect::<Vec<_>>()
                .join("\n"))
            .unwrap_or_default()
    );
}
