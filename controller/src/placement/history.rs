//! The live target workload: a decaying history of the requests the controller sees, with a prior,
//! turned into the [`Workload`] FGD and the default policy measure fragmentation against. Pure: the
//! caller records each request's [`Demand`] and asks for the workload.
//!
//! Each recorded request weighs 1 and every weight decays by half every [`DemandHistory::half_life`]
//! requests, so the workload follows the mix of recent requests. The prior (for example
//! [`super::policies::live_default_workload`]) starts with the weight of `prior_weight` requests and
//! decays the same way: at start the prior is the workload, after a few half-lives the history is.

use std::collections::HashMap;

use super::score::{Demand, Workload};

/// Weights below this (in requests) are forgotten.
const FORGET: f64 = 1e-3;
/// Class weights become integer counts in thousandths of a request (the workload's counts are
/// integers so that fragmentation compares exactly).
const COUNT_SCALE: f64 = 1000.0;

/// A decaying history of request demands.
#[derive(Debug, Clone)]
pub struct DemandHistory {
    weights: HashMap<Demand, f64>,
    decay: f64,
    half_life: u32,
    coverage: f64,
}

impl DemandHistory {
    /// A history whose weights halve every `half_life` requests (at least 1), seeded with `prior`'s
    /// classes carrying `prior_weight` requests in all (split by the prior's counts). The workload
    /// keeps the heaviest classes covering `coverage` (0..=1) of the weight, as FGD does.
    pub fn new(
        prior: &Workload,
        prior_weight: f64,
        half_life: u32,
        coverage: f64,
    ) -> DemandHistory {
        let half_life = half_life.max(1);
        let total = prior.total().max(1) as f64;
        let weights = prior
            .classes()
            .iter()
            .map(|c| (c.demand, prior_weight.max(0.0) * c.count as f64 / total))
            .collect();
        DemandHistory {
            weights,
            decay: 0.5f64.powf(1.0 / f64::from(half_life)),
            half_life,
            coverage,
        }
    }

    /// Requests after which a weight has halved.
    pub fn half_life(&self) -> u32 {
        self.half_life
    }

    /// Records one request: every weight decays by one step, then the request's demand gains 1.
    pub fn record(&mut self, d: Demand) {
        let decay = self.decay;
        self.weights.retain(|_, w| {
            *w *= decay;
            *w >= FORGET
        });
        *self.weights.entry(d).or_default() += 1.0;
    }

    /// Weight of one demand now, in requests.
    pub fn weight(&self, d: &Demand) -> f64 {
        self.weights.get(d).copied().unwrap_or(0.0)
    }

    /// The target workload now: the classes by weight, heaviest first, covering the coverage.
    pub fn workload(&self) -> Workload {
        Workload::from_counts(
            self.weights
                .iter()
                .map(|(d, w)| (*d, (w * COUNT_SCALE).round() as u64))
                .filter(|(_, c)| *c > 0),
            self.coverage,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::score::{ModelMask, WorkloadClass};

    fn d(gpus: u8, milli: u16, cpu: u32) -> Demand {
        Demand {
            cpu,
            gpus,
            milli,
            models: ModelMask::ANY,
        }
    }

    fn prior() -> Workload {
        Workload::new(vec![
            WorkloadClass {
                demand: d(1, 1000, 0),
                count: 3,
            },
            WorkloadClass {
                demand: d(1, 500, 0),
                count: 1,
            },
        ])
    }

    #[test]
    fn starts_as_the_prior() {
        let h = DemandHistory::new(&prior(), 64.0, 100, 1.0);
        let w = h.workload();
        assert_eq!(w.classes().len(), 2);
        assert_eq!(w.classes()[0].demand, d(1, 1000, 0));
        assert_eq!(w.classes()[0].count, 3 * w.classes()[1].count);
    }

    #[test]
    fn recent_requests_take_over_from_the_prior() {
        let mut h = DemandHistory::new(&prior(), 64.0, 50, 0.95);
        let pod = d(1, 250, 8000);
        for _ in 0..500 {
            h.record(pod);
        }
        // Ten half-lives: the prior weighs 64 / 1024 requests, the history about 72.
        assert!(h.weight(&pod) > 70.0, "{}", h.weight(&pod));
        assert!(h.weight(&d(1, 1000, 0)) < 0.1);
        let w = h.workload();
        assert_eq!(w.classes()[0].demand, pod);
        // The CPU of recorded requests reaches the workload's CPU-per-GPU ratio.
        assert!(
            (w.cpu_per_gpu_milli() - 32.0).abs() < 1.0,
            "{}",
            w.cpu_per_gpu_milli()
        );
    }

    #[test]
    fn a_weight_halves_every_half_life() {
        let mut h = DemandHistory::new(&Workload::default(), 0.0, 10, 1.0);
        let a = d(2, 1000, 0);
        h.record(a);
        for _ in 0..10 {
            h.record(d(1, 1000, 0));
        }
        assert!((h.weight(&a) - 0.5).abs() < 1e-9, "{}", h.weight(&a));
    }
}
