//! Asking the controller's placement which GPUs a kubelet allocation should use.

use std::time::Duration;

use greenslice_proto::v1 as pb;
use pb::kubelet_service_client::KubeletServiceClient;
use tonic::transport::Channel;

/// Why the controller gave no choice. The plugin then chooses locally.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error("invalid controller URL {url:?}: {msg}")]
    Url { url: String, msg: String },
    #[error("controller did not answer within {0:?}")]
    Timeout(Duration),
    #[error("controller refused: {0}")]
    Status(#[from] tonic::Status),
}

/// Chooses GPUs for a kubelet allocation. Implemented by [`ControllerChooser`]; tests use fakes.
#[tonic::async_trait]
pub trait DeviceChooser: Send + Sync {
    async fn choose(
        &self,
        req: pb::ChooseDevicesRequest,
    ) -> Result<pb::ChooseDevicesResponse, ChooseError>;
}

/// The controller's `KubeletService.ChooseDevices`, with a deadline so a slow or absent controller
/// never holds up a pod for long.
#[derive(Debug, Clone)]
pub struct ControllerChooser {
    client: KubeletServiceClient<Channel>,
    timeout: Duration,
}

impl ControllerChooser {
    /// A chooser for the controller at `url`. Connects lazily: an unreachable controller shows as a
    /// failed call, not here.
    pub fn new(
        url: &str,
        tls: &greenslice_proto::client::ClientTls,
        timeout: Duration,
    ) -> Result<Self, ChooseError> {
        let endpoint =
            greenslice_proto::client::endpoint(url, tls).map_err(|e| ChooseError::Url {
                url: url.to_string(),
                msg: e.to_string(),
            })?;
        let channel = endpoint.connect_timeout(timeout).connect_lazy();
        Ok(ControllerChooser {
            client: KubeletServiceClient::new(channel),
            timeout,
        })
    }
}

#[tonic::async_trait]
impl DeviceChooser for ControllerChooser {
    async fn choose(
        &self,
        req: pb::ChooseDevicesRequest,
    ) -> Result<pb::ChooseDevicesResponse, ChooseError> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.choose_devices(req)).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(ChooseError::Timeout(self.timeout)),
        }
    }
}
