//! Share limits enforced by watching: what MPS cannot guarantee (a tenant's process can change its
//! own environment and so its MPS limits), the agent checks against what NVML measures.
//!
//! Every sampling pass gives the [`Enforcer`] each share's limits and the processes it measured,
//! with the slice each belongs to (from the process's `GREENSLICE_SLICE_ID`). It answers what to do:
//! - a share whose processes on a GPU hold more device memory than its limit: its largest process
//!   there is warned at once, sent SIGTERM after `memory_grace_ms` if the share is still over, and
//!   SIGKILL `term_grace_ms` later if it has not exited;
//! - a share whose processes use more compute than its fraction (plus a tolerance) for
//!   `compute_window_ms` is reported, not stopped (SM time is shared, and MPS' thread percentage
//!   is the limit that holds it; see docs/ISOLATION.md);
//! - a process within its share's limits is never touched, nor is any process that belongs to no
//!   share (MIG instances and whole GPUs hold their processes by hardware or exclusive mode).
//!
//! This module decides only; the sampler sends the signals and the notices (see
//! `session::sample_and_enforce`).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// `[enforce]` in the agent's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforceConfig {
    /// `enforce` (default): stop processes over their share's memory limit; `report`: only tell
    /// the tenant and count; `off`: do nothing.
    pub mode: EnforceMode,
    /// How long a share may stay over its memory limit before its process is sent SIGTERM, ms.
    pub memory_grace_ms: u64,
    /// How long a process has after SIGTERM before SIGKILL, ms.
    pub term_grace_ms: u64,
    /// How long a share must use more compute than its fraction to be reported, ms.
    pub compute_window_ms: u64,
    /// Points of SM percent above a share's fraction that still count as within it.
    pub compute_tolerance_pct: f64,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        EnforceConfig {
            mode: EnforceMode::Enforce,
            memory_grace_ms: 10_000,
            term_grace_ms: 10_000,
            compute_window_ms: 60_000,
            compute_tolerance_pct: 10.0,
        }
    }
}

impl EnforceConfig {
    /// Checks the values (a bad config file is refused at start, not half applied).
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.compute_tolerance_pct) {
            return Err(format!(
                "enforce.compute_tolerance_pct must be within 0..=100, got {}",
                self.compute_tolerance_pct
            ));
        }
        if self.term_grace_ms == 0 {
            return Err("enforce.term_grace_ms must be at least 1 ms".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforceMode {
    Off,
    Report,
    Enforce,
}

/// A share's limits on one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareLimit {
    pub slice_id: String,
    pub gpu_uuid: String,
    /// Compute fraction, (0, 1].
    pub compute_fraction: f64,
    /// Device memory limit, bytes.
    pub memory_bytes: u64,
}

/// A process measured on a GPU, with the slice it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub gpu_uuid: String,
    pub pid: u32,
    pub slice_id: String,
    /// Device memory held (`None`: the driver could not tell).
    pub memory_bytes: Option<u64>,
    /// SM percent of the whole GPU over the last pass (`None`: not measured).
    pub sm_pct: Option<u32>,
}

/// The two signals the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Kill,
}

pub use greenslice_core::notice::NoticeKind;

/// A notice for the slice's tenant (through the controller's slice events).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub slice_id: String,
    pub kind: NoticeKind,
    pub pid: Option<u32>,
    pub message: String,
}

/// One thing to do after a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Signal {
        pid: u32,
        slice_id: String,
        signal: StopSignal,
    },
    Notice(Notice),
}

#[derive(Debug, Clone)]
struct OverMemory {
    since_ms: i64,
    termed_ms: Option<i64>,
    killed: bool,
}

/// Enforcement state between passes: which processes are over since when, which were signalled,
/// which shares' compute is over since when. Plain data; the pure decision is [`Enforcer::step`].
#[derive(Debug, Default)]
pub struct Enforcer {
    memory: HashMap<(String, u32), OverMemory>,
    /// (slice, GPU) → when its compute went over, and whether it was reported.
    compute: HashMap<(String, String), (i64, bool)>,
}

const MIB: u64 = 1 << 20;

impl Enforcer {
    /// Decides one pass: `limits` are the shares now held, `procs` the processes measured in the
    /// pass with their slices.
    pub fn step(
        &mut self,
        cfg: &EnforceConfig,
        now_ms: i64,
        limits: &[ShareLimit],
        procs: &[Observed],
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if cfg.mode == EnforceMode::Off {
            self.memory.clear();
            self.compute.clear();
            return out;
        }
        // Each share's processes on each GPU.
        let mut by_share: BTreeMap<(&str, &str), Vec<&Observed>> = BTreeMap::new();
        for p in procs {
            by_share
                .entry((p.slice_id.as_str(), p.gpu_uuid.as_str()))
                .or_default()
                .push(p);
        }
        let mut over_now: Vec<(String, u32)> = Vec::new();
        let mut compute_over_now: Vec<(String, String)> = Vec::new();
        for l in limits {
            let Some(ps) = by_share.get(&(l.slice_id.as_str(), l.gpu_uuid.as_str())) else {
                continue;
            };
            // Memory: the share's total against its limit; the largest process is the one to go.
            let used: u64 = ps.iter().filter_map(|p| p.memory_bytes).sum();
            if used > l.memory_bytes
                && let Some(top) = ps
                    .iter()
                    .filter(|p| p.memory_bytes.is_some())
                    .max_by_key(|p| (p.memory_bytes, p.pid))
            {
                let key = (l.slice_id.clone(), top.pid);
                over_now.push(key.clone());
                let st = self.memory.entry(key).or_insert_with(|| {
                    out.push(Action::Notice(Notice {
                        slice_id: l.slice_id.clone(),
                        kind: NoticeKind::MemoryOverLimit,
                        pid: Some(top.pid),
                        message: format!(
                            "share {} holds {} MiB of device memory on {}, over its limit of {} MiB; {}",
                            l.slice_id,
                            used / MIB,
                            l.gpu_uuid,
                            l.memory_bytes / MIB,
                            match cfg.mode {
                                EnforceMode::Enforce => format!(
                                    "process {} is stopped in {} s unless the share frees memory",
                                    top.pid,
                                    cfg.memory_grace_ms / 1000
                                ),
                                _ => "reported only (enforce.mode = report)".to_string(),
                            }
                        ),
                    }));
                    OverMemory {
                        since_ms: now_ms,
                        termed_ms: None,
                        killed: false,
                    }
                });
                if cfg.mode == EnforceMode::Enforce {
                    match st.termed_ms {
                        None if now_ms - st.since_ms >= cfg.memory_grace_ms as i64 => {
                            st.termed_ms = Some(now_ms);
                            out.push(Action::Signal {
                                pid: top.pid,
                                slice_id: l.slice_id.clone(),
                                signal: StopSignal::Term,
                            });
                            out.push(Action::Notice(Notice {
                                slice_id: l.slice_id.clone(),
                                kind: NoticeKind::ProcessStopped,
                                pid: Some(top.pid),
                                message: format!(
                                    "process {} of share {} sent SIGTERM: {} MiB of device memory on {} for over {} s, limit {} MiB",
                                    top.pid,
                                    l.slice_id,
                                    used / MIB,
                                    l.gpu_uuid,
                                    cfg.memory_grace_ms / 1000,
                                    l.memory_bytes / MIB
                                ),
                            }));
                        }
                        Some(t) if !st.killed && now_ms - t >= cfg.term_grace_ms as i64 => {
                            st.killed = true;
                            out.push(Action::Signal {
                                pid: top.pid,
                                slice_id: l.slice_id.clone(),
                                signal: StopSignal::Kill,
                            });
                            out.push(Action::Notice(Notice {
                                slice_id: l.slice_id.clone(),
                                kind: NoticeKind::ProcessKilled,
                                pid: Some(top.pid),
                                message: format!(
                                    "process {} of share {} sent SIGKILL: still running {} s after SIGTERM",
                                    top.pid,
                                    l.slice_id,
                                    cfg.term_grace_ms / 1000
                                ),
                            }));
                        }
                        _ => {}
                    }
                }
            }
            // Compute: reported once per episode of sustained use over the fraction.
            let sm: Vec<u32> = ps.iter().filter_map(|p| p.sm_pct).collect();
            if !sm.is_empty() {
                let total: u32 = sm.iter().sum();
                let allowed = l.compute_fraction * 100.0 + cfg.compute_tolerance_pct;
                if f64::from(total) > allowed {
                    let key = (l.slice_id.clone(), l.gpu_uuid.clone());
                    compute_over_now.push(key.clone());
                    let (since, reported) = self.compute.entry(key).or_insert((now_ms, false));
                    if !*reported && now_ms - *since >= cfg.compute_window_ms as i64 {
                        *reported = true;
                        out.push(Action::Notice(Notice {
                            slice_id: l.slice_id.clone(),
                            kind: NoticeKind::ComputeOverShare,
                            pid: None,
                            message: format!(
                                "share {} used {}% of {}'s SMs for over {} s, more than its {:.0}% (reported, not stopped)",
                                l.slice_id,
                                total,
                                l.gpu_uuid,
                                cfg.compute_window_ms / 1000,
                                l.compute_fraction * 100.0
                            ),
                        }));
                    }
                }
            }
        }
        // A share back within its limits, or a process gone, starts afresh.
        self.memory.retain(|k, _| over_now.contains(k));
        self.compute.retain(|k, _| compute_over_now.contains(k));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cfg() -> EnforceConfig {
        EnforceConfig {
            mode: EnforceMode::Enforce,
            memory_grace_ms: 5_000,
            term_grace_ms: 3_000,
            compute_window_ms: 10_000,
            compute_tolerance_pct: 10.0,
        }
    }

    fn share(id: &str, fraction: f64, mem: u64) -> ShareLimit {
        ShareLimit {
            slice_id: id.into(),
            gpu_uuid: "GPU-a".into(),
            compute_fraction: fraction,
            memory_bytes: mem,
        }
    }

    fn proc_(id: &str, pid: u32, mem: u64, sm: u32) -> Observed {
        Observed {
            gpu_uuid: "GPU-a".into(),
            pid,
            slice_id: id.into(),
            memory_bytes: Some(mem),
            sm_pct: Some(sm),
        }
    }

    fn signals(a: &[Action]) -> Vec<(u32, StopSignal)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Signal { pid, signal, .. } => Some((*pid, *signal)),
                _ => None,
            })
            .collect()
    }

    fn notices(a: &[Action]) -> Vec<NoticeKind> {
        a.iter()
            .filter_map(|a| match a {
                Action::Notice(n) => Some(n.kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn over_memory_is_warned_then_termed_after_the_grace_then_killed() {
        let mut e = Enforcer::default();
        let limits = [share("s1", 0.25, 4 * GIB), share("s2", 0.25, 4 * GIB)];
        let procs = [proc_("s1", 10, 6 * GIB, 20), proc_("s2", 20, 3 * GIB, 20)];
        let a = e.step(&cfg(), 0, &limits, &procs);
        assert_eq!(notices(&a), [NoticeKind::MemoryOverLimit]);
        assert!(signals(&a).is_empty(), "nothing stopped within the grace");
        assert!(e.step(&cfg(), 4_999, &limits, &procs).is_empty());
        let a = e.step(&cfg(), 5_000, &limits, &procs);
        assert_eq!(signals(&a), [(10, StopSignal::Term)]);
        assert_eq!(notices(&a), [NoticeKind::ProcessStopped]);
        assert!(e.step(&cfg(), 7_999, &limits, &procs).is_empty());
        let a = e.step(&cfg(), 8_000, &limits, &procs);
        assert_eq!(signals(&a), [(10, StopSignal::Kill)]);
        assert_eq!(notices(&a), [NoticeKind::ProcessKilled]);
        // Nothing more while the process is still listed; s2 (within its limit) never touched.
        assert!(e.step(&cfg(), 60_000, &limits, &procs).is_empty());
    }

    #[test]
    fn a_share_that_frees_memory_within_the_grace_is_left_alone_and_starts_afresh() {
        let mut e = Enforcer::default();
        let limits = [share("s1", 0.5, 4 * GIB)];
        let over = [proc_("s1", 10, 5 * GIB, 10)];
        let within = [proc_("s1", 10, 2 * GIB, 10)];
        assert_eq!(
            notices(&e.step(&cfg(), 0, &limits, &over)),
            [NoticeKind::MemoryOverLimit]
        );
        assert!(e.step(&cfg(), 4_000, &limits, &within).is_empty());
        // Over again: a new grace, not the old one.
        assert_eq!(
            notices(&e.step(&cfg(), 6_000, &limits, &over)),
            [NoticeKind::MemoryOverLimit]
        );
        assert!(signals(&e.step(&cfg(), 10_999, &limits, &over)).is_empty());
        assert_eq!(
            signals(&e.step(&cfg(), 11_000, &limits, &over)),
            [(10, StopSignal::Term)]
        );
    }

    #[test]
    fn the_share_total_counts_and_its_largest_process_goes() {
        let mut e = Enforcer::default();
        let limits = [share("s1", 0.5, 4 * GIB)];
        // 3 + 2 GiB: each within the limit alone, over together.
        let procs = [proc_("s1", 10, 3 * GIB, 0), proc_("s1", 11, 2 * GIB, 0)];
        e.step(&cfg(), 0, &limits, &procs);
        assert_eq!(
            signals(&e.step(&cfg(), 5_000, &limits, &procs)),
            [(10, StopSignal::Term)]
        );
    }

    #[test]
    fn report_mode_never_signals_and_off_does_nothing() {
        let limits = [share("s1", 0.25, GIB)];
        let procs = [proc_("s1", 10, 2 * GIB, 90)];
        let mut c = cfg();
        c.mode = EnforceMode::Report;
        let mut e = Enforcer::default();
        let mut all = Vec::new();
        for t in (0..60_000).step_by(1_000) {
            all.extend(e.step(&c, t, &limits, &procs));
        }
        assert!(signals(&all).is_empty());
        assert_eq!(
            notices(&all),
            [NoticeKind::MemoryOverLimit, NoticeKind::ComputeOverShare]
        );
        c.mode = EnforceMode::Off;
        let mut e = Enforcer::default();
        for t in (0..60_000).step_by(1_000) {
            assert!(e.step(&c, t, &limits, &procs).is_empty());
        }
    }

    #[test]
    fn compute_over_the_share_is_reported_once_per_sustained_episode() {
        let mut e = Enforcer::default();
        let limits = [share("s1", 0.25, 8 * GIB)];
        let busy = [proc_("s1", 10, GIB, 50)];
        let near = [proc_("s1", 10, GIB, 34)]; // within 25 + 10
        let mut got = Vec::new();
        for t in (0..=20_000).step_by(1_000) {
            got.extend(e.step(&cfg(), t, &limits, &busy));
        }
        assert_eq!(notices(&got), [NoticeKind::ComputeOverShare]);
        assert!(
            signals(&got).is_empty(),
            "compute is reported, never stopped"
        );
        // Within the tolerance: the episode ends; a short burst is not reported.
        assert!(e.step(&cfg(), 21_000, &limits, &near).is_empty());
        for t in (22_000..30_000).step_by(1_000) {
            assert!(e.step(&cfg(), t, &limits, &busy).is_empty());
        }
    }

    #[test]
    fn processes_of_no_share_and_unmeasured_memory_are_never_touched() {
        let mut e = Enforcer::default();
        let limits = [share("s1", 0.25, GIB)];
        let procs = [
            // A whole GPU's or MIG slice's process: no share limit.
            Observed {
                slice_id: "w1".into(),
                ..proc_("w1", 30, 70 * GIB, 100)
            },
            // Memory the driver could not tell.
            Observed {
                memory_bytes: None,
                ..proc_("s1", 31, 0, 0)
            },
        ];
        for t in (0..60_000).step_by(1_000) {
            assert!(e.step(&cfg(), t, &limits, &procs).is_empty());
        }
    }

    #[test]
    fn bad_config_values_are_refused() {
        let mut c = cfg();
        c.compute_tolerance_pct = -1.0;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.term_grace_ms = 0;
        assert!(c.validate().is_err());
        assert!(cfg().validate().is_ok());
    }
}
