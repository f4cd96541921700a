//! NVML structures to greenslice domain types: pure functions, tested with constructed values.

use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance, Share};
use greenslice_core::mig::{self, MigProfile};
use greenslice_core::sample::{GpuProcess, GpuSample, MigActivity, ProcessUtil, SampleField};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{ProcessInfo, ProcessUtilizationSample};
use nvml_wrapper::struct_wrappers::gpm::GpmMetricResult;
use thiserror::Error;

use super::mig_raw::RawGpuInstance;

/// Why an NVML answer does not fit the domain model.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertError {
    #[error(
        "the driver reports MIG profile id {profile_id} on {model}, which greenslice has no table for"
    )]
    UnknownProfile { model: String, profile_id: u32 },
    #[error("the driver reports GPU instance {gi} at memory slices {start}+{size}, outside 0..8")]
    BadPlacement { gi: u32, start: u32, size: u32 },
}

/// The profile of `model` whose NVML profile id (nvmlGpuInstanceProfileInfo_t::id, the id
/// nvidia-smi prints) is `profile_id`.
pub fn profile_by_id(model: &GpuModel, profile_id: u32) -> Option<&'static MigProfile> {
    mig::profiles(model).iter().find(|p| p.smi_id == profile_id)
}

/// A GPU instance as NVML lists it, as a [`MigInstance`].
pub fn mig_instance(
    model: &GpuModel,
    raw: &RawGpuInstance,
    mig_uuid: String,
    slice_id: Option<String>,
) -> Result<MigInstance, ConvertError> {
    let p = profile_by_id(model, raw.profile_id).ok_or_else(|| ConvertError::UnknownProfile {
        model: model.name().to_string(),
        profile_id: raw.profile_id,
    })?;
    let bad = || ConvertError::BadPlacement {
        gi: raw.id,
        start: raw.start,
        size: raw.size,
    };
    let start = u8::try_from(raw.start).map_err(|_| bad())?;
    let size = u8::try_from(raw.size).map_err(|_| bad())?;
    if size == 0 || u16::from(start) + u16::from(size) > u16::from(mig::MEMORY_SLICES) {
        return Err(bad());
    }
    Ok(MigInstance {
        gpu_instance_id: raw.id,
        profile: p.name.to_string(),
        start,
        size,
        mig_uuid,
        slice_id,
    })
}

/// Legal first slices from the driver's possible placements ((start, size) ranges), ascending;
/// ranges outside the GPU's 8 memory slices are dropped.
pub fn placement_starts(ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut v: Vec<u8> = ranges
        .iter()
        .filter(|(s, n)| *n > 0 && s + n <= u32::from(mig::MEMORY_SLICES))
        .filter_map(|(s, _)| u8::try_from(*s).ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// What discovery learned about one physical GPU; each query that failed is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFacts {
    pub index: u32,
    pub uuid: String,
    pub name: Option<String>,
    /// Total memory, bytes.
    pub memory_total_bytes: Option<u64>,
    /// (current, pending) MIG mode, `None` when the GPU does not support MIG.
    pub mig_mode: Option<(u32, u32)>,
    pub pci_bus_id: Option<String>,
    /// NVML's `pciDeviceId`: PCI device id (upper 16 bits) and vendor id (lower 16 bits).
    pub pci_device_id: Option<u32>,
    /// Enforced power limit, mW.
    pub power_limit_mw: Option<u32>,
    pub healthy: bool,
    pub mig_instances: Vec<MigInstance>,
    pub shares: Vec<Share>,
    pub whole_slice_id: Option<String>,
}

/// The model of a device: by PCI device id, by name when the id is unknown or missing.
pub fn model(pci_device_id: Option<u32>, name: Option<&str>) -> GpuModel {
    match (pci_device_id.and_then(GpuModel::from_pci_device_id), name) {
        (Some(m), _) => m,
        (None, Some(n)) => GpuModel::from_name(n),
        (None, None) => GpuModel::Other("unknown".into()),
    }
}

/// Discovery facts as a [`Gpu`]. The model comes from the PCI device id, the name only as a
/// fallback ([`model`]). Missing memory falls back to the model's nominal figure; a missing power
/// limit is 0 ("unknown").
pub fn gpu(f: DeviceFacts) -> Gpu {
    let model = model(f.pci_device_id, f.name.as_deref());
    Gpu {
        memory_bytes: f.memory_total_bytes.unwrap_or_else(|| model.memory_bytes()),
        mig_capable: f.mig_mode.is_some() && model.mig_capable(),
        mig_enabled: f.mig_mode.is_some_and(|(current, _)| current == 1),
        pci_bus_id: f.pci_bus_id.unwrap_or_default(),
        power_limit_mw: f.power_limit_mw.unwrap_or(0),
        healthy: f.healthy,
        mig_instances: f.mig_instances,
        shares: f.shares,
        whole_slice_id: f.whole_slice_id,
        uuid: f.uuid,
        index: f.index,
        model,
    }
}

/// A running compute process.
pub fn process(p: &ProcessInfo) -> GpuProcess {
    GpuProcess {
        pid: p.pid,
        used_memory_bytes: match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => Some(b),
            UsedGpuMemory::Unavailable => None,
        },
        gpu_instance_id: p.gpu_instance_id,
        compute_instance_id: p.compute_instance_id,
    }
}

/// Per-process samples newer than `after_us`, the newest per PID, sorted by PID.
pub fn process_utils(samples: &[ProcessUtilizationSample], after_us: u64) -> Vec<ProcessUtil> {
    let mut by_pid: std::collections::BTreeMap<u32, &ProcessUtilizationSample> =
        std::collections::BTreeMap::new();
    for s in samples.iter().filter(|s| s.timestamp > after_us) {
        let e = by_pid.entry(s.pid).or_insert(s);
        if s.timestamp > e.timestamp {
            *e = s;
        }
    }
    by_pid
        .values()
        .map(|s| ProcessUtil {
            pid: s.pid,
            sm_pct: s.sm_util.min(100),
            mem_pct: s.mem_util.min(100),
            last_seen_us: s.timestamp,
        })
        .collect()
}

/// The metrics asked of GPM for each MIG instance, in this order.
pub const GPM_METRICS: [GpmMetricId; 3] = [
    GpmMetricId::SmUtil,
    GpmMetricId::DramBwUtil,
    GpmMetricId::AnyTensorUtil,
];

/// GPM metric results (for [`GPM_METRICS`]) as a MIG instance's activity; a failed metric is `None`.
pub fn mig_activity(
    gpu_instance_id: u32,
    results: &[Result<GpmMetricResult, NvmlError>],
) -> MigActivity {
    let find = |id: GpmMetricId| {
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find(|r| r.metric_id == id)
            .map(|r| r.value.clamp(0.0, 100.0))
    };
    MigActivity {
        gpu_instance_id,
        sm_util_pct: find(GpmMetricId::SmUtil),
        dram_bw_util_pct: find(GpmMetricId::DramBwUtil),
        tensor_util_pct: find(GpmMetricId::AnyTensorUtil),
    }
}

/// What one NVML query means for a sample field.
#[derive(Debug)]
pub enum Reading<T> {
    /// The value.
    Value(T),
    /// The device does not support the query: marked in the sample.
    Unsupported,
    /// The query failed this time (the GPU may be lost); nothing is marked.
    Failed(NvmlError),
}

/// Files one NVML answer for `field` into `sample`: a value, an unsupported mark, or a failure
/// handed back for logging and health.
pub fn read<T>(r: Result<T, NvmlError>, field: SampleField, sample: &mut GpuSample) -> Reading<T> {
    match r {
        Ok(v) => Reading::Value(v),
        Err(NvmlError::NotSupported) => {
            sample.mark_unsupported(field);
            Reading::Unsupported
        }
        Err(e) => Reading::Failed(e),
    }
}

impl<T> Reading<T> {
    /// The value, if there is one.
    pub fn value(self) -> Option<T> {
        match self {
            Reading::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// Whether an `Nvml::init` error means "no NVIDIA driver here" (library or driver missing).
pub fn is_no_driver(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::DriverNotLoaded
            | NvmlError::FailedToLoadSymbol(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvml_wrapper::struct_wrappers::gpm::GpmMetricInfo;

    fn raw(id: u32, profile_id: u32, start: u32, size: u32) -> RawGpuInstance {
        RawGpuInstance {
            id,
            profile_id,
            start,
            size,
        }
    }

    #[test]
    fn gpu_instances_map_profile_ids_to_names() {
        let h100 = GpuModel::H100Sxm5_80Gb;
        // nvidia-smi: 3g.40gb is profile id 9, 1g.10gb id 19, 7g.80gb id 0.
        let m = mig_instance(&h100, &raw(2, 9, 4, 4), "MIG-x".into(), None).unwrap();
        assert_eq!(
            (m.profile.as_str(), m.start, m.size, m.gpu_instance_id),
            ("3g.40gb", 4, 4, 2)
        );
        let a100 = GpuModel::A100Sxm4_40Gb;
        let m = mig_instance(&a100, &raw(7, 19, 6, 1), "MIG-y".into(), Some("s1".into())).unwrap();
        assert_eq!(m.profile, "1g.5gb");
        assert_eq!(m.slice_id.as_deref(), Some("s1"));
        let h200 = GpuModel::H200Sxm5_141Gb;
        assert_eq!(
            mig_instance(&h200, &raw(1, 0, 0, 8), String::new(), None)
                .unwrap()
                .profile,
            "7g.141gb"
        );
    }

    #[test]
    fn unknown_profiles_and_bad_placements_are_errors() {
        let h100 = GpuModel::H100Sxm5_80Gb;
        assert_eq!(
            mig_instance(&h100, &raw(1, 99, 0, 1), String::new(), None),
            Err(ConvertError::UnknownProfile {
                model: "H100-SXM5-80GB".into(),
                profile_id: 99
            })
        );
        assert!(matches!(
            mig_instance(&h100, &raw(1, 9, 6, 4), String::new(), None),
            Err(ConvertError::BadPlacement { .. })
        ));
        assert!(matches!(
            mig_instance(&h100, &raw(1, 9, 300, 4), String::new(), None),
            Err(ConvertError::BadPlacement { .. })
        ));
    }

    #[test]
    fn placements_become_sorted_starts() {
        assert_eq!(placement_starts(&[(4, 4), (0, 4)]), vec![0, 4]);
        assert_eq!(
            placement_starts(&[(6, 2), (0, 2), (9, 1), (7, 4)]),
            vec![0, 6]
        );
        assert!(placement_starts(&[]).is_empty());
    }

    fn facts() -> DeviceFacts {
        DeviceFacts {
            index: 3,
            uuid: "GPU-abc".into(),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            memory_total_bytes: Some(85_520_809_984),
            mig_mode: Some((1, 1)),
            pci_bus_id: Some("00000000:4E:00.0".into()),
            pci_device_id: Some(0x2330_10DE),
            power_limit_mw: Some(700_000),
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        }
    }

    #[test]
    fn device_facts_become_a_gpu() {
        let g = gpu(facts());
        assert_eq!(g.model, GpuModel::H100Sxm5_80Gb);
        assert_eq!(g.memory_bytes, 85_520_809_984);
        assert!(g.mig_capable && g.mig_enabled);
        assert_eq!(g.pci_bus_id, "00000000:4E:00.0");
        assert_eq!((g.index, g.power_limit_mw), (3, 700_000));

        let mut f = facts();
        f.name = Some("Tesla T4".into());
        f.pci_device_id = Some(0x1EB8_10DE);
        f.mig_mode = None;
        f.memory_total_bytes = None;
        f.power_limit_mw = None;
        f.pci_bus_id = None;
        let g = gpu(f);
        assert!(!g.mig_capable && !g.mig_enabled);
        assert_eq!(g.memory_bytes, GpuModel::Other("x".into()).memory_bytes());
        assert_eq!((g.power_limit_mw, g.pci_bus_id.as_str()), (0, ""));

        // MIG mode pending (enabled after a reset) is not MIG mode yet.
        let mut f = facts();
        f.mig_mode = Some((0, 1));
        assert!(!gpu(f).mig_enabled);
    }

    #[test]
    fn the_model_comes_from_the_pci_device_id_then_the_name() {
        // NVML names a GH200 "NVIDIA GH200 480GB": its id says GH200, whatever the name.
        let mut f = facts();
        f.name = Some("NVIDIA GH200 480GB".into());
        f.pci_device_id = Some(0x2342_10DE);
        let g = gpu(f);
        assert_eq!(g.model, GpuModel::Gh200_96Gb);
        assert!(g.mig_capable);
        // An H100 PCIe board reporting an SXM-like name is the PCIe model by its id.
        assert_eq!(
            model(Some(0x2331_10DE), Some("NVIDIA H100 80GB HBM3")),
            GpuModel::H100Pcie80Gb
        );
        // Unknown id: the name decides; neither known: Other, and no MIG.
        assert_eq!(
            model(Some(0xFFFF_10DE), Some("NVIDIA A30")),
            GpuModel::A30_24Gb
        );
        assert_eq!(model(None, None), GpuModel::Other("unknown".into()));
        let mut f = facts();
        f.name = Some("NVIDIA L4".into());
        f.pci_device_id = Some(0x27B8_10DE);
        let g = gpu(f);
        assert_eq!(g.model, GpuModel::Other("NVIDIA L4".into()));
        assert!(
            !g.mig_capable,
            "a model without a table is not placed on as MIG"
        );
    }

    #[test]
    fn processes_keep_unavailable_memory_unknown() {
        let p = process(&ProcessInfo {
            pid: 42,
            used_gpu_memory: UsedGpuMemory::Used(1 << 30),
            gpu_instance_id: Some(2),
            compute_instance_id: Some(0),
        });
        assert_eq!(p.used_memory_bytes, Some(1 << 30));
        assert_eq!((p.pid, p.gpu_instance_id), (42, Some(2)));
        let p = process(&ProcessInfo {
            pid: 43,
            used_gpu_memory: UsedGpuMemory::Unavailable,
            gpu_instance_id: None,
            compute_instance_id: None,
        });
        assert_eq!(p.used_memory_bytes, None);
    }

    fn pus(pid: u32, timestamp: u64, sm: u32) -> ProcessUtilizationSample {
        ProcessUtilizationSample {
            pid,
            timestamp,
            sm_util: sm,
            mem_util: sm / 2,
            enc_util: 0,
            dec_util: 0,
        }
    }

    #[test]
    fn process_samples_keep_only_newer_and_latest_per_pid() {
        let s = [
            pus(7, 100, 10),
            pus(7, 300, 30),
            pus(5, 200, 50),
            pus(9, 50, 90),
        ];
        let u = process_utils(&s, 100);
        assert_eq!(
            u,
            vec![
                ProcessUtil {
                    pid: 5,
                    sm_pct: 50,
                    mem_pct: 25,
                    last_seen_us: 200
                },
                ProcessUtil {
                    pid: 7,
                    sm_pct: 30,
                    mem_pct: 15,
                    last_seen_us: 300
                },
            ]
        );
    }

    fn metric(id: GpmMetricId, value: f64) -> Result<GpmMetricResult, NvmlError> {
        Ok(GpmMetricResult {
            metric_id: id,
            value,
            metric_info: GpmMetricInfo {
                short_name: String::new(),
                long_name: String::new(),
                unit: "%".into(),
            },
        })
    }

    #[test]
    fn gpm_results_become_mig_activity() {
        let a = mig_activity(
            3,
            &[
                metric(GpmMetricId::SmUtil, 41.5),
                Err(NvmlError::NotSupported),
            ],
        );
        assert_eq!(a.gpu_instance_id, 3);
        assert_eq!(a.sm_util_pct, Some(41.5));
        assert_eq!(a.dram_bw_util_pct, None);
        assert_eq!(a.tensor_util_pct, None);
        let a = mig_activity(
            1,
            &[
                metric(GpmMetricId::DramBwUtil, 180.0),
                metric(GpmMetricId::AnyTensorUtil, 37.5),
            ],
        );
        assert_eq!(a.dram_bw_util_pct, Some(100.0));
        assert_eq!(a.tensor_util_pct, Some(37.5));
    }

    #[test]
    fn not_supported_is_marked_and_other_errors_are_not() {
        let mut s = GpuSample::empty("GPU-1");
        assert!(matches!(
            read(Ok(5u32), SampleField::Power, &mut s),
            Reading::Value(5)
        ));
        assert!(matches!(
            read::<u32>(Err(NvmlError::NotSupported), SampleField::Energy, &mut s),
            Reading::Unsupported
        ));
        assert!(matches!(
            read::<u32>(Err(NvmlError::GpuLost), SampleField::Power, &mut s),
            Reading::Failed(NvmlError::GpuLost)
        ));
        assert_eq!(s.unsupported, vec![SampleField::Energy]);
    }

    #[test]
    fn library_errors_mean_no_driver() {
        assert!(is_no_driver(&NvmlError::DriverNotLoaded));
        assert!(is_no_driver(&NvmlError::LibraryNotFound));
        assert!(!is_no_driver(&NvmlError::NoPermission));
    }
}
