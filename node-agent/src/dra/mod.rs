//! The node agent as a Kubernetes DRA (Dynamic Resource Allocation) driver, `gpu.greenslice.io`.
//! See docs/KUBERNETES.md ("DRA") for what is published, how claims are prepared and which
//! Kubernetes versions are supported.
//!
//! - [`devices`]: the device names of the node's ResourceSlices (one home for the scheme).
//! - [`quantity`]: Kubernetes resource quantities (`"20Gi"`, `"250"`), parsed and written.
//! - [`config`]: the driver's opaque configuration (`resource.greenslice.io/v1alpha1` GpuConfig).
//! - [`claims`]: what a claim's allocation asks of this node (pure).
//! - [`cdi`]: the CDI specs of prepared claims.
//! - [`prepare`]: NodePrepareResources / NodeUnprepareResources behind the gRPC edge.
//! - [`plugin`]: the DRAPlugin (v1, v1beta1) and registration gRPC services.
//! - [`slices`]: the node's ResourceSlices from its inventory, and their validation (pure).
//! - [`publish`]: keeping the API server's ResourceSlices of the node equal to them.

pub mod cdi;
pub mod claims;
pub mod config;
pub mod devices;
pub mod plugin;
pub mod prepare;
pub mod publish;
pub mod quantity;
pub mod slices;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenslice_proto::dra::{v1, v1beta1};
use greenslice_proto::pluginregistration as reg;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::kubelet::uds::{self, SocketId};
use plugin::{DraService, RegistrationService, RegistrationState};

/// Everything the DRA driver's kubelet side needs.
pub struct DraOptions {
    /// The driver's folder under the kubelet's `plugins` folder.
    pub plugin_dir: PathBuf,
    /// The kubelet's plugin-registration folder.
    pub registry_dir: PathBuf,
    /// How often the sockets are checked (and the devices, for the ResourceSlices).
    pub poll: Duration,
    pub driver: Arc<prepare::Driver>,
    /// Where the node's ResourceSlices are published, and what they offer; `None`: not
    /// published (tests of the kubelet side alone).
    pub publish: Option<(kube::Client, slices::SliceOptions)>,
}

/// The sockets the driver serves, with the identity each had when bound.
type SocketBook = Arc<std::sync::Mutex<Vec<(PathBuf, Option<SocketId>)>>>;

/// The running driver: its two sockets, kept served. Dropping it stops them.
pub struct Dra {
    /// What the kubelet last said about the registration.
    pub registration: RegistrationState,
    tasks: Vec<JoinHandle<()>>,
    sockets: SocketBook,
}

impl Dra {
    /// A clean stop: the sockets are removed, so the kubelet sees the driver gone (a new agent
    /// registers afresh). Prepared claims keep their devices: nothing is torn down.
    pub fn stop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        for (path, id) in sockets.iter() {
            if id.is_some() && uds::socket_id(path) == *id {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for Dra {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One served socket: bound anew whenever its file is gone or replaced.
struct Served {
    path: PathBuf,
    id: Option<SocketId>,
    server: Option<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        // The keeper owns its servers: when it stops (aborted), they stop too.
        if let Some(s) = &self.server {
            s.abort();
        }
    }
}

impl Served {
    fn alive(&self) -> bool {
        self.server.as_ref().is_some_and(|s| !s.is_finished())
            && self.id.is_some()
            && uds::socket_id(&self.path) == self.id
    }
}

fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    uds::bind(path)
}

/// Starts serving the DRA plugin and registration sockets and keeps them served. Must run inside
/// a tokio runtime.
pub fn start(opts: DraOptions) -> Dra {
    let plugin_path = opts.plugin_dir.join(plugin::PLUGIN_SOCKET);
    let reg_path = opts.registry_dir.join(plugin::registration_socket());
    let (reg_svc, registration) = RegistrationService::new(&opts.plugin_dir);
    let reg_svc = Arc::new(reg_svc);
    let dra = DraService {
        driver: opts.driver.clone(),
    };
    let sockets = Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = sockets.clone();
    info!(plugin = %plugin_path.display(), registration = %reg_path.display(), driver = devices::DRIVER, "DRA driver starting");
    let keeper = tokio::spawn(async move {
        let mut plugin_sock = Served {
            path: plugin_path,
            id: None,
            server: None,
        };
        let mut reg_sock = Served {
            path: reg_path,
            id: None,
            server: None,
        };
        let mut last_error: Option<String> = None;
        loop {
            // The DRA socket first: the kubelet calls it as soon as it has the registration.
            for (s, what) in [
                (&mut plugin_sock, "DRA plugin"),
                (&mut reg_sock, "registration"),
            ] {
                if s.alive() {
                    continue;
                }
                if let Some(old) = s.server.take() {
                    old.abort();
                    info!(socket = %s.path.display(), "{what} socket gone (kubelet restart?); serving anew");
                }
                match bind(&s.path) {
                    Ok(listener) => {
                        s.id = uds::socket_id(&s.path);
                        let incoming = UnixListenerStream::new(listener);
                        let router = if what == "DRA plugin" {
                            tonic::transport::Server::builder()
                                .add_service(v1::dra_plugin_server::DraPluginServer::new(
                                    dra.clone(),
                                ))
                                .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(
                                    dra.clone(),
                                ))
                        } else {
                            tonic::transport::Server::builder().add_service(
                                reg::registration_server::RegistrationServer::from_arc(
                                    reg_svc.clone(),
                                ),
                            )
                        };
                        let path = s.path.display().to_string();
                        s.server = Some(tokio::spawn(async move {
                            if let Err(e) = router.serve_with_incoming(incoming).await {
                                warn!(socket = %path, error = %e, "DRA socket stopped");
                            }
                        }));
                        info!(socket = %s.path.display(), "{what} socket serving");
                        last_error = None;
                    }
                    Err(e) => {
                        let msg = format!("cannot serve {}: {e}", s.path.display());
                        if last_error.as_ref() != Some(&msg) {
                            warn!("{msg}");
                            last_error = Some(msg);
                        }
                    }
                }
            }
            {
                let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                *g = vec![
                    (plugin_sock.path.clone(), plugin_sock.id),
                    (reg_sock.path.clone(), reg_sock.id),
                ];
            }
            tokio::time::sleep(opts.poll).await;
        }
    });
    let mut tasks = vec![keeper];
    if let Some((client, slice_opts)) = opts.publish {
        let (tx, rx) = tokio::sync::watch::channel(publish::NodeDevices::default());
        let driver = opts.driver.clone();
        let poll = opts.poll;
        // What is published follows the inventory and the claims this node holds.
        tasks.push(tokio::spawn(async move {
            loop {
                let inv = driver.inventory.clone();
                if let Ok(Ok(gpus)) = tokio::task::spawn_blocking(move || inv()).await {
                    let dra_slices = driver
                        .book
                        .all()
                        .into_iter()
                        .flat_map(|c| c.devices.into_iter().map(|d| d.slice_id))
                        .collect();
                    let next = publish::NodeDevices { gpus, dra_slices };
                    tx.send_if_modified(|cur| {
                        let changed = *cur != next;
                        if changed {
                            *cur = next;
                        }
                        changed
                    });
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(poll).await;
            }
        }));
        let node = opts.driver.node.clone();
        tasks.push(tokio::spawn(async move {
            publish::run(
                client,
                &node,
                slice_opts,
                publish::RunOptions::default(),
                rx,
            )
            .await;
        }));
    }
    Dra {
        registration,
        tasks,
        sockets,
    }
}

/// The prepared claims kept in a shared backend's node checkpoint.
pub fn backend_claims(backend: crate::session::SharedBackend) -> Arc<prepare::ClaimBook> {
    let initial = backend
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dra_claims();
    prepare::ClaimBook::persisted(
        initial,
        Arc::new(move |c| {
            let mut b = backend.lock().unwrap_or_else(|p| p.into_inner());
            b.record_dra_claims(c).map_err(|e| e.to_string())
        }),
    )
}

/// The driver as the agent's configuration says (`[dra]`), over the node's shared backend:
/// claims read from the API server, slices made by the controller, claims kept in the node
/// checkpoint. Errors name the setting at fault.
pub async fn from_config(
    cfg: &crate::AgentConfig,
    backend: crate::session::SharedBackend,
) -> Result<DraOptions, String> {
    let d = &cfg.dra;
    let ms = |v: u64, what: &str| {
        if v == 0 {
            Err(format!("dra.{what} must be > 0"))
        } else {
            Ok(Duration::from_millis(v))
        }
    };
    let timeout = ms(d.prepare_timeout_ms, "prepare_timeout_ms")?;
    let poll = ms(d.poll_ms, "poll_ms")?;
    let api = d
        .api_server
        .as_deref()
        .or(cfg.kubelet.api_server.as_deref());
    let client = crate::k8s::client(api, "dra.api_server").await?;
    let slice_opts = slices::SliceOptions {
        share_gpus: d.share_gpus.clone(),
        partitionable: d.partitionable,
        consumable_capacity: d.consumable_capacity,
        steer: match d.steer {
            crate::config::DraSteer::Off => slices::Steering::Off,
            crate::config::DraSteer::Gpu => slices::Steering::PerGpu,
            crate::config::DraSteer::Node => slices::Steering::Node,
        },
        ..Default::default()
    };
    let tls = cfg.client_tls().map_err(|e| e.to_string())?;
    let mut replicas = Vec::new();
    for url in cfg
        .controller
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        replicas.push(
            crate::kubelet::choose::ControllerChooser::new(url, &tls, timeout)
                .map_err(|e| e.to_string())?
                .following(cfg.client_tls_files()),
        );
    }
    let cdi_dir = PathBuf::from(&d.cdi_dir);
    let driver = prepare::Driver::new(
        cfg.node.clone(),
        crate::kubelet::backend_inventory(backend.clone()),
        Arc::new(prepare::KubeClaims(client.clone())),
        Arc::new(prepare::ControllerSlices { replicas, timeout }),
        backend_claims(backend),
        cdi_dir.clone(),
        vec![cdi_dir, PathBuf::from(cdi::STATIC_CDI_DIR)],
        Arc::new(greenslice_core::clock::SystemClock),
    );
    driver.check_specs();
    Ok(DraOptions {
        plugin_dir: PathBuf::from(&d.plugin_dir),
        registry_dir: PathBuf::from(&d.registry_dir),
        poll,
        driver: Arc::new(driver),
        publish: Some((client, slice_opts)),
    })
}
