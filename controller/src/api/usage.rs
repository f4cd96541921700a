//! OpsService.Usage: utilization history of a slice, a tenant's slices or a node's GPUs over a range.

use greenslice_proto::v1 as pb;
use tonic::Status;

use super::check_id;
use crate::engine::Controller;
use greenslice_core::time::HOUR_MS_I64;

use crate::reclaim::{Action, UsageView};
use crate::telemetry::history::{Resolution, Rollup, SeriesHistory};

/// Longest range one query may ask for, ms (what the hour rollups hold).
pub const MAX_RANGE_MS: i64 = 7 * 24 * HOUR_MS_I64;

fn points(h: &SeriesHistory, from: i64, to: i64) -> (i64, Vec<pb::UsagePoint>) {
    let (res, rows): (Resolution, Vec<Rollup>) = h.range(from, to);
    (
        res.len_ms(),
        rows.iter()
            .map(|r| pb::UsagePoint {
                start_unix_ms: r.start_ms,
                count: r.count,
                sm_min_pct: f64::from(r.sm_min),
                sm_mean_pct: f64::from(r.sm_mean),
                sm_max_pct: f64::from(r.sm_max),
                memory_max_pct: (r.mem_max >= 0.0).then_some(f64::from(r.mem_max)),
                processes_max: u32::from(r.processes_max),
            })
            .collect(),
    )
}

/// A slice and the capacity it holds, GPUs.
type SliceWithCapacity = (crate::model::slice::SliceRecord, f64);

/// Answers a usage query.
pub fn usage(c: &Controller, r: &pb::UsageRequest) -> Result<pb::UsageResponse, Status> {
    super::validate::usage(r)?;
    let selectors = [&r.slice_id, &r.tenant, &r.node]
        .iter()
        .filter(|s| !s.is_empty())
        .count();
    if selectors != 1 {
        return Err(super::status::invalid_field(
            "slice_id",
            "give exactly one of slice_id, tenant or node",
        ));
    }
    let to = if r.to_unix_ms == 0 {
        c.now_ms()
    } else {
        r.to_unix_ms
    };
    let from = if r.from_unix_ms == 0 {
        to - HOUR_MS_I64
    } else {
        r.from_unix_ms
    };
    if from >= to || to - from > MAX_RANGE_MS {
        return Err(super::status::invalid_field(
            "from_unix_ms",
            format!("the range must have from < to and span at most 7 days; got {from}..{to}"),
        ));
    }
    let policy = c.reclaim.policy();
    let marks = c.reclaim.marks_snapshot();
    let would = c.reclaim.would_reclaim();
    // Slices selected, with their capacity.
    let (slices, gpus): (Vec<SliceWithCapacity>, Vec<(String, String)>) = c.with_state(|st| {
        let sel = |s: &crate::model::slice::SliceRecord| {
            (!r.slice_id.is_empty() && s.id == r.slice_id)
                || (!r.tenant.is_empty() && s.tenant == r.tenant)
                || (!r.node.is_empty() && s.node == r.node)
        };
        let slices = st
            .all()
            .filter(|s| sel(s))
            .map(|s| (s.clone(), crate::reclaim::allocated_gpus(s, st)))
            .collect();
        let gpus = st
            .nodes
            .get(&r.node)
            .map(|n| {
                n.gpus
                    .iter()
                    .map(|g| (n.name.clone(), g.uuid.clone()))
                    .collect()
            })
            .unwrap_or_default();
        (slices, gpus)
    });
    if !r.slice_id.is_empty() {
        check_id("slice_id", &r.slice_id)?;
        if slices.is_empty() {
            return Err(Status::not_found(format!("slice {} not found", r.slice_id)));
        }
    }
    let mut series = Vec::new();
    for (s, alloc) in &slices {
        let Some(h) = c.telemetry.slice(&s.id) else {
            continue;
        };
        let (resolution_ms, pts) = points(&h.history, from, to);
        let rule = policy.resolve(&s.tenant, s.spec.slice_class.as_deref());
        let idle_since = if s.is_live() {
            c.telemetry
                .idle_since(&s.id, &rule.test(*alloc))
                .unwrap_or(0)
        } else {
            0
        };
        let reclaim_at = marks.warned.get(&s.id).map(|w| w.deadline_ms).or_else(|| {
            would.iter().find_map(|a| match a {
                Action::WouldReclaim { slice, at_ms, .. } if *slice == s.id => Some(*at_ms),
                _ => None,
            })
        });
        series.push(pb::UsageSeries {
            kind: "slice".into(),
            id: s.id.clone(),
            tenant: s.tenant.clone(),
            node: s.node.clone(),
            allocated_gpus: *alloc,
            resolution_ms,
            points: pts,
            idle_since_unix_ms: idle_since,
            reclaim_at_unix_ms: reclaim_at.unwrap_or(0),
            kept_until_unix_ms: marks.kept.get(&s.id).copied().unwrap_or(0),
            exempt: rule.exempt,
        });
    }
    for (node, uuid) in gpus {
        let Some(h) = c.telemetry.gpu_history(&uuid) else {
            continue;
        };
        let (resolution_ms, pts) = points(&h.history, from, to);
        series.push(pb::UsageSeries {
            kind: "gpu".into(),
            id: uuid,
            node,
            allocated_gpus: 1.0,
            resolution_ms,
            points: pts,
            ..Default::default()
        });
    }
    series.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.id.cmp(&b.id)));
    Ok(pb::UsageResponse {
        series,
        from_unix_ms: from,
        to_unix_ms: to,
        dry_run: policy.dry_run,
    })
}
