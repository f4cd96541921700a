//! The controller's errors, typed, and the stable [`reason`] each carries on the wire. Their gRPC
//! status codes and rich error details are made at the API edge (`api::status`).

use greenslice_core::limits::LimitError;
use greenslice_core::slice::ValidationError;
use thiserror::Error;

use crate::model::page::PageError;
use crate::placement::Unplaceable;

/// The `ErrorInfo.domain` of every greenslice error.
pub const DOMAIN: &str = "greenslice.dev";

/// The stable `ErrorInfo.reason` of each refusal (documented in docs/API.md, "Errors"). A program
/// switches on these, never on the message.
pub mod reason {
    /// A request field is malformed or outside its limit (BadRequest names it).
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// The MIG profile exists on no (requested) GPU model of the cluster.
    pub const MIG_PROFILE_UNKNOWN: &str = "MIG_PROFILE_UNKNOWN";
    /// A page token was forged, damaged or made for other filters.
    pub const PAGE_TOKEN_INVALID: &str = "PAGE_TOKEN_INVALID";
    /// No slice with that id (ResourceInfo names it).
    pub const SLICE_NOT_FOUND: &str = "SLICE_NOT_FOUND";
    /// No node with that name (ResourceInfo names it).
    pub const NODE_NOT_FOUND: &str = "NODE_NOT_FOUND";
    /// The request is valid but no GPU has room for it now.
    pub const NO_CAPACITY: &str = "NO_CAPACITY";
    /// It needs a new MIG instance and the nodes with room may not create them.
    pub const MIG_READ_ONLY: &str = "MIG_READ_ONLY";
    /// No schedulable node is connected.
    pub const NO_NODES: &str = "NO_NODES";
    /// No GPU of the requested model in the cluster.
    pub const GPU_MODEL_UNKNOWN: &str = "GPU_MODEL_UNKNOWN";
    /// The chosen node's agent is not reachable.
    pub const NODE_UNAVAILABLE: &str = "NODE_UNAVAILABLE";
    /// The node's agent refused the change.
    pub const AGENT_REFUSED: &str = "AGENT_REFUSED";
    /// The ledger could not commit or read.
    pub const LEDGER_UNAVAILABLE: &str = "LEDGER_UNAVAILABLE";
    /// The slice is not in a state that allows the operation (PreconditionFailure says which).
    pub const WRONG_STATE: &str = "WRONG_STATE";
    /// The caller may not act on that tenant or slice.
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// A tenant quota would be exceeded (QuotaFailure says which).
    pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
    /// A watch asked for events older than those kept: list again, then watch from the list's
    /// revision.
    pub const REVISION_COMPACTED: &str = "REVISION_COMPACTED";
    /// This controller's leadership is in doubt: retry, a standby takes over.
    pub const NOT_LEADER: &str = "NOT_LEADER";
}

/// Everything a controller operation can fail with.
#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    BadRequest(String),
    /// A request field outside its limit or malformed.
    #[error("{0}")]
    Field(#[from] LimitError),
    #[error("{0}")]
    Page(#[from] PageError),
    #[error("{message}")]
    MigProfileUnknown { profile: String, message: String },
    #[error("slice {0} not found")]
    NotFound(String),
    #[error("node {0} is not known")]
    NodeNotFound(String),
    #[error("{0}")]
    Unplaceable(#[from] Unplaceable),
    #[error("node {node} is unavailable: {why}")]
    AgentUnavailable { node: String, why: String },
    #[error("node {node} refused the change: {error}")]
    AgentRefused { node: String, error: String },
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("slice {id} is {state}; {what}")]
    WrongState {
        id: String,
        state: &'static str,
        what: String,
    },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Quota(#[from] Box<crate::quota::QuotaExceeded>),
    #[error("not the leader: {0}")]
    NotLeader(String),
    #[error(
        "events after revision {asked} are no longer kept (the oldest kept follows {oldest}); list again and watch from the list's revision"
    )]
    RevisionCompacted { asked: u64, oldest: u64 },
}
