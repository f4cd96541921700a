//! The report as text: the period and data span in a time zone, CSV, and the CLI table.

use super::build::kwh;
use super::*;

/// The period as a person reads it: `2026-12-02T12:00:00Z .. 2026-12-02T15:00:00Z`, with "the
/// beginning of the history" for a report from 0.
pub fn period_text(r: &Report, zone: &Zone) -> String {
    let from = if r.from_ms == 0 {
        "the beginning of the history".to_string()
    } else {
        zone.iso(r.from_ms)
    };
    format!("{from} .. {}", zone.iso(r.to_ms))
}

/// Where the report's data begin and end, and how long that is: `2026-12-02T12:00:00Z ..
/// 2026-12-02T15:00:00Z (3.0 h)`.
pub fn data_span_text(r: &Report, zone: &Zone) -> Option<String> {
    let (a, b) = (r.data_from_ms?, r.data_to_ms?);
    Some(format!(
        "{} .. {} ({})",
        zone.iso(a),
        zone.iso(b),
        round::duration(b.saturating_sub(a))
    ))
}

/// The report as CSV: one row per tenant, then one per GPU, then the cluster. Values are exact;
/// each row ends with the report's period as ISO 8601 in `zone` and as Unix seconds.
pub fn to_csv(r: &Report, zone: &Zone) -> String {
    let mut out = String::from(
        "row,name,node,model,gpu_hours_allocated,gpu_hours_used,gpu_hours_idle_allocated,energy_mj,static_mj,dynamic_mj,estimated_mj,unattributed_mj,unallocated_idle_mj,energy_kwh,co2e_kg,co2e_is_estimate,co2e_market_kg,gpu_hours_reclaimed,idle_allocated_mj,period_from,period_to,period_from_unix_s,period_to_unix_s\n",
    );
    let esc = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let period = format!(
        "{},{},{},{}",
        zone.iso(r.from_ms),
        zone.iso(r.to_ms),
        r.from_ms / 1000,
        r.to_ms / 1000
    );
    let opt = |v: Option<f64>| v.map(|m| format!("{m:.6}")).unwrap_or_default();
    for t in &r.tenants {
        out.push_str(&format!(
            "tenant,{},,,{:.6},{:.6},{:.6},{},{},{},{},,,{:.9},{:.6},{},{},{:.6},{},{period}\n",
            esc(&t.tenant),
            t.gpu_hours_allocated,
            t.gpu_hours_used,
            t.gpu_hours_idle_allocated,
            t.energy_mj,
            t.static_mj,
            t.dynamic_mj,
            t.estimated_mj,
            t.energy_kwh,
            t.co2e_kg,
            r.co2e_is_estimate,
            opt(t.co2e_market_kg),
            t.gpu_hours_reclaimed,
            t.idle_allocated_mj,
        ));
    }
    for g in r.gpus.iter().chain(std::iter::once(&r.cluster)) {
        out.push_str(&format!(
            "{},{},{},{},,,,{},,,,{},{},{:.9},{:.6},{},{},,,{period}\n",
            if g.gpu == "cluster" { "cluster" } else { "gpu" },
            esc(&g.gpu),
            esc(&g.node),
            esc(&g.model),
            g.measured_mj,
            g.unattributed_mj,
            g.unallocated_idle_mj,
            g.measured_kwh,
            g.co2e_kg,
            r.co2e_is_estimate,
            opt(g.co2e_market_kg),
        ));
    }
    out
}

/// One line saying which part of the period came from the hourly history.
pub fn hourly_line(h: &HourlyPart, zone: &Zone) -> String {
    format!(
        "Hours {} .. {}: {} hours, {} intervals from the stored hourly history; per-GPU rows and series cover only the records from {} on.",
        zone.iso(h.from_ms),
        zone.iso(h.to_ms),
        h.hours,
        h.intervals,
        zone.iso(h.to_ms)
    )
}

/// The per-tenant trend against the previous period: `+12.3%`, `-4.00%`, `new`, or empty when
/// the report has no previous period held.
pub fn trend_text(t: &TenantRow) -> String {
    match t.previous_energy_mj {
        None => String::new(),
        Some(0) if t.energy_mj == 0 => "0%".into(),
        Some(0) => "new".into(),
        Some(p) => {
            let d = 100.0 * (t.energy_mj as f64 - p as f64) / p as f64;
            format!("{}{}", if d > 0.0 { "+" } else { "" }, round::pct(d))
        }
    }
}

/// The report as terminal tables: kWh and CO2e rounded to 3 significant figures, times as ISO 8601
/// in `zone`.
pub fn to_table(r: &Report, zone: &Zone) -> String {
    let h = &r.headline;
    let mut out = format!(
        "Energy report {} ({}); static policy {}{}\n",
        period_text(r, zone),
        zone.label(r.to_ms),
        r.policy,
        if r.co2e_is_estimate {
            "; CO2e uses DEFAULT ESTIMATES, see factors"
        } else {
            ""
        }
    );
    if let Some(d) = data_span_text(r, zone) {
        out.push_str(&format!("Data: {d}\n"));
    }
    out.push_str(&format!(
        "Measured {}; CO2e {} location-based{}; {} per GPU-hour over {}\n",
        round::kwh(h.measured_kwh),
        round::co2e(h.co2e_location_kg),
        h.co2e_market_kg
            .map(|m| format!(", {} market-based", round::co2e(m)))
            .unwrap_or_else(|| ", market-based not configured".into()),
        round::kwh(h.kwh_per_gpu_hour),
        round::gpu_h(h.gpu_hours),
    ));
    out.push_str(&format!(
        "Waste: idle-allocated {} ({} of allocated), {} ({}){}; unallocated idle {} ({}); unattributed {} ({})\n\n",
        round::gpu_h(h.idle_allocated_gpu_hours),
        round::pct(h.idle_allocated_gpu_hours_pct),
        round::kwh(h.idle_allocated_kwh),
        round::pct(h.idle_allocated_pct),
        if h.idle_allocated_kwh_records_only {
            " [energy: interval records only]"
        } else {
            ""
        },
        round::kwh(h.unallocated_idle_kwh),
        round::pct(h.unallocated_idle_pct),
        round::kwh(h.unattributed_kwh),
        round::pct(h.unattributed_pct),
    ));
    let rows: Vec<[String; 10]> = r
        .tenants
        .iter()
        .map(|t| {
            [
                t.tenant.clone(),
                format!("{:.3}", t.gpu_hours_allocated),
                format!("{:.3}", t.gpu_hours_used),
                format!("{:.3}", t.gpu_hours_idle_allocated),
                format!("{:.3}", t.gpu_hours_reclaimed),
                round::sig(t.energy_kwh, 3),
                format!(
                    "{:.1}%",
                    if t.energy_mj > 0 {
                        100.0 * t.static_mj as f64 / t.energy_mj as f64
                    } else {
                        0.0
                    }
                ),
                round::co2e(t.co2e_kg),
                round::sig(kwh(t.estimated_mj), 3),
                trend_text(t),
            ]
        })
        .collect();
    let header = [
        "TENANT",
        "GPU_H_ALLOC",
        "GPU_H_USED",
        "GPU_H_IDLE",
        "GPU_H_RECL",
        "ENERGY_KWH",
        "STATIC%",
        "CO2E",
        "EST_KWH",
        "TREND",
    ];
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                l.push_str(&format!("{c:<width$}", width = w[0]));
            } else {
                l.push_str(&format!("  {c:>width$}", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.to_vec()));
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if !r.claims.is_empty() {
        out.push_str(
            "\nResourceClaims (DRA; part of their namespace's row; interval records only):\n",
        );
        let width = r
            .claims
            .iter()
            .map(|c| c.claim.len())
            .max()
            .unwrap_or(0)
            .max(5);
        out.push_str(&format!(
            "{:<width$}  {:>11}  {:>10}  {:>8}\n",
            "CLAIM", "GPU_H_ALLOC", "ENERGY_KWH", "CO2E"
        ));
        for c in &r.claims {
            out.push_str(&format!(
                "{:<width$}  {:>11.3}  {:>10}  {:>8}\n",
                c.claim,
                c.gpu_hours_allocated,
                round::sig(c.energy_kwh, 3),
                round::co2e(c.co2e_kg)
            ));
        }
    }
    let c = &r.cluster;
    out.push_str(&format!(
        "\nCluster: measured {} = tenants {} + unattributed {} + unallocated idle {}; {} CO2e; mean utilization {:.1}%; {} intervals ({} estimated)\n",
        round::kwh(c.measured_kwh),
        round::kwh(kwh(c.tenants_mj)),
        round::kwh(kwh(c.unattributed_mj)),
        round::kwh(kwh(c.unallocated_idle_mj)),
        round::co2e(c.co2e_kg),
        c.mean_util_pct,
        r.intervals,
        r.estimated_intervals
    ));
    if !r.dynamic_methods.is_empty() {
        let m: Vec<String> = r
            .dynamic_methods
            .iter()
            .map(|(name, n)| format!("{n} by {name}"))
            .collect();
        out.push_str(&format!(
            "Dynamic energy split (intervals): {}\n",
            m.join(", ")
        ));
    }
    if let Some(p) = &r.previous {
        out.push_str(&format!(
            "Previous period {} .. {}: {}\n",
            zone.iso(p.from_ms),
            zone.iso(p.to_ms),
            if p.held {
                format!(
                    "{} measured, {} CO2e (TREND compares tenant energy with it)",
                    round::kwh(p.measured_kwh),
                    round::co2e(p.co2e_kg)
                )
            } else {
                "not held by the history, no trend".to_string()
            }
        ));
    }
    if let Some(hp) = &r.hourly {
        out.push_str(&hourly_line(hp, zone));
        out.push('\n');
    }
    out.push_str(&format!(
        "Sharing vs dedicated whole GPUs for the same work: {} vs {}, saved {} ({}), {} CO2e; GPU-hours reclaimed {} ({} slices) ({SAVINGS_BASIS})\n",
        round::kwh(kwh(r.comparison.shared_mj)),
        round::kwh(kwh(r.comparison.whole_gpus_mj)),
        round::kwh(r.comparison.saved_kwh),
        round::pct(r.comparison.saved_pct),
        round::co2e(r.comparison.saved_co2e_kg),
        round::sig(h.gpu_hours_reclaimed, 3),
        h.reclaimed_slices,
    ));
    out.push_str("Factors:\n");
    for f in &r.factors {
        out.push_str(&format!(
            "  {} = {}{} {} [{}]{}\n",
            f.name,
            f.min,
            if f.max != f.min {
                format!("..{}", f.max)
            } else {
                String::new()
            },
            f.unit,
            f.sources.join("; "),
            if f.estimate { " (ESTIMATE)" } else { "" }
        ));
        for s in &f.spans {
            out.push_str(&format!(
                "    {} .. {}: {}\n",
                zone.iso(s.from_ms),
                zone.iso(s.to_ms),
                s.source
            ));
        }
    }
    out
}
