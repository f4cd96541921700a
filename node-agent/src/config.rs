//! Agent configuration (TOML file, overridden by command-line flags).

use serde::Deserialize;

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// NVML when the library loads (logged), else the same error as `nvml`, which tells how to use
    /// the simulator. It never falls back to the simulator on its own: an agent on a GPU node whose
    /// driver is broken must fail visibly, not report simulated GPUs to the controller.
    #[default]
    Auto,
    /// The simulator.
    Sim,
    /// Real NVIDIA GPUs through NVML.
    Nvml,
}

/// The agent's configuration. Every field has a default; see `deploy/` for a documented file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Node name (default: the host name).
    pub node: String,
    /// Controller URL.
    pub controller: String,
    pub backend: BackendKind,
    pub sim: SimSection,
    pub mig: MigSection,
    pub mps: MpsSection,
}

/// `[sim]`: the simulated machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSection {
    /// dgx-a100-40, dgx-a100-80, dgx-h100 or dgx-h200.
    pub machine: String,
    /// GPUs in the node.
    pub gpus: u32,
    /// How many GPUs (the first ones) are in MIG mode.
    pub mig_gpus: u32,
}

/// `[mig]`: whether the agent may change MIG layouts on real hardware.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigSection {
    /// Allow creating and destroying MIG instances (default false: read-only).
    pub manage: bool,
}

/// `[mps]`: MPS settings given to share slices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MpsSection {
    /// CUDA_MPS_PIPE_DIRECTORY for shares.
    pub pipe_dir: String,
}

impl Default for SimSection {
    fn default() -> Self {
        SimSection {
            machine: "dgx-h100".into(),
            gpus: 8,
            mig_gpus: 4,
        }
    }
}

impl Default for MpsSection {
    fn default() -> Self {
        MpsSection {
            pipe_dir: "/tmp/nvidia-mps".into(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: hostname(),
            controller: "http://127.0.0.1:7070".into(),
            backend: BackendKind::Auto,
            sim: SimSection::default(),
            mig: MigSection::default(),
            mps: MpsSection::default(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
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

impl AgentConfig {
    /// Reads a TOML config file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let c = AgentConfig::parse(
            r#"
node = "gpu-7"
controller = "http://ctl:7070"
backend = "sim"
[sim]
machine = "dgx-a100-40"
gpus = 4
mig_gpus = 2
[mig]
manage = true
"#,
        )
        .unwrap();
        assert_eq!(c.node, "gpu-7");
        assert_eq!(c.backend, BackendKind::Sim);
        assert_eq!(c.sim.gpus, 4);
        assert!(c.mig.manage);
        assert_eq!(c.mps.pipe_dir, "/tmp/nvidia-mps");
    }

    #[test]
    fn refuses_unknown_keys() {
        let e = AgentConfig::parse("nod = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn defaults_are_read_only_mig() {
        assert!(!AgentConfig::default().mig.manage);
    }
}
