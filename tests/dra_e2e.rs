//! The agent as a DRA driver, end to end on real processes: the real controller and agent
//! binaries (NVML backend over the simulated library, whose hardware state lives in a file, so an
//! agent restart finds the world as it left it), a fake kubelet in this test that speaks the
//! kubelet's real plugin-registration and DRA protos (v1 and v1beta1 clients) on unix sockets, and
//! a fake API server holding the ResourceClaims the scheduler allocated.
//!
//! What users rely on: the kubelet finds the driver and may use either API version; each kind of
//! device (a whole GPU, a MIG partition at the start the scheduler chose, a share of the consumed
//! capacity) is made on the hardware and in the controller's ledger as a slice of the claim's
//! namespace; the CDI spec names what was made; a retried prepare answers the same and makes
//! nothing new, across an agent SIGKILL and restart; unprepare removes it all; bad claims get
//! errors that name the problem and leave nothing half made.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_apiserver::FakeApiServer;
use common::nvml_sim::*;
use common::procs::*;
use greenslice_proto::dra::{v1, v1beta1};
use greenslice_proto::pluginregistration as reg;
use greenslice_proto::v1 as pb;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "dra-0";
const DRIVER: &str = "gpu.greenslice.io";

fn uid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A ResourceClaim as the scheduler leaves it: allocated `results` (device, request, extra
/// fields) of this node's pool, with `config`.
fn claim(ns: &str, name: &str, n: u32, results: Vec<Value>, config: Vec<Value>) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns, "uid": uid(n)},
        "spec": {"devices": {"requests": []}},
        "status": {"allocation": {"devices": {"results": results, "config": config}}}
    })
}

fn result(device: &str, request: &str) -> Value {
    json!({"driver": DRIVER, "pool": NODE, "device": device, "request": request})
}

fn serving() -> Value {
    json!({"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "resource.greenslice.io/v1alpha1", "kind": "GpuConfig", "sliceClass": "serving"}}})
}

/// A channel to the socket at `path` once something serves there (a killed agent's socket file
/// stays behind until the new agent replaces it).
async fn connect(path: &Path, dir: &Path) -> tonic::transport::Channel {
    let t = std::time::Instant::now();
    loop {
        if let Ok(ch) = greenslice_agent::kubelet::uds::connect(path).await {
            return ch;
        }
        assert!(
            t.elapsed() < WAIT,
            "{} served within {WAIT:?}; agent log:\n{}",
            path.display(),
            agent_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Kubelet {
    v1: v1::dra_plugin_client::DraPluginClient<tonic::transport::Channel>,
    v1beta1: v1beta1::dra_plugin_client::DraPluginClient<tonic::transport::Channel>,
}

/// As the kubelet's plugin watcher does: finds the registration socket, asks GetInfo, checks it,
/// says it registered, and connects to the endpoint it was given (with `:authority` localhost, as
/// the kubelet's gRPC client sends on unix sockets).
async fn register(registry: &Path, plugins: &Path, dir: &Path) -> Kubelet {
    let sock = registry.join(format!("{DRIVER}-reg.sock"));
    let ch = connect(&sock, dir).await;
    let mut r = reg::registration_client::RegistrationClient::new(ch);
    let info = r
        .get_info(reg::InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(
        info.supported_versions,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );
    let endpoint = PathBuf::from(&info.endpoint);
    assert!(endpoint.starts_with(plugins), "{endpoint:?}");
    r.notify_registration_status(reg::RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .expect("NotifyRegistrationStatus");
    let ch = connect(&endpoint, dir).await;
    Kubelet {
        v1: v1::dra_plugin_client::DraPluginClient::new(ch.clone()),
        v1beta1: v1beta1::dra_plugin_client::DraPluginClient::new(ch),
    }
}

fn v1_claims(names: &[(&str, &str, u32)]) -> Vec<v1::Claim> {
    names
        .iter()
        .map(|(ns, name, n)| v1::Claim {
            namespace: ns.to_string(),
            uid: uid(*n),
            name: name.to_string(),
        })
        .collect()
}

fn v1beta1_claims(names: &[(&str, &str, u32)]) -> Vec<v1beta1::Claim> {
    names
        .iter()
        .map(|(ns, name, n)| v1beta1::Claim {
            namespace: ns.to_string(),
            uid: uid(*n),
            name: name.to_string(),
        })
        .collect()
}

/// Live slices by idempotency key (claim uid / device index).
async fn live(url: &str) -> BTreeMap<String, pb::Slice> {
    common::all_slices(url)
        .await
        .into_values()
        .filter(|s| s.state == pb::SliceState::Active as i32)
        .map(|s| (s.idempotency_key.clone(), s))
        .collect()
}

fn start_agent(url: &str, dir: &Path, lib: &Path, state: &Path, api: &str) -> Proc {
    let standin = mps_control_standin();
    let config = format!(
        "[mig]\nmanage = true\n\
         [mps]\nsupervise = true\ncontrol_binary = {:?}\npipe_dir = {:?}\nlog_dir = {:?}\ncheck_interval_ms = 200\n\
         [dra]\nenabled = true\nplugin_dir = {:?}\nregistry_dir = {:?}\ncdi_dir = {:?}\napi_server = {:?}\npoll_ms = 100\n",
        standin.display().to_string(),
        dir.join("mps").display().to_string(),
        dir.join("mps-log").display().to_string(),
        dir.join("plugins/gpu.greenslice.io").display().to_string(),
        dir.join("plugins_registry").display().to_string(),
        dir.join("cdi").display().to_string(),
        api,
    );
    start_nvml_agent(url, NODE, (lib, state), dir, &config, &[])
}

fn cdi_spec(dir: &Path, n: u32) -> Option<Value> {
    let p = dir
        .join("cdi")
        .join(format!("greenslice.io-claim_{}.json", uid(n)));
    let text = std::fs::read_to_string(p).ok()?;
    Some(serde_json::from_str(&text).expect("a CDI spec is JSON"))
}

/// The environment of CDI device `name` in a spec, as a map.
fn cdi_env(spec: &Value, name: &str) -> BTreeMap<String, String> {
    let dev = spec["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no CDI device {name} in {spec}"));
    dev["containerEdits"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_prepared_on_the_hardware_survive_an_agent_restart_and_are_unprepared() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "1", "state"]);
    let m = machine(&sim_cli, &state);
    let uuid_of = |i: u64| -> String {
        m["devices"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["index"] == i))
            .and_then(|d| d["uuid"].as_str())
            .expect("GPU on the machine")
            .to_string()
    };

    let api = FakeApiServer::start().await;
    let mut small = result("gpu-2-share", "small");
    small["consumedCapacity"] = json!({"compute": "250", "memory": "20Gi"});
    small["shareID"] = json!("5c1a");
    for c in [
        claim("team-a", "whole", 1, vec![result("gpu-1", "gpu")], vec![]),
        claim(
            "team-b",
            "part",
            2,
            vec![result("gpu-0-mig-3g-40gb-4", "mig")],
            vec![serving()],
        ),
        claim("team-a", "small", 3, vec![small], vec![]),
        // Bad ones.
        claim(
            "team-c",
            "foreign",
            4,
            vec![
                json!({"driver": "gpu.nvidia.com", "pool": NODE, "device": "gpu-0", "request": "r"}),
            ],
            vec![],
        ),
        claim("team-c", "ghost", 5, vec![result("gpu-9", "r")], vec![]),
        claim(
            "team-c",
            "badcfg",
            6,
            vec![result("gpu-3", "r")],
            vec![
                json!({"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": {"apiVersion": "resource.greenslice.io/v1alpha1", "kind": "GpuConfig", "sharing": {"strategy": "Sometimes"}}}}),
            ],
        ),
        // A free GPU, then the partition `part` holds: refused whole, the GPU not kept.
        claim(
            "team-c",
            "clash",
            7,
            vec![result("gpu-3", "a"), result("gpu-0-mig-3g-40gb-4", "b")],
            vec![],
        ),
    ] {
        api.insert(c);
    }

    let (_ctl, url) = start_controller(&[]);
    let mut agent = start_agent(&url, &dir, &lib, &state, api.url());
    let registry = dir.join("plugins_registry");
    let plugins = dir.join("plugins/gpu.greenslice.io");
    let mut k = register(&registry, &plugins, &dir).await;

    // The node's devices are published, under the names the claims use.
    let published = |api: &FakeApiServer| -> Vec<String> {
        api.objects("resource.k8s.io/v1", "resourceslices")
            .iter()
            .filter(|s| s["spec"]["driver"] == DRIVER && s["spec"]["pool"]["name"] == NODE)
            .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect()
    };
    let t = std::time::Instant::now();
    while !["gpu-1", "gpu-3", "gpu-0-mig-3g-40gb-4"]
        .iter()
        .all(|d| published(&api).iter().any(|p| p == d))
    {
        assert!(
            t.elapsed() < WAIT,
            "devices published; agent log:\n{}",
            agent_log(&dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let good = [
        ("team-a", "whole", 1),
        ("team-b", "part", 2),
        ("team-a", "small", 3),
    ];
    // The first prepare may come before the agent's session is up: the kubelet retries.
    let mut first = None;
    for _ in 0..100 {
        let r =
            k.v1.node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: v1_claims(&good),
            })
            .await
            .expect("NodePrepareResources")
            .into_inner();
        if r.claims.values().all(|c| c.error.is_empty()) {
            first = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = first.unwrap_or_else(|| {
        panic!(
            "prepared within the retries; agent log:\n{}",
            agent_log(&dir)
        )
    });
    assert_eq!(first.claims.len(), 3);

    // The ledger: one ACTIVE slice per device, of the claim's namespace, where the scheduler put it.
    let slices = live(&url).await;
    let whole = &slices[&format!("dra/{}/0", uid(1))];
    assert_eq!(
        (whole.tenant.as_str(), whole.gpu_uuids.clone()),
        ("team-a", vec![uuid_of(1)])
    );
    let part = &slices[&format!("dra/{}/0", uid(2))];
    assert_eq!(part.tenant, "team-b");
    assert_eq!(
        part.spec.as_ref().map(|s| s.slice_class.as_str()),
        Some("serving")
    );
    let mig = part.mig.as_ref().expect("a MIG slice");
    assert_eq!((mig.profile.as_str(), mig.start), ("3g.40gb", 4));
    let share = &slices[&format!("dra/{}/0", uid(3))];
    assert_eq!(share.gpu_uuids, vec![uuid_of(2)]);
    assert_eq!(slices.len(), 3, "nothing else: {slices:?}");
    // The hardware: the partition exists at slice 4 of GPU 0.
    let hw = machine(&sim_cli, &state);
    let on_gpu0 = instances(&hw, &uuid_of(0));
    assert_eq!(
        on_gpu0
            .iter()
            .filter(|(_, p, s)| p == "3g.40gb" && *s == 4)
            .count(),
        1,
        "{on_gpu0:?}"
    );

    // The answers and the CDI specs name what was made.
    for (n, slice, device) in [
        (1, whole, "gpu-1"),
        (2, part, "gpu-0-mig-3g-40gb-4"),
        (3, share, "gpu-2-share"),
    ] {
        let c = &first.claims[&uid(n)];
        assert_eq!(c.devices.len(), 1);
        let d = &c.devices[0];
        assert_eq!(
            (d.pool_name.as_str(), d.device_name.as_str()),
            (NODE, device)
        );
        let name = format!("{}-0", uid(n));
        assert_eq!(d.cdi_device_ids[0], format!("greenslice.io/claim={name}"));
        let spec = cdi_spec(&dir, n).expect("the claim's CDI spec");
        assert_eq!(spec["kind"], "greenslice.io/claim");
        let env = cdi_env(&spec, &name);
        assert_eq!(env.get("GREENSLICE_SLICE_ID"), Some(&slice.id), "{spec}");
        if n == 3 {
            assert_eq!(d.share_id.as_deref(), Some("5c1a"));
            assert_eq!(
                env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
                    .map(String::as_str),
                Some("25")
            );
            let pipe = env
                .get("CUDA_MPS_PIPE_DIRECTORY")
                .expect("the MPS pipe folder");
            let mounts = spec["devices"][0]["containerEdits"]["mounts"].to_string();
            assert!(mounts.contains(pipe.as_str()), "{mounts}");
        }
    }

    // Bad claims: each error names its problem, and nothing of them stays.
    let bad = [
        ("team-c", "foreign", 4),
        ("team-c", "ghost", 5),
        ("team-c", "badcfg", 6),
        ("team-c", "clash", 7),
        ("team-c", "missing", 8),
    ];
    let r =
        k.v1.node_prepare_resources(v1::NodePrepareResourcesRequest {
            claims: v1_claims(&bad),
        })
        .await
        .expect("NodePrepareResources")
        .into_inner();
    for (n, says) in [
        (4, "another driver"),
        (5, "no GPU 9"),
        (6, "Sometimes"),
        (7, "no room"),
        (8, "not found"),
    ] {
        let e = &r.claims[&uid(n)].error;
        assert!(e.contains(says), "claim {n}: {says:?} in {e:?}");
        assert!(cdi_spec(&dir, n).is_none(), "no CDI spec for claim {n}");
    }
    let after = live(&url).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        slices.keys().collect::<Vec<_>>(),
        "nothing half made"
    );

    // A retry with the other version answers the same, and makes nothing new.
    let again = k
        .v1beta1
        .node_prepare_resources(v1beta1::NodePrepareResourcesRequest {
            claims: v1beta1_claims(&good),
        })
        .await
        .expect("NodePrepareResources v1beta1")
        .into_inner();
    for n in [1, 2, 3] {
        let (a, b) = (&first.claims[&uid(n)], &again.claims[&uid(n)]);
        assert!(b.error.is_empty(), "{}", b.error);
        assert_eq!(a.devices[0].cdi_device_ids, b.devices[0].cdi_device_ids);
    }

    // SIGKILL the agent and start it again: it finds the claims in its checkpoint.
    agent.0.kill().expect("kill the agent");
    let _ = agent.0.wait();
    let mut agent = start_agent(&url, &dir, &lib, &state, api.url());
    let mut k = register(&registry, &plugins, &dir).await;
    let mut restarted = None;
    for _ in 0..100 {
        let r =
            k.v1.node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: v1_claims(&good),
            })
            .await
            .expect("NodePrepareResources after the restart")
            .into_inner();
        if r.claims.values().all(|c| c.error.is_empty()) {
            restarted = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restarted = restarted.expect("prepared after the restart");
    for n in [1, 2, 3] {
        assert_eq!(
            first.claims[&uid(n)].devices[0].cdi_device_ids,
            restarted.claims[&uid(n)].devices[0].cdi_device_ids
        );
    }
    assert_eq!(
        live(&url)
            .await
            .values()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>(),
        slices.values().map(|s| s.id.clone()).collect::<Vec<_>>(),
        "the same slices, nothing new"
    );
    assert_eq!(
        instances(&machine(&sim_cli, &state), &uuid_of(0)).len(),
        on_gpu0.len()
    );
    // The restarted agent's slices replaced the old ones: one pool generation, no device twice.
    let t = std::time::Instant::now();
    loop {
        let objs = api.objects("resource.k8s.io/v1", "resourceslices");
        let gens: std::collections::BTreeSet<i64> = objs
            .iter()
            .filter_map(|s| s["spec"]["pool"]["generation"].as_i64())
            .collect();
        let names = published(&api);
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        if gens.len() == 1 && unique.len() == names.len() && !names.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "stale slices left: generations {gens:?}, {} devices",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unprepare, with both versions; then again (idempotent).
    for _ in 0..2 {
        let r = k
            .v1beta1
            .node_unprepare_resources(v1beta1::NodeUnprepareResourcesRequest {
                claims: v1beta1_claims(&good[1..]),
            })
            .await
            .expect("NodeUnprepareResources v1beta1")
            .into_inner();
        assert!(r.claims.values().all(|c| c.error.is_empty()), "{r:?}");
        let r =
            k.v1.node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
                claims: v1_claims(&good[..1]),
            })
            .await
            .expect("NodeUnprepareResources")
            .into_inner();
        assert!(r.claims.values().all(|c| c.error.is_empty()), "{r:?}");
    }
    assert!(live(&url).await.is_empty(), "every claim slice released");
    for n in [1, 2, 3] {
        assert!(cdi_spec(&dir, n).is_none(), "claim {n}'s CDI spec removed");
    }
    let gone = instances(&machine(&sim_cli, &state), &uuid_of(0));
    assert!(
        !gone.iter().any(|(_, p, s)| p == "3g.40gb" && *s == 4),
        "the partition destroyed: {gone:?}"
    );
    agent.0.kill().ok();
}
