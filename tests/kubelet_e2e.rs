//! Pods through the device plugin, end to end on real processes: the real controller and agent
//! binaries (NVML backend on the simulated library), a fake kubelet in this test that speaks the
//! real device-plugin and pod-resources protos on unix sockets, and the pod's job as a real process
//! whose environment is what Allocate answered. The agent finds the job's slice the way it does on
//! a node, from /proc/PID/environ; the simulated machine only carries its GPU activity.
//!
//! What users rely on: a container's slice is reserved in the controller as soon as Allocate
//! answers (long before pod-resources is read again), it becomes the pod's namespace's slice under
//! the same id, and the dynamic energy of the pod's process is attributed to that namespace.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::fake_kubelet::{FakeKubelet, first_devices, pod};
use common::nvml_sim::*;
use common::procs::*;
use greenslice_proto::deviceplugin::v1beta1 as dp;

const WAIT: Duration = Duration::from_secs(30);
const SHARE: &str = "greenslice.io/gpu-share";

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !ok() {
        assert!(t.elapsed() < WAIT, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_slice_is_reserved_at_allocate_and_its_process_energy_goes_to_its_namespace() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = tmp.path().to_path_buf();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let mut kubelet = FakeKubelet::start(&dir);
    let pods = kubelet.pods.clone();

    // Attribution windows of 5 s, so the job's intervals close within the test.
    let config = dir.join("controller.toml");
    std::fs::write(&config, "attribution_window_s = 5\n").expect("controller config");
    let (_ctl, url) = start_controller(&["--config", config.to_str().unwrap()]);
    // Pod-resources is read once an hour: whatever the controller learns within the test's
    // deadlines comes from Allocate's grant and the re-reads that follow it.
    let _agent = start_nvml_agent(
        &url,
        "kube-0",
        (&lib, &state),
        &dir,
        &format!(
            "{}share_gpus = [0]\nkubelet_poll_ms = 100\npod_resources_interval_ms = 3600000\n\
             controller_placement = false\n",
            kubelet.agent_config()
        ),
        &[],
    );
    let mut plugin = kubelet.plugin(SHARE, WAIT).await;

    // As the kubelet does: the devices come from ListAndWatch.
    let devices = first_devices(&mut plugin, WAIT).await;
    let mut units: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    units.sort_by_key(|u| {
        u.rsplit("::")
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    assert!(units.len() >= 100, "GPU 0 offered as 1% units: {units:?}");
    let gpu = units[0].split("::").next().unwrap().to_string();
    let (busy_units, idle_units) = (units[0..30].to_vec(), units[30..50].to_vec());

    // Two pods, one container each, share GPU 0: a busy one and an idle one.
    let mut ids = Vec::new();
    for u in [&busy_units, &idle_units] {
        let r = plugin
            .allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest {
                    devices_ids: u.clone(),
                }],
            })
            .await
            .expect("Allocate answers")
            .into_inner();
        let envs = &r.container_responses[0].envs;
        ids.push(envs["GREENSLICE_SLICE_ID"].clone());
    }
    let (busy_id, idle_id) = (ids[0].clone(), ids[1].clone());

    // Reserved at once: the controller holds both before any pod-resources read names a pod.
    for id in [&busy_id, &idle_id] {
        eventually(&format!("slice {id} held by the controller"), || {
            let s = slice_or_null(&url, id);
            s["state"] == "active"
                && s["tenant"] == "kubelet-pending"
                && s["gpu_uuids"][0].as_str() == Some(gpu.as_str())
        })
        .await;
    }

    // The kubelet lists the pods: the same slices become their namespaces'.
    pods.set(vec![
        pod("team-a", "trainer-0", SHARE, &busy_units),
        pod("team-b", "notebook-0", SHARE, &idle_units),
    ]);
    eventually("the pods' namespaces own their slices", || {
        slice_or_null(&url, &busy_id)["tenant"] == "team-a"
            && slice_or_null(&url, &idle_id)["tenant"] == "team-b"
    })
    .await;

    // The busy pod's job: a real process with its container's environment, working on GPU 0.
    let job = job(
        (&sim_cli, &state),
        &gpu,
        Some(&busy_id),
        "exec sleep 300",
        (2048, 60),
    );
    let from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();

    // Samples reach the controller in batches (5 s) and are attributed per window (5 s): wait for
    // several seconds of attributed work.
    let t = std::time::Instant::now();
    loop {
        let last = cli_json(&url, &["report", "--format", "json", "--from", &from]);
        let dynamic = |tenant: &str| {
            last["tenants"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["tenant"] == tenant))
                .map_or(0, |t| t["dynamic_mj"].as_u64().unwrap_or(0))
        };
        // The busy process draws well over 10 W above idle; 5 s of it is over 50 J.
        if dynamic("team-a") > 50_000 {
            assert_eq!(
                dynamic("team-b"),
                0,
                "the idle pod pays no dynamic energy: {last}"
            );
            let row = last["gpus"]
                .as_array()
                .and_then(|g| g.iter().find(|r| r["gpu"] == gpu.as_str()))
                .expect("GPU 0 in the report")
                .clone();
            assert!(
                row["unattributed_mj"].as_u64().unwrap_or(u64::MAX) * 20 < dynamic("team-a"),
                "the job's energy is the pod's, not unattributed: {row}"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "team-a was never charged the job's dynamic energy: {last}\nagent log:\n{}",
            agent_log(&dir)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(job);
}
