//! gRPC services: thin edges over [`crate::engine::Controller`].
//!
//! Tier 2. May import the engine and the rooms below it; never `server` or `cli`. The only room
//! besides `server` that turns protobuf into core types and errors into `tonic::Status`.

pub mod agent;
pub mod kubelet;
pub mod ops;
pub mod tenant;
pub mod usage;
pub mod validate;

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
