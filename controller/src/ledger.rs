//! The ledger: where the controller commits desired state before acknowledging it.
//!
//! [`Ledger`] is the seam; [`MemoryLedger`] keeps state in memory (tests, the demo). The durable
//! implementations (an embedded file store and etcd) come with the HA issue.

use std::collections::HashMap;
use std::sync::Mutex;

use thiserror::Error;

use crate::slice::SliceRecord;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger data corrupt: {0}")]
    Corrupt(String),
}

/// Durable desired state. `commit` returns only once the records are durable.
#[tonic::async_trait]
pub trait Ledger: Send + Sync {
    /// Stores (upserts) slice records atomically.
    async fn commit(&self, records: &[SliceRecord]) -> Result<(), LedgerError>;
    /// Every record stored.
    async fn load(&self) -> Result<Vec<SliceRecord>, LedgerError>;
    /// Short name for logs ("memory", "redb", "etcd").
    fn name(&self) -> &'static str;
}

/// A ledger in memory: nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    records: Mutex<HashMap<String, SliceRecord>>,
}

#[tonic::async_trait]
impl Ledger for MemoryLedger {
    async fn commit(&self, records: &[SliceRecord]) -> Result<(), LedgerError> {
        let mut m = self
            .records
            .lock()
            .map_err(|_| LedgerError::Unavailable("poisoned".into()))?;
        for r in records {
            m.insert(r.id.clone(), r.clone());
        }
        Ok(())
    }

    async fn load(&self) -> Result<Vec<SliceRecord>, LedgerError> {
        let m = self
            .records
            .lock()
            .map_err(|_| LedgerError::Unavailable("poisoned".into()))?;
        Ok(m.values().cloned().collect())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
