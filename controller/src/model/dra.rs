//! Slices that stand for the devices of Kubernetes ResourceClaims (the node agent as a DRA driver,
//! see docs/KUBERNETES.md). Such a slice is named by its idempotency key,
//! `dra/<claim uid>/<device index>[/<attempt>]`: the index is the device's place in the claim's
//! allocation, and a claim prepared again after it was unprepared gets a new attempt, since its
//! first slices are over. The tenant API refuses keys with this prefix, so only the kubelet path
//! makes them.

use crate::model::slice::SliceRecord;

/// Idempotency-key prefix of every DRA slice.
pub const KEY_PREFIX: &str = "dra/";
/// Most devices one claim may have on one node.
pub const MAX_CLAIM_DEVICES: usize = 32;
/// Most times one claim's device is made again after it was released (re-prepares).
pub const MAX_ATTEMPTS: u32 = 16;

/// The key of attempt `attempt` (1 = the first) of device `index` of claim `uid`.
pub fn claim_key(uid: &str, index: usize, attempt: u32) -> String {
    if attempt <= 1 {
        format!("{KEY_PREFIX}{uid}/{index}")
    } else {
        format!("{KEY_PREFIX}{uid}/{index}/{attempt}")
    }
}

/// Whether the slice stands for a device of a ResourceClaim.
pub fn is_dra_slice(s: &SliceRecord) -> bool {
    s.idempotency_key
        .as_deref()
        .is_some_and(|k| k.starts_with(KEY_PREFIX))
}

/// Whether the slice stands for a device of claim `uid`.
pub fn is_claim_slice(s: &SliceRecord, uid: &str) -> bool {
    s.idempotency_key.as_deref().is_some_and(|k| {
        k.strip_prefix(KEY_PREFIX)
            .and_then(|r| r.strip_prefix(uid))
            .is_some_and(|r| r.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_claim_and_no_other() {
        let uid = "0b7e3c1a-1111-2222-3333-444455556666";
        assert_eq!(claim_key(uid, 0, 1), format!("dra/{uid}/0"));
        assert_eq!(claim_key(uid, 3, 2), format!("dra/{uid}/3/2"));
        let rec = |k: &str| SliceRecord {
            idempotency_key: Some(k.to_string()),
            ..crate::model::slice::SliceRecord::placed(
                "s-1".into(),
                "ns",
                greenslice_core::slice::SliceSpec {
                    kind: greenslice_core::slice::SliceKind::Whole { count: 1 },
                    gpu_model: None,
                    slice_class: None,
                },
                "n".into(),
                vec!["GPU-1".into()],
                0,
            )
        };
        assert!(is_claim_slice(&rec(&claim_key(uid, 1, 3)), uid));
        assert!(is_dra_slice(&rec(&claim_key(uid, 1, 3))));
        // A uid that is a prefix of another's is not that claim.
        assert!(!is_claim_slice(&rec(&format!("dra/{uid}7/0")), uid));
        assert!(!is_claim_slice(&rec("mine"), uid));
        assert!(!is_dra_slice(&rec("mine")));
    }
}
