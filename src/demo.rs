//! `greenslice demo`: the main job. Starts a controller and simulated node agents in one process,
//! connected over real gRPC, runs a seeded multi-tenant workload (whole GPUs, MIG profiles and
//! shares, arrivals and departures), and prints a summary.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::{Machine, Workload};
use greenslice_core::gpu::GpuModel;
use greenslice_core::mig;
use greenslice_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::output::table;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated nodes (8 GPUs each).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nodes: u32,
    /// Requests to make (arrivals).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub requests: u32,
    /// Seed of the workload.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Machine kinds, cycled over the nodes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "dgx-h100,dgx-a100-40,dgx-h200,dgx-a100-80"
    )]
    pub machines: Vec<String>,
    /// GPUs per node in MIG mode (the first N of 8).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub mig_gpus: u32,
    /// Mean lifetime of a slice, in arrivals.
    #[arg(long, default_value_t = 60.0)]
    pub mean_lifetime: f64,
    /// How much faster than real time the simulated clock runs (600: a second is ten minutes).
    #[arg(long, default_value_t = 600.0)]
    pub speedup: f64,
    /// Real milliseconds between arrivals (the run lasts about requests x pace).
    #[arg(long, default_value_t = 4)]
    pub pace_ms: u64,
    /// Folder for the run's energy report (report.html, report.json, report.csv).
    #[arg(long, default_value = "greenslice-demo")]
    pub out: std::path::PathBuf,
}

/// A workload for a new slice: mostly busy, some bursty, some idle or finished-but-held.
fn synth_workload(rng: &mut ChaCha8Rng) -> Workload {
    let r: f64 = rng.random();
    if r < 0.45 {
        Workload::Busy {
            util: rng.random_range(0.3..0.95),
        }
    } else if r < 0.70 {
        Workload::Bursty {
            peak: rng.random_range(0.6..1.0),
            duty: rng.random_range(0.2..0.7),
            burst_ms: 120_000,
        }
    } else if r < 0.85 {
        Workload::IdleStretches {
            util: 0.7,
            busy_ms: 20 * 60_000,
            idle_ms: 40 * 60_000,
        }
    } else if r < 0.95 {
        Workload::Idle
    } else {
        Workload::Finished
    }
}

const TENANTS: [&str; 5] = ["vision", "nlp", "recsys", "speech", "research"];

/// One synthetic request.
fn synth_spec(rng: &mut ChaCha8Rng, models: &[GpuModel]) -> pb::SliceSpec {
    let r: f64 = rng.random();
    let kind = if r < 0.25 {
        let count = *[1u32, 1, 1, 2, 2, 4]
            .get(rng.random_range(0..6))
            .unwrap_or(&1);
        pb::slice_spec::Kind::Whole(pb::WholeGpus { count })
    } else if r < 0.6 {
        let m = &models[rng.random_range(0..models.len())];
        let ps: Vec<_> = mig::profiles(m)
            .iter()
            .filter(|p| !p.media_extension())
            .collect();
        // Small profiles are asked for more often than large ones.
        let weights = [6u32, 3, 3, 2, 1, 1];
        let total: u32 = weights.iter().take(ps.len()).sum();
        let mut pick = rng.random_range(0..total.max(1));
        let mut chosen = ps[0];
        for (p, w) in ps.iter().zip(weights) {
            if pick < w {
                chosen = p;
                break;
            }
            pick -= w;
        }
        pb::slice_spec::Kind::Mig(pb::MigSlice {
            profile: chosen.name.to_string(),
        })
    } else {
        let f = [0.1, 0.2, 0.25, 0.3, 0.5, 0.75][rng.random_range(0..6)];
        let gib = [2u64, 4, 8, 10, 16, 20][rng.random_range(0..6)];
        pb::slice_spec::Kind::Share(pb::ShareSlice {
            compute_fraction: f,
            memory_bytes: gib << 30,
        })
    };
    pb::SliceSpec {
        kind: Some(kind),
        gpu_model: String::new(),
        slice_class: String::new(),
    }
}

fn kind_name(spec: &pb::SliceSpec) -> &'static str {
    match spec.kind {
        Some(pb::slice_spec::Kind::Whole(_)) => "whole",
        Some(pb::slice_spec::Kind::Mig(_)) => "mig",
        Some(pb::slice_spec::Kind::Share(_)) => "share",
        None => "?",
    }
}

#[derive(Default)]
struct Tally {
    requested: u64,
    placed: u64,
    refused: BTreeMap<String, u64>,
    released: u64,
}

pub async fn run(a: DemoArgs, zone: &greenslice_controller::report::Zone) -> anyhow::Result<()> {
    let machines: Vec<Machine> = a
        .machines
        .iter()
        .map(|m| m.parse::<Machine>())
        .collect::<Result<_, _>>()
        .map_err(|e| crate::cli::ArgError(e.to_string()))?;
    if machines.is_empty() {
        return Err(crate::cli::ArgError("--machines needs at least one machine".into()).into());
    }
    if !(a.mean_lifetime.is_finite() && a.mean_lifetime >= 1.0) {
        return Err(crate::cli::ArgError("--mean-lifetime must be >= 1".into()).into());
    }
    if !(a.speedup.is_finite() && (1.0..=100_000.0).contains(&a.speedup)) {
        return Err(crate::cli::ArgError("--speedup must be within 1..=100000".into()).into());
    }
    let started = Instant::now();
    let nodes = harness::nodes(a.nodes as usize, &machines, a.mig_gpus);
    let mut spec = ClusterSpec::new(nodes);
    // The embedded default ledger a user's controller runs on (redb), in a folder of its own that
    // goes when the demo ends: every slice and energy hour is committed to disk as in production.
    let ledger_dir = tempfile::Builder::new()
        .prefix("greenslice-demo-ledger")
        .tempdir()?;
    spec.ledger = std::sync::Arc::new(greenslice_controller::ledger::redb::RedbLedger::open(
        ledger_dir.path(),
    )?);
    let start_ms = greenslice_core::clock::Clock::now_ms(&greenslice_core::clock::SystemClock);
    spec.clock = std::sync::Arc::new(greenslice_core::clock::ScaledClock::new(
        start_ms, a.speedup,
    ));
    // Agents sample every 5 simulated seconds and send every simulated minute.
    spec.sample_interval = std::time::Duration::from_secs_f64(5.0 / a.speedup);
    spec.batch_interval = std::time::Duration::from_secs_f64(60.0 / a.speedup);
    let batch_interval = spec.batch_interval;
    let cluster = harness::start(spec).await?;
    println!(
        "greenslice demo: controller at {} (redb ledger in {}), {} simulated nodes ({}), {} GPUs per node in MIG mode, seed {}",
        cluster.url,
        ledger_dir.path().display(),
        a.nodes,
        a.machines.join(", "),
        a.mig_gpus,
        a.seed
    );
    println!(
        "INSECURE local mode: no TLS, no tokens, loopback only (a real controller needs [security]; see docs/SECURITY.md)"
    );
    let mut tenant = TenantServiceClient::connect(cluster.url.clone()).await?;
    let mut ops = OpsServiceClient::connect(cluster.url.clone()).await?;
    let models: Vec<GpuModel> = machines.iter().map(|m| m.gpu_model()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut held: Vec<(String, String)> = Vec::new(); // (slice id, tenant)
    let mut by_kind: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut by_tenant: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut util_samples: Vec<f64> = Vec::new();
    let depart_p = 1.0 / a.mean_lifetime;

    let bar = ProgressBar::new(u64::from(a.requests));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for i in 0..a.requests {
        // Departures: each held slice leaves with probability 1/mean_lifetime per arrival.
        let mut k = 0;
        while k < held.len() {
            if rng.random::<f64>() < depart_p {
                let (id, t) = held.swap_remove(k);
                tenant
                    .release_slice(pb::ReleaseSliceRequest {
                        slice_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("releasing {id}"))?;
                if let Some(x) =
                    by_tenant.get_mut(TENANTS.iter().find(|n| **n == t).copied().unwrap_or("?"))
                {
                    x.released += 1;
                }
            } else {
                k += 1;
            }
        }
        let t = TENANTS[rng.random_range(0..TENANTS.len())];
        let spec = synth_spec(&mut rng, &models);
        let kind = kind_name(&spec);
        let kt = by_kind.entry(kind).or_default();
        kt.requested += 1;
        let tt = by_tenant.entry(t).or_default();
        tt.requested += 1;
        let res = tenant
            .request_slice(pb::RequestSliceRequest {
                tenant: t.to_string(),
                spec: Some(spec),
                idempotency_key: format!("demo-{}-{i}", a.seed),
                ..Default::default()
            })
            .await;
        match res {
            Ok(r) => {
                let s = r.into_inner().slice.context("no slice in answer")?;
                let w = synth_workload(&mut rng);
                cluster.with_sim(&s.node, |sim| sim.set_workload(&s.id, w));
                held.push((s.id, t.to_string()));
                by_kind.entry(kind).or_default().placed += 1;
                by_tenant.entry(t).or_default().placed += 1;
            }
            Err(st) => {
                let why = format!("{:?}", st.code());
                *by_kind
                    .entry(kind)
                    .or_default()
                    .refused
                    .entry(why.clone())
                    .or_default() += 1;
                *by_tenant
                    .entry(t)
                    .or_default()
                    .refused
                    .entry(why)
                    .or_default() += 1;
            }
        }
        if i % 10 == 0 {
            let inv = ops
                .inventory(pb::InventoryRequest::default())
                .await?
                .into_inner();
            util_samples.push(inv.allocated_milli as f64 / 10.0 / f64::from(inv.gpus_total.max(1)));
            bar.set_message(format!(
                "{} live slices, {:.0}% of GPU capacity allocated",
                held.len(),
                util_samples.last().copied().unwrap_or(0.0)
            ));
        }
        bar.inc(1);
        if a.pace_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(a.pace_ms)).await;
        }
    }
    bar.finish_and_clear();
    let inv_end = ops
        .inventory(pb::InventoryRequest::default())
        .await?
        .into_inner();

    // Summary.
    let refused_str = |t: &Tally| {
        if t.refused.is_empty() {
            "-".to_string()
        } else {
            t.refused
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let rows: Vec<Vec<String>> = by_kind
        .iter()
        .map(|(k, t)| {
            vec![
                k.to_string(),
                t.requested.to_string(),
                t.placed.to_string(),
                format!(
                    "{:.1}%",
                    100.0 * t.placed as f64 / t.requested.max(1) as f64
                ),
                refused_str(t),
            ]
        })
        .collect();
    println!("\nRequests by kind");
    println!(
        "{}",
        table(
            &[
                "KIND",
                "REQUESTED",
                "PLACED",
                "PLACED%",
                "REFUSED (gRPC code)"
            ],
            &rows
        )
    );
    let rows: Vec<Vec<String>> = by_tenant
        .iter()
        .map(|(k, t)| {
            let live = inv_end.slices.iter().filter(|s| s.tenant == *k).count();
            vec![
                k.to_string(),
                t.requested.to_string(),
                t.placed.to_string(),
                t.released.to_string(),
                live.to_string(),
                refused_str(t),
            ]
        })
        .collect();
    println!("\nRequests by tenant");
    println!(
        "{}",
        table(
            &[
                "TENANT",
                "REQUESTED",
                "PLACED",
                "RELEASED",
                "LIVE",
                "REFUSED"
            ],
            &rows
        )
    );
    let mean = util_samples.iter().sum::<f64>() / util_samples.len().max(1) as f64;
    let peak = util_samples.iter().copied().fold(0.0, f64::max);
    let total_req: u64 = by_kind.values().map(|t| t.requested).sum();
    let total_placed: u64 = by_kind.values().map(|t| t.placed).sum();
    println!(
        "\nGPU capacity: {} GPUs; allocated mean {:.1}%, peak {:.1}%, at end {:.1}% ({} live slices)",
        inv_end.gpus_total,
        mean,
        peak,
        inv_end.allocated_milli as f64 / 10.0 / f64::from(inv_end.gpus_total.max(1)),
        inv_end.slices.len()
    );

    // The run's energy report, from the samples the agents streamed.
    tokio::time::sleep(batch_interval * 2).await;
    let report = greenslice_controller::api::ops::energy_report(&cluster.controller, 0, 0, "")
        .await
        .map_err(|s| anyhow::anyhow!("energy report: {}", s.message()))?;
    write_report(&report, &a.out, zone)?;

    // Release everything and check all capacity came back.
    for (id, _) in held.drain(..) {
        tenant
            .release_slice(pb::ReleaseSliceRequest { slice_id: id })
            .await?;
    }
    let inv = ops
        .inventory(pb::InventoryRequest::default())
        .await?
        .into_inner();
    println!(
        "Released the remaining slices: {} live slices, {:.3} GPUs allocated afterwards",
        inv.slices.len(),
        inv.allocated_milli as f64 / 1000.0
    );
    println!(
        "Done: {total_req} requests, {total_placed} placed ({:.1}%), in {:.1} s",
        100.0 * total_placed as f64 / total_req.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    cluster.shutdown().await;
    if !inv.slices.is_empty() || inv.allocated_milli != 0 {
        anyhow::bail!(
            "capacity leak: {} slices still live after releasing all",
            inv.slices.len()
        );
    }
    Ok(())
}

/// Writes the report as HTML, JSON and CSV into `dir` and prints its headline and where it is.
fn write_report(
    r: &greenslice_controller::report::Report,
    dir: &std::path::Path,
    zone: &greenslice_controller::report::Zone,
) -> anyhow::Result<()> {
    use crate::report_cmd::{ReportFormat, render};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, f) in [
        ("report.html", ReportFormat::Html),
        ("report.json", ReportFormat::Json),
        ("report.csv", ReportFormat::Csv),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, render(r, f, zone)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let c = &r.cluster;
    let hours = (r.series.starts.len() as u64 * r.series.bucket_ms) as f64 / 3.6e6;
    println!(
        "\nEnergy over {:.1} simulated hours: {:.2} kWh measured on {} GPUs ({} intervals, {} estimated) = tenants {:.2} + unattributed {:.2} + unallocated idle {:.2} kWh; {:.1} kg CO2e{}",
        hours,
        c.measured_kwh,
        r.gpus.len(),
        r.intervals,
        r.estimated_intervals,
        c.tenants_mj as f64 / greenslice_controller::report::MJ_PER_KWH,
        c.unattributed_mj as f64 / greenslice_controller::report::MJ_PER_KWH,
        c.unallocated_idle_mj as f64 / greenslice_controller::report::MJ_PER_KWH,
        c.co2e_kg,
        if r.co2e_is_estimate {
            " (default factors: estimate)"
        } else {
            ""
        }
    );
    println!(
        "Sharing saved {:.2} kWh ({:.1}%) against dedicated whole GPUs for the same work ({})",
        r.comparison.saved_kwh,
        r.comparison.saved_pct,
        greenslice_controller::report::SAVINGS_BASIS
    );
    println!("Report: {}", dir.join("report.html").display());
    Ok(())
}
