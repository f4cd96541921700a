//! A simulated GPU machine as hardware, for greenslice's tests and demo.
//!
//! Layout:
//! - [`devices`]: the products (A100, H100, H200, a GPU without MIG) and machines, with MIG profile
//!   tables written from NVIDIA's MIG user guide on their own.
//! - [`machine`]: the state (MIG mode, GPU and compute instances, processes, compute mode, power
//!   limit, the energy counter, XID events, the driver) and every change the hardware allows, as
//!   pure functions of the state and the time.
//! - [`store`]: the state file that outlives the processes using it (the agent, through the
//!   simulated NVML library `nvml-sim`, and the workload, through the `greenslice-gpu-sim` CLI).

pub mod devices;
pub mod machine;
pub mod store;

pub use devices::{DeviceKind, DeviceSpec, GiProfile, MachineKind};
pub use machine::{Clock, Gpu, GpuInstance, Machine, Process, SimError};
pub use store::{MachineSpec, STATE_ENV, Store, StoreError};
