//! The checkpoint's bytes: `greenslice-agent-checkpoint <version> sha256:<hex> <length>\n<body>`,
//! the body being the JSON of [`NodeState`]. The checksum covers the exact body bytes, so no
//! re-serialisation is needed to check it; the length tells a truncated file from a corrupt one.

use sha2::{Digest, Sha256};

use super::{CheckpointError, NodeState, VERSION};

/// The header's first word.
pub const MAGIC: &str = "greenslice-agent-checkpoint";

/// Most bytes a checkpoint may have; a larger file is not read.
pub const MAX_BYTES: u64 = 64 << 20;

fn sha256_hex(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file's bytes for `state`.
pub fn encode(state: &NodeState) -> Vec<u8> {
    // Serialising plain data with string keys does not fail.
    let body = serde_json::to_vec(state).unwrap_or_default();
    let mut out = format!(
        "{MAGIC} {VERSION} sha256:{} {}\n",
        sha256_hex(&body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Reads a checkpoint's bytes, refusing a bad header, an unknown version, a truncated body, a bad
/// checksum and a body that is not a [`NodeState`].
pub fn decode(bytes: &[u8]) -> Result<NodeState, CheckpointError> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(CheckpointError::BadHeader)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| CheckpointError::BadHeader)?;
    let body = &bytes[nl + 1..];
    let words: Vec<&str> = header.split(' ').collect();
    if words.first() != Some(&MAGIC) {
        return Err(CheckpointError::BadHeader);
    }
    // The version comes before everything else it could change.
    let version = words.get(1).copied().unwrap_or("");
    if version != VERSION.to_string() {
        return Err(CheckpointError::UnknownVersion {
            found: version.chars().take(32).collect(),
        });
    }
    let [_, _, sum, len] = words[..] else {
        return Err(CheckpointError::BadHeader);
    };
    let expected_sum = sum
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(CheckpointError::BadHeader)?;
    let expected_len: usize = len.parse().map_err(|_| CheckpointError::BadHeader)?;
    if body.len() != expected_len {
        return Err(CheckpointError::Truncated {
            expected: expected_len,
            found: body.len(),
        });
    }
    let found = sha256_hex(body);
    if !found.eq_ignore_ascii_case(expected_sum) {
        return Err(CheckpointError::BadChecksum {
            expected: expected_sum.to_string(),
            found,
        });
    }
    serde_json::from_slice(body).map_err(|e| CheckpointError::BadBody(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::{KubeletGrant, MigIntent, Owned, OwnedMig, OwnedShare, OwnedWhole};
    use super::*;

    fn state() -> NodeState {
        NodeState {
            node: "n1".into(),
            owned: Owned {
                mig: vec![OwnedMig {
                    gpu: "GPU-a".into(),
                    gpu_instance_id: 2,
                    start: 4,
                    profile: "3g.40gb".into(),
                    mig_uuid: "MIG-x".into(),
                    slice_id: "s-1".into(),
                }],
                shares: vec![OwnedShare {
                    gpu: "GPU-b".into(),
                    slice_id: "s-2".into(),
                    compute_fraction: 0.25,
                    memory_bytes: 10 << 30,
                }],
                whole: vec![OwnedWhole {
                    gpu: "GPU-c".into(),
                    slice_id: "s-3".into(),
                }],
            },
            intents: vec![MigIntent {
                gpu: "GPU-a".into(),
                profile: "1g.10gb".into(),
                start: 0,
                slice_id: "s-4".into(),
            }],
            kubelet: vec![KubeletGrant {
                resource: "greenslice.io/gpu".into(),
                device_ids: vec!["GPU-d".into()],
                slice_id: "k-1".into(),
                at_ms: 5,
                seen_ms: Some(7),
            }],
            dra: vec![super::super::PreparedClaim {
                uid: "u-1".into(),
                namespace: "team-a".into(),
                name: "c".into(),
                devices: vec![super::super::PreparedDevice {
                    request: "r".into(),
                    pool: "n1".into(),
                    device: "gpu-0-share".into(),
                    share_id: Some("x1".into()),
                    cdi_device_ids: vec!["greenslice.io/claim=u-1-0".into()],
                    slice_id: "s-3".into(),
                }],
                cdi_spec: "/var/run/cdi/greenslice.io-claim_u-1.json".into(),
                at_ms: 9,
            }],
            ledger_adoption_pending: true,
        }
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        assert_eq!(decode(&encode(&state())).unwrap(), state());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&state());
        for cut in 0..bytes.len() {
            let e = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    e,
                    CheckpointError::BadHeader | CheckpointError::Truncated { .. }
                ),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn a_changed_body_byte_fails_the_checksum() {
        let bytes = encode(&state());
        let body_at = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        for i in body_at..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                matches!(decode(&b), Err(CheckpointError::BadChecksum { .. })),
                "byte {i}"
            );
        }
    }

    #[test]
    fn an_unknown_version_is_refused_before_the_body_is_read() {
        let bytes = encode(&state());
        let text = String::from_utf8(bytes).unwrap();
        let v2 = text.replacen(&format!("{MAGIC} 1 "), &format!("{MAGIC} 2 "), 1);
        assert_eq!(
            decode(v2.as_bytes()),
            Err(CheckpointError::UnknownVersion { found: "2".into() })
        );
        // A newer version may change everything after it, the header's shape included.
        assert!(matches!(
            decode(format!("{MAGIC} 7 whatever\n{{}}").as_bytes()),
            Err(CheckpointError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn a_checksummed_body_that_is_not_a_node_state_is_refused() {
        let body = br#"{"node":"n1","surprise":1}"#;
        let mut bytes =
            format!("{MAGIC} 1 sha256:{} {}\n", sha256_hex(body), body.len()).into_bytes();
        bytes.extend_from_slice(body);
        assert!(matches!(decode(&bytes), Err(CheckpointError::BadBody(_))));
        assert_eq!(decode(b"hello\n"), Err(CheckpointError::BadHeader));
        assert_eq!(decode(b""), Err(CheckpointError::BadHeader));
    }
}
