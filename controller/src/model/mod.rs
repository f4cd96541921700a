//! The cluster model: slice records ([`slice`]), the cluster's nodes and slices in memory with the
//! capacity in use derived from live slices ([`state`]), and the kubelet's grants as slices
//! ([`kubelet`]).
//!
//! Pure data and rules: imports only `greenslice-core`, [`crate::placement`]'s views and nothing of
//! the engine, the API or the server.

pub mod dra;
pub mod events;
pub mod kubelet;
pub mod page;
pub mod slice;
pub mod state;
