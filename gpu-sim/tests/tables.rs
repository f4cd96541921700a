//! gpu-sim's MIG tables are written from NVIDIA's MIG user guide on their own. Here they meet
//! greenslice-core's tables (what the controller places with) and `../shared/data/mig-profiles.csv`,
//! so a discrepancy between the three is found, not hidden.

use std::collections::BTreeMap;

use gpu_sim::DeviceKind;
use greenslice_core::gpu::GpuModel;

/// (profile name) -> (compute slices, memory slices, max instances, starts) of one product.
type Table = BTreeMap<String, (u32, u32, u32, Vec<u32>)>;

/// A CSV row: (index, id, compute, memory, max instances, starts, placement size).
type CsvRow = (u32, u32, u32, u32, u32, Vec<u32>, u32);

fn sim_table(kind: DeviceKind) -> Table {
    kind.spec()
        .mig
        .map(|m| m.profiles)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                (
                    p.compute_slices,
                    p.memory_slices,
                    p.max_instances,
                    p.starts.to_vec(),
                ),
            )
        })
        .collect()
}

fn core_table(model: &GpuModel) -> Table {
    greenslice_core::mig::profiles(model)
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                (
                    u32::from(p.compute_slices),
                    u32::from(p.memory_slices),
                    u32::from(p.max_instances),
                    p.starts.iter().map(|&s| u32::from(s)).collect(),
                ),
            )
        })
        .collect()
}

/// The core model of each simulated product, found the way the agent finds it: by PCI device id.
fn core_model(kind: DeviceKind) -> GpuModel {
    let s = kind.spec();
    GpuModel::detect(Some(s.pci_device_id), s.product_name)
}

#[test]
fn the_simulators_tables_agree_with_greenslice_core() {
    for kind in DeviceKind::ALL {
        let model = core_model(kind);
        assert_eq!(
            sim_table(kind),
            core_table(&model),
            "{kind:?} (core: {model:?}): the simulator's MIG table and greenslice-core's disagree"
        );
    }
}

#[test]
fn nvml_profile_ids_agree_with_greenslice_core() {
    for kind in DeviceKind::ALL {
        let model = core_model(kind);
        for p in kind.spec().mig.map(|m| m.profiles).unwrap_or_default() {
            let c = greenslice_core::mig::profile(&model, p.name)
                .unwrap_or_else(|| panic!("{kind:?}: core has no {}", p.name));
            assert_eq!(
                (c.nvml_index, c.smi_id),
                (p.index, p.id),
                "{kind:?} {}",
                p.name
            );
        }
    }
}

#[test]
fn the_simulators_tables_agree_with_the_shared_mig_profiles_csv() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mig-profiles.csv");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "SKIPPED: {} not readable ({e}): MIG tables NOT compared",
                path.display()
            );
            assert!(
                std::env::var_os("GREENSLICE_REQUIRE_SHARED_DATA").is_none(),
                "{msg}"
            );
            eprintln!("{msg}");
            return;
        }
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("mig-profiles.csv has no {name} column: {header:?}"))
    };
    let cols = [
        "gpu_model",
        "profile",
        "nvml_profile_index",
        "smi_profile_id",
        "compute_slices_of_7",
        "memory_slices_of_8",
        "max_instances",
        "placement_starts",
        "placement_size",
    ]
    .map(col);
    let num = |s: &str| -> u32 { s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}")) };
    // (product, profile) -> (index, id, compute, memory, max, starts, size)
    let mut csv: BTreeMap<(String, String), CsvRow> = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let g = |i: usize| f.get(cols[i]).copied().unwrap_or_default();
        csv.insert(
            (g(0).to_string(), g(1).to_string()),
            (
                num(g(2)),
                num(g(3)),
                num(g(4)),
                num(g(5)),
                num(g(6)),
                g(7).split(';').map(num).collect(),
                num(g(8)),
            ),
        );
    }
    let mut compared = 0;
    for kind in DeviceKind::ALL {
        let name = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if !csv.keys().any(|(g, _)| *g == name) {
            eprintln!("{name}: not in mig-profiles.csv, not compared");
            continue;
        }
        let profiles = kind.spec().mig.map(|m| m.profiles).unwrap_or_default();
        for p in profiles {
            let row = csv
                .get(&(name.clone(), p.name.to_string()))
                .unwrap_or_else(|| panic!("{name} {}: in the simulator, not in the CSV", p.name));
            let ours = (
                p.index,
                p.id,
                p.compute_slices,
                p.memory_slices,
                p.max_instances,
                p.starts.to_vec(),
                p.memory_slices,
            );
            assert_eq!(&ours, row, "{name} {}: simulator vs CSV", p.name);
            compared += 1;
        }
        let in_csv = csv.keys().filter(|(g, _)| *g == name).count();
        assert_eq!(
            in_csv,
            profiles.len(),
            "{name}: the CSV has profiles the simulator lacks"
        );
    }
    assert!(compared > 0, "no simulated product is in the CSV");
}
