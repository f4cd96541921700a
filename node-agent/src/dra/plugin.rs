//! The gRPC edges of the DRA driver: the `DRAPlugin` service in both versions the supported
//! kubelets speak (v1 since Kubernetes 1.34, v1beta1 since 1.32), served together on one socket
//! in the driver's plugin folder, and the plugin-registration service the kubelet's plugin
//! watcher finds in its registry folder. Each claim of a request is prepared on its own: one bad
//! claim gets its error in the answer and does not hold up the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenslice_proto::dra::{v1, v1beta1};
use greenslice_proto::pluginregistration as reg;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::devices::DRIVER;
use super::prepare::{ClaimRef, Driver};
use crate::checkpoint::PreparedDevice;

/// Socket file of the DRA service, in the plugin folder.
pub const PLUGIN_SOCKET: &str = "dra.sock";

/// Socket file of the registration service, in the registry folder.
pub fn registration_socket() -> String {
    format!("{DRIVER}-reg.sock")
}

/// A claim the kubelet named, or why it cannot be used.
fn claim_ref(namespace: &str, uid: &str, name: &str) -> Result<ClaimRef, String> {
    if namespace.is_empty() || uid.is_empty() || name.is_empty() {
        return Err(format!(
            "claim {namespace:?}/{name:?} (uid {uid:?}): namespace, uid and name are required"
        ));
    }
    Ok(ClaimRef {
        namespace: namespace.to_string(),
        uid: uid.to_string(),
        name: name.to_string(),
    })
}

/// The DRAPlugin service of both versions.
#[derive(Clone)]
pub struct DraService {
    pub driver: Arc<Driver>,
}

impl DraService {
    async fn prepare_all(
        &self,
        claims: Vec<(String, String, String)>,
    ) -> Vec<(String, Result<Vec<PreparedDevice>, String>)> {
        let calls = claims.into_iter().map(|(ns, uid, name)| async move {
            let r = match claim_ref(&ns, &uid, &name) {
                Ok(c) => self.driver.prepare(&c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                warn!(claim = %uid, namespace = %ns, name = %name, error = %e, "NodePrepareResources failed");
            }
            (uid, r)
        });
        futures::future::join_all(calls).await
    }

    async fn unprepare_all(
        &self,
        claims: Vec<(String, String, String)>,
    ) -> Vec<(String, Result<(), String>)> {
        let calls = claims.into_iter().map(|(ns, uid, name)| async move {
            let r = match claim_ref(&ns, &uid, &name) {
                Ok(c) => self.driver.unprepare(&c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                warn!(claim = %uid, namespace = %ns, name = %name, error = %e, "NodeUnprepareResources failed");
            }
            (uid, r)
        });
        futures::future::join_all(calls).await
    }
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        req: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let claims = req
            .into_inner()
            .claims
            .into_iter()
            .map(|c| (c.namespace, c.uid, c.name))
            .collect();
        let claims = self
            .prepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, r)| {
                let answer = match r {
                    Ok(devices) => v1::NodePrepareResourceResponse {
                        devices: devices
                            .into_iter()
                            .map(|d| v1::Device {
                                request_names: vec![d.request],
                                pool_name: d.pool,
                                device_name: d.device,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: d.share_id,
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    },
                };
                (uid, answer)
            })
            .collect();
        Ok(Response::new(v1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let claims = req
            .into_inner()
            .claims
            .into_iter()
            .map(|c| (c.namespace, c.uid, c.name))
            .collect();
        let claims = self
            .unprepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, r)| {
                let error = r.err().unwrap_or_default();
                (uid, v1::NodeUnprepareResourceResponse { error })
            })
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        req: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let claims = req
            .into_inner()
            .claims
            .into_iter()
            .map(|c| (c.namespace, c.uid, c.name))
            .collect();
        let claims = self
            .prepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, r)| {
                let answer = match r {
                    // v1beta1 has no share ids: a share device is told apart by its CDI ids.
                    Ok(devices) => v1beta1::NodePrepareResourceResponse {
                        devices: devices
                            .into_iter()
                            .map(|d| v1beta1::Device {
                                request_names: vec![d.request],
                                pool_name: d.pool,
                                device_name: d.device,
                                cdi_device_ids: d.cdi_device_ids,
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1beta1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    },
                };
                (uid, answer)
            })
            .collect();
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse {
            claims,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let claims = req
            .into_inner()
            .claims
            .into_iter()
            .map(|c| (c.namespace, c.uid, c.name))
            .collect();
        let claims = self
            .unprepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, r)| {
                let error = r.err().unwrap_or_default();
                (uid, v1beta1::NodeUnprepareResourceResponse { error })
            })
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse {
            claims,
        }))
    }
}

/// What the kubelet last said about the registration: `None` until it said anything.
pub type RegistrationState = watch::Receiver<Option<reg::RegistrationStatus>>;

/// The plugin-registration service: tells the kubelet the driver's name, its DRA socket and the
/// service versions it serves, and hears whether the kubelet took it.
pub struct RegistrationService {
    pub endpoint: PathBuf,
    pub status: watch::Sender<Option<reg::RegistrationStatus>>,
}

impl RegistrationService {
    pub fn new(plugin_dir: &Path) -> (Self, RegistrationState) {
        let (tx, rx) = watch::channel(None);
        (
            RegistrationService {
                endpoint: plugin_dir.join(PLUGIN_SOCKET),
                status: tx,
            },
            rx,
        )
    }
}

#[tonic::async_trait]
impl reg::registration_server::Registration for RegistrationService {
    async fn get_info(
        &self,
        _req: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: reg::DRA_PLUGIN_TYPE.to_string(),
            name: DRIVER.to_string(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: vec![v1::VERSION.to_string(), v1beta1::VERSION.to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            info!(driver = DRIVER, "registered with the kubelet");
        } else {
            warn!(driver = DRIVER, error = %s.error, "the kubelet refused the registration");
        }
        self.status.send_replace(Some(s));
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}
