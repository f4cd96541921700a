//! `greenslice-agent`: the node agent binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use greenslice_agent::backend::nvml::NvmlBackend;
use greenslice_agent::backend::readonly::ReadOnlyMig;
use greenslice_agent::backend::sim::{SimBackend, SimConfig};
use greenslice_agent::backend::{BackendError, GpuBackend, MPS_CONTROL, on_path};
use greenslice_agent::checkpoint::backend::Checkpointed;
use greenslice_agent::checkpoint::store::CheckpointFile;
use greenslice_agent::config::{AgentConfig, BackendKind};
use greenslice_core::clock::ManualClock;
use tracing::{info, warn};

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
    /// NVML library to load with the nvml backend [config: nvml.library; default: the driver's
    /// libnvidia-ml.so]. The simulated machine's library is libgreenslice_nvml_sim.so.
    #[arg(long)]
    nvml_library: Option<PathBuf>,
    /// Simulated machine: dgx-a100-40, dgx-a100-80, dgx-h100, dgx-h200 [config: sim.machine].
    #[arg(long)]
    machine: Option<String>,
    /// Simulated GPUs in MIG mode (the first N) [config: sim.mig_gpus; default 4].
    #[arg(long)]
    mig_gpus: Option<u32>,
    /// Allow creating and destroying MIG instances [config: mig.manage; default false on NVML,
    /// true on the simulator]. When false, existing free instances are lent to slices instead.
    #[arg(long)]
    mig_manage: Option<bool>,
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of the node checkpoint, what this agent owns and has applied [config:
    /// agent.state_dir; default /var/lib/greenslice with NVML, none with the simulator].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// PEM CA that signed the controller's certificate (https URLs) [config: tls.ca_cert].
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate this agent presents (mutual TLS) [config: tls.cert].
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert [config: tls.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Address to serve Prometheus metrics on, at /metrics (default: off). The agent's only HTTP
    /// endpoint; the device plugin talks to the kubelet over unix sockets.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Serve the kubelet as its device plugin and report pod allocations [config: kubelet.enabled].
    #[arg(long)]
    kubelet: bool,
    /// One-shot: print the inventory, MIG placements and --samples samples as JSON lines on stdout,
    /// then exit (no controller). Read-only unless the config sets mig.manage.
    #[arg(long)]
    dump: bool,
    /// Samples to take with --dump.
    #[arg(long, default_value_t = 3)]
    samples: u32,
    /// Time between samples with --dump, ms (simulated time on the simulator).
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u64,
}

/// Whether MPS supervision is asked for and can run: it needs the control binary; without it
/// shares stay advisory, as with supervision off.
fn mps_supervision(cfg: &AgentConfig) -> bool {
    cfg.mps.supervise
        && greenslice_agent::mps::daemon::found(std::path::Path::new(&cfg.mps.control_binary))
}

/// Builds the configured backend. `auto` takes NVML when the library loads and otherwise fails like
/// `nvml` does: an agent on a GPU node whose driver is broken must not report simulated GPUs to the
/// controller, so falling back to the simulator is left to an explicit `--backend sim`.
/// `sim_clock` puts the simulator on a manual clock (for `--dump`).
fn build_backend(
    cfg: &AgentConfig,
    sim_clock: Option<ManualClock>,
) -> Result<Box<dyn GpuBackend>, BackendError> {
    let manage = cfg.mig.manage_for(cfg.backend);
    let control = PathBuf::from(&cfg.mps.control_binary);
    let supervise = mps_supervision(cfg);
    if cfg.mps.supervise && !supervise {
        warn!(
            binary = %control.display(),
            "mps.supervise is set but the MPS control binary is not found: no MPS daemons are started and share limits are advisory"
        );
    }
    if cfg.mps.supervise && cfg.backend == BackendKind::Sim {
        info!("mps.supervise applies to the NVML backend; the simulator simulates MPS itself");
    }
    let mps = cfg.mps.available.unwrap_or_else(|| {
        cfg.backend == BackendKind::Sim
            || supervise
            || std::env::var_os("PATH").is_some_and(|p| on_path(MPS_CONTROL, &p))
    });
    let nvml = || -> Result<Box<dyn GpuBackend>, BackendError> {
        let mut b = NvmlBackend::new(manage, &cfg.mps.pipe_dir, cfg.nvml.library.as_deref())?
            .with_mps(mps)
            .with_exclusive_shares(supervise);
        if !supervise {
            return Ok(Box::new(b));
        }
        // The device plugin's share GPUs keep a daemon whether or not a pod holds units there.
        let share_gpus: Vec<(String, u64)> = if cfg.kubelet.enabled && cfg.kubelet.share_mps {
            b.inventory()?
                .into_iter()
                .filter(|g| !g.mig_enabled && cfg.kubelet.share_gpus.contains(&g.index))
                .map(|g| (g.uuid, g.memory_bytes))
                .collect()
        } else {
            Vec::new()
        };
        let b = b.with_share_gpus(share_gpus.iter().map(|(u, _)| u.clone()).collect());
        let sup = Arc::new(Mutex::new(greenslice_agent::mps::Supervisor::new(
            greenslice_agent::mps::daemon::Control {
                binary: control.clone(),
                pipe_base: PathBuf::from(&cfg.mps.pipe_dir),
                log_base: PathBuf::from(&cfg.mps.log_dir),
            },
        )));
        // Not with --dump (the only caller with a manual clock): it applies nothing.
        if sim_clock.is_none() {
            greenslice_agent::mps::watch(
                sup.clone(),
                std::time::Duration::from_millis(cfg.mps.check_interval_ms.max(100)),
            );
        }
        info!(pipe_base = %cfg.mps.pipe_dir, "MPS supervision on: one control daemon per share GPU");
        Ok(Box::new(
            greenslice_agent::mps::Supervised::new(Box::new(b), sup).with_share_gpus(&share_gpus),
        ))
    };
    let backend = build_inner(cfg, sim_clock.clone(), &nvml)?;
    Ok(if manage {
        backend
    } else {
        Box::new(ReadOnlyMig::new(backend))
    })
}

/// The backend itself, before `mig.manage` is applied.
fn build_inner(
    cfg: &AgentConfig,
    sim_clock: Option<ManualClock>,
    nvml: &dyn Fn() -> Result<Box<dyn GpuBackend>, BackendError>,
) -> Result<Box<dyn GpuBackend>, BackendError> {
    let sim = || -> Result<Box<dyn GpuBackend>, BackendError> {
        let mut c = SimConfig::new(&cfg.node, cfg.sim.machine.parse()?);
        c.gpus = cfg.sim.gpus;
        c.mig_gpus = cfg.sim.mig_gpus;
        c.mps_pipe_dir = cfg.mps.pipe_dir.clone();
        if let Some(clock) = sim_clock.clone() {
            c = c.with_clock(Arc::new(clock));
        }
        Ok(Box::new(SimBackend::new(c)?))
    };
    match cfg.backend {
        BackendKind::Sim => sim(),
        BackendKind::Nvml => nvml(),
        BackendKind::Auto => match nvml() {
            Ok(b) => {
                info!("backend auto: NVML loaded, using real GPUs");
                Ok(b)
            }
            Err(e) => {
                warn!("backend auto: NVML did not load; not falling back to the simulator");
                Err(e)
            }
        },
    }
}

/// Why `--dump` stopped.
#[derive(Debug, thiserror::Error)]
enum DumpError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot write to stdout: {0}")]
    Io(#[from] std::io::Error),
}

/// `--dump`: inventory, MIG placements and samples as JSON lines.
fn dump(
    backend: &mut dyn GpuBackend,
    node: &str,
    samples: u32,
    interval_ms: u64,
    sim_clock: Option<&ManualClock>,
) -> Result<(), DumpError> {
    use std::io::Write;
    let host = backend.host();
    let gpus = backend.inventory()?;
    let mut out = std::io::stdout().lock();
    let mut line = |v: serde_json::Value| -> Result<(), DumpError> {
        writeln!(out, "{v}")?;
        out.flush()?;
        Ok(())
    };
    line(serde_json::json!({
        "type": "inventory",
        "node": node,
        "backend": backend.kind(),
        "host": {"cpu_milli": host.cpu_milli, "memory_bytes": host.memory_bytes},
        "gpus": gpus,
    }))?;
    for g in gpus.iter().filter(|g| g.mig_capable) {
        match backend.mig_profiles(&g.uuid) {
            Ok(p) => line(serde_json::json!({
                "type": "mig_profiles", "gpu_uuid": g.uuid, "profiles": p,
            }))?,
            Err(e) => warn!(gpu = %g.uuid, error = %e, "cannot list MIG placements"),
        }
    }
    for i in 0..samples {
        if i > 0 {
            match sim_clock {
                Some(c) => c.advance(i64::try_from(interval_ms).unwrap_or(i64::MAX)),
                None => std::thread::sleep(std::time::Duration::from_millis(interval_ms)),
            }
        }
        let s = backend.sample()?;
        line(serde_json::json!({"type": "sample", "sample": s}))?;
    }
    Ok(())
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
    if let Some(v) = args.ca_cert {
        cfg.tls.ca_cert = Some(v);
    }
    if let Some(v) = args.cert {
        cfg.tls.cert = Some(v);
    }
    if let Some(v) = args.key {
        cfg.tls.key = Some(v);
    }
    if let Some(v) = args.backend {
        cfg.backend = v;
    }
    if let Some(v) = args.nvml_library {
        cfg.nvml.library = Some(v);
    }
    if let Some(v) = args.machine {
        cfg.sim.machine = v;
    }
    if let Some(v) = args.mig_gpus {
        cfg.sim.mig_gpus = v;
    }
    if let Some(v) = args.mig_manage {
        cfg.mig.manage = Some(v);
    }
    if let Some(v) = args.state_dir {
        cfg.agent.state_dir = Some(v);
    }
    if let Err(e) = cfg.check() {
        eprintln!("error: invalid configuration (--node or `node` in the config file): {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = cfg.enforce.validate() {
        eprintln!("error: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let sim_clock = args.dump.then(|| {
        let now = greenslice_core::clock::Clock::now_ms(&greenslice_core::clock::SystemClock);
        ManualClock::new(now)
    });
    if args.kubelet {
        cfg.kubelet.enabled = true;
    }
    let mut backend = match build_backend(&cfg, sim_clock.clone()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    if args.dump {
        // Only the simulator runs on the manual clock; real GPUs need real waits.
        let is_sim = backend.kind() == "sim";
        return match dump(
            backend.as_mut(),
            &cfg.node,
            args.samples,
            args.interval_ms,
            sim_clock.as_ref().filter(|_| is_sim),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            // The reader went away (`| head`): nothing left to do.
            Err(DumpError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(4)
            }
        };
    }
    if let Some(dir) = cfg.agent.state_dir_for(cfg.backend) {
        let opened = CheckpointFile::open(&dir)
            .map_err(BackendError::from)
            .and_then(|file| Checkpointed::open(backend, file, &cfg.node));
        backend = match opened {
            Ok((b, _)) => Box::new(b),
            Err(e) => {
                eprintln!(
                    "error: cannot keep the node checkpoint in {} (--state-dir or agent.state_dir): {e}",
                    dir.display()
                );
                return ExitCode::from(2);
            }
        };
    }
    info!(node = %cfg.node, backend = backend.kind(), controller = %cfg.controller, "agent starting");
    // Supervision runs where build_backend could set it up: the NVML backend, with the binary.
    let mps_supervised = backend.kind() == "nvml" && mps_supervision(&cfg);
    let shared = Arc::new(Mutex::new(backend));
    let mut kubelet = if cfg.kubelet.enabled {
        match greenslice_agent::kubelet::KubeletOptions::from_config(&cfg) {
            Ok(mut o) => {
                o.grants = greenslice_agent::kubelet::backend_grants(shared.clone());
                o.allocate.mps_per_gpu = mps_supervised;
                Some(greenslice_agent::kubelet::start(
                    o,
                    greenslice_agent::kubelet::backend_inventory(shared.clone()),
                ))
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let mut dra = if cfg.dra.enabled {
        match greenslice_agent::dra::from_config(&cfg, shared.clone()).await {
            Ok(o) => Some(greenslice_agent::dra::start(o)),
            Err(e) => {
                eprintln!("error: cannot start the DRA driver: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let tls = match cfg.client_tls() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut session = greenslice_agent::session::SessionConfig::new(&cfg.controller, &cfg.node);
    session.tls = tls;
    session.tls_files = Some(cfg.client_tls_files());
    session.kubelet = kubelet.as_ref().map(|k| k.allocations.clone());
    session.enforce = cfg.enforce.clone();
    session.work_stop = Arc::new(greenslice_agent::workstop::WorkStop::new(
        cfg.enforce.term_grace_ms,
    ));
    if kubelet.is_some() && cfg.kubelet.pod_reclaim == greenslice_agent::config::PodReclaim::Evict {
        match greenslice_agent::kubelet::evict::Evictor::new(cfg.kubelet.api_server.as_deref())
            .await
        {
            Ok(e) => session.evictor = Some(e),
            Err(e) => {
                eprintln!(
                    "error: kubelet.pod_reclaim = \"evict\" needs the Kubernetes API server: {e}"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(addr) = &args.metrics_listen {
        let metrics = Arc::new(greenslice_agent::metrics::AgentMetrics::default());
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {addr} for metrics: {e}");
                return ExitCode::from(1);
            }
        };
        if let Ok(a) = listener.local_addr() {
            info!(addr = %a, "metrics at /metrics");
        }
        tokio::spawn(greenslice_agent::metrics::serve(
            metrics.clone(),
            listener,
            std::future::pending(),
        ));
        session.metrics = Some(metrics);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    session.stop = Some(stop_rx);
    // Several controller replicas may be given, comma-separated: the agent tries each in turn.
    let mut run = tokio::spawn(greenslice_agent::session::run_with(session, shared));
    tokio::select! {
        _ = &mut run => {}
        why = stop_signal() => {
            // A clean stop leaves the node as it was: every slice stays on the hardware and in
            // the checkpoint (the next agent takes them back), the command in hand is finished and
            // answered, the session ends (the controller sees the node go at once), and the
            // kubelet sees the plugins gone.
            info!(signal = why, "stopping");
            let _ = stop_tx.send(true);
            if tokio::time::timeout(STOP_BOUND, &mut run).await.is_err() {
                warn!(bound = ?STOP_BOUND, "the session did not end in time; exiting anyway");
                run.abort();
            }
        }
    }
    if let Some(k) = kubelet.as_mut() {
        k.stop();
    }
    if let Some(d) = dra.as_mut() {
        d.stop();
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// How long a stop waits for the command in hand.
const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C); which one.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
