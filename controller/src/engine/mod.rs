//! The engine: the [`Controller`], split by operation. It validates requests, places them, commits
//! them to the ledger, drives the node agents to apply them, and answers only once the agent
//! confirmed.
//!
//! Rooms (each an `impl Controller` block over the private state declared here):
//! - [`lifecycle`]: request, get, list, keep. [`release`]: release and refused teardowns.
//! - [`recovery`]: node registration and reconcile, drain, disconnects.
//! - [`sweep`]: orphans, free MIG instances, forgetting expired slices.
//! - [`kubelet`]: slices the kubelet granted. [`energy_book`]: samples, attribution, history.
//! - [`feed`]: slice events, durable with their changes and delivered in revision order.
//!
//! May import the lower rooms (model, placement, telemetry, energy, reclaim's pure decisions,
//! report, ledger, obs); never `api`, `server` or `cli`, which sit above it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use greenslice_core::clock::Clock;
use greenslice_core::slice::SliceState;
use rand::Rng;
use tokio::sync::broadcast;
use tracing::{info, warn};

use self::sweep::OrphanKey;
use crate::agents::Agents;
use crate::error::ControllerError;
use crate::ledger::{Commit, Ledger, Op};
use crate::model::events::{EventLog, SliceEvent, first_revision, next_after_stored};
use crate::model::slice::SliceRecord;
use crate::model::state::{ClusterState, NodeRecord};
use crate::placement::{self, Policy};

mod dra;
mod energy_book;
mod feed;
mod gauges;
mod kubelet;
mod lifecycle;
mod notices;
mod reclaim_loop;
mod recovery;
mod relayout;
mod release;
mod sweep;

pub use dra::ClaimDevice;
pub use recovery::Reconcile;

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
    /// How many recent slice events are kept for watches resumed from a revision; a resume from
    /// before them is told REVISION_COMPACTED.
    pub event_log_capacity: usize,
    /// How long a watch that asked for bookmarks goes without an event before it gets one.
    pub bookmark_interval: Duration,
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
            // About 10 MB of events: minutes of a busy cluster's history.
            event_log_capacity: 16_384,
            bookmark_interval: Duration::from_secs(10),
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

/// Live slice events, each shared by the log and every watcher.
pub type EventFeed = broadcast::Receiver<Arc<SliceEvent>>;

/// The controller core, shared by the gRPC services.
pub struct Controller {
    state: Mutex<ClusterState>,
    pub agents: Agents,
    ledger: Arc<dyn Ledger>,
    policy: Arc<dyn Policy>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<Arc<SliceEvent>>,
    /// Where events get their revisions and are queued with their changes (see [`feed`]). Taken
    /// inside the state lock, never the other way.
    outbox: Mutex<feed::Outbox>,
    /// Recent delivered events by revision. Events are kept and broadcast under this lock (by the
    /// delivery task only, in revision order), so watchers receive them in revision order; never
    /// held with the state lock taken inside it.
    log: Mutex<EventLog<Arc<SliceEvent>>>,
    config: CoreConfig,
    /// Samples from the agents.
    pub telemetry: crate::telemetry::Telemetry,
    /// Idle reclaim: policy, warnings and keeps (see [`crate::reclaim`]).
    pub reclaim: crate::reclaim::Reclaimer,
    /// Prometheus metrics.
    pub metrics: crate::obs::Metrics,
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
    /// True once the process is stopping ([`Controller::begin_shutdown`]).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Slices whose PENDING commit is not durable yet, with its outcome once known (true:
    /// durable). An idempotent retry waits on it instead of answering from memory. Locked after
    /// `state` when both are held.
    undurable: Mutex<HashMap<String, tokio::sync::watch::Receiver<Option<bool>>>>,
    /// The leadership this controller acts under, when it was elected ([`Controller::set_lease`]).
    lease: std::sync::OnceLock<Arc<dyn crate::ledger::LeaseGuard>>,
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
pub(super) fn new_slice_id(now_ms: i64) -> String {
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
        let last_change_ms = records.iter().map(|r| r.updated_ms).max().unwrap_or(0);
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
        // The kept events: a watch resumes across the restart or failover. Revisions go on
        // above the last stored one (see `next_after_stored`); the clock only when none is stored.
        let stored = ledger
            .load_events()
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))?;
        let first = next_after_stored(
            stored.last().map(|e| e.revision),
            first_revision(clock.now_ms(), last_change_ms),
        );
        let oldest = stored.first().map_or(first, |e| e.revision);
        let mut log = EventLog::new(oldest, config.event_log_capacity);
        let loaded = stored.len();
        for ev in stored {
            let r = ev.revision;
            if !log.push(r, Arc::new(ev)) {
                warn!(revision = r, "stored events out of order: one dropped");
            }
        }
        info!(events = loaded, next_revision = first, "event log loaded");
        let (outbox, to_deliver) = feed::Outbox::new(first, config.event_log_capacity);
        let sweep = config.sweep_interval;
        let flush = config.energy_flush_interval;
        let c = Arc::new(Controller {
            state: Mutex::new(state),
            agents: Agents::default(),
            ledger,
            policy: Arc::from(policy),
            clock,
            events: broadcast::channel(4096).0,
            outbox: Mutex::new(outbox),
            log: Mutex::new(log),
            config,
            telemetry: Default::default(),
            reclaim: Default::default(),
            metrics: Default::default(),
            energy: Mutex::new(crate::energy::accounting::Accountant::new(accounting)),
            history: Mutex::new(history),
            orphans: Mutex::new(HashMap::new()),
            held_warned_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            history_pruned_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            stopping: tokio::sync::watch::Sender::new(false),
            undurable: Mutex::new(HashMap::new()),
            lease: std::sync::OnceLock::new(),
        });
        let kept: Vec<(String, i64)> = c.with_state(|st| {
            st.all()
                .filter(|s| s.is_live())
                .filter_map(|s| s.kept_until_ms.map(|u| (s.id.clone(), u)))
                .collect()
        });
        c.reclaim.restore_keeps(kept);
        tokio::spawn(feed::deliver(Arc::downgrade(&c), to_deliver));
        tokio::spawn(housekeeping(Arc::downgrade(&c), sweep, flush));
        Ok(c)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ClusterState> {
        // State is plain data updated in short critical sections that do not panic midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the controller as stopping: long-lived streams (agent sessions) end, so a graceful
    /// stop of the server can complete.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Fences the controller by `lease`: once it is no longer held, no agent command goes out,
    /// no tenant change is accepted and `/readyz` answers 503 (set once, by the elected leader).
    pub fn set_lease(&self, lease: Arc<dyn crate::ledger::LeaseGuard>) {
        let _ = self.lease.set(lease);
    }

    /// Whether this controller may act: it holds its leadership, or has none to hold (one
    /// controller on redb or memory).
    pub fn leading(&self) -> bool {
        self.lease.get().is_none_or(|l| l.held())
    }

    /// [`Controller::leading`] as an error to answer with.
    pub(super) fn ensure_leading(&self) -> Result<(), ControllerError> {
        if self.leading() {
            Ok(())
        } else {
            Err(ControllerError::NotLeader(
                "this controller's leadership is in doubt (lease not renewed in time); retry: a standby takes over"
                    .into(),
            ))
        }
    }

    /// Resolves once [`Controller::begin_shutdown`] was called.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        // The sender lives as long as self, so wait_for ends only when stopping is set.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The placement policy.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy.clone()
    }

    /// Subscribes to slice events.
    pub fn subscribe(&self) -> EventFeed {
        self.events.subscribe()
    }

    fn event_log(&self) -> MutexGuard<'_, EventLog<Arc<SliceEvent>>> {
        // The log is plain data changed in short sections that do not panic midway.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision of the last event: everything up to it is reflected in state read after.
    pub fn revision(&self) -> u64 {
        self.event_log().head()
    }

    /// Subscribes to slice events after revision `after` (None: from now on): the kept events
    /// after it, oldest first, and a receiver of every later one, with nothing between the two
    /// missed or repeated. REVISION_COMPACTED when events after `after` are no longer kept.
    pub fn watch_from(
        &self,
        after: Option<u64>,
    ) -> Result<(Vec<Arc<SliceEvent>>, EventFeed), ControllerError> {
        let log = self.event_log();
        let backlog = match after {
            None => Vec::new(),
            Some(r) => log
                .since(r)
                .map_err(|c| ControllerError::RevisionCompacted {
                    asked: c.asked,
                    oldest: c.oldest,
                })?
                .into_iter()
                .map(|(_, ev)| ev)
                .collect(),
        };
        Ok((backlog, self.events.subscribe()))
    }

    /// How long a bookmarking watch waits without events before it gets a bookmark.
    pub fn bookmark_interval(&self) -> Duration {
        self.config.bookmark_interval
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Runs `f` on the cluster state (read-only, under the state lock: keep it short).
    pub fn with_state<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.lock())
    }

    /// Queues a record for the ledger. Called with the state lock held, so the ledger sees changes
    /// to one slice in the order memory saw them.
    pub(super) fn submit(&self, r: &SliceRecord) -> Commit {
        self.ledger.submit(vec![Op::Put(r.clone())])
    }

    pub(super) async fn durable(commit: Commit) -> Result<(), ControllerError> {
        commit
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))
    }

    /// Updates a slice in memory and the ledger, and announces it.
    pub(super) async fn transition(
        &self,
        id: &str,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<SliceRecord, ControllerError> {
        self.transition_if(id, None, f)
            .await?
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    /// Like `transition`, but only when the slice is in `expected` (if given); None otherwise.
    pub(super) async fn transition_if(
        &self,
        id: &str,
        expected: Option<SliceState>,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<Option<SliceRecord>, ControllerError> {
        let Some((prior, updated, commit)) =
            self.transition_queued_as(id, expected, true, true, f)?
        else {
            return Ok(None);
        };
        // The commit resolves once its STATE_CHANGED event is delivered (see `feed`).
        self.durable_or_undo(prior, &updated, commit).await?;
        Ok(Some(updated))
    }

    /// Waits until a queued change is durable. When it is not, memory goes back to `prior` (what
    /// the ledger holds), unless something changed the slice since (its own commit then carries
    /// the whole record).
    pub(super) async fn durable_or_undo(
        &self,
        prior: Option<SliceRecord>,
        updated: &SliceRecord,
        commit: Commit,
    ) -> Result<(), ControllerError> {
        let Err(e) = Self::durable(commit).await else {
            return Ok(());
        };
        let mut st = self.lock();
        if let Some(prior) = prior
            && st.slice(&updated.id) == Some(updated)
        {
            warn!(slice = %updated.id, error = %e, "commit failed: the change is undone in memory");
            st.put(prior);
        }
        Err(e)
    }

    /// Changes a slice in memory and queues the change for the ledger (ordered by the state lock,
    /// see [`Controller::submit`]) without waiting for it to be durable: the record before (when
    /// `keep_prior`, for [`Controller::durable_or_undo`]) and after, and the commit. None when
    /// the slice is not in `expected` (if given).
    /// No event goes with the change (the state does not change: a keep).
    pub(super) fn transition_queued(
        &self,
        id: &str,
        expected: Option<SliceState>,
        keep_prior: bool,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<Option<(Option<SliceRecord>, SliceRecord, Commit)>, ControllerError> {
        self.transition_queued_as(id, expected, keep_prior, false, f)
    }

    /// [`Controller::transition_queued`], with the STATE_CHANGED event in the same commit when
    /// `announce` (see [`feed`]).
    fn transition_queued_as(
        &self,
        id: &str,
        expected: Option<SliceState>,
        keep_prior: bool,
        announce: bool,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<Option<(Option<SliceRecord>, SliceRecord, Commit)>, ControllerError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let current = st
            .slice(id)
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        if expected.is_some_and(|e| e != current.state) {
            return Ok(None);
        }
        let prior = keep_prior.then(|| current.clone());
        let updated: SliceRecord = st
            .update(id, |r| {
                f(r);
                r.updated_ms = now;
            })
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        st.recovering.remove(id);
        let commit = if announce {
            self.submit_announced(&updated)
        } else {
            self.submit(&updated)
        };
        Ok(Some((prior, updated, commit)))
    }

    /// A transition whose durability nobody waits for: the change is queued (so it is written in
    /// order, after everything queued before it and before everything queued after it) and the
    /// caller goes on at once. Only for transitions that recovery redoes by itself when a crash
    /// loses them: PENDING -> ACTIVE (a crash-left PENDING slice whose hardware is on its node is
    /// confirmed ACTIVE when the node registers) and RELEASING -> RELEASED (a crash-left RELEASING
    /// slice is torn down again, which the agent answers as already done, and marked RELEASED).
    /// See docs/DURABILITY.md, "Acknowledged before the last commit". A failed write is logged by
    /// the committer; the next commit of the slice writes its whole record again. Its event is in
    /// its commit, delivered once durable (never, if the write fails: watchers then learn the
    /// slice's state from its next change, whose event carries the whole record).
    pub(super) fn transition_in_background(
        &self,
        id: &str,
        f: impl FnOnce(&mut SliceRecord),
    ) -> Result<SliceRecord, ControllerError> {
        let (_, updated, commit) = self
            .transition_queued_as(id, None, false, true, f)?
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        // Dropping the future does not withdraw the change: it is queued already, and the
        // delivery task publishes its event once durable.
        drop(commit);
        Ok(updated)
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
    /// One page of the inventory: the nodes after the page `token` ended (by name), their
    /// placement views and live slices, and the cluster's totals (GPUs, allocated milli-GPU,
    /// nodes). Refused when the page size is out of range or the token is forged.
    pub fn inventory_page(
        &self,
        page_size: i32,
        token: &str,
    ) -> Result<InventoryPage, ControllerError> {
        self.ensure_leading()?;
        use crate::model::page;
        let size = page::NODE_PAGES.size(page_size)?;
        let after = page::resume_after(page::NODE_SCOPE, token)?;
        let mut st = self.lock();
        let p = st.page_nodes(after.as_deref(), size);
        let nodes: Vec<NodeRecord> = p
            .items
            .iter()
            .filter_map(|n| st.nodes.get(n).cloned())
            .collect();
        let slices: Vec<SliceRecord> = p
            .items
            .iter()
            .flat_map(|n| st.live_on_node(n))
            .cloned()
            .collect();
        let nodes_total = st.nodes.len();
        let full = st.view_cached();
        let (mut gpus_total, mut allocated_milli) = (0usize, 0u64);
        for g in full.nodes.iter().flat_map(|n| &n.gpus) {
            gpus_total += 1;
            allocated_milli += u64::from(1000 - g.free_milli());
        }
        let view = crate::placement::ClusterView {
            nodes: full
                .nodes
                .iter()
                .filter(|n| p.items.binary_search(&n.name).is_ok())
                .cloned()
                .collect(),
        };
        Ok(InventoryPage {
            nodes,
            view,
            slices,
            gpus_total,
            allocated_milli,
            nodes_total,
            next_page_token: p
                .next_after
                .as_deref()
                .map(|k| page::token(page::NODE_SCOPE, k))
                .unwrap_or_default(),
        })
    }
}

/// One page of the inventory (see [`Controller::inventory_page`]).
#[derive(Debug, Clone)]
pub struct InventoryPage {
    pub nodes: Vec<NodeRecord>,
    /// The placement view of the page's nodes.
    pub view: crate::placement::ClusterView,
    /// The live slices on the page's nodes.
    pub slices: Vec<SliceRecord>,
    /// The whole cluster's GPUs.
    pub gpus_total: usize,
    /// Allocated milli-GPU summed over the whole cluster's GPUs.
    pub allocated_milli: u64,
    pub nodes_total: usize,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Finished slices one pruning step looks at under the state lock: about a millisecond of work.
pub const PRUNE_STEP: usize = 1024;

/// How the reason of a RELEASING slice whose teardown the hardware refused begins.
pub const RELEASE_BLOCKED: &str = "teardown refused by node ";

/// How far back the energy history's hours are kept in memory (and loaded at start): the current
/// and the previous hour, since an interval that starts in one hour may close in the next.
pub(super) const RECENT_HOURS_MS: u64 = 2 * greenslice_core::time::HOUR_MS;

/// Looks for orphans and expired slices every `every`, and stores the energy history's changed
/// hours every `flush_every`, until the controller is dropped.
pub(super) async fn housekeeping(
    controller: Weak<Controller>,
    every: Duration,
    flush_every: Duration,
) {
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

pub use placement::FirstFit;

#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod history_tests;

#[cfg(test)]
mod host_demand_tests;

#[cfg(test)]
mod capability_tests;

#[cfg(test)]
mod commit_tests;

#[cfg(test)]
mod feed_tests;

#[cfg(test)]
mod idle_config_tests;

#[cfg(test)]
mod dra_tests;
