//! Connected node agents and the commands in flight to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use greenslice_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Outbound half of an agent's stream.
pub type AgentTx = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

#[derive(Debug, Clone)]
struct Handle {
    session: u64,
    tx: AgentTx,
}

/// Why a command did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("agent not connected")]
    NotConnected,
    #[error("agent disconnected before answering")]
    Disconnected,
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
}

/// The connected agents, by node name.
#[derive(Debug, Default)]
pub struct Agents {
    handles: DashMap<String, Handle>,
    /// command id -> (node, session, waiter)
    pending: DashMap<u64, (String, u64, oneshot::Sender<pb::CommandResult>)>,
    next_id: AtomicU64,
}

impl Agents {
    /// Records a new session for `node`, replacing an older one. Returns the session id.
    pub fn connect(&self, node: &str, tx: AgentTx) -> u64 {
        let session = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.handles
            .insert(node.to_string(), Handle { session, tx });
        // Commands sent on an older session will never be answered on this one.
        self.pending
            .retain(|_, (n, s, _)| n != node || *s == session);
        session
    }

    /// Forgets a session (if it is still the current one). Waiters of its commands get Disconnected.
    /// Returns true when the node has no session any more.
    pub fn disconnect(&self, node: &str, session: u64) -> bool {
        let removed = self
            .handles
            .remove_if(node, |_, h| h.session == session)
            .is_some();
        self.pending
            .retain(|_, (n, s, _)| !(n == node && *s == session));
        removed
    }

    pub fn is_connected(&self, node: &str) -> bool {
        self.handles.contains_key(node)
    }

    /// Delivers a result to its waiter. Unknown ids (late answers after a timeout) are dropped.
    pub fn complete(&self, result: pb::CommandResult) {
        if let Some((_, (_, _, tx))) = self.pending.remove(&result.command_id) {
            let _ = tx.send(result);
        }
    }

    /// Sends a command and waits for its result.
    pub async fn call(
        &self,
        node: &str,
        action: pb::command::Action,
        timeout: Duration,
    ) -> Result<pb::CommandResult, AgentError> {
        let h = self
            .handles
            .get(node)
            .map(|h| h.clone())
            .ok_or(AgentError::NotConnected)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, (node.to_string(), h.session, tx));
        let msg = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Command(pb::Command {
                command_id: id,
                action: Some(action),
            })),
        };
        if h.tx.send(Ok(msg)).await.is_err() {
            self.pending.remove(&id);
            return Err(AgentError::Disconnected);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(AgentError::Disconnected),
            Err(_) => {
                self.pending.remove(&id);
                Err(AgentError::Timeout(timeout))
            }
        }
    }
}
