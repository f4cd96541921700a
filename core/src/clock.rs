//! Time, injected: real time in production, a manual clock in tests and replays.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time in ms since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: deterministic tests and faster-than-real-time replays.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start_ms)))
    }
    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Real time sped up by a factor from a starting point: a demo's hours pass in seconds while every
/// component still reads one consistent clock.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    origin: std::time::Instant,
    origin_ms: i64,
    factor: f64,
}

impl ScaledClock {
    /// Starts at `origin_ms`, running `factor` times faster than real time (factor > 0).
    pub fn new(origin_ms: i64, factor: f64) -> Self {
        ScaledClock {
            origin: std::time::Instant::now(),
            origin_ms,
            factor: if factor.is_finite() && factor > 0.0 {
                factor
            } else {
                1.0
            },
        }
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> i64 {
        self.origin_ms + (self.origin.elapsed().as_secs_f64() * 1000.0 * self.factor) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster_and_never_backwards() {
        let c = ScaledClock::new(1_000, 1000.0);
        let a = c.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = c.now_ms();
        assert!(a >= 1_000 && b - a >= 20_000, "{a} {b}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_ms(), 5);
        c.advance(10);
        assert_eq!(c.now_ms(), 15);
    }
}
