//! The node checkpoint: what this agent owns and has applied, kept in a node-local file so an agent
//! restart (a DaemonSet rollout, an OOM kill) loses nothing.
//!
//! - [`format`]: the file's bytes, pure: a header line with a magic word, the format version, the
//!   body's SHA-256 and length, then the body (JSON of [`NodeState`]). [`format::decode`] refuses a
//!   truncated file, a bad checksum and an unknown version, each with its own [`CheckpointError`].
//! - [`restore`]: pure decisions: which recorded ownership the hardware still holds
//!   ([`restore::against_hardware`]), and, when there is no trustworthy file, what the hardware
//!   shows ([`restore::from_hardware`]) and what the controller's ledger adds
//!   ([`restore::from_ledger`]).
//! - [`store`]: the I/O edge: read the file, write it atomically (temporary file, fsync, rename,
//!   fsync of the folder).
//! - [`backend`]: [`backend::Checkpointed`], a [`crate::backend::GpuBackend`] wrapper that records
//!   every applied change in the file before the command is answered.

pub mod backend;
pub mod format;
pub mod restore;
pub mod store;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The checkpoint format this agent writes and reads.
pub const VERSION: u32 = 1;

/// File name of the checkpoint inside the state folder.
pub const FILE_NAME: &str = "agent-checkpoint";

/// Why a checkpoint was not used. Every variant but [`CheckpointError::Io`] on write means "rebuild
/// from the hardware".
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("no checkpoint at {0}")]
    Missing(String),
    #[error("not a greenslice checkpoint (bad header)")]
    BadHeader,
    #[error("unknown checkpoint version {found} (this agent reads version {VERSION})")]
    UnknownVersion { found: String },
    #[error("truncated: the header promises {expected} body bytes, the file has {found}")]
    Truncated { expected: usize, found: usize },
    #[error("bad checksum: the body's SHA-256 is {found}, the header says {expected}")]
    BadChecksum { expected: String, found: String },
    #[error("unreadable body: {0}")]
    BadBody(String),
    #[error("written for node {found:?}, this agent is node {expected:?}")]
    OtherNode { expected: String, found: String },
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
}

/// A MIG instance owned by a slice: created for it, or (with `mig.manage = false`) lent to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedMig {
    pub gpu: String,
    pub gpu_instance_id: u32,
    pub start: u8,
    pub profile: String,
    /// MIG device UUID; a driver reload makes new UUIDs, so a match on id and start alone is not the
    /// same instance.
    pub mig_uuid: String,
    pub slice_id: String,
}

/// A time-sliced share and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedShare {
    pub gpu: String,
    pub slice_id: String,
    /// Fraction of the GPU's compute, (0, 1].
    pub compute_fraction: f64,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
}

/// A GPU dedicated to one slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedWhole {
    pub gpu: String,
    pub slice_id: String,
}

/// What the backend holds for slices: the part of [`NodeState`] a backend takes back with
/// [`crate::backend::GpuBackend::adopt`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Owned {
    pub mig: Vec<OwnedMig>,
    pub shares: Vec<OwnedShare>,
    pub whole: Vec<OwnedWhole>,
}

impl Owned {
    /// The ownership an inventory reports: MIG instances naming a slice, shares, whole holders.
    pub fn from_inventory(gpus: &[greenslice_core::inventory::Gpu]) -> Self {
        let mut o = Owned::default();
        for g in gpus {
            for i in &g.mig_instances {
                if let Some(s) = i.slice_id.as_deref().filter(|s| !s.is_empty()) {
                    o.mig.push(OwnedMig {
                        gpu: g.uuid.clone(),
                        gpu_instance_id: i.gpu_instance_id,
                        start: i.start,
                        profile: i.profile.clone(),
                        mig_uuid: i.mig_uuid.clone(),
                        slice_id: s.to_string(),
                    });
                }
            }
            for s in &g.shares {
                o.shares.push(OwnedShare {
                    gpu: g.uuid.clone(),
                    slice_id: s.slice_id.clone(),
                    compute_fraction: s.compute_fraction,
                    memory_bytes: s.memory_bytes,
                });
            }
            if let Some(s) = &g.whole_slice_id {
                o.whole.push(OwnedWhole {
                    gpu: g.uuid.clone(),
                    slice_id: s.clone(),
                });
            }
        }
        o
    }

    /// How many things are owned, for log lines.
    pub fn count(&self) -> usize {
        self.mig.len() + self.shares.len() + self.whole.len()
    }
}

/// A MIG instance about to be created for a slice, recorded before the driver is asked: a crash
/// between the driver's create and the next write leaves an instance only this names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigIntent {
    pub gpu: String,
    pub profile: String,
    pub start: u8,
    pub slice_id: String,
}

/// Devices the kubelet granted to a pod container through the device plugin's Allocate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletGrant {
    /// Extended resource name, e.g. `greenslice.io/mig-1g.10gb`.
    pub resource: String,
    /// Device ids as the plugin advertised them.
    pub device_ids: Vec<String>,
    /// The slice id handed to the container in GREENSLICE_SLICE_ID.
    pub slice_id: String,
    /// Milliseconds since the Unix epoch when Allocate answered.
    pub at_ms: i64,
    /// When pod-resources first listed a pod holding the devices (`None`: not yet). A grant that was
    /// seen and is no longer listed has ended with its pod.
    #[serde(default)]
    pub seen_ms: Option<i64>,
}

/// A ResourceClaim this node prepared as the kubelet's DRA driver ([`crate::dra`]): what the
/// kubelet was answered, so a retried prepare answers the same and unprepare finds what to undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparedClaim {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub devices: Vec<PreparedDevice>,
    /// The CDI spec file written for the claim.
    pub cdi_spec: String,
    /// Milliseconds since the Unix epoch when the prepare answered.
    pub at_ms: i64,
}

/// One device of a [`PreparedClaim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparedDevice {
    pub request: String,
    pub pool: String,
    pub device: String,
    #[serde(default)]
    pub share_id: Option<String>,
    pub cdi_device_ids: Vec<String>,
    /// The controller's slice for the device.
    pub slice_id: String,
}

/// Everything the checkpoint file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeState {
    /// The node this agent is; a file of another node is refused.
    pub node: String,
    pub owned: Owned,
    pub intents: Vec<MigIntent>,
    pub kubelet: Vec<KubeletGrant>,
    /// ResourceClaims prepared through DRA.
    pub dra: Vec<PreparedClaim>,
    /// The file was rebuilt from the hardware and the controller's ledger has not been asked yet
    /// (see `Register.ownership_rebuilt`); stays set across restarts until it has.
    pub ledger_adoption_pending: bool,
}
