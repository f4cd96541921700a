//! The bounded log of recent slice events, by revision, pure: what a watch resumed from a revision
//! replays.
//!
//! Revisions are consecutive within one controller process. A controller starts its revisions
//! above every one an earlier controller could have given (see [`first_revision`]), so they grow
//! across restarts and failovers too; the log itself is in memory, so a resume from before the
//! start is told its revision is compacted (and lists again).

use std::collections::VecDeque;

use super::slice::SliceRecord;

/// What happened to a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One slice event, as watchers get it.
#[derive(Debug, Clone, PartialEq)]
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
    /// Position in the controller's event order (given when the event is emitted).
    pub revision: u64,
}

/// Revisions one millisecond of wall time makes room for: a controller starting at time t gives
/// revisions from `t << REVISION_SHIFT`, above any an earlier controller gave unless it made more
/// than 1024 events per millisecond on average, or the clock went back. 10 bits keep revisions
/// under 2^53 (exact in a JSON number, as JavaScript reads it) until the year 2248.
pub const REVISION_SHIFT: u32 = 10;

/// The first revision of a controller started at `now_ms`, whose loaded records were last changed
/// at `last_change_ms` (a clock that went back since is not trusted below that).
pub fn first_revision(now_ms: i64, last_change_ms: i64) -> u64 {
    let ms = u64::try_from(now_ms.max(last_change_ms).max(0)).unwrap_or(0);
    (ms << REVISION_SHIFT).saturating_add(1)
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

    /// Appends an event, forgetting the oldest beyond capacity; its revision.
    pub fn push(&mut self, ev: T) -> u64 {
        self.head += 1;
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((self.head, ev));
        self.head
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
        let skip = usize::try_from(after - oldest).unwrap_or(usize::MAX);
        Ok(self.entries.iter().skip(skip).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_gets_every_later_event_once_in_order() {
        let mut log = EventLog::new(100, 10);
        for e in ["a", "b", "c", "d"] {
            log.push(e);
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
            log.push(e);
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
