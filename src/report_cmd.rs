//! `greenslice report`: the per-tenant energy and carbon report, as a table, JSON, CSV or HTML.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use greenslice_controller::report::{self, Report, Zone};
use greenslice_proto::client::Conn;
use greenslice_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ArgError;
use crate::timearg::{TimeArg, time_forms};

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
    #[arg(long, default_value = "0", value_parser = TimeArg::parse, allow_hyphen_values = true, help = concat!("Start [default: the beginning]: ", time_forms!()))]
    pub from: TimeArg,
    #[arg(long, default_value = "now", value_parser = TimeArg::parse, allow_hyphen_values = true, help = concat!("End, exclusive [default: now]: ", time_forms!()))]
    pub to: TimeArg,
    /// Only this tenant's rows.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Renders a report in a format, with times in `zone` (JSON keeps Unix ms only).
pub fn render(r: &Report, format: ReportFormat, zone: &Zone) -> anyhow::Result<String> {
    Ok(match format {
        ReportFormat::Table => report::to_table(r, zone),
        ReportFormat::Json => serde_json::to_string_pretty(r)?,
        ReportFormat::Csv => report::to_csv(r, zone),
        ReportFormat::Html => report::html::render(r, zone),
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

pub async fn run(conn: &Conn, a: ReportArgs, zone: &Zone) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let (from, to) = (a.from.resolve(now), a.to.resolve(now));
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
    let mut r: Report =
        serde_json::from_str(&resp.report_json).context("controller sent an unreadable report")?;
    // A controller from before the headline sends none: derive it from the rest.
    if r.headline == report::Headline::default() {
        r.refresh_headline();
    }
    let text = render(&r, a.format, zone)?;
    bar.finish_and_clear();
    emit(&text, a.out.as_ref())?;
    if let Some(p) = &a.out {
        eprintln!("report written to {}", p.display());
    }
    Ok(())
}
