//! Asking the controller's placement which GPUs a kubelet allocation should use.

use std::time::Duration;

use greenslice_proto::client::{ClientTls, ClientTlsFiles};
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
#[derive(Debug)]
pub struct ControllerChooser {
    url: String,
    timeout: Duration,
    /// The client, and the TLS settings its channel was made with.
    current: std::sync::Mutex<(KubeletServiceClient<Channel>, ClientTls)>,
    /// Files to read the TLS settings from again before each call (a renewed agent certificate is
    /// used from the next call on); None: the settings given stay.
    files: Option<ClientTlsFiles>,
}

fn client(
    url: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<KubeletServiceClient<Channel>, ChooseError> {
    let endpoint = greenslice_proto::client::endpoint(url, tls).map_err(|e| ChooseError::Url {
        url: url.to_string(),
        msg: e.to_string(),
    })?;
    Ok(KubeletServiceClient::new(
        endpoint.connect_timeout(timeout).connect_lazy(),
    ))
}

impl ControllerChooser {
    /// A chooser for the controller at `url`. Connects lazily: an unreachable controller shows as a
    /// failed call, not here.
    pub fn new(url: &str, tls: &ClientTls, timeout: Duration) -> Result<Self, ChooseError> {
        Ok(ControllerChooser {
            url: url.to_string(),
            timeout,
            current: std::sync::Mutex::new((client(url, tls, timeout)?, tls.clone())),
            files: None,
        })
    }

    /// Reads the TLS settings from `files` again before each call.
    pub fn following(mut self, files: ClientTlsFiles) -> Self {
        self.files = Some(files);
        self
    }

    /// The controller's KubeletService client for the TLS settings in force (rebuilt when the
    /// files changed and read). The DRA driver calls PrepareClaim through it too.
    pub(crate) fn client(&self) -> KubeletServiceClient<Channel> {
        let fresh = self.files.as_ref().and_then(|f| f.read().ok());
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tls) = fresh
            && tls != cur.1
            && let Ok(c) = client(&self.url, &tls, self.timeout)
        {
            *cur = (c, tls);
        }
        cur.0.clone()
    }
}

#[tonic::async_trait]
impl DeviceChooser for ControllerChooser {
    async fn choose(
        &self,
        req: pb::ChooseDevicesRequest,
    ) -> Result<pb::ChooseDevicesResponse, ChooseError> {
        let mut client = self.client();
        match tokio::time::timeout(self.timeout, client.choose_devices(req)).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(ChooseError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_controller_chooser_follows_its_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "ca-1").unwrap();
        let files = ClientTlsFiles {
            ca: Some(ca.clone()),
            cert: None,
            key: None,
        };
        let c = ControllerChooser::new(
            "http://127.0.0.1:1",
            &ClientTls::default(),
            Duration::from_millis(100),
        )
        .unwrap()
        .following(files);
        let in_force = |c: &ControllerChooser| c.current.lock().unwrap().1.ca_pem.clone();
        assert_eq!(in_force(&c), None);
        let _ = c.client();
        assert_eq!(in_force(&c), Some(b"ca-1".to_vec()));
        std::fs::write(&ca, "ca-2").unwrap();
        let _ = c.client();
        assert_eq!(in_force(&c), Some(b"ca-2".to_vec()));
        // A file that cannot be read keeps the settings in force.
        std::fs::remove_file(&ca).unwrap();
        let _ = c.client();
        assert_eq!(in_force(&c), Some(b"ca-2".to_vec()));
    }
}
