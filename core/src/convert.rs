//! Conversions between the domain types and the `greenslice.v1` wire messages.

use greenslice_proto::v1 as pb;

use crate::gpu::GpuModel;
use crate::inventory::{Gpu, MigInstance, NodeCapabilities, NodeRegistration, Share};
use crate::sample::{AttributedSample, SliceActivity};
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

/// A wire sample as the domain type (the API checked its limits already).
pub fn sample_from_pb(s: pb::GpuSample) -> AttributedSample {
    AttributedSample {
        at_unix_ms: s.at_unix_ms,
        gpu_uuid: s.gpu_uuid,
        gpu_util_pct: s.gpu_util_pct,
        mem_util_pct: s.mem_util_pct,
        power_mw: s.power_mw,
        energy_mj: s.energy_mj,
        memory_used_bytes: s.memory_used_bytes,
        slices: s
            .slices
            .into_iter()
            .map(|a| SliceActivity {
                slice_id: a.slice_id,
                sm_pct: a.sm_pct,
                memory_bytes: a.memory_bytes,
                processes: a.processes,
                activity_known: a.activity_known,
                dram_pct: a.dram_pct,
                tensor_pct: a.tensor_pct,
            })
            .collect(),
        unattributed_sm_pct: s.unattributed_sm_pct,
        unattributed_dram_pct: s.unattributed_dram_pct,
        unattributed_tensor_pct: s.unattributed_tensor_pct,
        sm_clock_mhz: s.sm_clock_mhz,
        max_sm_clock_mhz: s.max_sm_clock_mhz,
        unsupported: s.unsupported,
        no_compute_processes: s.no_compute_processes,
    }
}

/// A wire registration as the domain type (the API checked it already).
pub fn registration_from_pb(r: &pb::Register) -> NodeRegistration {
    NodeRegistration {
        node: r.node.clone(),
        cpu_milli: r.cpu_milli,
        memory_bytes: r.memory_bytes,
        backend: r.backend.clone(),
        gpus: r.gpus.iter().map(gpu_from_pb).collect(),
        capabilities: capabilities_from_pb(r.capabilities.as_ref()),
        ownership_rebuilt: r.ownership_rebuilt,
    }
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
    #[test]
    fn a_wire_sample_keeps_every_measurement_and_each_slice_s_activity() {
        let s = sample_from_pb(pb::GpuSample {
            at_unix_ms: 7,
            gpu_uuid: "GPU-1".into(),
            gpu_util_pct: Some(40),
            mem_util_pct: Some(30),
            power_mw: Some(250_000),
            energy_mj: Some(9_000),
            memory_used_bytes: Some(1 << 30),
            slices: vec![pb::SliceActivity {
                slice_id: "s1".into(),
                sm_pct: 12.5,
                memory_bytes: 1 << 20,
                processes: 2,
                activity_known: true,
                dram_pct: Some(30.5),
                tensor_pct: None,
            }],
            unattributed_sm_pct: 3.0,
            unattributed_dram_pct: Some(1.5),
            unattributed_tensor_pct: None,
            sm_clock_mhz: Some(1410),
            max_sm_clock_mhz: Some(1980),
            unsupported: vec!["utilization".into()],
            no_compute_processes: false,
        });
        assert_eq!(
            (
                s.at_unix_ms,
                s.gpu_uuid.as_str(),
                s.gpu_util_pct,
                s.mem_util_pct
            ),
            (7, "GPU-1", Some(40), Some(30))
        );
        assert_eq!(
            (s.power_mw, s.energy_mj, s.memory_used_bytes),
            (Some(250_000), Some(9_000), Some(1 << 30))
        );
        assert_eq!((s.unattributed_sm_pct, s.unsupported.len()), (3.0, 1));
        assert_eq!(
            (s.unattributed_dram_pct, s.unattributed_tensor_pct),
            (Some(1.5), None)
        );
        assert_eq!(
            (s.sm_clock_mhz, s.max_sm_clock_mhz),
            (Some(1410), Some(1980))
        );
        let a = &s.slices[0];
        assert_eq!(
            (
                a.slice_id.as_str(),
                a.sm_pct,
                a.memory_bytes,
                a.processes,
                a.activity_known
            ),
            ("s1", 12.5, 1 << 20, 2, true)
        );
        assert_eq!((a.dram_pct, a.tensor_pct), (Some(30.5), None));
    }

    #[test]
    fn a_sample_from_an_older_agent_has_no_dram_tensor_or_clock_signals() {
        // An older agent's message: the new optional fields are simply absent on the wire.
        let s = sample_from_pb(pb::GpuSample {
            gpu_uuid: "GPU-1".into(),
            slices: vec![pb::SliceActivity {
                slice_id: "s1".into(),
                sm_pct: 40.0,
                activity_known: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(s.slices[0].dram_pct, None);
        assert_eq!(s.slices[0].tensor_pct, None);
        assert_eq!((s.unattributed_dram_pct, s.sm_clock_mhz), (None, None));
    }
}
