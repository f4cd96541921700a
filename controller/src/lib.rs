//! The greenslice controller: the cluster view, placement, the slice lifecycle and the gRPC services.

pub mod placement;
