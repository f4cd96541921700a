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
}
