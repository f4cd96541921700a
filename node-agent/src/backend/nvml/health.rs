//! GPU health from NVML's critical events: a pure state machine fed with events and the time.
//!
//! The rule:
//! - A critical XID event, a double-bit ECC event, or a query answering "GPU lost" marks the GPU
//!   unhealthy.
//! - XIDs that report a fault of the application, not of the GPU, are ignored: 13, 31, 43, 45, 68
//!   and 109 (the same default list as NVIDIA's Kubernetes device plugin).
//! - XIDs that leave the GPU unusable until it is reset (48 double-bit ECC, 63/64 row remapping,
//!   74 NVLink, 79 fell off the bus, 94/95 ECC containment, 119/120 GSP), double-bit ECC events and
//!   a lost GPU are sticky: the GPU stays unhealthy until the agent restarts (after the GPU reset).
//! - Any other critical XID clears: the GPU is healthy again once [`HealthPolicy::clear_after_ms`]
//!   (default 5 min) pass without another one.

use std::collections::BTreeMap;

/// What happened to a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// A critical XID error; `None` when the driver did not say which.
    Xid(Option<u64>),
    /// An uncorrectable (double-bit) ECC error.
    DoubleBitEcc,
    /// A query answered that the GPU fell off the bus.
    Lost,
}

/// The health rule's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Quiet time after which a non-sticky fault clears, ms.
    pub clear_after_ms: i64,
    /// XIDs caused by applications, ignored.
    pub ignored_xids: Vec<u64>,
    /// XIDs that need a GPU reset, never cleared by time.
    pub sticky_xids: Vec<u64>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            clear_after_ms: 5 * 60 * 1_000,
            ignored_xids: vec![13, 31, 43, 45, 68, 109],
            sticky_xids: vec![48, 63, 64, 74, 79, 94, 95, 119, 120],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    last_ms: i64,
    sticky: bool,
    reason: String,
}

/// Health of every GPU of a node, by UUID.
#[derive(Debug, Clone, Default)]
pub struct HealthTracker {
    policy: HealthPolicy,
    faults: BTreeMap<String, Fault>,
}

impl HealthTracker {
    pub fn new(policy: HealthPolicy) -> Self {
        HealthTracker {
            policy,
            faults: BTreeMap::new(),
        }
    }

    /// Records an event on `gpu` at `now_ms`; returns whether it counts against the GPU.
    pub fn record(&mut self, gpu: &str, event: HealthEvent, now_ms: i64) -> bool {
        let (sticky, reason) = match event {
            HealthEvent::Xid(Some(x)) if self.policy.ignored_xids.contains(&x) => return false,
            HealthEvent::Xid(Some(x)) => (self.policy.sticky_xids.contains(&x), format!("XID {x}")),
            HealthEvent::Xid(None) => (false, "critical XID (number unknown)".to_string()),
            HealthEvent::DoubleBitEcc => (true, "double-bit ECC error".to_string()),
            HealthEvent::Lost => (true, "GPU lost (fell off the bus)".to_string()),
        };
        let f = self.faults.entry(gpu.to_string()).or_insert(Fault {
            last_ms: now_ms,
            sticky,
            reason: reason.clone(),
        });
        f.last_ms = f.last_ms.max(now_ms);
        if sticky || !f.sticky {
            f.sticky |= sticky;
            f.reason = reason;
        }
        true
    }

    /// Whether `gpu` is healthy at `now_ms`; clears non-sticky faults that have been quiet long enough.
    pub fn is_healthy(&mut self, gpu: &str, now_ms: i64) -> bool {
        let clear_after = self.policy.clear_after_ms;
        match self.faults.get(gpu) {
            None => true,
            Some(f) if !f.sticky && now_ms - f.last_ms >= clear_after => {
                self.faults.remove(gpu);
                true
            }
            Some(_) => false,
        }
    }

    /// Why `gpu` is unhealthy, if it is.
    pub fn reason(&self, gpu: &str) -> Option<&str> {
        self.faults.get(gpu).map(|f| f.reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_critical_xid_marks_unhealthy_until_quiet() {
        let mut h = HealthTracker::default();
        assert!(h.is_healthy("g", 0));
        assert!(h.record("g", HealthEvent::Xid(Some(62)), 1_000));
        assert!(!h.is_healthy("g", 1_000));
        assert_eq!(h.reason("g"), Some("XID 62"));
        // A second event restarts the quiet period.
        h.record("g", HealthEvent::Xid(Some(62)), 200_000);
        assert!(!h.is_healthy("g", 301_000));
        assert!(h.is_healthy("g", 500_000));
        assert_eq!(h.reason("g"), None);
    }

    #[test]
    fn application_xids_are_ignored() {
        let mut h = HealthTracker::default();
        assert!(!h.record("g", HealthEvent::Xid(Some(13)), 0));
        assert!(!h.record("g", HealthEvent::Xid(Some(43)), 0));
        assert!(h.is_healthy("g", 0));
    }

    #[test]
    fn reset_needing_faults_never_clear_by_time() {
        let mut h = HealthTracker::default();
        h.record("a", HealthEvent::Xid(Some(79)), 0);
        h.record("b", HealthEvent::DoubleBitEcc, 0);
        h.record("c", HealthEvent::Lost, 0);
        for g in ["a", "b", "c"] {
            assert!(!h.is_healthy(g, i64::MAX / 2), "{g}");
        }
        // A later clearable XID does not downgrade a sticky fault.
        h.record("a", HealthEvent::Xid(Some(62)), 10);
        assert!(!h.is_healthy("a", i64::MAX / 2));
        assert_eq!(h.reason("a"), Some("XID 79"));
        // Other GPUs are unaffected.
        assert!(h.is_healthy("d", 0));
    }
}
