//! The controller: validates requests, places them, commits them to the ledger, drives the node
//! agents to apply them, and answers only once the agent confirmed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use greenslice_core::clock::Clock;
use greenslice_core::convert::{gpu_from_pb, mig_from_pb};
use greenslice_core::inventory::Gpu;
use greenslice_core::slice::{self, SliceKind, SliceSpec, SliceState};
use greenslice_proto::v1 as pb;
use pb::command::Action;
use rand::Rng;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::agents::{AgentError, Agents};
use crate::error::ControllerError;
use crate::ledger::{Commit, Ledger, Op};
use crate::placement::{self, Policy, Request, Unplaceable};
use crate::slice::{MigAssignment, SliceRecord};
use crate::state::{ClusterState, Expiry, NodeRecord};

/// Settings of the controller core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long to wait for an agent to confirm a command.
    pub command_timeout: Duration,
    /// How long something greenslice made (a MIG instance, share or whole-GPU assignment naming a
    /// slice) may sit on a node with no live slice in the ledger before it is torn down.
    pub orphan_grace: Duration,
    /// How long RELEASED and FAILED slices are kept (for get, list and idempotent retries) before
    /// they are forgotten, in memory and in the ledger.
    pub terminal_retention: Duration,
    /// How many RELEASED and FAILED slices are kept at most; beyond it the oldest are forgotten
    /// first, in memory and in the ledger. Slices that energy attribution still needs are kept
    /// past both limits (see [`Controller::prune_terminal`]).
    pub terminal_retention_max: usize,
    /// How often orphans and expired slices are looked for.
    pub sweep_interval: Duration,
    /// Per-tenant quotas, checked at request time.
    pub quotas: crate::quota::Quotas,
    /// How often the energy history's changed hours are stored in the ledger: at most this much
    /// attribution is lost in a crash (see `docs/ENERGY.md`, "History").
    pub energy_flush_interval: Duration,
    /// How long stored energy history is kept (None: forever). Checked at most once an hour.
    pub energy_history_retention: Option<Duration>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            command_timeout: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(60),
            terminal_retention: Duration::from_secs(600),
            terminal_retention_max: 100_000,
            sweep_interval: Duration::from_secs(1),
            quotas: Default::default(),
            energy_flush_interval: Duration::from_secs(60),
            // 13 months and a bit: a year-on-year report of the last full month still has both.
            energy_history_retention: Some(Duration::from_secs(400 * 86_400)),
        }
    }
}

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

/// The MIG instance on `g` that belongs to `r`: the one naming it, or the one it recorded.
fn mig_instance_of<'a>(
    r: &SliceRecord,
    g: &'a Gpu,
) -> Option<&'a greenslice_core::inventory::MigInstance> {
    g.mig_instances.iter().find(|i| {
        i.slice_id.as_deref() == Some(r.id.as_str())
            || r.mig
                .as_ref()
                .is_some_and(|m| m.gpu_instance_id == Some(i.gpu_instance_id) && m.start == i.start)
    })
}

/// Something greenslice made on a node, as the orphan sweep tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OrphanKey {
    node: String,
    gpu: String,
    slice: String,
    /// MIG GPU instance id; None for shares and whole assignments.
    gpu_instance_id: Option<u32>,
    whole: bool,
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
    policy: Arc<dyn Policy>,
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
    /// Hourly rollups of the attributed intervals, stored in the ledger by
    /// [`Controller::flush_energy_history`]. Locked after `energy` when both are held.
    history: Mutex<crate::energy::history::Rollups>,
    /// Orphans seen, with when each was first seen (ms since the Unix epoch).
    orphans: Mutex<HashMap<OrphanKey, i64>>,
    /// When the controller last logged that energy attribution keeps finished slices past their
    /// retention (ms since the Unix epoch), so the warning comes once a minute, not every sweep.
    held_warned_ms: std::sync::atomic::AtomicI64,
    /// When stored energy history was last pruned (ms since the Unix epoch).
    history_pruned_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("ledger", &self.ledger.name())
            .field("policy", &self.policy.name())
            .finish()
    }
}

/// A new slice id: `s-` then the creation time (ms, 11 hex digits) and 20 random bits. Ids made
/// later sort later, so the ledger's B-tree takes new and recently changed records at its right
/// edge instead of dirtying pages all over it on every commit. The caller checks for a clash.
fn new_slice_id(now_ms: i64) -> String {
    format!(
        "s-{:011x}{:05x}",
        (now_ms.max(0) as u64) & 0xfff_ffff_ffff,
        rand::rng().random::<u32>() & 0xf_ffff
    )
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
            if r.state == SliceState::Pending {
                state.recovering.insert(r.id.clone());
            }
            state.put(r);
        }
        info!(
            ledger = ledger.name(),
            policy = policy.name(),
            slices = state.slice_count(),
            finished = state.finished_count(),
            live = state.all().filter(|s| s.is_live()).count(),
            pending_to_resolve = state.recovering.len(),
            "controller state loaded"
        );
        // The recent hours the controller will fold into: stored ones continue, so a flush writes
        // them whole and never with less than was stored. Older hours are read before their
        // first flush (see `Rollups`).
        let accounting = crate::energy::accounting::AccountingConfig::default();
        let mut history = crate::energy::history::Rollups::new(accounting.policy);
        let recent_from = u64::try_from(clock.now_ms())
            .unwrap_or(0)
            .saturating_sub(RECENT_HOURS_MS);
        match ledger
            .load_hours(crate::energy::history::hour_of(recent_from), u64::MAX)
            .await
        {
            Ok(stored) => {
                info!(hours = stored.len(), "energy history: recent hours loaded");
                history.load(stored);
            }
            // Allocation does not depend on the history: serve anyway. The hours stay unloaded,
            // so each is read again (and merged) before its first flush, never overwritten.
            Err(e) => warn!(error = %e, "energy history: could not load the recent hours"),
        }
        let sweep = config.sweep_interval;
        let flush = config.energy_flush_interval;
        let c = Arc::new(Controller {
            state: Mutex::new(state),
            agents: Agents::default(),
            ledger,
            policy: Arc::from(policy),
            clock,
            events: broadcast::channel(4096).0,
            config,
            telemetry: Default::default(),
            reclaim: Default::default(),
            metrics: Default::default(),
            energy: Mutex::new(crate::energy::accounting::Accountant::new(accounting)),
            history: Mutex::new(history),
            orphans: Mutex::new(HashMap::new()),
            held_warned_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            history_pruned_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        });
        let kept: Vec<(String, i64)> = c.with_state(|st| {
            st.all()
                .filter(|s| s.is_live())
                .filter_map(|s| s.kept_until_ms.map(|u| (s.id.clone(), u)))
                .collect()
        });
        c.reclaim.restore_keeps(kept);
        tokio::spawn(housekeeping(Arc::downgrade(&c), sweep, flush));
        Ok(c)
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        // State is plain data updated in short critical sections that do not panic midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The placement policy.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy.clone()
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

    /// Queues a record for the ledger. Called with the state lock held, so the ledger sees changes
    /// to one slice in the order memory saw them.
    fn submit(&self, r: &SliceRecord) -> Commit {
        self.ledger.submit(vec![Op::Put(r.clone())])
    }

    async fn durable(commit: Commit) -> Result<(), ControllerError> {
        commit
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))
    }

    /// Updates a slice in memory and the ledger, and announces it.
    async fn transition(
        &self,
        id: &str,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<SliceRecord, ControllerError> {
        self.transition_if(id, None, f)
            .await?
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    /// Like `transition`, but only when the slice is in `expected` (if given); None otherwise.
    async fn transition_if(
        &self,
        id: &str,
        expected: Option<SliceState>,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<Option<SliceRecord>, ControllerError> {
        let Some((updated, commit)) = self.transition_queued(id, expected, f)? else {
            return Ok(None);
        };
        Self::durable(commit).await?;
        self.announce(&updated);
        Ok(Some(updated))
    }

    /// Changes a slice in memory and queues the change for the ledger (ordered by the state lock,
    /// see [`Controller::submit`]) without waiting for it to be durable. None when the slice is
    /// not in `expected` (if given).
    fn transition_queued(
        &self,
        id: &str,
        expected: Option<SliceState>,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<Option<(SliceRecord, Commit)>, ControllerError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let state = st
            .slice(id)
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))?
            .state;
        if expected.is_some_and(|e| e != state) {
            return Ok(None);
        }
        let updated: SliceRecord = st
            .update(id, |r| {
                f(r);
                r.updated_ms = now;
            })
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        st.recovering.remove(id);
        let commit = self.submit(&updated);
        Ok(Some((updated, commit)))
    }

    /// A transition whose durability nobody waits for: the change is queued (so it is written in
    /// order, after everything queued before it and before everything queued after it) and the
    /// caller goes on at once. Only for transitions that recovery redoes by itself when a crash
    /// loses them: PENDING -> ACTIVE (a crash-left PENDING slice whose hardware is on its node is
    /// confirmed ACTIVE when the node registers) and RELEASING -> RELEASED (a crash-left RELEASING
    /// slice is torn down again, which the agent answers as already done, and marked RELEASED).
    /// See docs/DURABILITY.md, "Acknowledged before the last commit". A failed write is logged by
    /// the committer; the next commit of the slice writes its whole record again.
    fn transition_in_background(
        &self,
        id: &str,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<SliceRecord, ControllerError> {
        let (updated, commit) = self
            .transition_queued(id, None, f)?
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        // Dropping the future does not withdraw the change: `Ledger::submit` queued it already.
        drop(commit);
        self.announce(&updated);
        Ok(updated)
    }

    /// Commits a tenant's keep of an active slice (see [`crate::reclaim::keep`]); no state event,
    /// the state does not change.
    pub async fn record_keep(
        &self,
        id: &str,
        until_ms: i64,
    ) -> Result<SliceRecord, ControllerError> {
        let (updated, commit) = self
            .transition_queued(id, Some(SliceState::Active), |r| {
                r.kept_until_ms = Some(until_ms);
            })?
            .ok_or_else(|| ControllerError::WrongState {
                id: id.to_string(),
                state: "not active",
                what: "only an active slice can be kept".into(),
            })?;
        Self::durable(commit).await?;
        Ok(updated)
    }

    /// Tells watchers a slice changed state.
    fn announce(&self, updated: &SliceRecord) {
        if self.events.receiver_count() == 0 {
            // Nobody listens: skip building the event (a protobuf copy of the slice and a message).
            return;
        }
        self.emit(
            pb::SliceEventKind::StateChanged,
            updated,
            format!("slice {} is {}", updated.id, updated.state.as_str()),
        );
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

        let (record, commit, advisory_share) = {
            let mut st = self.lock();
            if let Some(k) = &key
                && let Some(id) = st.idempotency.get(&(tenant.to_string(), k.clone()))
                && let Some(existing) = st.slice(id)
            {
                return Ok(Requested {
                    slice: existing.clone(),
                    replayed: true,
                });
            }
            if !self.config.quotas.is_empty() {
                let held = crate::quota::Usage::of(tenant, st.live_slices());
                self.config.quotas.check(tenant, held, &spec)?;
            }
            check_model_profile(&st, &spec)?;
            let req = Request {
                spec: spec.clone(),
                cpu_milli: 0,
                memory_bytes: 0,
            };
            let (view, versions) = st.view_versioned();
            let p = self.policy.place_versioned(view, versions, &req)?;
            let node = &view.nodes[p.node];
            let gpus: Vec<String> = p.gpus.iter().map(|i| node.gpus[*i].uuid.clone()).collect();
            let model = node.gpus[p.gpus[0]].model.clone();
            let mig_create = node.mig_create;
            let node_name = node.name.clone();
            let mig = match (&spec.kind, p.mig_start) {
                (SliceKind::Mig { profile }, Some(start)) => {
                    let size =
                        greenslice_core::mig::profile(&model, profile).map_or(0, |pp| pp.size);
                    // A node that may not create instances gets the slice only on a free existing
                    // instance (placement chose its start): lend that one.
                    let lent = (!mig_create)
                        .then(|| {
                            st.nodes
                                .get(&node_name)?
                                .gpus
                                .iter()
                                .find(|g| g.uuid == gpus[0])?
                                .mig_instances
                                .iter()
                                .find(|i| {
                                    i.start == start
                                        && i.profile == *profile
                                        && i.slice_id.is_none()
                                })
                                .cloned()
                        })
                        .flatten();
                    if !mig_create && lent.is_none() {
                        // The view and the node record disagree: refuse rather than create.
                        return Err(ControllerError::Unplaceable(Unplaceable::NoRoom {
                            wanted: spec.describe(),
                            free: format!(
                                "no free {profile} at slice {start} on {node_name} to lend"
                            ),
                        }));
                    }
                    Some(MigAssignment {
                        profile: profile.clone(),
                        start,
                        size,
                        gpu_instance_id: lent.as_ref().map(|i| i.gpu_instance_id),
                        mig_uuid: lent.as_ref().map(|i| i.mig_uuid.clone()),
                        lent: lent.is_some(),
                    })
                }
                _ => None,
            };
            let advisory_share = matches!(spec.kind, SliceKind::Share { .. })
                && st.nodes.get(&node_name).is_some_and(|n| !n.mps());
            let mut id = new_slice_id(now);
            while st.contains(&id) {
                id = new_slice_id(now);
            }
            let r = SliceRecord {
                mig,
                idempotency_key: key.clone(),
                ..SliceRecord::placed(id, tenant, spec.clone(), node_name, gpus, now)
            };
            st.put(r.clone());
            let commit = self.submit(&r);
            (r, commit, advisory_share)
        };
        if let Err(e) = Self::durable(commit).await {
            // Never acknowledged: forget it entirely.
            self.lock().remove_slice(&record.id);
            return Err(e);
        }
        match self.apply(&record).await {
            Ok((mut env, inst)) => {
                // Lets the agent map the slice's processes back to it (see node-agent usage.rs).
                env.insert("GREENSLICE_SLICE_ID".to_string(), record.id.clone());
                if advisory_share {
                    // No MPS on the node: the limits in the environment are not enforced.
                    env.insert(
                        "GREENSLICE_SHARE_LIMITS".to_string(),
                        "advisory".to_string(),
                    );
                }
                let node = record.node.clone();
                let gpu0 = record.gpus.first().cloned().unwrap_or_default();
                if let Some(i) = &inst {
                    self.lock().mirror_mig_created(&node, &gpu0, i.clone());
                }
                // PENDING is durable and the agent confirmed: the allocation is safe to
                // acknowledge. ACTIVE goes to the ledger behind it without being waited for; a
                // crash before it is durable leaves PENDING, which recovery confirms ACTIVE from
                // the hardware (see `transition_in_background`).
                let slice = self.transition_in_background(&record.id, |r| {
                    r.state = SliceState::Active;
                    r.env = env;
                    if let (Some(m), Some(i)) = (&mut r.mig, inst) {
                        m.gpu_instance_id = Some(i.gpu_instance_id);
                        m.mig_uuid = Some(i.mig_uuid);
                    }
                })?;
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
                let gpu_uuid = r.gpus.first().cloned().unwrap_or_default();
                let action = match (m.lent, m.gpu_instance_id) {
                    (true, Some(gi)) => Action::ClaimMig(pb::ClaimMigInstance {
                        gpu_uuid,
                        gpu_instance_id: gi,
                        slice_id: r.id.clone(),
                    }),
                    _ => Action::CreateMig(pb::CreateMigInstance {
                        gpu_uuid,
                        profile: profile.clone(),
                        start: u32::from(m.start),
                        slice_id: r.id.clone(),
                    }),
                };
                let res = self.call(&r.node, action).await?;
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
            .slice(id)
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    /// Lists slices, newest first.
    pub fn list(&self, tenant: &str, node: &str, include_terminal: bool) -> Vec<SliceRecord> {
        let st = self.lock();
        let mut v: Vec<SliceRecord> = st
            .all()
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
        if crate::api::kubelet::is_kubelet_slice(&current) && current.is_live() {
            return Err(ControllerError::WrongState {
                id: id.to_string(),
                state: current.state.as_str(),
                what: "it belongs to a Kubernetes pod: delete the pod to release it".into(),
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
                    let lent = r.mig.as_ref().is_some_and(|m| m.lent);
                    if let Some(gi) = r.mig.as_ref().and_then(|m| m.gpu_instance_id) {
                        let (gpu_uuid, slice_id) = (g.clone(), r.id.clone());
                        let action = if lent {
                            Action::ReleaseMig(pb::ReleaseMigInstance {
                                gpu_uuid,
                                gpu_instance_id: gi,
                                slice_id,
                            })
                        } else {
                            Action::DestroyMig(pb::DestroyMigInstance {
                                gpu_uuid,
                                gpu_instance_id: gi,
                                slice_id,
                            })
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

    /// Records a (re)connected agent's node and inventory, and decides how to reconcile the
    /// ledger's slices on that node with what the hardware holds (see [`Controller::reconcile`]).
    pub fn register_node(&self, reg: &pb::Register) -> Reconcile {
        let mut st = self.lock();
        let gpus: Vec<Gpu> = reg.gpus.iter().map(gpu_from_pb).collect();
        let drained = st.nodes.get(&reg.node).is_some_and(|n| n.drained);
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
                SliceState::Active if presence(s, &gpus) != Presence::All => {
                    plan.lost.push(s.id.clone())
                }
                _ => {}
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
                capabilities: greenslice_core::convert::capabilities_from_pb(
                    reg.capabilities.as_ref(),
                ),
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
                Action::ClaimMig(pb::ClaimMigInstance {
                    gpu_uuid: gpu.clone(),
                    gpu_instance_id: gi,
                    slice_id: r.id.clone(),
                }),
            )
            .await?;
        if let Some(inst) = res.mig.as_ref().and_then(mig_from_pb) {
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
                        Action::SetShare(pb::SetShare {
                            gpu_uuid: gpu0.clone(),
                            slice_id: r.id.clone(),
                            compute_fraction: *compute_fraction,
                            memory_bytes: *memory_bytes,
                        }),
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
                    Action::UnassignGpu(pb::UnassignGpu {
                        gpu_uuid: g.clone(),
                        slice_id: r.id.clone(),
                    }),
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
            self.emit(pb::SliceEventKind::Lost, &s, why.to_string());
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

    /// Finds things greenslice made on connected nodes that no live slice accounts for, and tears
    /// down those seen for longer than the orphan grace period. Returns how many were torn down.
    pub async fn sweep_orphans(&self) -> usize {
        let now = self.clock.now_ms();
        let grace = i64::try_from(self.config.orphan_grace.as_millis()).unwrap_or(i64::MAX);
        let mut due: Vec<OrphanKey> = Vec::new();
        {
            let st = self.lock();
            let live: HashSet<(&str, &str)> = st
                .live_slices()
                .map(|s| (s.node.as_str(), s.id.as_str()))
                .collect();
            let mut found = Vec::new();
            for n in st.nodes.values().filter(|n| n.connected) {
                let owned = |slice: &str| live.contains(&(n.name.as_str(), slice));
                for g in &n.gpus {
                    let key = |slice: &str, gi: Option<u32>, whole: bool| OrphanKey {
                        node: n.name.clone(),
                        gpu: g.uuid.clone(),
                        slice: slice.to_string(),
                        gpu_instance_id: gi,
                        whole,
                    };
                    for i in &g.mig_instances {
                        // Instances made outside greenslice name no slice: never touched.
                        if let Some(sl) = &i.slice_id
                            && !owned(sl)
                        {
                            found.push(key(sl, Some(i.gpu_instance_id), false));
                        }
                    }
                    for sh in &g.shares {
                        if !owned(&sh.slice_id) {
                            found.push(key(&sh.slice_id, None, false));
                        }
                    }
                    if let Some(w) = &g.whole_slice_id
                        && !owned(w)
                    {
                        found.push(key(w, None, true));
                    }
                }
            }
            drop(st);
            let mut seen = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            let current: HashSet<&OrphanKey> = found.iter().collect();
            seen.retain(|k, _| current.contains(k));
            for k in &found {
                let first = *seen.entry(k.clone()).or_insert_with(|| {
                    warn!(node = %k.node, gpu = %k.gpu, slice = %k.slice, "orphan on node: no live slice in the ledger; cleaning up after the grace period");
                    now
                });
                if now - first >= grace {
                    due.push(k.clone());
                }
            }
        }
        let mut cleaned = 0;
        for k in due {
            let read_only =
                self.with_state(|st| st.nodes.get(&k.node).is_some_and(|n| !n.may_create_mig()));
            let action = match (k.gpu_instance_id, k.whole) {
                // A node that may not destroy instances only lent it: give it back.
                (Some(gi), _) if read_only => Action::ReleaseMig(pb::ReleaseMigInstance {
                    gpu_uuid: k.gpu.clone(),
                    gpu_instance_id: gi,
                    slice_id: k.slice.clone(),
                }),
                (Some(gi), _) => Action::DestroyMig(pb::DestroyMigInstance {
                    gpu_uuid: k.gpu.clone(),
                    gpu_instance_id: gi,
                    slice_id: k.slice.clone(),
                }),
                (None, true) => Action::UnassignGpu(pb::UnassignGpu {
                    gpu_uuid: k.gpu.clone(),
                    slice_id: k.slice.clone(),
                }),
                (None, false) => Action::ClearShare(pb::ClearShare {
                    gpu_uuid: k.gpu.clone(),
                    slice_id: k.slice.clone(),
                }),
            };
            match self.call(&k.node, action).await {
                Ok(_) => {
                    let mut st = self.lock();
                    match k.gpu_instance_id {
                        Some(gi) if read_only => st.mirror_mig_returned(&k.node, &k.gpu, gi),
                        Some(gi) => st.mirror_mig_destroyed(&k.node, &k.gpu, gi),
                        None => st.mirror_cleared(&k.node, &k.gpu, &k.slice),
                    }
                    drop(st);
                    self.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&k);
                    warn!(node = %k.node, gpu = %k.gpu, slice = %k.slice, "orphan torn down");
                    cleaned += 1;
                }
                Err(e) => {
                    warn!(node = %k.node, slice = %k.slice, error = %e, "orphan cleanup failed; retrying")
                }
            }
        }
        cleaned
    }

    /// Forgets finished (RELEASED, FAILED) slices past their retention, oldest first, in memory
    /// and in the ledger: those older than `terminal_retention`, and the oldest beyond
    /// `terminal_retention_max`. Returns how many were forgotten.
    ///
    /// Never loses energy: a released slice that held a GPU after the start of that GPU's open
    /// energy interval is a holder of that interval, so it is kept (past either limit, counted in
    /// `greenslice_finished_slices_held_for_energy` and logged) until the interval is attributed.
    /// A GPU that has sent no samples yet has no open interval; the accountant is told what was
    /// forgotten on it, so its first interval cannot start before those slices ended.
    ///
    /// Works in steps of [`PRUNE_STEP`] slices under the state lock, each followed by its ledger
    /// deletes, so a large backlog (a restart after a long outage, a lowered cap) neither stalls
    /// requests nor queues one huge ledger transaction ahead of theirs.
    pub async fn prune_terminal(&self) -> Result<usize, ControllerError> {
        let keep_ms = i64::try_from(self.config.terminal_retention.as_millis()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let limits = crate::state::PruneLimits {
                older_than_ms: self.clock.now_ms().saturating_sub(keep_ms),
                keep_at_most: self.config.terminal_retention_max,
                examine_at_most: PRUNE_STEP,
            };
            let (pruned, commit) = {
                let mut st = self.lock();
                let mut energy = self.energy_lock();
                let open_since = |gpu: &str| {
                    energy
                        .unattributed_since(gpu)
                        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
                };
                let pruned = st.prune_finished(&limits, &open_since);
                for (r, _) in &pruned.forgotten {
                    if let Some((_, until)) = r.held_ms() {
                        for g in &r.gpus {
                            energy.holder_forgotten(g, u64::try_from(until).unwrap_or(0));
                        }
                    }
                }
                drop(energy);
                let ids: Vec<String> = pruned.forgotten.iter().map(|(r, _)| r.id.clone()).collect();
                // Queued under the state lock: after the slices' last records, as memory saw them.
                let commit = self.ledger.remove(&ids);
                (pruned, commit)
            };
            for why in [Expiry::Age, Expiry::Count] {
                let n = pruned.forgotten.iter().filter(|(_, w)| *w == why).count();
                self.metrics.finished_forgotten(why.as_str(), n);
            }
            total += pruned.forgotten.len();
            Self::durable(commit).await?;
            if pruned.examined < PRUNE_STEP {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.warn_held_for_energy();
        Ok(total)
    }

    /// Logs, at most once a minute, that finished slices are kept past their retention because
    /// energy attribution still needs them.
    fn warn_held_for_energy(&self) {
        use std::sync::atomic::Ordering;
        let (held, finished) =
            self.with_state(|st| (st.held_for_energy_count(), st.finished_count()));
        let now = self.clock.now_ms();
        let last = self.held_warned_ms.load(Ordering::Relaxed);
        if held == 0 || now.saturating_sub(last) < 60_000 {
            return;
        }
        self.held_warned_ms.store(now, Ordering::Relaxed);
        warn!(
            held,
            finished,
            max = self.config.terminal_retention_max,
            retention_s = self.config.terminal_retention.as_secs(),
            "finished slices kept past terminal_retention_s / terminal_retention_max: the energy of \
             GPUs they held is not attributed yet"
        );
    }

    /// Replaces a node's reported GPUs (health changes, external changes).
    pub fn update_node_gpus(&self, node: &str, gpus: &[pb::GpuInfo]) {
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(node) {
            n.gpus = gpus.iter().map(gpu_from_pb).collect();
        }
        st.touch(node);
    }

    /// Records the pods' device allocations a node's kubelet made, as slices of the pods' tenants
    /// (level-triggered: the report is the node's whole truth). Kubelet slices hold no agent-side
    /// state, so they are never torn down by the controller; their pod's end releases them.
    pub async fn apply_kubelet_allocations(
        &self,
        node: &str,
        report: &pb::KubeletAllocations,
    ) -> Result<usize, tonic::Status> {
        let now = self.clock.now_ms();
        let changes = {
            let st = self.lock();
            let existing: Vec<SliceRecord> = st
                .live_on_node(node)
                .filter(|s| crate::api::kubelet::is_kubelet_slice(s))
                .cloned()
                .collect();
            crate::api::kubelet::kubelet_slice_changes(node, &existing, report, now)?
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
        // reports every pod at once). Each part is durable before memory shows it; should a later
        // part fail, the report is level-triggered and the next one redoes what is missing.
        for part in all.chunks(crate::ledger::SUBMISSION_MAX_OPS) {
            self.ledger
                .commit(part)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut st = self.lock();
            for r in part {
                st.put(r.clone());
            }
        }
        for r in &all {
            self.emit(
                pb::SliceEventKind::StateChanged,
                r,
                format!("kubelet slice {} is {}", r.id, r.state.as_str()),
            );
        }
        Ok(all.len())
    }

    /// Takes a batch of samples from a node's agent: keeps them, and attributes the energy of every
    /// attribution window they close.
    pub fn ingest_samples(&self, node: &str, batch: &pb::SampleBatch) {
        let accepted = self.telemetry.ingest(node, batch);
        crate::reclaim::record_usage(self, node, &accepted);
        if accepted.is_empty() {
            return;
        }
        let idle_threshold_pct = self.reclaim.threshold_pct();
        let st = self.lock();
        let model_of = |gpu: &str| {
            st.nodes
                .get(node)
                .and_then(|n| n.gpus.iter().find(|g| g.uuid == gpu))
                .map(|g| g.model.name().to_string())
                .unwrap_or_default()
        };
        let holders = |gpu: &str, iv: crate::energy::Interval| holders_of(&st, gpu, iv);
        let mut energy = self.energy_lock();
        let closed = energy.ingest(node, &model_of, &accepted, &holders);
        // Folded under the energy lock, so the records and the hours always hold the same
        // intervals (a report compares them).
        self.history_lock().fold(&closed, idle_threshold_pct);
        drop(energy);
        self.metrics.record_energy(&closed);
    }

    fn energy_lock(&self) -> MutexGuard<'_, crate::energy::accounting::Accountant> {
        self.energy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn history_lock(&self) -> MutexGuard<'_, crate::energy::history::Rollups> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the energy accounting settings (site carbon factors, window, policy). Intervals
    /// already accounted are dropped: call this before samples arrive. The stored history stays.
    pub fn configure_energy(&self, config: crate::energy::accounting::AccountingConfig) {
        let mut energy = self.energy_lock();
        self.history_lock().configure(config.policy);
        *energy = crate::energy::accounting::Accountant::new(config);
    }

    /// Stores the hours of energy history that changed since the last flush, each whole, one
    /// submission each (a rollup of many tenants is large; see `docs/DURABILITY.md`). Returns the
    /// hours stored. Called by the housekeeping task every `energy_flush_interval`.
    pub async fn flush_energy_history(&self) -> Result<usize, ControllerError> {
        use crate::energy::history::MAX_HOUR_BYTES;
        use greenslice_core::time::HOUR_MS;
        let ledger_err = |e: crate::ledger::LedgerError| ControllerError::Ledger(e.to_string());
        self.prune_energy_history().await?;
        // Hours folded into but not loaded at start: merge in what is stored before storing them.
        let unbased = self.history_lock().unbased_dirty();
        for hour in unbased {
            let stored = self
                .ledger
                .load_hours(hour, hour + HOUR_MS)
                .await
                .map_err(ledger_err)?;
            let mut h = self.history_lock();
            match stored.into_iter().next() {
                Some(s) => h.rebase(s),
                None => h.mark_based(hour),
            }
        }
        let dirty = self.history_lock().to_flush();
        let mut stored = Vec::with_capacity(dirty.len());
        let mut unstored = 0;
        for hour in dirty {
            let bytes = serde_json::to_vec(&hour).map_or(0, |v| v.len());
            if bytes > MAX_HOUR_BYTES {
                // etcd refuses values over 1.5 MiB, and a refused transaction would fail the
                // slice commits batched with it.
                warn!(
                    hour = hour.hour_start_ms,
                    bytes,
                    tenants = hour.tenants.len(),
                    "energy history: hour rollup too large to store; it stays in memory only"
                );
                unstored += 1;
                continue;
            }
            Self::durable(
                self.ledger
                    .submit(vec![Op::PutHour(Box::new(hour.clone()))]),
            )
            .await?;
            self.metrics.history_hours_stored.inc();
            stored.push(hour);
        }
        self.metrics.history_hours_unstored.set(unstored);
        let keep_from = u64::try_from(self.clock.now_ms())
            .unwrap_or(0)
            .saturating_sub(RECENT_HOURS_MS);
        self.history_lock().flushed(&stored, keep_from);
        Ok(stored.len())
    }

    /// Deletes stored hours older than `energy_history_retention`, at most once an hour (from
    /// [`Self::flush_energy_history`]). Without it the history grows forever: about 2 GB a year at
    /// 1,000 tenants, etcd's whole default quota, after which every write fails.
    async fn prune_energy_history(&self) -> Result<(), ControllerError> {
        use std::sync::atomic::Ordering;
        let Some(keep) = self.config.energy_history_retention else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        if now.saturating_sub(self.history_pruned_ms.load(Ordering::Relaxed))
            < greenslice_core::time::HOUR_MS_I64
        {
            return Ok(());
        }
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let before = crate::energy::history::hour_of(
            u64::try_from(now.saturating_sub(keep_ms)).unwrap_or(0),
        );
        Self::durable(
            self.ledger
                .submit(vec![crate::ledger::Op::DeleteHoursBefore(before)]),
        )
        .await?;
        self.history_pruned_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// The activity threshold (percent of capacity) under which held capacity counts as idle in
    /// energy accounting and reports: the idle policy's own (`[idle] threshold_pct`), so what a
    /// report calls idle GPU-hours is what reclaim calls idle.
    pub fn idle_threshold_pct(&self) -> f64 {
        self.reclaim.threshold_pct()
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

    /// For a report over `[from_ms, to_ms)`: the interval records in memory and the hour rollups
    /// (stored, with those not yet stored laid over them), read together so they hold the same
    /// intervals, and the accounting settings.
    pub async fn energy_sources(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<crate::report::Sources, ControllerError> {
        use crate::energy::history::{hour_at_or_after, hour_of};
        let (first, last) = (hour_of(from_ms), hour_at_or_after(to_ms));
        let stored = self
            .ledger
            .load_hours(first, last)
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))?;
        let e = self.energy_lock();
        let hours = self.history_lock().overlay(stored, first, last);
        // Records of the whole hours, so that an hour's count compares with its rollup's.
        Ok(crate::report::Sources::split(
            e.records(first, last),
            hours,
            from_ms,
            to_ms,
            e.config().policy,
            e.skipped,
        ))
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
        let slices = st.all().filter(|s| s.is_live()).cloned().collect();
        (nodes, view, slices)
    }
}

/// The slices that held `gpu` during `iv`, with the capacity they held and for how long
/// ([`SliceRecord::held_ms`]).
fn holders_of(
    st: &ClusterState,
    gpu: &str,
    iv: crate::energy::Interval,
) -> Vec<crate::energy::Holder> {
    use crate::energy::Holder;
    let model = st
        .nodes
        .values()
        .flat_map(|n| &n.gpus)
        .find(|g| g.uuid == gpu)
        .map(|g| g.model.clone());
    let mut out: Vec<Holder> = st
        .slices_on_gpu(gpu)
        .filter_map(|s| {
            let (from, to) = s.held_ms()?;
            let (from, to) = (u64::try_from(from).ok()?, u64::try_from(to).ok()?);
            let held_ms = to.min(iv.end_ms).saturating_sub(from.max(iv.start_ms));
            if held_ms == 0 {
                return None;
            }
            let capacity = greenslice_core::capacity::held_per_gpu(&s.spec.kind, model.as_ref())?;
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

/// Finished slices one pruning step looks at under the state lock: about a millisecond of work.
pub const PRUNE_STEP: usize = 1024;

/// How the reason of a RELEASING slice whose teardown the hardware refused begins.
pub const RELEASE_BLOCKED: &str = "teardown refused by node ";

/// How far back the energy history's hours are kept in memory (and loaded at start): the current
/// and the previous hour, since an interval that starts in one hour may close in the next.
const RECENT_HOURS_MS: u64 = 2 * greenslice_core::time::HOUR_MS;

/// Looks for orphans and expired slices every `every`, and stores the energy history's changed
/// hours every `flush_every`, until the controller is dropped.
async fn housekeeping(controller: Weak<Controller>, every: Duration, flush_every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(c) = controller.upgrade() else {
            return;
        };
        c.sweep_orphans().await;
        c.retry_refused_releases().await;
        if let Err(e) = c.prune_terminal().await {
            warn!(error = %e, "could not forget expired slices");
        }
        if last_flush.elapsed() >= flush_every {
            last_flush = tokio::time::Instant::now();
            if let Err(e) = c.flush_energy_history().await {
                c.metrics.history_flush_failures.inc();
                warn!(error = %e, "could not store the energy history; retrying next time");
            }
        }
    }
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

#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod history_tests;

#[cfg(test)]
mod capability_tests;

#[cfg(test)]
mod idle_config_tests;
