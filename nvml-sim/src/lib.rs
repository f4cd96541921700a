//! `libgreenslice_nvml_sim.so`: NVML's C interface (the struct layouts and return codes of
//! `nvml.h`, as nvml-wrapper-sys's bindgen output carries them) over the simulated GPU machine of
//! `gpu-sim`. The machine lives in the state file named by `GREENSLICE_NVML_SIM_STATE`, so it
//! outlives the process that loaded this library; see `docs/SIMULATOR.md`.
//!
//! Every export runs its body inside [`guard`], which catches panics (none may cross the C ABI)
//! and turns them into `NVML_ERROR_UNKNOWN`. Handles are opaque non-null integers that encode
//! what they name ([`handle`]); nothing a caller passes is ever dereferenced as a handle.
//! `GREENSLICE_NVML_SIM_READ_ONLY=1` makes every change answer `NVML_ERROR_NO_PERMISSION`, as a
//! driver does for a caller that is not root.

#![allow(non_snake_case, non_upper_case_globals, clippy::missing_safety_doc)]

mod exports;
mod handle;
mod state;

pub use state::ENV_READ_ONLY;
