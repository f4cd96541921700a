//! Share limits enforced by watching, end to end on real processes: the real controller and agent
//! binaries (NVML backend on the simulated library), each share's job a real process with its
//! slice's `GREENSLICE_SLICE_ID`, its device memory set on the simulated machine. The agent finds
//! the process's slice from /proc/PID/environ and stops it with real signals.
//!
//! What tenants rely on: a process over its share's memory limit is stopped (SIGTERM, then SIGKILL
//! if it ignores SIGTERM) within the grace plus 2 s, its tenant gets LIMIT events saying so, and a
//! process within its limits is never touched.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use std::time::Duration;

use common::nvml_sim::*;
use common::procs::*;
use greenslice_proto::v1 as pb;
use tokio_stream::StreamExt;

const GRACE: Duration = Duration::from_secs(2);
const TERM_GRACE: Duration = Duration::from_secs(2);

/// A share's job: a real process with its slice's environment, holding `memory_mib` of device
/// memory on the slice's simulated GPU.
fn share_job(sim: (&Path, &Path), slice: &serde_json::Value, script: &str, memory_mib: u32) -> Job {
    let gpu = slice["gpu_uuids"][0].as_str().expect("GPU");
    job(sim, gpu, slice["id"].as_str(), script, (memory_mib, 10))
}

/// Waits for the job to exit within `within` of its start; returns the signal that ended it.
async fn ended_by(j: &mut Job, within: Duration) -> Option<i32> {
    loop {
        if let Some(st) = j.child.try_wait().expect("wait for the job") {
            return st.signal();
        }
        assert!(
            j.started.elapsed() < within,
            "the job over its limit still runs {:?} after it started",
            j.started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn share(url: &str, tenant: &str, memory: &str) -> serde_json::Value {
    cli_json(
        url,
        &[
            "request", "--tenant", tenant, "--share", "0.25", "--memory", memory,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_over_its_share_memory_is_stopped_in_grace_and_one_within_is_never_touched() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let (_ctl, url) = start_controller(&[]);
    let metrics_port = common::free_port();
    let _agent = start_nvml_agent(
        &url,
        "n1",
        (&lib, &state),
        dir,
        &format!(
            "[enforce]\nmemory_grace_ms = {}\nterm_grace_ms = {}\n",
            GRACE.as_millis(),
            TERM_GRACE.as_millis()
        ),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "the agent did not register"
    );
    let over = share(&url, "team-a", "1GiB");
    let stubborn = share(&url, "team-c", "1GiB");
    let within = share(&url, "team-b", "4GiB");

    let channel = common::channel(&url).await.expect("connect");
    let mut watch = pb::tenant_service_client::TenantServiceClient::new(channel)
        .watch_slices(pb::WatchSlicesRequest {
            tenant: "team-a".into(),
            ..Default::default()
        })
        .await
        .expect("watch team-a")
        .into_inner();

    let sim = (sim_cli.as_path(), state.as_path());
    let mut calm = share_job(sim, &within, "exec sleep 300", 3 * 1024);
    let mut greedy = share_job(sim, &over, "exec sleep 300", 2 * 1024);
    // Ignores SIGTERM: only SIGKILL ends it.
    let mut deaf = share_job(
        sim,
        &stubborn,
        "trap '' TERM; while :; do sleep 0.2; done",
        3 * 1024,
    );

    assert_eq!(
        ended_by(&mut greedy, GRACE + Duration::from_secs(2)).await,
        Some(libc_sigterm()),
        "stopped with SIGTERM"
    );
    // Each stage starts at a sampling pass (1 s apart): a pass to see it, one to act on each grace.
    assert_eq!(
        ended_by(&mut deaf, GRACE + TERM_GRACE + Duration::from_secs(3)).await,
        Some(9),
        "a process that ignores SIGTERM is killed"
    );
    // Several more passes: the share within its limits still runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        calm.child.try_wait().unwrap().is_none(),
        "a process within its limits was touched"
    );

    // The tenant was told: first the warning, then the stop, each naming the figures.
    let mut told = Vec::new();
    while told.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("LIMIT events within 10 s")
            .expect("stream open")
            .expect("no error");
        if ev.kind == pb::SliceEventKind::Limit as i32 {
            assert_eq!(ev.slice.as_ref().unwrap().id, over["id"].as_str().unwrap());
            told.push(ev.message);
        }
    }
    assert!(told[0].contains("over its limit of 1024 MiB"), "{told:?}");
    assert!(told[1].contains("SIGTERM"), "{told:?}");
    // And the shares' slices themselves are unchanged (enforcement stops processes, not slices).
    for s in [&over, &stubborn, &within] {
        let now = cli_json(&url, &["get", s["id"].as_str().unwrap()]);
        assert_eq!(now["state"], "active", "{now}");
    }

    let m = common::http_get(metrics_port, "/metrics").await;
    for (kind, n) in [("process_stopped", 2), ("process_killed", 1)] {
        let line = format!("greenslice_agent_limit_actions_total{{kind=\"{kind}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

fn libc_sigterm() -> i32 {
    15
}
