//! The measured energy of one GPU over one interval, from raw driver readings.
//!
//! The driver's total energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver
//! was loaded) is the measurement: energy = last reading - first reading. Cut intervals at counter
//! readings (the reading that ends one interval starts the next), so each mJ is counted once.
//!
//! When the counter cannot be trusted for the interval, the energy is estimated by integrating board
//! power samples (`nvmlDeviceGetPowerUsage`, mW) with the trapezoid rule, and the interval is flagged
//! [`Quality::Estimated`] with the reason. The counter cannot be trusted when:
//! - a reading is unsupported (`None`: pre-Volta GPUs),
//! - there is no reading exactly at the interval's start or end,
//! - it decreases (a driver reload or GPU reset restarts it from 0),
//! - two consecutive readings are further apart than [`MeasureConfig::max_counter_gap_ms`] (a
//!   reset could hide in the gap: the agent was down or missed samples).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Interval;

/// One reading of the driver's total energy counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReading {
    /// When it was read, Unix time in ms.
    pub at_ms: u64,
    /// Energy in mJ since the driver was loaded; `None` when the GPU does not support the counter.
    pub total_mj: Option<u64>,
}

/// One board power sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerSample {
    /// When it was taken, Unix time in ms.
    pub at_ms: u64,
    /// Board power in mW.
    pub power_mw: u64,
}

/// Tuning of [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureConfig {
    /// Longest time in ms between two consecutive counter readings before the counter delta is
    /// distrusted (a driver reload could hide in the gap). Pass every counter reading taken during
    /// the interval, not only the two at its ends.
    pub max_counter_gap_ms: u64,
}

impl Default for MeasureConfig {
    /// 15 s: several missed samples of an agent sampling every second or few seconds.
    fn default() -> Self {
        MeasureConfig {
            max_counter_gap_ms: 15_000,
        }
    }
}

/// Why an interval's energy is an estimate from power samples rather than a counter delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum EstimateReason {
    /// The GPU does not support the energy counter.
    CounterUnsupported,
    /// No counter reading exactly at this boundary of the interval (Unix time in ms).
    MissingBoundaryReading { boundary_ms: u64 },
    /// The counter went down between two readings: the driver was reloaded or the GPU reset.
    CounterDecreased {
        /// Time of the lower reading, Unix ms.
        at_ms: u64,
        /// Previous reading in mJ.
        before_mj: u64,
        /// Lower reading in mJ.
        after_mj: u64,
    },
    /// Two consecutive counter readings further apart than allowed (Unix times in ms).
    CounterGap { from_ms: u64, to_ms: u64 },
}

/// Whether an interval's energy was measured or estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "quality", rename_all = "snake_case")]
pub enum Quality {
    /// Delta of the driver's energy counter.
    Measured,
    /// Trapezoid integral of power samples; `reason` says why the counter was not used.
    Estimated { reason: EstimateReason },
}

impl Quality {
    /// Whether the energy is an estimate.
    pub fn is_estimated(&self) -> bool {
        matches!(self, Quality::Estimated { .. })
    }
}

/// The energy of one GPU over one interval, with what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// The interval measured.
    pub interval: Interval,
    /// Energy in mJ.
    pub energy_mj: u64,
    /// Counter delta or estimate, and why.
    pub quality: Quality,
    /// The raw counter readings inside the interval, sorted by time, kept for audit.
    pub counter_readings: Vec<CounterReading>,
    /// Power samples used for an estimate (0 for a counter delta).
    pub power_samples_used: usize,
}

/// Why an interval's energy could not be measured at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MeasureError {
    #[error("interval [{start_ms}, {end_ms}) ms is empty")]
    EmptyInterval { start_ms: u64, end_ms: u64 },
    #[error("no usable energy counter ({reason:?}) and no power samples to estimate from")]
    NoPowerSamples { reason: EstimateReason },
    #[error("power samples too large to integrate over [{start_ms}, {end_ms}) ms")]
    Overflow { start_ms: u64, end_ms: u64 },
}

/// Measures the energy of one GPU over `interval`.
///
/// `counter` holds the energy counter readings taken during the interval (readings outside it are
/// ignored; order does not matter); `power` holds power samples around it (a sample before the
/// start and one after the end give the best estimate at the edges; without them the nearest sample
/// is held constant). Power samples are only used when the counter cannot be trusted.
pub fn measure(
    interval: Interval,
    counter: &[CounterReading],
    power: &[PowerSample],
    config: &MeasureConfig,
) -> Result<Measurement, MeasureError> {
    if interval.end_ms <= interval.start_ms {
        return Err(MeasureError::EmptyInterval {
            start_ms: interval.start_ms,
            end_ms: interval.end_ms,
        });
    }
    let mut readings: Vec<CounterReading> = counter
        .iter()
        .copied()
        .filter(|r| r.at_ms >= interval.start_ms && r.at_ms <= interval.end_ms)
        .collect();
    readings.sort_by_key(|r| r.at_ms);

    match counter_delta(interval, &readings, config) {
        Ok(energy_mj) => Ok(Measurement {
            interval,
            energy_mj,
            quality: Quality::Measured,
            counter_readings: readings,
            power_samples_used: 0,
        }),
        Err(reason) => {
            if power.is_empty() {
                return Err(MeasureError::NoPowerSamples { reason });
            }
            let energy_mj = integrate_power_mj(interval, power).ok_or(MeasureError::Overflow {
                start_ms: interval.start_ms,
                end_ms: interval.end_ms,
            })?;
            Ok(Measurement {
                interval,
                energy_mj,
                quality: Quality::Estimated { reason },
                counter_readings: readings,
                power_samples_used: power.len(),
            })
        }
    }
}

/// The counter delta over the interval, or why it cannot be trusted. `readings` are sorted.
fn counter_delta(
    interval: Interval,
    readings: &[CounterReading],
    config: &MeasureConfig,
) -> Result<u64, EstimateReason> {
    if readings.iter().any(|r| r.total_mj.is_none()) {
        return Err(EstimateReason::CounterUnsupported);
    }
    let values: Vec<(u64, u64)> = readings
        .iter()
        .filter_map(|r| r.total_mj.map(|v| (r.at_ms, v)))
        .collect();
    let (Some(&(first_at, first)), Some(&(last_at, last))) = (values.first(), values.last()) else {
        return Err(EstimateReason::MissingBoundaryReading {
            boundary_ms: interval.start_ms,
        });
    };
    if first_at != interval.start_ms {
        return Err(EstimateReason::MissingBoundaryReading {
            boundary_ms: interval.start_ms,
        });
    }
    if last_at != interval.end_ms {
        return Err(EstimateReason::MissingBoundaryReading {
            boundary_ms: interval.end_ms,
        });
    }
    for pair in values.windows(2) {
        let ((_, before), (at_ms, after)) = (pair[0], pair[1]);
        if after < before {
            return Err(EstimateReason::CounterDecreased {
                at_ms,
                before_mj: before,
                after_mj: after,
            });
        }
    }
    for pair in values.windows(2) {
        let ((from_ms, _), (to_ms, _)) = (pair[0], pair[1]);
        if to_ms - from_ms > config.max_counter_gap_ms {
            return Err(EstimateReason::CounterGap { from_ms, to_ms });
        }
    }
    // Non-decreasing was checked, so this cannot underflow.
    Ok(last - first)
}

/// Trapezoid integral of power over the interval, in mJ rounded half up; `None` on overflow.
///
/// Power between samples is linear; before the first sample and after the last it is held at that
/// sample's value. Exact integer arithmetic: mW x ms = µJ, accumulated in nJ (each segment's nJ is
/// rounded down, so the sum is low by less than 1 nJ per segment).
fn integrate_power_mj(interval: Interval, power: &[PowerSample]) -> Option<u64> {
    let mut samples: Vec<PowerSample> = power.to_vec();
    samples.sort_by_key(|s| s.at_ms);
    let (a, b) = (interval.start_ms, interval.end_ms);
    let (first, last) = (*samples.first()?, *samples.last()?);
    let mut points: Vec<(u64, u64)> = Vec::with_capacity(samples.len() + 2);
    if first.at_ms > a {
        points.push((a, first.power_mw));
    }
    points.extend(samples.iter().map(|s| (s.at_ms, s.power_mw)));
    if last.at_ms < b {
        points.push((b, last.power_mw));
    }

    let mut total_nj: u128 = 0;
    for pair in points.windows(2) {
        let ((t0, p0), (t1, p1)) = (pair[0], pair[1]);
        let lo = t0.max(a);
        let hi = t1.min(b);
        if t1 <= t0 || hi <= lo {
            continue;
        }
        let (t0, t1, lo, hi) = (
            u128::from(t0),
            u128::from(t1),
            u128::from(lo),
            u128::from(hi),
        );
        // Area of the linear segment over [lo, hi], times 2 (t1 - t0):
        // (hi - lo) * (p0 (2 t1 - lo - hi) + p1 (lo + hi - 2 t0)).
        let weighted = u128::from(p0)
            .checked_mul(2 * t1 - lo - hi)?
            .checked_add(u128::from(p1).checked_mul(lo + hi - 2 * t0)?)?;
        let twice_area_uj = (hi - lo).checked_mul(weighted)?;
        let nj = twice_area_uj.checked_mul(1000)? / (2 * (t1 - t0));
        total_nj = total_nj.checked_add(nj)?;
    }
    u64::try_from((total_nj + 500_000) / 1_000_000).ok()
}

/// Idle power in mW calibrated from board power samples (mW) taken while the GPU ran no compute
/// process: their median (the lower one of an even count), robust to the odd spike. `None` when
/// there are no samples.
pub fn calibrate_idle_power_mw(idle_samples_mw: &[u64]) -> Option<u64> {
    if idle_samples_mw.is_empty() {
        return None;
    }
    let mut sorted = idle_samples_mw.to_vec();
    sorted.sort_unstable();
    Some(sorted[(sorted.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn iv(start_ms: u64, end_ms: u64) -> Interval {
        Interval { start_ms, end_ms }
    }

    fn reading(at_ms: u64, total_mj: u64) -> CounterReading {
        CounterReading {
            at_ms,
            total_mj: Some(total_mj),
        }
    }

    fn sample(at_ms: u64, power_mw: u64) -> PowerSample {
        PowerSample { at_ms, power_mw }
    }

    #[test]
    fn uses_the_counter_delta_when_readings_are_clean() {
        let readings = [
            reading(0, 1_000),
            reading(5_000, 2_000),
            reading(10_000, 4_500),
        ];
        let m = measure(
            iv(0, 10_000),
            &readings,
            &[sample(0, 1)],
            &MeasureConfig::default(),
        )
        .expect("measurable");
        assert_eq!(m.energy_mj, 3_500);
        assert_eq!(m.quality, Quality::Measured);
        assert_eq!(m.counter_readings, readings.to_vec());
        assert_eq!(m.power_samples_used, 0);
    }

    #[test]
    fn ignores_readings_outside_the_interval_and_their_order() {
        let readings = [
            reading(10_000, 4_500),
            reading(20_000, 9_000),
            reading(0, 1_000),
        ];
        let m =
            measure(iv(0, 10_000), &readings, &[], &MeasureConfig::default()).expect("measurable");
        assert_eq!(m.energy_mj, 3_500);
        assert_eq!(
            m.counter_readings,
            vec![reading(0, 1_000), reading(10_000, 4_500)]
        );
    }

    #[test]
    fn estimates_from_power_when_the_counter_is_unsupported() {
        let readings = [
            CounterReading {
                at_ms: 0,
                total_mj: None,
            },
            CounterReading {
                at_ms: 10_000,
                total_mj: None,
            },
        ];
        // Constant 100 W for 10 s = 1000 J.
        let power = [sample(0, 100_000), sample(10_000, 100_000)];
        let m = measure(iv(0, 10_000), &readings, &power, &MeasureConfig::default())
            .expect("estimable");
        assert_eq!(m.energy_mj, 1_000_000);
        assert_eq!(
            m.quality,
            Quality::Estimated {
                reason: EstimateReason::CounterUnsupported
            }
        );
        assert_eq!(m.power_samples_used, 2);
    }

    #[test]
    fn estimates_and_flags_a_counter_reset() {
        let readings = [reading(0, 9_000_000), reading(10_000, 40)];
        let power = [sample(0, 100_000), sample(10_000, 300_000)];
        let m = measure(iv(0, 10_000), &readings, &power, &MeasureConfig::default())
            .expect("estimable");
        // Trapezoid: 10 s x (100 W + 300 W) / 2 = 2000 J.
        assert_eq!(m.energy_mj, 2_000_000);
        assert_eq!(
            m.quality,
            Quality::Estimated {
                reason: EstimateReason::CounterDecreased {
                    at_ms: 10_000,
                    before_mj: 9_000_000,
                    after_mj: 40
                }
            }
        );
        // The raw readings stay for audit.
        assert_eq!(m.counter_readings, readings.to_vec());
    }

    #[test]
    fn estimates_and_flags_a_gap_between_counter_readings() {
        let readings = [reading(0, 0), reading(60_000, 6_000_000)];
        let power = [sample(0, 100_000)];
        let m = measure(iv(0, 60_000), &readings, &power, &MeasureConfig::default())
            .expect("estimable");
        assert_eq!(
            m.quality,
            Quality::Estimated {
                reason: EstimateReason::CounterGap {
                    from_ms: 0,
                    to_ms: 60_000
                }
            }
        );
        assert_eq!(m.energy_mj, 6_000_000);
    }

    #[test]
    fn estimates_when_no_reading_falls_on_a_boundary() {
        let readings = [reading(0, 0), reading(9_000, 900)];
        let m = measure(
            iv(0, 10_000),
            &readings,
            &[sample(500, 100_000)],
            &MeasureConfig::default(),
        )
        .expect("estimable");
        assert_eq!(
            m.quality,
            Quality::Estimated {
                reason: EstimateReason::MissingBoundaryReading {
                    boundary_ms: 10_000
                }
            }
        );
    }

    #[test]
    fn interpolates_power_at_the_interval_edges() {
        // 0 W at t=0 rising to 200 W at t=20 s: over [5 s, 15 s] power goes 50 W -> 150 W, 1000 J.
        let power = [sample(0, 0), sample(20_000, 200_000)];
        let m =
            measure(iv(5_000, 15_000), &[], &power, &MeasureConfig::default()).expect("estimable");
        assert_eq!(m.energy_mj, 1_000_000);
    }

    #[test]
    fn holds_the_nearest_power_sample_beyond_the_samples() {
        let power = [sample(4_000, 50_000), sample(6_000, 50_000)];
        let m = measure(iv(0, 10_000), &[], &power, &MeasureConfig::default()).expect("estimable");
        assert_eq!(m.energy_mj, 500_000);
    }

    #[test]
    fn fails_with_a_typed_error_when_nothing_can_measure_the_interval() {
        let err = measure(iv(0, 10_000), &[], &[], &MeasureConfig::default()).unwrap_err();
        assert!(matches!(err, MeasureError::NoPowerSamples { .. }));
        let err = measure(iv(5, 5), &[], &[], &MeasureConfig::default()).unwrap_err();
        assert!(matches!(err, MeasureError::EmptyInterval { .. }));
    }

    #[test]
    fn reports_overflow_instead_of_wrapping() {
        let power = [sample(0, u64::MAX), sample(u64::MAX, u64::MAX)];
        let err = measure(iv(0, u64::MAX), &[], &power, &MeasureConfig::default()).unwrap_err();
        assert!(matches!(err, MeasureError::Overflow { .. }));
    }

    #[test]
    fn calibrates_idle_power_as_the_median() {
        assert_eq!(calibrate_idle_power_mw(&[]), None);
        assert_eq!(
            calibrate_idle_power_mw(&[61_000, 60_000, 250_000, 59_000]),
            Some(60_000)
        );
    }

    proptest! {
        /// Random counter streams with resets, gaps and unsupported readings: the result is a
        /// counter delta exactly when the stream is clean, otherwise a flagged estimate.
        #[test]
        fn measures_clean_counters_exactly_and_flags_everything_else(
            steps in prop::collection::vec((1u64..20_000, 0u64..5_000_000, 0u8..20), 1..20),
            power_mw in 1u64..1_000_000,
        ) {
            let mut readings = Vec::new();
            let (mut t, mut total) = (1_000u64, 1_000_000u64);
            readings.push(reading(t, total));
            let mut clean = true;
            for &(dt, de, event) in &steps {
                t += dt;
                if dt > 15_000 { clean = false; }
                match event {
                    0 => { total = de / 1000; clean = false; } // driver reload
                    1 => { readings.push(CounterReading { at_ms: t, total_mj: None }); clean = false; continue; }
                    _ => total += de,
                }
                readings.push(reading(t, total));
            }
            let interval = iv(1_000, t);
            let power = [sample(0, power_mw), sample(t + 1, power_mw)];
            let m = measure(interval, &readings, &power, &MeasureConfig::default()).expect("estimable");
            // A reload restarts the counter below its last value here, so it is always seen.
            prop_assert_eq!(m.quality.is_estimated(), !clean);
            if clean {
                prop_assert_eq!(m.energy_mj, total - 1_000_000);
            }
            if m.quality.is_estimated() {
                // Constant power: the estimate is power x time, to the mJ.
                let exact = u128::from(power_mw) * u128::from(t - 1_000);
                prop_assert_eq!(u128::from(m.energy_mj), (exact + 500) / 1000);
            }
        }
    }
}
