//! The import rules of the controller, checked from the source, so a new arrow upwards fails
//! `cargo test`. Rooms sit in tiers; a room imports only rooms of its own tier or below:
//!
//! 0. the lower rooms: the cluster model, placement, telemetry, energy, reclaim's decisions,
//!    reports, ledgers, quotas, auth, the agent registry, errors; and `obs`, a leaf that imports
//!    nothing of the controller at all;
//! 1. `engine`, the `Controller`;
//! 2. `api`, the gRPC services (protobuf <-> the engine);
//! 3. `server`, serving the API, `/metrics` and `/readyz`, and the standby;
//! 4. `cli` and `config`, the composition root.
//!
//! Unit-test modules (`*_tests.rs`, `tests.rs`) may compose the whole crate.
//!
//! Wire types stay at the edges: the greenslice protobuf API (`greenslice_proto::v1`) is used only
//! by `api`, `server` and `cli`; tonic only by those, by `auth` (the gRPC interceptor and TLS) and by
//! the etcd ledger (etcd's own gRPC client). The engine and everything below it speak core types.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each room (a folder or a file under `src/`) and its tier.
const TIERS: &[(&str, u8)] = &[
    ("model", 0),
    ("placement", 0),
    ("telemetry", 0),
    ("energy", 0),
    ("reclaim", 0),
    ("report", 0),
    ("ledger", 0),
    ("quota", 0),
    ("auth", 0),
    ("agents", 0),
    ("error", 0),
    ("obs", 0),
    ("bench", 0),
    ("engine", 1),
    ("api", 2),
    ("server", 3),
    ("cli", 4),
    ("config", 4),
];

/// Rooms that import nothing of the controller.
const LEAVES: &[&str] = &["obs"];

fn tier(room: &str) -> Option<u8> {
    TIERS.iter().find(|(r, _)| *r == room).map(|(_, t)| *t)
}

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
    } else if p.is_file() && p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

/// The source files of `room`: `src/room.rs` and everything under `src/room/`.
fn room_files(src: &Path, room: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src.join(format!("{room}.rs")), &mut files);
    rust_files(&src.join(room), &mut files);
    files
}

fn is_test_module(f: &Path) -> bool {
    f.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "tests.rs" || n.ends_with("_tests.rs"))
}

#[test]
fn every_room_imports_only_its_tier_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (room, t) in TIERS {
        let files = room_files(&src, room);
        assert!(!files.is_empty(), "room {room} has no source: update TIERS");
        for f in files.iter().filter(|f| !is_test_module(f)) {
            let text = std::fs::read_to_string(f).expect("readable source");
            for m in crate_modules(&text) {
                if LEAVES.contains(room) && m != *room {
                    violations.push(format!("{} (a leaf) imports crate::{m}", f.display()));
                }
                match tier(&m) {
                    Some(mt) if mt > *t => violations.push(format!(
                        "{} (tier {t}) imports crate::{m} (tier {mt})",
                        f.display()
                    )),
                    _ => {}
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

/// Rooms that may use the greenslice protobuf API, and files or rooms that may use tonic.
const WIRE_ROOMS: &[&str] = &["api", "server", "cli"];
const TONIC_ROOMS: &[&str] = &["api", "server", "cli", "auth", "ledger/etcd.rs"];

/// A source text without its inline unit-test module (`#[cfg(test)] mod tests { ... }` at the end).
fn without_inline_tests(src: &str) -> &str {
    src.find("#[cfg(test)]\nmod tests")
        .map_or(src, |i| &src[..i])
}

fn allowed(f: &Path, src: &Path, rooms: &[&str]) -> bool {
    let rel = f
        .strip_prefix(src)
        .unwrap_or(f)
        .to_string_lossy()
        .replace('\\', "/");
    rooms
        .iter()
        .any(|r| rel == *r || rel == format!("{r}.rs") || rel.starts_with(&format!("{r}/")))
}

#[test]
fn wire_types_stay_at_the_edges() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for f in files.iter().filter(|f| !is_test_module(f)) {
        let text = std::fs::read_to_string(f).expect("readable source");
        let code = without_inline_tests(&text);
        if code.contains("greenslice_proto::v1") && !allowed(f, &src, WIRE_ROOMS) {
            violations.push(format!("{} uses the protobuf API", f.display()));
        }
        if code.contains("tonic") && !allowed(f, &src, TONIC_ROOMS) {
            violations.push(format!("{} uses tonic", f.display()));
        }
    }
    assert!(
        violations.is_empty(),
        "wire types below the API:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_edge_rule_sees_a_use_and_ignores_inline_tests() {
    let src = Path::new("/x/src");
    assert!(allowed(&src.join("api/agent.rs"), src, WIRE_ROOMS));
    assert!(allowed(&src.join("cli.rs"), src, WIRE_ROOMS));
    assert!(!allowed(&src.join("engine/mod.rs"), src, WIRE_ROOMS));
    assert!(allowed(&src.join("ledger/etcd.rs"), src, TONIC_ROOMS));
    assert!(!allowed(&src.join("ledger/redb.rs"), src, TONIC_ROOMS));
    let text =
        "use greenslice_core::x;\n#[cfg(test)]\nmod tests {\n use greenslice_proto::v1 as pb;\n}";
    assert!(!without_inline_tests(text).contains("greenslice_proto::v1"));
    assert!(
        without_inline_tests("use greenslice_proto::v1 as pb;").contains("greenslice_proto::v1")
    );
}

#[test]
fn every_room_has_a_tier() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("readable lib.rs");
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            assert!(tier(m).is_some(), "module {m} has no tier in TIERS");
        }
    }
}

#[test]
fn the_scanner_sees_plain_grouped_and_nested_imports() {
    let src = "use crate::model::X;\nuse crate::{api::kubelet, server, energy::{a, b}};\nfn f() { crate::obs::x(); }";
    let got: Vec<String> = crate_modules(src).into_iter().collect();
    assert_eq!(got, ["api", "energy", "model", "obs", "server"]);
}
