//! A fake kubelet for cross-process tests: the kubelet's device-plugin Registration service and its
//! pod-resources lister, on unix sockets in a temp folder, speaking the real protos. It shares no
//! code with the agent's side of those APIs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_proto::deviceplugin::v1beta1 as dp;
use greenslice_proto::podresources::v1 as pr;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// The kubelet's Registration service: passes every request on.
struct Registration(mpsc::UnboundedSender<dp::RegisterRequest>);

#[tonic::async_trait]
impl dp::registration_server::Registration for Registration {
    async fn register(
        &self,
        req: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(dp::Empty {}))
    }
}

/// The kubelet's pod-resources: answers what the test sets.
#[derive(Clone, Default)]
pub struct PodResources(pub Arc<Mutex<pr::ListPodResourcesResponse>>);

impl PodResources {
    /// The pods the kubelet lists from now on.
    pub fn set(&self, pods: Vec<pr::PodResources>) {
        self.0.lock().unwrap().pod_resources = pods;
    }
}

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for PodResources {
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
        Err(Status::unimplemented("not used by the agent"))
    }
    async fn get(
        &self,
        _: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by the agent"))
    }
}

pub struct FakeKubelet {
    /// The device-plugins folder (kubelet.sock and the plugins' endpoints).
    pub plugins_dir: PathBuf,
    pub pod_resources_socket: PathBuf,
    pub pods: PodResources,
    pub registrations: mpsc::UnboundedReceiver<dp::RegisterRequest>,
}

impl FakeKubelet {
    /// Serves both APIs under `root`. Needs a tokio runtime.
    pub fn start(root: &Path) -> FakeKubelet {
        let plugins_dir = root.join("device-plugins");
        let pr_dir = root.join("pod-resources");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        std::fs::create_dir_all(&pr_dir).unwrap();
        let (tx, registrations) = mpsc::unbounded_channel();
        let listener = UnixListener::bind(plugins_dir.join("kubelet.sock")).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(dp::registration_server::RegistrationServer::new(
                    Registration(tx),
                ))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let pods = PodResources::default();
        let pod_resources_socket = pr_dir.join("kubelet.sock");
        let listener = UnixListener::bind(&pod_resources_socket).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    pr::pod_resources_lister_server::PodResourcesListerServer::new(pods.clone()),
                )
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        FakeKubelet {
            plugins_dir,
            pod_resources_socket,
            pods,
            registrations,
        }
    }

    /// The `[kubelet]` lines that point an agent at this kubelet.
    pub fn agent_config(&self) -> String {
        format!(
            "[kubelet]\nenabled = true\ndevice_plugin_dir = {:?}\npod_resources_socket = {:?}\n",
            self.plugins_dir, self.pod_resources_socket
        )
    }

    /// Waits until `resource` registers; a client of its plugin endpoint.
    pub async fn plugin(
        &mut self,
        resource: &str,
        within: Duration,
    ) -> dp::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
        let endpoint = tokio::time::timeout(within, async {
            loop {
                let r = self
                    .registrations
                    .recv()
                    .await
                    .expect("fake kubelet running");
                if r.resource_name == resource {
                    return r.endpoint;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{resource} did not register within {within:?}"));
        let ch = greenslice_agent::kubelet::uds::connect(&self.plugins_dir.join(&endpoint))
            .await
            .expect("connect to the plugin");
        dp::device_plugin_client::DevicePluginClient::new(ch)
    }
}

/// The devices a plugin lists first (as the kubelet reads them from ListAndWatch).
pub async fn first_devices(
    plugin: &mut dp::device_plugin_client::DevicePluginClient<tonic::transport::Channel>,
    within: Duration,
) -> Vec<dp::Device> {
    use tokio_stream::StreamExt;
    let mut watch = plugin
        .list_and_watch(dp::Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner();
    tokio::time::timeout(within, watch.next())
        .await
        .expect("devices listed")
        .expect("stream open")
        .expect("no error")
        .devices
}

/// A pod with one container holding `ids` of `resource`.
pub fn pod(ns: &str, name: &str, resource: &str, ids: &[String]) -> pr::PodResources {
    pr::PodResources {
        name: name.into(),
        namespace: ns.into(),
        containers: vec![pr::ContainerResources {
            name: "main".into(),
            devices: vec![pr::ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.to_vec(),
                topology: None,
            }],
            ..Default::default()
        }],
    }
}
