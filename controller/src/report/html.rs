//! The report as one self-contained HTML file: inline CSS and SVG charts, no scripts, no network.
//!
//! Every headline figure is an element `data-headline="<field of Report::headline>"` whose
//! `data-value` is the JSON's exact value and whose text is that value rounded (in `data-unit`);
//! every table cell that carries a number also carries it exactly in a `data-*` attribute; and the
//! whole report document is embedded as JSON. So the page can be checked against the JSON report.

use std::fmt::Write;

use super::chart::{self, Stack, TimeAxis, esc};
use super::round;
use super::zone::Zone;
use super::{
    MJ_PER_KWH, Report, SAVINGS_BASIS, data_span_text, period_text, reason_text, trend_text,
};

/// One headline figure: the rounded number in a span carrying the exact value (written as the
/// JSON writes it), then its unit.
fn fig(key: &str, value: f64, text: String, unit: &str) -> String {
    let exact = serde_json::to_string(&value).unwrap_or_default();
    format!(
        r#"<span class="n" data-headline="{key}" data-value="{exact}" data-unit="{}">{}</span>{}"#,
        esc(unit.trim()),
        esc(&text),
        esc(unit)
    )
}

fn fig_kwh(key: &str, kwh: f64) -> String {
    fig(key, kwh, round::sig(kwh, 3), " kWh")
}

fn fig_co2e(key: &str, kg: f64) -> String {
    let (v, u) = round::co2e_parts(kg);
    fig(key, kg, v, &format!(" {u}"))
}

fn fig_pct(key: &str, p: f64) -> String {
    fig(key, p, round::sig(p, 3), "%")
}

fn fig_gpu_h(key: &str, h: f64) -> String {
    fig(key, h, round::sig(h, 3), " GPU-h")
}

fn fig_count(key: &str, n: u64) -> String {
    format!(r#"<span class="n" data-headline="{key}" data-value="{n}" data-unit="">{n}</span>"#)
}

/// The headline: totals, CO2e side by side, intensity, waste with shares, savings, reclaim.
fn headline(r: &Report) -> String {
    let h = &r.headline;
    let scoped = r.tenant_filter.is_some();
    let market = match h.co2e_market_kg {
        Some(m) => format!(
            r#"<div class="card"><div class="big">{}</div><div class="k">CO2e market-based (contractual instruments)</div></div>"#,
            fig_co2e("co2e_market_kg", m)
        ),
        None => r#"<div class="card muted"><div class="big"><span class="n" data-headline="co2e_market_kg" data-value="" data-unit="">not configured</span></div><div class="k">CO2e market-based: set <code>[carbon] market_g_per_kwh</code> or <code>market_csv</code></div></div>"#.to_string(),
    };
    let est = if r.co2e_is_estimate {
        r#" <span class="est">estimate</span>"#
    } else {
        ""
    };
    let records_only = if h.idle_allocated_kwh_records_only {
        r#" <span class="note">(energy from interval records only: stored hours keep the GPU-hours, not their energy)</span>"#
    } else {
        ""
    };
    format!(
        r#"<section id="headline"><h2>Headline</h2>
<div class="cards">
<div class="card"><div class="big">{measured}</div><div class="k">{measured_label}</div></div>
<div class="card"><div class="big">{loc}</div><div class="k">CO2e location-based (grid average){est}</div></div>
{market}
<div class="card"><div class="big">{per}</div><div class="k">per GPU-hour, over {gpuh} of {gpu_time}</div></div>
</div>
<h3>Waste</h3>
<ul class="waste">
<li><b>Idle-allocated</b>: {ih} held while under the idle threshold, {ihp} of the {alloc} allocated; their energy {ik}, {ikp} of measured.{records_only}</li>
<li><b>Unallocated idle</b>: {uk}, {ukp} of {cluster}measured (idle power of GPUs nobody held).</li>
<li><b>Unattributed</b>: {ak}, {akp} of {cluster}measured (activity no slice accounts for).</li>
</ul>
<h3>Sharing and reclaim</h3>
<ul class="saving">
<li id="comparison" data-shared-mj="{sm}" data-whole-mj="{wm}"><b>Sharing saved</b> {sk}, {sp} ({sc} CO2e) against dedicated whole GPUs for the same {cluster_work}work.</li>
<li><b>Reclaimed</b>: {rh} given back by idle reclaim ({rs} slices).</li>
<li><b>Estimated</b>: {ei} of {ni} GPU intervals estimated from power samples: {ek}, {ep} of measured.</li>
</ul>
<p class="basis" id="comparison-basis">Savings are {basis}.</p>
</section>"#,
        measured = fig_kwh("measured_kwh", h.measured_kwh),
        loc = fig_co2e("co2e_location_kg", h.co2e_location_kg),
        per = fig_kwh("kwh_per_gpu_hour", h.kwh_per_gpu_hour),
        gpuh = fig_gpu_h("gpu_hours", h.gpu_hours),
        ih = fig_gpu_h("idle_allocated_gpu_hours", h.idle_allocated_gpu_hours),
        ihp = fig_pct(
            "idle_allocated_gpu_hours_pct",
            h.idle_allocated_gpu_hours_pct
        ),
        alloc = fig_gpu_h("gpu_hours_allocated", h.gpu_hours_allocated),
        ik = fig_kwh("idle_allocated_kwh", h.idle_allocated_kwh),
        ikp = fig_pct("idle_allocated_pct", h.idle_allocated_pct),
        uk = fig_kwh("unallocated_idle_kwh", h.unallocated_idle_kwh),
        ukp = fig_pct("unallocated_idle_pct", h.unallocated_idle_pct),
        ak = fig_kwh("unattributed_kwh", h.unattributed_kwh),
        akp = fig_pct("unattributed_pct", h.unattributed_pct),
        sm = r.comparison.shared_mj,
        wm = r.comparison.whole_gpus_mj,
        sk = fig_kwh("saved_kwh", h.saved_kwh),
        sp = fig_pct("saved_pct", h.saved_pct),
        sc = fig_co2e("saved_co2e_kg", h.saved_co2e_kg),
        rh = fig_gpu_h("gpu_hours_reclaimed", h.gpu_hours_reclaimed),
        rs = fig_count("reclaimed_slices", u64::from(h.reclaimed_slices)),
        ei = fig_count("estimated_intervals", h.estimated_intervals),
        ni = fig_count("intervals", h.intervals),
        ek = fig_kwh("estimated_kwh", h.estimated_kwh),
        ep = fig_pct("estimated_pct", h.estimated_pct),
        basis = esc(SAVINGS_BASIS),
        cluster = if scoped { "the cluster's " } else { "" },
        cluster_work = if scoped { "cluster-wide " } else { "" },
        gpu_time = if scoped {
            "GPU capacity allocated to it"
        } else {
            "GPU time"
        },
        measured_label = if scoped {
            "measured GPU energy attributed to this tenant"
        } else {
            "measured GPU energy"
        },
    )
}

/// How many interval records split their dynamic energy by each method, as HTML list items.
fn dynamic_methods(r: &Report) -> String {
    if r.dynamic_methods.is_empty() {
        return "no interval records in this period".into();
    }
    r.dynamic_methods
        .iter()
        .map(|(name, n)| {
            format!(
                r#"<span class="dyn-method" data-method="{}" data-count="{n}">{n} intervals by {}</span>"#,
                esc(name),
                esc(name)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The methodology, from the data: scope, measured and estimated, factors, attribution, rounding.
fn methodology(r: &Report, zone: &Zone) -> String {
    let h = &r.headline;
    let pue = r.factors.iter().find(|f| f.name == "pue");
    let pue_text = match pue {
        Some(f) if f.min == f.max => format!("PUE {}", f.min),
        Some(f) => format!("PUE {} to {}", f.min, f.max),
        None => "PUE (none in this period)".into(),
    };
    let mut reasons = String::new();
    for (name, n) in &r.estimated_reasons {
        let _ = write!(
            reasons,
            r#"<li data-reason="{}" data-count="{n}">{n} × {}</li>"#,
            esc(name),
            esc(reason_text(name))
        );
    }
    let estimated = if r.estimated_intervals == 0 {
        "<p>Every interval's energy is a counter delta: nothing is estimated.</p>".to_string()
    } else {
        format!(
            r#"<p id="method-estimated" data-estimated-intervals="{}"><b>{} of {} intervals</b> ({}) are <b>estimated</b>: their energy is the trapezoid integral of the board power samples, because the counter could not be trusted. Why:</p><ul>{reasons}</ul>"#,
            r.estimated_intervals,
            r.estimated_intervals,
            r.intervals,
            esc(&round::kwh(h.estimated_kwh)),
        )
    };
    let mut factors = String::new();
    for f in &r.factors {
        let value = if f.max != f.min {
            format!("{} to {}", f.min, f.max)
        } else {
            f.min.to_string()
        };
        let rows = f.spans.len().max(1);
        let _ = write!(
            factors,
            r#"<tr data-factor="{}" data-min="{}" data-max="{}"><td rowspan="{rows}">{}{}</td><td rowspan="{rows}">{} {}</td>"#,
            esc(&f.name),
            f.min,
            f.max,
            esc(factor_label(&f.name)),
            if f.estimate {
                r#" <span class="est">ESTIMATE</span>"#
            } else {
                ""
            },
            esc(&value),
            esc(&f.unit)
        );
        if f.spans.is_empty() {
            let _ = write!(
                factors,
                "<td>{}</td><td></td></tr>",
                esc(&f.sources.join("; "))
            );
        }
        for (i, s) in f.spans.iter().enumerate() {
            if i > 0 {
                factors.push_str("<tr>");
            }
            let _ = write!(
                factors,
                r#"<td>{}</td><td class="when">{} .. {}</td></tr>"#,
                esc(&s.source),
                esc(&zone.iso(s.from_ms)),
                esc(&zone.iso(s.to_ms))
            );
        }
    }
    let attribution = match r.policy.as_str() {
        "unallocated" => "Static energy (the GPU's idle power × time) is all reported as unallocated idle (policy <code>unallocated</code>): tenants are charged only the dynamic energy above idle, split by each slice's measured activity.".to_string(),
        _ => "Static energy (the GPU's idle power × time) is split among the slices holding the GPU by capacity held × time (policy <code>by_capacity</code>); the capacity nobody held is unallocated idle. Dynamic energy (above idle) is split by each slice's measured activity; activity no slice accounts for is unattributed.".to_string(),
    };
    let market = if r.factors.iter().any(|f| f.name == "market_g_per_kwh") {
        if h.co2e_market_kg.is_some() {
            "Market-based CO2e uses the configured market-based intensity for every interval, reported beside the location-based figure as the GHG Protocol Scope 2 guidance asks."
        } else {
            "A market-based intensity was configured for part of the period only, so no market-based total is given."
        }
    } else {
        "No market-based intensity is configured, so only the location-based CO2e is given (the GHG Protocol Scope 2 guidance asks for both where contractual instruments exist)."
    };
    let hourly = r
        .hourly
        .as_ref()
        .map(|hp| {
            format!(
                r#"<p id="hourly" data-from-ms="{}" data-to-ms="{}">{}</p>"#,
                hp.from_ms,
                hp.to_ms,
                esc(&super::hourly_line(hp, zone))
            )
        })
        .unwrap_or_default();
    format!(
        r#"<section id="methodology"><h2>Methodology</h2>
<h3>What is measured</h3>
<p>Energy is each GPU board's own, read from the driver's total energy counter (NVML) as the difference between readings at interval boundaries; {intervals} GPU intervals over {gpuh}. CPUs, memory, storage, network and cooling are not metered here.</p>
{estimated}
<h3>Scope and carbon</h3>
<p id="method-pue">PUE scope: the kWh figures are GPU energy only; CO2e multiplies them by {pue} to include the facility's overhead, then by the grid intensity: CO2e = GPU energy × PUE × intensity. {market}</p>
<table id="factors"><tr><th>factor</th><th>value</th><th>source</th><th>in use</th></tr>{factors}</table>
<h3>Attribution</h3>
<p id="method-attribution">{attribution} Dynamic energy split by: {methods}. Energy is kept in integer mJ and split by largest remainder, so per GPU and interval: tenants + unattributed + unallocated idle = measured, exactly. A slice interval is <i>idle-allocated</i> when its mean activity is under {thr}% of the capacity it holds. The sharing comparison is {basis}.</p>
<h3>Idle reclaim</h3>
<p id="method-reclaim" data-gpu-hours-reclaimed="{rh}" data-reclaimed-slices="{rs}">{reclaim}</p>
{hourly}
<h3>Figures</h3>
<p>kWh, GPU-hours and percentages are rounded to 3 significant figures; CO2e is in kg below a tonne and in t above. The CSV and the JSON embedded in this page (<code>#report-data</code>) keep the exact values (energy in integer mJ).</p>
<p class="note">{method}</p>
</section>"#,
        intervals = r.intervals,
        gpuh = esc(&round::gpu_h(h.gpu_hours)),
        pue = esc(&pue_text),
        thr = r.idle_threshold_pct,
        basis = esc(SAVINGS_BASIS),
        method = esc(&r.method),
        methods = dynamic_methods(r),
        rh = h.gpu_hours_reclaimed,
        rs = h.reclaimed_slices,
        reclaim = if h.reclaimed_slices == 0 && h.gpu_hours_reclaimed == 0.0 {
            "Idle reclaim gave back no slices in this period.".to_string()
        } else {
            format!(
                "Idle reclaim gave back {} slices in this period: {} (each slice's capacity × the part of the period after its reclaim), capacity that would otherwise have stayed held while idle.",
                h.reclaimed_slices,
                esc(&round::gpu_h(h.gpu_hours_reclaimed))
            )
        },
    )
}

/// A factor's name as a person reads it.
fn factor_label(name: &str) -> &str {
    match name {
        "pue" => "PUE",
        "location_g_per_kwh" => "grid intensity, location-based",
        "market_g_per_kwh" => "grid intensity, market-based",
        other => other,
    }
}

/// Per-tenant table, with the trend against the previous period when there is one.
fn tenant_table(r: &Report, zone: &Zone) -> String {
    let trend_head = match &r.previous {
        Some(p) if p.held => format!(
            "energy vs previous period<br><small>{} .. {}</small>",
            esc(&zone.iso(p.from_ms)),
            esc(&zone.iso(p.to_ms))
        ),
        _ => "energy vs previous period".into(),
    };
    let mut rows = String::new();
    for t in &r.tenants {
        let trend = match t.previous_energy_mj {
            Some(p) => format!(
                r#"<td data-previous-energy-mj="{p}">{} <small>(was {})</small></td>"#,
                esc(&trend_text(t)),
                esc(&round::kwh(p as f64 / MJ_PER_KWH))
            ),
            None => "<td>–</td>".into(),
        };
        let _ = write!(
            rows,
            r#"<tr data-tenant="{n}" data-energy-mj="{e}" data-static-mj="{s}" data-dynamic-mj="{d}" data-co2e-kg="{c}"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{trend}</tr>"#,
            round::sig(t.gpu_hours_allocated, 3),
            round::sig(t.gpu_hours_used, 3),
            round::sig(t.gpu_hours_idle_allocated, 3),
            round::sig(t.gpu_hours_reclaimed, 3),
            round::sig(t.energy_kwh, 3),
            round::sig(t.static_mj as f64 / MJ_PER_KWH, 3),
            round::sig(t.dynamic_mj as f64 / MJ_PER_KWH, 3),
            esc(&round::co2e(t.co2e_kg)),
            t.co2e_market_kg
                .map(|m| esc(&round::co2e(m)))
                .unwrap_or_else(|| "–".into()),
            round::sig(t.estimated_mj as f64 / MJ_PER_KWH, 3),
            n = esc(&t.tenant),
            e = t.energy_mj,
            s = t.static_mj,
            d = t.dynamic_mj,
            c = t.co2e_kg,
        );
    }
    let previous_note = match &r.previous {
        None => r#"<p class="note" id="previous">No previous period to compare with: the report starts at the beginning of the history, or is longer than the time before it.</p>"#.to_string(),
        Some(p) if !p.held => format!(
            r#"<p class="note" id="previous" data-held="false">No trend: the history does not hold the previous period {} .. {} ({}).</p>"#,
            esc(&zone.iso(p.from_ms)),
            esc(&zone.iso(p.to_ms)),
            match p.data_from_ms {
                Some(d) => format!("its data start only at {}", esc(&zone.iso(d))),
                None => "no data".into(),
            }
        ),
        Some(p) => format!(
            r#"<p class="note" id="previous" data-held="true">Previous period {} .. {}: {} measured, {} CO2e location-based.</p>"#,
            esc(&zone.iso(p.from_ms)),
            esc(&zone.iso(p.to_ms)),
            esc(&round::kwh(p.measured_kwh)),
            esc(&round::co2e(p.co2e_kg))
        ),
    };
    format!(
        r#"<table id="tenants"><tr><th>tenant</th><th>GPU-h allocated</th><th>GPU-h used</th><th>GPU-h idle-allocated</th><th>GPU-h reclaimed</th><th>energy kWh</th><th>static kWh</th><th>dynamic kWh</th><th>CO2e location-based</th><th>CO2e market-based</th><th>estimated kWh</th><th>{trend_head}</th></tr>{rows}</table>{previous_note}"#
    )
}

fn gpu_table(r: &Report) -> String {
    let mut gpus = String::new();
    for g in r.gpus.iter().chain(std::iter::once(&r.cluster)) {
        let _ = write!(
            gpus,
            r#"<tr data-gpu="{id}" data-measured-mj="{m}" data-unattributed-mj="{u}" data-unallocated-idle-mj="{i}"><td class="id">{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}/{}</td></tr>"#,
            esc(&g.node),
            esc(&g.model),
            round::sig(g.measured_kwh, 3),
            round::sig(g.tenants_mj as f64 / MJ_PER_KWH, 3),
            round::sig(g.unattributed_mj as f64 / MJ_PER_KWH, 3),
            round::sig(g.unallocated_idle_mj as f64 / MJ_PER_KWH, 3),
            g.mean_util_pct,
            g.estimated_intervals,
            g.intervals,
            id = esc(&g.gpu),
            m = g.measured_mj,
            u = g.unattributed_mj,
            i = g.unallocated_idle_mj,
        );
    }
    format!(
        r#"<table id="gpus"><tr><th>GPU</th><th>node</th><th>model</th><th>measured kWh</th><th>tenants kWh</th><th>unattributed kWh</th><th>unallocated idle kWh</th><th>mean util %</th><th>estimated / intervals</th></tr>{gpus}</table>"#
    )
}

fn charts(r: &Report, zone: &Zone) -> String {
    let s = &r.series;
    let ax = TimeAxis {
        starts: &s.starts,
        bucket_ms: s.bucket_ms,
        zone,
    };
    let e_st: Vec<Stack<'_>> = s
        .tenant_kwh
        .iter()
        .map(|(n, v)| Stack { name: n, values: v })
        .collect();
    let c_st: Vec<Stack<'_>> = s
        .tenant_co2e_kg
        .iter()
        .map(|(n, v)| Stack { name: n, values: v })
        .collect();
    let waste = [
        Stack {
            name: "idle-allocated",
            values: &s.idle_allocated_kwh,
        },
        Stack {
            name: "unallocated idle",
            values: &s.unallocated_idle_kwh,
        },
        Stack {
            name: "unattributed",
            values: &s.unattributed_kwh,
        },
    ];
    let util: Vec<(&str, &[Option<f64>])> = s
        .gpu_util_pct
        .iter()
        .map(|(g, v)| (g.as_str(), v.as_slice()))
        .collect();
    let scope = if r.hourly.is_some() {
        r#"<p class="note">Charts cover the interval records only (see the methodology for the stored hours).</p>"#
    } else {
        ""
    };
    format!(
        r#"<section id="charts"><h2>Over time</h2>{scope}
<figure><figcaption>Energy by tenant (kWh per bar)</figcaption>{}</figure>
<figure><figcaption>CO2e location-based by tenant (kg per bar)</figcaption>{}</figure>
<figure><figcaption>Waste (kWh per bar): idle-allocated, unallocated idle, unattributed</figcaption>{}</figure>
<figure><figcaption>Utilization per GPU (mean board utilization, %)</figcaption>{}</figure>
</section>"#,
        chart::stacked_bars(
            "chart-energy",
            0,
            "energy by tenant over time",
            "kWh",
            &ax,
            &e_st
        ),
        chart::stacked_bars(
            "chart-co2e",
            0,
            "CO2e by tenant over time",
            "kg CO2e",
            &ax,
            &c_st
        ),
        chart::stacked_bars("chart-waste", 4, "waste over time", "kWh", &ax, &waste),
        chart::heat_map("chart-util", "utilization per GPU over time", &ax, &util),
    )
}

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1a1a1a;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #0072B2;padding-bottom:2px;margin-top:1.6em} h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:1em 0;font-size:12px;width:100%} td,th{border-bottom:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} td.id{font-family:monospace;font-size:11px}
#factors td,#factors th{text-align:left} td.when{white-space:nowrap}
.est{background:#F0E442;padding:0 4px;border-radius:3px;font-size:.85em}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{flex:1 1 200px;border:1px solid #ccc;border-radius:6px;padding:10px 14px}
.card .big{font-size:1.7em;font-weight:600} .card .k{color:#444;font-size:.9em} .card.muted .big{font-size:1.1em;color:#555}
.n{font-variant-numeric:tabular-nums} ul.waste li,ul.saving li{margin:.25em 0}
svg{width:100%;height:auto;background:#fff} figure{margin:1em 0} figcaption{font-weight:600;margin-bottom:4px}
.note{color:#555;font-size:13px} .basis{color:#555;font-size:13px} .period{font-size:15px}
@page{size:A4;margin:14mm 12mm}
@media print{
 body{margin:0;max-width:none;font-size:10pt;color:#000} h2{break-after:avoid} h3{break-after:avoid}
 figure,table,.cards,tr,#headline{break-inside:avoid} .card{border-color:#999}
 a{color:#000;text-decoration:none} section{break-inside:auto}
 #charts{break-before:page} #methodology{break-before:page}
}
"#;

/// Renders the report as a self-contained HTML page, with times in `zone`.
pub fn render(r: &Report, zone: &Zone) -> String {
    // The embedded JSON must not close the script element early.
    let json = serde_json::to_string(r)
        .unwrap_or_default()
        .replace("</", "<\\/");
    let data_span = data_span_text(r, zone)
        .map(|d| format!("<br>Data: {}", esc(&d)))
        .unwrap_or_else(|| "<br>No data in this period.".into());
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>greenslice energy and carbon report, {period_plain}</title>
<style>{CSS}</style></head><body>
<header><h1>GPU energy and carbon report</h1>
<p class="period" id="period" data-from-ms="{from_ms}" data-to-ms="{to_ms}">Period <b>{period}</b>, times in {zone_label}{tf}{data_span}</p>
{estimate_banner}</header>
{headline}
<section id="tenant-section"><h2>Per tenant</h2>{tenants}</section>
{charts}
<section id="gpu-section"><h2>Per GPU and cluster</h2><p class="note">Static energy policy: <b>{policy}</b>. {intervals} GPU intervals, {est} estimated from power samples, {skipped} skipped (bad data, over the controller's lifetime).</p>{gpus}</section>
{methodology}
<script type="application/json" id="report-data">{json}</script>
</body></html>
"#,
        period_plain = esc(&period_text(r, zone)),
        period = esc(&period_text(r, zone)),
        from_ms = r.from_ms,
        to_ms = r.to_ms,
        zone_label = esc(&zone.label(r.to_ms)),
        tf = r
            .tenant_filter
            .as_ref()
            .map(|t| format!("; tenant <b>{}</b> only", esc(t)))
            .unwrap_or_default(),
        estimate_banner = if r.co2e_is_estimate {
            r#"<p><span class="est">CO2e figures use default factors (estimates); configure the site's PUE and grid intensity for reportable figures.</span></p>"#
        } else {
            ""
        },
        headline = headline(r),
        tenants = tenant_table(r, zone),
        charts = charts(r, zone),
        policy = esc(&r.policy),
        intervals = r.intervals,
        est = r.estimated_intervals,
        skipped = r.skipped_intervals,
        gpus = gpu_table(r),
        methodology = methodology(r, zone),
    )
}
