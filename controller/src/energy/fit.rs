//! A better split of dynamic energy than SM% x time: an online, non-negative fit of one GPU's
//! measured dynamic energy against the activity NVML reports (SM, DRAM bandwidth, tensor
//! activity), used to weigh each slice's activity vector before the exact split.
//!
//! Why: power does not follow SM% alone. A memory-bound kernel at modest SM% can draw more than a
//! compute-bound one, tensor cores draw more per SM, and at the power limit clocks drop. The board's
//! energy counter is the one measurement; activity vectors are what NVML offers per slice
//! (per-process SM and memory utilization on a shared GPU, GPM's SM, DRAM bandwidth and tensor
//! activity per MIG instance on Hopper and newer).
//!
//! Method, per GPU:
//! 1. Each observation (a stretch of time, e.g. one 5 s sample batch) gives the board's dynamic
//!    energy (counter delta minus idle power x time) and the summed activity of everything on it:
//!    SM, DRAM and tensor in "% of the board x ms", and the ms during which any process held a
//!    context.
//! 2. Over the last [`FitConfig::window`] observations, non-negative least squares:
//!    `dynamic ≈ b_sm x SM + b_dram x DRAM + b_tensor x TENSOR + b_ctx x CONTEXT`, with a small
//!    ridge pull towards the SM-only model (`b_sm` = total dynamic / total SM, others 0), so that
//!    when the data cannot tell the terms apart the fit is the SM split.
//!    The SM and tensor columns come also weighted by the SM clock's share f and by f³ (a basis
//!    {1, f, f³} for how core power falls under the power limit; DRAM has no clock term).
//! 3. Over the same observations, each slice's own scale on that shared model (see
//!    [`ActivityFit::model`]): NNLS of what the slices must explain against each slice's shared
//!    weight, pulled towards 1 by a ridge chosen on held-out contiguous folds. It learns a cost
//!    no signal shows (tensor work on an A100 share) where the slices' activities vary apart.
//! 4. A slice's weight is its scale x `b_sm x sm + b_dram x dram + ...` of its own activity (the
//!    context term belongs to no one's activity: it is shared in proportion to those weights). The
//!    weights go to [`attribute`](super::attribute) as activity, so the split still sums exactly
//!    to the measured energy in integer mJ, and a slice with no activity gets no dynamic energy.
//!
//! Where per-slice DRAM activity is missing, or the fit has too few observations, the interval is
//! split by SM% x time and labelled [`Method::SmSplit`] with the reason.
//!
//! Nothing here knows any simulator or any hardware's coefficients: it fits what it measures.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::attribution::SliceActivity;

/// How one interval's dynamic energy was split among slices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// By SM activity x time, with why the fit was not used (`None`: the configured method).
    #[default]
    SmSplit,
    /// By SM activity x time because a signal the fit needs was missing.
    SmSplitFallback(Fallback),
    /// By the activity-vector fit of this module.
    ActivityFit,
}

impl Method {
    /// The label reports show.
    pub fn label(self) -> &'static str {
        match self {
            Method::SmSplit => "sm_split",
            Method::SmSplitFallback(Fallback::NoDramSignal) => {
                "sm_split (no per-slice DRAM signal)"
            }
            Method::SmSplitFallback(Fallback::FitNotReady) => {
                "sm_split (too few observations to fit)"
            }
            Method::ActivityFit => "activity_fit",
        }
    }
}

/// Why the fit was not used for an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// No per-slice DRAM activity (e.g. an A100 in MIG mode: no GPM).
    NoDramSignal,
    /// Fewer observations than [`FitConfig::min_observations`].
    FitNotReady,
}

/// Activity over a stretch of time, each in "% of the whole board x ms" (a MIG instance's
/// activity is weighted by its share of the GPU's compute slices, DRAM by its memory slices).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivityVector {
    pub sm_pct_ms: f64,
    /// DRAM bandwidth (NVML's memory utilization, GPM's `DRAM_BW_UTIL`).
    pub dram_pct_ms: f64,
    /// Tensor-core activity (GPM's `ANY_TENSOR_UTIL`); 0 where unknown.
    pub tensor_pct_ms: f64,
    /// SM activity weighted by the SM clock's share of its maximum (NVML's clocks), so the fit
    /// can tell work done at full clocks from work done held back by the power limit. Equal to
    /// `sm_pct_ms` where the clock is not known (or always at its maximum).
    #[serde(default)]
    pub sm_clock_pct_ms: f64,
    /// Tensor activity weighted the same way; equal to `tensor_pct_ms` where the clock is not known.
    #[serde(default)]
    pub tensor_clock_pct_ms: f64,
    /// SM and tensor activity weighted by the cube of the clock's share, the textbook scaling of
    /// switching power with clock and voltage (P ~ f V², V roughly with f). With the unweighted
    /// and linear terms the fit has a basis {1, f, f³} in the clock on which it chooses how core
    /// power falls under the limit. DRAM has no clock terms: HBM is on its own clock, which the
    /// power limit does not lower (a DRAM x f³ term was tried and made the benchmark worse).
    /// Equal to the unweighted figures where the clock is not known.
    #[serde(default)]
    pub sm_clock3_pct_ms: f64,
    #[serde(default)]
    pub tensor_clock3_pct_ms: f64,
}

/// Regressors of the fit: see [`ActivityVector::features`].
const FEATURES: usize = 7;

impl ActivityVector {
    /// The vector of a stretch at one clock: `sm`, `dram` and `tensor` in % x ms, `clock` the SM
    /// clock's share of its maximum (1 where unknown).
    pub fn at_clock(sm: f64, dram: f64, tensor: f64, clock: f64) -> ActivityVector {
        let c3 = clock * clock * clock;
        ActivityVector {
            sm_pct_ms: sm,
            dram_pct_ms: dram,
            tensor_pct_ms: tensor,
            sm_clock_pct_ms: sm * clock,
            tensor_clock_pct_ms: tensor * clock,
            sm_clock3_pct_ms: sm * c3,
            tensor_clock3_pct_ms: tensor * c3,
        }
    }

    /// Adds `o` to this vector, term by term.
    pub fn add(&mut self, o: &ActivityVector) {
        self.sub_scaled(o, -1.0);
    }

    /// Subtracts `k x o` from this vector, term by term.
    pub fn sub_scaled(&mut self, o: &ActivityVector, k: f64) {
        self.sm_pct_ms -= k * o.sm_pct_ms;
        self.dram_pct_ms -= k * o.dram_pct_ms;
        self.tensor_pct_ms -= k * o.tensor_pct_ms;
        self.sm_clock_pct_ms -= k * o.sm_clock_pct_ms;
        self.tensor_clock_pct_ms -= k * o.tensor_clock_pct_ms;
        self.sm_clock3_pct_ms -= k * o.sm_clock3_pct_ms;
        self.tensor_clock3_pct_ms -= k * o.tensor_clock3_pct_ms;
    }

    /// The fit's regressors: SM, DRAM, tensor, SM and tensor x clock, SM and tensor x clock³.
    fn features(&self) -> [f64; FEATURES] {
        [
            self.sm_pct_ms,
            self.dram_pct_ms,
            self.tensor_pct_ms,
            self.sm_clock_pct_ms,
            self.tensor_clock_pct_ms,
            self.sm_clock3_pct_ms,
            self.tensor_clock3_pct_ms,
        ]
    }
}

/// One observation of a GPU: its dynamic energy and the activity on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Board activity (all processes, mapped to a slice or not).
    pub activity: ActivityVector,
    /// ms during which at least one process held a context on the GPU.
    pub context_ms: f64,
    /// Measured energy minus idle power x time, mJ (may be negative from sensor noise).
    pub dynamic_mj: f64,
    /// The part of `activity` each slice did (empty where unknown). What `activity` holds beyond
    /// their sum (work of no slice, a board-only signal) is weighed with the shared coefficients.
    #[serde(default)]
    pub slices: Vec<(String, ActivityVector)>,
}

/// The fit's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// Observations kept (the most recent).
    pub window: usize,
    /// Observations needed before the fit is used.
    pub min_observations: usize,
    /// Ridge pull towards the SM-only model, as a share of the mean diagonal of the normal matrix.
    pub ridge: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            window: 240,
            min_observations: 12,
            ridge: 1e-3,
        }
    }
}

/// Fitted energy per unit of activity, mJ per (% x ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    pub sm: f64,
    pub dram: f64,
    pub tensor: f64,
    /// On the clock-weighted SM and tensor activity.
    pub sm_clock: f64,
    pub tensor_clock: f64,
    /// On the activity weighted by the clock's cube.
    #[serde(default)]
    pub sm_clock3: f64,
    #[serde(default)]
    pub tensor_clock3: f64,
    /// mJ per ms of context held (shared, not charged by activity).
    pub context: f64,
}

impl Coefficients {
    fn of_features(&self) -> [f64; FEATURES] {
        [
            self.sm,
            self.dram,
            self.tensor,
            self.sm_clock,
            self.tensor_clock,
            self.sm_clock3,
            self.tensor_clock3,
        ]
    }
}

/// The online fit of one GPU.
#[derive(Debug, Clone, Default)]
pub struct ActivityFit {
    config: FitConfig,
    history: VecDeque<Observation>,
}

/// Weights are activity-energy estimates in mJ, scaled by this before rounding to integers.
const WEIGHT_SCALE: f64 = 1000.0;

impl ActivityFit {
    pub fn new(config: FitConfig) -> ActivityFit {
        ActivityFit {
            config,
            history: VecDeque::new(),
        }
    }

    /// Adds an observation; the oldest beyond the window is dropped. Non-finite values are
    /// ignored (a broken reading must not poison the fit).
    pub fn observe(&mut self, o: Observation) {
        let f = o.activity.features();
        if f.iter()
            .chain([&o.context_ms, &o.dynamic_mj])
            .any(|x| !x.is_finite())
            || f.iter().chain([&o.context_ms]).any(|&x| x < 0.0)
        {
            return;
        }
        self.history.push_back(o);
        while self.history.len() > self.config.window.max(1) {
            self.history.pop_front();
        }
    }

    /// Observations held.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// The fitted coefficients, or `None` before [`FitConfig::min_observations`] or when nothing
    /// was active.
    pub fn coefficients(&self) -> Option<Coefficients> {
        if self.history.len() < self.config.min_observations.max(1) {
            return None;
        }
        // Columns: the features and the context time, scaled to unit mean so the ridge weighs
        // them alike.
        const N: usize = FEATURES + 1;
        let rows: Vec<([f64; N], f64)> = self
            .history
            .iter()
            .map(|o| {
                let f = o.activity.features();
                let x: [f64; N] =
                    std::array::from_fn(|i| if i < FEATURES { f[i] } else { o.context_ms });
                (x, o.dynamic_mj)
            })
            .collect();
        let n = rows.len() as f64;
        let mut scale = [0.0f64; N];
        for (x, _) in &rows {
            for (s, v) in scale.iter_mut().zip(x) {
                *s += v / n;
            }
        }
        if scale[0] <= 0.0 {
            return None;
        }
        // A clock column that equals its base column over the whole window (the clock never
        // left its maximum) says nothing the base does not: left out, it keeps the normal matrix
        // from being singular (and the ridge from being spread over two names for one term).
        for (c, base) in [(3, 0), (4, 2), (5, 0), (6, 2)] {
            let same = rows
                .iter()
                .all(|(x, _)| (x[c] - x[base]).abs() <= 1e-9 * (x[base].abs() + 1.0));
            if same {
                scale[c] = 0.0;
            }
        }
        let mut g = vec![vec![0.0f64; N]; N];
        let mut h = vec![0.0f64; N];
        for (x, y) in &rows {
            let z: Vec<f64> = (0..N)
                .map(|i| if scale[i] > 0.0 { x[i] / scale[i] } else { 0.0 })
                .collect();
            for i in 0..N {
                h[i] += z[i] * y;
                for j in 0..N {
                    g[i][j] += z[i] * z[j];
                }
            }
        }
        // Prior: the SM-only model in scaled units.
        let total_y: f64 = rows.iter().map(|r| r.1).sum();
        let total_sm: f64 = rows.iter().map(|r| r.0[0]).sum();
        let mut prior = [0.0f64; N];
        prior[0] = (total_y / total_sm).max(0.0) * scale[0];
        let lambda = self.config.ridge * (0..N).map(|i| g[i][i]).sum::<f64>() / N as f64;
        for i in (0..N).filter(|&i| scale[i] > 0.0) {
            g[i][i] += lambda;
            h[i] += lambda * prior[i];
        }
        let b = nnls(&g, &h);
        let unscale = |i: usize| if scale[i] > 0.0 { b[i] / scale[i] } else { 0.0 };
        Some(Coefficients {
            sm: unscale(0),
            dram: unscale(1),
            tensor: unscale(2),
            sm_clock: unscale(3),
            tensor_clock: unscale(4),
            sm_clock3: unscale(5),
            tensor_clock3: unscale(6),
            context: unscale(FEATURES),
        })
    }
}

/// The fit's result: the shared coefficients and each slice's own scale on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub shared: Coefficients,
    /// Each slice's energy per unit of activity relative to the shared model (1: as the shared
    /// model says). A slice not listed has scale 1.
    pub slice_scale: std::collections::BTreeMap<String, f64>,
    /// The pull towards 1 chosen on held-out observations (share of the mean diagonal); `None`
    /// when the window held too few observations for a per-slice fit.
    pub slice_ridge: Option<f64>,
}

impl Model {
    /// The scale of slice `id`.
    pub fn scale(&self, id: &str) -> f64 {
        self.slice_scale.get(id).copied().unwrap_or(1.0)
    }
}

/// Pulls towards scale 1 tried on held-out observations, as shares of the mean diagonal of the
/// normal matrix; the last is strong enough to keep the shared model.
const SLICE_RIDGES: [f64; 8] = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 1e4];
/// Contiguous folds of the window for choosing the pull.
const FOLDS: usize = 5;

fn weigh(c: &Coefficients, a: &ActivityVector) -> f64 {
    c.of_features()
        .iter()
        .zip(a.features())
        .map(|(c, x)| c * x.max(0.0))
        .sum()
}

impl ActivityFit {
    /// The shared coefficients and the per-slice scales (see [`Model`]), or `None` when
    /// [`coefficients`](Self::coefficients) is.
    pub fn model(&self) -> Option<Model> {
        let shared = self.coefficients()?;
        let mut ids: Vec<&str> = self
            .history
            .iter()
            .flat_map(|o| o.slices.iter().map(|(id, _)| id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let n = ids.len();
        let plain = Model {
            shared,
            slice_scale: Default::default(),
            slice_ridge: None,
        };
        if n == 0 || self.history.len() < 2 * self.config.min_observations.max(1) {
            return Some(plain);
        }
        // Per observation: each slice's weight under the shared model, and what the slices'
        // weights must explain (dynamic energy less the context term and work of no slice).
        let rows: Vec<(Vec<f64>, f64)> = self
            .history
            .iter()
            .map(|o| {
                let mut w = vec![0.0f64; n];
                let mut rest = o.activity;
                for (id, a) in &o.slices {
                    if let Ok(i) = ids.binary_search(&id.as_str()) {
                        w[i] += weigh(&shared, a);
                    }
                    rest.sub_scaled(a, 1.0);
                }
                let r = o.dynamic_mj - shared.context * o.context_ms - weigh(&shared, &rest);
                (w, r)
            })
            .collect();
        // Sufficient statistics per contiguous fold (normal matrix, right-hand side, sum of
        // squares), so each pull and fold costs one small solve, not a pass over the window.
        let len = rows.len();
        let folds: Vec<(Vec<Vec<f64>>, Vec<f64>, f64)> = (0..FOLDS)
            .map(|k| {
                let (lo, hi) = (k * len / FOLDS, (k + 1) * len / FOLDS);
                let mut g = vec![vec![0.0f64; n]; n];
                let mut h = vec![0.0f64; n];
                let mut rr = 0.0;
                for (w, r) in &rows[lo..hi] {
                    rr += r * r;
                    for i in 0..n {
                        h[i] += w[i] * r;
                        for j in 0..n {
                            g[i][j] += w[i] * w[j];
                        }
                    }
                }
                (g, h, rr)
            })
            .collect();
        // The statistics of every fold but `skip` (None: all of them).
        let sum_except = |skip: Option<usize>| -> (Vec<Vec<f64>>, Vec<f64>) {
            let mut g = vec![vec![0.0f64; n]; n];
            let mut h = vec![0.0f64; n];
            for (k, (fg, fh, _)) in folds.iter().enumerate() {
                if Some(k) == skip {
                    continue;
                }
                for i in 0..n {
                    h[i] += fh[i];
                    for j in 0..n {
                        g[i][j] += fg[i][j];
                    }
                }
            }
            (g, h)
        };
        let solve = |(mut g, mut h): (Vec<Vec<f64>>, Vec<f64>), ridge: f64| -> Vec<f64> {
            let mean_diag = (0..n).map(|i| g[i][i]).sum::<f64>() / n as f64;
            let lambda = ridge * mean_diag.max(f64::MIN_POSITIVE);
            for i in 0..n {
                g[i][i] += lambda;
                h[i] += lambda;
            }
            nnls(&g, &h)
        };
        // Held-out squared error from the fold's statistics: sum r^2 - 2 s.h + s'Gs.
        let sse = |(g, h, rr): &(Vec<Vec<f64>>, Vec<f64>, f64), s: &[f64]| -> f64 {
            let sh: f64 = s.iter().zip(h).map(|(a, b)| a * b).sum();
            let sgs: f64 = (0..n)
                .map(|i| (0..n).map(|j| s[i] * g[i][j] * s[j]).sum::<f64>())
                .sum();
            (rr - 2.0 * sh + sgs).max(0.0)
        };
        // The pull that predicts held-out (contiguous) observations best.
        let train: Vec<_> = (0..FOLDS).map(|k| sum_except(Some(k))).collect();
        let mut best = (f64::INFINITY, *SLICE_RIDGES.last().unwrap_or(&1.0));
        for &ridge in &SLICE_RIDGES {
            let err: f64 = (0..FOLDS)
                .map(|k| sse(&folds[k], &solve(train[k].clone(), ridge)))
                .sum();
            if err < best.0 {
                best = (err, ridge);
            }
        }
        let s = solve(sum_except(None), best.1);
        Some(Model {
            shared,
            slice_scale: ids.iter().map(|id| id.to_string()).zip(s).collect(),
            slice_ridge: Some(best.1),
        })
    }
}

/// Splits an activity NVML reports only for the whole board (tensor activity on a shared GPU:
/// GPM has it per GPU, per-process utilization has no tensor figure) among the slices, by fitting
/// it over recent observations against each slice's SM activity: `board ≈ sum_j r_j x sm_j`,
/// `r_j >= 0`, with a small ridge pull towards one ratio for all (the SM split of it). Each
/// slice's activity varies on its own, so the fit learns which slices the board's tensor activity
/// follows.
#[derive(Debug, Clone, Default)]
pub struct BoardShareFit {
    config: FitConfig,
    history: VecDeque<(Vec<(String, f64)>, f64)>,
}

impl BoardShareFit {
    pub fn new(config: FitConfig) -> BoardShareFit {
        BoardShareFit {
            config,
            history: VecDeque::new(),
        }
    }

    /// Adds an observation: each slice's SM activity and the board's figure over one stretch.
    pub fn observe(&mut self, per_slice_sm: &[(String, f64)], board: f64) {
        if !board.is_finite() || board < 0.0 || per_slice_sm.iter().any(|(_, x)| !x.is_finite()) {
            return;
        }
        self.history.push_back((per_slice_sm.to_vec(), board));
        while self.history.len() > self.config.window.max(1) {
            self.history.pop_front();
        }
    }

    /// The board's `board` split among `per_slice_sm`, summing to `board` (all of it by SM
    /// activity before the fit has [`FitConfig::min_observations`]).
    pub fn split(&self, per_slice_sm: &[(String, f64)], board: f64) -> Vec<(String, f64)> {
        let ratios = self.ratios();
        let weights: Vec<f64> = per_slice_sm
            .iter()
            .map(|(id, sm)| {
                let r = ratios
                    .as_ref()
                    .map_or(1.0, |r| r.get(id).copied().unwrap_or(0.0));
                (r * sm.max(0.0)).max(0.0)
            })
            .collect();
        let sum: f64 = weights.iter().sum();
        let sm_sum: f64 = per_slice_sm.iter().map(|(_, x)| x.max(0.0)).sum();
        per_slice_sm
            .iter()
            .zip(&weights)
            .map(|((id, sm), w)| {
                let part = if sum > 0.0 {
                    board * w / sum
                } else if sm_sum > 0.0 {
                    board * sm.max(0.0) / sm_sum
                } else {
                    0.0
                };
                (id.clone(), part)
            })
            .collect()
    }

    fn ratios(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        if self.history.len() < self.config.min_observations.max(1) {
            return None;
        }
        let mut ids: Vec<&str> = self
            .history
            .iter()
            .flat_map(|(v, _)| v.iter().map(|(id, _)| id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let n = ids.len();
        if n == 0 {
            return None;
        }
        let index = |id: &str| ids.binary_search(&id).ok();
        let mut g = vec![vec![0.0f64; n]; n];
        let mut h = vec![0.0f64; n];
        let (mut total_board, mut total_sm) = (0.0, 0.0);
        for (v, y) in &self.history {
            let mut x = vec![0.0f64; n];
            for (id, sm) in v {
                if let Some(i) = index(id) {
                    x[i] += sm.max(0.0);
                }
            }
            total_board += y;
            total_sm += x.iter().sum::<f64>();
            for i in 0..n {
                h[i] += x[i] * y;
                for j in 0..n {
                    g[i][j] += x[i] * x[j];
                }
            }
        }
        if total_sm <= 0.0 {
            return None;
        }
        let prior = total_board / total_sm;
        let lambda = self.config.ridge * (0..n).map(|i| g[i][i]).sum::<f64>() / n as f64;
        for i in 0..n {
            g[i][i] += lambda;
            h[i] += lambda * prior;
        }
        let r = nnls(&g, &h);
        Some(ids.iter().map(|id| id.to_string()).zip(r).collect())
    }
}

/// Minimises `b' G b / 2 - h' b` over `b >= 0`, G symmetric positive semi-definite, exactly, by
/// the active-set method of Lawson and Hanson on the normal equations: free variables are added
/// one at a time (the most negative gradient first) and the subproblem on the free set is solved
/// directly; a step that would turn a free variable negative stops at the boundary and binds that
/// variable again. A variable with `G_ii <= 0` (a column that is all zero) stays at 0. Cyclic coordinate
/// descent, used before, crawls for thousands of sweeps when two columns are nearly equal (a clock
/// term that never left its maximum); this finishes in at most a few sweeps per variable.
fn nnls(g: &[Vec<f64>], h: &[f64]) -> Vec<f64> {
    let n = h.len();
    let mut b = vec![0.0f64; n];
    let mut usable: Vec<bool> = (0..n)
        .map(|i| g[i][i] > 0.0 && g[i][i].is_finite())
        .collect();
    if !h.iter().all(|x| x.is_finite()) {
        return b;
    }
    // A gradient this small (relative to the right-hand side) counts as zero.
    let tol = 1e-12 * h.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut free = vec![false; n];
    let grad = |b: &[f64], i: usize| h[i] - (0..n).map(|j| g[i][j] * b[j]).sum::<f64>();
    for _ in 0..10 * n + 10 {
        // The bound variable whose gradient most wants it to rise.
        let next = (0..n)
            .filter(|&i| usable[i] && !free[i])
            .map(|i| (i, grad(&b, i)))
            .filter(|&(_, w)| w > tol)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((j, _)) = next else { break };
        free[j] = true;
        loop {
            let idx: Vec<usize> = (0..n).filter(|&i| free[i]).collect();
            let Some(z) = solve_spd(g, h, &idx) else {
                // Singular on the free set: the last variable adds nothing; it stays at 0.
                free[j] = false;
                usable[j] = false;
                break;
            };
            if z.iter().all(|&v| v > 0.0) {
                for (&i, &v) in idx.iter().zip(&z) {
                    b[i] = v;
                }
                break;
            }
            // Step from b towards z as far as every free variable stays non-negative; the one
            // that reaches 0 first (and any other at 0) is bound again.
            let mut alpha = 1.0f64;
            let mut stop = None;
            for (&i, &v) in idx.iter().zip(&z) {
                if v <= 0.0 {
                    let a = b[i] / (b[i] - v);
                    if stop.is_none() || a < alpha {
                        alpha = a;
                        stop = Some(i);
                    }
                }
            }
            for (&i, &v) in idx.iter().zip(&z) {
                b[i] += alpha * (v - b[i]);
                if Some(i) == stop || b[i] <= 0.0 {
                    b[i] = 0.0;
                    free[i] = false;
                }
            }
            if !idx.iter().any(|&i| free[i]) {
                break;
            }
        }
    }
    b
}

/// Solves `G[idx][idx] z = h[idx]` by Cholesky; `None` when the block is not positive definite
/// to working precision.
fn solve_spd(g: &[Vec<f64>], h: &[f64], idx: &[usize]) -> Option<Vec<f64>> {
    let m = idx.len();
    let mut l = vec![vec![0.0f64; m]; m];
    for r in 0..m {
        for c in 0..=r {
            let s = g[idx[r]][idx[c]] - (0..c).map(|k| l[r][k] * l[c][k]).sum::<f64>();
            if r == c {
                if s.is_nan() || s <= 1e-13 * g[idx[r]][idx[r]] {
                    return None;
                }
                l[r][r] = s.sqrt();
            } else {
                l[r][c] = s / l[c][c];
            }
        }
    }
    let mut y = vec![0.0f64; m];
    for r in 0..m {
        let s: f64 = (0..r).map(|k| l[r][k] * y[k]).sum();
        y[r] = (h[idx[r]] - s) / l[r][r];
    }
    let mut z = vec![0.0f64; m];
    for r in (0..m).rev() {
        let s: f64 = (r + 1..m).map(|k| l[k][r] * z[k]).sum();
        z[r] = (y[r] - s) / l[r][r];
    }
    z.iter().all(|v| v.is_finite()).then_some(z)
}

/// Activity weights for [`attribute`](super::attribute): each slice's (and the unattributed
/// activity's) fitted energy, in integer units. A zero activity vector gets weight 0, so its
/// slice pays no dynamic energy.
pub fn fitted_activity(
    model: &Model,
    slices: &[(String, ActivityVector)],
    unattributed: &ActivityVector,
) -> (Vec<SliceActivity>, u64) {
    let weight = |a: &ActivityVector, scale: f64| {
        let w = scale * weigh(&model.shared, a);
        if w.is_finite() {
            // Saturating: activity of one GPU interval is far below u64::MAX / 1000 mJ.
            (w * WEIGHT_SCALE).round().clamp(0.0, u64::MAX as f64) as u64
        } else {
            0
        }
    };
    let rows = slices
        .iter()
        .map(|(id, a)| SliceActivity {
            slice_id: id.clone(),
            activity: weight(a, model.scale(id)),
        })
        .collect();
    (rows, weight(unattributed, 1.0))
}

/// The SM split's activity weights (SM % x ms, rounded), for the same inputs.
pub fn sm_activity(
    slices: &[(String, ActivityVector)],
    unattributed: &ActivityVector,
) -> (Vec<SliceActivity>, u64) {
    let w = |a: &ActivityVector| a.sm_pct_ms.max(0.0).round().clamp(0.0, u64::MAX as f64) as u64;
    let rows = slices
        .iter()
        .map(|(id, a)| SliceActivity {
            slice_id: id.clone(),
            activity: w(a),
        })
        .collect();
    (rows, w(unattributed))
}

/// The board activity of a set of slices and unattributed activity.
pub fn board_activity(
    slices: &[(String, ActivityVector)],
    unattributed: &ActivityVector,
) -> ActivityVector {
    let mut b = *unattributed;
    for (_, a) in slices {
        b.add(a);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn av(sm: f64, dram: f64, tensor: f64) -> ActivityVector {
        ActivityVector::at_clock(sm, dram, tensor, 1.0)
    }

    #[test]
    fn recovers_non_negative_coefficients_from_varied_observations() {
        // Energy = 2 x sm + 3 x dram + 0 x tensor + 1 x context, with varied mixes.
        let mut f = ActivityFit::new(FitConfig::default());
        for k in 0..40u32 {
            let sm = f64::from(k % 7) * 1000.0 + 500.0;
            let dram = f64::from((k * 3) % 5) * 800.0;
            let tensor = f64::from(k % 3) * 300.0;
            f.observe(Observation {
                activity: av(sm, dram, tensor),
                context_ms: 1000.0,
                dynamic_mj: 2.0 * sm + 3.0 * dram + 1000.0,
                slices: vec![],
            });
        }
        let c = f.coefficients().expect("ready");
        // SM and clock-weighted SM are one column here (no throttling): their sum is the cost.
        assert!((c.sm + c.sm_clock - 2.0).abs() < 0.05, "{c:?}");
        assert!((c.dram - 3.0).abs() < 0.05, "{c:?}");
        assert!(c.tensor + c.tensor_clock < 0.05, "{c:?}");
        assert!(c.context >= 0.0);
    }

    #[test]
    fn without_enough_observations_there_is_no_fit_and_bad_readings_are_ignored() {
        let mut f = ActivityFit::new(FitConfig::default());
        for _ in 0..11 {
            f.observe(Observation {
                activity: av(1.0, 1.0, 0.0),
                context_ms: 1.0,
                dynamic_mj: 1.0,
                slices: vec![],
            });
        }
        f.observe(Observation {
            activity: av(f64::NAN, 1.0, 0.0),
            context_ms: 1.0,
            dynamic_mj: 1.0,
            slices: vec![],
        });
        assert_eq!(f.len(), 11);
        assert!(f.coefficients().is_none());
    }

    #[test]
    fn collinear_data_gives_the_sm_split() {
        // DRAM always half of SM: the data cannot tell them apart; the ridge keeps the SM model.
        let mut f = ActivityFit::new(FitConfig::default());
        for k in 1..30u32 {
            let sm = f64::from(k) * 100.0;
            f.observe(Observation {
                activity: av(sm, sm / 2.0, 0.0),
                context_ms: 0.0,
                dynamic_mj: 4.0 * sm,
                slices: vec![],
            });
        }
        let c = f.model().expect("ready");
        let (rows, _) = fitted_activity(
            &c,
            &[
                ("a".into(), av(100.0, 0.0, 0.0)),
                ("b".into(), av(100.0, 90.0, 0.0)),
            ],
            &ActivityVector::default(),
        );
        // Not the SM split exactly, but no wild swing either: within 25% of equal.
        let (a, b) = (rows[0].activity as f64, rows[1].activity as f64);
        assert!(b / a < 1.25 && b / a >= 1.0, "{rows:?} from {c:?}");
    }

    #[test]
    fn a_slice_with_an_unobserved_cost_is_charged_it_when_the_slices_vary_apart() {
        // Both slices cost 2 mJ per SM unit, but "t" also does work no signal shows (1.5 mJ per
        // SM unit on average, varying): a shared model spreads it over both.
        let mut f = ActivityFit::new(FitConfig::default());
        let (mut true_t, mut true_c, mut sm_t, mut sm_c) = (0.0, 0.0, 0.0, 0.0);
        for k in 0..120u32 {
            let c = f64::from((k * 5) % 13) * 100.0;
            let t = f64::from((k * 7) % 11) * 100.0;
            let hidden = t * (1.0 + f64::from(k % 3) * 0.5);
            // Same DRAM per SM: the shared terms cannot tell the two apart.
            let (a, b) = (av(c, c / 5.0, 0.0), av(t, t / 5.0, 0.0));
            f.observe(Observation {
                activity: {
                    let mut x = a;
                    x.add(&b);
                    x
                },
                context_ms: 0.0,
                dynamic_mj: 2.0 * c + 2.0 * t + hidden,
                slices: vec![("c".into(), a), ("t".into(), b)],
            });
            (true_t, true_c) = (true_t + 2.0 * t + hidden, true_c + 2.0 * c);
            (sm_t, sm_c) = (sm_t + t, sm_c + c);
        }
        let m = f.model().expect("ready");
        assert!(m.slice_ridge.is_some_and(|r| r < 1.0), "{m:?}");
        let (rows, _) = fitted_activity(
            &m,
            &[
                ("c".into(), av(sm_c, sm_c / 5.0, 0.0)),
                ("t".into(), av(sm_t, sm_t / 5.0, 0.0)),
            ],
            &ActivityVector::default(),
        );
        let share_t = rows[1].activity as f64 / (rows[0].activity + rows[1].activity) as f64;
        let truth = true_t / (true_t + true_c);
        assert!(
            (share_t - truth).abs() < 0.02 * truth,
            "{share_t} vs {truth}, {m:?}"
        );
    }

    #[test]
    fn board_tensor_activity_goes_to_the_slices_it_follows() {
        // Slice "t" does tensor work at 0.8 x its SM activity; "c" none. Their SM varies apart.
        let mut f = BoardShareFit::new(FitConfig::default());
        for k in 0..40u32 {
            let t = f64::from((k * 7) % 11) * 100.0;
            let c = f64::from((k * 5) % 13) * 100.0;
            f.observe(&[("c".into(), c), ("t".into(), t)], 0.8 * t);
        }
        let split = f.split(&[("c".into(), 1000.0), ("t".into(), 500.0)], 400.0);
        assert!(split[0].1 < 4.0, "{split:?}");
        assert!((split[1].1 - 400.0).abs() < 4.0, "{split:?}");
        // Before the fit has enough observations: by SM activity.
        let fresh = BoardShareFit::new(FitConfig::default());
        let split = fresh.split(&[("c".into(), 300.0), ("t".into(), 100.0)], 400.0);
        assert_eq!((split[0].1, split[1].1), (300.0, 100.0));
    }

    proptest::proptest! {
        #[test]
        fn the_fitted_split_conserves_exactly_and_charges_no_idle_slice(
            measured in 0u64..10_000_000_000,
            c in proptest::collection::vec(0.0f64..50.0, 3),
            acts in proptest::collection::vec(
                (0u32..3, 0.0f64..6.0e6, 0.0f64..6.0e6, 0.0f64..6.0e6), 1..6),
        ) {
            use super::super::attribution::{AttributionInput, Holder, StaticPolicy, attribute};
            use super::super::Capacity;
            let coeffs = Coefficients {
                sm: c[0],
                dram: c[1],
                tensor: c[2],
                sm_clock: c[0] / 2.0,
                tensor_clock: c[2] / 2.0,
                sm_clock3: c[0] / 3.0,
                tensor_clock3: c[2] / 3.0,
                context: 1.0,
            };
            // Kind 0: idle (no activity at all).
            let slices: Vec<(String, ActivityVector)> = acts
                .iter()
                .enumerate()
                .map(|(i, &(k, s, d, t))| {
                    let a = if k == 0 { av(0.0, 0.0, 0.0) } else { av(s, d, t) };
                    (format!("s{i}"), a)
                })
                .collect();
            let model = Model {
                shared: coeffs,
                slice_scale: slices.iter().enumerate().map(|(i, (id, _))| (id.clone(), 0.5 + i as f64)).collect(),
                slice_ridge: Some(0.1),
            };
            let (activity, un) = fitted_activity(&model, &slices, &ActivityVector::default());
            let holders = slices
                .iter()
                .map(|(id, _)| Holder {
                    slice_id: id.clone(),
                    tenant: id.clone(),
                    claim: None,
                    capacity: Capacity::from_milli(100).expect("capacity"),
                    held_ms: 60_000,
                })
                .collect();
            let a = attribute(&AttributionInput {
                measured_mj: measured,
                interval_ms: 60_000,
                idle_power_mw: 70_000,
                holders,
                activity,
                unattributed_activity: un,
                policy: StaticPolicy::ByCapacity,
            })
            .expect("attributes");
            proptest::prop_assert_eq!(a.rows_total_mj(), u128::from(measured));
            for (row, (_, v)) in a.slices.iter().zip(&slices) {
                if v.sm_pct_ms == 0.0 && v.dram_pct_ms == 0.0 && v.tensor_pct_ms == 0.0 {
                    proptest::prop_assert_eq!(row.dynamic_mj, 0);
                }
            }
        }

        /// The solver's answer meets the optimality (KKT) conditions of the non-negative
        /// least-squares problem, whatever the columns: b >= 0; the gradient h - Gb is 0 where
        /// b > 0 and not positive where b = 0. Columns are drawn nearly equal on purpose (the
        /// case coordinate descent crawled on).
        #[test]
        fn nnls_meets_the_optimality_conditions(
            base in proptest::collection::vec(0.0f64..100.0, 30),
            cols in proptest::collection::vec((0.0f64..2.0, 0.0f64..1e-3, -1.0f64..1.0), 1..9),
            truth in proptest::collection::vec(-1.0f64..3.0, 9),
            ridge in proptest::sample::select(vec![0.0, 1e-6, 1e-3]),
        ) {
            let n = cols.len();
            // Column j: a multiple of `base` plus a small (or not so small) varied part.
            let x: Vec<Vec<f64>> = (0..base.len())
                .map(|r| {
                    cols.iter()
                        .enumerate()
                        .map(|(j, &(k, eps, wob))| {
                            let v = ((r * 7 + j * 13) % 11) as f64;
                            (k * base[r] + eps * v * 100.0 + wob * v).max(0.0)
                        })
                        .collect()
                })
                .collect();
            let y: Vec<f64> = x
                .iter()
                .map(|row| row.iter().zip(&truth).map(|(a, b)| a * b).sum())
                .collect();
            let mut g = vec![vec![0.0; n]; n];
            let mut h = vec![0.0; n];
            for (row, yy) in x.iter().zip(&y) {
                for i in 0..n {
                    h[i] += row[i] * yy;
                    for j in 0..n {
                        g[i][j] += row[i] * row[j];
                    }
                }
            }
            let mean_diag = (0..n).map(|i| g[i][i]).sum::<f64>() / n as f64;
            for (i, gi) in g.iter_mut().enumerate() {
                gi[i] += ridge * mean_diag;
            }
            let b = nnls(&g, &h);
            let scale: f64 = 1.0 + h.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for i in 0..n {
                proptest::prop_assert!(b[i] >= 0.0 && b[i].is_finite(), "{b:?}");
                let w = h[i] - (0..n).map(|j| g[i][j] * b[j]).sum::<f64>();
                if g[i][i] <= 0.0 {
                    continue;
                }
                if b[i] > 0.0 {
                    proptest::prop_assert!(w.abs() <= 1e-6 * scale, "i {i}: w {w}, b {b:?}");
                } else {
                    proptest::prop_assert!(w <= 1e-6 * scale, "i {i}: w {w} > 0 at b = 0, b {b:?}");
                }
            }
        }
    }
}
