//! `greenslice-gpu-sim` as a workload uses it: changes persist in the state file across runs, and
//! bad input exits 2 with a message naming it, leaving the machine as it was.

use std::path::Path;
use std::process::{Command, Output};

fn run(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenslice-gpu-sim"))
        .arg("--state")
        .arg(state)
        .args(["--mig-gpus", "1", "--manual-time"])
        .args(args)
        .env_remove("GREENSLICE_NVML_SIM_STATE")
        .output()
        .expect("run greenslice-gpu-sim")
}

fn state_json(state: &Path) -> serde_json::Value {
    let out = run(state, &["state"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn processes_persist_and_bad_input_exits_2_without_changing_the_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("m.json");
    let ok = run(
        &state,
        &[
            "start",
            "--pid",
            "7",
            "--gpu",
            "3",
            "--sm",
            "80",
            "--env",
            "GREENSLICE_SLICE_ID=s-1",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let util = run(
        &state,
        &["set-util", "--pid", "7", "--sm", "20", "--mem-util", "12"],
    );
    assert!(
        util.status.success(),
        "{}",
        String::from_utf8_lossy(&util.stderr)
    );
    let before = state_json(&state);
    let p = &before["devices"][3]["processes"][0];
    assert_eq!(
        (p["sm_util_pct"].as_u64(), p["mem_util_pct"].as_u64()),
        (Some(20), Some(12))
    );
    assert_eq!(
        before["devices"][3]["processes"][0]["env"]["GREENSLICE_SLICE_ID"],
        "s-1"
    );

    for (args, says) in [
        (vec!["start", "--pid", "7", "--gpu", "4"], "pid 7"),
        (vec!["start", "--pid", "8", "--gpu", "99"], "no GPU 99"),
        (vec!["start", "--pid", "8", "--gpu", "0"], "MIG mode"),
        (
            vec!["start", "--pid", "8", "--gpu", "1", "--sm", "101"],
            "101",
        ),
        (
            vec!["start", "--pid", "8", "--gpu", "1", "--env", "NOEQUALS"],
            "KEY=VALUE",
        ),
        (vec!["stop", "--pid", "12345"], "no process 12345"),
        (
            vec!["set-util", "--pid", "12345", "--sm", "1"],
            "no process 12345",
        ),
        (vec!["set-util", "--pid", "7", "--sm", "101"], "101"),
        (
            vec!["power-limit", "--gpu", "1", "--watts", "5000"],
            "power limit",
        ),
    ] {
        let out = run(&state, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let mut after = state_json(&state);
    // Manual time: nothing moved, so the two states are equal field for field.
    after["generation"] = before["generation"].clone();
    assert_eq!(after, before);

    // A corrupt state file is an I/O-class error (1), not bad input.
    std::fs::write(&state, b"{").expect("write");
    assert_eq!(run(&state, &["state"]).status.code(), Some(1));
}

#[test]
fn the_state_shows_each_processs_true_energy_and_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("m.json");
    for args in [
        vec![
            "start",
            "--pid",
            "1",
            "--gpu",
            "2",
            "--sm",
            "30",
            "--mem-util",
            "90",
            "--workload",
            "memory_bound",
        ],
        vec![
            "start",
            "--pid",
            "2",
            "--gpu",
            "2",
            "--sm",
            "60",
            "--mem-util",
            "5",
            "--workload",
            "compute_bound",
        ],
        vec![
            "set-util",
            "--pid",
            "2",
            "--sm",
            "60",
            "--mem-util",
            "5",
            "--tensor",
            "0",
        ],
        vec!["advance", "--ms", "10000"],
    ] {
        let out = run(&state, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = state_json(&state);
    let procs = &s["devices"][2]["processes"];
    assert_eq!(procs[0]["workload"], "memory_bound");
    let e = |i: usize| procs[i]["true_energy_mj"].as_u64().expect("true energy");
    // The memory-bound process at half the SM% of the other drew more energy.
    assert!(e(0) > e(1) && e(1) > 0, "{} vs {}", e(0), e(1));
    // The board's energy is the floor's (101.5 W x 10 s) plus the processes'.
    let board = s["devices"][2]["energy_mj"].as_u64().expect("energy");
    assert!(board.abs_diff(1_015_000 + e(0) + e(1)) <= 2);
    // A workload it does not know is refused, with the names it knows.
    let bad = run(
        &state,
        &["start", "--pid", "3", "--gpu", "1", "--workload", "gaming"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("memory_bound"));
}
