//! Controller configuration (TOML file, overridden by command-line flags).

use serde::Deserialize;

/// The controller's configuration. Every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address to serve gRPC on.
    pub listen: String,
    /// Placement policy name (`fgd-balanced`, the default; `fgd`, `best-fit`, ...; see placement).
    pub policy: String,
    /// Seconds to wait for an agent to confirm a command.
    pub command_timeout_s: u64,
    /// Address to serve Prometheus metrics on (`/metrics`); empty: not served.
    pub metrics_listen: String,
    /// The idle policy (`[idle]`; see [`crate::reclaim::policy`]).
    pub idle: crate::reclaim::IdlePolicy,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: "127.0.0.1:7070".into(),
            policy: "fgd-balanced".into(),
            command_timeout_s: 10,
            metrics_listen: String::new(),
            idle: Default::default(),
        }
    }
}

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl ControllerConfig {
    /// Reads a TOML config file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}
