//! Controller configuration (TOML file, overridden by command-line flags).

use std::path::PathBuf;

use serde::Deserialize;

/// Which ledger holds the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    /// In memory: everything is lost when the controller stops (tests, demos).
    Memory,
    /// An embedded crash-safe file (redb) in `data_dir`: the default, one controller.
    Redb,
    /// etcd: several controller replicas, one elected leader.
    Etcd,
}

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
    /// Ledger kind.
    pub ledger: LedgerKind,
    /// Directory of the redb ledger file (`ledger.redb`).
    pub data_dir: PathBuf,
    /// Seconds an agent's connection may stay silent (unanswered HTTP/2 keep-alives) before its
    /// node is marked unreachable.
    pub agent_lease_s: u64,
    /// Seconds something greenslice made may sit on a node with no live slice before it is torn
    /// down.
    pub orphan_grace_s: u64,
    /// Seconds finished (released, failed) slices are kept before they are forgotten.
    pub terminal_retention_s: u64,
    /// URL clients reach this controller at, which standbys name when refusing calls (default:
    /// `http://` + the listen address).
    pub advertise_url: Option<String>,
    /// etcd settings (ledger = "etcd").
    pub etcd: EtcdSection,
    /// Address to serve Prometheus metrics on (`/metrics`); empty: not served.
    pub metrics_listen: String,
    /// The idle policy (`[idle]`; see [`crate::reclaim::policy`]).
    pub idle: crate::reclaim::IdlePolicy,
}

/// `[etcd]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// Leader lease, seconds: a dead leader is replaced within about this long.
    pub lease_ttl_s: u64,
    /// Seconds between compactions of old revisions.
    pub compact_interval_s: u64,
}

impl Default for EtcdSection {
    fn default() -> Self {
        EtcdSection {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/greenslice/".into(),
            lease_ttl_s: 5,
            compact_interval_s: 60,
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: "127.0.0.1:7070".into(),
            policy: "fgd-balanced".into(),
            command_timeout_s: 10,
            ledger: LedgerKind::Redb,
            data_dir: PathBuf::from("/var/lib/greenslice"),
            agent_lease_s: 15,
            orphan_grace_s: 60,
            terminal_retention_s: 600,
            advertise_url: None,
            etcd: EtcdSection::default(),
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
