//! Nodes coming and going: registration, reconciling what the node reports with the ledger
//! (confirm, abandon, lose, re-lend), drain and undrain, disconnects and inventory updates.

use std::collections::BTreeMap;

use crate::agents::AgentAction;
use crate::model::events::EventKind;
use greenslice_core::inventory::{Gpu, NodeRegistration};
use greenslice_core::slice::{SliceKind, SliceState};
use tracing::{info, warn};

use super::Controller;
use crate::error::ControllerError;
use crate::model::slice::SliceRecord;
use crate::model::state::NodeRecord;

/// What reconciling a (re)registered node needs done. Decided under the state lock together with
/// the registration, against the inventory the agent reported, so slices that change afterwards
/// (through commands on the new session) are not misjudged.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reconcile {
    pub node: String,
    /// RELEASING slices to finish tearing down.
    pub release: Vec<String>,
    /// PENDING slices left by a crash whose hardware is all there: confirm them (ACTIVE).
    pub confirm: Vec<String>,
    /// PENDING slices left by a crash that are not (fully) on the hardware: undo, mark FAILED.
    pub abandon: Vec<String>,
    /// ACTIVE slices whose hardware is gone: mark lost.
    pub lost: Vec<String>,
    /// Slices holding a lent MIG instance the agent no longer names (it restarted, and lendings
    /// live in its memory): lend it to them again, so their usage is attributed.
    pub relend: Vec<String>,
    /// Only when the agent said it lost its own record (`Register.ownership_rebuilt`): the live
    /// slices on the node that are not lost, sent back in `Registered.adopt` for it to take back.
    pub adopt: Vec<SliceRecord>,
}

/// Whether the GPUs `r` needs are still there for it, judged from the hardware alone (a
/// registration whose agent lost its record names no shares or whole GPUs): a share's or whole
/// slice's GPUs present, out of MIG mode and not held whole by another slice; a MIG slice's
/// instance present.
fn hardware_there(r: &SliceRecord, gpus: &[Gpu]) -> bool {
    let usable = |u: &String| {
        gpus.iter().find(|g| g.uuid == *u).is_some_and(|g| {
            !g.mig_enabled
                && g.whole_slice_id
                    .as_deref()
                    .is_none_or(|w| w == r.id.as_str())
        })
    };
    match &r.spec.kind {
        SliceKind::Whole { .. } => !r.gpus.is_empty() && r.gpus.iter().all(usable),
        SliceKind::Share { .. } => r.gpus.first().is_some_and(usable),
        SliceKind::Mig { .. } => presence(r, gpus) == Presence::All,
    }
}

/// How much of a slice the hardware holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    All,
    Some,
    None,
}

/// Whether the reported GPUs hold what `r` needs.
fn presence(r: &SliceRecord, gpus: &[Gpu]) -> Presence {
    let gpu = |u: &str| gpus.iter().find(|g| g.uuid == u);
    let held: Vec<bool> = match &r.spec.kind {
        SliceKind::Whole { .. } => r
            .gpus
            .iter()
            .map(|u| gpu(u).is_some_and(|g| g.whole_slice_id.as_deref() == Some(r.id.as_str())))
            .collect(),
        SliceKind::Share { .. } => r
            .gpus
            .iter()
            .take(1)
            .map(|u| gpu(u).is_some_and(|g| g.shares.iter().any(|s| s.slice_id == r.id)))
            .collect(),
        SliceKind::Mig { .. } => r
            .gpus
            .iter()
            .take(1)
            .map(|u| gpu(u).is_some_and(|g| mig_instance_of(r, g).is_some()))
            .collect(),
    };
    match (held.iter().all(|h| *h), held.iter().any(|h| *h)) {
        (true, true) => Presence::All,
        (_, true) => Presence::Some,
        _ => Presence::None,
    }
}

/// The MIG instance on `g` that belongs to `r`: the one naming it, or the one it recorded (same id
/// and start, and the same MIG UUID where both are known: a driver reload makes new instances
/// that may take the old ids).
fn mig_instance_of<'a>(
    r: &SliceRecord,
    g: &'a Gpu,
) -> Option<&'a greenslice_core::inventory::MigInstance> {
    g.mig_instances.iter().find(|i| {
        i.slice_id.as_deref() == Some(r.id.as_str())
            || r.mig.as_ref().is_some_and(|m| {
                m.gpu_instance_id == Some(i.gpu_instance_id)
                    && m.start == i.start
                    && i.slice_id.is_none()
                    && m.mig_uuid
                        .as_deref()
                        .is_none_or(|u| u.is_empty() || i.mig_uuid.is_empty() || u == i.mig_uuid)
            })
    })
}

impl Controller {
    /// Records a (re)connected agent's node and inventory, and decides how to reconcile the
    /// ledger's slices on that node with what the hardware holds (see [`Controller::reconcile`]).
    pub fn register_node(&self, reg: &NodeRegistration) -> Reconcile {
        let mut st = self.lock();
        let gpus: Vec<Gpu> = reg.gpus.clone();
        let drained = st.nodes.get(&reg.node).is_some_and(|n| n.drained);
        // An agent that lost its record reports only what the hardware showed: its slices are
        // judged by whether their hardware is there, and it is given them back.
        let rebuilt = reg.ownership_rebuilt;
        let mut plan = Reconcile {
            node: reg.node.clone(),
            ..Default::default()
        };
        for s in st.live_on_node(&reg.node) {
            match s.state {
                SliceState::Releasing => plan.release.push(s.id.clone()),
                SliceState::Pending if st.recovering.contains(&s.id) => match presence(s, &gpus) {
                    Presence::All => plan.confirm.push(s.id.clone()),
                    _ => plan.abandon.push(s.id.clone()),
                },
                SliceState::Active
                    if presence(s, &gpus) != Presence::All
                        && !(rebuilt && hardware_there(s, &gpus)) =>
                {
                    plan.lost.push(s.id.clone())
                }
                _ => {}
            }
            if rebuilt
                && match s.state {
                    SliceState::Active => !plan.lost.contains(&s.id),
                    SliceState::Releasing => true,
                    SliceState::Pending => plan.confirm.contains(&s.id),
                    _ => false,
                }
            {
                plan.adopt.push(s.clone());
            }
            let unnamed = s.mig.as_ref().is_some_and(|m| m.lent)
                && s.gpus
                    .first()
                    .and_then(|u| gpus.iter().find(|g| g.uuid == *u))
                    .and_then(|g| mig_instance_of(s, g))
                    .is_some_and(|i| i.slice_id.is_none());
            if unnamed && (s.state == SliceState::Active || plan.confirm.contains(&s.id)) {
                plan.relend.push(s.id.clone());
            }
        }
        st.touch_all();
        let pod_eviction = st.nodes.get(&reg.node).is_some_and(|n| n.pod_eviction);
        st.nodes.insert(
            reg.node.clone(),
            NodeRecord {
                name: reg.node.clone(),
                cpu_milli: reg.cpu_milli,
                memory_bytes: reg.memory_bytes,
                backend: reg.backend.clone(),
                gpus,
                connected: true,
                unreachable_since_ms: None,
                drained,
                capabilities: reg.capabilities,
                pod_eviction,
            },
        );
        plan
    }

    /// Carries out a registration's [`Reconcile`]: finishes releases, resolves PENDING slices a
    /// crash left (confirmed when the hardware has them, undone and FAILED when it does not, so they
    /// are never left dangling nor applied twice), and marks ACTIVE slices whose hardware is gone as
    /// lost. Each step applies only if the slice is still in the state the plan saw.
    pub async fn reconcile(&self, plan: Reconcile) {
        let node = plan.node.clone();
        if plan
            != (Reconcile {
                node: node.clone(),
                ..Default::default()
            })
        {
            info!(
                %node,
                release = plan.release.len(),
                confirm = plan.confirm.len(),
                abandon = plan.abandon.len(),
                lost = plan.lost.len(),
                relend = plan.relend.len(),
                given_back = plan.adopt.len(),
                "reconciling node with the ledger"
            );
        }
        for id in &plan.confirm {
            if let Err(e) = self.confirm_recovered(id).await {
                warn!(slice = %id, error = %e, "could not confirm a recovered slice");
            }
        }
        for id in &plan.abandon {
            if let Err(e) = self.abandon_recovered(id).await {
                warn!(slice = %id, error = %e, "could not resolve a recovered slice");
            }
        }
        for id in &plan.relend {
            if let Err(e) = self.relend(id).await {
                warn!(slice = %id, error = %e, "could not lend a MIG instance to its slice again");
            }
        }
        for id in &plan.lost {
            let why = format!("lost: node {node} no longer has it");
            if let Err(e) = self.mark_lost(id, SliceState::Active, &why).await {
                warn!(slice = %id, error = %e, "could not mark a slice lost");
            }
        }
        for id in &plan.release {
            if let Err(e) = self.drive_release(id).await {
                warn!(slice = %id, error = %e, "queued release failed");
            }
        }
    }

    /// Lends a slice's MIG instance to it again (see [`Reconcile::relend`]).
    async fn relend(&self, id: &str) -> Result<(), ControllerError> {
        let r = self.get(id)?;
        let (Some(m), Some(gpu)) = (&r.mig, r.gpus.first()) else {
            return Ok(());
        };
        let Some(gi) = m.gpu_instance_id.filter(|_| m.lent && r.is_live()) else {
            return Ok(());
        };
        let res = self
            .call(
                &r.node,
                AgentAction::ClaimMig {
                    gpu_uuid: gpu.clone(),
                    gpu_instance_id: gi,
                    slice_id: r.id.clone(),
                },
            )
            .await?;
        if let Some(inst) = res.mig {
            self.lock().mirror_mig_created(&r.node, gpu, inst);
        }
        info!(slice = %id, gi, "MIG instance lent again after the agent restarted");
        Ok(())
    }

    /// A crash-left PENDING slice that the hardware fully holds becomes ACTIVE.
    async fn confirm_recovered(&self, id: &str) -> Result<(), ControllerError> {
        let r = self.get(id)?;
        let gpu0 = r.gpus.first().cloned().unwrap_or_default();
        let mut env = BTreeMap::new();
        let mut inst = None;
        match &r.spec.kind {
            SliceKind::Whole { .. } => {
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), r.gpus.join(","));
            }
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            } => {
                // Setting the same share again is idempotent and returns its environment.
                let res = self
                    .call(
                        &r.node,
                        AgentAction::SetShare {
                            gpu_uuid: gpu0.clone(),
                            slice_id: r.id.clone(),
                            compute_fraction: *compute_fraction,
                            memory_bytes: *memory_bytes,
                        },
                    )
                    .await?;
                env = res.env.into_iter().collect();
            }
            SliceKind::Mig { .. } => {
                let st = self.lock();
                let found = st
                    .nodes
                    .get(&r.node)
                    .and_then(|n| n.gpus.iter().find(|g| g.uuid == gpu0))
                    .and_then(|g| mig_instance_of(&r, g))
                    .cloned();
                drop(st);
                let i = found.ok_or_else(|| ControllerError::AgentRefused {
                    node: r.node.clone(),
                    error: "the MIG instance disappeared".into(),
                })?;
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), i.mig_uuid.clone());
                inst = Some(i);
            }
        }
        let done = self
            .transition_if(id, Some(SliceState::Pending), |s| {
                s.state = SliceState::Active;
                s.env = env;
                if let (Some(m), Some(i)) = (&mut s.mig, inst) {
                    m.gpu_instance_id = Some(i.gpu_instance_id);
                    m.mig_uuid = Some(i.mig_uuid);
                }
            })
            .await?;
        if done.is_some() {
            info!(slice = %id, "recovered pending slice is on its node: active");
        }
        Ok(())
    }

    /// A crash-left PENDING slice that the hardware does not (fully) hold: undo any part that was
    /// applied, then mark it FAILED. Its request was never acknowledged.
    async fn abandon_recovered(&self, id: &str) -> Result<(), ControllerError> {
        let r = self.get(id)?;
        if let SliceKind::Whole { .. } = r.spec.kind {
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
        let reason = "the controller restarted before the node confirmed it; nothing is applied";
        let done = self
            .transition_if(id, Some(SliceState::Pending), |s| {
                s.state = SliceState::Failed;
                s.reason = reason.to_string();
            })
            .await?;
        if done.is_some() {
            info!(slice = %id, "recovered pending slice was not applied: failed");
        }
        Ok(())
    }

    /// Marks a slice in state `expected` FAILED with a "lost" reason and tells its tenant with a
    /// LOST event. Its capacity is freed in the controller's accounting.
    async fn mark_lost(
        &self,
        id: &str,
        expected: SliceState,
        why: &str,
    ) -> Result<(), ControllerError> {
        if let Some(s) = self
            .transition_if(id, Some(expected), |s| {
                s.state = SliceState::Failed;
                s.reason = why.to_string();
            })
            .await?
        {
            warn!(slice = %id, tenant = %s.tenant, node = %s.node, "{why}");
            self.emit(EventKind::Lost, &s, why.to_string());
        }
        Ok(())
    }

    /// Drains a node (operator action): nothing new is placed there. When its agent is unreachable,
    /// its live slices are marked lost (their tenants get LOST events) and their capacity is
    /// forgotten; a connected node keeps its slices until they are released. Returns the slices
    /// marked lost.
    pub async fn drain_node(&self, node: &str) -> Result<Vec<String>, ControllerError> {
        let (connected, live) = {
            let mut st = self.lock();
            let n = st
                .nodes
                .get_mut(node)
                .ok_or_else(|| ControllerError::BadRequest(format!("no node named {node:?}")))?;
            n.drained = true;
            let connected = n.connected;
            st.touch(node);
            let live: Vec<(String, SliceState)> = st
                .live_on_node(node)
                .map(|s| (s.id.clone(), s.state))
                .collect();
            (connected, live)
        };
        info!(%node, connected, "node drained");
        let mut lost = Vec::new();
        if !connected {
            for (id, state) in live {
                let why = format!("lost: node {node} was drained while unreachable");
                self.mark_lost(&id, state, &why).await?;
                lost.push(id);
            }
        }
        Ok(lost)
    }

    /// Makes a drained node schedulable again.
    pub fn undrain_node(&self, node: &str) -> Result<(), ControllerError> {
        let mut st = self.lock();
        let n = st
            .nodes
            .get_mut(node)
            .ok_or_else(|| ControllerError::BadRequest(format!("no node named {node:?}")))?;
        n.drained = false;
        st.touch(node);
        Ok(())
    }

    /// Replaces a node's reported GPUs (health changes, external changes).
    pub fn update_node_gpus(&self, node: &str, gpus: Vec<Gpu>) {
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(node) {
            n.gpus = gpus;
        }
        st.touch(node);
    }

    /// Marks a node unreachable (its agent's session ended or missed its keep-alive lease):
    /// nothing new is placed there; its slices are kept, since the hardware may still run them,
    /// until the agent returns or an operator drains the node.
    pub fn node_disconnected(&self, node: &str) {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(node) {
            n.connected = false;
            n.unreachable_since_ms = Some(now);
        }
        st.touch(node);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use greenslice_core::clock::ManualClock;
    use greenslice_proto::v1 as pb;

    use super::super::retention_tests::{
        T0, controller, done, registration, retention, serve_commands,
    };
    use super::*;
    use crate::ledger::MemoryLedger;

    fn gpu(mig: bool) -> pb::GpuInfo {
        pb::GpuInfo {
            uuid: "GPU-n1-0".into(),
            model: "H100-SXM5-80GB".into(),
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: mig,
            healthy: true,
            ..Default::default()
        }
    }

    fn register(gpus: Vec<pb::GpuInfo>, rebuilt: bool) -> NodeRegistration {
        registration(pb::Register {
            node: "n1".into(),
            gpus,
            ownership_rebuilt: rebuilt,
            ..Default::default()
        })
    }

    /// A node `n1` whose agent applies every command, with one ACTIVE share on its GPU.
    async fn node_with_a_share() -> (Arc<Controller>, String) {
        let clock = ManualClock::new(T0);
        let c = controller(
            Arc::new(MemoryLedger::default()),
            &clock,
            retention(std::time::Duration::from_secs(600), 1000),
        )
        .await;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        c.agents.connect("n1", tx);
        c.register_node(&register(vec![gpu(false)], false));
        serve_commands(&c, rx, done);
        let spec = pb::SliceSpec {
            kind: Some(pb::slice_spec::Kind::Share(pb::ShareSlice {
                compute_fraction: 0.25,
                memory_bytes: 1 << 30,
            })),
            ..Default::default()
        };
        let s = c
            .request(
                "team-a",
                &greenslice_core::convert::spec_from_pb(Some(&spec)).unwrap(),
                "",
            )
            .await
            .unwrap()
            .slice;
        assert_eq!(s.state, SliceState::Active);
        (c, s.id)
    }

    #[tokio::test]
    async fn an_agent_that_lost_its_record_is_given_its_slices_back_not_told_they_are_lost() {
        let (c, id) = node_with_a_share().await;
        // The agent's report names no share: it lost its checkpoint, the GPU is there.
        let plan = c.register_node(&register(vec![gpu(false)], true));
        assert!(plan.lost.is_empty(), "{plan:?}");
        assert_eq!(plan.adopt.len(), 1, "{plan:?}");
        let a = &plan.adopt[0];
        assert_eq!(
            (a.id.as_str(), a.gpus.clone()),
            (id.as_str(), vec!["GPU-n1-0".to_string()])
        );
        assert_eq!(
            a.spec.kind,
            SliceKind::Share {
                compute_fraction: 0.25,
                memory_bytes: 1 << 30
            }
        );
    }

    #[tokio::test]
    async fn a_slice_whose_hardware_is_gone_is_lost_whatever_the_agent_kept() {
        let (c, id) = node_with_a_share().await;
        // The GPU went into MIG mode: no share can be on it.
        let plan = c.register_node(&register(vec![gpu(true)], true));
        assert_eq!(plan.lost, vec![id.clone()]);
        assert!(plan.adopt.is_empty(), "{plan:?}");
        // The GPU is gone altogether.
        let plan = c.register_node(&register(Vec::new(), true));
        assert_eq!(plan.lost, vec![id.clone()]);
        // An agent with its record that does not name the share: it is gone.
        let plan = c.register_node(&register(vec![gpu(false)], false));
        assert_eq!(plan.lost, vec![id]);
        assert!(
            plan.adopt.is_empty(),
            "given back only to an agent that asks"
        );
    }
}
