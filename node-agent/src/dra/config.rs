//! Opaque device configuration of this driver (`resource.greenslice.io/v1alpha1`, kind
//! `GpuConfig`), given in a DeviceClass or a ResourceClaim. Pure: parsing and merging.
//!
//! ```yaml
//! opaque:
//!   driver: gpu.greenslice.io
//!   parameters:
//!     apiVersion: resource.greenslice.io/v1alpha1
//!     kind: GpuConfig
//!     sharing:
//!       strategy: MPS          # or TimeSlicing
//!     sliceClass: serving      # e.g. exempt from idle reclaim (the controller's policy)
//! ```
//!
//! `MPS` (the default) enforces a share's limits through the node's MPS daemon. `TimeSlicing`
//! means the claim's containers time-slice the device with no limits between them; it is accepted
//! for whole GPUs and MIG partitions (where the partition is the limit) and refused for a share
//! device, whose limits only MPS can enforce.

use serde::Deserialize;
use thiserror::Error;

/// `apiVersion` of the configuration.
pub const API_VERSION: &str = "resource.greenslice.io/v1alpha1";
/// `kind` of the configuration.
pub const KIND: &str = "GpuConfig";

/// How the containers of a claim share a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Strategy {
    #[default]
    #[serde(rename = "MPS")]
    Mps,
    TimeSlicing,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sharing {
    strategy: Strategy,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GpuConfigWire {
    api_version: String,
    kind: String,
    #[serde(default)]
    sharing: Option<Sharing>,
    #[serde(default)]
    slice_class: Option<String>,
}

/// One parsed configuration: the fields it sets (unset fields leave an earlier one's value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuConfig {
    pub strategy: Option<Strategy>,
    pub slice_class: Option<String>,
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("invalid {KIND} configuration: {0}")]
    Invalid(String),
    #[error("configuration apiVersion {found:?} / kind {kind:?} is not {API_VERSION} / {KIND}")]
    WrongType { found: String, kind: String },
    #[error("sliceClass {0:?} must be 1-63 characters of [a-z0-9-]")]
    SliceClass(String),
}

impl GpuConfig {
    /// Parses the `parameters` of an opaque configuration.
    pub fn parse(parameters: &serde_json::Value) -> Result<GpuConfig, ConfigError> {
        let w: GpuConfigWire = serde_json::from_value(parameters.clone())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if w.api_version != API_VERSION || w.kind != KIND {
            return Err(ConfigError::WrongType {
                found: w.api_version,
                kind: w.kind,
            });
        }
        if let Some(c) = &w.slice_class {
            let ok = !c.is_empty()
                && c.len() <= 63
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(ConfigError::SliceClass(c.clone()));
            }
        }
        Ok(GpuConfig {
            strategy: w.sharing.map(|s| s.strategy),
            slice_class: w.slice_class,
        })
    }

    /// This configuration with `later`'s set fields over it (a claim's over its class's).
    pub fn merged(&self, later: &GpuConfig) -> GpuConfig {
        GpuConfig {
            strategy: later.strategy.or(self.strategy),
            slice_class: later
                .slice_class
                .clone()
                .or_else(|| self.slice_class.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_configuration_parses_and_a_claims_overrides_its_classes() {
        let class = GpuConfig::parse(&json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "sharing": {"strategy": "TimeSlicing"}, "sliceClass": "batch"
        }))
        .unwrap();
        let claim = GpuConfig::parse(&json!({
            "apiVersion": API_VERSION, "kind": KIND, "sliceClass": "serving"
        }))
        .unwrap();
        let m = class.merged(&claim);
        assert_eq!(m.strategy, Some(Strategy::TimeSlicing));
        assert_eq!(m.slice_class.as_deref(), Some("serving"));
        assert_eq!(
            GpuConfig::default().merged(&GpuConfig::default()),
            GpuConfig::default()
        );
    }

    #[test]
    fn malformed_configurations_are_refused_with_what_is_wrong() {
        let cases = [
            (json!({"kind": KIND}), "apiVersion"),
            (
                json!({"apiVersion": "resource.greenslice.io/v2", "kind": KIND}),
                "is not",
            ),
            (
                json!({"apiVersion": API_VERSION, "kind": "Other"}),
                "is not",
            ),
            (
                json!({"apiVersion": API_VERSION, "kind": KIND, "sharing": {"strategy": "Magic"}}),
                "Magic",
            ),
            (
                json!({"apiVersion": API_VERSION, "kind": KIND, "shareing": {}}),
                "shareing",
            ),
            (
                json!({"apiVersion": API_VERSION, "kind": KIND, "sliceClass": "Serving!"}),
                "sliceClass",
            ),
            (json!("a string"), "invalid"),
        ];
        for (v, says) in cases {
            let e = GpuConfig::parse(&v).unwrap_err().to_string();
            assert!(e.contains(says), "{v}: {e}");
        }
    }
}
