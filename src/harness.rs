//! A whole greenslice system in one process: a controller served over real gRPC on loopback and
//! simulated node agents connected to it through their normal session.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use greenslice_agent::backend::GpuBackend;
use greenslice_agent::backend::readonly::ReadOnlyMig;
use greenslice_agent::backend::sim::{Machine, SimBackend, SimConfig};
use greenslice_agent::session::{self, SharedBackend};
use greenslice_controller::auth::Authenticator;
use greenslice_controller::engine::{Controller, CoreConfig};
use greenslice_controller::ledger::{Ledger, MemoryLedger};
use greenslice_controller::placement::{Policy, default_policy};
use greenslice_controller::server::ServeOptions;
use greenslice_core::clock::{Clock, SystemClock};
use greenslice_proto::client::ClientTls;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One simulated node to start.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub machine: Machine,
    pub gpus: u32,
    pub mig_gpus: u32,
}

/// What to start.
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
    pub ledger: Arc<dyn Ledger>,
    pub policy: Box<dyn Policy>,
    /// The clock of the controller and every simulated node.
    pub clock: Arc<dyn Clock>,
    /// How often agents sample and send samples.
    pub sample_interval: Duration,
    pub batch_interval: Duration,
    /// TLS and tokens; `None`: insecure (plaintext, everyone may do everything).
    pub security: Option<Secure>,
    /// Nodes whose agents run with `mig.manage = false`: they lend existing free MIG instances and
    /// create none.
    pub read_only_mig: Vec<String>,
    /// MIG instances made outside greenslice before the agents start: (node, GPU index, profile,
    /// first memory slice). No slice owns them.
    pub premade_mig: Vec<(String, usize, String, u8)>,
}

/// What a secure in-process cluster serves with: a PKI whose agent certificates cover the nodes
/// (see [`Secure::for_nodes`]) and the tokens the controller accepts.
#[derive(Clone)]
pub struct Secure {
    pub pki: greenslice_controller::auth::pki::ClusterPki,
    pub tokens: greenslice_controller::auth::tokens::TokenStore,
}

impl Secure {
    /// A fresh CA, a server certificate for 127.0.0.1 and an agent certificate per node.
    pub fn for_nodes(
        nodes: &[NodeSpec],
        tokens: greenslice_controller::auth::tokens::TokenStore,
    ) -> anyhow::Result<Secure> {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let pki = greenslice_controller::auth::pki::generate(
            &["localhost".into(), "127.0.0.1".into()],
            &names,
        )?;
        Ok(Secure { pki, tokens })
    }

    /// TLS settings of a client that trusts the cluster CA (and presents no certificate).
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_pem: Some(self.pki.ca.cert.clone().into_bytes()),
            ..ClientTls::default()
        }
    }

    /// TLS settings of `node`'s agent: the CA and the node's client certificate.
    pub fn agent_tls(&self, node: &str) -> ClientTls {
        let mut t = self.client_tls();
        t.identity = self
            .pki
            .agents
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| (p.cert.clone().into_bytes(), p.key.clone().into_bytes()));
        t
    }
}

impl ClusterSpec {
    /// Nodes on an in-memory ledger with the default policy and the system clock.
    pub fn new(nodes: Vec<NodeSpec>) -> Self {
        ClusterSpec {
            nodes,
            ledger: Arc::new(MemoryLedger::default()),
            policy: default_policy(),
            clock: Arc::new(SystemClock),
            sample_interval: Duration::from_secs(1),
            batch_interval: Duration::from_secs(5),
            security: None,
            read_only_mig: Vec::new(),
            premade_mig: Vec::new(),
        }
    }
}

/// A running system.
pub struct Cluster {
    /// Controller URL (http://127.0.0.1:PORT, or https:// when secure).
    pub url: String,
    /// TLS a client needs to reach it (the CA when secure; nothing otherwise).
    pub tls: ClientTls,
    pub controller: Arc<Controller>,
    /// Each node's backend, by node name, for tests to inspect or perturb.
    pub backends: Vec<(String, SharedBackend)>,
    agents: Vec<JoinHandle<()>>,
    sessions: Vec<session::SessionConfig>,
    server: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

/// `count` nodes cycling through `machines`, named node-00, node-01...
pub fn nodes(count: usize, machines: &[Machine], mig_gpus: u32) -> Vec<NodeSpec> {
    (0..count)
        .map(|i| NodeSpec {
            name: format!("node-{i:02}"),
            machine: machines[i % machines.len().max(1)],
            gpus: 8,
            mig_gpus,
        })
        .collect()
}

/// Starts the controller and the agents, and waits until every agent has registered.
pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
    start_with(spec, CoreConfig::default()).await
}

/// Like [`start`], with controller settings (grace periods, retention) of the caller's choosing.
pub async fn start_with(spec: ClusterSpec, core: CoreConfig) -> anyhow::Result<Cluster> {
    let controller = Controller::new(spec.ledger, spec.policy, spec.clock.clone(), core).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut options = ServeOptions::default();
    let (url, tls) = match &spec.security {
        None => (format!("http://{addr}"), ClientTls::default()),
        Some(s) => {
            options.tls = Some(greenslice_controller::auth::tls::ServerTls::from_pem(
                greenslice_controller::auth::tls::TlsPem {
                    cert: s.pki.controller.cert.clone().into_bytes(),
                    key: s.pki.controller.key.clone().into_bytes(),
                    agent_ca: s.pki.ca.cert.clone().into_bytes(),
                    agent_crl: Vec::new(),
                },
            )?);
            options.auth = Arc::new(Authenticator::with_tokens(s.tokens.clone()));
            (format!("https://{addr}"), s.client_tls())
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(greenslice_controller::server::serve_with(
        controller.clone(),
        listener,
        options,
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut backends = Vec::new();
    let mut agents = Vec::new();
    let mut sessions = Vec::new();
    for n in &spec.nodes {
        let mut c = SimConfig::new(&n.name, n.machine).with_clock(spec.clock.clone());
        c.gpus = n.gpus;
        c.mig_gpus = n.mig_gpus;
        let mut sim = SimBackend::new(c).with_context(|| format!("node {}", n.name))?;
        for (_, gpu, profile, start) in spec.premade_mig.iter().filter(|m| m.0 == n.name) {
            let uuid = sim
                .inventory()?
                .get(*gpu)
                .map(|g| g.uuid.clone())
                .with_context(|| format!("node {} has no GPU {gpu}", n.name))?;
            // An empty owner: the wire and the controller read it as "no slice".
            sim.create_mig(&uuid, profile, *start, "")
                .with_context(|| format!("premade {profile} on {} GPU {gpu}", n.name))?;
        }
        let b: Box<dyn GpuBackend> = if spec.read_only_mig.contains(&n.name) {
            Box::new(ReadOnlyMig::new(Box::new(sim)))
        } else {
            Box::new(sim)
        };
        let shared: SharedBackend = Arc::new(Mutex::new(b));
        backends.push((n.name.clone(), shared.clone()));
        let mut sc = session::SessionConfig::new(&url, &n.name);
        if let Some(s) = &spec.security {
            sc.tls = s.agent_tls(&n.name);
        }
        sc.sample_interval = spec.sample_interval;
        sc.batch_interval = spec.batch_interval;
        agents.push(tokio::spawn(session::run_with(sc.clone(), shared)));
        sessions.push(sc);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (nodes, _, _) = controller.snapshot();
        if nodes.iter().filter(|n| n.connected).count() == spec.nodes.len() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("agents did not register within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Cluster {
        url,
        tls,
        controller,
        backends,
        agents,
        sessions,
        server: Some((stop_tx, server)),
    })
}

impl Cluster {
    /// Stops one node's agent (as if it crashed); returns false if there is no such node.
    pub fn kill_agent(&mut self, node: &str) -> bool {
        match self.backends.iter().position(|(n, _)| n == node) {
            Some(i) => {
                self.agents[i].abort();
                true
            }
            None => false,
        }
    }

    /// Restarts a stopped node's agent with its backend state intact.
    pub fn restart_agent(&mut self, node: &str) -> bool {
        match self.backends.iter().position(|(n, _)| n == node) {
            Some(i) => {
                let b = self.backends[i].1.clone();
                self.agents[i] = tokio::spawn(session::run_with(self.sessions[i].clone(), b));
                true
            }
            None => false,
        }
    }

    /// Runs `f` on a node's simulator (to set workloads, reload the driver, mark GPUs unhealthy).
    pub fn with_sim<R>(&self, node: &str, f: impl FnOnce(&mut SimBackend) -> R) -> Option<R> {
        let (_, b) = self.backends.iter().find(|(n, _)| n == node)?;
        let mut guard = b.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_sim_mut().map(f)
    }

    /// Stops agents and the server.
    pub async fn shutdown(mut self) {
        for a in &self.agents {
            a.abort();
        }
        if let Some((tx, h)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }
}

/// Simulated node agents connected to a controller that runs elsewhere (another process, or
/// several replicas: each agent tries the URLs in turn). Agents stop when this is dropped.
pub struct AgentSet {
    /// Each node's backend, by node name, for tests to inspect.
    pub backends: Vec<(String, SharedBackend)>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts simulated agents for `nodes` against `controllers`; does not wait for registration.
pub fn start_agents(controllers: &[String], nodes: &[NodeSpec]) -> anyhow::Result<AgentSet> {
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for n in nodes {
        let mut c = SimConfig::new(&n.name, n.machine);
        c.gpus = n.gpus;
        c.mig_gpus = n.mig_gpus;
        let b: Box<dyn GpuBackend> =
            Box::new(SimBackend::new(c).with_context(|| format!("node {}", n.name))?);
        let shared: SharedBackend = Arc::new(Mutex::new(b));
        backends.push((n.name.clone(), shared.clone()));
        tasks.push(tokio::spawn(session::run_any(
            controllers.to_vec(),
            n.name.clone(),
            shared,
        )));
    }
    Ok(AgentSet { backends, tasks })
}

impl Drop for AgentSet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
