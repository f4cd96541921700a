//! A ledger in memory: nothing survives the process (tests, the demo).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use std::future::Future;
use std::pin::Pin;

use super::{Commit, Ledger, LedgerError, LoadEvents, LoadHours, Op, events_prune_through};
use crate::energy::history::HourRollup;
use crate::model::events::SliceEvent;
use crate::model::slice::SliceRecord;

/// Keeps records in a map; `commit` is immediate and nothing is durable.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    records: Mutex<HashMap<String, SliceRecord>>,
    /// Energy rollups by hour start (Unix ms).
    hours: Mutex<BTreeMap<u64, HourRollup>>,
    /// Slice events by revision.
    events: Mutex<BTreeMap<u64, Arc<SliceEvent>>>,
}

impl MemoryLedger {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SliceRecord>> {
        // Plain data updated without panicking midway: a poisoned lock still holds a valid map.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ledger for MemoryLedger {
    fn submit(&self, ops: Vec<Op>) -> Commit {
        let mut m = self.map();
        let mut hours = self.hours.lock().unwrap_or_else(|p| p.into_inner());
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let prune = events_prune_through(&ops);
        for op in ops {
            match op {
                Op::Put(r) => {
                    m.insert(r.id.clone(), r);
                }
                Op::Delete(id) => {
                    m.remove(&id);
                }
                Op::PutHour(h) => {
                    hours.insert(h.hour_start_ms, *h);
                }
                Op::DeleteHoursBefore(t) => {
                    hours.retain(|start, _| *start >= t);
                }
                Op::PutEvent { event, .. } => {
                    events.insert(event.revision, event);
                }
            }
        }
        if let Some(through) = prune {
            // Split off what stays: the older ones go with the old map.
            *events = events.split_off(&through.saturating_add(1));
        }
        Box::pin(async { Ok(()) })
    }

    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>> {
        let all = self.map().values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn load_hours(&self, from_ms: u64, to_ms: u64) -> LoadHours<'_> {
        let hours = self.hours.lock().unwrap_or_else(|p| p.into_inner());
        let found = hours
            .range(from_ms..to_ms.max(from_ms))
            .map(|(_, h)| h.clone())
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn load_events(&self) -> LoadEvents<'_> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let all = events.values().map(|e| SliceEvent::clone(e)).collect();
        Box::pin(async move { Ok(all) })
    }
}
