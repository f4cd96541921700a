//! The greenslice domain model, defined once and shared by the controller, the node agent and the CLI.
//!
//! - [`gpu`]: GPU models and their nominal figures (memory, power).
//! - [`capacity`]: the one exact measure of how much of a GPU a slice holds.
//! - [`mig`]: MIG profile tables and the layout rules NVML enforces.
//! - [`slice`]: what a tenant asks for, its validation, and a slice's lifecycle.
//! - [`inventory`]: the actual state of a node's GPUs.
//! - [`kubelet`]: the Kubernetes resource names and the slice class of kubelet allocations.
//! - [`limits`]: how long, how many and how large any received field may be, and the checks.
//! - [`sample`]: utilization, power and energy samples a node agent takes.
//! - [`clock`]: injected time.
//! - [`time`]: units of time (the hour in ms).
//! - [`convert`]: conversions between these types and the wire messages.

pub mod capacity;
pub mod clock;
pub mod convert;
pub mod expfmt;
pub mod gpu;
pub mod inventory;
pub mod kubelet;
pub mod limits;
pub mod mig;
pub mod notice;
pub mod sample;
pub mod slice;
pub mod time;

/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;

/// Milli-GPU units in one whole GPU.
pub const MILLI_PER_GPU: u32 = 1000;
