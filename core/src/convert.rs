//! Conversions between the domain types and the `greenslice.v1` wire messages.

use greenslice_proto::v1 as pb;

use crate::gpu::GpuModel;
use crate::inventory::{Gpu, MigInstance, NodeCapabilities, Share};
use crate::slice::{self, SliceKind, SliceSpec, SliceState, ValidationError};

/// Validates a wire spec into a domain spec.
pub fn spec_from_pb(spec: Option<&pb::SliceSpec>) -> Result<SliceSpec, ValidationError> {
    let spec = spec.ok_or(ValidationError::MissingKind)?;
    let kind = spec.kind.as_ref().map(|k| match k {
        pb::slice_spec::Kind::Whole(w) => SliceKind::Whole { count: w.count },
        pb::slice_spec::Kind::Mig(m) => SliceKind::Mig {
            profile: m.profile.clone(),
        },
        pb::slice_spec::Kind::Share(s) => SliceKind::Share {
            compute_fraction: s.compute_fraction,
            memory_bytes: s.memory_bytes,
        },
    });
    slice::validate(kind, &spec.gpu_model, &spec.slice_class)
}

/// A domain spec as a wire spec.
pub fn spec_to_pb(spec: &SliceSpec) -> pb::SliceSpec {
    let kind = match &spec.kind {
        SliceKind::Whole { count } => pb::slice_spec::Kind::Whole(pb::WholeGpus { count: *count }),
        SliceKind::Mig { profile } => pb::slice_spec::Kind::Mig(pb::MigSlice {
            profile: profile.clone(),
        }),
        SliceKind::Share {
            compute_fraction,
            memory_bytes,
        } => pb::slice_spec::Kind::Share(pb::ShareSlice {
            compute_fraction: *compute_fraction,
            memory_bytes: *memory_bytes,
        }),
    };
    pb::SliceSpec {
        kind: Some(kind),
        gpu_model: spec
            .gpu_model
            .as_ref()
            .map(|m| m.name().to_string())
            .unwrap_or_default(),
        slice_class: spec.slice_class.clone().unwrap_or_default(),
    }
}

/// A domain state as the wire enum.
pub fn state_to_pb(s: SliceState) -> pb::SliceState {
    match s {
        SliceState::Pending => pb::SliceState::Pending,
        SliceState::Active => pb::SliceState::Active,
        SliceState::Releasing => pb::SliceState::Releasing,
        SliceState::Released => pb::SliceState::Released,
        SliceState::Failed => pb::SliceState::Failed,
    }
}

/// The wire enum as a domain state (`None` for UNSPECIFIED or unknown values).
pub fn state_from_pb(v: i32) -> Option<SliceState> {
    match pb::SliceState::try_from(v).ok()? {
        pb::SliceState::Unspecified => None,
        pb::SliceState::Pending => Some(SliceState::Pending),
        pb::SliceState::Active => Some(SliceState::Active),
        pb::SliceState::Releasing => Some(SliceState::Releasing),
        pb::SliceState::Released => Some(SliceState::Released),
        pb::SliceState::Failed => Some(SliceState::Failed),
    }
}

/// A MIG instance as the wire message.
pub fn mig_to_pb(m: &MigInstance) -> pb::MigInstance {
    pb::MigInstance {
        gpu_instance_id: m.gpu_instance_id,
        profile: m.profile.clone(),
        start: u32::from(m.start),
        size: u32::from(m.size),
        mig_uuid: m.mig_uuid.clone(),
        slice_id: m.slice_id.clone().unwrap_or_default(),
    }
}

/// A wire MIG instance as the domain type; `None` when start or size is out of range.
pub fn mig_from_pb(m: &pb::MigInstance) -> Option<MigInstance> {
    Some(MigInstance {
        gpu_instance_id: m.gpu_instance_id,
        profile: m.profile.clone(),
        start: u8::try_from(m.start)
            .ok()
            .filter(|s| *s < crate::mig::MEMORY_SLICES)?,
        size: u8::try_from(m.size)
            .ok()
            .filter(|s| *s <= crate::mig::MEMORY_SLICES)?,
        mig_uuid: m.mig_uuid.clone(),
        slice_id: (!m.slice_id.is_empty()).then(|| m.slice_id.clone()),
    })
}

/// A GPU as the wire message.
pub fn gpu_to_pb(g: &Gpu) -> pb::GpuInfo {
    pb::GpuInfo {
        uuid: g.uuid.clone(),
        index: g.index,
        model: g.model.name().to_string(),
        memory_bytes: g.memory_bytes,
        mig_capable: g.mig_capable,
        mig_enabled: g.mig_enabled,
        pci_bus_id: g.pci_bus_id.clone(),
        power_limit_mw: g.power_limit_mw,
        healthy: g.healthy,
        mig_instances: g.mig_instances.iter().map(mig_to_pb).collect(),
        shares: g
            .shares
            .iter()
            .map(|s| pb::ShareLimit {
                slice_id: s.slice_id.clone(),
                compute_fraction: s.compute_fraction,
                memory_bytes: s.memory_bytes,
            })
            .collect(),
        whole_slice_id: g.whole_slice_id.clone().unwrap_or_default(),
    }
}

/// A wire GPU as the domain type. Malformed MIG instances are dropped (the caller logs the count).
pub fn gpu_from_pb(g: &pb::GpuInfo) -> Gpu {
    Gpu {
        uuid: g.uuid.clone(),
        index: g.index,
        model: GpuModel::from_name(&g.model),
        memory_bytes: g.memory_bytes,
        mig_capable: g.mig_capable,
        mig_enabled: g.mig_enabled,
        pci_bus_id: g.pci_bus_id.clone(),
        power_limit_mw: g.power_limit_mw,
        healthy: g.healthy,
        mig_instances: g.mig_instances.iter().filter_map(mig_from_pb).collect(),
        shares: g
            .shares
            .iter()
            .map(|s| Share {
                slice_id: s.slice_id.clone(),
                compute_fraction: s.compute_fraction,
                memory_bytes: s.memory_bytes,
            })
            .collect(),
        whole_slice_id: (!g.whole_slice_id.is_empty()).then(|| g.whole_slice_id.clone()),
    }
}

/// Capabilities as the wire message.
pub fn capabilities_to_pb(c: &NodeCapabilities) -> pb::NodeCapabilities {
    pb::NodeCapabilities {
        mig_manage: c.mig_manage,
        mps: c.mps,
    }
}

/// Wire capabilities as the domain type (`None` when an older agent sent none).
pub fn capabilities_from_pb(c: Option<&pb::NodeCapabilities>) -> Option<NodeCapabilities> {
    c.map(|c| NodeCapabilities {
        mig_manage: c.mig_manage,
        mps: c.mps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GIB;

    #[test]
    fn spec_round_trips() {
        for kind in [
            SliceKind::Whole { count: 2 },
            SliceKind::Mig {
                profile: "3g.40gb".into(),
            },
            SliceKind::Share {
                compute_fraction: 0.25,
                memory_bytes: 10 * GIB,
            },
        ] {
            let s = slice::validate(Some(kind), "H100-SXM5-80GB", "batch").unwrap();
            assert_eq!(spec_from_pb(Some(&spec_to_pb(&s))).unwrap(), s);
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [
            SliceState::Pending,
            SliceState::Active,
            SliceState::Releasing,
            SliceState::Released,
            SliceState::Failed,
        ] {
            assert_eq!(state_from_pb(state_to_pb(s) as i32), Some(s));
        }
        assert_eq!(state_from_pb(0), None);
        assert_eq!(state_from_pb(99), None);
    }
}
