//! gRPC services: thin edges over [`crate::engine::Controller`].
//!
//! Tier 2. May import the engine and the rooms below it; never `server` or `cli`. The only room
//! besides `server` that turns protobuf into core types and errors into `tonic::Status`.

pub mod agent;
pub mod kubelet;
pub mod ops;
pub mod status;
pub mod tenant;
pub mod usage;
pub mod validate;

use greenslice_core::convert::{spec_to_pb, state_to_pb};
use greenslice_proto::v1 as pb;

use crate::model::slice::SliceRecord;

/// Longest accepted id in a request (slice ids, node names).
pub const MAX_ID_LEN: usize = 253;

/// Checks an id-like string from a request.
pub fn check_id(field: &str, v: &str) -> Result<(), tonic::Status> {
    if v.is_empty() || v.len() > MAX_ID_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(tonic::Status::invalid_argument(format!(
            "{field} must be 1-{MAX_ID_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

/// A slice record as the wire message.
pub fn slice_to_pb(r: &SliceRecord) -> pb::Slice {
    pb::Slice {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        spec: Some(spec_to_pb(&r.spec)),
        state: state_to_pb(r.state) as i32,
        node: r.node.clone(),
        gpu_uuids: r.gpus.clone(),
        mig: r.mig.as_ref().map(|m| pb::MigPlacement {
            profile: m.profile.clone(),
            start: u32::from(m.start),
            size: u32::from(m.size),
            gpu_instance_id: m.gpu_instance_id.unwrap_or(0),
            mig_uuid: m.mig_uuid.clone().unwrap_or_default(),
        }),
        env: r.env.clone().into_iter().collect(),
        reason: r.reason.clone(),
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        created_unix_ms: r.created_ms,
        updated_unix_ms: r.updated_ms,
    }
}
