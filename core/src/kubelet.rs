//! Kubernetes names, defined once: the extended resources the node agent advertises to the kubelet,
//! and the slice class of the slices that stand for kubelet allocations. The agent builds its device
//! plugin's resource names from here and the controller labels its metrics with the same names, so a
//! dashboard's `resource` is the name a pod asks for.

use crate::slice::SliceKind;

/// Prefix of every greenslice resource.
pub const RESOURCE_PREFIX: &str = "greenslice.io/";
/// Whole GPUs.
pub const GPU_RESOURCE: &str = "greenslice.io/gpu";
/// Sized shares, in units of 1% of one GPU.
pub const SHARE_RESOURCE: &str = "greenslice.io/gpu-share";
/// MIG instances: this prefix and the profile name (see [`mig_resource`]).
pub const MIG_RESOURCE_PREFIX: &str = "greenslice.io/mig-";
/// `slice_class` of the slices that stand for kubelet allocations.
pub const SLICE_CLASS: &str = "kubelet";
/// Tenant of a kubelet slice between the device plugin's Allocate answer and the pod-resources read
/// that names its pod (the device-plugin API does not say which pod an Allocate is for). The slice
/// reserves its devices against tenant placement and re-layout from the moment Allocate answers;
/// its tenant becomes the pod's namespace as soon as pod-resources lists the pod.
pub const PENDING_TENANT: &str = "kubelet-pending";

/// Longest name part (after the `/`) of a Kubernetes qualified name, characters.
const MAX_NAME_PART_LEN: usize = 63;
/// Longest prefix part (a DNS subdomain) of a Kubernetes qualified name, characters.
const MAX_PREFIX_LEN: usize = 253;

/// The resource name of MIG instances of `profile` as nvidia-smi names it, or `None` when the profile
/// cannot make a valid extended resource name. `+` becomes `.` (`1g.10gb+me` is
/// `greenslice.io/mig-1g.10gb.me`): resource names allow only `[A-Za-z0-9-_.]`.
pub fn mig_resource(profile: &str) -> Option<String> {
    let name = format!("{MIG_RESOURCE_PREFIX}{}", profile.replace('+', "."));
    (!profile.is_empty() && is_extended_resource_name(&name)).then_some(name)
}

/// The resource a slice of `kind` is allocated as through the kubelet, or `None` for a MIG profile
/// that cannot make a resource name (the agent never advertises one).
pub fn resource_of(kind: &SliceKind) -> Option<String> {
    match kind {
        SliceKind::Whole { .. } => Some(GPU_RESOURCE.to_string()),
        SliceKind::Mig { profile } => mig_resource(profile),
        SliceKind::Share { .. } => Some(SHARE_RESOURCE.to_string()),
    }
}

/// Whether `name` is a valid Kubernetes extended resource name (as the API server checks
/// `IsExtendedResourceName`): `prefix/name`, the prefix a DNS subdomain outside `kubernetes.io`, the
/// name 1-63 characters of `[A-Za-z0-9-_.]` that start and end alphanumeric, and `requests.` plus
/// the whole still a qualified name (so a quota can name it).
pub fn is_extended_resource_name(name: &str) -> bool {
    let Some((prefix, part)) = name.split_once('/') else {
        return false;
    };
    if name.contains("kubernetes.io/") || name.starts_with("requests.") {
        return false;
    }
    is_dns_subdomain(&format!("requests.{prefix}")) && is_name_part(part)
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_PART_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_PREFIX_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_resource_is_a_valid_extended_resource_name() {
        for r in [GPU_RESOURCE, SHARE_RESOURCE] {
            assert!(is_extended_resource_name(r), "{r}");
            assert!(r.starts_with(RESOURCE_PREFIX));
        }
        assert!(MIG_RESOURCE_PREFIX.starts_with(RESOURCE_PREFIX));
    }

    #[test]
    fn mig_profiles_with_plus_become_dots() {
        assert_eq!(
            mig_resource("1g.10gb+me").as_deref(),
            Some("greenslice.io/mig-1g.10gb.me")
        );
        assert_eq!(
            mig_resource("3g.40gb").as_deref(),
            Some("greenslice.io/mig-3g.40gb")
        );
        assert_eq!(
            resource_of(&SliceKind::Mig {
                profile: "1g.10gb+me".into()
            }),
            mig_resource("1g.10gb+me")
        );
    }

    #[test]
    fn profiles_that_cannot_be_names_have_no_resource() {
        for p in ["", "1g 10gb", "1g.10gb.", "1g/10gb", &"x".repeat(60)] {
            assert_eq!(mig_resource(p), None, "{p:?}");
        }
    }

    #[test]
    fn extended_resource_names_follow_kubernetes_rules() {
        for ok in ["greenslice.io/gpu", "example.com/a_b.c-d", "x/y"] {
            assert!(is_extended_resource_name(ok), "{ok}");
        }
        for bad in [
            "gpu",
            "kubernetes.io/gpu",
            "requests.greenslice.io/gpu",
            "Greenslice.io/gpu",
            "greenslice.io/",
            "greenslice.io/mig-1g.10gb+me",
            "greenslice..io/gpu",
            "greenslice.io/a/b",
        ] {
            assert!(!is_extended_resource_name(bad), "{bad}");
        }
    }
}
