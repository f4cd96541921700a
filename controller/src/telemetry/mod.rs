//! Utilization samples from the agents, kept in bounded memory.
//!
//! - Per GPU: the most recent raw wire samples ([`RAW_SAMPLES_PER_GPU`]), as the energy pipeline
//!   reads them.
//! - Per slice and per GPU: utilization [`history`] (raw points plus 1-minute and 1-hour rollups with
//!   min / mean / max), a fixed [`history::SeriesHistory::BYTES`] per tracked series.
//! - Per tenant: hourly usage accounts (used and idle-allocated GPU-seconds), kept
//!   [`ACCOUNT_HOURS`]; [`accounting`] turns them and the slice records into waste figures.
//!
//! Tier 0 (a lower room): imports nothing of the controller.

pub mod accounting;
pub mod history;

use std::collections::{BTreeMap, VecDeque};

use dashmap::DashMap;
use greenslice_core::sample::AttributedSample;

pub use accounting::{TenantWaste, WasteReport, accounting};
use greenslice_core::time::HOUR_MS_I64;
use history::{Point, Rollup, SeriesHistory};

/// Hours of per-tenant usage accounts kept (35 days).
pub const ACCOUNT_HOURS: usize = 35 * 24;

/// Longest time one point stands for when integrating usage, ms: a gap longer than this (an agent
/// away) is not counted as use or idleness.
pub const MAX_POINT_SPAN_MS: i64 = 10_000;

/// What the telemetry needs to know of a live slice to keep its history and accounts.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceInfo {
    pub tenant: String,
    pub node: String,
    /// Capacity the slice holds, in GPUs (a 3g MIG instance of 7 compute slices holds 3/7).
    pub allocated_gpus: f64,
    /// How idleness is judged for it.
    pub idle: IdleTest,
}

/// When an interval of a slice's history counts as idle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleTest {
    /// Capacity the slice holds, in GPUs.
    pub allocated_gpus: f64,
    /// Compute activity under this percent of the slice's own capacity is idle.
    pub threshold_pct: f64,
    /// Memory-controller activity under this percent is idle (applies where it is measured).
    pub memory_threshold_pct: f64,
}

impl IdleTest {
    /// Whether the slice was idle throughout `r`: its peak compute activity (relative to its own
    /// capacity) and, where known, its peak memory activity stayed under the thresholds. Where the
    /// device gives no per-slice activity (A100 MIG), only a slice with no compute process is idle.
    pub fn rollup_idle(&self, r: &Rollup) -> bool {
        let compute_idle = if r.activity_known {
            let pct_of_own = f64::from(r.sm_max) / self.allocated_gpus.max(1e-9);
            pct_of_own < self.threshold_pct
        } else {
            r.processes_max == 0
        };
        let memory_idle = r.mem_max < 0.0 || f64::from(r.mem_max) < self.memory_threshold_pct;
        compute_idle && memory_idle
    }

    fn point_idle(&self, p: &Point) -> bool {
        self.rollup_idle(&Rollup {
            start_ms: p.at_ms,
            count: 1,
            sm_min: p.sm_pct,
            sm_mean: p.sm_pct,
            sm_max: p.sm_pct,
            mem_max: p.mem_pct,
            processes_max: p.processes,
            activity_known: p.activity_known,
        })
    }
}

/// A tracked slice: its history and what it was last known as.
#[derive(Debug, Clone)]
pub struct SliceSeries {
    pub info: SliceInfo,
    pub history: SeriesHistory,
}

/// A tracked GPU's utilization history.
#[derive(Debug, Clone, Default)]
pub struct GpuHistory {
    pub node: String,
    pub history: SeriesHistory,
}

/// One tenant's usage in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TenantHour {
    /// Start of the hour, ms since the Unix epoch.
    pub start_ms: i64,
    /// Compute used, GPU-seconds (activity-weighted: a whole GPU at 50% for an hour is 1800).
    pub used_gpu_s: f64,
    /// Capacity held by slices while they were idle, GPU-seconds.
    pub idle_gpu_s: f64,
    /// Capacity held by slices while observed, GPU-seconds.
    pub observed_gpu_s: f64,
}

/// Raw samples kept per GPU (at 1 Hz: the last 10 minutes).
pub const RAW_SAMPLES_PER_GPU: usize = 600;

/// Recent samples of one GPU.
#[derive(Debug, Default, Clone)]
pub struct GpuSeries {
    pub node: String,
    /// Oldest first.
    pub recent: VecDeque<AttributedSample>,
}

/// Samples of every GPU.
#[derive(Debug, Default)]
pub struct Telemetry {
    gpus: DashMap<String, GpuSeries>,
    /// Utilization history per slice id.
    slices: DashMap<String, SliceSeries>,
    /// Utilization history per GPU uuid.
    gpu_history: DashMap<String, GpuHistory>,
    /// Usage accounts per tenant, hourly, oldest first.
    accounts: DashMap<String, VecDeque<TenantHour>>,
}

impl Telemetry {
    /// Stores a batch from `node`. Samples older than the newest kept for their GPU are dropped
    /// (an agent that resent a batch after reconnecting). Returns the samples accepted, in order.
    pub fn ingest(&self, node: &str, samples: &[AttributedSample]) -> Vec<AttributedSample> {
        let mut accepted = Vec::new();
        for s in samples {
            let mut e = self.gpus.entry(s.gpu_uuid.clone()).or_default();
            e.node = node.to_string();
            if e.recent
                .back()
                .is_some_and(|last| last.at_unix_ms >= s.at_unix_ms)
            {
                continue;
            }
            if e.recent.len() == RAW_SAMPLES_PER_GPU {
                e.recent.pop_front();
            }
            e.recent.push_back(s.clone());
            accepted.push(s.clone());
        }
        accepted
    }

    /// The latest sample of a GPU.
    pub fn latest(&self, gpu: &str) -> Option<AttributedSample> {
        self.gpus.get(gpu).and_then(|s| s.recent.back().cloned())
    }

    /// Recent samples of a GPU (oldest first).
    pub fn recent(&self, gpu: &str) -> Vec<AttributedSample> {
        self.gpus
            .get(gpu)
            .map(|s| s.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// GPUs with samples.
    pub fn gpus(&self) -> Vec<String> {
        self.gpus.iter().map(|e| e.key().clone()).collect()
    }

    /// Folds accepted samples (from [`Self::ingest`]) into the slice and GPU histories and the
    /// tenants' accounts. `info` describes live slices; activity of slices it does not know is kept
    /// only in the GPU's history.
    pub fn record_usage(
        &self,
        node: &str,
        accepted: &[AttributedSample],
        info: &dyn Fn(&str) -> Option<SliceInfo>,
    ) {
        // A slice on several GPUs gets one point per instant: its GPUs' activity summed.
        let mut per_slice: BTreeMap<(i64, &str), Point> = BTreeMap::new();
        for s in accepted {
            let mem_pct = s.mem_util_pct.map_or(-1.0, |m| m as f32);
            let slices_sm: f64 = s.slices.iter().map(|a| a.sm_pct).sum();
            let gpu_sm = s
                .gpu_util_pct
                .map_or(slices_sm + s.unattributed_sm_pct, f64::from);
            let procs: u32 = s.slices.iter().map(|a| a.processes).sum();
            let mut g = self.gpu_history.entry(s.gpu_uuid.clone()).or_default();
            g.node = node.to_string();
            g.history.push(Point {
                at_ms: s.at_unix_ms,
                sm_pct: gpu_sm as f32,
                mem_pct,
                processes: u16::try_from(procs).unwrap_or(u16::MAX),
                activity_known: s.gpu_util_pct.is_some()
                    || s.slices.iter().all(|a| a.activity_known),
            });
            drop(g);
            // Board memory activity belongs to a slice only when it holds the board alone.
            let alone = s.slices.len() == 1 && s.unattributed_sm_pct == 0.0;
            for a in &s.slices {
                let p = per_slice
                    .entry((s.at_unix_ms, a.slice_id.as_str()))
                    .or_insert(Point {
                        at_ms: s.at_unix_ms,
                        sm_pct: 0.0,
                        mem_pct: if alone { mem_pct } else { -1.0 },
                        processes: 0,
                        activity_known: true,
                    });
                p.sm_pct += a.sm_pct as f32;
                p.processes = p
                    .processes
                    .saturating_add(u16::try_from(a.processes).unwrap_or(u16::MAX));
                p.activity_known &= a.activity_known;
                if !alone {
                    p.mem_pct = -1.0;
                }
            }
        }
        for ((_, id), p) in per_slice {
            let Some(si) = info(id) else { continue };
            let mut e = self
                .slices
                .entry(id.to_string())
                .or_insert_with(|| SliceSeries {
                    info: si.clone(),
                    history: SeriesHistory::default(),
                });
            let prev = e.history.latest().map(|l| l.at_ms);
            e.info = si.clone();
            if !e.history.push(p) {
                continue;
            }
            drop(e);
            // The point stands for the time since the previous one (bounded), or 1 s for the first.
            let span_ms = prev.map_or(1_000, |t| (p.at_ms - t).clamp(0, MAX_POINT_SPAN_MS));
            let span_s = span_ms as f64 / 1000.0;
            let hour = p.at_ms.div_euclid(HOUR_MS_I64) * HOUR_MS_I64;
            let mut acc = self.accounts.entry(si.tenant.clone()).or_default();
            if acc.back().is_none_or(|h| h.start_ms < hour) {
                if acc.len() == ACCOUNT_HOURS {
                    acc.pop_front();
                }
                acc.push_back(TenantHour {
                    start_ms: hour,
                    ..Default::default()
                });
            }
            // Late points of an earlier hour land in their own hour if it is kept.
            if let Some(h) = acc.iter_mut().rev().find(|h| h.start_ms == hour) {
                let used = (f64::from(p.sm_pct) / 100.0).min(si.allocated_gpus.max(0.0));
                h.used_gpu_s += used * span_s;
                h.observed_gpu_s += si.allocated_gpus * span_s;
                if si.idle.point_idle(&p) {
                    h.idle_gpu_s += si.allocated_gpus * span_s;
                }
            }
        }
    }

    /// A copy of a slice's history.
    pub fn slice(&self, id: &str) -> Option<SliceSeries> {
        self.slices.get(id).map(|s| s.clone())
    }

    /// Runs `f` on a slice's history without copying it.
    pub fn with_slice<T>(&self, id: &str, f: impl FnOnce(&SliceSeries) -> T) -> Option<T> {
        self.slices.get(id).map(|s| f(&s))
    }

    /// A copy of a GPU's history.
    pub fn gpu_history(&self, uuid: &str) -> Option<GpuHistory> {
        self.gpu_history.get(uuid).map(|s| s.clone())
    }

    /// Tracked slice ids.
    pub fn tracked_slices(&self) -> Vec<String> {
        self.slices.iter().map(|e| e.key().clone()).collect()
    }

    /// Forgets the history of slices for which `keep` is false (released long enough ago).
    pub fn retain_slices(&self, keep: impl Fn(&str) -> bool) {
        self.slices.retain(|id, _| keep(id));
    }

    /// A tenant's hourly accounts overlapping `[from_ms, to_ms)`.
    pub fn tenant_hours(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Vec<TenantHour> {
        self.accounts
            .get(tenant)
            .map(|a| {
                a.iter()
                    .filter(|h| h.start_ms + HOUR_MS_I64 > from_ms && h.start_ms < to_ms)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tenants with accounts.
    pub fn tenants(&self) -> Vec<String> {
        self.accounts.iter().map(|e| e.key().clone()).collect()
    }

    /// Memory held by utilization histories and accounts, bytes (fixed cost per series, see
    /// [`SeriesHistory::BYTES`]; map overhead not counted). The raw wire-sample window per GPU is
    /// not included.
    pub fn history_bytes(&self) -> usize {
        let series = self.slices.len() + self.gpu_history.len();
        let accounts: usize = self
            .accounts
            .iter()
            .map(|a| a.capacity() * std::mem::size_of::<TenantHour>())
            .sum();
        series * (SeriesHistory::BYTES + 64) + accounts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(gpu: &str, at: i64) -> AttributedSample {
        AttributedSample {
            at_unix_ms: at,
            gpu_uuid: gpu.into(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_a_bounded_ordered_window_and_drops_resent_samples() {
        let t = Telemetry::default();
        let batch: Vec<_> = (0..(RAW_SAMPLES_PER_GPU as i64 + 10))
            .map(|i| s("g", i * 1000))
            .collect();
        assert_eq!(t.ingest("n", &batch).len(), RAW_SAMPLES_PER_GPU + 10);
        assert_eq!(t.recent("g").len(), RAW_SAMPLES_PER_GPU);
        assert_eq!(t.recent("g")[0].at_unix_ms, 10_000);
        // Resent old samples are ignored.
        assert!(t.ingest("n", &[s("g", 5_000)]).is_empty());
        assert_eq!(
            t.latest("g").unwrap().at_unix_ms,
            (RAW_SAMPLES_PER_GPU as i64 + 9) * 1000
        );
    }
}
