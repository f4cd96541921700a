//! `greenslice report`: the per-tenant energy and carbon report, as a table, JSON, CSV or HTML.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use greenslice_controller::report::{self, Report};
use greenslice_proto::client::Conn;
use greenslice_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ArgError;

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
    Html,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Start: Unix ms, RFC 3339 (2026-11-29T12:00:00Z), "now", or relative to now (-24h, -30m, -7d).
    #[arg(long, default_value = "0")]
    pub from: String,
    /// End (exclusive), same forms as --from.
    #[arg(long, default_value = "now")]
    pub to: String,
    /// Only this tenant's rows.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a time as Unix ms; `now_ms` anchors "now" and relative forms.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, ArgError> {
    let t = s.trim();
    let bad = || {
        ArgError(format!(
            "invalid time {s:?}: use Unix ms, RFC 3339 (2026-11-29T12:00:00Z), now, or -24h / -30m / -7d"
        ))
    };
    if t == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = t.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => greenslice_core::time::HOUR_MS_I64,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms - n.checked_mul(ms).ok_or_else(bad)?);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    // RFC 3339: YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| t.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &t[19..];
    let mut frac_ms = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
        let ms_str: String = f[..digits].chars().chain("000".chars()).take(3).collect();
        frac_ms = ms_str.parse().map_err(|_| bad())?;
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let oh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let om: i64 = o[4..6].parse().map_err(|_| bad())?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    Ok(secs * 1000 + frac_ms)
}

/// Renders a report in a format.
pub fn render(r: &Report, format: ReportFormat) -> anyhow::Result<String> {
    Ok(match format {
        ReportFormat::Table => report::to_table(r),
        ReportFormat::Json => serde_json::to_string_pretty(r)?,
        ReportFormat::Csv => report::to_csv(r),
        ReportFormat::Html => report::html::render(r),
    })
}

/// Writes the rendered report to `out` or standard output.
pub fn emit(text: &str, out: Option<&PathBuf>) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

pub async fn run(conn: &Conn, a: ReportArgs) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let from = parse_time(&a.from, now)?;
    let to = parse_time(&a.to, now)?;
    if from >= to {
        return Err(ArgError(format!("--from ({from}) must be before --to ({to})")).into());
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message("computing the energy report");
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut c = crate::cli::ops_client(conn).await?;
    let resp = c
        .energy_report(pb::EnergyReportRequest {
            from_unix_ms: from,
            to_unix_ms: to,
            tenant: a.tenant.unwrap_or_default(),
        })
        .await?
        .into_inner();
    bar.set_message("rendering");
    let r: Report =
        serde_json::from_str(&resp.report_json).context("controller sent an unreadable report")?;
    let text = render(&r, a.format)?;
    bar.finish_and_clear();
    emit(&text, a.out.as_ref())?;
    if let Some(p) = &a.out {
        eprintln!("report written to {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(
            parse_time("2026-11-29T12:00:00Z", 0).unwrap(),
            1_795_953_600_000
        );
        assert_eq!(
            parse_time("2026-11-29T13:00:00+01:00", 0).unwrap(),
            1_795_953_600_000
        );
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z", 0).unwrap(), 1_500);
        assert_eq!(parse_time("now", 42).unwrap(), 42);
        assert_eq!(
            parse_time("-2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert_eq!(parse_time("12345", 0).unwrap(), 12345);
        for bad in ["yesterday", "-2w", "2026-13-01T00:00:00Z", "2026-11-29", ""] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }
}
