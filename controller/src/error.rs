//! The controller's errors and their gRPC status codes.

use greenslice_core::slice::ValidationError;
use thiserror::Error;
use tonic::{Code, Status};

use crate::placement::Unplaceable;

/// Everything a controller operation can fail with.
#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    BadRequest(String),
    #[error("slice {0} not found")]
    NotFound(String),
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
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Status {
        let code = match &e {
            ControllerError::Invalid(_) | ControllerError::BadRequest(_) => Code::InvalidArgument,
            ControllerError::NotFound(_) => Code::NotFound,
            ControllerError::Unplaceable(Unplaceable::NoNodes) => Code::Unavailable,
            ControllerError::Unplaceable(Unplaceable::NoSuchModel(_)) => Code::FailedPrecondition,
            ControllerError::Unplaceable(Unplaceable::NoRoom { .. })
            | ControllerError::Unplaceable(Unplaceable::ReadOnlyMig { .. }) => {
                Code::ResourceExhausted
            }
            ControllerError::AgentUnavailable { .. } => Code::Unavailable,
            ControllerError::AgentRefused { .. } => Code::Aborted,
            ControllerError::Ledger(_) => Code::Unavailable,
            ControllerError::WrongState { .. } => Code::FailedPrecondition,
            ControllerError::PermissionDenied(_) => Code::PermissionDenied,
            ControllerError::Quota(_) => Code::ResourceExhausted,
            ControllerError::NotLeader(_) => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}
