//! OpsService: inventory, drains, usage and energy reports.

use std::sync::Arc;

use greenslice_core::convert::gpu_to_pb;
use greenslice_core::mig;
use greenslice_proto::v1 as pb;
use pb::ops_service_server::OpsService;
use tonic::{Request, Response, Status};

use crate::engine::Controller;

/// The ops API.
#[derive(Debug, Clone)]
pub struct OpsApi {
    pub controller: Arc<Controller>,
}

/// Builds one page of the inventory answer from the controller's state (see
/// `OpsService.Inventory`).
pub fn inventory(
    controller: &Controller,
    r: &pb::InventoryRequest,
) -> Result<pb::InventoryResponse, Status> {
    let crate::engine::InventoryPage {
        nodes,
        view,
        slices,
        gpus_total,
        allocated_milli,
        nodes_total,
        next_page_token,
    } = controller.inventory_page(r.page_size, &r.page_token)?;
    let mut capacity = Vec::new();
    for n in &view.nodes {
        for g in &n.gpus {
            let held = slices.iter().filter(|s| s.gpus.contains(&g.uuid)).count() as u32;
            capacity.push(pb::GpuCapacity {
                node: n.name.clone(),
                gpu_uuid: g.uuid.clone(),
                model: g.model.name().to_string(),
                mig_enabled: g.mig_enabled,
                free_milli: g.free_milli(),
                free_memory_bytes: if g.mig_enabled {
                    let used = u64::from(mig::used_mask(&g.model, &g.mig_layout).count_ones());
                    // 8 memory slices, 4 on an A30.
                    let all = u64::from(
                        mig::table(&g.model).map_or(mig::MEMORY_SLICES, |t| t.memory_slices),
                    );
                    g.memory_bytes / all * all.saturating_sub(used)
                } else if g.exclusive {
                    0
                } else {
                    g.memory_bytes.saturating_sub(g.used_memory_bytes)
                },
                placeable_profiles: crate::placement::placeable_mig(g, n.mig_create)
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                slices: held,
                healthy: g.healthy,
            });
        }
    }
    let mut slices: Vec<pb::Slice> = slices.iter().map(super::slice_to_pb).collect();
    slices.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(pb::InventoryResponse {
        gpus_total: u32::try_from(gpus_total).unwrap_or(u32::MAX),
        nodes_total: u32::try_from(nodes_total).unwrap_or(u32::MAX),
        next_page_token,
        nodes: nodes
            .iter()
            .map(|n| pb::NodeInfo {
                name: n.name.clone(),
                cpu_milli: n.cpu_milli,
                memory_bytes: n.memory_bytes,
                gpus: n.gpus.iter().map(gpu_to_pb).collect(),
                connected: n.connected,
                backend: n.backend.clone(),
                drained: n.drained,
                capabilities: n
                    .capabilities
                    .as_ref()
                    .map(greenslice_core::convert::capabilities_to_pb),
            })
            .collect(),
        capacity,
        slices,
        allocated_milli,
    })
}

/// Builds the energy report for a period from the controller's attributed intervals and, for whole
/// hours before them, the stored hourly energy history.
pub async fn energy_report(
    controller: &Controller,
    from_ms: i64,
    to_ms: i64,
    tenant: &str,
) -> Result<crate::report::Report, Status> {
    if !tenant.is_empty() {
        greenslice_core::slice::validate_tenant(tenant)
            .map_err(|e| Status::from(crate::error::ControllerError::Invalid(e)))?;
    }
    let now = controller.now_ms();
    let to = if to_ms == 0 {
        now.saturating_add(1)
    } else {
        to_ms
    };
    if from_ms < 0 || to < 0 || from_ms >= to {
        return Err(super::status::invalid_field(
            "from_unix_ms",
            format!("the period must satisfy 0 <= from < to (got from {from_ms}, to {to_ms})"),
        ));
    }
    let (from, to) = (from_ms as u64, to as u64);
    let sources = controller
        .energy_sources(from, to)
        .await
        .map_err(Status::from)?;
    let mut report = crate::report::build_from(
        &sources,
        from,
        to,
        (!tenant.is_empty()).then_some(tenant),
        controller.idle_threshold_pct(),
    );
    let waste = controller.waste(from_ms, to as i64);
    let reclaimed: Vec<(String, f64, u32)> = waste
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.reclaimed_gpu_h, t.reclaimed_slices))
        .collect();
    crate::report::add_reclaimed(&mut report, &reclaimed);
    if let Some((pf, pt)) = crate::report::previous_period(from, to) {
        let prev = controller
            .energy_sources(pf, pt)
            .await
            .map_err(Status::from)?;
        crate::report::add_previous(&mut report, &prev, controller.idle_threshold_pct());
    }
    Ok(report)
}

/// The node record, or NOT_FOUND.
fn node_record(
    controller: &Controller,
    node: &str,
) -> Result<crate::model::state::NodeRecord, Status> {
    controller
        .with_state(|st| st.nodes.get(node).cloned())
        .ok_or_else(|| crate::error::ControllerError::NodeNotFound(node.to_string()).into())
}

/// Drains a node and says what it did to the node's slices (see `OpsService.DrainNode`).
pub async fn drain_node(
    controller: &Controller,
    node: &str,
) -> Result<pb::DrainNodeResponse, Status> {
    super::validate::node(node)?;
    let before = node_record(controller, node)?;
    let mut lost = controller.drain_node(node).await?;
    lost.sort();
    let kept: Vec<String> = {
        let mut ids: Vec<String> = controller
            .list("", node, false)
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.sort();
        ids
    };
    Ok(pb::DrainNodeResponse {
        node: node.to_string(),
        connected: before.connected,
        was_drained: before.drained,
        lost_slice_ids: lost,
        kept_slice_ids: kept,
    })
}

/// Makes a drained node schedulable again (see `OpsService.UndrainNode`).
pub fn undrain_node(
    controller: &Controller,
    node: &str,
) -> Result<pb::UndrainNodeResponse, Status> {
    super::validate::node(node)?;
    let before = node_record(controller, node)?;
    controller.undrain_node(node)?;
    Ok(pb::UndrainNodeResponse {
        node: node.to_string(),
        was_drained: before.drained,
        connected: before.connected,
    })
}

#[tonic::async_trait]
impl OpsService for OpsApi {
    async fn drain_node(
        &self,
        req: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let r = req.into_inner();
        // Run to completion even if the caller goes away: marking slices lost is several commits.
        let c = self.controller.clone();
        tokio::spawn(async move { drain_node(&c, &r.node).await })
            .await
            .map_err(|e| Status::internal(format!("drain task failed: {e}")))?
            .map(Response::new)
    }

    async fn undrain_node(
        &self,
        req: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::UndrainNodeResponse>, Status> {
        undrain_node(&self.controller, &req.into_inner().node).map(Response::new)
    }

    async fn energy_report(
        &self,
        req: Request<pb::EnergyReportRequest>,
    ) -> Result<Response<pb::EnergyReportResponse>, Status> {
        let p = crate::auth::principal(&req)?;
        let r = req.into_inner();
        super::validate::energy_report(&r)?;
        let tenant = p.act_as(&r.tenant)?;
        let mut report =
            energy_report(&self.controller, r.from_unix_ms, r.to_unix_ms, &tenant).await?;
        if p.confined_to().is_some() {
            // A tenant sees its own rows and the cluster totals, not other tenants' GPUs.
            report.gpus.clear();
            report.series.gpu_util_pct.clear();
            report.series.tenant_kwh.retain(|t, _| *t == tenant);
            report.gpu_hours_reclaimed = 0.0;
        }
        let report_json =
            serde_json::to_string(&report).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::EnergyReportResponse { report_json }))
    }

    async fn inventory(
        &self,
        req: Request<pb::InventoryRequest>,
    ) -> Result<Response<pb::InventoryResponse>, Status> {
        inventory(&self.controller, req.get_ref()).map(Response::new)
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let p = crate::auth::principal(&req)?;
        let r = req.into_inner();
        if p.confined_to().is_some() {
            super::validate::usage(&r)?;
            if !r.node.is_empty() {
                return Err(Status::permission_denied(format!(
                    "{} may query its own slices or its tenant, not a node's GPUs",
                    p.describe()
                )));
            }
            if !r.tenant.is_empty() {
                p.act_as(&r.tenant)?;
            }
            if !r.slice_id.is_empty() {
                let s = self.controller.get(&r.slice_id)?;
                p.may_access(&s.tenant, &r.slice_id)?;
            }
        }
        super::usage::usage(&self.controller, &r).map(Response::new)
    }
}
