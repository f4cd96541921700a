//! Per-tenant energy that is accurate, not only conserved, on the live path: the real controller
//! and agent binaries (NVML backend on the simulated library), three tenants sharing one simulated
//! H100 as time-sliced shares: one streams memory at low SM%, one computes, one holds its share and
//! does nothing. Their jobs are real processes whose environment names their slice; their activity
//! and workload kind live on the simulated machine, which also keeps each process's true energy
//! (its power model's own figure, never exposed through NVML). The controller sees only what NVML
//! gives: the board's energy counter, per-process SM and memory utilization, the SM clock.
//!
//! What users rely on: the memory-bound tenant is charged within 10% of its true dynamic energy,
//! where the SM split would be off by far more; the idle tenant pays no dynamic energy; every GPU
//! interval conserves energy exactly; the report names the method.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::nvml_sim::*;
use common::procs::*;
use serde_json::Value;

/// A job on the simulated GPU 0: a real process naming `slice`, running `workload` at
/// (`sm`, `mem`) percent.
fn start_job((cli, state): (&Path, &Path), slice: &str, workload: &str, sm: u32, mem: u32) -> Job {
    let child = Command::new("sh")
        .args(["-c", "exec sleep 600"])
        .env("GREENSLICE_SLICE_ID", slice)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a job");
    let pid = child.id().to_string();
    let (sm, mem) = (sm.to_string(), mem.to_string());
    gpu_sim(
        cli,
        state,
        &[
            "start",
            "--pid",
            &pid,
            "--gpu",
            "0",
            "--sm",
            &sm,
            "--mem-util",
            &mem,
            "--workload",
            workload,
        ],
    );
    Job {
        child,
        started: Instant::now(),
    }
}

/// The machine's time (ms) and each process's true energy (mJ), by pid.
fn truth(m: &Value) -> (i64, BTreeMap<u64, u64>) {
    let at = m["now_ms"].as_i64().expect("now_ms");
    let by = m["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["processes"].as_array().into_iter().flatten())
        .filter_map(|p| Some((p["pid"].as_u64()?, p["true_energy_mj"].as_u64()?)))
        .collect();
    (at, by)
}

/// A process's true energy at `at_ms`, interpolated between the readings around it.
fn true_at(timeline: &[(i64, BTreeMap<u64, u64>)], pid: u64, at_ms: i64) -> f64 {
    let e = |i: usize| timeline[i].1.get(&pid).copied().unwrap_or(0) as f64;
    let i = timeline
        .iter()
        .position(|(t, _)| *t >= at_ms)
        .unwrap_or_else(|| panic!("no truth reading at or after {at_ms}"));
    if i == 0 {
        return e(0);
    }
    let (t0, t1) = (timeline[i - 1].0 as f64, timeline[i].0 as f64);
    let f = if t1 > t0 {
        (at_ms as f64 - t0) / (t1 - t0)
    } else {
        1.0
    };
    e(i - 1) + f * (e(i) - e(i - 1))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn a_memory_bound_tenant_at_low_sm_is_charged_its_true_energy_in_the_live_report() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    // One H100, not in MIG mode, before the agent starts (as hardware is).
    gpu_sim(
        &sim_cli,
        &state,
        &["--gpus", "1", "--mig-gpus", "0", "state"],
    );
    // 5 s attribution windows and 1 s fit observations, so the fit is ready within the test.
    let (_ctl, url) =
        start_controller_with_config("attribution_window_s = 5\nfit_observation_s = 1\n");
    let _agent = start_nvml_agent(&url, "fit-0", (&lib, &state), dir, "", &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["connected"] == true))
        }),
        "the agent did not register: {}",
        agent_log(dir)
    );
    let share = |tenant: &str| {
        let s = cli_json(
            &url,
            &[
                "request", "--tenant", tenant, "--share", "0.3", "--memory", "10GiB",
            ],
        );
        assert_eq!(s["state"], "active", "{s}");
        s["id"].as_str().expect("slice id").to_string()
    };
    let (mem_id, cmp_id, idle_id) = (share("t-mem"), share("t-cmp"), share("t-idle"));
    let cli = (sim_cli.as_path(), state.as_path());
    // Memory-bound at 12% SM and 70% of the DRAM bandwidth; compute-bound at 60% SM; the idle
    // tenant's process holds a context and does nothing.
    const MEM: (u32, u32) = (12, 70);
    const CMP: (u32, u32) = (60, 6);
    let mem_job = start_job(cli, &mem_id, "memory_bound", MEM.0, MEM.1);
    let cmp_job = start_job(cli, &cmp_id, "compute_bound", CMP.0, CMP.1);
    let idle_job = start_job(cli, &idle_id, "generic", 0, 0);

    // Each busy job pauses in its own rhythm (on for 2 periods, off for 1), so the fit sees the
    // board's energy under different mixes. The truth is read every step.
    let mut timeline = Vec::new();
    let t0 = Instant::now();
    let warm_up = Duration::from_secs(20);
    let run = Duration::from_secs(70);
    let mut from_ms = None;
    let mut last = (None, None);
    while t0.elapsed() < run {
        let s = t0.elapsed().as_secs();
        let on = |period: u64| (s / period) % 3 != 2;
        let want = (on(6), on(10));
        for (job, (sm, mem), on, was) in [
            (&mem_job, MEM, want.0, last.0),
            (&cmp_job, CMP, want.1, last.1),
        ] {
            if was != Some(on) {
                let (sm, mem) = if on { (sm, mem) } else { (0, 0) };
                gpu_sim(
                    cli.0,
                    cli.1,
                    &[
                        "set-util",
                        "--pid",
                        &job.pid(),
                        "--sm",
                        &sm.to_string(),
                        "--mem-util",
                        &mem.to_string(),
                    ],
                );
            }
        }
        last = (Some(want.0), Some(want.1));
        timeline.push(truth(&machine(cli.0, cli.1)));
        if from_ms.is_none() && t0.elapsed() >= warm_up {
            from_ms = Some(now_ms());
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let to_ms = now_ms();
    let from_ms = from_ms.expect("warmed up");
    // Keep the truth going while the last batches (5 s) arrive and their windows close.
    let range = ["--from", &from_ms.to_string(), "--to", &to_ms.to_string()];
    let mut report = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        timeline.push(truth(&machine(cli.0, cli.1)));
        let mut args = vec!["report", "--format", "json"];
        args.extend(range);
        report = cli_json(&url, &args);
        if report["data_to_ms"]
            .as_i64()
            .is_some_and(|t| t >= to_ms - 5_000)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    timeline.push(truth(&machine(cli.0, cli.1)));

    // The report names the method: every interval after the warm-up was split by the fit.
    let methods = &report["dynamic_methods"];
    let fitted = methods["activity_fit"].as_u64().unwrap_or(0);
    assert!(fitted >= 8, "too few fitted intervals: {methods}");
    assert_eq!(
        methods.as_object().map(|m| m.len()),
        Some(1),
        "only the fit after the warm-up: {methods}"
    );
    // Conservation, exact per GPU.
    let gpus = report["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 1, "{report}");
    let g = &gpus[0];
    let n = |v: &Value| v.as_u64().expect("mJ");
    assert_eq!(
        n(&g["tenants_mj"]) + n(&g["unattributed_mj"]) + n(&g["unallocated_idle_mj"]),
        n(&g["measured_mj"]),
        "{g}"
    );
    let tenant = |t: &str| {
        report["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|x| x["tenant"] == t))
            .unwrap_or_else(|| panic!("{t} in {report}"))
            .clone()
    };
    let (mem, cmp, idle) = (tenant("t-mem"), tenant("t-cmp"), tenant("t-idle"));
    assert_eq!(
        n(&idle["dynamic_mj"]),
        0,
        "the idle tenant pays no dynamic energy"
    );
    assert!(n(&idle["static_mj"]) > 0);

    // Truth over exactly the reported intervals: each process's own energy, the board's
    // dynamic energy shared in proportion to it (the context floor and rounding go alike).
    let (a, b) = (
        report["data_from_ms"].as_i64().expect("data_from_ms"),
        report["data_to_ms"].as_i64().expect("data_to_ms"),
    );
    let own = |job: &Job| {
        let pid = u64::from(job.child.id());
        true_at(&timeline, pid, b) - true_at(&timeline, pid, a)
    };
    let (own_mem, own_cmp, own_idle) = (own(&mem_job), own(&cmp_job), own(&idle_job));
    let dynamic = (n(&mem["dynamic_mj"]) + n(&cmp["dynamic_mj"]) + n(&g["unattributed_mj"])) as f64;
    let true_mem = dynamic * own_mem / (own_mem + own_cmp + own_idle);
    let charged = n(&mem["dynamic_mj"]) as f64;
    let fit_err = (charged - true_mem).abs() / true_mem;
    // What the SM split would have charged: the dynamic energy by SM activity x time.
    let used = |t: &Value| t["gpu_hours_used"].as_f64().expect("gpu_hours_used");
    let sm_mem = dynamic * used(&mem) / (used(&mem) + used(&cmp));
    let sm_err = (sm_mem - true_mem).abs() / true_mem;
    eprintln!(
        "memory-bound tenant: true {true_mem:.0} mJ, fit {charged:.0} mJ ({:.1}%), SM split \
         {sm_mem:.0} mJ ({:.1}%), over {} ms",
        fit_err * 100.0,
        sm_err * 100.0,
        b - a
    );
    assert!(
        fit_err < 0.10,
        "the fit charged {charged:.0} mJ, truth {true_mem:.0} mJ ({:.1}% off)\n{report}",
        fit_err * 100.0
    );
    assert!(
        sm_err > 0.30,
        "the SM split would be off by only {:.1}%: the test does not show the difference",
        sm_err * 100.0
    );
    drop((mem_job, cmp_job, idle_job));
}
