//! Slice events: durable in the ledger commit of the change they describe, delivered to watchers
//! in revision order once that commit is durable.
//!
//! The rules, and why:
//! - **One commit.** An event goes to the ledger in the same submission (one atomic transaction)
//!   as the record it describes ([`Op::PutEvent`]): a crash can lose both or neither, never
//!   invent an event whose change was lost, nor lose the event of a change that stayed.
//! - **Revision order is commit order.** The revision is given under the outbox lock, and the
//!   submission is queued for the ledger under the same lock: the ledger applies submissions in
//!   queue order, so revisions grow with commit order even when many transitions race to the
//!   group committer. The outbox lock is taken inside the state lock (transitions hold it while
//!   they queue), never the other way.
//! - **Delivery order is revision order.** Each submission with events goes, still under the
//!   outbox lock, to one delivery task that awaits the commits one after another, in queue order,
//!   and publishes (log, then watchers) those that became durable. An event is never delivered
//!   before an earlier one's commit is settled. The ledgers settle commits in queue order anyway
//!   (group commit writes one batch at a time), so waiting in order adds no delay.
//! - **Undone commits deliver nothing.** A commit that failed (the store refused it, or the
//!   leader was deposed: etcd's fenced transaction fails) drops its events; their revisions stay
//!   unused (a gap: nobody ever held them, so a later controller may give them again). The caller
//!   undoes memory as before ([`Controller::durable_or_undo`]).
//! - **A caller's answer follows its events.** The caller's commit resolves from the delivery
//!   task after its events were published: a client that got an answer and then lists sees a
//!   revision that covers the change.
//! - **Memory before revision.** A change is in memory before its event is published (transitions
//!   change memory when they queue; records applied on durability, [`Controller::queue_events`]'s
//!   `apply`, go in before the publish), so a list, which reads the revision before the state,
//!   never reflects a revision whose change it lacks: list then watch from its revision is
//!   gap-free.
//!
//! Costs per transition: one more op in its submission (the event, shared by `Arc` with the log,
//! encoded once by the store) and one pass through the delivery task. See docs/BENCHMARKS.md.

use std::sync::{Arc, MutexGuard, Weak};

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::Controller;
use crate::ledger::{Commit, Ledger, LedgerError, Op};
use crate::model::events::{EventKind, SliceEvent};
use crate::model::slice::SliceRecord;

/// Where events get their revisions and are queued for the ledger (see the module doc).
pub(super) struct Outbox {
    /// The revision the next event gets.
    next: u64,
    /// Keep the last this many events in the ledger (the event log's capacity).
    keep: u64,
    to_deliver: mpsc::UnboundedSender<InFlight>,
}

/// A submission with events, waiting for its commit.
pub(super) struct InFlight {
    commit: Commit,
    events: Vec<Arc<SliceEvent>>,
    /// Records to put in memory once durable, before the events are published (changes that
    /// memory shows only once durable: kubelet reports).
    apply: Vec<SliceRecord>,
    answer: oneshot::Sender<Result<(), LedgerError>>,
}

impl Outbox {
    /// An outbox whose first event gets `next`; the receiver goes to [`deliver`].
    pub(super) fn new(next: u64, keep: usize) -> (Self, mpsc::UnboundedReceiver<InFlight>) {
        let (to_deliver, rx) = mpsc::unbounded_channel();
        let keep = u64::try_from(keep.max(1)).unwrap_or(u64::MAX);
        (
            Outbox {
                next,
                keep,
                to_deliver,
            },
            rx,
        )
    }

    /// Gives `events` their revisions, adds them to `ops` and queues the whole for `ledger`, and
    /// for delivery once durable. Called with the outbox lock held (see the module doc).
    fn queue(
        &mut self,
        ledger: &dyn Ledger,
        mut ops: Vec<Op>,
        events: Vec<SliceEvent>,
        apply: Vec<SliceRecord>,
    ) -> Commit {
        let events: Vec<Arc<SliceEvent>> = events
            .into_iter()
            .map(|mut ev| {
                ev.revision = self.next;
                self.next += 1;
                Arc::new(ev)
            })
            .collect();
        ops.extend(events.iter().map(|event| Op::PutEvent {
            event: event.clone(),
            keep: self.keep,
        }));
        let commit = ledger.submit(ops);
        let (answer, answered) = oneshot::channel();
        let queued = self.to_deliver.send(InFlight {
            commit,
            events,
            apply,
            answer,
        });
        Box::pin(async move {
            queued.map_err(|_| LedgerError::Unavailable("event delivery stopped".into()))?;
            answered
                .await
                .map_err(|_| LedgerError::Unavailable("event delivery stopped mid-commit".into()))?
        })
    }
}

/// Awaits queued commits in queue order and publishes the events of each durable one, until the
/// controller is gone. The only publisher, so watchers see events in revision order.
pub(super) async fn deliver(
    controller: Weak<Controller>,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
) {
    while let Some(f) = rx.recv().await {
        let outcome = f.commit.await;
        if outcome.is_ok()
            && let Some(c) = controller.upgrade()
        {
            c.publish(f.apply, f.events);
        } else if let Err(e) = &outcome {
            warn!(error = %e, events = f.events.len(), "commit failed: its events are not delivered");
        }
        // A caller that stopped waiting (background transitions) is fine.
        let _ = f.answer.send(outcome);
    }
}

impl Controller {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A counter and a channel, changed in short sections that do not panic midway.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `ops` with `events` in one submission (see the module doc); `apply` goes into memory
    /// once durable, before the events are published. The commit resolves after the publish. With
    /// the state lock held, the ledger sees the submission in memory's order.
    pub(super) fn queue_events(
        &self,
        ops: Vec<Op>,
        events: Vec<SliceEvent>,
        apply: Vec<SliceRecord>,
    ) -> Commit {
        self.outbox()
            .queue(self.ledger.as_ref(), ops, events, apply)
    }

    /// Queues a record with the STATE_CHANGED event that announces it (see
    /// [`Controller::queue_events`]).
    pub(super) fn submit_announced(&self, r: &SliceRecord) -> Commit {
        let ev = self.event(
            EventKind::StateChanged,
            r,
            format!("slice {} is {}", r.id, r.state.as_str()),
        );
        self.queue_events(vec![Op::Put(r.clone())], vec![ev], Vec::new())
    }

    /// An event about `slice` now (its revision is given when it is queued).
    pub(super) fn event(
        &self,
        kind: EventKind,
        slice: &SliceRecord,
        message: String,
    ) -> SliceEvent {
        SliceEvent {
            kind,
            slice: slice.clone(),
            message,
            deadline_unix_ms: 0,
            at_unix_ms: self.clock.now_ms(),
            revision: 0,
        }
    }

    /// An event that changes no record (a warning, a limit notice, a reclaim or loss told apart
    /// from its state change): committed on its own, delivered once durable; nobody waits.
    pub(super) fn emit_event(&self, ev: SliceEvent) {
        drop(self.queue_events(Vec::new(), vec![ev], Vec::new()));
    }

    pub(super) fn emit(&self, kind: EventKind, slice: &SliceRecord, message: String) {
        self.emit_event(self.event(kind, slice, message));
    }

    /// Puts `apply` in memory, then keeps `events` for resumed watches and sends them to watchers
    /// (only the delivery task calls it, in revision order).
    fn publish(&self, apply: Vec<SliceRecord>, events: Vec<Arc<SliceEvent>>) {
        if !apply.is_empty() {
            let mut st = self.lock();
            for r in apply {
                st.put(r);
            }
        }
        let mut log = self.event_log();
        for ev in events {
            if !log.push(ev.revision, ev.clone()) {
                // Cannot happen while revisions are given under the outbox lock; refusing keeps
                // "once, in order" should it ever.
                warn!(
                    revision = ev.revision,
                    head = log.head(),
                    "event out of order: dropped"
                );
                continue;
            }
            if self.events.receiver_count() > 0 {
                let _ = self.events.send(ev);
            }
        }
    }
}
