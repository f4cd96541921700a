//! Idle reclaim of a pod, end to end: the real controller and agent binaries (NVML backend on the
//! simulated library, `kubelet.pod_reclaim = "evict"`), a fake kubelet on the real device-plugin
//! and pod-resources protos, and a fake Kubernetes API server that answers the Eviction API over
//! HTTP as the real one does (a `policy/v1` Eviction POSTed to the pod's `eviction` subresource,
//! answered with a `Status`).
//!
//! What users rely on: an idle pod is evicted through the API server (so PodDisruptionBudgets hold),
//! never by freeing its devices behind the kubelet's back; its slice ends, and its capacity is free,
//! once the kubelet no longer lists the pod.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_kubelet::{FakeKubelet, first_devices, pod};
use common::nvml_sim::*;
use common::procs::*;
use greenslice_proto::deviceplugin::v1beta1 as dp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);
const GPU: &str = "greenslice.io/gpu";

/// What the fake API server does on an eviction of (namespace, pod).
type OnEvict = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One HTTP request as the fake API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

/// A fake API server: answers every POST to a pod's `eviction` subresource with 201 and a Success
/// Status, records it, and calls `on_evict(namespace, pod)`; anything else gets 404.
async fn fake_api_server(seen: Arc<Mutex<Vec<Seen>>>, on_evict: OnEvict) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (seen, on_evict) = (seen.clone(), on_evict.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                    buf.drain(..head_end + len);
                    let mut first = head.lines().next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let path = first.next().unwrap_or("").to_string();
                    seen.lock().unwrap().push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        body,
                    });
                    let route = path.split('?').next().unwrap_or("");
                    let parts: Vec<&str> = route.trim_start_matches('/').split('/').collect();
                    let (status, json) = match parts.as_slice() {
                        ["api", "v1", "namespaces", ns, "pods", name, "eviction"]
                            if method == "POST" =>
                        {
                            on_evict(ns, name);
                            (
                                "201 Created",
                                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}"#,
                            )
                        }
                        _ => (
                            "404 Not Found",
                            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#,
                        ),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if conn.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pod_is_evicted_through_the_api_server_and_its_slice_ends_with_it() {
    let (lib, sim_cli) = sim_artifacts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let state = dir.join("machine.json");
    gpu_sim(&sim_cli, &state, &["--mig-gpus", "0", "state"]);
    let mut kubelet = FakeKubelet::start(dir);
    let pods = kubelet.pods.clone();

    // The API server: an eviction ends the pod, as the kubelet then would (pod-resources stops
    // listing it).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let on_evict: OnEvict = {
        let pods = pods.clone();
        Arc::new(move |ns, name| {
            let mut p = pods.0.lock().unwrap();
            p.pod_resources
                .retain(|x| !(x.namespace == ns && x.name == name));
        })
    };
    let api_port = fake_api_server(seen.clone(), on_evict).await;

    // Idle after 4 s, reclaimed 2 s after the warning, checked every second.
    let (_ctl, url) =
        start_controller_with_config("[idle]\nwindow_s = 4\ngrace_s = 2\ncheck_interval_s = 1\n");
    let _agent = start_nvml_agent(
        &url,
        "kube-0",
        (&lib, &state),
        dir,
        &format!(
            "{}kubelet_poll_ms = 100\npod_resources_interval_ms = 200\n\
             controller_placement = false\npod_reclaim = \"evict\"\napi_server = \"http://127.0.0.1:{api_port}\"\n",
            kubelet.agent_config()
        ),
        &[],
    );
    let mut plugin = kubelet.plugin(GPU, WAIT).await;
    let gpu = first_devices(&mut plugin, WAIT).await[0].id.clone();
    let r = plugin
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec![gpu.clone()],
            }],
        })
        .await
        .expect("Allocate answers")
        .into_inner();
    let id = r.container_responses[0].envs["GREENSLICE_SLICE_ID"].clone();
    // The pod runs but does nothing on its GPU.
    pods.set(vec![pod(
        "team-a",
        "notebook-0",
        GPU,
        std::slice::from_ref(&gpu),
    )]);
    assert!(
        wait_until(WAIT, || slice_or_null(&url, &id)["tenant"] == "team-a"),
        "the pod's slice did not reach the controller"
    );

    // Reclaimed: the API server gets the eviction, and the slice ends once the pod is gone.
    assert!(
        wait_until(
            Duration::from_secs(60),
            || cli_json(&url, &["get", &id])["state"] == "released"
        ),
        "the idle pod's slice did not end: {}\nAPI server saw: {:?}\nagent log:\n{}",
        cli_json(&url, &["get", &id]),
        seen.lock().unwrap(),
        agent_log(dir)
    );
    let seen = seen.lock().unwrap().clone();
    let evictions: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.method == "POST"
                && s.path
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with("/eviction"))
        })
        .collect();
    assert!(!evictions.is_empty(), "no eviction: {seen:?}");
    assert_eq!(
        evictions[0].path.split('?').next(),
        Some("/api/v1/namespaces/team-a/pods/notebook-0/eviction"),
        "the eviction names the pod the kubelet listed with the slice"
    );
    let body: serde_json::Value =
        serde_json::from_str(&evictions[0].body).expect("the eviction is JSON");
    assert_eq!(evictions.len(), 1, "evicted once: {seen:?}");
    assert_eq!(body["metadata"]["name"], "notebook-0", "{body}");
    let got = cli_json(&url, &["get", &id]);
    assert!(
        got["reason"]
            .as_str()
            .unwrap_or("")
            .contains("pod no longer holds the devices"),
        "the slice ended with its pod: {got}"
    );
}
