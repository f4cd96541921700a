//! The controller's command line and main loop, shared by the `greenslice-controller` binary and
//! `greenslice controller` (the single-binary form tests and demos start as a separate process).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use greenslice_core::clock::SystemClock;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::config::{ControllerConfig, LedgerKind};
use crate::engine::{Controller, CoreConfig};
use crate::ledger::etcd::{Etcd, EtcdConfig, EtcdLedger, LeaderInfo};
use crate::ledger::redb::RedbLedger;
use crate::ledger::{Ledger, MemoryLedger};
use crate::server::ServeOptions;

/// The greenslice controller: places GPU slices on node agents and tracks them.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Address to serve gRPC on [config: listen; default 127.0.0.1:7070].
    #[arg(long)]
    pub listen: Option<String>,
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to serve Prometheus metrics on, at /metrics [config: metrics_listen; default: off].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Where desired state is kept [config: ledger; default redb]: memory (lost on exit), redb (a
    /// crash-safe file in --data-dir, one controller) or etcd (several replicas, one leader).
    #[arg(long, value_enum)]
    pub ledger: Option<LedgerKind>,
    /// Directory of the redb ledger [config: data_dir; default /var/lib/greenslice].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// etcd client URLs, comma-separated [config: etcd.endpoints; default http://127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// etcd key prefix [config: etcd.prefix; default /greenslice/].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// etcd leader lease in seconds [config: etcd.lease_ttl_s; default 5].
    #[arg(long)]
    pub etcd_lease_ttl_s: Option<u64>,
    /// URL standbys name when they refuse calls [config: advertise_url; default http://LISTEN].
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Seconds before orphans found on nodes are torn down [config: orphan_grace_s; default 60].
    #[arg(long)]
    pub orphan_grace_s: Option<u64>,
    /// Seconds of agent silence before its node is unreachable [config: agent_lease_s; default 15].
    #[arg(long)]
    pub agent_lease_s: Option<u64>,
    /// Seconds a stop may take before remaining calls are cut [config: shutdown_timeout_s;
    /// default 5].
    #[arg(long)]
    pub shutdown_timeout_s: Option<u64>,
    /// Serve without TLS or authentication: anyone who can connect may do anything. Loopback
    /// only; for local demos and tests [config: security.insecure].
    #[arg(long)]
    pub insecure: bool,
    /// PEM server certificate [config: security.tls_cert].
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert [config: security.tls_key].
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signs node agents' client certificates [config: security.agent_ca].
    #[arg(long)]
    pub agent_ca: Option<PathBuf>,
    /// PEM revocation lists of the agent CA; re-read on change [config: security.agent_crl].
    #[arg(long)]
    pub agent_crl: Option<PathBuf>,
    /// Tokens file (hashed bearer tokens; re-read on change) [config: security.tokens].
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Tools instead of running the controller.
    #[command(subcommand)]
    pub tool: Option<Tool>,
}

/// Setup tools of the controller binary.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Mint a bearer token: prints the token (once) and the tokens-file entry holding its hash.
    Token(TokenArgs),
    /// Make a private CA, the controller's server certificate and node agents' client
    /// certificates (PEM files), for sites without their own PKI.
    Pki(PkiArgs),
    /// Revoke node agents' certificates of the `pki` CA: writes the CA's revocation list (keeping
    /// what it already revoked) for `[security] agent_crl`. The controller re-reads it within
    /// seconds, refuses those agents and ends their open sessions.
    Revoke(RevokeArgs),
}

/// `revoke` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// The directory `pki` wrote (its ca.crt and ca.key sign the list).
    #[arg(long)]
    pub pki: PathBuf,
    /// PEM certificates to revoke (e.g. <pki>/agent-gpu-01.crt).
    #[arg(long, required = true, num_args = 1..)]
    pub cert: Vec<PathBuf>,
    /// The revocation list to update (default: <pki>/agent-ca.crl).
    #[arg(long)]
    pub crl: Option<PathBuf>,
}

/// `token` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Who holds it (shown in logs).
    #[arg(long)]
    pub name: String,
    /// What it may do.
    #[arg(long, value_enum)]
    pub role: crate::auth::tokens::TokenRole,
    /// The tenant a tenant token acts for.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Append the entry to this tokens file (created if missing) instead of printing it.
    #[arg(long)]
    pub append: Option<PathBuf>,
    /// Days until the token stops working (default: it does not expire).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub valid_for_days: Option<u32>,
}

/// `pki` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PkiArgs {
    /// Directory to write ca.crt/.key, controller.crt/.key and agent-<node>.crt/.key into.
    #[arg(long)]
    pub out: PathBuf,
    /// DNS names and IP addresses clients reach the controller by, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub names: Vec<String>,
    /// Node names to make agent client certificates for, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// When --out already holds a CA (ca.crt, ca.key): also renew the controller's certificate
    /// (for --names). Without it only the --agents certificates are issued with that CA.
    #[arg(long)]
    pub server: bool,
}

fn run_tool(tool: Tool) -> ExitCode {
    use crate::auth::{pki, tokens};
    match tool {
        Tool::Token(a) => {
            let (token, mut entry) = match tokens::mint(&a.name, a.role, a.tenant.as_deref()) {
                Ok(t) => t,
                Err(e) => return fail(2, e),
            };
            if let Some(days) = a.valid_for_days {
                let now_s = greenslice_core::clock::Clock::now_ms(&SystemClock) / 1000;
                entry.expires_unix_s = Some(now_s + i64::from(days) * 86_400);
            }
            let text = tokens::to_toml(&[entry]);
            match &a.append {
                Some(path) => {
                    let existing = std::fs::read_to_string(path).unwrap_or_default();
                    let merged = format!(
                        "{existing}{}{text}",
                        if existing.is_empty() || existing.ends_with('\n') {
                            ""
                        } else {
                            "\n"
                        }
                    );
                    // Refuse to write a file the controller would then refuse (duplicate names).
                    if let Err(e) = tokens::TokenStore::parse(&merged, &path.display().to_string())
                    {
                        return fail(2, e);
                    }
                    if let Err(e) = std::fs::write(path, merged) {
                        return fail(1, format!("cannot write {}: {e}", path.display()));
                    }
                    eprintln!("added token {:?} to {}", a.name, path.display());
                }
                None => {
                    eprintln!("# add this entry to the controller's tokens file:");
                    print!("{text}");
                }
            }
            eprintln!("# the token (shown only now; give it to its holder as GREENSLICE_TOKEN):");
            println!("{token}");
            ExitCode::SUCCESS
        }
        Tool::Revoke(a) => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let crl = a.crl.clone().unwrap_or_else(|| a.pki.join("agent-ca.crl"));
            let (ca_cert, ca_key) = match (read(&a.pki.join("ca.crt")), read(&a.pki.join("ca.key")))
            {
                (Ok(c), Ok(k)) => (c, k),
                (Err(e), _) | (_, Err(e)) => return fail(2, e),
            };
            let mut certs = Vec::new();
            for c in &a.cert {
                match read(c) {
                    Ok(t) => certs.push(t),
                    Err(e) => return fail(2, e),
                }
            }
            let previous = if crl.exists() {
                match read(&crl) {
                    Ok(t) => t,
                    Err(e) => return fail(2, e),
                }
            } else {
                String::new()
            };
            let ca = pki::Pem {
                cert: ca_cert,
                key: ca_key,
            };
            let text = match pki::revocation_list(&ca, &certs, &previous) {
                Ok(t) => t,
                Err(e) => return fail(2, e),
            };
            // Write beside and rename, so the controller never reads half a list.
            let tmp = crl.with_extension("crl.tmp");
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &crl)) {
                return fail(1, format!("cannot write {}: {e}", crl.display()));
            }
            println!("{}", crl.display());
            ExitCode::SUCCESS
        }
        Tool::Pki(a) => {
            let (ca_cert, ca_key) = (a.out.join("ca.crt"), a.out.join("ca.key"));
            let written = if ca_cert.exists() && ca_key.exists() {
                // The CA exists: issue with it (new nodes, renewals) instead of replacing it.
                let ca = match (
                    std::fs::read_to_string(&ca_cert),
                    std::fs::read_to_string(&ca_key),
                ) {
                    (Ok(cert), Ok(key)) => pki::Pem { cert, key },
                    (Err(e), _) | (_, Err(e)) => {
                        return fail(2, format!("cannot read the CA in {}: {e}", a.out.display()));
                    }
                };
                if !a.server && a.agents.is_empty() {
                    return fail(
                        2,
                        format!(
                            "{} already holds a CA: name --agents to issue certificates with it,                              or --server to renew the controller's",
                            a.out.display()
                        ),
                    );
                }
                match pki::issue(&ca, a.server.then_some(&a.names[..]), &a.agents) {
                    Ok(issued) => issued.write_to(&a.out),
                    Err(e) => return fail(2, e),
                }
            } else {
                match pki::generate(&a.names, &a.agents) {
                    Ok(p) => p.write_to(&a.out),
                    Err(e) => return fail(2, e),
                }
            };
            match written {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
    }
}

/// Printed (and logged) when the controller runs in insecure mode.
pub const INSECURE_BANNER: &str = "\
!!! INSECURE MODE: no TLS and no authentication. Anyone who can connect may allocate, read and
!!! release every tenant's GPU slices and register fake nodes. For local demos and tests only;
!!! configure [security] (tls_cert, tls_key, agent_ca, tokens) for anything else.";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The greenslice controller: places GPU slices on node agents and tracks them."
)]
struct Cli {
    #[command(flatten)]
    args: ControllerArgs,
}

/// Parses the process arguments and runs the controller (the `greenslice-controller` binary).
pub async fn main() -> ExitCode {
    run(Cli::parse().args).await
}

fn resolve(args: &ControllerArgs) -> Result<ControllerConfig, String> {
    let mut cfg = match &args.config {
        Some(p) => ControllerConfig::load(p).map_err(|e| e.to_string())?,
        None => ControllerConfig::default(),
    };
    let a = args.clone();
    if let Some(v) = &a.metrics_listen {
        cfg.metrics_listen = v.clone();
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.ledger {
        cfg.ledger = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.etcd_endpoints {
        cfg.etcd.endpoints = v;
    }
    if let Some(v) = a.etcd_prefix {
        cfg.etcd.prefix = v;
    }
    if let Some(v) = a.etcd_lease_ttl_s {
        cfg.etcd.lease_ttl_s = v;
    }
    if let Some(v) = a.advertise_url {
        cfg.advertise_url = Some(v);
    }
    if let Some(v) = a.orphan_grace_s {
        cfg.orphan_grace_s = v;
    }
    if let Some(v) = a.shutdown_timeout_s {
        cfg.shutdown_timeout_s = v;
    }
    if let Some(v) = a.agent_lease_s {
        cfg.agent_lease_s = v;
    }
    if a.insecure {
        cfg.security.insecure = true;
    }
    if let Some(v) = a.tls_cert {
        cfg.security.tls_cert = Some(v);
    }
    if let Some(v) = a.tls_key {
        cfg.security.tls_key = Some(v);
    }
    if let Some(v) = a.agent_ca {
        cfg.security.agent_ca = Some(v);
    }
    if let Some(v) = a.agent_crl {
        cfg.security.agent_crl = Some(v);
    }
    if let Some(v) = a.tokens {
        cfg.security.tokens = Some(v);
    }
    cfg.quotas.validate()?;
    Ok(cfg)
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    error!("{msg}");
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

/// Runs the controller until it is stopped. Exit codes: 0 stopped, 1 runtime error (including
/// losing etcd leadership), 2 bad configuration.
pub async fn run(args: ControllerArgs) -> ExitCode {
    if let Some(tool) = args.tool.clone() {
        return run_tool(tool);
    }
    let cfg = match resolve(&args) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    let policy = match crate::placement::policy_by_name(&cfg.policy) {
        Ok(p) => p,
        Err(e) => return fail(2, e),
    };
    let site_carbon = match cfg.carbon.site_carbon() {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let core = CoreConfig {
        command_timeout: Duration::from_secs(cfg.command_timeout_s.max(1)),
        orphan_grace: Duration::from_secs(cfg.orphan_grace_s),
        terminal_retention: Duration::from_secs(cfg.terminal_retention_s),
        terminal_retention_max: cfg.terminal_retention_max,
        energy_history_retention: (cfg.energy_history_days > 0)
            .then(|| Duration::from_secs(cfg.energy_history_days.saturating_mul(86_400))),
        quotas: cfg.quotas.clone(),
        ..CoreConfig::default()
    };
    // A std listener, so the standby server and the leader can share the bound port.
    let std_listener = match std::net::TcpListener::bind(&cfg.listen) {
        Ok(l) => l,
        Err(e) => return fail(1, format!("cannot listen on {}: {e}", cfg.listen)),
    };
    if let Err(e) = std_listener.set_nonblocking(true) {
        return fail(1, format!("listener: {e}"));
    }
    let addr = match std_listener.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(1, format!("listener: {e}")),
    };
    // The metrics endpoint answers from the start, standby or not: a standby says so on /readyz
    // (503) and in greenslice_leading (0), so Kubernetes routes calls to the leader only.
    let leading = Arc::new(crate::server::http::Leading::default());
    if !cfg.metrics_listen.is_empty() {
        let ml = match TcpListener::bind(&cfg.metrics_listen).await {
            Ok(l) => l,
            Err(e) => {
                return fail(
                    1,
                    format!("cannot listen on {} for metrics: {e}", cfg.metrics_listen),
                );
            }
        };
        if let Ok(a) = ml.local_addr() {
            info!(addr = %a, "metrics at /metrics, readiness at /readyz");
        }
        tokio::spawn(crate::server::http::serve_controller_endpoint(
            leading.clone(),
            ml,
            std::future::pending(),
        ));
    }
    let (auth, tls) = match cfg.security.resolve(addr) {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    if auth.is_insecure() {
        warn!("insecure mode: no TLS, no authentication");
        eprintln!("{INSECURE_BANNER}");
    }
    auth.spawn_reload(Duration::from_secs(2));
    if let Some(t) = &tls {
        t.spawn_reload(Duration::from_secs(2));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = ServeOptions {
        agent_lease: Duration::from_secs(cfg.agent_lease_s.max(1)),
        auth,
        tls,
    };
    // Printed on stdout so scripts and tests can learn the port when --listen uses port 0.
    println!("listening on {addr}");
    let advertise = cfg
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));

    let mut leadership = None;
    let mut etcd_handle = None;
    let ledger: Arc<dyn Ledger> = match cfg.ledger {
        LedgerKind::Memory => {
            warn!("in-memory ledger: every slice is forgotten when this controller stops");
            Arc::new(MemoryLedger::default())
        }
        LedgerKind::Redb => match RedbLedger::open(&cfg.data_dir) {
            Ok(l) => {
                info!(path = %l.path().display(), "redb ledger opened");
                Arc::new(l)
            }
            Err(e) => {
                return fail(
                    2,
                    format!("{e} (set --data-dir, or --ledger memory to keep nothing)"),
                );
            }
        },
        LedgerKind::Etcd => {
            let tls = match greenslice_proto::client::ClientTls::from_files(
                cfg.etcd.ca_cert.as_deref(),
                cfg.etcd.cert.as_deref(),
                cfg.etcd.key.as_deref(),
            ) {
                Ok(t) => t,
                Err(e) => return fail(2, format!("[etcd] TLS: {e}")),
            };
            let ecfg = EtcdConfig {
                tls,
                endpoints: cfg.etcd.endpoints.clone(),
                prefix: cfg.etcd.prefix.clone(),
                lease_ttl_s: i64::try_from(cfg.etcd.lease_ttl_s.max(1)).unwrap_or(5),
                compact_interval: Duration::from_secs(cfg.etcd.compact_interval_s.max(1)),
                ..EtcdConfig::default()
            };
            let etcd = match Etcd::connect(ecfg).await {
                Ok(e) => e,
                Err(e) => return fail(1, e),
            };
            let me = LeaderInfo {
                id: format!(
                    "{}-{}-{:08x}",
                    hostname(),
                    std::process::id(),
                    rand::random::<u32>()
                ),
                url: advertise.clone(),
            };
            let (seen_tx, seen_rx) = watch::channel(None);
            let standby_listener = match std_listener
                .try_clone()
                .map_err(anyhow::Error::from)
                .and_then(|l| TcpListener::from_std(l).map_err(anyhow::Error::from))
            {
                Ok(l) => l,
                Err(e) => return fail(1, format!("listener: {e}")),
            };
            let (stop_standby, standby_stopped) = oneshot::channel::<()>();
            let standby = tokio::spawn(crate::server::standby::serve(
                standby_listener,
                seen_rx,
                options.tls.clone(),
                async {
                    let _ = standby_stopped.await;
                },
            ));
            info!(id = %me.id, "etcd ledger: campaigning for leadership (serving as a standby meanwhile)");
            let won = tokio::select! {
                r = etcd.campaign(&me, &seen_tx) => r,
                _ = stop_signal() => {
                    info!("stopped while standby");
                    return ExitCode::SUCCESS;
                }
            };
            let l = match won {
                Ok(l) => l,
                Err(e) => return fail(1, e),
            };
            let _ = stop_standby.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), standby).await;
            let ledger = EtcdLedger::new(etcd.clone(), &l);
            leadership = Some(l);
            etcd_handle = Some(etcd);
            Arc::new(ledger)
        }
    };

    let controller = match Controller::new(ledger, policy, Arc::new(SystemClock), core).await {
        Ok(c) => c,
        Err(e) => return fail(1, e),
    };
    if let Err(e) = configure(&controller, &cfg, site_carbon) {
        return fail(2, e);
    }
    if let Some(l) = &leadership {
        controller.set_lease(Arc::new(l.clone()));
    }
    let _reclaimer = crate::engine::Controller::spawn_reclaim(controller.clone());
    leading.set(controller.clone());
    let listener = match TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => return fail(1, format!("listener: {e}")),
    };
    info!(addr = %addr, ledger = ?cfg.ledger, "controller serving (gRPC, reflection enabled)");
    let (lost_tx, mut lost_rx) = oneshot::channel::<()>();
    let shutdown = {
        let leadership = leadership.clone();
        let c = controller.clone();
        async move {
            match leadership {
                Some(l) => tokio::select! {
                    _ = stop_signal() => info!("shutting down"),
                    _ = l.lost() => {
                        error!("lost etcd leadership: stopping so a standby can take over");
                        let _ = lost_tx.send(());
                    }
                },
                None => {
                    stop_signal().await;
                    info!("shutting down");
                }
            }
            // Streams that never end on their own (agent sessions) end now, so the agents
            // reconnect to the next leader and the server's graceful stop can complete.
            c.begin_shutdown();
        }
    };
    let bound = Duration::from_secs(cfg.shutdown_timeout_s);
    let serve = crate::server::serve_with(controller.clone(), listener, options, shutdown);
    tokio::pin!(serve);
    let served = tokio::select! {
        r = &mut serve => r,
        // In-flight calls get the bound; then the rest (a watcher that does not go away) is cut.
        _ = async {
            controller.stopping().await;
            tokio::time::sleep(bound).await;
        } => {
            warn!(timeout_s = cfg.shutdown_timeout_s, "calls still open at the shutdown bound: cutting them");
            Ok(())
        }
    };
    if lost_rx.try_recv().is_ok() {
        return ExitCode::from(1);
    }
    // A clean stop loses no energy history: store the hours changed since the last flush.
    if let Err(e) = controller.flush_energy_history().await {
        warn!(error = %e, "could not store the energy history at shutdown");
    }
    if let (Some(etcd), Some(l)) = (etcd_handle, leadership) {
        // Hand over at once instead of making standbys wait for the lease to expire.
        etcd.resign(&l).await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

/// Applies the configuration's policies to a started controller: the site's carbon factors to
/// energy accounting, and the idle policy to reclaim. The idle policy's `threshold_pct` is also
/// what energy accounting counts idle-allocated GPU time with (`Controller::idle_threshold_pct`).
pub fn configure(
    controller: &Controller,
    cfg: &ControllerConfig,
    site_carbon: crate::energy::SiteCarbon,
) -> Result<(), ConfigureError> {
    if !ATTRIBUTION_WINDOW_S.contains(&cfg.attribution_window_s) {
        return Err(ConfigureError::Window(cfg.attribution_window_s));
    }
    if !FIT_OBSERVATION_S.contains(&cfg.fit_observation_s) {
        return Err(ConfigureError::FitObservation(cfg.fit_observation_s));
    }
    controller.reclaim.set_policy(cfg.idle.clone())?;
    controller.configure_energy(crate::energy::accounting::AccountingConfig {
        site: site_carbon,
        window_ms: cfg.attribution_window_s * 1000,
        fit_observation_ms: cfg.fit_observation_s * 1000,
        ..Default::default()
    });
    Ok(())
}

/// The attribution windows a controller may run with, seconds.
pub const ATTRIBUTION_WINDOW_S: std::ops::RangeInclusive<u64> = 5..=600;

/// The lengths of one energy-fit observation a controller may run with, seconds.
pub const FIT_OBSERVATION_S: std::ops::RangeInclusive<u64> = 1..=60;

/// A configuration the started controller refuses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Policy(#[from] crate::reclaim::policy::PolicyError),
    #[error("attribution_window_s must be within 5 and 600 seconds, got {0}")]
    Window(u64),
    #[error("fit_observation_s must be within 1 and 60 seconds, got {0}")]
    FitObservation(u64),
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into())
}
