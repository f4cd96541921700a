//! What a simulated slice's job does over time.
//!
//! A [`Workload`] is a pure function of the time since it was set (and, for bursts, of a seed), so
//! replays are deterministic; it is constant between the changes [`Workload::next_change_ms`]
//! names, so the energy integral is exact.

use serde::{Deserialize, Serialize};

/// The utilization pattern of the job running in one slice. Utilizations are fractions in 0..=1 of
/// the slice's own compute (a 3g instance at 1.0 keeps its 3 slices busy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// A process holds the slice (and its memory) but runs no kernels.
    Idle,
    /// Steady work at `util`.
    Busy { util: f64 },
    /// In each window of `burst_ms`, work at `peak` with probability `duty`, else idle. Windows are
    /// drawn from the simulator's seed and the slice id, so a replay repeats them exactly.
    Bursty { peak: f64, duty: f64, burst_ms: i64 },
    /// Busy at `util` for `busy_ms`, then idle for `idle_ms`, repeating from when it was set.
    IdleStretches {
        util: f64,
        busy_ms: i64,
        idle_ms: i64,
    },
    /// The job ended but the slice is still allocated: no process, no work.
    Finished,
}

impl Default for Workload {
    /// A new slice's job works steadily at 80%.
    fn default() -> Self {
        Workload::Busy { util: 0.8 }
    }
}

fn check_fraction(name: &str, v: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} must be within 0..=1, got {v}"))
    }
}

fn check_period(name: &str, v: i64) -> Result<(), String> {
    if v > 0 {
        Ok(())
    } else {
        Err(format!("{name} must be a positive number of ms, got {v}"))
    }
}

/// A 64-bit mix (splitmix64 finaliser): a well-spread hash of `x`.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Workload {
    /// Checks the parameters; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Workload::Idle | Workload::Finished => Ok(()),
            Workload::Busy { util } => check_fraction("util", util),
            Workload::Bursty {
                peak,
                duty,
                burst_ms,
            } => {
                check_fraction("peak", peak)?;
                check_fraction("duty", duty)?;
                check_period("burst_ms", burst_ms)
            }
            Workload::IdleStretches {
                util,
                busy_ms,
                idle_ms,
            } => {
                check_fraction("util", util)?;
                check_period("busy_ms", busy_ms)?;
                check_period("idle_ms", idle_ms)
            }
        }
    }

    /// Whether a process exists (everything but [`Workload::Finished`]).
    pub fn has_process(&self) -> bool {
        !matches!(self, Workload::Finished)
    }

    /// When, after `elapsed_ms`, the utilization may next change (ms since the workload was set);
    /// `None` while it is constant for ever. Between two changes it is constant, so the energy of
    /// the interval is exact in one step.
    pub fn next_change_ms(&self, elapsed_ms: i64) -> Option<i64> {
        let elapsed_ms = elapsed_ms.max(0);
        match *self {
            Workload::Idle | Workload::Busy { .. } | Workload::Finished => None,
            Workload::Bursty { burst_ms, .. } => {
                let w = burst_ms.max(1);
                Some((elapsed_ms / w + 1) * w)
            }
            Workload::IdleStretches {
                busy_ms, idle_ms, ..
            } => {
                let (busy, period) = (busy_ms.max(1), busy_ms.max(1) + idle_ms.max(1));
                let (start, phase) = (elapsed_ms - elapsed_ms % period, elapsed_ms % period);
                Some(if phase < busy {
                    start + busy
                } else {
                    start + period
                })
            }
        }
    }

    /// Utilization (0..=1) at `elapsed_ms` after the workload was set; `key` seeds the bursts.
    pub fn util_at(&self, elapsed_ms: i64, key: u64) -> f64 {
        let elapsed_ms = elapsed_ms.max(0);
        match *self {
            Workload::Idle | Workload::Finished => 0.0,
            Workload::Busy { util } => util,
            Workload::Bursty {
                peak,
                duty,
                burst_ms,
            } => {
                let window = (elapsed_ms / burst_ms.max(1)) as u64;
                let draw = (mix64(key ^ mix64(window)) >> 11) as f64 / (1u64 << 53) as f64;
                if draw < duty { peak } else { 0.0 }
            }
            Workload::IdleStretches {
                util,
                busy_ms,
                idle_ms,
            } => {
                let period = busy_ms.max(1) + idle_ms.max(1);
                if elapsed_ms % period < busy_ms {
                    util
                } else {
                    0.0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_stretches_alternate() {
        let w = Workload::IdleStretches {
            util: 0.9,
            busy_ms: 1_000,
            idle_ms: 3_000,
        };
        assert_eq!(w.util_at(0, 0), 0.9);
        assert_eq!(w.util_at(999, 0), 0.9);
        assert_eq!(w.util_at(1_000, 0), 0.0);
        assert_eq!(w.util_at(3_999, 0), 0.0);
        assert_eq!(w.util_at(4_000, 0), 0.9);
    }

    #[test]
    fn utilization_is_constant_between_changes() {
        let stretches = Workload::IdleStretches {
            util: 0.9,
            busy_ms: 1_000,
            idle_ms: 3_000,
        };
        assert_eq!(stretches.next_change_ms(0), Some(1_000));
        assert_eq!(stretches.next_change_ms(999), Some(1_000));
        assert_eq!(stretches.next_change_ms(1_000), Some(4_000));
        assert_eq!(stretches.next_change_ms(4_500), Some(5_000));
        let bursts = Workload::Bursty {
            peak: 1.0,
            duty: 0.5,
            burst_ms: 250,
        };
        assert_eq!(bursts.next_change_ms(0), Some(250));
        assert_eq!(bursts.next_change_ms(600), Some(750));
        assert_eq!(Workload::Busy { util: 0.5 }.next_change_ms(7), None);
        // Between changes the utilization is that of the segment's start.
        for w in [stretches, bursts] {
            let mut t = 0;
            while t < 20_000 {
                let next = w.next_change_ms(t).unwrap();
                assert!(next > t);
                let u = w.util_at(t, 3);
                assert!((t..next).step_by(50).all(|x| w.util_at(x, 3) == u));
                t = next;
            }
        }
    }

    #[test]
    fn bursts_follow_duty_and_repeat_for_a_key() {
        let w = Workload::Bursty {
            peak: 1.0,
            duty: 0.3,
            burst_ms: 1_000,
        };
        let on = (0..10_000)
            .filter(|i| w.util_at(i * 1_000, 7) > 0.0)
            .count();
        assert!((2_700..3_300).contains(&on), "{on} of 10000 windows on");
        let a: Vec<f64> = (0..100).map(|i| w.util_at(i * 1_000, 7)).collect();
        let b: Vec<f64> = (0..100).map(|i| w.util_at(i * 1_000, 7)).collect();
        let c: Vec<f64> = (0..100).map(|i| w.util_at(i * 1_000, 8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn finished_has_no_process_and_idle_has_one() {
        assert!(!Workload::Finished.has_process());
        assert!(Workload::Idle.has_process());
        assert_eq!(Workload::Idle.util_at(5, 0), 0.0);
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = Workload::Busy { util: 1.5 }.validate().unwrap_err();
        assert!(e.contains("util"), "{e}");
        let e = Workload::Bursty {
            peak: 1.0,
            duty: 0.5,
            burst_ms: 0,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("burst_ms"), "{e}");
    }

    #[test]
    fn workloads_read_from_json() {
        let w: Workload = serde_json::from_str(
            r#"{"kind":"idle_stretches","util":0.5,"busy_ms":10,"idle_ms":20}"#,
        )
        .unwrap();
        assert_eq!(
            w,
            Workload::IdleStretches {
                util: 0.5,
                busy_ms: 10,
                idle_ms: 20
            }
        );
    }
}
