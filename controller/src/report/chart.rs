//! Inline SVG charts for the HTML report: stacked bars over time and a heat map, each with a
//! labelled time axis (in the report's zone), a labelled value axis with its unit, and a legend.
//! Colours are the Okabe-Ito palette (distinguishable with the common colour-vision
//! deficiencies), and every series also has its own fill pattern, so colour is never the only cue.
//! No scripts: tooltips are SVG `<title>` elements.

use std::fmt::Write;

use super::round;
use super::zone::Zone;

/// Okabe-Ito colours (without black, which the patterns are drawn in).
pub const OKABE_ITO: [&str; 7] = [
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
];

/// Patterns laid over the colours, one per series index.
const PATTERNS: usize = 7;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Width and height of every chart's view box, and the plot area's margins.
const W: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;

/// One series of a stacked bar chart.
pub struct Stack<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// The time axis of a chart: bucket starts and their length, Unix ms.
pub struct TimeAxis<'a> {
    pub starts: &'a [u64],
    pub bucket_ms: u64,
    pub zone: &'a Zone,
}

impl TimeAxis<'_> {
    fn span(&self) -> (u64, u64) {
        let first = self.starts.first().copied().unwrap_or(0);
        let last = self.starts.last().copied().unwrap_or(0) + self.bucket_ms;
        (first, last.max(first + 1))
    }
}

/// Pattern and colour definitions for `n` series, with ids `{prefix}-{k}`; series `k` gets style
/// `k + offset` (so charts of different things need not share colours).
fn pattern_defs(prefix: &str, n: usize, offset: usize) -> String {
    let mut d = String::from("<defs>");
    for k in 0..n {
        let style = k + offset;
        let color = OKABE_ITO[style % OKABE_ITO.len()];
        let marks = match (style + style / OKABE_ITO.len()) % PATTERNS {
            0 => "",
            1 => r##"<path d="M0,6 L6,0" stroke="#000" stroke-width="1" opacity="0.55"/>"##,
            2 => r##"<circle cx="3" cy="3" r="1.2" fill="#000" opacity="0.55"/>"##,
            3 => r##"<path d="M0,3 H6" stroke="#000" stroke-width="1" opacity="0.55"/>"##,
            4 => {
                r##"<path d="M0,0 L6,6 M0,6 L6,0" stroke="#000" stroke-width="0.8" opacity="0.5"/>"##
            }
            5 => r##"<path d="M3,0 V6" stroke="#000" stroke-width="1" opacity="0.55"/>"##,
            _ => r##"<path d="M0,0 L6,6" stroke="#fff" stroke-width="1.4"/>"##,
        };
        let _ = write!(
            d,
            r#"<pattern id="{prefix}-{k}" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="{color}"/>{marks}</pattern>"#
        );
    }
    d.push_str("</defs>");
    d
}

/// A step for about `target` ticks between 0 and `max`: 1, 2, 2.5 or 5 times a power of ten.
fn nice_step(max: f64, target: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / target;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// A value-axis label with as many decimals as the step needs: `0.05`, `0.25`, `20`.
fn tick_label(v: f64, step: f64) -> String {
    let mut decimals = 0usize;
    while decimals < 12
        && ((step * 10f64.powi(decimals as i32)).round() - step * 10f64.powi(decimals as i32)).abs()
            > 1e-6
    {
        decimals += 1;
    }
    format!("{v:.decimals$}")
}

/// Steps for time ticks, ms.
const TIME_STEPS: [u64; 16] = [
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
    2_592_000_000,
    31_536_000_000,
];

/// Tick times (Unix ms) on whole local steps within `[a, b]`: at most about eight.
fn time_ticks(a: u64, b: u64, zone: &Zone) -> Vec<u64> {
    let len = b.saturating_sub(a).max(1);
    let step = TIME_STEPS
        .into_iter()
        .find(|s| len / s <= 8)
        .unwrap_or(TIME_STEPS[TIME_STEPS.len() - 1]);
    // Align to the zone's wall clock (whole hours and days where it is, not UTC's).
    let off = zone.offset_s(a) * 1000;
    let local = a as i64 + off;
    let s = step as i64;
    let mut t = (local.div_euclid(s) + i64::from(local.rem_euclid(s) != 0)) * s - off;
    let mut out = Vec::new();
    while t <= b as i64 && out.len() < 20 {
        if t >= a as i64 {
            out.push(t as u64);
        }
        t += s;
    }
    out
}

/// The x of time `t` in the plot.
fn x_of(t: u64, (a, b): (u64, u64)) -> f64 {
    LEFT + (t.saturating_sub(a)) as f64 / (b - a) as f64 * (W - LEFT - RIGHT)
}

/// The time axis along `y`: ticks labelled with the local time, the date under the first tick
/// and wherever the date changes, and the axis title with the zone.
fn time_axis(svg: &mut String, ax: &TimeAxis<'_>, y: f64) {
    let span = ax.span();
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#333"/>"##,
        W - RIGHT
    );
    let ticks = time_ticks(span.0, span.1, ax.zone);
    let seconds = span.1 - span.0 < 10 * 60_000;
    let mut last_date = String::new();
    for t in ticks {
        let x = x_of(t, span);
        let date = ax.zone.date(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"##,
            y + 4.0,
            y + 14.0,
            ax.zone.clock(t, seconds)
        );
        if date != last_date {
            let _ = write!(
                svg,
                r##"<text x="{x:.1}" y="{:.1}" font-size="9" fill="#555" text-anchor="middle">{date}</text>"##,
                y + 25.0
            );
            last_date = date;
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#333">time ({}), {} per bar</text>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        y + 37.0,
        esc(&ax.zone.label(span.0)),
        round::duration(ax.bucket_ms)
    );
}

/// A legend row of swatches (with their patterns) and names, wrapping at the chart's width.
/// Returns its height.
fn legend(svg: &mut String, prefix: &str, names: &[&str], y: f64) -> f64 {
    let (mut x, mut row) = (LEFT, 0.0);
    for (k, name) in names.iter().enumerate() {
        let w = 22.0 + 6.2 * name.chars().count() as f64;
        if x + w > W - RIGHT && x > LEFT {
            x = LEFT;
            row += 16.0;
        }
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="url(#{prefix}-{k})" stroke="#333" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            y + row,
            x + 16.0,
            y + row + 10.0,
            esc(name)
        );
        x += w + 10.0;
    }
    row + 16.0
}

/// Stacked bars over time: one bar per bucket, one layer per series, with a value axis in `unit`.
/// `id` names the chart (pattern ids are derived from it); `style_offset` shifts its colours and
/// patterns.
pub fn stacked_bars(
    id: &str,
    style_offset: usize,
    title: &str,
    unit: &str,
    ax: &TimeAxis<'_>,
    stacks: &[Stack<'_>],
) -> String {
    let n = ax.starts.len();
    if n == 0 || stacks.is_empty() {
        return "<p class=\"note\">No data in this period.</p>".into();
    }
    let plot_h = 180.0;
    let base = TOP + plot_h;
    let totals: Vec<f64> = (0..n)
        .map(|i| {
            stacks
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max_total = totals.iter().copied().fold(0.0, f64::max);
    let step = nice_step(max_total, 4.0);
    let top = if max_total > 0.0 {
        (max_total / step).ceil() * step
    } else {
        step
    };
    let names: Vec<&str> = stacks.iter().map(|s| s.name).collect();
    let mut svg = String::new();
    // The legend's height depends on the names; lay it out first in a scratch buffer.
    let mut leg = String::new();
    let leg_h = legend(&mut leg, id, &names, base + 46.0);
    let h = base + 46.0 + leg_h + 4.0;
    let _ = write!(
        svg,
        r##"<svg id="{id}" viewBox="0 0 {W} {h:.0}" role="img" aria-labelledby="{id}-t"><title id="{id}-t">{}</title>{}"##,
        esc(title),
        pattern_defs(id, stacks.len(), style_offset)
    );
    // Value axis with grid lines.
    let mut v = 0.0;
    while v <= top + step * 1e-9 {
        let y = base - v / top * plot_h;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            y + 3.5,
            tick_label(v, step)
        );
        v += step;
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#333"/><text transform="translate(12,{:.1}) rotate(-90)" font-size="10" text-anchor="middle">{}</text>"##,
        TOP + plot_h / 2.0,
        esc(unit)
    );
    // Each series is one path of all its bar segments, filled once with its pattern (one fill per
    // series keeps the printed PDF small); each segment's value is a tooltip on an unpainted rect.
    let span = ax.span();
    let mut paths = vec![String::new(); stacks.len()];
    let mut tips = String::new();
    for i in 0..n {
        let x0 = x_of(ax.starts[i], span);
        let x1 = x_of(ax.starts[i] + ax.bucket_ms, span);
        let bw = (x1 - x0 - 1.0).max(0.5);
        let mut y = base;
        for (k, s) in stacks.iter().enumerate() {
            let val = s.values.get(i).copied().unwrap_or(0.0);
            if val <= 0.0 {
                continue;
            }
            let bh = val / top * plot_h;
            y -= bh;
            let _ = write!(paths[k], "M{x0:.1},{y:.2}h{bw:.1}v{bh:.2}h-{bw:.1}Z");
            let _ = write!(
                tips,
                r##"<rect x="{x0:.1}" y="{y:.2}" width="{bw:.1}" height="{bh:.2}" fill="none" pointer-events="all"><title>{} {}: {} {}</title></rect>"##,
                esc(&ax.zone.iso(ax.starts[i])),
                esc(s.name),
                round::sig(val, 3),
                esc(unit)
            );
        }
    }
    for (k, d) in paths.iter().enumerate().filter(|(_, d)| !d.is_empty()) {
        let _ = write!(
            svg,
            r##"<path d="{d}" fill="url(#{id}-{k})" stroke="#fff" stroke-width="0.3"/>"##
        );
    }
    svg.push_str(&tips);
    time_axis(&mut svg, ax, base);
    svg.push_str(&leg);
    svg.push_str("</svg>");
    svg
}

/// Viridis stops (perceptually uniform, readable with colour-vision deficiencies and in grey).
const VIRIDIS: [(f64, [f64; 3]); 5] = [
    (0.0, [68.0, 1.0, 84.0]),
    (0.25, [59.0, 82.0, 139.0]),
    (0.5, [33.0, 145.0, 140.0]),
    (0.75, [94.0, 201.0, 98.0]),
    (1.0, [253.0, 231.0, 37.0]),
];

/// The colour of `t` in [0, 1] on the viridis scale.
pub fn viridis(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let i = VIRIDIS
        .windows(2)
        .position(|w| t <= w[1].0)
        .unwrap_or(VIRIDIS.len() - 2);
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    let c: Vec<u8> = (0..3)
        .map(|j| (a.1[j] + (b.1[j] - a.1[j]) * f).round() as u8)
        .collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Heat map: one row per GPU, one column per bucket, colour by mean utilization (percent), with
/// the time axis and a legend of the colour scale (and the "no data" mark).
pub fn heat_map(
    id: &str,
    title: &str,
    ax: &TimeAxis<'_>,
    rows: &[(&str, &[Option<f64>])],
) -> String {
    let n = ax.starts.len();
    if n == 0 || rows.is_empty() {
        return "<p class=\"note\">No data in this period.</p>".into();
    }
    let left = LEFT;
    let ch = if rows.len() > 40 { 8.0 } else { 12.0 };
    let base = TOP + ch * rows.len() as f64;
    let h = base + 46.0 + 30.0;
    let mut svg = format!(
        r##"<svg id="{id}" viewBox="0 0 {W} {h:.0}" role="img" aria-labelledby="{id}-t"><title id="{id}-t">{}</title><defs><pattern id="{id}-none" width="4" height="4" patternUnits="userSpaceOnUse"><rect width="4" height="4" fill="#fff"/><path d="M0,4 L4,0" stroke="#999" stroke-width="0.7"/></pattern><linearGradient id="{id}-scale">"##,
        esc(title)
    );
    for (p, _) in VIRIDIS {
        let _ = write!(
            svg,
            r##"<stop offset="{:.0}%" stop-color="{}"/>"##,
            p * 100.0,
            viridis(p)
        );
    }
    svg.push_str("</linearGradient></defs>");
    let span = ax.span();
    for (j, (gpu, vals)) in rows.iter().enumerate() {
        let y = TOP + j as f64 * ch;
        let label: String = gpu.chars().take(12).collect();
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="{}" text-anchor="end" font-family="monospace">{}</text>"##,
            left - 4.0,
            y + ch - 2.0,
            if ch < 10.0 { 7 } else { 9 },
            esc(&label)
        );
        for (i, v) in vals.iter().enumerate().take(n) {
            let x0 = x_of(ax.starts[i], span);
            let x1 = x_of(ax.starts[i] + ax.bucket_ms, span);
            let (fill, text) = match v {
                Some(u) => (viridis(u / 100.0), format!("{u:.1}%")),
                None => (format!("url(#{id}-none)"), "no data".to_string()),
            };
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{} {}: {text}</title></rect>"##,
                (x1 - x0 - 0.4).max(0.3),
                ch - 1.0,
                esc(gpu),
                esc(&ax.zone.iso(ax.starts[i]))
            );
        }
    }
    time_axis(&mut svg, ax, base + 2.0);
    // Legend: the colour scale from 0 to 100 % with ticks, and the "no data" mark.
    let ly = base + 50.0;
    let lw = 240.0;
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" font-size="11">mean GPU utilization per bar:</text><rect x="{:.1}" y="{:.1}" width="{lw}" height="10" fill="url(#{id}-scale)" stroke="#333" stroke-width="0.5"/>"##,
        ly + 9.0,
        LEFT + 170.0,
        ly
    );
    for p in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let x = LEFT + 170.0 + p / 100.0 * lw;
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" font-size="9" text-anchor="middle">{p:.0}%</text>"##,
            ly + 10.0,
            ly + 13.0,
            ly + 22.0
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{:.1}" y="{ly}" width="12" height="10" fill="url(#{id}-none)" stroke="#333" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" font-size="11">no data</text></svg>"##,
        LEFT + 170.0 + lw + 24.0,
        LEFT + 170.0 + lw + 40.0,
        ly + 9.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_the_decimals_of_their_step() {
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(tick_label(0.5, 0.25), "0.50");
        assert_eq!(tick_label(40.0, 20.0), "40");
        assert_eq!(tick_label(0.0, 0.0005), "0.0000");
    }

    #[test]
    fn value_steps_are_round_numbers() {
        assert_eq!(nice_step(1.0, 4.0), 0.25);
        assert_eq!(nice_step(0.9, 4.0), 0.25);
        assert_eq!(nice_step(37.0, 4.0), 10.0);
        assert_eq!(nice_step(0.0012, 4.0), 0.0005);
    }

    #[test]
    fn time_ticks_fall_on_whole_local_hours() {
        // 12:10Z .. 15:10Z: ticks at 13:00, 14:00, 15:00 in UTC, on local half hours in +05:30.
        let h = 3_600_000;
        let a = 1_796_212_800_000 + 10 * 60_000; // 2026-12-02T12:10:00Z
        let ticks = time_ticks(a, a + 3 * h, &Zone::utc());
        let clocks: Vec<String> = ticks.iter().map(|t| Zone::utc().clock(*t, false)).collect();
        assert_eq!(
            clocks,
            ["12:30", "13:00", "13:30", "14:00", "14:30", "15:00"]
        );
        let ist = Zone::parse("+05:30").unwrap();
        let local: Vec<String> = time_ticks(a, a + 3 * h, &ist)
            .iter()
            .map(|t| ist.clock(*t, false))
            .collect();
        assert!(
            local
                .iter()
                .all(|c| c.ends_with(":00") || c.ends_with(":30")),
            "{local:?}"
        );
    }

    #[test]
    fn the_colour_scale_runs_dark_to_light() {
        assert_eq!(viridis(0.0), "#440154");
        assert_eq!(viridis(1.0), "#fde725");
        assert_eq!(viridis(f64::NAN), "#440154");
    }
}
