//! The agent's stream to the controller: register, then apply commands and answer each one.
//! Reconnects with exponential backoff when the controller goes away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenslice_core::convert::{gpu_to_pb, mig_to_pb};
use greenslice_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::command::Action;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::backend::{BackendError, GpuBackend};

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
        })),
    })
}

/// Applies one command on the backend and builds its result.
pub fn apply(backend: &SharedBackend, cmd: &pb::Command) -> pb::CommandResult {
    let mut b = lock(backend);
    let mut result = pb::CommandResult {
        command_id: cmd.command_id,
        ok: true,
        ..Default::default()
    };
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
        Some(Action::DestroyMig(c)) => b.destroy_mig(&c.gpu_uuid, c.gpu_instance_id),
        Some(Action::SetShare(c)) => b
            .set_share(&c.gpu_uuid, &c.slice_id, c.compute_fraction, c.memory_bytes)
            .map(|env| result.env = env.into_iter().collect()),
        Some(Action::ClearShare(c)) => b.clear_share(&c.gpu_uuid, &c.slice_id),
        Some(Action::AssignGpu(c)) => b
            .assign_whole(&c.gpu_uuid, &c.slice_id)
            .map(|env| result.env = env.into_iter().collect()),
        Some(Action::UnassignGpu(c)) => b.unassign_whole(&c.gpu_uuid, &c.slice_id),
        None => Err(BackendError::Config("empty command".into())),
    };
    if let Err(e) = outcome {
        result.ok = false;
        result.error = e.to_string();
    }
    result
}

/// Latest kubelet allocations to report (see [`crate::kubelet`]); `None` until first read.
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

/// Runs one session: connects, registers, serves commands until the stream ends.
async fn session_once(
    controller: &str,
    node: &str,
    backend: &SharedBackend,
    kubelet: Option<&KubeletReports>,
) -> anyhow::Result<()> {
    let mut client = AgentServiceClient::connect(controller.to_string()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(64);
    tx.send(register_message(node, backend)?).await?;
    // Dropping a JoinHandle does not stop its task: abort the forwarder when the session ends.
    let forwarder = kubelet.map(|k| tokio::spawn(forward_kubelet(k.clone(), tx.clone())));
    let _abort = AbortOnDrop(forwarder);
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(msg) = inbound.next().await {
        match msg?.msg {
            Some(pb::controller_message::Msg::Registered(r)) => {
                info!(node = %r.node, "registered with controller")
            }
            Some(pb::controller_message::Msg::Command(cmd)) => {
                let result = apply(backend, &cmd);
                if !result.ok {
                    warn!(command = cmd.command_id, error = %result.error, "command failed");
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

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Keeps a session with the controller alive forever, reconnecting with backoff.
pub async fn run(controller: String, node: String, backend: SharedBackend) {
    run_with_kubelet(controller, node, backend, None).await
}

/// [`run`], also reporting the kubelet's allocations on every session when `kubelet` is given.
pub async fn run_with_kubelet(
    controller: String,
    node: String,
    backend: SharedBackend,
    kubelet: Option<KubeletReports>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = tokio::time::Instant::now();
        match session_once(&controller, &node, &backend, kubelet.as_ref()).await {
            Ok(()) => warn!(%controller, "controller closed the stream; reconnecting"),
            Err(e) => {
                warn!(%controller, error = %e, "controller session failed; retrying in {:?}", backoff)
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
