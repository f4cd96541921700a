//! The ledger: where the controller commits desired state before acknowledging it.
//!
//! [`Ledger`] is the seam. Three implementations:
//! - [`memory::MemoryLedger`]: in memory, nothing survives the process (tests, the demo).
//! - [`redb::RedbLedger`]: an embedded, crash-safe file store; the default for one controller.
//! - [`etcd::EtcdLedger`]: etcd, for several controller replicas with one elected leader.
//!
//! Both durable ledgers batch concurrent commits through [`GroupCommit`]: one committer task drains
//! a queue and writes every pending record in one durable transaction, and each caller awaits its own
//! answer. A single durable transaction costs a disk flush (redb: ~0.2 ms, about 4,800/s on a small
//! machine) or a Raft round (etcd), so committing one record per transaction would cap the
//! controller's throughput at that rate; with group commit the cost is shared by every record that
//! arrived while the previous transaction was being written.
//!
//! Tier 0 (a lower room): imports the model and energy's history types; nothing of the engine, API
//! or server.

pub mod etcd;
pub mod memory;
pub mod redb;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::energy::history::HourRollup;
use crate::model::events::{SliceEvent, prune_through};
use crate::model::slice::SliceRecord;

pub use memory::MemoryLedger;

/// Why a ledger operation failed. Cloned to every caller of a failed group commit.
#[derive(Debug, Clone, Error)]
pub enum LedgerError {
    /// The store cannot be reached or refused the write; nothing was committed.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be decoded.
    #[error("ledger data corrupt: {0}")]
    Corrupt(String),
    /// This controller is no longer the elected leader; another one may be writing.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The ledger was opened with settings it cannot use.
    #[error("ledger configuration: {0}")]
    Config(String),
}

/// A commit in flight: resolves once the change is durable (or failed).
pub type Commit = Pin<Box<dyn Future<Output = Result<(), LedgerError>> + Send>>;

/// Durable desired state.
///
/// [`Ledger::submit`] queues a change synchronously and returns a future that resolves once it is
/// durable. Changes are applied in the order they were submitted, so a caller that submits while
/// holding the lock that ordered its in-memory change gets the same order in the ledger.
pub trait Ledger: Send + Sync {
    /// Queues `ops` to be applied atomically (all or none), after everything submitted before.
    fn submit(&self, ops: Vec<Op>) -> Commit;
    /// Every record stored.
    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>>;
    /// Short name for logs ("memory", "redb", "etcd").
    fn name(&self) -> &'static str;
    /// Stored energy rollups of the hours starting in `[from_ms, to_ms)`, oldest first. They are
    /// written with [`Op::PutHour`], in their own keyspace.
    fn load_hours(&self, from_ms: u64, to_ms: u64) -> LoadHours<'_>;
    /// The stored slice events ([`Op::PutEvent`]), oldest (lowest revision) first: at most the
    /// last `keep` of every submission's `keep`, in their own keyspace.
    fn load_events(&self) -> LoadEvents<'_>;

    /// Stores (upserts) slice records atomically and waits until they are durable.
    fn commit(&self, records: &[SliceRecord]) -> Commit {
        self.submit(records.iter().cloned().map(Op::Put).collect())
    }
    /// Forgets slice records (finished slices past their retention). Unknown ids are ignored.
    /// Not atomic as a whole: the ids go in submissions of at most [`SUBMISSION_MAX_OPS`] (each atomic,
    /// all queued now, in order), since a single submission is written as one transaction however
    /// large, and etcd refuses one of more than 128 operations. Group commit merges consecutive
    /// submissions up to each ledger's own limit (redb: 4,096 ops).
    fn remove(&self, ids: &[String]) -> Commit {
        let commits: Vec<Commit> = ids
            .chunks(SUBMISSION_MAX_OPS)
            .map(|c| self.submit(c.iter().cloned().map(Op::Delete).collect()))
            .collect();
        Box::pin(async move {
            for c in commits {
                c.await?;
            }
            Ok(())
        })
    }
}

/// Whether this process may still act as the leader: checked before every agent command, every
/// tenant change and by `/readyz`. Writes are fenced in the ledger itself; this guard stops what
/// the ledger cannot fence (commands to agents, answers from memory) as soon as leadership is in
/// doubt.
pub trait LeaseGuard: Send + Sync + std::fmt::Debug {
    fn held(&self) -> bool;
}

/// Most ops in one submission that every ledger writes as one transaction: etcd's default
/// `--max-txn-ops`, the smallest transaction limit of the ledgers. A larger submission is refused by
/// etcd; changes that need not be atomic as a whole go in parts of at most this many
/// ([`Ledger::remove`], kubelet reports).
pub const SUBMISSION_MAX_OPS: usize = etcd::MAX_TXN_OPS;

/// Stored hour rollups, as [`Ledger::load_hours`] reads them.
pub type LoadHours<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<HourRollup>, LedgerError>> + Send + 'a>>;

/// Stored slice events, as [`Ledger::load_events`] reads them.
pub type LoadEvents<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<SliceEvent>, LedgerError>> + Send + 'a>>;

/// One change in a batch.
// Ops are built once and moved into a batch; boxing the record would add an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put(SliceRecord),
    Delete(String),
    /// Upserts the energy rollup of one hour, whole (a keyspace of its own, keyed by hour start).
    PutHour(Box<HourRollup>),
    /// Deletes the stored hours that start before this time (Unix ms): the history's retention.
    DeleteHoursBefore(u64),
    /// Stores a slice event under its revision, in the same transaction as the change it
    /// describes, and deletes the stored events older than the last `keep` (see
    /// [`events_prune_through`]): the table stays bounded without a pass of its own. The event is
    /// shared with the engine, which delivers it once the commit is durable.
    PutEvent {
        event: Arc<SliceEvent>,
        keep: u64,
    },
}

/// What a change is about: a slice (by id) or an hour of energy history (by start, Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKey<'a> {
    Slice(&'a str),
    Hour(u64),
    HoursBefore(u64),
    Event(u64),
}

impl Op {
    /// What the change is about; two changes with one key in a batch are merged.
    pub fn key(&self) -> OpKey<'_> {
        match self {
            Op::Put(r) => OpKey::Slice(&r.id),
            Op::Delete(id) => OpKey::Slice(id),
            Op::PutHour(h) => OpKey::Hour(h.hour_start_ms),
            Op::DeleteHoursBefore(t) => OpKey::HoursBefore(*t),
            Op::PutEvent { event, .. } => OpKey::Event(event.revision),
        }
    }
}

/// The revision through which a batch's stores delete stored events: the batch's newest event
/// less its `keep` (None: no event in the batch, or none old enough). One range delete per batch,
/// in the batch's transaction; every ledger uses it, so they keep the same events.
pub fn events_prune_through(ops: &[Op]) -> Option<u64> {
    ops.iter()
        .filter_map(|op| match op {
            Op::PutEvent { event, keep } => prune_through(event.revision, *keep),
            _ => None,
        })
        .max()
}

/// A store that writes a batch of changes in one durable transaction.
#[async_trait::async_trait]
pub trait BatchStore: Send + Sync + 'static {
    /// Applies every op, in order, atomically and durably. Ops name distinct ids.
    async fn write_batch(&self, ops: Vec<Op>) -> Result<(), LedgerError>;
}

struct Job {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), LedgerError>>,
}

/// Counters of a [`GroupCommit`], for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Durable transactions written.
    pub transactions: AtomicU64,
    /// Ops written (after merging repeated ids within a batch).
    pub ops: AtomicU64,
    /// Callers answered.
    pub commits: AtomicU64,
}

/// Batches concurrent commits into one durable transaction each (group commit).
///
/// A committer task takes the first waiting commit, then every other one already queued (up to
/// `max_ops` ops), merges them (the last change to an id wins, which is the order callers were
/// queued in) and writes them with one [`BatchStore::write_batch`]. Every caller of the batch gets
/// the same answer. Batches are written one at a time, so changes to one id are applied in order.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<GroupStats>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats)
            .finish()
    }
}

impl GroupCommit {
    /// Starts the committer task on the current tokio runtime. `max_ops` bounds one transaction
    /// (etcd refuses transactions of more than 128 operations by default); a single commit larger
    /// than that is still written alone.
    pub fn spawn(store: Arc<dyn BatchStore>, max_ops: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(GroupStats::default());
        tokio::spawn(committer(store, rx, max_ops.max(1), stats.clone()));
        GroupCommit { tx, stats }
    }

    /// Queues `ops` now; the returned future resolves once they are durable (or the batch failed).
    /// Every caller's ops are already queued when this returns, so submission order is kept.
    pub fn submit(&self, ops: Vec<Op>) -> Commit {
        if ops.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Job { ops, done });
        Box::pin(async move {
            sent.map_err(|_| LedgerError::Unavailable("committer stopped".into()))?;
            rx.await
                .map_err(|_| LedgerError::Unavailable("committer stopped mid-batch".into()))?
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }
}

async fn committer(
    store: Arc<dyn BatchStore>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max_ops: usize,
    stats: Arc<GroupStats>,
) {
    // A job taken from the queue that did not fit the previous batch.
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        // Let the tasks that are ready to run queue their commits first (a yield costs
        // microseconds, a transaction a disk flush): fewer, fuller transactions for the same work.
        tokio::task::yield_now().await;
        let mut n = first.ops.len();
        let mut jobs = vec![first];
        while n < max_ops {
            match rx.try_recv() {
                Ok(j) if n + j.ops.len() <= max_ops => {
                    n += j.ops.len();
                    jobs.push(j);
                }
                Ok(j) => {
                    carry = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        let ops = merge(&jobs);
        let count = ops.len() as u64;
        let result = store.write_batch(ops).await;
        if let Err(e) = &result {
            // Callers that wait get the error; this covers the commits nobody waits for.
            tracing::warn!(error = %e, commits = jobs.len(), "ledger batch failed");
        }
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(count, Ordering::Relaxed);
        stats
            .commits
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for j in jobs {
            let _ = j.done.send(result.clone());
        }
    }
}

/// Merges the jobs' ops in queue order, keeping only the last change to each id (at the position
/// of its first appearance, so the batch stays in a stable order).
fn merge(jobs: &[Job]) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(jobs.iter().map(|j| j.ops.len()).sum());
    let mut at: HashMap<OpKey<'_>, usize> = HashMap::new();
    for op in jobs.iter().flat_map(|j| &j.ops) {
        match at.get(&op.key()) {
            Some(&i) => out[i] = op.clone(),
            None => {
                at.insert(op.key(), out.len());
                out.push(op.clone());
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records batches; each write takes a little while so commits pile up behind it.
    #[derive(Default)]
    struct Slow {
        batches: Mutex<Vec<Vec<Op>>>,
    }

    #[async_trait::async_trait]
    impl BatchStore for Slow {
        async fn write_batch(&self, ops: Vec<Op>) -> Result<(), LedgerError> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.batches.lock().unwrap().push(ops);
            Ok(())
        }
    }

    #[tokio::test]
    async fn concurrent_commits_share_transactions_and_all_get_answers() {
        let store = Arc::new(Slow::default());
        let g = GroupCommit::spawn(store.clone(), 128);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                g.submit(vec![Op::Delete(format!("s-{i}"))]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let batches = store.batches.lock().unwrap();
        let total: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(total, 200);
        assert!(batches.iter().all(|b| b.len() <= 128));
        assert!(
            batches.len() < 50,
            "200 concurrent commits took {} transactions",
            batches.len()
        );
    }

    #[tokio::test]
    async fn a_large_remove_is_written_in_transactions_etcd_accepts() {
        struct Group(GroupCommit);
        impl Ledger for Group {
            fn submit(&self, ops: Vec<Op>) -> Commit {
                self.0.submit(ops)
            }
            fn load(
                &self,
            ) -> Pin<Box<dyn Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>>
            {
                Box::pin(async { Ok(Vec::new()) })
            }
            fn name(&self) -> &'static str {
                "test"
            }
            fn load_hours(&self, _: u64, _: u64) -> LoadHours<'_> {
                Box::pin(async { Ok(Vec::new()) })
            }
            fn load_events(&self) -> LoadEvents<'_> {
                Box::pin(async { Ok(Vec::new()) })
            }
        }
        let store = Arc::new(Slow::default());
        let ledger = Group(GroupCommit::spawn(store.clone(), etcd::MAX_TXN_OPS));
        let ids: Vec<String> = (0..1000).map(|i| format!("s-{i}")).collect();
        ledger.remove(&ids).await.unwrap();
        let batches = store.batches.lock().unwrap();
        assert!(
            batches.iter().all(|b| b.len() <= etcd::MAX_TXN_OPS),
            "{:?}",
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let written: Vec<OpKey<'_>> = batches.iter().flatten().map(Op::key).collect();
        let expected: Vec<OpKey<'_>> = ids.iter().map(|id| OpKey::Slice(id)).collect();
        assert_eq!(written, expected, "every id, in order");
    }

    /// Hours are upserted whole, read back by range in time order, and kept apart from slices.
    pub(crate) async fn hours_round_trip(l: &dyn Ledger) {
        use crate::energy::history::tests::{T0, one_interval_hour};
        use greenslice_core::time::HOUR_MS;
        let hour = |i: u64, mj: u64| {
            Op::PutHour(Box::new(one_interval_hour(T0 + i * HOUR_MS, "g", 1, mj)))
        };
        l.submit(vec![hour(0, 10), hour(1, 20), hour(2, 30)])
            .await
            .unwrap();
        l.submit(vec![hour(1, 25)]).await.unwrap();
        let mj = |hours: Vec<HourRollup>| -> Vec<(u64, u64)> {
            hours
                .into_iter()
                .map(|h| (h.hour_start_ms, h.cluster.energy.tenants_mj))
                .collect()
        };
        assert_eq!(
            mj(l.load_hours(T0 + HOUR_MS, T0 + 3 * HOUR_MS).await.unwrap()),
            vec![(T0 + HOUR_MS, 25), (T0 + 2 * HOUR_MS, 30)],
            "the upsert replaced the hour whole; the range is half-open"
        );
        assert_eq!(mj(l.load_hours(0, T0 + 1).await.unwrap()), vec![(T0, 10)]);
        assert!(
            l.load_hours(T0 + 3 * HOUR_MS, u64::MAX)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(l.load().await.unwrap().is_empty(), "hours are not slices");
        // Retention: the hours that start before the cut go, the rest stay.
        l.submit(vec![Op::DeleteHoursBefore(T0 + 2 * HOUR_MS)])
            .await
            .unwrap();
        assert_eq!(
            mj(l.load_hours(0, u64::MAX).await.unwrap()),
            vec![(T0 + 2 * HOUR_MS, 30)]
        );
    }

    #[tokio::test]
    async fn the_memory_ledger_stores_hours() {
        hours_round_trip(&MemoryLedger::default()).await;
    }

    /// An event of `revision` about slice "a".
    pub(crate) fn event(revision: u64) -> SliceEvent {
        use crate::model::events::EventKind;
        SliceEvent {
            kind: EventKind::StateChanged,
            slice: record("a", greenslice_core::slice::SliceState::Active),
            message: format!("event {revision}"),
            deadline_unix_ms: 0,
            at_unix_ms: 1_000 + revision as i64,
            revision,
        }
    }

    /// What [`events_round_trip`] leaves stored.
    pub(crate) const EVENTS_LEFT: [u64; 2] = [4, 6];

    /// Events are stored whole with the change they go with, read back by revision, and pruned to
    /// the last `keep` in the transaction that adds to them; a gap (a failed commit's revision)
    /// is just absent.
    pub(crate) async fn events_round_trip(l: &dyn Ledger) {
        use greenslice_core::slice::SliceState;
        let put = |r: u64| Op::PutEvent {
            event: Arc::new(event(r)),
            keep: 3,
        };
        l.submit(vec![Op::Put(record("a", SliceState::Active)), put(1)])
            .await
            .unwrap();
        assert_eq!(l.load_events().await.unwrap(), vec![event(1)]);
        assert_eq!(
            l.load().await.unwrap().len(),
            1,
            "the record of the same commit"
        );
        l.submit(vec![put(2), put(3), put(4)]).await.unwrap();
        let revs = |evs: Vec<SliceEvent>| evs.iter().map(|e| e.revision).collect::<Vec<_>>();
        assert_eq!(
            revs(l.load_events().await.unwrap()),
            vec![2, 3, 4],
            "the last 3"
        );
        l.submit(vec![put(6)]).await.unwrap();
        assert_eq!(revs(l.load_events().await.unwrap()), EVENTS_LEFT);
        assert_eq!(l.load_events().await.unwrap()[1], event(6), "stored whole");
    }

    #[tokio::test]
    async fn the_memory_ledger_stores_events_bounded() {
        events_round_trip(&MemoryLedger::default()).await;
    }

    pub(crate) fn record(id: &str, state: greenslice_core::slice::SliceState) -> SliceRecord {
        use greenslice_core::slice::{SliceKind, SliceSpec};
        let spec = SliceSpec {
            kind: SliceKind::Whole { count: 1 },
            gpu_model: None,
            slice_class: None,
        };
        SliceRecord {
            state,
            ..SliceRecord::placed(id.into(), "t", spec, "n".into(), vec!["GPU-1".into()], 1)
        }
    }

    #[tokio::test]
    async fn last_change_to_an_id_in_a_batch_wins() {
        use greenslice_core::slice::SliceState::{Active, Pending};
        let (a, _) = oneshot::channel();
        let (b, _) = oneshot::channel();
        let jobs = vec![
            Job {
                ops: vec![Op::Put(record("x", Pending)), Op::Delete("y".into())],
                done: a,
            },
            Job {
                ops: vec![Op::Put(record("x", Active))],
                done: b,
            },
        ];
        let merged = merge(&jobs);
        assert_eq!(
            merged,
            vec![Op::Put(record("x", Active)), Op::Delete("y".into())]
        );
    }
}
