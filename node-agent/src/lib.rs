//! The greenslice node agent: discovers the node's GPUs through a [`backend::GpuBackend`], keeps one
//! long-lived stream to the controller, applies the controller's commands and reports actual state, and
//! serves the kubelet as its device plugin ([`kubelet`]).

// `unsafe` lives only in backend::nvml::mig_raw and backend::signal (kill(2)), which allow it
// and document every block.
#![deny(unsafe_code)]

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod dra;
pub mod enforce;
pub mod k8s;
pub mod kubelet;
pub mod metrics;
pub mod mps;
pub mod session;
pub mod usage;
pub mod workstop;

pub use config::AgentConfig;
