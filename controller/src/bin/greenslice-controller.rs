//! `greenslice-controller`: the controller binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use greenslice_controller::config::ControllerConfig;
use greenslice_controller::controller::{Controller, CoreConfig};
use greenslice_controller::ledger::MemoryLedger;
use greenslice_core::clock::SystemClock;
use tracing::info;

/// The greenslice controller: places GPU slices on node agents and tracks them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve gRPC on [config: listen; default 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<String>,
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve Prometheus metrics on, at /metrics [config: metrics_listen; default: off].
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) => match ControllerConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => ControllerConfig::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        cfg.metrics_listen = m;
    }
    let core = CoreConfig {
        command_timeout: Duration::from_secs(cfg.command_timeout_s.max(1)),
    };
    let policy = match greenslice_controller::placement::policy_by_name(&cfg.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let controller = match Controller::new(
        Arc::new(MemoryLedger::default()),
        policy,
        Arc::new(SystemClock),
        core,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = controller.reclaim.set_policy(cfg.idle.clone()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let _reclaimer = greenslice_controller::reclaim::spawn(controller.clone());
    if !cfg.metrics_listen.is_empty() {
        let ml = match tokio::net::TcpListener::bind(&cfg.metrics_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: cannot listen on {} for metrics: {e}",
                    cfg.metrics_listen
                );
                return ExitCode::from(1);
            }
        };
        if let Ok(a) = ml.local_addr() {
            info!(addr = %a, "metrics at /metrics");
        }
        tokio::spawn(greenslice_controller::metrics::serve_controller(
            controller.clone(),
            ml,
            std::future::pending(),
        ));
    }
    let listener = match tokio::net::TcpListener::bind(&cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", cfg.listen);
            return ExitCode::from(1);
        }
    };
    info!(addr = %cfg.listen, "controller serving (gRPC, reflection enabled)");
    // Printed on stdout so scripts and tests can learn the port when --listen uses port 0.
    if let Ok(a) = listener.local_addr() {
        println!("listening on {a}");
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        info!("shutting down");
    };
    match greenslice_controller::server::serve(controller, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
