//! The node agent as the kubelet's device plugin (API v1beta1), and the reporter of kubelet
//! allocations to the controller. See docs/KUBERNETES.md for the resources, the share-size scheme
//! and its limits.
//!
//! - [`devices`]: device ids per resource, preferred allocation and Allocate (pure).
//! - [`grants`]: the slice id each Allocate hands a container, until its pod ends.
//! - [`plugin`]: the DevicePlugin gRPC service of one resource.
//! - [`registration`]: one endpoint per resource, registered and re-registered with the kubelet.
//! - [`podresources`]: which pod holds which device, as slices of the pod's tenant.
//! - [`choose`]: asking the controller's placement which GPUs to use.
//! - [`evict`]: evicting an idle pod through the API server (`pod_reclaim = "evict"`).
//! - [`uds`]: gRPC over unix sockets.

pub mod choose;
pub mod devices;
pub mod evict;
pub mod grants;
pub mod plugin;
pub mod podresources;
pub mod registration;
pub mod uds;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use greenslice_core::inventory::Gpu;
use greenslice_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::BackendError;
use crate::config::{AgentConfig, PodReclaim};
use crate::session::SharedBackend;
use choose::{ControllerChooser, DeviceChooser};
use devices::{AllocateOptions, DeviceTable};
use plugin::PluginContext;

/// What went wrong talking to the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot reach the kubelet socket: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the kubelet refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("cannot serve on {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid kubelet configuration: {0}")]
    Config(String),
}

/// Reads the node's GPUs (blocking: NVML is a blocking C library).
pub type InventoryFn = Arc<dyn Fn() -> Result<Vec<Gpu>, BackendError> + Send + Sync>;

/// The inventory of a shared backend.
pub fn backend_inventory(backend: SharedBackend) -> InventoryFn {
    Arc::new(move || {
        // A panic while holding the lock leaves the backend usable: its state is plain data.
        let mut b = backend.lock().unwrap_or_else(|p| p.into_inner());
        b.inventory()
    })
}

/// The grant book kept in a shared backend's node checkpoint (see [`grants`]).
pub fn backend_grants(backend: SharedBackend) -> Arc<grants::Grants> {
    let initial = backend
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .kubelet_grants();
    grants::Grants::persisted(
        initial,
        Arc::new(move |g| {
            let mut b = backend.lock().unwrap_or_else(|p| p.into_inner());
            b.record_kubelet_grants(g).map_err(|e| e.to_string())
        }),
    )
}

/// Everything the kubelet side of the agent needs.
pub struct KubeletOptions {
    pub node: String,
    /// The kubelet's device-plugins folder (holds kubelet.sock and our endpoints).
    pub device_plugin_dir: PathBuf,
    /// The kubelet's pod-resources socket.
    pub pod_resources_socket: PathBuf,
    /// Indices of non-MIG GPUs offered as share units.
    pub share_gpus: Vec<u32>,
    pub allocate: AllocateOptions,
    /// How often the inventory is read for device health.
    pub health_interval: Duration,
    /// How often the endpoints and the kubelet socket are checked.
    pub kubelet_poll: Duration,
    /// How often pod-resources is read.
    pub pod_resources_interval: Duration,
    /// The controller's placement for GetPreferredAllocation; `None`: always local.
    pub chooser: Option<Arc<dyn DeviceChooser>>,
    /// Whether the operator allows evicting idle pods (reported to the controller).
    pub eviction_allowed: bool,
    /// The node's Allocate grants; in memory unless the binary gives the checkpoint's.
    pub grants: Arc<grants::Grants>,
}

impl KubeletOptions {
    /// Options from the agent's configuration.
    pub fn from_config(cfg: &AgentConfig) -> Result<Self, KubeletError> {
        let k = &cfg.kubelet;
        let ms = |v: u64, what: &str| {
            if v == 0 {
                Err(KubeletError::Config(format!("kubelet.{what} must be > 0")))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let chooser: Option<Arc<dyn DeviceChooser>> = if k.controller_placement {
            let tls = cfg
                .client_tls()
                .map_err(|e| KubeletError::Config(e.to_string()))?;
            // With several replicas, ask the first; a local choice covers its absence.
            let url = cfg.controller.split(',').next().unwrap_or_default().trim();
            let c = ControllerChooser::new(
                url,
                &tls,
                ms(k.placement_timeout_ms, "placement_timeout_ms")?,
            )
            .map_err(|e| KubeletError::Config(e.to_string()))?
            .following(cfg.client_tls_files());
            Some(Arc::new(c))
        } else {
            None
        };
        Ok(KubeletOptions {
            node: cfg.node.clone(),
            device_plugin_dir: PathBuf::from(&k.device_plugin_dir),
            pod_resources_socket: PathBuf::from(&k.pod_resources_socket),
            share_gpus: k.share_gpus.clone(),
            allocate: AllocateOptions {
                mps_pipe_dir: k.share_mps.then(|| cfg.mps.pipe_dir.clone()),
                // Set by the binary once it knows whether supervision runs (NVML backend, control
                // binary found).
                mps_per_gpu: false,
            },
            health_interval: ms(k.health_interval_ms, "health_interval_ms")?,
            kubelet_poll: ms(k.kubelet_poll_ms, "kubelet_poll_ms")?,
            pod_resources_interval: ms(k.pod_resources_interval_ms, "pod_resources_interval_ms")?,
            chooser,
            eviction_allowed: k.pod_reclaim == PodReclaim::Evict,
            grants: grants::Grants::in_memory(),
        })
    }
}

/// Reads the inventory every `interval` and publishes the device table when it changes. A failed
/// read marks every device Unhealthy until a read succeeds: the GPUs' state is unknown.
pub async fn watch_inventory(
    inventory: InventoryFn,
    share_gpus: Vec<u32>,
    interval: Duration,
    tx: watch::Sender<Arc<DeviceTable>>,
) {
    let mut last_warnings: Vec<String> = Vec::new();
    let mut last_error: Option<String> = None;
    loop {
        let inv = inventory.clone();
        let read = tokio::task::spawn_blocking(move || inv()).await;
        let next = match read {
            Ok(Ok(gpus)) => {
                if last_error.take().is_some() {
                    info!("GPU inventory readable again");
                }
                let (t, warnings) = DeviceTable::build(&gpus, &share_gpus);
                if warnings != last_warnings {
                    for w in &warnings {
                        warn!("{w}");
                    }
                    last_warnings = warnings;
                }
                t
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    warn!(error = %msg, "cannot read the GPU inventory; every device is Unhealthy");
                    last_error = Some(msg);
                }
                tx.borrow().all_unhealthy()
            }
            Err(e) => {
                warn!(error = %e, "inventory read panicked; every device is Unhealthy");
                tx.borrow().all_unhealthy()
            }
        };
        tx.send_if_modified(|cur| {
            if **cur != next {
                *cur = Arc::new(next);
                true
            } else {
                false
            }
        });
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The running kubelet side: the device table, the endpoints, the pod-resources reporter. Dropping
/// it stops them.
pub struct Kubelet {
    /// The node's devices, as the plugins offer them.
    pub table: watch::Receiver<Arc<DeviceTable>>,
    /// The latest kubelet allocations (`None` until pod-resources was read once), for the controller.
    pub allocations: watch::Receiver<Option<pb::KubeletAllocations>>,
    tasks: Vec<JoinHandle<()>>,
    device_plugin_dir: PathBuf,
}

impl Kubelet {
    /// A clean stop: the plugins stop serving and their endpoint sockets are removed, so the
    /// kubelet sees the plugin gone (a new agent registers afresh). Pods keep their devices: the
    /// hardware is not touched.
    pub fn stop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let Ok(entries) = std::fs::read_dir(&self.device_plugin_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ours = name.starts_with("greenslice-") && name.ends_with(".sock");
            if ours
                && uds::socket_id(&e.path()).is_some()
                && let Err(err) = std::fs::remove_file(e.path())
            {
                warn!(socket = %e.path().display(), error = %err, "cannot remove a plugin endpoint");
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the inventory watcher, the plugin endpoints (with registration) and the pod-resources
/// reporter. Must run inside a tokio runtime.
pub fn start(opts: KubeletOptions, inventory: InventoryFn) -> Kubelet {
    let (table_tx, table_rx) = watch::channel(Arc::new(DeviceTable::default()));
    let (alloc_tx, alloc_rx) = watch::channel(None);
    let ctx = Arc::new(PluginContext {
        node: opts.node.clone(),
        table: table_rx.clone(),
        chooser: opts.chooser.clone(),
        allocate: opts.allocate.clone(),
        grants: opts.grants.clone(),
    });
    info!(
        dir = %opts.device_plugin_dir.display(),
        pod_resources = %opts.pod_resources_socket.display(),
        share_gpus = ?opts.share_gpus,
        controller_placement = opts.chooser.is_some(),
        "kubelet device plugin starting"
    );
    let tasks = vec![
        tokio::spawn(watch_inventory(
            inventory,
            opts.share_gpus.clone(),
            opts.health_interval,
            table_tx,
        )),
        tokio::spawn(registration::run(
            registration::Endpoints::new(&opts.device_plugin_dir, ctx),
            opts.kubelet_poll,
        )),
        tokio::spawn(podresources::run(
            podresources::Reader {
                socket: opts.pod_resources_socket.clone(),
                node: opts.node.clone(),
                table: table_rx.clone(),
                interval: opts.pod_resources_interval,
                eviction_allowed: opts.eviction_allowed,
                grants: opts.grants.clone(),
            },
            alloc_tx,
        )),
    ];
    Kubelet {
        table: table_rx,
        allocations: alloc_rx,
        tasks,
        device_plugin_dir: opts.device_plugin_dir.clone(),
    }
}
