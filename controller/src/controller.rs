//! The controller: validates requests, places them, commits them to the ledger, drives the node
//! agents to apply them, and answers only once the agent confirmed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use greenslice_core::clock::Clock;
use greenslice_core::convert::{gpu_from_pb, mig_from_pb};
use greenslice_core::slice::{self, SliceKind, SliceSpec, SliceState};
use greenslice_proto::v1 as pb;
use pb::command::Action;
use rand::Rng;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::agents::{AgentError, Agents};
use crate::error::ControllerError;
use crate::ledger::Ledger;
use crate::placement::{self, Policy, Request};
use crate::slice::{MigAssignment, SliceRecord};
use crate::state::{ClusterState, NodeRecord};

/// Settings of the controller core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long to wait for an agent to confirm a command.
    pub command_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            command_timeout: Duration::from_secs(10),
        }
    }
}

/// Outcome of a request.
#[derive(Debug, Clone)]
pub struct Requested {
    pub slice: SliceRecord,
    /// True when an idempotency key matched an earlier request.
    pub replayed: bool,
}

/// The controller core, shared by the gRPC services.
pub struct Controller {
    state: Mutex<ClusterState>,
    pub agents: Agents,
    ledger: Arc<dyn Ledger>,
    policy: Box<dyn Policy>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<pb::SliceEvent>,
    config: CoreConfig,
    /// Samples from the agents.
    pub telemetry: crate::telemetry::Telemetry,
    /// Idle reclaim: policy, warnings and keeps (see [`crate::reclaim`]).
    pub reclaim: crate::reclaim::Reclaimer,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// Energy attribution of the samples.
    energy: Mutex<crate::energy::accounting::Accountant>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("ledger", &self.ledger.name())
            .field("policy", &self.policy.name())
            .finish()
    }
}

fn new_slice_id() -> String {
    format!("s-{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}

impl Controller {
    /// A controller over `ledger`, loading what it holds.
    pub async fn new(
        ledger: Arc<dyn Ledger>,
        policy: Box<dyn Policy>,
        clock: Arc<dyn Clock>,
        config: CoreConfig,
    ) -> Result<Arc<Self>, ControllerError> {
        let records = ledger
            .load()
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))?;
        let mut state = ClusterState::default();
        for r in records {
            state.put(r);
        }
        info!(
            ledger = ledger.name(),
            policy = policy.name(),
            slices = state.slices.len(),
            "controller state loaded"
        );
        Ok(Arc::new(Controller {
            state: Mutex::new(state),
            agents: Agents::default(),
            ledger,
            policy,
            clock,
            events: broadcast::channel(4096).0,
            config,
            telemetry: Default::default(),
            reclaim: Default::default(),
            metrics: Default::default(),
            energy: Mutex::new(crate::energy::accounting::Accountant::new(
                Default::default(),
            )),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        // State is plain data updated in short critical sections that do not panic midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to slice events.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::SliceEvent> {
        self.events.subscribe()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Runs `f` on the cluster state (read-only, under the state lock: keep it short).
    pub fn with_state<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.lock())
    }

    /// Sends an event to watchers.
    pub fn emit_event(&self, ev: pb::SliceEvent) {
        let _ = self.events.send(ev);
    }

    /// Destroys a MIG instance that no live slice owns (MIG re-layout). Refuses an owned one.
    pub async fn destroy_free_mig(
        &self,
        node: &str,
        gpu: &str,
        gi: u32,
    ) -> Result<(), ControllerError> {
        let owned = self.lock().live_on_node(node).any(|s| {
            s.gpus.iter().any(|g| g == gpu)
                && s.mig
                    .as_ref()
                    .is_some_and(|m| m.gpu_instance_id == Some(gi))
        });
        if owned {
            return Err(ControllerError::BadRequest(format!(
                "MIG instance {gi} on {gpu} belongs to a live slice"
            )));
        }
        self.call(
            node,
            Action::DestroyMig(pb::DestroyMigInstance {
                gpu_uuid: gpu.to_string(),
                gpu_instance_id: gi,
                slice_id: String::new(),
            }),
        )
        .await?;
        self.lock().mirror_mig_destroyed(node, gpu, gi);
        Ok(())
    }

    fn emit(&self, kind: pb::SliceEventKind, slice: &SliceRecord, message: String) {
        let _ = self.events.send(pb::SliceEvent {
            kind: kind as i32,
            slice: Some(slice.to_pb()),
            message,
            deadline_unix_ms: 0,
            at_unix_ms: self.clock.now_ms(),
        });
    }

    async fn commit(&self, r: &SliceRecord) -> Result<(), ControllerError> {
        self.ledger
            .commit(std::slice::from_ref(r))
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))
    }

    /// Updates a slice in memory and the ledger, and announces it.
    async fn transition(
        &self,
        id: &str,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<SliceRecord, ControllerError> {
        let now = self.clock.now_ms();
        let updated = {
            let mut st = self.lock();
            let r = st
                .slices
                .get_mut(id)
                .ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
            f(r);
            r.updated_ms = now;
            r.clone()
        };
        self.commit(&updated).await?;
        self.emit(
            pb::SliceEventKind::StateChanged,
            &updated,
            format!("slice {} is {}", id, updated.state.as_str()),
        );
        Ok(updated)
    }

    /// Places, commits and applies a slice. Answers once the agent confirmed.
    pub async fn request(
        &self,
        tenant: &str,
        spec: Option<&pb::SliceSpec>,
        idempotency_key: &str,
    ) -> Result<Requested, ControllerError> {
        slice::validate_tenant(tenant)?;
        slice::validate_idempotency_key(idempotency_key)?;
        let spec = greenslice_core::convert::spec_from_pb(spec)?;
        let key = (!idempotency_key.is_empty()).then(|| idempotency_key.to_string());
        let now = self.clock.now_ms();
        // A MIG request that fits nowhere may fit once free instances are re-partitioned.
        crate::reclaim::relayout::make_room(self, &spec).await;

        let record = {
            let mut st = self.lock();
            if let Some(k) = &key
                && let Some(id) = st.idempotency.get(&(tenant.to_string(), k.clone()))
                && let Some(existing) = st.slices.get(id)
            {
                return Ok(Requested {
                    slice: existing.clone(),
                    replayed: true,
                });
            }
            check_model_profile(&st, &spec)?;
            let view = st.view();
            let req = Request {
                spec: spec.clone(),
                cpu_milli: 0,
                memory_bytes: 0,
            };
            let p = self.policy.place(&view, &req)?;
            let node = &view.nodes[p.node];
            let gpus: Vec<String> = p.gpus.iter().map(|i| node.gpus[*i].uuid.clone()).collect();
            let mig = match (&spec.kind, p.mig_start) {
                (SliceKind::Mig { profile }, Some(start)) => {
                    let model = &node.gpus[p.gpus[0]].model;
                    let size =
                        greenslice_core::mig::profile(model, profile).map_or(0, |pp| pp.size);
                    Some(MigAssignment {
                        profile: profile.clone(),
                        start,
                        size,
                        gpu_instance_id: None,
                        mig_uuid: None,
                    })
                }
                _ => None,
            };
            let r = SliceRecord {
                id: new_slice_id(),
                tenant: tenant.to_string(),
                spec: spec.clone(),
                state: SliceState::Pending,
                node: node.name.clone(),
                gpus,
                mig,
                env: BTreeMap::new(),
                reason: String::new(),
                idempotency_key: key.clone(),
                created_ms: now,
                updated_ms: now,
            };
            st.put(r.clone());
            r
        };
        if let Err(e) = self.commit(&record).await {
            // Never acknowledged: forget it entirely.
            let mut st = self.lock();
            st.slices.remove(&record.id);
            if let Some(k) = &key {
                st.idempotency.remove(&(tenant.to_string(), k.clone()));
            }
            return Err(e);
        }
        match self.apply(&record).await {
            Ok((mut env, inst)) => {
                // Lets the agent map the slice's processes back to it (see node-agent usage.rs).
                env.insert("GREENSLICE_SLICE_ID".to_string(), record.id.clone());
                let node = record.node.clone();
                let gpu0 = record.gpus.first().cloned().unwrap_or_default();
                if let Some(i) = &inst {
                    self.lock().mirror_mig_created(&node, &gpu0, i.clone());
                }
                let slice = self
                    .transition(&record.id, |r| {
                        r.state = SliceState::Active;
                        r.env = env;
                        if let (Some(m), Some(i)) = (&mut r.mig, inst) {
                            m.gpu_instance_id = Some(i.gpu_instance_id);
                            m.mig_uuid = Some(i.mig_uuid);
                        }
                    })
                    .await?;
                info!(slice = %slice.id, tenant, node = %slice.node, spec = %slice.spec.describe(), "slice active");
                Ok(Requested {
                    slice,
                    replayed: false,
                })
            }
            Err(e) => {
                let reason = e.to_string();
                let _ = self
                    .transition(&record.id, |r| {
                        r.state = SliceState::Failed;
                        r.reason = reason.clone();
                    })
                    .await;
                warn!(slice = %record.id, error = %reason, "slice failed");
                Err(e)
            }
        }
    }

    fn agent_err(node: &str, e: AgentError) -> ControllerError {
        ControllerError::AgentUnavailable {
            node: node.to_string(),
            why: e.to_string(),
        }
    }

    async fn call(&self, node: &str, action: Action) -> Result<pb::CommandResult, ControllerError> {
        let r = self
            .agents
            .call(node, action, self.config.command_timeout)
            .await
            .map_err(|e| Self::agent_err(node, e))?;
        if r.ok {
            Ok(r)
        } else {
            Err(ControllerError::AgentRefused {
                node: node.to_string(),
                error: r.error,
            })
        }
    }

    /// Drives the agent to apply a pending slice; on failure undoes what was applied.
    async fn apply(
        &self,
        r: &SliceRecord,
    ) -> Result<
        (
            BTreeMap<String, String>,
            Option<greenslice_core::inventory::MigInstance>,
        ),
        ControllerError,
    > {
        let mut env = BTreeMap::new();
        match &r.spec.kind {
            SliceKind::Whole { .. } => {
                let mut done: Vec<String> = Vec::new();
                for g in &r.gpus {
                    let res = self
                        .call(
                            &r.node,
                            Action::AssignGpu(pb::AssignGpu {
                                gpu_uuid: g.clone(),
                                slice_id: r.id.clone(),
                            }),
                        )
                        .await;
                    if let Err(e) = res {
                        for d in done {
                            let _ = self
                                .call(
                                    &r.node,
                                    Action::UnassignGpu(pb::UnassignGpu {
                                        gpu_uuid: d,
                                        slice_id: r.id.clone(),
                                    }),
                                )
                                .await;
                        }
                        return Err(e);
                    }
                    done.push(g.clone());
                }
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), r.gpus.join(","));
                Ok((env, None))
            }
            SliceKind::Mig { profile } => {
                let m = r.mig.as_ref().ok_or_else(|| {
                    ControllerError::BadRequest("MIG slice without placement".into())
                })?;
                let res = self
                    .call(
                        &r.node,
                        Action::CreateMig(pb::CreateMigInstance {
                            gpu_uuid: r.gpus.first().cloned().unwrap_or_default(),
                            profile: profile.clone(),
                            start: u32::from(m.start),
                            slice_id: r.id.clone(),
                        }),
                    )
                    .await?;
                let inst = res.mig.as_ref().and_then(mig_from_pb).ok_or_else(|| {
                    ControllerError::AgentRefused {
                        node: r.node.clone(),
                        error: "agent confirmed a MIG instance without describing it".into(),
                    }
                })?;
                Ok((res.env.into_iter().collect(), Some(inst)))
            }
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            } => {
                let res = self
                    .call(
                        &r.node,
                        Action::SetShare(pb::SetShare {
                            gpu_uuid: r.gpus.first().cloned().unwrap_or_default(),
                            slice_id: r.id.clone(),
                            compute_fraction: *compute_fraction,
                            memory_bytes: *memory_bytes,
                        }),
                    )
                    .await?;
                Ok((res.env.into_iter().collect(), None))
            }
        }
    }

    /// Returns one slice.
    pub fn get(&self, id: &str) -> Result<SliceRecord, ControllerError> {
        self.lock()
            .slices
            .get(id)
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    /// Lists slices, newest first.
    pub fn list(&self, tenant: &str, node: &str, include_terminal: bool) -> Vec<SliceRecord> {
        let st = self.lock();
        let mut v: Vec<SliceRecord> = st
            .slices
            .values()
            .filter(|s| tenant.is_empty() || s.tenant == tenant)
            .filter(|s| node.is_empty() || s.node == node)
            .filter(|s| include_terminal || s.is_live())
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        v
    }

    /// Releases a slice: marks it releasing (committed), then tears it down on the agent. When the
    /// agent is unreachable the slice stays RELEASING and is torn down when the agent returns.
    pub async fn release(&self, id: &str, reason: &str) -> Result<SliceRecord, ControllerError> {
        let current = self.get(id)?;
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
                            Action::UnassignGpu(pb::UnassignGpu {
                                gpu_uuid: g.clone(),
                                slice_id: r.id.clone(),
                            }),
                        )
                        .await?;
                    }
                }
                SliceKind::Share { .. } => {
                    let g = r.gpus.first().cloned().unwrap_or_default();
                    self.teardown(
                        &r,
                        &g,
                        Action::ClearShare(pb::ClearShare {
                            gpu_uuid: g.clone(),
                            slice_id: r.id.clone(),
                        }),
                    )
                    .await?;
                }
                SliceKind::Mig { .. } => {
                    let g = r.gpus.first().cloned().unwrap_or_default();
                    if let Some(gi) = r.mig.as_ref().and_then(|m| m.gpu_instance_id) {
                        self.teardown(
                            &r,
                            &g,
                            Action::DestroyMig(pb::DestroyMigInstance {
                                gpu_uuid: g.clone(),
                                gpu_instance_id: gi,
                                slice_id: r.id.clone(),
                            }),
                        )
                        .await?;
                        self.lock().mirror_mig_destroyed(&r.node, &g, gi);
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                let s = self
                    .transition(id, |r| r.state = SliceState::Released)
                    .await?;
                info!(slice = %id, "slice released");
                Ok(s)
            }
            Err(ControllerError::AgentUnavailable { node, why }) => {
                warn!(slice = %id, %node, %why, "release queued until the agent returns");
                self.get(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one teardown command. An agent that no longer holds the thing counts as done.
    async fn teardown(
        &self,
        r: &SliceRecord,
        gpu: &str,
        action: Action,
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

    /// Records a (re)connected agent's node and inventory. Returns slices to finish releasing.
    pub fn register_node(&self, reg: &pb::Register) -> Vec<String> {
        let mut st = self.lock();
        let gpus = reg.gpus.iter().map(gpu_from_pb).collect();
        st.nodes.insert(
            reg.node.clone(),
            NodeRecord {
                name: reg.node.clone(),
                cpu_milli: reg.cpu_milli,
                memory_bytes: reg.memory_bytes,
                backend: reg.backend.clone(),
                gpus,
                connected: true,
            },
        );
        st.live_on_node(&reg.node)
            .filter(|s| s.state == SliceState::Releasing)
            .map(|s| s.id.clone())
            .collect()
    }

    /// Replaces a node's reported GPUs (health changes, external changes).
    pub fn update_node_gpus(&self, node: &str, gpus: &[pb::GpuInfo]) {
        if let Some(n) = self.lock().nodes.get_mut(node) {
            n.gpus = gpus.iter().map(gpu_from_pb).collect();
        }
    }

    /// Takes a batch of samples from a node's agent: keeps them, and attributes the energy of every
    /// attribution window they close.
    pub fn ingest_samples(&self, node: &str, batch: &pb::SampleBatch) {
        let accepted = self.telemetry.ingest(node, batch);
        crate::reclaim::record_usage(self, node, &accepted);
        if accepted.is_empty() {
            return;
        }
        let st = self.lock();
        let model_of = |gpu: &str| {
            st.nodes
                .get(node)
                .and_then(|n| n.gpus.iter().find(|g| g.uuid == gpu))
                .map(|g| g.model.name().to_string())
                .unwrap_or_default()
        };
        let holders = |gpu: &str, iv: crate::energy::Interval| holders_of(&st, gpu, iv);
        self.energy_lock()
            .ingest(node, &model_of, &accepted, &holders);
    }

    fn energy_lock(&self) -> MutexGuard<'_, crate::energy::accounting::Accountant> {
        self.energy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the energy accounting settings (site carbon factors, window, policy). Intervals
    /// already accounted are dropped: call this before samples arrive.
    pub fn configure_energy(&self, config: crate::energy::accounting::AccountingConfig) {
        *self.energy_lock() = crate::energy::accounting::Accountant::new(config);
    }

    /// The activity threshold (percent of capacity) under which held capacity counts as idle.
    pub fn idle_threshold_pct(&self) -> f64 {
        self.energy_lock().config().idle_threshold_pct
    }

    /// Attributed energy intervals overlapping `[from_ms, to_ms)`, and the accounting settings.
    pub fn energy_records(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> (
        Vec<crate::energy::accounting::IntervalRecord>,
        crate::energy::StaticPolicy,
        u64,
    ) {
        let e = self.energy_lock();
        (e.records(from_ms, to_ms), e.config().policy, e.skipped)
    }

    /// Marks a node disconnected: nothing new is placed there; its slices are kept.
    pub fn node_disconnected(&self, node: &str) {
        if let Some(n) = self.lock().nodes.get_mut(node) {
            n.connected = false;
        }
    }

    /// A snapshot for the ops API.
    pub fn snapshot(
        &self,
    ) -> (
        Vec<NodeRecord>,
        crate::placement::ClusterView,
        Vec<SliceRecord>,
    ) {
        let st = self.lock();
        let nodes = st.nodes.values().cloned().collect();
        let view = st.view();
        let slices = st
            .slices
            .values()
            .filter(|s| s.is_live())
            .cloned()
            .collect();
        (nodes, view, slices)
    }
}

/// The slices that held `gpu` during `iv`, with the capacity they held and for how long.
/// A slice holds its capacity from its creation until it is released (failed slices never held any).
fn holders_of(
    st: &ClusterState,
    gpu: &str,
    iv: crate::energy::Interval,
) -> Vec<crate::energy::Holder> {
    use crate::energy::{Capacity, Holder};
    let model = st
        .nodes
        .values()
        .flat_map(|n| &n.gpus)
        .find(|g| g.uuid == gpu)
        .map(|g| g.model.clone());
    let mut out: Vec<Holder> = st
        .slices
        .values()
        .filter(|s| s.state != SliceState::Failed && s.gpus.iter().any(|g| g == gpu))
        .filter_map(|s| {
            let from = u64::try_from(s.created_ms).ok()?;
            let to = if s.state.is_terminal() {
                u64::try_from(s.updated_ms).ok()?
            } else {
                u64::MAX
            };
            let held_ms = to.min(iv.end_ms).saturating_sub(from.max(iv.start_ms));
            if held_ms == 0 {
                return None;
            }
            let capacity = match &s.spec.kind {
                SliceKind::Whole { .. } => Capacity::WHOLE,
                SliceKind::Mig { profile } => {
                    let p = model
                        .as_ref()
                        .and_then(|m| greenslice_core::mig::profile(m, profile))?;
                    Capacity::mig_compute_slices(p.compute_slices).ok()?
                }
                SliceKind::Share {
                    compute_fraction, ..
                } => Capacity::from_fraction(*compute_fraction).ok()?,
            };
            Some(Holder {
                slice_id: s.id.clone(),
                tenant: s.tenant.clone(),
                capacity,
                held_ms,
            })
        })
        .collect();
    out.sort_by(|a, b| a.slice_id.cmp(&b.slice_id));
    out
}

/// Refuses a MIG profile that no GPU of the (requested) model in the cluster has, listing valid ones.
fn check_model_profile(st: &ClusterState, spec: &SliceSpec) -> Result<(), ControllerError> {
    let SliceKind::Mig { profile } = &spec.kind else {
        return Ok(());
    };
    let models: std::collections::BTreeSet<_> = st
        .nodes
        .values()
        .flat_map(|n| &n.gpus)
        .filter(|g| g.mig_enabled)
        .filter(|g| spec.gpu_model.as_ref().is_none_or(|m| *m == g.model))
        .map(|g| g.model.clone())
        .collect();
    if models.is_empty()
        || models
            .iter()
            .any(|m| greenslice_core::mig::profile(m, profile).is_some())
    {
        return Ok(());
    }
    let valid: Vec<String> = models
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m.name(),
                greenslice_core::mig::profiles(m)
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    Err(ControllerError::BadRequest(format!(
        "MIG profile {profile} exists on no MIG GPU in the cluster; valid profiles: {}",
        valid.join("; ")
    )))
}

pub use placement::FirstFit;
