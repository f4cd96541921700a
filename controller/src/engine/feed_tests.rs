//! The event rules of [`super::feed`], through the controller: an event is in the commit of its
//! change, delivered only once durable and in revision order; a failed (or fenced) commit delivers
//! nothing and holds back nothing after it once settled; revisions follow the ledger's commit order
//! under concurrency; a restarted controller replays the stored events and goes on above them,
//! whatever its clock says. The ledgers here fail or hold commits on demand.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_core::clock::ManualClock;
use greenslice_core::slice::SliceState;
use tokio::sync::oneshot;

use super::Controller;
use super::retention_tests::{T0, controller, retention};
use crate::ledger::tests::record;
use crate::ledger::{
    BatchStore, Commit, GroupCommit, Ledger, LedgerError, LoadEvents, LoadHours, MemoryLedger, Op,
};
use crate::model::events::{EventKind, SliceEvent};
use crate::model::slice::SliceRecord;

/// What a [`Scripted`] ledger does with the next submission.
enum Plan {
    /// Stores it at once.
    Store,
    /// Refuses it as a deposed leader's (nothing stored).
    Fenced,
    /// Waits for the gate: true stores it, false refuses it.
    Hold(oneshot::Receiver<bool>),
}

/// A memory ledger that follows a plan per submission (then stores), and records submissions.
#[derive(Default)]
struct Scripted {
    inner: Arc<MemoryLedger>,
    plans: Mutex<VecDeque<Plan>>,
    submitted: Mutex<Vec<Vec<Op>>>,
}

impl Scripted {
    fn plan(&self, p: Plan) {
        self.plans.lock().unwrap().push_back(p);
    }
}

impl Ledger for Scripted {
    fn submit(&self, ops: Vec<Op>) -> Commit {
        self.submitted.lock().unwrap().push(ops.clone());
        let plan = self
            .plans
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Plan::Store);
        match plan {
            Plan::Store => self.inner.submit(ops),
            Plan::Fenced => Box::pin(async { Err(LedgerError::NotLeader("deposed".into())) }),
            Plan::Hold(gate) => {
                let inner = self.inner.clone();
                Box::pin(async move {
                    if gate.await.unwrap_or(false) {
                        inner.submit(ops).await
                    } else {
                        Err(LedgerError::Unavailable("refused on demand".into()))
                    }
                })
            }
        }
    }
    fn load(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>,
    > {
        self.inner.load()
    }
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn load_hours(&self, from_ms: u64, to_ms: u64) -> LoadHours<'_> {
        self.inner.load_hours(from_ms, to_ms)
    }
    fn load_events(&self) -> LoadEvents<'_> {
        self.inner.load_events()
    }
}

fn revisions(events: &[Arc<SliceEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

async fn stored_revisions(l: &dyn Ledger) -> Vec<u64> {
    l.load_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect()
}

/// Every event delivered to `rx` within `wait`.
async fn drain(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<SliceEvent>>,
    wait: Duration,
) -> Vec<Arc<SliceEvent>> {
    let mut out = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(wait, rx.recv()).await {
        out.push(ev);
    }
    out
}

fn limit(c: &Controller, n: u32) {
    c.emit(
        EventKind::Limit,
        &record("a", SliceState::Active),
        format!("notice {n}"),
    );
}

#[tokio::test]
async fn an_event_waits_for_the_commits_before_it_and_a_failed_one_delivers_nothing() {
    let ledger = Arc::new(Scripted::default());
    let c = controller(
        ledger.clone(),
        &ManualClock::new(T0),
        retention(Duration::from_secs(600), 100),
    )
    .await;
    let head = c.revision();
    let (mut rx_log, mut live) = c.watch_from(Some(head)).unwrap();
    assert!(rx_log.is_empty());
    let (open_first, first) = oneshot::channel();
    let (open_third, third) = oneshot::channel();
    ledger.plan(Plan::Hold(first));
    ledger.plan(Plan::Store);
    ledger.plan(Plan::Hold(third));
    ledger.plan(Plan::Store);
    for n in 1..=4 {
        limit(&c, n);
    }
    // The second is durable, but the first is not settled: nothing goes out.
    assert!(
        drain(&mut live, Duration::from_millis(100))
            .await
            .is_empty()
    );
    assert_eq!(c.revision(), head, "a list reflects no undelivered event");
    // (This ledger stores the fourth at once; its delivery still waits.)
    assert_eq!(
        stored_revisions(ledger.as_ref()).await,
        [head + 2, head + 4]
    );
    // The first becomes durable: it and the second go out, in order; the fourth waits for the
    // third.
    open_first.send(true).unwrap();
    assert_eq!(
        revisions(&drain(&mut live, Duration::from_millis(100)).await),
        [head + 1, head + 2]
    );
    // The third fails: it is never delivered, and the fourth goes out after it settled.
    open_third.send(false).unwrap();
    assert_eq!(
        revisions(&drain(&mut live, Duration::from_millis(100)).await),
        [head + 4]
    );
    assert_eq!(c.revision(), head + 4);
    assert_eq!(
        stored_revisions(ledger.as_ref()).await,
        [head + 1, head + 2, head + 4]
    );
    // A resume gets the same: the failed revision is a gap, nothing else.
    (rx_log, _) = c.watch_from(Some(head)).unwrap();
    assert_eq!(revisions(&rx_log), [head + 1, head + 2, head + 4]);
    assert_eq!(
        revisions(&c.watch_from(Some(head + 2)).unwrap().0),
        [head + 4]
    );
}

#[tokio::test]
async fn a_transition_commits_its_event_with_its_record_and_a_fenced_one_delivers_none() {
    let ledger = Arc::new(Scripted::default());
    let c = controller(
        ledger.clone(),
        &ManualClock::new(T0),
        retention(Duration::from_secs(600), 100),
    )
    .await;
    c.lock().put(record("s-1", SliceState::Active));
    let head = c.revision();
    let mut live = c.subscribe();
    let r = c
        .transition("s-1", |r| r.state = SliceState::Releasing)
        .await
        .unwrap();
    // One submission: the record and its event.
    let last = ledger.submitted.lock().unwrap().last().cloned().unwrap();
    assert!(
        matches!(&last[..], [Op::Put(p), Op::PutEvent { event, .. }]
            if p == &r && event.slice == r && event.revision == head + 1),
        "{last:?}"
    );
    // Delivered before the caller got its answer.
    assert_eq!(c.revision(), head + 1);
    assert_eq!(revisions(&[live.try_recv().unwrap()]), [head + 1]);

    // A deposed leader: the fenced commit fails, memory is undone, no event is stored or sent.
    ledger.plan(Plan::Fenced);
    let e = c
        .transition("s-1", |r| r.state = SliceState::Released)
        .await;
    assert!(e.is_err());
    assert_eq!(c.get("s-1").unwrap().state, SliceState::Releasing);
    assert!(
        drain(&mut live, Duration::from_millis(100))
            .await
            .is_empty()
    );
    assert_eq!(c.revision(), head + 1);
    assert_eq!(stored_revisions(ledger.as_ref()).await, [head + 1]);
    // The next change gets a new revision (the fenced one's stays unused) and is delivered.
    c.transition("s-1", |r| r.state = SliceState::Released)
        .await
        .unwrap();
    assert_eq!(
        revisions(&drain(&mut live, Duration::from_millis(100)).await),
        [head + 3]
    );
}

/// Records the event revisions of each batch, in write order; writes take a moment, so commits
/// pile up behind them and batches hold many.
#[derive(Default)]
struct Recording {
    written: Mutex<Vec<u64>>,
}

#[async_trait::async_trait]
impl BatchStore for Recording {
    async fn write_batch(&self, ops: Vec<Op>) -> Result<(), LedgerError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut w = self.written.lock().unwrap();
        w.extend(ops.iter().filter_map(|op| match op {
            Op::PutEvent { event, .. } => Some(event.revision),
            _ => None,
        }));
        Ok(())
    }
}

/// A group-committed ledger over [`Recording`].
struct Grouped(GroupCommit);

impl Ledger for Grouped {
    fn submit(&self, ops: Vec<Op>) -> Commit {
        self.0.submit(ops)
    }
    fn load(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>,
    > {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn name(&self) -> &'static str {
        "grouped"
    }
    fn load_hours(&self, _: u64, _: u64) -> LoadHours<'_> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn load_events(&self) -> LoadEvents<'_> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transitions_are_delivered_in_the_order_the_ledger_committed_them() {
    let store = Arc::new(Recording::default());
    let ledger = Arc::new(Grouped(GroupCommit::spawn(store.clone(), 128)));
    let c = controller(
        ledger,
        &ManualClock::new(T0),
        retention(Duration::from_secs(600), 100),
    )
    .await;
    let ids: Vec<String> = (0..64).map(|i| format!("s-{i:02}")).collect();
    for id in &ids {
        c.lock().put(record(id, SliceState::Active));
    }
    let mut live = c.subscribe();
    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let c = c.clone();
            tokio::spawn(async move {
                c.transition(&id, |r| r.state = SliceState::Releasing)
                    .await?;
                c.transition(&id, |r| r.state = SliceState::Released).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let delivered = revisions(&drain(&mut live, Duration::from_millis(200)).await);
    let written = store.written.lock().unwrap().clone();
    assert_eq!(delivered.len(), 128);
    assert_eq!(delivered, written, "delivery order is commit order");
    assert!(
        delivered.windows(2).all(|w| w[1] == w[0] + 1),
        "and revision order"
    );
    // Each slice's events in its own order too.
    let events = c.watch_from(Some(delivered[0] - 1)).unwrap().0;
    for id in &ids {
        let states: Vec<SliceState> = events
            .iter()
            .filter(|e| &e.slice.id == id)
            .map(|e| e.slice.state)
            .collect();
        assert_eq!(states, [SliceState::Releasing, SliceState::Released]);
    }
}

#[tokio::test]
async fn a_restarted_controller_replays_the_stored_events_and_goes_on_above_them() {
    let ledger = Arc::new(MemoryLedger::default());
    let config = small_log();
    let first = controller(ledger.clone(), &ManualClock::new(T0), config.clone()).await;
    let head = first.revision();
    first.lock().put(record("s-1", SliceState::Active));
    for n in 0..5 {
        limit(&first, n);
    }
    first
        .transition("s-1", |r| r.state = SliceState::Releasing)
        .await
        .unwrap();
    // The log keeps the last 4.
    let before = first.watch_from(Some(head + 2)).unwrap().0;
    assert_eq!(
        revisions(&before),
        (head + 3..=head + 6).collect::<Vec<_>>()
    );
    drop(first);
    // The new controller's clock is an hour behind: revisions still go on above the stored ones.
    let again = controller(ledger.clone(), &ManualClock::new(T0 - 3_600_000), config).await;
    assert_eq!(again.revision(), head + 6);
    // It kept the last 4 (the capacity): a resume after the oldest kept one's predecessor works,
    // with the very same events; one from before is compacted.
    let replayed = again.watch_from(Some(head + 2)).unwrap().0;
    assert_eq!(
        replayed.iter().map(|e| (**e).clone()).collect::<Vec<_>>(),
        before.iter().map(|e| (**e).clone()).collect::<Vec<_>>()
    );
    assert!(again.watch_from(Some(head + 1)).is_err());
    assert_eq!(
        stored_revisions(ledger.as_ref()).await,
        (head + 3..=head + 6).collect::<Vec<_>>()
    );
    let mut live = again.subscribe();
    again
        .transition("s-1", |r| r.state = SliceState::Released)
        .await
        .unwrap();
    assert_eq!(revisions(&[live.try_recv().unwrap()]), [head + 7]);
}

/// Settings with an event log of 4.
fn small_log() -> super::CoreConfig {
    super::CoreConfig {
        event_log_capacity: 4,
        ..retention(Duration::from_secs(600), 100)
    }
}
