//! The board's power, process by process: the simulator's ground truth for energy attribution.
//!
//! Each process draws a dynamic power from its own activity vector (SM, DRAM bandwidth, tensor
//! activity) with its workload's coefficients, split into a core part (SMs, tensor cores, L2 and
//! the interaction of compute with memory traffic), which follows the SM clock, and a memory part
//! (HBM and its controllers), which does not. The board draws a floor (idle, or idle plus a
//! context's share while any process holds one) plus every process's dynamic power. When that
//! demand passes the power limit, the SM clock drops to the factor `f` where
//! `floor + f³ x core + memory == limit` (dynamic core power goes with f·V², V roughly with f), so
//! every process's core power falls with it. Nothing here is an attribution rule: it is the
//! hardware, and the attribution code never sees it (it reads NVML's signals only).
//!
//! The coefficients and their sources are in `docs/SIMULATOR.md` ("Power model").

use serde::{Deserialize, Serialize};

/// Lowest SM clock factor the board throttles to; below it the whole dynamic power is scaled.
pub const MIN_CLOCK_FACTOR: f64 = 0.2;

/// What kind of work a process runs: it picks the power coefficients of its activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Power linear in SM activity alone (the synthetic workloads of the `sim` backend).
    #[default]
    Generic,
    /// FP32/FP64 arithmetic on CUDA cores, little memory traffic.
    ComputeBound,
    /// Streaming memory: DRAM bandwidth near its peak, SMs mostly waiting on loads.
    MemoryBound,
    /// Dense matrix multiplies on tensor cores.
    TensorHeavy,
}

impl Workload {
    /// Every workload, for CLIs and benchmarks.
    pub const ALL: [Workload; 4] = [
        Workload::Generic,
        Workload::ComputeBound,
        Workload::MemoryBound,
        Workload::TensorHeavy,
    ];

    /// Name as the CLI and the state file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Generic => "generic",
            Workload::ComputeBound => "compute_bound",
            Workload::MemoryBound => "memory_bound",
            Workload::TensorHeavy => "tensor_heavy",
        }
    }

    /// Its power coefficients.
    pub fn coefficients(self) -> Coefficients {
        match self {
            Workload::Generic => Coefficients {
                sm: 1.0,
                dram: 0.0,
                tensor: 0.0,
                sm_dram: 0.0,
            },
            Workload::ComputeBound => Coefficients {
                sm: 0.60,
                dram: 0.30,
                tensor: 0.0,
                sm_dram: 0.15,
            },
            Workload::MemoryBound => Coefficients {
                sm: 0.50,
                dram: 0.32,
                tensor: 0.0,
                sm_dram: 0.15,
            },
            Workload::TensorHeavy => Coefficients {
                sm: 0.55,
                dram: 0.28,
                tensor: 0.40,
                sm_dram: 0.15,
            },
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload {s:?}: generic, compute_bound, memory_bound or tensor_heavy"
                )
            })
    }
}

/// Dynamic power at full clocks, as fractions of the board's range above the floor at 100%
/// activity: `sm x s + dram x d + tensor x t + sm_dram x s x d` (s, d, t in [0, 1]). `sm`,
/// `tensor` and `sm_dram` are core power (they follow the SM clock); `dram` is memory power.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    pub sm: f64,
    pub dram: f64,
    pub tensor: f64,
    pub sm_dram: f64,
}

/// One process's activity as power sees it: fractions of the whole board in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub sm: f64,
    pub dram: f64,
    pub tensor: f64,
    pub workload: Workload,
}

/// The board's power at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardPower {
    /// Floor (idle, or idle plus the context share), mW.
    pub floor_mw: u64,
    /// Each process's dynamic power after throttling, mW, in the order of the loads.
    pub process_mw: Vec<u64>,
    /// Demand without a limit, mW.
    pub demand_mw: u64,
    /// SM clock factor in (0, 1]: 1 unless the limit holds the board back.
    pub clock_factor: f64,
}

impl BoardPower {
    /// Board power, mW: the floor plus every process's power (at most the limit, up to rounding
    /// down).
    pub fn total_mw(&self) -> u64 {
        self.floor_mw + self.process_mw.iter().sum::<u64>()
    }
}

/// The board's power: `floor_mw` plus each load's dynamic power over `range_mw` (the board's range
/// above the floor), throttled to `limit_mw`.
pub fn board_power(floor_mw: u64, range_mw: u64, limit_mw: u64, loads: &[Load]) -> BoardPower {
    let range = range_mw as f64;
    let parts: Vec<(f64, f64)> = loads
        .iter()
        .map(|l| {
            let c = l.workload.coefficients();
            let (s, d, t) = (unit(l.sm), unit(l.dram), unit(l.tensor));
            let core = range * (c.sm * s + c.tensor * t + c.sm_dram * s * d);
            let memory = range * c.dram * d;
            (core, memory)
        })
        .collect();
    let core: f64 = parts.iter().map(|p| p.0).sum();
    let memory: f64 = parts.iter().map(|p| p.1).sum();
    let floor = floor_mw as f64;
    let demand = floor + core + memory;
    let limit = limit_mw as f64;
    // (core factor, memory factor, clock factor)
    let (kc, km, f) = if demand <= limit || core + memory <= 0.0 {
        (1.0, 1.0, 1.0)
    } else {
        let room = (limit - floor - memory).max(0.0);
        let f = (room / core).cbrt();
        if core > 0.0 && f >= MIN_CLOCK_FACTOR {
            (f * f * f, 1.0, f)
        } else {
            // Even the slowest clock draws too much: everything is held back alike.
            let f = MIN_CLOCK_FACTOR;
            let k = ((limit - floor).max(0.0) / (core * f * f * f + memory)).min(1.0);
            (f * f * f * k, k, f)
        }
    };
    let process_mw = parts
        .iter()
        .map(|&(c, m)| (c * kc + m * km).max(0.0).floor() as u64)
        .collect();
    BoardPower {
        floor_mw,
        process_mw,
        demand_mw: demand.round() as u64,
        clock_factor: f,
    }
}

fn unit(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(w: Workload, sm: f64, dram: f64, tensor: f64) -> Load {
        Load {
            sm,
            dram,
            tensor,
            workload: w,
        }
    }

    #[test]
    fn a_memory_bound_process_at_low_sm_draws_more_than_its_sm_share() {
        // H100-like: floor 101.5 W, range 598.5 W, limit 700 W.
        let p = board_power(
            101_500,
            598_500,
            700_000,
            &[
                load(Workload::MemoryBound, 0.3, 0.9, 0.0),
                load(Workload::ComputeBound, 0.6, 0.05, 0.0),
            ],
        );
        assert_eq!(p.clock_factor, 1.0);
        let (mem, comp) = (p.process_mw[0] as f64, p.process_mw[1] as f64);
        // SM% says 1:2; the memory-bound process draws more than the compute-bound one.
        assert!(mem > comp, "{mem} vs {comp}");
    }

    #[test]
    fn past_the_limit_clocks_drop_and_the_board_draws_the_limit() {
        let loads = [
            load(Workload::TensorHeavy, 0.5, 0.4, 0.8),
            load(Workload::MemoryBound, 0.5, 0.9, 0.0),
        ];
        let free = board_power(101_500, 598_500, 700_000, &loads);
        let held = board_power(101_500, 598_500, 450_000, &loads);
        assert!(free.total_mw() <= 700_000);
        assert!(held.clock_factor < 1.0);
        assert!(held.total_mw() <= 450_000 && held.total_mw() >= 449_990);
        // Every process's power drops, the core-heavy one by more.
        let drop = |i: usize| held.process_mw[i] as f64 / free.process_mw[i] as f64;
        assert!(drop(0) < 1.0 && drop(1) < 1.0);
        assert!(drop(0) < drop(1));
    }

    #[test]
    fn no_activity_draws_nothing_above_the_floor() {
        let p = board_power(
            101_500,
            598_500,
            700_000,
            &[load(Workload::TensorHeavy, 0.0, 0.0, 0.0)],
        );
        assert_eq!(p.total_mw(), 101_500);
    }
}
