//! The controller's record of a slice: what was asked, where it went, and its lifecycle state.

use std::collections::BTreeMap;

use greenslice_core::slice::{SliceSpec, SliceState};
use serde::{Deserialize, Serialize};

/// Where a MIG slice lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigAssignment {
    pub profile: String,
    /// First memory slice.
    pub start: u8,
    /// Memory slices covered.
    pub size: u8,
    /// GPU instance id, once the agent created it.
    pub gpu_instance_id: Option<u32>,
    /// MIG device UUID, once created.
    pub mig_uuid: Option<String>,
    /// The instance existed before the slice and was lent to it by a node that may not create
    /// instances: its release gives the instance back instead of destroying it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lent: bool,
}

/// Host resources a slice's workload said it needs on its node; 0 where it did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostDemand {
    /// CPU in milli-cores.
    #[serde(default)]
    pub cpu_milli: u64,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

impl HostDemand {
    /// Whether the workload said nothing (both 0).
    pub fn is_unsaid(&self) -> bool {
        self.cpu_milli == 0 && self.memory_bytes == 0
    }
}

/// A slice as the controller (and its ledger) keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub id: String,
    pub tenant: String,
    pub spec: SliceSpec,
    pub state: SliceState,
    pub node: String,
    /// GPU UUIDs the slice uses.
    pub gpus: Vec<String>,
    pub mig: Option<MigAssignment>,
    /// Environment a process needs to use the slice.
    pub env: BTreeMap<String, String>,
    /// Why it failed or was released by the system.
    pub reason: String,
    pub idempotency_key: Option<String>,
    /// ms since the Unix epoch.
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Kept from idle reclaim until then (ms since the Unix epoch), by the tenant's `keep`.
    /// Committed like any change, so a controller restart keeps the promise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_until_ms: Option<i64>,
    /// The Kubernetes ResourceClaim the slice stands for, `namespace/name` (DRA slices only):
    /// energy is reported per claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Host CPU and memory the request said the workload needs; placement counts them against
    /// the node's reported capacity while the slice is live. Records from before the field read
    /// as unsaid.
    #[serde(default, skip_serializing_if = "HostDemand::is_unsaid")]
    pub host: HostDemand,
}

impl SliceRecord {
    /// A slice just placed: PENDING on `node`'s `gpus`, created and updated at `now_ms`, with
    /// nothing applied yet (no MIG assignment, environment, reason, idempotency key or keep).
    pub fn placed(
        id: String,
        tenant: &str,
        spec: SliceSpec,
        node: String,
        gpus: Vec<String>,
        now_ms: i64,
    ) -> SliceRecord {
        SliceRecord {
            id,
            tenant: tenant.to_string(),
            spec,
            state: SliceState::Pending,
            node,
            gpus,
            mig: None,
            env: BTreeMap::new(),
            reason: String::new(),
            idempotency_key: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            kept_until_ms: None,
            claim: None,
            host: HostDemand::default(),
        }
    }

    /// Whether the slice holds capacity (not released or failed).
    pub fn is_live(&self) -> bool {
        !self.state.is_terminal()
    }

    /// When the slice held its GPUs, ms since the Unix epoch: from creation until it was released
    /// (`i64::MAX` while it is live). None for a failed slice, which never held any. Energy
    /// attribution charges a slice for exactly this span, and retention keeps a finished slice
    /// while an interval not yet attributed overlaps it.
    pub fn held_ms(&self) -> Option<(i64, i64)> {
        match self.state {
            SliceState::Failed => None,
            SliceState::Released => Some((self.created_ms, self.updated_ms)),
            SliceState::Pending | SliceState::Active | SliceState::Releasing => {
                Some((self.created_ms, i64::MAX))
            }
        }
    }
}
