//! The report as one self-contained HTML file: inline CSS and SVG charts, no scripts, no network.
//! Every table cell that carries a number also carries it exactly in a `data-*` attribute, and the
//! whole report document is embedded as JSON, so the page can be checked against the JSON report.

use std::fmt::Write;

use super::{MJ_PER_KWH, Report};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: [&str; 10] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
    "#1f78b4", "#b2df8a",
];

/// Stacked bars of energy by tenant per bucket.
fn tenant_chart(r: &Report) -> String {
    let (w, h, pad) = (760.0, 240.0, 40.0);
    let n = r.series.starts.len();
    if n == 0 {
        return "<p>No data in this period.</p>".into();
    }
    let totals: Vec<f64> = (0..n)
        .map(|i| r.series.tenant_kwh.values().map(|v| v[i]).sum::<f64>())
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max).max(1e-12);
    let bw = (w - pad) / n as f64;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="energy by tenant over time">"#
    );
    for i in 0..n {
        let mut y = h - 20.0;
        for (k, (t, v)) in r.series.tenant_kwh.iter().enumerate() {
            let bh = v[i] / max * (h - 40.0);
            y -= bh;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {:.5} kWh</title></rect>"#,
                pad + i as f64 * bw,
                y,
                (bw - 1.0).max(0.5),
                bh,
                PALETTE[k % PALETTE.len()],
                esc(t),
                v[i]
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="14" font-size="11">{:.4} kWh</text><text x="0" y="{}" font-size="11">0</text></svg>"#,
        max,
        h - 20.0
    );
    let legend: String = r
        .series
        .tenant_kwh
        .keys()
        .enumerate()
        .map(|(k, t)| {
            format!(
                r#"<span class="key"><i style="background:{}"></i>{}</span>"#,
                PALETTE[k % PALETTE.len()],
                esc(t)
            )
        })
        .collect();
    format!("{svg}<div>{legend}</div>")
}

/// Heat map: one row per GPU, one column per bucket, color by mean utilization.
fn heat_map(r: &Report) -> String {
    let n = r.series.starts.len();
    let rows = r.series.gpu_util_pct.len();
    if n == 0 || rows == 0 {
        return "<p>No data in this period.</p>".into();
    }
    let (cw, ch, left) = (14.0, 10.0, 110.0);
    let w = left + cw * n as f64;
    let h = ch * rows as f64 + 4.0;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="utilization heat map per GPU">"#
    );
    for (j, (gpu, vals)) in r.series.gpu_util_pct.iter().enumerate() {
        let y = j as f64 * ch;
        let _ = write!(
            svg,
            r#"<text x="0" y="{:.1}" font-size="8">{}</text>"#,
            y + ch - 2.0,
            esc(&gpu.chars().take(18).collect::<String>())
        );
        for (i, v) in vals.iter().enumerate() {
            let (fill, label) = match v {
                Some(u) => {
                    let t = (u / 100.0).clamp(0.0, 1.0);
                    // White (idle) to deep green (busy).
                    let g = (255.0 - t * 150.0) as u8;
                    let rb = (255.0 - t * 230.0) as u8;
                    (format!("rgb({rb},{g},{rb})"), format!("{u:.1}%"))
                }
                None => ("#eee".to_string(), "no data".to_string()),
            };
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{}" height="{}" fill="{}"><title>{}</title></rect>"#,
                left + i as f64 * cw,
                y,
                cw - 1.0,
                ch - 1.0,
                fill,
                label
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Waste over time: unallocated idle and unattributed energy per bucket, as two polylines.
fn waste_chart(r: &Report) -> String {
    let n = r.series.starts.len();
    if n == 0 {
        return "<p>No data in this period.</p>".into();
    }
    let (w, h, pad) = (760.0, 180.0, 40.0);
    let max = r
        .series
        .unallocated_idle_kwh
        .iter()
        .chain(&r.series.unattributed_kwh)
        .copied()
        .fold(0.0, f64::max)
        .max(1e-12);
    let line = |v: &[f64], color: &str| {
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, x)| {
                format!(
                    "{:.1},{:.1}",
                    pad + i as f64 * (w - pad) / (n.max(2) - 1) as f64,
                    h - 20.0 - x / max * (h - 40.0)
                )
            })
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        )
    };
    format!(
        r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="waste over time">{}{}<text x="0" y="14" font-size="11">{:.5} kWh</text></svg><div><span class="key"><i style="background:#d95f02"></i>unallocated idle</span><span class="key"><i style="background:#7570b3"></i>unattributed</span></div>"#,
        line(&r.series.unallocated_idle_kwh, "#d95f02"),
        line(&r.series.unattributed_kwh, "#7570b3"),
        max
    )
}

/// Renders the report as a self-contained HTML page.
pub fn render(r: &Report) -> String {
    let mut tenants = String::new();
    for t in &r.tenants {
        let _ = write!(
            tenants,
            r#"<tr data-tenant="{n}" data-energy-mj="{e}" data-static-mj="{s}" data-dynamic-mj="{d}" data-co2e-kg="{c}"><td>{n}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.5}</td><td>{:.5}</td><td>{:.5}</td><td>{:.4}</td><td>{:.5}</td></tr>"#,
            t.gpu_hours_allocated,
            t.gpu_hours_used,
            t.gpu_hours_idle_allocated,
            t.gpu_hours_reclaimed,
            t.energy_kwh,
            t.static_mj as f64 / MJ_PER_KWH,
            t.dynamic_mj as f64 / MJ_PER_KWH,
            t.co2e_kg,
            t.estimated_mj as f64 / MJ_PER_KWH,
            n = esc(&t.tenant),
            e = t.energy_mj,
            s = t.static_mj,
            d = t.dynamic_mj,
            c = t.co2e_kg,
        );
    }
    let mut gpus = String::new();
    for g in r.gpus.iter().chain(std::iter::once(&r.cluster)) {
        let _ = write!(
            gpus,
            r#"<tr data-gpu="{id}" data-measured-mj="{m}" data-unattributed-mj="{u}" data-unallocated-idle-mj="{i}"><td>{id}</td><td>{}</td><td>{}</td><td>{:.5}</td><td>{:.5}</td><td>{:.5}</td><td>{:.5}</td><td>{:.1}</td><td>{}/{}</td></tr>"#,
            esc(&g.node),
            esc(&g.model),
            g.measured_kwh,
            g.tenants_mj as f64 / MJ_PER_KWH,
            g.unattributed_mj as f64 / MJ_PER_KWH,
            g.unallocated_idle_mj as f64 / MJ_PER_KWH,
            g.mean_util_pct,
            g.estimated_intervals,
            g.intervals,
            id = esc(&g.gpu),
            m = g.measured_mj,
            u = g.unattributed_mj,
            i = g.unallocated_idle_mj,
        );
    }
    let mut factors = String::new();
    for f in &r.factors {
        let _ = write!(
            factors,
            "<li><b>{}</b> = {}{} {} — {}{}</li>",
            esc(&f.name),
            f.min,
            if f.max != f.min {
                format!("..{}", f.max)
            } else {
                String::new()
            },
            esc(&f.unit),
            esc(&f.sources.join("; ")),
            if f.estimate {
                " <span class=\"est\">ESTIMATE</span>"
            } else {
                ""
            }
        );
    }
    // The embedded JSON must not close the script element early.
    let json = serde_json::to_string(r)
        .unwrap_or_default()
        .replace("</", "<\\/");
    let c = &r.comparison;
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>greenslice energy report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}} td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .est{{background:#fde68a;padding:0 4px;border-radius:3px}}
.key{{margin-right:1em;font-size:12px}} .key i{{display:inline-block;width:10px;height:10px;margin-right:4px}}
svg{{width:100%;height:auto;background:#fafafa}} .note{{color:#555;font-size:13px}}
</style></head><body>
<h1>greenslice energy and carbon report</h1>
<p class="note">Period {from} .. {to} (Unix ms){tf}. Static energy policy: <b>{policy}</b>. {intervals} GPU intervals, {est} estimated from power samples, {skipped} skipped.</p>
{estimate_banner}{hourly}
<h2>Per tenant</h2>
<table id="tenants"><tr><th>tenant</th><th>GPU-h allocated</th><th>GPU-h used</th><th>GPU-h idle-allocated</th><th>GPU-h reclaimed</th><th>energy kWh</th><th>static kWh</th><th>dynamic kWh</th><th>CO2e kg</th><th>estimated kWh</th></tr>{tenants}</table>
<h2>Energy by tenant over time</h2>{tchart}
<h2>Utilization per GPU</h2>{heat}
<h2>Waste over time</h2>{waste}
<h2>Per GPU and cluster</h2>
<table id="gpus"><tr><th>GPU</th><th>node</th><th>model</th><th>measured kWh</th><th>tenants kWh</th><th>unattributed kWh</th><th>unallocated idle kWh</th><th>mean util %</th><th>estimated intervals</th></tr>{gpus}</table>
<h2>Sharing against dedicated GPUs</h2>
<p id="comparison" data-shared-mj="{sm}" data-whole-mj="{wm}">The same work on dedicated whole GPUs would have drawn {wk:.4} kWh; with sharing it drew {sk:.4} kWh: {sv:.4} kWh ({sp:.1}%) and {sc:.3} kg CO2e saved.</p>
<p class="basis" id="comparison-basis">Savings are {basis}.</p>
<h2>Factors and sources</h2><ul>{factors}</ul>
<p class="note">Method: {method}</p>
<script type="application/json" id="report-data">{json}</script>
</body></html>
"#,
        from = r.from_ms,
        to = r.to_ms,
        tf = r
            .tenant_filter
            .as_ref()
            .map(|t| format!(", tenant {}", esc(t)))
            .unwrap_or_default(),
        policy = esc(&r.policy),
        intervals = r.intervals,
        est = r.estimated_intervals,
        skipped = r.skipped_intervals,
        estimate_banner = if r.co2e_is_estimate {
            r#"<p><span class="est">CO2e figures use default factors (estimates); configure the site's PUE and grid intensity for reportable figures.</span></p>"#
        } else {
            ""
        },
        hourly = r
            .hourly
            .as_ref()
            .map(|h| {
                format!(
                    r#"<p class="note" id="hourly" data-from-ms="{}" data-to-ms="{}">{}</p>"#,
                    h.from_ms,
                    h.to_ms,
                    esc(&super::hourly_line(h))
                )
            })
            .unwrap_or_default(),
        tchart = tenant_chart(r),
        heat = heat_map(r),
        waste = waste_chart(r),
        sm = c.shared_mj,
        wm = c.whole_gpus_mj,
        wk = c.whole_gpus_mj as f64 / MJ_PER_KWH,
        sk = c.shared_mj as f64 / MJ_PER_KWH,
        sv = c.saved_kwh,
        sp = c.saved_pct,
        sc = c.saved_co2e_kg,
        basis = esc(super::SAVINGS_BASIS),
        method = esc(&r.method),
    )
}
