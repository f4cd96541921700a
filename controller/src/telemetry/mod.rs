//! Utilization samples from the agents, kept per GPU in bounded memory.
//!
//! This first version keeps the most recent raw samples per GPU; rollups, range queries and the idle
//! policy build on it.

use std::collections::VecDeque;

use dashmap::DashMap;
use greenslice_proto::v1 as pb;

/// Raw samples kept per GPU (at 1 Hz: the last 10 minutes).
pub const RAW_SAMPLES_PER_GPU: usize = 600;

/// Recent samples of one GPU.
#[derive(Debug, Default, Clone)]
pub struct GpuSeries {
    pub node: String,
    /// Oldest first.
    pub recent: VecDeque<pb::GpuSample>,
}

/// Samples of every GPU.
#[derive(Debug, Default)]
pub struct Telemetry {
    gpus: DashMap<String, GpuSeries>,
}

impl Telemetry {
    /// Stores a batch from `node`. Samples older than the newest kept for their GPU are dropped
    /// (an agent that resent a batch after reconnecting). Returns the samples accepted, in order.
    pub fn ingest(&self, node: &str, batch: &pb::SampleBatch) -> Vec<pb::GpuSample> {
        let mut accepted = Vec::new();
        for s in &batch.samples {
            let mut e = self.gpus.entry(s.gpu_uuid.clone()).or_default();
            e.node = node.to_string();
            if e.recent
                .back()
                .is_some_and(|last| last.at_unix_ms >= s.at_unix_ms)
            {
                continue;
            }
            if e.recent.len() == RAW_SAMPLES_PER_GPU {
                e.recent.pop_front();
            }
            e.recent.push_back(s.clone());
            accepted.push(s.clone());
        }
        accepted
    }

    /// The latest sample of a GPU.
    pub fn latest(&self, gpu: &str) -> Option<pb::GpuSample> {
        self.gpus.get(gpu).and_then(|s| s.recent.back().cloned())
    }

    /// Recent samples of a GPU (oldest first).
    pub fn recent(&self, gpu: &str) -> Vec<pb::GpuSample> {
        self.gpus
            .get(gpu)
            .map(|s| s.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// GPUs with samples.
    pub fn gpus(&self) -> Vec<String> {
        self.gpus.iter().map(|e| e.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(gpu: &str, at: i64) -> pb::GpuSample {
        pb::GpuSample {
            at_unix_ms: at,
            gpu_uuid: gpu.into(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_a_bounded_ordered_window_and_drops_resent_samples() {
        let t = Telemetry::default();
        let batch = pb::SampleBatch {
            samples: (0..(RAW_SAMPLES_PER_GPU as i64 + 10))
                .map(|i| s("g", i * 1000))
                .collect(),
        };
        assert_eq!(t.ingest("n", &batch).len(), RAW_SAMPLES_PER_GPU + 10);
        assert_eq!(t.recent("g").len(), RAW_SAMPLES_PER_GPU);
        assert_eq!(t.recent("g")[0].at_unix_ms, 10_000);
        // Resent old samples are ignored.
        assert!(
            t.ingest(
                "n",
                &pb::SampleBatch {
                    samples: vec![s("g", 5_000)]
                }
            )
            .is_empty()
        );
        assert_eq!(
            t.latest("g").unwrap().at_unix_ms,
            (RAW_SAMPLES_PER_GPU as i64 + 9) * 1000
        );
    }
}
