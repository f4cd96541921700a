//! The agent's stream to the controller: register, then apply commands and answer each one.
//! Reconnects with exponential backoff when the controller goes away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_core::convert::{capabilities_to_pb, gpu_to_pb, mig_to_pb};
use greenslice_core::inventory::NodeCapabilities;
use greenslice_core::limits;
use greenslice_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::command::Action;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::backend::{BackendError, GpuBackend};
use crate::enforce::{self, EnforceConfig, Enforcer, Notice, Observed, ShareLimit};
use crate::workstop::WorkStop;

/// A backend shared between the session and other agent tasks.
pub type SharedBackend = Arc<Mutex<Box<dyn GpuBackend>>>;

/// Backoff bounds for reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn lock(b: &SharedBackend) -> std::sync::MutexGuard<'_, Box<dyn GpuBackend>> {
    // A panic while holding the lock leaves the backend usable: its state is plain data.
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `Register` message for the node's current state.
pub fn register_message(
    node: &str,
    backend: &SharedBackend,
) -> Result<pb::AgentMessage, BackendError> {
    let mut b = lock(backend);
    let host = b.host();
    let gpus = b.inventory()?;
    Ok(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            node: node.to_string(),
            cpu_milli: host.cpu_milli,
            memory_bytes: host.memory_bytes,
            backend: b.kind().to_string(),
            gpus: gpus.iter().map(gpu_to_pb).collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: Some(capabilities_to_pb(&NodeCapabilities {
                mig_manage: b.may_manage_mig(),
                mps: b.mps_available(),
            })),
            ownership_rebuilt: b.ownership_rebuilt(),
        })),
    })
}

/// Checks a command from the controller against [`limits`] before it reaches the backend: GPU
/// UUIDs, slice ids and MIG profiles well formed, a MIG start within the GPU, a share's fraction in
/// (0, 1] and memory at most a GPU's.
pub fn validate_command(cmd: &pb::Command) -> Result<(), limits::LimitError> {
    let gpu = |u: &str| limits::check_uuid("gpu_uuid", u);
    let slice = |s: &str| limits::check_slice_id("slice_id", s);
    match &cmd.action {
        Some(Action::CreateMig(c)) => {
            gpu(&c.gpu_uuid)?;
            slice(&c.slice_id)?;
            limits::check_profile("profile", &c.profile)?;
            limits::check_max(
                "start",
                u64::from(c.start),
                u64::from(greenslice_core::mig::MEMORY_SLICES) - 1,
                "",
            )
        }
        Some(Action::DestroyMig(c)) => {
            gpu(&c.gpu_uuid)?;
            limits::check_opt_slice_id("slice_id", &c.slice_id)
        }
        Some(Action::ClaimMig(pb::ClaimMigInstance {
            gpu_uuid, slice_id, ..
        }))
        | Some(Action::ReleaseMig(pb::ReleaseMigInstance {
            gpu_uuid, slice_id, ..
        })) => {
            gpu(gpu_uuid)?;
            slice(slice_id)
        }
        Some(Action::SetShare(c)) => {
            gpu(&c.gpu_uuid)?;
            slice(&c.slice_id)?;
            limits::check_fraction("compute_fraction", c.compute_fraction)?;
            limits::check_max(
                "memory_bytes",
                c.memory_bytes,
                limits::MAX_GPU_MEMORY_BYTES,
                "bytes",
            )
        }
        Some(Action::ClearShare(pb::ClearShare { gpu_uuid, slice_id }))
        | Some(Action::AssignGpu(pb::AssignGpu { gpu_uuid, slice_id }))
        | Some(Action::UnassignGpu(pb::UnassignGpu { gpu_uuid, slice_id })) => {
            gpu(gpu_uuid)?;
            slice(slice_id)
        }
        Some(Action::EvictPod(e)) => {
            slice(&e.slice_id)?;
            limits::check_message("reason", &e.reason)
        }
        None => Err(limits::LimitError::new("action", "is empty")),
    }
}

/// Applies one command on the backend and builds its result. A command outside the limits is
/// answered with a failure and never reaches the backend.
pub fn apply(backend: &SharedBackend, cmd: &pb::Command, work: &WorkStop) -> pb::CommandResult {
    let mut result = pb::CommandResult {
        command_id: cmd.command_id,
        ok: true,
        ..Default::default()
    };
    if let Err(e) = validate_command(cmd) {
        result.ok = false;
        result.error = limits::truncate_message(&format!("invalid command: {e}"));
        return result;
    }
    let mut b = lock(backend);
    // A slice's processes are stopped before its capacity is given back (see crate::workstop).
    let now = greenslice_core::clock::Clock::now_ms(&greenslice_core::clock::SystemClock);
    let stopped = match &cmd.action {
        Some(Action::DestroyMig(c)) if !c.slice_id.is_empty() => work.stop(
            b.as_mut(),
            &c.gpu_uuid,
            Some(c.gpu_instance_id),
            &c.slice_id,
            now,
        ),
        Some(Action::ReleaseMig(c)) => work.stop(
            b.as_mut(),
            &c.gpu_uuid,
            Some(c.gpu_instance_id),
            &c.slice_id,
            now,
        ),
        Some(Action::ClearShare(pb::ClearShare { gpu_uuid, slice_id }))
        | Some(Action::UnassignGpu(pb::UnassignGpu { gpu_uuid, slice_id })) => {
            work.stop(b.as_mut(), gpu_uuid, None, slice_id, now)
        }
        _ => Ok(()),
    };
    if let Err(e) = stopped {
        result.ok = false;
        result.error = limits::truncate_message(&e.to_string());
        return result;
    }
    let outcome: Result<(), BackendError> = match &cmd.action {
        Some(Action::CreateMig(c)) => match u8::try_from(c.start) {
            Ok(start) => b
                .create_mig(&c.gpu_uuid, &c.profile, start, &c.slice_id)
                .map(|(inst, env)| {
                    result.mig = Some(mig_to_pb(&inst));
                    result.env = env.into_iter().collect();
                }),
            Err(_) => Err(BackendError::Config(format!(
                "start {} out of range",
                c.start
            ))),
        },
        Some(Action::DestroyMig(c)) => destroy_owned_mig(b.as_mut(), c),
        Some(Action::ClaimMig(c)) => b
            .claim_mig(&c.gpu_uuid, c.gpu_instance_id, &c.slice_id)
            .map(|(inst, env)| {
                result.mig = Some(mig_to_pb(&inst));
                result.env = env.into_iter().collect();
            }),
        Some(Action::ReleaseMig(c)) => b.release_mig(&c.gpu_uuid, c.gpu_instance_id, &c.slice_id),
        Some(Action::SetShare(c)) => b
            .set_share(&c.gpu_uuid, &c.slice_id, c.compute_fraction, c.memory_bytes)
            .map(|env| result.env = env.into_iter().collect()),
        Some(Action::ClearShare(c)) => b.clear_share(&c.gpu_uuid, &c.slice_id),
        Some(Action::AssignGpu(c)) => b
            .assign_whole(&c.gpu_uuid, &c.slice_id)
            .map(|env| result.env = env.into_iter().collect()),
        Some(Action::UnassignGpu(c)) => b.unassign_whole(&c.gpu_uuid, &c.slice_id),
        // Not a hardware change: the session asks the API server (see `evict_pod`).
        Some(Action::EvictPod(_)) => Err(BackendError::Config(
            "EvictPod is not a backend command".into(),
        )),
        None => Err(BackendError::Config("empty command".into())),
    };
    if let Err(e) = outcome {
        result.ok = false;
        // The controller refuses longer text (see `limits::MAX_MESSAGE_LEN`).
        result.error = limits::truncate_message(&e.to_string());
    }
    result
}

/// Most slices a registration answer may give back (`Registered.adopt`): as many as a node can
/// hold (every GPU full of MIG instances or shares). About 100 bytes each, so the largest answer
/// stays under the 4 MiB a gRPC client accepts by default.
pub const MAX_ADOPT: usize =
    limits::MAX_GPUS_PER_NODE * (limits::MAX_SHARES_PER_GPU + limits::MAX_MIG_INSTANCES_PER_GPU);

/// The ledger's slices of a registration answer, checked against [`limits`].
pub fn ledger_slices(
    r: &pb::Registered,
) -> Result<Vec<crate::checkpoint::restore::LedgerSlice>, limits::LimitError> {
    use crate::checkpoint::restore::{LedgerKind, LedgerSlice};
    limits::check_count("adopt", r.adopt.len(), 0, MAX_ADOPT)?;
    r.adopt
        .iter()
        .map(|l| {
            limits::check_slice_id("adopt.slice_id", &l.slice_id)?;
            limits::check_count(
                "adopt.gpu_uuids",
                l.gpu_uuids.len(),
                1,
                limits::MAX_GPUS_PER_NODE,
            )?;
            for g in &l.gpu_uuids {
                limits::check_uuid("adopt.gpu_uuids", g)?;
            }
            let kind = match l.kind.as_str() {
                "whole" => LedgerKind::Whole,
                "share" => {
                    limits::check_fraction("adopt.compute_fraction", l.compute_fraction)?;
                    limits::check_max(
                        "adopt.memory_bytes",
                        l.memory_bytes,
                        limits::MAX_GPU_MEMORY_BYTES,
                        "bytes",
                    )?;
                    LedgerKind::Share {
                        compute_fraction: l.compute_fraction,
                        memory_bytes: l.memory_bytes,
                    }
                }
                "mig" => {
                    limits::check_profile("adopt.profile", &l.profile)?;
                    if !l.mig_uuid.is_empty() {
                        limits::check_uuid("adopt.mig_uuid", &l.mig_uuid)?;
                    }
                    let start = u8::try_from(l.start)
                        .ok()
                        .filter(|s| *s < greenslice_core::mig::MEMORY_SLICES)
                        .ok_or_else(|| limits::LimitError::new("adopt.start", "is past the GPU"))?;
                    LedgerKind::Mig {
                        gpu_instance_id: l.gpu_instance_id,
                        start,
                        profile: l.profile.clone(),
                        mig_uuid: l.mig_uuid.clone(),
                    }
                }
                _ => {
                    return Err(limits::LimitError::new(
                        "adopt.kind",
                        "is not whole, share or mig",
                    ));
                }
            };
            Ok(LedgerSlice {
                slice_id: l.slice_id.clone(),
                gpus: l.gpu_uuids.clone(),
                kind,
            })
        })
        .collect()
}

/// After a registration that said the agent rebuilt its ownership: takes back the ledger's slices
/// the hardware still holds and returns the state report to send (the controller judged the
/// registration's inventory, which named only what the hardware showed). A malformed answer is
/// refused (the session ends; the next registration asks again).
fn adopt_from_ledger(
    backend: &SharedBackend,
    r: &pb::Registered,
) -> anyhow::Result<Option<pb::AgentMessage>> {
    let mut b = lock(backend);
    if !b.ownership_rebuilt() {
        return Ok(None);
    }
    let ledger =
        ledger_slices(r).map_err(|e| anyhow::anyhow!("bad Registered from the controller: {e}"))?;
    if !b.adopt_from_ledger(&ledger)? {
        return Ok(None);
    }
    let gpus = b.inventory()?;
    Ok(Some(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::State(pb::StateReport {
            gpus: gpus.iter().map(gpu_to_pb).collect(),
        })),
    }))
}

/// How the agent talks to the controller.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Controller URL; several replicas may be given comma-separated (each is tried in turn).
    pub controller: String,
    /// Node name.
    pub node: String,
    /// How often to sample the GPUs (default 1 s).
    pub sample_interval: Duration,
    /// How often to send the collected samples (default 5 s).
    pub batch_interval: Duration,
    /// Where to count samples and lag (None: not counted).
    pub metrics: Option<Arc<crate::metrics::AgentMetrics>>,
    /// Kubelet allocations to report on every session (see [`crate::kubelet`]); `None` when the
    /// agent is not the kubelet's device plugin.
    pub kubelet: Option<KubeletReports>,
    /// TLS to the controller (CA and this agent's client certificate) for `https://` URLs.
    pub tls: greenslice_proto::client::ClientTls,
    /// Share limits enforced by watching, on every sampling pass (see [`crate::enforce`]).
    pub enforce: EnforceConfig,
    /// Stops a slice's processes before its teardown (see [`crate::workstop`]); shared by every
    /// session, so a retried teardown knows what was sent.
    pub work_stop: Arc<WorkStop>,
    /// Evicts idle pods when `kubelet.pod_reclaim = "evict"` (None: this agent evicts nothing).
    pub evictor: Option<crate::kubelet::evict::Evictor>,
    /// Set to true to stop: the session ends after the message in hand (a command being applied
    /// finishes and is answered) and [`run_with`] returns instead of reconnecting.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Files to read `tls` from again before every connection, so a rotated certificate is used
    /// from the next session on (the controller ends a session whose certificate expired or was
    /// revoked). Files that cannot be read leave `tls` as it was.
    pub tls_files: Option<greenslice_proto::client::ClientTlsFiles>,
}

/// Latest kubelet allocations to report; `None` inside until pod-resources was read once.
pub type KubeletReports = tokio::sync::watch::Receiver<Option<pb::KubeletAllocations>>;

/// Sends the current kubelet allocations after Register and again on every change, until the
/// session's stream or the reporter ends.
async fn forward_kubelet(
    mut reports: KubeletReports,
    tx: tokio::sync::mpsc::Sender<pb::AgentMessage>,
) {
    loop {
        let current = reports.borrow_and_update().clone();
        if let Some(k) = current {
            let msg = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Kubelet(k)),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        if reports.changed().await.is_err() {
            return;
        }
    }
}

impl SessionConfig {
    pub fn new(controller: &str, node: &str) -> Self {
        SessionConfig {
            controller: controller.to_string(),
            node: node.to_string(),
            sample_interval: Duration::from_secs(1),
            batch_interval: Duration::from_secs(5),
            metrics: None,
            kubelet: None,
            tls: Default::default(),
            enforce: EnforceConfig::default(),
            work_stop: Arc::new(WorkStop::new(EnforceConfig::default().term_grace_ms)),
            evictor: None,
            stop: None,
            tls_files: None,
        }
    }
}

/// Samples every GPU once and maps the activity to slices (the backend's and the `kubelet`'s).
pub fn sample_once(
    backend: &SharedBackend,
    kubelet: &[crate::usage::KubeletHolder],
) -> Result<Vec<pb::GpuSample>, BackendError> {
    sample_and_enforce(backend, kubelet, None).map(|(s, _)| s)
}

/// Limit enforcement's state and settings, for [`sample_and_enforce`].
pub type Enforcement<'a> = (&'a mut Enforcer, &'a EnforceConfig);

/// [`sample_once`], then share limits enforced on what the pass measured (see
/// [`crate::enforce`]): signals are sent here, the notices for the tenants are returned.
pub fn sample_and_enforce(
    backend: &SharedBackend,
    kubelet: &[crate::usage::KubeletHolder],
    enforce: Option<Enforcement<'_>>,
) -> Result<(Vec<pb::GpuSample>, Vec<Notice>), BackendError> {
    let mut b = lock(backend);
    let sample = b.sample()?;
    let gpus = b.inventory()?;
    // Each process's slice, read once per pass (on a node, from /proc/PID/environ): the mapping
    // and the enforcement below both ask.
    let owners: std::collections::HashMap<u32, Option<String>> = sample
        .gpus
        .iter()
        .flat_map(|s| {
            let procs = s.processes.iter().flatten().map(|p| p.pid);
            procs.chain(s.process_util.iter().flatten().map(|u| u.pid))
        })
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .map(|pid| (pid, b.process_owner(pid)))
        .collect();
    let samples: Vec<pb::GpuSample> = {
        let owner = |pid: u32| owners.get(&pid).cloned().flatten();
        sample
            .gpus
            .iter()
            .filter_map(|s| {
                let g = gpus.iter().find(|g| g.uuid == s.gpu_uuid)?;
                Some(crate::usage::map_sample(
                    sample.at_ms,
                    s,
                    g,
                    &owner,
                    kubelet,
                ))
            })
            .collect()
    };
    let Some((enforcer, cfg)) = enforce else {
        return Ok((samples, Vec::new()));
    };
    // Every share's limits: the backend's and the kubelet's.
    let mut limits: Vec<ShareLimit> = gpus
        .iter()
        .flat_map(|g| {
            g.shares.iter().map(|s| ShareLimit {
                slice_id: s.slice_id.clone(),
                gpu_uuid: g.uuid.clone(),
                compute_fraction: s.compute_fraction,
                memory_bytes: s.memory_bytes,
            })
        })
        .collect();
    limits.extend(kubelet.iter().filter_map(|k| {
        let (compute_fraction, memory_bytes) = k.share?;
        Some(ShareLimit {
            slice_id: k.slice_id.clone(),
            gpu_uuid: k.gpu_uuid.clone(),
            compute_fraction,
            memory_bytes,
        })
    }));
    let mut procs = Vec::new();
    for s in &sample.gpus {
        for p in s.processes.as_deref().unwrap_or(&[]) {
            let Some(slice_id) = owners.get(&p.pid).cloned().flatten() else {
                continue;
            };
            let sm_pct = s
                .process_util
                .as_deref()
                .and_then(|u| u.iter().find(|u| u.pid == p.pid))
                .map(|u| u.sm_pct);
            procs.push(Observed {
                gpu_uuid: s.gpu_uuid.clone(),
                pid: p.pid,
                slice_id,
                memory_bytes: p.used_memory_bytes,
                sm_pct,
            });
        }
    }
    let mut notices = Vec::new();
    for a in enforcer.step(cfg, sample.at_ms, &limits, &procs) {
        match a {
            enforce::Action::Signal {
                pid,
                slice_id,
                signal,
            } => {
                // The pid was this slice's in this very pass, under the backend's lock.
                match b.signal_process(pid, signal) {
                    Ok(()) => {
                        warn!(pid, slice = %slice_id, ?signal, "process of a share over its limits signalled")
                    }
                    Err(e) => {
                        warn!(pid, slice = %slice_id, ?signal, error = %e, "cannot stop a process of a share over its limits")
                    }
                }
            }
            enforce::Action::Notice(n) => notices.push(n),
        }
    }
    Ok((samples, notices))
}

/// Carries out `EvictPod`: the pod holding the slice, from this agent's kubelet report, is evicted
/// through the API server.
async fn evict_pod(cfg: &SessionConfig, cmd: &pb::Command) -> pb::CommandResult {
    let mut result = pb::CommandResult {
        command_id: cmd.command_id,
        ok: true,
        ..Default::default()
    };
    let mut fail = |e: String| {
        result.ok = false;
        result.error = limits::truncate_message(&e);
    };
    if let Err(e) = validate_command(cmd) {
        fail(format!("invalid command: {e}"));
        return result;
    }
    let Some(Action::EvictPod(e)) = &cmd.action else {
        return result;
    };
    let Some(evictor) = &cfg.evictor else {
        fail("this agent evicts no pods (kubelet.pod_reclaim is not \"evict\")".into());
        return result;
    };
    let pod = cfg.kubelet.as_ref().and_then(|k| {
        k.borrow()
            .as_ref()
            .and_then(|r| crate::kubelet::evict::pod_of(r, &e.slice_id))
    });
    let Some((namespace, name)) = pod else {
        fail(crate::kubelet::evict::EvictError::NoPod(e.slice_id.clone()).to_string());
        return result;
    };
    match evictor.evict(&namespace, &name).await {
        Ok(()) => {
            info!(slice = %e.slice_id, %namespace, pod = %name, reason = %e.reason, "pod evicted")
        }
        Err(err) => fail(err.to_string()),
    }
    result
}

/// A limit notice as the controller receives it.
fn notice_message(n: &Notice, at_ms: i64) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Notice(pb::SliceNotice {
            slice_id: n.slice_id.clone(),
            kind: n.kind.as_str().to_string(),
            pid: n.pid.unwrap_or(0),
            message: n.message.clone(),
            at_unix_ms: at_ms,
        })),
    }
}

/// Samples at `sample_interval` and sends a batch every `batch_interval` until the channel closes.
async fn sampler(
    cfg: SessionConfig,
    backend: SharedBackend,
    tx: tokio::sync::mpsc::Sender<pb::AgentMessage>,
) {
    let mut tick = tokio::time::interval(cfg.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut batch: Vec<pb::GpuSample> = Vec::new();
    // Start each agent's batch clock at a random point of the interval, so agents that connect
    // together (every agent after a controller restart) do not all send their batches at once.
    let now = tokio::time::Instant::now();
    let mut last_sent = now
        .checked_sub(cfg.batch_interval.mul_f64(rand::random::<f64>()))
        .unwrap_or(now);
    let enforcer = Arc::new(Mutex::new(Enforcer::default()));
    loop {
        let scheduled = tick.tick().await;
        let started = tokio::time::Instant::now();
        let b = backend.clone();
        let holders = cfg
            .kubelet
            .as_ref()
            .and_then(|k| k.borrow().as_ref().map(crate::usage::kubelet_holders))
            .unwrap_or_default();
        let (en, ecfg) = (enforcer.clone(), cfg.enforce.clone());
        let pass = tokio::task::spawn_blocking(move || {
            let mut en = en.lock().unwrap_or_else(|p| p.into_inner());
            sample_and_enforce(&b, &holders, Some((&mut en, &ecfg)))
        });
        let ok = match pass.await {
            Ok(Ok((s, notices))) => {
                batch.extend(s);
                let at =
                    greenslice_core::clock::Clock::now_ms(&greenslice_core::clock::SystemClock);
                for n in &notices {
                    if let Some(m) = &cfg.metrics {
                        m.limit_actions
                            .get_or_create(&vec![("kind".to_string(), n.kind.as_str().to_string())])
                            .inc();
                    }
                    if tx.send(notice_message(n, at)).await.is_err() {
                        return;
                    }
                }
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "sampling failed");
                false
            }
            Err(e) => {
                warn!(error = %e, "sampling task failed");
                false
            }
        };
        if let Some(m) = &cfg.metrics {
            if ok {
                m.samples.inc();
            } else {
                m.sample_errors.inc();
            }
            m.sample_lag
                .set(started.saturating_duration_since(scheduled).as_secs_f64());
            m.sample_duration.set(started.elapsed().as_secs_f64());
            m.pending_samples.set(batch.len() as i64);
        }
        if last_sent.elapsed() >= cfg.batch_interval && !batch.is_empty() {
            let msg = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Samples(pb::SampleBatch {
                    samples: std::mem::take(&mut batch),
                })),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            last_sent = tokio::time::Instant::now();
            if let Some(m) = &cfg.metrics {
                m.batches_sent.inc();
                m.pending_samples.set(0);
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one session with `controller`: connects, registers, serves commands and sends samples
/// until the stream ends. Sets `registered` once the controller accepted the registration.
async fn session_once(
    cfg: &SessionConfig,
    controller: &str,
    backend: &SharedBackend,
    registered: &mut bool,
) -> anyhow::Result<()> {
    let node = &cfg.node;
    let channel = greenslice_proto::client::connect(controller, &cfg.tls).await?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(64);
    tx.send(register_message(node, backend)?).await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let _sampler = AbortOnDrop(tokio::spawn(sampler(
        cfg.clone(),
        backend.clone(),
        tx.clone(),
    )));
    let _kubelet = cfg
        .kubelet
        .clone()
        .map(|k| AbortOnDrop(tokio::spawn(forward_kubelet(k, tx.clone()))));
    let mut tls_check = tokio::time::interval_at(
        tokio::time::Instant::now() + TLS_FILES_CHECK,
        TLS_FILES_CHECK,
    );
    let mut stop = cfg.stop.clone();
    loop {
        let msg = tokio::select! {
            _ = stopped(&mut stop) => {
                info!("stopping: the session ends here");
                return Ok(());
            }
            m = inbound.next() => m,
            _ = tls_check.tick() => {
                if tls_files_changed(cfg) {
                    info!("TLS files changed; reconnecting to use the new certificate");
                    return Ok(());
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        match msg?.msg {
            Some(pb::controller_message::Msg::Registered(r)) => {
                *registered = true;
                info!(node = %r.node, "registered with controller");
                if let Some(report) = adopt_from_ledger(backend, &r)? {
                    tx.send(report).await?;
                }
            }
            Some(pb::controller_message::Msg::Command(cmd))
                if matches!(cmd.action, Some(Action::EvictPod(_))) =>
            {
                let result = evict_pod(cfg, &cmd).await;
                if !result.ok {
                    warn!(command = cmd.command_id, error = %result.error, "eviction failed");
                }
                tx.send(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Result(result)),
                })
                .await?;
            }
            Some(pb::controller_message::Msg::Command(cmd)) => {
                // Inline, one command at a time: the hardware calls are short and a teardown never
                // waits for processes (see crate::workstop). A spawn_blocking per command cost
                // 27% of `bench control-plane`'s round trips (docs/BENCHMARKS.md).
                let id = cmd.command_id;
                let result = apply(backend, &cmd, &cfg.work_stop);
                if !result.ok {
                    warn!(command = id, error = %result.error, "command failed");
                }
                tx.send(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Result(result)),
                })
                .await?;
            }
            None => warn!("empty message from controller"),
        }
    }
    Ok(())
}

/// How often an open session looks at its TLS files: a renewed certificate is put to use by
/// reconnecting (the controller keeps the node's slices across the short gap), well before the old
/// one expires.
const TLS_FILES_CHECK: Duration = Duration::from_secs(30);

/// True when the TLS files read (and differ from the settings in use).
fn tls_files_changed(cfg: &SessionConfig) -> bool {
    cfg.tls_files
        .as_ref()
        .and_then(|f| f.read().ok())
        .is_some_and(|tls| tls != cfg.tls)
}

/// Reads the TLS files again (see [`SessionConfig::tls_files`]); returns true when they changed.
fn refresh_tls(cfg: &mut SessionConfig) -> bool {
    let Some(files) = &cfg.tls_files else {
        return false;
    };
    match files.read() {
        Ok(tls) if tls != cfg.tls => {
            info!("TLS files changed; connecting with the new certificate");
            cfg.tls = tls;
            true
        }
        Ok(_) => false,
        Err(e) => {
            warn!(error = %e, "cannot read the TLS files; connecting with the ones read before");
            false
        }
    }
}

/// Keeps a session with the controller alive forever, reconnecting with backoff (default sampling).
pub async fn run(controller: String, node: String, backend: SharedBackend) {
    run_with(SessionConfig::new(&controller, &node), backend).await
}

/// Like [`run`] with several controller replicas, comma-separated.
pub async fn run_any(controllers: Vec<String>, node: String, backend: SharedBackend) {
    run_with(SessionConfig::new(&controllers.join(","), &node), backend).await
}

/// Keeps a session with the controller alive forever, reconnecting with backoff. With several
/// controller replicas (comma-separated in `cfg.controller`), after a failed or ended session the
/// next URL is tried (a standby refuses the session, naming the leader). The backoff starts over
/// after every successful registration, so a controller restart is followed by a prompt reconnect.
pub async fn run_with(mut cfg: SessionConfig, backend: SharedBackend) {
    let controllers: Vec<String> = cfg
        .controller
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if controllers.is_empty() {
        warn!("no controller URL given");
        return;
    }
    let mut backoff = BACKOFF_MIN;
    let mut i = 0usize;
    loop {
        let controller = &controllers[i % controllers.len()];
        refresh_tls(&mut cfg);
        let started = tokio::time::Instant::now();
        let mut registered = false;
        if is_stopped(&cfg) {
            return;
        }
        let result = session_once(&cfg, controller, &backend, &mut registered).await;
        if is_stopped(&cfg) {
            return;
        }
        match result {
            Ok(()) => warn!(%controller, "controller closed the stream; reconnecting"),
            Err(e) => {
                warn!(%controller, error = %e, "controller session failed; retrying in {:?}", backoff)
            }
        }
        if registered || started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        i += 1;
        // With several replicas, try the next one at once once per round.
        if controllers.len() > 1 && !i.is_multiple_of(controllers.len()) {
            continue;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Whether a stop was asked for.
fn is_stopped(cfg: &SessionConfig) -> bool {
    cfg.stop.as_ref().is_some_and(|s| *s.borrow())
}

/// Resolves once a stop is asked for (never without a stop channel).
async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(s) => {
            let _ = s.wait_for(|v| *v).await;
        }
        None => std::future::pending().await,
    }
}

/// Destroys a MIG instance unless another slice owns it now. GPU-instance ids are reused (the
/// driver hands a destroyed instance's id to the next one), so a teardown retried after its
/// instance went must not destroy the instance that took the id: that counts as already gone. An
/// empty `slice_id` (re-layout destroying a free instance) destroys whatever holds the id.
fn destroy_owned_mig(
    b: &mut dyn GpuBackend,
    c: &pb::DestroyMigInstance,
) -> Result<(), BackendError> {
    let owner = b
        .inventory()?
        .into_iter()
        .find(|g| g.uuid == c.gpu_uuid)
        .and_then(|g| {
            g.mig_instances
                .into_iter()
                .find(|m| m.gpu_instance_id == c.gpu_instance_id)
                .map(|m| m.slice_id)
        });
    match owner {
        Some(Some(other)) if !c.slice_id.is_empty() && other != c.slice_id => {
            Err(BackendError::NoSuchInstance {
                gpu: c.gpu_uuid.clone(),
                gi: c.gpu_instance_id,
            })
        }
        _ => b.destroy_mig(&c.gpu_uuid, c.gpu_instance_id),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_stale_teardown_leaves_the_instance_that_took_the_id() {
        use crate::backend::sim::{Machine, SimBackend, SimConfig};
        let mut c = SimConfig::new("n1", Machine::DgxH100);
        c.mig_gpus = 1;
        let mut b = SimBackend::new(c).unwrap();
        let gpu = b.inventory().unwrap()[0].uuid.clone();
        let (inst, _) = b.create_mig(&gpu, "1g.10gb", 0, "s-new").unwrap();
        let stale = pb::DestroyMigInstance {
            gpu_uuid: gpu.clone(),
            gpu_instance_id: inst.gpu_instance_id,
            slice_id: "s-old".into(),
        };
        assert!(matches!(
            destroy_owned_mig(&mut b, &stale),
            Err(BackendError::NoSuchInstance { .. })
        ));
        assert_eq!(b.inventory().unwrap()[0].mig_instances.len(), 1);
        let own = pb::DestroyMigInstance {
            slice_id: "s-new".into(),
            ..stale
        };
        destroy_owned_mig(&mut b, &own).unwrap();
        assert!(b.inventory().unwrap()[0].mig_instances.is_empty());
    }
    use super::*;

    #[test]
    fn tls_files_are_read_again_and_a_failed_read_keeps_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str| dir.path().join(n);
        std::fs::write(f("ca.crt"), "ca-1").unwrap();
        std::fs::write(f("agent.crt"), "cert-1").unwrap();
        std::fs::write(f("agent.key"), "key-1").unwrap();
        let mut cfg = SessionConfig::new("https://c:1", "n1");
        assert!(!refresh_tls(&mut cfg), "no files: nothing to read");
        cfg.tls_files = Some(greenslice_proto::client::ClientTlsFiles {
            ca: Some(f("ca.crt")),
            cert: Some(f("agent.crt")),
            key: Some(f("agent.key")),
        });
        assert!(refresh_tls(&mut cfg));
        assert_eq!(
            cfg.tls.identity,
            Some((b"cert-1".to_vec(), b"key-1".to_vec()))
        );
        assert!(!refresh_tls(&mut cfg), "unchanged files");
        assert!(!tls_files_changed(&cfg));
        std::fs::write(f("agent.crt"), "cert-2").unwrap();
        std::fs::write(f("agent.key"), "key-2").unwrap();
        assert!(tls_files_changed(&cfg), "an open session would reconnect");
        assert!(refresh_tls(&mut cfg));
        assert_eq!(
            cfg.tls.identity,
            Some((b"cert-2".to_vec(), b"key-2".to_vec()))
        );
        std::fs::remove_file(f("agent.key")).unwrap();
        assert!(!refresh_tls(&mut cfg));
        assert_eq!(
            cfg.tls.identity,
            Some((b"cert-2".to_vec(), b"key-2".to_vec())),
            "a missing file keeps what was read before"
        );
    }

    fn cmd(action: Action) -> pb::Command {
        pb::Command {
            command_id: 7,
            action: Some(action),
        }
    }

    #[test]
    fn bad_commands_are_refused_before_the_backend() {
        let share = |f: f64, mem: u64, slice: &str| {
            cmd(Action::SetShare(pb::SetShare {
                gpu_uuid: "GPU-1".into(),
                slice_id: slice.into(),
                compute_fraction: f,
                memory_bytes: mem,
            }))
        };
        assert!(validate_command(&share(0.5, 1 << 30, "s-1")).is_ok());
        for bad in [
            share(f64::NAN, 1 << 30, "s-1"),
            share(0.5, u64::MAX, "s-1"),
            share(0.5, 1 << 30, &"s".repeat(65)),
            share(0.5, 1 << 30, ""),
            cmd(Action::CreateMig(pb::CreateMigInstance {
                gpu_uuid: "GPU-1".into(),
                profile: "1g.10gb".into(),
                start: 8,
                slice_id: "s-1".into(),
            })),
            cmd(Action::AssignGpu(pb::AssignGpu {
                gpu_uuid: "GPU 1\n".into(),
                slice_id: "s-1".into(),
            })),
            pb::Command {
                command_id: 1,
                action: None,
            },
            cmd(Action::ClaimMig(pb::ClaimMigInstance {
                gpu_uuid: String::new(),
                gpu_instance_id: 1,
                slice_id: "s-1".into(),
            })),
            cmd(Action::ReleaseMig(pb::ReleaseMigInstance {
                gpu_uuid: "GPU-1".into(),
                gpu_instance_id: 1,
                slice_id: "s 1".into(),
            })),
            cmd(Action::EvictPod(pb::EvictPod {
                slice_id: "k 1".into(),
                reason: "idle".into(),
            })),
            cmd(Action::EvictPod(pb::EvictPod {
                slice_id: "k-1".into(),
                reason: "x".repeat(100_000),
            })),
        ] {
            assert!(validate_command(&bad).is_err(), "{bad:?}");
        }
        assert!(
            validate_command(&cmd(Action::EvictPod(pb::EvictPod {
                slice_id: "k-1".into(),
                reason: "idle".into(),
            })))
            .is_ok()
        );
    }

    fn sim() -> Box<dyn GpuBackend> {
        let mut c =
            crate::backend::sim::SimConfig::new("n1", crate::backend::sim::Machine::DgxH100);
        c.gpus = 1;
        c.mig_gpus = 1;
        Box::new(crate::backend::sim::SimBackend::new(c).unwrap())
    }

    fn capabilities(b: Box<dyn GpuBackend>) -> pb::NodeCapabilities {
        let shared: SharedBackend = Arc::new(Mutex::new(b));
        match register_message("n1", &shared).unwrap().msg {
            Some(pb::agent_message::Msg::Register(r)) => r.capabilities.unwrap(),
            other => panic!("not a Register: {other:?}"),
        }
    }

    #[test]
    fn the_ledgers_slices_are_checked_before_they_are_taken_back() {
        use crate::checkpoint::restore::LedgerKind;
        let slice = |kind: &str| pb::LedgerSlice {
            slice_id: "s-1".into(),
            gpu_uuids: vec!["GPU-1".into()],
            kind: kind.into(),
            compute_fraction: 0.5,
            memory_bytes: 1 << 30,
            gpu_instance_id: 2,
            start: 4,
            profile: "3g.40gb".into(),
            mig_uuid: "MIG-1".into(),
        };
        let answer = |adopt: Vec<pb::LedgerSlice>| pb::Registered {
            node: "n1".into(),
            adopt,
        };
        let got =
            ledger_slices(&answer(vec![slice("whole"), slice("share"), slice("mig")])).unwrap();
        assert_eq!(got[0].kind, LedgerKind::Whole);
        assert_eq!(
            got[1].kind,
            LedgerKind::Share {
                compute_fraction: 0.5,
                memory_bytes: 1 << 30
            }
        );
        assert!(matches!(
            &got[2].kind,
            LedgerKind::Mig { gpu_instance_id: 2, start: 4, profile, .. } if profile == "3g.40gb"
        ));
        for bad in [
            pb::LedgerSlice {
                kind: "pool".into(),
                ..slice("whole")
            },
            pb::LedgerSlice {
                start: 8,
                ..slice("mig")
            },
            pb::LedgerSlice {
                compute_fraction: f64::NAN,
                ..slice("share")
            },
            pb::LedgerSlice {
                gpu_uuids: Vec::new(),
                ..slice("whole")
            },
            pb::LedgerSlice {
                slice_id: "s 1".into(),
                ..slice("whole")
            },
        ] {
            assert!(
                ledger_slices(&answer(vec![bad.clone()])).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn register_says_what_the_node_may_do() {
        let c = capabilities(sim());
        assert!(
            c.mig_manage && c.mps,
            "the simulator manages MIG and simulates MPS"
        );
        let c = capabilities(Box::new(crate::backend::readonly::ReadOnlyMig::new(sim())));
        assert!(!c.mig_manage && c.mps);
    }

    #[test]
    fn claims_go_to_the_backend_and_a_managing_one_refuses_them() {
        let shared: SharedBackend = Arc::new(Mutex::new(sim()));
        let claim = cmd(Action::ClaimMig(pb::ClaimMigInstance {
            gpu_uuid: "GPU-1".into(),
            gpu_instance_id: 1,
            slice_id: "s-1".into(),
        }));
        let r = apply(&shared, &claim, &WorkStop::new(1_000));
        assert!(!r.ok && r.error.contains("lends none"), "{}", r.error);
    }
}
