//! The idle decision, a pure function: (slices, their usage, the policy, warnings and keeps, now) ->
//! actions. The controller's periodic task ([`super::tick`]) gathers the inputs and applies the
//! actions; this module does no I/O.

use std::collections::BTreeMap;

use greenslice_core::slice::SliceState;

use super::policy::IdlePolicy;
use crate::model::slice::SliceRecord;
use crate::telemetry::IdleTest;

/// Longest gap in a slice's samples that still continues an idle run, ms. Also how fresh the newest
/// sample must be for the slice to be judged at all: no data is not evidence of idleness.
pub const MAX_GAP_MS: i64 = 2 * 60_000;

/// What the decision needs to know of a slice's usage.
pub trait UsageView {
    /// Since when the slice has been idle without interruption by `test`, as of its newest sample;
    /// None when it is not idle now or has no samples.
    fn idle_since(&self, slice: &str, test: &IdleTest) -> Option<i64>;
    /// When the slice's newest sample was taken.
    fn latest_ms(&self, slice: &str) -> Option<i64>;
}

/// A live slice and the capacity it holds.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub slice: &'a SliceRecord,
    /// Capacity held, GPUs.
    pub allocated_gpus: f64,
}

/// A warning given and not yet resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warning {
    /// When the tenant was warned, ms.
    pub at_ms: i64,
    /// When the slice will be reclaimed, ms.
    pub deadline_ms: i64,
    /// Start of the idle run the warning is about, ms.
    pub idle_since_ms: i64,
}

/// Warnings and keeps, by slice id. Held in memory by the controller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marks {
    pub warned: BTreeMap<String, Warning>,
    /// Kept until, ms.
    pub kept: BTreeMap<String, i64>,
}

/// Why a warning is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// The slice is in use again.
    Busy,
    /// The tenant kept it.
    Kept,
    /// Its class is exempt (the policy changed).
    Exempt,
    /// It is no longer active (released by its tenant) or reclaim was switched off.
    Gone,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell the tenant the slice will be reclaimed at `deadline_ms`.
    Warn {
        slice: String,
        idle_since_ms: i64,
        deadline_ms: i64,
        /// Why, for people ("idle under 5% for 30m").
        why: String,
    },
    /// Release the slice and record `reason`.
    Reclaim {
        slice: String,
        idle_since_ms: i64,
        reason: String,
    },
    /// Drop a warning.
    Withdraw { slice: String, why: Withdrawn },
    /// Dry run: the slice would be reclaimed at `at_ms` (past or future).
    WouldReclaim {
        slice: String,
        idle_since_ms: i64,
        at_ms: i64,
    },
    /// A keep ran out or its slice is gone: forget it.
    ForgetKeep { slice: String },
}

/// "30m", "2h", "1h30m", "45s".
pub fn human_duration(ms: i64) -> String {
    let s = ms / 1000;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m, sec) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Decides, for every live slice, whether to warn, reclaim, or withdraw a warning.
pub fn decide(
    candidates: &[Candidate<'_>],
    usage: &dyn UsageView,
    policy: &IdlePolicy,
    marks: &Marks,
    now_ms: i64,
) -> Vec<Action> {
    let mut out = Vec::new();
    let active: BTreeMap<&str, &Candidate<'_>> = candidates
        .iter()
        .filter(|c| c.slice.state == SliceState::Active)
        .map(|c| (c.slice.id.as_str(), c))
        .collect();
    for (id, until) in &marks.kept {
        if *until <= now_ms || !active.contains_key(id.as_str()) {
            out.push(Action::ForgetKeep { slice: id.clone() });
        }
    }
    for id in marks.warned.keys() {
        if !policy.enabled || policy.dry_run || !active.contains_key(id.as_str()) {
            out.push(Action::Withdraw {
                slice: id.clone(),
                why: Withdrawn::Gone,
            });
        }
    }
    if !policy.enabled {
        return out;
    }
    for (id, c) in active {
        let s = c.slice;
        let rule = policy.resolve(&s.tenant, s.spec.slice_class.as_deref());
        let warned = marks.warned.get(id);
        let withdraw = |why| Action::Withdraw {
            slice: id.to_string(),
            why,
        };
        if rule.exempt {
            if warned.is_some() {
                out.push(withdraw(Withdrawn::Exempt));
            }
            continue;
        }
        if marks.kept.get(id).is_some_and(|u| *u > now_ms) {
            if warned.is_some() {
                out.push(withdraw(Withdrawn::Kept));
            }
            continue;
        }
        let fresh = usage
            .latest_ms(id)
            .is_some_and(|t| now_ms - t <= MAX_GAP_MS);
        if !fresh {
            // No recent data (agent away): neither warn nor reclaim; a warning stands until data says.
            continue;
        }
        // Idleness counts only from when the slice was created.
        let since = usage
            .idle_since(id, &rule.test(c.allocated_gpus))
            .map(|t| t.max(s.created_ms));
        let idle_long_enough = since.is_some_and(|t| now_ms - t >= rule.window_ms);
        let why = format!(
            "idle under {}% of its capacity for {}",
            rule.threshold_pct,
            human_duration(rule.window_ms)
        );
        if policy.dry_run {
            if let (true, Some(t)) = (idle_long_enough, since) {
                out.push(Action::WouldReclaim {
                    slice: id.to_string(),
                    idle_since_ms: t,
                    at_ms: t + rule.window_ms + rule.grace_ms,
                });
            }
            continue;
        }
        match (warned, since) {
            (Some(w), Some(t)) if t <= w.idle_since_ms || idle_long_enough => {
                if t > w.idle_since_ms {
                    // Busy in between, idle long enough again: a fresh warning.
                    out.push(withdraw(Withdrawn::Busy));
                    out.push(Action::Warn {
                        slice: id.to_string(),
                        idle_since_ms: t,
                        deadline_ms: now_ms + rule.grace_ms,
                        why,
                    });
                } else if now_ms >= w.deadline_ms {
                    out.push(Action::Reclaim {
                        slice: id.to_string(),
                        idle_since_ms: t,
                        reason: format!(
                            "{}: {why} (idle since {t} ms, warned at {} ms)",
                            crate::telemetry::accounting::RECLAIM_REASON_PREFIX,
                            w.at_ms
                        ),
                    });
                }
            }
            (Some(_), _) => out.push(withdraw(Withdrawn::Busy)),
            (None, Some(t)) if idle_long_enough => out.push(Action::Warn {
                slice: id.to_string(),
                idle_since_ms: t,
                deadline_ms: now_ms + rule.grace_ms,
                why,
            }),
            (None, _) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenslice_core::slice::{SliceKind, SliceSpec};
    use std::collections::HashMap;

    const MIN: i64 = 60_000;

    /// Usage as (idle since, latest) per slice.
    struct Fake(HashMap<String, (Option<i64>, i64)>);

    impl UsageView for Fake {
        fn idle_since(&self, slice: &str, _: &IdleTest) -> Option<i64> {
            self.0.get(slice).and_then(|u| u.0)
        }
        fn latest_ms(&self, slice: &str) -> Option<i64> {
            self.0.get(slice).map(|u| u.1)
        }
    }

    fn rec(id: &str, class: Option<&str>) -> SliceRecord {
        SliceRecord {
            id: id.into(),
            tenant: "t".into(),
            spec: SliceSpec {
                kind: SliceKind::Whole { count: 1 },
                gpu_model: None,
                slice_class: class.map(str::to_string),
            },
            state: SliceState::Active,
            node: "n".into(),
            gpus: vec!["g".into()],
            mig: None,
            env: Default::default(),
            reason: String::new(),
            idempotency_key: None,
            created_ms: 0,
            updated_ms: 0,
            kept_until_ms: None,
            claim: None,
            host: Default::default(),
        }
    }

    fn run(
        r: &SliceRecord,
        idle_since: Option<i64>,
        now: i64,
        policy: &IdlePolicy,
        marks: &Marks,
    ) -> Vec<Action> {
        let usage = Fake(HashMap::from([(r.id.clone(), (idle_since, now))]));
        let c = [Candidate {
            slice: r,
            allocated_gpus: 1.0,
        }];
        decide(&c, &usage, policy, marks, now)
    }

    fn warned(idle_since: i64, at: i64, deadline: i64) -> Marks {
        Marks {
            warned: BTreeMap::from([(
                "s".to_string(),
                Warning {
                    at_ms: at,
                    deadline_ms: deadline,
                    idle_since_ms: idle_since,
                },
            )]),
            kept: BTreeMap::new(),
        }
    }

    #[test]
    fn warns_after_the_window_then_reclaims_after_the_grace_period() {
        let p = IdlePolicy::default();
        let s = rec("s", None);
        assert!(run(&s, Some(0), 29 * MIN, &p, &Marks::default()).is_empty());
        let a = run(&s, Some(0), 30 * MIN, &p, &Marks::default());
        assert!(
            matches!(&a[..], [Action::Warn { deadline_ms, .. }] if *deadline_ms == 40 * MIN),
            "{a:?}"
        );
        let m = warned(0, 30 * MIN, 40 * MIN);
        assert!(run(&s, Some(0), 39 * MIN, &p, &m).is_empty());
        let a = run(&s, Some(0), 40 * MIN, &p, &m);
        assert!(
            matches!(&a[..], [Action::Reclaim { reason, .. }] if reason.starts_with("reclaimed: idle under 5%")),
            "{a:?}"
        );
    }

    #[test]
    fn never_acts_on_a_busy_slice() {
        let p = IdlePolicy::default();
        let s = rec("s", None);
        for now in (0..100).map(|i| i * 10 * MIN) {
            assert!(run(&s, None, now, &p, &Marks::default()).is_empty());
        }
    }

    #[test]
    fn withdraws_the_warning_of_a_slice_busy_again() {
        let p = IdlePolicy::default();
        let a = run(
            &rec("s", None),
            None,
            35 * MIN,
            &p,
            &warned(0, 30 * MIN, 40 * MIN),
        );
        assert_eq!(
            a,
            vec![Action::Withdraw {
                slice: "s".into(),
                why: Withdrawn::Busy
            }]
        );
        // Busy for a moment, idle again but not for a whole window: withdrawn too.
        let a = run(
            &rec("s", None),
            Some(36 * MIN),
            41 * MIN,
            &p,
            &warned(0, 30 * MIN, 40 * MIN),
        );
        assert!(matches!(
            &a[..],
            [Action::Withdraw {
                why: Withdrawn::Busy,
                ..
            }]
        ));
    }

    #[test]
    fn a_kept_slice_is_not_warned_or_reclaimed_until_the_keep_ends() {
        let p = IdlePolicy::default();
        let mut m = warned(0, 30 * MIN, 40 * MIN);
        m.kept.insert("s".into(), 160 * MIN);
        let a = run(&rec("s", None), Some(0), 41 * MIN, &p, &m);
        assert!(matches!(
            &a[..],
            [Action::Withdraw {
                why: Withdrawn::Kept,
                ..
            }]
        ));
        m.warned.clear();
        assert!(run(&rec("s", None), Some(0), 159 * MIN, &p, &m).is_empty());
        // The keep ran out: forgotten, and the slice is warned afresh with a full grace period.
        let a = run(&rec("s", None), Some(0), 160 * MIN, &p, &m);
        assert!(matches!(&a[0], Action::ForgetKeep { .. }));
        assert!(matches!(&a[1], Action::Warn { deadline_ms, .. } if *deadline_ms == 170 * MIN));
    }

    #[test]
    fn an_exempt_class_is_never_reclaimed() {
        let p = IdlePolicy::default();
        let s = rec("s", Some("serving"));
        for now in (0..100).map(|i| i * 10 * MIN) {
            assert!(run(&s, Some(0), now, &p, &Marks::default()).is_empty());
        }
    }

    #[test]
    fn dry_run_only_reports() {
        let p = IdlePolicy {
            dry_run: true,
            ..Default::default()
        };
        let a = run(&rec("s", None), Some(0), 45 * MIN, &p, &Marks::default());
        assert_eq!(
            a,
            vec![Action::WouldReclaim {
                slice: "s".into(),
                idle_since_ms: 0,
                at_ms: 40 * MIN
            }]
        );
    }

    #[test]
    fn stale_data_neither_warns_nor_reclaims() {
        let p = IdlePolicy::default();
        let s = rec("s", None);
        let usage = Fake(HashMap::from([("s".to_string(), (Some(0), 40 * MIN))]));
        let c = [Candidate {
            slice: &s,
            allocated_gpus: 1.0,
        }];
        let m = warned(0, 30 * MIN, 40 * MIN);
        assert!(decide(&c, &usage, &p, &m, 50 * MIN).is_empty());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(30 * MIN), "30m");
        assert_eq!(human_duration(120 * MIN), "2h");
        assert_eq!(human_duration(90 * MIN), "1h30m");
        assert_eq!(human_duration(45_000), "45s");
    }
}
