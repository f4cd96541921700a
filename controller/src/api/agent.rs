//! AgentService: the long-lived stream each node agent keeps with the controller.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use greenslice_core::convert::{gpu_from_pb, mig_from_pb, sample_from_pb};
use greenslice_core::slice::SliceKind;
use greenslice_proto::v1 as pb;
use pb::agent_service_server::AgentService;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::agents::{AgentAction, AgentCommand, CommandOutcome};
use crate::auth::Principal;
use crate::auth::tls::ServerTls;
use crate::engine::Controller;
use crate::model::slice::SliceRecord;

/// Most samples accepted in one batch (see [`greenslice_core::limits`]).
pub use greenslice_core::limits::MAX_SAMPLES_PER_BATCH;

/// Most GPUs one node may report (see [`greenslice_core::limits`]).
pub use greenslice_core::limits::MAX_GPUS_PER_NODE;

/// The agent API.
#[derive(Debug, Clone)]
pub struct AgentApi {
    pub controller: Arc<Controller>,
    /// The TLS settings in force (None in insecure mode): an open session whose certificate they
    /// no longer trust is ended.
    pub tls: Option<Arc<ServerTls>>,
}

/// How often an open session's certificate is checked again even without a change of the TLS
/// settings (it may expire while the session is open).
pub const CERT_RECHECK: Duration = Duration::from_secs(60);

/// Resolves with the reason once the agent's certificate is no longer trusted by `tls` (its CA
/// replaced, the certificate revoked or expired); never in insecure mode.
async fn distrusted(tls: Option<Arc<ServerTls>>, who: Principal) -> String {
    let chain = who.agent_chain();
    let (Some(tls), false) = (tls, chain.is_empty()) else {
        return std::future::pending().await;
    };
    let mut changes = tls.changes();
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return std::future::pending().await;
                }
            }
            () = tokio::time::sleep(CERT_RECHECK) => {}
        }
        if let Err(e) = tls.verify_agent(&chain) {
            return e;
        }
    }
}

/// Checks a registration from an agent (see [`super::validate::register`]).
pub fn validate_register(r: &pb::Register) -> Result<(), Status> {
    super::validate::register(r)
}

/// The samples of `batch` that name a GPU of the node, and how many did not. A well-formed sample
/// for a GPU the node never reported is dropped, so an agent cannot grow the controller's telemetry
/// with made-up GPUs.
pub fn known_gpu_samples(
    batch: pb::SampleBatch,
    node_gpus: &HashSet<String>,
) -> (pb::SampleBatch, usize) {
    let before = batch.samples.len();
    let samples: Vec<pb::GpuSample> = batch
        .samples
        .into_iter()
        .filter(|s| node_gpus.contains(&s.gpu_uuid))
        .collect();
    let dropped = before - samples.len();
    (pb::SampleBatch { samples }, dropped)
}

/// A slice as the ledger holds it, for `Registered.adopt`.
fn ledger_slice(r: &SliceRecord) -> pb::LedgerSlice {
    let mut l = pb::LedgerSlice {
        slice_id: r.id.clone(),
        gpu_uuids: r.gpus.clone(),
        ..Default::default()
    };
    match &r.spec.kind {
        SliceKind::Whole { .. } => l.kind = "whole".into(),
        SliceKind::Share {
            compute_fraction,
            memory_bytes,
        } => {
            l.kind = "share".into();
            l.compute_fraction = *compute_fraction;
            l.memory_bytes = *memory_bytes;
        }
        SliceKind::Mig { profile } => {
            l.kind = "mig".into();
            l.profile = profile.clone();
            if let Some(m) = &r.mig {
                l.start = u32::from(m.start);
                l.gpu_instance_id = m.gpu_instance_id.unwrap_or_default();
                l.mig_uuid = m.mig_uuid.clone().unwrap_or_default();
            }
        }
    }
    l
}

/// An engine command as the wire message.
fn command_to_pb(cmd: AgentCommand) -> pb::ControllerMessage {
    use pb::command::Action;
    let action = match cmd.action {
        AgentAction::CreateMig {
            gpu_uuid,
            profile,
            start,
            slice_id,
        } => Action::CreateMig(pb::CreateMigInstance {
            gpu_uuid,
            profile,
            start,
            slice_id,
        }),
        AgentAction::DestroyMig {
            gpu_uuid,
            gpu_instance_id,
            slice_id,
        } => Action::DestroyMig(pb::DestroyMigInstance {
            gpu_uuid,
            gpu_instance_id,
            slice_id,
        }),
        AgentAction::ClaimMig {
            gpu_uuid,
            gpu_instance_id,
            slice_id,
        } => Action::ClaimMig(pb::ClaimMigInstance {
            gpu_uuid,
            gpu_instance_id,
            slice_id,
        }),
        AgentAction::ReleaseMig {
            gpu_uuid,
            gpu_instance_id,
            slice_id,
        } => Action::ReleaseMig(pb::ReleaseMigInstance {
            gpu_uuid,
            gpu_instance_id,
            slice_id,
        }),
        AgentAction::SetShare {
            gpu_uuid,
            slice_id,
            compute_fraction,
            memory_bytes,
        } => Action::SetShare(pb::SetShare {
            gpu_uuid,
            slice_id,
            compute_fraction,
            memory_bytes,
        }),
        AgentAction::ClearShare { gpu_uuid, slice_id } => {
            Action::ClearShare(pb::ClearShare { gpu_uuid, slice_id })
        }
        AgentAction::AssignGpu { gpu_uuid, slice_id } => {
            Action::AssignGpu(pb::AssignGpu { gpu_uuid, slice_id })
        }
        AgentAction::UnassignGpu { gpu_uuid, slice_id } => {
            Action::UnassignGpu(pb::UnassignGpu { gpu_uuid, slice_id })
        }
        AgentAction::EvictPod { slice_id, reason } => {
            Action::EvictPod(pb::EvictPod { slice_id, reason })
        }
    };
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Command(pb::Command {
            command_id: cmd.id,
            action: Some(action),
        })),
    }
}

/// An agent's wire answer as the engine's outcome. A malformed MIG instance counts as none.
fn outcome_from_pb(r: pb::CommandResult) -> CommandOutcome {
    CommandOutcome {
        ok: r.ok,
        error: r.error,
        mig: r.mig.as_ref().and_then(mig_from_pb),
        env: r.env.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let who = crate::auth::principal(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("stream closed before Register"))??;
        let Some(pb::agent_message::Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        validate_register(&reg)?;
        who.may_register(&reg.node).inspect_err(|e| {
            warn!(node = %reg.node, "agent registration refused: {}", e.message());
        })?;
        let node = reg.node.clone();
        let (tx, rx) = mpsc::channel(256);
        let plan = self
            .controller
            .register_node(&greenslice_core::convert::registration_from_pb(&reg));
        info!(%node, gpus = reg.gpus.len(), backend = %reg.backend, ownership_rebuilt = reg.ownership_rebuilt, "agent registered");
        // Registered goes first: no command can be queued before the session is connected below.
        let _ = tx
            .send(Ok(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Registered(pb::Registered {
                    node: node.clone(),
                    // The ledger's slices, for an agent that lost its own record.
                    adopt: plan.adopt.iter().map(ledger_slice).collect(),
                })),
            }))
            .await;
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<AgentCommand>(256);
        let session = self.controller.agents.connect(&node, cmd_tx);
        // The engine's commands, as wire messages on the session stream.
        let out = tx.clone();
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                if out.send(Ok(command_to_pb(cmd))).await.is_err() {
                    break;
                }
            }
        });

        let controller = self.controller.clone();
        let distrust = distrusted(self.tls.clone(), who);
        tokio::spawn(async move {
            tokio::pin!(distrust);
            // Reconcile the ledger with what the agent reported (releases waiting for it, slices a
            // crash left pending, slices whose hardware is gone), while serving its answers below.
            let c = controller.clone();
            tokio::spawn(async move { c.reconcile(plan).await });
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = controller.stopping() => {
                        info!(%node, "controller stopping: ending the agent session");
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "controller stopping: reconnect (to the next leader)",
                            )))
                            .await;
                        break;
                    }
                    reason = &mut distrust => {
                        warn!(%node, %reason, "agent certificate no longer trusted; ending the session");
                        let _ = tx
                            .send(Err(Status::unauthenticated(format!(
                                "agent certificate no longer trusted: {reason}"
                            ))))
                            .await;
                        break;
                    }
                };
                let Some(msg) = msg else { break };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(%node, error = %e, "agent stream error");
                        break;
                    }
                };
                // A malformed message ends the session with INVALID_ARGUMENT: the node counts as
                // disconnected and keeps its committed slices, as after any lost connection.
                if let Err(status) = super::validate::agent_message(&msg) {
                    warn!(%node, error = %status.message(), "malformed agent message; ending the session");
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                match msg.msg {
                    Some(pb::agent_message::Msg::Result(r)) => {
                        controller.agents.complete(r.command_id, outcome_from_pb(r))
                    }
                    Some(pb::agent_message::Msg::State(s)) => {
                        controller.update_node_gpus(&node, s.gpus.iter().map(gpu_from_pb).collect())
                    }
                    Some(pb::agent_message::Msg::Kubelet(k)) => {
                        controller.set_pod_eviction(&node, k.eviction_allowed);
                        let applied = match super::kubelet::grants_from_pb(&k) {
                            Ok(grants) => controller
                                .apply_kubelet_allocations(&node, &grants)
                                .await
                                .map_err(|e| e.to_string()),
                            Err(status) => Err(status.message().to_string()),
                        };
                        if let Err(e) = applied {
                            warn!(%node, error = %e, "kubelet allocations refused");
                        }
                    }
                    Some(pb::agent_message::Msg::Notice(n)) => {
                        // Checked above: the kind is known.
                        if let Some(kind) = greenslice_core::notice::NoticeKind::parse(&n.kind) {
                            controller.limit_notice(&node, &n.slice_id, kind, &n.message);
                        }
                    }
                    Some(pb::agent_message::Msg::Samples(b)) => {
                        let gpus: HashSet<String> = controller.with_state(|st| {
                            st.nodes
                                .get(&node)
                                .map(|n| n.gpus.iter().map(|g| g.uuid.clone()).collect())
                                .unwrap_or_default()
                        });
                        let (b, dropped) = known_gpu_samples(b, &gpus);
                        if dropped > 0 {
                            warn!(%node, dropped, "samples for GPUs the node never reported; dropped");
                        }
                        let samples: Vec<_> = b.samples.into_iter().map(sample_from_pb).collect();
                        controller.ingest_samples(&node, &samples);
                    }
                    // Checked above: only the first message may register.
                    Some(pb::agent_message::Msg::Register(_)) => break,
                    // A newer agent's message this controller does not know.
                    None => warn!(%node, "agent message with no known content; ignored"),
                }
            }
            if controller.agents.disconnect(&node, session) {
                controller.node_disconnected(&node);
                warn!(%node, "agent disconnected");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
