//! Conversions between the domain types and the `greenslice.v1` wire messages.

use greenslice_proto::v1 as pb;

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
