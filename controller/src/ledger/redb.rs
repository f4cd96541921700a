//! The embedded ledger: one redb file, crash-safe, the default for a single controller.
//!
//! Layout (redb file `<data dir>/ledger.redb`):
//! - table `slices`: slice id -> the [`SliceRecord`] as JSON.
//! - table `meta`: `"schema"` -> [`SCHEMA_VERSION`].
//! - table `energy_hours`: hour start (Unix ms) -> the [`HourRollup`] of that hour as JSON
//!   (energy history; added without a schema change: a file without it gets it on open).
//! - table `slice_events`: revision -> the [`SliceEvent`] as JSON: the last events, written in
//!   the transaction of the change each describes and pruned by count in the same transaction
//!   (added without a schema change too: a file without it holds no events, and the controller
//!   starts its revisions from the clock, as before events were stored).
//!
//! Every batch is one write transaction committed with `Durability::Immediate` (redb's two-phase
//! commit with fsync): when `commit` returns, the records survive a crash or power loss. Batches
//! come from [`GroupCommit`], so concurrent commits share one fsync. redb takes a file lock, so a
//! second controller on the same data dir fails to start instead of corrupting it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use std::future::Future;
use std::pin::Pin;

use super::{
    BatchStore, Commit, GroupCommit, Ledger, LedgerError, LoadEvents, LoadHours, Op,
    events_prune_through,
};
use crate::energy::history::HourRollup;
use crate::model::events::SliceEvent;
use crate::model::slice::SliceRecord;

const SLICES: TableDefinition<&str, &[u8]> = TableDefinition::new("slices");
const HOURS: TableDefinition<u64, &[u8]> = TableDefinition::new("energy_hours");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("slice_events");

/// Version of the layout above; a file with another version is refused.
pub const SCHEMA_VERSION: u64 = 1;
/// File name inside the data dir.
pub const FILE_NAME: &str = "ledger.redb";
/// Most ops in one transaction (bounds the latency one batch adds to its callers).
const MAX_BATCH_OPS: usize = 4096;

fn unavailable(what: &str, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("redb {what}: {e}"))
}

struct Store {
    db: Database,
}

impl Store {
    fn write(&self, ops: &[Op]) -> Result<(), LedgerError> {
        let mut tx = self.db.begin_write().map_err(|e| unavailable("begin", e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| unavailable("durability", e))?;
        {
            let mut t = tx
                .open_table(SLICES)
                .map_err(|e| unavailable("open table", e))?;
            let mut hours = tx
                .open_table(HOURS)
                .map_err(|e| unavailable("open table", e))?;
            let mut events = tx
                .open_table(EVENTS)
                .map_err(|e| unavailable("open table", e))?;
            for op in ops {
                match op {
                    Op::Put(r) => {
                        let v = serde_json::to_vec(r)
                            .map_err(|e| LedgerError::Corrupt(format!("encode {}: {e}", r.id)))?;
                        t.insert(r.id.as_str(), v.as_slice())
                            .map_err(|e| unavailable("insert", e))?;
                    }
                    Op::Delete(id) => {
                        t.remove(id.as_str())
                            .map_err(|e| unavailable("remove", e))?;
                    }
                    Op::PutHour(h) => {
                        let v = serde_json::to_vec(h).map_err(|e| {
                            LedgerError::Corrupt(format!("encode hour {}: {e}", h.hour_start_ms))
                        })?;
                        hours
                            .insert(h.hour_start_ms, v.as_slice())
                            .map_err(|e| unavailable("insert", e))?;
                    }
                    Op::DeleteHoursBefore(t) => {
                        hours
                            .retain_in(..*t, |_, _| false)
                            .map_err(|e| unavailable("remove", e))?;
                    }
                    Op::PutEvent { event, .. } => {
                        let v = serde_json::to_vec(event.as_ref()).map_err(|e| {
                            LedgerError::Corrupt(format!("encode event {}: {e}", event.revision))
                        })?;
                        events
                            .insert(event.revision, v.as_slice())
                            .map_err(|e| unavailable("insert", e))?;
                    }
                }
            }
            // Usually one event falls off per event added: a short range at the table's left edge.
            if let Some(through) = events_prune_through(ops) {
                events
                    .retain_in(..=through, |_, _| false)
                    .map_err(|e| unavailable("remove", e))?;
            }
        }
        tx.commit().map_err(|e| unavailable("commit", e))
    }
}

/// The redb-backed ledger.
pub struct RedbLedger {
    store: Arc<Store>,
    group: GroupCommit,
    path: PathBuf,
}

impl std::fmt::Debug for RedbLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLedger")
            .field("path", &self.path)
            .finish()
    }
}

/// The committer's handle: writes batches on the blocking pool.
struct Blocking(Arc<Store>);

#[async_trait::async_trait]
impl BatchStore for Blocking {
    async fn write_batch(&self, ops: Vec<Op>) -> Result<(), LedgerError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || store.write(&ops))
            .await
            .map_err(|e| unavailable("writer task", e))?
    }
}

impl RedbLedger {
    /// Opens (creating if needed) the ledger in `dir`. Must run inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            LedgerError::Config(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::Config(format!(
                "{} is in use by another process (another controller on the same data dir?)",
                path.display()
            )),
            e => unavailable(&format!("open {}", path.display()), e),
        })?;
        let tx = db.begin_write().map_err(|e| unavailable("begin", e))?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| unavailable("open meta", e))?;
            let found = meta
                .get("schema")
                .map_err(|e| unavailable("read meta", e))?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| unavailable("write meta", e))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Err(LedgerError::Config(format!(
                        "{} has schema version {v}; this controller reads version {SCHEMA_VERSION}",
                        path.display()
                    )));
                }
            }
            tx.open_table(SLICES)
                .map_err(|e| unavailable("open table", e))?;
            tx.open_table(HOURS)
                .map_err(|e| unavailable("open table", e))?;
            tx.open_table(EVENTS)
                .map_err(|e| unavailable("open table", e))?;
        }
        tx.commit().map_err(|e| unavailable("commit", e))?;
        let store = Arc::new(Store { db });
        let group = GroupCommit::spawn(Arc::new(Blocking(store.clone())), MAX_BATCH_OPS);
        Ok(RedbLedger { store, group, path })
    }

    /// Group-commit counters.
    pub fn group(&self) -> &GroupCommit {
        &self.group
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RedbLedger {
    /// Runs `read` in a read transaction on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let tx = store.db.begin_read().map_err(|e| unavailable("begin", e))?;
            read(&tx)
        })
        .await
        .map_err(|e| unavailable("reader task", e))?
    }

    /// Reads every record.
    pub async fn load_all(&self) -> Result<Vec<SliceRecord>, LedgerError> {
        self.read(|tx| {
            let t = tx
                .open_table(SLICES)
                .map_err(|e| unavailable("open table", e))?;
            let rows = t.iter().map_err(|e| unavailable("iterate", e))?;
            rows.map(|row| {
                let (k, v) = row.map_err(|e| unavailable("read", e))?;
                decode(format_args!("slice {}", k.value()), v.value())
            })
            .collect()
        })
        .await
    }

    /// Reads the hour rollups starting in `[from_ms, to_ms)`.
    pub async fn load_hours_in(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<HourRollup>, LedgerError> {
        self.read(move |tx| {
            let t = tx
                .open_table(HOURS)
                .map_err(|e| unavailable("open table", e))?;
            let rows = t
                .range(from_ms..to_ms.max(from_ms))
                .map_err(|e| unavailable("iterate", e))?;
            rows.map(|row| {
                let (k, v) = row.map_err(|e| unavailable("read", e))?;
                decode(format_args!("hour {}", k.value()), v.value())
            })
            .collect()
        })
        .await
    }
}

impl RedbLedger {
    /// Reads the stored events, by revision.
    pub async fn load_events_all(&self) -> Result<Vec<SliceEvent>, LedgerError> {
        self.read(|tx| {
            let t = tx
                .open_table(EVENTS)
                .map_err(|e| unavailable("open table", e))?;
            let rows = t.iter().map_err(|e| unavailable("iterate", e))?;
            rows.map(|row| {
                let (k, v) = row.map_err(|e| unavailable("read", e))?;
                decode(format_args!("event {}", k.value()), v.value())
            })
            .collect()
        })
        .await
    }
}

/// A stored JSON value; `what` names it in the error.
fn decode<T: serde::de::DeserializeOwned>(
    what: std::fmt::Arguments<'_>,
    json: &[u8],
) -> Result<T, LedgerError> {
    serde_json::from_slice(json).map_err(|e| LedgerError::Corrupt(format!("{what}: {e}")))
}

impl Ledger for RedbLedger {
    fn submit(&self, ops: Vec<Op>) -> Commit {
        self.group.submit(ops)
    }

    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>> {
        Box::pin(self.load_all())
    }

    fn name(&self) -> &'static str {
        "redb"
    }

    fn load_hours(&self, from_ms: u64, to_ms: u64) -> LoadHours<'_> {
        Box::pin(self.load_hours_in(from_ms, to_ms))
    }

    fn load_events(&self) -> LoadEvents<'_> {
        Box::pin(self.load_events_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::record;
    use greenslice_core::slice::SliceState;

    /// Opens the ledger in `dir` again once the dropped one let go of it.
    async fn reopen(dir: &Path) -> RedbLedger {
        // The committer task may still hold the database for a moment after the ledger is dropped.
        loop {
            match RedbLedger::open(dir) {
                Ok(l) => return l,
                Err(LedgerError::Config(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn committed_records_survive_reopening_and_removals_stick() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = RedbLedger::open(dir.path()).unwrap();
            l.commit(&[
                record("a", SliceState::Pending),
                record("b", SliceState::Active),
            ])
            .await
            .unwrap();
            l.commit(&[record("a", SliceState::Active)]).await.unwrap();
            l.remove(&["b".to_string()]).await.unwrap();
        }
        let l = reopen(dir.path()).await;
        let all = l.load().await.unwrap();
        assert_eq!(all, vec![record("a", SliceState::Active)]);
    }

    #[tokio::test]
    async fn hours_are_stored_by_range_and_survive_reopening() {
        use crate::energy::history::tests::T0;
        use greenslice_core::time::HOUR_MS;
        let dir = tempfile::tempdir().unwrap();
        {
            let l = RedbLedger::open(dir.path()).unwrap();
            crate::ledger::tests::hours_round_trip(&l).await;
        }
        let l = reopen(dir.path()).await;
        let hours = l.load_hours(0, u64::MAX).await.unwrap();
        let starts: Vec<u64> = hours.iter().map(|h| h.hour_start_ms).collect();
        // The round trip ends by deleting the hours before T0 + 2 h: that survives too.
        assert_eq!(starts, vec![T0 + 2 * HOUR_MS]);
    }

    #[tokio::test]
    async fn events_are_stored_bounded_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = RedbLedger::open(dir.path()).unwrap();
            crate::ledger::tests::events_round_trip(&l).await;
        }
        let l = reopen(dir.path()).await;
        let revs: Vec<u64> = l
            .load_events()
            .await
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(revs, crate::ledger::tests::EVENTS_LEFT);
    }

    #[tokio::test]
    async fn a_second_controller_on_the_same_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbLedger::open(dir.path()).unwrap();
        match RedbLedger::open(dir.path()) {
            Err(LedgerError::Config(m)) => assert!(m.contains("in use"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
