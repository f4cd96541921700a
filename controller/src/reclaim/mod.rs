//! Idle reclaim, the pure part: the policy ([`policy`]), what to do with each live slice at a given
//! time ([`decide`]), and the [`Reclaimer`]'s warnings and keeps. The engine's reclaim loop
//! (`engine/reclaim_loop.rs`) gathers the inputs and carries the decisions out.
//!
//! Warnings and keeps live in memory: after a controller restart, an idle slice is warned again with
//! a full grace period before any reclaim (never reclaimed without a warning).
//!
//! Imports the cluster model, placement's views and telemetry; nothing of the engine, API or server.

pub mod decide;
pub mod policy;

use std::sync::{Mutex, MutexGuard, RwLock};

use crate::model::slice::SliceRecord;
use crate::model::state::ClusterState;
use crate::telemetry::{IdleTest, Telemetry};
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

    /// The warnings and keeps, for the reclaim loop to update.
    pub(crate) fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the warnings and keeps.
    pub fn marks_snapshot(&self) -> Marks {
        self.marks().clone()
    }

    /// Records what the last check would have reclaimed (dry run).
    pub(crate) fn set_would_reclaim(&self, would: Vec<Action>) {
        *self.would.lock().unwrap_or_else(|p| p.into_inner()) = would;
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
