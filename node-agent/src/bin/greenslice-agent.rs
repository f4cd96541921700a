//! `greenslice-agent`: the node agent binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use greenslice_agent::backend::nvml::NvmlBackend;
use greenslice_agent::backend::sim::{SimBackend, SimConfig};
use greenslice_agent::backend::{BackendError, GpuBackend};
use greenslice_agent::config::{AgentConfig, BackendKind};
use tracing::{error, info};

/// The greenslice node agent: reports this node's GPUs to the controller and applies its commands.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Controller URL; several replicas comma-separated [config: controller; default
    /// http://127.0.0.1:7070].
    #[arg(long)]
    controller: Option<String>,
    /// Node name [config: node; default: host name].
    #[arg(long)]
    node: Option<String>,
    /// GPU backend [config: backend; default auto: NVML if the driver loads].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Simulated machine: dgx-a100-40, dgx-a100-80, dgx-h100, dgx-h200 [config: sim.machine].
    #[arg(long)]
    machine: Option<String>,
    /// Simulated GPUs in MIG mode (the first N) [config: sim.mig_gpus; default 4].
    #[arg(long)]
    mig_gpus: Option<u32>,
    /// Address for the agent's own endpoints (metrics, device plugin health) [unused for now].
    #[arg(long)]
    listen: Option<String>,
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn build_backend(cfg: &AgentConfig) -> Result<Box<dyn GpuBackend>, BackendError> {
    let sim = || -> Result<Box<dyn GpuBackend>, BackendError> {
        let mut c = SimConfig::new(&cfg.node, cfg.sim.machine.parse()?);
        c.gpus = cfg.sim.gpus;
        c.mig_gpus = cfg.sim.mig_gpus;
        c.mps_pipe_dir = cfg.mps.pipe_dir.clone();
        Ok(Box::new(SimBackend::new(c)?))
    };
    match cfg.backend {
        BackendKind::Sim => sim(),
        BackendKind::Nvml => Ok(Box::new(NvmlBackend::new(
            cfg.mig.manage,
            &cfg.mps.pipe_dir,
        )?)),
        BackendKind::Auto => match NvmlBackend::new(cfg.mig.manage, &cfg.mps.pipe_dir) {
            Ok(b) => {
                info!("backend auto: NVML loaded, using real GPUs");
                Ok(Box::new(b))
            }
            Err(e) => Err(BackendError::Config(format!(
                "backend auto found no NVIDIA driver ({e}); pass --backend sim to run on simulated GPUs"
            ))),
        },
    }
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
        Some(p) => match AgentConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => AgentConfig::default(),
    };
    if let Some(v) = args.controller {
        cfg.controller = v;
    }
    if let Some(v) = args.node {
        cfg.node = v;
    }
    if let Some(v) = args.backend {
        cfg.backend = v;
    }
    if let Some(v) = args.machine {
        cfg.sim.machine = v;
    }
    if let Some(v) = args.mig_gpus {
        cfg.sim.mig_gpus = v;
    }
    let backend = match build_backend(&cfg) {
        Ok(b) => b,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    info!(node = %cfg.node, backend = backend.kind(), controller = %cfg.controller, "agent starting");
    let shared = Arc::new(Mutex::new(backend));
    tokio::select! {
        // Several controller replicas may be given, comma-separated: the agent tries each in turn.
        _ = greenslice_agent::session::run_any(
            cfg.controller.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect(),
            cfg.node,
            shared,
        ) => {}
        _ = tokio::signal::ctrl_c() => info!("interrupted; exiting"),
    }
    ExitCode::SUCCESS
}
