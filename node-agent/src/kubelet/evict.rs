//! Evicting an idle pod (`kubelet.pod_reclaim = "evict"`): the controller decides a pod's slice is
//! idle past its grace and sends `EvictPod`; the agent names the pod from its own kubelet report and
//! asks the API server's Eviction API (which honours PodDisruptionBudgets). The slice ends when
//! pod-resources no longer lists the pod, so its devices are free only once the kubelet freed them.

use greenslice_proto::v1 as pb;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};

use super::grants::PENDING_TENANT;

/// Why a pod could not be evicted.
#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error("no pod holds slice {0} in this node's kubelet report")]
    NoPod(String),
    #[error("cannot reach the Kubernetes API server: {0}")]
    Client(String),
    #[error("the API server refused to evict pod {namespace}/{pod}: {msg}")]
    Refused {
        namespace: String,
        pod: String,
        msg: String,
    },
}

/// The pod (namespace, name) that holds `slice_id` in a kubelet report; a grant no pod is listed
/// with yet has no pod to evict.
pub fn pod_of(report: &pb::KubeletAllocations, slice_id: &str) -> Option<(String, String)> {
    report
        .allocations
        .iter()
        .find(|a| a.slice_id == slice_id && a.namespace != PENDING_TENANT && !a.pod.is_empty())
        .map(|a| (a.namespace.clone(), a.pod.clone()))
}

/// Evicts pods through the API server.
#[derive(Clone)]
pub struct Evictor {
    client: kube::Client,
}

impl std::fmt::Debug for Evictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Evictor")
    }
}

impl Evictor {
    /// A client of `api_server` (a URL, no credentials: tests and local proxies such as
    /// `kubectl proxy`), or else of the cluster the agent runs in (its service account) or of the
    /// local kubeconfig.
    pub async fn new(api_server: Option<&str>) -> Result<Self, EvictError> {
        let client = crate::k8s::client(api_server, "kubelet.api_server")
            .await
            .map_err(EvictError::Client)?;
        Ok(Evictor { client })
    }

    /// Asks the API server to evict `namespace/pod`. A pod already gone counts as evicted.
    pub async fn evict(&self, namespace: &str, pod: &str) -> Result<(), EvictError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods.evict(pod, &EvictParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(kube::Error::Api(s)) => Err(EvictError::Refused {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                msg: if s.code == 429 {
                    format!(
                        "a PodDisruptionBudget does not allow it now (429: {})",
                        s.message
                    )
                } else {
                    format!("{} ({})", s.message, s.code)
                },
            }),
            Err(e) => Err(EvictError::Client(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(slice: &str, ns: &str, pod: &str) -> pb::KubeletAllocation {
        pb::KubeletAllocation {
            slice_id: slice.into(),
            tenant: ns.into(),
            namespace: ns.into(),
            pod: pod.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_pod_of_a_slice_comes_from_the_report_and_a_pending_grant_has_none() {
        let report = pb::KubeletAllocations {
            allocations: vec![
                alloc("k-1", "team-a", "trainer-0"),
                alloc("k-2", PENDING_TENANT, "k-2"),
            ],
            ..Default::default()
        };
        assert_eq!(
            pod_of(&report, "k-1"),
            Some(("team-a".into(), "trainer-0".into()))
        );
        assert_eq!(pod_of(&report, "k-2"), None);
        assert_eq!(pod_of(&report, "k-3"), None);
    }
}
