//! `greenslice usage` and `greenslice keep`: utilization history and keeping a slice from idle
//! reclaim.

use greenslice_proto::client::Conn;
use greenslice_proto::v1 as pb;
use serde_json::json;

use greenslice_controller::report::Zone;

use crate::output::{Format, table};
use crate::timearg::{TimeArg, parse_duration_ms, time_forms};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["slice", "tenant", "node"])))]
pub struct UsageArgs {
    /// Slice id.
    pub slice: Option<String>,
    /// Every slice of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Every GPU of this node, and the slices on it.
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long, value_parser = TimeArg::parse, allow_hyphen_values = true, help = concat!("Range start [default: 1h ago]: ", time_forms!()))]
    pub from: Option<TimeArg>,
    #[arg(long, value_parser = TimeArg::parse, allow_hyphen_values = true, help = concat!("Range end [default: now]: ", time_forms!()))]
    pub to: Option<TimeArg>,
}

#[derive(Debug, clap::Args)]
pub struct KeepArgs {
    /// Slice id.
    pub slice: String,
    /// How long to keep it from idle reclaim, e.g. 2h (at most the policy's max_keep_s).
    #[arg(long = "for", value_parser = |s: &str| parse_duration_ms(s))]
    pub duration: i64,
    /// Tenant asking (must own the slice).
    #[arg(long, env = "GREENSLICE_TENANT")]
    pub tenant: Option<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Unix-ms time as ISO 8601 in `zone`, or `-` when unset (0).
fn ms_or_dash(ms: i64, zone: &Zone) -> String {
    match u64::try_from(ms) {
        Ok(0) | Err(_) => "-".into(),
        Ok(ms) => zone.iso(ms),
    }
}

/// `greenslice usage`.
pub async fn usage(conn: &Conn, fmt: Format, a: UsageArgs, zone: &Zone) -> anyhow::Result<()> {
    let now = now_ms();
    let from = a.from.map(|t| t.resolve(now));
    let to = a.to.map(|t| t.resolve(now));
    let mut c = crate::cli::ops_client(conn).await?;
    let r = c
        .usage(pb::UsageRequest {
            slice_id: a.slice.unwrap_or_default(),
            tenant: a.tenant.unwrap_or_default(),
            node: a.node.unwrap_or_default(),
            from_unix_ms: from.unwrap_or(0),
            to_unix_ms: to.unwrap_or(0),
        })
        .await?
        .into_inner();
    match fmt {
        Format::Json => {
            let series: Vec<_> = r
                .series
                .iter()
                .map(|s| {
                    json!({
                        "kind": s.kind, "id": s.id, "tenant": s.tenant, "node": s.node,
                        "allocated_gpus": s.allocated_gpus, "resolution_ms": s.resolution_ms,
                        "idle_since_unix_ms": s.idle_since_unix_ms,
                        "reclaim_at_unix_ms": s.reclaim_at_unix_ms,
                        "kept_until_unix_ms": s.kept_until_unix_ms, "exempt": s.exempt,
                        "points": s.points.iter().map(|p| json!({
                            "start_unix_ms": p.start_unix_ms, "count": p.count,
                            "sm_min_pct": p.sm_min_pct, "sm_mean_pct": p.sm_mean_pct,
                            "sm_max_pct": p.sm_max_pct, "memory_max_pct": p.memory_max_pct,
                            "processes_max": p.processes_max,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "from_unix_ms": r.from_unix_ms, "to_unix_ms": r.to_unix_ms,
                    "dry_run": r.dry_run, "series": series,
                }))?
            );
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = r
                .series
                .iter()
                .map(|s| {
                    let n: u64 = s.points.iter().map(|p| u64::from(p.count)).sum();
                    let mean = if n == 0 {
                        0.0
                    } else {
                        s.points
                            .iter()
                            .map(|p| p.sm_mean_pct * f64::from(p.count))
                            .sum::<f64>()
                            / n as f64
                    };
                    let max = s.points.iter().map(|p| p.sm_max_pct).fold(0.0, f64::max);
                    // Relative to what the slice holds: 100% = its whole allocation busy.
                    let rel = |v: f64| v / s.allocated_gpus.max(1e-9);
                    vec![
                        s.kind.clone(),
                        s.id.clone(),
                        s.tenant.clone(),
                        s.node.clone(),
                        format!("{:.3}", s.allocated_gpus),
                        match s.resolution_ms {
                            0 => "raw".into(),
                            60_000 => "1m".into(),
                            _ => "1h".into(),
                        },
                        n.to_string(),
                        format!("{:.1}", rel(mean)),
                        format!("{:.1}", rel(max)),
                        ms_or_dash(s.idle_since_unix_ms, zone),
                        if s.exempt {
                            "exempt".into()
                        } else {
                            ms_or_dash(s.reclaim_at_unix_ms, zone)
                        },
                    ]
                })
                .collect();
            println!(
                "{}",
                table(
                    &[
                        "KIND",
                        "ID",
                        "TENANT",
                        "NODE",
                        "GPUS",
                        "RES",
                        "SAMPLES",
                        "MEAN%",
                        "MAX%",
                        "IDLE SINCE",
                        "RECLAIM AT",
                    ],
                    &rows
                )
            );
            if r.dry_run {
                println!("(idle policy in dry-run mode: RECLAIM AT is what would happen)");
            }
        }
    }
    Ok(())
}

/// `greenslice keep`.
pub async fn keep(conn: &Conn, fmt: Format, a: KeepArgs, zone: &Zone) -> anyhow::Result<()> {
    let mut c = crate::cli::tenant_client(conn).await?;
    let r = c
        .keep_slice(pb::KeepSliceRequest {
            slice_id: a.slice.clone(),
            tenant: a.tenant.unwrap_or_default(),
            duration_s: u64::try_from(a.duration / 1000).unwrap_or(0),
        })
        .await?
        .into_inner();
    match fmt {
        Format::Json => println!(
            "{}",
            json!({"slice": a.slice, "kept_until_unix_ms": r.kept_until_unix_ms})
        ),
        Format::Table => println!(
            "slice {} kept from idle reclaim until {}",
            a.slice,
            ms_or_dash(r.kept_until_unix_ms, zone)
        ),
    }
    Ok(())
}
