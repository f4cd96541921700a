//! MIG re-layout without draining, carried out: when a MIG request fits nowhere, destroy the free
//! instances [`crate::placement::relayout::plan`] chose, so placement can create the profile.

use greenslice_core::slice::{SliceKind, SliceSpec};
use tracing::{info, warn};

use super::Controller;
use crate::placement::relayout::{mig_gpus, plan};
use crate::placement::{Request, feasible_on_node};

impl Controller {
    /// Before placing a MIG request: if it fits nowhere now, destroys the free instances of the best
    /// plan so that it fits. Returns true when instances were destroyed. Failures are logged; the request
    /// then fails with the usual "no room" answer.
    pub(super) async fn make_room(&self, spec: &SliceSpec) -> bool {
        let SliceKind::Mig { profile } = &spec.kind else {
            return false;
        };
        let req = Request {
            spec: spec.clone(),
            cpu_milli: 0,
            memory_bytes: 0,
        };
        let now = self.now_ms();
        let plan = self.with_state(|st| {
            let view = st.view();
            if view
                .nodes
                .iter()
                .any(|n| !feasible_on_node(n, &req).is_empty())
            {
                return None;
            }
            let gpus = mig_gpus(st, &|g| self.telemetry.latest(g), now);
            plan(&gpus, profile, spec.gpu_model.as_ref())
        });
        let Some(plan) = plan else {
            return false;
        };
        info!(node = %plan.node, gpu = %plan.gpu, destroy = ?plan.destroy, profile, start = plan.start, "MIG re-layout: destroying free instances");
        for gi in &plan.destroy {
            if let Err(e) = self.destroy_free_mig(&plan.node, &plan.gpu, *gi).await {
                warn!(node = %plan.node, gpu = %plan.gpu, gi, error = %e, "MIG re-layout stopped");
                return false;
            }
        }
        self.metrics.relayout();
        true
    }

    /// Clears the place `pin` names for an instance of `profile`: destroys the free instances
    /// (no live slice holds them) that overlap it, except one of the same profile at the same start,
    /// which the slice takes as it is. Does nothing on a node that may not create instances.
    pub(super) async fn make_room_at(&self, pin: &crate::placement::Pin, profile: &str) {
        let Some(start) = pin.mig_start else {
            return;
        };
        let doomed: Vec<u32> = self.with_state(|st| {
            let Some(node) = st.nodes.get(&pin.node) else {
                return Vec::new();
            };
            if !node.may_create_mig() {
                return Vec::new();
            }
            let Some(g) = node.gpus.iter().find(|g| g.uuid == pin.gpu_uuid) else {
                return Vec::new();
            };
            let Some(p) = greenslice_core::mig::profile(&g.model, profile) else {
                return Vec::new();
            };
            let (lo, hi) = (start, start.saturating_add(p.size));
            if g.mig_instances
                .iter()
                .any(|i| i.start == start && i.profile == profile && i.slice_id.is_none())
            {
                return Vec::new();
            }
            let held: std::collections::HashSet<u32> = st
                .live_on_node(&pin.node)
                .filter(|s| s.gpus.contains(&pin.gpu_uuid))
                .filter_map(|s| s.mig.as_ref()?.gpu_instance_id)
                .collect();
            g.mig_instances
                .iter()
                .filter(|i| i.slice_id.is_none() && !held.contains(&i.gpu_instance_id))
                .filter(|i| i.start < hi && lo < i.start.saturating_add(i.size))
                .map(|i| i.gpu_instance_id)
                .collect()
        });
        for gi in doomed {
            info!(node = %pin.node, gpu = %pin.gpu_uuid, gi, profile, start, "clearing a pinned MIG place: destroying a free instance");
            if let Err(e) = self.destroy_free_mig(&pin.node, &pin.gpu_uuid, gi).await {
                warn!(node = %pin.node, gpu = %pin.gpu_uuid, gi, error = %e, "cannot clear a pinned MIG place");
                return;
            }
        }
    }
}
