//! The attribution code never sees the simulator's ground truth: the controller does not depend
//! on `gpu-sim` (the simulated machine whose per-process power and true energies
//! `greenslice bench attribution` measures it against), nor does its source name it.

use std::path::Path;

#[test]
fn the_controller_does_not_depend_on_the_simulated_machine() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    let doc: toml::Table = manifest.parse().expect("Cargo.toml parses");
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = doc.get(table).and_then(|t| t.as_table()) {
            for name in ["gpu-sim", "nvml-sim", "greenslice-agent"] {
                assert!(
                    !deps.contains_key(name),
                    "controller [{table}] lists {name}"
                );
            }
        }
    }
    let mut stack = vec![dir.join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("src readable") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                for word in ["gpu_sim", "true_energy_mj"] {
                    assert!(!text.contains(word), "{} names {word}", p.display());
                }
            }
        }
    }
}
