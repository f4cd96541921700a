//! The packing replay in MIG mode: the same tasks, arrival order and node ranks as
//! [`super::replay`], on a cluster of H100-80GB GPUs (same node count, GPUs, CPU and memory per
//! node; GPU model constraints dropped, every GPU is an H100). Three ways to share a GPU:
//!
//! - [`MigMode::SharesOnly`]: every GPU time-sliced; a fractional task takes its share.
//! - [`MigMode::MigOnly`]: every GPU in MIG mode; a fractional task takes the smallest profile
//!   covering its compute and memory share ([`profile_for_share`], GPU memory assumed proportional
//!   to the compute share, as the trace has none).
//! - [`MigMode::Mixed`]: a GPU takes the mode of its first task; a fractional task becomes a MIG
//!   instance when its profile rounds it up by at most half a compute slice (1/14 GPU), otherwise
//!   a time-sliced share.
//!
//! Whole-GPU tasks take empty GPUs in every mode. One placement rule serves the three modes, so
//! they differ only in how GPUs are shared: MIG instances by [`score::mig_score`], shares on the
//! fitting GPU left with the least free compute, whole GPUs on the node with the fewest empty GPUs,
//! CPU-only tasks on the first node that fits; ties to the lowest node rank. Every MIG instance is
//! checked with [`mig::check_create`] before it is created.

use std::time::{Duration, Instant};

use greenslice_core::gpu::GpuModel;
use greenslice_core::mig::{self, MigProfile, Placed};

use super::openb::MAX_NODE_GPUS;
use super::replay::{Metric, Prepared, arrival_order, median_p99};
use crate::placement::score::{self, FULL};

/// How GPUs are shared in the MIG replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigMode {
    SharesOnly,
    MigOnly,
    Mixed,
}

impl MigMode {
    /// All modes.
    pub const ALL: [MigMode; 3] = [MigMode::MigOnly, MigMode::SharesOnly, MigMode::Mixed];

    /// Name in tables and CSVs.
    pub fn name(self) -> &'static str {
        match self {
            MigMode::SharesOnly => "shares-only",
            MigMode::MigOnly => "mig-only",
            MigMode::Mixed => "mixed",
        }
    }
}

/// The model of the MIG replay's cluster.
pub const MIG_MODEL: GpuModel = GpuModel::H100Sxm5_80Gb;

/// The smallest MIG profile (fewest compute slices, then memory slices; no `+me`) of `model`
/// covering a share of `milli` milli-GPU in compute and the same fraction of memory.
pub fn profile_for_share(model: &GpuModel, milli: u16) -> Option<&'static MigProfile> {
    let m = u32::from(milli);
    mig::profiles(model)
        .iter()
        .filter(|p| !p.media_extension())
        .filter(|p| {
            u32::from(p.compute_slices) * 1000 >= m * u32::from(mig::COMPUTE_SLICES)
                && u32::from(p.memory_slices) * 1000 >= m * u32::from(mig::MEMORY_SLICES)
        })
        .min_by_key(|p| (p.compute_slices, p.memory_slices))
}

/// One point of a MIG replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigPoint {
    /// Arrived GPU demand, % of cluster GPUs.
    pub arrival_pct: u32,
    /// GPU demand of the placed tasks (their requested shares), % of cluster GPUs.
    pub allocated_pct: f64,
    /// GPU compute held by them (MIG instances at their profile's size), % of cluster GPUs.
    pub held_pct: f64,
}

/// The outcome of one MIG replay.
#[derive(Debug, Clone, PartialEq)]
pub struct MigResult {
    pub mode: MigMode,
    pub seed: u64,
    pub points: Vec<MigPoint>,
    pub placed: usize,
    pub failed: usize,
    /// MIG instances created.
    pub instances: usize,
    pub decision_median_ns: u64,
    pub decision_p99_ns: u64,
    pub wall: Duration,
}

impl MigResult {
    /// Unallocated GPU % (100 - requested demand placed) at `arrival_pct`, if reached.
    pub fn unallocated_at(&self, arrival_pct: u32) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.arrival_pct == arrival_pct)
            .map(|p| 100.0 - p.allocated_pct)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpuMode {
    Unset,
    Share,
    Mig,
}

#[derive(Debug, Clone)]
struct Gpu {
    mode: GpuMode,
    /// Free compute for shares, milli-GPU.
    free: u16,
    /// MIG: memory slices taken, compute slices held, the instances.
    mask: u8,
    compute: u8,
    layout: Vec<Placed>,
}

impl Gpu {
    fn empty(&self) -> bool {
        self.free == FULL && self.mask == 0
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Cpu,
    Share(u16),
    Mig(&'static MigProfile),
    Whole(u8),
}

/// Replays one seed in MIG mode `mode`. `p` is the prepared trace (its node GPU models are
/// ignored: every GPU is an H100-80GB).
pub fn replay_mig(p: &Prepared, mode: MigMode, seed: u64, max_arrival_pct: u32) -> MigResult {
    let (seq, order) = arrival_order(p, seed, max_arrival_pct);
    let started = Instant::now();
    let profiles = mig::profiles(&MIG_MODEL);
    let start_mode = match mode {
        MigMode::SharesOnly => GpuMode::Share,
        MigMode::MigOnly => GpuMode::Mig,
        MigMode::Mixed => GpuMode::Unset,
    };
    let blank = Gpu {
        mode: start_mode,
        free: FULL,
        mask: 0,
        compute: 0,
        layout: Vec::new(),
    };
    let mut cpu: Vec<u32> = p.nodes.iter().map(|n| n.cpu_free).collect();
    let mut mem: Vec<u64> = p.nodes.iter().map(|n| n.mem_free).collect();
    let mut gpus: Vec<Vec<Gpu>> = p
        .nodes
        .iter()
        .map(|n| vec![blank.clone(); usize::from(n.n).min(MAX_NODE_GPUS)])
        .collect();
    let mut metric = Metric::new(p.total_gpus, max_arrival_pct);
    let mut times = Vec::with_capacity(seq.len());
    let (mut arrived, mut allocated, mut held) = (0u64, 0u64, 0u64);
    let (mut placed, mut failed, mut instances) = (0usize, 0usize, 0usize);
    for &ti in &seq {
        let t0 = Instant::now();
        let task = &p.tasks[ti];
        let d = task.demand;
        arrived += u64::from(d.gpu_total());
        let kind = match d.gpus {
            0 => Kind::Cpu,
            1 if d.is_share() => match (mode, profile_for_share(&MIG_MODEL, d.milli)) {
                (MigMode::SharesOnly, _) | (_, None) => Kind::Share(d.milli),
                (MigMode::MigOnly, Some(pr)) => Kind::Mig(pr),
                (MigMode::Mixed, Some(pr)) => {
                    // Rounded up by at most half a compute slice: 1000 / 14 milli.
                    if (pr.compute_milli() - u32::from(d.milli)) * 14 <= 1000 {
                        Kind::Mig(pr)
                    } else {
                        Kind::Share(d.milli)
                    }
                }
            },
            k => Kind::Whole(k),
        };
        // (score, node, gpu, mig start)
        let mut best: Option<(i64, usize, usize, u8)> = None;
        for &ni in &order {
            if cpu[ni] < d.cpu || mem[ni] < task.memory_mib {
                continue;
            }
            let cand = match kind {
                Kind::Cpu => Some((0, 0, 0)),
                Kind::Whole(k) => {
                    let empty = gpus[ni].iter().filter(|g| g.empty()).count();
                    (empty >= usize::from(k)).then(|| (-(empty as i64), 0, 0))
                }
                Kind::Share(m) => gpus[ni]
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.mode != GpuMode::Mig && g.free >= m)
                    .map(|(gi, g)| (-i64::from(g.free - m), gi, 0))
                    .reduce(|b, c| if c.0 > b.0 { c } else { b }),
                Kind::Mig(pr) => gpus[ni]
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.mode != GpuMode::Share)
                    .flat_map(|(gi, g)| {
                        pr.starts
                            .iter()
                            .filter(|&&s| g.mask & score::mig_range_mask(s, pr.size) == 0)
                            .map(move |&s| {
                                let sc = score::mig_score(profiles, g.mask, g.compute, pr, s);
                                (sc, gi, s)
                            })
                    })
                    .reduce(|b, c| if c.0 > b.0 { c } else { b }),
            };
            if let Some((sc, gi, s)) = cand
                && best.is_none_or(|b| sc > b.0)
            {
                best = Some((sc, ni, gi, s));
            }
        }
        let ok = match best {
            None => false,
            Some((_, ni, gi, start)) => {
                let node = &mut gpus[ni];
                let done = match kind {
                    Kind::Cpu => true,
                    Kind::Whole(k) => {
                        let mut left = usize::from(k);
                        for g in node.iter_mut().filter(|g| g.empty()) {
                            if left == 0 {
                                break;
                            }
                            g.free = 0;
                            g.mask = u8::MAX;
                            g.compute = mig::COMPUTE_SLICES;
                            left -= 1;
                        }
                        held += u64::from(d.gpu_total());
                        true
                    }
                    Kind::Share(m) => {
                        let g = &mut node[gi];
                        g.mode = GpuMode::Share;
                        g.free -= m;
                        held += u64::from(m);
                        true
                    }
                    Kind::Mig(pr) => {
                        let g = &mut node[gi];
                        // The layout rules NVML enforces; the scorer only looked at geometry.
                        if mig::check_create(&MIG_MODEL, &g.layout, pr.name, start).is_ok() {
                            g.mode = GpuMode::Mig;
                            g.mask |= score::mig_range_mask(start, pr.size);
                            g.compute += pr.compute_slices;
                            g.free = 0;
                            g.layout.push(Placed {
                                profile: pr.name.to_string(),
                                start,
                            });
                            held += u64::from(pr.compute_milli());
                            instances += 1;
                            true
                        } else {
                            false
                        }
                    }
                };
                if done {
                    cpu[ni] -= d.cpu;
                    mem[ni] -= task.memory_mib;
                }
                done
            }
        };
        if ok {
            allocated += u64::from(d.gpu_total());
            placed += 1;
        } else {
            failed += 1;
        }
        times.push(t0.elapsed().as_nanos() as u64);
        let h = metric.pct(held as f64);
        metric.record(arrived, allocated, h);
    }
    let wall = started.elapsed();
    let (median, p99) = median_p99(times);
    MigResult {
        mode,
        seed,
        points: metric
            .points(max_arrival_pct)
            .into_iter()
            .map(|(x, u, h)| MigPoint {
                arrival_pct: x,
                allocated_pct: u,
                held_pct: h,
            })
            .collect(),
        placed,
        failed,
        instances,
        decision_median_ns: median,
        decision_p99_ns: p99,
        wall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_map_to_the_smallest_covering_profile() {
        let name = |m| profile_for_share(&MIG_MODEL, m).map(|p| p.name);
        assert_eq!(name(100), Some("1g.10gb"));
        // 0.2 GPU: 1.4 compute slices -> 2g; 1.6 memory slices -> 2 -> 2g.20gb
        assert_eq!(name(200), Some("2g.20gb"));
        // 0.46: 3.22 compute slices -> 4g.40gb
        assert_eq!(name(460), Some("4g.40gb"));
        assert_eq!(name(810), Some("7g.80gb"));
        // 0.14: 0.98 compute slices -> 1; 1.12 memory slices -> 2: 1g.20gb
        assert_eq!(name(140), Some("1g.20gb"));
    }
}
