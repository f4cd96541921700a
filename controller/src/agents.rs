//! Connected node agents and the commands in flight to them.
//!
//! The engine speaks [`AgentAction`]s and gets [`CommandOutcome`]s; the agent API (`api::agent`)
//! turns them into the wire messages of the agent's session stream, so nothing here is protobuf.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use greenslice_core::inventory::MigInstance;
use tokio::sync::{mpsc, oneshot};

/// What the controller asks an agent to apply on its node.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    /// Create a MIG instance of `profile` at `start` for `slice_id`.
    CreateMig {
        gpu_uuid: String,
        profile: String,
        start: u32,
        slice_id: String,
    },
    /// Destroy a MIG instance (the slice's, or an orphan when `slice_id` is empty).
    DestroyMig {
        gpu_uuid: String,
        gpu_instance_id: u32,
        slice_id: String,
    },
    /// Lend an existing MIG instance to `slice_id` (nodes that may not create instances).
    ClaimMig {
        gpu_uuid: String,
        gpu_instance_id: u32,
        slice_id: String,
    },
    /// End a lending; the instance stays.
    ReleaseMig {
        gpu_uuid: String,
        gpu_instance_id: u32,
        slice_id: String,
    },
    /// Set up a share with its limits.
    SetShare {
        gpu_uuid: String,
        slice_id: String,
        compute_fraction: f64,
        memory_bytes: u64,
    },
    /// Remove a share.
    ClearShare { gpu_uuid: String, slice_id: String },
    /// Give a whole GPU to `slice_id`.
    AssignGpu { gpu_uuid: String, slice_id: String },
    /// Take a whole GPU back.
    UnassignGpu { gpu_uuid: String, slice_id: String },
    /// Evict the pod holding kubelet slice `slice_id` (the agent finds the pod).
    EvictPod { slice_id: String, reason: String },
}

/// A command as it goes to an agent's session.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCommand {
    pub id: u64,
    pub action: AgentAction,
}

/// An agent's answer to a command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandOutcome {
    /// True when applied.
    pub ok: bool,
    /// Why it failed (empty when ok).
    pub error: String,
    /// For a created or claimed MIG instance: the instance (`None` if absent or malformed).
    pub mig: Option<MigInstance>,
    /// Environment a process needs to use what was applied.
    pub env: Vec<(String, String)>,
}

/// Outbound half of an agent's session: the commands for it.
pub type AgentTx = mpsc::Sender<AgentCommand>;

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
    pending: DashMap<u64, (String, u64, oneshot::Sender<CommandOutcome>)>,
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
    pub fn complete(&self, command_id: u64, result: CommandOutcome) {
        if let Some((_, (_, _, tx))) = self.pending.remove(&command_id) {
            let _ = tx.send(result);
        }
    }

    /// Sends a command and waits for its result.
    pub async fn call(
        &self,
        node: &str,
        action: AgentAction,
        timeout: Duration,
    ) -> Result<CommandOutcome, AgentError> {
        let h = self
            .handles
            .get(node)
            .map(|h| h.clone())
            .ok_or(AgentError::NotConnected)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, (node.to_string(), h.session, tx));
        if h.tx.send(AgentCommand { id, action }).await.is_err() {
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
