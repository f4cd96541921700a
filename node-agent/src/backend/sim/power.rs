//! The simulated board's power model and its energy counter.
//!
//! Power rises linearly from the model's idle figure to its maximum with board activity; a CUDA
//! context alone (a process that holds the GPU without running kernels) keeps the clocks up and
//! costs [`CONTEXT_FRACTION`] of the range. The [`EnergyMeter`] integrates that power exactly (it is
//! piecewise constant between simulator steps) and reports power as the average over the last
//! second, as Hopper and Ampere boards do, so power samples and the energy counter agree.

use std::collections::VecDeque;

use greenslice_core::gpu::GpuModel;

/// Share of the idle-to-max range a GPU draws with a context open but no kernels running.
pub const CONTEXT_FRACTION: f64 = 0.05;

/// Window of the power average, ms (NVML: 1 s on Ampere except GA100, Hopper and newer).
pub const POWER_WINDOW_MS: i64 = 1_000;

/// Board power in W of `model` at board activity `activity` (0..=1 of its SMs busy), with
/// `context` true when any process holds a context on it.
pub fn board_power_w(model: &GpuModel, activity: f64, context: bool) -> f64 {
    let (idle, max) = model.power_w();
    let floor = if context {
        idle + CONTEXT_FRACTION * (max - idle)
    } else {
        idle
    };
    floor + (max - floor) * activity.clamp(0.0, 1.0)
}

/// A board's energy counter.
#[derive(Debug, Clone)]
pub struct EnergyMeter {
    /// Energy since the (simulated) driver loaded, mJ.
    energy_mj: f64,
    /// Time the counter was last advanced to, ms.
    last_ms: i64,
    /// (time ms, energy mJ) points covering at least the last [`POWER_WINDOW_MS`].
    window: VecDeque<(i64, f64)>,
}

impl EnergyMeter {
    /// A counter at zero at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        EnergyMeter {
            energy_mj: 0.0,
            last_ms: start_ms,
            window: VecDeque::from([(start_ms, 0.0)]),
        }
    }

    /// Energy since the driver loaded, mJ.
    pub fn energy_mj(&self) -> f64 {
        self.energy_mj
    }

    /// Time the counter was last advanced to, ms.
    pub fn last_ms(&self) -> i64 {
        self.last_ms
    }

    /// Adds a constant `power_w` from the last point to `to_ms` (W × ms = mJ). Ignores time going
    /// backwards.
    pub fn accumulate(&mut self, to_ms: i64, power_w: f64) {
        if to_ms <= self.last_ms {
            return;
        }
        self.energy_mj += power_w.max(0.0) * (to_ms - self.last_ms) as f64;
        self.last_ms = to_ms;
        self.window.push_back((to_ms, self.energy_mj));
        // Keep exactly one point at or before the window's start.
        let start = to_ms - POWER_WINDOW_MS;
        while self.window.len() > 2 && self.window[1].0 <= start {
            self.window.pop_front();
        }
    }

    /// Average power over the last second (or over what there is since the counter started), W;
    /// `None` before any time has passed.
    pub fn average_power_w(&self) -> Option<f64> {
        let &(t0, e0) = self.window.front()?;
        let start = self.last_ms - POWER_WINDOW_MS;
        let (ts, es) = if t0 < start {
            // Interpolate inside the first segment: power is constant there.
            let &(t1, e1) = self.window.get(1)?;
            let f = (start - t0) as f64 / (t1 - t0) as f64;
            (start, e0 + (e1 - e0) * f)
        } else {
            (t0, e0)
        };
        (self.last_ms > ts).then(|| (self.energy_mj - es) / (self.last_ms - ts) as f64)
    }

    /// A driver reload: the counter restarts from zero.
    pub fn reset(&mut self) {
        self.energy_mj = 0.0;
        self.window.clear();
        self.window.push_back((self.last_ms, 0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_spans_idle_to_max() {
        let m = GpuModel::H100Sxm5_80Gb;
        assert_eq!(board_power_w(&m, 0.0, false), 70.0);
        assert_eq!(board_power_w(&m, 1.0, true), 700.0);
        assert!(board_power_w(&m, 0.0, true) > 70.0);
        assert!(board_power_w(&m, 0.5, true) < board_power_w(&m, 0.6, true));
        assert_eq!(board_power_w(&GpuModel::A100Sxm4_40Gb, 1.0, false), 400.0);
    }

    #[test]
    fn average_power_is_the_last_second_of_energy() {
        let mut m = EnergyMeter::new(0);
        assert_eq!(m.average_power_w(), None);
        m.accumulate(10_000, 100.0);
        assert_eq!(m.energy_mj(), 1_000_000.0);
        assert_eq!(m.average_power_w(), Some(100.0));
        m.accumulate(10_500, 300.0);
        // Half a second at 100 W and half at 300 W.
        assert!((m.average_power_w().unwrap() - 200.0).abs() < 1e-9);
        m.accumulate(11_500, 300.0);
        assert!((m.average_power_w().unwrap() - 300.0).abs() < 1e-9);
    }

    #[test]
    fn reset_restarts_from_zero() {
        let mut m = EnergyMeter::new(0);
        m.accumulate(5_000, 50.0);
        m.reset();
        assert_eq!(m.energy_mj(), 0.0);
        m.accumulate(5_200, 50.0);
        assert!((m.energy_mj() - 10_000.0).abs() < 1e-9);
        assert!((m.average_power_w().unwrap() - 50.0).abs() < 1e-9);
    }
}
