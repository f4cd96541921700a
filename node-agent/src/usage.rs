//! Maps a GPU sample to the slices that own the activity in it.
//!
//! The mapping rules (issue 5):
//! - On a MIG GPU, an instance's activity belongs to the slice that owns the instance; its weight is
//!   the instance's SM utilization times its size (compute slices / 7), so activities on one GPU add
//!   up in "percent of the whole GPU". Processes are mapped through their GPU instance id.
//! - On a shared (non-MIG) GPU, a process belongs to the slice whose allocation launched it (its
//!   `GREENSLICE_SLICE_ID`, see [`crate::backend::GpuBackend::process_owner`]). Its per-process SM
//!   utilization is its activity. A GPU held whole with no per-process figures takes the board
//!   utilization as the holder's activity.
//! - Whatever cannot be mapped (foreign processes, instances greenslice did not make, processes of a
//!   slice that does not hold this GPU) is kept as unattributed activity, never dropped.
//! - Every slice holding the GPU gets an entry, so an idle holder shows 0 activity rather than nothing.

use std::collections::BTreeMap;

use greenslice_core::inventory::Gpu;
use greenslice_core::mig;
use greenslice_core::sample::GpuSample;
use greenslice_proto::v1 as pb;

/// A slice the kubelet granted (see [`crate::kubelet::grants`]): its GPU's or MIG instance's
/// activity belongs to it as a tenant slice's does, though the backend does not hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeletHolder {
    pub gpu_uuid: String,
    /// The MIG instance it holds; `None` for a whole GPU or a share.
    pub gpu_instance_id: Option<u32>,
    pub slice_id: String,
    /// Whether it holds the GPU whole.
    pub whole: bool,
    /// A share's limits (compute fraction, memory bytes); `None` for whole GPUs and MIG.
    pub share: Option<(f64, u64)>,
}

/// The holders the kubelet's allocations make.
pub fn kubelet_holders(report: &pb::KubeletAllocations) -> Vec<KubeletHolder> {
    let mut out = Vec::new();
    for a in &report.allocations {
        let kind = a.spec.as_ref().and_then(|s| s.kind.as_ref());
        let whole = matches!(kind, Some(pb::slice_spec::Kind::Whole(_)));
        let share = match kind {
            Some(pb::slice_spec::Kind::Share(s)) => Some((s.compute_fraction, s.memory_bytes)),
            _ => None,
        };
        for g in &a.gpu_uuids {
            out.push(KubeletHolder {
                gpu_uuid: g.clone(),
                gpu_instance_id: a.mig.as_ref().map(|m| m.gpu_instance_id),
                slice_id: a.slice_id.clone(),
                whole,
                share,
            });
        }
    }
    out
}

#[derive(Default)]
struct Acc {
    sm_pct: f64,
    memory_bytes: u64,
    processes: u32,
    known: bool,
    /// DRAM and tensor activity, percent of the whole GPU, where measured.
    dram_pct: Option<f64>,
    tensor_pct: Option<f64>,
}

/// Adds `v` to an optional sum: a measured figure makes the sum measured.
fn add_known(sum: &mut Option<f64>, v: Option<f64>) {
    if let Some(v) = v {
        *sum = Some(sum.unwrap_or(0.0) + v);
    }
}

/// Maps one GPU sample to slices. `owner` answers which slice launched a process; `kubelet` are
/// the slices the kubelet granted on the node.
pub fn map_sample(
    at_ms: i64,
    s: &GpuSample,
    gpu: &Gpu,
    owner: &dyn Fn(u32) -> Option<String>,
    kubelet: &[KubeletHolder],
) -> pb::GpuSample {
    let kubelet: Vec<&KubeletHolder> = kubelet.iter().filter(|k| k.gpu_uuid == gpu.uuid).collect();
    let mut slices: BTreeMap<String, Acc> = BTreeMap::new();
    let mut unattributed = 0.0;
    // DRAM and tensor activity nobody owns; `None` where the device gives no such figure.
    let mut unattributed_dram: Option<f64> = None;
    let mut unattributed_tensor: Option<f64> = None;
    let procs = s.processes.as_deref().unwrap_or(&[]);
    if gpu.mig_enabled {
        for inst in &gpu.mig_instances {
            let size =
                mig::profile(&gpu.model, &inst.profile).map_or(0.0, |p| p.compute_fraction());
            // DRAM bandwidth is split by memory slices (of 8), compute by compute slices.
            let memory_share = f64::from(inst.size) / f64::from(mig::MEMORY_SLICES);
            let act = s
                .mig
                .iter()
                .find(|m| m.gpu_instance_id == inst.gpu_instance_id);
            let sm = act.and_then(|a| a.sm_util_pct).map(|u| u * size);
            let dram = act
                .and_then(|a| a.dram_bw_util_pct)
                .map(|u| u * memory_share);
            let tensor = act.and_then(|a| a.tensor_util_pct).map(|u| u * size);
            let (mem, n) = procs
                .iter()
                .filter(|p| p.gpu_instance_id == Some(inst.gpu_instance_id))
                .fold((0u64, 0u32), |(m, n), p| {
                    (m + p.used_memory_bytes.unwrap_or(0), n + 1)
                });
            let holder = inst.slice_id.clone().or_else(|| {
                kubelet
                    .iter()
                    .find(|k| k.gpu_instance_id == Some(inst.gpu_instance_id))
                    .map(|k| k.slice_id.clone())
            });
            match &holder {
                Some(id) => {
                    let a = slices.entry(id.clone()).or_default();
                    a.sm_pct += sm.unwrap_or(0.0);
                    a.known |= sm.is_some();
                    a.memory_bytes += mem;
                    a.processes += n;
                    add_known(&mut a.dram_pct, dram);
                    add_known(&mut a.tensor_pct, tensor);
                }
                None => {
                    unattributed += sm.unwrap_or(0.0);
                    add_known(&mut unattributed_dram, dram);
                    add_known(&mut unattributed_tensor, tensor);
                }
            }
        }
        // With GPM every instance's figures are measured: nothing unowned is 0, not unknown.
        if !s.mig.is_empty() && s.mig.iter().all(|m| m.dram_bw_util_pct.is_some()) {
            unattributed_dram.get_or_insert(0.0);
        }
        if !s.mig.is_empty() && s.mig.iter().all(|m| m.tensor_util_pct.is_some()) {
            unattributed_tensor.get_or_insert(0.0);
        }
    } else {
        let whole_holder = gpu.whole_slice_id.clone().or_else(|| {
            kubelet
                .iter()
                .find(|k| k.whole && k.gpu_instance_id.is_none())
                .map(|k| k.slice_id.clone())
        });
        let holders: Vec<&str> = gpu
            .shares
            .iter()
            .map(|sh| sh.slice_id.as_str())
            .chain(whole_holder.as_deref())
            .chain(
                kubelet
                    .iter()
                    .filter(|k| !k.whole && k.gpu_instance_id.is_none())
                    .map(|k| k.slice_id.as_str()),
            )
            .collect();
        for h in &holders {
            slices.entry(h.to_string()).or_default();
        }
        // A GPU held whole by one slice runs only that slice's work (exclusive compute mode):
        // every process on it is the holder's, whatever its environment says.
        let sole_whole = whole_holder.as_deref().filter(|_| holders.len() == 1);
        let mapped = |pid: u32| {
            owner(pid)
                .filter(|id| holders.contains(&id.as_str()))
                .or_else(|| sole_whole.map(str::to_string))
        };
        if let Some(pu) = &s.process_util {
            // Per-process memory utilization is each process's DRAM activity (NVML's memUtil).
            unattributed_dram = Some(0.0);
            for p in pu {
                match mapped(p.pid) {
                    Some(id) => {
                        let a = slices.entry(id).or_default();
                        a.sm_pct += f64::from(p.sm_pct);
                        a.known = true;
                        add_known(&mut a.dram_pct, Some(f64::from(p.mem_pct)));
                    }
                    None => {
                        unattributed += f64::from(p.sm_pct);
                        add_known(&mut unattributed_dram, Some(f64::from(p.mem_pct)));
                    }
                }
            }
            for a in slices.values_mut() {
                a.known = true;
                a.dram_pct.get_or_insert(0.0);
            }
        } else if let (Some(w), Some(u)) = (&whole_holder, s.gpu_util_pct) {
            let a = slices.entry(w.clone()).or_default();
            a.sm_pct = f64::from(u);
            a.known = true;
            a.dram_pct = s.mem_util_pct.map(f64::from);
            unattributed_dram = a.dram_pct.map(|_| 0.0);
        }
        for p in procs {
            if let Some(id) = mapped(p.pid) {
                let a = slices.entry(id).or_default();
                a.memory_bytes += p.used_memory_bytes.unwrap_or(0);
                a.processes += 1;
            }
        }
        // Processes no holder can be told from (no slice in their environment) on a GPU that
        // holders share: any of them may be one holder's work, so no holder's activity is known,
        // and each may have them (never 0% and idle: such a slice is never reclaimed as idle).
        let unowned: std::collections::BTreeSet<u32> = procs
            .iter()
            .map(|p| p.pid)
            .chain(
                s.process_util
                    .iter()
                    .flatten()
                    .filter(|u| u.sm_pct > 0)
                    .map(|u| u.pid),
            )
            // A process naming another slice is that slice's (misplaced), not one of these.
            .filter(|pid| sole_whole.is_none() && owner(*pid).is_none())
            .collect();
        if !unowned.is_empty() {
            let n = u32::try_from(unowned.len()).unwrap_or(u32::MAX);
            for a in slices.values_mut() {
                a.known = false;
                a.processes = a.processes.saturating_add(n);
            }
        }
    }
    pb::GpuSample {
        at_unix_ms: at_ms,
        gpu_uuid: s.gpu_uuid.clone(),
        gpu_util_pct: s.gpu_util_pct,
        mem_util_pct: s.mem_util_pct,
        power_mw: s.power_mw,
        energy_mj: s.energy_mj,
        memory_used_bytes: s.memory_used_bytes,
        slices: slices
            .into_iter()
            .map(|(slice_id, a)| pb::SliceActivity {
                slice_id,
                sm_pct: a.sm_pct,
                memory_bytes: a.memory_bytes,
                processes: a.processes,
                activity_known: a.known,
                dram_pct: a.dram_pct,
                tensor_pct: a.tensor_pct,
            })
            .collect(),
        unattributed_sm_pct: unattributed,
        unattributed_dram_pct: unattributed_dram,
        unattributed_tensor_pct: unattributed_tensor,
        sm_clock_mhz: s.sm_clock_mhz,
        max_sm_clock_mhz: s.max_sm_clock_mhz,
        unsupported: s
            .unsupported
            .iter()
            .map(|f| {
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect(),
        no_compute_processes: s.processes.as_ref().is_some_and(|p| p.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenslice_core::gpu::GpuModel;
    use greenslice_core::inventory::{MigInstance, Share};
    use greenslice_core::sample::{GpuProcess, MigActivity, ProcessUtil};

    fn gpu(mig_enabled: bool) -> Gpu {
        Gpu {
            uuid: "GPU-1".into(),
            index: 0,
            model: GpuModel::H100Sxm5_80Gb,
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled,
            pci_bus_id: String::new(),
            power_limit_mw: 700_000,
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        }
    }

    fn proc_(pid: u32, gi: Option<u32>, mem: u64) -> GpuProcess {
        GpuProcess {
            pid,
            used_memory_bytes: Some(mem),
            gpu_instance_id: gi,
            compute_instance_id: gi.map(|_| 0),
        }
    }

    #[test]
    fn shared_gpu_processes_belong_to_the_share_that_launched_them() {
        let mut g = gpu(false);
        for id in ["a", "b", "c"] {
            g.shares.push(Share {
                slice_id: id.into(),
                compute_fraction: 0.25,
                memory_bytes: 1 << 30,
            });
        }
        let mut s = GpuSample::empty("GPU-1");
        s.processes = Some(vec![
            proc_(10, None, 100),
            proc_(11, None, 200),
            proc_(12, None, 300),
        ]);
        s.process_util = Some(vec![
            ProcessUtil {
                pid: 10,
                sm_pct: 20,
                mem_pct: 0,
                last_seen_us: 1,
            },
            ProcessUtil {
                pid: 11,
                sm_pct: 5,
                mem_pct: 0,
                last_seen_us: 1,
            },
            ProcessUtil {
                pid: 12,
                sm_pct: 7,
                mem_pct: 0,
                last_seen_us: 1,
            },
        ]);
        // pid 12 claims a slice that does not hold this GPU: unattributed.
        let owner = |pid: u32| match pid {
            10 => Some("a".to_string()),
            11 => Some("b".to_string()),
            12 => Some("elsewhere".to_string()),
            _ => None,
        };
        let m = map_sample(5, &s, &g, &owner, &[]);
        let by: BTreeMap<_, _> = m.slices.iter().map(|a| (a.slice_id.as_str(), a)).collect();
        assert_eq!(by["a"].sm_pct, 20.0);
        assert_eq!(by["a"].memory_bytes, 100);
        assert_eq!(by["b"].sm_pct, 5.0);
        assert_eq!(by["c"].sm_pct, 0.0, "an idle holder shows 0 activity");
        assert!(by["c"].activity_known);
        assert_eq!(m.unattributed_sm_pct, 7.0);
        assert!(!by.contains_key("elsewhere"));
    }

    #[test]
    fn a_process_naming_no_slice_makes_every_share_of_its_gpu_unknown_never_idle() {
        let mut g = gpu(false);
        for id in ["a", "b"] {
            g.shares.push(Share {
                slice_id: id.into(),
                compute_fraction: 0.25,
                memory_bytes: 1 << 30,
            });
        }
        let mut s = GpuSample::empty("GPU-1");
        s.processes = Some(vec![proc_(10, None, 100), proc_(99, None, 500)]);
        s.process_util = Some(vec![ProcessUtil {
            pid: 99,
            sm_pct: 60,
            mem_pct: 0,
            last_seen_us: 1,
        }]);
        // 99 names no slice: it may be a's or b's work.
        let owner = |pid: u32| (pid == 10).then(|| "a".to_string());
        let m = map_sample(5, &s, &g, &owner, &[]);
        let by: BTreeMap<_, _> = m.slices.iter().map(|a| (a.slice_id.as_str(), a)).collect();
        for id in ["a", "b"] {
            assert!(!by[id].activity_known, "{id}'s activity cannot be known");
            assert!(
                by[id].processes >= 1,
                "{id} may be running the unknown process"
            );
        }
        assert_eq!(m.unattributed_sm_pct, 60.0);
        assert_eq!(by["a"].memory_bytes, 100);

        // Held whole by one slice: every process on it is the holder's.
        let mut w = gpu(false);
        w.whole_slice_id = Some("w".into());
        let m = map_sample(5, &s, &w, &|_| None, &[]);
        assert_eq!(m.slices.len(), 1);
        let a = &m.slices[0];
        assert_eq!(a.slice_id, "w");
        assert!(a.activity_known);
        assert_eq!(a.sm_pct, 60.0);
        assert_eq!(a.processes, 2);
        assert_eq!(a.memory_bytes, 600);
        assert_eq!(m.unattributed_sm_pct, 0.0);
    }

    #[test]
    fn mig_activity_belongs_to_the_instance_slice_weighted_by_size() {
        let mut g = gpu(true);
        g.mig_instances.push(MigInstance {
            gpu_instance_id: 1,
            profile: "3g.40gb".into(),
            start: 0,
            size: 4,
            mig_uuid: "MIG-1".into(),
            slice_id: Some("m".into()),
        });
        g.mig_instances.push(MigInstance {
            gpu_instance_id: 2,
            profile: "1g.10gb".into(),
            start: 4,
            size: 1,
            mig_uuid: "MIG-2".into(),
            slice_id: None,
        });
        let mut s = GpuSample::empty("GPU-1");
        s.processes = Some(vec![proc_(10, Some(1), 4 << 30)]);
        s.mig = vec![
            MigActivity {
                gpu_instance_id: 1,
                sm_util_pct: Some(70.0),
                dram_bw_util_pct: None,
                tensor_util_pct: None,
            },
            MigActivity {
                gpu_instance_id: 2,
                sm_util_pct: Some(70.0),
                dram_bw_util_pct: None,
                tensor_util_pct: None,
            },
        ];
        let m = map_sample(5, &s, &g, &|_| None, &[]);
        assert_eq!(m.slices.len(), 1);
        assert!(
            (m.slices[0].sm_pct - 30.0).abs() < 1e-9,
            "70% of 3/7 of the GPU"
        );
        assert_eq!(m.slices[0].memory_bytes, 4 << 30);
        assert_eq!(m.slices[0].processes, 1);
        assert!(
            (m.unattributed_sm_pct - 10.0).abs() < 1e-9,
            "instance nobody owns"
        );
    }

    #[test]
    fn shared_gpu_dram_activity_is_each_slice_s_processes_memory_utilization() {
        let mut g = gpu(false);
        for id in ["a", "b"] {
            g.shares.push(Share {
                slice_id: id.into(),
                compute_fraction: 0.5,
                memory_bytes: 1 << 30,
            });
        }
        let mut s = GpuSample::empty("GPU-1");
        s.processes = Some(vec![
            proc_(10, None, 1),
            proc_(11, None, 1),
            proc_(12, None, 1),
        ]);
        s.sm_clock_mhz = Some(1500);
        s.max_sm_clock_mhz = Some(1980);
        let pu = |pid, sm, mem| ProcessUtil {
            pid,
            sm_pct: sm,
            mem_pct: mem,
            last_seen_us: 1,
        };
        s.process_util = Some(vec![pu(10, 10, 60), pu(11, 5, 20), pu(12, 0, 9)]);
        // 10 and 11 are a's; 12 names a slice that is not on this GPU.
        let owner = |pid: u32| match pid {
            10 | 11 => Some("a".to_string()),
            _ => Some("elsewhere".to_string()),
        };
        let m = map_sample(5, &s, &g, &owner, &[]);
        let by: BTreeMap<_, _> = m.slices.iter().map(|a| (a.slice_id.as_str(), a)).collect();
        assert_eq!(
            by["a"].dram_pct,
            Some(80.0),
            "summed over the slice's processes"
        );
        assert_eq!(by["b"].dram_pct, Some(0.0), "measured, and idle");
        assert_eq!(
            by["a"].tensor_pct, None,
            "NVML has no per-process tensor figure"
        );
        assert_eq!(m.unattributed_dram_pct, Some(9.0));
        assert_eq!(
            (m.sm_clock_mhz, m.max_sm_clock_mhz),
            (Some(1500), Some(1980))
        );
        // No per-process figures: no DRAM signal either.
        s.process_util = None;
        let m = map_sample(5, &s, &g, &owner, &[]);
        assert!(m.slices.iter().all(|a| a.dram_pct.is_none()));
        assert_eq!(m.unattributed_dram_pct, None);
    }

    #[test]
    fn mig_dram_is_weighted_by_memory_slices_and_tensor_by_compute_slices() {
        let mut g = gpu(true);
        for (gi, profile, start, size, slice) in [
            (1, "3g.40gb", 0u8, 4u8, Some("m")),
            (2, "1g.10gb", 4, 1, None),
        ] {
            g.mig_instances.push(MigInstance {
                gpu_instance_id: gi,
                profile: profile.into(),
                start,
                size,
                mig_uuid: format!("MIG-{gi}"),
                slice_id: slice.map(str::to_string),
            });
        }
        let mut s = GpuSample::empty("GPU-1");
        s.mig = vec![
            MigActivity {
                gpu_instance_id: 1,
                sm_util_pct: Some(70.0),
                dram_bw_util_pct: Some(50.0),
                tensor_util_pct: Some(35.0),
            },
            MigActivity {
                gpu_instance_id: 2,
                sm_util_pct: Some(70.0),
                dram_bw_util_pct: Some(80.0),
                tensor_util_pct: Some(0.0),
            },
        ];
        let m = map_sample(5, &s, &g, &|_| None, &[]);
        let a = &m.slices[0];
        assert!(
            (a.dram_pct.unwrap() - 25.0).abs() < 1e-9,
            "50% of 4/8 of the bandwidth"
        );
        assert!(
            (a.tensor_pct.unwrap() - 15.0).abs() < 1e-9,
            "35% of 3/7 of the GPU"
        );
        assert!(
            (m.unattributed_dram_pct.unwrap() - 10.0).abs() < 1e-9,
            "80% of 1/8"
        );
        assert_eq!(m.unattributed_tensor_pct, Some(0.0));
        // An A100 in MIG mode (no GPM): no DRAM or tensor figure at all.
        s.mig.clear();
        let m = map_sample(5, &s, &g, &|_| None, &[]);
        assert_eq!(
            (m.slices[0].dram_pct, m.unattributed_dram_pct),
            (None, None)
        );
    }

    #[test]
    fn a100_mig_without_activity_reports_it_unknown() {
        let mut g = gpu(true);
        g.mig_instances.push(MigInstance {
            gpu_instance_id: 1,
            profile: "7g.80gb".into(),
            start: 0,
            size: 8,
            mig_uuid: "MIG-1".into(),
            slice_id: Some("m".into()),
        });
        let s = GpuSample::empty("GPU-1");
        let m = map_sample(5, &s, &g, &|_| None, &[]);
        assert!(!m.slices[0].activity_known);
    }

    #[test]
    fn whole_gpu_without_process_figures_takes_board_utilization() {
        let mut g = gpu(false);
        g.whole_slice_id = Some("w".into());
        let mut s = GpuSample::empty("GPU-1");
        s.gpu_util_pct = Some(64);
        s.processes = Some(vec![]);
        let m = map_sample(5, &s, &g, &|_| None, &[]);
        assert_eq!(m.slices[0].sm_pct, 64.0);
        assert!(m.no_compute_processes);
    }
}
