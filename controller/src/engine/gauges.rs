//! The gauges computed from the engine's state and telemetry, pushed into [`crate::obs`].

use super::Controller;
use crate::reclaim::UsageView;

impl Controller {
    /// Sets the gauges computed from the controller's state and telemetry.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        let policy = self.reclaim.policy();
        let now = self.now_ms();
        m.gpu_utilization.clear();
        for uuid in self.telemetry.gpus() {
            if let Some(h) = self.telemetry.gpu_history(&uuid)
                && let Some(p) = h.history.latest()
            {
                m.gpu_utilization
                    .get_or_create(&crate::obs::GpuLabels {
                        node: h.node.clone(),
                        gpu: uuid.clone(),
                    })
                    .set(f64::from(p.sm_pct) / 100.0);
            }
        }
        let (live, finished, held): (Vec<(crate::model::slice::SliceRecord, f64)>, usize, usize) =
            self.with_state(|st| {
                let live = st
                    .live_slices()
                    .map(|r| (r.clone(), crate::reclaim::allocated_gpus(r, st)))
                    .collect();
                (live, st.finished_count(), st.held_for_energy_count())
            });
        m.finished_slices
            .set(i64::try_from(finished).unwrap_or(i64::MAX));
        m.finished_held_for_energy
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        m.slice_utilization.clear();
        m.idle_allocated.clear();
        m.allocated.clear();
        m.kubelet_allocations.clear();
        for (r, gpus) in &live {
            if crate::model::kubelet::is_kubelet_slice(r) {
                m.kubelet_allocations
                    .get_or_create(&crate::obs::KubeletLabels {
                        node: r.node.clone(),
                        tenant: r.tenant.clone(),
                        resource: greenslice_core::kubelet::resource_of(&r.spec.kind)
                            .unwrap_or_else(|| "invalid".into()),
                    })
                    .inc();
            }
            let t = crate::obs::TenantLabels {
                tenant: r.tenant.clone(),
            };
            m.allocated.get_or_create(&t).inc_by(*gpus);
            m.idle_allocated.get_or_create(&t).inc_by(0.0);
            if let Some(p) = self
                .telemetry
                .with_slice(&r.id, |s| s.history.latest().copied())
                .flatten()
            {
                m.slice_utilization
                    .get_or_create(&crate::obs::SliceLabels {
                        slice: r.id.clone(),
                        tenant: r.tenant.clone(),
                    })
                    .set(f64::from(p.sm_pct) / 100.0 / gpus.max(1e-9));
            }
            let rule = policy.resolve(&r.tenant, r.spec.slice_class.as_deref());
            let fresh = self
                .telemetry
                .latest_ms(&r.id)
                .is_some_and(|t| now - t <= crate::reclaim::decide::MAX_GAP_MS);
            if fresh
                && self
                    .telemetry
                    .idle_since(&r.id, &rule.test(*gpus))
                    .is_some()
            {
                m.idle_allocated.get_or_create(&t).inc_by(*gpus);
            }
        }
        let marks = self.reclaim.marks_snapshot();
        m.warned_slices.set(marks.warned.len() as i64);
        m.dry_run_candidates
            .set(self.reclaim.would_reclaim().len() as i64);
        m.history_bytes
            .set(i64::try_from(self.telemetry.history_bytes()).unwrap_or(i64::MAX));
        m.tracked_slices
            .set(self.telemetry.tracked_slices().len() as i64);
    }
}
