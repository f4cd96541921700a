//! What a node agent measures on its GPUs, one sample at a time.
//!
//! Every measured figure is an `Option` (never a made-up value): `None` with the field named in
//! [`GpuSample::unsupported`] means the device does not support it; `None` without that means the
//! reading failed this time (the agent logs why) and may come back in the next sample. Energy is the board's counter
//! since the driver loaded; it restarts from zero when the driver reloads, so consumers take deltas
//! with [`energy_delta_mj`], which refuses to diff across a reset.

use serde::{Deserialize, Serialize};

/// One sampling pass over every GPU of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    /// When the pass was taken, ms since the Unix epoch (the agent's clock).
    pub at_ms: i64,
    pub gpus: Vec<GpuSample>,
}

/// A field a device may not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleField {
    /// Board utilization rates (not on MIG-enabled GPUs).
    Utilization,
    /// Per-process utilization (not on MIG-enabled GPUs).
    ProcessUtilization,
    /// Running compute processes and their memory.
    Processes,
    /// Board power.
    Power,
    /// Total energy counter (Volta and newer).
    Energy,
    /// Used device memory.
    MemoryUsed,
    /// Per-MIG-instance activity (GPM, Hopper and newer).
    MigActivity,
}

/// One GPU's measurements at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub gpu_uuid: String,
    /// Percent of the last sample period a kernel ran (0..=100).
    pub gpu_util_pct: Option<u32>,
    /// Percent of the last sample period device memory was read or written (0..=100).
    pub mem_util_pct: Option<u32>,
    /// Board power in mW: a 1 s average on Ampere (except GA100), Hopper and newer; instantaneous on
    /// older chips.
    pub power_mw: Option<u32>,
    /// Board energy in mJ since the driver loaded (monotonic until a driver reload).
    pub energy_mj: Option<u64>,
    /// Used device memory in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Running compute processes.
    pub processes: Option<Vec<GpuProcess>>,
    /// Per-process utilization samples newer than the previous pass.
    pub process_util: Option<Vec<ProcessUtil>>,
    /// Activity per MIG GPU instance (empty when the GPU is not in MIG mode).
    pub mig: Vec<MigActivity>,
    /// Current SM clock, MHz (`nvmlDeviceGetClockInfo(NVML_CLOCK_SM)`); it drops below
    /// [`GpuSample::max_sm_clock_mhz`] when the power limit holds the board back.
    #[serde(default)]
    pub sm_clock_mhz: Option<u32>,
    /// Maximum SM clock, MHz (`nvmlDeviceGetMaxClockInfo(NVML_CLOCK_SM)`).
    #[serde(default)]
    pub max_sm_clock_mhz: Option<u32>,
    /// Fields this device did not give, sorted.
    pub unsupported: Vec<SampleField>,
}

impl GpuSample {
    /// An empty sample for `gpu_uuid`: every field `None`, nothing marked unsupported yet.
    pub fn empty(gpu_uuid: &str) -> Self {
        GpuSample {
            gpu_uuid: gpu_uuid.to_string(),
            gpu_util_pct: None,
            mem_util_pct: None,
            power_mw: None,
            energy_mj: None,
            memory_used_bytes: None,
            processes: None,
            process_util: None,
            mig: Vec::new(),
            sm_clock_mhz: None,
            max_sm_clock_mhz: None,
            unsupported: Vec::new(),
        }
    }

    /// Records that the device does not support `field` (idempotent, keeps the list sorted).
    pub fn mark_unsupported(&mut self, field: SampleField) {
        if let Err(i) = self.unsupported.binary_search(&field) {
            self.unsupported.insert(i, field);
        }
    }

    /// Whether `field` was reported unsupported.
    pub fn is_unsupported(&self, field: SampleField) -> bool {
        self.unsupported.binary_search(&field).is_ok()
    }
}

/// A compute process running on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// Device memory the process holds, in bytes (`None` where the driver cannot tell).
    pub used_memory_bytes: Option<u64>,
    /// MIG GPU instance the process runs in (MIG mode only).
    pub gpu_instance_id: Option<u32>,
    /// MIG compute instance the process runs in (MIG mode only).
    pub compute_instance_id: Option<u32>,
}

/// One per-process utilization sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUtil {
    pub pid: u32,
    /// SM (compute) utilization in percent of the whole GPU.
    pub sm_pct: u32,
    /// Memory bandwidth utilization in percent.
    pub mem_pct: u32,
    /// When the driver took this sample, µs (CPU timestamp); pass the largest back to get newer ones.
    pub last_seen_us: u64,
}

/// Activity of one MIG GPU instance over the last sampling interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigActivity {
    pub gpu_instance_id: u32,
    /// Percent of time each SM had at least one warp (GPM SmUtil), `None` where GPM is missing.
    pub sm_util_pct: Option<f64>,
    /// Percent of the instance's DRAM bandwidth used (GPM DramBwUtil).
    pub dram_bw_util_pct: Option<f64>,
    /// Percent of time any tensor pipe of the instance was active (GPM AnyTensorUtil).
    #[serde(default)]
    pub tensor_util_pct: Option<f64>,
}

/// One GPU's sample as the controller receives it: the board's measurements and the activity the
/// agent attributed to each slice on it. The controller's telemetry, energy accounting and
/// re-layout work on this; only the API edge sees the wire message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributedSample {
    /// When the sample was taken, ms since the Unix epoch (the agent's clock).
    pub at_unix_ms: i64,
    pub gpu_uuid: String,
    /// Board utilization, percent (`None`: not measured, e.g. MIG mode).
    pub gpu_util_pct: Option<u32>,
    /// Board memory-bandwidth utilization, percent.
    pub mem_util_pct: Option<u32>,
    /// Board power, mW.
    pub power_mw: Option<u32>,
    /// Board energy counter, mJ since the driver loaded.
    pub energy_mj: Option<u64>,
    /// Used device memory, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Activity per slice on this GPU.
    pub slices: Vec<SliceActivity>,
    /// SM activity of processes that belong to no slice, percent of the GPU.
    pub unattributed_sm_pct: f64,
    /// DRAM bandwidth activity of processes or instances no slice owns, percent of the GPU's
    /// bandwidth (`None`: the device gives no such figure).
    #[serde(default)]
    pub unattributed_dram_pct: Option<f64>,
    /// Tensor activity no slice owns, percent of the GPU (`None`: not measured).
    #[serde(default)]
    pub unattributed_tensor_pct: Option<f64>,
    /// Current and maximum SM clock, MHz (see [`GpuSample::sm_clock_mhz`]).
    #[serde(default)]
    pub sm_clock_mhz: Option<u32>,
    #[serde(default)]
    pub max_sm_clock_mhz: Option<u32>,
    /// Fields the device does not support, by name.
    pub unsupported: Vec<String>,
    /// The agent saw no compute process on the GPU (so its power is idle power).
    pub no_compute_processes: bool,
}

/// The activity the agent attributed to one slice in one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceActivity {
    pub slice_id: String,
    /// SM activity, percent of the whole GPU.
    pub sm_pct: f64,
    /// Device memory the slice's processes hold, bytes.
    pub memory_bytes: u64,
    /// Compute processes of the slice.
    pub processes: u32,
    /// Whether `sm_pct` was measured (false: the device gives no per-slice activity).
    pub activity_known: bool,
    /// DRAM bandwidth activity, percent of the whole GPU's bandwidth: the sum of its processes'
    /// NVML memory utilization on a shared GPU, GPM's DRAM bandwidth x the instance's memory
    /// slices / 8 on a MIG GPU. `None`: the device gives no per-slice figure.
    #[serde(default)]
    pub dram_pct: Option<f64>,
    /// Tensor-core activity, percent of the whole GPU (GPM's any-tensor activity x the
    /// instance's compute slices / 7, MIG on Hopper and newer). `None`: not measured.
    #[serde(default)]
    pub tensor_pct: Option<f64>,
}

/// Energy in mJ between two readings of a board's counter; `None` when the counter went backwards
/// (a driver reload reset it), so the interval must be skipped rather than attributed.
pub fn energy_delta_mj(previous_mj: u64, current_mj: u64) -> Option<u64> {
    current_mj.checked_sub(previous_mj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_fields_are_kept_sorted_and_unique() {
        let mut s = GpuSample::empty("GPU-1");
        s.mark_unsupported(SampleField::MigActivity);
        s.mark_unsupported(SampleField::Utilization);
        s.mark_unsupported(SampleField::MigActivity);
        assert_eq!(
            s.unsupported,
            vec![SampleField::Utilization, SampleField::MigActivity]
        );
        assert!(s.is_unsupported(SampleField::Utilization));
        assert!(!s.is_unsupported(SampleField::Power));
    }

    #[test]
    fn energy_delta_refuses_a_counter_reset() {
        assert_eq!(energy_delta_mj(1_000, 1_500), Some(500));
        assert_eq!(energy_delta_mj(1_000, 20), None);
    }
}
