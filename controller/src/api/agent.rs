//! AgentService: the long-lived stream each node agent keeps with the controller.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use greenslice_proto::v1 as pb;
use pb::agent_service_server::AgentService;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::controller::Controller;

/// Most samples accepted in one batch (64 GPUs x 60 samples).
pub const MAX_SAMPLES_PER_BATCH: usize = 3840;

/// Most GPUs one node may report.
pub const MAX_GPUS_PER_NODE: usize = 64;

/// The agent API.
#[derive(Debug, Clone)]
pub struct AgentApi {
    pub controller: Arc<Controller>,
}

/// Checks a registration from an agent.
pub fn validate_register(r: &pb::Register) -> Result<(), Status> {
    let name_ok = !r.node.is_empty()
        && r.node.len() <= 253
        && r.node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !name_ok {
        return Err(Status::invalid_argument(
            "node name must be 1-253 characters of [A-Za-z0-9-._]",
        ));
    }
    if r.gpus.len() > MAX_GPUS_PER_NODE {
        return Err(Status::invalid_argument(format!(
            "a node may report at most {MAX_GPUS_PER_NODE} GPUs, got {}",
            r.gpus.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for g in &r.gpus {
        if g.uuid.is_empty() || g.uuid.len() > 128 || !seen.insert(g.uuid.as_str()) {
            return Err(Status::invalid_argument(format!(
                "GPU uuid {:?} is empty, too long or repeated",
                g.uuid
            )));
        }
    }
    Ok(())
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
        let plan = self.controller.register_node(&reg);
        let session = self.controller.agents.connect(&node, tx.clone());
        info!(%node, gpus = reg.gpus.len(), backend = %reg.backend, "agent registered");
        let _ = tx
            .send(Ok(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Registered(pb::Registered {
                    node: node.clone(),
                })),
            }))
            .await;

        let controller = self.controller.clone();
        tokio::spawn(async move {
            // Reconcile the ledger with what the agent reported (releases waiting for it, slices a
            // crash left pending, slices whose hardware is gone), while serving its answers below.
            let c = controller.clone();
            tokio::spawn(async move { c.reconcile(plan).await });
            while let Some(msg) = inbound.next().await {
                match msg {
                    Ok(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Result(r)),
                    }) => controller.agents.complete(r),
                    Ok(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::State(s)),
                    }) => controller.update_node_gpus(&node, &s.gpus),
                    Ok(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Kubelet(k)),
                    }) => {
                        if let Err(e) = controller.apply_kubelet_allocations(&node, &k).await {
                            warn!(%node, error = %e, "kubelet allocations refused");
                        }
                    }
                    Ok(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Samples(b)),
                    }) => {
                        if b.samples.len() > MAX_SAMPLES_PER_BATCH {
                            warn!(%node, n = b.samples.len(), "sample batch too large; dropped");
                        } else {
                            controller.ingest_samples(&node, &b);
                        }
                    }
                    Ok(other) => {
                        warn!(%node, "unexpected agent message: {:?}", other.msg.map(|_| "register"))
                    }
                    Err(e) => {
                        warn!(%node, error = %e, "agent stream error");
                        break;
                    }
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
