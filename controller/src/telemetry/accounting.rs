//! Waste accounting: allocated, used, idle-allocated and reclaimed GPU-hours per tenant and for the
//! cluster over a time range. A pure function of the slices' allocations and the tenants' hourly
//! usage accounts; reports and metrics call it.
//!
//! Definitions (GPU-hours; a MIG 3g instance of 7 compute slices holds 3/7 GPU):
//! - allocated: capacity held by live slices, from when a slice was created to when it was released.
//! - used: compute activity actually measured, weighted by utilization (a whole GPU at 40% for an hour
//!   is 0.4), capped at what the slice holds.
//! - idle-allocated: capacity held by slices during intervals their idle test found idle (below the
//!   threshold of their idle policy). Measured on samples, so time an agent was away is not counted.
//! - reclaimed: capacity given back by idle reclaim, counted from the reclaim to the end of the range
//!   (the GPU-hours the reclaimed slices would otherwise have kept holding within the range, at most).
//!
//! Used and idle come from hourly accounts: a range that cuts an hour takes the overlapped fraction of
//! it (hour resolution).

use std::collections::BTreeMap;

use serde::Serialize;

use super::TenantHour;
use greenslice_core::time::HOUR_MS_I64;

/// Reasons of reclaimed slices start with this.
pub const RECLAIM_REASON_PREFIX: &str = "reclaimed";

/// The capacity one slice held.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub tenant: String,
    /// Capacity held, GPUs.
    pub gpus: f64,
    /// When it started holding it, ms since the Unix epoch.
    pub from_ms: i64,
    /// When it stopped (None: still holds it).
    pub to_ms: Option<i64>,
    /// Released by idle reclaim.
    pub reclaimed: bool,
}

/// Waste figures of one tenant (or the cluster, tenant "") over a range. GPU-hours.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantWaste {
    pub tenant: String,
    pub allocated_gpu_h: f64,
    pub used_gpu_h: f64,
    pub idle_allocated_gpu_h: f64,
    pub reclaimed_gpu_h: f64,
    /// Slices reclaimed within the range.
    pub reclaimed_slices: u32,
}

/// Waste per tenant (by name) and for the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WasteReport {
    pub from_ms: i64,
    pub to_ms: i64,
    pub tenants: Vec<TenantWaste>,
    pub cluster: TenantWaste,
}

fn overlap(a0: i64, a1: i64, b0: i64, b1: i64) -> i64 {
    (a1.min(b1) - a0.max(b0)).max(0)
}

const MS_PER_H: f64 = HOUR_MS_I64 as f64;

/// Waste over `[from_ms, to_ms)`. `hours` gives each tenant's hourly usage accounts.
pub fn accounting(
    allocations: &[Allocation],
    hours: &dyn Fn(&str) -> Vec<TenantHour>,
    from_ms: i64,
    to_ms: i64,
) -> WasteReport {
    let mut by: BTreeMap<String, TenantWaste> = BTreeMap::new();
    for a in allocations {
        let end = a.to_ms.unwrap_or(to_ms);
        let t = by.entry(a.tenant.clone()).or_insert_with(|| TenantWaste {
            tenant: a.tenant.clone(),
            ..Default::default()
        });
        t.allocated_gpu_h += a.gpus * overlap(a.from_ms, end, from_ms, to_ms) as f64 / MS_PER_H;
        if a.reclaimed
            && let Some(at) = a.to_ms
            && at >= from_ms
            && at < to_ms
        {
            t.reclaimed_slices += 1;
            t.reclaimed_gpu_h += a.gpus * (to_ms - at) as f64 / MS_PER_H;
        }
    }
    let tenants: Vec<String> = by.keys().cloned().collect();
    for name in tenants {
        let Some(t) = by.get_mut(&name) else { continue };
        for h in hours(&name) {
            let f = overlap(h.start_ms, h.start_ms + HOUR_MS_I64, from_ms, to_ms) as f64
                / HOUR_MS_I64 as f64;
            t.used_gpu_h += h.used_gpu_s * f / 3600.0;
            t.idle_allocated_gpu_h += h.idle_gpu_s * f / 3600.0;
        }
    }
    let mut cluster = TenantWaste::default();
    for t in by.values() {
        cluster.allocated_gpu_h += t.allocated_gpu_h;
        cluster.used_gpu_h += t.used_gpu_h;
        cluster.idle_allocated_gpu_h += t.idle_allocated_gpu_h;
        cluster.reclaimed_gpu_h += t.reclaimed_gpu_h;
        cluster.reclaimed_slices += t.reclaimed_slices;
    }
    WasteReport {
        from_ms,
        to_ms,
        tenants: by.into_values().collect(),
        cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_allocated_used_idle_and_reclaimed_per_tenant_and_cluster() {
        let allocs = vec![
            Allocation {
                tenant: "a".into(),
                gpus: 1.0,
                from_ms: 0,
                to_ms: Some(2 * HOUR_MS_I64),
                reclaimed: true,
            },
            Allocation {
                tenant: "b".into(),
                gpus: 3.0 / 7.0,
                from_ms: HOUR_MS_I64,
                to_ms: None,
                reclaimed: false,
            },
        ];
        let hours = |t: &str| {
            if t == "a" {
                vec![
                    TenantHour {
                        start_ms: 0,
                        used_gpu_s: 1800.0,
                        idle_gpu_s: 0.0,
                        observed_gpu_s: 3600.0,
                    },
                    TenantHour {
                        start_ms: HOUR_MS_I64,
                        used_gpu_s: 0.0,
                        idle_gpu_s: 3600.0,
                        observed_gpu_s: 3600.0,
                    },
                ]
            } else {
                Vec::new()
            }
        };
        let r = accounting(&allocs, &hours, 0, 4 * HOUR_MS_I64);
        let a = &r.tenants[0];
        assert_eq!(a.allocated_gpu_h, 2.0);
        assert_eq!(a.used_gpu_h, 0.5);
        assert_eq!(a.idle_allocated_gpu_h, 1.0);
        assert_eq!((a.reclaimed_gpu_h, a.reclaimed_slices), (2.0, 1));
        assert!((r.tenants[1].allocated_gpu_h - 3.0 * 3.0 / 7.0).abs() < 1e-9);
        assert!((r.cluster.allocated_gpu_h - (2.0 + 9.0 / 7.0)).abs() < 1e-9);
        // Half of the second hour only.
        let r = accounting(&allocs, &hours, HOUR_MS_I64, HOUR_MS_I64 + HOUR_MS_I64 / 2);
        assert_eq!(r.tenants[0].idle_allocated_gpu_h, 0.5);
    }
}
