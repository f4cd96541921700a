//! Serving one plugin endpoint per resource and keeping each registered with the kubelet.
//!
//! Level-triggered: every tick compares what runs with what should run. A resource that appears (a
//! new MIG profile) gets an endpoint and a registration; one that goes is stopped. When the kubelet
//! restarts it recreates `kubelet.sock` (and wipes the folder's other sockets): a new socket
//! identity means every endpoint whose socket is gone is served anew and every resource registers
//! again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenslice_proto::deviceplugin::v1beta1 as dp;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use super::KubeletError;
use super::plugin::{DevicePluginService, PluginContext};
use super::uds::{self, SocketId};

/// Deadline of one Register call.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Socket file name (in the device-plugins folder) of a resource's endpoint:
/// `greenslice.io/mig-3g.40gb` serves on `greenslice-mig-3g.40gb.sock`.
pub fn endpoint_name(resource: &str) -> String {
    let short = resource
        .strip_prefix(super::devices::RESOURCE_PREFIX)
        .unwrap_or(resource);
    format!("greenslice-{short}.sock")
}

/// Registers `resource`, served on `endpoint` (a file name in the kubelet's folder), with the kubelet
/// listening on `kubelet_socket`.
pub async fn register(
    kubelet_socket: &Path,
    endpoint: &str,
    resource: &str,
) -> Result<(), KubeletError> {
    let call = async {
        let channel = uds::connect(kubelet_socket).await?;
        let mut client = dp::registration_client::RegistrationClient::new(channel);
        client
            .register(dp::RegisterRequest {
                version: dp::VERSION.to_string(),
                endpoint: endpoint.to_string(),
                resource_name: resource.to_string(),
                options: Some(DevicePluginService::options()),
            })
            .await?;
        Ok::<(), KubeletError>(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| KubeletError::Timeout("Register"))?
}

/// One running endpoint.
struct Endpoint {
    socket: PathBuf,
    /// The socket as this endpoint created it.
    id: Option<SocketId>,
    server: JoinHandle<()>,
    /// The kubelet socket this resource last registered with successfully.
    registered_with: Option<SocketId>,
    /// Last registration error, logged once until it changes.
    last_error: Option<String>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
        if self.id.is_some() && uds::socket_id(&self.socket) == self.id {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// The endpoints of every resource in the device table.
pub struct Endpoints {
    dir: PathBuf,
    ctx: Arc<PluginContext>,
    running: BTreeMap<String, Endpoint>,
}

impl Endpoints {
    /// Endpoints served in `dir` (the kubelet's device-plugins folder).
    pub fn new(dir: &Path, ctx: Arc<PluginContext>) -> Self {
        Endpoints {
            dir: dir.to_path_buf(),
            ctx,
            running: BTreeMap::new(),
        }
    }

    fn serve(&self, resource: &str) -> Result<Endpoint, KubeletError> {
        let socket = self.dir.join(endpoint_name(resource));
        let listener = uds::bind(&socket).map_err(|source| KubeletError::Bind {
            path: socket.display().to_string(),
            source,
        })?;
        let id = uds::socket_id(&socket);
        let svc = dp::device_plugin_server::DevicePluginServer::new(DevicePluginService::new(
            resource,
            self.ctx.clone(),
        ));
        let name = resource.to_string();
        let server = tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
            if let Err(e) = r {
                warn!(resource = %name, error = %e, "device plugin endpoint stopped");
            }
        });
        info!(%resource, socket = %socket.display(), "device plugin endpoint serving");
        Ok(Endpoint {
            socket,
            id,
            server,
            registered_with: None,
            last_error: None,
        })
    }

    /// One reconcile step: serve what should be served, stop what should not, and register every
    /// resource not yet registered with the kubelet socket there now.
    pub async fn tick(&mut self) {
        let wanted: Vec<String> = self
            .ctx
            .table
            .borrow()
            .resources()
            .map(str::to_string)
            .collect();
        self.running.retain(|r, _| {
            let keep = wanted.contains(r);
            if !keep {
                info!(resource = %r, "resource gone from the node; endpoint stopped");
            }
            keep
        });
        for r in &wanted {
            let alive = self.running.get(r).is_some_and(|e| {
                !e.server.is_finished() && e.id.is_some() && uds::socket_id(&e.socket) == e.id
            });
            if !alive {
                if self.running.remove(r).is_some() {
                    info!(resource = %r, "endpoint socket removed (kubelet restart?); serving anew");
                }
                match self.serve(r) {
                    Ok(e) => {
                        self.running.insert(r.clone(), e);
                    }
                    Err(e) => {
                        warn!(resource = %r, error = %e, "cannot serve device plugin endpoint")
                    }
                }
            }
        }
        let kubelet = self.dir.join(dp::KUBELET_SOCKET);
        let Some(kubelet_id) = uds::socket_id(&kubelet) else {
            return;
        };
        for (r, e) in self.running.iter_mut() {
            if e.registered_with == Some(kubelet_id) {
                continue;
            }
            let endpoint = endpoint_name(r);
            match register(&kubelet, &endpoint, r).await {
                Ok(()) => {
                    info!(resource = %r, %endpoint, "registered with the kubelet");
                    e.registered_with = Some(kubelet_id);
                    e.last_error = None;
                }
                Err(err) => {
                    let msg = err.to_string();
                    if e.last_error.as_ref() != Some(&msg) {
                        warn!(resource = %r, error = %msg, "kubelet registration failed; retrying");
                        e.last_error = Some(msg);
                    }
                }
            }
        }
    }

    /// Resources with a running endpoint, and whether each is registered.
    pub fn status(&self) -> Vec<(String, bool)> {
        self.running
            .iter()
            .map(|(r, e)| (r.clone(), e.registered_with.is_some()))
            .collect()
    }
}

/// Keeps the endpoints served and registered, checking every `poll`.
pub async fn run(mut endpoints: Endpoints, poll: Duration) {
    let mut table = endpoints.ctx.table.clone();
    loop {
        endpoints.tick().await;
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            changed = table.changed() => if changed.is_err() { return },
        }
    }
}
