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

/// Runs one session: connects, registers, serves commands until the stream ends. Sets `registered`
/// once the controller accepted the registration.
async fn session_once(
    controller: &str,
    node: &str,
    backend: &SharedBackend,
    registered: &mut bool,
) -> anyhow::Result<()> {
    let mut client = AgentServiceClient::connect(controller.to_string()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(64);
    tx.send(register_message(node, backend)?).await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(msg) = inbound.next().await {
        match msg?.msg {
            Some(pb::controller_message::Msg::Registered(r)) => {
                *registered = true;
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

/// Keeps a session with the controller alive forever, reconnecting with backoff.
pub async fn run(controller: String, node: String, backend: SharedBackend) {
    run_any(vec![controller], node, backend).await
}

/// Like [`run`] with several controller replicas: after a failed or ended session the next URL is
/// tried (a standby refuses the session, naming the leader). The backoff starts over after every
/// successful registration, so a controller restart is followed by a prompt reconnect.
pub async fn run_any(controllers: Vec<String>, node: String, backend: SharedBackend) {
    if controllers.is_empty() {
        warn!("no controller URL given");
        return;
    }
    let mut backoff = BACKOFF_MIN;
    let mut i = 0usize;
    loop {
        let controller = &controllers[i % controllers.len()];
        let started = tokio::time::Instant::now();
        let mut registered = false;
        match session_once(controller, &node, &backend, &mut registered).await {
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
