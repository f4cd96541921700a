//! A slice's way out: RELEASING committed, the agent tears down, RELEASED committed; teardowns the
//! hardware refused are retried until the node agrees.

use crate::agents::AgentAction;
use greenslice_core::slice::{SliceKind, SliceState};
use tracing::{info, warn};

use super::{Controller, RELEASE_BLOCKED};
use crate::error::ControllerError;
use crate::model::slice::SliceRecord;

impl Controller {
    /// Releases a slice: marks it releasing (committed), then tears it down on the agent. When the
    /// agent is unreachable the slice stays RELEASING and is torn down when the agent returns.
    pub async fn release(&self, id: &str, reason: &str) -> Result<SliceRecord, ControllerError> {
        self.release_as(id, reason, false).await
    }

    /// [`Controller::release`]; `by_claim` when the caller is the slice's ResourceClaim's own
    /// unprepare, the only one that may release a claim's slice.
    pub(super) async fn release_as(
        &self,
        id: &str,
        reason: &str,
        by_claim: bool,
    ) -> Result<SliceRecord, ControllerError> {
        let current = self.get(id)?;
        if crate::model::kubelet::is_kubelet_slice(&current) && current.is_live() {
            return Err(ControllerError::WrongState {
                id: id.to_string(),
                state: current.state.as_str(),
                what: "it belongs to a Kubernetes pod: delete the pod to release it".into(),
            });
        }
        if !by_claim && crate::model::dra::is_dra_slice(&current) && current.is_live() {
            return Err(ControllerError::WrongState {
                id: id.to_string(),
                state: current.state.as_str(),
                what: "it belongs to a Kubernetes ResourceClaim: delete the claim's pods to release it".into(),
            });
        }
        match current.state {
            SliceState::Released | SliceState::Failed => return Ok(current),
            SliceState::Pending => {
                return Err(ControllerError::WrongState {
                    id: id.to_string(),
                    state: current.state.as_str(),
                    what: "wait until it is active".into(),
                });
            }
            SliceState::Active => {
                let reason = reason.to_string();
                self.transition(id, |r| {
                    r.state = SliceState::Releasing;
                    r.reason = reason;
                })
                .await?;
            }
            SliceState::Releasing => {}
        }
        self.drive_release(id).await
    }

    /// Tears a RELEASING slice down on its agent; marks it RELEASED when done.
    pub async fn drive_release(&self, id: &str) -> Result<SliceRecord, ControllerError> {
        let r = self.get(id)?;
        if r.state != SliceState::Releasing {
            return Ok(r);
        }
        let result: Result<(), ControllerError> = async {
            match &r.spec.kind {
                SliceKind::Whole { .. } => {
                    for g in &r.gpus {
                        self.teardown(
                            &r,
                            g,
                            AgentAction::UnassignGpu {
                                gpu_uuid: g.clone(),
                                slice_id: r.id.clone(),
                            },
                        )
                        .await?;
                    }
                }
                SliceKind::Share { .. } => {
                    let g = r.gpus.first().cloned().unwrap_or_default();
                    self.teardown(
                        &r,
                        &g,
                        AgentAction::ClearShare {
                            gpu_uuid: g.clone(),
                            slice_id: r.id.clone(),
                        },
                    )
                    .await?;
                }
                SliceKind::Mig { .. } => {
                    let g = r.gpus.first().cloned().unwrap_or_default();
                    let lent = r.mig.as_ref().is_some_and(|m| m.lent);
                    if let Some(gi) = r.mig.as_ref().and_then(|m| m.gpu_instance_id) {
                        let (gpu_uuid, slice_id) = (g.clone(), r.id.clone());
                        let action = if lent {
                            AgentAction::ReleaseMig {
                                gpu_uuid,
                                gpu_instance_id: gi,
                                slice_id,
                            }
                        } else {
                            AgentAction::DestroyMig {
                                gpu_uuid,
                                gpu_instance_id: gi,
                                slice_id,
                            }
                        };
                        self.teardown(&r, &g, action).await?;
                        if lent {
                            self.lock().mirror_mig_returned(&r.node, &g, gi);
                        } else {
                            self.lock().mirror_mig_destroyed(&r.node, &g, gi);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                // RELEASING is durable and the agent tore the slice down: the release is safe to
                // acknowledge. RELEASED goes to the ledger behind it without being waited for; a
                // crash before it is durable leaves RELEASING, which recovery finishes when the
                // node registers (see `transition_in_background`).
                let s = self.transition_in_background(id, |r| {
                    r.state = SliceState::Released;
                    if r.reason.starts_with(RELEASE_BLOCKED) {
                        r.reason = "released once its node could tear it down".into();
                    }
                })?;
                info!(slice = %id, "slice released");
                Ok(s)
            }
            Err(ControllerError::AgentUnavailable { node, why }) => {
                warn!(slice = %id, %node, %why, "release queued until the agent returns");
                self.get(id)
            }
            Err(ControllerError::AgentRefused { node, error }) => {
                // The hardware said no (a MIG instance with processes still on it answers IN_USE):
                // the slice stays RELEASING, says why, and housekeeping tries again until the
                // hardware lets it go (`retry_refused_releases`).
                warn!(slice = %id, %node, %error, "teardown refused; retrying");
                let why =
                    format!("{RELEASE_BLOCKED}{node}: {error}; retried until the node agrees");
                if r.reason == why {
                    return Ok(r);
                }
                self.transition_in_background(id, |r| r.reason = why)
            }
            Err(e) => Err(e),
        }
    }

    /// Tries again every RELEASING slice whose teardown its (connected) node refused. Returns how
    /// many were released now.
    pub async fn retry_refused_releases(&self) -> usize {
        let blocked: Vec<String> = self.with_state(|st| {
            st.live_slices()
                .filter(|s| {
                    s.state == SliceState::Releasing && s.reason.starts_with(RELEASE_BLOCKED)
                })
                .filter(|s| self.agents.is_connected(&s.node))
                .map(|s| s.id.clone())
                .collect()
        });
        let mut done = 0;
        for id in blocked {
            if let Ok(r) = self.drive_release(&id).await
                && r.state == SliceState::Released
            {
                done += 1;
            }
        }
        done
    }

    /// Sends one teardown command. An agent that no longer holds the thing counts as done.
    pub(super) async fn teardown(
        &self,
        r: &SliceRecord,
        gpu: &str,
        action: AgentAction,
    ) -> Result<(), ControllerError> {
        match self.call(&r.node, action).await {
            Ok(_) => {}
            Err(ControllerError::AgentRefused { error, .. })
                if error.contains("no MIG instance") || error.contains("holds nothing") =>
            {
                warn!(slice = %r.id, %error, "already gone on the node");
            }
            Err(e) => return Err(e),
        }
        self.lock().mirror_cleared(&r.node, gpu, &r.id);
        Ok(())
    }
}
