//! Idle reclaim: the thin I/O around the pure decision in [`decide`].
//!
//! Every `check_interval_s` (or whenever a test calls [`tick`]), the controller gathers its live
//! slices and their usage, asks [`decide::decide`] what to do at the injected clock's `now`, and
//! applies it: warnings go out as `IDLE_WARNING` events with the reclaim deadline; a reclaim releases
//! the slice with its reason recorded (`reclaimed: ...`) and announces `RECLAIMED`. A reclaim whose
//! agent is away leaves the slice RELEASING (committed); the agent's next registration finishes the
//! teardown (see `Controller::register_node`), so the MIG instance or share is not leaked.
//!
//! Warnings and keeps live in memory: after a controller restart, an idle slice is warned again with
//! a full grace period before any reclaim (never reclaimed without a warning).

pub mod bench;
pub mod decide;
pub mod policy;
pub mod relayout;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use greenslice_core::slice::SliceState;
use greenslice_proto::v1 as pb;
use tracing::{info, warn};

use crate::engine::Controller;
use crate::error::ControllerError;
use crate::slice::SliceRecord;
use crate::state::ClusterState;
use crate::telemetry::{IdleTest, SliceInfo, Telemetry};
pub use decide::{Action, Marks, UsageView, Warning, Withdrawn};
pub use policy::{IdlePolicy, IdleRule, Resolved};

/// How long the history of a released slice is kept, ms.
pub const KEEP_RELEASED_HISTORY_MS: i64 = 3_600_000;

/// Reason label of idle warnings and reclaims in metrics.
pub const REASON_IDLE: &str = "idle";

/// The reclaimer's state: the policy, and the warnings and keeps in force.
#[derive(Debug, Default)]
pub struct Reclaimer {
    policy: RwLock<IdlePolicy>,
    marks: Mutex<Marks>,
    /// Dry run: what the last check would have reclaimed.
    would: Mutex<Vec<Action>>,
}

impl Reclaimer {
    /// The policy in force.
    pub fn policy(&self) -> IdlePolicy {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The default rule's compute threshold, percent of a slice's capacity: the one energy
    /// accounting counts idle-allocated time with (per-tenant and per-class overrides decide
    /// reclaim only).
    pub fn threshold_pct(&self) -> f64 {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .threshold_pct
    }

    /// Replaces the policy (checked first).
    pub fn set_policy(&self, p: IdlePolicy) -> Result<(), policy::PolicyError> {
        p.validate()?;
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = p;
        Ok(())
    }

    /// Restores keeps committed before a restart (slice id, kept until ms).
    pub fn restore_keeps(&self, kept: impl IntoIterator<Item = (String, i64)>) {
        let mut m = self.marks();
        for (id, until) in kept {
            m.kept.insert(id, until);
        }
    }

    fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the warnings and keeps.
    pub fn marks_snapshot(&self) -> Marks {
        self.marks().clone()
    }

    /// Dry run: the slices the last check would have reclaimed ([`Action::WouldReclaim`]).
    pub fn would_reclaim(&self) -> Vec<Action> {
        self.would.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl UsageView for Telemetry {
    fn idle_since(&self, slice: &str, test: &IdleTest) -> Option<i64> {
        self.with_slice(slice, |s| {
            s.history
                .idle_since(|r| test.rollup_idle(r), decide::MAX_GAP_MS)
        })
        .flatten()
    }

    fn latest_ms(&self, slice: &str) -> Option<i64> {
        self.with_slice(slice, |s| s.history.latest().map(|p| p.at_ms))
            .flatten()
    }
}

/// Capacity a slice holds, in GPUs ([`greenslice_core::capacity::held_gpus`] on the model of the
/// GPU it holds); a profile no model has counts as one whole GPU, so it is never idle by rounding.
pub fn allocated_gpus(r: &SliceRecord, st: &ClusterState) -> f64 {
    let model = st
        .nodes
        .get(&r.node)
        .and_then(|n| n.gpus.iter().find(|g| r.gpus.first() == Some(&g.uuid)))
        .map(|g| g.model.clone())
        .or_else(|| r.spec.gpu_model.clone());
    greenslice_core::capacity::held_gpus(&r.spec.kind, model.as_ref()).unwrap_or(1.0)
}

/// Folds a node's accepted samples into the slice histories and the tenants' accounts.
pub fn record_usage(c: &Controller, node: &str, accepted: &[pb::GpuSample]) {
    if accepted.is_empty() {
        return;
    }
    let policy = c.reclaim.policy();
    let infos: std::collections::HashMap<String, SliceInfo> = c.with_state(|st| {
        accepted
            .iter()
            .flat_map(|s| &s.slices)
            .filter_map(|a| {
                let r = st.slice(&a.slice_id).filter(|r| r.is_live())?;
                let gpus = allocated_gpus(r, st);
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
    c.telemetry
        .record_usage(node, accepted, &|id| infos.get(id).cloned());
    if let Some(newest) = accepted.iter().map(|s| s.at_unix_ms).max() {
        let lag_s = (c.now_ms() - newest) as f64 / 1000.0;
        c.metrics.agent_sample_lag(node, lag_s);
    }
}

/// One check: decides on every live slice and applies the actions. Returns them.
pub async fn tick(c: &Controller) -> Vec<Action> {
    let now = c.now_ms();
    let policy = c.reclaim.policy();
    let marks = c.reclaim.marks_snapshot();
    let (records, gpus): (Vec<SliceRecord>, Vec<f64>) = c.with_state(|st| {
        st.live_slices()
            .map(|r| (r.clone(), allocated_gpus(r, st)))
            .unzip()
    });
    let candidates: Vec<decide::Candidate<'_>> = records
        .iter()
        .zip(&gpus)
        .map(|(slice, g)| decide::Candidate {
            slice,
            allocated_gpus: *g,
        })
        .collect();
    let actions = decide::decide(&candidates, &c.telemetry, &policy, &marks, now);
    let mut would = Vec::new();
    for a in &actions {
        apply(c, a, now, &mut would).await;
    }
    *c.reclaim.would.lock().unwrap_or_else(|p| p.into_inner()) = would;
    // Forget histories of slices released long ago (bounded memory).
    let keep: std::collections::HashSet<String> = c.with_state(|st| {
        st.all()
            .filter(|r| r.is_live() || now - r.updated_ms < KEEP_RELEASED_HISTORY_MS)
            .map(|r| r.id.clone())
            .collect()
    });
    c.telemetry.retain_slices(|id| keep.contains(id));
    crate::metrics::refresh(c);
    actions
}

async fn apply(c: &Controller, a: &Action, now: i64, would: &mut Vec<Action>) {
    match a {
        Action::Warn {
            slice,
            idle_since_ms,
            deadline_ms,
            why,
        } => {
            c.reclaim.marks().warned.insert(
                slice.clone(),
                Warning {
                    at_ms: now,
                    deadline_ms: *deadline_ms,
                    idle_since_ms: *idle_since_ms,
                },
            );
            c.metrics.idle_warning(REASON_IDLE);
            if let Ok(r) = c.get(slice) {
                info!(slice = %slice, tenant = %r.tenant, deadline_ms, "{why}; warned");
                c.emit_event(pb::SliceEvent {
                    kind: pb::SliceEventKind::IdleWarning as i32,
                    slice: Some(r.to_pb()),
                    message: format!(
                        "slice {slice} is {why}; it will be reclaimed at {deadline_ms} ms unless used or kept (greenslice keep {slice} --for 2h)"
                    ),
                    deadline_unix_ms: *deadline_ms,
                    at_unix_ms: now,
                });
            }
        }
        Action::Reclaim { slice, reason, .. } => {
            c.reclaim.marks().warned.remove(slice);
            match c.release(slice, reason).await {
                Ok(r) => {
                    c.metrics.reclaimed(REASON_IDLE);
                    info!(slice = %slice, tenant = %r.tenant, state = r.state.as_str(), "{reason}");
                    c.emit_event(pb::SliceEvent {
                        kind: pb::SliceEventKind::Reclaimed as i32,
                        slice: Some(r.to_pb()),
                        message: format!("slice {slice} {reason}"),
                        deadline_unix_ms: 0,
                        at_unix_ms: c.now_ms(),
                    });
                }
                Err(e) => warn!(slice = %slice, error = %e, "reclaim failed"),
            }
        }
        Action::Withdraw { slice, why } => {
            if c.reclaim.marks().warned.remove(slice).is_some() {
                info!(slice = %slice, ?why, "idle warning withdrawn");
            }
        }
        Action::ForgetKeep { slice } => {
            c.reclaim.marks().kept.remove(slice);
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
    c: &Controller,
    id: &str,
    tenant: &str,
    for_ms: i64,
) -> Result<(SliceRecord, i64), ControllerError> {
    let r = c.get(id)?;
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
    let rule = c
        .reclaim
        .policy()
        .resolve(&r.tenant, r.spec.slice_class.as_deref());
    if for_ms <= 0 || for_ms > rule.max_keep_ms {
        return Err(ControllerError::BadRequest(format!(
            "keep duration must be within 1 s and {} (the idle policy's max_keep_s for this slice), got {} s",
            decide::human_duration(rule.max_keep_ms),
            for_ms / 1000
        )));
    }
    let until = c.now_ms() + for_ms;
    // Durable first: an acknowledged keep survives a controller restart.
    let r = c.record_keep(id, until).await?;
    let mut m = c.reclaim.marks();
    m.kept.insert(id.to_string(), until);
    m.warned.remove(id);
    info!(slice = %id, until, "kept from idle reclaim");
    Ok((r, until))
}

/// Runs [`tick`] every `check_interval_s` (real time; decisions use the controller's clock) until
/// the returned task is aborted.
pub fn spawn(c: Arc<Controller>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let every = c.reclaim.policy().check_interval_s.max(1);
            tokio::time::sleep(Duration::from_secs(every)).await;
            tick(&c).await;
        }
    })
}

/// Waste accounting over `[from_ms, to_ms)` for the controller's slices (live and ended) and usage
/// accounts: allocated, used, idle-allocated and reclaimed GPU-hours per tenant and for the cluster.
/// See [`crate::telemetry::accounting`] for the definitions.
pub fn waste(c: &Controller, from_ms: i64, to_ms: i64) -> crate::telemetry::WasteReport {
    use crate::telemetry::accounting::{Allocation, RECLAIM_REASON_PREFIX};
    let allocs: Vec<Allocation> = c.with_state(|st| {
        st.all()
            .filter(|r| !matches!(r.state, SliceState::Pending | SliceState::Failed))
            .map(|r| Allocation {
                tenant: r.tenant.clone(),
                gpus: allocated_gpus(r, st),
                from_ms: r.created_ms,
                to_ms: (r.state == SliceState::Released).then_some(r.updated_ms),
                reclaimed: r.reason.starts_with(RECLAIM_REASON_PREFIX),
            })
            .collect()
    });
    crate::telemetry::accounting(
        &allocs,
        &|t| c.telemetry.tenant_hours(t, from_ms, to_ms),
        from_ms,
        to_ms,
    )
}
