//! The import rules of the controller, checked from the source: the lower rooms (the cluster model,
//! placement, telemetry, energy, reports, ledgers) import nothing from the rooms above them (the
//! engine `controller`, `reclaim`, `metrics`, `api`, `server`, `standby`, `cli`). A new arrow
//! upwards fails `cargo test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Rooms that may not import any of [`UPPER`].
const LOWER: &[&str] = &[
    "placement",
    "energy",
    "telemetry",
    "report",
    "ledger",
    "state.rs",
    "slice.rs",
    "quota.rs",
];
/// Rooms that compose the lower ones.
const UPPER: &[&str] = &[
    "controller",
    "reclaim",
    "metrics",
    "api",
    "server",
    "standby",
    "cli",
];

/// The top-level modules a source text names through `crate::`, grouped imports included
/// (`use crate::{a::X, b}` names `a` and `b`).
fn crate_modules(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in src.match_indices("crate::") {
        let rest = &src[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .expect("readable source folder")
            .map(|e| e.expect("readable entry").path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

#[test]
fn lower_rooms_import_nothing_from_the_rooms_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for room in LOWER {
        let mut files = Vec::new();
        rust_files(&src.join(room), &mut files);
        if room.ends_with(".rs") {
            rust_files(&src.join(room.replace(".rs", "")), &mut files);
        }
        assert!(!files.is_empty(), "room {room} has no source: update LOWER");
        for f in files {
            let text = std::fs::read_to_string(&f).expect("readable source");
            for m in crate_modules(&text) {
                if UPPER.contains(&m.as_str()) {
                    violations.push(format!("{} imports crate::{m}", f.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "arrows upwards:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_plain_grouped_and_nested_imports() {
    let src = "use crate::state::X;\nuse crate::{api::kubelet, server, energy::{a, b}};\nfn f() { crate::metrics::refresh(); }";
    let got: Vec<String> = crate_modules(src).into_iter().collect();
    assert_eq!(got, ["api", "energy", "metrics", "server", "state"]);
}
