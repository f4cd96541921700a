//! A simulated GPU machine as hardware, for the NVML library `nvml-sim` and the workload CLI
//! `greenslice-gpu-sim`.
//!
//! Layout:
//! - [`profiles`]: MIG GPU-instance profiles and placement rules, from NVIDIA's MIG user guide.
//! - [`device`]: GPU models (names, PCI ids, memory, power, clocks) and machine kinds.
//! - [`machine`]: the machine's state and every operation on it (pure; time is passed in).
//! - [`power`]: the board's power process by process (the ground truth attribution is measured
//!   against).
//! - [`store`]: where the state lives: a locked state file shared across processes, or memory.

pub mod device;
pub mod machine;
pub mod power;
pub mod profiles;
pub mod store;

pub use device::{DeviceKind, MachineKind};
pub use machine::{ComputeMode, Machine, Process, SimError, TimeMode};
pub use power::Workload;
pub use store::{InitSpec, Store, StoreError};
