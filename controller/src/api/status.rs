//! Controller errors as gRPC statuses, with the google.rpc rich error details a program acts on
//! (made here and only here, for every refusal of an engine operation): an `ErrorInfo` with a
//! stable [`reason`] on every one, and by kind a `BadRequest` field violation, a `QuotaFailure`, a
//! `ResourceInfo` (NOT_FOUND) or a `PreconditionFailure`. The message stays the one a person reads.

use std::collections::HashMap;

use greenslice_core::slice::ValidationError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{ControllerError, DOMAIN, reason};
use crate::model::page::PageError;
use crate::placement::Unplaceable;

/// The request field a validation error is about.
fn validation_field(e: &ValidationError) -> &'static str {
    match e {
        ValidationError::MissingKind => "spec",
        ValidationError::WholeCount(_) => "spec.whole.count",
        ValidationError::UnknownProfile { .. } | ValidationError::ProfileNotOnModel { .. } => {
            "spec.mig.profile"
        }
        ValidationError::ShareFraction(_) => "spec.share.compute_fraction",
        ValidationError::ShareZeroMemory | ValidationError::ShareMemoryTooLarge { .. } => {
            "spec.share.memory_bytes"
        }
        ValidationError::Tenant(_) => "tenant",
        ValidationError::IdempotencyKey => "idempotency_key",
        ValidationError::Name { field } => field,
    }
}

fn meta<const N: usize>(pairs: [(&str, &str); N]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The INVALID_ARGUMENT status for one bad field, with its BadRequest violation.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let mut d = ErrorDetails::new();
    d.add_bad_request_violation(field, message.clone());
    d.set_error_info(reason::INVALID_FIELD, DOMAIN, meta([("field", field)]));
    Status::with_error_details(Code::InvalidArgument, message, d)
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Status {
        let message = e.to_string();
        let mut d = ErrorDetails::new();
        let code = match &e {
            ControllerError::Invalid(v) => {
                let field = validation_field(v);
                d.add_bad_request_violation(field, message.clone());
                let r = match v {
                    ValidationError::UnknownProfile { .. }
                    | ValidationError::ProfileNotOnModel { .. } => reason::MIG_PROFILE_UNKNOWN,
                    _ => reason::INVALID_FIELD,
                };
                d.set_error_info(r, DOMAIN, meta([("field", field)]));
                Code::InvalidArgument
            }
            ControllerError::BadRequest(_) => {
                d.set_error_info(reason::INVALID_FIELD, DOMAIN, HashMap::new());
                Code::InvalidArgument
            }
            ControllerError::Field(l) => {
                d.add_bad_request_violation(l.field.clone(), l.problem.clone());
                d.set_error_info(
                    reason::INVALID_FIELD,
                    DOMAIN,
                    meta([("field", l.field.as_str())]),
                );
                Code::InvalidArgument
            }
            ControllerError::Page(p) => {
                d.add_bad_request_violation(p.field(), message.clone());
                let r = match p {
                    PageError::Size { .. } => reason::INVALID_FIELD,
                    PageError::Forged | PageError::Mismatch => reason::PAGE_TOKEN_INVALID,
                };
                d.set_error_info(r, DOMAIN, meta([("field", p.field())]));
                Code::InvalidArgument
            }
            ControllerError::MigProfileUnknown { profile, .. } => {
                d.add_bad_request_violation("spec.mig.profile", message.clone());
                d.set_error_info(
                    reason::MIG_PROFILE_UNKNOWN,
                    DOMAIN,
                    meta([("profile", profile.as_str())]),
                );
                Code::InvalidArgument
            }
            ControllerError::NotFound(id) => {
                d.set_resource_info("greenslice.v1.Slice", id.clone(), "", message.clone());
                d.set_error_info(
                    reason::SLICE_NOT_FOUND,
                    DOMAIN,
                    meta([("slice_id", id.as_str())]),
                );
                Code::NotFound
            }
            ControllerError::NodeNotFound(node) => {
                d.set_resource_info("greenslice.v1.Node", node.clone(), "", message.clone());
                d.set_error_info(
                    reason::NODE_NOT_FOUND,
                    DOMAIN,
                    meta([("node", node.as_str())]),
                );
                Code::NotFound
            }
            ControllerError::Unplaceable(u) => {
                let (code, r) = match u {
                    Unplaceable::NoNodes => (Code::Unavailable, reason::NO_NODES),
                    Unplaceable::NoSuchModel(m) => {
                        d.add_precondition_failure_violation(
                            "GPU_MODEL",
                            m.clone(),
                            message.clone(),
                        );
                        (Code::FailedPrecondition, reason::GPU_MODEL_UNKNOWN)
                    }
                    Unplaceable::NoRoom { .. } => (Code::ResourceExhausted, reason::NO_CAPACITY),
                    Unplaceable::ReadOnlyMig { .. } => {
                        (Code::ResourceExhausted, reason::MIG_READ_ONLY)
                    }
                };
                let m = match u {
                    Unplaceable::NoRoom { wanted, .. }
                    | Unplaceable::ReadOnlyMig { wanted, .. } => {
                        meta([("wanted", wanted.as_str())])
                    }
                    Unplaceable::NoSuchModel(m) => meta([("model", m.as_str())]),
                    Unplaceable::NoNodes => HashMap::new(),
                };
                d.set_error_info(r, DOMAIN, m);
                code
            }
            ControllerError::AgentUnavailable { node, .. } => {
                d.set_error_info(
                    reason::NODE_UNAVAILABLE,
                    DOMAIN,
                    meta([("node", node.as_str())]),
                );
                Code::Unavailable
            }
            ControllerError::AgentRefused { node, .. } => {
                d.set_error_info(
                    reason::AGENT_REFUSED,
                    DOMAIN,
                    meta([("node", node.as_str())]),
                );
                Code::Aborted
            }
            ControllerError::Ledger(_) => {
                d.set_error_info(reason::LEDGER_UNAVAILABLE, DOMAIN, HashMap::new());
                Code::Unavailable
            }
            ControllerError::WrongState { id, state, what } => {
                d.add_precondition_failure_violation(
                    "STATE",
                    format!("slice/{id}"),
                    format!("slice is {state}; {what}"),
                );
                d.set_error_info(
                    reason::WRONG_STATE,
                    DOMAIN,
                    meta([("slice_id", id.as_str()), ("state", state)]),
                );
                Code::FailedPrecondition
            }
            ControllerError::PermissionDenied(_) => {
                d.set_error_info(reason::PERMISSION_DENIED, DOMAIN, HashMap::new());
                Code::PermissionDenied
            }
            ControllerError::Quota(q) => {
                d.add_quota_failure_violation(format!("tenant:{}", q.tenant), message.clone());
                d.set_error_info(
                    reason::QUOTA_EXCEEDED,
                    DOMAIN,
                    meta([
                        ("tenant", q.tenant.as_str()),
                        ("limit", q.what),
                        ("section", q.section.as_str()),
                    ]),
                );
                Code::ResourceExhausted
            }
            ControllerError::NotLeader(_) => {
                d.set_error_info(reason::NOT_LEADER, DOMAIN, HashMap::new());
                Code::Unavailable
            }
            ControllerError::RevisionCompacted { asked, oldest } => {
                d.set_error_info(
                    reason::REVISION_COMPACTED,
                    DOMAIN,
                    meta([
                        ("start_revision", asked.to_string().as_str()),
                        ("oldest_revision", oldest.to_string().as_str()),
                    ]),
                );
                Code::OutOfRange
            }
        };
        Status::with_error_details(code, message, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(e: ControllerError) -> (Code, ErrorDetails) {
        let s = Status::from(e);
        (s.code(), s.get_error_details())
    }

    fn reason_of(d: &ErrorDetails) -> &str {
        d.error_info().map_or("", |i| i.reason.as_str())
    }

    #[test]
    fn each_refusal_kind_carries_its_detail_and_reason() {
        let (c, d) = details(ControllerError::Invalid(ValidationError::WholeCount(9)));
        assert_eq!(c, Code::InvalidArgument);
        assert_eq!(
            d.bad_request().unwrap().field_violations[0].field,
            "spec.whole.count"
        );
        assert_eq!(reason_of(&d), reason::INVALID_FIELD);

        let (c, d) = details(ControllerError::NotFound("s-1".into()));
        assert_eq!(c, Code::NotFound);
        assert_eq!(d.resource_info().unwrap().resource_name, "s-1");
        assert_eq!(reason_of(&d), reason::SLICE_NOT_FOUND);

        let (c, d) = details(ControllerError::Unplaceable(Unplaceable::NoRoom {
            wanted: "1 whole GPU".into(),
            free: "none".into(),
        }));
        assert_eq!(c, Code::ResourceExhausted);
        assert_eq!(reason_of(&d), reason::NO_CAPACITY);

        let (c, d) = details(ControllerError::AgentUnavailable {
            node: "n1".into(),
            why: "gone".into(),
        });
        assert_eq!(c, Code::Unavailable);
        assert_eq!(reason_of(&d), reason::NODE_UNAVAILABLE);
        assert_eq!(d.error_info().unwrap().metadata["node"], "n1");

        let (c, d) = details(ControllerError::WrongState {
            id: "s-1".into(),
            state: "RELEASED",
            what: "only an active slice can be kept".into(),
        });
        assert_eq!(c, Code::FailedPrecondition);
        assert_eq!(
            d.precondition_failure().unwrap().violations[0].subject,
            "slice/s-1"
        );

        let (c, d) = details(ControllerError::Page(PageError::Forged));
        assert_eq!(c, Code::InvalidArgument);
        assert_eq!(
            d.bad_request().unwrap().field_violations[0].field,
            "page_token"
        );
        assert_eq!(reason_of(&d), reason::PAGE_TOKEN_INVALID);

        let (c, d) = details(ControllerError::RevisionCompacted {
            asked: 3,
            oldest: 9,
        });
        assert_eq!(c, Code::OutOfRange);
        assert_eq!(reason_of(&d), reason::REVISION_COMPACTED);
    }
}
