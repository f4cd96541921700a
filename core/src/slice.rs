//! What a tenant asks for, how it is validated, and the lifecycle of a slice.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gpu::GpuModel;
use crate::mig;

/// Most whole GPUs one slice may ask for (one node).
pub const MAX_WHOLE_GPUS: u32 = 8;
/// Longest tenant name.
pub const MAX_TENANT_LEN: usize = 63;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest slice class or model name.
pub const MAX_NAME_LEN: usize = 64;

/// The kind and size of a slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SliceKind {
    /// `count` whole GPUs on one node.
    Whole { count: u32 },
    /// One MIG instance of a profile.
    Mig { profile: String },
    /// A time-sliced share of one GPU: compute fraction in (0, 1] and a memory limit.
    Share {
        compute_fraction: f64,
        memory_bytes: u64,
    },
}

/// A validated request for a slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceSpec {
    pub kind: SliceKind,
    /// Only GPUs of this model, if set.
    pub gpu_model: Option<GpuModel>,
    /// Policy class (e.g. "serving"), if set.
    pub slice_class: Option<String>,
}

impl SliceSpec {
    /// Compute demand in milli-GPU on one GPU of `model` (for MIG: the profile's compute share).
    pub fn compute_milli_per_gpu(&self, model: &GpuModel) -> u32 {
        match &self.kind {
            SliceKind::Whole { .. } => 1000,
            SliceKind::Mig { profile } => {
                mig::profile(model, profile).map_or(1000, |p| p.compute_milli())
            }
            SliceKind::Share {
                compute_fraction, ..
            } => share_milli(*compute_fraction),
        }
    }

    /// Short human description: "2 GPUs", "mig 3g.40gb", "share 0.25 / 10.0 GiB".
    pub fn describe(&self) -> String {
        let base = match &self.kind {
            SliceKind::Whole { count: 1 } => "1 GPU".to_string(),
            SliceKind::Whole { count } => format!("{count} GPUs"),
            SliceKind::Mig { profile } => format!("mig {profile}"),
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            } => format!(
                "share {compute_fraction:.2} / {:.1} GiB",
                *memory_bytes as f64 / crate::GIB as f64
            ),
        };
        match &self.gpu_model {
            Some(m) => format!("{base} on {m}"),
            None => base,
        }
    }
}

/// A compute fraction in milli-GPU, rounded up so a share never gets less than asked.
pub fn share_milli(fraction: f64) -> u32 {
    ((fraction * 1000.0).ceil() as u32).clamp(1, 1000)
}

/// Lifecycle of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SliceState {
    Pending,
    Active,
    Releasing,
    Released,
    Failed,
}

impl SliceState {
    /// Whether the slice is finished and holds no capacity.
    pub fn is_terminal(self) -> bool {
        matches!(self, SliceState::Released | SliceState::Failed)
    }

    /// Whether the state may change to `next`.
    pub fn can_become(self, next: SliceState) -> bool {
        use SliceState::*;
        matches!(
            (self, next),
            (Pending, Active)
                | (Pending, Failed)
                | (Pending, Releasing)
                | (Active, Releasing)
                | (Releasing, Released)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SliceState::Pending => "pending",
            SliceState::Active => "active",
            SliceState::Releasing => "releasing",
            SliceState::Released => "released",
            SliceState::Failed => "failed",
        }
    }
}

/// Why a request is invalid. Each maps to gRPC INVALID_ARGUMENT with this message.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ValidationError {
    #[error("spec is missing: set exactly one of whole, mig or share")]
    MissingKind,
    #[error("whole GPU count must be 1..={MAX_WHOLE_GPUS}, got {0}")]
    WholeCount(u32),
    #[error("unknown MIG profile {profile:?}; valid profiles: {valid}")]
    UnknownProfile { profile: String, valid: String },
    #[error("MIG profile {profile} does not exist on {model}; profiles of {model}: {valid}")]
    ProfileNotOnModel {
        profile: String,
        model: String,
        valid: String,
    },
    #[error("share compute fraction must be in (0, 1], got {0}")]
    ShareFraction(f64),
    #[error("share memory must be more than 0 bytes")]
    ShareZeroMemory,
    #[error("share memory {requested} bytes exceeds the largest GPU memory ({max} bytes)")]
    ShareMemoryTooLarge { requested: u64, max: u64 },
    /// A tenant name that breaks the rule: what is wrong with it (see [`tenant_problem`]).
    #[error("tenant {0}")]
    Tenant(String),
    #[error("idempotency key must be at most {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters")]
    IdempotencyKey,
    #[error("{field} must be at most {MAX_NAME_LEN} printable ASCII characters")]
    Name { field: &'static str },
}

/// What is wrong with tenant name `t`, worded to follow the name of the field that holds it
/// (`must be ...`), or `None` when it is valid.
pub fn tenant_problem(t: &str) -> Option<String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TENANT_LEN
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    (!ok).then(|| {
        format!(
            "must be 1-{MAX_TENANT_LEN} characters of [a-z0-9-_.], got {:?}",
            t.chars().take(80).collect::<String>()
        )
    })
}

/// Checks a tenant name.
pub fn validate_tenant(t: &str) -> Result<(), ValidationError> {
    match tenant_problem(t) {
        None => Ok(()),
        Some(p) => Err(ValidationError::Tenant(p)),
    }
}

/// Checks an idempotency key (empty means none).
pub fn validate_idempotency_key(k: &str) -> Result<(), ValidationError> {
    if k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ValidationError::IdempotencyKey)
    }
}

fn validate_name(field: &'static str, v: &str) -> Result<(), ValidationError> {
    if v.len() <= MAX_NAME_LEN && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Ok(())
    } else {
        Err(ValidationError::Name { field })
    }
}

/// Validates a raw request into a [`SliceSpec`]: sizes in range, the MIG profile known (on the
/// requested model when one is given).
pub fn validate(
    kind: Option<SliceKind>,
    gpu_model: &str,
    slice_class: &str,
) -> Result<SliceSpec, ValidationError> {
    validate_name("gpu_model", gpu_model)?;
    validate_name("slice_class", slice_class)?;
    let gpu_model = (!gpu_model.trim().is_empty()).then(|| GpuModel::from_name(gpu_model.trim()));
    let kind = kind.ok_or(ValidationError::MissingKind)?;
    match &kind {
        SliceKind::Whole { count } => {
            if *count == 0 || *count > MAX_WHOLE_GPUS {
                return Err(ValidationError::WholeCount(*count));
            }
        }
        SliceKind::Mig { profile } => match &gpu_model {
            Some(m) if m.mig_capable() => {
                if mig::profile(m, profile).is_none() {
                    return Err(ValidationError::ProfileNotOnModel {
                        profile: profile.clone(),
                        model: m.name().to_string(),
                        valid: mig::profiles(m)
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
            _ => {
                if !mig::profile_exists_anywhere(profile) {
                    return Err(ValidationError::UnknownProfile {
                        profile: profile.chars().take(40).collect(),
                        valid: mig::all_profile_names().join(", "),
                    });
                }
            }
        },
        SliceKind::Share {
            compute_fraction,
            memory_bytes,
        } => {
            if !(compute_fraction.is_finite()
                && *compute_fraction > 0.0
                && *compute_fraction <= 1.0)
            {
                return Err(ValidationError::ShareFraction(*compute_fraction));
            }
            if *memory_bytes == 0 {
                return Err(ValidationError::ShareZeroMemory);
            }
            let max = GpuModel::KNOWN
                .iter()
                .map(|m| m.memory_bytes())
                .max()
                .unwrap_or(0);
            if *memory_bytes > max {
                return Err(ValidationError::ShareMemoryTooLarge {
                    requested: *memory_bytes,
                    max,
                });
            }
        }
    }
    Ok(SliceSpec {
        kind,
        gpu_model,
        slice_class: (!slice_class.is_empty()).then(|| slice_class.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GIB;

    #[test]
    fn refuses_bad_sizes_with_precise_messages() {
        let e = validate(Some(SliceKind::Whole { count: 0 }), "", "").unwrap_err();
        assert_eq!(e, ValidationError::WholeCount(0));
        for f in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            let e = validate(
                Some(SliceKind::Share {
                    compute_fraction: f,
                    memory_bytes: GIB,
                }),
                "",
                "",
            )
            .unwrap_err();
            assert!(matches!(e, ValidationError::ShareFraction(_)), "{f}");
        }
        let e = validate(
            Some(SliceKind::Share {
                compute_fraction: 0.5,
                memory_bytes: 0,
            }),
            "",
            "",
        )
        .unwrap_err();
        assert_eq!(e, ValidationError::ShareZeroMemory);
        assert_eq!(
            validate(None, "", "").unwrap_err(),
            ValidationError::MissingKind
        );
    }

    #[test]
    fn unknown_profile_lists_the_valid_ones() {
        let e = validate(
            Some(SliceKind::Mig {
                profile: "5g.50gb".into(),
            }),
            "",
            "",
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("3g.40gb") && m.contains("1g.5gb"), "{m}");
        let e = validate(
            Some(SliceKind::Mig {
                profile: "3g.40gb".into(),
            }),
            "A100-SXM4-40GB",
            "",
        )
        .unwrap_err();
        assert!(matches!(e, ValidationError::ProfileNotOnModel { .. }));
        assert!(e.to_string().contains("3g.20gb"));
    }

    #[test]
    fn accepts_good_specs() {
        let s = validate(
            Some(SliceKind::Mig {
                profile: "3g.40gb".into(),
            }),
            "H100-SXM5-80GB",
            "serving",
        )
        .unwrap();
        assert_eq!(s.gpu_model, Some(GpuModel::H100Sxm5_80Gb));
        assert_eq!(s.slice_class.as_deref(), Some("serving"));
        assert_eq!(s.compute_milli_per_gpu(&GpuModel::H100Sxm5_80Gb), 428);
    }

    #[test]
    fn tenant_names() {
        assert!(validate_tenant("team-a").is_ok());
        assert!(validate_tenant("").is_err());
        assert!(validate_tenant("Team A").is_err());
        assert!(validate_tenant(&"a".repeat(64)).is_err());
        assert_eq!(
            validate_tenant("Team A").unwrap_err().to_string(),
            "tenant must be 1-63 characters of [a-z0-9-_.], got \"Team A\""
        );
    }

    #[test]
    fn lifecycle_transitions() {
        use SliceState::*;
        assert!(Pending.can_become(Active));
        assert!(Active.can_become(Releasing));
        assert!(!Released.can_become(Active));
        assert!(!Active.can_become(Pending));
        assert!(Failed.is_terminal() && Released.is_terminal() && !Releasing.is_terminal());
    }
}
