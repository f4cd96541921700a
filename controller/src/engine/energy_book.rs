//! The energy book: samples into energy attribution, the hourly history and its flush to the
//! ledger, and the reads reports use.

use std::sync::MutexGuard;

use greenslice_core::sample::AttributedSample;
use tracing::warn;

use super::{Controller, RECENT_HOURS_MS};
use crate::error::ControllerError;
use crate::ledger::Op;
use crate::model::state::ClusterState;

/// The slices that held `gpu` during `iv`, with the capacity they held and for how long
/// ([`SliceRecord::held_ms`]).
fn holders_of(
    st: &ClusterState,
    gpu: &str,
    iv: crate::energy::Interval,
) -> Vec<crate::energy::Holder> {
    use crate::energy::Holder;
    let model = st
        .nodes
        .values()
        .flat_map(|n| &n.gpus)
        .find(|g| g.uuid == gpu)
        .map(|g| g.model.clone());
    let mut out: Vec<Holder> = st
        .slices_on_gpu(gpu)
        .filter_map(|s| {
            let (from, to) = s.held_ms()?;
            let (from, to) = (u64::try_from(from).ok()?, u64::try_from(to).ok()?);
            let held_ms = to.min(iv.end_ms).saturating_sub(from.max(iv.start_ms));
            if held_ms == 0 {
                return None;
            }
            let capacity = greenslice_core::capacity::held_per_gpu(&s.spec.kind, model.as_ref())?;
            Some(Holder {
                slice_id: s.id.clone(),
                tenant: s.tenant.clone(),
                claim: s.claim.clone(),
                capacity,
                held_ms,
            })
        })
        .collect();
    out.sort_by(|a, b| a.slice_id.cmp(&b.slice_id));
    out
}

impl Controller {
    /// Takes a batch of samples from a node's agent: keeps them, and attributes the energy of every
    /// attribution window they close.
    pub fn ingest_samples(&self, node: &str, samples: &[AttributedSample]) {
        let accepted = self.telemetry.ingest(node, samples);
        self.record_usage(node, &accepted);
        if accepted.is_empty() {
            return;
        }
        let idle_threshold_pct = self.reclaim.threshold_pct();
        let st = self.lock();
        let model_of = |gpu: &str| {
            st.nodes
                .get(node)
                .and_then(|n| n.gpus.iter().find(|g| g.uuid == gpu))
                .map(|g| g.model.name().to_string())
                .unwrap_or_default()
        };
        let holders = |gpu: &str, iv: crate::energy::Interval| holders_of(&st, gpu, iv);
        let mut energy = self.energy_lock();
        let closed = energy.ingest(node, &model_of, &accepted, &holders);
        // Folded under the energy lock, so the records and the hours always hold the same
        // intervals (a report compares them).
        self.history_lock().fold(&closed, idle_threshold_pct);
        drop(energy);
        for r in &closed {
            if r.factors.gap().is_some() {
                self.metrics.carbon_factor_gap_intervals.inc();
            }
            self.metrics.record_gpu_energy(
                &r.node,
                &r.gpu,
                r.measured_mj as f64 / 1000.0,
                r.unallocated_idle_mj as f64 / 1000.0,
                r.unattributed_mj as f64 / 1000.0,
            );
            for s in &r.slices {
                let mj = s.static_mj + s.dynamic_mj;
                self.metrics.record_tenant_energy(
                    &s.tenant,
                    mj as f64 / 1000.0,
                    r.factors.co2e(mj).location_g,
                );
                if let Some(c) = &s.claim {
                    self.metrics.record_claim_energy(c, mj as f64 / 1000.0);
                }
            }
        }
    }

    pub(super) fn energy_lock(&self) -> MutexGuard<'_, crate::energy::accounting::Accountant> {
        self.energy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn history_lock(&self) -> MutexGuard<'_, crate::energy::history::Rollups> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the energy accounting settings (site carbon factors, window, policy). Intervals
    /// already accounted are dropped: call this before samples arrive. The stored history stays.
    pub fn configure_energy(&self, config: crate::energy::accounting::AccountingConfig) {
        let mut energy = self.energy_lock();
        self.history_lock().configure(config.policy);
        *energy = crate::energy::accounting::Accountant::new(config);
    }

    /// Stores the hours of energy history that changed since the last flush, each whole, one
    /// submission each (a rollup of many tenants is large; see `docs/DURABILITY.md`). Returns the
    /// hours stored. Called by the housekeeping task every `energy_flush_interval`.
    pub async fn flush_energy_history(&self) -> Result<usize, ControllerError> {
        use crate::energy::history::MAX_HOUR_BYTES;
        use greenslice_core::time::HOUR_MS;
        let ledger_err = |e: crate::ledger::LedgerError| ControllerError::Ledger(e.to_string());
        self.prune_energy_history().await?;
        // Hours folded into but not loaded at start: merge in what is stored before storing them.
        let unbased = self.history_lock().unbased_dirty();
        for hour in unbased {
            let stored = self
                .ledger
                .load_hours(hour, hour + HOUR_MS)
                .await
                .map_err(ledger_err)?;
            let mut h = self.history_lock();
            match stored.into_iter().next() {
                Some(s) => h.rebase(s),
                None => h.mark_based(hour),
            }
        }
        let dirty = self.history_lock().to_flush();
        let mut stored = Vec::with_capacity(dirty.len());
        let mut unstored = 0;
        for hour in dirty {
            let bytes = serde_json::to_vec(&hour).map_or(0, |v| v.len());
            if bytes > MAX_HOUR_BYTES {
                // etcd refuses values over 1.5 MiB, and a refused transaction would fail the
                // slice commits batched with it.
                warn!(
                    hour = hour.hour_start_ms,
                    bytes,
                    tenants = hour.tenants.len(),
                    "energy history: hour rollup too large to store; it stays in memory only"
                );
                unstored += 1;
                continue;
            }
            Self::durable(
                self.ledger
                    .submit(vec![Op::PutHour(Box::new(hour.clone()))]),
            )
            .await?;
            self.metrics.history_hours_stored.inc();
            stored.push(hour);
        }
        self.metrics.history_hours_unstored.set(unstored);
        let keep_from = u64::try_from(self.clock.now_ms())
            .unwrap_or(0)
            .saturating_sub(RECENT_HOURS_MS);
        self.history_lock().flushed(&stored, keep_from);
        Ok(stored.len())
    }

    /// Deletes stored hours older than `energy_history_retention`, at most once an hour (from
    /// [`Self::flush_energy_history`]). Without it the history grows forever: about 2 GB a year at
    /// 1,000 tenants, etcd's whole default quota, after which every write fails.
    async fn prune_energy_history(&self) -> Result<(), ControllerError> {
        use std::sync::atomic::Ordering;
        let Some(keep) = self.config.energy_history_retention else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        if now.saturating_sub(self.history_pruned_ms.load(Ordering::Relaxed))
            < greenslice_core::time::HOUR_MS_I64
        {
            return Ok(());
        }
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let before = crate::energy::history::hour_of(
            u64::try_from(now.saturating_sub(keep_ms)).unwrap_or(0),
        );
        Self::durable(
            self.ledger
                .submit(vec![crate::ledger::Op::DeleteHoursBefore(before)]),
        )
        .await?;
        self.history_pruned_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// The activity threshold (percent of capacity) under which held capacity counts as idle in
    /// energy accounting and reports: the idle policy's own (`[idle] threshold_pct`), so what a
    /// report calls idle GPU-hours is what reclaim calls idle.
    pub fn idle_threshold_pct(&self) -> f64 {
        self.reclaim.threshold_pct()
    }

    /// Attributed energy intervals overlapping `[from_ms, to_ms)`, and the accounting settings.
    pub fn energy_records(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> (
        Vec<crate::energy::accounting::IntervalRecord>,
        crate::energy::StaticPolicy,
        u64,
    ) {
        let e = self.energy_lock();
        (e.records(from_ms, to_ms), e.config().policy, e.skipped)
    }

    /// For a report over `[from_ms, to_ms)`: the interval records in memory and the hour rollups
    /// (stored, with those not yet stored laid over them), read together so they hold the same
    /// intervals, and the accounting settings.
    pub async fn energy_sources(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<crate::report::Sources, ControllerError> {
        use crate::energy::history::{hour_at_or_after, hour_of};
        let (first, last) = (hour_of(from_ms), hour_at_or_after(to_ms));
        let stored = self
            .ledger
            .load_hours(first, last)
            .await
            .map_err(|e| ControllerError::Ledger(e.to_string()))?;
        let e = self.energy_lock();
        let hours = self.history_lock().overlay(stored, first, last);
        // Records of the whole hours, so that an hour's count compares with its rollup's.
        Ok(crate::report::Sources::split(
            e.records(first, last),
            hours,
            from_ms,
            to_ms,
            e.config().policy,
            e.skipped,
        ))
    }
}
