//! The reclaim loop: the thin I/O around the pure decision in [`crate::reclaim::decide`].
//!
//! Every `check_interval_s` (or whenever a test calls [`Controller::reclaim_tick`]), the controller
//! gathers its live slices and their usage, asks `decide` what to do at the injected clock's `now`,
//! and applies it: warnings go out as `IDLE_WARNING` events with the reclaim deadline; a reclaim
//! releases the slice with its reason recorded (`reclaimed: ...`) and announces `RECLAIMED`. A
//! reclaim whose agent is away leaves the slice RELEASING (committed); the agent's next
//! registration finishes the teardown (see [`Controller::register_node`]), so the MIG instance or
//! share is not leaked.

use std::sync::Arc;
use std::time::Duration;

use crate::model::events::{EventKind, SliceEvent};
use greenslice_core::sample::AttributedSample;
use greenslice_core::slice::SliceState;
use tracing::{info, warn};

use super::Controller;
use crate::error::ControllerError;
use crate::model::slice::SliceRecord;
use crate::reclaim::{Action, KEEP_RELEASED_HISTORY_MS, REASON_IDLE, Warning};
use crate::telemetry::SliceInfo;

impl Controller {
    /// Folds a node's accepted samples into the slice histories and the tenants' accounts.
    pub(super) fn record_usage(&self, node: &str, accepted: &[AttributedSample]) {
        if accepted.is_empty() {
            return;
        }
        let policy = self.reclaim.policy();
        let infos: std::collections::HashMap<String, SliceInfo> = self.with_state(|st| {
            accepted
                .iter()
                .flat_map(|s| &s.slices)
                .filter_map(|a| {
                    let r = st.slice(&a.slice_id).filter(|r| r.is_live())?;
                    let gpus = crate::reclaim::allocated_gpus(r, st);
                    let rule = policy.resolve(&r.tenant, r.spec.slice_class.as_deref());
                    Some((
                        r.id.clone(),
                        SliceInfo {
                            tenant: r.tenant.clone(),
                            node: r.node.clone(),
                            allocated_gpus: gpus,
                            idle: rule.test(gpus),
                        },
                    ))
                })
                .collect()
        });
        self.telemetry
            .record_usage(node, accepted, &|id| infos.get(id).cloned());
        if let Some(newest) = accepted.iter().map(|s| s.at_unix_ms).max() {
            let lag_s = (self.now_ms() - newest) as f64 / 1000.0;
            self.metrics.agent_sample_lag(node, lag_s);
        }
    }

    /// One check: decides on every live slice and applies the actions. Returns them.
    pub async fn reclaim_tick(&self) -> Vec<Action> {
        let now = self.now_ms();
        let policy = self.reclaim.policy();
        let marks = self.reclaim.marks_snapshot();
        let (records, gpus): (Vec<SliceRecord>, Vec<f64>) = self.with_state(|st| {
            st.live_slices()
                .map(|r| (r.clone(), crate::reclaim::allocated_gpus(r, st)))
                .unzip()
        });
        let candidates: Vec<crate::reclaim::decide::Candidate<'_>> = records
            .iter()
            .zip(&gpus)
            .map(|(slice, g)| crate::reclaim::decide::Candidate {
                slice,
                allocated_gpus: *g,
            })
            .collect();
        let actions =
            crate::reclaim::decide::decide(&candidates, &self.telemetry, &policy, &marks, now);
        let mut would = Vec::new();
        for a in &actions {
            self.apply_reclaim(a, now, &mut would).await;
        }
        self.reclaim.set_would_reclaim(would);
        // Forget histories of slices released long ago (bounded memory).
        let keep: std::collections::HashSet<String> = self.with_state(|st| {
            st.all()
                .filter(|r| r.is_live() || now - r.updated_ms < KEEP_RELEASED_HISTORY_MS)
                .map(|r| r.id.clone())
                .collect()
        });
        self.telemetry.retain_slices(|id| keep.contains(id));
        self.refresh_gauges();
        actions
    }

    async fn apply_reclaim(&self, a: &Action, now: i64, would: &mut Vec<Action>) {
        match a {
            Action::Warn {
                slice,
                idle_since_ms,
                deadline_ms,
                why,
            } => {
                self.reclaim.marks().warned.insert(
                    slice.clone(),
                    Warning {
                        at_ms: now,
                        deadline_ms: *deadline_ms,
                        idle_since_ms: *idle_since_ms,
                    },
                );
                self.metrics.idle_warning(REASON_IDLE);
                if let Ok(r) = self.get(slice) {
                    info!(slice = %slice, tenant = %r.tenant, deadline_ms, "{why}; warned");
                    self.emit_event(SliceEvent {
                        kind: EventKind::IdleWarning,
                        slice: r,
                        message: format!(
                            "slice {slice} is {why}; it will be reclaimed at {deadline_ms} ms unless used or kept (greenslice keep {slice} --for 2h)"
                        ),
                        deadline_unix_ms: *deadline_ms,
                        at_unix_ms: now,
                        revision: 0,
                    });
                }
            }
            Action::Reclaim {
                slice,
                reason,
                idle_since_ms,
            } if self
                .get(slice)
                .is_ok_and(|r| crate::model::kubelet::is_kubelet_slice(&r)) =>
            {
                let Ok(r) = self.get(slice) else { return };
                match self.reclaim_pod_slice(&r, reason).await {
                    Ok(true) => {
                        self.reclaim.marks().warned.remove(slice);
                        self.metrics.reclaimed(REASON_IDLE);
                        info!(slice = %slice, tenant = %r.tenant, "{reason}: pod evicted");
                        self.emit_event(SliceEvent {
                            kind: EventKind::Reclaimed,
                            slice: r.clone(),
                            message: format!(
                                "slice {slice} {reason}: its pod was evicted (the slice ends when the pod is gone)"
                            ),
                            deadline_unix_ms: 0,
                            at_unix_ms: self.now_ms(),
                            revision: 0,
                        });
                    }
                    Ok(false) => {
                        // Report only: shown as would-reclaim, as in a dry run; the warning stays
                        // (no new warning every grace period).
                        tracing::debug!(slice = %slice, tenant = %r.tenant, "idle pod slice; report only (its node's kubelet.pod_reclaim is not \"evict\")");
                        would.push(Action::WouldReclaim {
                            slice: slice.clone(),
                            idle_since_ms: *idle_since_ms,
                            at_ms: now,
                        });
                    }
                    Err(e) => warn!(slice = %slice, error = %e, "pod eviction failed"),
                }
            }
            Action::Reclaim {
                slice,
                idle_since_ms,
                ..
            } if self
                .get(slice)
                .is_ok_and(|r| crate::model::dra::is_dra_slice(&r)) =>
            {
                // A ResourceClaim's slice ends with its pods; the controller does not take it
                // from under them (no DRA eviction yet): report only, like a dry run.
                tracing::debug!(slice = %slice, "idle ResourceClaim slice; report only");
                would.push(Action::WouldReclaim {
                    slice: slice.clone(),
                    idle_since_ms: *idle_since_ms,
                    at_ms: now,
                });
            }
            Action::Reclaim { slice, reason, .. } => {
                self.reclaim.marks().warned.remove(slice);
                match self.release(slice, reason).await {
                    Ok(r) => {
                        self.metrics.reclaimed(REASON_IDLE);
                        info!(slice = %slice, tenant = %r.tenant, state = r.state.as_str(), "{reason}");
                        self.emit_event(SliceEvent {
                            kind: EventKind::Reclaimed,
                            slice: r.clone(),
                            message: format!("slice {slice} {reason}"),
                            deadline_unix_ms: 0,
                            at_unix_ms: self.now_ms(),
                            revision: 0,
                        });
                    }
                    Err(e) => warn!(slice = %slice, error = %e, "reclaim failed"),
                }
            }
            Action::Withdraw { slice, why } => {
                if self.reclaim.marks().warned.remove(slice).is_some() {
                    info!(slice = %slice, ?why, "idle warning withdrawn");
                }
            }
            Action::ForgetKeep { slice } => {
                self.reclaim.marks().kept.remove(slice);
            }
            Action::WouldReclaim {
                slice,
                idle_since_ms,
                at_ms,
            } => {
                info!(slice = %slice, idle_since_ms, at_ms, "dry run: would reclaim");
                would.push(a.clone());
            }
        }
    }

    /// Keeps a slice from idle reclaim for `for_ms` (at most the policy's `max_keep_s` for it). When
    /// `tenant` is not empty it must own the slice. Returns the slice and the keep's end, ms.
    pub async fn keep(
        &self,
        id: &str,
        tenant: &str,
        for_ms: i64,
    ) -> Result<(SliceRecord, i64), ControllerError> {
        let r = self.get(id)?;
        if !tenant.is_empty() && r.tenant != tenant {
            return Err(ControllerError::PermissionDenied(format!(
                "slice {id} belongs to another tenant"
            )));
        }
        if r.state != SliceState::Active {
            return Err(ControllerError::WrongState {
                id: id.to_string(),
                state: r.state.as_str(),
                what: "only an active slice can be kept".into(),
            });
        }
        let rule = self
            .reclaim
            .policy()
            .resolve(&r.tenant, r.spec.slice_class.as_deref());
        if for_ms <= 0 || for_ms > rule.max_keep_ms {
            return Err(ControllerError::BadRequest(format!(
                "keep duration must be within 1 s and {} (the idle policy's max_keep_s for this slice), got {} s",
                crate::reclaim::decide::human_duration(rule.max_keep_ms),
                for_ms / 1000
            )));
        }
        let until = self.now_ms() + for_ms;
        // Durable first: an acknowledged keep survives a controller restart.
        let r = self.record_keep(id, until).await?;
        let mut m = self.reclaim.marks();
        m.kept.insert(id.to_string(), until);
        m.warned.remove(id);
        info!(slice = %id, until, "kept from idle reclaim");
        Ok((r, until))
    }

    /// Runs [`tick`] every `check_interval_s` (real time; decisions use the controller's clock) until
    /// the returned task is aborted.
    pub fn spawn_reclaim(c: Arc<Controller>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let every = c.reclaim.policy().check_interval_s.max(1);
                tokio::time::sleep(Duration::from_secs(every)).await;
                c.reclaim_tick().await;
            }
        })
    }

    /// Waste accounting over `[from_ms, to_ms)` for the controller's slices (live and ended) and usage
    /// accounts: allocated, used, idle-allocated and reclaimed GPU-hours per tenant and for the cluster.
    /// See [`crate::telemetry::accounting`] for the definitions.
    pub fn waste(&self, from_ms: i64, to_ms: i64) -> crate::telemetry::WasteReport {
        use crate::telemetry::accounting::{Allocation, RECLAIM_REASON_PREFIX};
        let allocs: Vec<Allocation> = self.with_state(|st| {
            st.all()
                .filter(|r| !matches!(r.state, SliceState::Pending | SliceState::Failed))
                .map(|r| Allocation {
                    tenant: r.tenant.clone(),
                    gpus: crate::reclaim::allocated_gpus(r, st),
                    from_ms: r.created_ms,
                    to_ms: (r.state == SliceState::Released).then_some(r.updated_ms),
                    reclaimed: r.reason.starts_with(RECLAIM_REASON_PREFIX),
                })
                .collect()
        });
        crate::telemetry::accounting(
            &allocs,
            &|t| self.telemetry.tenant_hours(t, from_ms, to_ms),
            from_ms,
            to_ms,
        )
    }
}
