//! gpu-sim's MIG tables, greenslice-core's and `../shared/data/mig-profiles.csv` were written
//! separately; here they must agree, so a discrepancy is found rather than hidden.

use std::path::PathBuf;

use gpu_sim::DeviceKind;
use greenslice_core::gpu::GpuModel;

/// (model, profile, nvml index, profile id, compute, memory slices, max, starts, size)
type Row = (String, String, u32, u32, u32, u32, u32, Vec<u32>, u32);

fn sim_rows(kind: DeviceKind) -> Vec<Row> {
    kind.mig_profiles()
        .iter()
        .map(|p| {
            (
                kind.model_name().to_string(),
                p.name.to_string(),
                p.index,
                p.id,
                p.compute_slices,
                p.memory_slices,
                p.max_instances,
                p.starts.to_vec(),
                p.size,
            )
        })
        .collect()
}

fn core_rows(model: &GpuModel) -> Vec<Row> {
    greenslice_core::mig::profiles(model)
        .iter()
        .map(|p| {
            (
                model.name().to_string(),
                p.name.to_string(),
                p.nvml_index,
                p.smi_id,
                u32::from(p.compute_slices),
                u32::from(p.memory_slices),
                u32::from(p.max_instances),
                p.starts.iter().map(|&s| u32::from(s)).collect(),
                u32::from(p.size),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<Row>) -> Vec<Row> {
    v.sort();
    v
}

const SHARED: [(DeviceKind, GpuModel); 4] = [
    (DeviceKind::A100Sxm4_40Gb, GpuModel::A100Sxm4_40Gb),
    (DeviceKind::A100Sxm4_80Gb, GpuModel::A100Sxm4_80Gb),
    (DeviceKind::H100Sxm5_80Gb, GpuModel::H100Sxm5_80Gb),
    (DeviceKind::H200Sxm5_141Gb, GpuModel::H200Sxm5_141Gb),
];

#[test]
fn sim_and_core_mig_tables_agree() {
    for (kind, model) in SHARED {
        assert_eq!(
            sorted(sim_rows(kind)),
            sorted(core_rows(&model)),
            "{}",
            kind.model_name()
        );
    }
    // H100 PCIe has the H100 SXM5 profiles (same names, slices and placements; fewer SMs).
    let strip = |v: Vec<Row>| {
        sorted(
            v.into_iter()
                .map(|mut r| {
                    r.0.clear();
                    r
                })
                .collect(),
        )
    };
    assert_eq!(
        strip(sim_rows(DeviceKind::H100Pcie80Gb)),
        strip(sim_rows(DeviceKind::H100Sxm5_80Gb))
    );
    assert!(DeviceKind::L40s.mig_profiles().is_empty());
}

#[test]
fn sim_tables_agree_with_the_shared_csv() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mig-profiles.csv");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if std::env::var_os("GREENSLICE_REQUIRE_SHARED_DATA").is_none() => {
            eprintln!(
                "SKIPPED: {} not readable ({e}); set GREENSLICE_REQUIRE_SHARED_DATA to fail",
                path.display()
            );
            return;
        }
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let mut csv: Vec<Row> = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 9, "{line}");
        let n = |s: &str| {
            s.parse::<u32>()
                .unwrap_or_else(|e| panic!("{line}: {s}: {e}"))
        };
        csv.push((
            f[0].to_string(),
            f[1].to_string(),
            n(f[2]),
            n(f[3]),
            n(f[4]),
            n(f[5]),
            n(f[6]),
            f[7].split(';').map(n).collect(),
            n(f[8]),
        ));
    }
    let sim: Vec<Row> = SHARED.iter().flat_map(|(k, _)| sim_rows(*k)).collect();
    assert_eq!(sorted(sim), sorted(csv));
}
