//! The library's process-wide state: the init reference count, the machine's store, event sets.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use gpu_sim::machine::GpmReading;
use gpu_sim::{Machine, SimError, Store, StoreError};
use nvml_wrapper_sys::bindings::*;

/// Set to `1` to refuse every change with `NVML_ERROR_NO_PERMISSION` (a non-root caller).
pub const ENV_READ_ONLY: &str = "GREENSLICE_NVML_SIM_READ_ONLY";

/// An event set: the GPUs registered and the last XID sequence number read per GPU.
#[derive(Debug, Default)]
pub struct EventSet {
    pub gpus: BTreeMap<u32, (u64, u64)>, // gpu -> (event types, last seq read)
}

#[derive(Debug, Default)]
pub struct Lib {
    pub init_count: u32,
    pub store: Option<Store>,
    pub read_only: bool,
    pub event_sets: BTreeMap<u32, EventSet>,
    pub next_set: u32,
    /// GPM samples allocated (`nvmlGpmSampleAlloc`), by number; filled by a sample call.
    pub gpm_samples: BTreeMap<u32, Option<GpmReading>>,
    pub next_gpm_sample: u32,
}

static LIB: Mutex<Option<Lib>> = Mutex::new(None);

/// The lock on the library's state; a poisoned lock (a caught panic) is taken over as is.
pub fn lock() -> MutexGuard<'static, Option<Lib>> {
    LIB.lock().unwrap_or_else(|p| p.into_inner())
}

pub type Ret = nvmlReturn_t;

pub fn store_err(e: &StoreError) -> Ret {
    match e {
        StoreError::Sim(s) => sim_err(s),
        StoreError::NoPath | StoreError::BadEnv { .. } => {
            nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED
        }
        _ => nvmlReturn_enum_NVML_ERROR_UNKNOWN,
    }
}

pub fn sim_err(e: &SimError) -> Ret {
    use gpu_sim::profiles::PlacementError as P;
    match e {
        SimError::NoDevice(_) | SimError::Invalid(_) | SimError::PidTaken(_) => {
            nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        }
        SimError::NoMig(_)
        | SimError::NotMigMode(_)
        | SimError::NoProfile { .. }
        | SimError::NoGpm(_) => nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
        SimError::Placement {
            err: P::BadStart { .. } | P::BadSize { .. },
            ..
        } => nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
        SimError::Placement { .. } | SimError::NoComputeRoom { .. } => {
            nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES
        }
        SimError::NoGpuInstance { .. }
        | SimError::NoComputeInstance { .. }
        | SimError::NoProcess(_) => nvmlReturn_enum_NVML_ERROR_NOT_FOUND,
        SimError::InUse { .. } | SimError::InstancesExist { .. } => {
            nvmlReturn_enum_NVML_ERROR_IN_USE
        }
    }
}

impl Lib {
    pub fn machine(&mut self) -> Result<&Machine, Ret> {
        let store = self
            .store
            .as_mut()
            .ok_or(nvmlReturn_enum_NVML_ERROR_UNINITIALIZED)?;
        store.read().map_err(|e| {
            eprintln!("libgreenslice_nvml_sim: {e}");
            store_err(&e)
        })
    }

    pub fn change<R>(
        &mut self,
        f: impl FnOnce(&mut Machine) -> Result<R, SimError>,
    ) -> Result<R, Ret> {
        if self.read_only {
            return Err(nvmlReturn_enum_NVML_ERROR_NO_PERMISSION);
        }
        let store = self
            .store
            .as_mut()
            .ok_or(nvmlReturn_enum_NVML_ERROR_UNINITIALIZED)?;
        store.update(f).map_err(|e| store_err(&e))
    }
}
