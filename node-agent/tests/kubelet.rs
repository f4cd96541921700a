//! The agent as a device plugin, driven by a fake kubelet that speaks the real v1beta1 and
//! pod-resources protos over unix sockets in a temp folder: the kubelet's Registration and
//! PodResourcesLister servers, and a DevicePlugin client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_agent::backend::GpuBackend;
use greenslice_agent::backend::sim::{SimBackend, SimConfig};
use greenslice_agent::kubelet::choose::{ChooseError, ControllerChooser, DeviceChooser};
use greenslice_agent::kubelet::devices::{AllocateOptions, share_unit_id};
use greenslice_agent::kubelet::grants::{Grants, PersistFn};
use greenslice_agent::kubelet::{self, InventoryFn, Kubelet, KubeletOptions, uds};
use greenslice_proto::deviceplugin::v1beta1 as dp;
use greenslice_proto::podresources::v1 as pr;
use greenslice_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Code, Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// The kubelet's Registration service: records every request.
struct FakeRegistration(mpsc::UnboundedSender<dp::RegisterRequest>);

#[tonic::async_trait]
impl dp::registration_server::Registration for FakeRegistration {
    async fn register(
        &self,
        req: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(dp::Empty {}))
    }
}

/// The kubelet's pod-resources service: answers List with whatever the test put there.
#[derive(Clone, Default)]
struct FakePodResources(Arc<Mutex<pr::ListPodResourcesResponse>>);

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        Ok(Response::new(self.0.lock().unwrap().clone()))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
    async fn get(
        &self,
        _: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

/// Serves the fake Registration on `<dir>/kubelet.sock`.
fn serve_registration(
    dir: &Path,
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<dp::RegisterRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = uds::bind(&dir.join("kubelet.sock")).unwrap();
    let h = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(dp::registration_server::RegistrationServer::new(
                FakeRegistration(tx),
            ))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
    (h, rx)
}

/// A simulated DGX H100 with 4 GPUs: GPU 0 in MIG mode with an operator-made layout (3g.40gb at 0,
/// two 1g.10gb at 4 and 5), GPUs 1-3 whole, of which `share_gpus` offer shares.
struct Node {
    sim: Arc<Mutex<SimBackend>>,
    uuids: Vec<String>,
}

impl Node {
    fn new() -> Node {
        let mut c = SimConfig::new("kube-test", "dgx-h100".parse().unwrap());
        c.gpus = 4;
        c.mig_gpus = 1;
        let mut sim = SimBackend::new(c).unwrap();
        let uuids: Vec<String> = sim
            .inventory()
            .unwrap()
            .iter()
            .map(|g| g.uuid.clone())
            .collect();
        sim.create_mig(&uuids[0], "3g.40gb", 0, "op").unwrap();
        sim.create_mig(&uuids[0], "1g.10gb", 4, "op").unwrap();
        sim.create_mig(&uuids[0], "1g.10gb", 5, "op").unwrap();
        Node {
            sim: Arc::new(Mutex::new(sim)),
            uuids,
        }
    }

    /// The inventory as the agent reads it, with the MIG instances unowned (made by an operator).
    fn inventory(&self) -> InventoryFn {
        let sim = self.sim.clone();
        Arc::new(move || {
            let mut gpus = sim.lock().unwrap().inventory()?;
            for g in &mut gpus {
                for m in &mut g.mig_instances {
                    m.slice_id = None;
                }
            }
            Ok(gpus)
        })
    }

    fn set_healthy(&self, i: usize, healthy: bool) {
        self.sim
            .lock()
            .unwrap()
            .set_healthy(&self.uuids[i], healthy)
            .unwrap();
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    node: Node,
    kubelet: Kubelet,
    registrations: mpsc::UnboundedReceiver<dp::RegisterRequest>,
    fake_kubelet: JoinHandle<()>,
    pods: FakePodResources,
    _pods_server: JoinHandle<()>,
}

fn options(dir: &Path, chooser: Option<Arc<dyn DeviceChooser>>) -> KubeletOptions {
    options_with(dir, chooser, Grants::in_memory(), Duration::from_millis(20))
}

fn options_with(
    dir: &Path,
    chooser: Option<Arc<dyn DeviceChooser>>,
    grants: Arc<Grants>,
    pod_resources_interval: Duration,
) -> KubeletOptions {
    KubeletOptions {
        node: "kube-test".into(),
        device_plugin_dir: dir.to_path_buf(),
        pod_resources_socket: dir.join("pod-resources/kubelet.sock"),
        share_gpus: vec![2, 3],
        allocate: AllocateOptions {
            mps_pipe_dir: Some("/run/nvidia-mps".into()),
            mps_per_gpu: false,
        },
        health_interval: Duration::from_millis(20),
        kubelet_poll: Duration::from_millis(20),
        pod_resources_interval,
        chooser,
        eviction_allowed: false,
        grants,
    }
}

async fn fixture(chooser: Option<Arc<dyn DeviceChooser>>) -> Fixture {
    fixture_with(|dir| options(dir, chooser)).await
}

async fn fixture_with(opts: impl FnOnce(&Path) -> KubeletOptions) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (fake_kubelet, registrations) = serve_registration(&dir);
    std::fs::create_dir(dir.join("pod-resources")).unwrap();
    let pods = FakePodResources::default();
    let listener = uds::bind(&dir.join("pod-resources/kubelet.sock")).unwrap();
    let svc = pods.clone();
    let pods_server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pr::pod_resources_lister_server::PodResourcesListerServer::new(svc))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
    let node = Node::new();
    let kubelet = kubelet::start(opts(&dir), node.inventory());
    Fixture {
        _tmp: tmp,
        dir,
        node,
        kubelet,
        registrations,
        fake_kubelet,
        pods,
        _pods_server: pods_server,
    }
}

const RESOURCES: [&str; 4] = [
    "greenslice.io/gpu",
    "greenslice.io/gpu-share",
    "greenslice.io/mig-1g.10gb",
    "greenslice.io/mig-3g.40gb",
];

/// Waits until every resource registered once; returns the requests sorted by resource.
async fn registered(
    rx: &mut mpsc::UnboundedReceiver<dp::RegisterRequest>,
) -> Vec<dp::RegisterRequest> {
    let mut got: Vec<dp::RegisterRequest> = Vec::new();
    while got.len() < RESOURCES.len() {
        let r = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("registration within the deadline")
            .expect("fake kubelet running");
        got.push(r);
    }
    got.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    got
}

async fn plugin(
    dir: &Path,
    endpoint: &str,
) -> dp::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
    let ch = uds::connect(&dir.join(endpoint)).await.unwrap();
    dp::device_plugin_client::DevicePluginClient::new(ch)
}

async fn next_list(s: &mut tonic::Streaming<dp::ListAndWatchResponse>) -> Vec<dp::Device> {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("ListAndWatch update within the deadline")
        .expect("stream open")
        .expect("no error")
        .devices
}

fn preferred(available: &[String], must: &[String], size: i32) -> dp::PreferredAllocationRequest {
    dp::PreferredAllocationRequest {
        container_requests: vec![dp::ContainerPreferredAllocationRequest {
            available_device_i_ds: available.to_vec(),
            must_include_device_i_ds: must.to_vec(),
            allocation_size: size,
        }],
    }
}

fn units(gpu: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|u| share_unit_id(gpu, u)).collect()
}

#[tokio::test]
async fn registers_every_resource_with_version_endpoint_and_options() {
    let mut f = fixture(None).await;
    let regs = registered(&mut f.registrations).await;
    let names: Vec<&str> = regs.iter().map(|r| r.resource_name.as_str()).collect();
    assert_eq!(names, RESOURCES);
    for r in &regs {
        assert_eq!(r.version, "v1beta1");
        let short = r.resource_name.trim_start_matches("greenslice.io/");
        assert_eq!(r.endpoint, format!("greenslice-{short}.sock"));
        assert!(
            f.dir.join(&r.endpoint).exists(),
            "{} not served",
            r.endpoint
        );
        let o = r.options.as_ref().expect("options sent");
        assert!(o.get_preferred_allocation_available);
        assert!(!o.pre_start_required);
    }
    let mut c = plugin(&f.dir, "greenslice-gpu.sock").await;
    let o = c
        .get_device_plugin_options(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(o.get_preferred_allocation_available);
}

#[tokio::test]
async fn list_and_watch_sends_the_devices_then_every_health_change() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    let mut c = plugin(&f.dir, "greenslice-gpu.sock").await;
    let mut s = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    let first = next_list(&mut s).await;
    assert_eq!(
        first.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [f.node.uuids[1].as_str()]
    );
    assert!(first.iter().all(|d| d.health == "Healthy"));

    f.node.set_healthy(1, false);
    let sick = next_list(&mut s).await;
    assert_eq!(sick[0].health, "Unhealthy");
    f.node.set_healthy(1, true);
    let well = next_list(&mut s).await;
    assert_eq!(well[0].health, "Healthy");

    // A MIG GPU's instances follow their GPU's health; share units too.
    let mut m = plugin(&f.dir, "greenslice-mig-1g.10gb.sock").await;
    let mut ms = m.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    assert_eq!(next_list(&mut ms).await.len(), 2);
    f.node.set_healthy(0, false);
    assert!(
        next_list(&mut ms)
            .await
            .iter()
            .all(|d| d.health == "Unhealthy")
    );
}

#[tokio::test]
async fn preferred_allocation_keeps_units_on_one_gpu_and_honours_must_include() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    let (g2, g3) = (f.node.uuids[2].clone(), f.node.uuids[3].clone());
    let mut c = plugin(&f.dir, "greenslice-gpu-share.sock").await;
    // GPU 2 has 80 free units, GPU 3 has 30: 30 units fit GPU 3 most tightly.
    let mut avail = units(&g2, 20..100);
    avail.extend(units(&g3, 70..100));
    let r = c
        .get_preferred_allocation(preferred(&avail, &[], 30))
        .await
        .unwrap()
        .into_inner();
    let ids = &r.container_responses[0].device_i_ds;
    assert_eq!(ids.len(), 30);
    assert!(ids.iter().all(|i| i.starts_with(&g3)), "{ids:?}");
    // A must-include unit on GPU 2 pulls the whole request there.
    let must = vec![share_unit_id(&g2, 50)];
    let r = c
        .get_preferred_allocation(preferred(&avail, &must, 30))
        .await
        .unwrap()
        .into_inner();
    let ids = &r.container_responses[0].device_i_ds;
    assert_eq!(ids.len(), 30);
    assert!(ids.contains(&must[0]));
    assert!(ids.iter().all(|i| i.starts_with(&g2)), "{ids:?}");
    // Whole GPUs: the must-include device is part of the answer.
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let one = vec![f.node.uuids[1].clone()];
    let r = g
        .get_preferred_allocation(preferred(&one, &one, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.container_responses[0].device_i_ds, one);
}

/// Answers with a fixed GPU, recording what it was asked.
struct FixedChooser {
    gpu: String,
    asked: Mutex<Vec<pb::ChooseDevicesRequest>>,
}

#[tonic::async_trait]
impl DeviceChooser for FixedChooser {
    async fn choose(
        &self,
        req: pb::ChooseDevicesRequest,
    ) -> Result<pb::ChooseDevicesResponse, ChooseError> {
        self.asked.lock().unwrap().push(req);
        Ok(pb::ChooseDevicesResponse {
            gpu_uuids: vec![self.gpu.clone()],
            policy: "fixed".into(),
        })
    }
}

#[tokio::test]
async fn preferred_allocation_follows_the_controllers_choice() {
    let node = Node::new();
    let chooser = Arc::new(FixedChooser {
        gpu: node.uuids[2].clone(),
        asked: Mutex::new(Vec::new()),
    });
    let mut f = fixture(Some(chooser.clone())).await;
    registered(&mut f.registrations).await;
    // The fixture's node has the same UUIDs (same node name).
    let (g2, g3) = (f.node.uuids[2].clone(), f.node.uuids[3].clone());
    let mut c = plugin(&f.dir, "greenslice-gpu-share.sock").await;
    let mut avail = units(&g2, 20..100);
    avail.extend(units(&g3, 70..100));
    let r = c
        .get_preferred_allocation(preferred(&avail, &[], 30))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.container_responses[0]
            .device_i_ds
            .iter()
            .all(|i| i.starts_with(&g2))
    );
    let asked = chooser.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].node, "kube-test");
    assert_eq!(asked[0].resource, "greenslice.io/gpu-share");
    assert_eq!(asked[0].candidates.len(), 2);
    assert_eq!(asked[0].candidates[0].free_milli, 800);
    // A choice that does not fit (GPU 2 cannot take 90 units) falls back to the local choice, which
    // then finds no single GPU either: an error, not a wrong answer.
    let e = c
        .get_preferred_allocation(preferred(&avail, &[], 90))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
}

#[tokio::test]
async fn unreachable_controller_falls_back_to_a_local_choice() {
    // Nothing listens on port 1.
    let chooser = ControllerChooser::new(
        "http://127.0.0.1:1",
        &Default::default(),
        Duration::from_millis(500),
    )
    .unwrap();
    let mut f = fixture(Some(Arc::new(chooser))).await;
    registered(&mut f.registrations).await;
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let avail = vec![f.node.uuids[1].clone()];
    let r = g
        .get_preferred_allocation(preferred(&avail, &[], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.container_responses[0].device_i_ds, avail);
}

#[tokio::test]
async fn allocate_returns_uuids_cdi_devices_and_mps_settings() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let r = g
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec![f.node.uuids[1].clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &r.container_responses[0];
    assert_eq!(c.envs["NVIDIA_VISIBLE_DEVICES"], f.node.uuids[1]);
    assert_eq!(
        c.cdi_devices[0].name,
        format!("nvidia.com/gpu={}", f.node.uuids[1])
    );

    let inv = (f.node.inventory())().unwrap();
    let mig_uuid = inv[0]
        .mig_instances
        .iter()
        .find(|m| m.profile == "3g.40gb")
        .unwrap()
        .mig_uuid
        .clone();
    let mut m = plugin(&f.dir, "greenslice-mig-3g.40gb.sock").await;
    let r = m
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec![mig_uuid.clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"],
        mig_uuid
    );
    assert_eq!(
        r.container_responses[0].cdi_devices[0].name,
        format!("nvidia.com/gpu={mig_uuid}")
    );

    let mut s = plugin(&f.dir, "greenslice-gpu-share.sock").await;
    let r = s
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: units(&f.node.uuids[2], 0..25),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &r.container_responses[0];
    assert_eq!(c.envs["NVIDIA_VISIBLE_DEVICES"], f.node.uuids[2]);
    assert_eq!(c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
    // A quarter of the H100's 80 GiB.
    assert_eq!(c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=20480M");
    assert_eq!(c.envs["CUDA_MPS_PIPE_DIRECTORY"], "/run/nvidia-mps");
    assert_eq!(c.mounts[0].host_path, "/run/nvidia-mps");
}

#[tokio::test]
async fn bad_kubelet_input_gets_an_error_status() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let gpu1 = f.node.uuids[1].clone();
    let alloc = |ids: Vec<String>| dp::AllocateRequest {
        container_requests: vec![dp::ContainerAllocateRequest { devices_ids: ids }],
    };
    let cases: Vec<(&str, Result<(), Status>)> = vec![
        (
            "unknown id",
            g.allocate(alloc(vec!["GPU-nope".into()])).await.map(|_| ()),
        ),
        (
            "more than exist",
            g.allocate(alloc(vec![gpu1.clone(), f.node.uuids[2].clone()]))
                .await
                .map(|_| ()),
        ),
        (
            "repeated id",
            g.allocate(alloc(vec![gpu1.clone(), gpu1.clone()]))
                .await
                .map(|_| ()),
        ),
        (
            "empty device list",
            g.allocate(alloc(vec![])).await.map(|_| ()),
        ),
        (
            "no containers",
            g.allocate(dp::AllocateRequest {
                container_requests: vec![],
            })
            .await
            .map(|_| ()),
        ),
        (
            "preferred: unknown id",
            g.get_preferred_allocation(preferred(&["x".into()], &[], 1))
                .await
                .map(|_| ()),
        ),
        (
            "preferred: more than available",
            g.get_preferred_allocation(preferred(std::slice::from_ref(&gpu1), &[], 2))
                .await
                .map(|_| ()),
        ),
        (
            "preferred: size 0",
            g.get_preferred_allocation(preferred(std::slice::from_ref(&gpu1), &[], 0))
                .await
                .map(|_| ()),
        ),
        (
            "preferred: negative size",
            g.get_preferred_allocation(preferred(std::slice::from_ref(&gpu1), &[], -3))
                .await
                .map(|_| ()),
        ),
        (
            "preferred: no containers",
            g.get_preferred_allocation(dp::PreferredAllocationRequest {
                container_requests: vec![],
            })
            .await
            .map(|_| ()),
        ),
    ];
    for (what, r) in cases {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
    }
    // Share units spanning two GPUs are refused, not half-granted.
    let mut s = plugin(&f.dir, "greenslice-gpu-share.sock").await;
    let mut split = units(&f.node.uuids[2], 0..5);
    split.extend(units(&f.node.uuids[3], 0..5));
    let e = s.allocate(alloc(split)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // Devices of another resource are unknown here.
    let e = s.allocate(alloc(vec![gpu1])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An unhealthy GPU is not handed out.
    f.node.set_healthy(1, false);
    let mut lw = g.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    while next_list(&mut lw).await[0].health != "Unhealthy" {}
    let e = g
        .allocate(alloc(vec![f.node.uuids[1].clone()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn registers_again_after_the_kubelet_socket_is_recreated() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    // The kubelet restarts: its socket goes, it wipes the folder's sockets, and comes back.
    f.fake_kubelet.abort();
    let _ = (&mut f.fake_kubelet).await;
    std::fs::remove_file(f.dir.join("kubelet.sock")).unwrap();
    for r in RESOURCES {
        let short = r.trim_start_matches("greenslice.io/");
        std::fs::remove_file(f.dir.join(format!("greenslice-{short}.sock"))).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_h, mut rx) = serve_registration(&f.dir);
    let again = registered(&mut rx).await;
    assert_eq!(
        again
            .iter()
            .map(|r| r.resource_name.as_str())
            .collect::<Vec<_>>(),
        RESOURCES
    );
    // The endpoints serve again.
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let mut s = g.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    assert_eq!(next_list(&mut s).await.len(), 1);
}

#[tokio::test]
async fn registers_again_when_only_the_kubelet_socket_is_replaced() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    f.fake_kubelet.abort();
    let _ = (&mut f.fake_kubelet).await;
    // uds::bind replaces the socket file: same path, new socket.
    let (_h, mut rx) = serve_registration(&f.dir);
    registered(&mut rx).await;
}

fn pod(
    ns: &str,
    name: &str,
    container: &str,
    devices: Vec<(&str, Vec<String>)>,
) -> pr::PodResources {
    pr::PodResources {
        name: name.into(),
        namespace: ns.into(),
        containers: vec![pr::ContainerResources {
            name: container.into(),
            devices: devices
                .into_iter()
                .map(|(r, ids)| pr::ContainerDevices {
                    resource_name: r.into(),
                    device_ids: ids,
                    topology: None,
                })
                .collect(),
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn pod_resources_become_slices_of_the_pods_namespace() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    let g1 = f.node.uuids[1].clone();
    let g2 = f.node.uuids[2].clone();
    *f.pods.0.lock().unwrap() = pr::ListPodResourcesResponse {
        pod_resources: vec![
            pod(
                "team-a",
                "trainer-0",
                "main",
                vec![
                    ("greenslice.io/gpu", vec![g1.clone()]),
                    ("nvidia.com/gpu", vec!["GPU-other".into()]),
                ],
            ),
            pod(
                "team-b",
                "serve-1",
                "model",
                vec![("greenslice.io/gpu-share", units(&g2, 0..25))],
            ),
            pod(
                "team-c",
                "lost",
                "x",
                vec![("greenslice.io/gpu", vec!["GPU-gone".into()])],
            ),
        ],
    };
    let mut rx = f.kubelet.allocations.clone();
    let report = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = rx.borrow_and_update().clone()
                && r.allocations.len() == 2
            {
                return r;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("a report within the deadline");
    assert!(!report.eviction_allowed);
    let a = report
        .allocations
        .iter()
        .find(|a| a.pod == "trainer-0")
        .unwrap();
    assert_eq!(a.tenant, "team-a");
    assert_eq!(a.resource, "greenslice.io/gpu");
    assert_eq!(a.gpu_uuids, [g1]);
    assert!(a.slice_id.starts_with("k-"));
    let spec = a.spec.as_ref().unwrap();
    assert_eq!(spec.slice_class, "kubelet");
    assert_eq!(
        spec.kind,
        Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 }))
    );
    let b = report
        .allocations
        .iter()
        .find(|a| a.pod == "serve-1")
        .unwrap();
    assert_eq!(b.tenant, "team-b");
    assert_eq!(b.gpu_uuids, [g2]);
    match b.spec.as_ref().unwrap().kind {
        Some(pb::slice_spec::Kind::Share(s)) => {
            assert!((s.compute_fraction - 0.25).abs() < 1e-9);
            assert_eq!(s.memory_bytes, 20 << 30);
        }
        ref k => panic!("not a share: {k:?}"),
    }
}

/// A controller's AgentService that records what agents send.
struct RecordingController(mpsc::UnboundedSender<pb::AgentMessage>);

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for RecordingController {
    type SessionStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::ControllerMessage, Status>> + Send>,
    >;
    async fn session(
        &self,
        req: Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let tx = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                let _ = tx.send(m);
            }
        });
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
}

#[tokio::test]
async fn kubelet_allocations_reach_the_controller_on_the_agent_stream() {
    let mut f = fixture(None).await;
    registered(&mut f.registrations).await;
    *f.pods.0.lock().unwrap() = pr::ListPodResourcesResponse {
        pod_resources: vec![pod(
            "team-a",
            "p",
            "c",
            vec![("greenslice.io/gpu", vec![f.node.uuids[1].clone()])],
        )],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pb::agent_service_server::AgentServiceServer::new(
                RecordingController(tx),
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    let mut c = SimConfig::new("kube-test", "dgx-h100".parse().unwrap());
    c.gpus = 2;
    let backend: Box<dyn GpuBackend> = Box::new(SimBackend::new(c).unwrap());
    let mut session =
        greenslice_agent::session::SessionConfig::new(&format!("http://{addr}"), "kube-test");
    session.kubelet = Some(f.kubelet.allocations.clone());
    // Samples every hour: only Register and kubelet reports in this test's window.
    session.sample_interval = Duration::from_secs(3600);
    session.batch_interval = Duration::from_secs(3600);
    tokio::spawn(greenslice_agent::session::run_with(
        session,
        Arc::new(Mutex::new(backend)),
    ));
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.msg,
        Some(pb::agent_message::Msg::Register(_))
    ));
    // Reports follow, the latest replacing the earlier ones; the pod shows up in one of them.
    loop {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        match m.msg {
            Some(pb::agent_message::Msg::Kubelet(k)) if k.allocations.is_empty() => continue,
            Some(pb::agent_message::Msg::Kubelet(k)) => {
                assert_eq!(k.allocations.len(), 1);
                assert_eq!(k.allocations[0].tenant, "team-a");
                break;
            }
            other => panic!("expected kubelet allocations, got {other:?}"),
        }
    }
}

/// Waits for a report that `done` accepts.
async fn report_where(
    f: &Fixture,
    done: impl Fn(&pb::KubeletAllocations) -> bool,
) -> pb::KubeletAllocations {
    let mut rx = f.kubelet.allocations.clone();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = rx.borrow_and_update().clone()
                && done(&r)
            {
                return r;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("a report within the deadline")
}

#[tokio::test]
async fn allocate_hands_out_a_slice_id_reserved_at_once_and_named_by_the_pod_later() {
    // Pod-resources is read only every hour: what the report shows soon after Allocate comes from
    // the grant itself, not from the periodic read.
    let mut f =
        fixture_with(|dir| options_with(dir, None, Grants::in_memory(), Duration::from_secs(3600)))
            .await;
    registered(&mut f.registrations).await;
    let g1 = f.node.uuids[1].clone();
    let g2 = f.node.uuids[2].clone();
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let r = g
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec![g1.clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let id = r.container_responses[0].envs["GREENSLICE_SLICE_ID"].clone();
    assert!(id.starts_with("k-"), "{id}");

    let report = report_where(&f, |r| !r.allocations.is_empty()).await;
    assert_eq!(report.allocations.len(), 1);
    let a = &report.allocations[0];
    assert_eq!(
        a.slice_id, id,
        "the report names the slice the container was told"
    );
    assert_eq!(a.tenant, greenslice_core::kubelet::PENDING_TENANT);
    assert_eq!(a.gpu_uuids, std::slice::from_ref(&g1));
    assert_eq!(a.resource, "greenslice.io/gpu");

    // Two containers in one Allocate: a slice each, both reserved.
    let mut s = plugin(&f.dir, "greenslice-gpu-share.sock").await;
    let r = s
        .allocate(dp::AllocateRequest {
            container_requests: vec![
                dp::ContainerAllocateRequest {
                    devices_ids: units(&g2, 0..10),
                },
                dp::ContainerAllocateRequest {
                    devices_ids: units(&g2, 10..30),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let share_ids: Vec<String> = r
        .container_responses
        .iter()
        .map(|c| c.envs["GREENSLICE_SLICE_ID"].clone())
        .collect();
    assert_ne!(share_ids[0], share_ids[1]);
    let report = report_where(&f, |r| r.allocations.len() == 3).await;
    for sid in &share_ids {
        let a = report
            .allocations
            .iter()
            .find(|a| &a.slice_id == sid)
            .unwrap_or_else(|| panic!("{sid} reported"));
        assert_eq!(a.gpu_uuids, std::slice::from_ref(&g2));
    }

    // The kubelet now lists the pod with the whole GPU: the same slice, now the pod's namespace
    // (re-read while grants are pending, not after the hour).
    *f.pods.0.lock().unwrap() = pr::ListPodResourcesResponse {
        pod_resources: vec![pod(
            "team-a",
            "trainer-0",
            "main",
            vec![("greenslice.io/gpu", vec![g1.clone()])],
        )],
    };
    let report = report_where(&f, |r| r.allocations.iter().any(|a| a.pod == "trainer-0")).await;
    let a = report
        .allocations
        .iter()
        .find(|a| a.pod == "trainer-0")
        .unwrap();
    assert_eq!(
        a.slice_id, id,
        "the pod keeps the slice id its container holds"
    );
    assert_eq!(a.tenant, "team-a");
    // The shares are still pending, still reserved.
    assert_eq!(
        report
            .allocations
            .iter()
            .filter(|a| a.tenant == greenslice_core::kubelet::PENDING_TENANT)
            .count(),
        2
    );
}

#[tokio::test]
async fn allocate_is_refused_when_the_grant_cannot_be_recorded() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let recorded: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let persist: PersistFn = {
        let (fail, recorded) = (fail.clone(), recorded.clone());
        Arc::new(move |gs| {
            if fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("disk full".into());
            }
            recorded
                .lock()
                .unwrap()
                .push(gs.iter().map(|g| g.slice_id.clone()).collect());
            Ok(())
        })
    };
    let grants = Grants::persisted(Vec::new(), persist);
    let book = grants.clone();
    let mut f =
        fixture_with(move |dir| options_with(dir, None, grants, Duration::from_millis(20))).await;
    registered(&mut f.registrations).await;
    let mut g = plugin(&f.dir, "greenslice-gpu.sock").await;
    let req = dp::AllocateRequest {
        container_requests: vec![dp::ContainerAllocateRequest {
            devices_ids: vec![f.node.uuids[1].clone()],
        }],
    };
    let e = g.allocate(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("disk full"), "{}", e.message());
    assert!(
        book.snapshot().is_empty(),
        "nothing kept of a refused grant"
    );

    // The disk is back: the kubelet's retry is granted and recorded before the answer.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = g.allocate(req).await.unwrap().into_inner();
    let id = r.container_responses[0].envs["GREENSLICE_SLICE_ID"].clone();
    let snap = book.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].slice_id, id);
    assert!(
        recorded
            .lock()
            .unwrap()
            .iter()
            .any(|ids| ids == std::slice::from_ref(&id)),
        "the grant was written through the checkpoint"
    );
}
