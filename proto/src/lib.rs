//! The greenslice wire contract: generated messages, clients and servers.
//!
//! `v1` is the versioned greenslice API (tenant, agent and ops services).

/// greenslice API, version 1.
pub mod v1 {
    tonic::include_proto!("greenslice.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("greenslice_descriptor");
}
