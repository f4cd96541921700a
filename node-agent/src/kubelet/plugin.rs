//! The DevicePlugin service for one resource: a thin gRPC edge over [`super::devices`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use greenslice_core::clock::{Clock, SystemClock};
use greenslice_proto::deviceplugin::v1beta1 as dp;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::choose::DeviceChooser;
use super::devices::{self, AllocateOptions, DeviceError, DeviceTable, ResourceDevices};
use super::grants::Grants;
use crate::backend::SLICE_ID_ENV;

/// Longest request the plugin reads, containers per call.
pub const MAX_CONTAINERS: usize = 256;

/// What every resource's plugin shares.
pub struct PluginContext {
    /// Node name, sent to the controller with placement questions.
    pub node: String,
    /// The node's devices, kept current by the inventory watcher.
    pub table: watch::Receiver<Arc<DeviceTable>>,
    /// The controller's placement, when configured.
    pub chooser: Option<Arc<dyn DeviceChooser>>,
    pub allocate: AllocateOptions,
    /// The slice id each Allocate hands a container (recorded before Allocate answers).
    pub grants: Arc<Grants>,
}

impl std::fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginContext")
            .field("node", &self.node)
            .field("chooser", &self.chooser.is_some())
            .field("allocate", &self.allocate)
            .finish()
    }
}

/// The DevicePlugin server of one resource.
#[derive(Debug, Clone)]
pub struct DevicePluginService {
    resource: String,
    ctx: Arc<PluginContext>,
}

impl DevicePluginService {
    pub fn new(resource: &str, ctx: Arc<PluginContext>) -> Self {
        DevicePluginService {
            resource: resource.to_string(),
            ctx,
        }
    }

    /// The options registered with the kubelet and returned by GetDevicePluginOptions.
    pub fn options() -> dp::DevicePluginOptions {
        dp::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }
    }

    fn devices(&self) -> Result<ResourceDevices, Status> {
        self.ctx
            .table
            .borrow()
            .resource(&self.resource)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "resource {} has no devices on this node now",
                    self.resource
                ))
            })
    }

    /// One container's preferred devices: the controller's choice when it gives a usable one, else
    /// the local choice.
    async fn prefer(
        &self,
        devs: &ResourceDevices,
        c: &dp::ContainerPreferredAllocationRequest,
    ) -> Result<Vec<String>, DeviceError> {
        let req = devices::check_preferred(
            &self.resource,
            devs,
            &c.available_device_i_ds,
            &c.must_include_device_i_ds,
            c.allocation_size,
        )?;
        if let (Some(chooser), Some(ask)) = (
            &self.ctx.chooser,
            devices::choose_request(&self.ctx.node, &self.resource, devs, &req),
        ) {
            match chooser.choose(ask).await {
                Ok(answer) => match devices::choose_from_gpus(devs, &req, &answer.gpu_uuids) {
                    Some(ids) => {
                        debug!(resource = %self.resource, policy = %answer.policy, gpus = ?answer.gpu_uuids, "controller placement chose");
                        return Ok(ids);
                    }
                    None => warn!(
                        resource = %self.resource,
                        gpus = ?answer.gpu_uuids,
                        "controller's choice does not fit the kubelet's request; choosing locally"
                    ),
                },
                Err(e) => warn!(
                    resource = %self.resource,
                    error = %e,
                    "controller placement unavailable; choosing locally"
                ),
            }
        }
        devices::choose_local(devs, &req)
    }
}

/// The gRPC status for a device error: the kubelet's input was wrong, or cannot be satisfied.
pub fn status(e: &DeviceError) -> Status {
    match e {
        DeviceError::Unhealthy(_) | DeviceError::SpansGpus(_) => {
            Status::failed_precondition(e.to_string())
        }
        DeviceError::NoSingleGpu { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn check_containers(n: usize) -> Result<(), Status> {
    if n == 0 {
        return Err(status(&DeviceError::NoContainers));
    }
    if n > MAX_CONTAINERS {
        return Err(Status::invalid_argument(format!(
            "{n} containers in one request; at most {MAX_CONTAINERS}"
        )));
    }
    Ok(())
}

type ListStream = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl dp::device_plugin_server::DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(Self::options()))
    }

    type ListAndWatchStream = ListStream;

    /// The resource's full device list now, then again whenever a device's health changes or a
    /// device appears or goes.
    async fn list_and_watch(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut table = self.ctx.table.clone();
        let resource = self.resource.clone();
        tokio::spawn(async move {
            let mut last: Option<Vec<dp::Device>> = None;
            loop {
                let now = table
                    .borrow_and_update()
                    .resource(&resource)
                    .map(ResourceDevices::to_pb)
                    .unwrap_or_default();
                if last.as_ref() != Some(&now) {
                    let healthy = now.iter().filter(|d| d.health == dp::HEALTHY).count();
                    info!(%resource, devices = now.len(), healthy, "ListAndWatch update");
                    let msg = dp::ListAndWatchResponse {
                        devices: now.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = table.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        let req = req.into_inner();
        check_containers(req.container_requests.len())?;
        let devs = self.devices()?;
        let mut out = Vec::with_capacity(req.container_requests.len());
        for c in &req.container_requests {
            let ids = self.prefer(&devs, c).await.map_err(|e| {
                warn!(resource = %self.resource, error = %e, "GetPreferredAllocation refused");
                status(&e)
            })?;
            out.push(dp::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(dp::PreferredAllocationResponse {
            container_responses: out,
        }))
    }

    async fn allocate(
        &self,
        req: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        let req = req.into_inner();
        check_containers(req.container_requests.len())?;
        let devs = self.devices()?;
        let mut grants = Vec::with_capacity(req.container_requests.len());
        for c in &req.container_requests {
            let grant =
                devices::allocate(&self.resource, &devs, &c.devices_ids, &self.ctx.allocate)
                    .map_err(|e| {
                        warn!(resource = %self.resource, error = %e, "Allocate refused");
                        status(&e)
                    })?;
            grants.push(grant);
        }
        // Every container is granted: mint their slice ids and record them before answering, so
        // the devices are reserved in the controller from now on (see super::grants).
        let containers: Vec<Vec<String>> = req
            .container_requests
            .iter()
            .map(|c| c.devices_ids.clone())
            .collect();
        let (book, node, resource) = (
            self.ctx.grants.clone(),
            self.ctx.node.clone(),
            self.resource.clone(),
        );
        let minted = tokio::task::spawn_blocking(move || {
            book.mint_all(&node, &resource, &containers, SystemClock.now_ms())
        })
        .await
        .map_err(|e| Status::internal(format!("recording the grant failed: {e}")))?
        .map_err(|e| {
            warn!(resource = %self.resource, error = %e, "Allocate refused: the grant cannot be recorded");
            Status::unavailable(format!(
                "cannot record the grant in the node checkpoint: {e}"
            ))
        })?;
        let mut out = Vec::with_capacity(grants.len());
        for (mut grant, (c, slice_id)) in grants
            .into_iter()
            .zip(req.container_requests.iter().zip(minted))
        {
            info!(resource = %self.resource, devices = c.devices_ids.len(), slice = %slice_id, visible = %grant.envs.get("NVIDIA_VISIBLE_DEVICES").map_or("", String::as_str), "allocated");
            grant.envs.insert(SLICE_ID_ENV.to_string(), slice_id);
            out.push(grant.to_pb());
        }
        Ok(Response::new(dp::AllocateResponse {
            container_responses: out,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}
