//! `greenslice`: the tenant and ops command line, the demo (the main job) and the benchmarks.

mod cli;
mod demo;
mod output;
mod reclaim_cli;
mod report_cmd;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the control plane allocates and frees many small buffers per
/// call (HTTP/2 frames, protobuf messages, records), and glibc's malloc and free took 15 to 20% of
/// the control-plane benchmark's CPU (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// greenslice: fractional GPU slices (MIG or time-sliced shares), idle reclaim, per-tenant energy.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Controller URL.
    #[arg(
        long,
        global = true,
        env = "GREENSLICE_CONTROLLER",
        default_value = "http://127.0.0.1:7070"
    )]
    controller: String,
    /// Bearer token (tenant or ops) from the controller's operator.
    #[arg(long, global = true, env = "GREENSLICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA that signed the controller's certificate (for https:// controller URLs).
    #[arg(long, global = true, env = "GREENSLICE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask for a GPU slice: whole GPUs, a MIG profile, or a time-sliced share.
    Request(cli::RequestArgs),
    /// Show one slice.
    Get {
        /// Slice id.
        slice: String,
    },
    /// List slices.
    List(cli::ListArgs),
    /// Release a slice.
    Release {
        /// Slice id.
        slice: String,
    },
    /// Stream slice events.
    Watch {
        /// Only this tenant's slices.
        #[arg(long, env = "GREENSLICE_TENANT")]
        tenant: Option<String>,
    },
    /// Nodes, GPUs, slices and free capacity.
    Inventory,
    /// Drain a node: nothing new is placed there. A connected node keeps its slices until they are
    /// released; an unreachable node's slices are marked lost.
    Drain {
        /// Node name.
        node: String,
    },
    /// Make a drained node schedulable again.
    Undrain {
        /// Node name.
        node: String,
    },
    /// Utilization history of a slice, a tenant's slices or a node's GPUs, and idle state.
    Usage(reclaim_cli::UsageArgs),
    /// Keep a slice from idle reclaim for a while.
    Keep(reclaim_cli::KeepArgs),
    /// Per-tenant energy and CO2e report (table, JSON, CSV or self-contained HTML).
    Report(report_cmd::ReportArgs),
    /// Run the whole system in one process on simulated nodes with a synthetic multi-tenant workload.
    Demo(demo::DemoArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(greenslice::bench::BenchCommand),
    /// Run the controller (the same as the greenslice-controller binary).
    #[command(hide = true)]
    Controller(Box<greenslice_controller::cli::ControllerArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Controller(_) = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    } else if matches!(cli.command, Command::Demo(_) | Command::Bench(_)) {
        tracing_subscriber::fmt()
            // The demo prints its own progress; logs only for errors unless RUST_LOG says otherwise.
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "error".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let fmt = cli.output;
    let conn =
        match greenslice_proto::client::ClientTls::from_files(cli.ca_cert.as_deref(), None, None) {
            Ok(tls) => greenslice_proto::client::Conn {
                url: cli.controller.clone(),
                tls,
                token: cli.token.clone(),
            },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(cli::exit::INVALID);
            }
        };
    let result = match cli.command {
        Command::Request(a) => cli::request(&conn, fmt, a).await,
        Command::Get { slice } => cli::get(&conn, fmt, &slice).await,
        Command::List(a) => cli::list(&conn, fmt, a).await,
        Command::Release { slice } => cli::release(&conn, fmt, &slice).await,
        Command::Watch { tenant } => cli::watch(&conn, fmt, tenant).await,
        Command::Inventory => cli::inventory(&conn, fmt).await,
        Command::Drain { node } => cli::drain(&conn, fmt, &node).await,
        Command::Undrain { node } => cli::undrain(&conn, fmt, &node).await,
        Command::Usage(a) => reclaim_cli::usage(&conn, fmt, a).await,
        Command::Keep(a) => reclaim_cli::keep(&conn, fmt, a).await,
        Command::Report(a) => report_cmd::run(&conn, a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(b) => greenslice::bench::run(b, matches!(fmt, output::Format::Json)).await,
        Command::Controller(a) => return greenslice_controller::cli::run(*a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
