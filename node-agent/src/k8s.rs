//! The one way the agent reaches the Kubernetes API server (evictions, DRA claims and
//! ResourceSlices).

/// A client of `api_server` (a URL, no credentials: tests and local proxies such as
/// `kubectl proxy`), or else of the cluster the agent runs in (its service account) or of the
/// local kubeconfig. `setting` names the configuration key, for the error.
pub async fn client(api_server: Option<&str>, setting: &str) -> Result<kube::Client, String> {
    let config = match api_server {
        Some(url) => {
            let uri = url.parse().map_err(|e| format!("{setting} {url:?}: {e}"))?;
            kube::Config::new(uri)
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}
