//! A ledger in memory: nothing survives the process (tests, the demo).

use std::collections::HashMap;
use std::sync::Mutex;

use std::future::Future;
use std::pin::Pin;

use super::{Commit, Ledger, LedgerError, Op};
use crate::slice::SliceRecord;

/// Keeps records in a map; `commit` is immediate and nothing is durable.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    records: Mutex<HashMap<String, SliceRecord>>,
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
        for op in ops {
            match op {
                Op::Put(r) => {
                    m.insert(r.id.clone(), r);
                }
                Op::Delete(id) => {
                    m.remove(&id);
                }
            }
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
}
