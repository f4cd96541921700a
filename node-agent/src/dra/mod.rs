//! The node agent as a Kubernetes DRA (Dynamic Resource Allocation) driver, `gpu.greenslice.io`.
//! See docs/KUBERNETES.md ("DRA") for what is published, how claims are prepared and which
//! Kubernetes versions are supported.
//!
//! - [`devices`]: the device names of the node's ResourceSlices (one home for the scheme).
//! - [`quantity`]: Kubernetes resource quantities (`"20Gi"`, `"250"`), parsed and written.
//! - [`slices`]: the node's ResourceSlices from its inventory, and their validation (pure).
//! - [`publish`]: keeping the API server's ResourceSlices of the node equal to them.

pub mod devices;
pub mod publish;
pub mod quantity;
pub mod slices;
