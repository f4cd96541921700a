//! Totals of attributed GPU intervals per tenant, per GPU and for the cluster, serializable for
//! reports (JSON, CSV, HTML) and metrics.
//!
//! Totals keep the identity of each interval: for every GPU and for the cluster,
//! `tenants_mj + unattributed_mj + unallocated_idle_mj == measured_mj`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::attribution::{Attribution, StaticPolicy};
use super::carbon::{CarbonFactors, Co2e, FactorSource};
use super::measure::Measurement;

/// One tenant's totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantTotals {
    /// Static (idle) energy in mJ.
    pub static_mj: u64,
    /// Dynamic energy in mJ.
    pub dynamic_mj: u64,
    /// Part of `static_mj + dynamic_mj` from intervals whose energy was estimated, in mJ.
    pub estimated_mj: u64,
    /// CO2e of `static_mj + dynamic_mj`. `market_g` is set only when every interval had a
    /// market-based factor.
    pub co2e: Co2e,
    /// GPU intervals in which one of the tenant's slices held a GPU.
    pub slice_intervals: u64,
}

impl TenantTotals {
    /// Static plus dynamic energy in mJ.
    pub fn total_mj(&self) -> u64 {
        self.static_mj.saturating_add(self.dynamic_mj)
    }
}

/// Totals of one GPU, or of the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuTotals {
    /// Measured (or estimated) energy in mJ.
    pub measured_mj: u64,
    /// Static (idle) part in mJ.
    pub static_mj: u64,
    /// Dynamic part in mJ.
    pub dynamic_mj: u64,
    /// Energy attributed to tenants in mJ.
    pub tenants_mj: u64,
    /// Dynamic energy not attributed to any slice, in mJ.
    pub unattributed_mj: u64,
    /// Static energy of capacity nobody held, in mJ.
    pub unallocated_idle_mj: u64,
    /// Intervals added.
    pub intervals: u64,
    /// Intervals whose energy was estimated from power samples.
    pub estimated_intervals: u64,
    /// Energy of those estimated intervals in mJ.
    pub estimated_mj: u64,
    /// CO2e of `measured_mj`. `market_g` is set only when every interval had a market-based factor.
    pub co2e: Co2e,
}

/// The distinct sources of the carbon factors used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FactorSources {
    pub pue: BTreeSet<FactorSource>,
    pub location: BTreeSet<FactorSource>,
    pub market: BTreeSet<FactorSource>,
}

impl FactorSources {
    /// Whether any factor used was a default estimate.
    pub fn uses_default_estimates(&self) -> bool {
        self.pue
            .iter()
            .chain(&self.location)
            .chain(&self.market)
            .any(|s| {
                matches!(
                    s,
                    FactorSource::DefaultEstimate { .. } | FactorSource::GapEstimate { .. }
                )
            })
    }
}

/// Why an interval could not be added.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    #[error("interval attributed with policy {interval} but the ledger uses {ledger}")]
    PolicyMismatch {
        ledger: &'static str,
        interval: &'static str,
    },
    #[error("attribution of {attributed_mj} mJ does not match the measurement of {measured_mj} mJ")]
    MeasurementMismatch {
        measured_mj: u64,
        attributed_mj: u64,
    },
    #[error("attribution rows sum to {rows_mj} mJ, not the measured {measured_mj} mJ")]
    NotConserved { measured_mj: u64, rows_mj: u128 },
    #[error("{what} total overflows u64 mJ")]
    Overflow { what: &'static str },
}

/// Per-tenant, per-GPU and cluster totals of attributed intervals under one static policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyLedger {
    /// The static policy of every interval added (reports say which was used).
    pub policy: StaticPolicy,
    /// Totals by tenant name.
    pub tenants: BTreeMap<String, TenantTotals>,
    /// Totals by GPU id.
    pub gpus: BTreeMap<String, GpuTotals>,
    /// Totals of all GPUs.
    pub cluster: GpuTotals,
    /// Where the carbon factors came from.
    pub factor_sources: FactorSources,
}

impl EnergyLedger {
    /// An empty ledger for intervals attributed under `policy`.
    pub fn new(policy: StaticPolicy) -> EnergyLedger {
        EnergyLedger {
            policy,
            tenants: BTreeMap::new(),
            gpus: BTreeMap::new(),
            cluster: GpuTotals::default(),
            factor_sources: FactorSources::default(),
        }
    }

    /// Adds one GPU interval: its measurement, its attribution and the carbon factors that applied.
    /// On error the ledger is unchanged.
    pub fn add(
        &mut self,
        gpu_id: &str,
        measurement: &Measurement,
        attribution: &Attribution,
        factors: &CarbonFactors,
    ) -> Result<(), LedgerError> {
        if attribution.policy != self.policy {
            return Err(LedgerError::PolicyMismatch {
                ledger: self.policy.as_str(),
                interval: attribution.policy.as_str(),
            });
        }
        if attribution.measured_mj != measurement.energy_mj {
            return Err(LedgerError::MeasurementMismatch {
                measured_mj: measurement.energy_mj,
                attributed_mj: attribution.measured_mj,
            });
        }
        // An attribution may come from outside (deserialized): check the identity, do not trust it.
        let rows_mj = attribution.rows_total_mj();
        if rows_mj != u128::from(attribution.measured_mj)
            || u128::from(attribution.static_mj) + u128::from(attribution.dynamic_mj)
                != u128::from(attribution.measured_mj)
        {
            return Err(LedgerError::NotConserved {
                measured_mj: attribution.measured_mj,
                rows_mj,
            });
        }
        let estimated = measurement.quality.is_estimated();

        // Compute every new total first, then commit, so an overflow leaves the ledger unchanged.
        let mut tenants: BTreeMap<&str, TenantTotals> = BTreeMap::new();
        let mut tenants_mj: u64 = 0;
        for row in &attribution.slices {
            let t = tenants
                .entry(row.tenant.as_str())
                .or_insert_with(|| self.tenants.get(&row.tenant).cloned().unwrap_or_default());
            let first = t.slice_intervals == 0;
            t.static_mj = add(t.static_mj, row.static_mj, "tenant static")?;
            t.dynamic_mj = add(t.dynamic_mj, row.dynamic_mj, "tenant dynamic")?;
            if estimated {
                t.estimated_mj = add(t.estimated_mj, row.total_mj(), "tenant estimated")?;
            }
            t.co2e = add_co2e(t.co2e, first, factors.co2e(row.total_mj()));
            t.slice_intervals += 1;
            tenants_mj = add(tenants_mj, row.total_mj(), "interval tenants")?;
        }
        let gpu = add_interval(
            self.gpus.get(gpu_id).cloned().unwrap_or_default(),
            attribution,
            tenants_mj,
            estimated,
            factors,
        )?;
        let cluster = add_interval(
            self.cluster.clone(),
            attribution,
            tenants_mj,
            estimated,
            factors,
        )?;

        for (name, totals) in tenants {
            self.tenants.insert(name.to_string(), totals);
        }
        self.gpus.insert(gpu_id.to_string(), gpu);
        self.cluster = cluster;
        self.factor_sources.pue.insert(factors.pue.source.clone());
        self.factor_sources
            .location
            .insert(factors.location_g_per_kwh.source.clone());
        if let Some(m) = &factors.market_g_per_kwh {
            self.factor_sources.market.insert(m.source.clone());
        }
        Ok(())
    }
}

fn add(a: u64, b: u64, what: &'static str) -> Result<u64, LedgerError> {
    a.checked_add(b).ok_or(LedgerError::Overflow { what })
}

/// Sums CO2e; the market-based figure stays only if every part has one.
pub(crate) fn add_co2e(total: Co2e, first: bool, part: Co2e) -> Co2e {
    if first {
        return part;
    }
    Co2e {
        location_g: total.location_g + part.location_g,
        market_g: total.market_g.zip(part.market_g).map(|(a, b)| a + b),
    }
}

fn add_interval(
    mut t: GpuTotals,
    a: &Attribution,
    tenants_mj: u64,
    estimated: bool,
    factors: &CarbonFactors,
) -> Result<GpuTotals, LedgerError> {
    let first = t.intervals == 0;
    t.measured_mj = add(t.measured_mj, a.measured_mj, "measured")?;
    t.static_mj = add(t.static_mj, a.static_mj, "static")?;
    t.dynamic_mj = add(t.dynamic_mj, a.dynamic_mj, "dynamic")?;
    t.tenants_mj = add(t.tenants_mj, tenants_mj, "tenants")?;
    t.unattributed_mj = add(t.unattributed_mj, a.unattributed_mj, "unattributed")?;
    t.unallocated_idle_mj = add(
        t.unallocated_idle_mj,
        a.unallocated_idle_mj,
        "unallocated idle",
    )?;
    t.intervals += 1;
    if estimated {
        t.estimated_intervals += 1;
        t.estimated_mj = add(t.estimated_mj, a.measured_mj, "estimated")?;
    }
    t.co2e = add_co2e(t.co2e, first, factors.co2e(a.measured_mj));
    Ok(t)
}
