//! `greenslice bench control-plane`: how many request+release round trips per second the controller
//! sustains through its real gRPC API, with simulated node agents confirming every change over
//! their real session, on a durable ledger; and the latency of each round trip.
//!
//! By default everything runs in this process on one tokio runtime (clients, controller, agents),
//! so the numbers are what one machine's cores give all three together. `--split` runs the
//! controller and the agents each in a process of their own (this binary's `controller` and `bench
//! agents`), so the controller's latency is measured apart from the clients' and agents' runtimes
//! (they still share the machine's cores) and each process's CPU time is reported;
//! `--against URL` measures a controller someone else started (with its agents). Each round trip is: RequestSlice
//! (commit PENDING and wait for it, agent applies, queue ACTIVE) then ReleaseSlice (commit
//! RELEASING and wait for it, agent tears down, queue RELEASED): two unary RPCs, two agent
//! commands, four commits of which two are waited for (see docs/DURABILITY.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::ledger::etcd::{Etcd, EtcdConfig, EtcdLedger, LeaderInfo};
use greenslice_controller::ledger::redb::RedbLedger;
use greenslice_controller::ledger::{GroupCommit, Ledger, MemoryLedger};
use greenslice_proto::client::{Authed, Conn};
use greenslice_proto::v1 as pb;
use pb::tenant_service_client::TenantServiceClient;
use serde::Serialize;

use crate::harness::{self, ClusterSpec};

/// Ledger to benchmark on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchLedger {
    Memory,
    Redb,
    Etcd,
}

/// What each request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchKind {
    /// A quarter-GPU time-sliced share with 10 GiB (four fit on a GPU).
    Share,
    /// One whole GPU.
    Whole,
}

/// Arguments of `greenslice bench control-plane`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus_per_node: u32,
    /// Ledger the controller commits to.
    #[arg(long, value_enum, default_value_t = BenchLedger::Redb)]
    pub ledger: BenchLedger,
    /// Round trips in flight at once (client tasks).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// What each request asks for.
    #[arg(long, value_enum, default_value_t = BenchKind::Share)]
    pub kind: BenchKind,
    /// Client connections the tasks share (HTTP/2 multiplexes many calls on each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Directory for the redb file (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Serve as a real deployment does: TLS on every connection, an ops bearer token on every
    /// tenant call, agents with client certificates (default: insecure, plaintext).
    #[arg(long)]
    pub secure: bool,
    /// etcd client URLs, comma-separated (for --ledger etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Run the controller and the agents in processes of their own (plaintext only).
    #[arg(long, conflicts_with_all = ["against", "secure"])]
    pub split: bool,
    /// Measure the controller at this URL (plaintext; its agents already connected, e.g. by
    /// `greenslice bench agents`): only the clients run here. --nodes and --gpus-per-node are then
    /// what it is expected to hold. (Not the global --controller, which a tenant's environment
    /// may set: benchmarking a controller is always asked for explicitly.)
    #[arg(long, conflicts_with = "secure")]
    pub against: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(mut v: Vec<u64>) -> Latency {
        v.sort_unstable();
        let at = |q: f64| -> u64 {
            if v.is_empty() {
                0
            } else {
                v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
            }
        };
        Latency {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: v.last().copied().unwrap_or(0),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneReport {
    /// "in-process", "split" or "external".
    pub mode: &'static str,
    pub nodes: u32,
    pub gpus: u32,
    pub ledger: BenchLedger,
    pub kind: BenchKind,
    pub concurrency: u32,
    /// TLS, tokens and agent certificates (as deployed), or plaintext.
    pub secure: bool,
    /// Measured seconds.
    pub seconds: f64,
    /// Request+release round trips completed in the measured window.
    pub round_trips: u64,
    /// Round trips per second (each is one allocation made and released): allocations/s.
    pub round_trips_per_s: f64,
    /// Round trips actually in flight on average (Little's law: the measured round trips' total
    /// latency over the window). Below `concurrency` when the clients themselves wait for CPU.
    pub achieved_in_flight: f64,
    /// Round trips that failed (any error).
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Whole round trip (request then release), per round trip.
    pub round_trip: Latency,
    /// RequestSlice alone.
    pub request: Latency,
    /// ReleaseSlice alone.
    pub release: Latency,
    /// Durable transactions the ledger wrote in the window (0 for memory).
    pub ledger_transactions: u64,
    /// Records written per transaction, on average.
    pub records_per_transaction: f64,
    /// CPU seconds this process used in the measured window (user + system, all threads; Linux
    /// only, 0 elsewhere). On a shared machine, round trips per CPU second says what the code
    /// costs independently of what else runs.
    pub cpu_seconds: f64,
    /// Round trips per CPU second of this process.
    pub round_trips_per_cpu_s: f64,
    /// With --split: CPU seconds of the controller's process and of the agents' in the window.
    pub controller_cpu_seconds: Option<f64>,
    pub agents_cpu_seconds: Option<f64>,
}

/// CPU time of this process so far, seconds (Linux: /proc/self/stat, 100 ticks per second).
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU time of process `pid` ("self" for this one) so far, seconds; 0 where unknown.
fn cpu_seconds_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

impl ControlPlaneReport {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let l = |x: &Latency| {
            format!(
                "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                x.p50_us as f64 / 1e3,
                x.p90_us as f64 / 1e3,
                x.p99_us as f64 / 1e3,
                x.max_us as f64 / 1e3
            )
        };
        let split = match (self.controller_cpu_seconds, self.agents_cpu_seconds) {
            (Some(c), Some(a)) => format!(
                "cpu of the others: controller {:.1} s ({:.0}% of one core), agents {:.1} s ({:.0}%)\n",
                c,
                100.0 * c / self.seconds,
                a,
                100.0 * a / self.seconds
            ),
            _ => String::new(),
        };
        split
            + &format!(
                "control plane ({}): {} nodes, {} GPUs, ledger {:?}, {:?} slices, {} in flight, {}, {:.1} s\n\
             round trips (request+release): {} ({:.0}/s = allocations/s), {:.1} in flight on average, errors {}{}\n\
             round trip: {}\n\
             request:    {}\n\
             release:    {}\n\
             ledger: {} durable transactions, {:.1} records each\n\
             cpu: {:.1} s of this process ({:.0}% of one core), {:.0} round trips per CPU second\n",
                self.mode,
                self.nodes,
                self.gpus,
                self.ledger,
                self.kind,
                self.concurrency,
                if self.secure {
                    "TLS + tokens"
                } else {
                    "plaintext"
                },
                self.seconds,
                self.round_trips,
                self.round_trips_per_s,
                self.achieved_in_flight,
                self.errors,
                self.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                l(&self.round_trip),
                l(&self.request),
                l(&self.release),
                self.ledger_transactions,
                self.records_per_transaction,
                self.cpu_seconds,
                100.0 * self.cpu_seconds / self.seconds,
                self.round_trips_per_cpu_s,
            )
    }
}

#[derive(Default)]
struct TaskResult {
    round_trip: Vec<u64>,
    request: Vec<u64>,
    release: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn spec(kind: BenchKind) -> pb::SliceSpec {
    let kind = match kind {
        BenchKind::Share => pb::slice_spec::Kind::Share(pb::ShareSlice {
            compute_fraction: 0.25,
            memory_bytes: 10 << 30,
        }),
        BenchKind::Whole => pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 }),
    };
    pb::SliceSpec {
        kind: Some(kind),
        ..Default::default()
    }
}

/// One client task: request then release, until `stop`; measures only after `measure_from`.
async fn client(
    mut c: TenantServiceClient<Authed>,
    kind: BenchKind,
    tenant: String,
    measure_from: Instant,
    stop: Instant,
) -> TaskResult {
    let mut out = TaskResult::default();
    while Instant::now() < stop {
        let t0 = Instant::now();
        let req = c
            .request_slice(pb::RequestSliceRequest {
                tenant: tenant.clone(),
                spec: Some(spec(kind)),
                idempotency_key: String::new(),
                ..Default::default()
            })
            .await;
        let t1 = Instant::now();
        let id = match req {
            Ok(r) => r.into_inner().slice.map(|s| s.id).unwrap_or_default(),
            Err(e) => {
                if t0 >= measure_from {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("request: {e}"));
                }
                continue;
            }
        };
        let rel = c
            .release_slice(pb::ReleaseSliceRequest { slice_id: id })
            .await;
        let t2 = Instant::now();
        if t0 < measure_from || t2 > stop {
            continue;
        }
        match rel {
            Ok(_) => {
                out.request.push((t1 - t0).as_micros() as u64);
                out.release.push((t2 - t1).as_micros() as u64);
                out.round_trip.push((t2 - t0).as_micros() as u64);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("release: {e}"));
            }
        }
    }
    out
}

/// Runs the benchmark and returns what it measured.
pub async fn run(a: &ControlPlaneArgs) -> anyhow::Result<ControlPlaneReport> {
    if !(a.duration > 0.0 && a.duration.is_finite() && a.warmup >= 0.0 && a.warmup.is_finite()) {
        anyhow::bail!("--duration must be > 0 and --warmup >= 0 seconds");
    }
    if a.split || a.against.is_some() {
        return run_split(a).await;
    }
    let mut _tmp = None;
    let mut _leadership = None;
    let mut group: Option<GroupCommit> = None;
    let ledger: Arc<dyn Ledger> = match a.ledger {
        BenchLedger::Memory => Arc::new(MemoryLedger::default()),
        BenchLedger::Redb => {
            let dir = match &a.data_dir {
                Some(d) => d.clone(),
                None => {
                    let t = tempfile::tempdir().context("temporary data dir")?;
                    let p = t.path().to_path_buf();
                    _tmp = Some(t);
                    p
                }
            };
            let l = RedbLedger::open(&dir)?;
            group = Some(l.group().clone());
            Arc::new(l)
        }
        BenchLedger::Etcd => {
            let cfg = EtcdConfig {
                endpoints: a.etcd_endpoints.clone(),
                // A fresh prefix per run: nothing to load, nothing shared with other runs.
                prefix: format!("/greenslice-bench/{:016x}/", rand::random::<u64>()),
                ..EtcdConfig::default()
            };
            let etcd = Etcd::connect(cfg).await?;
            let (seen, _) = tokio::sync::watch::channel(None);
            let me = LeaderInfo {
                id: format!("bench-{}", std::process::id()),
                url: "bench".into(),
            };
            let leadership = etcd.campaign(&me, &seen).await?;
            let l = EtcdLedger::new(etcd, &leadership);
            _leadership = Some(leadership);
            group = Some(l.group().clone());
            Arc::new(l)
        }
    };
    let mut nodes = harness::nodes(a.nodes as usize, &[Machine::DgxH100], 0);
    for n in &mut nodes {
        n.gpus = a.gpus_per_node;
    }
    let mut spec_ = ClusterSpec::new(nodes.clone());
    spec_.ledger = ledger;
    let mut token = None;
    if a.secure {
        use greenslice_controller::auth::tokens::{self, TokenRole, TokenStore};
        let (t, entry) = tokens::mint("bench", TokenRole::Ops, None).map_err(anyhow::Error::msg)?;
        let store = TokenStore::parse(&tokens::to_toml(&[entry]), "bench")?;
        spec_.security = Some(harness::Secure::for_nodes(&nodes, store)?);
        token = Some(t);
    }
    let cluster = harness::start(spec_).await?;

    let channels = connect(a, &cluster.url, cluster.tls.clone(), token.clone()).await?;
    let (all, cpu, (txns, ops)) = drive(a, &channels, group.clone(), None).await?;
    cluster.shutdown().await;
    Ok(report(a, "in-process", all, cpu.me, txns, ops, None))
}

/// CPU seconds in the measured window: this process's, and the split processes'.
struct Cpu {
    me: f64,
    others: Option<(f64, f64)>,
}

/// `a.connections` channels to the controller at `url`.
async fn connect(
    a: &ControlPlaneArgs,
    url: &str,
    tls: greenslice_proto::client::ClientTls,
    token: Option<String>,
) -> anyhow::Result<Vec<Authed>> {
    let mut channels = Vec::new();
    for _ in 0..a.connections {
        let conn = Conn {
            url: url.to_string(),
            tls: tls.clone(),
            token: token.clone(),
        };
        channels.push(conn.channel().await?);
    }
    Ok(channels)
}

/// Runs the clients through the warm-up and the measured window; what they measured, the CPU
/// time of this process (and of `others`, the split controller's and agents' pids) in the window,
/// and the ledger's transactions and records in it (when `group` is given).
async fn drive(
    a: &ControlPlaneArgs,
    channels: &[Authed],
    group: Option<GroupCommit>,
    others: Option<(u32, u32)>,
) -> anyhow::Result<(TaskResult, Cpu, (u64, u64))> {
    let cpu_now = move || {
        (
            cpu_seconds(),
            others.map(|(c, g)| {
                (
                    cpu_seconds_of(&c.to_string()),
                    cpu_seconds_of(&g.to_string()),
                )
            }),
        )
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let stop = measure_from + Duration::from_secs_f64(a.duration);
    let before = group
        .clone()
        .map(|g| tokio::spawn(async move { snapshot(&g, measure_from).await }));
    let cpu_before = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_now()
    });
    let mut tasks = Vec::new();
    for i in 0..a.concurrency {
        let ch = channels[i as usize % channels.len()].clone();
        tasks.push(tokio::spawn(client(
            TenantServiceClient::new(ch),
            a.kind,
            format!("bench-{}", i % 16),
            measure_from,
            stop,
        )));
    }
    let cpu_end = tokio::spawn(async move {
        tokio::time::sleep_until(stop.into()).await;
        cpu_now()
    });
    let mut all = TaskResult::default();
    for t in tasks {
        let r = t.await?;
        all.round_trip.extend(r.round_trip);
        all.request.extend(r.request);
        all.release.extend(r.release);
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    let (txns, ops) = match (&group, before) {
        (Some(g), Some(b)) => {
            let b = b.await?;
            let s = g.stats();
            (
                s.transactions
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(b.0),
                s.ops
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(b.1),
            )
        }
        _ => (0, 0),
    };
    let (end, begin) = (cpu_end.await?, cpu_before.await?);
    let cpu = Cpu {
        me: (end.0 - begin.0).max(0.0),
        others: match (end.1, begin.1) {
            (Some(e), Some(b)) => Some(((e.0 - b.0).max(0.0), (e.1 - b.1).max(0.0))),
            _ => None,
        },
    };
    Ok((all, cpu, (txns, ops)))
}

/// The report of a run.
fn report(
    a: &ControlPlaneArgs,
    mode: &'static str,
    all: TaskResult,
    cpu: f64,
    txns: u64,
    ops: u64,
    others: Option<(f64, f64)>,
) -> ControlPlaneReport {
    let n = all.round_trip.len() as u64;
    let busy_s = all.round_trip.iter().sum::<u64>() as f64 / 1e6;
    ControlPlaneReport {
        mode,
        nodes: a.nodes,
        gpus: a.nodes * a.gpus_per_node,
        ledger: a.ledger,
        kind: a.kind,
        concurrency: a.concurrency,
        secure: a.secure,
        seconds: a.duration,
        round_trips: n,
        round_trips_per_s: n as f64 / a.duration,
        achieved_in_flight: busy_s / a.duration,
        errors: all.errors,
        first_error: all.first_error,
        round_trip: Latency::of(all.round_trip),
        request: Latency::of(all.request),
        release: Latency::of(all.release),
        ledger_transactions: txns,
        records_per_transaction: if txns > 0 {
            ops as f64 / txns as f64
        } else {
            0.0
        },
        cpu_seconds: cpu,
        round_trips_per_cpu_s: if cpu > 0.0 { n as f64 / cpu } else { 0.0 },
        controller_cpu_seconds: others.map(|o| o.0),
        agents_cpu_seconds: others.map(|o| o.1),
    }
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--split` and `--against URL`: the clients here, the controller (and its agents) elsewhere.
async fn run_split(a: &ControlPlaneArgs) -> anyhow::Result<ControlPlaneReport> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut _tmp = None;
    let mut children = Vec::new();
    let url = match &a.against {
        Some(u) => u.clone(),
        None => {
            let me = std::env::current_exe().context("this binary's path")?;
            let t = tempfile::tempdir().context("temporary data dir")?;
            let mut c = Command::new(&me);
            c.args(["controller", "--insecure", "--listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(t.path())
                .args([
                    "--ledger",
                    match a.ledger {
                        BenchLedger::Memory => "memory",
                        BenchLedger::Redb => "redb",
                        BenchLedger::Etcd => "etcd",
                    },
                ]);
            if a.ledger == BenchLedger::Etcd {
                c.arg("--etcd-endpoints")
                    .arg(a.etcd_endpoints.join(","))
                    .arg("--etcd-prefix")
                    .arg(format!("/greenslice-bench/{:016x}/", rand::random::<u64>()));
            }
            _tmp = Some(t);
            let mut ctl = c
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("start the controller")?;
            let stdout = ctl.stdout.take().context("controller stdout")?;
            let ctl = Child(ctl);
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .context("read the controller's address")?;
            let addr = line
                .trim()
                .strip_prefix("listening on ")
                .with_context(|| format!("unexpected controller output {line:?}"))?
                .to_string();
            let url = format!("http://{addr}");
            let agents = Command::new(&me)
                .args(["bench", "agents", "--controller", &url])
                .args(["--nodes", &a.nodes.to_string()])
                .args(["--gpus-per-node", &a.gpus_per_node.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start the agents")?;
            children.push(ctl);
            children.push(Child(agents));
            url
        }
    };
    let channels = connect(a, &url, Default::default(), None).await?;
    // Every node registered before anything is measured.
    let want = a.nodes * a.gpus_per_node;
    let mut ops = pb::ops_service_client::OpsServiceClient::new(channels[0].clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = ops
            .inventory(pb::InventoryRequest::default())
            .await
            .map(|r| r.into_inner().gpus_total)
            .unwrap_or(0);
        if got >= want {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {got} of {want} GPUs registered at {url} after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pids = (children.len() == 2).then(|| (children[0].0.id(), children[1].0.id()));
    let (all, cpu, _) = drive(a, &channels, None, pids).await?;
    let mode = if a.split { "split" } else { "external" };
    Ok(report(a, mode, all, cpu.me, 0, 0, cpu.others))
}

/// Arguments of `greenslice bench agents` (the controller is the global --controller).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentsArgs {
    /// Simulated nodes (DGX H100 machines).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus_per_node: u32,
}

/// `greenslice bench agents`: simulated agents (the same as `bench control-plane` runs in
/// process) against a controller elsewhere, until SIGTERM or Ctrl-C.
pub async fn run_agents(a: &AgentsArgs, controller: &str) -> anyhow::Result<()> {
    let mut nodes = harness::nodes(a.nodes as usize, &[Machine::DgxH100], 0);
    for n in &mut nodes {
        n.gpus = a.gpus_per_node;
    }
    let _agents = harness::start_agents(&[controller.to_string()], &nodes)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The group-commit counters at `at` (read once the warm-up is over).
async fn snapshot(g: &GroupCommit, at: Instant) -> (u64, u64) {
    tokio::time::sleep_until(at.into()).await;
    let s = g.stats();
    (
        s.transactions.load(std::sync::atomic::Ordering::Relaxed),
        s.ops.load(std::sync::atomic::Ordering::Relaxed),
    )
}
