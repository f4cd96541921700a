//! Slices the kubelet granted through the device plugin, folded into the ledger from the agents'
//! reports.

use crate::model::events::EventKind;

use super::Controller;
use crate::agents::AgentAction;
use crate::error::ControllerError;
use crate::ledger::{Op, SUBMISSION_MAX_OPS};
use crate::model::kubelet::{KubeletGrant, is_kubelet_slice, kubelet_slice_changes};
use crate::model::slice::SliceRecord;

/// Slices of a kubelet report per submission: each takes a record and an event, and etcd's
/// transaction also one range delete pruning the events, all within [`SUBMISSION_MAX_OPS`].
const KUBELET_PART: usize = (SUBMISSION_MAX_OPS - 1) / 2;

impl Controller {
    /// Records whether a node's agent lets idle pods be evicted (from its kubelet report).
    pub fn set_pod_eviction(&self, node: &str, allowed: bool) {
        if let Some(n) = self.lock().nodes.get_mut(node) {
            n.pod_eviction = allowed;
        }
    }

    /// Reclaims an idle kubelet slice: its pod is evicted through the node's agent when the node
    /// allows it; otherwise the slice is only reported (a pod's devices are the kubelet's to free,
    /// never released behind its back). The slice ends when the pod is gone from pod-resources.
    pub(super) async fn reclaim_pod_slice(
        &self,
        r: &SliceRecord,
        reason: &str,
    ) -> Result<bool, ControllerError> {
        let allowed = self.with_state(|st| st.nodes.get(&r.node).is_some_and(|n| n.pod_eviction));
        if !allowed {
            return Ok(false);
        }
        self.call(
            &r.node,
            AgentAction::EvictPod {
                slice_id: r.id.clone(),
                reason: reason.to_string(),
            },
        )
        .await?;
        Ok(true)
    }

    /// Records the pods' device allocations a node's kubelet made ([`KubeletGrant`]s, checked by the
    /// API), as slices of the pods' tenants
    /// (level-triggered: the report is the node's whole truth). Kubelet slices hold no agent-side
    /// state, so they are never torn down by the controller; their pod's end releases them.
    pub async fn apply_kubelet_allocations(
        &self,
        node: &str,
        grants: &[KubeletGrant],
    ) -> Result<usize, ControllerError> {
        let now = self.clock.now_ms();
        let changes = {
            let st = self.lock();
            let existing: Vec<SliceRecord> = st
                .live_on_node(node)
                .filter(|s| is_kubelet_slice(s))
                .cloned()
                .collect();
            kubelet_slice_changes(node, &existing, grants, now)
        };
        let all: Vec<SliceRecord> = changes
            .upsert
            .iter()
            .chain(&changes.released)
            .cloned()
            .collect();
        if all.is_empty() {
            return Ok(0);
        }
        // A report may change more slices than etcd takes in one transaction (a restarted agent
        // reports every pod at once). Each part is durable before memory shows it, with the
        // events of its slices in the same commit (a record and its event: two ops, see
        // `KUBELET_PART`); memory takes the part before its events are delivered. Should a later
        // part fail, the report is level-triggered and the next one redoes what is missing.
        for part in all.chunks(KUBELET_PART) {
            let ops = part.iter().cloned().map(Op::Put).collect();
            let events = part
                .iter()
                .map(|r| {
                    self.event(
                        EventKind::StateChanged,
                        r,
                        format!("kubelet slice {} is {}", r.id, r.state.as_str()),
                    )
                })
                .collect();
            Self::durable(self.queue_events(ops, events, part.to_vec())).await?;
        }
        Ok(all.len())
    }
}
