//! Human tables and JSON for the command line.

use greenslice_core::convert::{spec_from_pb, state_from_pb};
use greenslice_proto::v1 as pb;
use serde_json::{Value, json};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// A left-aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

/// Human description of a wire spec.
pub fn describe_spec(spec: Option<&pb::SliceSpec>) -> String {
    spec_from_pb(spec).map_or_else(|_| "?".to_string(), |s| s.describe())
}

/// State name of a wire slice.
pub fn state_name(s: &pb::Slice) -> &'static str {
    state_from_pb(s.state).map_or("unknown", |s| s.as_str())
}

/// A slice as JSON.
pub fn slice_json(s: &pb::Slice) -> Value {
    let spec = spec_from_pb(s.spec.as_ref()).ok();
    json!({
        "id": s.id,
        "tenant": s.tenant,
        "state": state_name(s),
        "spec": spec,
        "node": s.node,
        "gpu_uuids": s.gpu_uuids,
        "mig": s.mig.as_ref().map(|m| json!({
            "profile": m.profile, "start": m.start, "size": m.size,
            "gpu_instance_id": m.gpu_instance_id, "mig_uuid": m.mig_uuid,
        })),
        "env": s.env,
        "reason": s.reason,
        "idempotency_key": s.idempotency_key,
        "created_unix_ms": s.created_unix_ms,
        "updated_unix_ms": s.updated_unix_ms,
    })
}

/// Slices as a table.
pub fn slices_table(slices: &[pb::Slice]) -> String {
    let n = unique_prefix_len(
        slices
            .iter()
            .flat_map(|s| s.gpu_uuids.iter().map(String::as_str)),
    );
    let rows: Vec<Vec<String>> = slices
        .iter()
        .map(|s| {
            let place = match &s.mig {
                Some(m) => format!(
                    "{}@{}",
                    cut(s.gpu_uuids.first().map_or("", |g| g), n),
                    m.start
                ),
                None => s
                    .gpu_uuids
                    .iter()
                    .map(|g| cut(g, n))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            vec![
                s.id.clone(),
                s.tenant.clone(),
                state_name(s).to_string(),
                describe_spec(s.spec.as_ref()),
                s.node.clone(),
                place,
            ]
        })
        .collect();
    table(&["SLICE", "TENANT", "STATE", "SPEC", "NODE", "GPUS"], &rows)
}

/// The shortest prefix length, 12 characters at least, that tells every one of `uuids` apart (the
/// whole length where two differ only at the end), as a table shows them.
pub fn unique_prefix_len<'a>(uuids: impl IntoIterator<Item = &'a str> + Clone) -> usize {
    let longest = uuids
        .clone()
        .into_iter()
        .map(|u| u.chars().count())
        .max()
        .unwrap_or(0);
    let distinct: std::collections::BTreeSet<&str> = uuids.clone().into_iter().collect();
    (12..longest)
        .find(|&n| {
            let cut: std::collections::BTreeSet<String> = distinct
                .iter()
                .map(|u| u.chars().take(n).collect())
                .collect();
            cut.len() == distinct.len()
        })
        .unwrap_or(longest.max(12))
}

/// A UUID cut to `n` characters.
fn cut(uuid: &str, n: usize) -> String {
    uuid.chars().take(n).collect()
}

/// One slice in detail.
pub fn slice_detail(s: &pb::Slice) -> String {
    let mut out = slices_table(std::slice::from_ref(s));
    if let Some(m) = &s.mig {
        out.push_str(&format!(
            "\nMIG: {} at slice {} (size {}), GPU instance {}, {}",
            m.profile, m.start, m.size, m.gpu_instance_id, m.mig_uuid
        ));
    }
    if !s.reason.is_empty() {
        out.push_str(&format!("\nreason: {}", s.reason));
    }
    if !s.env.is_empty() {
        out.push_str("\nenvironment:");
        let mut env: Vec<_> = s.env.iter().collect();
        env.sort();
        for (k, v) in env {
            out.push_str(&format!("\n  {k}={v}"));
        }
    }
    out
}

/// Whether a model's MIG table is confirmed by NVIDIA's documentation: "confirmed",
/// "unconfirmed", or None for a model without a MIG table (see `greenslice_core::mig::MigTable`).
pub fn mig_table_status(model: &str) -> Option<&'static str> {
    greenslice_core::mig::table(&greenslice_core::gpu::GpuModel::from_name(model)).map(|t| {
        if t.confirmed {
            "confirmed"
        } else {
            "unconfirmed"
        }
    })
}

/// A model for tables: marked `*` when its MIG table is unconfirmed.
fn model_cell(model: &str) -> String {
    match mig_table_status(model) {
        Some("unconfirmed") => format!("{model}*"),
        _ => model.to_string(),
    }
}

/// What a node may do, for tables: "mig-create" or "mig-lend-only" (no new instances, existing
/// free ones are lent), then "mps" or "no-mps (share limits advisory)"; "unknown" for an agent
/// that predates capability reporting (treated as before: may create, MPS assumed).
pub fn capabilities_cell(c: Option<&pb::NodeCapabilities>) -> String {
    match c {
        None => "unknown".to_string(),
        Some(c) => format!(
            "{},{}",
            if c.mig_manage {
                "mig-create"
            } else {
                "mig-lend-only"
            },
            if c.mps {
                "mps"
            } else {
                "no-mps(shares advisory)"
            }
        ),
    }
}

/// The inventory as tables.
pub fn inventory_tables(inv: &pb::InventoryResponse) -> String {
    let nodes: Vec<Vec<String>> = inv
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                match (n.connected, n.drained) {
                    (true, false) => "connected",
                    (false, false) => "disconnected",
                    (true, true) => "connected,drained",
                    (false, true) => "disconnected,drained",
                }
                .to_string(),
                n.backend.clone(),
                capabilities_cell(n.capabilities.as_ref()),
                n.gpus.len().to_string(),
                n.gpus
                    .first()
                    .map_or(String::new(), |g| model_cell(&g.model)),
                n.gpus.iter().filter(|g| g.mig_enabled).count().to_string(),
            ]
        })
        .collect();
    let n = unique_prefix_len(inv.capacity.iter().map(|c| c.gpu_uuid.as_str()));
    let index_of = |node: &str, uuid: &str| {
        inv.nodes
            .iter()
            .filter(|x| x.name == node)
            .flat_map(|x| &x.gpus)
            .find(|g| g.uuid == uuid)
            .map_or("?".to_string(), |g| g.index.to_string())
    };
    let gpus: Vec<Vec<String>> = inv
        .capacity
        .iter()
        .map(|c| {
            vec![
                c.node.clone(),
                index_of(&c.node, &c.gpu_uuid),
                cut(&c.gpu_uuid, n),
                model_cell(&c.model),
                if c.mig_enabled { "mig" } else { "shared" }.to_string(),
                format!("{:.2}", f64::from(c.free_milli) / 1000.0),
                format!("{:.1}", c.free_memory_bytes as f64 / (1u64 << 30) as f64),
                c.slices.to_string(),
                if c.healthy { "ok" } else { "UNHEALTHY" }.to_string(),
                c.placeable_profiles.join(" "),
            ]
        })
        .collect();
    let unconfirmed = inv
        .capacity
        .iter()
        .any(|c| mig_table_status(&c.model) == Some("unconfirmed"));
    let note = if unconfirmed {
        "\n* MIG profile table not confirmed by a published NVIDIA document (check on the hardware)"
    } else {
        ""
    };
    format!(
        "{}\n\n{}\n\n{} GPUs, {:.2} GPUs allocated ({:.1}%), {} live slices{note}",
        table(
            &["NODE", "STATE", "BACKEND", "MAY", "GPUS", "MODEL", "MIG"],
            &nodes
        ),
        table(
            &[
                "NODE",
                "IDX",
                "GPU",
                "MODEL",
                "MODE",
                "FREE_GPU",
                "FREE_GIB",
                "SLICES",
                "HEALTH",
                "PLACEABLE_MIG"
            ],
            &gpus
        ),
        inv.gpus_total,
        inv.allocated_milli as f64 / 1000.0,
        if inv.gpus_total == 0 {
            0.0
        } else {
            inv.allocated_milli as f64 / 10.0 / f64::from(inv.gpus_total)
        },
        inv.slices.len()
    )
}

/// The inventory as JSON.
pub fn inventory_json(inv: &pb::InventoryResponse) -> Value {
    json!({
        "gpus_total": inv.gpus_total,
        "allocated_milli": inv.allocated_milli,
        "nodes": inv.nodes.iter().map(|n| json!({
            "name": n.name, "connected": n.connected, "drained": n.drained, "backend": n.backend,
            "capabilities": n.capabilities.as_ref().map(|c| json!({
                "mig_manage": c.mig_manage, "mps": c.mps, "share_limits": if c.mps { "enforced" } else { "advisory" },
            })),
            "cpu_milli": n.cpu_milli, "memory_bytes": n.memory_bytes,
            "gpus": n.gpus.iter().map(|g| json!({
                "uuid": g.uuid, "index": g.index, "model": g.model, "memory_bytes": g.memory_bytes,
                "mig_capable": g.mig_capable, "mig_enabled": g.mig_enabled, "healthy": g.healthy,
                "pci_bus_id": g.pci_bus_id, "mig_table": mig_table_status(&g.model),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "capacity": inv.capacity.iter().map(|c| json!({
            "node": c.node, "gpu_uuid": c.gpu_uuid, "model": c.model, "mig_enabled": c.mig_enabled,
            "mig_table": mig_table_status(&c.model),
            "free_milli": c.free_milli, "free_memory_bytes": c.free_memory_bytes,
            "placeable_profiles": c.placeable_profiles, "slices": c.slices, "healthy": c.healthy,
        })).collect::<Vec<_>>(),
        "slices": inv.slices.iter().map(slice_json).collect::<Vec<_>>(),
    })
}

/// A drain's outcome as JSON.
pub fn drain_json(r: &pb::DrainNodeResponse) -> Value {
    json!({
        "node": r.node, "drained": true, "was_drained": r.was_drained, "connected": r.connected,
        "lost_slice_ids": r.lost_slice_ids, "kept_slice_ids": r.kept_slice_ids,
    })
}

/// A drain's outcome for people: what happened to the node's slices.
pub fn drain_text(r: &pb::DrainNodeResponse) -> String {
    let mut out = format!(
        "node {} drained{}: nothing new will be placed there",
        r.node,
        if r.was_drained { " (already)" } else { "" }
    );
    if !r.kept_slice_ids.is_empty() {
        out += &format!(
            "\n{} slice(s) kept until released: {}",
            r.kept_slice_ids.len(),
            r.kept_slice_ids.join(" ")
        );
    }
    if !r.lost_slice_ids.is_empty() {
        out += &format!(
            "\n{} slice(s) marked lost (the node is unreachable): {}",
            r.lost_slice_ids.len(),
            r.lost_slice_ids.join(" ")
        );
    }
    if r.kept_slice_ids.is_empty() && r.lost_slice_ids.is_empty() {
        out += "\nno live slices on the node";
    }
    out
}

/// A refusal's rich error details (google.rpc ErrorInfo, BadRequest, QuotaFailure, ResourceInfo,
/// PreconditionFailure) as JSON; the keys present are the details the status carried.
pub fn error_json(s: &tonic::Status) -> Value {
    use tonic_types::StatusExt;
    let d = s.get_error_details();
    let mut out = json!({
        "code": format!("{:?}", s.code()),
        "message": s.message(),
    });
    if let Some(i) = d.error_info() {
        let meta: serde_json::Map<String, Value> = i
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out["reason"] = json!(i.reason);
        out["domain"] = json!(i.domain);
        out["metadata"] = Value::Object(meta);
    }
    if let Some(b) = d.bad_request() {
        out["field_violations"] = b
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
    }
    if let Some(q) = d.quota_failure() {
        out["quota_violations"] = q
            .violations
            .iter()
            .map(|v| json!({"subject": v.subject, "description": v.description}))
            .collect();
    }
    if let Some(p) = d.precondition_failure() {
        out["precondition_violations"] = p
            .violations
            .iter()
            .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
            .collect();
    }
    if let Some(r) = d.resource_info() {
        out["resource"] = json!({"type": r.resource_type, "name": r.resource_name});
    }
    out
}

/// The details of a refusal as indented lines under the message (empty when it carries none).
pub fn error_detail_lines(s: &tonic::Status) -> String {
    let v = error_json(s);
    let mut lines = Vec::new();
    if let Some(r) = v["reason"].as_str() {
        lines.push(format!("  reason: {r}"));
    }
    for f in v["field_violations"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  field {}: {}",
            f["field"].as_str().unwrap_or(""),
            f["description"].as_str().unwrap_or("")
        ));
    }
    for q in v["quota_violations"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  quota of {}",
            q["subject"].as_str().unwrap_or("")
        ));
    }
    for p in v["precondition_violations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        lines.push(format!(
            "  precondition {} of {}",
            p["type"].as_str().unwrap_or(""),
            p["subject"].as_str().unwrap_or("")
        ));
    }
    if let Some(r) = v.get("resource") {
        lines.push(format!(
            "  resource: {} {}",
            r["type"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or("")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_text_says_what_happened_to_the_slices() {
        let r = pb::DrainNodeResponse {
            node: "n1".into(),
            connected: false,
            was_drained: false,
            lost_slice_ids: vec!["s-1".into()],
            kept_slice_ids: vec![],
        };
        let t = drain_text(&r);
        assert!(
            t.contains("n1 drained") && t.contains("1 slice(s) marked lost") && t.contains("s-1"),
            "{t}"
        );
    }

    #[test]
    fn unconfirmed_mig_tables_are_marked_in_the_inventory() {
        assert_eq!(mig_table_status("H100-SXM5-80GB"), Some("confirmed"));
        assert_eq!(mig_table_status("B200-180GB"), Some("unconfirmed"));
        assert_eq!(mig_table_status("Tesla T4"), None);
        let cap = |model: &str| pb::GpuCapacity {
            node: "n".into(),
            gpu_uuid: "GPU-1".into(),
            model: model.into(),
            ..Default::default()
        };
        let inv = pb::InventoryResponse {
            capacity: vec![cap("GH200-96GB")],
            ..Default::default()
        };
        let t = inventory_tables(&inv);
        assert!(
            t.contains("GH200-96GB*") && t.contains("not confirmed"),
            "{t}"
        );
        assert_eq!(
            inventory_json(&inv)["capacity"][0]["mig_table"],
            "unconfirmed"
        );
        let inv = pb::InventoryResponse {
            capacity: vec![cap("A100-SXM4-40GB")],
            ..Default::default()
        };
        assert!(!inventory_tables(&inv).contains("not confirmed"));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1");
    }
}
