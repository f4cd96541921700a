//! Seeded trace variants of the openb trace, made from a base trace (`default`) the way the FGD
//! artifact made its trace families (its `data/README.md`: the other pod lists "are sampled from
//! the default one"; the `gpuspec` lists add the production GPU-model constraints). Pure functions
//! on parsed tasks; the files in `../shared/data/openb` check their statistics (docs/BENCHMARKS.md).
//!
//! - `gpuspec:X`: X% of the GPU tasks, drawn uniformly, get a model constraint drawn from a donor
//!   trace's constraints of the same kind (share or whole GPUs); the artifact's constraints are the
//!   production ones, and `gpuspec10` is the donor we have. Every other task is unchanged.
//! - `gpushare:X`: the CPU-only tasks are kept; the GPU tasks are redrawn, as many as before, with
//!   replacement from the base's share and whole-GPU tasks, so that shares supply X% of the GPU
//!   demand (each draw takes a share while shares supply less than X%).
//! - `multigpu:X`: multi-GPU tasks supply X% of the GPU demand: tasks drawn with replacement from
//!   the base's multi-GPU tasks are added (or, below the base's share, random ones are dropped).
//! - `cpu:X`: X% of the tasks are CPU-only: CPU-only tasks drawn with replacement from the base's
//!   are added (or, below the base's share, a uniform subset of them is kept).

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use super::openb::TraceTask;

/// The donor of `gpuspec`'s constraints, relative to the repository root.
pub const DEFAULT_DONOR: &str = "../shared/data/openb/openb_pod_list_gpuspec10.csv";

/// A trace family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    GpuSpec,
    GpuShare,
    MultiGpu,
    Cpu,
}

impl Family {
    /// Every family, in the order the sweep runs them.
    pub const ALL: [Family; 4] = [
        Family::GpuSpec,
        Family::GpuShare,
        Family::MultiGpu,
        Family::Cpu,
    ];

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Family::GpuSpec => "gpuspec",
            Family::GpuShare => "gpushare",
            Family::MultiGpu => "multigpu",
            Family::Cpu => "cpu",
        }
    }

    /// Highest level (%) the family accepts: the multi-GPU and CPU-only shares must leave room for
    /// other tasks.
    fn max_level(self) -> u32 {
        match self {
            Family::GpuSpec | Family::GpuShare => 100,
            Family::MultiGpu | Family::Cpu => 95,
        }
    }
}

/// One variant: a family at a level (%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub family: Family,
    /// Level in % (see the module docs for what it measures in each family).
    pub level: u32,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.family.name(), self.level)
    }
}

/// Why a variant cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VariantError {
    #[error("variant {0:?} is not FAMILY:PERCENT (e.g. gpuspec:25)")]
    Syntax(String),
    #[error("unknown trace family {0:?}; known: gpuspec, gpushare, multigpu, cpu")]
    UnknownFamily(String),
    #[error("level {level}% is out of range for {family} (0 to {max})")]
    Level {
        family: &'static str,
        level: u32,
        max: u32,
    },
    #[error("the base trace has no {0} to draw from")]
    EmptyPool(&'static str),
    #[error(
        "gpuspec needs GPU-model constraints to draw from, and the donor trace has none \
         (the donor is openb_pod_list_gpuspec10.csv under ../shared/data/openb)"
    )]
    NoDonor,
}

impl FromStr for Variant {
    type Err = VariantError;

    fn from_str(s: &str) -> Result<Variant, VariantError> {
        let (fam, lvl) = s
            .split_once(':')
            .ok_or_else(|| VariantError::Syntax(s.chars().take(64).collect()))?;
        let family = Family::ALL
            .into_iter()
            .find(|f| f.name() == fam.trim())
            .ok_or_else(|| VariantError::UnknownFamily(fam.chars().take(64).collect()))?;
        let level: u32 = lvl
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| VariantError::Syntax(s.chars().take(64).collect()))?;
        if level > family.max_level() {
            return Err(VariantError::Level {
                family: family.name(),
                level,
                max: family.max_level(),
            });
        }
        Ok(Variant { family, level })
    }
}

/// The GPU-model constraints `gpuspec` draws from, by task kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecDonor {
    /// Constraints of share tasks (one GPU, less than all of it).
    shares: Vec<Vec<String>>,
    /// Constraints of whole-GPU tasks (one or more GPUs).
    whole: Vec<Vec<String>>,
}

impl SpecDonor {
    /// The constraints of the constrained GPU tasks of a trace, one entry per task (so that each is
    /// drawn with its frequency).
    pub fn from_tasks(tasks: &[TraceTask]) -> SpecDonor {
        let mut d = SpecDonor::default();
        for t in tasks
            .iter()
            .filter(|t| t.num_gpu > 0 && !t.models.is_empty())
        {
            if is_share(t) {
                d.shares.push(t.models.clone());
            } else {
                d.whole.push(t.models.clone());
            }
        }
        d
    }

    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty() && self.whole.is_empty()
    }

    /// A constraint for a task of this kind: from the same kind when the donor has any, else from
    /// the other.
    fn draw(&self, share: bool, rng: &mut ChaCha8Rng) -> Option<&Vec<String>> {
        let (same, other) = if share {
            (&self.shares, &self.whole)
        } else {
            (&self.whole, &self.shares)
        };
        let pool = if same.is_empty() { other } else { same };
        (!pool.is_empty()).then(|| &pool[rng.random_range(0..pool.len())])
    }
}

fn is_share(t: &TraceTask) -> bool {
    t.num_gpu == 1 && t.gpu_milli < 1000
}

/// Statistics that say what a trace's families measure, to compare a variant with the artifact's
/// files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceStats {
    pub tasks: usize,
    /// CPU-only tasks, % of tasks.
    pub cpu_only_pct: f64,
    /// GPU tasks with a model constraint, % of GPU tasks.
    pub constrained_pct: f64,
    /// GPU demand of shares, % of GPU demand.
    pub share_demand_pct: f64,
    /// GPU demand of multi-GPU tasks, % of GPU demand.
    pub multi_demand_pct: f64,
    /// Total GPU demand, milli-GPU.
    pub gpu_demand: u64,
}

impl TraceStats {
    /// The statistics of `tasks`.
    pub fn of(tasks: &[TraceTask]) -> TraceStats {
        let gpu: Vec<&TraceTask> = tasks.iter().filter(|t| t.num_gpu > 0).collect();
        let demand: u64 = gpu.iter().map(|t| t.gpu_demand()).sum();
        let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * a / b } else { 0.0 };
        let share: u64 = gpu
            .iter()
            .filter(|t| is_share(t))
            .map(|t| t.gpu_demand())
            .sum();
        let multi: u64 = gpu
            .iter()
            .filter(|t| t.num_gpu > 1)
            .map(|t| t.gpu_demand())
            .sum();
        TraceStats {
            tasks: tasks.len(),
            cpu_only_pct: pct((tasks.len() - gpu.len()) as f64, tasks.len() as f64),
            constrained_pct: pct(
                gpu.iter().filter(|t| !t.models.is_empty()).count() as f64,
                gpu.len() as f64,
            ),
            share_demand_pct: pct(share as f64, demand as f64),
            multi_demand_pct: pct(multi as f64, demand as f64),
            gpu_demand: demand,
        }
    }
}

impl fmt::Display for TraceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tasks, {:.1}% CPU-only, {:.1}% of GPU tasks model-constrained, shares {:.1}% and \
             multi-GPU {:.1}% of GPU demand ({} milli-GPU)",
            self.tasks,
            self.cpu_only_pct,
            self.constrained_pct,
            self.share_demand_pct,
            self.multi_demand_pct,
            self.gpu_demand
        )
    }
}

/// Makes `variant` of the `base` trace with seed `seed`. `donor` supplies the constraints for
/// `gpuspec` (unused otherwise). Added tasks are copies of base tasks named `<name>-v<i>`, unique
/// and sorted after nothing in particular (the replay sorts by name, then shuffles).
pub fn generate(
    base: &[TraceTask],
    variant: Variant,
    seed: u64,
    donor: &SpecDonor,
) -> Result<Vec<TraceTask>, VariantError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let frac = f64::from(variant.level) / 100.0;
    match variant.family {
        Family::GpuSpec => gpuspec(base, frac, donor, &mut rng),
        Family::GpuShare => gpushare(base, frac, &mut rng),
        Family::MultiGpu => multigpu(base, frac, &mut rng),
        Family::Cpu => cpu_only(base, frac, &mut rng),
    }
}

fn gpuspec(
    base: &[TraceTask],
    frac: f64,
    donor: &SpecDonor,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<TraceTask>, VariantError> {
    let mut out = base.to_vec();
    let mut gpu: Vec<usize> = (0..out.len()).filter(|&i| out[i].num_gpu > 0).collect();
    let k = (frac * gpu.len() as f64).round() as usize;
    if k == 0 {
        return Ok(out);
    }
    if donor.is_empty() {
        return Err(VariantError::NoDonor);
    }
    let (chosen, _) = gpu.partial_shuffle(rng, k);
    let mut chosen = chosen.to_vec();
    // Draw the constraints in task order, so the draw does not depend on the shuffle's layout.
    chosen.sort_unstable();
    for i in chosen {
        if let Some(m) = donor.draw(is_share(&out[i]), rng) {
            out[i].models = m.clone();
        }
    }
    Ok(out)
}

fn copy_named(t: &TraceTask, i: usize) -> TraceTask {
    TraceTask {
        name: format!("{}-v{i}", t.name),
        ..t.clone()
    }
}

fn gpushare(
    base: &[TraceTask],
    frac: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<TraceTask>, VariantError> {
    let shares: Vec<&TraceTask> = base.iter().filter(|t| is_share(t)).collect();
    let whole: Vec<&TraceTask> = base
        .iter()
        .filter(|t| t.num_gpu > 0 && !is_share(t))
        .collect();
    let n = shares.len() + whole.len();
    if frac > 0.0 && shares.is_empty() {
        return Err(VariantError::EmptyPool("share tasks"));
    }
    if frac < 1.0 && whole.is_empty() {
        return Err(VariantError::EmptyPool("whole-GPU tasks"));
    }
    let mut out: Vec<TraceTask> = base.iter().filter(|t| t.num_gpu == 0).cloned().collect();
    let (mut share_d, mut all_d) = (0u64, 0u64);
    for i in 0..n {
        let take_share = frac >= 1.0 || (frac > 0.0 && (share_d as f64) <= frac * all_d as f64);
        let pool = if take_share { &shares } else { &whole };
        let t = pool[rng.random_range(0..pool.len())];
        if take_share {
            share_d += t.gpu_demand();
        }
        all_d += t.gpu_demand();
        out.push(copy_named(t, i));
    }
    Ok(out)
}

fn multigpu(
    base: &[TraceTask],
    frac: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<TraceTask>, VariantError> {
    let multi: Vec<usize> = (0..base.len()).filter(|&i| base[i].num_gpu > 1).collect();
    let demand = |ts: &[TraceTask]| -> (u64, u64) {
        ts.iter()
            .filter(|t| t.num_gpu > 0)
            .fold((0, 0), |(m, a), t| {
                let d = t.gpu_demand();
                (m + if t.num_gpu > 1 { d } else { 0 }, a + d)
            })
    };
    let (mut m, mut all) = demand(base);
    if frac > 0.0 && multi.is_empty() {
        return Err(VariantError::EmptyPool("multi-GPU tasks"));
    }
    if (m as f64) < frac * all as f64 {
        let mut out = base.to_vec();
        let mut i = 0;
        while (m as f64) < frac * all as f64 {
            let t = &base[multi[rng.random_range(0..multi.len())]];
            m += t.gpu_demand();
            all += t.gpu_demand();
            out.push(copy_named(t, i));
            i += 1;
        }
        return Ok(out);
    }
    // Fewer multi-GPU tasks than the base: drop random ones while the share stays above the level.
    let mut order = multi;
    order.shuffle(rng);
    let mut drop = vec![false; base.len()];
    for i in order {
        if m as f64 <= frac * all as f64 {
            break;
        }
        drop[i] = true;
        m -= base[i].gpu_demand();
        all -= base[i].gpu_demand();
    }
    Ok(base
        .iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(t, _)| t.clone())
        .collect())
}

fn cpu_only(
    base: &[TraceTask],
    frac: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<TraceTask>, VariantError> {
    let cpu: Vec<usize> = (0..base.len()).filter(|&i| base[i].num_gpu == 0).collect();
    let gpu = base.len() - cpu.len();
    let want = (frac * gpu as f64 / (1.0 - frac)).round() as usize;
    if want > 0 && cpu.is_empty() {
        return Err(VariantError::EmptyPool("CPU-only tasks"));
    }
    if want >= cpu.len() {
        let mut out = base.to_vec();
        for i in 0..want - cpu.len() {
            out.push(copy_named(&base[cpu[rng.random_range(0..cpu.len())]], i));
        }
        return Ok(out);
    }
    let mut keep = cpu;
    keep.shuffle(rng);
    keep.truncate(want);
    let mut kept = vec![false; base.len()];
    for i in keep {
        kept[i] = true;
    }
    Ok(base
        .iter()
        .enumerate()
        .filter(|(i, t)| t.num_gpu > 0 || kept[*i])
        .map(|(_, t)| t.clone())
        .collect())
}

#[cfg(test)]
mod tests;
