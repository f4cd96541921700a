//! Utilization history of one series (a slice or a GPU) in fixed memory: the most recent raw
//! points, plus 1-minute and 1-hour rollups (min / mean / max) in rings of fixed capacity.
//!
//! Cost per series, fixed and independent of how long it lives (see [`SeriesHistory::BYTES`]):
//! [`RAW_POINTS`] raw points (24 B each), [`MINUTE_ROLLUPS`] 1-minute rollups and [`HOUR_ROLLUPS`]
//! 1-hour rollups (32 B each), 18,520 B (18.1 KiB) in all. Rings are allocated to capacity on first use,
//! so the cost of a series is the same on its first sample and its millionth.

use std::collections::VecDeque;

use greenslice_core::time::HOUR_MS_I64;

/// Raw points kept per series (at 1 Hz: the last 5 minutes).
pub const RAW_POINTS: usize = 300;
/// 1-minute rollups kept per series (the last 3 hours).
pub const MINUTE_ROLLUPS: usize = 180;
/// 1-hour rollups kept per series (the last 7 days).
pub const HOUR_ROLLUPS: usize = 168;

/// One minute, ms.
pub const MINUTE_MS: i64 = 60_000;

/// One raw observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When it was taken, ms since the Unix epoch (agent clock).
    pub at_ms: i64,
    /// Compute activity in percent of one whole GPU, summed over the series' GPUs (a slice holding two
    /// whole GPUs at full load reads 200; a 3g MIG instance at full load reads 42.9).
    pub sm_pct: f32,
    /// Memory-controller activity in percent, where known (board-level; known for whole GPUs only);
    /// negative when unknown.
    pub mem_pct: f32,
    /// Compute processes seen.
    pub processes: u16,
    /// Whether `sm_pct` was measured (false: the device gives no per-slice activity, e.g. A100 MIG).
    pub activity_known: bool,
}

/// Min / mean / max of the points in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    /// Start of the interval, ms since the Unix epoch (aligned to the interval length).
    pub start_ms: i64,
    /// Points folded in.
    pub count: u32,
    /// Compute activity, percent of one GPU (see [`Point::sm_pct`]).
    pub sm_min: f32,
    pub sm_mean: f32,
    pub sm_max: f32,
    /// Highest memory activity, percent; negative when unknown for every point.
    pub mem_max: f32,
    /// Most compute processes seen in one point.
    pub processes_max: u16,
    /// Every point had measured activity.
    pub activity_known: bool,
}

impl Rollup {
    fn of(start_ms: i64, p: &Point) -> Self {
        Rollup {
            start_ms,
            count: 1,
            sm_min: p.sm_pct,
            sm_mean: p.sm_pct,
            sm_max: p.sm_pct,
            mem_max: p.mem_pct,
            processes_max: p.processes,
            activity_known: p.activity_known,
        }
    }

    fn fold(&mut self, o: &Rollup) {
        let n = self.count as f64 + o.count as f64;
        self.sm_mean = ((self.sm_mean as f64 * self.count as f64
            + o.sm_mean as f64 * o.count as f64)
            / n.max(1.0)) as f32;
        self.count = self.count.saturating_add(o.count);
        self.sm_min = self.sm_min.min(o.sm_min);
        self.sm_max = self.sm_max.max(o.sm_max);
        self.mem_max = self.mem_max.max(o.mem_max);
        self.processes_max = self.processes_max.max(o.processes_max);
        self.activity_known &= o.activity_known;
    }

    /// The end of the interval for a rollup of `len_ms`.
    pub fn end_ms(&self, len_ms: i64) -> i64 {
        self.start_ms + len_ms
    }
}

/// A fixed-capacity ring: pushing onto a full ring drops the oldest element.
#[derive(Debug, Clone)]
struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    fn new(cap: usize) -> Self {
        Ring {
            items: VecDeque::with_capacity(cap),
            cap,
        }
    }
    fn push(&mut self, t: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(t);
    }
}

/// A resolution a range query answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Raw points (each reported as a rollup of one point, `len_ms` 0).
    Raw,
    Minute,
    Hour,
}

impl Resolution {
    /// Length of one interval, ms (0 for raw points).
    pub fn len_ms(self) -> i64 {
        match self {
            Resolution::Raw => 0,
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS_I64,
        }
    }
}

/// History of one series.
#[derive(Debug, Clone)]
pub struct SeriesHistory {
    raw: Ring<Point>,
    minutes: Ring<Rollup>,
    hours: Ring<Rollup>,
    /// The minute and hour being filled.
    cur_minute: Option<Rollup>,
    cur_hour: Option<Rollup>,
}

impl Default for SeriesHistory {
    fn default() -> Self {
        SeriesHistory {
            raw: Ring::new(RAW_POINTS),
            minutes: Ring::new(MINUTE_ROLLUPS),
            hours: Ring::new(HOUR_ROLLUPS),
            cur_minute: None,
            cur_hour: None,
        }
    }
}

impl SeriesHistory {
    /// Bytes one series holds, fixed: its struct plus its rings at capacity.
    pub const BYTES: usize = std::mem::size_of::<SeriesHistory>()
        + RAW_POINTS * std::mem::size_of::<Point>()
        + (MINUTE_ROLLUPS + HOUR_ROLLUPS) * std::mem::size_of::<Rollup>();

    /// Adds a point. Points not newer than the last one are ignored (returns false).
    pub fn push(&mut self, p: Point) -> bool {
        if self.raw.items.back().is_some_and(|l| l.at_ms >= p.at_ms) {
            return false;
        }
        self.raw.push(p);
        let m_start = p.at_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        match &mut self.cur_minute {
            Some(m) if m.start_ms == m_start => m.fold(&Rollup::of(m_start, &p)),
            cur => {
                let done = cur.replace(Rollup::of(m_start, &p));
                if let Some(done) = done {
                    self.close_minute(done);
                }
            }
        }
        true
    }

    fn close_minute(&mut self, m: Rollup) {
        self.minutes.push(m);
        let h_start = m.start_ms.div_euclid(HOUR_MS_I64) * HOUR_MS_I64;
        match &mut self.cur_hour {
            Some(h) if h.start_ms == h_start => h.fold(&m),
            cur => {
                if let Some(done) = cur.take() {
                    self.hours.push(done);
                }
                *cur = Some(Rollup {
                    start_ms: h_start,
                    ..m
                });
            }
        }
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&Point> {
        self.raw.items.back()
    }

    /// Every 1-minute rollup kept, the open minute included, oldest first.
    pub fn minutes(&self) -> impl Iterator<Item = &Rollup> {
        self.minutes.items.iter().chain(self.cur_minute.as_ref())
    }

    /// Every 1-hour rollup kept, the open hour included (it lags the open minute), oldest first.
    pub fn hours(&self) -> impl Iterator<Item = &Rollup> {
        self.hours.items.iter().chain(self.cur_hour.as_ref())
    }

    /// Points (or rollups) overlapping `[from_ms, to_ms)`, at the finest resolution that still holds
    /// the start of the range: raw points, then 1-minute, then 1-hour rollups.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> (Resolution, Vec<Rollup>) {
        let covers = |oldest: Option<i64>| oldest.is_some_and(|o| o <= from_ms);
        let raw_oldest = self.raw.items.front().map(|p| p.at_ms);
        let min_oldest = self.minutes().next().map(|r| r.start_ms);
        let (res, rows): (Resolution, Vec<Rollup>) = if covers(raw_oldest) {
            (
                Resolution::Raw,
                self.raw
                    .items
                    .iter()
                    .filter(|p| p.at_ms >= from_ms && p.at_ms < to_ms)
                    .map(|p| Rollup::of(p.at_ms, p))
                    .collect(),
            )
        } else if covers(min_oldest) {
            (
                Resolution::Minute,
                self.minutes()
                    .filter(|r| r.end_ms(MINUTE_MS) > from_ms && r.start_ms < to_ms)
                    .copied()
                    .collect(),
            )
        } else {
            (
                Resolution::Hour,
                self.hours()
                    .filter(|r| r.end_ms(HOUR_MS_I64) > from_ms && r.start_ms < to_ms)
                    .copied()
                    .collect(),
            )
        };
        (res, rows)
    }

    /// Since when the series has been idle without interruption, judged on 1-minute rollups (then
    /// 1-hour rollups for what is older than the minute ring): the start of the oldest interval of an
    /// unbroken run of idle intervals that reaches the newest one. `idle` judges one interval. Gaps
    /// longer than `max_gap_ms` between intervals break the run (no data is not evidence of idleness).
    /// None when the newest interval is not idle or there is no data.
    pub fn idle_since(&self, idle: impl Fn(&Rollup) -> bool, max_gap_ms: i64) -> Option<i64> {
        let mut since: Option<i64> = None;
        let mut next_start: Option<i64> = None;
        let mut oldest_minute = i64::MAX;
        for r in self
            .minutes
            .items
            .iter()
            .chain(self.cur_minute.as_ref())
            .rev()
        {
            if !idle(r) || next_start.is_some_and(|n| n - r.end_ms(MINUTE_MS) > max_gap_ms) {
                return since;
            }
            since = Some(r.start_ms);
            next_start = Some(r.start_ms);
            oldest_minute = r.start_ms;
        }
        // Older than the minute ring: closed hours that end before it.
        for r in self.hours.items.iter().rev() {
            if r.start_ms >= oldest_minute {
                continue;
            }
            if !idle(r) || next_start.is_some_and(|n| n - r.end_ms(HOUR_MS_I64) > max_gap_ms) {
                return since;
            }
            since = Some(r.start_ms);
            next_start = Some(r.start_ms);
        }
        since
    }

    /// Heap and inline bytes this series holds (equal to [`Self::BYTES`] once the rings exist).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.raw.items.capacity() * std::mem::size_of::<Point>()
            + (self.minutes.items.capacity() + self.hours.items.capacity())
                * std::mem::size_of::<Rollup>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at_ms: i64, sm: f32) -> Point {
        Point {
            at_ms,
            sm_pct: sm,
            mem_pct: -1.0,
            processes: 1,
            activity_known: true,
        }
    }

    #[test]
    fn rolls_up_minutes_and_hours_with_min_mean_max() {
        let mut h = SeriesHistory::default();
        // Two hours at 1 Hz: 10% in even minutes, 30% in odd minutes.
        for s in 0..7200 {
            let sm = if (s / 60) % 2 == 0 { 10.0 } else { 30.0 };
            assert!(h.push(p(s * 1000, sm)));
        }
        let mins: Vec<_> = h.minutes().collect();
        assert_eq!(mins.len(), 120);
        assert_eq!(mins[0].count, 60);
        assert_eq!((mins[0].sm_min, mins[0].sm_max), (10.0, 10.0));
        let hours: Vec<_> = h.hours().collect();
        // The first hour is closed; the second is open up to its last closed minute.
        assert_eq!(hours[0].count, 3600);
        assert!((hours[0].sm_mean - 20.0).abs() < 1e-3);
        assert_eq!((hours[0].sm_min, hours[0].sm_max), (10.0, 30.0));
        assert_eq!(h.raw.items.len(), RAW_POINTS);
        assert!(!h.push(p(5, 1.0)), "older points are ignored");
    }

    #[test]
    fn memory_is_fixed_per_series() {
        let mut h = SeriesHistory::default();
        assert_eq!(h.bytes(), SeriesHistory::BYTES);
        for s in 0..(3 * 24 * 3600) {
            h.push(p(s * 1000, 1.0));
        }
        assert_eq!(h.bytes(), SeriesHistory::BYTES);
        const { assert!(SeriesHistory::BYTES <= 19 * 1024) };
    }

    #[test]
    fn range_picks_the_finest_resolution_holding_the_start() {
        let mut h = SeriesHistory::default();
        for s in 0..(4 * 3600) {
            h.push(p(s * 1000, 50.0));
        }
        let now = 4 * HOUR_MS_I64;
        assert_eq!(h.range(now - 60_000, now).0, Resolution::Raw);
        assert_eq!(h.range(now - 60_000, now).1.len(), 60);
        let (r, rows) = h.range(now - 2 * HOUR_MS_I64, now);
        assert_eq!(r, Resolution::Minute);
        assert_eq!(rows.len(), 120);
        assert_eq!(h.range(0, now).0, Resolution::Hour);
    }

    #[test]
    fn idle_run_is_broken_by_activity_and_by_gaps() {
        let mut h = SeriesHistory::default();
        let idle = |r: &Rollup| r.sm_max < 5.0;
        for s in 0..600 {
            h.push(p(s * 1000, 50.0));
        }
        for s in 600..1800 {
            h.push(p(s * 1000, 1.0));
        }
        assert_eq!(h.idle_since(idle, 120_000), Some(600_000));
        // A gap of 10 minutes restarts the run.
        for s in 2400..2500 {
            h.push(p(s * 1000, 1.0));
        }
        assert_eq!(h.idle_since(idle, 120_000), Some(2_400_000));
        h.push(p(2_500_000, 9.0));
        assert_eq!(h.idle_since(idle, 120_000), None);
    }
}
