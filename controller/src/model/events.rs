//! The bounded log of recent slice events, by revision, pure: what a watch resumed from a revision
//! replays.
//!
//! Revisions follow the ledger's commit order: an event gets its revision when it is queued for
//! the ledger in the same submission (one atomic transaction) as the change it describes, and is
//! delivered only once that commit is durable (see `engine/feed.rs`). The ledger keeps the last
//! events (see [`prune_through`]), so a controller restarted, or a standby that took over, loads
//! them and goes on above the last one ([`next_after_stored`]): a watch resumes across restarts
//! and failovers. Revisions usually are consecutive; a commit that failed leaves a gap (its events
//! were never delivered, so no watcher holds them).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::slice::SliceRecord;

/// What happened to a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The slice changed state; the event's slice is its new value.
    StateChanged,
    /// The slice is idle and will be reclaimed at the event's deadline unless used or kept.
    IdleWarning,
    /// The slice was reclaimed for idleness.
    Reclaimed,
    /// The slice's hardware is gone.
    Lost,
    /// A process of the slice went over its share's limits; the node agent warned, stopped or
    /// killed it, or reported its compute (the message says which).
    Limit,
}

/// One slice event, as watchers get it (and as the ledger stores it, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceEvent {
    pub kind: EventKind,
    /// The slice after the event.
    pub slice: SliceRecord,
    /// Human-readable explanation.
    pub message: String,
    /// For [`EventKind::IdleWarning`]: when the slice will be reclaimed, ms since the Unix epoch.
    pub deadline_unix_ms: i64,
    /// When the event happened, ms since the Unix epoch.
    pub at_unix_ms: i64,
    /// Position in the event order, which is the ledger's commit order (given when the event is
    /// queued for the ledger).
    pub revision: u64,
}

/// Revisions one millisecond of wall time makes room for: a controller starting at time t with no
/// stored event gives revisions from `t << REVISION_SHIFT`, above any an earlier controller gave
/// unless it made more than 1024 events per millisecond on average, or the clock went back. 10
/// bits keep revisions under 2^53 (exact in a JSON number, as JavaScript reads it) until the year
/// 2248.
pub const REVISION_SHIFT: u32 = 10;

/// The first revision of a controller started at `now_ms` with no stored event, whose loaded
/// records were last changed at `last_change_ms` (a clock that went back since is not trusted
/// below that). Only a fallback: a ledger written before events were stored (whose controllers
/// kept their events in memory and gave clock-based revisions) holds none.
pub fn first_revision(now_ms: i64, last_change_ms: i64) -> u64 {
    let ms = u64::try_from(now_ms.max(last_change_ms).max(0)).unwrap_or(0);
    (ms << REVISION_SHIFT).saturating_add(1)
}

/// The first revision a controller gives, when the ledger's last stored event has revision
/// `last_stored` (None: none stored) and [`first_revision`] would be `fallback`. With stored
/// events the clock plays no part: every event ever delivered is durable, so the last stored one
/// is the highest any watcher can hold (revisions given to commits that never became durable were
/// never delivered, and may be given again). A clock that went back cannot take revisions back.
pub fn next_after_stored(last_stored: Option<u64>, fallback: u64) -> u64 {
    match last_stored {
        Some(r) => r.saturating_add(1),
        None => fallback,
    }
}

/// The revision through which stored events may be deleted once an event of revision `newest` is
/// stored, keeping the last `keep`: the ledger's event table stays bounded by count, pruned in the
/// same transaction that adds to it. None when nothing is old enough yet.
pub fn prune_through(newest: u64, keep: u64) -> Option<u64> {
    newest.checked_sub(keep.max(1)).filter(|r| *r > 0)
}

/// A resume from before the oldest kept event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The revision asked to resume after.
    pub asked: u64,
    /// The oldest revision one may resume after now.
    pub oldest: u64,
}

/// The most recent events, oldest first, each with its revision.
#[derive(Debug)]
pub struct EventLog<T> {
    capacity: usize,
    /// The revision of the last event (or the one before the first this log gives).
    head: u64,
    entries: VecDeque<(u64, T)>,
}

impl<T: Clone> EventLog<T> {
    /// An empty log whose first event gets `first` and that keeps `capacity` events at most.
    pub fn new(first: u64, capacity: usize) -> Self {
        EventLog {
            capacity: capacity.max(1),
            head: first.saturating_sub(1),
            entries: VecDeque::new(),
        }
    }

    /// The revision of the last event given: what a list reflects.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest revision a watch may resume after (every later event is kept).
    pub fn oldest_resumable(&self) -> u64 {
        self.entries.front().map_or(self.head, |(r, _)| r - 1)
    }

    /// Appends the event of `revision`, forgetting the oldest beyond capacity. Revisions only
    /// grow: one not above the head is refused (false), as a repeat would break "each event once,
    /// in order". A revision above `head + 1` leaves a gap (a commit that failed).
    pub fn push(&mut self, revision: u64, ev: T) -> bool {
        if revision <= self.head {
            return false;
        }
        self.head = revision;
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((revision, ev));
        true
    }

    /// Every kept event after revision `after`, oldest first; Compacted when some of them are no
    /// longer kept, or when `after` is a revision this log never reached (another controller's,
    /// ahead of this one's: what happened after it is unknown here).
    pub fn since(&self, after: u64) -> Result<Vec<(u64, T)>, Compacted> {
        let oldest = self.oldest_resumable();
        if after < oldest || after > self.head {
            return Err(Compacted {
                asked: after,
                oldest,
            });
        }
        let from = self.entries.partition_point(|(r, _)| *r <= after);
        Ok(self.entries.range(from..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_gets_every_later_event_once_in_order() {
        let mut log = EventLog::new(100, 10);
        for (r, e) in (100..).zip(["a", "b", "c", "d"]) {
            assert!(log.push(r, e));
        }
        assert_eq!(log.head(), 103);
        assert_eq!(log.since(101).unwrap(), [(102, "c"), (103, "d")]);
        assert_eq!(log.since(103).unwrap(), []);
        assert_eq!(
            log.since(99).unwrap().len(),
            4,
            "from before the first event"
        );
    }

    #[test]
    fn a_resume_from_before_the_kept_events_is_compacted() {
        let mut log = EventLog::new(1, 3);
        for e in 0..5 {
            log.push(e + 1, e);
        }
        // Kept: revisions 3, 4, 5.
        assert_eq!(log.oldest_resumable(), 2);
        assert_eq!(log.since(2).unwrap(), [(3, 2), (4, 3), (5, 4)]);
        assert_eq!(
            log.since(1),
            Err(Compacted {
                asked: 1,
                oldest: 2
            })
        );
        assert!(log.since(6).is_err(), "a revision never given here");
    }

    #[test]
    fn a_gap_left_by_a_failed_commit_is_skipped_and_revisions_never_repeat() {
        let mut log = EventLog::new(10, 8);
        assert!(log.push(10, "a"));
        // 11 and 12 were given to a commit that failed: never delivered.
        assert!(log.push(13, "d"));
        assert!(log.push(14, "e"));
        assert_eq!(log.since(10).unwrap(), [(13, "d"), (14, "e")]);
        assert_eq!(log.since(13).unwrap(), [(14, "e")]);
        assert!(!log.push(14, "again"), "a repeated revision is refused");
        assert!(
            !log.push(12, "late"),
            "an older revision after a newer one is refused"
        );
        assert_eq!(log.head(), 14);
        assert_eq!(log.since(9).unwrap().len(), 3);
    }

    #[test]
    fn stored_events_decide_where_revisions_go_on_whatever_the_clock_says() {
        // Stored events: above the last one, even with a clock-based fallback below or above it.
        assert_eq!(next_after_stored(Some(41), 7), 42);
        assert_eq!(
            next_after_stored(Some(41), first_revision(1_000_000, 0)),
            42
        );
        // None stored (a ledger from before events were stored): the clock-based start.
        assert_eq!(next_after_stored(None, 7), 7);
    }

    #[test]
    fn the_stored_table_keeps_the_last_n_events() {
        assert_eq!(prune_through(5, 8), None);
        assert_eq!(prune_through(8, 8), None);
        assert_eq!(prune_through(9, 8), Some(1));
        assert_eq!(prune_through(100, 8), Some(92), "93..=100 stay: 8 events");
        assert_eq!(prune_through(3, 0), Some(2), "keeps at least one");
    }

    #[test]
    fn a_restarted_controller_starts_above_the_old_revisions() {
        // 2,000 events in the 2 ms before a restart: under the 1,024 per ms revisions make room for.
        let before = first_revision(1_000, 0) + 2_000;
        assert!(first_revision(1_002, 900) > before);
        // A clock that went back does not take revisions back below the last recorded change.
        assert!(first_revision(10, 1_002) > before);
        let log: EventLog<()> = EventLog::new(first_revision(1_002, 0), 8);
        assert!(
            log.since(before).is_err(),
            "nothing from before a restart is kept"
        );
    }
}
