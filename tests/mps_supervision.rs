//! MPS supervision end to end on real processes: the real controller and agent binaries (NVML
//! backend on the simulated library, `[mps] supervise = true`) and the stand-in
//! `nvidia-cuda-mps-control`, which speaks the control protocol and shares no code with the agent.
//!
//! What tenants and operators rely on: a GPU that holds a share has its own MPS control daemon, on
//! a pipe folder of its own that the share's environment names, serving that GPU only; the GPU is
//! in EXCLUSIVE_PROCESS mode on the hardware; a daemon that is killed runs again within seconds;
//! when the GPU's last share goes its daemon quits and the GPU is back in DEFAULT mode.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nvml_sim::*;
use common::procs::*;

const PID_FILE: &str = "nvidia-cuda-mps-control.pid";

/// Kills the daemons left under the pipe folders when the test ends (they outlive the agent).
struct Daemons(PathBuf);

impl Drop for Daemons {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if let Some(pid) = daemon_pid(&e.path()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// The pid the daemon of `pipe` wrote, if it runs.
fn daemon_pid(pipe: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pipe.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

/// Runs the stand-in as a control client on `pipe`: `commands` on stdin; (success, stdout).
fn control(standin: &Path, pipe: &Path, commands: &str) -> (bool, String) {
    let mut c = Command::new(standin)
        .env("CUDA_MPS_PIPE_DIRECTORY", pipe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the control client");
    c.stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The agent's config: supervision on, the stand-in as the control binary, folders under `dir`.
fn config(standin: &Path, pipes: &Path, logs: &Path) -> String {
    format!(
        "[mps]\nsupervise = true\ncontrol_binary = {:?}\npipe_dir = {:?}\nlog_dir = {:?}\ncheck_interval_ms = 200\n",
        standin.display().to_string(),
        pipes.display().to_string(),
        logs.display().to_string(),
    )
}

/// The daemon's default thread percentage and device 0 pinned memory limit, as it answers them.
fn told_defaults(standin: &Path, pipe: &Path) -> String {
    control(
        standin,
        pipe,
        "get_default_active_thread_percentage\nget_default_device_pinned_mem_limit 0\n",
    )
    .1
}

#[test]
fn a_share_gpu_gets_its_own_supervised_mps_daemon_in_exclusive_mode_until_its_last_share_goes() {
    let (lib, sim_cli) = sim_artifacts();
    let standin = mps_control_standin();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let pipes = dir.join("mps");
    let logs = dir.join("mps-log");
    let _daemons = Daemons(pipes.clone());
    let cfg = config(&standin, &pipes, &logs);
    let (_ctl, url) = start_controller(&[]);
    let _agent = start_nvml_agent(&url, "n1", (&lib, &state), dir, &cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "the agent did not register"
    );
    // The node says its share limits are held by MPS.
    let inv = cli_json(&url, &["inventory"]);
    assert_eq!(
        inv["nodes"][0]["capabilities"]["share_limits"], "enforced",
        "{inv}"
    );
    assert!(
        daemon_pid_any(&pipes).is_none(),
        "no daemon before any share"
    );

    let share = cli_json(
        &url,
        &[
            "request", "--tenant", "team-a", "--share", "0.25", "--memory", "1GiB",
        ],
    );
    let gpu = share["gpu_uuids"][0].as_str().expect("GPU").to_string();
    let pipe = pipes.join(&gpu);
    // Its environment names its GPU's own pipe folder, with its limits.
    assert_eq!(
        share["env"]["CUDA_MPS_PIPE_DIRECTORY"],
        pipe.display().to_string(),
        "{share}"
    );
    assert_eq!(share["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
    assert_eq!(share["env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=1024M");
    assert!(
        share["env"].get("GREENSLICE_SHARE_LIMITS").is_none(),
        "{share}"
    );

    // A daemon runs there, answers the control protocol, and serves that GPU only.
    let first = daemon_pid(&pipe).expect("a daemon runs for the share's GPU");
    let (ok, _) = control(&standin, &pipe, "get_server_list\n");
    assert!(ok, "the daemon answers on its pipe folder");
    // It was told the share's limits as its defaults (for a client that sets none itself).
    assert_eq!(told_defaults(&standin, &pipe), "25.0\n1024M\n");
    let log = std::fs::read_to_string(logs.join(&gpu).join("control.log")).expect("its log");
    assert!(
        log.contains(&format!("CUDA_VISIBLE_DEVICES={gpu}")),
        "{log}"
    );
    let m = machine(&sim_cli, &state);
    assert_eq!(compute_mode(&m, &gpu), "exclusive_process");
    for d in m["devices"].as_array().unwrap() {
        let u = d["uuid"].as_str().unwrap();
        if u != gpu {
            assert_eq!(compute_mode(&m, u), "default", "GPU {u} holds no share");
        }
    }
    let daemons = std::fs::read_dir(&pipes)
        .unwrap()
        .flatten()
        .filter(|e| daemon_pid(&e.path()).is_some())
        .count();
    assert_eq!(daemons, 1, "one daemon, for the one share GPU");

    // Killed, it runs again within a few seconds, on the same folder.
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &first.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut again = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            again = daemon_pid(&pipe).filter(|p| *p != first);
            again.is_some()
        }),
        "the killed daemon was not started again within 5 s"
    );
    eprintln!(
        "MPS daemon {first} killed; {} running again after {:?}",
        again.unwrap(),
        killed.elapsed()
    );
    assert!(control(&standin, &pipe, "get_server_list\n").0);
    assert!(
        wait_until(Duration::from_secs(3), || told_defaults(&standin, &pipe)
            == "25.0\n1024M\n"),
        "the new daemon was not told the defaults again: {}",
        told_defaults(&standin, &pipe)
    );
    assert_eq!(
        compute_mode(&machine(&sim_cli, &state), &gpu),
        "exclusive_process"
    );

    // The last share goes: the daemon quits and the GPU is DEFAULT again.
    let id = share["id"].as_str().unwrap().to_string();
    cli_json(&url, &["release", &id]);
    let second = again.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            daemon_pid(&pipe).is_none()
                && !Path::new(&format!("/proc/{second}")).exists()
                && compute_mode(&machine(&sim_cli, &state), &gpu) == "default"
        }),
        "after the release the daemon still runs or the GPU is not DEFAULT: {:?}, {}",
        daemon_pid(&pipe),
        compute_mode(&machine(&sim_cli, &state), &gpu)
    );
    let log = std::fs::read_to_string(logs.join(&gpu).join("control.log")).unwrap();
    assert!(log.contains("Command: quit"), "stopped by quit: {log}");
    let (ok, _) = control(&standin, &pipe, "get_server_list\n");
    assert!(!ok, "no daemon answers any more");
}

fn daemon_pid_any(pipes: &Path) -> Option<u32> {
    std::fs::read_dir(pipes)
        .ok()?
        .flatten()
        .find_map(|e| daemon_pid(&e.path()))
}

#[test]
fn a_restarted_agent_keeps_the_running_daemon_and_the_exclusive_mode_of_its_share_gpus() {
    let (lib, sim_cli) = sim_artifacts();
    let standin = mps_control_standin();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let pipes = dir.join("mps");
    let logs = dir.join("mps-log");
    let _daemons = Daemons(pipes.clone());
    let cfg = config(&standin, &pipes, &logs);
    let (_ctl, url) = start_controller(&[]);
    let agent = start_nvml_agent(&url, "n1", (&lib, &state), dir, &cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "the agent did not register"
    );
    let share = cli_json(
        &url,
        &[
            "request", "--tenant", "team-a", "--share", "0.5", "--memory", "2GiB",
        ],
    );
    let gpu = share["gpu_uuids"][0].as_str().expect("GPU").to_string();
    let pipe = pipes.join(&gpu);
    let pid = daemon_pid(&pipe).expect("a daemon runs for the share's GPU");

    // The agent is killed; the daemon, a process of its own, runs on and serves the share.
    drop(agent);
    assert_eq!(daemon_pid(&pipe), Some(pid));
    let _agent = start_nvml_agent(&url, "n1", (&lib, &state), dir, &cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["nodes"][0]["connected"] == true
        }),
        "the restarted agent did not connect"
    );
    // Several checks later: the same daemon (taken back, not a second one), and the GPU still
    // EXCLUSIVE_PROCESS (the restart clean-up leaves share GPUs alone).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(daemon_pid(&pipe), Some(pid), "the daemon was replaced");
    let log = std::fs::read_to_string(logs.join(&gpu).join("control.log")).unwrap();
    assert_eq!(log.matches("Startup").count(), 1, "{log}");
    assert_eq!(
        compute_mode(&machine(&sim_cli, &state), &gpu),
        "exclusive_process"
    );

    // The restarted agent still stops it with the last share.
    cli_json(&url, &["release", share["id"].as_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            daemon_pid(&pipe).is_none()
                && compute_mode(&machine(&sim_cli, &state), &gpu) == "default"
        }),
        "after the release the daemon still runs or the GPU is not DEFAULT"
    );
}

#[test]
fn without_the_control_binary_shares_stay_advisory_and_no_gpu_is_made_exclusive() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let pipes = dir.join("mps");
    let cfg = config(&dir.join("no-such-mps-control"), &pipes, &dir.join("logs"));
    let (_ctl, url) = start_controller(&[]);
    let _agent = start_nvml_agent(&url, "n1", (&lib, &state), dir, &cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "the agent did not register"
    );
    let inv = cli_json(&url, &["inventory"]);
    assert_eq!(
        inv["nodes"][0]["capabilities"]["share_limits"], "advisory",
        "{inv}"
    );
    let share = cli_json(
        &url,
        &[
            "request", "--tenant", "team-a", "--share", "0.25", "--memory", "1GiB",
        ],
    );
    assert_eq!(
        share["env"]["GREENSLICE_SHARE_LIMITS"], "advisory",
        "{share}"
    );
    let gpu = share["gpu_uuids"][0].as_str().expect("GPU");
    assert_eq!(compute_mode(&machine(&sim_cli, &state), gpu), "default");
    assert!(daemon_pid_any(&pipes).is_none());
}

/// Pods on the device plugin's share GPUs (`kubelet.share_gpus`) reach a supervised daemon: the
/// GPU has its daemon, in EXCLUSIVE_PROCESS mode, from the agent's start, before any pod; Allocate
/// hands each share container that daemon's own pipe folder, mounted; the daemon's defaults are
/// the smallest share a pod can hold, so a container that drops its environment gains nothing;
/// and a restarted agent keeps both the daemon and the mode, though no share is in its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_kubelet_share_gpu_get_its_supervised_daemons_own_pipe_folder() {
    use common::fake_kubelet::{FakeKubelet, first_devices};
    use greenslice_proto::deviceplugin::v1beta1 as dp;
    const SHARE: &str = "greenslice.io/gpu-share";
    const WAIT: Duration = Duration::from_secs(30);

    let (lib, sim_cli) = sim_artifacts();
    let standin = mps_control_standin();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let pipes = dir.join("mps");
    let logs = dir.join("mps-log");
    let _daemons = Daemons(pipes.clone());
    let mut kubelet = FakeKubelet::start(&dir);
    let cfg = format!(
        "{}{}share_gpus = [1]\nkubelet_poll_ms = 100\ncontroller_placement = false\n",
        config(&standin, &pipes, &logs),
        kubelet.agent_config()
    );
    let (_ctl, url) = start_controller(&[]);
    let agent = start_nvml_agent(&url, "kube-0", (&lib, &state), &dir, &cfg, &[]);
    let mut plugin = kubelet.plugin(SHARE, WAIT).await;
    let devices = first_devices(&mut plugin, WAIT).await;
    let gpu = devices[0].id.split("::").next().unwrap().to_string();
    let m = machine(&sim_cli, &state);
    assert_eq!(gpu_index(&m, &gpu), 1, "GPU 1 is the share GPU");
    let pipe = pipes.join(&gpu);

    // Before any pod: the GPU's daemon runs on its own folder, and the GPU is EXCLUSIVE.
    assert!(
        wait_until(Duration::from_secs(10), || daemon_pid(&pipe).is_some()),
        "no daemon for the kubelet share GPU: {}",
        agent_log(&dir)
    );
    let first = daemon_pid(&pipe).unwrap();
    let m = machine(&sim_cli, &state);
    for d in m["devices"].as_array().unwrap() {
        let u = d["uuid"].as_str().unwrap();
        let want = if u == gpu {
            "exclusive_process"
        } else {
            "default"
        };
        assert_eq!(compute_mode(&m, u), want, "GPU {u}");
    }
    assert_eq!(
        daemon_pid_any(&pipes),
        Some(first),
        "only that GPU has a daemon"
    );

    // Two pods' containers: one unit, and 25 units.
    let mut units: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    units.sort_by_key(|u| u.rsplit("::").next().and_then(|n| n.parse::<u32>().ok()));
    let mut grants = Vec::new();
    for ids in [&units[0..1], &units[1..26]] {
        let r = plugin
            .allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest {
                    devices_ids: ids.to_vec(),
                }],
            })
            .await
            .expect("Allocate answers")
            .into_inner();
        grants.push(r.container_responses[0].clone());
    }
    let own = pipe.display().to_string();
    for g in &grants {
        assert_eq!(g.envs["CUDA_MPS_PIPE_DIRECTORY"], own, "{g:?}");
        assert!(
            g.mounts
                .iter()
                .any(|m| m.host_path == own && m.container_path == own),
            "the GPU's pipe folder is mounted: {g:?}"
        );
    }
    assert_eq!(grants[1].envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
    // A container reaches the daemon at the folder it was given.
    assert!(control(&standin, Path::new(&own), "get_server_list\n").0);
    // The daemon's defaults are one unit's: 1% and the one-unit container's memory.
    let unit_bytes: u64 = grants[0].envs["GREENSLICE_SHARE_MEMORY_BYTES"]
        .parse()
        .unwrap();
    assert_eq!(
        told_defaults(&standin, &pipe),
        format!("1.0\n{}M\n", unit_bytes.div_ceil(1 << 20))
    );

    // The agent is killed and started again: the same daemon, the GPU still EXCLUSIVE.
    drop(agent);
    let _agent = start_nvml_agent(&url, "kube-0", (&lib, &state), &dir, &cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["nodes"][0]["connected"] == true
        }),
        "the restarted agent did not connect"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(daemon_pid(&pipe), Some(first), "the daemon was replaced");
    assert_eq!(
        compute_mode(&machine(&sim_cli, &state), &gpu),
        "exclusive_process"
    );
    // Killed, the daemon runs again: a share GPU of the device plugin never goes without one.
    assert!(
        Command::new("kill")
            .args(["-9", &first.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        wait_until(Duration::from_secs(5), || daemon_pid(&pipe)
            .is_some_and(|p| p != first)),
        "the killed daemon of the kubelet share GPU was not started again"
    );
}
