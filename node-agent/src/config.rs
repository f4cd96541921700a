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
    pub nvml: NvmlSection,
    pub kubelet: KubeletSection,
    pub dra: DraSection,
    pub tls: TlsSection,
    pub agent: AgentSection,
    /// Share limits enforced by watching (see `crate::enforce` and docs/ISOLATION.md).
    pub enforce: crate::enforce::EnforceConfig,
}

/// Where the NVML backend keeps its node checkpoint unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/greenslice";

/// `[agent]`: the agent's own files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Folder of the node checkpoint (what this agent owns and has applied; see
    /// docs/NODE-CHECKPOINT.md). Default: /var/lib/greenslice with the NVML backend; none with the
    /// simulator, whose hardware lives in the agent process and does not outlive it.
    pub state_dir: Option<std::path::PathBuf>,
}

impl AgentSection {
    /// The checkpoint folder to use with `backend` (None: no checkpoint).
    pub fn state_dir_for(&self, backend: BackendKind) -> Option<std::path::PathBuf> {
        match (&self.state_dir, backend) {
            (Some(d), _) => Some(d.clone()),
            (None, BackendKind::Sim) => None,
            (None, _) => Some(DEFAULT_STATE_DIR.into()),
        }
    }
}

/// `[nvml]`: where the NVML library comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvmlSection {
    /// Path of the NVML library to load. Default: the driver's `libnvidia-ml.so`, then
    /// `libnvidia-ml.so.1`. Point it at `libgreenslice_nvml_sim.so` to run the NVML path on the
    /// simulated machine.
    pub library: Option<std::path::PathBuf>,
}

/// `[tls]`: how the agent proves who it is to the controller (mutual TLS) and checks the
/// controller's certificate. Needed with an `https://` controller URL; a controller that enforces
/// authentication refuses agents without a client certificate signed by its agent CA, and lets an
/// agent register only as a node its certificate names (DNS subject alternative name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM CA that signed the controller's certificate.
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate of this agent.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of that certificate.
    pub key: Option<std::path::PathBuf>,
}

impl AgentConfig {
    /// The TLS settings for connecting to the controller, with the files read.
    pub fn client_tls(
        &self,
    ) -> Result<greenslice_proto::client::ClientTls, greenslice_proto::client::ConnectError> {
        self.client_tls_files().read()
    }

    /// Where the TLS files for connecting to the controller are.
    pub fn client_tls_files(&self) -> greenslice_proto::client::ClientTlsFiles {
        greenslice_proto::client::ClientTlsFiles {
            ca: self.tls.ca_cert.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
        }
    }
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
    /// Allow creating and destroying MIG instances. Default: false (read-only) on real GPUs, true on
    /// the simulator. A read-only agent lends existing free instances to slices instead.
    pub manage: Option<bool>,
}

impl MigSection {
    /// Whether MIG instances may be created and destroyed with `backend`.
    pub fn manage_for(&self, backend: BackendKind) -> bool {
        self.manage.unwrap_or(backend == BackendKind::Sim)
    }
}

/// `[mps]`: MPS settings given to share slices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MpsSection {
    /// CUDA_MPS_PIPE_DIRECTORY for shares.
    pub pipe_dir: String,
    /// Whether an MPS control daemon serves this node's GPUs. Default: whether
    /// `nvidia-cuda-mps-control` is on PATH (the simulator: true). Without MPS, shares are still
    /// placed but their limits are advisory.
    pub available: Option<bool>,
    /// Whether the agent runs the MPS control daemons itself (see `crate::mps`): one per GPU that
    /// holds shares, with its own pipe folder `<pipe_dir>/<GPU UUID>` and log folder
    /// `<log_dir>/<GPU UUID>`, the GPU in EXCLUSIVE_PROCESS mode while it holds shares, a daemon
    /// that died restarted, and each share given its GPU's pipe folder; the device plugin's
    /// `kubelet.share_gpus` keep their daemon for the life of the agent. Default: true. `false`
    /// leaves MPS to an operator's daemon on `pipe_dir` (one folder for every GPU). Only with the
    /// NVML backend; without the control binary the agent logs it once and shares stay advisory.
    pub supervise: bool,
    /// The control daemon's executable: a path, or a name looked for on PATH. Default
    /// `nvidia-cuda-mps-control`.
    pub control_binary: String,
    /// Parent of the daemons' log folders (CUDA_MPS_LOG_DIRECTORY). Default /var/log/nvidia-mps.
    pub log_dir: String,
    /// How often the supervised daemons are checked (and restarted when dead), ms. Default 1000.
    pub check_interval_ms: u64,
}

/// What the agent does about idle pods (reclaim for kubelet allocations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PodReclaim {
    /// Report idle pods to the controller only (default).
    #[default]
    Report,
    /// Let the controller have idle pods evicted: it sends `EvictPod`, and the agent asks the API
    /// server's Eviction API (RBAC `pods/eviction: create`, in deploy/).
    Evict,
}

/// `[kubelet]`: the kubelet device plugin and pod-resources reporting (see docs/KUBERNETES.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletSection {
    /// Serve the kubelet's device-plugin API (default false; `--kubelet` also turns it on).
    pub enabled: bool,
    /// The kubelet's device-plugins folder: holds kubelet.sock and the agent's endpoints.
    pub device_plugin_dir: String,
    /// The kubelet's pod-resources socket.
    pub pod_resources_socket: String,
    /// Indices of non-MIG GPUs offered as `greenslice.io/gpu-share` units (1% of a GPU each)
    /// instead of `greenslice.io/gpu`. Default none.
    pub share_gpus: Vec<u32>,
    /// Enforce shares through MPS: Allocate gives CUDA_MPS_ACTIVE_THREAD_PERCENTAGE,
    /// CUDA_MPS_PINNED_DEVICE_MEM_LIMIT and CUDA_MPS_PIPE_DIRECTORY (`mps.pipe_dir`, mounted into
    /// the container). Needs an MPS control daemon per share GPU. Default true.
    pub share_mps: bool,
    /// Ask the controller's placement in GetPreferredAllocation (default true; local choice when
    /// it does not answer).
    pub controller_placement: bool,
    /// How long to wait for the controller's choice, ms.
    pub placement_timeout_ms: u64,
    /// How often to read the GPU inventory for device health, ms.
    pub health_interval_ms: u64,
    /// How often to check the endpoints and the kubelet socket (kubelet restarts), ms.
    pub kubelet_poll_ms: u64,
    /// How often to read pod-resources and report kubelet allocations, ms.
    pub pod_resources_interval_ms: u64,
    /// Idle pods: "report" (default) or "evict".
    pub pod_reclaim: PodReclaim,
    /// The Kubernetes API server for evictions, as a URL without credentials (e.g. a local
    /// `kubectl proxy`). Default: the cluster the agent runs in (its service account token), or
    /// the local kubeconfig.
    pub api_server: Option<String>,
}

impl Default for KubeletSection {
    fn default() -> Self {
        KubeletSection {
            enabled: false,
            device_plugin_dir: "/var/lib/kubelet/device-plugins".into(),
            pod_resources_socket: "/var/lib/kubelet/pod-resources/kubelet.sock".into(),
            share_gpus: Vec::new(),
            share_mps: true,
            controller_placement: true,
            placement_timeout_ms: 2_000,
            health_interval_ms: 5_000,
            kubelet_poll_ms: 1_000,
            pod_resources_interval_ms: 10_000,
            pod_reclaim: PodReclaim::Report,
            api_server: None,
        }
    }
}

/// `[dra]`: the agent as the kubelet's DRA driver `gpu.greenslice.io` (see docs/KUBERNETES.md,
/// "DRA"). Independent of `[kubelet]`: a node normally runs one of the two for its GPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DraSection {
    /// Serve the DRA plugin API and publish ResourceSlices (default false).
    pub enabled: bool,
    /// The driver's folder under the kubelet's `plugins` folder: holds the DRA service socket.
    pub plugin_dir: String,
    /// The kubelet's plugin-registration folder (its plugin watcher looks here).
    pub registry_dir: String,
    /// Where CDI specs for prepared claims are written (the container runtime reads it).
    pub cdi_dir: String,
    /// Publish every legal MIG placement as a partitionable device (KEP-4815, beta and on by
    /// default since Kubernetes 1.36); false: only the MIG instances that exist, as plain devices.
    pub partitionable: bool,
    /// Publish shares through consumable capacity (KEP-5075, beta since Kubernetes 1.36).
    pub consumable_capacity: bool,
    /// Indices of non-MIG GPUs that offer shares (a `gpu-N-share` device) besides the whole GPU.
    pub share_gpus: Vec<u32>,
    /// Which MIG placements are published: "off" (every legal one, default), "gpu" (per GPU and
    /// profile the one greenslice's placement would choose), "node" (per profile the one best on
    /// the whole node). See docs/KUBERNETES.md, "Placement keeps its say".
    pub steer: DraSteer,
    /// The Kubernetes API server, as a URL without credentials (tests, `kubectl proxy`). Default:
    /// `kubelet.api_server`, else the cluster the agent runs in, else the local kubeconfig.
    pub api_server: Option<String>,
    /// How long a prepare waits for the controller, ms.
    pub prepare_timeout_ms: u64,
    /// How often the sockets are checked (kubelet restarts), ms.
    pub poll_ms: u64,
}

/// `[dra] steer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DraSteer {
    #[default]
    Off,
    Gpu,
    Node,
}

impl Default for DraSection {
    fn default() -> Self {
        DraSection {
            enabled: false,
            plugin_dir: "/var/lib/kubelet/plugins/gpu.greenslice.io".into(),
            registry_dir: "/var/lib/kubelet/plugins_registry".into(),
            cdi_dir: "/var/run/cdi".into(),
            partitionable: true,
            consumable_capacity: true,
            share_gpus: Vec::new(),
            steer: DraSteer::Off,
            api_server: None,
            prepare_timeout_ms: 30_000,
            poll_ms: 1_000,
        }
    }
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
            available: None,
            supervise: true,
            control_binary: crate::backend::MPS_CONTROL.into(),
            log_dir: "/var/log/nvidia-mps".into(),
            check_interval_ms: 1_000,
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
            nvml: NvmlSection::default(),
            kubelet: KubeletSection::default(),
            dra: DraSection::default(),
            tls: TlsSection::default(),
            agent: AgentSection::default(),
            enforce: crate::enforce::EnforceConfig::default(),
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

    /// Checks the settings the controller will hold the agent to (see `greenslice_core::limits`),
    /// so a bad node name fails at startup with a clear message instead of every registration
    /// being refused.
    pub fn check(&self) -> Result<(), greenslice_core::limits::LimitError> {
        greenslice_core::limits::check_node("node", &self.node)
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
[mps]
available = false
"#,
        )
        .unwrap();
        assert_eq!(c.node, "gpu-7");
        assert_eq!(c.backend, BackendKind::Sim);
        assert_eq!(c.sim.gpus, 4);
        assert_eq!(c.mig.manage, Some(true));
        assert_eq!(c.mps.available, Some(false));
        assert_eq!(c.mps.pipe_dir, "/tmp/nvidia-mps");
    }

    proptest::proptest! {
        /// Arbitrary config text is parsed or refused with an error, never a panic.
        #[test]
        fn arbitrary_config_text_never_panics(text in ".{0,300}") {
            let _ = AgentConfig::parse(&text);
        }
    }

    #[test]
    fn refuses_unknown_keys() {
        let e = AgentConfig::parse("nod = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn the_checkpoint_folder_defaults_by_backend_and_can_be_set() {
        let d = AgentConfig::default();
        assert_eq!(
            d.agent.state_dir_for(BackendKind::Nvml),
            Some(DEFAULT_STATE_DIR.into())
        );
        assert_eq!(
            d.agent.state_dir_for(BackendKind::Auto),
            Some(DEFAULT_STATE_DIR.into())
        );
        // The simulator's hardware lives in the agent process: nothing to take back.
        assert_eq!(d.agent.state_dir_for(BackendKind::Sim), None);
        let c = AgentConfig::parse("[agent]\nstate_dir = \"/srv/gs\"\n").unwrap();
        assert_eq!(
            c.agent.state_dir_for(BackendKind::Sim),
            Some("/srv/gs".into())
        );
        assert!(AgentConfig::parse("[agent]\nstate = 1\n").is_err());
    }

    #[test]
    fn parses_the_kubelet_section() {
        let c = AgentConfig::parse(
            r#"
[kubelet]
enabled = true
share_gpus = [6, 7]
pod_reclaim = "evict"
"#,
        )
        .unwrap();
        assert!(c.kubelet.enabled);
        assert_eq!(c.kubelet.share_gpus, [6, 7]);
        assert_eq!(c.kubelet.pod_reclaim, PodReclaim::Evict);
        assert_eq!(
            c.kubelet.device_plugin_dir,
            "/var/lib/kubelet/device-plugins"
        );
        assert!(AgentConfig::parse("[kubelet]\nshare_gpu = [1]").is_err());
    }

    #[test]
    fn nvml_library_is_read_and_unknown_nvml_keys_are_refused() {
        let c =
            AgentConfig::parse("[nvml]\nlibrary = \"/opt/libgreenslice_nvml_sim.so\"\n").unwrap();
        assert_eq!(
            c.nvml.library.as_deref(),
            Some(std::path::Path::new("/opt/libgreenslice_nvml_sim.so"))
        );
        assert_eq!(AgentConfig::default().nvml.library, None);
        assert!(AgentConfig::parse("[nvml]\nlib = \"x\"\n").is_err());
    }

    #[test]
    fn defaults_are_read_only_mig() {
        let d = AgentConfig::default();
        assert!(!d.mig.manage_for(BackendKind::Nvml));
        assert!(!d.mig.manage_for(BackendKind::Auto));
        assert!(
            d.mig.manage_for(BackendKind::Sim),
            "the simulator changes its own layout"
        );
        let mut m = d.mig.clone();
        m.manage = Some(false);
        assert!(
            !m.manage_for(BackendKind::Sim),
            "an explicit false makes the simulator read-only"
        );
    }
}
